# 131_amqp_faults.pl -- the amqp publisher under faults, checked end to end
# with OutboxChecker (savers committing and rolling back concurrently, a
# ledger of what was committed) against a durable RabbitMQ queue:
#
#  - kill -9 of the worker while a backlog is in flight: every committed
#    message is in the queue at least once, exactly once after the consumer
#    dedupes on message-id, in key order; messages confirmed but not yet
#    marked were published again (the queue holds extra copies);
#  - a graceful broker restart mid-run: while it is down messages stay
#    pending (the problem is logged once, the worker does not spin, none
#    fails); after it, nothing is lost;
#  - kill -9 of the broker's VM mid-run: what it confirmed was on disk, so
#    nothing is lost either.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxAmqp;
use OutboxChecker;
use OutboxTest;

OutboxAmqp::require_amqp();

my $mq = OutboxAmqp->start('mq');
$mq->tool('declare-queue', 'chk');
$mq->tool('bind', 'chk', 'amq.topic', 'chk');

my $url = $mq->url;
my ($user, $password) = ($mq->user, $mq->password);
my $node = OutboxTest::new_node('amqp_faults', conf => qq{
shared_preload_libraries = 'outbox, outbox_amqp'
outbox.publisher = 'amqp'
outbox.amqp_url = '$url'
outbox.amqp_username = '$user'
outbox.amqp_password = '$password'
outbox.amqp_timeout = '3s'
outbox.poll_interval = '100ms'
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '500ms'
outbox.max_retries = 1000
log_statement = 'none'
});

my $checker = OutboxChecker->new($node, topic => 'chk');
$checker->install;
my $source = $mq->source('chk');

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
OutboxTest::set_conf($node, 'outbox.enabled' => 'on');

my $kills = 0;
# Kill while the worker is publishing (its activity says so, in the same
# snapshot as the count of processed messages) and messages are in the
# queue but not yet marked processed.  The kill can still come just after
# the batch was marked (the counts are a few milliseconds old by then), and
# then it makes no duplicate: try again, up to eight times, with enough
# messages left for each try, until the queue holds a message twice.
for my $attempt (1 .. 8)
{
	my $pid = OutboxTest::worker_pid($node, 'postgres') or last;
	my $queued_at_kill;
	my $caught = OutboxTest::wait_until(
		30,
		sub {
			my ($done, $publishing) = OutboxTest::publishing_progress($node, $pid, 'chk');
			return 0 unless defined $done;
			$queued_at_kill = $mq->count('chk');
			return $publishing && defined $queued_at_kill && $queued_at_kill - $done >= 50
			  && $done < $burst - 5000;
		});
	last unless $caught;
	kill 'KILL', $pid;
	$kills++;
	OutboxTest::wait_for_worker($node, 'postgres', not_pid => $pid) or last;
	# Once the new worker marked as many as were queued at the kill, what the
	# dead one had published unmarked went out again.
	OutboxTest::wait_until(60, sub { (processed() // 0) >= $queued_at_kill });
	$source->deliveries;
	last if $source->duplicates > 0;
}
ok($kills > 0, "worker killed $kills time(s) with messages in flight");
$checker->stop_savers;
ok($checker->wait_drained(120), 'everything published after the kills');
my $report = $checker->check('after kill -9 of the worker', sources => [$source]);
cmp_ok($source->duplicates, '>', 0,
	'messages published before a kill were published again (' . $source->duplicates
	  . ' extra copies in the queue; the consumer dedupes on message-id)');
OutboxTest::set_conf($node, 'outbox.batch_size' => '100');

########################################################################
# 2. A graceful broker restart mid-run.

ok($checker->start_savers(clients => 4, rate => 100), 'savers started again');
ok(OutboxTest::wait_until(30, sub { (processed() // 0) > $report->{committed} + 200 }),
	'publishing goes on');
my $offset = OutboxTest::log_position($node);
$mq->stop;
ok( OutboxTest::wait_for_log_line($node,
		qr/outbox amqp publisher: (the connection to the broker was lost|could not connect)/, $offset),
	'the lost connection is reported');
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) > 20 FROM outbox.messages WHERE topic = 'chk' AND status = 'pending'", 't'),
	'messages stay pending while the broker is down');
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
is(OutboxTest::log_count($node, qr/WARNING:  outbox amqp publisher: could not connect/, $offset), 1,
	'the connection problem is logged once');
is( OutboxTest::query_value($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE status = 'failed'"),
	'0', 'none failed');
$mq->start_again;
ok( OutboxTest::wait_for_log_line($node, qr/outbox amqp publisher: publishing again/, $offset),
	'publishing again after the restart');
$checker->stop_savers;
ok($checker->wait_drained(60), 'everything published after the restart');
$report = $checker->check('after a broker restart', sources => [$source]);

########################################################################
# 3. kill -9 of the broker mid-run.

ok($checker->start_savers(clients => 4, rate => 100), 'savers started once more');
ok(OutboxTest::wait_until(30, sub { (processed() // 0) > $report->{committed} + 200 }),
	'publishing goes on');
$mq->stop('KILL');
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) > 20 FROM outbox.messages WHERE topic = 'chk' AND status = 'pending'", 't'),
	'messages stay pending while the broker is gone');
$mq->start_again;
$checker->stop_savers;
ok($checker->wait_drained(60), 'everything published after the broker crash');
$checker->check('after kill -9 of the broker', sources => [$source]);
is( OutboxTest::query_value($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE status = 'failed'"),
	'0', 'no message failed');

$node->stop;
done_testing();
