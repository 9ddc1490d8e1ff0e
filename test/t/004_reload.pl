
# 004_reload.pl -- settings the relay worker picks up on reload, without a
# restart:
#  - outbox.enabled = off pauses publishing (the worker keeps running and
#    idles), on resumes it and everything is delivered;
#  - outbox.batch_size changes the size of the worker's batches (seen in
#    processed_at, which is one value per batch);
#  - outbox.notify_channel changes the channel;
#  - outbox.publisher = 'nope' logs one WARNING and leaves messages pending;
#    switching back delivers them.
#
# To know that the worker went through its loop after some point without
# sleeping and hoping, a "probe" message is saved as if claimed by a pid that
# does not exist; the worker's stuck-claim recovery (every 5 s, whether or not
# it publishes) returns it to pending, which shows a pass happened.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxTest;

my $node = OutboxTest::new_node('reload',
	conf => "outbox.poll_interval = '200ms'");
my $worker_pid = OutboxTest::wait_for_worker($node, 'postgres');
my $listener = OutboxTest::Listener->new($node, 'postgres', 'paused', 'sized',
	'channel_topic', 'nope_topic');

sub count_status
{
	my ($topic, $status) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.messages WHERE topic = '$topic' AND status = '$status'"
	);
}

# Returns once the worker has run a stuck-claim recovery pass that started
# after this call.
sub wait_worker_pass
{
	my ($why) = @_;
	my $probe = $node->safe_psql(
		'postgres', q{
BEGIN;
CREATE TEMP TABLE probe AS SELECT outbox.save('probe', 'probe'::text) AS id;
UPDATE outbox.messages m SET status = 'processing', claimed_by = 999999, claimed_at = now()
  FROM probe WHERE m.id = probe.id;
SELECT id FROM probe;
COMMIT;
});
	ok( OutboxTest::poll_until(
			$node, 'postgres',
			"SELECT status <> 'processing' FROM outbox.messages WHERE id = '$probe'",
			't', 30),
		"the worker went through its loop ($why)");
	return;
}

# Sizes of the batches that published the messages of a topic.
sub batch_sizes
{
	my ($topic) = @_;
	my $row = $node->safe_psql(
		'postgres', qq{
SELECT count(*), max(n) FROM (
  SELECT processed_at, count(*) AS n FROM outbox.messages
  WHERE topic = '$topic' AND status = 'processed' GROUP BY processed_at) b});
	return split /\|/, $row;
}

# Save $count messages of $topic in one INSERT ... SELECT.
sub save_many
{
	my ($topic, $count) = @_;
	$node->safe_psql(
		'postgres', qq{
INSERT INTO outbox.messages (topic, payload)
SELECT '$topic', convert_to(json_build_object('n', g)::text, 'UTF8')
FROM generate_series(1, $count) g});
	return;
}

########################################################################
# outbox.enabled = off pauses, on resumes.

OutboxTest::set_conf($node, 'outbox.enabled' => 'off');
save_many('paused', 300);    # a commit: wakes the worker
$node->safe_psql('postgres', q{SELECT outbox.save('paused', 'one more'::text)})
  ;                          # and another
wait_worker_pass('paused');
ok(OutboxTest::wait_worker_sleeping($node, 'postgres', 30),
	'the paused worker idles on its latch');
is(count_status('paused', 'pending'), '301', 'paused: all 301 messages stay pending');
$listener->poll;
is(scalar @{ $listener->received }, 0, 'paused: nothing was published');
is(OutboxTest::worker_pid($node, 'postgres'), $worker_pid, 'the same worker still runs');

OutboxTest::set_conf($node, 'outbox.enabled' => 'on');
ok($listener->wait_count(301, 60), 'enabled again: all 301 messages arrive');
is(count_status('paused', 'processed'), '301', 'and are processed');
my ($nbatches, $largest) = batch_sizes('paused');
is($largest, '100', 'with batch_size 100 the backlog went out in batches of 100');

########################################################################
# outbox.batch_size takes effect on reload.

OutboxTest::set_conf($node, 'outbox.enabled' => 'off');
save_many('sized', 500);
OutboxTest::set_conf(
	$node,
	'outbox.batch_size' => '10',
	'outbox.enabled' => 'on');
$listener->clear;
ok($listener->wait_count(500, 60), 'all 500 messages arrive');
ok(OutboxTest::wait_all_processed($node, 'postgres', 30), 'and are processed');
($nbatches, $largest) = batch_sizes('sized');
cmp_ok($largest, '<=', 10, "batch_size 10: no batch above 10 messages (largest $largest)");
cmp_ok($nbatches, '>=', 50, "batch_size 10: at least 50 batches ($nbatches)");
OutboxTest::set_conf($node, 'outbox.batch_size' => '100');

########################################################################
# outbox.notify_channel takes effect on reload.

$listener->listen('live_channel');
$listener->clear;
OutboxTest::set_conf($node, 'outbox.notify_channel' => 'live_channel');
my $id = $node->safe_psql('postgres',
	q{SELECT outbox.save('channel_topic', '{"via": "setting"}'::jsonb)});
my $n = $listener->wait_for_id($id, 30);
is($n && $n->{channel}, 'live_channel', 'notify_channel set: message on that channel');
OutboxTest::set_conf($node, 'outbox.notify_channel' => '');
$id = $node->safe_psql('postgres',
	q{SELECT outbox.save('channel_topic', '{"via": "topic"}'::jsonb)});
$n = $listener->wait_for_id($id, 30);
is($n && $n->{channel}, 'channel_topic', 'notify_channel cleared: message on its topic');
is(OutboxTest::worker_pid($node, 'postgres'), $worker_pid,
	'the worker was not restarted for any of this');

########################################################################
# An unknown publisher: one WARNING, messages wait.

my $offset = OutboxTest::log_position($node);
my $warning = qr/WARNING:  outbox publisher "nope" does not exist/;
OutboxTest::set_conf($node, 'outbox.publisher' => 'nope');
$listener->clear;
for my $i (1 .. 3)
{
	$node->safe_psql('postgres',
		"SELECT outbox.save('nope_topic', '{\"i\": $i}'::jsonb)");
}
ok(OutboxTest::wait_for_log_line($node, $warning, $offset, 30),
	'the unknown publisher is reported');
# Two recovery passes are at least 5 s apart: the worker (polling every
# 200 ms) has been through its loop many times.
wait_worker_pass('unknown publisher, 1');
wait_worker_pass('unknown publisher, 2');
is(OutboxTest::log_count($node, $warning, $offset),
	1, 'the unknown publisher is reported once, not on every poll');
is(count_status('nope_topic', 'pending'), '3', 'its messages stay pending');
$listener->poll;
is(scalar(grep { $_->{channel} eq 'nope_topic' } @{ $listener->received }),
	0, 'nothing was published');

OutboxTest::set_conf($node, 'outbox.publisher' => 'notify');
ok( $listener->wait_for(
		30, sub { 3 == grep { $_->{channel} eq 'nope_topic' } @{ $_[0] } }),
	'back to the notify publisher: the waiting messages arrive');
ok(OutboxTest::wait_all_processed($node, 'postgres', 30),
	'everything is processed in the end');
is(OutboxTest::worker_pid($node, 'postgres'), $worker_pid,
	'still the same worker');

$listener->quit;
$node->stop;
done_testing();
