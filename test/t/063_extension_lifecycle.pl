
# 063_extension_lifecycle.pl -- pausing, dropping and re-creating under the
# running relay worker.
#
#  - outbox.enabled = off while savers run: publishing stops (a backlog
#    builds up and nothing more arrives), on: it resumes; the checker then
#    passes with a listener connected throughout (nothing lost, nothing
#    twice, order per key);
#  - DROP EXTENSION outbox while the worker drains a backlog and savers
#    run, then CREATE EXTENSION outbox, three times: the drop completes
#    promptly, the worker exits quietly (no crash, no internal error, no
#    restart loop), the launcher survives, and after CREATE EXTENSION the
#    savers' commits bring a worker back that publishes; the checker passes
#    after each re-creation (dropping the extension drops its messages by
#    design, so each round has its own ledger);
#  - DROP DATABASE of a listed database whose worker is draining a backlog
#    succeeds promptly; re-created with the extension, the database gets a
#    worker again that delivers.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use OutboxTest;
use OutboxChecker;

my $node = OutboxTest::new_node(
	'lifecycle',
	databases => 'postgres,victim',
	create_databases => ['victim'],
	extension_in => [ 'postgres', 'victim' ],
	conf => qq{
outbox.poll_interval = '100ms'
outbox.batch_size = 50
log_statement = 'none'
});
my $launcher = OutboxTest::launcher_pid($node);

sub q1 { return $node->safe_psql('postgres', $_[0]) }

my $checker = OutboxChecker->new($node, topic => 'chk', nkeys => 16);
$checker->install;
my $listener = $checker->listener;
$listener->complete_all(1);

########################################################################
# outbox.enabled = off pauses, on resumes.

$checker->start_savers(clients => 4, rate => 150)
  or die('savers did not start');
ok( $listener->wait_for($OutboxTest::TIMEOUT, sub { @{ $_[0] } >= 50 }),
	'messages flow before the pause');
OutboxTest::set_conf($node, 'outbox.enabled' => 'off');
# A worker that publishes keeps the backlog near zero, so a backlog of 200
# shows the pause took effect.
ok( OutboxTest::poll_until(
		$node, 'postgres',
		"SELECT count(*) >= 200 FROM outbox.messages WHERE status = 'pending'",
		't', 60),
	'paused: a backlog builds up');
$listener->barrier;
my $received = scalar @{ $listener->deliveries };
my $processed =
  q1("SELECT count(*) FROM outbox.messages WHERE status = 'processed'");
my $pending0 =
  q1("SELECT count(*) FROM outbox.messages WHERE status = 'pending'");
ok( OutboxTest::poll_until(
		$node, 'postgres',
		"SELECT count(*) >= $pending0 + 200 FROM outbox.messages WHERE status = 'pending'",
		't', 60),
	'paused: 200 more messages are saved');
is(q1("SELECT count(*) FROM outbox.messages WHERE status = 'processed'"),
	$processed, 'paused: no message was processed meanwhile');
$listener->barrier;
is(scalar @{ $listener->deliveries }, $received, 'paused: nothing arrived meanwhile');

OutboxTest::set_conf($node, 'outbox.enabled' => 'on');
ok( OutboxTest::poll_until(
		$node, 'postgres',
		"SELECT count(*) < 100 FROM outbox.messages WHERE status = 'pending'",
		't', 60),
	'enabled again: the backlog drains while savers go on');
$checker->stop_savers;
ok($checker->wait_drained(60, $listener), 'everything drains');
$checker->check('pause and resume', sources => [$listener]);

########################################################################
# DROP EXTENSION / CREATE EXTENSION under the running worker.

my $rounds = 3;
for my $round (1 .. $rounds)
{
	my $worker = OutboxTest::wait_for_worker($node, 'postgres');
	my $offset = OutboxTest::log_position($node);

	# A backlog being drained, and savers.
	$checker->start_savers(clients => 4, rate => 150)
	  or die("round $round: savers did not start");
	$checker->save_burst(3000);
	ok( OutboxTest::poll_until(
			$node, 'postgres',
			"SELECT count(*) FILTER (WHERE status = 'processed') > 0 "
			  . "AND count(*) FILTER (WHERE status = 'pending') > 0 FROM outbox.messages",
			't', 30),
		"round $round: the worker is draining a backlog");

	my $t0 = time();
	my ($rc, $out, $err) = $node->psql('postgres', 'DROP EXTENSION outbox',
		timeout => 60);
	my $took = time() - $t0;
	is($rc, 0, "round $round: DROP EXTENSION outbox succeeds while the worker runs")
	  or diag($err);
	cmp_ok($took, '<', 10, sprintf("round $round: and completes promptly (%.2f s)", $took));

	ok(OutboxTest::wait_until($OutboxTest::TIMEOUT,
			sub { !defined OutboxTest::worker_pid($node, 'postgres') }),
		"round $round: the worker exits");
	# Savers fail without the extension; pgbench ends.
	$checker->stop_savers;

	$node->safe_psql('postgres', 'CREATE EXTENSION outbox');
	# Everything the old worker published has arrived; the new round
	# starts with an empty ledger and listener.
	$listener->barrier;
	$listener->clear;
	$checker->reset;

	$t0 = time();
	$checker->start_savers(clients => 4, rate => 150)
	  or die("round $round: savers did not start again");
	my $new = OutboxTest::wait_for_worker($node, 'postgres', not_pid => $worker);
	ok($new, "round $round: after CREATE EXTENSION a new worker runs");
	# 100 messages: enough transactions that some were surely rolled back
	# (a quarter are), which the check below requires.
	ok( $listener->wait_for($OutboxTest::TIMEOUT, sub { @{ $_[0] } >= 100 }),
		"round $round: and messages arrive");
	note(sprintf('round %d: 100 messages arrived %.1f s after CREATE EXTENSION', $round,
			time() - $t0));
	$checker->stop_savers;
	ok($checker->wait_drained(60, $listener), "round $round: everything drains");
	$checker->check("after DROP and CREATE EXTENSION, round $round",
		sources => [$listener]);

	my $log = slurp_file($node->logfile, $offset);
	unlike($log, qr/terminated by signal|exited with exit code [^01]|PANIC|TRAP:/,
		"round $round: nothing crashed");
	unlike($log, qr/cache lookup failed|could not open relation with OID|XX000/,
		"round $round: no internal error");
	my @worker_errors = $log =~ /^.*\[\Q$worker\E\].*ERROR:.*$/mg;
	note("round $round: the old worker logged: @worker_errors") if @worker_errors;
	cmp_ok(scalar @worker_errors, '<=', 1,
		"round $round: the old worker logged at most one error on its way out");
	is(OutboxTest::launcher_pid($node), $launcher, "round $round: the launcher kept running");
}

########################################################################
# DROP DATABASE of a listed database while its worker drains a backlog.

my $victim_worker = OutboxTest::wait_for_worker($node, 'victim');
my $postgres_worker = OutboxTest::wait_for_worker($node, 'postgres');
$node->safe_psql(
	'victim', q{
INSERT INTO outbox.messages (topic, key, payload)
SELECT 'victim', 'k' || (g % 10), convert_to(json_build_object('n', g)::text, 'UTF8')
FROM generate_series(1, 30000) g});
ok( OutboxTest::poll_until(
		$node, 'victim',
		"SELECT count(*) FILTER (WHERE status = 'processed') > 0 "
		  . "AND count(*) FILTER (WHERE status = 'pending') > 0 FROM outbox.messages",
		't', 30),
	"victim's worker is draining a backlog");
my $t0 = time();
my ($rc, $out, $err) = $node->psql('postgres', 'DROP DATABASE victim', timeout => 60);
my $took = time() - $t0;
is($rc, 0, 'DROP DATABASE of the listed database succeeds while its worker drains')
  or diag($err);
cmp_ok($took, '<', 10, sprintf('and is not held up by the worker (%.2f s)', $took));
is(OutboxTest::worker_pid($node, 'postgres'), $postgres_worker,
	"the other database's worker was not disturbed");

$node->safe_psql('postgres', 'CREATE DATABASE victim');
$node->safe_psql('victim', 'CREATE EXTENSION outbox');
my $victim_listener = OutboxTest::Listener->new($node, 'victim', 'victim');
$t0 = time();
my $id = $node->safe_psql('victim',
	q{SELECT outbox.save('victim', '{"reborn": true}'::jsonb)});
ok($victim_listener->wait_for_id($id, 30),
	'the re-created database gets a worker again that delivers');
note(sprintf('delivered %.1f s after the save', time() - $t0));
$victim_listener->quit;

is(OutboxTest::launcher_pid($node), $launcher, 'the launcher ran throughout');
$listener->quit;
$node->stop;
done_testing();
