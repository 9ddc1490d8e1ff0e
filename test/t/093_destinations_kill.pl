
# 093_destinations_kill.pl -- kill -9 of destination workers, through the
# end-to-end checker extended per destination.
#
# Three destinations of the checker's topic, each with its own worker: two
# http destinations (receivers A and B, which fail one request in ten at
# random, so deliveries go through retries and delivery rows) and a notify
# destination on a channel of its own.  Savers (OutboxChecker: save(), the
# batch path, triggers, rollbacks) run throughout, with backlogs in one
# transaction; the destination workers are killed with SIGKILL, one after
# the other, each in the middle of a drain (every kill crash-restarts the
# cluster).  Then, per destination:
#  - 0 lost: every committed message reached it (the receivers keep
#    everything; the listener what was published after its last LISTEN)
#    and its delivery is processed;
#  - nothing rolled back was delivered anywhere;
#  - per-key order per destination within each epoch (between crashes);
#    messages published again after a crash are counted, allowed only
#    across epochs;
# and every message is processed once all three have it.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxChecker;
use OutboxDestinations;
use OutboxHttp;
use OutboxTest;

my $rounds = 6;

my $srv_a = OutboxHttp->start;
my $srv_b = OutboxHttp->start;
$srv_a->plan_random_failures('*', 0.1);
$srv_b->plan_random_failures('*', 0.1);

my $node = OutboxTest::new_node(
	'dest_kill', conf => q{
outbox.poll_interval = '100ms'
outbox.batch_size = 20
outbox.retry_backoff = '50ms'
outbox.retry_backoff_max = '200ms'
outbox.max_retries = 1000
log_statement = 'none'
});

my $checker = OutboxChecker->new($node, topic => 'chk', nkeys => 16);
$checker->install;

my ($url_a, $url_b) = ($srv_a->url('/a/{topic}'), $srv_b->url('/b/{topic}'));
$node->safe_psql('postgres', qq{
SELECT outbox.create_destination('hook_a', 'http', '{"url": "$url_a", "max_concurrency": 8}');
SELECT outbox.create_destination('hook_b', 'http', '{"url": "$url_b", "max_concurrency": 8}');
SELECT outbox.create_destination('notes', 'notify', '{"channel": "chk_notes"}');
SELECT outbox.subscribe('hook_a', 'chk');
SELECT outbox.subscribe('hook_b', 'chk');
SELECT outbox.subscribe('notes', 'chk');
});
my @names = qw(hook_a hook_b notes);
OutboxDestinations::wait_worker($node, $_) or die("no worker for $_") for @names;

my $source_a = OutboxDestinations::HttpSource->new($srv_a, name => 'receiver A', topic => 'chk');
my $source_b = OutboxDestinations::HttpSource->new($srv_b, name => 'receiver B', topic => 'chk');
my $listener = $checker->listener(channel => 'chk_notes', destination => 'notes',
	name => 'listener of the notify destination');

# Deliveries of each destination processed so far.
sub delivered
{
	my ($name) = @_;
	return OutboxTest::query_value($node, 'postgres',
		"SELECT count(*) FROM outbox.deliveries WHERE destination = '$name' AND status = 'processed'");
}

my ($kills, $mid_drain) = (0, 0);
my @unfinished_at_kill;
for my $round (1 .. $rounds)
{
	my $victim = $names[ ($round - 1) % 3 ];
	$checker->start_savers(clients => 4, rate => 100)
	  or die("round $round: savers did not start");
	my $before = delivered($victim) // 0;
	my $burst = 300 + int(rand(300));
	$checker->save_burst($burst);

	# Kill once the victim delivered part of the burst: in the middle of a drain.
	my $target = $before + 1 + int(rand($burst * 0.5));
	OutboxTest::wait_until(30, sub { $listener->poll; (delivered($victim) // 0) >= $target });
	my $pid = OutboxDestinations::wait_worker($node, $victim) or die("round $round: no worker for $victim");
	my $unfinished = OutboxTest::query_value($node, 'postgres',
		"SELECT count(*) FROM outbox.deliveries WHERE destination = '$victim' AND status <> 'processed'") // -1;
	push @unfinished_at_kill, "$victim:$unfinished";
	$mid_drain++ if $unfinished > 0;

	my $offset = OutboxTest::log_position($node);
	kill('KILL', $pid) or die("round $round: could not signal ${victim}'s worker $pid");
	my $t = time();
	$source_a->crashed_at($t);
	$source_b->crashed_at($t);
	OutboxTest::wait_for_log_line($node, qr/all server processes terminated; reinitializing/, $offset)
	  or die("round $round: no crash-restart after killing ${victim}'s worker");
	$kills++;
	OutboxDestinations::wait_worker($node, $_) or die("round $round: no worker for $_ after the restart")
	  for @names;
	$listener->wait_connected($OutboxTest::TIMEOUT)
	  or die("round $round: the listener could not connect again");
}
is($kills, $rounds, "$rounds destination workers killed (each of the three twice), each a crash-restart");
note("unfinished deliveries of the victim at each kill: @unfinished_at_kill");
cmp_ok($mid_drain, '>=', $rounds / 2, "most kills hit a destination with deliveries to make ($mid_drain of $rounds)");

# A last stretch with the listener connected, then drain.
$checker->start_savers(clients => 4, rate => 100) or die('savers did not start after the last kill');
$checker->save_burst(300);
ok($listener->wait_for($OutboxTest::TIMEOUT, sub { @{ $_[0] } > 0 && $_[0][-1]{epoch} == $rounds + 1 }),
	'the listener receives after the last crash');
$checker->stop_savers;
ok($checker->wait_drained(180, $listener), 'everything drains after the last kill');
is($node->safe_psql('postgres', q{SELECT count(*) FROM outbox.deliveries WHERE status <> 'processed'}), '0',
	'no delivery is left unfinished');

my $report = $checker->check(
	"after $rounds kills of destination workers",
	sources => [ $source_a, $source_b, $listener ],
	duplicates => 'crash',
	destinations => \@names);
for my $s ($source_a, $source_b, $listener)
{
	my $r = $report->{sources}{ $s->name };
	note(sprintf('%s: %d deliveries of %d messages over %d epochs, %d delivered more than once',
			$s->name, $r->{deliveries}, $r->{distinct}, $r->{epochs}, $r->{duplicated_messages}));
}

$listener->quit;
$node->stop;
$srv_a->stop;
$srv_b->stop;
done_testing();
