
# 094_destinations_upgrade.pl -- ALTER EXTENSION outbox UPDATE from 0.2.0 to
# the version with destinations, with a 0.2.0 configuration: the http
# publisher set up by outbox.* settings (URL, signing secret), an external
# relay using the 0.2.0 store API.
#
#  - before the update the current library relays the 0.2.0 schema as
#    before; messages pending across the update, and those saved after it,
#    go to the same webhook, signed with the same secret, in key order: the
#    default destination is that configuration, unchanged;
#  - the 0.2.0 store API keeps working after the update, with its 0.2.0
#    calls: fetch_pending(n), mark_processed('<id>', '<id>') with untyped
#    ids, mark_failed(id, error), retry_failed(), and a claim taken before
#    the update is marked after it;
#  - then a destination and a subscription: routed messages go to the new
#    destination, the others still to the default one.

use strict;
use warnings;

use Digest::SHA qw(hmac_sha256);
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxDestinations;
use OutboxHttp;
use OutboxTest;
use OutboxVersions;

my $srv = OutboxHttp->start;
my $new_srv = OutboxHttp->start;
my $url = $srv->url('/legacy/{topic}');
my $secret = 'legacy-signing-secret';

my $node = OutboxTest::new_node(
	'dest_upgrade',
	databases => '',
	extension_in => [],
	wait_worker => 0,
	conf => qq{
outbox.publisher = 'http'
outbox.http_url = '$url'
outbox.http_signing_secret = '$secret'
outbox.poll_interval = '100ms'
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '500ms'
outbox.max_retries = 5
});

my $versions = OutboxVersions::installed($node);
plan skip_all => '0.2.0 is not installable here' unless grep { $_ eq '0.2.0' } @{ $versions->{all} };

$node->safe_psql('postgres', 'CREATE DATABASE legacy');
$node->safe_psql('legacy', q{CREATE EXTENSION outbox VERSION '0.2.0'});
$node->append_conf('postgresql.conf', "outbox.databases = 'legacy'\n");
$node->restart;
ok(OutboxTest::wait_for_worker($node, 'legacy'), 'the worker relays the 0.2.0 schema');

sub sql { return $node->safe_psql('legacy', $_[0]) }
my $n = 0;
sub save
{
	my ($topic, $key) = @_;
	$n++;
	my $k = defined $key ? "'$key'" : 'NULL';
	return sql(qq{SELECT outbox.save('$topic', '{"n": $n}'::jsonb, $k)});
}
sub request_ok
{
	my ($id) = @_;
	my ($r) = grep { $_->{status} == 200 } $srv->requests(id => $id);
	return $r && OutboxDestinations::signature_ok($r, $secret) ? $r : undef;
}

########################################################################
# 1. 0.2.0, relayed by the current library.

my @before = (save('legacy.a', 'k1'), save('legacy.a', 'k1'));
ok(OutboxTest::poll_until($node, 'legacy', q{SELECT count(*) FROM outbox.messages WHERE status <> 'processed'}, '0'),
	'0.2.0: messages are published');
is(scalar(grep { request_ok($_) } @before), 2, '0.2.0: to the webhook of the settings, signed with their secret');

# Pending across the update: the worker stopped (a restart, so that none is
# in the middle of a batch), an external relay's claim open.
$node->append_conf('postgresql.conf', "outbox.enabled = off\n");
$node->restart;
my @relayed = (save('legacy.b', 'k2'), save('legacy.b', 'k2'), save('legacy.b', 'k3'));
my @pending = (save('legacy.c', 'k5'), save('legacy.c', 'k5'), save('legacy.c'));
my $failed_one = save('legacy.failing', 'k8');
my $relay = $node->background_psql('legacy');
is($relay->query_safe('SELECT string_agg(id::text, \',\') FROM outbox.fetch_pending(1)'), $relayed[0],
	'0.2.0: an external relay claims with fetch_pending(n)');

########################################################################
# 2. The update.

sql('ALTER EXTENSION outbox UPDATE');
is(sql(q{SELECT extversion FROM pg_extension WHERE extname = 'outbox'}), $versions->{default},
	"updated to $versions->{default}");
is(sql(q{SELECT count(*) FROM outbox.destinations}), '0', 'no destination: everything goes to the default one');

# The 0.2.0 calls of the external relay still work.
is($relay->query_safe(qq{SELECT outbox.mark_processed('$relayed[0]')}), '1',
	'the claim taken before the update is marked after it: mark_processed(\'<id>\')');
is($relay->query_safe(q{SELECT string_agg(id::text, ',' ORDER BY id) FROM outbox.fetch_pending(2)}),
	"$relayed[1],$relayed[2]", 'fetch_pending(n) hands out the next ones in id order');
is($relay->query_safe(qq{SELECT outbox.mark_processed('$relayed[1]', '$relayed[2]')}), '2',
	"mark_processed('<id>', '<id>') with two untyped ids (not ambiguous)");
is($relay->query_safe(qq{SELECT outbox.mark_failed('$failed_one', 'relay error')}), 'pending',
	'mark_failed(id, error) as in 0.2.0');
sql(qq{UPDATE outbox.messages SET status = 'failed' WHERE id = '$failed_one'});
is($relay->query_safe('SELECT outbox.retry_failed()'), '1', 'retry_failed() as in 0.2.0');
$relay->quit;

########################################################################
# 3. The default destination, unchanged.

$node->append_conf('postgresql.conf', "outbox.enabled = on\n");
$node->reload;
my @after = (save('legacy.d', 'k5'), save('legacy.d'));
ok(OutboxTest::poll_until($node, 'legacy', q{SELECT count(*) FROM outbox.messages WHERE status <> 'processed'}, '0'),
	'after the update, every pending message and every new one is published');
is(scalar(grep { request_ok($_) } @pending, $failed_one, @after), 6,
	'to the same webhook, signed with the same secret');
is(scalar(grep { my $id = $_; grep { $_->{id} eq $id } $srv->requests } @relayed), 0,
	'what the external relay marked was not published again');
is(sql(q{SELECT count(*) FROM outbox.messages WHERE destinations IS NOT NULL}), '0', 'none routed elsewhere');
my @k5 = map { $_->{id} } grep { ($_->{key} // '') eq 'k5' && $_->{status} == 200 } $srv->requests;
is(join(' ', @k5), join(' ', @pending[0, 1], $after[0]), 'k5\'s messages in order, across the update');
is(sql(qq{SELECT destination FROM outbox.deliveries WHERE message_id = '$after[1]'}), 'default',
	'outbox.deliveries shows them as the default destination\'s');

########################################################################
# 4. Destinations on the updated schema.

my $new_url = $new_srv->url('/new/{topic}');
sql(qq{
SELECT outbox.create_destination('webhook2', 'http', '{"url": "$new_url", "signing_secret": "another-secret"}');
SELECT outbox.subscribe('webhook2', 'routed.*');
});
ok(OutboxDestinations::wait_worker($node, 'webhook2', dbname => 'legacy'), 'a destination gets its worker');
my $routed = save('routed.x', 'k1');
my $unrouted = save('legacy.e', 'k1');
ok(OutboxTest::poll_until($node, 'legacy', qq{SELECT count(*) FROM outbox.messages WHERE id IN ('$routed', '$unrouted') AND status = 'processed'}, '2'),
	'both published');
my ($r) = $new_srv->requests(id => $routed);
ok($r && OutboxDestinations::signature_ok($r, 'another-secret'), 'the routed one by the new destination, with its own secret');
is(scalar(grep { $_->{id} eq $routed } $srv->requests), 0, 'and not by the default destination');
ok(request_ok($unrouted), 'the other by the default destination, as before');

$node->stop;
$srv->stop;
$new_srv->stop;
done_testing();
