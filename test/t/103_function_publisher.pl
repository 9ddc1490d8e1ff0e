# 103_function_publisher.pl -- the function publisher: delivery by calling
# a SQL function inside the database.
#
#  - a missing function, or one with the wrong signature, is a clear
#    warning in the log (once) and messages stay pending, untouched;
#  - success: the function's work commits with the mark (fan-out table);
#  - failure: an ERROR is a failed attempt carrying its message; the
#    function's work for that message is undone, not that for the others
#    of the batch; after outbox.max_retries the message is failed;
#  - retry: a message failing twice is delivered on its third attempt;
#  - the function is looked up at each batch: replacing it takes effect.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxTest;

my $node = OutboxTest::new_node('function_publisher', conf => q{
outbox.publisher = 'function'
outbox.publisher_function = 'app.deliver'
outbox.poll_interval = '100ms'
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '200ms'
outbox.max_retries = 3
});
$node->safe_psql('postgres', q{
CREATE SCHEMA app;
CREATE TABLE app.delivered (id uuid, topic text, body text, seen_status text, seen_retries int);
});

sub delivered_count
{
	my ($id) = @_;
	return $node->safe_psql('postgres', "SELECT count(*) FROM app.delivered WHERE id = '$id'");
}

# Wait until the worker reports activity $seconds from now or later: it
# has polled several times since (outbox.poll_interval is 100 ms).
sub wait_worker_busy_after
{
	my ($seconds) = @_;
	my $t = $node->safe_psql('postgres', "SELECT clock_timestamp() + interval '$seconds s'");
	return OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'outbox worker' AND state_change > '$t'",
		'1');
}

########################################################################
# No such function: logged, messages stay pending.

my $offset = OutboxTest::log_position($node);
my $early_id = $node->safe_psql('postgres', q{SELECT outbox.save('early', '{"n": 0}'::jsonb)});
ok( OutboxTest::wait_for_log_line($node,
		qr/WARNING:  outbox function publisher: function app\.deliver\(outbox\.messages\) does not exist/,
		$offset),
	'a missing function is a clear warning');
my $m = OutboxTest::message_state($node, $early_id);
is_deeply([ $m->{status}, $m->{retries}, $m->{error} ], [ 'pending', 0, '' ],
	'the message stays pending, no attempt counted');

# A function of that name with another signature.
$node->safe_psql('postgres',
	'CREATE FUNCTION app.deliver(t text) RETURNS void LANGUAGE sql AS $$ SELECT $$');
ok( OutboxTest::wait_for_log_line($node,
		qr/function app\.deliver exists, but not with the signature app\.deliver\(outbox\.messages\)/,
		$offset),
	'a wrong signature is a clear warning');
$node->safe_psql('postgres', q{SELECT outbox.save('early', '{"n": 1}'::jsonb)});
ok(wait_worker_busy_after(0.5), 'the worker kept polling');
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE status = 'pending' AND retries = 0", '2'),
	'messages stay pending');
is(OutboxTest::log_count($node, qr/does not exist/, $offset), 1, 'the missing function was logged once');
is(OutboxTest::log_count($node, qr/not with the signature/, $offset), 1, 'the wrong signature too');

########################################################################
# The real function: success, failure and retry.

$node->safe_psql('postgres', q{
DROP FUNCTION app.deliver(text);
CREATE FUNCTION app.deliver(m outbox.messages) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO app.delivered
	VALUES (m.id, m.topic, convert_from(m.payload, 'UTF8'), m.status::text, m.retries);
	IF m.topic = 'poison' THEN
		RAISE EXCEPTION 'cannot deliver % (attempt %)', m.id, m.retries + 1;
	END IF;
	IF m.topic = 'twice' AND m.retries < 2 THEN
		RAISE EXCEPTION 'not yet: attempt %', m.retries + 1;
	END IF;
END $$;
});

ok(OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE status = 'processed'", '2'),
	'once the function exists, the pending messages are delivered');
is(delivered_count($early_id), '1', 'by calling it once');
ok(OutboxTest::log_count($node, qr/delivering through app\.deliver\(outbox\.messages\)/, $offset) == 1,
	'that it works again is logged');

# One batch: good, poison, good, twice.
my $ids = $node->safe_psql('postgres', q{
BEGIN;
SELECT outbox.save('good', '{"n": 1}'::jsonb);
SELECT outbox.save('poison', '{"n": 2}'::jsonb);
SELECT outbox.save('good', '{"n": 3}'::jsonb);
SELECT outbox.save('twice', '{"n": 4}'::jsonb);
COMMIT;
});
my ($good1, $poison, $good2, $twice) = split /\n/, $ids;

ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE status IN ('processed', 'failed') AND topic IN ('good', 'poison', 'twice')",
		'4'),
	'the batch settled');

$m = OutboxTest::message_state($node, $good1);
is($m->{status}, 'processed', 'good message processed');
is($m->{retries}, 0, 'at the first attempt');
is(delivered_count($good1), '1', 'its fan-out row committed');
is(delivered_count($good2), '1', 'so did that of the good message after the poison one');
is( $node->safe_psql('postgres', "SELECT seen_status || '/' || seen_retries FROM app.delivered WHERE id = '$good1'"),
	'pending/0', 'the function saw the row as claimed');

$m = OutboxTest::message_state($node, $poison);
is($m->{status}, 'failed', 'the poison message failed after outbox.max_retries');
is($m->{retries}, 3, 'three failed attempts');
is($m->{error}, "cannot deliver $poison (attempt 3)", "last_error is the function's error message");
is(delivered_count($poison), '0', "the failing calls' own inserts were undone");

$m = OutboxTest::message_state($node, $twice);
is($m->{status}, 'processed', 'the message failing twice was delivered');
is($m->{retries}, 2, 'on its third attempt');
is($m->{error}, 'not yet: attempt 2', 'the last failure is remembered');
is(delivered_count($twice), '1', 'only the successful call left its row');

########################################################################
# Replacing the function takes effect at once.

$node->safe_psql('postgres', q{
CREATE OR REPLACE FUNCTION app.deliver(m outbox.messages) RETURNS void LANGUAGE sql AS $$
	INSERT INTO app.delivered VALUES (m.id, 'v2:' || m.topic, NULL, NULL, NULL)
$$;
});
my $v2 = $node->safe_psql('postgres', q{SELECT outbox.save('later', 'x'::text)});
ok( OutboxTest::poll_until($node, 'postgres', "SELECT status FROM outbox.messages WHERE id = '$v2'",
		'processed'),
	'message delivered by the replaced function');
is($node->safe_psql('postgres', "SELECT topic FROM app.delivered WHERE id = '$v2'"),
	'v2:later', 'the new body ran');

$node->stop;
done_testing();
