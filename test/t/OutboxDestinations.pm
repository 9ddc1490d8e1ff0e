# OutboxDestinations.pm -- helpers for the TAP tests of destinations
# (090-097): their workers, webhook signatures, and an HTTP receiver as an
# OutboxChecker source.
#
#   my %pid = OutboxDestinations::worker_pids($node);        # name => pid
#   my $pid = OutboxDestinations::wait_worker($node, 'hooks');
#   ok(OutboxDestinations::signature_ok($request, $key));
#   my $source = OutboxDestinations::HttpSource->new($srv, name => 'receiver A');
#
# Every wait polls a condition with a timeout; nothing sleeps and hopes.

package OutboxDestinations;

use strict;
use warnings;

use Carp;
use File::Basename;
use File::Spec;
use Digest::SHA qw(hmac_sha256);
use MIME::Base64;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxTest;

=pod

=head1 FUNCTIONS

=over

=item worker_pids($node, $dbname)

The running destination workers of $dbname ('postgres'): a hash of
destination name => pid.  pg_stat_activity shows them as backend_type
"outbox destination worker"; the process title names the destination
("outbox worker for destination NAME of database DB").

=cut

sub worker_pids
{
	my ($node, $dbname) = @_;
	$dbname //= 'postgres';
	my $out = OutboxTest::query_value($node, 'postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'outbox destination worker' "
		  . "AND datname = '$dbname'");
	return () unless defined $out;
	my %pids;
	for my $pid (grep { /^\d+$/ } split /\n/, $out)
	{
		open(my $fh, '<', "/proc/$pid/cmdline") or next;
		my $title = do { local $/; <$fh> } // '';
		close $fh;
		$pids{$1} = $pid if $title =~ /outbox worker for destination (\S+) of database/;
	}
	return %pids;
}

=pod

=item wait_worker($node, $name, %options)

Wait until destination $name has a worker and return its pid (0 on
timeout).  Options: not_pid => a pid it must not have (a restarted
worker), timeout, dbname.

=item wait_no_worker($node, $name, $timeout)

Wait until destination $name has no worker (paused, disabled, dropped).

=cut

sub wait_worker
{
	my ($node, $name, %opt) = @_;
	my $not_pid = $opt{not_pid} // -1;
	my $pid = OutboxTest::wait_until(
		$opt{timeout} // $OutboxTest::TIMEOUT,
		sub {
			my %p = worker_pids($node, $opt{dbname});
			return (defined $p{$name} && $p{$name} != $not_pid) ? $p{$name} : 0;
		});
	diag("no worker for destination $name") unless $pid;
	return $pid;
}

sub wait_no_worker
{
	my ($node, $name, $timeout) = @_;
	my $ok = OutboxTest::wait_until($timeout // $OutboxTest::TIMEOUT,
		sub { my %p = worker_pids($node); !defined $p{$name} });
	diag("destination $name still has a worker") unless $ok;
	return $ok;
}

=pod

=item signature_ok($request, $key)

Whether a request of OutboxHttp carries a Standard Webhooks signature
made with $key (the raw key bytes).

=cut

sub signature_ok
{
	my ($req, $key) = @_;
	my $h = $req->{headers};
	return 0 unless defined $h->{'webhook-id'} && defined $h->{'webhook-timestamp'};
	my $signed = "$h->{'webhook-id'}.$h->{'webhook-timestamp'}.$req->{body}";
	my $expected = 'v1,' . encode_base64(hmac_sha256($signed, $key), '');
	return scalar grep { $_ eq $expected } split ' ', ($h->{'webhook-signature'} // '');
}

=pod

=item state($node, $name)

A destination's row of outbox.destinations as a hash (state, paused,
last_error, disabled_reason, options), or undef.

=cut

sub state
{
	my ($node, $name) = @_;
	my $row = OutboxTest::query_value($node, 'postgres',
		"SELECT state, paused, coalesce(last_error, ''), coalesce(disabled_reason, ''), options "
		  . "FROM outbox.destinations WHERE name = '$name'");
	return undef unless defined $row && $row ne '';
	my %s;
	@s{qw(state paused last_error disabled_reason options)} = split /\|/, $row, 5;
	return \%s;
}

=pod

=item nats_available()

Whether the nats publisher can be tested here: the plug-in, its test
helper and nats-server.  With OUTBOX_REQUIRE_BROKERS set, a missing piece
is a failure (BAIL_OUT) instead.

=cut

sub nats_available
{
	require OutboxNats;
	my $pkglibdir = `$ENV{PG_CONFIG} --pkglibdir` if $ENV{PG_CONFIG};
	$pkglibdir //= `pg_config --pkglibdir`;
	chomp $pkglibdir;
	my $helper = File::Spec->rel2abs(
		File::Spec->catfile(File::Basename::dirname(__FILE__), '..', 'brokers', 'nats_js'));
	my @missing;
	push @missing, "$pkglibdir/outbox_nats.so" unless -f "$pkglibdir/outbox_nats.so";
	push @missing, $helper unless -x $helper;
	push @missing, 'nats-server' unless OutboxNats::server_binary();
	return 1 unless @missing;
	BAIL_OUT('OUTBOX_REQUIRE_BROKERS is set, but missing: ' . join(', ', @missing))
	  if $ENV{OUTBOX_REQUIRE_BROKERS};
	note('nats not tested here; missing: ' . join(', ', @missing));
	return 0;
}

=pod

=back

=cut

##########################################################################

package OutboxDestinations::HttpSource;

=pod

=head1 OutboxDestinations::HttpSource

A consumer source for OutboxChecker: what an OutboxHttp receiver answered
with 2xx, in the order the requests started.  The receiver outlives server
crashes, so epochs are given by the test: the times at which it killed
something.  A worker's connections die with it and its successor opens new
ones, so a request's epoch is that of its connection: 1 + the number of
kills before the connection's first request (a request the dead worker had
sent may still be read by the receiver after the kill, on its old
connection).  A message may arrive again in a later epoch (duplicates =>
'crash'), never twice in one.

  my $source = OutboxDestinations::HttpSource->new($srv, name => 'receiver A', topic => 'chk');
  $source->crashed_at(time());     # at each kill -9

=cut

use strict;
use warnings;

use JSON::PP;

sub new
{
	my ($class, $srv, %opt) = @_;
	return bless {
		srv => $srv,
		name => $opt{name} // 'http receiver',
		topic => $opt{topic},
		crashes => [],
	}, $class;
}

sub name { return $_[0]->{name} }
sub ordered { return 1 }
sub epochs { return 1 + scalar @{ $_[0]->{crashes} } }
sub completeness { return 'every committed message' }

sub crashed_at
{
	my ($self, $t) = @_;
	push @{ $self->{crashes} }, $t;
	return;
}

sub deliveries
{
	my ($self) = @_;
	my $json = JSON::PP->new;
	my @d;
	my @filter = defined $self->{topic} ? (topic => $self->{topic}) : ();
	my @requests = $self->{srv}->requests(@filter);
	my %opened;
	for my $r (@requests)
	{
		$opened{ $r->{conn} } = $r->{start}
		  if !defined $opened{ $r->{conn} } || $r->{start} < $opened{ $r->{conn} };
	}
	for my $r (@requests)
	{
		next unless $r->{status} >= 200 && $r->{status} < 300;
		my $body = eval { $json->decode($r->{body}) } // {};
		my $epoch = 1 + scalar grep { $_ <= $opened{ $r->{conn} } } @{ $self->{crashes} };
		push @d,
		  {
			id => $r->{id},
			key => $r->{key},
			seq => $body->{s},
			token => $body->{t},
			epoch => $epoch,
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
