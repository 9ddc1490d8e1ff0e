# 170_patroni.pl -- the relay under Patroni: failover and switchover.
#
# One etcd member and three PostgreSQL members run by Debian's patroni
# (test/t/OutboxPatroni.pm), synchronous_mode on, outbox preloaded on each.
# Savers (test/t/outbox_ha_saver.py) save through whichever member is the
# leader and write down every message whose COMMIT returned ("acknowledged")
# and those whose COMMIT was cut off ("unknown").  Three destinations, each
# watched by a real consumer, never by a status column:
#   default   the http publisher, to a local receiver (path /default/...),
#             topic ha.plain;
#   hook      an http destination, same receiver (path /hook/...), topic
#             ha.routed;
#   ledger    a function destination inserting into app.ledger (with the
#             port of the member that delivered), topic ha.routed.
#
#  (a) kill -9 of the leader's postmaster: Patroni fails over to the
#      synchronous standby (primary_start_timeout 0), the relay resumes
#      there; the old leader rejoins (pg_rewind) as a replica;
#  (b) patronictl switchover to the synchronous standby.
# Then: every acknowledged message reached each of its destinations at least
# once, in per-key order per destination, and nothing else did; every
# duplicate is a message delivered before a failover or switchover and again
# after it (none in steady state); the function destination, whose work
# commits with its position, has none.  Replicas in recovery run no outbox
# process (pg_stat_activity, the postmaster's children) and log no outbox
# WARNING or ERROR.  The time from the kill (and the switchover) to the
# first delivery from the new leader and the duplicates are printed.
#
# Needs patroni and etcd-server: skipped without them, unless
# OUTBOX_REQUIRE_HA or OUTBOX_REQUIRE_BROKERS is set (then a failure).

use strict;
use warnings;

use File::Basename qw(dirname);
use File::Spec;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use OutboxHttp;
use OutboxPatroni;
use OutboxTest;

OutboxPatroni::require_or_skip();

my $srv = OutboxHttp->start;
my $ha = OutboxPatroni->new(
	members => 3,
	parameters => {
		shared_preload_libraries => 'outbox',
		'outbox.databases' => 'postgres',
		'outbox.publisher' => 'http',
		'outbox.http_url' => $srv->url('/default/{topic}'),
		'outbox.poll_interval' => '100ms',
		'outbox.retry_backoff' => '100ms',
		'outbox.retry_backoff_max' => '500ms',
		'outbox.max_retries' => '1000',
	});

########################################################################
# The cluster: the first member bootstraps and gets the schema, the others
# are cloned from it.

my $first = $ha->bootstrap;
my $hook_url = $srv->url('/hook/{topic}');
$first->node->safe_psql(
	'postgres', qq{
CREATE EXTENSION outbox;
CREATE SCHEMA app;
CREATE TABLE app.ledger (
	ord bigserial PRIMARY KEY,
	id uuid NOT NULL,
	key text NOT NULL,
	seq bigint NOT NULL,
	port int NOT NULL,
	at double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp())
);
CREATE FUNCTION app.deliver(m outbox.messages) RETURNS void LANGUAGE sql AS \$\$
	INSERT INTO app.ledger (id, key, seq, port)
	VALUES (m.id, m.key, (convert_from(m.payload, 'UTF8')::jsonb->>'s')::bigint,
		current_setting('port')::int)
\$\$;
SELECT outbox.create_destination('ledger', 'function', '{"function": "app.deliver"}');
SELECT outbox.subscribe('ledger', 'ha.routed');
SELECT outbox.create_destination('hook', 'http', '{"url": "$hook_url"}');
SELECT outbox.subscribe('hook', 'ha.routed');
});
ok(OutboxTest::wait_for_worker($first->node, 'postgres'), 'the leader runs the relay worker');
$ha->start_replicas;
my $leader = $ha->wait_healthy(180);
ok($leader, 'three members: a leader, a synchronous standby, a replica')
  or BAIL_OUT('the Patroni cluster did not come up');
is($leader->name, 'm1', 'the first member leads');

# Log intervals in which a member was a replica: name => [start offset],
# checked when it stops being one (and at the end).
my %replica_since = map { $_->name => 0 } grep { $_ != $leader } $ha->members;
my @log_ranges;    # [member, from, to]

sub replica_ended
{
	my ($m) = @_;
	my $from = delete $replica_since{ $m->name };
	push @log_ranges, [ $m, $from, OutboxTest::log_position($m->node) ] if defined $from;
	return;
}

# Replicas run no outbox process while in recovery.
sub replicas_idle
{
	my ($leader, $when) = @_;
	for my $r (grep { $_ != $leader } $ha->members)
	{
		is( OutboxTest::query_value($r->node, 'postgres',
				"SELECT pg_is_in_recovery(), count(*) FROM pg_stat_activity WHERE backend_type LIKE 'outbox%'"),
			't|0',
			"$when: replica " . $r->name . ' is in recovery and runs no outbox worker');
		is(join(', ', $r->outbox_processes), '', "$when: no outbox process under its postmaster");
	}
	return;
}

########################################################################
# The savers, and the consumers' view.

my $saver = File::Spec->catfile(dirname(__FILE__), 'outbox_ha_saver.py');
my $record = $ha->dir . '/saved.txt';
my $stopfile = $ha->dir . '/stop-savers';
my $saver_log = $ha->dir . '/savers.log';
$ha->spawn('savers', $saver_log, 'python3', $saver, $ha->conninfo, $record, $stopfile,
	2, 4, 20, 'ha.plain', 'ha.routed');

# What the savers wrote down: (acknowledged, unknown), each id => {topic,
# key, seq, t, port}.
sub read_record
{
	my (%ack, %unknown);
	return (\%ack, \%unknown) unless -f $record;
	for my $line (split /\n/, slurp_file($record))
	{
		my ($state, $id, $topic, $key, $seq, $t, $port) = split / /, $line;
		next unless defined $port;
		my $h = $state eq 'ack' ? \%ack : \%unknown;
		$h->{$id} = { topic => $topic, key => $key, seq => $seq, t => $t, port => $port };
	}
	return (\%ack, \%unknown);
}

# Deliveries of each destination, in delivery order: name => [{id, key,
# seq, t, port}].  The ledger is read on $leader.
sub deliveries
{
	my ($leader) = @_;
	my %d = (default => [], hook => [], ledger => []);
	for my $r ($srv->requests)
	{
		my ($dest) = $r->{path} =~ m{^/(default|hook)/} or next;
		my $body = eval { decode_json($r->{body}) } // {};
		push @{ $d{$dest} },
		  { id => $r->{id}, key => $r->{key}, seq => $body->{s}, t => $r->{start} };
	}
	my $rows = OutboxTest::query_value($leader->node, 'postgres',
		'SELECT id, key, seq, port, at FROM app.ledger ORDER BY ord') // '';
	for my $line (split /\n/, $rows)
	{
		my ($id, $key, $seq, $port, $at) = split /\|/, $line;
		push @{ $d{ledger} }, { id => $id, key => $key, seq => $seq, t => $at, port => $port };
	}
	return \%d;
}

my %topic_of = (default => 'ha.plain', hook => 'ha.routed', ledger => 'ha.routed');

# Wait until at least $n more messages were acknowledged than $since, and
# each destination delivered at least one message after time $after.
sub wait_progress
{
	my ($n, $since, $after, $leader) = @_;
	return OutboxTest::wait_until(
		120,
		sub {
			my ($ack) = read_record();
			return 0 unless keys(%$ack) >= $since + $n;
			my $d = deliveries($leader);
			for my $dest (keys %$d)
			{
				return 0 unless grep { $_->{t} > $after } @{ $d->{$dest} };
			}
			return 1;
		});
}

# The first delivery of each destination after time $after (for the ledger:
# by the member $by): name => time, once all three have one.
sub first_deliveries
{
	my ($after, $by) = @_;
	my %first;
	OutboxTest::wait_until(
		120,
		sub {
			my $d = deliveries($by);
			for my $dest (keys %$d)
			{
				my @t = map { $_->{t} }
				  grep { $_->{t} > $after && ($dest ne 'ledger' || $_->{port} == $by->node->port) }
				  @{ $d->{$dest} };
				($first{$dest}) = sort { $a <=> $b } @t if @t;
			}
			return keys(%first) == 3;
		}) or diag('deliveries after the leader change: ' . join(', ', map { "$_ at $first{$_}" } sort keys %first));
	return \%first;
}

# The time of the first save acknowledged by the member $by after time
# $after.
sub first_ack_after
{
	my ($after, $by) = @_;
	my ($ack) = read_record();
	my ($t) = sort { $a <=> $b }
	  grep { $_ > $after }
	  map { $_->{t} } grep { $_->{port} == $by->node->port } values %$ack;
	return $t;
}

my $t0 = time();
ok(wait_progress(200, 0, $t0, $leader), 'savers save through the leader, each destination delivers');
replicas_idle($leader, 'before the failover');

my @events;    # [time, what]

# A leader change from $old to the synchronous standby: $how is 'failover'
# (kill -9 of $old's postmaster; Patroni fails over) or 'switchover'
# (patronictl switchover).  Checks that the relay resumes on the new leader
# and that the old one comes back as a replica running no outbox process,
# prints the times, and returns the new leader.
sub change_leader
{
	my ($how, $old) = @_;
	my ($cand) = map { $ha->member_named($_->{name}) }
	  grep { $_->{role} eq 'sync_standby' } @{ $ha->cluster->{members} };
	my ($acked) = read_record();
	my $n_before = keys %$acked;

	replica_ended($cand);
	my ($t, @pids) =
	  $how eq 'failover' ? $ha->kill_postmaster($old) : $ha->switchover($old, $cand);
	push @events, [ $t, $how ];
	my $t_gone = $ha->wait_gone(60, @pids);
	ok($t_gone, "$how: the old leader's server stopped");
	# from here on the old leader's log is a replica's
	$replica_since{ $old->name } = OutboxTest::log_position($old->node);
	my $new = $ha->wait_healthy(180, not => $old);
	ok($new, "$how: a new leader; the old one streams from it as a replica")
	  or BAIL_OUT("no healthy cluster after the $how");
	is($new->name, $cand->name, "$how: the former synchronous standby leads");
	ok(OutboxTest::wait_for_worker($new->node, 'postgres'), "$how: the new leader runs the relay worker");

	my $first = first_deliveries($t_gone, $new);
	my $t_ack = first_ack_after($t, $new);
	note(sprintf('%s (%s %s, %s takes over): first acknowledged save after %.2f s; '
		  . 'first delivery from the new leader after %.2f s (default, http), %.2f s (hook, http), '
		  . '%.2f s (ledger, function)',
		$how, $how eq 'failover' ? 'kill -9 of the postmaster of' : 'patronictl switchover from',
		$old->name, $new->name, ($t_ack // $t) - $t,
		map { ($first->{$_} // $t) - $t } qw(default hook ledger)));
	ok(defined $first->{default} && defined $first->{hook} && defined $first->{ledger},
		"$how: the relay resumed on the new leader for every destination");
	note('pg_rewind ran for the old leader') if $old->patroni_log =~ /pg_rewind/i;

	replicas_idle($new, "after the $how");
	ok(wait_progress(200, $n_before, time(), $new), "$how: saving and delivering go on");
	return $new;
}

# (a) kill -9 of the leader's postmaster; (b) a graceful switchover.
$leader = change_leader('failover', $leader);
$leader = change_leader('switchover', $leader);

########################################################################
# Stop saving; everything acknowledged must arrive.

open my $fh, '>', $stopfile or die "cannot create $stopfile: $!";
close $fh;
is($ha->wait_exit('savers', 60), 0, 'the savers stopped cleanly') or diag(slurp_file($saver_log));

my ($ack, $unknown) = read_record();
note(sprintf('%d messages acknowledged, %d with an unknown outcome (COMMIT cut off)',
	scalar keys %$ack, scalar keys %$unknown));

my $d;
ok( OutboxTest::wait_until(
		180,
		sub {
			$d = deliveries($leader);
			for my $dest (keys %$d)
			{
				my %seen = map { $_->{id} => 1 } @{ $d->{$dest} };
				return 0 if grep { $ack->{$_}{topic} eq $topic_of{$dest} && !$seen{$_} } keys %$ack;
			}
			return 1;
		}),
	'every acknowledged message reached its destinations');

for my $dest (qw(default hook ledger))
{
	my $topic = $topic_of{$dest};
	my (%first, %last_seq, @strangers, @wrong, @order, @unexplained, %dups_after);
	my $dups = 0;
	for my $x (@{ $d->{$dest} })
	{
		if (defined $first{ $x->{id} })
		{
			$dups++;
			# a redelivery must follow a leader change that came after the
			# first delivery
			my @after = grep { $_->[0] > $first{ $x->{id} } - 1 && $_->[0] < $x->{t} } @events;
			push @unexplained, $x->{id} unless @after;
			$dups_after{ $after[-1][1] }++ if @after;
			next;
		}
		$first{ $x->{id} } = $x->{t};
		my $m = $ack->{ $x->{id} } // $unknown->{ $x->{id} };
		if (!$m || $m->{topic} ne $topic)
		{
			push @strangers, $x->{id};
			next;
		}
		push @wrong, $x->{id} unless $x->{key} eq $m->{key} && $x->{seq} == $m->{seq};
		push @order, "$x->{id} ($m->{key} seq $m->{seq} after $last_seq{$m->{key}})"
		  if defined $last_seq{ $m->{key} } && $m->{seq} <= $last_seq{ $m->{key} };
		$last_seq{ $m->{key} } = $m->{seq};
	}
	my @missing = grep { $ack->{$_}{topic} eq $topic && !defined $first{$_} } keys %$ack;
	is(scalar @missing, 0, "$dest: every acknowledged message was delivered")
	  or diag("missing: @missing[0 .. ($#missing < 9 ? $#missing : 9)]");
	is(scalar @strangers, 0, "$dest: nothing was delivered that was not saved") or diag("@strangers");
	is(scalar @wrong, 0, "$dest: with its key and payload") or diag("@wrong");
	is(scalar @order, 0, "$dest: in per-key order") or diag(join "\n", @order[0 .. ($#order < 9 ? $#order : 9)]);
	is(scalar @unexplained, 0, "$dest: no duplicate outside a leader change") or diag("@unexplained");
	is($dups, 0, "$dest: no duplicate: the function's work commits with the destination's position")
	  if $dest eq 'ledger';
	note(sprintf('%s: %d deliveries of %d messages, %d duplicates (%s; %d acknowledged, %d of unknown outcome delivered)',
		$dest, scalar @{ $d->{$dest} }, scalar keys %first, $dups,
		join(', ', map { "$_: " . ($dups_after{$_} // 0) } map { $_->[1] } @events),
		scalar(grep { $ack->{$_}{topic} eq $topic } keys %$ack),
		scalar(grep { $unknown->{$_} } keys %first)));
}

########################################################################
# Replicas logged nothing from outbox while they were replicas.

replica_ended($_) for grep { defined $replica_since{ $_->name } } $ha->members;
for my $range (@log_ranges)
{
	my ($m, $from, $to) = @$range;
	my $log = substr(slurp_file($m->node->logfile), $from, $to - $from);
	my @lines = grep { /outbox/i && /\b(WARNING|ERROR|FATAL|PANIC):/ } split /\n/, $log;
	is(scalar @lines, 0, $m->name . ": no outbox warning or error in its log while a replica")
	  or diag(join "\n", @lines[0 .. ($#lines < 9 ? $#lines : 9)]);
}

$ha->stop;
done_testing();
