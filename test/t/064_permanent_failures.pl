
# 064_permanent_failures.pl -- messages that always fail to publish, while
# savers keep committing (OutboxChecker).
#
# A message always fails here when its envelope cannot be built: its
# payload is JSON nested 3,900 levels deep, and with max_stack_depth at
# its minimum (100kB, set for the whole server and reloaded) checking it
# runs out of stack.  The error costs its batch; the worker then publishes
# one message at a time and records the failed attempt.  With
# outbox.max_retries = 3 and a backoff of 1.5 s:
#  - under outbox.ordering = 'key' the failing message D (key k3) goes back
#    to pending with retries 1, 2 and reaches failed with retries = 3 and
#    last_error "stack depth limit exceeded"; while it is pending or
#    processing, no later message of k3 is published (they wait, pending),
#    while other keys flow; once it failed, the later k3 messages go out;
#  - under outbox.ordering = 'none' a failing message D2 (key k5) holds
#    nothing back: later k5 messages are published while D2 still retries;
#  - a message rejected outright (envelope over NOTIFY's limit) is failed
#    after one attempt whatever max_retries says;
#  - with the stack restored, outbox.retry_failed(ids) requeues D alone (and
#    it is delivered, with retries reset), retry_failed() the rest; the
#    oversized message fails again at once.
# The checker passes at the end: no saver message was lost, duplicated or
# reordered around the failures.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use OutboxTest;
use OutboxChecker;

my $node = OutboxTest::new_node(
	'failures', conf => qq{
outbox.poll_interval = '100ms'
outbox.max_retries = 3
outbox.retry_backoff = '1500ms'
outbox.retry_backoff_max = '1500ms'
log_statement = 'none'
});
my $worker = OutboxTest::wait_for_worker($node, 'postgres');

sub q1 { return $node->safe_psql('postgres', $_[0]) }

my $checker = OutboxChecker->new($node, topic => 'chk', nkeys => 16);
$checker->install;
my $listener = $checker->listener;
$listener->complete_all(1);
my $deep_listener = OutboxTest::Listener->new($node, 'postgres', 'deep');

my $deep_payload = q{repeat('[', 3900) || repeat(']', 3900)};

OutboxTest::set_conf($node, 'max_stack_depth' => '100kB');
$checker->start_savers(clients => 4, rate => 100)
  or die('savers did not start');

# Follow message $id until it is failed, sampling it and the later
# messages of its key in one snapshot each time.  Returns the samples:
# [status, retries, later processed, later pending].  "Later processed"
# counts the messages of the key saved after $id committed (ids above
# $mark, taken after its commit): a saver's message whose id was taken
# while $id's transaction was still open, and that committed first, may
# be published first (README: overlapping transactions are published in
# commit order), and is no leak.
sub follow
{
	my ($id, $key, $mark) = @_;
	$mark //= $id;
	my @samples;
	OutboxTest::wait_until(
		60,
		sub {
			$listener->poll;
			my $row = OutboxTest::query_value(
				$node, 'postgres', qq{
SELECT d.status, d.retries,
       (SELECT count(*) FROM outbox.messages m WHERE m.key = '$key' AND m.id > '$mark' AND m.status = 'processed'),
       (SELECT count(*) FROM outbox.messages m WHERE m.key = '$key' AND m.id > d.id AND m.status = 'pending')
FROM outbox.messages d WHERE d.id = '$id'});
			return 0 unless defined $row;
			my @s = split /\|/, $row;
			push @samples, \@s;
			return $s[0] eq 'failed';
		});
	return @samples;
}

########################################################################
# ordering = 'key': D holds k3 back until it failed.

my $d = q1("SELECT outbox.save('deep', $deep_payload, 'k3')");
# Every id from here on is taken after D committed.
my $d_mark = q1('SELECT outbox.next_id()');
# Later messages of k3 (through the checker, so they are in its ledger).
q1("SELECT checker.save_one(3, 'save')") for 1 .. 5;
my $others_before = q1(
	"SELECT count(*) FROM outbox.messages WHERE topic = 'chk' AND key <> 'k3' AND status = 'processed'");

my @samples = follow($d, 'k3', $d_mark);
my $last = $samples[-1];
is($last->[0], 'failed', 'ordering key: the failing message ends failed');
is( q1("SELECT retries || '|' || last_error FROM outbox.messages WHERE id = '$d'"),
	'3|stack depth limit exceeded',
	'after outbox.max_retries (3) attempts, with the error kept in last_error');
my %pending_retries = map { $_->[1] => 1 } grep { $_->[0] eq 'pending' } @samples;
ok($pending_retries{1} && $pending_retries{2},
	'in between it was pending again after attempts 1 and 2 (seen: '
	  . join(',', sort keys %pending_retries) . ')');
my @leaks = grep { $_->[0] ne 'failed' && $_->[2] > 0 } @samples;
if (@leaks) {
	diag("D=$d");
	diag(q1("SELECT id, status, retries, next_attempt_at, last_error FROM outbox.messages WHERE id = '$d'"));
	diag(q1("SELECT m.id, m.status, m.processed_at, m.created_at FROM outbox.messages m WHERE m.key = 'k3' ORDER BY m.id LIMIT 12"));
	diag(join("\n", map { join('|', @$_) } @samples[0..10]));
}
is(scalar @leaks, 0,
	'ordering key: no later message of its key was published while it was unfinished');
ok((grep { $_->[0] ne 'failed' && $_->[3] > 0 } @samples),
	'ordering key: later messages of its key were waiting, pending');
cmp_ok(
	q1("SELECT count(*) FROM outbox.messages WHERE topic = 'chk' AND key <> 'k3' AND status = 'processed'"),
	'>', $others_before, 'ordering key: other keys were published meanwhile');
ok( OutboxTest::poll_until(
		$node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE key = 'k3' AND id > '$d' AND status <> 'processed'",
		'0', 30),
	'ordering key: once it failed, the later messages of its key are published');
note(scalar(@samples) . ' samples while following D');

########################################################################
# ordering = 'none': D2 holds nothing back.

OutboxTest::set_conf($node, 'outbox.ordering' => 'none');
my $d2 = q1("SELECT outbox.save('deep', $deep_payload, 'k5')");
my @after_d2 = map { q1("SELECT checker.save_one(5, 'save')") } 1 .. 5;
my $after_list = join(',', map { "'$_'" } @after_d2);
my $state_when_published;
ok( OutboxTest::wait_until(
		30,
		sub {
			my $row = OutboxTest::query_value(
				$node, 'postgres', qq{
SELECT (SELECT count(*) FROM outbox.messages WHERE id IN ($after_list) AND status = 'processed'),
       (SELECT status || '/' || retries FROM outbox.messages WHERE id = '$d2')});
			return 0 unless defined $row;
			my ($n, $state) = split /\|/, $row;
			$state_when_published = $state;
			return $n == 5;
		}),
	'ordering none: the later messages of the failing message\'s key are published');
like($state_when_published, qr{^(pending|processing)/[0-2]$},
	"ordering none: while the failing message still retries ($state_when_published)");
@samples = follow($d2, 'k5');
is(q1("SELECT status || '|' || retries || '|' || last_error FROM outbox.messages WHERE id = '$d2'"),
	'failed|3|stack depth limit exceeded',
	'ordering none: it still ends failed after max_retries');
OutboxTest::set_conf($node, 'outbox.ordering' => 'key');

########################################################################
# Rejected outright: over NOTIFY's payload limit.

my $big = q1(q{SELECT outbox.save('deep', jsonb_build_object('blob', repeat('x', 9000)), 'k7')});
ok( OutboxTest::poll_until(
		$node, 'postgres',
		"SELECT status || '|' || retries FROM outbox.messages WHERE id = '$big'",
		'failed|1', 30),
	'an oversized message is failed after one attempt, not max_retries');
like(q1("SELECT last_error FROM outbox.messages WHERE id = '$big'"),
	qr/NOTIFY/, 'with the reason in last_error');

########################################################################
# retry_failed.

$checker->stop_savers;
OutboxTest::set_conf($node, 'max_stack_depth' => '2MB');
# The envelopes of the deep messages nest deeper than JSON::PP decodes:
# match the raw notification payload.
sub deep_delivered
{
	my ($id) = @_;
	return grep { $_->{payload} =~ /^\{"id": "\Q$id\E"/ } @{ $deep_listener->received };
}
sub wait_deep_delivered
{
	my ($id) = @_;
	return $deep_listener->wait_for(30, sub { deep_delivered($id) });
}

$deep_listener->poll;
is(scalar(map { deep_delivered($_) } $d, $d2, $big),
	0, 'no failed message was delivered');

is(q1("SELECT outbox.retry_failed(ARRAY['$d']::uuid[])"), '1',
	'retry_failed(ids) requeues one message');
ok(wait_deep_delivered($d), 'the requeued message is delivered');
my ($n) = deep_delivered($d);
like($n ? $n->{payload} : '', qr/"payload": \[{3900}\]{3900}/, 'with its payload');
ok(OutboxTest::poll_until($node, 'postgres',
		"SELECT status || '|' || retries FROM outbox.messages WHERE id = '$d'", 'processed|0'),
	'and processed, its retries reset');
is(q1("SELECT status FROM outbox.messages WHERE id = '$d2'"),
	'failed', 'the other failed messages stay failed');

is(q1('SELECT outbox.retry_failed()'), '2', 'retry_failed() requeues all the others');
ok(wait_deep_delivered($d2), 'the second failing message is delivered');
ok( OutboxTest::poll_until(
		$node, 'postgres',
		"SELECT status || '|' || retries FROM outbox.messages WHERE id = '$big'",
		'failed|1', 30),
	'the oversized one fails again at once');

ok($checker->wait_drained(60, $listener), 'the savers\' messages all drain');
$checker->check('permanent failures', sources => [$listener]);
is(OutboxTest::worker_pid($node, 'postgres'), $worker, 'the same worker ran throughout');

$deep_listener->quit;
$listener->quit;
$node->stop;
done_testing();
