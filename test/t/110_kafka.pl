# 110_kafka.pl -- the kafka publisher (library outbox_kafka) against a
# 3-broker librdkafka mock cluster (test/brokers/kafka_mock, which prints
# every record it consumes as a JSON line).
#
#  - 300 messages over several keys and topics arrive exactly once, with
#    key, value and headers (outbox-id, outbox-topic, outbox-created-at and
#    the message's own) intact, and are marked processed;
#  - one key lands in one partition, in id order;
#  - broker errors (NOT_ENOUGH_REPLICAS on Produce) are failed attempts
#    with the broker's text in last_error, and everything arrives after;
#  - CloudEvents: a destination with format cloudevents-binary writes the
#    attributes as ce_* headers (ce_id, ce_source, ce_specversion, ce_type,
#    ce_time, ce_subject only with a key) and content-type once, the value
#    and the message's headers as they are; cloudevents-structured writes
#    the JSON event as the value, content-type application/cloudevents+json;
#    a ce_id message header fails its message in binary mode only; a bad
#    format option is refused with 22023;
#  - a topic that is no legal Kafka name, and a header the publisher sets
#    itself, fail their message at once; save() refuses the topic, with
#    outbox.kafka_topic applied;
#  - bad outbox.kafka_properties: refused by the check hook without quoting
#    the value; an unknown property is logged by name and messages wait;
#    non-superusers cannot read it; the secret never reaches the log;
#  - with the brokers unreachable, a message times out (failed attempt), a
#    reload pointing at the cluster is applied within seconds, and a fast
#    shutdown completes promptly.
#
# Skipped when outbox_kafka or kafka_mock is missing, unless
# OUTBOX_REQUIRE_BROKERS is set: then that is a failure.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxDestinations;
use OutboxKafka;
use OutboxTest;

OutboxKafka::require_kafka();

########################################################################
# The mock cluster.

my $kafka = OutboxKafka->start('orders', 'payments', 'users');
my $bootstrap = $kafka->bootstrap;
ok($bootstrap, "mock cluster started: $bootstrap");

sub drain_mock { $kafka->drain }
sub mock_command { return $kafka->command(@_) }
sub records_of { return $kafka->records_of(@_) }
sub wait_records { return $kafka->wait_records(@_) }

########################################################################
# The node.

my $secret = 'SECRET123';
my $properties = "sasl.password=$secret;message.send.max.retries=1;retry.backoff.ms=10";
my $node = OutboxTest::new_node('kafka', conf => qq{
shared_preload_libraries = 'outbox, outbox_kafka'
outbox.publisher = 'kafka'
outbox.kafka_brokers = '$bootstrap'
outbox.kafka_properties = '$properties'
outbox.poll_interval = '100ms'
outbox.retry_backoff = '50ms'
outbox.retry_backoff_max = '200ms'
outbox.max_retries = 1000
});

sub ids_of
{
	my ($sql) = @_;
	return split /\n/, $node->safe_psql('postgres', $sql);
}

########################################################################
# 1. Delivery: exactly once, key, value and headers intact.

my $n = 300;
my @ids = ids_of(qq{
	SELECT outbox.save((ARRAY['orders', 'payments', 'users'])[1 + i % 3],
	                   jsonb_build_object('i', i),
	                   CASE WHEN i % 10 = 0 THEN NULL ELSE 'k' || (i % 7) END,
	                   jsonb_build_object('x-trace', 't' || i, 'x-run', 'one'))
	FROM generate_series(1, $n) AS i ORDER BY i});
is(scalar @ids, $n, "$n messages saved");
ok(wait_records(@ids), "all $n messages arrived");
ok(OutboxTest::wait_processed($node, @ids), "all $n marked processed");
drain_mock();

my @got = records_of(@ids);
my %count;
$count{ $_->{h}{'outbox-id'}[0] }++ for @got;
is(scalar(grep { $count{$_} == 1 } @ids), $n, 'each message arrived exactly once');

my %expect;
for my $row (split /\n/, $node->safe_psql('postgres', qq{
	SELECT id, topic, key, convert_from(payload, 'UTF8'), headers->>'x-trace'
	FROM outbox.messages WHERE headers->>'x-run' = 'one'}))
{
	my ($id, $topic, $key, $payload, $trace) = split /\|/, $row;
	$expect{$id} = { topic => $topic, key => $key, payload => $payload, trace => $trace };
}
my ($bad_topic, $bad_key, $bad_value, $bad_headers) = (0, 0, 0, 0);
my @created;
for my $r (@got)
{
	my $e = $expect{ $r->{h}{'outbox-id'}[0] };
	$bad_topic++ unless $r->{topic} eq $e->{topic} && $r->{h}{'outbox-topic'}[0] eq $e->{topic};
	$bad_key++ unless ($e->{key} eq '' ? !defined $r->{key} : ($r->{key} // '') eq $e->{key});
	$bad_value++ unless $r->{value} eq $e->{payload};
	$bad_headers++
	  unless ($r->{h}{'x-trace'}[0] // '') eq $e->{trace}
	  && ($r->{h}{'x-run'}[0] // '') eq 'one'
	  && ($r->{h}{'content-type'}[0] // '') eq 'application/json'
	  && @{ $r->{h}{'outbox-id'} } == 1
	  && ($r->{h}{'outbox-created-at'}[0] // '') =~
	  /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d(:\d\d)?)$/;
	push @created, "('$r->{h}{'outbox-id'}[0]'::uuid, '$r->{h}{'outbox-created-at'}[0]'::timestamptz)";
}
is($bad_topic, 0, 'record topic and outbox-topic header are the message topic');
is($bad_key, 0, 'record key is the message key (no key without one)');
is($bad_value, 0, 'record value is the payload');
is($bad_headers, 0, 'message headers and outbox-* headers present, outbox-created-at is RFC 3339');
is( $node->safe_psql('postgres',
		'SELECT count(*) FROM outbox.messages m JOIN (VALUES ' . join(',', @created)
		  . ') AS v(id, at) ON m.id = v.id AND m.created_at = v.at'),
	$n, 'outbox-created-at is the creation time of each message');

########################################################################
# 2. One key, one partition, in id order.

my (%partitions, %offsets_in_order);
for my $r (sort { $a->{partition} <=> $b->{partition} || $a->{offset} <=> $b->{offset} } @got)
{
	next unless defined $r->{key};
	my $k = "$r->{topic}/$r->{key}";
	$partitions{$k}{ $r->{partition} } = 1;
	push @{ $offsets_in_order{$k} }, $r->{h}{'outbox-id'}[0];
}
is(scalar(grep { keys %{ $partitions{$_} } != 1 } keys %partitions), 0,
	'the messages of a key all land in one partition');
my %all_partitions = map { $_->{partition} => 1 } @got;
cmp_ok(scalar keys %all_partitions, '>', 1, 'keys spread over several partitions');
my $misordered = 0;
for my $k (keys %offsets_in_order)
{
	my @seq = @{ $offsets_in_order{$k} };
	my @sorted = sort @seq;    # UUIDv7 text sorts in id order
	$misordered++ unless "@seq" eq "@sorted";
}
is($misordered, 0, 'within its partition, a key\'s messages are in id order');

########################################################################
# 3. Broker errors are failed attempts; nothing is lost.

# librdkafka's mock cluster keeps a producer's sequence numbers across an
# epoch bump (which the idempotent producer does after a record failed for
# good), so it would take records written after the bump for duplicates:
# the errors hit a fresh producer (new properties) on a fresh one-partition
# topic, one request at a time, before anything is written with it.
is(mock_command('topic errors 1'), 'ok', 'topic "errors" created');
$node->append_conf('postgresql.conf', "outbox.kafka_properties = '$properties;max.in.flight=1'\n");
$node->reload;
OutboxTest::poll_until($node, 'postgres',
	"SELECT current_setting('outbox.kafka_properties') LIKE '%max.in.flight=1'", 't');
is(mock_command('errors 0 2 19'), 'ok', 'NOT_ENOUGH_REPLICAS queued for the next 2 Produce requests');
my @err_ids = ids_of(q{
	SELECT outbox.save('errors', jsonb_build_object('e', i), 'e' || (i % 4))
	FROM generate_series(1, 20) AS i ORDER BY i});
ok(wait_records(@err_ids), 'after the errors, every message arrived');
ok(OutboxTest::wait_processed($node, @err_ids), 'and every one is processed');
my $list = join(',', map { "'$_'" } @err_ids);
cmp_ok($node->safe_psql('postgres', "SELECT sum(retries) FROM outbox.messages WHERE id IN ($list)"),
	'>', 0, 'the broker errors were failed attempts');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.messages WHERE id IN ($list) AND retries > 0 "
		  . "AND last_error <> 'kafka: Broker: Not enough in-sync replicas'"),
	'0', 'last_error has the broker\'s error text');

########################################################################
# CloudEvents, in two destinations of their own.

my ($rc, $stdout, $stderr);
is(mock_command('topic ce.bin 1'), 'ok', 'topic "ce.bin" created');
is(mock_command('topic ce.str 1'), 'ok', 'topic "ce.str" created');
my %ce = OutboxDestinations::cloudevents($node, 'kafka',
	binary => qq{"brokers": "$bootstrap", "topic": "ce.bin"},
	structured => qq{"brokers": "$bootstrap", "topic": "ce.str"},
	topic => 'ce', reserved => 'ce_id');
ok( OutboxTest::wait_until(
		$OutboxTest::TIMEOUT,
		sub { drain_mock(); 4 == grep { $_->{topic} =~ /^ce\./ } records_of($ce{json}, $ce{bytes}) }),
	'the mock cluster has their four records');

# The record of message $id in Kafka topic $topic, its headers' first values in "first".
sub record_in
{
	my ($topic, $id) = @_;
	my @r = grep { $_->{topic} eq $topic } records_of($id);
	is(scalar @r, 1, "one record of $id in $topic");
	my $r = $r[0] // { h => {}, value => '' };
	$r->{first} = { map { $_ => $r->{h}{$_}[0] } keys %{ $r->{h} } };
	return $r;
}

my $rec = record_in('ce.bin', $ce{json});
OutboxDestinations::is_attributes($rec->{first}, $node, $ce{json}, 'ce_', 'ce.created', 'k1', 'binary');
is_deeply([ @{ $rec->{h} }{qw(content-type x-trace)} ], [ ['application/json'], ['ce-1'] ],
	'binary: content-type once, and the message\'s headers');
is($rec->{value}, '{"n": 1}', 'binary: the value is the payload');
is($rec->{key}, 'k1', 'binary: the key is the message key');
$rec = record_in('ce.bin', $ce{bytes});
ok(!exists $rec->{h}{ce_subject}, 'binary: no ce_subject without a key');
is_deeply($rec->{h}{'content-type'}, ['application/octet-stream'], 'binary: content-type of a binary payload');

$rec = record_in('ce.str', $ce{json});
is_deeply([ @{ $rec->{h} }{qw(content-type x-trace)} ], [ ['application/cloudevents+json'], ['ce-1'] ],
	'structured: content-type application/cloudevents+json once, and the message\'s headers');
OutboxDestinations::is_event($rec->{value}, $ce{json}, 'kafka', 'ce.created', 'structured');
is(OutboxDestinations::data_base64(record_in('ce.str', $ce{bytes})->{value}), 'AP9B',
	'structured: a binary payload is data_base64');

like(OutboxTest::error_of($node, q{SELECT outbox.create_destination('ce_bad', 'kafka', '{"brokers": "b:9092", "format": "avro"}')}),
	qr/^22023: invalid value for option "format" of publisher "kafka"/, 'a bad format option is refused with 22023');
$node->safe_psql('postgres', q{SELECT outbox.drop_destination('ce_bin', force => true); SELECT outbox.drop_destination('ce_str')});

########################################################################
# Messages that can never be sent fail at once.

($rc, $stdout, $stderr) = $node->psql('postgres', q{SELECT outbox.save('bad topic!', '1'::text)});
isnt($rc, 0, 'save() refuses a topic that is no legal Kafka topic name');
like($stderr, qr/not a legal Kafka topic name/, 'with the reason');
OutboxTest::set_conf($node, 'outbox.kafka_topic' => '{topic}.{topic}');
($rc, $stdout, $stderr) = $node->psql('postgres', q{SELECT outbox.save(repeat('t', 200), '1'::text)});
like($stderr, qr/a Kafka topic name must have 1 to 249 characters, not 401/,
	'save() applies outbox.kafka_topic: a topic that makes too long a name is refused');
OutboxTest::set_conf($node, 'outbox.kafka_topic' => '{topic}');
my ($bad_topic_id) = ids_of(q{
	INSERT INTO outbox.messages (topic, payload) VALUES ('bad topic!', '\x31') RETURNING id});
my $spoofed_id = $node->safe_psql('postgres',
	q{SELECT outbox.save('orders', '2'::text, NULL, '{"outbox-id": "spoofed"}')});
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE id IN ('$bad_topic_id', '$spoofed_id') AND status = 'failed' AND retries = 1",
		'2'),
	'a bad topic on the batch path and a reserved header fail at once');
like(OutboxTest::message_state($node, $bad_topic_id)->{error}, qr/^"bad topic!" is not a legal Kafka topic name/,
	'bad topic: clear error');
like(OutboxTest::message_state($node, $spoofed_id)->{error}, qr/"outbox-id" cannot be sent/, 'reserved header: clear error');

########################################################################
# 4. Bad settings; the secret stays secret.

($rc, $stdout, $stderr) = $node->psql('postgres',
	"ALTER SYSTEM SET outbox.kafka_properties = 'sasl.password $secret'");
isnt($rc, 0, 'bad syntax refused by ALTER SYSTEM');
like($stderr, qr/invalid value for parameter "outbox.kafka_properties"/, 'names the setting');
like($stderr, qr/Entry 1 has no "="/, 'says what is wrong');
unlike($stderr, qr/$secret/, 'without quoting the value');
($rc, $stdout, $stderr) = $node->psql('postgres',
	"ALTER SYSTEM SET outbox.kafka_properties = 'bootstrap.servers=elsewhere:9092'");
like($stderr, qr/use outbox.kafka_brokers/, 'bootstrap.servers is refused in kafka_properties');

my $offset = OutboxTest::log_position($node);
$node->append_conf('postgresql.conf', "outbox.kafka_properties = 'garbage$secret'\n");
$node->reload;
ok( OutboxTest::wait_for_log_line($node,
		qr/invalid value for parameter "outbox.kafka_properties"/, $offset),
	'bad syntax in postgresql.conf: reload refuses it');

$offset = OutboxTest::log_position($node);
$node->append_conf('postgresql.conf', "outbox.kafka_properties = 'no.such.property=$secret'\n");
$node->reload;
my $waiting_id = $node->safe_psql('postgres', q{SELECT outbox.save('orders', '{"w": 1}'::jsonb)});
ok( OutboxTest::wait_for_log_line($node,
		qr/outbox kafka publisher: outbox.kafka_properties: unknown librdkafka property "no.such.property"/,
		$offset),
	'unknown property: logged by name');
is(OutboxTest::message_state($node, $waiting_id)->{status}, 'pending', 'the message waits, untouched');
is(OutboxTest::message_state($node, $waiting_id)->{retries}, '0', 'no attempt counted');

$node->append_conf('postgresql.conf', "outbox.kafka_properties = '$properties'\n");
$node->reload;
ok(OutboxTest::wait_processed($node, $waiting_id), 'delivered once the setting is fixed');

$node->safe_psql('postgres', 'CREATE ROLE app LOGIN');
($rc, $stdout, $stderr) = $node->psql('postgres', 'SHOW outbox.kafka_properties', extra_params => [ '-U', 'app' ]);
isnt($rc, 0, 'a non-superuser cannot SHOW outbox.kafka_properties');
like($stderr, qr/must be superuser|permission denied/, 'refused');
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_settings WHERE name = 'outbox.kafka_properties'"),
	'0', 'not in pg_settings');

########################################################################
# 5. Unreachable brokers: timeouts, a prompt reload, a prompt shutdown.

my $closed = PostgreSQL::Test::Cluster::get_free_port();
OutboxTest::set_conf($node, 'outbox.kafka_brokers' => "127.0.0.1:$closed",
	'outbox.kafka_properties' => "$properties;message.timeout.ms=1500");
my $late_id = $node->safe_psql('postgres', q{SELECT outbox.save('payments', '{"late": 1}'::jsonb, 'late')});
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT retries > 0 FROM outbox.messages WHERE id = '$late_id'", 't'),
	'unreachable brokers: the attempt times out');
like(OutboxTest::message_state($node, $late_id)->{error}, qr/^kafka: Local: Message timed out/, 'last_error says so');

# A long message timeout: the batch waits in the publisher.
OutboxTest::set_conf($node, 'outbox.kafka_properties' => "$properties;message.timeout.ms=60000");
# (A message in the worker's batch stays pending; the worker says it is
# publishing.)
my $publishing = "SELECT query = 'publishing outbox messages' FROM pg_stat_activity "
  . "WHERE backend_type = 'outbox worker'";
OutboxTest::poll_until($node, 'postgres', $publishing, 't')
  or diag('the message was not claimed');
OutboxTest::poll_until($node, 'postgres',
	"SELECT wait_event FROM pg_stat_activity WHERE backend_type = 'outbox worker'", 'Extension');
my $t0 = time();
OutboxTest::set_conf($node, 'outbox.kafka_brokers' => $bootstrap);
ok(OutboxTest::wait_processed($node, $late_id), 'reload pointing at the cluster: delivered');
cmp_ok(time() - $t0, '<', 20, 'well before the 60 s message timeout');

OutboxTest::set_conf($node, 'outbox.kafka_brokers' => "127.0.0.1:$closed");
my $stuck_id = $node->safe_psql('postgres', q{SELECT outbox.save('payments', '{"stuck": 1}'::jsonb)});
OutboxTest::poll_until($node, 'postgres', $publishing, 't')
  or diag('the message was not claimed');
my $log_before_stop = slurp_file($node->logfile);
is( system('pg_ctl', '-D', $node->data_dir, '-m', 'fast', '-w', '-t', '10', 'stop'), 0,
	'fast shutdown completes within 10 s while the worker waits for unreachable brokers');
$node->_update_pid(0);

my $log = slurp_file($node->logfile);
is(index($log, $secret), -1, 'the secret never appears in the server log');
like($log, qr/parameter "outbox.kafka_properties" changed$/m, 'changes are logged without the value');

$kafka->stop;

done_testing();
