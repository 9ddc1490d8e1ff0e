# 171_pgbouncer.pl -- the outbox behind pgbouncer in transaction pooling
# mode.
#
# Debian's pgbouncer, started here on loopback, pools a few server
# connections for many clients, each transaction on whichever server
# connection is free (server_round_robin, so every pooled connection gets
# transactions).  Through it: outbox.save() and the batch path (INSERT INTO
# outbox.messages), in multi-statement transactions of concurrent pgbench
# clients; create_destination, subscribe and unsubscribe.  Routing changes
# made by one client are seen at once by every pooled server connection
# (each backend caches its routes): the saves of the phase after subscribe
# all reach the new destination, those after unsubscribe the default one,
# though they ran on the same server connections as before (pids recorded
# with each save).  What counts is what the consumer, an HTTP receiver,
# received.  Nothing depends on session state.
#
# Needs pgbouncer: skipped without it, unless OUTBOX_REQUIRE_HA or
# OUTBOX_REQUIRE_BROKERS is set (then a failure).

use strict;
use warnings;

use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxHttp;
use OutboxTest;

my $pgbouncer = '/usr/sbin/pgbouncer';
unless (-x $pgbouncer)
{
	local $ENV{OUTBOX_REQUIRE_BROKERS} = 1 if $ENV{OUTBOX_REQUIRE_HA};
	OutboxTest::missing("$pgbouncer is not installed (apt-get install pgbouncer)");
}

my $srv = OutboxHttp->start;
my $node = OutboxTest::new_node('pgbouncer', conf => q{
outbox.publisher = 'http'
outbox.http_url = '} . $srv->url('/default/{topic}') . q{'
outbox.poll_interval = '100ms'
});
$node->safe_psql('postgres',
	'CREATE TABLE public.saves (id uuid PRIMARY KEY, phase int NOT NULL, backend int NOT NULL)');

# pgbouncer: transaction pooling, three server connections for everyone
# (kept open: min_pool_size), used in turn (server_round_robin).
my $dir = PostgreSQL::Test::Utils::tempdir('pgbouncer');
my $bport = PostgreSQL::Test::Cluster::get_free_port();
open my $fh, '>', "$dir/userlist.txt" or die $!;
print $fh qq{"postgres" ""\n};
close $fh;
open $fh, '>', "$dir/pgbouncer.ini" or die $!;
print $fh "[databases]\n",
  'postgres = host=', $node->host, ' port=', $node->port, " dbname=postgres\n",
  "[pgbouncer]\n",
  "listen_addr = 127.0.0.1\n",
  "listen_port = $bport\n",
  "unix_socket_dir =\n",
  "auth_type = trust\n",
  "auth_file = $dir/userlist.txt\n",
  "pool_mode = transaction\n",
  "default_pool_size = 3\n",
  "min_pool_size = 3\n",
  "max_client_conn = 100\n",
  "server_round_robin = 1\n",
  "logfile = $dir/pgbouncer.log\n",
  "pidfile = $dir/pgbouncer.pid\n";
close $fh;
my $bouncer = IPC::Run::start([ $pgbouncer, "$dir/pgbouncer.ini" ],
	'<', \undef, '>', "$dir/pgbouncer.out", '2>&1');

my @via = ('-h', '127.0.0.1', '-p', $bport, '-U', 'postgres', '-d', 'postgres');

# Run $sql through pgbouncer in a new client connection; its output.
sub bounced_psql
{
	my ($sql) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'psql', '-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', @via, '-c', $sql ],
		'<', \undef, '>', \$out, '2>', \$err)
	  or die "psql through pgbouncer failed: $err";
	chomp $out;
	return $out;
}

ok( OutboxTest::wait_until(
		$OutboxTest::TIMEOUT, sub { (eval { bounced_psql('SELECT 1') } // '') eq '1' }),
	'pgbouncer accepts clients') or BAIL_OUT('pgbouncer did not start: ' . slurp_file("$dir/pgbouncer.out"));

# Concurrent clients saving through pgbouncer, each transaction on a pooled
# server connection: one message by outbox.save() and two by the batch
# path, each recorded with the phase and the server backend that ran it.
my $script = "$dir/save.sql";
open $fh, '>', $script or die $!;
print $fh <<'EOF';
BEGIN;
INSERT INTO public.saves
	SELECT outbox.save('pool.' || :client_id, jsonb_build_object('phase', :phase), 'k' || :client_id),
		:phase, pg_backend_pid();
WITH m AS (
	INSERT INTO outbox.messages (topic, key, payload)
	SELECT 'pool.batch', 'b' || :client_id, convert_to('{"phase": ' || :phase || '}', 'UTF8')
	FROM generate_series(1, 2)
	RETURNING id)
INSERT INTO public.saves SELECT id, :phase, pg_backend_pid() FROM m;
COMMIT;
EOF
close $fh;

sub save_phase
{
	my ($phase) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run(
		[ 'pgbench', '-n', @via[0 .. 5], '-c', 6, '-j', 2, '-t', 20, '-D', "phase=$phase", '-f', $script, 'postgres' ],
		'<', \undef, '>', \$out, '2>', \$err)
	  or die "pgbench through pgbouncer failed: $out $err";
	return;
}

# The pids of the server backends that ran the saves of $phase.
sub backends
{
	my ($phase) = @_;
	return split /\n/,
	  $node->safe_psql('postgres', "SELECT DISTINCT backend FROM public.saves WHERE phase = $phase ORDER BY 1");
}

# Wait until every recorded save reached the receiver; then which paths
# (destinations) each message of $phase reached: { path => count }.
sub delivered_to
{
	my ($phase) = @_;
	my %phase_of = map { split /\|/ } split /\n/,
	  $node->safe_psql('postgres', 'SELECT id, phase FROM public.saves');
	my %paths;
	OutboxTest::wait_until(
		$OutboxTest::TIMEOUT,
		sub {
			my %seen;
			for my $r ($srv->requests)
			{
				my ($path) = $r->{path} =~ m{^/(\w+)/} or next;
				$seen{ $r->{id} }{$path} = 1;
			}
			return 0 if grep { !$seen{$_} } keys %phase_of;
			%paths = ();
			for my $id (grep { $phase_of{$_} == $phase } keys %phase_of)
			{
				$paths{$_}++ for keys %{ $seen{$id} };
			}
			return 1;
		}) or diag('not every save was delivered');
	return \%paths;
}

########################################################################
# Phase 1: no destination; everything goes to the default one.

save_phase(1);
my @pool = backends(1);
cmp_ok(scalar @pool, '>=', 2, 'the saves ran on several pooled server connections')
  or diag("backends: @pool");
cmp_ok(scalar @pool, '<=', 3, 'no more than the pool holds');
# The pool's server connections (the only other client backends), whether
# phase 1 used each or not.
my $pooled = "FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()";
ok(OutboxTest::poll_until($node, 'postgres', "SELECT count(*) $pooled", '3'),
	'pgbouncer holds three server connections');
@pool = split /\n/, $node->safe_psql('postgres', "SELECT pid $pooled");
is_deeply(delivered_to(1), { default => 360 },
	'before any subscription: every message to the default destination');

########################################################################
# Phase 2: a destination made and subscribed through one client.

my $hook = $srv->url('/hook/{topic}');
bounced_psql(qq{SELECT outbox.create_destination('hook', 'http', '{"url": "$hook"}')});
bounced_psql(q{SELECT outbox.subscribe('hook', 'pool.>')});
save_phase(2);
my %was_pooled = map { $_ => 1 } @pool;
my @phase2 = backends(2);
is_deeply([ grep { !$was_pooled{$_} } @phase2 ], [],
	'the next saves ran on the server connections pooled before the subscription');
cmp_ok(scalar @phase2, '>=', 2, 'several of them');
is_deeply(delivered_to(2), { hook => 360 },
	'every pooled connection routed by the new subscription at once: all to the destination');

########################################################################
# Phase 3: unsubscribed through another client.

bounced_psql(q{SELECT outbox.unsubscribe('hook', 'pool.>')});
save_phase(3);
is_deeply([ grep { !$was_pooled{$_} } backends(3) ], [], 'on the same pooled server connections');
is_deeply(delivered_to(3), { default => 360 }, 'after unsubscribe: all to the default destination again');

is( $node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.messages WHERE status <> 'processed' OR id NOT IN (SELECT id FROM public.saves)"),
	'0',
	'the outbox holds exactly the saved messages, all processed');

$bouncer->kill_kill(grace => 5);
eval { $bouncer->finish };
done_testing();
