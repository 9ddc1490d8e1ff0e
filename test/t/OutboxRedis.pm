# OutboxRedis.pm -- throw-away Redis servers for the tests of the "redis"
# publisher (140_redis.pl, 141_redis_faults.pl, 142_redis_settings.pl), and
# a small RESP client to look into them.
#
#   OutboxRedis::require_redis();        # skip_all (or fail under
#                                        # OUTBOX_REQUIRE_BROKERS) if missing
#   my $r = OutboxRedis->start('r');     # redis-server on a free port, AOF on
#   my @entries = $r->xrange('orders');  # hashes: id, fields => { ... }
#   $r->command('XLEN', 'orders');
#   $r->stop; $r->start_again;           # same port, same data
#
# The server runs as the test's OS user, on 127.0.0.1 and a free port, with
# its data (appendonly yes, appendfsync everysec unless told otherwise) and
# log in the test's temp dir.  Two ACL users: "default" with the admin
# password (used by this module) and "outbox_test" with its own password.
#
# Every server is stopped at the end of the test, even on failure.

package OutboxRedis;

use strict;
use warnings;

use Carp;
use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxTest;

our @servers;

# The redis-server binary, or undef.
sub server_binary
{
	for my $dir (split(/:/, $ENV{PATH} // ''), '/usr/bin', '/usr/sbin', '/usr/local/bin')
	{
		my $f = "$dir/redis-server";
		return $f if -x $f;
	}
	return undef;
}

# What the redis publisher's tests need and do not find here: the plug-in,
# the server.
sub missing
{
	my $pkglibdir = `$ENV{PG_CONFIG} --pkglibdir` if $ENV{PG_CONFIG};
	$pkglibdir //= `pg_config --pkglibdir`;
	chomp $pkglibdir;
	my @missing;
	push @missing,
	  "the outbox_redis plug-in ($pkglibdir/outbox_redis.so; build with libhiredis-dev and make install)"
	  unless -f "$pkglibdir/outbox_redis.so";
	push @missing, "redis-server (apt-get install redis-server)"
	  unless server_binary();
	return @missing;
}

# Skip the whole test (plan skip_all) when the plug-in or the server is
# missing; with OUTBOX_REQUIRE_BROKERS set, fail instead.
sub require_redis
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

=item OutboxRedis->start($name, %options)

Start redis-server and wait until it answers.  Options: appendfsync
('everysec'), conf (extra redis.conf lines).

=cut

sub start
{
	my ($class, $name, %opt) = @_;
	my $dir = PostgreSQL::Test::Utils::tempdir("redis_$name");
	my $self = bless {
		name => $name,
		dir => $dir,
		port => PostgreSQL::Test::Cluster::get_free_port(),
		admin_password => 'admin-' . join('', map { ('a' .. 'z')[ rand 26 ] } 1 .. 16),
		user => 'outbox_test',
		password => 'pw-' . join('', map { ('a' .. 'z')[ rand 26 ] } 1 .. 16),
		log => "$PostgreSQL::Test::Utils::log_path/redis_$name.log",
	}, $class;
	my $fsync = $opt{appendfsync} // 'everysec';
	open(my $fh, '>', "$dir/redis.conf") or die "cannot write redis.conf: $!";
	print $fh qq{bind 127.0.0.1
port $self->{port}
dir $dir
daemonize no
protected-mode no
logfile $self->{log}
save ""
appendonly yes
appendfsync $fsync
user default on >$self->{admin_password} ~* &* +\@all
user $self->{user} on >$self->{password} ~* &* +\@all
};
	print $fh $opt{conf} // '';
	close $fh;
	push @servers, $self;
	$self->start_again;
	return $self;
}

=pod

=item $r->start_again

(Re)start the server: same port, same data (the AOF is read back).

=cut

sub start_again
{
	my ($self) = @_;
	croak "server $self->{name} is running" if $self->{pid};
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDIN, '<', '/dev/null') or die;
		open(STDOUT, '>>', $self->{log}) or die;
		open(STDERR, '>&', \*STDOUT) or die;
		exec(server_binary(), "$self->{dir}/redis.conf") or die "exec: $!";
	}
	$self->{pid} = $pid;
	delete $self->{sock};
	my $ok = OutboxTest::wait_until(
		30,
		sub {
			my $reply = eval { $self->command('PING') };
			return defined $reply && $reply eq 'PONG';
		});
	$ok or croak "redis-server $self->{name} did not start; see $self->{log}";
	return;
}

=pod

=item $r->stop($signal)

Stop the server (TERM: Redis writes its AOF out first; KILL: a crash) and
wait for it.

=cut

sub stop
{
	my ($self, $signal) = @_;
	my $pid = delete $self->{pid} or return;
	delete $self->{sock};
	kill($signal // 'TERM', $pid);
	waitpid($pid, 0);
	return;
}

# What points the redis publisher at this server: postgresql.conf lines
# (outbox.redis_url, outbox.redis_username, outbox.redis_password), or a
# destination's options as JSON members without braces.
sub settings
{
	my ($self) = @_;
	return "outbox.redis_url = '" . $self->url . "'\noutbox.redis_username = '$self->{user}'\n"
	  . "outbox.redis_password = '$self->{password}'\n";
}

sub options
{
	my ($self) = @_;
	return '"url": "' . $self->url . qq{", "username": "$self->{user}", "password": "$self->{password}"};
}

sub port { return $_[0]{port} }
sub url { return "redis://127.0.0.1:$_[0]{port}" }
sub user { return $_[0]{user} }
sub password { return $_[0]{password} }
sub admin_password { return $_[0]{admin_password} }

# A connection of our own, authenticated as the default user.
sub connection
{
	my ($self) = @_;
	return $self->{sock} if $self->{sock};
	my $sock = IO::Socket::INET->new(
		PeerAddr => '127.0.0.1',
		PeerPort => $self->{port},
		Proto => 'tcp',
		Timeout => 10) or die "cannot connect to redis: $!";
	binmode $sock;
	$self->{sock} = $sock;
	my $ok = $self->command('AUTH', $self->{admin_password});
	return $sock;
}

# Read one RESP reply: errors come back as { error => text }.
sub read_reply
{
	my ($sock) = @_;
	my $line = <$sock>;
	die "redis closed the connection" unless defined $line;
	$line =~ s/\r\n\z//;
	my ($type, $rest) = (substr($line, 0, 1), substr($line, 1));
	return $rest if $type eq '+';
	return { error => $rest } if $type eq '-';
	return $rest + 0 if $type eq ':';
	if ($type eq '$')
	{
		return undef if $rest < 0;
		my $data = '';
		while (length($data) < $rest + 2)
		{
			my $n = read($sock, $data, $rest + 2 - length($data), length($data));
			die "redis closed the connection" unless $n;
		}
		return substr($data, 0, $rest);
	}
	if ($type eq '*')
	{
		return undef if $rest < 0;
		return [ map { read_reply($sock) } 1 .. $rest ];
	}
	die "unexpected reply from redis: $line";
}

=pod

=item $r->command(@args)

Run one command; returns the reply (strings, numbers, array references,
undef for nil, { error => text } for an error).

=cut

sub command
{
	my ($self, @args) = @_;
	my $sock = $self->connection;
	my $cmd = '*' . scalar(@args) . "\r\n";
	$cmd .= '$' . length($_) . "\r\n$_\r\n" for @args;
	print $sock $cmd;
	$sock->flush;
	return read_reply($sock);
}

=pod

=item $r->xrange($stream)

Every entry of the stream in order: hashes with id and fields (name =>
value, bytes as they are).

=item $r->xlen($stream)

=cut

sub xrange
{
	my ($self, $stream) = @_;
	my $reply = $self->command('XRANGE', $stream, '-', '+');
	croak "XRANGE $stream: $reply->{error}" if ref $reply eq 'HASH';
	return map { { id => $_->[0], fields => { @{ $_->[1] } } } } @$reply;
}

sub xlen
{
	my ($self, $stream) = @_;
	my $n = eval { $self->command('XLEN', $stream) };
	return (defined $n && !ref $n) ? $n : undef;
}

=pod

=item OutboxRedis::entry_id($uuid)

The stream entry id a message id names: its milliseconds, then its 42-bit
counter and the next 20 bits.

=cut

sub entry_id
{
	my ($uuid) = @_;
	(my $hex = $uuid) =~ s/-//g;
	my @b = map { hex(substr($hex, 2 * $_, 2)) } 0 .. 15;
	my $ms = 0;
	$ms = $ms * 256 + $b[$_] for 0 .. 5;
	my $counter = (($b[6] & 0x0f) << 38) | ($b[7] << 30) | (($b[8] & 0x3f) << 24)
	  | ($b[9] << 16) | ($b[10] << 8) | $b[11];
	my $tail = ($b[12] << 12) | ($b[13] << 4) | ($b[14] >> 4);
	return "$ms-" . (($counter << 20) | $tail);
}

=pod

=item $r->source($stream)

An OutboxChecker source over the stream (see OutboxRedis::Source).

=back

=cut

sub source
{
	my ($self, $stream) = @_;
	return OutboxRedis::Source->new($self, $stream);
}

END
{
	my $rc = $?;
	for my $r (@servers)
	{
		$r->stop('KILL') if $r->{pid};
	}
	$? = $rc;
}

##########################################################################

package OutboxRedis::Source;

=pod

=head1 OutboxRedis::Source

A consumer source for OutboxChecker: the entries of a stream, in stream
order, as they are (no deduplication: the stream must hold each message
once).

=cut

use strict;
use warnings;

use JSON::PP;

sub new
{
	my ($class, $r, $stream) = @_;
	return bless { r => $r, stream => $stream }, $class;
}

sub name { return "stream $_[0]{stream}" }
sub ordered { return 1 }
sub epochs { return 1 }
sub completeness { return 'every committed message' }

sub deliveries
{
	my ($self) = @_;
	my @d;
	my $json = JSON::PP->new;
	for my $e ($self->{r}->xrange($self->{stream}))
	{
		my $f = $e->{fields};
		my $body = eval { $json->decode($f->{payload}) } // {};
		push @d,
		  {
			id => $f->{id},
			key => $f->{key},
			seq => $body->{s},
			token => $body->{t},
			epoch => 1,
		  };
	}
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
