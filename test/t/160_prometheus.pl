# 160_prometheus.pl -- contrib/prometheus/outbox-queries.yaml through the real
# exporter: Debian's prometheus-postgres-exporter, started on a free
# loopback port against the test cluster, as a monitoring role with only
# the grants README documents, scraped over HTTP.
#
#  - the exporter loads the queries file without error, and reaches the
#    database (pg_up 1);
#  - the outbox metrics are there: messages, destination backlog and state,
#    worker counters and state, for the default destination and for a
#    destination;
#  - they move: a backlog while the worker is paused (backlog, oldest age,
#    worker state paused), then the published counter once it publishes.

use strict;
use warnings;

use File::Spec;
use HTTP::Tiny;
use IO::Socket::INET;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxTest qw(wait_until wait_all_processed set_conf);

my $exporter = '/usr/bin/prometheus-postgres-exporter';
unless (-x $exporter)
{
	plan skip_all => "$exporter is not installed (apt-get install prometheus-postgres-exporter)"
	  unless $ENV{OUTBOX_REQUIRE_BROKERS};
	BAIL_OUT("$exporter is not installed");
}

my $queries = File::Spec->catfile($ENV{OUTBOX_SRCDIR} // File::Spec->catdir($ENV{OUTBOX_TEST_DIR}, '..'),
	'contrib', 'prometheus', 'outbox-queries.yaml');
ok(-f $queries, "the queries file is there ($queries)");

my $node = OutboxTest::new_node('prometheus', conf => "outbox.poll_interval = '200ms'");

# The monitoring role, with the grants of README's "Monitoring".
$node->safe_psql(
	'postgres', q{
CREATE ROLE outbox_monitor LOGIN;
GRANT USAGE ON SCHEMA outbox TO outbox_monitor;
GRANT SELECT ON outbox.stats, outbox.destination_stats TO outbox_monitor;
GRANT EXECUTE ON FUNCTION outbox.worker_status() TO outbox_monitor;
SELECT outbox.create_destination('audit', 'notify', '{"channel": "audit"}');
SELECT outbox.subscribe('audit', 'audit.>');
});

# A free loopback port: bind one, let it go, give it to the exporter.
my $probe = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1)
  or die "no free port: $!";
my $port = $probe->sockport;
close $probe;

my ($out, $err) = ('', '');
my $dsn = sprintf('host=%s port=%d user=outbox_monitor dbname=postgres sslmode=disable',
	$node->host, $node->port);
my $run = IPC::Run::start(
	[
		$exporter, "--web.listen-address=127.0.0.1:$port",
		"--extend.query-path=$queries", '--disable-default-metrics',
		'--disable-settings-metrics', '--log.level=warn'
	],
	'<', \undef, '>', \$out, '2>', \$err,
	init => sub { $ENV{DATA_SOURCE_NAME} = $dsn; });

# However the test ends, the exporter stops with it.
END { $run->kill_kill if $run && $run->pumpable; }

my $http = HTTP::Tiny->new(timeout => 10);

# Scrape /metrics: a hash of "name{labels}" => value (labels sorted as the
# exporter prints them), or undef when it does not answer.
sub scrape
{
	my $response = $http->get("http://127.0.0.1:$port/metrics");
	return undef unless $response->{success};
	my %metrics;
	for my $line (split /\n/, $response->{content})
	{
		next if $line =~ /^#/;
		my ($name, $value) = $line =~ /^(\S+)\s+(\S+)$/ or next;
		# the exporter adds a label "server"; leave it out
		$name =~ s/,?server="[^"]*"//;
		$name =~ s/\{,/{/;
		$name =~ s/\{\}//;
		$metrics{$name} = $value;
	}
	return \%metrics;
}

# Wait until a scrape satisfies $check; returns that scrape.
sub wait_scrape
{
	my ($check, $what) = @_;
	my $m;
	my $ok = wait_until($OutboxTest::TIMEOUT, sub { $m = scrape(); return $m && $check->($m); });
	ok($ok, $what)
	  or diag(
		"last scrape:\n"
		  . join("\n", map { "$_ $m->{$_}" } grep { /outbox|pg_up/ } sort keys %{ $m // {} })
		  . "\nexporter's stderr:\n$err");
	return $m;
}

my $def = 'database="postgres",destination="default"';
my $worker = "$def,publisher=\"notify\"";
my $m = wait_scrape(sub { ($_[0]{pg_up} // 0) == 1 && exists $_[0]{"outbox_worker_up{$worker}"} },
	'the exporter answers, connected, with the outbox\'s metrics');
my ($load_error) = grep { /^pg_exporter_user_queries_load_error\{filename="\Q$queries\E"/ } keys %$m;
ok($load_error, 'the exporter read the queries file');
is($m->{ $load_error // '' }, 0, 'without error');

for my $name (
	'outbox_messages_pending{database="postgres"}',
	'outbox_messages_processing{database="postgres"}',
	'outbox_messages_failed{database="postgres"}',
	'outbox_messages_processed{database="postgres"}',
	'outbox_messages_oldest_pending_age_seconds{database="postgres"}',
	"outbox_destination_backlog{$def}",
	"outbox_destination_failed{$def}",
	"outbox_destination_oldest_pending_age_seconds{$def}",
	"outbox_destination_state_active{$def,state=\"ok\"}",
	"outbox_worker_up{$worker}",
	"outbox_worker_published_total{$worker}",
	"outbox_worker_attempts_failed_total{$worker}",
	"outbox_worker_batches_total{$worker}",
	"outbox_worker_last_batch_age_seconds{$worker}",
	"outbox_worker_state_active{$def,state=\"idle\"}")
{
	ok(exists $m->{$name}, "$name is exported");
}
is($m->{"outbox_worker_up{$worker}"}, 1, 'the main worker is up');
is($m->{"outbox_destination_state_active{$def,state=\"ok\"}"}, 1, 'the default destination is ok');

# The destination's worker and backlog.
my $audit = 'database="postgres",destination="audit"';
$m = wait_scrape(sub { ($_[0]{"outbox_worker_up{$audit,publisher=\"notify\"}"} // 0) == 1 },
	'the destination audit\'s worker is exported, up');
is($m->{"outbox_destination_backlog{$audit}"}, 0, 'audit has no backlog');

########################################################################
# They move.

set_conf($node, 'outbox.enabled' => 'off');
my $published = $m->{"outbox_worker_published_total{$worker}"};
$node->safe_psql('postgres', "SELECT outbox.save('metrics.a', '{}'::jsonb) FROM generate_series(1, 5)");
$m = wait_scrape(
	sub {
		($_[0]{"outbox_destination_backlog{$def}"} // 0) == 5
		  && ($_[0]{"outbox_worker_state_active{$def,state=\"paused\"}"} // 0) == 1;
	},
	'paused: a backlog of five, and the worker\'s state paused');
is($m->{'outbox_messages_pending{database="postgres"}'}, 5, 'outbox_messages_pending is 5');
cmp_ok($m->{"outbox_destination_oldest_pending_age_seconds{$def}"}, '>', 0,
	'the oldest pending message has an age');

set_conf($node, 'outbox.enabled' => 'on');
ok(wait_all_processed($node, 'postgres'), 'on again, the worker publishes them');
$m = wait_scrape(
	sub {
		($_[0]{"outbox_worker_published_total{$worker}"} // 0) == $published + 5
		  && ($_[0]{"outbox_destination_backlog{$def}"} // -1) == 0;
	},
	'published_total moved by five, the backlog is 0');
cmp_ok($m->{"outbox_worker_last_batch_age_seconds{$worker}"}, '>=', 0, 'a last batch age');

$node->safe_psql('postgres', "SELECT outbox.save('audit.x', '{}'::jsonb) FROM generate_series(1, 3)");
wait_scrape(sub { ($_[0]{"outbox_worker_published_total{$audit,publisher=\"notify\"}"} // 0) == 3 },
	'the destination\'s published_total moved by three');

$run->signal('TERM');
$run->finish;
$node->stop;
done_testing();
