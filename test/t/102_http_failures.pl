# 102_http_failures.pl -- the http publisher when the receiver misbehaves.
#
#  - 500 then 200: a failed attempt ("HTTP 500: <body>"), retried after the
#    backoff, then processed;
#  - Retry-After on 503 (seconds) and 429 (HTTP-date) sets the next attempt;
#  - a request slower than outbox.http_timeout fails its attempt while the
#    other messages go on;
#  - with the server down messages stay pending (failed attempts), and are
#    delivered once it is back;
#  - per-key order holds across retries;
#  - with random failures no message is lost, delivered twice or marked
#    processed without a 2xx;
#  - the worker answers SIGHUP, SIGTERM and postmaster death while a
#    request hangs.

use strict;
use warnings;

use POSIX qw(strftime);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxHttp;
use OutboxTest;

my $srv = OutboxHttp->start;
my $url = $srv->url('/hook/{topic}');

my $node = OutboxTest::new_node('http_failures', conf => qq{
outbox.publisher = 'http'
outbox.http_url = '$url'
outbox.poll_interval = '100ms'
outbox.retry_backoff = '1s'
outbox.max_retries = 1000
});

sub save
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', "SELECT $sql");
}

########################################################################
# 500, then 200, with the backoff respected.

$srv->plan('flaky', { status => 500, body => 'boom' }, { status => 200 });
my $flaky_id = save(q{outbox.save('flaky', '{"x": 1}'::jsonb)});
ok(OutboxTest::wait_processed($node, $flaky_id), '500 then 200: processed');
my @r = $srv->requests(id => $flaky_id);
is(scalar @r, 2, 'two attempts');
is_deeply([ map { $_->{status} } @r ], [ 500, 200 ], 'the first answered 500, the second 200');
my $gap = @r == 2 ? $r[1]{start} - $r[0]{end} : 0;
cmp_ok($gap, '>=', 0.45, sprintf('retried after the backoff (1 s with jitter; waited %.2f s)', $gap));
my $m = OutboxTest::message_state($node, $flaky_id);
is($m->{retries}, 1, 'one failed attempt recorded');
is($m->{error}, 'HTTP 500: boom', 'last_error has the status and the body');

########################################################################
# Retry-After on 503 and 429.

OutboxTest::set_conf($node, 'outbox.retry_backoff' => '100ms', 'outbox.retry_backoff_max' => '500ms');
$srv->plan('busy', { status => 503, body => 'later', headers => { 'Retry-After' => '2' } },
	{ status => 200 });
$srv->plan('limited',
	{ status => 429, headers => { 'Retry-After' => strftime('%a, %d %b %Y %H:%M:%S GMT', gmtime(time() + 3)) } },
	{ status => 200 });
my $busy_id = save(q{outbox.save('busy', '1'::text)});
my $limited_id = save(q{outbox.save('limited', '2'::text)});
ok(OutboxTest::wait_processed($node, $busy_id, $limited_id), 'Retry-After messages processed');
@r = $srv->requests(id => $busy_id);
$gap = @r == 2 ? $r[1]{start} - $r[0]{end} : 0;
cmp_ok($gap, '>=', 1.8, sprintf('503 with Retry-After: 2 waited 2 s, not the 100 ms backoff (%.2f s)', $gap));
is(OutboxTest::message_state($node, $busy_id)->{error}, 'HTTP 503: later', 'last_error of the 503');
@r = $srv->requests(id => $limited_id);
$gap = @r == 2 ? $r[1]{start} - $r[0]{end} : 0;
cmp_ok($gap, '>=', 1.0, sprintf('429 with an HTTP-date Retry-After waited until then (%.2f s)', $gap));
is(OutboxTest::message_state($node, $limited_id)->{error}, 'HTTP 429', 'last_error of the 429 without a body');

########################################################################
# A request slower than http_timeout fails; the others go on.

OutboxTest::set_conf($node, 'outbox.http_timeout' => '500ms');
$srv->plan('slow', { status => 200, delay_ms => 3000 }, { status => 200 });
my $slow_id = save(q{outbox.save('slow', '1'::text)});
my @fast_ids = map { save(qq{outbox.save('fast', '$_'::text)}) } 1 .. 5;
ok(OutboxTest::wait_processed($node, @fast_ids), 'fast messages processed');
ok(OutboxTest::wait_processed($node, $slow_id), 'the slow message processed on its second attempt');
$m = OutboxTest::message_state($node, $slow_id);
is($m->{retries}, 1, 'the timed-out attempt counted as failed');
like($m->{error}, qr/timed out/i, "last_error is curl's timeout text ($m->{error})");
is( $node->safe_psql('postgres',
		"SELECT processed_at - created_at < interval '2.5 s' FROM outbox.messages WHERE id = '$slow_id'"),
	't', 'the worker gave up after http_timeout, not after the 3 s answer');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.messages WHERE topic = 'fast' AND retries = 0"),
	'5', 'the fast messages were not held up by it');
OutboxTest::set_conf($node, 'outbox.http_timeout' => '5s');

########################################################################
# Server down: messages stay pending; delivered when it returns.

$srv->stop;
my @down_ids = map { save(qq{outbox.save('down', '$_'::text, 'down-key-$_')}) } 1 .. 5;
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE topic = 'down' AND status = 'pending' AND retries >= 2",
		'5'),
	'with the server down, attempts fail and messages stay pending');
like(OutboxTest::message_state($node, $down_ids[0])->{error}, qr/connect/i, 'last_error says the connection failed');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.messages WHERE topic = 'down' AND status <> 'pending'"),
	'0', 'none processed or failed meanwhile');
$srv->restart;
ok(OutboxTest::wait_processed($node, @down_ids), 'delivered once the server is back');
is(scalar(@{ [ $srv->requests(topic => 'down') ] }), 5, 'each exactly once');

########################################################################
# Per-key order across retries.

$srv->reset;
$srv->plan('ordered', { status => 500 }, { status => 500 }, { status => 200 });
my @order_a = map { save(qq{outbox.save('ordered', '"a$_"'::jsonb, 'acct-a')}) } 1 .. 3;
my @order_b = map { save(qq{outbox.save('ordered', '"b$_"'::jsonb, 'acct-b')}) } 1 .. 2;
ok(OutboxTest::wait_processed($node, @order_a, @order_b), 'ordered messages processed');
for my $ids (\@order_a, \@order_b)
{
	my $in_order = 1;
	for my $i (1 .. $#$ids)
	{
		my ($ok) = grep { $_->{status} == 200 } $srv->requests(id => $ids->[ $i - 1 ]);
		my @next = $srv->requests(id => $ids->[$i]);
		$in_order = 0
		  unless $ok && @next && !grep { $_->{start} < $ok->{end} } @next;
	}
	ok($in_order, 'no attempt of a message before its predecessor of the same key got its 2xx');
}
is(scalar(@{ [ $srv->requests(topic => 'ordered') ] }), 15, 'three attempts per message');

########################################################################
# Random failures: nothing lost, nothing processed without a 2xx.

$srv->reset;
$srv->plan_random_failures('chaos', 0.3);
$node->safe_psql('postgres',
	"SELECT outbox.save('chaos', jsonb_build_object('n', i), 'chaos-' || (i % 10)) FROM generate_series(1, 200) i");
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE topic = 'chaos' AND status = 'processed'", '200'),
	'all 200 messages processed despite 30% failures');
my %ok_count;
my @chaos = $srv->requests(topic => 'chaos');
$ok_count{ $_->{id} }++ for grep { $_->{status} == 200 } @chaos;
cmp_ok(scalar(grep { $_->{status} == 500 } @chaos), '>', 0, 'some attempts did fail');
my $ids = $node->safe_psql('postgres',
	"SELECT string_agg(id::text, ',' ORDER BY id) FROM outbox.messages WHERE topic = 'chaos'");
my @chaos_ids = split /,/, $ids;
is(scalar(grep { ($ok_count{$_} // 0) == 1 } @chaos_ids), 200,
	'every processed message got exactly one 2xx');
is( $node->safe_psql('postgres',
		"SELECT sum(retries) FROM outbox.messages WHERE topic = 'chaos'"),
	scalar(grep { $_->{status} == 500 } @chaos), 'each failed attempt counted once');
my %last;
my $key_order = 1;
for my $r (grep { $_->{status} == 200 } @chaos)
{
	$key_order = 0 if defined $last{ $r->{key} } && $last{ $r->{key} } gt $r->{id};
	$last{ $r->{key} } = $r->{id};
}
ok($key_order, '2xx deliveries of each key in id order');

########################################################################
# SIGHUP and SIGTERM while a request hangs.

OutboxTest::set_conf($node, 'outbox.http_timeout' => '1min');
$srv->reset;
$srv->plan('hang', { status => 200, delay_ms => 20000 }, { status => 200 });
my $hang_id = save(q{outbox.save('hang', '1'::text)});
ok($srv->wait_inflight(1, 30), 'the hanging request is in flight');
my $pid = OutboxTest::worker_pid($node, 'postgres');
# The reload must show in the worker while it still publishes the batch of
# the hanging request (which cannot end for 20 s): only then is the request
# looked at.
my ($applied, $same_batch) = OutboxTest::reload_applied($node, mid_batch => 1);
ok($applied && $same_batch, 'the worker read the reload in the middle of the batch of the hanging request');
my $other_id = save(q{outbox.save('after-reload', '1'::text)});
is($srv->stats->{inflight}, 1, 'after SIGHUP the request is still in flight');
is(OutboxTest::worker_pid($node, 'postgres'), $pid, 'and the worker still runs');

# "Promptly" without a clock: the worker is gone while the receiver still
# holds its request, which it answers only after 20 s.
my $t0 = time();
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE pid = $pid", '0', 15),
	'SIGTERM ends the worker while the request hangs');
# (the receiver records a request once it answered it)
is(scalar(grep { $_->{attempt} == 0 } $srv->requests(id => $hang_id)), 0,
	sprintf('promptly: before the receiver answered (%.2f s, the answer takes 20 s)', time() - $t0));
ok(OutboxTest::wait_for_worker($node, 'postgres', not_pid => $pid), 'a new worker starts');
ok(OutboxTest::wait_processed($node, $hang_id, $other_id), 'the interrupted message is delivered again, and the next one');

# Postmaster death: the worker notices it while its request hangs.
$srv->reset;
$srv->plan('hang', { status => 200, delay_ms => 20000 });
my $hang2_id = save(q{outbox.save('hang', '2'::text)});
ok($srv->wait_inflight(1, 30), 'another hanging request is in flight');
$pid = OutboxTest::worker_pid($node, 'postgres');
$t0 = time();
$node->kill9;
# Exited: gone, or a zombie waiting for init to reap it.
sub exited
{
	my ($pid) = @_;
	return 1 unless kill(0, $pid);
	open(my $fh, '<', "/proc/$pid/stat") or return 1;
	my $stat = <$fh> // '';
	close($fh);
	return $stat =~ /^\d+ \(.*\) [ZX] /;
}
ok(OutboxTest::wait_until(15, sub { exited($pid) }), 'the worker exits after the postmaster died');
is(scalar(grep { 1 } $srv->requests(id => $hang2_id)), 0,
	sprintf('promptly: before the receiver answered (%.2f s, the answer takes 20 s)', time() - $t0));

$srv->stop;
done_testing();
