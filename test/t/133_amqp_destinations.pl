# 133_amqp_destinations.pl -- amqp destinations (options instead of the
# outbox.amqp_* settings) and CloudEvents, against a real RabbitMQ node:
#
#  - a destination with its own url, credentials and routing-key template
#    gets the messages routed to it, with message-id, headers and body,
#    while the default destination keeps publishing with the settings;
#  - alter_destination applies a new routing key to the next messages;
#  - its max_message_size fails a larger message at once, naming the
#    destination's option;
#  - a destination with a wrong password: its messages wait, the problem is
#    logged once with a hint naming its options, the password is neither
#    in the log nor in outbox.destinations, and the others go on;
#  - CloudEvents: binary mode puts ce-* attributes in the headers table
#    and the payload's content type in the content-type property;
#    structured mode publishes the JSON event as the body with content-type
#    application/cloudevents+json, the message's other headers kept;
#  - bad options are refused with 22023 and create nothing.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxAmqp;
use OutboxDestinations;
use OutboxTest;

OutboxAmqp::require_amqp();

my $mq = OutboxAmqp->start('mq');
for my $q ([ 'default_q', 'default.#' ], [ 'dest_q', 'dest.#' ], [ 'dest2_q', 'dest2.#' ],
	[ 'cebin_q', 'cebin.#' ], [ 'cestr_q', 'cestr.#' ], [ 'wrong_q', 'wrong.#' ])
{
	$mq->tool('declare-queue', $q->[0]);
	$mq->tool('bind', $q->[0], 'amq.topic', $q->[1]);
}

my ($url, $user, $password) = ($mq->url, $mq->user, $mq->password);
my $node = OutboxDestinations::node('amqp_destinations', 'amqp', $mq->settings,
	"outbox.amqp_routing_key = 'default.{topic}'\noutbox.amqp_timeout = '3s'");

# The output of a statement (an error is a failure of the test).
sub psql_value { return $node->safe_psql('postgres', $_[0]) }

OutboxDestinations::bad_options($node, 'amqp', 'routing-key',
	[ q{"url": "http://127.0.0.1:5672"}, 'url', qr/must start with amqp:\/\/ or amqps:\/\// ],
	[ q{"url": "amqp://127.0.0.1:1, ,amqp://h"}, 'url', qr/empty entry/ ],
	[ q{"url": "amqp://someone:hunter2@127.0.0.1"}, 'url', qr/holds a URL with a user name or password/ ],
	[ q{"exchange": "} . ('x' x 300) . q{"}, 'exchange', qr/AMQP allows at most 255/ ],
	[ q{"username": ""}, 'username', qr/user name must not be empty/ ],
	[ q{"max_pending": 0}, 'max_pending', qr/between 1 and 65536/ ],
	[ q{"timeout": "10ms"}, 'timeout', qr/between 100 and 3600000 milliseconds/ ],
	[ q{"max_message_size": 100}, 'max_message_size', qr/between 1024 and/ ],
	[ q{"password": 42}, 'password', qr/must be a JSON string/ ],
	[ q{"format": "xml"}, 'format', qr/must be raw, cloudevents-binary or cloudevents-structured/ ]);

########################################################################
# A destination of its own beside the default destination.

my $credentials = $mq->options;
my ($routed, $unrouted) = OutboxDestinations::routed($node, 'orders_mq', 'amqp',
	qq{$credentials, "routing_key": "dest.{topic}", "max_message_size": "64kB", "timeout": "3s"});
my @routed = @$routed;
my @unrouted = @$unrouted;
ok($mq->wait_count('dest_q', 20), 'the destination\'s queue has the 20 routed messages');
ok($mq->wait_count('default_q', 5), 'the default destination\'s queue the 5 others');

my %dest = map { $_->{message_id} => $_ } $mq->dump('dest_q');
is(scalar(grep { $dest{$_} } @routed), 20, 'every routed message is in the destination\'s queue');
my $m = $dest{ $routed[0] } // { headers => {} };
is($m->{routing_key}, 'dest.orders.created', 'with the destination\'s routing key');
is($m->{body}, '{"n": 1}', 'the body is the payload');
is($m->{headers}{'x-n'}, '1', 'the message\'s headers');
is($m->{headers}{'outbox-key'}, 'customer-1', 'and outbox-key');
is($m->{delivery_mode}, 2, 'persistent');
my %default = map { $_->{message_id} => $_ } $mq->dump('default_q');
is(scalar(grep { $default{$_} } @unrouted), 5, 'the default destination published the unrouted ones');
is(($default{ $unrouted[0] } // {})->{routing_key}, 'default.invoices.created',
	'with outbox.amqp_routing_key');

# A new routing key applies to the next messages.
psql_value(q{SELECT outbox.alter_destination('orders_mq', '{"routing_key": "dest2.{topic}"}')});
ok( OutboxTest::wait_until(
		$OutboxTest::TIMEOUT,
		sub {
			my $id = psql_value(q{SELECT outbox.save('orders.probe', '{}'::jsonb)});
			OutboxTest::wait_processed($node, $id);
			return ($mq->count('dest2_q') // 0) > 0;
		}),
	'alter_destination: a new routing key applies to the next messages');

# The destination's max_message_size.
my $big = psql_value(q{SELECT outbox.save('orders.big', convert_to(repeat('x', 70000), 'UTF8'))});
ok( OutboxTest::poll_until($node, 'postgres',
		"SELECT status FROM outbox.deliveries WHERE message_id = '$big'", 'failed'),
	'a message over the destination\'s max_message_size fails at once');
is(psql_value("SELECT last_error FROM outbox.deliveries WHERE message_id = '$big'"),
	'amqp: the message is 70000 bytes, more than option max_message_size of destination "orders_mq" (65536 bytes)',
	'naming the destination\'s option');

########################################################################
# A wrong password: this destination waits, the others go on.

my $wrong_password = 'wrong-password-5678';
my $waiting = OutboxDestinations::wrong_password($node, 'amqp',
	name => 'wrong_mq', options => qq{"url": "$url", "username": "$user", "routing_key": "wrong.{topic}"},
	wrong => $wrong_password, right => $password, other => 'orders.other',
	refusal => qr/WARNING:  outbox amqp publisher: could not connect to amqp:\/\/127\.0\.0\.1:\d+: the broker refused the login of user "outbox_test"/,
	hint => qr/HINT:  Check the options url, username and password of destination "wrong_mq", and that the broker runs\./);
is(($mq->dump('wrong_q'))[0]{message_id}, $waiting, 'into its queue');

########################################################################
# CloudEvents.

my %ce = OutboxDestinations::cloudevents($node, 'amqp',
	binary => qq{$credentials, "routing_key": "cebin.{topic}"},
	structured => qq{$credentials, "routing_key": "cestr.{topic}"},
	topic => 'ce', reserved => 'ce-type');
ok($mq->wait_count('cebin_q', 2) && $mq->wait_count('cestr_q', 3), 'in their queues');

my %bin = map { $_->{message_id} => $_ } $mq->dump('cebin_q');
$m = $bin{ $ce{json} } // { headers => {} };
OutboxDestinations::is_attributes($m->{headers}, $node, $ce{json}, 'ce-', 'ce.created', 'k1', 'binary');
is_deeply([ @{ $m->{headers} }{qw(x-trace outbox-topic)} ], [ 'ce-1', 'ce.created' ],
	'binary: in the headers table with the message\'s headers');
is($m->{content_type}, 'application/json', 'binary: content-type property');
is($m->{body}, '{"n": 1}', 'binary: the body is the payload');
$m = $bin{ $ce{bytes} } // { headers => {} };
is($m->{content_type}, 'application/octet-stream', 'binary: content-type of a binary payload, always set');
ok(!exists $m->{headers}{'ce-subject'}, 'binary: no ce-subject without a key');

my %str = map { $_->{message_id} => $_ } $mq->dump('cestr_q');
$m = $str{ $ce{json} } // { headers => {} };
is($m->{content_type}, 'application/cloudevents+json', 'structured: content-type property');
is($m->{headers}{'x-trace'}, 'ce-1', 'structured: the message\'s headers stay headers');
ok(!exists $m->{headers}{'content-type'}, 'structured: but not its content-type, which is in the event');
OutboxDestinations::is_event($m->{body}, $ce{json}, 'amqp', 'ce.created', 'structured');
is(OutboxDestinations::data_base64(($str{ $ce{bytes} } // {})->{body}), 'AP9B',
	'structured: a binary payload is data_base64');

OutboxDestinations::not_logged($node, 'a destination\'s wrong password' => $wrong_password,
	'the password' => $password);

$node->stop;
done_testing();
