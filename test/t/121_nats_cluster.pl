# 121_nats_cluster.pl -- the nats publisher against a 3-node JetStream
# cluster, with a stream of 3 replicas:
#
#  - messages saved in chunks while the worker publishes; after a few
#    chunks the node the worker is connected to is killed (SIGKILL) while
#    the worker is provably publishing a batch (its activity says so, with
#    unfinished messages, in one snapshot just before the kill; if the
#    batch ends first, another chunk and another try); the same worker
#    process reconnects to another node by itself, the remaining two keep
#    the stream's quorum, the messages saved before the kill that were not
#    processed yet go out after it, and every message ends up processed and
#    in the stream exactly once (nothing lost, republications
#    deduplicated).

use strict;
use warnings;

use List::Util qw(first);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxNats;
use OutboxTest;

OutboxNats::require_nats();

my @nodes = OutboxNats->start_cluster('outbox', 3);
my $urls = join(',', map { $_->url } @nodes);
my ($ok, $out) = OutboxNats::run_js($urls, 'add-stream', 'EVENTS', 'events.>', 3, 120);
ok($ok, 'stream with 3 replicas created') or diag($out);

my $node = OutboxTest::new_node('nats_cluster', conf => qq{
shared_preload_libraries = 'outbox, outbox_nats'
outbox.publisher = 'nats'
outbox.nats_url = '$urls'
outbox.nats_timeout = '2s'
outbox.batch_size = 500
outbox.poll_interval = '100ms'
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '1s'
outbox.max_retries = 1000
log_statement = 'none'
});

# The server the worker is connected to (by its client name), or undef.
sub connected_node
{
	return first
	{
		my $connz = $_->{pid} ? $_->monitor('/connz') : undef;
		$connz && grep { ($_->{name} // '') eq 'outbox' } @{ $connz->{connections} // [] };
	}
	@nodes;
}

sub count_of
{
	my ($status) = @_;
	return $node->safe_psql('postgres', "SELECT count(*) FROM outbox.messages WHERE status IN ($status)");
}

my $chunk = 400;
my $chunks = 15;
my $kill_after = 4;
my $big = 4000;    # the chunk before the kill: a backlog that takes a while
my $total = 0;

sub save_chunk
{
	my ($i, $n) = @_;
	$node->safe_psql('postgres', qq{
		SELECT outbox.save('events.e' || (i % 4), ('{"chunk": $i, "i": ' || i || '}')::jsonb, 'k' || (i % 50))
		FROM generate_series(1, $n) i});
	$total += $n;
	return;
}

my ($killed, $worker, $last_id_at_kill);
for my $i (1 .. $chunks)
{
	save_chunk($i, $i == $kill_after ? $big : $chunk);
	if ($i == $kill_after)
	{
		my $target = OutboxTest::wait_until(10, \&connected_node);
		ok($target, 'the worker is connected to a node') or last;
		$worker = OutboxTest::worker_pid($node, 'postgres');
		# Kill once the worker is publishing a batch, with messages not yet
		# processed, seen in one snapshot; if a batch ends first, save
		# another chunk and try again.
		my $caught;
		for my $try (1 .. 5)
		{
			$caught = OutboxTest::wait_until(
				10,
				sub {
					my $row = OutboxTest::query_value($node, 'postgres',
						"SELECT (SELECT count(*) FROM pg_stat_activity WHERE pid = $worker "
						  . "AND query = 'publishing outbox messages') || '|' || "
						  . "(SELECT count(*) FROM outbox.messages WHERE status <> 'processed') || '|' || "
						  . "(SELECT id FROM outbox.messages ORDER BY id DESC LIMIT 1)");
					return 0 unless defined $row;
					my ($publishing, $left, $max_id) = split /\|/, $row;
					return 0 unless $publishing && $left > 0;
					$target->stop('KILL');
					$last_id_at_kill = $max_id;
					note("killed $target->{name} with $left messages not yet processed (try $try)");
					return 1;
				});
			last if $caught;
			save_chunk(100 + $try, $big);
		}
		ok($caught, 'the node was killed while the worker was publishing a batch') or last;
		$killed = $target;
		# Proof that publishing went on across the kill: messages saved
		# before it were still unfinished after it.
		my $left = $node->safe_psql('postgres',
			"SELECT count(*) FROM outbox.messages WHERE id <= '$last_id_at_kill' AND status <> 'processed'");
		cmp_ok($left, '>', 0, "messages saved before the kill were unfinished after it ($left)");
	}
	else
	{
		# Keep the worker busy, not far behind.
		OutboxTest::poll_until($node, 'postgres',
			"SELECT count(*) < $chunk FROM outbox.messages WHERE status IN ('pending', 'processing')",
			't', 60);
	}
}
ok($killed, 'a node was killed while messages were being published');

ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE status IN ('pending', 'processing')", '0', 90),
	'every message settled');
is(count_of("'processed'"), $total, "all $total messages processed");
is(count_of("'failed'"), 0, 'none failed');

my @alive = grep { $_->{pid} } @nodes;
my $new = OutboxTest::wait_until(10, \&connected_node);
ok($new, 'the worker is connected to a node that is still up');
is(OutboxTest::worker_pid($node, 'postgres'), $worker,
	'the same worker reconnected by itself (it was not restarted)');

my @msgs = $alive[0]->dump('EVENTS');
my %seen;
$seen{ $_->{headers}{'Nats-Msg-Id'} // '' }++ for @msgs;
is(scalar @msgs, $total, "the stream holds $total messages");
is(scalar(grep { $_ > 1 } values %seen), 0, 'no message twice');
my $ids = $node->safe_psql('postgres', 'SELECT id FROM outbox.messages');
is(scalar(grep { !$seen{$_} } split /\n/, $ids), 0, 'every message is in the stream');

$node->stop;
done_testing();
