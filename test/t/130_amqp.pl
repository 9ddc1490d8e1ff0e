# 130_amqp.pl -- the amqp publisher against a real RabbitMQ node:
#
#  - delivery: 300 messages over several keys and topics land in a durable
#    queue bound to amq.topic, once each, in key order, persistent, with
#    message-id = the id, timestamp = created_at (seconds), content-type
#    from the message, the payload byte for byte, and the message's headers
#    plus outbox-topic and outbox-key in the headers table; routing-key and
#    exchange templates with {topic};
#  - unroutable (no queue bound): a failed attempt with the broker's text
#    (312 NO_ROUTE), never lost, delivered once a queue is bound;
#  - a missing exchange fails only its own messages, with the broker's
#    text, and they are delivered once it exists;
#  - a basic.nack (a full queue with x-overflow = reject-publish) is a
#    failed attempt;
#  - oversized messages: over the broker's max_message_size the broker's
#    refusal is the message's last_error and the others of the batch are
#    delivered (those in flight with it at least once); over outbox.amqp_max_message_size, or with headers that do
#    not fit in one frame, the message fails at once with the reason; a
#    header the publisher sets itself is refused;
#  - a memory alarm (connection.blocked): messages wait until it is gone.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxAmqp;
use OutboxTest;

OutboxAmqp::require_amqp();

my $mq = OutboxAmqp->start('mq', max_message_size => 1048576);
$mq->tool('declare-queue', 'orders');
$mq->tool('bind', 'orders', 'amq.topic', 'app.orders.#');

my $url = $mq->url;
my ($user, $password) = ($mq->user, $mq->password);
my $node = OutboxTest::new_node('amqp', conf => qq{
shared_preload_libraries = 'outbox, outbox_amqp'
outbox.publisher = 'amqp'
outbox.amqp_url = '$url'
outbox.amqp_username = '$user'
outbox.amqp_password = '$password'
outbox.amqp_routing_key = 'app.{topic}'
outbox.amqp_timeout = '3s'
outbox.poll_interval = '100ms'
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '300ms'
outbox.max_retries = 1000
log_statement = 'none'
});

sub psql_value
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql);
}

# Wait until the queue holds $n messages.
sub wait_queue_count
{
	my ($queue, $n, $timeout) = @_;
	my $last;
	my $ok = OutboxTest::wait_until($timeout // 60,
		sub { $last = $mq->count($queue); defined $last && $last >= $n });
	diag("queue $queue: expected $n messages, last count " . ($last // '(error)')) unless $ok;
	return $ok;
}

########################################################################
# 1. Delivery with properties and headers.

psql_value(q{
	SELECT outbox.save(
		(ARRAY['orders.created', 'orders.paid', 'orders.shipped'])[1 + i % 3],
		jsonb_build_object('n', i),
		'customer-' || (i % 7),
		jsonb_build_object('x-trace', 'trace-' || i, 'x-num', i::text))
	FROM generate_series(1, 300) i});
my $bin_id = psql_value(q{SELECT outbox.save('orders.bin', '\x00ff0a0d41'::bytea, NULL,
	'{"x-empty": "", "x-name": "José", "content-type": "application/x-thing"}')});
my $text_id = psql_value(q{SELECT outbox.save('orders.text', 'plain text'::text)});

ok(OutboxTest::wait_all_processed($node, 'postgres'), '302 messages processed');
my @msgs = $mq->dump('orders');
my %by_id = map { $_->{message_id} => $_ } @msgs;
is(scalar @msgs, 302, 'the queue holds 302 messages');
is(scalar keys %by_id, 302, 'with 302 distinct message ids');

my $rows = psql_value(q{
	SELECT id, topic, key, convert_from(payload, 'UTF8'), headers->>'x-trace', headers->>'x-num',
	       floor(extract(epoch FROM created_at))
	FROM outbox.messages WHERE topic IN ('orders.created', 'orders.paid', 'orders.shipped') ORDER BY id});
my ($bad, $bad_example) = (0, '');
my %pos = map { $msgs[$_]{message_id} => $_ } 0 .. $#msgs;
my %last_pos_of_key;
my $out_of_order = 0;
for my $row (split /\n/, $rows)
{
	my ($id, $topic, $key, $payload, $trace, $num, $epoch) = split /\|/, $row;
	my $m = $by_id{$id};
	my @problems;
	if (!$m)
	{
		push @problems, 'missing';
	}
	else
	{
		my $h = $m->{headers};
		push @problems, 'exchange' unless $m->{exchange} eq 'amq.topic';
		push @problems, 'routing key' unless $m->{routing_key} eq "app.$topic";
		push @problems, 'body' unless $m->{body} eq $payload;
		push @problems, 'delivery mode' unless $m->{delivery_mode} == 2;
		push @problems, 'timestamp' unless $m->{timestamp} == $epoch;
		push @problems, 'content type' unless ($m->{content_type} // '') eq 'application/json';
		push @problems, 'outbox-topic' unless ($h->{'outbox-topic'} // '') eq $topic;
		push @problems, 'outbox-key' unless ($h->{'outbox-key'} // '') eq $key;
		push @problems, 'x-trace' unless ($h->{'x-trace'} // '') eq $trace;
		push @problems, 'x-num' unless ($h->{'x-num'} // '') eq $num;
		push @problems, 'other headers' unless keys %$h == 5;    # with content-type
		# ids are in save order: within a key, queue positions must grow
		$out_of_order++ if defined $last_pos_of_key{$key} && $pos{$id} < $last_pos_of_key{$key};
		$last_pos_of_key{$key} = $pos{$id};
	}
	if (@problems)
	{
		$bad++;
		$bad_example ||= "$id: @problems";
	}
}
is($bad, 0, 'every message arrived with routing, properties, body and headers intact')
  or diag("first bad message: $bad_example");
is($out_of_order, 0, 'messages of a key are in the queue in save order');

my $bin = $by_id{$bin_id};
is($bin->{body}, "\x00\xff\x0a\x0d\x41", 'binary payload byte for byte');
is($bin->{content_type}, 'application/x-thing', 'content-type property from the message header');
is($bin->{headers}{'content-type'}, 'application/x-thing', 'and the header itself is kept');
is($bin->{headers}{'x-empty'}, '', 'empty header value');
is($bin->{headers}{'x-name'}, "Jos\xc3\xa9", 'UTF-8 header value as is');
is($bin->{headers}{'outbox-key'}, '', 'outbox-key empty without a key');
is($by_id{$text_id}{content_type}, undef, 'no content-type property when the message has none');
$mq->tool('purge', 'orders');

########################################################################
# 2. Unroutable: a failed attempt with the broker's text, never lost.

my $lost_id = psql_value(q{SELECT outbox.save('invoices.created', '{"n": 1}'::jsonb, 'inv-1')});
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT retries > 0 AND status = 'pending' FROM outbox.messages WHERE id = '$lost_id'", 't'),
	'unroutable: the message waits and is retried');
is( OutboxTest::message_state($node, $lost_id)->{error},
	'amqp: the broker returned the message as unroutable: 312 NO_ROUTE (exchange "amq.topic", routing key "app.invoices.created")',
	'last_error is the broker\'s return');
$mq->tool('declare-queue', 'invoices');
$mq->tool('bind', 'invoices', 'amq.topic', 'app.invoices.*');
ok(OutboxTest::wait_processed($node, $lost_id), 'delivered once a queue is bound');
my @inv = $mq->dump('invoices');
is(scalar @inv, 1, 'one copy in the queue');
is($inv[0]{message_id}, $lost_id, 'the waiting message');

########################################################################
# 3. A missing exchange fails only its own messages.

OutboxTest::set_conf($node, 'outbox.amqp_exchange' => 'ex.{topic}', 'outbox.enabled' => 'off');
$mq->tool('declare-exchange', 'ex.orders.created', 'topic');
$mq->tool('bind', 'orders', 'ex.orders.created', '#');
my @good = map { psql_value("SELECT outbox.save('orders.created', '{\"ok\": $_}'::jsonb, 'g$_')") } 1 .. 5;
my $nox = psql_value(q{SELECT outbox.save('orders.nowhere', '{"n": 2}'::jsonb, 'x1')});
push @good, map { psql_value("SELECT outbox.save('orders.created', '{\"ok\": $_}'::jsonb, 'h$_')") } 1 .. 5;
OutboxTest::set_conf($node, 'outbox.enabled' => 'on');
ok(OutboxTest::wait_processed($node, @good), 'the messages for the existing exchange are delivered');
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT retries > 0 FROM outbox.messages WHERE id = '$nox'", 't'),
	'the message for the missing exchange failed');
like(OutboxTest::message_state($node, $nox)->{error},
	qr/^amqp: the broker refused exchange "ex\.orders\.nowhere": NOT_FOUND - no exchange 'ex\.orders\.nowhere' in vhost '\/' \(404\)$/,
	'last_error is the broker\'s text');
is($mq->count('orders'), 10, 'the ten others are in the queue, once');
$mq->tool('declare-exchange', 'ex.orders.nowhere', 'topic');
$mq->tool('bind', 'orders', 'ex.orders.nowhere', '#');
ok(OutboxTest::wait_processed($node, $nox), 'delivered once the exchange exists');
OutboxTest::set_conf($node, 'outbox.amqp_exchange' => 'amq.topic');
$mq->tool('purge', 'orders');

########################################################################
# 4. A negative acknowledgement is a failed attempt.

$mq->tool('declare-queue', 'tiny', 'x-max-length=1', 'x-overflow=reject-publish');
$mq->tool('bind', 'tiny', 'amq.topic', 'app.tiny');
my $first = psql_value(q{SELECT outbox.save('tiny', 'one'::text)});
ok(OutboxTest::wait_processed($node, $first), 'the first message fits');
my $second = psql_value(q{SELECT outbox.save('tiny', 'two'::text)});
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT retries > 0 FROM outbox.messages WHERE id = '$second'", 't'),
	'the second one is refused');
is(OutboxTest::message_state($node, $second)->{error}, 'amqp: the broker refused the message (basic.nack)',
	'last_error says basic.nack');
$mq->tool('purge', 'tiny');
ok(OutboxTest::wait_processed($node, $second), 'delivered once the queue has room');

########################################################################
# 5. Oversized messages and headers.

OutboxTest::set_conf($node, 'outbox.enabled' => 'off');
my @small = map { psql_value("SELECT outbox.save('orders.big', '{\"small\": $_}'::jsonb, 's$_')") } 1 .. 5;
my $big = psql_value(q{SELECT outbox.save('orders.big', convert_to(repeat('x', 2000000), 'UTF8'), 'big')});
push @small, map { psql_value("SELECT outbox.save('orders.big', '{\"small\": $_}'::jsonb, 't$_')") } 1 .. 5;
OutboxTest::set_conf($node, 'outbox.enabled' => 'on');
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT retries > 0 FROM outbox.messages WHERE id = '$big'", 't'),
	'a message over the broker\'s max_message_size fails');
is( OutboxTest::message_state($node, $big)->{error},
	'amqp: the broker closed the channel: PRECONDITION_FAILED - message size 2000000 is larger than configured max size 1048576 (406)',
	'with the broker\'s reason');
ok(OutboxTest::wait_processed($node, @small), 'the other messages of its batch are delivered');
# Those in flight with it when the broker closed the channel may be there
# twice: they went back to pending without a confirm.
my %small_seen = map { $_->{message_id} => 1 } grep { $_->{body} =~ /small/ } $mq->dump('orders');
is(scalar(grep { $small_seen{$_} } @small), 10, 'each is in the queue');

OutboxTest::set_conf($node, 'outbox.amqp_max_message_size' => '1MB');
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT status FROM outbox.messages WHERE id = '$big'", 'failed'),
	'over outbox.amqp_max_message_size: failed at once');
is( OutboxTest::message_state($node, $big)->{error},
	'amqp: the message is 2000000 bytes, more than outbox.amqp_max_message_size (1048576 bytes)',
	'with the reason');

my $fat = psql_value(q{SELECT outbox.save('orders.fat', '{}'::jsonb, NULL,
	jsonb_build_object('x-big', repeat('h', 200000)))});
my $own = psql_value(q{SELECT outbox.save('orders.own', '{}'::jsonb, NULL, '{"Outbox-Topic": "spoofed"}')});
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE id IN ('$fat', '$own') AND status = 'failed' AND retries = 1", '2'),
	'headers that do not fit in a frame, or that the publisher sets, fail at once');
like(OutboxTest::message_state($node, $fat)->{error},
	qr/^amqp: the message's headers and properties take about \d+ bytes, more than one AMQP frame holds \(frame_max 131072 bytes\)$/,
	'headers too large: clear error');
is(OutboxTest::message_state($node, $own)->{error},
	'amqp: message header "Outbox-Topic" cannot be sent: the amqp publisher sets it itself',
	'own header: clear error');

# A topic that would make a routing key over 255 bytes is refused at save.
my ($rc, $stdout, $stderr) = $node->psql('postgres', "SELECT outbox.save(repeat('t', 252), '{}'::jsonb)");
like($stderr, qr/routing key would be 256 bytes; AMQP allows at most 255/, 'too long a routing key refused at save');

is( psql_value("SELECT count(*) FROM outbox.messages WHERE status = 'failed'"),
	'3', 'nothing else failed');

########################################################################
# 6. A broker that blocks publishers (a memory alarm): batches wait.

my $offset = OutboxTest::log_position($node);
$mq->ctl('set_vm_memory_high_watermark', 'absolute', '1');
my $blocked = psql_value(q{SELECT outbox.save('orders.blocked', '{"n": 1}'::jsonb)});
ok( OutboxTest::wait_for_log_line($node,
		qr/WARNING:  outbox amqp publisher: the broker blocked publishing \(connection\.blocked: low on memory\)/, $offset),
	'the block is reported');
my $state = OutboxTest::message_state($node, $blocked);
is($state->{status} . '/' . $state->{retries}, 'pending/0', 'the message waits, untouched') or diag("last_error: $state->{error}");
$mq->ctl('set_vm_memory_high_watermark', 'absolute', '2GB');
ok(OutboxTest::wait_processed($node, $blocked), 'delivered once the alarm is gone');

$node->stop;
done_testing();
