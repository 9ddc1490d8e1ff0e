# 104_example_publisher.pl -- a publisher from another library, through the
# public C API (test/modules/outbox_flaky, built against the installed
# outbox_publisher.h and loaded after outbox in shared_preload_libraries).
#
#  - it registers by name next to the built-in publishers;
#  - retry then success: failed attempts go through the backoff, then the
#    message is delivered (once);
#  - failure: a message failing every attempt becomes failed after
#    outbox.max_retries; a rejected one is failed at once;
#  - its check_topic hook refuses a topic at save time;
#  - its OutboxPublisherWait() keeps the worker responsive to SIGTERM.

use strict;
use warnings;

use File::Basename qw(dirname);
use File::Spec;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxTest;

# The module is built by "make test"; build it here when run on its own.
my $module_dir = File::Spec->rel2abs(File::Spec->catdir(dirname(__FILE__), '..', 'modules', 'outbox_flaky'));
my $module = "$module_dir/outbox_flaky.so";
unless (-f $module)
{
	my $pg_config = $ENV{PG_CONFIG} // 'pg_config';
	system('make', '-s', '-C', $module_dir, "PG_CONFIG=$pg_config") == 0
	  or BAIL_OUT("could not build $module_dir");
}
ok(-f $module, 'the example publisher module is built');

my $node = OutboxTest::new_node('example_publisher', conf => qq{
shared_preload_libraries = 'outbox, "$module"'
outbox.publisher = 'flaky'
outbox.poll_interval = '100ms'
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '200ms'
outbox.max_retries = 4
outbox_flaky.fail_attempts = 2
outbox_flaky.reject_topic = 'never'
});

sub wait_status
{
	my ($id, $status) = @_;
	return OutboxTest::poll_until($node, 'postgres',
		"SELECT status FROM outbox.messages WHERE id = '$id'", $status);
}

my $offset = OutboxTest::log_position($node);

########################################################################
# Retry, then success.

my $id = $node->safe_psql('postgres', q{SELECT outbox.save('orders', '{"n": 1}'::jsonb, 'order-9')});
ok(wait_status($id, 'processed'), 'delivered by the flaky publisher');
my $m = OutboxTest::message_state($node, $id);
is($m->{retries}, 2, 'after the two attempts that fail on purpose');
is($m->{error}, 'outbox_flaky: attempt 2 of 2 fails on purpose', 'last_error from the publisher');
is(OutboxTest::log_count($node, qr/outbox_flaky: delivered \Q$id\E topic=orders key=order-9 attempt=3$/, $offset),
	1, 'delivered once, on the third attempt');

########################################################################
# Failure: retries exhausted; rejection.

OutboxTest::set_conf($node, 'outbox_flaky.fail_attempts' => '10');
my $doomed = $node->safe_psql('postgres', q{SELECT outbox.save('orders', '{"n": 2}'::jsonb)});
my $never = $node->safe_psql('postgres', q{SELECT outbox.save('never', '{"n": 3}'::jsonb)});
ok(wait_status($doomed, 'failed'), 'a message failing every attempt becomes failed');
$m = OutboxTest::message_state($node, $doomed);
is($m->{retries}, 4, 'after outbox.max_retries attempts');
is($m->{error}, 'outbox_flaky: attempt 4 of 10 fails on purpose', 'with the last error');
ok(wait_status($never, 'failed'), 'a rejected message becomes failed');
$m = OutboxTest::message_state($node, $never);
is($m->{retries}, 1, 'at once');
is($m->{error}, 'outbox_flaky rejects topic "never"', 'with the reason');
is(OutboxTest::log_count($node, qr/outbox_flaky: delivered (\Q$doomed\E|\Q$never\E)/, $offset),
	0, 'neither was delivered');

OutboxTest::set_conf($node, 'outbox_flaky.fail_attempts' => '0');
my $quick = $node->safe_psql('postgres', q{SELECT outbox.save('orders', '{"n": 4}'::jsonb)});
ok(wait_status($quick, 'processed'), 'with no failing attempts, delivered at once');
is(OutboxTest::message_state($node, $quick)->{retries}, 0, 'without retries');

########################################################################
# check_topic refuses at save time.

my ($rc, $out, $err) = $node->psql('postgres', q{SELECT outbox.save('has space', '{}'::jsonb)});
isnt($rc, 0, 'save with a topic the publisher refuses fails');
like($err, qr/ERROR:  outbox message topic "has space" cannot be published by publisher "flaky"/,
	'naming the publisher');
like($err, qr/DETAIL:  The flaky publisher does not accept spaces in topics\./,
	"with the publisher's reason");

########################################################################
# Registered by name beside the built-in publishers.

$offset = OutboxTest::log_position($node);
OutboxTest::set_conf($node, 'outbox.publisher' => 'nonesuch');
ok( OutboxTest::wait_for_log_line($node,
		qr/DETAIL:  Known publishers: notify, http, function, flaky\./, $offset),
	'the registry lists the built-in publishers and the example one');
OutboxTest::set_conf($node, 'outbox.publisher' => 'flaky');

########################################################################
# A publisher waiting through OutboxPublisherWait() stays responsive.

OutboxTest::set_conf($node, 'outbox_flaky.delay' => '1min');
my $slow = $node->safe_psql('postgres', q{SELECT outbox.save('orders', '{"n": 5}'::jsonb)});
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'outbox worker' AND query = 'publishing outbox messages'",
		'1'),
	'the worker is busy publishing the slow message');
my $pid = OutboxTest::worker_pid($node, 'postgres');
my $t0 = time();
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE pid = $pid", '0', 10),
	'SIGTERM ends the worker in the middle of the wait');
cmp_ok(time() - $t0, '<', 5, 'promptly');
OutboxTest::set_conf($node, 'outbox_flaky.delay' => '0');
ok(OutboxTest::wait_for_worker($node, 'postgres', not_pid => $pid), 'a new worker starts');
ok(wait_status($slow, 'processed'), 'and delivers the message');

$node->stop;
done_testing();
