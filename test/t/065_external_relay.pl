
# 065_external_relay.pl -- external relays through the store API, with a
# durable consumer, under crashes.
#
# The relay worker is paused (outbox.enabled = off); two pgbench clients act
# as external relays (OutboxChecker's checker.relay_batch): each
# transaction claims up to 20 messages with outbox.fetch_pending(), records
# them in a consumer table (its serial column is the delivery order) and
# marks them processed with outbox.mark_processed(), in one transaction.
# Savers run meanwhile.  Three times, a relay's backend is killed with
# kill -9 in the middle of the work: the postmaster crash-restarts the
# cluster, and relays and savers start again.
#
# Because the consumer's table and the marks commit together, the checker
# holds the strictest standard here, through the consumer table as its
# source: every committed message consumed exactly once (no duplicates even
# across the crashes), per key in sequence order although two relays claim
# concurrently, nothing rolled back consumed.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use OutboxTest;
use OutboxChecker;

my $kills = 3;

my $node = OutboxTest::new_node(
	'external_relay', conf => qq{
outbox.enabled = off
log_statement = 'none'
});

my $checker = OutboxChecker->new($node, topic => 'chk', nkeys => 16);
$checker->install;
my $consumer = $checker->consumer;

sub relay_pid
{
	my $pid = OutboxTest::query_value($node, 'postgres',
		"SELECT pid FROM pg_stat_activity WHERE application_name = 'outbox_relay' "
		  . "AND state = 'active' ORDER BY random() LIMIT 1");
	return (defined $pid && $pid =~ /^\d+$/) ? $pid : undef;
}

my $crashes = 0;
for my $i (1 .. $kills)
{
	$checker->start_savers(clients => 4, rate => 150)
	  or die("kill $i: savers did not start");
	$checker->save_burst(500);
	$checker->start_relays(clients => 2)
	  or die("kill $i: relays did not start");
	ok( OutboxTest::poll_until(
			$node, 'postgres',
			'SELECT count(*) > 100 FROM checker.consumed', 't'),
		"kill $i: the relays consume");
	usleep(int(rand(500_000)));
	# (Never signal pid 0: that is our own process group.)
	my $pid = OutboxTest::wait_until(10, \&relay_pid)
	  or die("kill $i: no busy relay backend to kill");
	my $offset = OutboxTest::log_position($node);
	kill('KILL', $pid) or die("kill $i: could not kill relay backend $pid");
	$crashes++
	  if OutboxTest::wait_for_log_line($node,
		qr/all server processes terminated; reinitializing/, $offset)
	  && OutboxTest::poll_until($node, 'postgres', 'SELECT 1', '1');
}
is($crashes, $kills, "$kills relay backends killed, each followed by a crash-restart");

$checker->start_savers(clients => 4, rate => 150) or die('savers did not start');
$checker->start_relays(clients => 2) or die('relays did not start');
ok( OutboxTest::poll_until(
		$node, 'postgres',
		"SELECT count(*) > 200 FROM checker.consumed c JOIN outbox.messages m USING (id) "
		  . "WHERE m.created_at > pg_postmaster_start_time()", 't'),
	'after the last crash the relays consume new messages');
$checker->stop_savers;
ok($checker->wait_drained(60), 'the relays drain everything');
$checker->stop_relays;

my $report = $checker->check(
	"external relays, $kills crashes",
	sources => [$consumer],
	duplicates => 'none');
note(sprintf('%d committed, %d consumed', $report->{committed},
		$report->{sources}{ $consumer->name }{deliveries}));

$node->stop;
done_testing();
