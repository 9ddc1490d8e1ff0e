
# 098_destinations_secret_paths.pl -- secrets set without ever being in
# statement text (issue 22, findings 7 and 8), and credentials never in a
# URL.
#
# The server logs everything it can (log_statement = 'all',
# log_min_duration_statement = 0, parameters logged in full, auto_explain
# of every plan, nested ones too, verbose) and pg_stat_statements tracks
# every statement.  Then:
#  - outbox.set_destination_secret() sets an http destination's signing
#    secret as a bound parameter (pgbench -M extended) and its static
#    Authorization header from a file the server reads (pg_read_file());
#    the receiver checks the signature made with that secret and gets the
#    header: the secrets are used;
#  - with nats-server requiring a user and password, a nats destination
#    gets them the same two ways, and its message is stored in the stream;
#  - a session idle in transaction after such a call shows no secret in
#    pg_stat_activity;
#  - a URL holding credentials, stored as 0.3.0 took it: the worker does not
#    use the destination (the message waits; the reason, without the
#    secret, in worker_status().last_error and the log), and
#    outbox.destinations leaves the URL out; fixed, it delivers;
#  - outbox.http_url (and outbox.nats_url) set with credentials in the
#    configuration file: refused at reload, without quoting the value;
# and none of the secrets is in the server log, in pg_stat_statements or
# in pg_stat_activity.

use strict;
use warnings;

use IPC::Run;
use MIME::Base64;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxDestinations;
use OutboxHttp;
use OutboxTest;

my $with_nats = OutboxDestinations::nats_available();
my $libs = 'outbox' . ($with_nats ? ', outbox_nats' : '') . ', pg_stat_statements, auto_explain';

my $node = OutboxTest::new_node(
	'secret_paths', conf => qq{
shared_preload_libraries = '$libs'
log_statement = 'all'
log_min_duration_statement = 0
log_parameter_max_length = -1
log_parameter_max_length_on_error = -1
log_min_error_statement = 'error'
pg_stat_statements.track = 'all'
auto_explain.log_min_duration = 0
auto_explain.log_nested_statements = on
auto_explain.log_verbose = on
outbox.poll_interval = '100ms'
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '300ms'
outbox.max_retries = 1000
});
sub sql { return $node->safe_psql('postgres', $_[0]) }
sql('CREATE EXTENSION pg_stat_statements');
my $offset = OutboxTest::log_position($node);

my @secrets;
# A fresh secret, remembered to be looked for everywhere.
sub secret
{
	my $s = join('', map { ('a' .. 'z', 'A' .. 'Z', 0 .. 9)[ rand 62 ] } 1 .. 24);
	push @secrets, $s;
	return $s;
}

my $dir = PostgreSQL::Test::Utils::tempdir('secrets');
# A file only the server reads (here: the test's own directory).
sub secret_file
{
	my ($name, $content) = @_;
	open(my $fh, '>', "$dir/$name") or die $!;
	print $fh $content;
	close $fh;
	return "$dir/$name";
}

# Run one statement through the extended protocol, with :value bound as
# a parameter (pgbench -M extended; psql 15 has no \bind).
sub bound_call
{
	my ($statement, $value) = @_;
	open(my $fh, '>', "$dir/call.sql") or die $!;
	print $fh "$statement\n";
	close $fh;
	my ($stdout, $stderr) = ('', '');
	my $ok = IPC::Run::run(
		[
			'pgbench', '-n', '-t', '1', '-M', 'extended',
			'-h', $node->host, '-p', $node->port,
			'-D', "value=$value", '-f', "$dir/call.sql", 'postgres'
		],
		'<', \undef, '>', \$stdout, '2>', \$stderr);
	diag($stderr) unless $ok;
	return $ok;
}

########################################################################
# http: the signing secret bound, the Authorization header from a file.

my $srv = OutboxHttp->start;
my $hook_url = $srv->url('/hook/{topic}');
sql(qq{SELECT outbox.create_destination('signed', 'http', '{"url": "$hook_url"}');
       SELECT outbox.subscribe('signed', 'sig.>')});
my $key = join('', map { chr(int(rand 256)) } 1 .. 24);
my $signing = 'whsec_' . encode_base64($key, '');
push @secrets, $signing, substr($signing, 6);
ok(bound_call(q{SELECT outbox.set_destination_secret('signed', 'signing_secret', :value);}, $signing),
	'set_destination_secret with the value bound as a parameter');
my $token = secret();
my $headers_file = secret_file('headers.json', qq{{"Authorization": "Bearer $token"}});
sql(qq{SELECT outbox.set_destination_secret('signed', 'headers', pg_read_file('$headers_file'))});
is(sql(q{SELECT options::text FROM outbox.destinations WHERE name = 'signed'}), qq{{"url": "$hook_url"}},
	'outbox.destinations shows neither');

my $id = sql(q{SELECT outbox.save('sig.created', '{"n": 1}'::jsonb)});
ok(OutboxTest::wait_processed($node, $id), 'the message is delivered');
my ($req) = $srv->requests(id => $id);
ok(OutboxDestinations::signature_ok($req, $key), 'signed with the secret set from a bound parameter');
is($req->{headers}{authorization}, "Bearer $token", 'with the Authorization header read from the file');

########################################################################
# nats: a server that requires a user and password.

SKIP:
{
	skip 'nats not available here', 6 unless $with_nats;
	require OutboxNats;
	my $user = 'outbox_' . secret();
	my $password = secret();
	my $nats = OutboxNats->start('auth', authorization => { user => $user, password => $password });
	my $auth_url = "nats://$user:$password\@127.0.0.1:$nats->{port}";
	my ($ok, $out) = OutboxNats::run_js($auth_url, 'add-stream', 'SECRETS', 'secrets.>', 1, 120);
	ok($ok, 'a stream on the server that requires a password') or diag($out);
	my $url = $nats->url;
	my $err = OutboxTest::error_of($node,
		qq{SELECT outbox.create_destination('natsd', 'nats', '{"url": "$url,nats://tok3n-hunter2\@127.0.0.1:1"}')});
	like($err, qr/^22023: invalid value for option "url" of publisher "nats".*HINT:  Put credentials in the secret options of publisher "nats" \(credentials, user, password, token\)/s,
		'a nats URL with credentials is refused, the hint naming the secret options');
	unlike($err, qr/hunter2/, 'without quoting it');
	like(OutboxTest::error_of($node, q{SELECT outbox.create_destination('natsd', 'nats', '{"url": "nats://h:1, me:hunter2@h:2"}')}),
		qr/^22023: .*A server URL must not hold a user name, password or token/s,
		'so is a server without a scheme that holds them (libnats takes one)');
	sql(qq{SELECT outbox.create_destination('natsd', 'nats', '{"url": "$url"}');
	       SELECT outbox.subscribe('natsd', 'secrets.>')});
	my $user_file = secret_file('user', $user);
	sql(qq{SELECT outbox.set_destination_secret('natsd', 'user', pg_read_file('$user_file'))});
	ok(bound_call(q{SELECT outbox.set_destination_secret('natsd', 'password', :value);}, $password),
		'the NATS password bound as a parameter');
	my $nid = sql(q{SELECT outbox.save('secrets.created', '{"n": 2}'::jsonb)});
	ok(OutboxTest::wait_processed($node, $nid) && (OutboxNats::run_js($auth_url, 'info', 'SECRETS'))[1] =~ /^1\b/,
		'the user and password are accepted: the message is in the stream');
}

########################################################################
# pg_stat_activity after such a call.

my $other = secret();
my $other_file = secret_file('other', "whsec_" . encode_base64($other, ''));
push @secrets, encode_base64($other, '');
my $session = $node->background_psql('postgres');
my $pid = $session->query_safe('SELECT pg_backend_pid()');
$session->query_safe(
	qq{BEGIN; SELECT outbox.set_destination_secret('signed', 'signing_secret', pg_read_file('$other_file'))});
my $activity = sql(qq{SELECT state || ': ' || query FROM pg_stat_activity WHERE pid = $pid});
is($activity, 'idle in transaction: SELECT outbox.set_destination_secret(...) -- arguments not shown',
	'pg_stat_activity shows the call without its arguments');
$session->query_safe('ROLLBACK');
$session->quit;

########################################################################
# A URL with credentials stored as 0.3.0 took it.

my $old_password = secret();
my $old_file = secret_file('old', $old_password);
my $bare = $hook_url =~ s{^http://}{}r;
sql(qq{UPDATE outbox.destination SET options = options || jsonb_build_object('url',
           'http://alice:' || pg_read_file('$old_file') || '\@$bare') WHERE name = 'signed';
       SELECT outbox.pause_destination('signed');
       SELECT outbox.resume_destination('signed')});
is(sql(q{SELECT options::text FROM outbox.destinations WHERE name = 'signed'}), '{}',
	'outbox.destinations leaves out the URL with credentials');
my $waiting = sql(q{SELECT outbox.save('sig.waiting', '{"n": 3}'::jsonb)});
ok( OutboxTest::poll_until($node, 'postgres',
		q{SELECT last_error FROM outbox.worker_status() WHERE destination = 'signed'},
		'outbox http publisher: destination "signed" is not used: its option "url" holds a URL with a user name or password'),
	'the worker does not use the destination, and says why in worker_status()');
ok(OutboxTest::wait_for_log_line($node, qr/WARNING:  outbox http publisher: destination "signed" is not used/, $offset),
	'and in the log');
is(sql(qq{SELECT status FROM outbox.deliveries WHERE message_id = '$waiting'}), 'pending', 'its message waits');
my @sent = $srv->requests(id => $waiting);
is(scalar @sent, 0, 'nothing was sent');
sql(qq{SELECT outbox.alter_destination('signed', '{"url": "$hook_url"}')});
ok(OutboxTest::wait_processed($node, $waiting), 'with the URL fixed, the message is delivered');

########################################################################
# URL settings with credentials in the configuration file.

my $guc_password = secret();
$node->append_conf('postgresql.conf', "outbox.http_url = 'http://bob:$guc_password\@127.0.0.1:1/x'");
$node->append_conf('postgresql.conf', "outbox.nats_url = 'nats://bob:$guc_password\@127.0.0.1:1'") if $with_nats;
$node->reload;
ok( OutboxTest::wait_for_log_line(
		$node, qr/invalid value for parameter "outbox.http_url" \(not shown\)/, $offset),
	'outbox.http_url with credentials is refused');
ok(OutboxTest::wait_for_log_line($node, qr/HINT:  Set an Authorization header in the secret option headers/, $offset),
	'with a hint');
if ($with_nats)
{
	ok( OutboxTest::wait_for_log_line(
			$node, qr/invalid value for parameter "outbox.nats_url" \(not shown\)/, $offset),
		'so is outbox.nats_url');
}
is(sql(q{SELECT setting FROM pg_settings WHERE name = 'outbox.http_url'}), '', 'the setting keeps its value');

########################################################################
# Nowhere.

my $log = OutboxDestinations::secrets_not_logged($node, $offset, @secrets);
like($log, qr/statement: \(a statement mentioning outbox\.set_destination_secret, not shown\)/,
	'the log says set_destination_secret ran, without the statement');
like($log, qr/plan:\n.*Query Text: SELECT outbox\.save/s, 'auto_explain logged plans meanwhile');
my $statements = sql(q{SELECT string_agg(query, E'\n') FROM pg_stat_statements});
like($statements, qr/set_destination_secret/, 'pg_stat_statements has the calls');
my @leaked = grep { index($statements, $_) >= 0 } @secrets;
is(scalar @leaked, 0, 'none of the secrets is in pg_stat_statements') or diag("leaked: @leaked");
$activity = sql(q{SELECT string_agg(query, E'\n') FROM pg_stat_activity});
@leaked = grep { index($activity, $_) >= 0 } @secrets;
is(scalar @leaked, 0, 'nor in pg_stat_activity') or diag("leaked: @leaked");

$node->stop;
done_testing();
