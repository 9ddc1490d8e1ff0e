# 153_replay.pl -- outbox.replay() publishes processed messages again, with
# their ids, in id order, through the running workers.
#
#  - replay(ids) of the default destination's messages: a LISTENing session
#    receives them again, same ids, in id order;
#  - replay(since, until, pattern) takes only the topics that match;
#  - a routed message replayed is delivered again by its destination's
#    worker (woken at commit, though it had nothing to do);
#  - a backfill: a destination created after the messages were saved gets
#    them through replay(..., destination), in id order, and the default
#    destination does not get them again;
#  - retention keeps a replayed message while its delivery is unfinished
#    (a paused destination), and deletes it once delivered.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxTest qw(poll_until wait_all_processed set_conf);

my $node = OutboxTest::new_node('replay', conf => "outbox.poll_interval = '200ms'");
my $orders = OutboxTest::Listener->new($node, 'postgres', 'orders', 'other');

# The ids of the notifications received on $channel, in arrival order.
sub ids_on
{
	my ($listener, $channel) = @_;
	return [ map { $_->{envelope}{id} }
		  grep { $_->{channel} eq $channel } @{ $listener->received } ];
}

my @ids = split /\n/,
  $node->safe_psql('postgres',
	"SELECT outbox.save('orders', jsonb_build_object('n', i), 'k' || (i % 2)) FROM generate_series(1, 4) i"
  );
$node->safe_psql('postgres', "SELECT outbox.save('other', '{}'::jsonb)");
ok($orders->wait_count(5), 'the five messages were published');
ok(wait_all_processed($node, 'postgres'), 'and are processed');

########################################################################
# Replay by ids, and by window and pattern.

$orders->clear;
my $list = join(',', map { "'$_'" } reverse @ids);
is($node->safe_psql('postgres', "SELECT outbox.replay(ARRAY[$list]::uuid[])"),
	4, 'replay(ids) queues the four');
ok($orders->wait_count(4), 'they are published again');
is_deeply(ids_on($orders, 'orders'), \@ids, 'with the same ids, in id order');
ok(wait_all_processed($node, 'postgres'), 'and are processed again');

$orders->clear;
is( $node->safe_psql('postgres',
		"SELECT outbox.replay(now() - interval '1 hour', now(), 'orders')"),
	4,
	'replay(since, until, \'orders\') queues the orders messages only');
$node->safe_psql('postgres', "SELECT outbox.save('other', '{\"marker\": 1}'::jsonb)");
ok($orders->wait_for($OutboxTest::TIMEOUT, sub { grep { $_->{channel} eq 'other' } @{ $_[0] } }),
	'a marker saved after it arrives');
is_deeply(ids_on($orders, 'orders'), \@ids, 'the orders messages came before, in id order');
is(scalar(@{ ids_on($orders, 'other') }), 1, 'the other topic was not replayed');
ok(wait_all_processed($node, 'postgres'), 'all processed');

########################################################################
# A routed message, replayed to its destination.

$node->safe_psql('postgres',
	    q{SELECT outbox.create_destination('hooks', 'notify', '{"channel": "hooks_ch"}'); }
	  . q{SELECT outbox.subscribe('hooks', 'routed.*')});
my $hooks = OutboxTest::Listener->new($node, 'postgres', 'hooks_ch', 'late_ch');
# The subscription applies once the main worker started the destination's
# worker (within a second); messages saved before then wait for it.
my $routed = $node->safe_psql('postgres', "SELECT outbox.save('routed.a', '{}'::jsonb)");
ok($hooks->wait_for_id($routed), 'the routed message was delivered to hooks');
ok(wait_all_processed($node, 'postgres'), 'and is processed');
$hooks->clear;
is($node->safe_psql('postgres', "SELECT outbox.replay(ARRAY['$routed']::uuid[])"),
	1, 'replaying it queues it');
ok($hooks->wait_for_id($routed), 'hooks\' worker delivers it again');
ok(wait_all_processed($node, 'postgres'), 'and it is processed again');

########################################################################
# A backfill: a destination created after the messages.

$node->safe_psql('postgres',
	    q{SELECT outbox.create_destination('late', 'notify', '{"channel": "late_ch"}'); }
	  . q{SELECT outbox.subscribe('late', 'orders')});
$orders->clear;
$hooks->clear;
is( $node->safe_psql('postgres',
		"SELECT outbox.replay('-infinity', 'infinity', 'orders', 'late')"),
	4,
	'replay(..., \'orders\', \'late\') queues the four orders messages for late');
ok($hooks->wait_for($OutboxTest::TIMEOUT, sub { @{ ids_on($hooks, 'late_ch') } == 4 }),
	'late receives them');
is_deeply(ids_on($hooks, 'late_ch'), \@ids, 'with their ids, in id order');
my $new = $node->safe_psql('postgres', "SELECT outbox.save('orders', '{\"new\": 1}'::jsonb)");
ok($hooks->wait_for_id($new), 'a new orders message goes to late, as subscribed');
$orders->poll;
is(scalar(@{ ids_on($orders, 'orders') }), 0,
	'the default destination got neither the backfill nor the new message');
ok(wait_all_processed($node, 'postgres'), 'everything is processed');

########################################################################
# Retention keeps a replayed message while its delivery is unfinished.

$node->safe_psql('postgres', "SELECT outbox.pause_destination('late')");
is( $node->safe_psql('postgres',
		"SELECT outbox.replay('-infinity', 'infinity', 'orders', 'late')"),
	5,
	'the orders messages are queued for the paused destination late');
set_conf($node, 'outbox.retention' => '1s');
ok(poll_until($node, 'postgres', "SELECT count(*) FROM outbox.messages WHERE topic = 'other'", '0'),
	'retention deletes the processed messages that nothing waits for');
is($node->safe_psql('postgres', "SELECT count(*) FROM outbox.messages WHERE topic = 'orders'"),
	5, 'but keeps those whose delivery to late is pending');
$hooks->clear;
$node->safe_psql('postgres', "SELECT outbox.resume_destination('late')");
ok($hooks->wait_for($OutboxTest::TIMEOUT, sub { @{ ids_on($hooks, 'late_ch') } == 5 }),
	'resumed, late receives them');
ok(poll_until($node, 'postgres', "SELECT count(*) FROM outbox.messages WHERE topic = 'orders'", '0'),
	'then retention deletes them');

$node->stop;
done_testing();
