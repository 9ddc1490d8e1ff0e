
# 005_missing_extension.pl -- databases in outbox.databases that cannot be
# relayed (yet), and dropping a relayed database.
#
#  - "noext" exists without the extension: one LOG line, its worker is
#    started again only every 10 s (no restart loop, no error exits);
#  - "nosuchdb" does not exist: one LOG line from the launcher;
#  - after CREATE EXTENSION in noext, a commit that saves a message there
#    makes the launcher start its worker at once, and the message arrives;
#  - DROP DATABASE of a relayed database whose worker runs succeeds.
#
# log_min_messages = debug1 makes the postmaster log each start and exit of
# a background worker, so the recheck cycle of noext's worker can be seen.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use OutboxTest;

my $node = OutboxTest::new_node(
	'missing',
	databases => 'postgres,noext,nosuchdb,dropme',
	create_databases => [ 'noext', 'dropme' ],
	extension_in => [ 'postgres', 'dropme' ],
	conf => qq{
outbox.poll_interval = '200ms'
log_min_messages = debug1
});

my $not_installed =
  qr/LOG:  outbox worker: extension "outbox" is not installed in database "noext"/;
my $no_such_db =
  qr/LOG:  outbox launcher: database "nosuchdb" listed in outbox.databases does not exist/;
my $noext_start =
  qr/starting background worker process "outbox worker for database noext"/;
# Logged when a worker of noext exits, whatever its exit code (the
# postmaster names the worker by type, "outbox worker", when it exits with
# an error, so failures are checked by pid below).
my $noext_exit =
  qr/unregistering background worker "outbox worker for database noext"/;

# Look only at what was logged since the server started with the real
# outbox.databases (new_node started it once before with none).
my $start = rindex(slurp_file($node->logfile), 'database system is shut down');
BAIL_OUT('cannot find the restart in the server log') if $start < 0;

# Times (seconds since midnight) of the log lines matching $regexp.
sub start_times
{
	my ($regexp) = @_;
	my @times;
	for my $line (split /\n/, slurp_file($node->logfile, $start))
	{
		next unless $line =~ $regexp;
		push @times, $1 * 3600 + $2 * 60 + $3
		  if $line =~ /^\d{4}-\d\d-\d\d (\d\d):(\d\d):(\d\d\.\d+)/;
	}
	return @times;
}

ok(OutboxTest::wait_for_log_line($node, $not_installed, $start, 30),
	'missing extension in noext is logged');
my $first_seen = time();
ok(OutboxTest::wait_for_log_line($node, $no_such_db, $start, 30),
	'missing database nosuchdb is logged');
ok(OutboxTest::wait_for_log_line($node, $noext_exit, $start, 30),
	"noext's worker exits");

########################################################################
# Meanwhile: DROP DATABASE of a relayed database whose worker runs.

my $drop_pid = OutboxTest::wait_for_worker($node, 'dropme');
ok($drop_pid, "dropme's worker runs (pid $drop_pid)");
my $t0 = time();
my ($rc, $out, $err) = $node->psql('postgres', 'DROP DATABASE dropme');
is($rc, 0, 'DROP DATABASE of a relayed database succeeds');
is($err, '', 'without an error') or diag($err);
note(sprintf('DROP DATABASE took %.2f s', time() - $t0));
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_database WHERE datname = 'dropme'"),
	'0', 'dropme is gone');
is(OutboxTest::worker_pid($node, 'dropme'), undef, 'no worker for dropme');

########################################################################
# The recheck: noext's worker starts again 10 s later, finds no extension,
# and exits without logging again.

ok( OutboxTest::wait_until(30,
		sub { OutboxTest::log_count($node, $noext_exit, $start) >= 2 }),
	"noext's worker was started again for the recheck");
my @starts = start_times($noext_start);
my $recheck_after = @starts >= 2 ? $starts[1] - $starts[0] : 0;
note(sprintf('second start %.1f s after the first', $recheck_after));
cmp_ok($recheck_after, '>=', 9,
	'the recheck came about 10 s later, not in a restart loop');
is(OutboxTest::log_count($node, $noext_start, $start),
	2, "noext's worker was started twice so far");
is(OutboxTest::log_count($node, $not_installed, $start),
	1, 'the missing extension is logged once, not at each recheck');

########################################################################
# Installing the extension: the first commit that saves a message starts
# the worker at once (the next recheck is ~10 s away).

$node->safe_psql('noext', 'CREATE EXTENSION outbox');
my $listener = OutboxTest::Listener->new($node, 'noext', 'late');
$t0 = time();
my $id = $node->safe_psql('noext',
	q{SELECT outbox.save('late', '{"db": "noext"}'::jsonb)});
my $n = $listener->wait_for_id($id, 30);
ok($n, 'a message saved in noext after CREATE EXTENSION is delivered');
my $latency = time() - $t0;
note(sprintf('delivered %.2f s after the commit', $latency));
cmp_ok($latency, '<', 6,
	'delivered before the next recheck: the commit started the worker');
is($n && $n->{envelope}{payload}{db}, 'noext', 'with its payload');
ok(OutboxTest::wait_all_processed($node, 'noext', 30),
	'and marked processed');
ok(OutboxTest::worker_pid($node, 'noext'), "noext's worker now runs");

########################################################################
# The launcher rechecks nosuchdb every 10 s too; give it one full cycle
# since the first report, then count.

my $wait = 12 - (time() - $first_seen);
usleep(int($wait * 1_000_000)) if $wait > 0;
is(OutboxTest::log_count($node, $no_such_db, $start),
	1, 'the missing database is logged once');
is(OutboxTest::log_count($node, $not_installed, $start),
	1, 'the missing extension is still logged once');
# The only outbox worker that may have exited with an error is dropme's,
# which DROP DATABASE terminated.
my @failed_pids = grep { $_ != $drop_pid }
  (slurp_file($node->logfile, $start) =~
	  /background worker "outbox worker" \(PID (\d+)\) (?:exited with exit code [1-9]|was terminated by signal)/g
  );
is_deeply(\@failed_pids, [], 'no other outbox worker exited with an error (no restart loop)');
ok(OutboxTest::log_count($node, qr/background worker "outbox worker" \(PID $drop_pid\)/, $start) <= 1,
	"dropme's worker exited once");
is(OutboxTest::log_count($node, qr/terminated by signal|server process .* exited/, $start),
	0, 'nothing crashed');
is(OutboxTest::log_count($node, qr/background worker "outbox launcher".*exited/, $start),
	0, 'the launcher never exited');

$listener->quit;
$node->stop;
done_testing();
