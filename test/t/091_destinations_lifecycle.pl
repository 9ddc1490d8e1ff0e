
# 091_destinations_lifecycle.pl -- pause and resume, disabling (HTTP 410
# and outbox.destination_disable_after), alter_destination applied by the
# running worker, and drop, with real webhook receivers.
#
#  - pause: the destination's worker exits, its deliveries stay pending
#    (another destination of the same topic delivers meanwhile: time passed
#    and workers ran), nothing reaches its receiver; resume: a worker
#    again, and every waiting message arrives once, in per-key order;
#  - a 410 answer disables the destination (state disabled, the answer as
#    the reason, no worker, a warning in the log); messages wait; resume
#    re-enables it and delivers them, the 410'd one included;
#  - every attempt failing for longer than outbox.destination_disable_after:
#    state failing with the last error, then disabled with that reason;
#  - alter_destination to another URL: the running worker (same pid)
#    delivers the next message there within a second;
#  - drop_destination: the worker exits.

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

my $srv_a = OutboxHttp->start;
my $srv_b = OutboxHttp->start;

my $node = OutboxTest::new_node(
	'dest_lifecycle', conf => q{
outbox.poll_interval = '100ms'
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '300ms'
outbox.max_retries = 1000
});

sub sql { return $node->safe_psql('postgres', $_[0]) }

my $url_a = $srv_a->url('/a/{topic}');
sql(qq{
SELECT outbox.create_destination('hook', 'http', '{"url": "$url_a"}');
SELECT outbox.create_destination('control', 'notify', '{"channel": "control"}');
SELECT outbox.subscribe('hook', 'p.*');
SELECT outbox.subscribe('hook', 'gone.*');
SELECT outbox.subscribe('control', 'p.*');
});
my $hook_pid = OutboxDestinations::wait_worker($node, 'hook');
ok($hook_pid, 'the http destination has a worker');
ok(OutboxDestinations::wait_worker($node, 'control'), 'so does the notify destination');
my $control = OutboxTest::Listener->new($node, 'postgres', 'control');

my $seq = 0;
# Save $n messages of topic $topic over keys k1..k4 (seq increasing); ids.
sub save_some
{
	my ($topic, $n) = @_;
	my @ids;
	for (1 .. $n)
	{
		$seq++;
		my $k = 'k' . (1 + $seq % 4);
		push @ids, sql(qq{SELECT outbox.save('$topic', '{"seq": $seq, "key": "$k"}'::jsonb, '$k')});
	}
	return @ids;
}

sub count_requests
{
	my ($srv, %filter) = @_;
	my @r = $srv->requests(%filter);
	return scalar @r;
}

sub wait_received
{
	my ($srv, $n, $timeout, %filter) = @_;
	my $ok = $srv->wait_requests($timeout // 30, sub { scalar(grep { $_->{status} == 200 } @_) >= $n }, %filter);
	diag(sprintf('expected %d answered requests, have %d', $n, scalar(grep { $_->{status} == 200 } $srv->requests(%filter))))
	  unless $ok;
	return $ok;
}

########################################################################
# 1. Pause and resume.

my @first = save_some('p.x', 3);
ok(wait_received($srv_a, 3), 'before the pause, messages arrive');

sql(q{SELECT outbox.pause_destination('hook')});
ok(OutboxDestinations::wait_no_worker($node, 'hook'), 'paused: its worker exits');
is(OutboxDestinations::state($node, 'hook')->{state}, 'paused', 'state paused');

my @waiting = save_some('p.x', 20);
# The control destination delivers the same messages meanwhile.
ok($control->wait_count(23, 30), 'another destination of the same topic delivers them meanwhile');
my %pids = OutboxDestinations::worker_pids($node);
ok(!defined $pids{hook}, 'the paused destination still has no worker');
is(count_requests($srv_a), 3, 'nothing more reached its receiver');
my $list = join(',', map { "'$_'" } @waiting);
is( sql(qq{SELECT status, count(*) FROM outbox.deliveries WHERE destination = 'hook' AND message_id IN ($list) GROUP BY 1}),
	'pending|20', 'its 20 deliveries are pending');
is( sql(qq{SELECT count(*) FROM outbox.messages WHERE id IN ($list) AND status = 'pending'}),
	'20', 'and so are the messages (not every destination has them)');

sql(q{SELECT outbox.resume_destination('hook')});
$hook_pid = OutboxDestinations::wait_worker($node, 'hook');
ok($hook_pid, 'resumed: a worker again');
ok(wait_received($srv_a, 23), 'the waiting messages arrive');
my @reqs = grep { $_->{status} == 200 } $srv_a->requests;
is(join(' ', sort map { $_->{id} } @reqs), join(' ', sort(@first, @waiting)), 'every one once');
my (%last, @disorder);
for my $r (@reqs)
{
	my $b = decode_json($r->{body});
	push @disorder, "$b->{key}: $b->{seq} after $last{$b->{key}}" if defined $last{ $b->{key} } && $b->{seq} <= $last{ $b->{key} };
	$last{ $b->{key} } = $b->{seq};
}
is(scalar @disorder, 0, 'each key\'s messages in order across the pause') or diag("@disorder");
ok(OutboxTest::poll_until($node, 'postgres', "SELECT count(*) FROM outbox.messages WHERE id IN ($list) AND status <> 'processed'", '0'),
	'the messages are processed once both destinations delivered them');
is(OutboxDestinations::state($node, 'hook')->{state}, 'ok', 'state ok');

########################################################################
# 2. 410 Gone disables the destination.

$srv_a->plan('gone.x', { status => 410, body => 'this endpoint is gone' });
my $offset = OutboxTest::log_position($node);
my ($gone) = save_some('gone.x', 1);
ok( OutboxTest::poll_until($node, 'postgres', q{SELECT state FROM outbox.destinations WHERE name = 'hook'}, 'disabled'),
	'an HTTP 410 answer disables the destination');
my $st = OutboxDestinations::state($node, 'hook');
is($st->{disabled_reason}, 'HTTP 410: this endpoint is gone', 'with the answer as the reason');
ok(OutboxTest::wait_for_log_line($node, qr/WARNING:  outbox destination "hook" is disabled/, $offset),
	'and a warning in the server log');
ok(OutboxDestinations::wait_no_worker($node, 'hook'), 'a disabled destination has no worker');
is(scalar(grep { $_->{topic} eq 'gone.x' } $srv_a->requests), 1, 'the 410 came from one attempt');
my @while_disabled = save_some('p.x', 5);
ok($control->wait_count(28, 30), 'other destinations go on meanwhile');
is(scalar(grep { $_->{status} == 200 } $srv_a->requests), 23, 'nothing reaches the disabled destination');
is( sql(qq{SELECT status || '/' || retries FROM outbox.deliveries WHERE destination = 'hook' AND message_id = '$gone'}),
	'pending/1', 'the 410\'d delivery waits, pending, after one attempt');

$srv_a->plan('gone.x', { status => 200 });
sql(q{SELECT outbox.resume_destination('hook')});
$st = OutboxDestinations::state($node, 'hook');
is("$st->{state}|$st->{disabled_reason}", 'ok|', 'resume_destination re-enables it: state ok, no reason');
ok(OutboxDestinations::wait_worker($node, 'hook'), 'with a worker');
ok(wait_received($srv_a, 29), 'the 410\'d message and those saved meanwhile arrive');
ok(OutboxTest::wait_processed($node, $gone, @while_disabled), 'and are processed');

########################################################################
# 3. Every attempt failing for longer than outbox.destination_disable_after.

OutboxTest::set_conf($node, 'outbox.destination_disable_after' => '2s');
my $url_b = $srv_b->url('/b/{topic}');
sql(qq{
SELECT outbox.create_destination('flaky', 'http', '{"url": "$url_b"}');
SELECT outbox.subscribe('flaky', 'fail.*');
});
$srv_b->plan('fail.x', { status => 503, body => 'try later' });
my $t0 = time();
my ($failing) = save_some('fail.x', 1);
ok( OutboxTest::poll_until($node, 'postgres', q{SELECT state || '|' || last_error FROM outbox.destinations WHERE name = 'flaky'},
		'failing|HTTP 503: try later'),
	'a destination whose attempts fail: state failing, with the last error');
ok( OutboxTest::poll_until($node, 'postgres', q{SELECT state FROM outbox.destinations WHERE name = 'flaky'}, 'disabled'),
	'after outbox.destination_disable_after of nothing but failures: disabled');
cmp_ok(time() - $t0, '>=', 2, 'not before 2 s');
like(OutboxDestinations::state($node, 'flaky')->{disabled_reason},
	qr/^every attempt failed for more than 2 s \(outbox.destination_disable_after\); the last error: HTTP 503: try later$/,
	'the reason says why, with the last error');
cmp_ok(count_requests($srv_b, topic => 'fail.x'), '>', 2, 'after several attempts');
$srv_b->plan('fail.x', { status => 200 });
sql(q{SELECT outbox.resume_destination('flaky')});
ok(OutboxTest::wait_processed($node, $failing), 'resumed with the receiver fixed: delivered');
is(OutboxDestinations::state($node, 'flaky')->{state}, 'ok', 'state ok');
OutboxTest::set_conf($node, 'outbox.destination_disable_after' => '0');

########################################################################
# 4. alter_destination, applied by the running worker.

$hook_pid = OutboxDestinations::wait_worker($node, 'hook');
$srv_b->reset;
my $moved = $srv_b->url('/moved/{topic}');
my $t_alter = time();
sql(qq{SELECT outbox.alter_destination('hook', '{"url": "$moved"}')});
my ($after_alter) = save_some('p.x', 1);
# The condition, not a clock: the first message saved after the change (the
# worker's next batch) goes to the new URL, and never to the old one; a
# loaded machine may take longer, so the wait is generous.
ok($srv_b->wait_requests(60, sub { grep { $_->{id} eq $after_alter } @_ }), 'after alter_destination, the next message goes to the new URL');
my ($r) = $srv_b->requests(id => $after_alter);
is($r ? $r->{path} : '', '/moved/p.x', 'the new URL, with {topic} replaced');
note(sprintf('delivered %.3f s after the change', $r ? $r->{end} - $t_alter : -1));
is(count_requests($srv_a, id => $after_alter), 0, 'not to the old one');
my %now = OutboxDestinations::worker_pids($node);
is($now{hook} // 0, $hook_pid, 'by the same worker: no restart');

########################################################################
# 5. drop_destination.

ok(OutboxTest::wait_all_processed($node, 'postgres'), 'everything delivered');
sql(q{SELECT outbox.drop_destination('hook')});
ok(OutboxDestinations::wait_no_worker($node, 'hook'), 'a dropped destination\'s worker exits');
my ($after_drop) = save_some('p.x', 1);
ok($control->wait_for(30, sub { grep { ($_->{envelope}{id} // '') eq $after_drop } @{ $_[0] } }),
	'its topics still reach the other destination');
is(sql(qq{SELECT array_length(destinations, 1) FROM outbox.messages WHERE id = '$after_drop'}), '1',
	'and only it');

$control->quit;
$node->stop;
$srv_a->stop;
$srv_b->stop;
done_testing();
