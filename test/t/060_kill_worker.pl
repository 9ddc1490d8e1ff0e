
# 060_kill_worker.pl -- kill -9 of the relay worker, 20 times, while it
# drains a backlog and savers keep committing and rolling back
# (OutboxChecker's pgbench savers: save(), the batch path, triggers, 1-4
# messages per transaction, a quarter rolled back).
#
# The consumer is a `function` publisher that records each message it is
# called for in checker.received, in the worker's transaction that marks the
# message: what it recorded is what was delivered, and a crash loses the
# record and the mark together.  (A NOTIFY listener cannot be the consumer
# here: each kill crash-restarts the cluster, which ends the listener's
# connection, and the new worker publishes before it can LISTEN again.)
#
# Where the kills land.  Two kills in three are provably in the middle of a
# batch: the burst carries a gate at a random message, and the worker's call
# for it waits for a lock the test holds; the test kills the worker once it
# sees it waiting there (pg_locks), inside the transaction that claimed
# the batch, with part of it recorded but not committed.  Every third kill
# comes after a random delay instead, in whatever state the worker is
# (claiming, publishing, committing, sleeping).  Batches are 2, 10 or 50.
#
# Each kill makes the postmaster crash-restart the cluster: every session
# ends, the savers' pgbench included.  After each restart, no message may
# be marked processed that the consumer did not receive.  After the last
# kill the savers run a little longer and stop, the backlog drains, and the
# checker (OutboxChecker.pm) must pass:
#  - every committed message (ledger) is stored and processed, nothing rolled
#    back is stored or delivered;
#  - the consumer received every committed message exactly once (delivery
#    and mark commit together, so a crash cannot make a duplicate), each
#    key's messages in sequence order;
#  - nothing is marked processed that the consumer did not receive.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use OutboxTest;
use OutboxChecker;

my $kills = 20;

my $node = OutboxTest::new_node(
	'kill_worker', conf => qq{
outbox.poll_interval = '100ms'
outbox.batch_size = 10
log_statement = 'none'
});

my $checker = OutboxChecker->new($node, topic => 'chk', nkeys => 16);
$checker->install;
my $consumer = $checker->function_consumer('main');
OutboxTest::set_conf($node,
	'outbox.publisher' => 'function',
	'outbox.publisher_function' => 'checker.receive_main');

# Messages processed, and those not (yet): one snapshot.
sub progress
{
	my $row = OutboxTest::query_value($node, 'postgres',
		"SELECT count(*) FILTER (WHERE status = 'processed') || ',' || "
		  . "count(*) FILTER (WHERE status <> 'processed') FROM outbox.messages");
	return defined $row ? split(/,/, $row) : (undef, undef);
}

my $t_start = time();
my ($gated, $at_gate, $restarts) = (0, 0, 0);
my @pending_at_kill;

for my $i (1 .. $kills)
{
	# (Never signal pid 0: that is our own process group.)
	my $pid = OutboxTest::wait_for_worker($node, 'postgres')
	  or die("kill $i: no worker to kill");

	my $after_delay = $i % 3 == 0;
	my $batch = $after_delay ? 50 : ($i % 3 == 1 ? 2 : 10);
	OutboxTest::set_conf($node, 'outbox.batch_size' => $batch);
	$checker->start_savers(clients => 4, rate => 150)
	  or die("kill $i: savers did not start");
	my $burst = 1000 + int(rand(1000));

	my $pending;
	if ($after_delay)
	{
		$checker->save_burst($burst);
		usleep(int(rand(300_000)));
		(undef, $pending) = progress();
	}
	else
	{
		# The gate at a random message of the first 40% of the burst.
		$gated++;
		$checker->hold_gate;
		$checker->save_burst_gated($burst, 'main', int(rand($burst * 0.4)));
		my $waiting = $checker->wait_at_gate(120);
		(undef, $pending) = progress();
		if (defined $waiting && $waiting == $pid)
		{
			$at_gate++;
		}
		else
		{
			diag("kill $i: worker $pid did not reach the gate (waiting: "
				  . ($waiting // 'nobody') . ')');
		}
	}
	push @pending_at_kill, $pending // -1;

	my $offset = OutboxTest::log_position($node);
	kill('KILL', $pid) or die("kill $i: could not signal worker $pid");
	OutboxTest::wait_for_log_line($node,
		qr/all server processes terminated; reinitializing/, $offset)
	  or die("kill $i: no crash-restart after killing the worker");
	$restarts++;
	OutboxTest::wait_for_worker($node, 'postgres', not_pid => $pid)
	  or die("kill $i: no new worker after the crash-restart");
	$checker->release_gate;
	$checker->check_status("after kill $i", $consumer);
}
is($restarts, $kills, "$kills kills of the worker, each followed by a crash-restart");
note("unfinished messages at each kill (batch sizes 2, 10, 50, 2, 10, 50, ...): @pending_at_kill");
is($at_gate, $gated,
	"every gated kill ($gated) hit the worker inside a batch, waiting at the gate");

# After the last kill: savers and a backlog once more.
$checker->start_savers(clients => 4, rate => 150)
  or die('savers did not start after the last kill');
$checker->save_burst(1000);
$checker->stop_savers;

ok($checker->wait_drained(180), 'everything drains after the last kill');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.messages WHERE status <> 'processed'"),
	'0', 'nothing is left pending, processing or failed');

my $report = $checker->check("after $kills kills", sources => [$consumer]);
note(sprintf('%d kills in %.0f s; %d committed, ~%d rolled back; the consumer received %d',
		$kills, time() - $t_start, $report->{committed}, $report->{rolled_back},
		$report->{sources}{ $consumer->name }{deliveries}));

$node->stop;
done_testing();
