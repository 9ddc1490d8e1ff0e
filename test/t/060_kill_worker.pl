
# 060_kill_worker.pl -- kill -9 of the relay worker, 20 times, at random
# moments while it drains a backlog and savers keep committing and rolling
# back (OutboxChecker's pgbench savers: save(), the batch path, triggers, 1-4
# messages per transaction, a quarter rolled back).
#
# Each kill makes the postmaster crash-restart the cluster: every session
# ends, the savers' pgbench and the listener's connection included.  The
# test then waits for the new worker, reconnects the listener and starts
# the savers again.  After the last kill the savers run a little longer and
# stop, the backlog drains, and the checker (OutboxChecker.pm) must pass:
#  - every committed message (ledger) is stored and processed, nothing rolled
#    back is stored or delivered;
#  - the listener received, in its last connection, every message published
#    after that connection's LISTEN; within each connection no message
#    arrived twice and each key's messages arrived in sequence order.
#
# Why the table, not the listener, proves delivery across a crash: NOTIFY is
# not durable.  A notification committed just before the crash but not yet
# read by the listening client dies with the connection; that is NOTIFY's
# nature, not a loss by the outbox.  The worker NOTIFYs and marks the message
# processed in one transaction, so "processed" means "was notified".  A
# message may be published twice around a crash (the worker commits with
# synchronous_commit = off, so its last marks can be lost): duplicates
# across connections are allowed and reported, never within one.

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
my $listener = $checker->listener;

# Messages processed, and those not (yet): one snapshot.
sub progress
{
	my $row = OutboxTest::query_value($node, 'postgres',
		"SELECT count(*) FILTER (WHERE status = 'processed') || ',' || "
		  . "count(*) FILTER (WHERE status <> 'processed') FROM outbox.messages");
	return defined $row ? split(/,/, $row) : (undef, undef);
}

my $t_start = time();
my ($mid_drain, $restarts) = (0, 0);
my @pending_at_kill;

for my $i (1 .. $kills)
{
	# (Never signal pid 0: that is our own process group.)
	my $pid = OutboxTest::wait_for_worker($node, 'postgres')
	  or die("kill $i: no worker to kill");

	# A random moment.  Every third kill comes after a random delay, with
	# batches of 50: in any state of the worker (claiming, publishing,
	# committing, sleeping).  The others come once the worker has published
	# a random part of the backlog, with batches of 2 or 10: in the middle
	# of a drain long enough to be caught, between many commits.  The
	# backlog is read just before the kill, in the same query as the
	# progress.
	my $after_delay = $i % 3 == 0;
	my $batch = $after_delay ? 50 : ($i % 3 == 1 ? 2 : 10);
	OutboxTest::set_conf($node, 'outbox.batch_size' => $batch);
	$checker->start_savers(clients => 4, rate => 150)
	  or die("kill $i: savers did not start");
	my ($processed) = progress();
	my $burst = 1000 + int(rand(1000));
	$checker->save_burst($burst);

	my $pending;
	if ($after_delay)
	{
		usleep(int(rand(300_000)));
		$listener->poll;
		(undef, $pending) = progress();
	}
	else
	{
		my $target = $processed + 1 + int(rand($burst * 0.4));
		OutboxTest::wait_until(
			30,
			sub {
				$listener->poll;
				my ($p, $u) = progress();
				$pending = $u;
				return ($p // 0) >= $target;
			});
	}
	$pending //= -1;
	push @pending_at_kill, $pending;
	$mid_drain++ if $pending > 0;

	my $offset = OutboxTest::log_position($node);
	kill('KILL', $pid) or die("kill $i: could not signal worker $pid");
	OutboxTest::wait_for_log_line($node,
		qr/all server processes terminated; reinitializing/, $offset)
	  or die("kill $i: no crash-restart after killing the worker");
	$restarts++;
	OutboxTest::wait_for_worker($node, 'postgres', not_pid => $pid)
	  or die("kill $i: no new worker after the crash-restart");
	$listener->wait_connected($OutboxTest::TIMEOUT)
	  or die("kill $i: the listener could not connect again");
}
is($restarts, $kills, "$kills kills of the worker, each followed by a crash-restart");
note("unfinished messages at each kill (batch sizes 2, 10, 50, 2, 10, 50, ...): @pending_at_kill");
cmp_ok($mid_drain, '>=', $kills / 2,
	"most kills hit the worker with a backlog ($mid_drain of $kills)");

# After the last kill: savers and a backlog once more, with the listener
# connected, so its last connection sees plenty.
$checker->start_savers(clients => 4, rate => 150)
  or die('savers did not start after the last kill');
$checker->save_burst(1000);
ok( $listener->wait_for(
		$OutboxTest::TIMEOUT, sub { @{ $_[0] } > 0 && $_[0][-1]{epoch} == $kills + 1 }),
	'the listener receives after the last crash');
$checker->stop_savers;

ok($checker->wait_drained(120, $listener), 'everything drains after the last kill');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.messages WHERE status <> 'processed'"),
	'0', 'nothing is left pending, processing or failed');

my $report = $checker->check(
	"after $kills kills",
	sources => [$listener],
	duplicates => 'crash');
my $l = $report->{sources}{ $listener->name };
note(sprintf(
		'%d kills in %.0f s; %d committed, ~%d rolled back; listener: %d deliveries over %d connections, '
		  . '%d messages delivered more than once (%d extra deliveries)',
		$kills, time() - $t_start, $report->{committed}, $report->{rolled_back},
		$l->{deliveries}, $l->{epochs}, $l->{duplicated_messages},
		$l->{extra_deliveries}));

$listener->quit;
$node->stop;
done_testing();
