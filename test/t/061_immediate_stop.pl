
# 061_immediate_stop.pl -- pg_ctl stop -m immediate with a backlog and
# savers running, then start again; five times.
#
# Each cycle starts OutboxChecker's pgbench savers (save(), batch path,
# triggers; commits and rollbacks), commits a backlog, stops the server
# with -m immediate (no shutdown checkpoint: the start replays WAL), starts
# it, and waits for the relay worker to come back.  In odd cycles the stop
# comes while the worker is provably inside a batch: the backlog carries a
# gate at a random message, and the worker's call for it waits for a lock
# the test holds; the test stops the server once it sees the worker waiting
# there (pg_locks).  In even cycles it comes after a random delay, in any
# state of the worker.
#
# The consumer is a `function` publisher recording each message in
# checker.received in the worker's transaction that marks it, so what it
# recorded survives the restarts exactly as the marks do (a NOTIFY
# listener's connection would end with each stop, and what the new worker
# published before it listened again would be proved only by the status
# column).  After each restart, nothing may be marked processed that the
# consumer did not receive.  At the end the savers stop, the backlog
# drains, and the checker must pass: every committed message stored and
# processed, nothing rolled back stored or delivered, and the consumer's
# deliveries complete, each message once, in sequence order per key.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use OutboxTest;
use OutboxChecker;

my $cycles = 5;

my $node = OutboxTest::new_node(
	'immediate_stop', conf => qq{
outbox.poll_interval = '100ms'
outbox.batch_size = 50
log_statement = 'none'
});

my $checker = OutboxChecker->new($node, topic => 'chk', nkeys => 16);
$checker->install;
my $consumer = $checker->function_consumer('main');
OutboxTest::set_conf($node,
	'outbox.publisher' => 'function',
	'outbox.publisher_function' => 'checker.receive_main');

# Messages not processed (yet).
sub unfinished
{
	return OutboxTest::query_value($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE status <> 'processed'") // -1;
}

my $t_start = time();
my ($gated, $at_gate, $restarted) = (0, 0, 0);
my @pending_at_stop;

for my $i (1 .. $cycles)
{
	my $pid = OutboxTest::wait_for_worker($node, 'postgres')
	  or die("cycle $i: no worker");
	$checker->start_savers(clients => 4, rate => 150)
	  or die("cycle $i: savers did not start");
	my $burst = 4000 + int(rand(4000));
	if ($i % 2 == 0)
	{
		$checker->save_burst($burst);
		usleep(int(rand(300_000)));
	}
	else
	{
		# The gate at a random message of the first 30% of the burst.
		$gated++;
		$checker->hold_gate;
		$checker->save_burst_gated($burst, 'main', int(rand($burst * 0.3)));
		my $waiting = $checker->wait_at_gate(180);
		if (defined $waiting && $waiting == $pid)
		{
			$at_gate++;
		}
		else
		{
			diag("cycle $i: worker $pid did not reach the gate (waiting: "
				  . ($waiting // 'nobody') . ')');
		}
	}
	push @pending_at_stop, unfinished();

	$node->stop('immediate');
	$node->start;
	$restarted++
	  if OutboxTest::wait_for_worker($node, 'postgres');
	$checker->release_gate;
	$checker->check_status("after stop $i", $consumer);
}
is($restarted, $cycles,
	"$cycles immediate shutdowns, each followed by a start with the worker running again");
note("unfinished messages at each stop: @pending_at_stop");
is($at_gate, $gated,
	"every gated stop ($gated) came while the worker was inside a batch, waiting at the gate");

$checker->start_savers(clients => 4, rate => 150)
  or die('savers did not start after the last restart');
$checker->save_burst(1000);
$checker->stop_savers;

ok($checker->wait_drained(180), 'everything drains after the last restart');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.messages WHERE status <> 'processed'"),
	'0', 'nothing is left pending, processing or failed');

my $report = $checker->check("after $cycles immediate shutdowns", sources => [$consumer]);
note(sprintf('%d cycles in %.0f s; %d committed, ~%d rolled back; the consumer received %d',
		$cycles, time() - $t_start, $report->{committed}, $report->{rolled_back},
		$report->{sources}{ $consumer->name }{deliveries}));

$node->stop;
done_testing();
