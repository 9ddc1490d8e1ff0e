# 141_redis_faults.pl -- the redis publisher under faults, checked end to
# end with OutboxChecker (savers committing and rolling back concurrently,
# so that many messages arrive late; a ledger of what was committed)
# against a Redis stream (AOF on, appendfsync always):
#
#  - kill -9 of the worker while a backlog is in flight: every committed
#    message is in the stream exactly once, in key order; the messages
#    published again were recognised as already there;
#  - a graceful Redis restart mid-run: while it is down messages stay
#    pending (the problem is logged once, the worker does not spin, none
#    fails); after it, nothing is lost and nothing is doubled;
#  - kill -9 of Redis mid-run: what it answered was in the AOF, so nothing
#    is lost either.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxChecker;
use OutboxRedis;
use OutboxTest;

OutboxRedis::require_redis();

my $redis = OutboxRedis->start('r', appendfsync => 'always');
my $url = $redis->url;
my ($user, $password) = ($redis->user, $redis->password);
my $node = OutboxTest::new_node('redis_faults', conf => qq{
shared_preload_libraries = 'outbox, outbox_redis'
outbox.publisher = 'redis'
outbox.redis_url = '$url'
outbox.redis_username = '$user'
outbox.redis_password = '$password'
outbox.redis_timeout = '3s'
outbox.poll_interval = '100ms'
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '500ms'
outbox.max_retries = 1000
log_statement = 'none'
});

my $checker = OutboxChecker->new($node, topic => 'chk');
$checker->install;
my $source = $redis->source('chk');

sub processed
{
	return OutboxTest::query_value($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE topic = 'chk' AND status = 'processed'");
}

########################################################################
# 1. kill -9 of the worker with a backlog in flight.

my $burst = 30000;
OutboxTest::set_conf($node, 'outbox.enabled' => 'off', 'outbox.batch_size' => '2000');
$checker->save_burst($burst);
ok($checker->start_savers(clients => 4, rate => 100), 'savers started');
my $offset = OutboxTest::log_position($node);
OutboxTest::set_conf($node, 'outbox.enabled' => 'on');

my $kills = 0;
# Kill while the worker is publishing (its activity says so, in the same
# snapshot as the count of processed messages) and messages are in the
# stream but not yet marked processed.  The kill can still come just after
# the batch was marked (the counts are a few milliseconds old by then), and
# then it makes no duplicate: try again, up to eight times, with enough
# messages left for each try, until the new worker reports messages that
# were already in their stream.
for my $attempt (1 .. 8)
{
	my $pid = OutboxTest::worker_pid($node, 'postgres') or last;
	my $caught = OutboxTest::wait_until(
		30,
		sub {
			my ($done, $publishing) = OutboxTest::publishing_progress($node, $pid, 'chk');
			return 0 unless defined $done;
			my $stored = $redis->xlen('chk');
			return $publishing && defined $stored && $stored - $done >= 50 && $done < $burst - 5000;
		});
	last unless $caught;
	kill 'KILL', $pid;
	$kills++;
	OutboxTest::wait_for_worker($node, 'postgres', not_pid => $pid) or last;
	last if OutboxTest::wait_for_log_line($node, qr/were already in their stream/, $offset, 20);
}
ok($kills > 0, "worker killed $kills time(s) with messages in flight");
$checker->stop_savers;
ok($checker->wait_drained(120), 'everything published after the kills');
my $report = $checker->check('after kill -9 of the worker', sources => [$source]);
ok(OutboxTest::log_count($node, qr/outbox redis publisher: \d+ of \d+ messages were already in their stream/, $offset) > 0,
	'messages published before a kill were published again and recognised');
OutboxTest::set_conf($node, 'outbox.batch_size' => '100');

########################################################################
# 2. A graceful Redis restart mid-run.

ok($checker->start_savers(clients => 4, rate => 100), 'savers started again');
ok(OutboxTest::wait_until(30, sub { (processed() // 0) > $report->{committed} + 200 }),
	'publishing goes on');
$offset = OutboxTest::log_position($node);
$redis->stop;
ok( OutboxTest::wait_for_log_line($node,
		qr/outbox redis publisher: (the connection to Redis was lost|could not connect)/, $offset),
	'the lost connection is reported');
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) > 20 FROM outbox.messages WHERE topic = 'chk' AND status = 'pending'", 't'),
	'messages stay pending while Redis is down');
my $wpid = OutboxTest::worker_pid($node, 'postgres');
my $cpu = sub {
	open(my $fh, '<', "/proc/$wpid/stat") or return 0;
	my @f = split ' ', scalar <$fh>;
	return $f[13] + $f[14];
};
my ($cpu0, $t0) = ($cpu->(), time());
sleep 2;    # measuring a rate, not synchronizing
my $ticks = $cpu->() - $cpu0;
my $elapsed = time() - $t0;
ok($ticks < 0.25 * $elapsed * 100, "the worker does not spin while disconnected ($ticks ticks in ${elapsed}s)");
is(OutboxTest::log_count($node, qr/WARNING:  outbox redis publisher: could not connect/, $offset), 1,
	'the connection problem is logged once');
is( OutboxTest::query_value($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE status = 'failed'"),
	'0', 'none failed');
$redis->start_again;
ok( OutboxTest::wait_for_log_line($node, qr/outbox redis publisher: publishing again/, $offset),
	'publishing again after the restart');
$checker->stop_savers;
ok($checker->wait_drained(60), 'everything published after the restart');
$report = $checker->check('after a Redis restart', sources => [$source]);

########################################################################
# 3. kill -9 of Redis mid-run.

ok($checker->start_savers(clients => 4, rate => 100), 'savers started once more');
ok(OutboxTest::wait_until(30, sub { (processed() // 0) > $report->{committed} + 200 }),
	'publishing goes on');
$redis->stop('KILL');
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) > 20 FROM outbox.messages WHERE topic = 'chk' AND status = 'pending'", 't'),
	'messages stay pending while Redis is gone');
$redis->start_again;
$checker->stop_savers;
ok($checker->wait_drained(60), 'everything published after the crash');
$checker->check('after kill -9 of Redis', sources => [$source]);
is( OutboxTest::query_value($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE status = 'failed'"),
	'0', 'no message failed');
my $late = $redis->command('ZCARD', 'chk:outbox-late');
note("late entries remembered: $late");

$node->stop;
done_testing();
