# 073_publisher_errors.pl -- a publisher that raises ERRORs with no
# transaction open, thousands of times: the worker cleans up after each one
# (as bgwriter does: LWLocks, wait events, buffer pins, hash scans), keeps
# publishing, and its memory stays flat.
#
# The example plug-in outbox_flaky raises an ERROR for every message of
# topic "boom" while holding an LWLock of its own, which it takes around
# each message (as a plug-in keeping shared statistics would).  Left held,
# that lock makes the next message wait for it forever.  The "boom"
# messages are retried every millisecond; a batch published carefully
# (one message at a time, after an error) turns each ERROR into a failed
# attempt, so errors come by the hundred per second.  There are fewer
# of them than a batch holds, so other messages share the batches.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxTest;

my $flaky = OutboxTest::test_module('outbox_flaky');
my $node = OutboxTest::new_node('publisher_errors', conf => qq{
shared_preload_libraries = 'outbox, "$flaky"'
outbox.publisher = 'flaky'
outbox.poll_interval = '100ms'
outbox.retry_backoff = '1ms'
outbox.retry_backoff_max = '1ms'
outbox.max_retries = 1000000
outbox_flaky.fail_attempts = 0
outbox_flaky.error_topic = 'boom'
outbox_flaky.error_holds_lock = on
log_statement = 'none'
log_min_messages = 'fatal'
});

my $pid = OutboxTest::worker_pid($node, 'postgres');

# The worker's private memory (RssAnon), in kB.
sub worker_memory
{
	open my $fh, '<', "/proc/$pid/status" or return undef;
	while (<$fh>)
	{
		return $1 if /^RssAnon:\s+(\d+) kB/;
	}
	return undef;
}

# Failed attempts of the "boom" messages so far.
sub errors_so_far
{
	return OutboxTest::query_value($node, 'postgres',
		"SELECT coalesce(sum(retries), 0) FROM outbox.messages WHERE topic = 'boom'") // 0;
}

$node->safe_psql('postgres',
	"SELECT outbox.save('boom', jsonb_build_object('n', g)) FROM generate_series(1, 50) g");

ok(OutboxTest::wait_until(60, sub { errors_so_far() >= 1000 }),
	'the publisher raised 1,000 errors')
  or diag('errors so far: ' . errors_so_far());
my $memory_at_1000 = worker_memory();

ok(OutboxTest::wait_until(120, sub { errors_so_far() >= 5000 }),
	'and 5,000')
  or diag('errors so far: ' . errors_so_far());
my $memory_at_5000 = worker_memory();
SKIP:
{
	# Without a measurement there is nothing to compare: say so.
	skip("cannot read RssAnon from /proc/$pid/status: the worker's memory is not measured", 1)
	  unless defined $memory_at_1000 && defined $memory_at_5000;
	note("worker RssAnon: $memory_at_1000 kB at 1,000 errors, $memory_at_5000 kB at 5,000");
	cmp_ok($memory_at_5000 - $memory_at_1000, '<', 1024,
		"the worker's memory stayed flat ($memory_at_1000 kB, then $memory_at_5000 kB)");
}

is(OutboxTest::worker_pid($node, 'postgres'), $pid, 'the same worker runs');
my $offset = OutboxTest::log_position($node);
$node->safe_psql('postgres',
	"SELECT outbox.save('fine', jsonb_build_object('n', g)) FROM generate_series(1, 100) g");
ok(OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE topic = 'fine' AND status = 'processed'",
		'100'),
	'other messages are still published meanwhile');
is($node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.messages WHERE topic = 'boom' AND status <> 'pending'"),
	'0', 'the failing messages wait for their next attempt');

$node->stop;
done_testing();
