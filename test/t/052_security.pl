# 052_security.pl -- the relay worker and hostile or unprivileged roles.
#
#  1. The owner of a relayed database (who owns its schema public) plants
#     an "=" for outbox.message_status and a power(int, int) there.  The
#     worker's queries must not run them (it runs as a superuser by
#     default).
#  2. A role without any privilege issues DROP DATABASE for a relayed
#     database (and its owner does so inside a transaction block); both
#     fail, and must leave the relay worker alone.
#  3. The worker runs as a non-superuser outbox.role with only the grants
#     it needs: messages are delivered, a failed message is marked, claims
#     of a session that died are recovered, old messages are purged, with
#     no permission error in the log.  Then each grant beyond README's list
#     is shown to be needed.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxTest;

my $node = OutboxTest::new_node(
	'security',
	databases => 'postgres,appdb',
	create_databases => ['appdb'],
	extension_in => [ 'postgres', 'appdb' ],
	conf => "outbox.poll_interval = '100ms'");

# The application grants documented in README.md.
my $app_grants = q{
GRANT USAGE ON SCHEMA outbox TO %1$s;
GRANT EXECUTE ON FUNCTION outbox.save(text, jsonb, text, jsonb),
                          outbox.save(text, text, text, jsonb),
                          outbox.save(text, bytea, text, jsonb),
                          outbox.next_id(), outbox.valid_headers(jsonb) TO %1$s;
GRANT INSERT ON outbox.messages TO %1$s;
};

# psql as another role; returns (exit code, stdout, stderr).
sub psql_as
{
	my ($role, $db, $sql) = @_;
	my ($rc, $out, $err) =
	  $node->psql($db, $sql, extra_params => [ '-U', $role ]);
	return ($rc, $out, $err);
}

########################################################################
# 1. search_path hijacking by a database owner.

$node->safe_psql('postgres', q{CREATE ROLE app_owner LOGIN;
ALTER DATABASE appdb OWNER TO app_owner;});
$node->safe_psql('appdb', sprintf($app_grants, 'app_owner'));
my $appdb_worker = OutboxTest::wait_for_worker($node, 'appdb');
is( $node->safe_psql(
		'appdb',
		"SELECT usesuper FROM pg_stat_activity a JOIN pg_user u ON u.usesysid = a.usesysid
		 WHERE a.backend_type = 'outbox worker' AND a.datname = 'appdb'"),
	't',
	'(the worker of appdb runs as a superuser)');

my ($rc, $out, $err) = psql_as(
	'app_owner', 'appdb', q{
CREATE TABLE public.hijack (who name, superuser boolean, what text);
GRANT INSERT ON public.hijack TO PUBLIC;
CREATE FUNCTION public.power(a int, b int) RETURNS double precision LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.hijack SELECT current_user, rolsuper, 'power' FROM pg_roles WHERE rolname = current_user;
    RETURN pg_catalog.power(a::float8, b::float8);
END $$;
CREATE FUNCTION public.status_eq(a outbox.message_status, b outbox.message_status) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.hijack SELECT current_user, rolsuper, '=' FROM pg_roles WHERE rolname = current_user;
    RETURN a::text = b::text;
END $$;
CREATE OPERATOR public.= (LEFTARG = outbox.message_status, RIGHTARG = outbox.message_status,
                          FUNCTION = public.status_eq);
});
is($rc, 0, 'the database owner can plant an operator and a function in schema public')
  or diag($err);

# An envelope over 8000 bytes: the worker marks the message failed, which
# computes the retry delay with power().
my $big = $node->safe_psql('appdb',
	q{SELECT outbox.save('big', repeat('x', 9000))}, extra_params => [ '-U', 'app_owner' ]);
ok( OutboxTest::poll_until(
		$node, 'appdb', "SELECT status FROM outbox.messages WHERE id = '$big'", 'failed'),
	'the oversized message was marked failed by the worker');
# The worker's claim query, prepared when it started, still uses the real
# "="; a restarted worker would prepare it again.
{
	is($node->safe_psql('appdb', q{SELECT count(*) FROM public.hijack WHERE superuser}),
		'0', 'the worker ran none of the database owner\'s functions as a superuser');
}
# Disarm, so the rest of the test does not depend on the outcome.
psql_as('app_owner', 'appdb',
	'DROP OPERATOR public.= (outbox.message_status, outbox.message_status); '
	  . 'DROP FUNCTION public.power(int, int)');

########################################################################
# 2. DROP DATABASE by someone who may not drop it.

$node->safe_psql('postgres', 'CREATE ROLE mallory LOGIN');
my $postgres_worker = OutboxTest::wait_for_worker($node, 'postgres');
($rc, $out, $err) = psql_as('mallory', 'postgres', 'DROP DATABASE postgres');
like($err, qr/must be owner of database postgres/,
	'a role without privileges cannot drop the database');
{
	is(OutboxTest::worker_pid($node, 'postgres'), $postgres_worker,
		'and its failed DROP DATABASE left the relay worker running');
}

$appdb_worker = OutboxTest::wait_for_worker($node, 'appdb');
($rc, $out, $err) =
  psql_as('app_owner', 'appdb', "BEGIN;\nDROP DATABASE appdb;\nCOMMIT;");
like($err, qr/DROP DATABASE cannot run inside a transaction block/,
	'DROP DATABASE inside a transaction block fails');
{
	is(OutboxTest::worker_pid($node, 'appdb'), $appdb_worker,
		'and left the relay worker running');
}

########################################################################
# 3. The worker as a non-superuser.
#
# README.md lists USAGE on schema outbox and SELECT, UPDATE, DELETE on
# outbox.messages.  Every UPDATE also evaluates the CHECK constraint that
# calls outbox.valid_headers(), so the role needs EXECUTE on it too.

my $worker_grants = q{
GRANT USAGE ON SCHEMA outbox TO relay_worker;
GRANT SELECT, UPDATE, DELETE ON outbox.messages TO relay_worker;
GRANT EXECUTE ON FUNCTION outbox.valid_headers(jsonb) TO relay_worker;
};
$node->safe_psql('postgres', 'CREATE ROLE relay_worker LOGIN');
$node->safe_psql($_, $worker_grants) for qw(postgres appdb);
$node->safe_psql('postgres', q{ALTER SYSTEM SET outbox.role = 'relay_worker'});
$node->restart;
my $log_start = OutboxTest::log_position($node);
$postgres_worker = OutboxTest::wait_for_worker($node, 'postgres');
ok($postgres_worker && OutboxTest::wait_for_worker($node, 'appdb'),
	'the workers start as relay_worker');
is( $node->safe_psql(
		'postgres',
		"SELECT a.usename || ' ' || u.usesuper FROM pg_stat_activity a JOIN pg_user u ON u.usesysid = a.usesysid
		 WHERE a.backend_type = 'outbox worker' ORDER BY a.datname"),
	"relay_worker false\nrelay_worker false",
	'both workers run as relay_worker, not a superuser');

my $listener = OutboxTest::Listener->new($node, 'postgres', 'orders');
my $first = $node->safe_psql('postgres',
	q{SELECT outbox.save('orders', '{"n": 1}'::jsonb, 'k', '{"trace": "t"}')});
ok($listener->wait_for_id($first), 'a message is delivered by the non-superuser worker');
ok( OutboxTest::poll_until(
		$node, 'postgres', "SELECT status FROM outbox.messages WHERE id = '$first'", 'processed'),
	'and marked processed');
my $id;

$id = $node->safe_psql('appdb', q{SELECT outbox.save('big', repeat('y', 9000))});
ok( OutboxTest::poll_until(
		$node, 'appdb', "SELECT status FROM outbox.messages WHERE id = '$id'", 'failed'),
	'an oversized message is marked failed by the non-superuser worker');

# A claim left by a session that is gone comes back and is delivered; at
# the same time, processed messages older than 1 s are purged.
my $claimed = $node->safe_psql(
	'postgres', q{
BEGIN;
SELECT outbox.save('orders', '{"n": 2}'::jsonb) AS id \gset
SELECT id FROM outbox.fetch_pending(10) WHERE id = :'id';
COMMIT;
});
like($claimed, qr/^[0-9a-f-]{36}$/, 'a session claimed a message and went away');
OutboxTest::set_conf($node, 'outbox.retention' => '1s');
ok($listener->wait_for_id($claimed), 'the worker recovered the dead session\'s claim and delivered it');
ok( OutboxTest::poll_until(
		$node, 'postgres', "SELECT count(*) FROM outbox.messages WHERE id = '$first'", '0'),
	'the worker purged the first message once it was older than outbox.retention');
is(OutboxTest::log_count($node, qr/permission denied|must be owner|42501/, $log_start), 0,
	'no permission error in the server log');

# Each grant beyond README's list is needed.
my $offset = OutboxTest::log_position($node);
$node->safe_psql('postgres',
	'REVOKE EXECUTE ON FUNCTION outbox.valid_headers(jsonb) FROM relay_worker');
$id = $node->safe_psql('postgres', q{SELECT outbox.save('orders', '{"n": 3}'::jsonb)});
ok( OutboxTest::wait_for_log_line(
		$node, qr/permission denied for function valid_headers/, $offset),
	'without EXECUTE on outbox.valid_headers the worker cannot mark messages');
is($node->safe_psql('postgres', "SELECT status FROM outbox.messages WHERE id = '$id'"),
	'pending', 'so the message stays pending');
$node->safe_psql('postgres',
	'GRANT EXECUTE ON FUNCTION outbox.valid_headers(jsonb) TO relay_worker');
# A commit that saves wakes the worker from its error backoff.
$node->safe_psql('postgres', q{SELECT outbox.save('orders', 'wake up'::text)});
ok($listener->wait_for_id($id), 'with EXECUTE granted again it is delivered');

# Without DELETE the purge fails.  That should not stop publishing.
$offset = OutboxTest::log_position($node);
$node->safe_psql('postgres', 'REVOKE DELETE ON outbox.messages FROM relay_worker');
ok( OutboxTest::wait_for_log_line(
		$node, qr/permission denied for table messages/, $offset),
	'without DELETE the worker cannot purge (and logs it)');
$id = $node->safe_psql('postgres', q{SELECT outbox.save('orders', '{"n": 4}'::jsonb)});
{
	ok($listener->wait_for_id($id, 3), 'messages are still delivered while the purge fails');
}
$node->safe_psql('postgres', 'GRANT DELETE ON outbox.messages TO relay_worker');
$node->safe_psql('postgres', q{SELECT outbox.save('orders', 'wake up'::text)});
ok($listener->wait_for_id($id), 'with DELETE granted again the message is delivered');

$listener->quit;
$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/PANIC|TRAP:|terminated by signal/, 'no crash in the server log');

done_testing();
