# 132_amqp_settings.pl -- settings, credentials, TLS and connection
# problems of the amqp publisher, against a real RabbitMQ node (with a TLS
# listener whose certificate is made here):
#
#  - bad values are refused with a message (and a URL with a password in
#    it without quoting it);
#  - outbox.amqp_password is superuser-only, not in pg_settings, and never
#    in the server log (not on reload, not in a logged statement, not in a
#    login failure);
#  - a wrong password, an unknown vhost, an unknown host, a refused port:
#    messages stay pending, the problem is logged once with a clear text,
#    and a reload that fixes it delivers them;
#  - failover: a dead first server of outbox.amqp_url is skipped;
#  - TLS: amqps:// with outbox.amqp_ca_file delivers; a server the CA does
#    not vouch for, or a host name the certificate does not name, is
#    refused with a clear error.

use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxAmqp;
use OutboxTest;

OutboxAmqp::require_amqp();

# A CA and a server certificate for "localhost".
my $pki = PostgreSQL::Test::Utils::tempdir('pki');
sub openssl
{
	my @cmd = ('openssl', @_);
	my ($out, $err);
	IPC::Run::run(\@cmd, '<', '/dev/null', '>', \$out, '2>', \$err)
	  or BAIL_OUT("openssl @_ failed: $err");
	return;
}
for my $ca ('ca', 'other_ca')
{
	openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', "/CN=outbox test $ca",
		'-keyout', "$pki/$ca.key", '-out', "$pki/$ca.crt");
}
openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost',
	'-keyout', "$pki/server.key", '-out', "$pki/server.csr");
open(my $ext, '>', "$pki/ext") or die;
print $ext "subjectAltName=DNS:localhost\n";
close $ext;
openssl('x509', '-req', '-in', "$pki/server.csr", '-CA', "$pki/ca.crt", '-CAkey', "$pki/ca.key",
	'-CAcreateserial', '-days', '2', '-extfile', "$pki/ext", '-out', "$pki/server.crt");

my $mq = OutboxAmqp->start('mq',
	tls => { ca => "$pki/ca.crt", cert => "$pki/server.crt", key => "$pki/server.key" });
$mq->tool('declare-queue', 'q');
$mq->tool('bind', 'q', 'amq.topic', '#');

my $url = $mq->url;
my ($user, $password) = ($mq->user, $mq->password);
my $node = OutboxTest::new_node('amqp_settings', conf => qq{
shared_preload_libraries = 'outbox, outbox_amqp'
outbox.publisher = 'amqp'
outbox.amqp_url = '$url'
outbox.amqp_username = '$user'
outbox.amqp_password = '$password'
outbox.amqp_timeout = '2s'
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
	return OutboxTest::wait_processed($node, $id);
}

ok(delivered(), 'delivered with the configured credentials');

########################################################################
# 1. Bad values are refused with a message.

my @bad = (
	[ 'outbox.amqp_url', '', qr/No server is given/ ],
	[ 'outbox.amqp_url', 'http://127.0.0.1:5672', qr/must start with amqp:\/\/ or amqps:\/\// ],
	[ 'outbox.amqp_url', "amqp://127.0.0.1:1, ,$url", qr/empty entry/ ],
	[ 'outbox.amqp_url', 'amqp://127.0.0.1:5672?heartbeat=5', qr/must not have a query/ ],
	[ 'outbox.amqp_url', 'amqp://127.0.0.1:notaport', qr/could not be parsed/ ],
	[ 'outbox.amqp_exchange', ('x' x 255) . '{topic}', qr/gives names of 256 bytes or more; AMQP allows at most 255/ ],
	[ 'outbox.amqp_routing_key', ('k' x 300), qr/gives names of 300 bytes or more/ ],
	[ 'outbox.amqp_username', '', qr/user name must not be empty/ ],
	[ 'outbox.amqp_max_pending', '0', qr/0 is outside the valid range/ ],
	[ 'outbox.amqp_timeout', '10ms', qr/outside the valid range/ ],
	[ 'outbox.amqp_max_message_size', '1', qr/outside the valid range/ ],
);
for my $case (@bad)
{
	my ($name, $value, $expect) = @$case;
	my ($rc, $out, $err) = $node->psql('postgres', "ALTER SYSTEM SET $name = '$value'");
	like($err, $expect, "$name = '" . substr($value, 0, 40) . "' is refused with a reason");
}
my ($rc, $out, $err) = $node->psql('postgres', q{ALTER SYSTEM SET outbox.amqp_url = 'amqp://someone:hunter2secret@127.0.0.1'});
like($err, qr/invalid value for parameter "outbox.amqp_url" \(server 1 of 1\).*must not contain a user name or password/s,
	'a URL with credentials is refused');
unlike($err, qr/hunter2secret/, 'without quoting it');

########################################################################
# 2. The password stays secret.

$node->safe_psql('postgres', 'CREATE ROLE app LOGIN');
($rc, $out, $err) = $node->psql('postgres', 'SHOW outbox.amqp_password', extra_params => [ '-U', 'app' ]);
isnt($rc, 0, 'another role cannot SHOW the password');
($rc, $out, $err) = $node->psql('postgres', "SELECT current_setting('outbox.amqp_password')",
	extra_params => [ '-U', 'app' ]);
isnt($rc, 0, 'nor read it with current_setting()');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_settings WHERE name = 'outbox.amqp_password'", extra_params => [ '-U', 'app' ]),
	'0', 'pg_settings does not list it for another role');
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_settings WHERE name = 'outbox.amqp_password'"),
	'0', 'nor for a superuser (GUC_NO_SHOW_ALL)');

my $statement_secret = 'secret-in-a-statement-4711';
$node->safe_psql('postgres',
	"SET log_statement = 'all'; ALTER SYSTEM SET outbox.amqp_password = '$statement_secret'; "
	  . 'ALTER SYSTEM RESET outbox.amqp_password');

########################################################################
# 3. Connection problems: pending, logged once, fixed by a reload.

# Set outbox.amqp_url (or another setting) in postgresql.conf, reload, and
# wait until the problem is logged; returns its line.
sub problem_after
{
	my ($setting, $value, $expect) = @_;
	my $offset = OutboxTest::log_position($node);
	$node->append_conf('postgresql.conf', "$setting = '$value'\n");
	$node->reload;
	my $id = psql_value("SELECT outbox.save('probe', '{\"problem\": true}'::jsonb)");
	my $ok = OutboxTest::wait_for_log_line($node, $expect, $offset);
	my @lines = grep { /outbox amqp publisher:/ } split /\n/, slurp_file($node->logfile, $offset);
	my $state = OutboxTest::message_state($node, $id);
	is($state->{status} . '/' . $state->{retries}, 'pending/0', "$setting = '$value': the message waits, untouched");
	sleep 1;    # a second of retrying: must not log again
	return ($ok, OutboxTest::log_count($node, $expect, $offset));
}

my ($ok, $count) = problem_after('outbox.amqp_password', 'wrong-password-1234',
	qr/WARNING:  outbox amqp publisher: could not connect to amqp:\/\/127\.0\.0\.1:\d+: the broker refused the login of user "outbox_test" to vhost "\/": ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN/);
ok($ok, 'a wrong password: the broker\'s refusal is logged');
is($count, 1, 'once');
$node->append_conf('postgresql.conf', "outbox.amqp_password = '$password'\n");
$node->reload;
ok(OutboxTest::wait_all_processed($node, 'postgres'), 'the right password delivers the waiting message');

($ok, $count) = problem_after('outbox.amqp_url', "$url/nosuch",
	qr/the broker refused the login of user "outbox_test" to vhost "nosuch": NOT_ALLOWED - vhost nosuch not found \(530\)/);
ok($ok, 'an unknown vhost: clear error');
is($count, 1, 'logged once');

($ok, $count) = problem_after('outbox.amqp_url', 'amqp://nosuch.invalid:5672',
	qr/could not connect to amqp:\/\/nosuch\.invalid:5672: could not resolve "nosuch\.invalid"/);
ok($ok, 'an unknown host: clear error');

my $dead_port = PostgreSQL::Test::Cluster::get_free_port();
($ok, $count) = problem_after('outbox.amqp_url', "amqp://127.0.0.1:$dead_port",
	qr/could not connect to amqp:\/\/127\.0\.0\.1:$dead_port: Connection refused/);
ok($ok, 'a refused port: clear error');
is($count, 1, 'logged once');

# Failover: the dead server first, the live one second.
$node->append_conf('postgresql.conf', "outbox.amqp_url = 'amqp://127.0.0.1:$dead_port, $url'\n");
$node->reload;
ok(OutboxTest::wait_all_processed($node, 'postgres'), 'a dead first server is skipped: delivered through the second');
ok(delivered(), 'and publishing goes on');

########################################################################
# 4. TLS.

my $tls_url = $mq->tls_url;
$node->append_conf('postgresql.conf', "outbox.amqp_url = '$tls_url'\noutbox.amqp_ca_file = '$pki/ca.crt'\n");
$node->reload;
ok(delivered(), 'amqps:// with the CA file: delivered');

($ok, $count) = problem_after('outbox.amqp_ca_file', "$pki/other_ca.crt",
	qr/could not connect to amqps:\/\/localhost:\d+: .*(certificate|SSL|verif)/i);
ok($ok, 'a CA that did not sign the server certificate: refused with a clear error');

my $ip_tls_url = $tls_url =~ s/localhost/127.0.0.1/r;
$node->append_conf('postgresql.conf', "outbox.amqp_ca_file = '$pki/ca.crt'\n");
($ok, $count) = problem_after('outbox.amqp_url', $ip_tls_url,
	qr/could not connect to amqps:\/\/127\.0\.0\.1:\d+: .*(host ?name|SSL|verif)/i);
ok($ok, 'a host name the certificate does not name: refused');

$node->append_conf('postgresql.conf', "outbox.amqp_url = '$tls_url'\n");
$node->reload;
ok(OutboxTest::wait_all_processed($node, 'postgres'), 'fixed by a reload: the waiting messages are delivered');

########################################################################
# 5. The password never reached the log.

my $log = slurp_file($node->logfile);
unlike($log, qr/\Q$password\E/, 'the password is not in the server log');
unlike($log, qr/wrong-password-1234/, 'nor the wrong one');
unlike($log, qr/\Q$statement_secret\E/, 'a statement setting the password is not logged');
like($log, qr/statement: \(a statement mentioning outbox\.amqp_password, not shown\)/,
	'but said to be there');
like($log, qr/parameter "outbox.amqp_password" changed\n/, 'its change is logged without the value');

$node->stop;
done_testing();
