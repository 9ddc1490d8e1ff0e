# 143_redis_destinations.pl -- redis destinations (options instead of the
# outbox.redis_* settings) and CloudEvents, against a real redis-server:
#
#  - a destination with its own url, credentials, stream template and
#    maxlen gets the messages routed to it (fields id, topic, key, headers,
#    payload, created_at; the entry id derived from the message id), while
#    the default destination keeps adding with the settings;
#  - alter_destination applies a new stream template to the next messages;
#  - a destination with a wrong password: its messages wait, the problem is
#    logged once with a hint naming its options, the password is neither
#    in the log nor in outbox.destinations, and the others go on;
#  - CloudEvents: binary mode gives the fields id, ce_* attributes,
#    content-type, headers and data (the payload), the entry id derived
#    from the message id as in raw mode; structured mode id, content-type
#    application/cloudevents+json, headers and data (the JSON event);
#  - bad options are refused with 22023 and create nothing.

use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxDestinations;
use OutboxRedis;
use OutboxTest;

OutboxRedis::require_redis();

my $redis = OutboxRedis->start('r');
my ($url, $user, $password) = ($redis->url, $redis->user, $redis->password);
my $node = OutboxDestinations::node('redis_destinations', 'redis', $redis->settings,
	"outbox.redis_stream = 'default:{topic}'\noutbox.redis_timeout = '3s'");

# The output of a statement (an error is a failure of the test).
sub psql_value { return $node->safe_psql('postgres', $_[0]) }

# The entries of a stream by message id.
sub entries_of
{
	my ($stream) = @_;
	return map { $_->{fields}{id} => $_ } $redis->xrange($stream);
}

OutboxDestinations::bad_options($node, 'redis', 'streams',
	[ q{"url": "http://127.0.0.1:6379"}, 'url', qr/must start with redis:\/\// ],
	[ q{"url": "rediss://127.0.0.1:6379"}, 'url', qr/TLS \(rediss:\/\/\) is not available/ ],
	[ q{"url": "redis://user:hunter2@127.0.0.1"}, 'url', qr/holds a URL with a user name or password/ ],
	[ q{"url": "redis://127.0.0.1:6379/x"}, 'url', qr/must be a database number/ ],
	[ q{"stream": ""}, 'stream', qr/must not be empty/ ],
	[ q{"maxlen": -1}, 'maxlen', qr/between 0 and/ ],
	[ q{"timeout": "10ms"}, 'timeout', qr/between 100 and 3600000 milliseconds/ ],
	[ q{"dedupe_window": 10}, 'dedupe_window', qr/between 1000 and/ ],
	[ q{"password": true}, 'password', qr/must be a JSON string/ ],
	[ q{"format": "cloudevents"}, 'format', qr/must be raw, cloudevents-binary or cloudevents-structured/ ],
	[ q{"cloudevents_source": "a b"}, 'cloudevents_source', qr/without spaces or control characters/ ]);

########################################################################
# A destination of its own beside the default destination.

my $credentials = $redis->options;
my ($routed, $unrouted) = OutboxDestinations::routed($node, 'orders_r', 'redis',
	qq{$credentials, "stream": "dest:{topic}", "maxlen": 1000, "timeout": "3s"});
my @routed = @$routed;
my @unrouted = @$unrouted;

my %dest = entries_of('dest:orders.created');
is(scalar(grep { $dest{$_} } @routed), 20, 'every routed message is in the destination\'s stream');
is(scalar keys %dest, 20, 'once');
my $e = $dest{ $routed[0] } // { fields => {} };
is_deeply(
	[ @{ $e->{fields} }{qw(topic key payload)}, JSON::PP->new->decode($e->{fields}{headers} // '{}')->{'x-n'} ],
	[ 'orders.created', 'customer-1', '{"n": 1}', '1' ],
	'fields topic, key, payload and headers');
ok(defined $e->{fields}{created_at}, 'and created_at');
my %default = entries_of('default:invoices.created');
is(scalar(grep { $default{$_} } @unrouted), 5, 'the default destination added the unrouted ones, with outbox.redis_stream');
is($redis->xlen('dest:invoices.created') // 0, 0, 'and none to the destination\'s streams');

# A new stream template applies to the next messages.
psql_value(q{SELECT outbox.alter_destination('orders_r', '{"stream": "dest2:{topic}"}')});
ok( OutboxTest::wait_until(
		$OutboxTest::TIMEOUT,
		sub {
			my $id = psql_value(q{SELECT outbox.save('orders.probe', '{}'::jsonb)});
			OutboxTest::wait_processed($node, $id);
			return ($redis->xlen('dest2:orders.probe') // 0) > 0;
		}),
	'alter_destination: a new stream template applies to the next messages');

########################################################################
# A wrong password: this destination waits, the others go on.

my $wrong_password = 'wrong-password-5678';
my $waiting = OutboxDestinations::wrong_password($node, 'redis',
	name => 'wrong_r', options => qq{"url": "$url", "username": "$user", "stream": "wrong:{topic}"},
	wrong => $wrong_password, right => $password, other => 'orders.other',
	refusal => qr/WARNING:  outbox redis publisher: could not connect to .*: Redis refused the credentials of user "outbox_test": WRONGPASS/,
	hint => qr/HINT:  Check the options username and password of destination "wrong_r"\./);
is(($redis->xrange('wrong:wrong.created'))[0]{fields}{id}, $waiting, 'into its stream');

########################################################################
# CloudEvents.

my %ce = OutboxDestinations::cloudevents($node, 'redis',
	binary => qq{$credentials, "stream": "cebin:{topic}"},
	structured => qq{$credentials, "stream": "cestr:{topic}"},
	topic => 'ce', reserved => undef);
my %bin = entries_of('cebin:ce.created');
my $f = ($bin{ $ce{json} } // { fields => {} })->{fields};
is_deeply(
	[ sort keys %$f ],
	[ sort qw(id ce_specversion ce_id ce_source ce_type ce_time ce_subject content-type headers data) ],
	'binary: the fields id, ce_* attributes, content-type, headers and data');
OutboxDestinations::is_attributes($f, $node, $ce{json}, 'ce_', 'ce.created', 'k1', 'binary');
is_deeply([ @$f{qw(id content-type data)} ], [ $ce{json}, 'application/json', '{"n": 1}' ],
	'binary: id, content-type and data (the payload)');
is(JSON::PP->new->decode($f->{headers} // '{}')->{'x-trace'}, 'ce-1', 'binary: headers as JSON');
is($bin{ $ce{json} }{id}, OutboxRedis::entry_id($ce{json}), 'binary: the entry id is derived from the message id');
$f = ((entries_of('cebin:ce.bytes'))[1] // { fields => {} })->{fields};
ok(!exists $f->{ce_subject}, 'binary: no ce_subject without a key');
is($f->{'content-type'}, 'application/octet-stream', 'binary: content-type of a binary payload');

my %str = entries_of('cestr:ce.created');
$f = ($str{ $ce{json} } // { fields => {} })->{fields};
is_deeply([ sort keys %$f ], [ sort qw(id content-type headers data) ],
	'structured: the fields id, content-type, headers and data');
is($f->{'content-type'}, 'application/cloudevents+json', 'structured: content-type');
OutboxDestinations::is_event($f->{data}, $ce{json}, 'redis', 'ce.created', 'structured: data is');
is(OutboxDestinations::data_base64(((entries_of('cestr:ce.bytes'))[1] // { fields => {} })->{fields}{data}), 'AP9B',
	'structured: a binary payload is data_base64');

OutboxDestinations::not_logged($node, 'a destination\'s wrong password' => $wrong_password,
	'the password' => $password);

$node->stop;
done_testing();
