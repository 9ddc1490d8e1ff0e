
# 068_worker_inflight.pl -- the relay worker's batch in flight.
#
# With a publisher that is not transactional (here http), the worker claims
# a batch by locking its rows in a short transaction and records the batch's
# id range in its shared-memory slot before that transaction commits; it
# writes nothing to the rows until it marks them.  While the batch is
# published:
#  - its messages are still pending, with no claim stored;
#  - outbox.fetch_pending never hands one of them out, nor, under per-key
#    ordering, a later message of their keys; it still claims other keys'
#    messages saved after the batch;
#  - each message is requested once, and a key's later message only after
#    its predecessor.
# A worker killed (SIGKILL) in the middle of a batch leaves nothing
# processing: after the crash-restart the messages are pending and delivered
# again at once, not after outbox.processing_timeout.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxHttp;
use OutboxTest;

my $srv = OutboxHttp->start;
my $url = $srv->url('/hook/{topic}');

my $node = OutboxTest::new_node('worker_inflight', conf => qq{
outbox.publisher = 'http'
outbox.http_url = '$url'
outbox.http_timeout = '30s'
outbox.poll_interval = '100ms'
outbox.ordering = 'key'
});

sub q1 { return $node->safe_psql('postgres', $_[0]) }

sub save
{
	my ($topic, $name, $key) = @_;
	$key = defined $key ? "'$key'" : 'NULL';
	return q1("SELECT outbox.save('$topic', '$name'::text, $key)");
}

# The names (payloads) fetch_pending hands out now, as an external relay.
sub fetched
{
	return q1(q{SELECT coalesce(string_agg(convert_from(payload, 'UTF8'), ',' ORDER BY id), '')
	            FROM outbox.fetch_pending(100)});
}

########################################################################
# 1. A batch in flight, against an external relay.

# Every request of topic "slow" takes 5 s until told otherwise.
$srv->plan('slow', { status => 200, delay_ms => 5000 });
OutboxTest::wait_worker_sleeping($node, 'postgres', $OutboxTest::TIMEOUT)
  or die('the worker does not sleep');

# Saved in one transaction, so that they come in one batch.
my %id;
@id{qw(k1 k2 x1 n1)} = split /\|/, q1(q{SELECT outbox.save('slow', 'k1'::text, 'k'),
	outbox.save('slow', 'k2'::text, 'k'), outbox.save('slow', 'x1'::text, 'x'),
	outbox.save('slow', 'n1'::text)});
ok($srv->wait_inflight(3, $OutboxTest::TIMEOUT),
	'the worker publishes k1, x1 and n1 (one message per key in a wave)');

is( q1(q{SELECT string_agg(status || '/' || coalesce(claimed_by::text, '-'), ',' ORDER BY id)
	      FROM outbox.messages WHERE topic = 'slow'}),
	'pending/-,pending/-,pending/-,pending/-',
	'the batch in flight is still pending, with no claim stored');
is(fetched(), '', 'fetch_pending hands out none of the batch in flight, k2 included');

# Saved after the batch was claimed: y1 of another key is free, k3 waits
# behind k1 and k2.
$id{k3} = save('slow', 'k3', 'k');
$id{y1} = save('other', 'y1', 'y');
is(fetched(), 'y1', 'fetch_pending claims y1 of another key, not k3 of the key in flight');
is(q1("SELECT outbox.mark_processed('$id{y1}')"), '1', 'the external relay marks y1 processed');

$srv->plan('slow', { status => 200 });
ok(OutboxTest::wait_all_processed($node, 'postgres', $OutboxTest::TIMEOUT),
	'the worker publishes the batch and then k3');
my @requests = $srv->requests(topic => 'slow');
is(join(',', sort map { $_->{body} } @requests), 'k1,k2,k3,n1,x1',
	'each message of the batch is requested once, and k3 once');
my @k = map { $_->{body} } grep { $_->{body} =~ /^k/ } @requests;
is(join(',', @k), 'k1,k2,k3', 'the messages of k are requested in order');
is(q1(q{SELECT count(*) FROM outbox.messages WHERE retries > 0}), '0', 'no attempt failed');

########################################################################
# 2. The worker killed in the middle of a batch.

$srv->reset;
$srv->plan('slow', { status => 200, delay_ms => 10_000 });
q1(q{SELECT outbox.save('slow', 'm' || i, 'key' || i) FROM generate_series(1, 3) i});
ok($srv->wait_inflight(3, $OutboxTest::TIMEOUT), 'the worker publishes three messages');
my $pid = OutboxTest::worker_pid($node, 'postgres') or die('no worker');
my $offset = OutboxTest::log_position($node);
kill('KILL', $pid) or die("could not signal worker $pid");
OutboxTest::wait_for_log_line($node, qr/all server processes terminated; reinitializing/, $offset)
  or die('no crash-restart after killing the worker');
my $t0 = time();
$srv->plan('slow', { status => 200 });
OutboxTest::wait_for_worker($node, 'postgres', not_pid => $pid) or die('no new worker');
is(q1(q{SELECT count(*) FROM outbox.messages WHERE status = 'processing'}), '0',
	'after the crash nothing is left processing');
ok(OutboxTest::wait_all_processed($node, 'postgres', $OutboxTest::TIMEOUT),
	'the three are delivered again');
my $took = time() - $t0;
cmp_ok($took, '<', 30, sprintf('at once, not after processing_timeout (%.1f s)', $took));
my %got;
$got{ $_->{body} }++ for grep { $_->{start} >= $t0 - 1 } $srv->requests(topic => 'slow');
is(join(',', sort keys %got), 'm1,m2,m3', 'each was requested again after the crash');

$node->stop;
$srv->stop;
done_testing();
