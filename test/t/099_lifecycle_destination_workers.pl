
# 099_lifecycle_destination_workers.pl -- the lifecycle steps of a relayed
# database whose destinations have workers running (issue 20).
#
# A database's destination workers are connected to it just as its main
# worker is.  Each step must stop (or pause) them all the same way, and
# succeed:
#  - outbox.enabled off pauses every worker of the database, on resumes
#    them, and what was saved meanwhile is delivered;
#  - ALTER DATABASE ... RENAME, which needs the database to itself: the
#    workers are stopped first, none runs under the new name (it is not
#    listed), and renamed back the database gets its workers again;
#  - DROP EXTENSION: every worker of the database exits, and CREATE
#    EXTENSION brings the main worker back, which delivers;
#  - DROP DATABASE: every worker is stopped first and the launcher starts
#    none while the drop runs; a drop that fails on its own (inside a
#    transaction block) leaves every worker running.
# In 0.3.0 the RENAME and the DROP DATABASE stopped only the main worker
# and failed after 5 s with "database is being accessed by other users".
# The times of the steps are printed; no step may take the 5 s that
# PostgreSQL waits for other sessions before it gives up.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxDestinations;
use OutboxTest;

my $node = OutboxTest::new_node(
	'lifecycle_destination_workers',
	databases => 'postgres,victim',
	create_databases => ['victim'],
	extension_in => [ 'postgres', 'victim' ],
	conf => "outbox.poll_interval = '100ms'");

# The delivering function, the three destinations and their subscriptions.
my $destinations_sql = q{
CREATE FUNCTION app.deliver(m outbox.messages) RETURNS void LANGUAGE sql
	AS $$ INSERT INTO app.received VALUES (m.id) $$;
SELECT outbox.create_destination('n1', 'notify', '{"channel": "n1"}');
SELECT outbox.create_destination('n2', 'notify', '{"channel": "n2"}');
SELECT outbox.create_destination('f1', 'function', '{"function": "app.deliver"}');
SELECT outbox.subscribe(d, 'orders.*') FROM unnest(ARRAY['n1', 'n2', 'f1']) d;
};
$node->safe_psql('victim', 'CREATE SCHEMA app; CREATE TABLE app.received (id uuid PRIMARY KEY);'
	  . $destinations_sql);
my $id = $node->safe_psql('victim', q{SELECT outbox.save('orders.created', '{"n": 1}'::jsonb)});
ok( OutboxTest::poll_until($node, 'victim',
		"SELECT count(*) FROM app.received WHERE id = '$id'", '1'),
	'the function destination delivers (its function received the message)');
# Wait until each destination has a worker; keeps their pids in %before.
my %before;
sub wait_destination_workers
{
	my ($when) = @_;
	for my $name (qw(n1 n2 f1))
	{
		$before{$name} = OutboxDestinations::wait_worker($node, $name, dbname => 'victim');
		ok($before{$name}, "destination $name has a worker $when");
	}
}
wait_destination_workers('running');
my $postgres_worker = OutboxTest::wait_for_worker($node, 'postgres');

# Run a statement in database postgres; returns its error and its seconds.
sub timed
{
	my ($sql) = @_;
	my $t0 = time();
	my ($rc, $out, $err) = $node->psql('postgres', $sql, timeout => 60);
	return ($rc == 0 ? '' : $err, time() - $t0);
}

# The outbox workers connected to database $db.
sub workers_in
{
	my ($db) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE datname = '$db' "
		  . "AND backend_type IN ('outbox worker', 'outbox destination worker')");
}

sub delivered
{
	my ($db, $id) = @_;
	return OutboxTest::poll_until($node, $db, "SELECT count(*) FROM app.received WHERE id = '$id'", '1');
}

########################################################################
# outbox.enabled off and on.

OutboxTest::set_conf($node, 'outbox.enabled' => 'off');
ok( OutboxTest::poll_until($node, 'postgres',
		q{SELECT count(*) FILTER (WHERE state <> 'paused') || '/' || count(*)
		  FROM outbox.worker_status() WHERE database = 'victim'}, '0/4'),
	'outbox.enabled = off: the main worker and the three destination workers are paused');
my $held = $node->safe_psql('victim', q{SELECT outbox.save('orders.created', '{"n": 2}'::jsonb)});
OutboxTest::set_conf($node, 'outbox.enabled' => 'on');
ok(delivered('victim', $held), 'on again: what was saved meanwhile is delivered');

########################################################################
# ALTER DATABASE ... RENAME.

my ($error, $took) = timed('ALTER DATABASE victim RENAME TO renamed');
is($error, '', 'ALTER DATABASE ... RENAME succeeds while the destination workers run');
note(sprintf('RENAME took %.2f s', $took));
cmp_ok($took, '<', 5, 'without waiting for other sessions to go');
is(workers_in('renamed'), '0', 'no worker runs in the renamed database, which is not listed');
$node->safe_psql('renamed', q{SELECT outbox.save('orders.created', '{"n": 3}'::jsonb)});
is(workers_in('renamed'), '0', 'and a commit there starts none');
($error, $took) = timed('ALTER DATABASE renamed RENAME TO victim');
is($error, '', 'renamed back');
$id = $node->safe_psql('victim', q{SELECT outbox.save('orders.created', '{"n": 4}'::jsonb)});
ok(delivered('victim', $id), 'the database gets its workers again, and they deliver');
wait_destination_workers('again');

########################################################################
# DROP EXTENSION and CREATE EXTENSION.

my $t0 = time();
$node->safe_psql('victim', 'DROP EXTENSION outbox CASCADE');
ok(OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE datname = 'victim' "
		  . "AND backend_type IN ('outbox worker', 'outbox destination worker')", '0'),
	'DROP EXTENSION: every worker of the database exits');
note(sprintf('DROP EXTENSION until no worker was left: %.2f s', time() - $t0));
# (CASCADE dropped app.deliver with the type of its argument.)
$node->safe_psql('victim', 'CREATE EXTENSION outbox;' . $destinations_sql);
$id = $node->safe_psql('victim', q{SELECT outbox.save('orders.created', '{"n": 5}'::jsonb)});
ok(delivered('victim', $id), 'CREATE EXTENSION again: its workers come back and deliver');
wait_destination_workers('again');

########################################################################
# DROP DATABASE.

# A drop that fails on its own stops nothing.
my ($rc, $out, $err) = $node->psql('postgres', 'BEGIN; DROP DATABASE victim; COMMIT;');
like($err, qr/cannot run inside a transaction block/, 'a DROP DATABASE in a transaction block fails');
my %after = OutboxDestinations::worker_pids($node, 'victim');
is_deeply(\%after, \%before, 'and leaves every destination worker running');

($error, $took) = timed('DROP DATABASE victim');
is($error, '', 'DROP DATABASE succeeds while the destination workers run');
note(sprintf('DROP DATABASE took %.2f s', $took));
cmp_ok($took, '<', 5, 'without waiting for other sessions to go');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE datname = 'victim'"),
	'0', 'no worker of the dropped database is left');
is(OutboxTest::worker_pid($node, 'postgres'), $postgres_worker,
	"the other database's worker was not disturbed");

$node->stop;
done_testing();
