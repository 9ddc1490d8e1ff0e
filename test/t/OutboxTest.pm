
# OutboxTest.pm -- shared helpers for the outbox relay worker's TAP tests.
#
# Built on PostgreSQL::Test::Cluster (from PGXS).  Every wait in here polls
# a condition until it holds or a timeout passes; nothing sleeps and hopes.
#
#   my $node = OutboxTest::new_node('main', conf => "outbox.poll_interval = '200ms'");
#   my $listener = OutboxTest::Listener->new($node, 'postgres', 'orders');
#   $node->safe_psql('postgres', "SELECT outbox.save('orders', '{}'::jsonb)");
#   $listener->wait_count(1, 10);
#   ok(OutboxTest::wait_all_processed($node, 'postgres', 30));

package OutboxTest;

use strict;
use warnings;

use Carp;
use Exporter 'import';
use File::Basename qw(dirname);
use File::Spec;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

our @EXPORT_OK = qw(
  new_node wait_until poll_until query_value set_conf
  worker_pid launcher_pid wait_for_worker wait_worker_sleeping wait_all_processed
  log_position log_count wait_for_log_line
);

# Seconds allowed for anything that should happen "soon"; generous because
# the machine may be busy, but far below the framework's 180 s default.
our $TIMEOUT = 60;

=pod

=head1 FUNCTIONS

=over

=item new_node($name, %options)

Create, configure and start a node with the outbox library preloaded.

Options:

=over

=item databases => 'postgres'

The value of outbox.databases.

=item create_databases => []

Databases to create (before the relay workers start).

=item extension_in => ['postgres']

Databases in which to CREATE EXTENSION outbox.  The extension is created
while outbox.databases is still empty, and the node then restarts with the
real list, so the relay workers find it on their first start instead of
after the launcher's 10-second recheck.

=item conf => ''

Extra postgresql.conf lines (outbox.* settings and the like).

=item wait_worker => 1

Wait until the relay worker of every database in extension_in that is also
listed in outbox.databases runs.

=back

=cut

sub new_node
{
	my ($name, %opt) = @_;
	my $databases = $opt{databases} // 'postgres';
	my $create = $opt{create_databases} // [];
	my $ext_in = $opt{extension_in} // ['postgres'];
	my $conf = $opt{conf} // '';
	my $wait_worker = $opt{wait_worker} // 1;

	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	# First with the library loaded but no relayed database (the library
	# can only be loaded through shared_preload_libraries), to create the
	# extension; then with the real configuration.
	$node->append_conf(
		'postgresql.conf', qq{
# Added by OutboxTest.pm
max_worker_processes = 16
# let a test's kill -9 of the worker end in a crash-restart, not a dead node
restart_after_crash = on
log_statement = 'mod'
shared_preload_libraries = 'outbox'
outbox.databases = ''
});
	$node->start;
	$node->safe_psql('postgres', qq{CREATE DATABASE "$_"}) for @$create;
	$node->safe_psql($_, 'CREATE EXTENSION outbox') for @$ext_in;

	$node->append_conf(
		'postgresql.conf', qq{
outbox.databases = '$databases'
$conf
});
	$node->restart;

	if ($wait_worker)
	{
		my %listed = map { $_ => 1 } split /\s*,\s*/, $databases;
		for my $db (grep { $listed{$_} } @$ext_in)
		{
			wait_for_worker($node, $db)
			  or BAIL_OUT("the outbox worker for database $db did not start");
		}
	}
	return $node;
}

=pod

=item test_module($name)

The path of a test module's library (test/modules/$name/$name.so), built
here when "make test" did not build it (a test run on its own).

=cut

sub test_module
{
	my ($name) = @_;
	my $dir = File::Spec->rel2abs(
		File::Spec->catdir(dirname(__FILE__), '..', 'modules', $name));
	my $library = "$dir/$name.so";

	unless (-f $library)
	{
		my $pg_config = $ENV{PG_CONFIG} // 'pg_config';
		system('make', '-s', '-C', $dir, "PG_CONFIG=$pg_config") == 0
		  or BAIL_OUT("could not build $dir");
	}
	return $library;
}

=pod

=item wait_until($timeout, $condition)

Call $condition every 50 ms until it returns true; return its value, or 0
when $timeout seconds pass first.

=cut

sub wait_until
{
	my ($timeout, $condition) = @_;
	my $deadline = time() + $timeout;

	while (1)
	{
		my $result = $condition->();
		return $result if $result;
		return 0 if time() > $deadline;
		usleep(50_000);
	}
}

=pod

=item query_value($node, $dbname, $sql)

Run $sql in a new session and return its output, or undef on any error
(for example while the server restarts after a crash).

=cut

sub query_value
{
	my ($node, $dbname, $sql) = @_;
	my $timed_out;
	# psql may exit before it read its input (the server is restarting):
	# the framework then dies with "Broken pipe", which is an error here.
	my ($rc, $stdout, $stderr) = eval {
		$node->psql(
			$dbname, $sql,
			on_error_stop => 1,
			timeout => $TIMEOUT,
			timed_out => \$timed_out);
	};
	return undef if $@ || $timed_out || !defined $rc || $rc != 0;
	return $stdout;
}

=pod

=item poll_until($node, $dbname, $sql, $expected, $timeout)

Run $sql (a new session each time) until it outputs $expected; errors are
retried.  Returns 1, or 0 with a diagnostic after $timeout seconds
(default $OutboxTest::TIMEOUT).

=cut

sub poll_until
{
	my ($node, $dbname, $sql, $expected, $timeout) = @_;
	my $last;

	$timeout //= $TIMEOUT;
	my $ok = wait_until(
		$timeout,
		sub {
			$last = query_value($node, $dbname, $sql);
			return defined $last && $last eq $expected;
		});
	diag(   "timed out after ${timeout}s waiting for\n  $sql\n"
		  . "to return '$expected'; last output: "
		  . ($last // '(error)'))
	  unless $ok;
	return $ok;
}

=pod

=item set_conf($node, name => value, ...)

ALTER SYSTEM SET each setting, reload, and wait until new sessions see
every value.  Values must be given as SHOW prints them ('1h', 'off', '10').
Once a new session sees the value, the postmaster has already passed the
reload on to the relay worker.

=cut

sub set_conf
{
	my ($node, @pairs) = @_;
	my @checks;

	while (my ($name, $value) = splice(@pairs, 0, 2))
	{
		(my $quoted = $value) =~ s/'/''/g;
		$node->safe_psql('postgres', "ALTER SYSTEM SET $name = '$quoted'");
		push @checks, "current_setting('$name') = '$quoted'";
	}
	$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
	poll_until($node, 'postgres', 'SELECT ' . join(' AND ', @checks), 't')
	  or croak "configuration reload did not take effect";
	return;
}

=pod

=item worker_pid($node, $dbname)

The pid of the relay worker of $dbname (from pg_stat_activity), or undef.

=item launcher_pid($node)

The pid of the outbox launcher, or undef.

=cut

sub worker_pid
{
	my ($node, $dbname) = @_;
	my $pid = query_value($node, 'postgres',
		    "SELECT pid FROM pg_stat_activity WHERE backend_type = 'outbox worker' "
		  . "AND datname = '$dbname'");
	return (defined $pid && $pid =~ /^\d+$/) ? $pid : undef;
}

sub launcher_pid
{
	my ($node) = @_;
	my $pid = query_value($node, 'postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'outbox launcher'"
	);
	return (defined $pid && $pid =~ /^\d+$/) ? $pid : undef;
}

=pod

=item wait_for_worker($node, $dbname, %options)

Wait until the relay worker of $dbname runs and return its pid, or 0 on
timeout.  Options: not_pid => a pid the worker must not have (to wait for a
restarted worker), timeout => seconds.

=cut

sub wait_for_worker
{
	my ($node, $dbname, %opt) = @_;
	my $timeout = $opt{timeout} // $TIMEOUT;
	my $not_pid = $opt{not_pid} // -1;

	my $pid = wait_until(
		$timeout,
		sub {
			my $pid = worker_pid($node, $dbname);
			return (defined $pid && $pid != $not_pid) ? $pid : 0;
		});
	diag("no outbox worker for database $dbname after ${timeout}s")
	  unless $pid;
	return $pid;
}

=pod

=item wait_worker_sleeping($node, $dbname, $timeout)

Wait until the relay worker of $dbname is idle on its latch (no
transaction, wait event "Extension").

=cut

sub wait_worker_sleeping
{
	my ($node, $dbname, $timeout) = @_;
	return poll_until(
		$node, 'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'outbox worker' "
		  . "AND datname = '$dbname' AND state = 'idle' AND wait_event = 'Extension'",
		'1', $timeout);
}

=pod

=item wait_all_processed($node, $dbname, $timeout)

Wait until no message of $dbname's outbox is anything but processed.

=cut

sub wait_all_processed
{
	my ($node, $dbname, $timeout) = @_;
	return poll_until($node, $dbname,
		"SELECT count(*) FROM outbox.messages WHERE status <> 'processed'",
		'0', $timeout);
}

=pod

=item message_state($node, $id)

Status, retries and last_error ('' when none) of the message $id in
database postgres, as a hash: { status, retries, error }.

=item wait_processed($node, @ids)

Wait until the messages with these ids (in database postgres) are
processed; returns 1, or 0 on timeout.

=cut

sub message_state
{
	my ($node, $id) = @_;
	my $row = $node->safe_psql('postgres',
		"SELECT status, retries, coalesce(last_error, '') FROM outbox.messages WHERE id = '$id'");
	my ($status, $retries, $error) = split /\|/, $row, 3;
	return { status => $status, retries => $retries, error => $error };
}

sub wait_processed
{
	my ($node, @ids) = @_;
	my $list = join(',', map { "'$_'" } @ids);
	return poll_until($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE id IN ($list) AND status = 'processed'",
		scalar(@ids));
}

=pod

=item log_position($node)

The current size of the server log, to count lines written after it.

=item log_content($node, $offset)

The server log after $offset.

=item log_count($node, $regexp, $offset)

How many lines of the server log after $offset match $regexp.

=item wait_for_log_line($node, $regexp, $offset, $timeout)

Wait until a line after $offset matches; returns 1, or 0 on timeout.

=cut

sub log_position
{
	my ($node) = @_;
	return -s $node->logfile;
}

sub log_content
{
	my ($node, $offset) = @_;
	return slurp_file($node->logfile, $offset // 0);
}

sub log_count
{
	my ($node, $regexp, $offset) = @_;
	my $log = slurp_file($node->logfile, $offset // 0);
	return scalar(grep { /$regexp/ } split /\n/, $log);
}

sub wait_for_log_line
{
	my ($node, $regexp, $offset, $timeout) = @_;
	$timeout //= $TIMEOUT;
	my $ok = wait_until($timeout, sub { log_count($node, $regexp, $offset) > 0 });
	diag("no server log line matching $regexp after ${timeout}s") unless $ok;
	return $ok;
}

=pod

=item publishing_progress($node, $pid, $topic)

One snapshot: how many messages of $topic are processed, and whether
worker $pid is publishing a batch (its activity says so).  Returns
(processed, publishing), or () when the query failed.

=cut

sub publishing_progress
{
	my ($node, $pid, $topic) = @_;
	my $row = query_value($node, 'postgres',
		"SELECT (SELECT count(*) FROM outbox.messages WHERE topic = '$topic' AND status = 'processed') "
		  . "|| '|' || (SELECT count(*) FROM pg_stat_activity WHERE pid = $pid "
		  . "AND query = 'publishing outbox messages')");
	return defined $row ? split(/\|/, $row) : ();
}

=pod

=item reload_applied($node, %options)

Make a reload the relay worker shows: append a new application_name to
postgresql.conf, reload, and wait (timeout, 30 s: a loaded machine is
slow, not wrong) until the worker (backend_type, 'outbox worker') shows it
in pg_stat_activity.  With mid_batch => 1, first wait until the worker is
publishing a batch, and report also whether it showed the new name while
still publishing that batch (same query_start: its batch transaction's
start), i.e. whether it read the reload without waiting for the batch's
end.  Returns (applied, same_batch).

=cut

my $reloads = 0;

sub reload_applied
{
	my ($node, %opt) = @_;
	my $type = $opt{backend_type} // 'outbox worker';
	my $name = 'outbox_hup_' . ++$reloads;
	my $batch = '';
	if ($opt{mid_batch})
	{
		wait_until(
			$opt{timeout} // 60,
			sub {
				$batch = query_value($node, 'postgres',
					"SELECT query_start FROM pg_stat_activity WHERE backend_type = '$type' "
					  . "AND query = 'publishing outbox messages'") // '';
				return $batch ne '';
			});
	}
	$node->append_conf('postgresql.conf', "application_name = '$name'");
	$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
	my $where = "backend_type = '$type' AND application_name = '$name'";
	my $applied = poll_until($node, 'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE $where", '1', $opt{timeout} // 30);
	return ($applied, 0) unless $opt{mid_batch} && $applied && $batch ne '';
	my $same = query_value($node, 'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE $where "
		  . "AND query = 'publishing outbox messages' AND query_start = '$batch'");
	return ($applied, ($same // '') eq '1' ? 1 : 0);
}

=pod

=item missing($why)

Skip the whole test (plan skip_all) because something it needs is missing;
with OUTBOX_REQUIRE_BROKERS set, fail instead.

=cut

sub missing
{
	my ($why) = @_;
	if ($ENV{OUTBOX_REQUIRE_BROKERS})
	{
		fail("$why (OUTBOX_REQUIRE_BROKERS is set)");
		done_testing();
		exit 0;
	}
	plan skip_all => $why;
}

=pod

=item error_of($node, $sql)

Run $sql in database postgres, expecting an error: returns "SQLSTATE:
message" of the ERROR (as in "22023: invalid value ..."), followed by its
DETAIL and other lines, or 'no error'.

=cut

sub error_of
{
	my ($node, $sql) = @_;
	my ($rc, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n$sql");
	return 'no error' if $rc == 0;
	return $err =~ /ERROR:\s+(\w{5}): (.*)/s ? "$1: $2" : $err;
}

=pod

=back

=cut

##########################################################################

package OutboxTest::Listener;

=pod

=head1 OutboxTest::Listener

A long-lived psql session that LISTENs and collects notifications.

psql prints a notification after the next command it runs, so poll() runs
an empty query and parses what comes back.  Each received notification is
a hash: channel, payload (the raw string), pid (of the notifying backend)
and envelope (the payload decoded as JSON, or undef).

=over

=cut

use strict;
use warnings;

use Carp;
use JSON::PP;
use Test::More;

=pod

=item OutboxTest::Listener->new($node, $dbname, @channels)

=item OutboxTest::Listener->new_as($node, $dbname, $user, @channels)

The session connects as the bootstrap superuser, or as $user.

=cut

sub new
{
	my ($class, $node, $dbname, @channels) = @_;
	return $class->new_as($node, $dbname, undef, @channels);
}

sub new_as
{
	my ($class, $node, $dbname, $user, @channels) = @_;
	my $self = bless {
		node => $node,
		dbname => $dbname,
		received => [],
		json => JSON::PP->new->utf8,
	}, $class;
	$self->{psql} = $node->background_psql($dbname,
		defined $user ? (extra_params => [ '-U', $user ]) : ());
	$self->{psql}->set_query_timer_restart;
	$self->listen($_) for @channels;
	return $self;
}

=pod

=item $listener->listen($channel), $listener->unlisten($channel)

=cut

sub listen
{
	my ($self, $channel) = @_;
	$self->{psql}->query_safe(qq{LISTEN "$channel"});
	return;
}

sub unlisten
{
	my ($self, $channel) = @_;
	$self->{psql}->query_safe(qq{UNLISTEN "$channel"});
	return;
}

=pod

=item $listener->backend_pid

The pid of the listening session's backend.

=cut

sub backend_pid
{
	my ($self) = @_;
	my $pid = $self->{psql}->query_safe('SELECT pg_backend_pid()');
	chomp $pid;
	return $pid;
}

=pod

=item $listener->poll

Collect the notifications psql has received so far; returns how many
arrived with this call.

=cut

sub poll
{
	my ($self) = @_;
	# query() strips the newline before its separator, so the last line
	# has none.
	my $out = $self->{psql}->query_safe('SELECT 1 WHERE false');
	my $n = 0;

	while ($out =~
		/Asynchronous notification "([^"]*)" with payload "(.*?)" received from server process with PID (\d+)\.(?:\r?\n|\z)/gs
	  )
	{
		my ($channel, $payload, $pid) = ($1, $2, $3);
		my $envelope = eval { $self->{json}->decode($payload) };
		push @{ $self->{received} },
		  {
			channel => $channel,
			payload => $payload,
			pid => $pid,
			envelope => $envelope,
		  };
		$n++;
	}
	return $n;
}

=pod

=item $listener->received

All notifications received so far (an array reference).

=item $listener->clear

Forget what was received so far.

=cut

sub received
{
	my ($self) = @_;
	return $self->{received};
}

sub clear
{
	my ($self) = @_;
	$self->{received} = [];
	return;
}

=pod

=item $listener->wait_for($timeout, $condition)

Poll until $condition->($received) is true; returns 1, or 0 after $timeout
seconds.

=item $listener->wait_count($count, $timeout)

Wait until at least $count notifications were received.

=item $listener->wait_for_id($id, $timeout)

Wait until the notification of the message with that id arrived and return
it (undef on timeout).

=cut

sub wait_for
{
	my ($self, $timeout, $condition) = @_;
	return OutboxTest::wait_until(
		$timeout,
		sub {
			$self->poll;
			return $condition->($self->{received});
		});
}

sub wait_count
{
	my ($self, $count, $timeout) = @_;
	my $ok = $self->wait_for($timeout // $OutboxTest::TIMEOUT,
		sub { scalar(@{ $_[0] }) >= $count });
	diag(sprintf("expected %d notifications, received %d",
			$count, scalar @{ $self->{received} }))
	  unless $ok;
	return $ok;
}

sub find_id
{
	my ($self, $id) = @_;
	for my $n (@{ $self->{received} })
	{
		return $n if $n->{envelope} && ($n->{envelope}{id} // '') eq $id;
	}
	return undef;
}

sub wait_for_id
{
	my ($self, $id, $timeout) = @_;
	my $found;
	$self->wait_for($timeout // $OutboxTest::TIMEOUT,
		sub { $found = $self->find_id($id) });
	diag("no notification for message $id") unless $found;
	return $found;
}

=pod

=item $listener->quit

=back

=cut

sub quit
{
	my ($self) = @_;
	$self->{psql}->quit;
	return;
}

1;
