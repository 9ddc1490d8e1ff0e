
# 062_row_locks.pl -- long transactions that hold row locks on messages.
#
# Pending messages locked by another session (SELECT ... FOR UPDATE in a
# transaction that stays open) cannot be claimed: the worker skips them
# (its claims use SKIP LOCKED) and publishes the rest, while savers keep
# saving.  Under outbox.ordering = 'key' a locked message holds back the
# later messages of its key (also those saved meanwhile), and only those:
#  - key k1: locked at its 5th message, with 300 more messages of k1 behind
#    it (more than a batch, so whole claim rounds are held back); its first
#    four are published, nothing after the 5th;
#  - key k2: its first message is locked; nothing of k2 is published;
#  - a keyless message is locked; the keyless messages after it go out;
#  - every other key drains, and savers' messages keep flowing.
# The worker idles meanwhile instead of spinning on what it cannot claim.
# When the lock is released everything drains, and the checker passes with
# a listener that was connected throughout: every committed message arrived
# exactly once, per key in sequence order, nothing rolled back arrived.
#
# Then, two long transactions that must not stop the worker's maintenance
# (and so the worker) by holding row locks:
#  - one that locks processed messages old enough for outbox.retention to
#    delete (the purge must not wait for the lock);
#  - an external relay that claimed a message with fetch_pending() and keeps
#    its row locked past outbox.processing_timeout (the recovery of stuck
#    claims must not wait for it).

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use OutboxTest;
use OutboxChecker;

my $node = OutboxTest::new_node(
	'row_locks', conf => qq{
outbox.poll_interval = '100ms'
log_statement = 'none'
});
my $worker = OutboxTest::wait_for_worker($node, 'postgres');

my $checker = OutboxChecker->new($node, topic => 'chk', nkeys => 16);
$checker->install;
my $listener = $checker->listener;
$listener->complete_all(1);

sub q1 { return $node->safe_psql('postgres', $_[0]) }

########################################################################
# A backlog, saved while the worker is paused, with a long run of k1.

OutboxTest::set_conf($node, 'outbox.enabled' => 'off');
$checker->save_burst(400);
q1(q{SELECT checker.save_one(1, 'burst') FROM generate_series(1, 300)});

my $locker = $node->background_psql('postgres');
$locker->query_safe('BEGIN');
my $locked = $locker->query_safe(
	q{SELECT string_agg(id::text, ',' ORDER BY id) FROM (
	    SELECT m.id FROM outbox.messages m JOIN checker.ledger l USING (id)
	    WHERE (l.key = 'k1' AND l.seq = 5) OR (l.key = 'k2' AND l.seq = 1)
	       OR l.token = (SELECT min(token) FROM checker.ledger WHERE key = '')
	    FOR UPDATE OF m) s});
my @locked = split /,/, $locked;
is(scalar @locked, 3, 'a long transaction locks three pending messages');
my $locked_list = join(',', map { "'$_'" } @locked);
my $keyless_locked = q1(
	"SELECT id FROM checker.ledger WHERE key = '' AND id IN ($locked_list)");

# Messages the lock must hold back (whenever they were saved).
my $held_back = qq{((l.key = 'k1' AND l.seq >= 5) OR l.key = 'k2' OR l.id = '$keyless_locked')};

$checker->start_savers(clients => 4, rate => 100)
  or die('savers did not start');
OutboxTest::set_conf($node, 'outbox.enabled' => 'on');

ok( OutboxTest::poll_until(
		$node, 'postgres',
		qq{SELECT count(*) FILTER (WHERE m.status <> 'processed' AND l.via = 'burst') = 0
		      AND count(*) FILTER (WHERE m.status = 'processed' AND l.via <> 'burst') >= 100
		   FROM checker.ledger l JOIN outbox.messages m USING (id) WHERE NOT $held_back},
		't', 60),
	'the worker publishes the backlog around the locked messages, and savers\' messages flow');
$listener->poll;
$checker->stop_savers;
ok( OutboxTest::poll_until(
		$node, 'postgres',
		qq{SELECT count(*) FROM checker.ledger l JOIN outbox.messages m USING (id)
		   WHERE m.status <> 'processed' AND NOT $held_back},
		'0', 60),
	'every message not held back by the lock is processed');

is(q1("SELECT string_agg(status || '/' || retries, ',') FROM outbox.messages WHERE id IN ($locked_list)"),
	'pending/0,pending/0,pending/0',
	'the locked messages are still pending, with no attempt counted');
is( q1(qq{SELECT count(*) FROM checker.ledger l JOIN outbox.messages m USING (id)
		 WHERE $held_back AND m.status <> 'pending'}),
	'0', 'the later messages of the locked keys are all still pending');
is( q1(qq{SELECT count(*) FILTER (WHERE m.status = 'processed') || '/' || count(*)
		 FROM checker.ledger l JOIN outbox.messages m USING (id) WHERE l.key = 'k1' AND l.seq < 5}),
	'4/4', 'the messages of k1 before the locked one are processed');
cmp_ok(
	q1(qq{SELECT count(*) FROM checker.ledger l JOIN outbox.messages m USING (id)
		 WHERE l.key = '' AND l.id > '$keyless_locked' AND m.status = 'processed'}),
	'>', 0, 'keyless messages after the locked keyless one are processed');
cmp_ok(
	q1(qq{SELECT count(*) FROM checker.ledger l WHERE l.key = 'k1' AND l.seq > 5}),
	'>=', 300, 'with 300 or more messages of k1 held back');
$listener->poll;
my %received = map { ($_->{id} // '') => 1 } @{ $listener->deliveries };
my @early = grep { $received{$_} } split /\n/,
  q1("SELECT l.id FROM checker.ledger l WHERE $held_back");
is(scalar @early, 0, 'the listener received none of the held-back messages');

# The worker is not spinning on what it cannot claim: over two seconds it
# uses well under a core.
sub cpu_seconds
{
	my ($pid) = @_;
	my $stat = slurp_file("/proc/$pid/stat");
	$stat =~ s/^.*\)\s+//s;
	my @f = split /\s+/, $stat;
	return ($f[11] + $f[12]) / 100;    # utime + stime, in clock ticks
}
SKIP:
{
	skip 'no /proc', 1 unless -r "/proc/$worker/stat";
	my ($c0, $t0) = (cpu_seconds($worker), time());
	usleep(2_000_000);
	my $share = (cpu_seconds($worker) - $c0) / (time() - $t0);
	note(sprintf('worker CPU while messages are held back: %.0f%%', 100 * $share));
	cmp_ok($share, '<', 0.5, 'the worker idles while the held-back messages wait');
}

# Release the lock: everything drains, in order.
$locker->query_safe('COMMIT');
ok($checker->wait_drained(60, $listener), 'after the lock is released, everything drains');
is(OutboxTest::worker_pid($node, 'postgres'), $worker, 'the same worker ran throughout');
$checker->check('row locks', sources => [$listener]);

########################################################################
# Locked processed messages that retention wants to delete.

# Returns once the worker has started a maintenance pass (stuck-claim
# recovery, then the purge) after this call: a probe message claimed by a
# pid that does not exist goes back to pending, then gets published.
sub wait_maintenance_pass
{
	my ($timeout) = @_;
	my $probe = q1(
		q{WITH p AS (INSERT INTO outbox.messages (topic, payload, status, claimed_by, claimed_at)
		   VALUES ('probe', '\x00', 'processing', 999999, now()) RETURNING id) SELECT id FROM p});
	return OutboxTest::poll_until($node, 'postgres',
		"SELECT status <> 'processing' FROM outbox.messages WHERE id = '$probe'",
		't', $timeout);
}

q1(q{SELECT outbox.save('purge', 'old ' || g) FROM generate_series(1, 20) g});
ok(OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE topic = 'purge' AND status = 'processed'", '20'),
	'20 messages processed');
$locker->query_safe('BEGIN');
$locker->query_safe(
	q{SELECT count(*) FROM (SELECT id FROM outbox.messages WHERE topic = 'purge' FOR UPDATE) s});
OutboxTest::set_conf($node, 'outbox.retention' => '1s');
ok(wait_maintenance_pass(30), 'the worker began a maintenance pass after the lock was taken');
my $t0 = time();
my $after = q1(q{SELECT outbox.save('purge', 'published meanwhile'::text)});
if (ok( OutboxTest::poll_until(
		$node, 'postgres',
		"SELECT status FROM outbox.messages WHERE id = '$after'",
		'processed', 15),
	'with processed messages locked past retention, the worker still publishes'))
{
	note(sprintf('published %.1f s after the save', time() - $t0));
}
else
{
	diag('the worker: '
		  . q1("SELECT state || ' ' || coalesce(wait_event_type || ':' || wait_event, '') || ' ' || query "
			  . "FROM pg_stat_activity WHERE backend_type = 'outbox worker'"));
}
$locker->query_safe('COMMIT');
ok( OutboxTest::poll_until(
		$node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE topic = 'purge' AND status = 'processed' AND processed_at < now() - interval '1s'",
		'0', 30),
	'once the lock is gone, retention deletes them');
ok(OutboxTest::wait_all_processed($node, 'postgres', 30), 'and everything is processed');
OutboxTest::set_conf($node, 'outbox.retention' => '7d');

########################################################################
# A claim past outbox.processing_timeout that its claimer keeps locked
# (an external relay that claimed with fetch_pending() and holds the row
# while it publishes, too slowly).  The worker's recovery of stuck claims
# must not wait for that lock, or the worker stops altogether.

OutboxTest::set_conf($node,
	'outbox.enabled' => 'off',
	'outbox.processing_timeout' => '1s');
my $slow = q1(q{SELECT outbox.save('slow', 'claimed by a slow relay'::text)});
is($locker->query_safe('SELECT id FROM outbox.fetch_pending(1)'),
	$slow, 'an external relay claims a message');
$locker->query_safe('BEGIN');
$locker->query_safe(
	"SELECT count(*) FROM (SELECT id FROM outbox.messages WHERE id = '$slow' FOR UPDATE) s");
OutboxTest::set_conf($node, 'outbox.enabled' => 'on');
ok( OutboxTest::poll_until(
		$node, 'postgres',
		"SELECT claimed_at < now() - interval '1s' FROM outbox.messages WHERE id = '$slow'",
		't', 30),
	'its claim is older than processing_timeout, and the relay still holds the row');
ok(wait_maintenance_pass(15),
	'the worker still recovers other stuck claims (its recovery pass is not blocked)')
  or diag('the worker: '
	  . q1("SELECT state || ' ' || coalesce(wait_event_type || ':' || wait_event, '') || ' ' || query "
		  . "FROM pg_stat_activity WHERE backend_type = 'outbox worker'"));
$after = q1(q{SELECT outbox.save('slow', 'published meanwhile'::text)});
ok( OutboxTest::poll_until(
		$node, 'postgres',
		"SELECT status FROM outbox.messages WHERE id = '$after'",
		'processed', 15),
	'and still publishes');
$locker->query_safe('COMMIT');
ok(OutboxTest::wait_all_processed($node, 'postgres', 30),
	'once the relay lets go, its timed-out claim is recovered and published too');

$locker->quit;
$listener->quit;
$node->stop;
done_testing();
