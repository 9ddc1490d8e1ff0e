
# 002_batch_drain.pl -- a backlog of 10,000 messages saved by one
# INSERT ... SELECT drains completely: every message reaches the listener
# exactly once, each is marked processed, and the messages of each of the
# 50 keys arrive in the order they were saved.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxTest;

my $total = 10_000;
my $nkeys = 50;

my $node = OutboxTest::new_node('drain',
	conf => "outbox.poll_interval = '200ms'");
my $listener = OutboxTest::Listener->new($node, 'postgres', 'drain');

# Row g gets key k<g % 50> and sequence number g / 50 within its key; the
# ids (and so the order per key) follow g.
my $t0 = time();
$node->safe_psql(
	'postgres', qq{
INSERT INTO outbox.messages (topic, key, payload, headers)
SELECT 'drain', 'k' || (g % $nkeys),
       convert_to(json_build_object('key', 'k' || (g % $nkeys), 'seq', g / $nkeys, 'g', g)::text, 'UTF8'),
       jsonb_build_object('trace_id', 'drain-' || g)
FROM generate_series(0, $total - 1) g});

ok($listener->wait_count($total, 120), "all $total messages arrived");
note(sprintf('%d notifications in %.1f s', scalar @{ $listener->received },
		time() - $t0));
ok(OutboxTest::wait_all_processed($node, 'postgres', 60),
	'every message is marked processed');
is($node->safe_psql('postgres', "SELECT count(*) FROM outbox.messages WHERE status = 'processed'"),
	$total, "$total processed rows");

my $received = $listener->received;
is(scalar @$received, $total, 'exactly as many notifications as messages');

my (%seen_id, %seen_g, $dups, $bad, %last_seq, $out_of_order);
$dups = $bad = $out_of_order = 0;
for my $n (@$received)
{
	my $e = $n->{envelope};
	if (!$e || ref $e->{payload} ne 'HASH')
	{
		$bad++;
		next;
	}
	my $p = $e->{payload};
	$dups++ if $seen_id{ $e->{id} }++;
	$seen_g{ $p->{g} }++;
	$bad++ if $e->{key} ne $p->{key} || $e->{topic} ne 'drain'
		|| ($e->{headers}{trace_id} // '') ne "drain-$p->{g}";
	if (exists $last_seq{ $p->{key} } && $p->{seq} <= $last_seq{ $p->{key} })
	{
		diag("key $p->{key}: seq $p->{seq} after $last_seq{$p->{key}}")
		  if $out_of_order++ < 5;
	}
	$last_seq{ $p->{key} } = $p->{seq};
}
is($bad, 0, 'every notification is a well-formed envelope of its message');
is($dups, 0, 'no message arrived twice');
is(scalar(keys %seen_id), $total, "$total distinct ids arrived");
is(scalar(grep { defined $seen_g{$_} } 0 .. $total - 1),
	$total, 'every saved row arrived');
is(scalar(keys %last_seq), $nkeys, "messages of all $nkeys keys arrived");
is($out_of_order, 0, 'per key, messages arrived in increasing sequence');
is_deeply(
	[ sort { $a <=> $b } values %last_seq ],
	[ (($total / $nkeys) - 1) x $nkeys ],
	'the last message of each key arrived last');

# The ids received are exactly those in the table.
my $table_ids = $node->safe_psql('postgres',
	"SELECT string_agg(id::text, ',' ORDER BY id) FROM outbox.messages");
is_deeply([ sort keys %seen_id ], [ split /,/, $table_ids ],
	'the ids received are the ids stored');

$listener->quit;
$node->stop;
done_testing();
