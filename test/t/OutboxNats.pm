
# OutboxNats.pm -- NATS servers and JetStream streams for the tests of the
# "nats" publisher (120_nats.pl, 121_nats_cluster.pl).
#
#   OutboxNats::require_nats();         # skip_all (or fail under
#                                       # OUTBOX_REQUIRE_BROKERS) if missing
#   my $srv = OutboxNats->start('n1');  # nats-server -js on a free port
#   $srv->js('add-stream', 'ORDERS', 'orders.>', 1);
#   my @msgs = $srv->dump('ORDERS');    # hashes: seq, subject, data, headers
#   $srv->stop; $srv->start_again;      # same port, same store
#
# Clusters: OutboxNats->start_cluster('c', 3) starts three servers with
# routes between them (one configuration file each), and returns them.
#
# Every server is stopped at the end of the test, even on failure (END).

package OutboxNats;

use strict;
use warnings;

use Carp;
use File::Basename qw(dirname);
use File::Spec;
use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;

use OutboxTest;
use Test::More;
use Time::HiRes qw(usleep);

use OutboxTest;

our @servers;

my $nats_js = File::Spec->rel2abs(
	File::Spec->catfile(dirname(__FILE__), '..', 'brokers', 'nats_js'));

# The nats-server binary, or undef.
sub server_binary
{
	for my $dir (split(/:/, $ENV{PATH} // ''), '/usr/bin', '/usr/sbin', '/usr/local/bin')
	{
		my $f = "$dir/nats-server";
		return $f if -x $f;
	}
	return undef;
}

# What the nats publisher's tests need and do not find here: the plug-in,
# the helper, the server.
sub missing
{
	my $pkglibdir = `$ENV{PG_CONFIG} --pkglibdir` if $ENV{PG_CONFIG};
	$pkglibdir //= `pg_config --pkglibdir`;
	chomp $pkglibdir;
	my @missing;
	push @missing, "the outbox_nats plug-in ($pkglibdir/outbox_nats.so; build with libnats-dev and make install)"
	  unless -f "$pkglibdir/outbox_nats.so";
	push @missing, "the test helper $nats_js (make -C test/brokers)"
	  unless -x $nats_js;
	push @missing, "nats-server (apt-get install nats-server)"
	  unless server_binary();
	return @missing;
}

# Skip the whole test (plan skip_all) when the plug-in, the helper or the
# server is missing; with OUTBOX_REQUIRE_BROKERS set, fail instead.
sub require_nats
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

=item OutboxNats->start($name, %options)

Start nats-server with JetStream on a free loopback port, with a store
directory of its own, and wait until it accepts connections.  Options:
cluster => { name => ..., port => this server's route port, routes => [ports] };
authorization => { user => ..., password => ... }, which clients must give
(the helper: in its URL, nats://user:password@host:port).

=cut

sub start
{
	my ($class, $name, %opt) = @_;
	my $dir = PostgreSQL::Test::Utils::tempdir("nats_$name");
	my $self = bless {
		name => $name,
		dir => $dir,
		port => PostgreSQL::Test::Cluster::get_free_port(),
		http_port => PostgreSQL::Test::Cluster::get_free_port(),
		cluster => $opt{cluster},
		authorization => $opt{authorization},
		log => "$PostgreSQL::Test::Utils::log_path/nats_$name.log",
	}, $class;
	$self->write_config;
	push @servers, $self;
	$self->start_again(wait => $opt{wait} // 1);
	return $self;
}

=pod

=item OutboxNats->start_cluster($name, $n)

Start $n servers forming the JetStream cluster $name (routes to all the
others), and wait until JetStream answers.  Returns the servers.

=cut

sub start_cluster
{
	my ($class, $name, $n) = @_;
	my @route_ports = map { PostgreSQL::Test::Cluster::get_free_port() } 1 .. $n;
	my @nodes;
	for my $i (0 .. $n - 1)
	{
		push @nodes,
		  $class->start(
			"${name}_" . ($i + 1),
			wait => 0,
			cluster => {
				name => $name,
				port => $route_ports[$i],
				routes => [ grep { $_ != $route_ports[$i] } @route_ports ],
			});
	}
	$_->wait_listening for @nodes;
	my $urls = join(',', map { $_->url } @nodes);
	my ($ok, $out) = run_js($urls, 'wait-ready', 60);
	$ok or croak "the JetStream cluster did not get ready: $out";
	return @nodes;
}

sub write_config
{
	my ($self) = @_;
	my $conf = qq{server_name: "$self->{name}"
listen: "127.0.0.1:$self->{port}"
http: "127.0.0.1:$self->{http_port}"
jetstream {
  store_dir: "$self->{dir}/store"
}
};
	if (my $c = $self->{cluster})
	{
		my $routes = join(', ', map { qq{"nats-route://127.0.0.1:$_"} } @{ $c->{routes} });
		$conf .= qq{cluster {
  name: "$c->{name}"
  listen: "127.0.0.1:$c->{port}"
  routes: [ $routes ]
}
};
	}
	if (my $a = $self->{authorization})
	{
		$conf .= qq{authorization {
  user: "$a->{user}"
  password: "$a->{password}"
}
};
	}
	open(my $fh, '>', "$self->{dir}/server.conf") or die "cannot write config: $!";
	print $fh $conf;
	close $fh;
	return;
}

=pod

=item $srv->start_again(wait => 1)

(Re)start the server with its configuration: same port, same store.

=cut

sub start_again
{
	my ($self, %opt) = @_;
	croak "server $self->{name} is running" if $self->{pid};
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>>', $self->{log}) or die;
		open(STDERR, '>&', \*STDOUT) or die;
		exec(server_binary(), '-c', "$self->{dir}/server.conf") or die "exec: $!";
	}
	$self->{pid} = $pid;
	$self->wait_listening if $opt{wait} // 1;
	return;
}

# Wait until the server accepts connections (and JetStream answers when
# it is not clustered).
sub wait_listening
{
	my ($self) = @_;
	my $ok = OutboxTest::wait_until(
		30,
		sub {
			my $r = HTTP::Tiny->new(timeout => 2)
			  ->get("http://127.0.0.1:$self->{http_port}/healthz");
			return $r->{status} == 200 || ($self->{cluster} && $r->{status} == 503);
		});
	$ok or croak "nats-server $self->{name} did not start; see $self->{log}";
	return;
}

=pod

=item $srv->stop($signal)

Stop the server (TERM by default, KILL for a crash) and wait for it.

=cut

sub stop
{
	my ($self, $signal) = @_;
	my $pid = delete $self->{pid} or return;
	kill($signal // 'TERM', $pid);
	waitpid($pid, 0);
	return;
}

sub url
{
	my ($self) = @_;
	return "nats://127.0.0.1:$self->{port}";
}

sub name { return $_[0]{name} }

# The monitoring endpoint's JSON at $path (say "/connz"), or undef.
sub monitor
{
	my ($self, $path) = @_;
	my $r = HTTP::Tiny->new(timeout => 5)->get("http://127.0.0.1:$self->{http_port}$path");
	return undef unless $r->{success};
	return decode_json($r->{content});
}

# Run the helper against $urls; returns (success, output).
sub run_js
{
	my ($urls, @args) = @_;
	my ($stdout, $stderr);
	my $ok = IPC::Run::run([ $nats_js, $urls, @args ], '>', \$stdout, '2>', \$stderr);
	return ($ok, $ok ? $stdout : $stderr);
}

=pod

=item $srv->js(@args)

Run nats_js against this server; dies on failure, returns its output.

=cut

sub js
{
	my ($self, @args) = @_;
	my ($ok, $out) = run_js($self->url, @args);
	$ok or croak "nats_js @args failed: $out";
	return $out;
}

=pod

=item $srv->count($stream)

The number of messages in the stream, or undef when it cannot be read.

=item $srv->dump($stream)

Every message of the stream: hashes with seq, subject, data (bytes) and
headers (name => value, or an array of values when repeated).

=cut

sub count
{
	my ($self, $stream) = @_;
	my ($ok, $out) = run_js($self->url, 'info', $stream);
	return undef unless $ok;
	chomp $out;
	return $out;
}

sub dump
{
	my ($self, $stream) = @_;
	# A cluster that just lost a node may answer "JetStream system
	# temporarily unavailable" for a while: try again until a timeout.
	my ($ok, $out);
	OutboxTest::wait_until(
		$OutboxTest::TIMEOUT,
		sub {
			($ok, $out) = run_js($self->url, 'dump', $stream);
			return $ok || $out !~ /temporarily unavailable|timeout/i;
		});
	$ok or croak "nats_js dump $stream failed: $out";
	my $json = JSON::PP->new;    # \u00XX escapes: characters 0-255 = bytes
	return map { $json->decode($_) } grep { /\S/ } split /\n/, $out;
}

=pod

=back

=cut

END
{
	my $rc = $?;
	for my $srv (@servers)
	{
		$srv->stop('KILL') if $srv->{pid};
	}
	$? = $rc;
}

1;
