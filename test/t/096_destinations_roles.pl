
# 096_destinations_roles.pl -- destinations under least privilege, and
# two-phase commit.
#
#  - outbox.role is a non-superuser with only the grants README documents
#    for it: the main worker and the destination workers (http, notify and
#    function destinations) connect as it and deliver, and routed messages
#    end processed, although it has no privilege on the destination tables;
#  - an external relay role with EXECUTE on the destination store API only
#    drains an external destination;
#  - PREPARE TRANSACTION of a transaction that saved a routed message is
#    refused (0A000) and nothing of it stays (not the message, not the id
#    horizon: later messages flow); one that saved only unrouted messages
#    prepares, and COMMIT PREPARED publishes them.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxDestinations;
use OutboxHttp;
use OutboxTest;

my $srv = OutboxHttp->start;

my $node = OutboxTest::new_node(
	'dest_roles', conf => q{
outbox.poll_interval = '100ms'
max_prepared_transactions = 2
});

sub sql { return $node->safe_psql('postgres', $_[0]) }

# The worker's role, with README's grants.
sql(q{
CREATE ROLE outbox_worker LOGIN;
GRANT CONNECT ON DATABASE postgres TO outbox_worker;
GRANT USAGE ON SCHEMA outbox TO outbox_worker;
GRANT SELECT, UPDATE, DELETE ON outbox.messages TO outbox_worker;
GRANT EXECUTE ON FUNCTION outbox.valid_headers(jsonb) TO outbox_worker;
CREATE SCHEMA app;
CREATE TABLE app.received (id uuid PRIMARY KEY, topic text);
CREATE FUNCTION app.deliver(m outbox.messages) RETURNS void LANGUAGE sql
	AS $$ INSERT INTO app.received VALUES (m.id, m.topic) $$;
GRANT USAGE ON SCHEMA app TO outbox_worker;
GRANT INSERT ON app.received TO outbox_worker;
GRANT EXECUTE ON FUNCTION app.deliver(outbox.messages) TO outbox_worker;
});
$node->append_conf('postgresql.conf', "outbox.role = 'outbox_worker'\n");
$node->restart;
ok(OutboxTest::wait_for_worker($node, 'postgres'), 'the main worker runs as the non-superuser');

my $url = $srv->url('/r/{topic}');
sql(qq{
SELECT outbox.create_destination('hook', 'http', '{"url": "$url"}');
SELECT outbox.create_destination('note', 'notify', '{"channel": "note"}');
SELECT outbox.create_destination('fn', 'function', '{"function": "app.deliver"}');
SELECT outbox.create_destination('ext', 'external');
SELECT outbox.subscribe(d, 'roles.>') FROM unnest(ARRAY['hook', 'note', 'fn', 'ext']) d;
});
ok(OutboxDestinations::wait_worker($node, $_), "destination $_ has a worker") for qw(hook note fn);
is( sql(q{SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_activity
          WHERE backend_type IN ('outbox worker', 'outbox destination worker')}),
	'outbox_worker', 'every worker connects as outbox.role');
is(sql(q{SELECT rolsuper FROM pg_roles WHERE rolname = 'outbox_worker'}), 'f', 'which is no superuser');
is( sql(q{SELECT has_table_privilege('outbox_worker', 'outbox.destination', 'SELECT')
               OR has_table_privilege('outbox_worker', 'outbox.delivery', 'INSERT')
               OR has_table_privilege('outbox_worker', 'outbox.destination_progress', 'INSERT')}),
	'f', 'and has no privilege on the destination tables');

my $note = OutboxTest::Listener->new($node, 'postgres', 'note');
my @ids = map { sql(qq{SELECT outbox.save('roles.x', '{"n": $_}'::jsonb, 'k' || ($_ % 3))}) } 1 .. 12;
my $plain = sql(q{SELECT outbox.save('plain', '{"n": 0}'::jsonb)});
ok($srv->wait_requests(30, sub { scalar(grep { $_->{status} == 200 } @_) >= 12 }), 'the http destination delivers');
ok($note->wait_count(12, 30), 'so does the notify destination');
ok(OutboxTest::poll_until($node, 'postgres', 'SELECT count(*) FROM app.received', '12'), 'and the function destination');

# The external destination, drained by a role with EXECUTE only.
sql(q{
CREATE ROLE ext_relay LOGIN;
GRANT USAGE ON SCHEMA outbox TO ext_relay;
GRANT EXECUTE ON FUNCTION outbox.fetch_pending(int, text), outbox.mark_processed_for(uuid[], text),
    outbox.mark_failed(uuid, text, text), outbox.retry_failed(uuid[], text) TO ext_relay;
});
my $relay_sql = sub {
	my ($q) = @_;
	my ($rc, $out, $err) = $node->psql('postgres', $q, extra_params => [ '-U', 'ext_relay' ]);
	return $rc == 0 ? $out : "error: $err";
};
my $fetched = $relay_sql->(q{SELECT string_agg(id::text, ',' ORDER BY id) FROM outbox.fetch_pending(100, 'ext')});
is($fetched, join(',', sort @ids), 'a relay role with EXECUTE on the store API only fetches the external destination\'s messages');
is($relay_sql->(qq{SELECT outbox.mark_processed_for('{$fetched}', 'ext')}), '12', 'and marks them processed');
is($relay_sql->(q{SELECT count(*) FROM outbox.messages}) =~ /permission denied/ ? 'denied' : 'read', 'denied',
	'(it cannot read the messages table)');

my $list = join(',', map { "'$_'" } @ids, $plain);
ok(OutboxTest::poll_until($node, 'postgres', "SELECT count(*) FROM outbox.messages WHERE id IN ($list) AND status = 'processed'", '13'),
	'every message ends processed: the routed ones once all four destinations have them, and the default one');
is(sql(q{SELECT count(*) FROM outbox.deliveries WHERE status <> 'processed'}), '0', 'every delivery is processed');

########################################################################
# PREPARE TRANSACTION.

my ($rc, $out, $err) = $node->psql('postgres', q{
BEGIN;
SELECT outbox.save('roles.prepared', '{"n": "routed"}'::jsonb);
PREPARE TRANSACTION 'routed';
});
like($err, qr/cannot prepare a transaction that saved outbox messages routed to destinations/,
	'PREPARE TRANSACTION of a transaction that saved a routed message is refused');
($rc, $out, $err) = $node->psql('postgres', q{
\set VERBOSITY verbose
BEGIN;
SELECT outbox.save('roles.prepared', '{"n": "routed"}'::jsonb);
PREPARE TRANSACTION 'routed';
});
like($err, qr/ERROR:  0A000:/, 'with 0A000');
is(sql(q{SELECT count(*) FROM pg_prepared_xacts}), '0', 'nothing was prepared');
is(sql(q{SELECT count(*) FROM outbox.messages WHERE topic = 'roles.prepared'}), '0', 'and the message is gone');

sql(q{BEGIN; SELECT outbox.save('plain', '{"n": "prepared"}'::jsonb); PREPARE TRANSACTION 'unrouted';});
is(sql(q{SELECT gid FROM pg_prepared_xacts}), 'unrouted', 'a transaction with only unrouted messages prepares');
my $later = sql(q{SELECT outbox.save('roles.after', '{"n": "later"}'::jsonb)});
ok($note->wait_for(30, sub { grep { ($_->{envelope}{id} // '') eq $later } @{ $_[0] } }),
	'routed messages saved meanwhile are delivered (the prepared transaction holds no id horizon back)');
sql(q{COMMIT PREPARED 'unrouted'});
ok( OutboxTest::poll_until($node, 'postgres',
		q{SELECT status FROM outbox.messages WHERE payload = convert_to('{"n": "prepared"}', 'UTF8')}, 'processed'),
	'COMMIT PREPARED: its message is published by the default destination');

$note->quit;
$node->stop;
$srv->stop;
done_testing();
