# 074_notify_envelope.pl -- the notify publisher's id envelope.
#
# Every role that may connect to a database can LISTEN on any channel (and
# NOTIFY on it): a notification is no secret.  With outbox.notify_envelope
# = 'id' (or a notify destination's option "envelope": "id") a
# notification carries only the message's id and topic; the consumer reads
# the message with its own privileges.
#
#  - a role with nothing but CONNECT, LISTENing, receives {"id", "topic"}
#    and nothing of the payload, key or headers; it cannot read the
#    message, a consumer granted SELECT can;
#  - a message too large for a full envelope goes out by id;
#  - a destination's option overrides the setting, both ways; a bad value
#    is refused (22023);
#  - 'full' (the default) sends the whole message, as before.

use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxTest qw(set_conf);

my $node = OutboxTest::new_node('notify_envelope',
	conf => "outbox.poll_interval = '200ms'\noutbox.notify_envelope = 'id'");
sub sql { return $node->safe_psql('postgres', $_[0]) }

sql(q{
CREATE ROLE outsider LOGIN;
CREATE ROLE consumer LOGIN;
GRANT USAGE ON SCHEMA outbox TO consumer;
GRANT SELECT ON outbox.messages TO consumer;
});

my $outsider = OutboxTest::Listener->new_as($node, 'postgres', 'outsider', 'env.secret');
my $id = sql(q{SELECT outbox.save('env.secret', '{"card": "4111-1111"}'::jsonb, 'customer-7',
                                  '{"trace_id": "t-1"}')});
my $n = $outsider->wait_for_id($id, 30);
ok($n, 'a role with only CONNECT, LISTENing on the topic, is notified');
is($n && $n->{payload}, qq({"id": "$id", "topic": "env.secret"}),
	'with outbox.notify_envelope = id it receives the id and the topic, nothing else');
my ($rc, $out, $err) = $node->psql('postgres', "SELECT payload FROM outbox.messages WHERE id = '$id'",
	extra_params => [ '-U', 'outsider' ]);
like($err, qr/permission denied/, 'it cannot read the message');
is( $node->safe_psql('postgres', "SELECT convert_from(payload, 'UTF8') FROM outbox.messages WHERE id = '$id'",
		extra_params => [ '-U', 'consumer' ]),
	'{"card": "4111-1111"}', 'a consumer granted SELECT reads it by its id');

# Too large for NOTIFY as a whole message, not as an id.
my $big = sql(q{SELECT outbox.save('env.secret', repeat('x', 10000)::text)});
$n = $outsider->wait_for_id($big, 30);
is($n && $n->{payload}, qq({"id": "$big", "topic": "env.secret"}), 'a message of 10000 bytes goes out by id');
is(sql("SELECT status FROM outbox.messages WHERE id = '$big'"), 'processed', '(it is processed)');

# Destinations: the option overrides the setting.
sql(q{
SELECT outbox.create_destination('ids', 'notify', '{"channel": "ids_chan"}');
SELECT outbox.create_destination('whole', 'notify', '{"channel": "whole_chan", "envelope": "full"}');
SELECT outbox.subscribe('ids', 'dest.>');
SELECT outbox.subscribe('whole', 'dest.>');
});
my $listener = OutboxTest::Listener->new($node, 'postgres', 'ids_chan', 'whole_chan');
my $routed = sql(q{SELECT outbox.save('dest.x', 'routed body'::text, 'k1')});
ok($listener->wait_for(30, sub { scalar(grep { ($_->{envelope}{id} // '') eq $routed } @{ $_[0] }) == 2 }),
	'both notify destinations deliver the routed message');
my %by_channel = map { $_->{channel} => $_ } grep { ($_->{envelope}{id} // '') eq $routed } @{ $listener->received };
is($by_channel{ids_chan}{payload}, qq({"id": "$routed", "topic": "dest.x"}),
	'a destination without the option takes the setting: the id envelope');
is($by_channel{whole_chan}{envelope}{payload}, 'routed body', 'envelope "full" overrides it: the whole message');
is($by_channel{whole_chan}{envelope}{key}, 'k1', '(with its key)');

($rc, $out, $err) = $node->psql('postgres',
	q{\set VERBOSITY verbose
SELECT outbox.create_destination('bad', 'notify', '{"envelope": "payload"}')});
like($err, qr/22023.*\n.*DETAIL:\s+The envelope must be full or id/, 'a bad envelope is refused with 22023');

# 'full', the default, sends the whole message.
set_conf($node, 'outbox.notify_envelope' => 'full');
ok(OutboxTest::poll_until($node, 'postgres', 'SHOW outbox.notify_envelope', 'full'), 'outbox.notify_envelope = full');
my $full = sql(q{SELECT outbox.save('env.secret', '{"n": 1}'::jsonb)});
$n = $outsider->wait_for_id($full, 30);
is_deeply($n && $n->{envelope}{payload}, { n => 1 }, 'with full, the notification carries the payload');

$outsider->quit;
$listener->quit;
$node->stop;
done_testing();
