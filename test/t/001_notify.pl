
# 001_notify.pl -- the notify publisher: what a LISTENing session receives.
#
#  - committed messages arrive as JSON envelopes (id, topic, key, headers,
#    payload as embedded JSON / JSON string / base64, created_at);
#  - a rolled-back save never arrives;
#  - outbox.notify_channel (reload) routes every message to one channel;
#  - an envelope over NOTIFY's 8000-byte limit fails the message at once;
#  - with outbox.poll_interval = 1h only the commit-time wake-up can deliver,
#    and it does, for save() and for INSERT ... SELECT.

use strict;
use warnings;

use MIME::Base64;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxTest;

my $node = OutboxTest::new_node('notify',
	conf => "outbox.poll_interval = '200ms'");

my $listener =
  OutboxTest::Listener->new($node, 'postgres', 'orders', 'texts', 'bins');

# Save one message through SQL and return its id.
sub save
{
	my ($sql) = @_;
	my $id = $node->safe_psql('postgres', "SELECT $sql");
	like($id, qr/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-/, "save returned a UUIDv7");
	return $id;
}

########################################################################
# Envelopes of committed messages.

my $json_id = save(
	q{outbox.save('orders', '{"n": 1, "items": ["a", "b"], "s": "x\"y"}'::jsonb, 'order-1', '{"trace_id": "trace-abc-123"}')}
);
my $text_id =
  save(q{outbox.save('texts', 'hello "world" \\ tab	end'::text, NULL, '{"trace_id": "t-2"}')});
my $bin_id =
  save(q{outbox.save('bins', '\xfffe0041c3'::bytea, 'bin-key', '{"trace_id": "t-3", "x-kind": "raw"}')});
my $utf8_bytes_id = save(q{outbox.save('bins', '\x636166c3a9'::bytea)});

ok($listener->wait_count(4, 30), 'the four committed messages arrived');

my $n = $listener->wait_for_id($json_id, 1);
ok($n, 'the jsonb message arrived');
SKIP:
{
	skip 'no jsonb notification', 9 unless $n;
	my $e = $n->{envelope};
	is($n->{channel}, 'orders', 'channel is the topic');
	is($e->{id}, $json_id, 'envelope id');
	is($e->{topic}, 'orders', 'envelope topic');
	is($e->{key}, 'order-1', 'envelope key');
	is($e->{headers}{trace_id}, 'trace-abc-123', 'header trace_id');
	is($e->{headers}{'content-type'},
		'application/json', 'jsonb payload gets a content-type header');
	is_deeply($e->{payload}, { n => 1, items => [ 'a', 'b' ], s => 'x"y' },
		'jsonb payload is embedded as JSON');
	ok(!exists $e->{payload_encoding}, 'no payload_encoding for JSON');
	like($e->{created_at}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d/,
		'created_at is an ISO timestamp');
}

$n = $listener->wait_for_id($text_id, 1);
ok($n, 'the text message arrived');
SKIP:
{
	skip 'no text notification', 5 unless $n;
	my $e = $n->{envelope};
	is($n->{channel}, 'texts', 'text message channel');
	is($e->{key}, '', 'a NULL key is the empty key');
	is($e->{headers}{trace_id}, 't-2', 'text message trace_id');
	is($e->{payload}, qq{hello "world" \\ tab\tend},
		'text payload is a JSON string');
	ok(!exists $e->{payload_encoding}, 'no payload_encoding for text');
}

$n = $listener->wait_for_id($bin_id, 1);
ok($n, 'the bytea message arrived');
SKIP:
{
	skip 'no bytea notification', 5 unless $n;
	my $e = $n->{envelope};
	is($e->{key}, 'bin-key', 'bytea message key');
	is_deeply($e->{headers}, { trace_id => 't-3', 'x-kind' => 'raw' },
		'bytea message headers (no content-type added)');
	is($e->{payload_encoding}, 'base64', 'invalid UTF-8 is base64-encoded');
	is(decode_base64($e->{payload} // ''),
		"\xff\xfe\x00\x41\xc3", 'base64 payload decodes to the bytes saved');
	like($e->{payload} // '', qr{^[A-Za-z0-9+/]+=*$}, 'payload is base64 text');
}

$n = $listener->wait_for_id($utf8_bytes_id, 1);
ok($n, 'the valid-UTF-8 bytea message arrived');
SKIP:
{
	skip 'no notification', 2 unless $n;
	is($n->{envelope}{payload}, "caf\x{e9}", 'valid UTF-8 bytes are a JSON string');
	ok(!exists $n->{envelope}{payload_encoding}, 'and not base64');
}

ok(OutboxTest::wait_all_processed($node, 'postgres', 30),
	'delivered messages are marked processed');

########################################################################
# A rolled-back transaction publishes nothing.

$listener->clear;
$node->safe_psql(
	'postgres', q{
BEGIN;
SELECT outbox.save('orders', '{"rolled": "back"}'::jsonb);
INSERT INTO outbox.messages (topic, payload) VALUES ('orders', convert_to('{"rolled": "back too"}', 'UTF8'));
ROLLBACK;
});
my $marker_id = save(q{outbox.save('orders', '{"marker": true}'::jsonb)});
ok($listener->wait_for_id($marker_id, 30),
	'a message committed after the rollback arrives');
is(scalar(grep { ($_->{payload} // '') =~ /rolled/ } @{ $listener->received }),
	0, 'nothing from the rolled-back transaction arrived');
is(scalar @{ $listener->received }, 1, 'only the marker arrived');
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM outbox.messages WHERE position('rolled'::bytea IN payload) > 0}),
	'0',
	'the rolled-back messages are not in the table');

########################################################################
# outbox.notify_channel routes every message to one channel.

OutboxTest::set_conf($node, 'outbox.notify_channel' => 'outbox_all');
$listener->listen('outbox_all');
$listener->clear;
my $routed1 = save(q{outbox.save('orders', '{"routed": 1}'::jsonb)});
my $routed2 = save(q{outbox.save('texts', 'routed 2'::text)});
ok($listener->wait_for(30, sub { $listener->find_id($routed1) && $listener->find_id($routed2) }),
	'messages of two topics arrived with notify_channel set');
is_deeply(
	[ sort map { $_->{channel} } @{ $listener->received } ],
	[ 'outbox_all', 'outbox_all' ],
	'both arrived on outbox.notify_channel, none on their topic');
is($listener->find_id($routed2)->{envelope}{topic},
	'texts', 'the envelope still names the topic')
  if $listener->find_id($routed2);

OutboxTest::set_conf($node, 'outbox.notify_channel' => '');
$listener->clear;
my $back = save(q{outbox.save('orders', '{"routed": "back"}'::jsonb)});
my $bn = $listener->wait_for_id($back, 30);
is($bn && $bn->{channel}, 'orders', 'with notify_channel empty again, the topic is the channel');

########################################################################
# An envelope over NOTIFY's payload limit fails the message at once.

$listener->clear;
my $big_id = save(q{outbox.save('orders', jsonb_build_object('blob', repeat('x', 9000)))});
ok( OutboxTest::poll_until(
		$node, 'postgres',
		"SELECT status FROM outbox.messages WHERE id = '$big_id'",
		'failed', 30),
	'an oversized message is marked failed');
my $row = $node->safe_psql('postgres',
	"SELECT retries, last_error FROM outbox.messages WHERE id = '$big_id'");
my ($retries, $last_error) = split /\|/, $row, 2;
is($retries, '1', 'failed after a single attempt (no retries; max_retries is 5)');
like($last_error, qr/8000|7999/, 'last_error mentions the NOTIFY limit');
like($last_error, qr/NOTIFY/i, 'last_error names NOTIFY');
# A message saved after it arrives, so the big one was not delivered before.
my $after_big = save(q{outbox.save('orders', '{"after": "big"}'::jsonb)});
ok($listener->wait_for_id($after_big, 30), 'the next message is delivered');
ok(!$listener->find_id($big_id), 'the oversized message never arrived');

########################################################################
# Wake-up latency: with a poll interval of an hour, only the commit's
# wake-up can make the worker publish.

OutboxTest::set_conf($node, 'outbox.poll_interval' => '1h');
# A first message shows the worker runs with the new setting; once it sleeps
# again, it sleeps for an hour unless a commit wakes it.
my $primer = save(q{outbox.save('orders', '{"primer": 1}'::jsonb)});
ok($listener->wait_for_id($primer, 30), 'primer delivered');
ok(OutboxTest::wait_worker_sleeping($node, 'postgres', 30),
	'the worker sleeps on its latch');

my $t0 = time();
my $wake_id = save(q{outbox.save('orders', '{"wake": "save"}'::jsonb)});
ok($listener->wait_for_id($wake_id, 15),
	'save(): the commit wakes the worker (poll_interval = 1h)');
note(sprintf('save() delivered after %.3f s', time() - $t0));

ok(OutboxTest::wait_worker_sleeping($node, 'postgres', 30),
	'the worker sleeps on its latch again');
$listener->clear;
$t0 = time();
$node->safe_psql(
	'postgres', q{
INSERT INTO outbox.messages (topic, key, payload)
SELECT 'orders', 'batch', convert_to(json_build_object('batch', g)::text, 'UTF8')
FROM generate_series(1, 3) g});
ok( $listener->wait_for(
		15,
		sub {
			3 == grep { ref $_->{envelope}{payload} eq 'HASH'
				  && exists $_->{envelope}{payload}{batch} } @{ $_[0] };
		}),
	'INSERT ... SELECT: the commit wakes the worker (poll_interval = 1h)');
note(sprintf('INSERT ... SELECT delivered after %.3f s', time() - $t0));
is_deeply(
	[ map { $_->{envelope}{payload}{batch} } @{ $listener->received } ],
	[ 1, 2, 3 ], 'the batch arrived in order');

$listener->quit;
$node->stop;
done_testing();
