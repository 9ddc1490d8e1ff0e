# 151_stats_cost.pl -- outbox.stats and outbox.destination_stats read the
# partial indexes of the unfinished messages, never the processed ones.
#
# With 300,000 processed messages kept (the table is thousands of pages)
# and a handful of unfinished ones, EXPLAIN (ANALYZE, BUFFERS) of each view
# touches a few dozen buffers, the transaction's own statistics
# (pg_stat_xact_user_tables) show no sequential scan of outbox.messages and
# only the unfinished rows fetched, and the figures are right: pending,
# processing and failed counted, processed estimated from the statistics
# system.  (Its time at 6,000,000 rows is measured in bench/stats.sh.)

use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxTest;

my $processed = 300_000;
my $node = OutboxTest::new_node('stats_cost', conf => "outbox.enabled = off");

$node->safe_psql(
	'postgres', qq{
SELECT outbox.create_destination('hooks', 'notify', '{"channel": "hooks"}');
INSERT INTO outbox.messages (topic, key, payload, status, processed_at)
    SELECT 'bulk.' || (i % 10), 'k' || (i % 1000), convert_to(repeat('x', 100), 'UTF8'),
           'processed', now()
    FROM generate_series(1, $processed) i;
INSERT INTO outbox.messages (topic, payload) SELECT 'live.a', '\\x00' FROM generate_series(1, 10);
INSERT INTO outbox.messages (topic, payload, status, last_error)
    SELECT 'live.b', '\\x00', 'failed', 'HTTP 500' FROM generate_series(1, 3);
INSERT INTO outbox.messages (topic, payload, status, claimed_at, claimed_by)
    SELECT 'live.c', '\\x00', 'processing', now(), 1 FROM generate_series(1, 2);
});
$node->safe_psql('postgres', 'VACUUM ANALYZE outbox.messages');

my $pages = $node->safe_psql('postgres',
	"SELECT relpages FROM pg_class WHERE oid = 'outbox.messages'::regclass");
cmp_ok($pages, '>', 2000, "the table holds $processed processed messages in $pages pages");

# The buffers a query touches (shared hit + read, planning left out), and
# the tables its plan reads sequentially.
sub cost_of
{
	my ($query) = @_;
	my $json = $node->safe_psql('postgres',
		"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) $query");
	my $plan = decode_json($json)->[0]{Plan};
	my %seq;
	my @nodes = ($plan);
	while (my $n = shift @nodes)
	{
		$seq{ $n->{'Relation Name'} }++ if $n->{'Node Type'} eq 'Seq Scan';
		push @nodes, @{ $n->{Plans} // [] };
	}
	return ($plan->{'Shared Hit Blocks'} + $plan->{'Shared Read Blocks'}, \%seq);
}

for my $view ('outbox.stats', 'outbox.destination_stats')
{
	my ($buffers, $seq) = cost_of("SELECT * FROM $view");
	cmp_ok($buffers, '<', 100, "SELECT * FROM $view touches $buffers buffers (of $pages pages)");
	ok(!$seq->{messages}, "its plan reads outbox.messages through indexes only")
	  or diag('sequential scans: ' . join(', ', sort keys %$seq));
}

# The same through the transaction's own table statistics: no sequential
# scan, and only the unfinished rows fetched from the table.
my $scans = $node->safe_psql(
	'postgres', q{
BEGIN;
SELECT count(*) FROM outbox.stats;
SELECT count(*) FROM outbox.destination_stats;
SELECT seq_scan, idx_tup_fetch FROM pg_stat_xact_user_tables
WHERE relid = 'outbox.messages'::regclass;
COMMIT;
});
my ($seq_scan, $fetched) = (split /\n/, $scans)[-1] =~ /^(\d+)\|(\d+)$/;
is($seq_scan, 0, 'no sequential scan of outbox.messages');
cmp_ok($fetched, '<=', 2 * 15 + 10,
	"$fetched rows fetched from it: the 15 unfinished ones (once per view), not the processed ones");

# And the figures.
is( $node->safe_psql('postgres',
		"SELECT pending, processing, failed FROM outbox.stats WHERE topic IS NULL"),
	'10|2|3',
	'the total row counts the unfinished messages');
my $estimate = $node->safe_psql('postgres',
	"SELECT processed FROM outbox.stats WHERE topic IS NULL");
cmp_ok(abs($estimate - $processed), '<=', $processed / 100,
	"processed is estimated ($estimate for $processed)");
is( $node->safe_psql('postgres',
		"SELECT string_agg(topic || ':' || pending || ':' || processing || ':' || failed, ' ' ORDER BY topic) "
		  . "FROM outbox.stats WHERE topic IS NOT NULL"),
	'live.a:10:0:0 live.b:0:0:3 live.c:0:2:0',
	'and per topic');
is( $node->safe_psql('postgres',
		"SELECT destination || ':' || pending || ':' || failed FROM outbox.destination_stats ORDER BY destination"),
	"default:10:3\nhooks:0:0",
	'destination_stats: the default destination and hooks');

$node->stop;
done_testing();
