
# 069_batch_bytes.pl -- outbox.batch_max_bytes bounds a batch's payloads.
#
# The function publisher records, for each message it delivers, the
# transaction it ran in: a transactional publisher claims, publishes and
# marks one batch in one transaction, so the transactions show the batches.
# With outbox.batch_max_bytes = 512kB:
#  - five 300 kB messages go in batches of 2, 2 and 1 (a batch takes no more
#    messages once its payloads reach the limit), under both orderings;
#  - a 2 MB message, larger than the limit, still goes, alone;
#  - small messages still fill batches of outbox.batch_size;
#  - a batch cut by the limit counts as full: the worker goes on at once
#    instead of waiting for outbox.poll_interval (10 s here).

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxTest;

my $node = OutboxTest::new_node('batch_bytes', conf => q{
outbox.publisher = 'function'
outbox.publisher_function = 'app.deliver'
outbox.poll_interval = '10s'
outbox.batch_max_bytes = '512kB'
outbox.enabled = off
});
$node->safe_psql('postgres', q{
CREATE SCHEMA app;
CREATE TABLE app.seen (id uuid, topic text, xid xid8, bytes int);
CREATE FUNCTION app.deliver(m outbox.messages) RETURNS void LANGUAGE sql AS $$
	INSERT INTO app.seen VALUES (m.id, m.topic, pg_current_xact_id(), octet_length(m.payload))
$$;
});

sub q1 { return $node->safe_psql('postgres', $_[0]) }

# The sizes of the batches that delivered topic $topic, in delivery order.
sub batches
{
	my ($topic) = @_;
	return q1(qq{SELECT string_agg(n::text, ',' ORDER BY xid) FROM
		(SELECT xid, count(*) AS n FROM app.seen WHERE topic = '$topic' GROUP BY xid) b});
}

# Save, with the worker off, then switch it on and wait for the drain;
# returns the seconds it took.
sub drain
{
	my ($save_sql) = @_;
	OutboxTest::set_conf($node, 'outbox.enabled' => 'off');
	q1($save_sql);
	my $t0 = time();
	OutboxTest::set_conf($node, 'outbox.enabled' => 'on');
	OutboxTest::wait_all_processed($node, 'postgres', $OutboxTest::TIMEOUT)
	  or die('the messages were not delivered');
	return time() - $t0;
}

for my $ordering ('key', 'none')
{
	OutboxTest::set_conf($node, 'outbox.ordering' => $ordering);
	my $took = drain(qq{SELECT outbox.save('big_$ordering', repeat('x', 300000), 'k' || i)
		FROM generate_series(1, 5) i});
	is(batches("big_$ordering"), '2,2,1',
		"ordering $ordering: five 300 kB messages go in batches of 2, 2 and 1");
	cmp_ok($took, '<', 8,
		sprintf('ordering %s: the worker goes on after a batch the limit cut (%.1f s)', $ordering, $took));
}

drain(q{SELECT outbox.save('huge', repeat('y', 2000000))});
is(batches('huge'), '1', 'a 2 MB message, over the limit, goes alone');
is(q1(q{SELECT bytes FROM app.seen WHERE topic = 'huge'}), '2000000', 'whole');

drain(q{INSERT INTO outbox.messages (topic, key, payload)
	SELECT 'small', 'k' || (i % 50), convert_to(repeat('z', 100), 'UTF8') FROM generate_series(1, 300) i});
is(batches('small'), '100,100,100', 'small messages fill batches of outbox.batch_size');

$node->stop;
done_testing();
