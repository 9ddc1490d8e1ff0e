
# 095_destinations_secrets.pl -- destination secrets (signing_secret,
# headers such as Authorization) never reach the server log or
# pg_stat_activity.
#
# With log_statement = 'all', log_min_duration_statement = 0 and error
# parameters logged (log_parameter_max_length_on_error = -1), the secrets
# are passed every way a client can:
#  - the simple protocol (psql), create_destination and alter_destination,
#    also inside a DO block and with named arguments;
#  - the extended protocol (pgbench -M extended and -M prepared with a
#    custom script: the options are a bound parameter);
#  - calls that fail (a bad option next to the secret), both protocols;
# and none of the secrets is anywhere in the server log, while the log
# does show that statements ran (redacted, not dropped silently).  In
# pg_stat_activity, a create_destination that waits (on another session's
# uncommitted destination of the same name) shows the redacted text, and
# so does a session idle in transaction after one.

use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxDestinations;
use OutboxTest;

my $node = OutboxTest::new_node(
	'dest_secrets', conf => q{
log_statement = 'all'
log_min_duration_statement = 0
log_parameter_max_length = -1
log_parameter_max_length_on_error = -1
log_min_error_statement = 'error'
});

my $offset = OutboxTest::log_position($node);
my @secrets;
my $n = 0;
# A fresh secret, remembered to be looked for in the log.
sub secret
{
	my $s = sprintf('S3cr3t-%04d-%s', ++$n, join('', map { ('a' .. 'z')[ rand 26 ] } 1 .. 8));
	push @secrets, $s;
	return $s;
}

sub sql { return $node->safe_psql('postgres', $_[0]) }

########################################################################
# The simple protocol.

my $s1 = secret();
my $s2 = secret();
sql(qq{SELECT outbox.create_destination('sec_hook', 'http',
       '{"url": "http://127.0.0.1:9/x", "signing_secret": "$s1", "headers": {"Authorization": "Bearer $s2"}}')});
my $s3 = secret();
sql(qq{SELECT outbox.alter_destination('sec_hook', '{"signing_secret": "$s3"}')});
my $s4 = secret();
sql(qq{SELECT outbox.alter_destination(name => 'sec_hook', options => '{"headers": {"Authorization": "Basic $s4"}}')});
my $s5 = secret();
sql(qq{DO \$\$ BEGIN PERFORM outbox.create_destination('sec_do', 'http', '{"url": "http://127.0.0.1:9/y", "signing_secret": "$s5"}'); END \$\$});
my $s6 = secret();
my ($rc, $out, $err) = $node->psql('postgres',
	qq{SELECT outbox.alter_destination('sec_hook', '{"signing_secret": "$s6", "bogus": true}')});
like($err, qr/unknown option "bogus"/, 'a failing alter_destination (simple protocol) fails');
is(sql(q{SELECT options ->> 'signing_secret' FROM outbox.destination WHERE name = 'sec_hook'}), $s3,
	'the destination has the secret last set (superusers read the table)');
is(sql(q{SELECT options::text FROM outbox.destinations WHERE name = 'sec_hook'}), '{"url": "http://127.0.0.1:9/x"}',
	'outbox.destinations shows no secret');

########################################################################
# The extended protocol: the options as a bound parameter.

my $dir = PostgreSQL::Test::Utils::tempdir('pgbench');
sub pgbench_call
{
	my ($mode, $function, $options) = @_;
	open(my $fh, '>', "$dir/call.sql") or die $!;
	print $fh "SELECT outbox.$function('sec_hook', :opts);\n";
	close $fh;
	my ($stdout, $stderr) = ('', '');
	my $ok = IPC::Run::run(
		[
			'pgbench', '-n', '-t', '1', '-M', $mode,
			'-h', $node->host, '-p', $node->port,
			'-D', "opts=$options", '-f', "$dir/call.sql", 'postgres'
		],
		'<', \undef, '>', \$stdout, '2>', \$stderr);
	return ($ok, $stderr);
}

my $s7 = secret();
my ($ok, $e) = pgbench_call('extended', 'alter_destination', qq{{"signing_secret": "$s7"}});
ok($ok, 'alter_destination through the extended protocol (pgbench -M extended)') or diag($e);
is(sql(q{SELECT options ->> 'signing_secret' FROM outbox.destination WHERE name = 'sec_hook'}), $s7, 'took effect');
my $s8 = secret();
($ok, $e) = pgbench_call('prepared', 'alter_destination', qq{{"headers": {"Authorization": "Bearer $s8"}}});
ok($ok, 'alter_destination as a prepared statement (pgbench -M prepared)') or diag($e);
is(sql(q{SELECT options -> 'headers' ->> 'Authorization' FROM outbox.destination WHERE name = 'sec_hook'}),
	"Bearer $s8", 'took effect');
my $s9 = secret();
($ok, $e) = pgbench_call('extended', 'alter_destination', qq{{"signing_secret": "$s9", "bogus": 1}});
ok(!$ok, 'a failing alter_destination through the extended protocol fails');
my $s10 = secret();
($ok, $e) = pgbench_call('prepared', 'alter_destination', qq{{"signing_secret": "$s10", "timeout": "never"}});
ok(!$ok, 'and as a prepared statement');

########################################################################
# pg_stat_activity.

my $holder = $node->background_psql('postgres');
my $s11 = secret();
my $holder_pid = $holder->query_safe('SELECT pg_backend_pid()');
$holder->query_safe(qq{BEGIN; SELECT outbox.create_destination('sec_wait', 'http', '{"url": "http://127.0.0.1:9/z", "signing_secret": "$s11"}')});
my $s12 = secret();
my $waiter = $node->background_psql('postgres');
$waiter->query_until(qr/waiting/, qq{\\echo waiting\nSELECT outbox.create_destination('sec_wait', 'http', '{"url": "http://127.0.0.1:9/z", "signing_secret": "$s12"}');\n});
ok( OutboxTest::poll_until($node, 'postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%create_destination%'}, '1'),
	'a create_destination waits for the uncommitted one of the same name');
my $activity = sql(q{SELECT string_agg(pid || ' ' || state || ': ' || query, E'\n') FROM pg_stat_activity WHERE query LIKE '%destination%' AND pid <> pg_backend_pid()});
unlike($activity, qr/\Q$s11\E|\Q$s12\E/, 'pg_stat_activity shows neither session\'s secret');
like($activity, qr/active: SELECT outbox\.create_destination\(\.\.\.\) -- arguments not shown/,
	'the waiting one shows the call without its arguments');
like($activity, qr/^$holder_pid idle in transaction: SELECT outbox\.create_destination\(\.\.\.\) -- arguments not shown$/m,
	'so does the one idle in transaction after it');
$holder->query_safe('ROLLBACK');
$holder->quit;
$waiter->quit;
ok(OutboxTest::poll_until($node, 'postgres', q{SELECT count(*) FROM outbox.destination WHERE name = 'sec_wait'}, '1'),
	'the waiting create_destination went through once the other rolled back');

########################################################################
# The log.

my $log = OutboxDestinations::secrets_not_logged($node, $offset, @secrets);
like($log, qr/statement: \(a statement mentioning outbox\.create_destination, not shown\)/,
	'the log says a create_destination statement ran, without it');
like($log, qr/statement: \(a statement mentioning outbox\.alter_destination, not shown\)/,
	'and likewise for alter_destination');
like($log, qr/ERROR:  unknown option "bogus" for publisher "http"/, 'errors are logged (without their statement)');
like($log, qr/statement: SELECT 'end of the secrets test'/, 'other statements are logged as usual');
unlike($log, qr/sec_hook', \$1\)|\$1 = '/, 'no extended-protocol statement or parameter of those calls either');

$node->stop;
done_testing();
