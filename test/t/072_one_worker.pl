# 072_one_worker.pl -- one relay worker per database, whatever starts more.
#
# Two workers of one database would each record their batch in flight over
# the other's (the only guard of a detached batch): duplicates and broken
# per-key order.  A worker therefore attaches to its database's slot only
# when no live worker holds it, and otherwise logs who does and exits, like
# autoprewarm's second worker.
#
#  1. A second worker started by hand for the slot (test/modules/
#     outbox_testing, as a restarted launcher that forgot its handles could
#     start one) logs "already running under PID <first>" and exits; the
#     first keeps publishing, and messages are delivered once.
#  2. The launcher (not the worker) is ended again and again while savers
#     commit: the postmaster restarts it, it leaves the running worker
#     alone, there is never more than one worker, and the end-to-end checker
#     finds nothing lost, nothing duplicated, every key in order.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use OutboxTest;
use OutboxChecker;

my $testing = OutboxTest::test_module('outbox_testing');
my $node = OutboxTest::new_node('one_worker', conf => q{
outbox.poll_interval = '100ms'
outbox.batch_size = 10
log_statement = 'none'
});
$node->safe_psql('postgres', qq{
CREATE FUNCTION outbox_testing_start_worker(slot int) RETURNS int
	AS '$testing' LANGUAGE C STRICT});

sub worker_count
{
	return OutboxTest::query_value($node, 'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'outbox worker'");
}

########################################################################
# 1. A second worker for the slot is refused.

my $first = OutboxTest::worker_pid($node, 'postgres');
ok($first, 'the worker runs');
my $offset = OutboxTest::log_position($node);
my $second = $node->safe_psql('postgres', 'SELECT outbox_testing_start_worker(0)');
ok(OutboxTest::wait_for_log_line($node,
		qr/outbox worker for database "postgres" is already running under PID $first/, $offset),
	'a second worker for the database logs that the first one runs');
ok(OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE pid = $second", '0'),
	'and exits');
is(worker_count(), '1', 'one worker runs');
is(OutboxTest::worker_pid($node, 'postgres'), $first, 'the first one');

my $listener = OutboxTest::Listener->new($node, 'postgres', 'once');
my @ids = split /\n/, $node->safe_psql('postgres',
	"SELECT outbox.save('once', jsonb_build_object('n', g)) FROM generate_series(1, 50) g");
ok($listener->wait_count(50), 'messages saved afterwards are delivered');
my %seen;
$seen{ $_->{envelope}{id} }++ for @{ $listener->received };
is(scalar(grep { $seen{$_} != 1 } @ids), 0, 'each exactly once');
$listener->quit;

########################################################################
# 2. The launcher ends under load; the worker stays alone.

my $checker = OutboxChecker->new($node, topic => 'chk', nkeys => 16);
$checker->install;
my $chk_listener = $checker->listener;
$chk_listener->complete_all(1);
$checker->start_savers(clients => 4, rate => 200);

my $max_workers = 1;
for my $round (1 .. 5)
{
	my $launcher = OutboxTest::launcher_pid($node);
	$node->safe_psql('postgres', "SELECT pg_terminate_backend($launcher)");
	my $back = OutboxTest::wait_until($OutboxTest::TIMEOUT, sub {
		my $count = worker_count() // 0;
		$max_workers = $count if $count > $max_workers;
		my $pid = OutboxTest::launcher_pid($node);
		return defined $pid && $pid != $launcher;
	});
	ok($back, "round $round: the launcher was restarted");
	# Let the new launcher look at its slot a few times.
	OutboxTest::wait_until(2, sub {
		my $count = worker_count() // 0;
		$max_workers = $count if $count > $max_workers;
		return 0;
	});
}
$checker->stop_savers;
is($max_workers, 1, 'there was never more than one worker');
is(OutboxTest::worker_pid($node, 'postgres'), $first, 'the worker ran on undisturbed');
ok($checker->wait_drained(60), 'the backlog drains');
$checker->check('launcher restarts', sources => [$chk_listener]);

$node->stop;
done_testing();
