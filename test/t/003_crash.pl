
# 003_crash.pl -- crashes and stuck claims lose no message.
#
#  - kill -9 of the relay worker in the middle of a 20,000-message backlog
#    (provably: the worker waits at a gate the test holds, inside a batch):
#    the postmaster crash-restarts the cluster, the launcher starts a new
#    worker, and every message is received once and ends processed, none
#    left processing;
#  - pg_ctl stop -m immediate with a backlog, the worker waiting at a gate
#    again, then start: the same;
#  - a message left processing by a claimer that no longer exists returns to
#    pending and is delivered within seconds;
#  - one held by a live session past outbox.processing_timeout is recovered
#    too, and not before.
#
# The consumer is a `function` publisher (OutboxChecker's function consumer)
# recording each message in checker.received in the worker's transaction
# that marks it: it survives the restarts, which a NOTIFY listener's
# connection does not.  A message counts as delivered when the consumer
# recorded it; the status column is checked separately (nothing is
# processed that the consumer did not receive).

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxChecker;
use OutboxTest;

my $backlog = 20_000;

my $node = OutboxTest::new_node(
	'crash', conf => qq{
outbox.batch_size = 100
outbox.poll_interval = '200ms'
});

my $checker = OutboxChecker->new($node, topic => 'crash');
$checker->install;
my $consumer = $checker->function_consumer('main');
OutboxTest::set_conf($node,
	'outbox.publisher' => 'function',
	'outbox.publisher_function' => 'checker.receive_main');

my $unfinished =
  "SELECT count(*) FROM outbox.messages WHERE status <> 'processed'";

# Save $count messages in one INSERT ... SELECT, with a gate (OutboxChecker)
# at a random one of the first half: the worker's call for it waits while
# the test holds the gate.
sub save_backlog
{
	my ($tag, $count) = @_;
	my $k = int(rand($count / 2));
	$node->safe_psql(
		'postgres', qq{
BEGIN;
INSERT INTO outbox.messages (topic, key, payload)
SELECT 'crash', 'k' || (g % 20), convert_to(json_build_object('$tag', g)::text, 'UTF8')
FROM generate_series(1, $count) g;
INSERT INTO checker.gates (consumer, id)
SELECT 'main', id FROM outbox.messages WHERE position('"$tag"'::bytea IN payload) > 0
ORDER BY id OFFSET $k LIMIT 1;
COMMIT});
	return;
}

# Wait until worker $pid waits at the gate, inside a batch of the backlog;
# returns how many messages were still unfinished.
sub wait_mid_batch
{
	my ($pid) = @_;
	is($checker->wait_at_gate(120), $pid, 'the worker waits at the gate, inside a batch');
	my $left = OutboxTest::query_value($node, 'postgres', $unfinished);
	note("unfinished messages when interrupting: $left");
	return $left;
}

# Every message the consumer received exactly once, and nothing processed
# that it did not receive.
sub check_received
{
	my ($name, $count) = @_;
	is( $node->safe_psql('postgres',
			"SELECT count(*) FROM outbox.messages m WHERE NOT EXISTS "
			  . "(SELECT 1 FROM checker.received r WHERE r.id = m.id)"),
		'0', "$name: the consumer received every message");
	is( $node->safe_psql('postgres',
			"SELECT count(*) || ',' || count(DISTINCT id) FROM checker.received"),
		"$count,$count", "$name: the consumer received $count messages, each once");
	$checker->check_status($name, $consumer);
	return;
}

########################################################################
# kill -9 of the worker in the middle of the drain.

my $old_pid = OutboxTest::wait_for_worker($node, 'postgres');
ok($old_pid, "the worker runs (pid $old_pid)");

$checker->hold_gate;
save_backlog('first', $backlog);
my $left = wait_mid_batch($old_pid);
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
$checker->release_gate;

ok(OutboxTest::wait_all_processed($node, 'postgres', 90),
	'after the crash every message ends processed');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.messages WHERE status = 'processing'"),
	'0', 'none is left processing');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.messages WHERE status = 'processed'"),
	$backlog, "all $backlog messages are processed");
check_received('after kill -9', $backlog);

########################################################################
# Immediate shutdown in the middle of a drain.

$checker->hold_gate;
save_backlog('second', $backlog);
$left = wait_mid_batch($new_pid);
$node->stop('immediate');
cmp_ok($left, '>', 0, 'stopped (immediate) mid-drain');
$node->start;
ok(OutboxTest::wait_for_worker($node, 'postgres'),
	'the worker runs after the restart');
$checker->release_gate;
ok(OutboxTest::wait_all_processed($node, 'postgres', 90),
	'after the immediate shutdown every message ends processed');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.messages WHERE status = 'processed'"),
	2 * $backlog, 'both backlogs are processed');
check_received('after the immediate shutdown', 2 * $backlog);

# A message saved after the restarts is delivered.
my $id = $node->safe_psql('postgres',
	q{SELECT outbox.save('crash', '{"after": "restart"}'::jsonb)});
ok( OutboxTest::poll_until(
		$node, 'postgres', "SELECT count(*) FROM checker.received WHERE id = '$id'", '1', 30),
	'a message saved after the restarts is delivered');

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
		$node, 'postgres', "SELECT count(*) FROM checker.received WHERE id = '$dead_id'", '1', 15),
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
		$node, 'postgres', "SELECT count(*) FROM checker.received WHERE id = '$live_id'", '1', 15),
	'a claim of a live session older than processing_timeout is recovered and delivered');
note(sprintf('timed-out claim recovered and delivered after %.1f s', time() - $t0));
is($claimer->query_safe("SELECT 'still here'"), 'still here',
	'the claiming session is still alive');

ok(OutboxTest::wait_all_processed($node, 'postgres', 30), 'nothing is left unprocessed');
check_received('at the end', 2 * $backlog + 3);

$claimer->quit;
$node->stop;
done_testing();
