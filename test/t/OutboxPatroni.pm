# OutboxPatroni.pm -- a Patroni cluster for the high-availability TAP tests:
# one etcd member and N PostgreSQL members run by Debian's patroni, all on
# loopback, in the test's temporary directories, started and stopped by the
# test itself (never the packages' services).
#
#   OutboxPatroni::require_or_skip();          # skip (or fail) without patroni/etcd
#   my $ha = OutboxPatroni->new(members => 3, parameters => { 'outbox.publisher' => 'http', ... });
#   my $first = $ha->bootstrap;                 # the first member, leader
#   $first->node->safe_psql('postgres', 'CREATE EXTENSION outbox');
#   $ha->start_replicas;
#   my $leader = $ha->wait_healthy;             # leader + sync standby + replicas streaming
#   my $t = $ha->kill_postmaster($leader);      # kill -9; Patroni fails over
#   $ha->switchover($leader, $candidate);       # patronictl switchover
#
# Each member is an OutboxPatroni::Member: name, node (a
# PostgreSQL::Test::Cluster that is never init'ed or started by the
# framework: its port, socket directory, data directory and log file are
# what Patroni is told to use, so safe_psql, OutboxTest's polls and log
# helpers work on it), api_port, patroni_pid.  Everything started here is
# stopped in an END block (also when the test dies), before the framework's
# own END block runs.  Every wait polls a condition with a timeout.

package OutboxPatroni;

use strict;
use warnings;

use Carp;
use File::Basename qw(dirname basename);
use HTTP::Tiny;
use JSON::PP;
use POSIX qw(WNOHANG);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use OutboxTest;

my @clusters;    # every OutboxPatroni made, for the END block

=pod

=head1 FUNCTIONS

=over

=item require_or_skip()

Skip the whole test when patroni, patronictl or etcd is missing; with
OUTBOX_REQUIRE_HA or OUTBOX_REQUIRE_BROKERS set, fail instead.

=cut

sub require_or_skip
{
	for my $cmd (qw(patroni patronictl etcd))
	{
		next if grep { -x "$_/$cmd" } split /:/, ($ENV{PATH} // '');
		local $ENV{OUTBOX_REQUIRE_BROKERS} = 1 if $ENV{OUTBOX_REQUIRE_HA};
		OutboxTest::missing(
			"$cmd is not installed (apt-get install patroni etcd-server; scripts/packages.sh ensure test)");
	}
	return;
}

=pod

=item OutboxPatroni->new(%options)

Start etcd and write each member's configuration.  Options: members (3),
parameters (a hash of postgresql.conf settings for every member, kept in
the DCS as a real deployment would), scope ('ha': also the cluster_name in
the servers' process titles).

=cut

sub new
{
	my ($class, %opt) = @_;
	my $dir = PostgreSQL::Test::Utils::tempdir('patroni');
	my $self = bless {
		dir => $dir,
		scope => $opt{scope} // 'ha',
		parameters => $opt{parameters} // {},
		members => [],
		procs => {},
		http => HTTP::Tiny->new(timeout => 5),
		json => JSON::PP->new->utf8,
	}, $class;
	push @clusters, $self;

	my $bindir = `$ENV{PG_CONFIG} --bindir`;
	chomp $bindir;
	croak "pg_config --bindir failed" unless $bindir && -x "$bindir/postgres";
	$self->{bindir} = $bindir;

	$self->start_etcd;
	for my $i (1 .. ($opt{members} // 3))
	{
		push @{ $self->{members} }, OutboxPatroni::Member->new($self, "m$i");
	}
	return $self;
}

sub members { return @{ $_[0]->{members} } }
sub dir { return $_[0]->{dir} }

=pod

=item $ha->conninfo(%extra)

A libpq connection string naming every member, for clients that must reach
the leader: target_session_attrs=read-write.

=cut

sub conninfo
{
	my ($self) = @_;
	my @m = $self->members;
	return
	    'host='
	  . join(',', map { '127.0.0.1' } @m)
	  . ' port='
	  . join(',', map { $_->node->port } @m)
	  . ' dbname=postgres user=postgres target_session_attrs=read-write';
}

=pod

=item $ha->spawn($what, $log, @cmd)

Start a program in a session of its own (so the whole group can be
killed), its output appended to $log; returns its pid.  Whatever is still
running at the end is killed ($ha->stop, the END block).

=item $ha->wait_exit($what, $timeout)

Wait until the program $what ends: its exit status ($?), or undef after
$timeout seconds.

=cut

sub spawn
{
	my ($self, $what, $log, @cmd) = @_;
	my $pid = fork;
	croak "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		POSIX::setsid();
		open STDIN, '<', '/dev/null';
		open STDOUT, '>>', $log or POSIX::_exit(127);
		open STDERR, '>&', \*STDOUT;
		exec @cmd or POSIX::_exit(127);
	}
	$self->{procs}{$what} = $pid;
	return $pid;
}

sub wait_exit
{
	my ($self, $what, $timeout) = @_;
	my $pid = $self->{procs}{$what} // croak "$what is not running";
	my $status;
	OutboxTest::wait_until(
		$timeout,
		sub {
			return 0 unless waitpid($pid, WNOHANG) == $pid;
			$status = $?;
			return 1;
		}) or return undef;
	delete $self->{procs}{$what};
	return $status;
}

# Stop what spawn() started as $what: SIGTERM (after $grace seconds, or at
# once when $grace is 0, SIGKILL to its process group), then reap it.
sub reap
{
	my ($self, $what, $grace) = @_;
	my $pid = delete $self->{procs}{$what};
	return unless $pid;
	kill 'TERM', $pid if $grace;
	my $deadline = time() + ($grace // 0);
	while (time() < $deadline)
	{
		return if waitpid($pid, WNOHANG) == $pid;
		usleep(50_000);
	}
	kill 'KILL', -$pid;
	kill 'KILL', $pid;
	waitpid($pid, 0);
	return;
}

sub get_json
{
	my ($self, $url) = @_;
	my $res = $self->{http}->get($url);
	return undef unless $res->{success};
	return eval { $self->{json}->decode($res->{content}) };
}

sub start_etcd
{
	my ($self) = @_;
	my $client = PostgreSQL::Test::Cluster::get_free_port();
	my $peer = PostgreSQL::Test::Cluster::get_free_port();
	$self->{etcd_port} = $client;
	$self->spawn(
		'etcd', "$self->{dir}/etcd.log", 'etcd',
		'--name' => 'outbox-test',
		'--data-dir' => "$self->{dir}/etcd",
		'--listen-client-urls' => "http://127.0.0.1:$client",
		'--advertise-client-urls' => "http://127.0.0.1:$client",
		'--listen-peer-urls' => "http://127.0.0.1:$peer",
		'--initial-advertise-peer-urls' => "http://127.0.0.1:$peer",
		'--initial-cluster' => "outbox-test=http://127.0.0.1:$peer",
		'--initial-cluster-state' => 'new');
	OutboxTest::wait_until(
		$OutboxTest::TIMEOUT,
		sub {
			my $h = $self->get_json("http://127.0.0.1:$client/health");
			return $h && ($h->{health} // '') eq 'true';
		}) or croak "etcd did not start: " . slurp_file("$self->{dir}/etcd.log");
	return;
}

=pod

=item $ha->bootstrap

Start the first member and wait until it leads a running primary; returns
it.

=item $ha->start_replicas

Start the other members (Patroni clones them from the leader with
pg_basebackup).

=cut

sub bootstrap
{
	my ($self) = @_;
	my $first = $self->{members}[0];
	$first->start;
	OutboxTest::wait_until(
		120,
		sub {
			croak "member m1 ended: " . $first->patroni_log unless $first->running;
			my $s = $first->status;
			return
			     $s
			  && ($s->{role} // '') =~ /^(master|primary)$/
			  && ($s->{state} // '') eq 'running'
			  && (OutboxTest::query_value($first->node, 'postgres', 'SELECT pg_is_in_recovery()') // '')
			  eq 'f';
		}) or croak "member m1 did not bootstrap: " . $first->patroni_log;
	return $first;
}

sub start_replicas
{
	my ($self) = @_;
	$_->start for @{ $self->{members} }[ 1 .. $#{ $self->{members} } ];
	return;
}

=pod

=item $ha->cluster

Patroni's view of the cluster (GET /cluster of the first member that
answers), or undef.

=cut

sub cluster
{
	my ($self) = @_;
	for my $m ($self->members)
	{
		next unless $m->running;
		my $c = $self->get_json('http://127.0.0.1:' . $m->api_port . '/cluster');
		return $c if $c;
	}
	return undef;
}

sub member_named
{
	my ($self, $name) = @_;
	my ($m) = grep { $_->name eq $name } $self->members;
	return $m;
}

=pod

=item $ha->wait_healthy($timeout, %options)

Wait until every member runs, one leads a primary, one is the synchronous
standby (pg_stat_replication on the leader says "sync") and every other
streams from the leader; returns the leader, or undef (with a diagnostic)
after $timeout seconds.  Option not => a member that must not be the
leader.

=cut

sub wait_healthy
{
	my ($self, $timeout, %opt) = @_;
	my $n = scalar $self->members;
	my ($leader, $last);
	OutboxTest::wait_until(
		$timeout // 120,
		sub {
			$leader = undef;
			my $c = $self->cluster or return 0;
			$last = $c;
			my @m = @{ $c->{members} // [] };
			return 0 unless @m == $n;
			return 0 if grep { ($_->{state} // '') !~ /^(running|streaming)$/ } @m;
			my ($l) = grep { $_->{role} eq 'leader' } @m;
			return 0 unless $l && grep { $_->{role} eq 'sync_standby' } @m;
			return 0 if $opt{not} && $l->{name} eq $opt{not}->name;
			my $lm = $self->member_named($l->{name});
			my $rep = OutboxTest::query_value($lm->node, 'postgres',
				"SELECT pg_is_in_recovery(), count(*), count(*) FILTER (WHERE sync_state = 'sync') "
				  . "FROM pg_stat_replication WHERE state = 'streaming'");
			return 0 unless defined $rep && $rep eq 'f|' . ($n - 1) . '|1';
			for my $r (grep { $_ != $lm } $self->members)
			{
				return 0
				  unless (OutboxTest::query_value($r->node, 'postgres',
						"SELECT pg_is_in_recovery() AND EXISTS (SELECT FROM pg_stat_wal_receiver WHERE status = 'streaming')")
					// '') eq 't';
			}
			$leader = $lm;
			return 1;
		});
	diag('the cluster did not become healthy; last seen: '
		  . ($last ? JSON::PP->new->canonical->encode($last) : '(no member answered)'))
	  unless $leader;
	return $leader;
}

=pod

=item $ha->kill_postmaster($member)

kill -9 the member's postmaster.  Returns the time of the kill and the pids
of the postmaster and its children then (to wait until they are gone:
$ha->wait_gone(@pids)).

=item $ha->switchover($from, $to)

patronictl switchover from the leader $from to $to; returns the time it
was asked and the pids of $from's postmaster and its children.

=item $ha->wait_gone($timeout, @pids)

Wait until none of the processes runs any more; returns the time.

=cut

sub kill_postmaster
{
	my ($self, $m) = @_;
	my @pids = $m->server_pids or croak $m->name . ' has no postmaster';
	my $t = time();
	kill 'KILL', $pids[0];
	return ($t, @pids);
}

sub switchover
{
	my ($self, $from, $to) = @_;
	my @pids = $from->server_pids;
	my $t = time();
	my $out = `patronictl -c ${\ $from->config_file} switchover --leader ${\ $from->name} --candidate ${\ $to->name} --force $self->{scope} 2>&1`;
	croak "patronictl switchover failed: $out" if $?;
	note("patronictl switchover: $out");
	return ($t, @pids);
}

sub wait_gone
{
	my ($self, $timeout, @pids) = @_;
	OutboxTest::wait_until($timeout, sub { !grep { kill 0, $_ } @pids })
	  or return undef;
	return time();
}

=pod

=item $ha->stop

Stop every member (Patroni, then its postmaster: immediate), then etcd
and whatever else spawn() started.

=cut

sub stop
{
	my ($self) = @_;
	$_->stop for $self->members;
	$self->reap($_, 0) for keys %{ $self->{procs} };
	return;
}

END
{
	my $exit = $?;
	for my $c (@clusters)
	{
		eval { $c->stop };
	}
	$? = $exit;
}

package OutboxPatroni::Member;

use strict;
use warnings;

use Carp;
use File::Basename qw(dirname basename);
use POSIX qw(WNOHANG);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;

# A member: its node (the framework picks its port and directories) and its
# Patroni configuration.
sub new
{
	my ($class, $ha, $name) = @_;
	my $self = bless {
		ha => $ha,
		name => $name,
		node => PostgreSQL::Test::Cluster->new($name),
		api_port => PostgreSQL::Test::Cluster::get_free_port(),
	}, $class;
	$self->{config_file} = "$ha->{dir}/$name.yml";
	$self->write_config;
	return $self;
}

sub name { return $_[0]->{name} }
sub node { return $_[0]->{node} }
sub api_port { return $_[0]->{api_port} }
sub config_file { return $_[0]->{config_file} }
sub patroni_log_file { return "$_[0]->{ha}{dir}/$_[0]->{name}.patroni.log" }
sub patroni_log { return -f $_[0]->patroni_log_file ? slurp_file($_[0]->patroni_log_file) : '' }

# Whether its Patroni runs (reaping it when it ended).
sub running
{
	my ($self) = @_;
	my $pid = $self->{ha}{procs}{ $self->{name} } // return 0;
	return 1 unless waitpid($pid, WNOHANG) == $pid;
	delete $self->{ha}{procs}{ $self->{name} };
	return 0;
}

# A YAML scalar: single-quoted.
sub yaml_quote
{
	my ($v) = @_;
	$v =~ s/'/''/g;
	return "'$v'";
}

# The member's Patroni configuration (README's "High availability" shows it
# trimmed): etcd3 on loopback, synchronous_mode, fail over at once when the
# primary crashes (primary_start_timeout 0), pg_rewind for the old primary,
# trust on loopback; the settings every member shares (outbox's included)
# live in the DCS, the member's own (its socket directory, its log file) in
# its file.
sub write_config
{
	my ($self) = @_;
	my $ha = $self->{ha};
	my $node = $self->{node};
	my $shared = join '',
	  map { "        $_: " . yaml_quote($ha->{parameters}{$_}) . "\n" }
	  sort keys %{ $ha->{parameters} };
	my $logfile = $node->logfile;
	my ($logdir, $logname) = (dirname($logfile), basename($logfile));
	my $port = $node->port;
	my $api = $self->{api_port};
	my $etcd = $ha->{etcd_port};
	my $text = <<"EOF";
scope: $ha->{scope}
namespace: /outbox-test/
name: $self->{name}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:$api
  connect_address: 127.0.0.1:$api
etcd3:
  host: 127.0.0.1:$etcd
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 1
    retry_timeout: 5
    maximum_lag_on_failover: 1048576
    primary_start_timeout: 0
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        max_worker_processes: 16
        max_wal_senders: 10
        max_replication_slots: 10
        hot_standby: 'on'
        wal_level: replica
$shared  initdb:
  - encoding: UTF8
  - data-checksums
postgresql:
  listen: 127.0.0.1:$port
  connect_address: 127.0.0.1:$port
  use_unix_socket: true
  data_dir: ${\ $node->data_dir}
  bin_dir: $ha->{bindir}
  pgpass: $ha->{dir}/$self->{name}.pgpass
  authentication:
    superuser:
      username: postgres
      password: patroni-superuser
    replication:
      username: replicator
      password: patroni-replication
    rewind:
      username: rewinder
      password: patroni-rewind
  pg_hba:
  - local all all trust
  - local replication all trust
  - host all all 127.0.0.1/32 trust
  - host replication all 127.0.0.1/32 trust
  parameters:
    unix_socket_directories: ${\ yaml_quote($node->host)}
    logging_collector: 'on'
    log_directory: ${\ yaml_quote($logdir)}
    log_filename: ${\ yaml_quote($logname)}
    log_line_prefix: '%m [%p] %q%a '
EOF
	open my $fh, '>', $self->{config_file} or croak "cannot write $self->{config_file}: $!";
	print $fh $text;
	close $fh;
	return;
}

sub start
{
	my ($self) = @_;
	$self->{ha}->spawn($self->{name}, $self->patroni_log_file, 'patroni', $self->{config_file});
	return;
}

# Patroni's view of this member (GET /patroni), or undef.
sub status
{
	my ($self) = @_;
	return $self->{ha}->get_json("http://127.0.0.1:$self->{api_port}/patroni");
}

# The pids of the postmaster (first) and its children, or () when none runs.
sub server_pids
{
	my ($self) = @_;
	my $pidfile = $self->{node}->data_dir . '/postmaster.pid';
	return () unless -f $pidfile;
	my ($pm) = split /\n/, slurp_file($pidfile);
	return () unless $pm && $pm =~ /^\d+$/ && kill 0, $pm;
	my @children;
	for my $stat (glob '/proc/[0-9]*/stat')
	{
		open my $fh, '<', $stat or next;
		my $line = <$fh> // '';
		close $fh;
		# pid (comm) state ppid ...: comm may hold spaces and parentheses
		push @children, $1 if $line =~ /^(\d+) \(.*\) \S+ (\d+) / && $2 == $pm;
	}
	return ($pm, @children);
}

# The command lines of the postmaster's children that mention outbox (the
# outbox launcher and workers), to check that a replica runs none.
sub outbox_processes
{
	my ($self) = @_;
	my ($pm, @children) = $self->server_pids;
	my @found;
	for my $pid (@children)
	{
		my $cmd = eval { slurp_file("/proc/$pid/cmdline") } // '';
		$cmd =~ s/\0/ /g;
		push @found, "$pid: $cmd" if $cmd =~ /outbox/;
	}
	return @found;
}

# Stop Patroni (at once: SIGKILL), then its postmaster (immediate).
sub stop
{
	my ($self) = @_;
	$self->{ha}->reap($self->{name}, 0);
	my ($pm) = $self->server_pids;
	if ($pm)
	{
		kill 'QUIT', $pm;
		OutboxTest::wait_until(30, sub { !kill 0, $pm }) or kill 'KILL', $pm;
	}
	return;
}

1;
