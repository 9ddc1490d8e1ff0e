
# 061_immediate_stop.pl -- pg_ctl stop -m immediate with a backlog and
# savers running, then start again; five times.
#
# Each cycle starts OutboxChecker's pgbench savers (save(), batch path,
# triggers; commits and rollbacks), commits a backlog, stops the server
# with -m immediate at a random moment of the drain (no shutdown
# checkpoint: the start replays WAL), starts it, and waits for the relay
# worker and the listener to come back.  At the end the savers stop, the
# backlog drains, and the checker must pass: every committed message stored
# and processed, nothing rolled back stored or delivered, and the
# listener's deliveries complete for its last connection, without
# duplicates inside a connection and in sequence order per key.
#
# As in 060_kill_worker.pl, NOTIFY does not survive the server going down:
# what the listening client had not read is lost to it, so delivery across
# the restarts is proved by the table (a message is marked processed in the
# transaction that NOTIFYs it), and duplicates across connections are
# allowed and reported.

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
my $listener = $checker->listener;

# Wait in the server until TARGET messages are processed, looking every
# millisecond, and return how many are not processed then (-1 after
# TIMEOUT seconds).  A poll from here (a psql per look) can miss a whole
# fast drain between two looks, and then no stop comes during a drain.
$node->safe_psql('postgres', q{
CREATE FUNCTION wait_processed(target bigint, timeout_s float8) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
	deadline timestamptz := clock_timestamp() + timeout_s * interval '1 second';
	done bigint;
	left_over bigint;
BEGIN
	LOOP
		SELECT count(*) FILTER (WHERE status = 'processed'),
			   count(*) FILTER (WHERE status <> 'processed')
		  INTO done, left_over FROM outbox.messages;
		IF done >= target THEN
			RETURN left_over;
		END IF;
		IF clock_timestamp() > deadline THEN
			RETURN -1;
		END IF;
		PERFORM pg_sleep(0.001);
	END LOOP;
END $$});

# Messages processed so far, and those not (yet): one snapshot.
sub progress
{
	my $row = OutboxTest::query_value($node, 'postgres',
		"SELECT count(*) FILTER (WHERE status = 'processed') || ',' || "
		  . "count(*) FILTER (WHERE status <> 'processed') FROM outbox.messages");
	return defined $row ? split(/,/, $row) : (0, -1);
}

my $t_start = time();
my ($mid_drain, $restarted) = (0, 0);
my @pending_at_stop;

for my $i (1 .. $cycles)
{
	$checker->start_savers(clients => 4, rate => 150)
	  or die("cycle $i: savers did not start");
	# A random moment: in odd cycles once the worker has published a random
	# part of the burst (a drain can be faster than any fixed delay), in
	# even ones after a random delay (any state of the worker).
	my ($processed) = progress();
	my $burst = 4000 + int(rand(4000));
	my $pending;
	$checker->save_burst($burst);
	if ($i % 2 == 0)
	{
		usleep(int(rand(300_000)));
		(undef, $pending) = progress();
	}
	else
	{
		# The stop follows the query that saw the target reached at once: a
		# second query would give a fast drain the time to finish.
		my $target = $processed + 1 + int(rand($burst * 0.3));
		# A generous limit: a loaded machine (or an assert-enabled build)
		# drains slowly, and a limit reached is a stop outside a drain.
		$pending = $node->safe_psql('postgres', "SELECT wait_processed($target, 180)");
		diag("cycle $i: the drain did not reach $target processed messages within 180 s")
		  if $pending < 0;
	}
	push @pending_at_stop, $pending;
	$mid_drain++ if $pending > 0;

	$node->stop('immediate');
	$node->start;
	$restarted++
	  if OutboxTest::wait_for_worker($node, 'postgres')
	  && $listener->wait_connected($OutboxTest::TIMEOUT);
}
is($restarted, $cycles,
	"$cycles immediate shutdowns, each followed by a start with the worker running again");
note("unfinished messages at each stop: @pending_at_stop");
cmp_ok($mid_drain, '>=', 3, "most stops came during a drain ($mid_drain of $cycles)");

$checker->start_savers(clients => 4, rate => 150)
  or die('savers did not start after the last restart');
$checker->save_burst(1000);
ok( $listener->wait_for(
		$OutboxTest::TIMEOUT, sub { @{ $_[0] } > 0 && $_[0][-1]{epoch} == $cycles + 1 }),
	'the listener receives after the last restart');
$checker->stop_savers;

ok($checker->wait_drained(120, $listener), 'everything drains after the last restart');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.messages WHERE status <> 'processed'"),
	'0', 'nothing is left pending, processing or failed');

my $report = $checker->check(
	"after $cycles immediate shutdowns",
	sources => [$listener],
	duplicates => 'crash');
my $l = $report->{sources}{ $listener->name };
note(sprintf(
		'%d cycles in %.0f s; %d committed, ~%d rolled back; listener: %d deliveries over %d connections, '
		  . '%d messages delivered more than once (%d extra deliveries)',
		$cycles, time() - $t_start, $report->{committed}, $report->{rolled_back},
		$l->{deliveries}, $l->{epochs}, $l->{duplicated_messages},
		$l->{extra_deliveries}));

$listener->quit;
$node->stop;
done_testing();
