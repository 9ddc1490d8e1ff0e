# 142_redis_settings.pl -- settings, credentials and connection problems
# of the redis publisher, against a real redis-server:
#
#  - bad values are refused with a message (a URL with a password in it
#    without quoting it; rediss:// with the reason: no TLS in hiredis 0.14);
#  - outbox.redis_password is superuser-only, not in pg_settings, and never
#    in the server log;
#  - a wrong password, no password where one is needed, a database that
#    does not exist, an unknown host, a refused port: messages stay
#    pending, the problem is logged once with a clear text, and a reload
#    that fixes it delivers them;
#  - the default user with a password only (AUTH password), and a database
#    other than 0.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxRedis;
use OutboxTest;

OutboxRedis::require_redis();

my $redis = OutboxRedis->start('r', conf => "databases 4\n");
my $url = $redis->url;
my ($user, $password) = ($redis->user, $redis->password);
my $node = OutboxTest::new_node('redis_settings', conf => qq{
shared_preload_libraries = 'outbox, outbox_redis'
outbox.publisher = 'redis'
outbox.redis_url = '$url'
outbox.redis_username = '$user'
outbox.redis_password = '$password'
outbox.redis_timeout = '2s'
outbox.poll_interval = '100ms'
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '300ms'
log_statement = 'none'
});

sub psql_value
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql);
}

# Save one message and wait until it is delivered.
my $n = 0;
sub delivered
{
	my $id = psql_value("SELECT outbox.save('probe', '{\"n\": " . ++$n . "}'::jsonb)");
	return OutboxTest::wait_processed($node, $id) ? $id : undef;
}

ok(delivered(), 'delivered with the configured credentials');

########################################################################
# 1. Bad values are refused with a message.

my @bad = (
	[ 'outbox.redis_url', '', qr/must start with redis:\/\// ],
	[ 'outbox.redis_url', 'http://127.0.0.1:6379', qr/must start with redis:\/\// ],
	[ 'outbox.redis_url', 'rediss://127.0.0.1:6380', qr/TLS \(rediss:\/\/\) is not available: this build uses hiredis 0\.14\.\d+, which has no TLS/ ],
	[ 'outbox.redis_url', 'redis://127.0.0.1:99999', qr/invalid port/ ],
	[ 'outbox.redis_url', 'redis://127.0.0.1:6379/x', qr/path must be a database number/ ],
	[ 'outbox.redis_url', 'redis://127.0.0.1:6379?db=1', qr/must not have a query/ ],
	[ 'outbox.redis_url', 'redis://', qr/no host/ ],
	[ 'outbox.redis_stream', '', qr/must not be empty/ ],
	[ 'outbox.redis_maxlen', '-1', qr/outside the valid range/ ],
	[ 'outbox.redis_timeout', '10ms', qr/outside the valid range/ ],
	[ 'outbox.redis_dedupe_window', '10ms', qr/outside the valid range/ ],
);
for my $case (@bad)
{
	my ($name, $value, $expect) = @$case;
	my ($rc, $out, $err) = $node->psql('postgres', "ALTER SYSTEM SET $name = '$value'");
	like($err, $expect, "$name = '$value' is refused with a reason");
}
my ($rc, $out, $err) = $node->psql('postgres', q{ALTER SYSTEM SET outbox.redis_url = 'redis://someone:hunter2secret@127.0.0.1'});
like($err, qr/invalid value for parameter "outbox.redis_url".*must not contain a user name or password/s,
	'a URL with credentials is refused');
unlike($err, qr/hunter2secret/, 'without quoting it');

########################################################################
# 2. The password stays secret.

$node->safe_psql('postgres', 'CREATE ROLE app LOGIN');
($rc, $out, $err) = $node->psql('postgres', 'SHOW outbox.redis_password', extra_params => [ '-U', 'app' ]);
isnt($rc, 0, 'another role cannot SHOW the password');
($rc, $out, $err) = $node->psql('postgres', "SELECT current_setting('outbox.redis_password')",
	extra_params => [ '-U', 'app' ]);
isnt($rc, 0, 'nor read it with current_setting()');
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_settings WHERE name = 'outbox.redis_password'"),
	'0', 'it is not in pg_settings');
my $statement_secret = 'secret-in-a-statement-4712';
$node->safe_psql('postgres',
	"SET log_statement = 'all'; ALTER SYSTEM SET outbox.redis_password = '$statement_secret'; "
	  . 'ALTER SYSTEM RESET outbox.redis_password');

########################################################################
# 3. Connection problems: pending, logged once, fixed by a reload.

# Change settings in postgresql.conf, reload, save a message and wait until
# the problem is logged; returns whether it was, and how often.
sub problem_after
{
	my ($settings, $expect) = @_;
	my $offset = OutboxTest::log_position($node);
	$node->append_conf('postgresql.conf', join('', map { "$_ = '$settings->{$_}'\n" } sort keys %$settings));
	$node->reload;
	my $id = psql_value("SELECT outbox.save('probe', '{\"problem\": true}'::jsonb)");
	my $ok = OutboxTest::wait_for_log_line($node, $expect, $offset);
	my $state = OutboxTest::message_state($node, $id);
	is($state->{status} . '/' . $state->{retries}, 'pending/0',
		join(', ', map { "$_ = '$settings->{$_}'" } sort keys %$settings) . ': the message waits, untouched');
	sleep 1;    # a second of retrying: must not log again
	return ($ok, OutboxTest::log_count($node, $expect, $offset));
}

my $addr = qr/redis:\/\/127\.0\.0\.1:\d+\/\d+/;
my ($ok, $count) = problem_after({ 'outbox.redis_password' => 'wrong-password-1234' },
	qr/WARNING:  outbox redis publisher: could not connect to $addr: Redis refused the credentials of user "outbox_test": WRONGPASS invalid username-password pair/);
ok($ok, 'a wrong password: Redis\' refusal is logged');
is($count, 1, 'once');
$node->append_conf('postgresql.conf', "outbox.redis_password = '$password'\n");
$node->reload;
ok(OutboxTest::wait_all_processed($node, 'postgres'), 'the right password delivers the waiting message');

($ok, $count) = problem_after({ 'outbox.redis_password' => '', 'outbox.redis_username' => '' },
	qr/could not connect to $addr: could not load the publisher's script: NOAUTH Authentication required/);
ok($ok, 'no password where Redis needs one: clear error');
like(slurp_file($node->logfile), qr/HINT:  Redis needs a password: set outbox.redis_password/, 'with a hint');

# The default user, with its password only.
my $admin = $redis->admin_password;
$node->append_conf('postgresql.conf', "outbox.redis_password = '$admin'\n");
$node->reload;
ok(OutboxTest::wait_all_processed($node, 'postgres'), 'AUTH with a password only (the default user) works');

($ok, $count) = problem_after({ 'outbox.redis_url' => "$url/9" },
	qr/could not connect to redis:\/\/127\.0\.0\.1:\d+\/9: could not select database 9: ERR DB index is out of range/);
ok($ok, 'a database that does not exist: clear error');
is($count, 1, 'logged once');
$node->append_conf('postgresql.conf', "outbox.redis_url = '$url/2'\n");
$node->reload;
ok(OutboxTest::wait_all_processed($node, 'postgres'), 'database 2 works');
$redis->command('SELECT', '2');
is($redis->command('XLEN', 'probe'), 1, 'and the message is in database 2');
$redis->command('SELECT', '0');

($ok, $count) = problem_after({ 'outbox.redis_url' => 'redis://nosuch.invalid:6379' },
	qr/could not connect to redis:\/\/nosuch\.invalid:6379\/0: could not resolve "nosuch\.invalid"/);
ok($ok, 'an unknown host: clear error');

my $dead_port = PostgreSQL::Test::Cluster::get_free_port();
($ok, $count) = problem_after({ 'outbox.redis_url' => "redis://127.0.0.1:$dead_port" },
	qr/could not connect to redis:\/\/127\.0\.0\.1:$dead_port\/0: Connection refused/);
ok($ok, 'a refused port: clear error');
is($count, 1, 'logged once');

$node->append_conf('postgresql.conf', "outbox.redis_url = '$url'\n");
$node->reload;
ok(OutboxTest::wait_all_processed($node, 'postgres'), 'fixed by a reload: the waiting messages are delivered');

########################################################################
# 4. The passwords never reached the log.

my $log = slurp_file($node->logfile);
unlike($log, qr/\Q$password\E/, 'the password is not in the server log');
unlike($log, qr/\Q$admin\E/, 'nor the other one');
unlike($log, qr/wrong-password-1234/, 'nor the wrong one');
unlike($log, qr/\Q$statement_secret\E/, 'a statement setting the password is not logged');
like($log, qr/statement: \(a statement mentioning outbox\.redis_password, not shown\)/,
	'but said to be there');
like($log, qr/parameter "outbox.redis_password" changed\n/, 'its change is logged without the value');

$node->stop;
done_testing();
