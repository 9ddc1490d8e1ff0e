# 053_owner_escalation.pl -- a database owner must never become superuser
# through the extension (issue 22, findings 1 and 2).
#
# The owner of a relayed database is not a superuser, but chooses the
# database's search_path (ALTER DATABASE ... SET) and may create schemas in
# it.  The relay worker connects as a superuser (outbox.role empty), and
# superusers manage destinations.  The owner plants operators in a schema
# it puts first on the path, each of which tries ALTER ROLE ... SUPERUSER
# and records who ran it, then tries four ways in:
#
#  1. the function publisher's call of the destination's function, after a
#     worker restart (pause and resume of the destination);
#  2. create_destination, alter_destination, set_destination_secret and
#     drop_destination, called by a superuser connected to the database;
#  3. replacing the destination's function: the owner may drop what is in
#     a schema it owns and create a function of the same name;
#  4. an unqualified function name, resolved through a schema named like
#     the worker's role ("$user" comes first on the default path): refused
#     at create, and refused by the worker when an older version stored it.
#
# After each, the owner is still not a superuser, and the planted code did
# not run as one.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxTest;

my $node = OutboxTest::new_node(
	'owner_escalation',
	databases => 'victim',
	create_databases => ['victim'],
	extension_in => ['victim'],
	conf => "outbox.poll_interval = '100ms'");

# As the superuser, with search_path pinned for the test's own statements
# (the planted operators would otherwise catch them too).
sub su
{
	my ($sql) = @_;
	return $node->safe_psql('victim', "SET search_path = pg_catalog; $sql");
}

# Poll as the superuser, with the path pinned as in su().
sub su_poll
{
	my ($sql, $expected) = @_;
	return OutboxTest::poll_until($node, 'victim', "SET search_path = pg_catalog; $sql",
		$expected);
}

sub owner_sql
{
	my ($sql) = @_;
	return $node->safe_psql('victim', $sql, extra_params => [ '-U', 'owner' ]);
}

# The owner is not a superuser, and no planted code ran as one.
sub no_escalation
{
	my ($what) = @_;
	is( $node->safe_psql('postgres',
			"SELECT rolsuper FROM pg_roles WHERE rolname = 'owner'"),
		'f', "$what: the database owner is still not a superuser");
	is(su('SELECT count(*) FROM evil.hijack WHERE superuser'),
		'0', "$what: none of the owner's code ran as a superuser");
}

$node->safe_psql('postgres', q{
CREATE ROLE owner LOGIN;
ALTER DATABASE victim OWNER TO owner;
});
su(q{
GRANT USAGE ON SCHEMA outbox TO owner;
CREATE SCHEMA app;
CREATE TABLE app.received (id uuid PRIMARY KEY, topic text);
CREATE FUNCTION app.deliver(m outbox.messages) RETURNS void LANGUAGE sql
	AS $$ INSERT INTO app.received VALUES (m.id, m.topic) $$;
SELECT outbox.create_destination('fn', 'function', '{"function": "app.deliver"}');
SELECT outbox.subscribe('fn', 'orders.*');
});

# The owner's trap: every planted operator records who ran it and tries to
# make the owner a superuser.
owner_sql(q{
CREATE SCHEMA evil;
CREATE TABLE evil.hijack (who name, superuser boolean, what text);
GRANT USAGE ON SCHEMA evil TO PUBLIC;
GRANT INSERT ON evil.hijack TO PUBLIC;
CREATE FUNCTION evil.record(what text) RETURNS void LANGUAGE plpgsql
	SET search_path = pg_catalog AS $$
BEGIN
	INSERT INTO evil.hijack
		SELECT current_user, r.rolsuper, what FROM pg_roles r WHERE r.rolname = current_user;
	BEGIN
		ALTER ROLE owner SUPERUSER;
	EXCEPTION WHEN insufficient_privilege THEN
		NULL;
	END;
END $$;
CREATE FUNCTION evil.uuid_eq(a uuid, b uuid) RETURNS boolean LANGUAGE plpgsql
	SET search_path = pg_catalog AS $$
BEGIN PERFORM evil.record('=(uuid, uuid)'); RETURN uuid_eq(a, b); END $$;
CREATE FUNCTION evil.int_eq(a int, b int) RETURNS boolean LANGUAGE plpgsql
	SET search_path = pg_catalog AS $$
BEGIN PERFORM evil.record('=(int, int)'); RETURN int4eq(a, b); END $$;
CREATE FUNCTION evil.text_eq(a text, b text) RETURNS boolean LANGUAGE plpgsql
	SET search_path = pg_catalog AS $$
BEGIN PERFORM evil.record('=(text, text)'); RETURN texteq(a, b); END $$;
CREATE FUNCTION evil.text_ne(a text, b text) RETURNS boolean LANGUAGE plpgsql
	SET search_path = pg_catalog AS $$
BEGIN PERFORM evil.record('<>(text, text)'); RETURN textne(a, b); END $$;
CREATE OPERATOR evil.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = evil.uuid_eq);
CREATE OPERATOR evil.= (LEFTARG = int, RIGHTARG = int, FUNCTION = evil.int_eq);
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.text_eq);
CREATE OPERATOR evil.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.text_ne);
ALTER DATABASE victim SET search_path = evil, pg_catalog, "$user", public;
});

# The trap works: a superuser session that compares uuids under the
# owner's path runs the owner's operator.
$node->safe_psql('victim',
	q{SELECT '00000000-0000-0000-0000-000000000000'::uuid = '00000000-0000-0000-0000-000000000000'::uuid});
is(su(q{SELECT count(*) FROM evil.hijack WHERE superuser}), '1',
	'(the trap works: a superuser comparing uuids under that path runs it)');
is( $node->safe_psql('postgres', "SELECT rolsuper FROM pg_roles WHERE rolname = 'owner'"),
	't', '(and would make the owner a superuser)');
$node->safe_psql('postgres', 'ALTER ROLE owner NOSUPERUSER');
su('TRUNCATE evil.hijack');

########################################################################
# 1. The function publisher, in a worker started under the owner's path.

su(q{SELECT outbox.pause_destination('fn')});
su(q{SELECT outbox.resume_destination('fn')});
my $id = su(q{SELECT outbox.save('orders.created', '{"n": 1}'::jsonb)});
ok(su_poll(
		"SELECT count(*) FROM app.received WHERE id = '$id'", '1'),
	'the function destination delivered the message (its function received it)');
no_escalation('the function publisher');

########################################################################
# 2. The management functions, called by a superuser under the owner's path.

$node->safe_psql('victim', q{
SELECT outbox.create_destination('other', 'function', '{"function": "app.deliver"}');
SELECT outbox.alter_destination('other', '{"function": "app.deliver", "batch_size": null}');
SELECT outbox.drop_destination('other');
SELECT outbox.alter_destination('fn', '{"function": "app.deliver"}');
SELECT outbox.create_destination('hook', 'http', '{"url": "http://127.0.0.1:9/{topic}"}');
SELECT outbox.set_destination_secret('hook', 'headers', '{"Authorization": "Bearer t"}');
SELECT outbox.drop_destination('hook');
});
no_escalation('create, alter, set_destination_secret and drop_destination');

########################################################################
# 3. The owner replaces the function: it runs as the owner, not as the
# worker's superuser role.

su(q{
CREATE SCHEMA owned AUTHORIZATION owner;
CREATE FUNCTION owned.deliver(m outbox.messages) RETURNS void LANGUAGE sql
	AS $$ INSERT INTO app.received VALUES (m.id, m.topic) $$;
SELECT outbox.create_destination('fn2', 'function', '{"function": "owned.deliver"}');
SELECT outbox.subscribe('fn2', 'invoices.*');
});
owner_sql(q{
DROP FUNCTION owned.deliver(outbox.messages);
CREATE FUNCTION owned.deliver(m outbox.messages) RETURNS void LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.record('owned.deliver'); END $$;
});
$id = su(q{SELECT outbox.save('invoices.paid', '{"n": 2}'::jsonb)});
ok(su_poll(
		q{SELECT count(*) FROM evil.hijack WHERE what = 'owned.deliver'}, '1'),
	"the worker called the owner's replacement function");
is(su(q{SELECT who FROM evil.hijack WHERE what = 'owned.deliver'}),
	'owner', 'as its owner');
no_escalation('a function replaced by the owner of its schema');

########################################################################
# 4. Unqualified names.

my ($rc, $out, $err) = $node->psql('victim',
	q{SET search_path = pg_catalog;
	  SELECT outbox.create_destination('bare', 'function', '{"function": "deliver"}')},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/22023/, 'create_destination refuses an unqualified function name (22023)');
like($err, qr/schema-qualified/, 'saying it must be schema-qualified');
($rc, $out, $err) = $node->psql('postgres',
	q{ALTER SYSTEM SET outbox.publisher_function = 'deliver'});
like($err, qr/schema-qualified/, 'so does outbox.publisher_function');

# A destination of 0.3.0 may hold an unqualified name: the worker must not
# resolve it, here to the owner's schema named like the worker's role.
owner_sql(q{
CREATE SCHEMA postgres;
CREATE FUNCTION postgres.deliver(m outbox.messages) RETURNS void LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.record('postgres.deliver'); END $$;
});
su(q{
SELECT outbox.create_destination('old', 'function', '{"function": "app.deliver"}');
UPDATE outbox.destination SET options = '{"function": "deliver"}' WHERE name = 'old';
SELECT outbox.subscribe('old', 'legacy.*');
});
su(q{SELECT outbox.pause_destination('old')});
su(q{SELECT outbox.resume_destination('old')});
$id = su(q{SELECT outbox.save('legacy.x', '{"n": 3}'::jsonb)});
ok( su_poll(
		q{SELECT count(*) FROM outbox.worker_status()
		  WHERE destination = 'old' AND last_error LIKE '%not schema-qualified%'}, '1'),
	'the worker refuses a stored unqualified name, saying why in worker_status()');
is(su(q{SELECT count(*) FROM evil.hijack WHERE what = 'postgres.deliver'}),
	'0', 'and never resolves it');
is(su(q{SELECT pending FROM outbox.destination_stats WHERE destination = 'old'}),
	'1', 'the message waits for the name to be fixed');
su(q{SELECT outbox.alter_destination('old', '{"function": "app.deliver"}')});
ok(su_poll(
		"SELECT count(*) FROM app.received WHERE id = '$id'", '1'),
	'once qualified, the message is delivered');
no_escalation('unqualified names');

$node->stop;
done_testing();
