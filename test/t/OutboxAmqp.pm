# OutboxAmqp.pm -- throw-away RabbitMQ nodes for the tests of the "amqp"
# publisher (130_amqp.pl, 131_amqp_faults.pl, 132_amqp_settings.pl).
#
#   OutboxAmqp::require_amqp();          # skip_all (or fail under
#                                        # OUTBOX_REQUIRE_BROKERS) if missing
#   my $mq = OutboxAmqp->start('mq', max_message_size => 1048576);
#   $mq->tool('declare-queue', 'orders');
#   $mq->tool('bind', 'orders', 'amq.topic', 'orders.#');
#   my @msgs = $mq->dump('orders');      # hashes: message_id, headers, body, ...
#   $mq->stop; $mq->start_again;         # same node, same data (graceful)
#
# Each node runs as the test's OS user with everything of its own: a node
# name, an AMQP port (and a TLS one with tls => {...}) on 127.0.0.1, its
# Erlang distribution port, its own epmd on a port of its own (started
# here, so it is stopped here too), and HOME (the Erlang cookie), data and
# log directories in the test's temp dir.  The user is outbox_test with a
# random password (default_user / default_pass), so guest does not exist.
#
# Every node (and epmd) is stopped at the end of the test, even on failure.

package OutboxAmqp;

use strict;
use warnings;

use Carp;
use File::Basename qw(dirname);
use File::Spec;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

use OutboxTest;

our @nodes;

my $amqp_tool = File::Spec->rel2abs(
	File::Spec->catfile(dirname(__FILE__), '..', 'brokers', 'amqp_tool'));
my $rabbitmq_server = '/usr/lib/rabbitmq/bin/rabbitmq-server';

# The epmd binary, or undef.
sub epmd_binary
{
	for my $dir (split(/:/, $ENV{PATH} // ''), '/usr/bin', '/usr/local/bin')
	{
		my $f = "$dir/epmd";
		return $f if -x $f;
	}
	return undef;
}

# What the amqp publisher's tests need and do not find here: the plug-in,
# the helper, the server.
sub missing
{
	my $pkglibdir = `$ENV{PG_CONFIG} --pkglibdir` if $ENV{PG_CONFIG};
	$pkglibdir //= `pg_config --pkglibdir`;
	chomp $pkglibdir;
	my @missing;
	push @missing,
	  "the outbox_amqp plug-in ($pkglibdir/outbox_amqp.so; build with librabbitmq-dev and make install)"
	  unless -f "$pkglibdir/outbox_amqp.so";
	push @missing, "the test helper $amqp_tool (make -C test/brokers)"
	  unless -x $amqp_tool;
	push @missing, "rabbitmq-server (apt-get install rabbitmq-server)"
	  unless -x $rabbitmq_server && epmd_binary();
	return @missing;
}

# Skip the whole test (plan skip_all) when the plug-in, the helper or the
# server is missing; with OUTBOX_REQUIRE_BROKERS set, fail instead.
sub require_amqp
{
	my @missing = missing();
	return unless @missing;
	my $why = 'missing: ' . join('; ', @missing);
	if ($ENV{OUTBOX_REQUIRE_BROKERS})
	{
		BAIL_OUT("OUTBOX_REQUIRE_BROKERS is set, but $why");
	}
	plan skip_all => $why;
	return;
}

=pod

=head1 METHODS

=over

=item OutboxAmqp->start($name, %options)

Start a RabbitMQ node and wait until it accepts a login.  Options:
max_message_size (bytes, RabbitMQ's default when not given),
tls => { cert => file, key => file, ca => file } for a TLS listener too,
conf => extra rabbitmq.conf lines.

=cut

sub start
{
	my ($class, $name, %opt) = @_;
	my $dir = PostgreSQL::Test::Utils::tempdir("rabbitmq_$name");
	my $self = bless {
		name => $name,
		dir => $dir,
		port => PostgreSQL::Test::Cluster::get_free_port(),
		dist_port => PostgreSQL::Test::Cluster::get_free_port(),
		epmd_port => PostgreSQL::Test::Cluster::get_free_port(),
		tls_port => ($opt{tls} ? PostgreSQL::Test::Cluster::get_free_port() : undef),
		user => 'outbox_test',
		password => 'pw-' . join('', map { ('a' .. 'z')[ rand 26 ] } 1 .. 16),
		node => "outbox_$name\_$$\@localhost",
		log => "$PostgreSQL::Test::Utils::log_path/rabbitmq_$name.log",
		opt => \%opt,
	}, $class;
	mkdir "$dir/home" or die "mkdir: $!";
	my $cookie = "$dir/home/.erlang.cookie";
	open(my $fh, '>', $cookie) or die "cannot write $cookie: $!";
	print $fh 'outboxtest' . join('', map { ('A' .. 'Z')[ rand 26 ] } 1 .. 20);
	close $fh;
	chmod 0400, $cookie;
	$self->write_config;
	push @nodes, $self;
	$self->start_epmd;
	$self->start_again;
	return $self;
}

sub write_config
{
	my ($self) = @_;
	my $dir = $self->{dir};
	my $opt = $self->{opt};
	my $conf = qq{listeners.tcp.1 = 127.0.0.1:$self->{port}
default_user = $self->{user}
default_pass = $self->{password}
log.console = false
log.file.level = info
vm_memory_high_watermark.absolute = 2GB
disk_free_limit.absolute = 50MB
};
	$conf .= "max_message_size = $opt->{max_message_size}\n" if $opt->{max_message_size};
	if (my $tls = $opt->{tls})
	{
		$conf .= qq{listeners.ssl.1 = 127.0.0.1:$self->{tls_port}
ssl_options.cacertfile = $tls->{ca}
ssl_options.certfile = $tls->{cert}
ssl_options.keyfile = $tls->{key}
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
};
	}
	$conf .= $opt->{conf} // '';
	open(my $fh, '>', "$dir/rabbitmq.conf") or die "cannot write config: $!";
	print $fh $conf;
	close $fh;
	open($fh, '>', "$dir/enabled_plugins") or die "cannot write enabled_plugins: $!";
	print $fh "[].\n";
	close $fh;
	open($fh, '>', "$dir/rabbitmq-env.conf") or die "cannot write rabbitmq-env.conf: $!";
	close $fh;
	return;
}

# The environment of this node's processes.
sub env
{
	my ($self) = @_;
	my $dir = $self->{dir};
	return (
		HOME => "$dir/home",
		RABBITMQ_NODENAME => $self->{node},
		RABBITMQ_NODE_IP_ADDRESS => '127.0.0.1',
		RABBITMQ_NODE_PORT => $self->{port},
		RABBITMQ_DIST_PORT => $self->{dist_port},
		RABBITMQ_CONFIG_FILE => "$dir/rabbitmq.conf",
		RABBITMQ_ADVANCED_CONFIG_FILE => "$dir/advanced.config",
		RABBITMQ_CONF_ENV_FILE => "$dir/rabbitmq-env.conf",
		RABBITMQ_ENABLED_PLUGINS_FILE => "$dir/enabled_plugins",
		RABBITMQ_MNESIA_BASE => "$dir/mnesia",
		RABBITMQ_LOG_BASE => "$dir/log",
		RABBITMQ_PID_FILE => "$dir/beam.pid",
		RABBITMQ_PLUGINS_EXPAND_DIR => "$dir/plugins-expand",
		RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS => '-kernel inet_dist_use_interface {127,0,0,1}',
		ERL_EPMD_PORT => $self->{epmd_port},
		ERL_EPMD_ADDRESS => '127.0.0.1',
	);
}

# This node's own epmd, in the foreground, so that it can be stopped.
sub start_epmd
{
	my ($self) = @_;
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>>', $self->{log}) or die;
		open(STDERR, '>&', \*STDOUT) or die;
		exec(epmd_binary(), '-address', '127.0.0.1', '-port', $self->{epmd_port})
		  or die "exec: $!";
	}
	$self->{epmd_pid} = $pid;
	return;
}

=pod

=item $mq->start_again

(Re)start the node: same ports, same data.  Waits until it accepts a login.

=cut

sub start_again
{
	my ($self) = @_;
	croak "node $self->{name} is running" if $self->{pid};
	unlink "$self->{dir}/beam.pid";
	my %env = $self->env;
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		$ENV{$_} = $env{$_} for keys %env;
		chdir $self->{dir} or die "chdir: $!";
		open(STDIN, '<', '/dev/null') or die;
		open(STDOUT, '>>', $self->{log}) or die;
		open(STDERR, '>&', \*STDOUT) or die;
		exec($rabbitmq_server) or die "exec: $!";
	}
	$self->{pid} = $pid;
	my ($ok, $out) = run_tool($self->admin_url, 'wait-ready', 120);
	$ok or croak "rabbitmq-server $self->{name} did not start ($out); see $self->{log} and $self->{dir}/log";
	return;
}

=pod

=item $mq->stop($signal)

Stop the node: TERM (a graceful stop, by default) or KILL (a crash of the
Erlang VM), and wait for it.

=cut

sub stop
{
	my ($self, $signal) = @_;
	my $pid = delete $self->{pid} or return;
	$signal //= 'TERM';
	if ($signal eq 'KILL')
	{
		my $beam = $self->beam_pid;
		kill 'KILL', $beam if $beam;
	}
	kill($signal, $pid);
	waitpid($pid, 0);
	# The VM itself, when the script went first.
	OutboxTest::wait_until(30, sub { !$self->beam_running });
	return;
}

# The process id of this node's Erlang VM (the broker itself), or undef.
sub beam_pid
{
	my ($self) = @_;
	open(my $fh, '<', "$self->{dir}/beam.pid") or return undef;
	my $beam = <$fh>;
	close $fh;
	chomp $beam if defined $beam;
	return ($beam && $beam =~ /^\d+$/) ? $beam : undef;
}

# Whether the Erlang VM of this node still runs.
sub beam_running
{
	my ($self) = @_;
	my $beam = $self->beam_pid;
	return $beam && kill(0, $beam);
}

=pod

=item $mq->ctl(@args)

Run rabbitmqctl against this node (say, set_vm_memory_high_watermark);
dies on failure, returns its output.

=cut

sub ctl
{
	my ($self, @args) = @_;
	my %env = $self->env;
	local @ENV{ keys %env } = values %env;
	my ($stdout, $stderr);
	IPC::Run::run([ '/usr/lib/rabbitmq/bin/rabbitmqctl', '-n', $self->{node}, @args ],
		'<', '/dev/null', '>', \$stdout, '2>', \$stderr)
	  or croak "rabbitmqctl @args failed: $stderr";
	return $stdout;
}

=pod

=item $mq->url, $mq->tls_url

The URL for outbox.amqp_url (no credentials), plain or TLS ("localhost",
for the certificate's name).

=item $mq->admin_url

The URL with the credentials, for amqp_tool.

=item $mq->settings, $mq->options

What points the amqp publisher at this node: postgresql.conf lines
(outbox.amqp_url, outbox.amqp_username, outbox.amqp_password), or a
destination's options as JSON members without braces.

=cut

sub settings
{
	my ($self) = @_;
	return "outbox.amqp_url = '" . $self->url . "'\noutbox.amqp_username = '$self->{user}'\n"
	  . "outbox.amqp_password = '$self->{password}'\n";
}

sub options
{
	my ($self) = @_;
	return '"url": "' . $self->url . qq{", "username": "$self->{user}", "password": "$self->{password}"};
}

sub url { return "amqp://127.0.0.1:$_[0]{port}" }
sub tls_url { return "amqps://localhost:$_[0]{tls_port}" }
sub admin_url { return "amqp://$_[0]{user}:$_[0]{password}\@127.0.0.1:$_[0]{port}/%2f" }
sub user { return $_[0]{user} }
sub password { return $_[0]{password} }
sub port { return $_[0]{port} }
sub name { return $_[0]{name} }

# Run amqp_tool; returns (success, output).
sub run_tool
{
	my ($url, @args) = @_;
	my ($stdout, $stderr);
	my $ok = IPC::Run::run([ $amqp_tool, $url, @args ], '<', '/dev/null', '>', \$stdout,
		'2>', \$stderr);
	return ($ok, $ok ? $stdout : $stderr);
}

=pod

=item $mq->tool(@args)

Run amqp_tool against this node; dies on failure, returns its output.

=item $mq->count($queue)

The number of ready messages in the queue, or undef when it cannot be read.

=item $mq->dump($queue)

Every ready message of the queue, in queue order (they stay in it):
hashes with exchange, routing_key, message_id, content_type,
delivery_mode, timestamp, headers (name => value) and body (bytes).

=cut

sub tool
{
	my ($self, @args) = @_;
	my ($ok, $out) = run_tool($self->admin_url, @args);
	$ok or croak "amqp_tool @args failed: $out";
	return $out;
}

sub count
{
	my ($self, $queue) = @_;
	my ($ok, $out) = run_tool($self->admin_url, 'count', $queue);
	return undef unless $ok;
	chomp $out;
	return $out;
}

# Wait until $queue holds $n messages or more; returns 1, or 0 (with a
# diagnostic) after the usual timeout.
sub wait_count
{
	my ($self, $queue, $n) = @_;
	my $last;
	my $ok = OutboxTest::wait_until($OutboxTest::TIMEOUT,
		sub { $last = $self->count($queue); defined $last && $last >= $n });
	diag("queue $queue: expected $n messages, last count " . ($last // '(error)')) unless $ok;
	return $ok;
}

sub dump
{
	my ($self, $queue) = @_;
	my $out = $self->tool('dump', $queue);
	my $json = JSON::PP->new;    # \u00XX escapes: characters 0-255 = bytes
	return map { $json->decode($_) } grep { /\S/ } split /\n/, $out;
}

=pod

=item $mq->source($queue)

An OutboxChecker source over the queue (see OutboxAmqp::Source).

=back

=cut

sub source
{
	my ($self, $queue) = @_;
	return OutboxAmqp::Source->new($self, $queue);
}

END
{
	my $rc = $?;
	for my $mq (@nodes)
	{
		$mq->stop('KILL') if $mq->{pid};
		if (my $epmd = delete $mq->{epmd_pid})
		{
			kill 'TERM', $epmd;
			waitpid($epmd, 0);
		}
	}
	$? = $rc;
}

##########################################################################

package OutboxAmqp::Source;

=pod

=head1 OutboxAmqp::Source

A consumer source for OutboxChecker: the messages of a queue, in queue
order, deduplicated on message-id (a consumer of an at-least-once
publisher keeps the first copy).  After deliveries(), raw_count and
duplicates tell how many messages the queue held and how many of them
were extra copies.

=cut

use strict;
use warnings;

use JSON::PP;

sub new
{
	my ($class, $mq, $queue) = @_;
	return bless { mq => $mq, queue => $queue, raw_count => 0, duplicates => 0 }, $class;
}

sub name { return "queue $_[0]{queue} (deduplicated on message-id)" }
sub ordered { return 1 }
sub epochs { return 1 }
sub completeness { return 'every committed message' }
sub raw_count { return $_[0]{raw_count} }
sub duplicates { return $_[0]{duplicates} }

sub deliveries
{
	my ($self) = @_;
	my (%seen, @d);
	my @raw = $self->{mq}->dump($self->{queue});
	my $json = JSON::PP->new;
	for my $m (@raw)
	{
		next if $seen{ $m->{message_id} // '' }++;
		my $body = eval { $json->decode($m->{body}) } // {};
		push @d,
		  {
			id => $m->{message_id},
			key => $body->{k},
			seq => $body->{s},
			token => $body->{t},
			epoch => 1,
		  };
	}
	$self->{raw_count} = scalar @raw;
	$self->{duplicates} = scalar(@raw) - scalar(@d);
	return \@d;
}

sub required_ids
{
	my ($self, $checker, $ledger, $statuses) = @_;
	return map { [ $_, undef ] }
	  grep { ($statuses->{$_} // 'processed') eq 'processed' }
	  keys %{ $ledger->{by_id} };
}

1;
