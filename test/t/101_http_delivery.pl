# 101_http_delivery.pl -- the http publisher: what a webhook receiver gets.
#
#  - one POST per message to outbox.http_url with {topic} URL-escaped; the
#    body is the raw payload, byte for byte; Content-Type from the message's
#    content-type header, else application/json for JSON, else
#    application/octet-stream; message headers as HTTP headers (an empty
#    value and a UTF-8 value included); Outbox-Id/Topic/Key/Created-At;
#  - a header name or value HTTP cannot carry fails that message at once
#    with a clear last_error, never the request of the others;
#  - signing: webhook-id, webhook-timestamp and webhook-signature verify
#    with the secret (raw, and in the whsec_<base64> form); the secret is
#    neither readable by other roles, nor in pg_settings, nor in the log;
#  - HTTPS certificates are verified; outbox.http_ca_file names a CA;
#  - requests in flight stay within outbox.http_max_concurrency and their
#    connections are kept alive and reused;
#  - a concurrency beyond what the descriptor limit allows is capped (and
#    logged), and a batch of 2000 goes through without descriptor errors.

use strict;
use warnings;

use Digest::SHA qw(hmac_sha256);
use Encode qw(encode);
use MIME::Base64;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxHttp;
use OutboxTest;

my $srv = OutboxHttp->start;
my $url = $srv->url('/hook/{topic}');

my $node = OutboxTest::new_node('http_delivery', conf => qq{
outbox.publisher = 'http'
outbox.http_url = '$url'
outbox.poll_interval = '100ms'
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '1s'
outbox.max_retries = 1000
# the default, on which the descriptor cap below depends
max_files_per_process = 1000
});

sub save
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', "SELECT $sql");
}

# The single request received for message $id.
sub request_of
{
	my ($id) = @_;
	my @r = $srv->requests(id => $id);
	is(scalar @r, 1, "one request for message $id");
	return $r[0] // { headers => {}, body => '' };
}

########################################################################
# Delivery with headers and body intact.

my $json_id = save(
	q{outbox.save('orders/eu west', '{"n": 1, "items": ["a", "b"]}'::jsonb, 'order-1',
	              '{"x-trace": "trace-1", "X-Mixed-Case": "Hello World", "x-empty": "", "x-name": "José"}')});
my $bin_id = save(q{outbox.save('bins', '\x00ff0a0d41'::bytea, NULL, '{"x-kind": "raw"}')});
my $json_text_id = save(q{outbox.save('texts', '[1, 2, "three"]'::text)});
my $text_id = save(q{outbox.save('texts', 'plain words'::text)});
my $typed_id = save(
	q{outbox.save('texts', 'a,b\n1,2'::text, NULL, '{"Content-Type": "text/csv; charset=utf-8"}')});

ok(OutboxTest::wait_all_processed($node, 'postgres'), 'all five messages processed');

my $r = request_of($json_id);
is($r->{method}, 'POST', 'method is POST');
is($r->{path}, '/hook/orders%2Feu%20west', '{topic} replaced by the URL-escaped topic');
is($r->{body}, '{"n": 1, "items": ["a", "b"]}', 'body is the payload as stored');
my $h = $r->{headers};
is($h->{'content-type'}, 'application/json', 'jsonb payload: application/json');
is($h->{'x-trace'}, 'trace-1', 'message header sent');
is($h->{'x-mixed-case'}, 'Hello World', 'message header with spaces in its value sent');
ok(exists $h->{'x-empty'} && $h->{'x-empty'} eq '', 'message header with an empty value sent');
# http.server decodes header bytes as Latin-1.
is(encode('latin1', $h->{'x-name'} // ''), "Jos\xc3\xa9", 'UTF-8 header value sent as is');
is($h->{'outbox-id'}, $json_id, 'Outbox-Id');
is($h->{'outbox-topic'}, 'orders/eu west', 'Outbox-Topic');
is($h->{'outbox-key'}, 'order-1', 'Outbox-Key');
is( $node->safe_psql('postgres',
		"SELECT created_at = '$h->{'outbox-created-at'}'::timestamptz FROM outbox.messages WHERE id = '$json_id'"),
	't', 'Outbox-Created-At is the message creation time');
ok(!exists $h->{'webhook-signature'}, 'unsigned without a secret');
ok(!exists $h->{expect}, 'no Expect header');

$r = request_of($bin_id);
is($r->{body}, "\x00\xff\x0a\x0d\x41", 'binary payload delivered byte for byte');
is($r->{headers}{'content-type'}, 'application/octet-stream', 'binary payload: application/octet-stream');
is($r->{headers}{'outbox-key'}, '', 'Outbox-Key empty without a key');
is($r->{path}, '/hook/bins', 'plain topic in the path');

$r = request_of($json_text_id);
is($r->{headers}{'content-type'}, 'application/json', 'text payload that is JSON: application/json');
$r = request_of($text_id);
is($r->{headers}{'content-type'}, 'application/octet-stream', 'other text payload: application/octet-stream');
$r = request_of($typed_id);
is($r->{headers}{'content-type'}, 'text/csv; charset=utf-8', 'content-type header of the message wins');
is($r->{body}, "a,b\\n1,2", 'text body as stored');

########################################################################
# Headers HTTP cannot carry fail their message, and only it.

$srv->reset;
my %bad = (
	name_space => save(q{outbox.save('bad', '1'::text, NULL, '{"bad name": "v"}')}),
	name_colon => save(q{outbox.save('bad', '2'::text, NULL, '{"x:y": "v"}')}),
	value_newline => save(q{outbox.save('bad', '3'::text, NULL, '{"x-inject": "v\r\nX-Evil: 1"}')}),
	framing => save(q{outbox.save('bad', '4'::text, NULL, '{"Content-Length": "1"}')}),
	reserved => save(q{outbox.save('bad', '5'::text, NULL, '{"outbox-id": "spoofed"}')}),
	topic_newline => save(q{outbox.save(E'bad\ntopic', '6'::text)}),
	two_types => save(q{outbox.save('bad', '8'::text, NULL, '{"Content-Type": "a/b", "content-type": "c/d"}')}),
);
my $good_id = save(q{outbox.save('good', '7'::text, NULL, '{"x-fine": "yes"}')});

ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE status = 'failed' AND retries = 1", '7'),
	'messages with unsendable headers failed at once');
like(OutboxTest::message_state($node, $bad{name_space})->{error},
	qr/^message header name "bad name" is not a valid HTTP header name/, 'invalid header name: clear error');
like(OutboxTest::message_state($node, $bad{name_colon})->{error}, qr/"x:y" is not a valid HTTP header name/,
	'colon in a header name: clear error');
like(OutboxTest::message_state($node, $bad{value_newline})->{error},
	qr/^value of message header "x-inject" contains the control character \\x0d/,
	'CR LF in a header value: clear error');
like(OutboxTest::message_state($node, $bad{framing})->{error}, qr/"Content-Length" cannot be sent/,
	'framing header refused');
like(OutboxTest::message_state($node, $bad{reserved})->{error}, qr/"outbox-id" cannot be sent/, 'Outbox-Id cannot be spoofed');
like(OutboxTest::message_state($node, $bad{topic_newline})->{error}, qr/topic contains control characters/,
	'topic with a newline: clear error');
is(OutboxTest::message_state($node, $bad{two_types})->{error}, 'the message has two content-type headers',
	'two content types: clear error');
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT status FROM outbox.messages WHERE id = '$good_id'", 'processed'),
	'the good message of the same batch was delivered');
my @reqs = $srv->requests;
is(scalar @reqs, 1, 'only the good message reached the server');
is($reqs[0]{headers}{'x-fine'}, 'yes', 'with its header');

########################################################################
# Signing, and the secret stays secret.

my $secret = 'top-secret-value-8472';
my $log_offset = OutboxTest::log_position($node);
my $offset;
$node->append_conf('postgresql.conf', "outbox.http_signing_secret = '$secret'\n");
$node->reload;
OutboxTest::poll_until($node, 'postgres', "SELECT current_setting('outbox.http_signing_secret') <> ''", 't');
$srv->reset;

# Verify a signed request; returns 1 when it verifies with $key.
sub verify_signature
{
	my ($req, $key) = @_;
	my $h = $req->{headers};
	my $signed = "$h->{'webhook-id'}.$h->{'webhook-timestamp'}.$req->{body}";
	my $expected = 'v1,' . encode_base64(hmac_sha256($signed, $key), '');
	return ($h->{'webhook-signature'} // '') eq $expected;
}

my $signed_id = save(q{outbox.save('signed', '{"amount": 42}'::jsonb, 'acct-7')});
ok(OutboxTest::wait_processed($node, $signed_id), 'signed message processed');
$r = request_of($signed_id);
is($r->{headers}{'webhook-id'}, $signed_id, 'webhook-id is the message id');
like($r->{headers}{'webhook-timestamp'}, qr/^\d+$/, 'webhook-timestamp is unix seconds');
ok(abs($r->{headers}{'webhook-timestamp'} - $r->{start}) < 120, 'webhook-timestamp is now');
ok(verify_signature($r, $secret), 'webhook-signature verifies with the secret');
ok(!verify_signature($r, 'another secret'), 'and not with another secret');

# A Standard Webhooks secret: whsec_ + base64 of the key bytes.
my $key_bytes = "\x01\x02binary\xffkey";
my $whsec = 'whsec_' . encode_base64($key_bytes, '');
$node->append_conf('postgresql.conf', "outbox.http_signing_secret = '$whsec'\n");
$node->reload;
OutboxTest::poll_until($node, 'postgres',
	"SELECT current_setting('outbox.http_signing_secret') = '$whsec'", 't');
my $whsec_id = save(q{outbox.save('signed', '\x000102'::bytea)});
ok(OutboxTest::wait_processed($node, $whsec_id), 'whsec-signed message processed');
$r = request_of($whsec_id);
ok(verify_signature($r, $key_bytes), 'whsec_ secret: signature verifies with the decoded key');

# A statement that sets the secret, logged by log_statement, is not shown.
my $statement_secret = 'secret-in-a-statement-4711';
$node->safe_psql('postgres',
	"SET log_statement = 'all'; ALTER SYSTEM SET outbox.http_signing_secret = '$statement_secret'; "
	  . 'ALTER SYSTEM RESET outbox.http_signing_secret');

my $log = slurp_file($node->logfile, $log_offset);
unlike($log, qr/\Q$statement_secret\E/, 'a statement setting the secret is not logged');
like($log, qr/statement: \(a statement mentioning outbox\.http_signing_secret, not shown\)/,
	'the log says a statement was not shown');
unlike($log, qr/\Q$secret\E/, 'the secret is not in the server log');
unlike($log, qr/\Q$whsec\E/, 'the whsec secret is not in the server log');
like($log, qr/parameter "outbox.http_signing_secret" changed/, 'its change is logged without the value');

$node->safe_psql('postgres', 'CREATE ROLE app LOGIN');
my ($rc, $out, $err) = $node->psql('postgres', 'SHOW outbox.http_signing_secret', extra_params => [ '-U', 'app' ]);
isnt($rc, 0, 'another role cannot SHOW the secret');
# The wording is PostgreSQL 15's, then 16's.
like(
	$err,
	qr/must be superuser or have privileges of pg_read_all_settings|permission denied to examine "outbox\.http_signing_secret"/,
	'with a clear error');
($rc, $out, $err) = $node->psql('postgres', "SELECT current_setting('outbox.http_signing_secret')",
	extra_params => [ '-U', 'app' ]);
isnt($rc, 0, 'nor read it with current_setting()');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_settings WHERE name = 'outbox.http_signing_secret'",
		extra_params => [ '-U', 'app' ]),
	'0', 'pg_settings does not list it for another role');
is( $node->safe_psql('postgres', "SELECT count(*) FROM pg_settings WHERE name = 'outbox.http_signing_secret'"),
	'0', 'nor for a superuser');
is( $node->safe_psql('postgres', "SELECT count(*) FROM pg_settings WHERE name = 'outbox.http_url'",
		extra_params => [ '-U', 'app' ]),
	'1', 'while the other http settings are listed');

$node->append_conf('postgresql.conf', "outbox.http_signing_secret = ''\n");
$node->reload;
OutboxTest::poll_until($node, 'postgres', "SELECT current_setting('outbox.http_signing_secret')", '');

########################################################################
# HTTPS: the server's certificate is verified; outbox.http_ca_file can name
# the CA that signed it.

my $tls = OutboxHttp->start(tls => 1);
OutboxTest::set_conf($node, 'outbox.http_url' => $tls->url('/secure/{topic}'));
my $tls_id = save(q{outbox.save('secure', '{"s": 1}'::jsonb)});
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT retries > 0 FROM outbox.messages WHERE id = '$tls_id'", 't'),
	'a self-signed certificate is refused');
like(OutboxTest::message_state($node, $tls_id)->{error}, qr/certificate/i, 'last_error says why');
is(scalar(@{ [ $tls->requests ] }), 0, 'nothing was posted to that server');
OutboxTest::set_conf($node, 'outbox.http_ca_file' => $tls->cert_file);
ok(OutboxTest::wait_processed($node, $tls_id), 'with outbox.http_ca_file naming its certificate, delivered');
my @tls_reqs = $tls->requests(id => $tls_id);
is(scalar @tls_reqs, 1, 'one request reached the HTTPS server');
is($tls_reqs[0]{body}, '{"s": 1}', 'over HTTPS, body intact');
is($tls_reqs[0]{path}, '/secure/secure', 'to the https URL');
OutboxTest::set_conf($node, 'outbox.http_url' => $url, 'outbox.http_ca_file' => '');
$tls->stop;

########################################################################
# Concurrency stays bounded and connections are reused.

OutboxTest::set_conf($node, 'outbox.http_max_concurrency' => '4');
$srv->reset;
$srv->plan('conc', { status => 200, delay_ms => 200 });
$node->safe_psql('postgres', "DELETE FROM outbox.messages");
$node->safe_psql('postgres',
	"SELECT outbox.save('conc', i::text::jsonb, 'key-' || i) FROM generate_series(1, 24) i");
ok(OutboxTest::wait_all_processed($node, 'postgres'), '24 slow messages processed');
my $stats = $srv->stats;
cmp_ok($stats->{max_inflight}, '<=', 4, "at most http_max_concurrency requests in flight ($stats->{max_inflight})");
cmp_ok($stats->{max_inflight}, '>=', 2, 'requests do run concurrently');
cmp_ok($stats->{connections}, '<=', 4, "24 requests over at most 4 connections ($stats->{connections})");

$node->safe_psql('postgres',
	"SELECT outbox.save('conc', i::text::jsonb, 'key-' || i) FROM generate_series(1, 8) i");
ok(OutboxTest::wait_all_processed($node, 'postgres'), 'the next batch processed');
$stats = $srv->stats;
cmp_ok($stats->{connections}, '<=', 4, "the next batch reuses the kept-alive connections ($stats->{connections})");
is(scalar(@{ [ $srv->requests(topic => 'conc') ] }), 32, 'one request per message');

########################################################################
# A concurrency the descriptor limit cannot hold is capped, not failed.

$offset = OutboxTest::log_position($node);
OutboxTest::set_conf($node, 'outbox.http_max_concurrency' => '1000', 'outbox.batch_size' => '2000');
$srv->reset;
$node->safe_psql('postgres', "DELETE FROM outbox.messages");
$node->safe_psql('postgres',
	"SELECT outbox.save('wide', i::text::jsonb) FROM generate_series(1, 2000) i");
ok(OutboxTest::wait_all_processed($node, 'postgres'), 'a batch of 2000 messages processed');
is( $node->safe_psql('postgres', "SELECT count(*) FROM outbox.messages WHERE retries > 0"),
	'0', 'none of them failed an attempt');
my ($cap) = slurp_file($node->logfile, $offset) =~
  /outbox http publisher: (\d+) requests in flight at most instead of 1000, for lack of file descriptors/;
ok($cap, 'the reduced concurrency is logged (' . ($cap // 'no line') . ')');
$stats = $srv->stats;
cmp_ok($stats->{connections}, '<=', $cap // 0, "connections stay within it ($stats->{connections})");
is(OutboxTest::log_count($node, qr/(out of file descriptors|Too many open files)/i, $offset),
	0, 'no descriptor error in the log');

$node->stop;
$srv->stop;
done_testing();
