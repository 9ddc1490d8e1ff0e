# 071_start_requests.pl -- commits that save messages while no worker runs
# ask the launcher for one, but never past a failing worker's restart delay.
#
# outbox.role names a role that cannot log in, so every worker the launcher
# starts fails at once (FATAL: role ... is not permitted to log in) and the
# launcher waits longer before each next start (1 s, 2 s, 4 s, ...).  Then
# 300 transactions commit a message each, over about 6 seconds.  Each
# commit finds no worker and asks the launcher for one; the launcher must
# keep its delay, so the number of start attempts (and FATAL lines in the
# log) stays that of the delays alone, not one per commit.  Once the role
# may log in, a worker starts within the delay and publishes every message.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxTest;

my $node = OutboxTest::new_node('start_requests', wait_worker => 0, conf => q{
outbox.poll_interval = '100ms'
log_statement = 'none'
});
$node->safe_psql('postgres', q{
CREATE ROLE cannot_login NOLOGIN;
GRANT USAGE ON SCHEMA outbox TO cannot_login;
GRANT SELECT, UPDATE, DELETE ON outbox.messages TO cannot_login;
GRANT EXECUTE ON FUNCTION outbox.valid_headers(jsonb) TO cannot_login;
});
$node->append_conf('postgresql.conf', "outbox.role = 'cannot_login'\n");
$node->restart;

my $fatal = qr/role "cannot_login" is not permitted to log in/;
my $offset = OutboxTest::log_position($node);
ok(OutboxTest::wait_for_log_line($node, $fatal, $offset),
	'the worker fails at start: its role cannot log in');

my $t0 = time();
my $script = join('', map {
	"SELECT outbox.save('requests', jsonb_build_object('n', $_));\n"
	  . "SELECT pg_sleep(0.02);\n" } 1 .. 300);
my ($rc, $out, $err) = $node->psql('postgres', $script, on_error_stop => 1);
is($rc, 0, '300 transactions committed a message each') or diag($err);
my $took = time() - $t0;
my $attempts = OutboxTest::log_count($node, $fatal, $offset);
note(sprintf('%d start attempts in %.1f s', $attempts, $took));

# Delays of 1, 2, 4, 8 s from the first failure allow 5 starts in 8 s, 6 in
# 16 s; allow one more for timing.
my $allowed = $took < 8 ? 6 : 7;
cmp_ok($attempts, '<=', $allowed,
	"the commits did not start a worker each ($attempts start attempts in "
	  . sprintf('%.1f s', $took) . ')');

$node->safe_psql('postgres', 'ALTER ROLE cannot_login LOGIN');
ok(OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE status = 'processed'", '300', 120),
	'once the role may log in, a worker starts and publishes every message');

$node->stop;
done_testing();
