
# 007_not_preloaded.pl -- the extension without shared_preload_libraries.
#
# When the server runs without the library preloaded (say it was removed
# from shared_preload_libraries after CREATE EXTENSION), saving a message
# must fail with a plain ERROR, SQLSTATE 55000 (object_not_in_prerequisite_state),
# and the session must go on; reading the table still works.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxTest;

my $node = OutboxTest::new_node('nopreload');
$node->safe_psql('postgres', q{SELECT outbox.save('t', 'while preloaded'::text)});
ok(OutboxTest::wait_all_processed($node, 'postgres', 30),
	'a message saved while preloaded is processed');

$node->stop;
$node->append_conf('postgresql.conf', "shared_preload_libraries = ''");
$node->start;
is(OutboxTest::launcher_pid($node), undef, 'no launcher without preloading');

# Run $sql in a session that goes on after errors, then check it is alive.
sub try_sql
{
	my ($sql) = @_;
	my ($rc, $out, $err) = $node->psql(
		'postgres', "\\set VERBOSITY verbose\n$sql;\nSELECT 'still alive';",
		on_error_stop => 0);
	return ($out, $err);
}

for my $case (
	[ 'save()', q{SELECT outbox.save('t', 'x'::text)} ],
	[ 'save(jsonb)', q{SELECT outbox.save('t', '{}'::jsonb)} ],
	[ 'INSERT', q{INSERT INTO outbox.messages (topic, payload) VALUES ('t', '\x01')} ])
{
	my ($what, $sql) = @$case;
	my ($out, $err) = try_sql($sql);
	like($err, qr/ERROR:  55000: outbox must be loaded via shared_preload_libraries/,
		"$what without preloading: ERROR 55000");
	unlike($err, qr/FATAL|server closed the connection/,
		"$what without preloading does not end the session");
	is($out, 'still alive', "$what: the session goes on");
}

is($node->safe_psql('postgres', 'SELECT count(*) FROM outbox.messages'),
	'1', 'the table can still be read; nothing was added');

$node->stop;
done_testing();
