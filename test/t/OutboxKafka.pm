
# OutboxKafka.pm -- the librdkafka mock cluster (test/brokers/kafka_mock) for
# the tests of the "kafka" publisher (110_kafka.pl, 122_publisher_lifecycle.pl).
#
#   my @missing = OutboxKafka::missing();   # what is not here (plug-in, helper)
#   OutboxKafka::require_kafka();           # skip_all (or fail under
#                                           # OUTBOX_REQUIRE_BROKERS) if missing
#   my $kafka = OutboxKafka->start('orders', 'payments');
#   $kafka->bootstrap;                      # "host:port,..." of its brokers
#   $kafka->command('topic errors 1');      # a kafka_mock command; its answer
#   $kafka->wait_records(@ids);             # every id consumed once at least
#   my @r = $kafka->records_of(@ids);       # hashes: topic, key, value, h
#   $kafka->command('down');                # brokers refuse connections ('up')
#
# kafka_mock prints every record it consumes as a JSON line; each record
# here has its headers as h => { name => [values] } too.  The mock is
# stopped at the end of the test, even on failure.

package OutboxKafka;

use strict;
use warnings;

use Carp;
use File::Basename qw(dirname);
use File::Spec;
use IPC::Run ();
use JSON::PP;
use Test::More;

use OutboxTest;

our @mocks;

my $brokers_dir = File::Spec->rel2abs(File::Spec->catdir(dirname(__FILE__), '..', 'brokers'));
my $mock_bin = "$brokers_dir/kafka_mock";

# What the kafka publisher's tests need and do not find here (built on the
# way when only the helper is missing).
sub missing
{
	my $pg_config = $ENV{PG_CONFIG} // 'pg_config';
	my $pkglibdir = `$pg_config --pkglibdir`;
	chomp $pkglibdir;
	my @missing;
	push @missing, "outbox_kafka is not installed in $pkglibdir (build with librdkafka-dev)"
	  unless -f "$pkglibdir/outbox_kafka.so";
	system('make', '-s', '-C', $brokers_dir, 'BROKERS=kafka', 'kafka_mock') unless -x $mock_bin;
	push @missing, "$mock_bin is missing (make -C test/brokers)" unless -x $mock_bin;
	return @missing;
}

# Skip the whole test when something is missing (fail under
# OUTBOX_REQUIRE_BROKERS).
sub require_kafka
{
	my @missing = missing();
	OutboxTest::missing(join('; ', @missing)) if @missing;
	return;
}

=pod

=head1 METHODS

=over

=item OutboxKafka->start(@topics)

Start kafka_mock with these topics (4 partitions each) and wait for its
bootstrap line.

=cut

sub start
{
	my ($class, @topics) = @_;
	my $self = bless { in => '', out => '', err => '', records => [], replies => [],
		json => JSON::PP->new }, $class;
	$self->{h} = IPC::Run::start([ $mock_bin, @topics ], \$self->{in}, \$self->{out}, \$self->{err});
	push @mocks, $self;
	OutboxTest::wait_until(30, sub { $self->drain; @{ $self->{replies} } > 0 })
	  or OutboxTest::missing("kafka_mock did not start: $self->{err}");
	($self->{bootstrap}) = $self->{replies}[0] =~ /^bootstrap (\S+)$/;
	return $self;
}

=pod

=item $kafka->bootstrap, $kafka->pid

The brokers' addresses; the mock's process id (to freeze it with SIGSTOP).

=cut

sub bootstrap { return $_[0]{bootstrap} }
sub pid { return $_[0]{h}{KIDS}[0]{PID} }

=pod

=item $kafka->drain

Read what kafka_mock printed so far: records (JSON lines) and answers.

=cut

sub drain
{
	my ($self) = @_;
	$self->{h}->pump_nb;
	while ((my $i = index($self->{out}, "\n")) >= 0)
	{
		my $line = substr($self->{out}, 0, $i);
		substr($self->{out}, 0, $i + 1) = '';
		if ($line =~ /^\{/)
		{
			my $r = $self->{json}->decode($line);
			$r->{h} = {};
			push @{ $r->{h}{ $_->[0] } }, $_->[1] for @{ $r->{headers} };
			push @{ $self->{records} }, $r;
		}
		else
		{
			push @{ $self->{replies} }, $line;
		}
	}
	return;
}

=pod

=item $kafka->command($cmd)

Send a command (see kafka_mock.c), return its answer line.

=cut

sub command
{
	my ($self, $cmd) = @_;
	my $before = scalar @{ $self->{replies} };
	$self->{in} .= "$cmd\n";
	OutboxTest::wait_until(10, sub { $self->drain; @{ $self->{replies} } > $before })
	  or croak "kafka_mock did not answer \"$cmd\"";
	return $self->{replies}[$before];
}

=pod

=item $kafka->records, $kafka->records_of(@ids)

The records read so far, all of them or those whose outbox-id header is
one of @ids.

=item $kafka->wait_records(@ids)

Wait until every id has arrived at least once; returns 1, or 0 (with a
diagnostic) after the usual timeout.

=cut

sub records { return @{ $_[0]{records} } }

sub records_of
{
	my ($self, @ids) = @_;
	my %want = map { $_ => 1 } @ids;
	return grep { $want{ $_->{h}{'outbox-id'}[0] // '' } } @{ $self->{records} };
}

sub wait_records
{
	my ($self, @ids) = @_;
	my $ok = OutboxTest::wait_until(
		$OutboxTest::TIMEOUT,
		sub {
			$self->drain;
			my %seen = map { ($_->{h}{'outbox-id'}[0] // '') => 1 } @{ $self->{records} };
			return !grep { !$seen{$_} } @ids;
		});
	diag('not every message arrived in Kafka') unless $ok;
	return $ok;
}

=pod

=item $kafka->stop

Ask the mock to quit and wait for it.

=back

=cut

sub stop
{
	my ($self) = @_;
	return unless $self->{h};
	$self->{in} .= "quit\n";
	$self->{h}->finish;
	delete $self->{h};
	return;
}

END
{
	my $rc = $?;
	for my $m (@mocks)
	{
		$m->{h}->kill_kill if $m->{h};
	}
	$? = $rc;
}

1;
