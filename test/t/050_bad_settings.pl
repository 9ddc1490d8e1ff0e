# 050_bad_settings.pl -- invalid values of the outbox.* settings.
#
#  - ALTER SYSTEM SET with garbage, negative, huge and out-of-range values
#    fails with an ERROR (22023) naming the setting, and writes nothing to
#    postgresql.auto.conf; a misspelt outbox.* name fails with 42704;
#  - invalid values written straight into postgresql.conf and reloaded are
#    logged by the server, which keeps the old values, applies the valid
#    changes of the same reload, and the worker keeps delivering;
#  - outbox.databases: a name too long for a database, more than 32 entries,
#    duplicates; outbox.notify_channel of 64 bytes or more;
#  - outbox.role naming a role that does not exist: the worker cannot
#    start, the server keeps running, saved messages wait, and they are
#    delivered once the setting is fixed.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxTest;

my $node = OutboxTest::new_node('bad_settings',
	conf => "outbox.poll_interval = '100ms'");
my $worker_pid = OutboxTest::wait_for_worker($node, 'postgres');
ok($worker_pid, 'the relay worker runs');

# Run sql and return [exit code, "SQLSTATE: message" of the first ERROR].
sub try_sql
{
	my ($sql) = @_;
	my ($rc, $out, $err) =
	  $node->psql('postgres', "\\set VERBOSITY verbose\n$sql");
	my ($error) = $err =~ /ERROR:\s+(.*)/;
	return [ $rc, $error // '' ];
}

########################################################################
# ALTER SYSTEM rejects bad values.

my @bad = (
	[ 'outbox.poll_interval', q{'abc'} ],
	[ 'outbox.poll_interval', q{-1} ],
	[ 'outbox.poll_interval', q{9} ],
	[ 'outbox.poll_interval', q{'2h'} ],
	[ 'outbox.poll_interval', q{'5 parsecs'} ],
	[ 'outbox.poll_interval', q{99999999999} ],
	[ 'outbox.batch_size', q{'abc'} ],
	[ 'outbox.batch_size', q{0} ],
	[ 'outbox.batch_size', q{-1} ],
	[ 'outbox.batch_size', q{10001} ],
	[ 'outbox.batch_size', q{99999999999} ],
	[ 'outbox.batch_size', q{'1.5e3x'} ],
	[ 'outbox.batch_max_bytes', q{'lots'} ],
	[ 'outbox.batch_max_bytes', q{'32kB'} ],
	[ 'outbox.batch_max_bytes', q{'2GB'} ],
	[ 'outbox.batch_max_bytes', q{-1} ],
	[ 'outbox.batch_max_bytes', q{'16 parsecs'} ],
	[ 'outbox.max_retries', q{'lots'} ],
	[ 'outbox.max_retries', q{-1} ],
	[ 'outbox.max_retries', q{1000001} ],
	[ 'outbox.retry_backoff', q{'soon'} ],
	[ 'outbox.retry_backoff', q{0} ],
	[ 'outbox.retry_backoff', q{-5} ],
	[ 'outbox.retry_backoff', q{'25h'} ],
	[ 'outbox.retry_backoff_max', q{'never'} ],
	[ 'outbox.retry_backoff_max', q{0} ],
	[ 'outbox.retry_backoff_max', q{2147483648} ],
	[ 'outbox.processing_timeout', q{'x'} ],
	[ 'outbox.processing_timeout', q{999} ],
	[ 'outbox.processing_timeout', q{-1} ],
	[ 'outbox.processing_timeout', q{'100000000 d'} ],
	[ 'outbox.retention', q{'forever'} ],
	[ 'outbox.retention', q{-2} ],
	[ 'outbox.retention', q{'1 fortnight'} ],
	[ 'outbox.retention', q{99999999999} ],
	[ 'outbox.ordering', q{'sideways'} ],
	[ 'outbox.ordering', q{''} ],
	[ 'outbox.ordering', q{-1} ],
	[ 'outbox.enabled', q{'maybe'} ],
	[ 'outbox.enabled', q{2} ],
	[ 'outbox.enabled', q{''} ],
	[ 'outbox.publisher', q{''} ],
	[ 'outbox.publisher', q{'Notify'} ],
	[ 'outbox.publisher', q{'no spaces'} ],
	[ 'outbox.publisher', q{'x; DROP TABLE outbox.messages'} ],
	[ 'outbox.publisher', q{'../../etc/passwd'} ],
	[ 'outbox.notify_channel', q{repeat} ],    # replaced below: 64 bytes
	[ 'outbox.notify_channel', q{'} . ("\xe2\x82\xac" x 22) . q{'} ],
	[ 'outbox.databases', q{'a,,b'} ],
	[ 'outbox.databases', q{' , '} ],
	[ 'outbox.databases', q{'a,"b'} ],
	[ 'outbox.databases', q{repeat33} ],       # replaced below: 33 names
);
for my $case (@bad)
{
	my ($name, $value) = @$case;
	$value = q{'} . ('c' x 64) . q{'} if $value eq 'repeat';
	$value = q{'} . join(',', map { "db$_" } 1 .. 33) . q{'} if $value eq 'repeat33';
	my $r = try_sql("ALTER SYSTEM SET $name = $value");
	my $shown = length($value) > 40 ? substr($value, 0, 37) . '...' : $value;
	isnt($r->[0], 0, "ALTER SYSTEM SET $name = $shown fails");
	like($r->[1], qr/^22023: .*"\Q$name\E"/,
		"... with 22023 naming $name");
}

# From PostgreSQL 17 on, ALTER SYSTEM may set custom settings it does not
# know, except in a prefix that an extension reserved, as outbox does: that
# is 42602 "invalid configuration parameter name".  Before, every unknown
# name was 42704 "unrecognized configuration parameter".
my $r = try_sql(q{ALTER SYSTEM SET outbox.batchsize = 5});
like(
	$r->[1],
	qr/^(42704: unrecognized configuration parameter|42602: invalid configuration parameter name) "outbox.batchsize"/,
	'a misspelt outbox.* setting is rejected (42704, or 42602 for the reserved prefix)');
$r = try_sql(q{SET outbox.batch_size = 5});
like($r->[1], qr/^55P02: parameter "outbox.batch_size" cannot be changed now/,
	'a session cannot SET a reload setting (55P02)');

my $auto = slurp_file($node->data_dir . '/postgresql.auto.conf');
unlike($auto, qr/outbox\./, 'nothing outbox.* was written to postgresql.auto.conf');

# Database names are identifiers: PostgreSQL truncates longer ones to 63
# bytes (as CREATE DATABASE and connections do), but outbox.databases
# means to reject them (its check hook has a message for that).
my $long = 'd' x 64;
$r = try_sql("ALTER SYSTEM SET outbox.databases = '$long'");
{
	like($r->[1], qr/^22023: .*"outbox.databases"/,
		'a 64-byte database name in outbox.databases is rejected');
}
$r = try_sql(q{ALTER SYSTEM SET outbox.databases = 'postgres,postgres'});
{
	like($r->[1], qr/^22023: .*"outbox.databases"/,
		'a database listed twice in outbox.databases is rejected');
}
$r = try_sql('ALTER SYSTEM SET outbox.databases = '
	  . q{'} . join(',', map { "db$_" } 1 .. 32) . q{'});
is($r->[0], 0, '32 databases are accepted');
$r = try_sql(q{ALTER SYSTEM SET outbox.notify_channel = '} . ('c' x 63) . q{'});
is($r->[0], 0, 'a 63-byte notify_channel is accepted');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET ALL');

########################################################################
# Invalid values written into postgresql.conf, then a reload.

my $listener = OutboxTest::Listener->new($node, 'postgres', 'before', 'all_events');
$node->safe_psql('postgres', q{SELECT outbox.save('before', 'x'::text)});
ok($listener->wait_count(1), 'a message is delivered before the bad reload');

my $offset = OutboxTest::log_position($node);
$node->append_conf(
	'postgresql.conf', qq{
outbox.batch_size = 'abc'
outbox.poll_interval = -5
outbox.ordering = 'sideways'
outbox.enabled = 'perhaps'
outbox.publisher = 'Not A Name'
outbox.retention = '3 fortnights'
outbox.max_retries = 99999999999
# a valid change in the same reload
outbox.notify_channel = 'all_events'
});
$node->reload;
for my $name (qw(batch_size poll_interval ordering enabled publisher retention max_retries))
{
	ok( OutboxTest::wait_for_log_line(
			$node,
		qr/^(?=.*"outbox\.$name")(?=.*(invalid value for parameter|outside the valid range|requires a Boolean value))/,
			$offset),
		"the server logs the invalid outbox.$name");
}
ok( OutboxTest::wait_for_log_line(
		$node, qr/contains errors; unaffected changes were applied/, $offset),
	'the server says the valid changes were applied');
ok(OutboxTest::poll_until($node, 'postgres', 'SHOW outbox.notify_channel', 'all_events'),
	'the valid outbox.notify_channel of the same reload was applied');
is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings
		  WHERE name IN ('outbox.batch_size', 'outbox.poll_interval', 'outbox.ordering',
		                 'outbox.enabled', 'outbox.publisher', 'outbox.retention', 'outbox.max_retries')}),
	'outbox.batch_size=100 outbox.enabled=on outbox.max_retries=5 outbox.ordering=key '
	  . 'outbox.poll_interval=100 outbox.publisher=notify outbox.retention=604800',
	'every invalid setting kept its old value');

# The worker applied the valid change and still works: a message saved now
# arrives on the new channel.
my $id = $node->safe_psql('postgres', q{SELECT outbox.save('after_reload', '{"ok": true}'::jsonb)});
my $n = $listener->wait_for_id($id);
ok($n, 'a message saved after the bad reload is delivered');
is($n && $n->{channel}, 'all_events', '... on the channel set by the same reload');
is(OutboxTest::worker_pid($node, 'postgres'), $worker_pid, 'the worker kept running through the bad reload');

# An unknown outbox.* name in the file is dropped with a warning at reload.
$offset = OutboxTest::log_position($node);
$node->append_conf('postgresql.conf', "outbox.batchsize = 5\n");
$node->reload;
ok( OutboxTest::wait_for_log_line(
		$node, qr/invalid configuration parameter name "outbox\.batchsize"/, $offset),
	'a misspelt outbox.* name in postgresql.conf is reported at reload');
$id = $node->safe_psql('postgres', q{SELECT outbox.save('after_typo', 'x'::text)});
ok($listener->wait_for_id($id), 'and messages are still delivered');
$listener->quit;

########################################################################
# outbox.role naming a role that does not exist.

$node->safe_psql('postgres', q{ALTER SYSTEM SET outbox.role = 'no_such_role'});
$offset = OutboxTest::log_position($node);
$node->restart;
ok( OutboxTest::wait_for_log_line(
		$node, qr/FATAL:\s+role "no_such_role" does not exist/, $offset),
	'with outbox.role naming no role, the worker fails to connect and says why');
$id = $node->safe_psql('postgres', q{SELECT outbox.save('waiting', 'x'::text)});
is($node->safe_psql('postgres', 'SELECT 1'), '1', 'the server keeps running');
is($node->safe_psql('postgres', "SELECT status FROM outbox.messages WHERE id = '$id'"),
	'pending', 'a message saved meanwhile waits');
ok( OutboxTest::poll_until(
		$node, 'postgres',
		"SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'outbox launcher'", 't'),
	'the launcher is still there');

$node->safe_psql('postgres', q{ALTER SYSTEM RESET outbox.role});
$node->restart;
ok(OutboxTest::wait_for_worker($node, 'postgres'), 'with outbox.role reset, the worker starts');
ok( OutboxTest::poll_until(
		$node, 'postgres', "SELECT status FROM outbox.messages WHERE id = '$id'", 'processed'),
	'and the waiting message is delivered');

$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/PANIC|TRAP:|terminated by signal/, 'no crash in the server log');

done_testing();
