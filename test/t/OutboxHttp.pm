# OutboxHttp.pm -- a webhook receiver for the http publisher's TAP tests.
#
# Starts test/t/outbox_http_server.py (Python's http.server) on a free
# loopback port and talks to its control endpoints with HTTP::Tiny:
#
#   my $srv = OutboxHttp->start;
#   $node->append_conf('postgresql.conf', "outbox.http_url = '" . $srv->url('/hook/{topic}') . "'");
#   $srv->plan('orders', {status => 500, body => 'boom'}, {status => 200});
#   my @reqs = $srv->requests(topic => 'orders');
#   $srv->stop; ... $srv->restart;    # same port
#
# Every wait polls a condition with a timeout; nothing sleeps and hopes.

package OutboxHttp;

use strict;
use warnings;

use Carp;
use File::Basename qw(dirname);
use File::Spec;
use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use MIME::Base64;
use PostgreSQL::Test::Utils;
use Time::HiRes qw(time usleep);

my $script = File::Spec->catfile(dirname(__FILE__), 'outbox_http_server.py');

# Start a server; port => N reuses a port (0 or absent: a free one);
# tls => 1 serves HTTPS with a fresh self-signed certificate for 127.0.0.1
# (its file: $srv->cert_file).
sub start
{
	my ($class, %opt) = @_;
	my $self = bless {
		port => $opt{port} // 0,
		dir => PostgreSQL::Test::Utils::tempdir('http'),
		json => JSON::PP->new->utf8->canonical,
	}, $class;
	if ($opt{tls})
	{
		$self->{cert} = "$self->{dir}/cert.pem";
		$self->{key} = "$self->{dir}/key.pem";
		my $out = '';
		IPC::Run::run(
			[
				'openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
				'-keyout', $self->{key}, '-out', $self->{cert}, '-days', '1',
				'-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'
			],
			'<', \undef, '>&', \$out)
		  or croak "openssl could not make a certificate: $out";
	}
	$self->{http} = HTTP::Tiny->new(timeout => 30);
	$self->_launch;
	return $self;
}

sub cert_file { return $_[0]->{cert} }

sub _launch
{
	my ($self) = @_;
	my $port_file = "$self->{dir}/port";
	unlink $port_file;
	my $out = '';
	my @tls = $self->{cert} ? ($self->{cert}, $self->{key}) : ();
	$self->{proc} = IPC::Run::start([ 'python3', $script, $self->{port}, $port_file, @tls ],
		'<', \undef, '>&', \$out);
	$self->{out} = \$out;
	my $deadline = time() + 30;
	until (-s $port_file)
	{
		croak "webhook server did not start: $out" if time() > $deadline;
		usleep(20_000);
	}
	($self->{port}, $self->{control_port}) =
	  split ' ', PostgreSQL::Test::Utils::slurp_file($port_file);
	$self->{running} = 1;
	return;
}

sub port { return $_[0]->{port} }

# The server's process id (to stop it with SIGSTOP), while it runs.
sub pid { return $_[0]->{running} ? $_[0]->{proc}{KIDS}[0]{PID} : undef }

# The server's URL, with an optional path.
sub url
{
	my ($self, $path) = @_;
	my $scheme = $self->{cert} ? 'https' : 'http';
	return "$scheme://127.0.0.1:$self->{port}" . ($path // '');
}

sub _call
{
	my ($self, $method, $path, $data) = @_;
	my $res = $self->{http}->request(
		$method,
		"http://127.0.0.1:$self->{control_port}$path",
		defined $data
		? { content => $self->{json}->encode($data), headers => { 'Content-Type' => 'application/json' } }
		: {});
	croak "webhook server control $path failed: $res->{status} $res->{content}"
	  unless $res->{success};
	return $self->{json}->decode($res->{content});
}

# How to answer messages of $topic ('*' for all others): one step per
# attempt of each message, the last one repeating.  A step is a hash
# {status, body, delay_ms, headers}.
sub plan
{
	my ($self, $topic, @steps) = @_;
	$self->_call('POST', '/_control/plan', { topic => $topic, steps => \@steps });
	return;
}

# Answer 2xx steps of $topic with 500 at random, with probability $p;
# %step adds to the step (delay_ms => ...).
sub plan_random_failures
{
	my ($self, $topic, $p, %step) = @_;
	$self->_call('POST', '/_control/plan',
		{ topic => $topic, steps => [ { status => 200, %step } ], random_fail => $p });
	return;
}

sub reset
{
	my ($self) = @_;
	$self->_call('POST', '/_control/reset', {});
	return;
}

# Requests received, oldest first, each with its body decoded ("body");
# filters: topic => ..., id => ....
sub requests
{
	my ($self, %filter) = @_;
	my $all = $self->_call('GET', '/_control/requests');
	my @out;
	for my $r (@$all)
	{
		next if defined $filter{topic} && ($r->{topic} // '') ne $filter{topic};
		next if defined $filter{id} && ($r->{id} // '') ne $filter{id};
		$r->{body} = decode_base64($r->{body_b64});
		push @out, $r;
	}
	return sort { $a->{start} <=> $b->{start} } @out;
}

# The requests a client can have taken as delivered: answered 2xx within
# $within seconds of their start (a client that times out after T abandons
# what the receiver answers later, yet the receiver records it as 2xx; give
# a $within well below T).  Filters as for requests().
sub answered
{
	my ($self, $within, %filter) = @_;
	return grep { answered_in_time($_, $within) } $self->requests(%filter);
}

# Whether request record $r was answered 2xx within $within seconds.
sub answered_in_time
{
	my ($r, $within) = @_;
	return $r->{status} >= 200
	  && $r->{status} < 300
	  && !defined $r->{error}
	  && $r->{end} - $r->{start} < $within;
}

sub stats
{
	my ($self) = @_;
	return $self->_call('GET', '/_control/stats');
}

# Wait until $condition->(@requests) holds (requests are recorded when
# answered); returns 1, or 0 after $timeout s.
sub wait_requests
{
	my ($self, $timeout, $condition, %filter) = @_;
	my $deadline = time() + $timeout;
	while (1)
	{
		return 1 if $condition->($self->requests(%filter));
		return 0 if time() > $deadline;
		usleep(50_000);
	}
}

# Wait until at least $n requests are in flight; returns 1, or 0 after
# $timeout s.
sub wait_inflight
{
	my ($self, $n, $timeout) = @_;
	my $deadline = time() + $timeout;
	while (1)
	{
		return 1 if $self->stats->{inflight} >= $n;
		return 0 if time() > $deadline;
		usleep(50_000);
	}
}

# Stop the server (its port then refuses connections).
sub stop
{
	my ($self) = @_;
	return unless $self->{running};
	$self->{proc}->signal('KILL');
	$self->{proc}->finish;
	$self->{running} = 0;
	return;
}

# Start it again on the same port, with a fresh state.
sub restart
{
	my ($self) = @_;
	$self->stop;
	$self->_launch;
	return;
}

sub DESTROY
{
	my ($self) = @_;
	local $?;
	eval { $self->stop };
	return;
}

1;
