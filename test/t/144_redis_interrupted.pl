# 144_redis_interrupted.pl -- the redis publisher after a conversation with
# Redis was cut short by an ERROR (here pg_cancel_backend() of the worker
# while Redis, frozen with SIGSTOP, owes it replies):
#
#  - replies outstanding: the next batch must not read the interrupted
#    batch's replies as its own.  A message whose XADD fails (its stream
#    key holds a string) must not be credited with an earlier message's
#    success and marked processed;
#  - an interrupted handshake (AUTH, SCRIPT LOAD): the next batch must not
#    use a connection without its script, nor read the handshake's replies
#    as its messages'.
#
# What the stream must hold is checked against the test's own record of
# what it saved (ids, topics, payloads), read back with XRANGE.

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
my $node = OutboxTest::new_node('redis_interrupted', conf => qq{
shared_preload_libraries = 'outbox, outbox_redis'
outbox.publisher = 'redis'
outbox.redis_url = '$url'
outbox.redis_username = '$user'
outbox.redis_password = '$password'
outbox.redis_timeout = '60s'
outbox.poll_interval = '100ms'
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '300ms'
outbox.processing_timeout = '2s'
outbox.max_retries = 1000
});

# What the test saved: id => { topic, payload }.
my %saved;
my $json = JSON::PP->new->canonical;

# Save one message; returns its id.
sub save
{
	my ($topic, $payload) = @_;
	my $text = $json->encode($payload);
	my $id = $node->safe_psql('postgres', "SELECT outbox.save('$topic', '$text'::jsonb)");
	$saved{$id} = { topic => $topic, payload => $payload };
	return $id;
}

sub state_of
{
	my ($id) = @_;
	return OutboxTest::message_state($node, $id);
}

# Wait until the worker waits inside the publisher (for Redis, frozen).
sub wait_publishing
{
	return OutboxTest::poll_until($node, 'postgres',
		    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'outbox worker' "
		  . "AND state = 'active' AND query = 'publishing outbox messages' "
		  . "AND wait_event = 'Extension'",
		'1');
}

# Cancel the worker's wait with pg_cancel_backend(); wait for the ERROR.
sub cancel_worker
{
	my $offset = OutboxTest::log_position($node);
	my $pid = OutboxTest::worker_pid($node, 'postgres');
	is($node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)"), 't', 'worker cancelled');
	ok(OutboxTest::wait_for_log_line($node, qr/ERROR:  canceling statement due to user request/, $offset),
		'the cancel interrupted the wait');
	is(OutboxTest::worker_pid($node, 'postgres'), $pid, 'the worker goes on');
	return;
}

# Wait until a message was attempted again after an interruption: processed,
# or a failed attempt recorded.
sub wait_attempted
{
	my ($id) = @_;
	return OutboxTest::poll_until($node, 'postgres',
		"SELECT status = 'processed' OR retries > 0 FROM outbox.messages WHERE id = '$id'", 't');
}

my $first = save('good', { n => 0 });
ok(OutboxTest::wait_processed($node, $first), 'connected and publishing');

########################################################################
# 1. Replies outstanding.

# A stream key that holds a string: the XADD of a message there fails.
$redis->command('SET', 'bad', 'a string');

kill 'STOP', $redis->{pid};
my $ma = save('good', { n => 1 });
ok(wait_publishing(), 'the worker waits for Redis\'s answer');
cancel_worker();
my $mb = save('bad', { n => 2 });
kill 'CONT', $redis->{pid};

ok(wait_attempted($mb), 'the message to the taken key was attempted');
my $st = state_of($mb);
isnt($st->{status}, 'processed', 'a message whose XADD failed is not marked processed');
like($st->{error}, qr/WRONGTYPE/, 'its failed attempt has its own reply');

########################################################################
# 2. An interrupted handshake.

# New credentials (both valid): the worker drops its connection, and
# connects again for the next batch.
my $offset = OutboxTest::log_position($node);
OutboxTest::set_conf(
	$node,
	'outbox.redis_username' => 'default',
	'outbox.redis_password' => $redis->admin_password);
ok(OutboxTest::wait_for_log_line($node, qr/outbox redis publisher: reconnecting with the new settings/, $offset),
	'the worker dropped its connection');
kill 'STOP', $redis->{pid};
my $mc = save('good', { n => 3 });
ok(wait_publishing(), 'the worker waits for Redis\'s answer to its handshake');
cancel_worker();
my $md = save('good', { n => 4 });
kill 'CONT', $redis->{pid};

ok(wait_attempted($md), 'the message after the interrupted handshake was attempted');
$st = state_of($md);
is($st->{status}, 'processed', 'it is processed');
is($st->{retries}, '0', 'at the first attempt');
is($st->{error}, '', 'with no error');
is(OutboxTest::log_count($node, qr/outbox redis publisher: reconnecting, the last conversation with Redis was interrupted/),
	2, 'each interrupted conversation\'s connection was dropped, and the reason logged');

########################################################################
# What the streams hold.

$redis->command('DEL', 'bad');
ok(OutboxTest::wait_all_processed($node, 'postgres'), 'every message processed in the end');

my %entries;
for my $topic ('good', 'bad')
{
	push @{ $entries{ $_->{fields}{id} } }, { %{ $_->{fields} }, stream => $topic }
	  for $redis->xrange($topic);
}
my @problems;
for my $id (sort keys %saved)
{
	my $want = $saved{$id};
	my $got = $entries{$id} // [];
	if (@$got != 1)
	{
		push @problems, "$id: " . scalar(@$got) . ' entries';
		next;
	}
	my $e = $got->[0];
	push @problems, "$id: stream $e->{stream}" unless $e->{stream} eq $want->{topic};
	push @problems, "$id: payload $e->{payload}"
	  unless $json->encode(eval { $json->decode($e->{payload}) } // {}) eq $json->encode($want->{payload});
}
is(scalar(keys %entries), scalar(keys %saved), 'the streams hold only the messages saved');
is_deeply(\@problems, [], 'every message is in its stream once, as saved');

$node->stop;
done_testing();
