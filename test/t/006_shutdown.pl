
# 006_shutdown.pl -- the relay worker and launcher as server processes:
#  - both show in pg_stat_activity with their backend_type;
#  - the worker exits promptly on SIGTERM (pg_terminate_backend), also in
#    the middle of a backlog, and the launcher starts a new one that
#    finishes the work;
#  - pg_ctl stop (fast) completes quickly while the worker is busy.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxTest;

my $node = OutboxTest::new_node('shutdown',
	conf => "outbox.poll_interval = '200ms'");

########################################################################
# pg_stat_activity.

my $pid1 = OutboxTest::wait_for_worker($node, 'postgres');
ok($pid1, "the worker runs (pid $pid1)");
is( $node->safe_psql(
		'postgres',
		"SELECT backend_type || ',' || datname FROM pg_stat_activity WHERE pid = $pid1"),
	'outbox worker,postgres',
	"the worker's backend_type is 'outbox worker', connected to its database");
my $launcher = OutboxTest::launcher_pid($node);
ok($launcher, "the launcher runs (pid " . ($launcher // 'none') . ")");
is( $node->safe_psql(
		'postgres',
		"SELECT backend_type || ',' || coalesce(datname, '-') FROM pg_stat_activity WHERE backend_type LIKE 'outbox%' ORDER BY 1"
	),
	"outbox launcher,-\noutbox worker,postgres",
	'one launcher (no database) and one worker');

########################################################################
# SIGTERM of an idle worker.

my $t0 = time();
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid1, 10000)"),
	't', 'pg_terminate_backend of the idle worker: it exits within 10 s');
note(sprintf('idle worker exited after %.2f s', time() - $t0));
my $pid2 = OutboxTest::wait_for_worker($node, 'postgres', not_pid => $pid1);
ok($pid2, "the launcher started a new worker (pid $pid2)");
isnt($pid2, $pid1, 'with another pid');
is(OutboxTest::launcher_pid($node), $launcher, 'the launcher itself kept running');

my $listener = OutboxTest::Listener->new($node, 'postgres', 'after_term');
my $id = $node->safe_psql('postgres',
	q{SELECT outbox.save('after_term', '{"n": 1}'::jsonb)});
ok($listener->wait_for_id($id, 30), 'the new worker delivers');

########################################################################
# SIGTERM of a busy worker.

$node->safe_psql(
	'postgres', q{
INSERT INTO outbox.messages (topic, payload)
SELECT 'busy', convert_to(json_build_object('n', g)::text, 'UTF8')
FROM generate_series(1, 20000) g});
ok( OutboxTest::poll_until(
		$node, 'postgres',
		"SELECT count(*) > 0 FROM outbox.messages WHERE topic = 'busy' AND status = 'processed'",
		't', 30),
	'the worker is draining a backlog');
$t0 = time();
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid2, 10000)"),
	't', 'pg_terminate_backend of the busy worker: it exits within 10 s');
note(sprintf('busy worker exited after %.2f s', time() - $t0));
my $pid3 = OutboxTest::wait_for_worker($node, 'postgres', not_pid => $pid2);
ok($pid3, "the launcher started a new worker (pid $pid3)");
ok(OutboxTest::wait_all_processed($node, 'postgres', 60),
	'the new worker finishes the backlog');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.messages WHERE topic = 'busy' AND status = 'processed'"),
	'20000', 'all 20000 messages processed');

########################################################################
# pg_ctl stop -m fast while the worker is busy.

$listener->quit;
$node->safe_psql(
	'postgres', q{
INSERT INTO outbox.messages (topic, payload)
SELECT 'busy', convert_to(json_build_object('n', g)::text, 'UTF8')
FROM generate_series(1, 20000) g});
ok( OutboxTest::poll_until(
		$node, 'postgres',
		"SELECT count(*) > 20000 FROM outbox.messages WHERE topic = 'busy' AND status = 'processed'",
		't', 30),
	'the worker is draining another backlog');
$t0 = time();
ok($node->stop('fast', fail_ok => 1), 'pg_ctl stop -m fast succeeds');
my $elapsed = time() - $t0;
note(sprintf('fast shutdown took %.2f s', $elapsed));
cmp_ok($elapsed, '<', 10, 'fast shutdown completes quickly with the worker running');
like(slurp_file($node->logfile), qr/database system is shut down\n?\z/,
	'the server shut down cleanly');

done_testing();
