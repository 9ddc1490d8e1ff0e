# 140_redis.pl -- the redis publisher against a real redis-server:
#
#  - delivery: 300 messages over several keys and topics become one entry
#    each of the stream named by the template, in key order, with the
#    fields id, topic, key, headers (JSON), payload (byte for byte) and
#    created_at, and the entry id derived from the message id;
#  - duplicates: messages published again (set back to pending) are
#    recognised, not added twice, and the publisher says so;
#  - late messages: a transaction that commits after a later-saved one,
#    the waves of a batch with several messages per key, and an id that is
#    not a UUIDv7 are added above the stream's top, each once, per-key
#    order kept; published again, they are recognised as well;
#  - a key that holds another type: a failed attempt with Redis' text,
#    delivered once the key is free;
#  - MAXLEN ~ trimming.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;

use OutboxRedis;
use OutboxTest;

OutboxRedis::require_redis();

my $redis = OutboxRedis->start('r');
my $url = $redis->url;
my ($user, $password) = ($redis->user, $redis->password);
my $node = OutboxTest::new_node('redis', conf => qq{
shared_preload_libraries = 'outbox, outbox_redis'
outbox.publisher = 'redis'
outbox.redis_url = '$url'
outbox.redis_username = '$user'
outbox.redis_password = '$password'
outbox.redis_stream = 'app:{topic}'
outbox.redis_timeout = '3s'
outbox.poll_interval = '100ms'
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '300ms'
outbox.max_retries = 1000
log_statement = 'none'
log_min_messages = debug1
});

sub psql_value
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql);
}

# How many messages the publisher said were already in their stream, in
# the log after $offset.
sub duplicates_logged
{
	my ($offset) = @_;
	my $n = 0;
	$n += $_ for slurp_file($node->logfile, $offset) =~
	  /outbox redis publisher: (\d+) of \d+ messages were already in their stream/g;
	return $n;
}

# Set messages back to pending, as if their marks had been lost.
sub republish
{
	my (@ids) = @_;
	my $list = join(',', map { "'$_'" } @ids);
	psql_value("UPDATE outbox.messages SET status = 'pending', processed_at = NULL WHERE id IN ($list)");
	return;
}

########################################################################
# 1. Delivery and fields.

psql_value(q{
	SELECT outbox.save(
		(ARRAY['orders.created', 'orders.paid', 'orders.shipped'])[1 + i % 3],
		jsonb_build_object('n', i),
		'customer-' || (i % 7),
		jsonb_build_object('x-trace', 'trace-' || i))
	FROM generate_series(1, 300) i});
my $bin_id = psql_value(q{SELECT outbox.save('orders.bin', '\x00ff0a0d41'::bytea, NULL,
	'{"x-name": "José", "x-empty": ""}')});
ok(OutboxTest::wait_all_processed($node, 'postgres'), '301 messages processed');

my %entries;
for my $topic ('orders.created', 'orders.paid', 'orders.shipped', 'orders.bin')
{
	for my $e ($redis->xrange("app:$topic"))
	{
		$entries{ $e->{fields}{id} } = { %$e, stream => "app:$topic" };
	}
}
is(scalar keys %entries, 301, 'the streams hold 301 entries, one per message');

my $rows = psql_value(q{
	SELECT id, topic, key, convert_from(payload, 'UTF8'), headers::text, created_at
	FROM outbox.messages WHERE topic <> 'orders.bin' ORDER BY id});
my ($bad, $bad_example, $out_of_order) = (0, '', 0);
my %last_entry_of_key;
my $json = JSON::PP->new;
for my $row (split /\n/, $rows)
{
	my ($id, $topic, $key, $payload, $headers, $created_at) = split /\|/, $row;
	my $e = $entries{$id};
	my @problems;
	if (!$e)
	{
		push @problems, 'missing';
	}
	else
	{
		my $f = $e->{fields};
		push @problems, 'stream' unless $e->{stream} eq "app:$topic";
		push @problems, 'entry id' unless $e->{id} eq OutboxRedis::entry_id($id);
		push @problems, 'topic' unless $f->{topic} eq $topic;
		push @problems, 'key' unless $f->{key} eq $key;
		push @problems, 'payload' unless $f->{payload} eq $payload;
		push @problems, 'headers'
		  unless JSON::PP->new->canonical->encode($json->decode($f->{headers}))
		  eq JSON::PP->new->canonical->encode($json->decode($headers));
		push @problems, 'created_at' unless defined $f->{created_at};
		push @problems, 'fields' unless keys %$f == 6;
		# entries of a key must follow save order (entry ids grow with ids)
		my ($ms, $seq) = split /-/, $e->{id};
		my $last = $last_entry_of_key{$key};
		$out_of_order++ if $last && ($ms < $last->[0] || ($ms == $last->[0] && $seq < $last->[1]));
		$last_entry_of_key{$key} = [ $ms, $seq ];
	}
	if (@problems)
	{
		$bad++;
		$bad_example ||= "$id: @problems";
	}
}
is($bad, 0, 'every entry has its id, topic, key, headers, payload and created_at')
  or diag("first bad entry: $bad_example");
is($out_of_order, 0, 'entries of a key are in save order');
my $some = (values %entries)[0];
is( psql_value("SELECT created_at = '$some->{fields}{created_at}'::timestamptz FROM outbox.messages "
		  . "WHERE id = '$some->{fields}{id}'"),
	't', 'created_at is the creation time');
my $bin = $entries{$bin_id}{fields};
is($bin->{payload}, "\x00\xff\x0a\x0d\x41", 'binary payload byte for byte');
is($bin->{key}, '', 'key empty without a key');
is_deeply($json->decode($bin->{headers}), { 'x-name' => "Jos\xc3\xa9", 'x-empty' => '' },
	'headers as JSON, UTF-8 as is');

########################################################################
# 2. Published again: recognised, not added twice.

my @again = (sort keys %entries)[ 0 .. 9 ];
my $offset = OutboxTest::log_position($node);
republish(@again);
ok(OutboxTest::wait_all_processed($node, 'postgres'), 'republished messages processed');
is(duplicates_logged($offset), 10, 'the publisher says the ten were already in their stream');
my $total = 0;
$total += $redis->xlen("app:$_") for 'orders.created', 'orders.paid', 'orders.shipped', 'orders.bin';
is($total, 301, 'still one entry per message');

########################################################################
# 3. Late messages.

# A transaction that saves first and commits last.
my $late_session = $node->background_psql('postgres');
$late_session->query_safe('BEGIN');
my $late_id = $late_session->query_safe(q{SELECT outbox.save('late', '{"first": true}'::jsonb, 'early-saver')});
chomp $late_id;
my @early = map { psql_value("SELECT outbox.save('late', '{\"n\": $_}'::jsonb, 'other-$_')") } 1 .. 5;
ok(OutboxTest::wait_processed($node, @early), 'the later-saved messages went first');
$late_session->query_safe('COMMIT');
$late_session->quit;
ok(OutboxTest::wait_processed($node, $late_id), 'the earlier-saved message followed');
my @late_entries = $redis->xrange('app:late');
is(scalar @late_entries, 6, 'six entries');
is($late_entries[-1]{fields}{id}, $late_id, 'the late one is the last, above the top');
isnt($late_entries[-1]{id}, OutboxRedis::entry_id($late_id), 'with an id of the stream\'s, not its own');
ok(defined $redis->command('ZSCORE', 'app:late:outbox-late', $late_id), 'remembered as late');

# The waves of a batch: several messages of one key, then another key.
OutboxTest::set_conf($node, 'outbox.enabled' => 'off');
my @wave_ids = split /\n/, psql_value(q{
	SELECT outbox.save('waves', jsonb_build_object('n', i), CASE WHEN i <= 3 THEN 'A' ELSE 'B' END)
	FROM generate_series(1, 4) i});
my $v4 = psql_value(q{INSERT INTO outbox.messages (id, topic, key, payload)
	VALUES (gen_random_uuid(), 'waves', 'C', '\x01') RETURNING id});
OutboxTest::set_conf($node, 'outbox.enabled' => 'on');
ok(OutboxTest::wait_processed($node, @wave_ids, $v4), 'the waves and a non-UUIDv7 id are delivered');
my @waves = $redis->xrange('app:waves');
is(scalar @waves, 5, 'each once');
is_deeply([ map { $_->{fields}{id} } grep { $_->{fields}{key} eq 'A' } @waves ], [ @wave_ids[ 0 .. 2 ] ],
	'the key\'s messages in order');

# Published again, the late ones are recognised by their late-entry set.
$offset = OutboxTest::log_position($node);
republish($late_id, $wave_ids[1], $wave_ids[2], $v4);
ok(OutboxTest::wait_processed($node, $late_id, @wave_ids, $v4), 'the late ones published again');
is(duplicates_logged($offset), 4, 'recognised, all four');
is($redis->xlen('app:late'), 6, 'the late stream still has six entries');
is($redis->xlen('app:waves'), 5, 'the waves stream still has five');
ok(OutboxTest::log_count($node, qr/messages were added late/, 0) > 0, 'late additions are logged at DEBUG1');

########################################################################
# 4. A key of another type: a failed attempt with Redis' text.

$redis->command('SET', 'app:taken', 'a string');
my $taken = psql_value(q{SELECT outbox.save('taken', '{}'::jsonb)});
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT retries > 0 AND status = 'pending' FROM outbox.messages WHERE id = '$taken'", 't'),
	'the message fails and waits');
is(OutboxTest::message_state($node, $taken)->{error},
	'redis: WRONGTYPE Operation against a key holding the wrong kind of value',
	'last_error is Redis\' text');
$redis->command('DEL', 'app:taken');
ok(OutboxTest::wait_processed($node, $taken), 'delivered once the key is free');

########################################################################
# 5. MAXLEN ~ trimming.

OutboxTest::set_conf($node, 'outbox.redis_maxlen' => '50');
psql_value(q{SELECT outbox.save('trim', jsonb_build_object('n', i)) FROM generate_series(1, 1000) i});
ok(OutboxTest::wait_all_processed($node, 'postgres'), '1000 messages to a trimmed stream');
my $len = $redis->xlen('app:trim');
ok($len >= 50 && $len < 1000, "the stream is trimmed to about 50 entries ($len)");

is(psql_value("SELECT count(*) FROM outbox.messages WHERE status = 'failed'"), '0', 'nothing failed');

$node->stop;
done_testing();
