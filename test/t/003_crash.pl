
# 003_crash.pl -- crashes and stuck claims lose no message.
#
#  - kill -9 of the relay worker in the middle of a 20,000-message backlog:
#    the postmaster crash-restarts the cluster, the launcher starts a new
#    worker, and every message ends processed, none left processing;
#  - pg_ctl stop -m immediate with a backlog, then start: the same;
#  - a message left processing by a claimer that no longer exists returns to
#    pending and is delivered within seconds;
#  - one held by a live session past outbox.processing_timeout is recovered
#    too, and not before.
#
# (Notifications sent around a crash-restart cannot be checked from a
# listener, whose connection the restart ends; the table is checked.)

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxTest;

my $backlog = 20_000;

my $node = OutboxTest::new_node(
	'crash', conf => qq{
outbox.batch_size = 100
outbox.poll_interval = '200ms'
});

my $unfinished =
  "SELECT count(*) FROM outbox.messages WHERE status <> 'processed'";

# Save $count messages in one INSERT ... SELECT.
sub save_backlog
{
	my ($tag, $count) = @_;
	$node->safe_psql(
		'postgres', qq{
INSERT INTO outbox.messages (topic, key, payload)
SELECT 'crash', 'k' || (g % 20), convert_to(json_build_object('$tag', g)::text, 'UTF8')
FROM generate_series(1, $count) g});
	return;
}

# Wait until the worker has published some of the backlog saved with $tag
# (and so is in the middle of it); returns how many messages were still
# unfinished.
sub wait_mid_drain
{
	my ($tag) = @_;
	ok( OutboxTest::poll_until(
			$node, 'postgres',
			"SELECT count(*) > 0 FROM outbox.messages WHERE status = 'processed' "
			  . "AND position('\"$tag\"'::bytea IN payload) > 0",
			't', 30),
		'the worker started draining the backlog');
	my $left = OutboxTest::query_value($node, 'postgres', $unfinished);
	note("unfinished messages when interrupting: $left");
	return $left;
}

########################################################################
# kill -9 of the worker in the middle of the drain.

my $old_pid = OutboxTest::wait_for_worker($node, 'postgres');
ok($old_pid, "the worker runs (pid $old_pid)");

save_backlog('first', $backlog);
my $left = wait_mid_drain('first');
my $log_offset = OutboxTest::log_position($node);
ok(kill('KILL', $old_pid), 'sent SIGKILL to the worker');
cmp_ok($left, '>', 0, 'the worker was killed mid-drain');

ok( OutboxTest::wait_for_log_line(
		$node, qr/all server processes terminated; reinitializing/,
		$log_offset, 60),
	'the postmaster crash-restarted the cluster');
my $new_pid =
  OutboxTest::wait_for_worker($node, 'postgres', not_pid => $old_pid);
ok($new_pid, "the launcher started a new worker (pid $new_pid)");

ok(OutboxTest::wait_all_processed($node, 'postgres', 90),
	'after the crash every message ends processed');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.messages WHERE status = 'processing'"),
	'0', 'none is left processing');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.messages WHERE status = 'processed'"),
	$backlog, "all $backlog messages are processed");

########################################################################
# Immediate shutdown in the middle of a drain.

save_backlog('second', $backlog);
$left = wait_mid_drain('second');
$node->stop('immediate');
cmp_ok($left, '>', 0, 'stopped (immediate) mid-drain');
$node->start;
ok(OutboxTest::wait_for_worker($node, 'postgres'),
	'the worker runs after the restart');
ok(OutboxTest::wait_all_processed($node, 'postgres', 90),
	'after the immediate shutdown every message ends processed');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.messages WHERE status = 'processed'"),
	2 * $backlog, 'both backlogs are processed');

# A listener connected after the restarts receives new messages.
my $listener = OutboxTest::Listener->new($node, 'postgres', 'crash');
my $id = $node->safe_psql('postgres',
	q{SELECT outbox.save('crash', '{"after": "restart"}'::jsonb)});
ok($listener->wait_for_id($id, 30),
	'a listener connected after the restarts receives new messages');

########################################################################
# Stuck claims.  Both messages are saved and marked processing in one
# transaction, so the worker never sees them pending.  The live claimer is
# an idle session; the dead one is a pid no backend has.

my $claimer = $node->background_psql('postgres');
my $claimer_pid = $claimer->query_safe('SELECT pg_backend_pid()');
chomp $claimer_pid;

my $t0 = time();
my ($dead_id, $live_id) = split /,/, $node->safe_psql(
	'postgres', qq{
BEGIN;
CREATE TEMP TABLE stuck AS
  SELECT outbox.save('stuck', 'dead claimer'::text) AS dead,
         outbox.save('stuck', 'live claimer'::text) AS live;
UPDATE outbox.messages m SET status = 'processing', claimed_by = 999999, claimed_at = now()
  FROM stuck WHERE m.id = stuck.dead;
UPDATE outbox.messages m SET status = 'processing', claimed_by = $claimer_pid, claimed_at = now()
  FROM stuck WHERE m.id = stuck.live;
SELECT dead || ',' || live FROM stuck;
COMMIT;
});
like($live_id // '', qr/^[0-9a-f-]{36}$/, 'saved two stuck messages');

ok( OutboxTest::poll_until(
		$node, 'postgres',
		"SELECT status FROM outbox.messages WHERE id = '$dead_id'",
		'processed', 15),
	'a message claimed by a gone pid is recovered and delivered');
note(sprintf('dead claim recovered and delivered after %.1f s', time() - $t0));

# The recovery pass that freed the dead claim also saw the live one, which
# is well within outbox.processing_timeout (60 s): it stays claimed.
is( $node->safe_psql('postgres',
		"SELECT status || ',' || claimed_by FROM outbox.messages WHERE id = '$live_id'"),
	"processing,$claimer_pid",
	'a fresh claim of a live session is left alone');

OutboxTest::set_conf($node, 'outbox.processing_timeout' => '1s');
$t0 = time();
ok( OutboxTest::poll_until(
		$node, 'postgres',
		"SELECT status FROM outbox.messages WHERE id = '$live_id'",
		'processed', 15),
	'a claim of a live session older than processing_timeout is recovered and delivered');
note(sprintf('timed-out claim recovered and delivered after %.1f s', time() - $t0));
is($claimer->query_safe("SELECT 'still here'"), 'still here',
	'the claiming session is still alive');

is( $node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.messages WHERE status <> 'processed'"),
	'0', 'nothing is left unprocessed');

$claimer->quit;
$listener->quit;
$node->stop;
done_testing();
