
# 099_drop_database_destinations.pl -- DROP DATABASE of a relayed database
# whose destinations have workers running (issue 20).
#
# A database's destination workers are connected to it just as its main
# worker is.  DROP DATABASE must stop them all, keep the launcher from
# starting them again while it runs, and succeed; in 0.3.0 it stopped only
# the main worker and failed after 5 s with "database is being accessed by
# other users".  A failed drop (here: one inside a transaction block) must
# leave every worker running.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxDestinations;
use OutboxTest;

my $node = OutboxTest::new_node(
	'drop_database_destinations',
	databases => 'postgres,victim',
	create_databases => ['victim'],
	extension_in => [ 'postgres', 'victim' ],
	conf => "outbox.poll_interval = '100ms'");

$node->safe_psql('victim', q{
CREATE SCHEMA app;
CREATE TABLE app.received (id uuid PRIMARY KEY);
CREATE FUNCTION app.deliver(m outbox.messages) RETURNS void LANGUAGE sql
	AS $$ INSERT INTO app.received VALUES (m.id) $$;
SELECT outbox.create_destination('n1', 'notify', '{"channel": "n1"}');
SELECT outbox.create_destination('n2', 'notify', '{"channel": "n2"}');
SELECT outbox.create_destination('f1', 'function', '{"function": "app.deliver"}');
SELECT outbox.subscribe(d, 'orders.*') FROM unnest(ARRAY['n1', 'n2', 'f1']) d;
});
my $id = $node->safe_psql('victim', q{SELECT outbox.save('orders.created', '{"n": 1}'::jsonb)});
ok( OutboxTest::poll_until($node, 'victim',
		"SELECT count(*) FROM app.received WHERE id = '$id'", '1'),
	'the function destination delivers (its function received the message)');
my %before;
for my $name (qw(n1 n2 f1))
{
	$before{$name} = OutboxDestinations::wait_worker($node, $name, dbname => 'victim');
	ok($before{$name}, "destination $name has a worker");
}
my $postgres_worker = OutboxTest::wait_for_worker($node, 'postgres');

# A drop that fails on its own stops nothing.
my ($rc, $out, $err) = $node->psql('postgres', 'BEGIN; DROP DATABASE victim; COMMIT;');
like($err, qr/cannot run inside a transaction block/, 'a DROP DATABASE in a transaction block fails');
my %after = OutboxDestinations::worker_pids($node, 'victim');
is_deeply(\%after, \%before, 'and leaves every destination worker running');

my $t0 = time();
($rc, $out, $err) = $node->psql('postgres', 'DROP DATABASE victim', timeout => 60);
my $took = time() - $t0;
is($rc, 0, 'DROP DATABASE succeeds while the destination workers run') or diag($err);
unlike($err, qr/being accessed by other users/, 'no "being accessed by other users"');
note(sprintf('DROP DATABASE took %.2f s', $took));
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE datname = 'victim'"),
	'0', 'no worker of the dropped database is left');
is(OutboxTest::worker_pid($node, 'postgres'), $postgres_worker,
	"the other database's worker was not disturbed");

$node->stop;
done_testing();
