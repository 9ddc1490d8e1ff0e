
# 066_stale_statistics.pl -- a backlog drained with table statistics that
# are out of date.
#
# The table was analyzed while it was small and every message pending (a
# new installation, or a backlog analyzed before it drained); then many
# more messages came and were published, faster than autovacuum analyzes
# again (it waits for 10% of the table to change, and for its naptime; it
# may be behind, or off).  The statistics still say "all pending".  New
# messages must still be claimed at a cost that does not grow with the
# processed messages in the table.
#
# The risk is in the claim's scan of the pending messages in id order.
# Planned with "all pending" statistics, it may walk the primary key in id
# order and filter on status, through every processed message: a claim then
# costs as much as the table is large, exactly while a backlog drains.  (An
# earlier claim looked up each key's oldest unfinished message, with the
# same risk.)
#
# auto_explain (log_analyze, nested statements) logs the plans of the
# worker's claims while 300 new messages drain one per batch; no claim may
# filter out more than a handful of rows, and the scan must read the index
# of pending messages.  Autovacuum is off for the table so that the
# statistics stay stale.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxTest;

my $old = 50_000;

my $node = OutboxTest::new_node(
	'stale_statistics', conf => qq{
shared_preload_libraries = 'outbox,auto_explain'
outbox.poll_interval = '100ms'
outbox.batch_size = 1
log_statement = 'none'
auto_explain.log_min_duration = -1
auto_explain.log_analyze = on
auto_explain.log_timing = off
auto_explain.log_nested_statements = on
});

sub q1 { return $node->safe_psql('postgres', $_[0]) }

# Analyzed with 1,000 pending messages; then $old more, all published (here
# marked processed directly, which is what the worker's marks do).
OutboxTest::set_conf($node, 'outbox.enabled' => 'off');
q1('ALTER TABLE outbox.messages SET (autovacuum_enabled = off)');
q1( q{INSERT INTO outbox.messages (topic, key, payload)
	SELECT 'old', 'k' || (g % 16), convert_to('{}', 'UTF8') FROM generate_series(1, 1000) g});
q1('ANALYZE outbox.messages');
q1( qq{INSERT INTO outbox.messages (topic, key, payload)
	SELECT 'old', 'k' || (g % 16), convert_to('{}', 'UTF8') FROM generate_series(1, $old) g});
q1(q{UPDATE outbox.messages SET status = 'processed', processed_at = now()});
$old += 1000;
is( q1(q{SELECT most_common_vals::text FROM pg_stats
	     WHERE schemaname = 'outbox' AND tablename = 'messages' AND attname = 'status'}),
	'{pending}', "the statistics still say every message is pending ($old are processed)");

# New messages, drained one per batch while auto_explain logs the claims.
q1( q{INSERT INTO outbox.messages (topic, key, payload)
	SELECT 'new', 'k' || (g % 16), convert_to('{}', 'UTF8') FROM generate_series(1, 300) g});
my $offset = OutboxTest::log_position($node);
OutboxTest::set_conf($node,
	'auto_explain.log_min_duration' => '0',
	'outbox.enabled' => 'on');
my $t0 = time();
ok(OutboxTest::wait_all_processed($node, 'postgres', 120), 'the new messages are published');
my $took = time() - $t0;
OutboxTest::set_conf($node, 'auto_explain.log_min_duration' => '-1');
note(sprintf('300 messages, one per batch, in %.1f s', $took));

# The worker's claims: plans of the statement that scans the pending
# messages in id order.
my ($claims, $max_removed, %scan_index) = (0, 0);
my @plans = split /\n(?=\S.*LOG:  duration: )/, slurp_file($node->logfile, $offset);
for my $plan (grep { /SELECT m\.ctid, m\.id, m\.key/ } @plans)
{
	$claims++;
	my $removed = 0;
	$removed += $1 while $plan =~ /Rows Removed by Filter: (\d+)/g;
	$max_removed = $removed if $removed > $max_removed;
	$scan_index{$1}++ if $plan =~ /Index Scan using (\w+) on messages m\b/;
}
cmp_ok($claims, '>=', 100, "claims were logged ($claims)");
note('indexes the claims scanned: '
	  . join(', ', map { "$_ ($scan_index{$_} claims)" } sort keys %scan_index));
cmp_ok($max_removed, '<=', 50,
	"no claim filtered through the processed messages (most rows filtered out in one claim: $max_removed, "
	  . "$old processed messages in the table)");
is_deeply([ keys %scan_index ], ['messages_pending_idx'], 'claims scan the index of pending messages');

$node->stop;
done_testing();
