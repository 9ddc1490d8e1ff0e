# 120_nats.pl -- the nats publisher against a real nats-server (JetStream,
# one server, file storage):
#
#  - delivery: 300 messages over several keys and topics land in the
#    stream once each, in key order, with subject = topic, the payload
#    byte for byte, Nats-Msg-Id = Outbox-Id = the message id, Outbox-Topic,
#    Outbox-Key, Outbox-Created-At and the message's own headers (values
#    as they are, empty and UTF-8 ones included); a topic that is no valid
#    subject, or a header NATS cannot carry, fails that message at once;
#  - kill -9 of the worker while a large backlog is in flight: every
#    message is in the stream exactly once (the duplicate window drops the
#    republished ones, and the publisher says so), and all are processed;
#  - no stream for the subject: the message waits with last_error "no
#    stream matches subject ..." and is delivered once the stream exists;
#  - server restart: while nats-server is down messages stay pending (the
#    problem is logged once, the worker does not spin), and are delivered
#    after it comes back on the same port with the same store;
#  - CloudEvents (last, so that its destination workers leave the kill
#    test as it was): a destination with format cloudevents-binary publishes
#    the attributes as ce-* headers (ce-subject only with a key) and
#    content-type, the payload as it is; cloudevents-structured publishes
#    the JSON event with content-type application/cloudevents+json, the
#    message's headers kept; a ce-source message header fails its message
#    in binary mode only.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxDestinations;
use OutboxNats;
use OutboxTest;

OutboxNats::require_nats();

my $nats = OutboxNats->start('single');
$nats->js('add-stream', 'ORDERS', 'orders.>', 1, 120);
$nats->js('add-stream', 'BULK', 'bulk', 1, 120);

my $url = $nats->url;
my $node = OutboxTest::new_node('nats', conf => qq{
shared_preload_libraries = 'outbox, outbox_nats'
outbox.publisher = 'nats'
outbox.nats_url = '$url'
outbox.nats_timeout = '2s'
outbox.poll_interval = '100ms'
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '500ms'
outbox.max_retries = 1000
log_statement = 'none'
});

sub psql_value
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql);
}

# Wait until no message is pending or being published.
sub wait_settled
{
	my ($timeout) = @_;
	return OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE status IN ('pending', 'processing')",
		'0', $timeout);
}

# Wait until the stream holds $n messages.
sub wait_stream_count
{
	my ($stream, $n, $timeout) = @_;
	my $last;
	my $ok = OutboxTest::wait_until($timeout // 60,
		sub { $last = $nats->count($stream); defined $last && $last >= $n });
	diag("stream $stream: expected $n messages, last count " . ($last // '(error)')) unless $ok;
	return $ok;
}

########################################################################
# 1. Delivery with headers intact.

my @topics = ('orders.created', 'orders.paid', 'orders.shipped');
psql_value(q{
	SELECT outbox.save(
		(ARRAY['orders.created', 'orders.paid', 'orders.shipped'])[1 + i % 3],
		convert_to('{"n": ' || i || '}', 'UTF8'),
		'customer-' || (i % 7),
		jsonb_build_object('x-trace', 'trace-' || i, 'x-num', i::text))
	FROM generate_series(1, 300) i});
my $bin_id = psql_value(q{SELECT outbox.save('orders.bin', '\x00ff0a0d41'::bytea, NULL,
	'{"x-empty": "", "x-name": "José"}')});

ok(OutboxTest::wait_all_processed($node, 'postgres'), '301 messages processed');
my %by_id = map { $_->{headers}{'Nats-Msg-Id'} => $_ } $nats->dump('ORDERS');
is(scalar keys %by_id, 301, 'the stream holds 301 distinct messages');

my $rows = psql_value(q{
	SELECT id, topic, key, convert_from(payload, 'UTF8'), headers->>'x-trace', headers->>'x-num',
	       extract(epoch FROM created_at)
	FROM outbox.messages WHERE topic LIKE 'orders.%' AND topic <> 'orders.bin' ORDER BY id});
my ($bad, $bad_example) = (0, '');
my %seq_of_key;
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
		push @problems, 'subject' unless $m->{subject} eq $topic;
		push @problems, 'data' unless $m->{data} eq $payload;
		push @problems, 'Outbox-Id' unless ($h->{'Outbox-Id'} // '') eq $id;
		push @problems, 'Outbox-Topic' unless ($h->{'Outbox-Topic'} // '') eq $topic;
		push @problems, 'Outbox-Key' unless ($h->{'Outbox-Key'} // '') eq $key;
		push @problems, 'x-trace' unless ($h->{'x-trace'} // '') eq $trace;
		push @problems, 'x-num' unless ($h->{'x-num'} // '') eq $num;
		push @problems, 'Outbox-Created-At' unless defined $h->{'Outbox-Created-At'};
		# ids are in save order: within a key, stream sequences must grow
		$out_of_order++ if defined $seq_of_key{$key} && $m->{seq} < $seq_of_key{$key};
		$seq_of_key{$key} = $m->{seq};
	}
	if (@problems)
	{
		$bad++;
		$bad_example ||= "$id: @problems";
	}
}
is($bad, 0, 'every message arrived with subject, payload and headers intact')
  or diag("first bad message: $bad_example");
is($out_of_order, 0, 'messages of a key are in the stream in save order');

my $some_id = (keys %by_id)[0];
is( psql_value("SELECT created_at = '$by_id{$some_id}{headers}{'Outbox-Created-At'}'::timestamptz "
		  . "FROM outbox.messages WHERE id = '$some_id'"),
	't', 'Outbox-Created-At is the creation time');

my $bin = $by_id{$bin_id};
is($bin->{data}, "\x00\xff\x0a\x0d\x41", 'binary payload byte for byte');
is($bin->{headers}{'x-empty'}, '', 'empty header value');
is($bin->{headers}{'x-name'}, "Jos\xc3\xa9", 'UTF-8 header value as is');
is($bin->{headers}{'Outbox-Key'}, '', 'Outbox-Key empty without a key');

# Messages that can never be published fail at once, with a clear error.
my %bad_ids = (
	space => psql_value(q{SELECT outbox.save('orders.eu west', '1'::text)}),
	wildcard => psql_value(q{SELECT outbox.save('orders.*', '2'::text)}),
	empty_token => psql_value(q{SELECT outbox.save('orders..x', '3'::text)}),
	reserved => psql_value(q{SELECT outbox.save('orders.x', '4'::text, NULL, '{"Nats-Msg-Id": "spoofed"}')}),
	header_name => psql_value(q{SELECT outbox.save('orders.x', '5'::text, NULL, '{"bad name": "v"}')}),
	header_value => psql_value(q{SELECT outbox.save('orders.x', '6'::text, NULL, '{"x-inject": "v\r\nX: 1"}')}),
);
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE status = 'failed' AND retries = 1", '6'),
	'unpublishable messages failed at once');
like(OutboxTest::message_state($node, $bad_ids{space})->{error},
	qr/^nats: subject "orders\.eu west" \(for topic "orders\.eu west"\) is not a valid NATS subject: it contains whitespace$/,
	'space in the subject: clear error');
like(OutboxTest::message_state($node, $bad_ids{wildcard})->{error}, qr/is not a valid NATS subject: it has a wildcard token/,
	'wildcard subject: clear error');
like(OutboxTest::message_state($node, $bad_ids{empty_token})->{error}, qr/is not a valid NATS subject: it has an empty token/,
	'empty token: clear error');
like(OutboxTest::message_state($node, $bad_ids{reserved})->{error}, qr/message header "Nats-Msg-Id" cannot be sent: the nats publisher sets it itself/,
	'Nats-Msg-Id from the message refused');
like(OutboxTest::message_state($node, $bad_ids{header_name})->{error}, qr/"bad name" is not a valid NATS header name/,
	'invalid header name: clear error');
like(OutboxTest::message_state($node, $bad_ids{header_value})->{error}, qr/contains a control character/,
	'control character in a header value: clear error');
is($nats->count('ORDERS'), 301, 'nothing of them reached the stream');

# A subject template that cannot give valid subjects is refused.
my ($rc, $stdout, $stderr) = $node->psql('postgres', "ALTER SYSTEM SET outbox.nats_subject = 'a..{topic}'");
like($stderr, qr/not a valid NATS subject/, 'invalid outbox.nats_subject refused');

########################################################################
# 2. kill -9 of the worker with publications in flight.

my $total = 60000;
OutboxTest::set_conf($node, 'outbox.enabled' => 'off', 'outbox.batch_size' => '2000');
psql_value(qq{INSERT INTO outbox.messages (topic, payload, key)
	SELECT 'bulk', convert_to('{"i": ' || i || '}', 'UTF8'), 'k' || (i % 5000)
	FROM generate_series(1, $total) i});
my $offset = OutboxTest::log_position($node);
OutboxTest::set_conf($node, 'outbox.enabled' => 'on');

my $kills = 0;
# The kill can still come just after the batch was marked (the counts are a
# few milliseconds old by then), and then it makes no duplicate: try again,
# up to eight times, with enough messages left for each try.
for my $attempt (1 .. 8)
{
	# Kill while messages are in the stream but not yet marked processed:
	# published, acknowledged or not, with their batch still in flight.
	# The worker must be publishing when the counts are read (not marking
	# a batch it finished: then nothing in the stream is unmarked, and the
	# kill makes no duplicate).
	my $pid = OutboxTest::worker_pid($node, 'postgres') or last;
	my $caught = OutboxTest::wait_until(
		30,
		sub {
			my ($done, $publishing) = OutboxTest::publishing_progress($node, $pid, 'bulk');
			return 0 unless defined $done;
			my $stored = $nats->count('BULK');
			return $publishing && defined $stored && $stored - $done >= 50
			  && $done < $total - 5000;
		});
	last unless $caught;
	kill 'KILL', $pid;
	$kills++;
	OutboxTest::wait_for_worker($node, 'postgres', not_pid => $pid) or last;
	last if OutboxTest::wait_for_log_line($node, qr/were already in the stream/, $offset, 20);
}
ok($kills > 0, "worker killed $kills time(s) mid-run");
ok(wait_settled(90), 'all bulk messages processed after the kills');
ok(OutboxTest::log_count($node, qr/outbox nats publisher: \d+ of \d+ messages were already in the stream/, $offset) > 0,
	'messages published before the kill were published again and dropped as duplicates');
ok(wait_stream_count('BULK', $total), "the stream holds $total messages");
my @bulk = $nats->dump('BULK');
my %seen;
$seen{ $_->{headers}{'Nats-Msg-Id'} }++ for @bulk;
is(scalar @bulk, $total, "exactly $total messages in the stream");
is(scalar(grep { $_ > 1 } values %seen), 0, 'no message twice');
is( psql_value("SELECT count(*) FROM outbox.messages WHERE topic = 'bulk' AND status = 'processed'"),
	$total, 'every bulk message processed');
my $ids = psql_value("SELECT id FROM outbox.messages WHERE topic = 'bulk'");
is(scalar(grep { !$seen{$_} } split /\n/, $ids), 0, 'every bulk message is in the stream');
OutboxTest::set_conf($node, 'outbox.batch_size' => '100');

########################################################################
# 3. No stream for the subject: wait, then deliver once it exists.

my $inv = psql_value(q{SELECT outbox.save('invoices.created', '{"n": 1}'::jsonb, 'inv-1')});
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT retries > 0 AND status = 'pending' FROM outbox.messages WHERE id = '$inv'", 't'),
	'no stream: the message waits and is retried');
is(OutboxTest::message_state($node, $inv)->{error}, 'nats: no stream matches subject "invoices.created"',
	'last_error says no stream matches the subject');
$nats->js('add-stream', 'INVOICES', 'invoices.>', 1);
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT status FROM outbox.messages WHERE id = '$inv'", 'processed'),
	'delivered once the stream exists');
my @inv = $nats->dump('INVOICES');
is(scalar @inv, 1, 'one copy in the new stream');
is($inv[0]{headers}{'Nats-Msg-Id'}, $inv, 'the waiting message');

########################################################################
# 4. Server restart: pending while down, delivered after.

my $before = $nats->count('ORDERS');
$offset = OutboxTest::log_position($node);
$nats->stop;
my @down = map { psql_value("SELECT outbox.save('orders.created', '{\"down\": $_}'::jsonb, 'down-$_')") } 1 .. 50;
ok(OutboxTest::wait_for_log_line($node, qr/outbox nats publisher: (not connected to any NATS server|the connection to NATS was lost)/, $offset),
	'the lost connection is reported');
my $wpid = OutboxTest::worker_pid($node, 'postgres');
my $cpu = sub {
	open(my $fh, '<', "/proc/$wpid/stat") or return 0;
	my @f = split ' ', scalar <$fh>;
	return $f[13] + $f[14];
};
my ($cpu0, $t0) = ($cpu->(), time());
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE topic = 'orders.created' AND key LIKE 'down-%' "
		  . "AND status IN ('pending', 'processing')", '50'),
	'messages stay pending while the server is down');
sleep 2;    # measuring a rate, not synchronizing
my $ticks = $cpu->() - $cpu0;
my $elapsed = time() - $t0;
ok($ticks < 0.25 * $elapsed * 100, "the worker does not spin while disconnected ($ticks ticks in ${elapsed}s)");
is( psql_value("SELECT count(*) FROM outbox.messages WHERE key LIKE 'down-%' AND status = 'failed'"),
	'0', 'none failed');
is(OutboxTest::log_count($node, qr/outbox nats publisher: not connected/, $offset), 1,
	'the problem is logged once');

$nats->start_again;
ok(wait_settled(), 'delivered after the server came back');
ok(wait_stream_count('ORDERS', $before + 50), 'the stream got the 50 messages');
my %orders = map { $_->{headers}{'Nats-Msg-Id'} => 1 } $nats->dump('ORDERS');
is(scalar(grep { !$orders{$_} } @down), 0, 'each message saved while down is in the stream');
is($nats->count('ORDERS'), $before + 50, 'and only once');

########################################################################
# CloudEvents, in two destinations of their own (and two streams: one
# stream would take the second copy of a message id for a duplicate).

$nats->js('add-stream', 'CEBIN', 'cloud.bin.>', 1, 120);
$nats->js('add-stream', 'CESTR', 'cloud.str.>', 1, 120);
my %ce = OutboxDestinations::cloudevents($node, 'nats',
	binary => qq{"url": "$url", "subject": "cloud.bin.{topic}"},
	structured => qq{"url": "$url", "subject": "cloud.str.{topic}"},
	topic => 'ce', reserved => 'ce-source');

my %ce_bin = map { $_->{headers}{'Nats-Msg-Id'} => $_ } $nats->dump('CEBIN');
my %ce_str = map { $_->{headers}{'Nats-Msg-Id'} => $_ } $nats->dump('CESTR');
is(scalar keys %ce_bin, 2, 'binary: two messages in their stream');
my $m = $ce_bin{ $ce{json} } // { headers => {} };
OutboxDestinations::is_attributes($m->{headers}, $node, $ce{json}, 'ce-', 'ce.created', 'k1', 'binary');
is_deeply([ @{ $m->{headers} }{qw(content-type x-trace)} ], [ 'application/json', 'ce-1' ],
	'binary: content-type, and the message\'s headers');
is($m->{data}, '{"n": 1}', 'binary: the payload as it is');
is($m->{subject}, 'cloud.bin.ce.created', 'binary: the destination\'s subject');
$m = $ce_bin{ $ce{bytes} } // { headers => {} };
ok(!exists $m->{headers}{'ce-subject'}, 'binary: no ce-subject without a key');
is($m->{headers}{'content-type'}, 'application/octet-stream', 'binary: content-type of a binary payload');

is(scalar keys %ce_str, 3, 'structured: three messages in their stream');
$m = $ce_str{ $ce{json} } // { headers => {} };
is_deeply([ @{ $m->{headers} }{qw(content-type x-trace)} ], [ 'application/cloudevents+json', 'ce-1' ],
	'structured: content-type, and the message\'s headers');
OutboxDestinations::is_event($m->{data}, $ce{json}, 'nats', 'ce.created', 'structured');
is(OutboxDestinations::data_base64(($ce_str{ $ce{bytes} } // {})->{data}), 'AP9B',
	'structured: a binary payload is data_base64');

$node->stop;
done_testing();
