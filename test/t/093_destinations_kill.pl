
# 093_destinations_kill.pl -- kill -9 of destination workers, through the
# end-to-end checker extended per destination.
#
# Three destinations of the checker's topic, each with its own worker: two
# http destinations (receivers A and B, which answer after 100 ms and fail
# one request in ten at random, so deliveries go through retries and
# delivery rows) and a `function` destination whose function records each
# message in checker.received in the worker's transaction (its record
# commits with the delivery's mark, and survives the crashes, which a
# NOTIFY listener's connection does not).  Savers (OutboxChecker: save(),
# the batch path, triggers, rollbacks) run throughout, with backlogs in one
# transaction; the destination workers are killed with SIGKILL, one after
# the other, each provably in the middle of a batch (every kill
# crash-restarts the cluster):
#  - an http destination's worker once its receiver holds one of its
#    requests (the receiver's record then shows a request that started
#    before the kill and ended after it);
#  - the function destination's worker once it waits at a gate the test
#    holds, at a random message of the backlog (pg_locks).
# After each restart, no delivery is marked processed that its consumer did
# not receive.  At the end, per destination:
#  - 0 lost: every committed message reached it (the receivers keep what
#    they answered with 2xx, the function consumer what it recorded) and
#    its delivery is processed;
#  - nothing rolled back was delivered anywhere;
#  - per-key order per destination within each epoch (between crashes);
#    messages published again after a crash are counted, allowed only
#    across epochs (at the http receivers; the function consumer's record
#    and its mark commit together, so it sees each message once);
# and every message is processed once all three have it.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxChecker;
use OutboxDestinations;
use OutboxHttp;
use OutboxTest;

my $rounds = 6;

my $srv_a = OutboxHttp->start;
my $srv_b = OutboxHttp->start;
$srv_a->plan_random_failures('*', 0.1, delay_ms => 100);
$srv_b->plan_random_failures('*', 0.1, delay_ms => 100);

my $node = OutboxTest::new_node(
	'dest_kill', conf => q{
outbox.poll_interval = '100ms'
outbox.batch_size = 20
outbox.retry_backoff = '50ms'
outbox.retry_backoff_max = '200ms'
outbox.max_retries = 1000
log_statement = 'none'
});

my $checker = OutboxChecker->new($node, topic => 'chk', nkeys => 16);
$checker->install;
my $ledger = $checker->function_consumer('ledger', destination => 'ledger');

my ($url_a, $url_b) = ($srv_a->url('/a/{topic}'), $srv_b->url('/b/{topic}'));
$node->safe_psql('postgres', qq{
SELECT outbox.create_destination('hook_a', 'http', '{"url": "$url_a", "max_concurrency": 8}');
SELECT outbox.create_destination('hook_b', 'http', '{"url": "$url_b", "max_concurrency": 8}');
SELECT outbox.create_destination('ledger', 'function', '{"function": "checker.receive_ledger"}');
SELECT outbox.subscribe('hook_a', 'chk');
SELECT outbox.subscribe('hook_b', 'chk');
SELECT outbox.subscribe('ledger', 'chk');
});
my @names = qw(hook_a hook_b ledger);
OutboxDestinations::wait_worker($node, $_) or die("no worker for $_") for @names;

my $source_a = OutboxDestinations::HttpSource->new($srv_a, name => 'receiver A', topic => 'chk',
	destination => 'hook_a');
my $source_b = OutboxDestinations::HttpSource->new($srv_b, name => 'receiver B', topic => 'chk',
	destination => 'hook_b');
my %srv = (hook_a => $srv_a, hook_b => $srv_b);

# Deliveries of each destination processed so far.
sub delivered
{
	my ($name) = @_;
	return OutboxTest::query_value($node, 'postgres',
		"SELECT count(*) FROM outbox.deliveries WHERE destination = '$name' AND status = 'processed'");
}

my ($kills, $mid_batch) = (0, 0);
my @unfinished_at_kill;
for my $round (1 .. $rounds)
{
	my $victim = $names[ ($round - 1) % 3 ];
	$checker->start_savers(clients => 4, rate => 100)
	  or die("round $round: savers did not start");
	my $pid = OutboxDestinations::wait_worker($node, $victim) or die("round $round: no worker for $victim");
	my $burst = 300 + int(rand(300));
	my $caught;
	if ($victim eq 'ledger')
	{
		# The gate at a random message of the first half of the burst.
		$checker->hold_gate;
		$checker->save_burst_gated($burst, 'ledger', int(rand($burst * 0.5)));
		my $waiting = $checker->wait_at_gate(120);
		$caught = defined $waiting && $waiting == $pid;
	}
	else
	{
		# Once the victim delivered a random part of the burst, and its
		# receiver holds one of its requests.
		my $before = delivered($victim) // 0;
		$checker->save_burst($burst);
		my $target = $before + 1 + int(rand($burst * 0.5));
		OutboxTest::wait_until(120, sub { (delivered($victim) // 0) >= $target });
		$caught = $srv{$victim}->wait_inflight(1, 120);
	}
	my $unfinished = OutboxTest::query_value($node, 'postgres',
		"SELECT count(*) FROM outbox.deliveries WHERE destination = '$victim' AND status <> 'processed'") // -1;
	push @unfinished_at_kill, "$victim:$unfinished";

	my $offset = OutboxTest::log_position($node);
	my $t = time();
	kill('KILL', $pid) or die("round $round: could not signal ${victim}'s worker $pid");
	$source_a->crashed_at($t);
	$source_b->crashed_at($t);
	OutboxTest::wait_for_log_line($node, qr/all server processes terminated; reinitializing/, $offset)
	  or die("round $round: no crash-restart after killing ${victim}'s worker");
	$kills++;
	OutboxDestinations::wait_worker($node, $_) or die("round $round: no worker for $_ after the restart")
	  for @names;
	$checker->release_gate;

	# The proof for an http victim: its receiver held a request across the kill.
	if ($caught && $srv{$victim})
	{
		$caught = $srv{$victim}->wait_requests(30,
			sub { grep { $_->{start} < $t && $_->{end} > $t } @_ });
	}
	$mid_batch++ if $caught;
	diag("round $round: ${victim}'s worker was not caught in the middle of a batch") unless $caught;
	$checker->check_status("after kill $round", $_) for ($source_a, $source_b, $ledger);
}
is($kills, $rounds, "$rounds destination workers killed (each of the three twice), each a crash-restart");
note("unfinished deliveries of the victim at each kill: @unfinished_at_kill");
is($mid_batch, $rounds, "every kill hit its worker in the middle of a batch ($mid_batch of $rounds)");

# A last stretch, then drain.
$checker->start_savers(clients => 4, rate => 100) or die('savers did not start after the last kill');
$checker->save_burst(300);
$checker->stop_savers;
ok($checker->wait_drained(300), 'everything drains after the last kill');
is($node->safe_psql('postgres', q{SELECT count(*) FROM outbox.deliveries WHERE status <> 'processed'}), '0',
	'no delivery is left unfinished');

my $report = $checker->check(
	"after $rounds kills of destination workers",
	sources => [ $source_a, $source_b, $ledger ],
	duplicates => 'crash',
	destinations => \@names);
for my $s ($source_a, $source_b, $ledger)
{
	my $r = $report->{sources}{ $s->name };
	note(sprintf('%s: %d deliveries of %d messages over %d epochs, %d delivered more than once',
			$s->name, $r->{deliveries}, $r->{distinct}, $r->{epochs}, $r->{duplicated_messages}));
}
is($report->{sources}{ $ledger->name }{duplicated_messages}, 0,
	'the function consumer received each message once (its record commits with the mark)');

$node->stop;
$srv_a->stop;
$srv_b->stop;
done_testing();
