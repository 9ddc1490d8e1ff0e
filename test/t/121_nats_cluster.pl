# 121_nats_cluster.pl -- the nats publisher against a 3-node JetStream
# cluster, with a stream of 3 replicas:
#
#  - messages saved in chunks while the worker publishes; after a few
#    chunks the node the worker is connected to is killed (SIGKILL); the
#    worker reconnects to another node by itself, the remaining two keep
#    the stream's quorum, and every message ends up processed and in the
#    stream exactly once (nothing lost, republications deduplicated).

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
my $killed;
for my $i (1 .. $chunks)
{
	$node->safe_psql('postgres', qq{
		SELECT outbox.save('events.e' || (i % 4), ('{"chunk": $i, "i": ' || i || '}')::jsonb, 'k' || (i % 50))
		FROM generate_series(1, $chunk) i});
	if ($i == $kill_after)
	{
		my $target = OutboxTest::wait_until(10, \&connected_node);
		ok($target, 'the worker is connected to a node') or last;
		# with messages of this chunk still pending or in flight
		my $left = count_of("'pending', 'processing'");
		$target->stop('KILL');
		$killed = $target;
		note("killed $killed->{name} with $left messages not yet processed");
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

my $total = $chunk * $chunks;
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE status IN ('pending', 'processing')", '0', 90),
	'every message settled');
is(count_of("'processed'"), $total, "all $total messages processed");
is(count_of("'failed'"), 0, 'none failed');

my @alive = grep { $_->{pid} } @nodes;
my $new = OutboxTest::wait_until(10, \&connected_node);
ok($new && $new != $killed, 'the worker reconnected to another node by itself');

my @msgs = $alive[0]->dump('EVENTS');
my %seen;
$seen{ $_->{headers}{'Nats-Msg-Id'} // '' }++ for @msgs;
is(scalar @msgs, $total, "the stream holds $total messages");
is(scalar(grep { $_ > 1 } values %seen), 0, 'no message twice');
my $ids = $node->safe_psql('postgres', 'SELECT id FROM outbox.messages');
is(scalar(grep { !$seen{$_} } split /\n/, $ids), 0, 'every message is in the stream');

$node->stop;
done_testing();
