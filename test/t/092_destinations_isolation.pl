
# 092_destinations_isolation.pl -- one destination's outage never stops or
# stalls another (functional; the throughput ratio is measured in bench/).
#
# Four consumers of the same topic: "slow", an http destination whose
# endpoint hangs each request past the destination's timeout (2 s); "fast",
# a notify destination; "healthy", an http destination whose endpoint
# answers at once; and the default destination for another topic.  While
# the slow endpoint holds requests open (and then times them out, again
# and again), the others deliver everything saved meanwhile, and the slow
# destination has delivered nothing.  Once its endpoint answers again, it
# catches up, in per-key order.

use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxDestinations;
use OutboxHttp;
use OutboxTest;

my $hanging = OutboxHttp->start;
my $healthy = OutboxHttp->start;

my $node = OutboxTest::new_node(
	'dest_isolation', conf => q{
outbox.poll_interval = '100ms'
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '300ms'
outbox.max_retries = 1000
log_statement = 'none'
});

sub sql { return $node->safe_psql('postgres', $_[0]) }

# The hanging endpoint holds every request for 30 s: each attempt ends by
# the destination's 2 s timeout.
$hanging->plan('*', { status => 200, delay_ms => 30_000 });
my $url_slow = $hanging->url('/slow/{topic}');
my $url_healthy = $healthy->url('/ok/{topic}');
sql(qq{
SELECT outbox.create_destination('slow', 'http', '{"url": "$url_slow", "timeout": "2s", "max_concurrency": 4}');
SELECT outbox.create_destination('healthy', 'http', '{"url": "$url_healthy"}');
SELECT outbox.create_destination('fast', 'notify', '{"channel": "fast"}');
SELECT outbox.subscribe('slow', 'iso.>');
SELECT outbox.subscribe('healthy', 'iso.>');
SELECT outbox.subscribe('fast', 'iso.>');
});
ok(OutboxDestinations::wait_worker($node, $_), "destination $_ has a worker") for qw(slow healthy fast);
my $fast = OutboxTest::Listener->new($node, 'postgres', 'fast', 'plain');

my $n = 0;
sub save_batch
{
	my ($count) = @_;
	my @ids;
	for (1 .. $count)
	{
		$n++;
		my $k = 'k' . ($n % 5);
		push @ids, sql(qq{SELECT outbox.save('iso.event', '{"seq": $n, "key": "$k"}'::jsonb, '$k')});
	}
	return @ids;
}

my @first = save_batch(20);
ok($hanging->wait_inflight(1, 30), 'the slow destination has requests hanging at its endpoint');
my $t_hang = time();

# Meanwhile: more messages, and unrouted ones for the default destination.
my @second = save_batch(30);
my @plain = map { sql(qq{SELECT outbox.save('plain', '{"n": $_}'::jsonb)}) } 1 .. 5;

ok($fast->wait_for(30, sub { scalar(grep { $_->{channel} eq 'fast' } @{ $_[0] }) >= 50 }),
	'the notify destination delivers all 50 while the slow one hangs');
ok($healthy->wait_requests(30, sub { scalar(grep { $_->{status} == 200 } @_) >= 50 }),
	'so does the other http destination');
ok($fast->wait_for(30, sub { scalar(grep { $_->{channel} eq 'plain' } @{ $_[0] }) >= 5 }),
	'and the default destination its own messages');
my $t_done = time();
my @slow_ok = grep { $_->{status} == 200 && defined $_->{end} } $hanging->requests;
is(scalar @slow_ok, 0, 'meanwhile the slow destination delivered nothing');
cmp_ok($hanging->stats->{inflight}, '>=', 1, 'and still has requests hanging');
note(sprintf('the others drained in %.2f s while the slow one hung', $t_done - $t_hang));

my $all = join(',', map { "'$_'" } @first, @second);
is( sql(qq{SELECT destination || ':' || status || ':' || count(*) FROM outbox.deliveries
          WHERE message_id IN ($all) AND destination <> 'slow' GROUP BY destination, status ORDER BY 1}),
	"fast:processed:50\nhealthy:processed:50", 'their deliveries are processed');
is( sql(qq{SELECT count(*) FROM outbox.deliveries WHERE message_id IN ($all) AND destination = 'slow' AND status = 'processed'}),
	'0', 'the slow one\'s are not');
is(sql(qq{SELECT count(*) FROM outbox.messages WHERE id IN ($all) AND status = 'pending'}), '50',
	'so the messages themselves stay pending');

# Its failures are its own: a timeout as last_error, state failing.
ok( OutboxTest::poll_until($node, 'postgres',
		q{SELECT state FROM outbox.destinations WHERE name = 'slow'}, 'failing', 30),
	'the slow destination is failing');
like(OutboxDestinations::state($node, 'slow')->{last_error}, qr/timed out/i, 'with the timeout as its last error');
is( sql(q{SELECT string_agg(state, ',' ORDER BY name) FROM outbox.destinations WHERE name IN ('fast', 'healthy')}),
	'ok,ok', 'the others are ok');

# The endpoint recovers: the slow destination catches up, in per-key order.
$hanging->plan('*', { status => 200 });
ok( OutboxTest::poll_until($node, 'postgres',
		qq{SELECT count(*) FROM outbox.messages WHERE id IN ($all) AND status <> 'processed'}, '0', 60),
	'once its endpoint answers, the slow destination catches up and every message is processed');
# Delivered means answered 2xx before the destination's 2 s timeout: the
# endpoint also answers, 30 s late, the requests the worker abandoned.
my (%last, @disorder, %seen);
for my $r (sort { $a->{start} <=> $b->{start} } $hanging->answered(1))
{
	next if $seen{ $r->{id} }++;
	my $b = decode_json($r->{body});
	push @disorder, "$b->{key}: $b->{seq} after $last{$b->{key}}" if defined $last{ $b->{key} } && $b->{seq} <= $last{ $b->{key} };
	$last{ $b->{key} } = $b->{seq};
}
is(scalar keys %seen, 50, 'the slow endpoint got all 50 (answered within the timeout)');
is(scalar @disorder, 0, 'in per-key order') or diag("@disorder");
ok(OutboxTest::poll_until($node, 'postgres', q{SELECT state FROM outbox.destinations WHERE name = 'slow'}, 'ok'),
	'and is ok again');

$fast->quit;
$node->stop;
$hanging->stop;
$healthy->stop;
done_testing();
