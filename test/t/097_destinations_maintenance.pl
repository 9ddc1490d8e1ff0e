
# 097_destinations_maintenance.pl -- what the main worker and the routing
# cache must get right beyond the everyday flow.
#
#  - stragglers: a routed message every destination has passed but that is
#    not finished (its destination's worker died between committing its
#    position and finishing it; simulated here by setting it pending
#    again) is finished by the main worker within seconds, also when more
#    than a pass's worth (1000) of older routed messages wait for a paused
#    destination;
#  - the routing cache of a long-lived session does not outlive DROP
#    EXTENSION: after the extension is created again (destination ids
#    start over), that session's messages are routed by the new
#    subscriptions, not by the old ones onto a new destination that
#    happens to have an old id.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxDestinations;
use OutboxTest;

my $node = OutboxTest::new_node(
	'dest_maintenance', conf => q{
outbox.poll_interval = '100ms'
log_statement = 'none'
});

sub sql { return $node->safe_psql('postgres', $_[0]) }

########################################################################
# 1. Stragglers behind a backlog.

sql(q{
SELECT outbox.create_destination('blocked', 'notify', '{"channel": "blocked"}');
SELECT outbox.subscribe('blocked', 'blk.*');
SELECT outbox.pause_destination('blocked');
SELECT outbox.create_destination('ext', 'external');
SELECT outbox.subscribe('ext', 'str.*');
});
sql(q{INSERT INTO outbox.messages (topic, payload) SELECT 'blk.x', '\x00' FROM generate_series(1, 1100)});
my @str = map { sql(qq{SELECT outbox.save('str.x', '{"n": $_}'::jsonb)}) } 1 .. 3;
is(sql(q{SELECT count(*) FROM outbox.messages WHERE topic = 'blk.x' AND status = 'pending'}), '1100',
	'1100 routed messages wait for a paused destination');
my $list = join(',', map { "'$_'" } @str);
is(sql(qq{SELECT count(*) FROM outbox.fetch_pending(10, 'ext') WHERE id IN ($list)}), '3', 'an external relay fetches three others');
is(sql(qq{SELECT outbox.mark_processed_for(ARRAY[$list]::uuid[], 'ext')}), '3', 'and delivers them');
is(sql(qq{SELECT count(*) FROM outbox.messages WHERE id IN ($list) AND status = 'processed'}), '3', 'they are finished at once');
# The crash between the position's commit and the finishing: they are done
# everywhere, but not finished.
sql(qq{UPDATE outbox.messages SET status = 'pending', processed_at = NULL WHERE id IN ($list)});
ok( OutboxTest::poll_until($node, 'postgres',
		qq{SELECT count(*) FROM outbox.messages WHERE id IN ($list) AND status = 'processed'}, '3', 30),
	'the main worker finishes the stragglers, although 1100 older routed messages are still unfinished');
is(sql(q{SELECT count(*) FROM outbox.messages WHERE topic = 'blk.x' AND status = 'pending'}), '1100',
	'and leaves those alone');
sql(q{SELECT outbox.resume_destination('blocked')});
ok( OutboxTest::poll_until($node, 'postgres', q{SELECT count(*) FROM outbox.messages WHERE topic = 'blk.x' AND status <> 'processed'}, '0', 60),
	'resumed, the destination delivers them and they are finished');

########################################################################
# 2. DROP EXTENSION and a session's routing cache.

sql(q{
SELECT outbox.create_destination('first', 'notify', '{"channel": "first"}');
SELECT outbox.subscribe('first', 'cache.*');
});
my $session = $node->background_psql('postgres');
$session->query_safe(q{SELECT outbox.save('cache.before', 'x'::text)});
is( sql(q{SELECT d.name FROM outbox.messages m JOIN outbox.destination d ON d.id = ANY (m.destinations) WHERE m.topic = 'cache.before'}),
	'first', 'a long-lived session routes cache.* to "first"');
my $first_id = sql(q{SELECT id FROM outbox.destination WHERE name = 'first'});

sql('DROP EXTENSION outbox');
sql('CREATE EXTENSION outbox');
# Ids start over: create destinations until one has the old id.
my $other_id = 0;
for my $i (1 .. $first_id)
{
	sql(qq{SELECT outbox.create_destination('other_$i', 'notify', '{"channel": "other"}')});
	$other_id = sql(qq{SELECT id FROM outbox.destination WHERE name = 'other_$i'});
}
is($other_id, $first_id, "after CREATE EXTENSION a new destination has the old id $first_id");
$session->query_safe(q{SELECT outbox.save('cache.after', 'x'::text)});
is(sql(q{SELECT coalesce(destinations::text, 'default') FROM outbox.messages WHERE topic = 'cache.after'}), 'default',
	'the session routes by the new (empty) subscriptions, not onto the new destination with the old id');
sql(q{SELECT outbox.subscribe('other_1', 'cache.*')});
$session->query_safe(q{SELECT outbox.save('cache.later', 'x'::text)});
is( sql(q{SELECT d.name FROM outbox.messages m JOIN outbox.destination d ON d.id = ANY (m.destinations) WHERE m.topic = 'cache.later'}),
	'other_1', 'and by a new subscription once there is one');
$session->quit;

$node->stop;
done_testing();
