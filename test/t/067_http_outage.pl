
# 067_http_outage.pl -- the http publisher through a webhook outage, with
# savers committing and rolling back all along, checked end to end.
#
# The webhook receiver (OutboxHttp.pm) goes through four phases while
# OutboxChecker's savers run (save(), the batch path, triggers, 1-4
# messages per transaction, a quarter rolled back):
#   1. healthy;
#   2. down: connections refused;
#   3. up, but answering 500;
#   4. hanging: answers come after 6 s, past outbox.http_timeout (3 s);
# and then healthy again.  In each bad phase:
#  - messages wait (pending, with failed attempts and the receiver's error
#    as last_error), the gaps between the attempts of a message follow the
#    backoff;
#  - the worker answers SIGHUP (a changed application_name shows in
#    pg_stat_activity) and, in the last phase, SIGHUP and SIGTERM while its
#    requests hang (then past a worker timeout of 1 min): in the middle of
#    the batch, which could not have ended by itself.
# In the end the checker must pass with the receiver as the source: every
# committed message received with a 2xx answer, nothing rolled back
# received, per key in order; a message may be received twice only around
# the SIGTERM (it ended a batch whose confirmations were not yet marked).

use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxChecker;
use OutboxHttp;
use OutboxTest;

my $srv = OutboxHttp->start;
my $url = $srv->url('/hook/{topic}');

my $node = OutboxTest::new_node(
	'http_outage', conf => qq{
outbox.publisher = 'http'
outbox.http_url = '$url'
outbox.http_timeout = '3s'
outbox.poll_interval = '100ms'
outbox.batch_size = 20
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '800ms'
outbox.max_retries = 1000000
log_statement = 'none'
});

my $checker = OutboxChecker->new($node, topic => 'chk', nkeys => 16);
$checker->install;

# The receiver as a checker source: what it answered with a 2xx, in the
# order the requests came.  Its records are collected before it stops (it
# starts again with no records).  A request
# answered after outbox.http_timeout was given up by the worker: it is no
# delivery.  Deliveries after the SIGTERM are a new epoch.
{

	package HttpSource;

	sub new
	{
		my ($class, $srv) = @_;
		return bless { srv => $srv, kept => [], epoch_start => [] }, $class;
	}
	sub name { return 'webhook receiver' }
	sub ordered { return 1 }
	sub epochs { return 1 + scalar @{ $_[0]->{epoch_start} } }
	sub completeness { return 'every committed message' }
	sub new_epoch { push @{ $_[0]->{epoch_start} }, Time::HiRes::time(); return }

	# Keep what the receiver has now (call before it restarts).
	sub keep
	{
		my ($self) = @_;
		push @{ $self->{kept} }, $self->{srv}->requests;
		return;
	}

	sub deliveries
	{
		my ($self) = @_;
		my @d;
		my @all = ($self->{srv}{running} ? $self->{srv}->requests : ());
		# In the order the requests came: the worker sends a key's next
		# message only once the previous one was answered.
		for my $r (sort { $a->{start} <=> $b->{start} } @{ $self->{kept} }, @all)
		{
			next unless OutboxHttp::answered_in_time($r, 2.7);
			my $p = JSON::PP::decode_json($r->{body});
			my $epoch = 1 + grep { $_ <= $r->{start} } @{ $self->{epoch_start} };
			push @d,
			  {
				id => $r->{id},
				key => $r->{key},
				token => $p->{t},
				seq => $p->{s},
				epoch => $epoch
			  };
		}
		return \@d;
	}

	sub required_ids
	{
		my ($self, $checker, $ledger, $statuses) = @_;
		return map { [ $_, undef ] } keys %{ $ledger->{by_id} };
	}
}
my $source = HttpSource->new($srv);

# The worker answers SIGHUP (OutboxTest::reload_applied: a new
# application_name shows in pg_stat_activity).  With mid_batch, while it
# is still publishing the batch it was publishing before the reload: a
# batch that cannot end by itself meanwhile (the worker's timeout is then
# 1 min) proves that it did not wait for the batch's end.  If the batch it
# saw ended first anyway (an older, shorter one), another try.
sub answers_sighup
{
	my ($phase, %opt) = @_;
	my ($ok, $same_batch);
	for my $try (1 .. ($opt{mid_batch} ? 5 : 1))
	{
		($ok, $same_batch) = OutboxTest::reload_applied($node, mid_batch => $opt{mid_batch});
		last if !$opt{mid_batch} || !$ok || $same_batch;
	}
	ok($ok, "$phase: the worker applies a reload");
	ok($same_batch, "$phase: in the middle of the batch it was publishing")
	  if $opt{mid_batch};
	return;
}

# Messages of the checker still waiting, with failed attempts whose
# last_error matches $re.
sub waiting_with_error
{
	my ($re) = @_;
	my $out = $node->safe_psql('postgres',
		"SELECT last_error FROM outbox.messages WHERE topic = 'chk' "
		  . "AND status = 'pending' AND retries > 0 AND last_error IS NOT NULL");
	return scalar grep { /$re/ } split /\n/, $out;
}

# Every phase lets the savers commit this many more messages.
sub committed
{
	return $node->safe_psql('postgres', 'SELECT count(*) FROM checker.ledger');
}

sub wait_more_committed
{
	my ($n) = @_;
	my $target = committed() + $n;
	return OutboxTest::wait_until(60, sub { committed() >= $target });
}

$checker->start_savers(clients => 4, rate => 100) or die 'savers did not start';

# 1. Healthy.
ok($srv->wait_requests(60, sub { (grep { $_->{status} == 200 } @_) >= 200 }, topic => 'chk'),
	'healthy: 200 messages delivered');
answers_sighup('healthy');

# 2. Down.  First no more 2xx answers, and none in flight, so that the
# records of all 2xx answers are kept when the receiver stops.
$srv->plan('chk', { status => 503 });
ok($srv->wait_requests(30, sub { (grep { $_->{status} == 503 } @_) > 0 }, topic => 'chk')
	  && OutboxTest::wait_until(30, sub { $srv->stats->{inflight} == 0 }),
	'down: the receiver answers 503 before it goes down');
$source->keep;
$srv->stop;
ok(wait_more_committed(100), 'down: the savers go on committing');
ok( OutboxTest::wait_until(30, sub { waiting_with_error(qr/onnect/) >= 10 }),
	'down: messages wait, with the connection error as last_error');
answers_sighup('down');

# 3. Answering 500.
$srv->restart;
$srv->plan('chk', { status => 500, body => 'under maintenance' });
ok( OutboxTest::wait_until(30, sub { waiting_with_error(qr/^HTTP 500: under maintenance/) >= 10 }),
	'500: messages wait, with "HTTP 500: <body>" as last_error');
ok( OutboxTest::wait_until(
		30,
		sub {
			my %n;
			$n{ $_->{id} }++ for $srv->requests(topic => 'chk');
			return (grep { $_ >= 4 } values %n) >= 5;
		}),
	'500: messages are attempted again and again');
ok(wait_more_committed(100), '500: the savers go on committing');
answers_sighup('500');

# The gaps between the attempts of one message follow the backoff: at least
# the lower half of min(100 ms * 2^(n-1), 800 ms) (equal jitter).
my (%attempts, $gaps, @short);
push @{ $attempts{ $_->{id} } }, $_->{start} for $srv->requests(topic => 'chk');
for my $id (keys %attempts)
{
	my @t = sort { $a <=> $b } @{ $attempts{$id} };
	for my $n (1 .. $#t)
	{
		my $min_gap = 0.5 * ($n >= 4 ? 0.8 : 0.1 * 2**($n - 1));
		$gaps++;
		push @short, sprintf('%s attempt %d after %.3f s', $id, $n + 1, $t[$n] - $t[ $n - 1 ])
		  if $t[$n] - $t[ $n - 1 ] < $min_gap - 0.02;
	}
}
cmp_ok($gaps, '>=', 20, "500: messages were attempted again ($gaps retries seen)");
is(scalar @short, 0, '500: no retry came before its backoff')
  or diag("@short[0 .. ($#short < 9 ? $#short : 9)]");

# 4. Hanging past outbox.http_timeout.
$srv->plan('chk', { status => 200, delay_ms => 6000 });
ok($srv->wait_inflight(5, 30), 'hanging: requests hang');
ok( OutboxTest::wait_until(30, sub { waiting_with_error(qr/[Tt]imeout|timed out/) >= 5 }),
	'hanging: messages wait, with the timeout as last_error');
# Then requests that hang past the worker's own timeout, now 1 min: a
# batch in flight cannot end by itself during the checks below, so the
# worker answering SIGHUP and SIGTERM while its requests hang is proved by
# the batch, not by a clock.
OutboxTest::set_conf($node, 'outbox.http_timeout' => '1min');
$srv->plan('chk', { status => 200, delay_ms => 120_000 });
answers_sighup('hanging', mid_batch => 1);
ok($srv->wait_inflight(5, 30), 'hanging: requests hang again');
my $pid = OutboxTest::worker_pid($node, 'postgres');
$source->new_epoch;
$srv->plan('chk', { status => 200 });    # for the next worker
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE pid = $pid", '0', 45),
	'hanging: SIGTERM ends the worker while its requests hang (before its 1 min timeout)');
ok(OutboxTest::wait_for_worker($node, 'postgres', not_pid => $pid), 'a new worker starts');
OutboxTest::set_conf($node, 'outbox.http_timeout' => '3s');

# Healthy again.
$srv->plan('chk', { status => 200 });
ok(wait_more_committed(50), 'healthy again: the savers go on committing');
$checker->stop_savers;
ok($checker->wait_drained(120), 'everything drains once the receiver is healthy');

my $report = $checker->check('after the outage', sources => [$source], duplicates => 'crash');

my $r = $report->{sources}{ $source->name };
note(sprintf('%d committed, ~%d rolled back; %d deliveries, %d messages delivered twice',
		$report->{committed}, $report->{rolled_back}, $r->{deliveries}, $r->{duplicated_messages}));

$node->stop;
$srv->stop;
done_testing();
