# 070_retry_wakeup.pl -- a key waiting in backoff does not stall its later
# messages for a poll interval: each retry comes when it falls due.
#
# 20 messages of one key, every message failing its first attempt, a 100 ms
# backoff and a 10 s poll interval.  Each message can go only after the one
# before it succeeded, so the drain is 20 rounds of "fail, wait for the
# backoff, succeed".  The worker must sleep until the retry it has just
# scheduled falls due, not for the poll interval: then the 20 messages take
# a few seconds, where a worker that sleeps the poll interval after each
# failure takes 20 x 10 s.  Both relay modes are checked: a detached
# publisher (the example plug-in outbox_flaky) and a transactional one (the
# function publisher, whose function fails each message's first call).

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use OutboxTest;

my $flaky = OutboxTest::test_module('outbox_flaky');
my $node = OutboxTest::new_node('retry_wakeup', conf => qq{
shared_preload_libraries = 'outbox, "$flaky"'
outbox.publisher = 'flaky'
outbox.poll_interval = '10s'
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '100ms'
outbox.max_retries = 10
outbox_flaky.fail_attempts = 1
log_statement = 'none'
});

$node->safe_psql('postgres', q{
CREATE TABLE delivered (n serial, id uuid, attempt int);
CREATE FUNCTION deliver(m outbox.messages) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	IF m.retries = 0 THEN
		RAISE EXCEPTION 'first attempt fails on purpose';
	END IF;
	INSERT INTO public.delivered (id, attempt) VALUES (m.id, m.retries + 1);
END $$;
});

# Save 20 messages of one key in one transaction; returns their ids in order.
sub save_run
{
	my ($topic) = @_;
	return split /\n/, $node->safe_psql('postgres', qq{
SELECT outbox.save('$topic', jsonb_build_object('n', g), key => 'one-key')
FROM generate_series(1, 20) g ORDER BY 1});
}

# Wait for the 20 messages of a topic to be processed; returns the seconds.
sub drain_time
{
	my ($topic, $t0) = @_;
	my $ok = OutboxTest::poll_until($node, 'postgres',
		"SELECT count(*) FROM outbox.messages WHERE topic = '$topic' AND status = 'processed'",
		'20', 60);
	return $ok ? time() - $t0 : undef;
}

########################################################################
# A detached publisher.

my $offset = OutboxTest::log_position($node);
my $t0 = time();
my @ids = save_run('detached');
my $took = drain_time('detached', $t0);
ok(defined $took, 'detached publisher: the 20 messages of one key are processed');
cmp_ok($took // 1e9, '<', 10,
	sprintf('and each retry came when it fell due, not after the 10 s poll interval (%.1f s)', $took // -1));

my @delivered = OutboxTest::log_content($node, $offset) =~ /outbox_flaky: delivered (\S+) topic=detached key=one-key attempt=(\d+)/g;
my @order = map { $delivered[2 * $_] } 0 .. $#delivered / 2;
is_deeply(\@order, \@ids, 'each was delivered once, in id order');
is(scalar(grep { $delivered[2 * $_ + 1] != 2 } 0 .. $#order), 0,
	'each on its second attempt');

########################################################################
# A transactional publisher.

OutboxTest::set_conf($node,
	'outbox.publisher' => 'function',
	'outbox.publisher_function' => 'public.deliver');
$t0 = time();
@ids = save_run('in_transaction');
$took = drain_time('in_transaction', $t0);
ok(defined $took, 'transactional publisher: the 20 messages of one key are processed');
cmp_ok($took // 1e9, '<', 10,
	sprintf('and each retry came when it fell due (%.1f s)', $took // -1));
is($node->safe_psql('postgres', 'SELECT string_agg(id::text, \',\' ORDER BY n) FROM delivered'),
	join(',', @ids), 'each was delivered once, in id order');
is($node->safe_psql('postgres', 'SELECT count(*) FROM delivered WHERE attempt <> 2'),
	'0', 'each on its second attempt');

$node->stop;
done_testing();
