# 105_cloudevents_http.pl -- CloudEvents over the http publisher, read by
# a real client: the CloudEvents JavaScript SDK (npm package "cloudevents",
# installed into a directory of this test's own) parsing every request with
# its HTTP binding (HTTP.toEvent) in test/t/cloudevents_receiver.js.
#
#  - binary content mode (a destination with format cloudevents-binary, and
#    the default destination through outbox.http_format): the SDK reads id
#    = the message id, source = "/outbox/postgres" by default, type = the
#    topic, time = created_at, subject = the key (none without one),
#    datacontenttype = the payload's, data = the payload (JSON, text,
#    bytes); a ce-* extension header is an extension; values are
#    percent-encoded; the message's own headers stay HTTP headers; a
#    message header that is one of the attributes fails its message at once
#    (in this destination only); outbox.cloudevents_source changes the
#    source on reload;
#  - structured content mode (cloudevents-structured, with its own
#    cloudevents_source and a signing secret): the body is the JSON event
#    (data, or data_base64 for binary payloads), Content-Type is
#    application/cloudevents+json, the message's headers but content-type
#    stay HTTP headers, and the signature is that of the body sent;
#  - bad format or source options are refused with 22023, and so are bad
#    settings.
#
# Skipped when node or npm is missing or npm cannot install the SDK, unless
# OUTBOX_REQUIRE_BROKERS is set: then that is a failure.

use strict;
use warnings;

use Digest::SHA qw(hmac_sha256);
use Encode qw(decode encode);
use File::Basename qw(dirname);
use File::Spec;
use IPC::Run ();
use JSON::PP;
use MIME::Base64;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxTest;

# Skip (or fail, under OUTBOX_REQUIRE_BROKERS) when something is missing.
sub missing { OutboxTest::missing(@_) }

# The path of a program, or undef.
sub program
{
	my ($name) = @_;
	for my $dir (split /:/, ($ENV{PATH} // '') . ':/usr/bin:/usr/local/bin')
	{
		return "$dir/$name" if $dir ne '' && -x "$dir/$name";
	}
	return undef;
}

my $node_bin = program('node') or missing('node is not installed');
my $npm_bin = program('npm') or missing('npm is not installed');

########################################################################
# The SDK, from the npm registry, into a directory of this test's own.

my $sdk_dir = PostgreSQL::Test::Utils::tempdir('cloudevents_sdk');
{
	local $ENV{npm_config_cache} = "$sdk_dir/.npm-cache";
	local $ENV{npm_config_update_notifier} = 'false';
	local $ENV{npm_config_fund} = 'false';
	local $ENV{npm_config_audit} = 'false';
	my ($out, $err) = ('', '');
	my $ok = eval {
		IPC::Run::run([ $npm_bin, 'install', '--prefix', $sdk_dir, '--no-save', 'cloudevents@10' ],
			'<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(300));
	};
	missing("npm could not install the CloudEvents SDK (cloudevents\@10): "
		  . ($@ || (split /\n/, $err)[-1] // 'failed'))
	  unless $ok && -d "$sdk_dir/node_modules/cloudevents";
}

########################################################################
# The receiver.

my $receiver_js = File::Spec->rel2abs(File::Spec->catfile(dirname(__FILE__), 'cloudevents_receiver.js'));
my ($rx_in, $rx_out, $rx_err) = ('', '', '');
my $receiver;
{
	local $ENV{NODE_PATH} = "$sdk_dir/node_modules";
	$receiver = IPC::Run::start([ $node_bin, $receiver_js ], \$rx_in, \$rx_out, \$rx_err);
}
# Stopped at the end whatever happened, keeping the test's exit status.
END
{
	local $?;
	$receiver->kill_kill if $receiver;
}

my @requests;    # decoded request lines
my $port;
my $json = JSON::PP->new;

# Read what the receiver printed so far.
sub drain
{
	$receiver->pump_nb;
	while ((my $i = index($rx_out, "\n")) >= 0)
	{
		my $line = substr($rx_out, 0, $i);
		substr($rx_out, 0, $i + 1) = '';
		if ($line =~ /^port (\d+)$/)
		{
			$port = $1;
		}
		elsif ($line =~ /^\{/)
		{
			my $r = $json->decode($line);
			$r->{body} = decode_base64($r->{body_b64});
			push @requests, $r;
		}
	}
	return;
}

OutboxTest::wait_until(30, sub { drain(); defined $port })
  or BAIL_OUT("the CloudEvents receiver did not start: $rx_err");
ok($port, "receiver listening on port $port");
my $base = "http://127.0.0.1:$port";

########################################################################
# Bad options and settings.

my $node = OutboxTest::new_node('cloudevents_http', conf => qq{
outbox.publisher = 'http'
outbox.http_url = '$base/default/{topic}'
outbox.http_format = 'cloudevents-binary'
outbox.poll_interval = '100ms'
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '1s'
outbox.max_retries = 1000
});

for my $case (
	[ q{'{"url": "http://h/", "format": "cloudevents"}'}, qr/^22023: invalid value for option "format" of publisher "http"/ ],
	[ q{'{"url": "http://h/", "format": 1}'}, qr/^22023: invalid value for option "format"/ ],
	[ q{'{"url": "http://h/", "cloudevents_source": "my source"}'}, qr/^22023: invalid value for option "cloudevents_source"/ ])
{
	like(OutboxTest::error_of($node, "SELECT outbox.create_destination('bad', 'http', $case->[0])"), $case->[1],
		"create_destination refuses $case->[0]");
}
is($node->safe_psql('postgres', "SELECT count(*) FROM outbox.destination WHERE name = 'bad'"),
	'0', 'and creates nothing');
like(OutboxTest::error_of($node, q{ALTER SYSTEM SET outbox.http_format = 'json'}),
	qr/^22023: invalid value for parameter "outbox.http_format"/, 'outbox.http_format refuses json');
like(OutboxTest::error_of($node, q{ALTER SYSTEM SET outbox.cloudevents_source = 'two words'}),
	qr/^22023: invalid value for parameter "outbox.cloudevents_source"/,
	'outbox.cloudevents_source refuses spaces');

########################################################################
# Two destinations for orders.>, one per content mode; invoices go to the
# default destination (binary through outbox.http_format).

my $secret = 'structured-secret';
$node->safe_psql('postgres', qq{
SELECT outbox.create_destination('ce_binary', 'http',
  '{"url": "$base/binary/{topic}", "format": "cloudevents-binary"}');
SELECT outbox.create_destination('ce_structured', 'http',
  '{"url": "$base/structured/{topic}", "format": "cloudevents-structured",
    "cloudevents_source": "https://shop.example/orders", "signing_secret": "$secret"}');
SELECT outbox.subscribe('ce_binary', 'orders.>');
SELECT outbox.subscribe('ce_structured', 'orders.>');
});

sub save
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', "SELECT $sql");
}

my %id;
$id{json} = save(q{outbox.save('orders.created', '{"order": 42, "items": ["a", "b"]}'::jsonb,
	'customer-7', '{"x-trace": "trace-1"}')});
$id{text} = save(q{outbox.save('orders.note', 'plain words'::text)});
$id{bytes} = save(q{outbox.save('orders.bin', '\x00ff0a41'::bytea, 'k2',
	'{"content-type": "application/x-thing"}')});
$id{encoded} = save(q{outbox.save('orders.created', '{"n": 1}'::jsonb, 'client 7 é')});
$id{reserved} = save(q{outbox.save('orders.created', '{"n": 2}'::jsonb, NULL, '{"ce-id": "mine"}')});
$id{extension} = save(q{outbox.save('orders.created', '{"n": 3}'::jsonb, NULL,
	'{"ce-traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}')});
$id{default} = save(q{outbox.save('invoices.created', '{"invoice": 1}'::jsonb, 'acct-1')});

# Every delivery done: 6 messages x 2 destinations, one failed, and the default.
ok( OutboxTest::poll_until(
		$node, 'postgres',
		q{SELECT count(*) FILTER (WHERE status = 'processed') || '/' || count(*) FILTER (WHERE status = 'failed')
		  FROM outbox.deliveries},
		'12/1'),
	'13 deliveries: 12 processed, 1 failed');
ok(OutboxTest::wait_until(30, sub { drain(); @requests >= 12 }), 'the receiver got 12 requests')
  or diag(scalar(@requests) . ' requests');
is(scalar(grep { $_->{error} } @requests), 0, 'the SDK read every request')
  or diag(join "\n", map { $_->{error} } grep { $_->{error} } @requests);

# The one request for message $id in $mode (binary, structured, default).
sub request_of
{
	my ($mode, $id) = @_;
	my @r = grep { $_->{path} =~ m{^/$mode/} && ($_->{event}{id} // '') eq $id } @requests;
	is(scalar @r, 1, "one $mode request for message $id");
	return $r[0] // { headers => {}, event => {}, body => '' };
}

# created_at as the SDK shows it (milliseconds, UTC).
sub sdk_time
{
	my ($id) = @_;
	return $node->safe_psql('postgres',
		qq{SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
		   FROM outbox.messages WHERE id = '$id'});
}

# created_at to the second, UTC, for the raw attribute.
sub seconds_of
{
	my ($id) = @_;
	return $node->safe_psql('postgres',
		qq{SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
		   FROM outbox.messages WHERE id = '$id'});
}

########################################################################
# Binary content mode.

my $r = request_of('binary', $id{json});
my $e = $r->{event};
is($e->{specversion}, '1.0', 'binary: specversion 1.0');
is($e->{source}, '/outbox/postgres', 'binary: the default source names the database');
is($e->{type}, 'orders.created', 'binary: type is the topic');
is($e->{time}, sdk_time($id{json}), 'binary: time is created_at');
is($e->{subject}, 'customer-7', 'binary: subject is the key');
is($e->{datacontenttype}, 'application/json', 'binary: datacontenttype is the payload\'s');
is($e->{data_kind}, 'json', 'binary: JSON data');
is_deeply($e->{data}, { order => 42, items => [ 'a', 'b' ] }, 'binary: data is the payload');
is($r->{path}, '/binary/orders.created', 'binary: the destination\'s URL');
like($r->{headers}{'ce-time'}, qr/^\Q@{[seconds_of($id{json})]}\E(\.\d{1,6})?Z$/,
	'binary: ce-time is RFC 3339 in UTC');
is($r->{headers}{'x-trace'}, 'trace-1', 'binary: the message\'s headers stay HTTP headers');
is($r->{headers}{'outbox-id'}, $id{json}, 'binary: Outbox-Id is still sent');

$e = request_of('binary', $id{text})->{event};
is($e->{subject}, undef, 'binary: no subject without a key');
is($e->{datacontenttype}, 'text/plain; charset=utf-8', 'binary: text payload, text/plain');
is_deeply([ $e->{data_kind}, $e->{data} ], [ 'string', 'plain words' ], 'binary: text data');

$r = request_of('binary', $id{bytes});
$e = $r->{event};
is($e->{datacontenttype}, 'application/x-thing', 'binary: the message\'s content-type');
is($e->{data_kind}, 'bytes', 'binary: bytes data');
is(decode_base64($e->{data_b64} // ''), "\x00\xff\x0a\x41", 'binary: the payload byte for byte');
is($r->{headers}{'content-type'}, 'application/x-thing', 'binary: Content-Type sent once, the message\'s');

$r = request_of('binary', $id{encoded});
is($r->{headers}{'ce-subject'}, 'client%207%20%C3%A9',
	'binary: attribute values percent-encoded (space, UTF-8), as the HTTP binding asks');

$e = request_of('binary', $id{extension})->{event};
is($e->{extensions}{traceparent}, '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
	'binary: a ce-* message header is an extension attribute');

is($node->safe_psql('postgres',
		qq{SELECT status || ' ' || last_error FROM outbox.deliveries
		   WHERE message_id = '$id{reserved}' AND destination = 'ce_binary'}),
	'failed message header "ce-id" cannot be sent: with format cloudevents-binary the http publisher sets it itself',
	'binary: a message header that is an attribute fails its message at once, with the reason');
is(scalar(grep { $_->{path} =~ m{^/binary/} && ($_->{headers}{'outbox-id'} // '') eq $id{reserved} } @requests),
	0, 'binary: and is never sent');

$r = request_of('default', $id{default});
is($r->{path}, '/default/invoices.created', 'default destination: outbox.http_url');
is($r->{event}{source}, '/outbox/postgres', 'default destination: binary through outbox.http_format');
is($r->{event}{subject}, 'acct-1', 'default destination: subject');

########################################################################
# Structured content mode.

# Whether a request's webhook-signature is that of its body.
sub signed
{
	my ($req) = @_;
	my $h = $req->{headers};
	my $signed = "$h->{'webhook-id'}.$h->{'webhook-timestamp'}.$req->{body}";
	return ($h->{'webhook-signature'} // '') eq 'v1,' . encode_base64(hmac_sha256($signed, $secret), '');
}

$r = request_of('structured', $id{json});
$e = $r->{event};
is($r->{headers}{'content-type'}, 'application/cloudevents+json', 'structured: Content-Type');
is($e->{specversion}, '1.0', 'structured: specversion');
is($e->{source}, 'https://shop.example/orders', 'structured: the destination\'s cloudevents_source');
is($e->{type}, 'orders.created', 'structured: type');
is($e->{time}, sdk_time($id{json}), 'structured: time');
is($e->{subject}, 'customer-7', 'structured: subject');
is($e->{datacontenttype}, 'application/json', 'structured: datacontenttype');
is_deeply($e->{data}, { order => 42, items => [ 'a', 'b' ] }, 'structured: JSON data');
my $body = $json->decode($r->{body});
is_deeply($body->{data}, { order => 42, items => [ 'a', 'b' ] }, 'structured: the payload is "data" as JSON');
like($body->{time}, qr/^\Q@{[seconds_of($id{json})]}\E(\.\d{1,6})?Z$/, 'structured: time in RFC 3339, UTC');
is($r->{headers}{'x-trace'}, 'trace-1', 'structured: the message\'s headers stay HTTP headers');
ok(signed($r), 'structured: webhook-signature is that of the body sent');

$r = request_of('structured', $id{text});
$body = $json->decode($r->{body});
ok(!exists $body->{subject}, 'structured: no subject without a key');
is($body->{data}, 'plain words', 'structured: text is "data" as a string');
is($r->{event}{data}, 'plain words', 'structured: the SDK reads it');

$r = request_of('structured', $id{bytes});
$body = $json->decode($r->{body});
is($body->{data_base64}, encode_base64("\x00\xff\x0a\x41", ''), 'structured: binary payload as data_base64');
ok(!exists $body->{data}, 'structured: and no data');
is($body->{datacontenttype}, 'application/x-thing', 'structured: the message\'s content-type is datacontenttype');
is(decode_base64($r->{event}{data_b64} // ''), "\x00\xff\x0a\x41", 'structured: the SDK reads the bytes');
is($r->{headers}{'content-type'}, 'application/cloudevents+json',
	'structured: and the message\'s content-type is not an HTTP header');

$r = request_of('structured', $id{encoded});
is($r->{event}{subject}, 'client 7 é', 'structured: UTF-8 subject as it is');

$r = request_of('structured', $id{reserved});
is($r->{headers}{'ce-id'}, 'mine', 'structured: a ce-id message header is just an HTTP header');
is($r->{event}{id}, $id{reserved}, 'structured: the event id is still the message id');

########################################################################
# outbox.cloudevents_source: the default source, on reload.

OutboxTest::set_conf($node, 'outbox.cloudevents_source' => '/custom/source');
my $later = save(q{outbox.save('invoices.paid', '{"invoice": 1}'::jsonb)});
ok(OutboxTest::wait_processed($node, $later), 'a message after the reload is delivered');
drain();
is(request_of('default', $later)->{event}{source}, '/custom/source',
	'outbox.cloudevents_source sets the source after a reload');

done_testing();
