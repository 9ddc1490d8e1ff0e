
# 090_destinations_routing.pl -- routing and fan-out to real receivers.
#
# Destinations, each with its own worker:
#   hook_a  http to receiver A, signed with a raw secret, with static
#           headers (Authorization, X-Static); subscribed to orders.*
#   hook_b  http to receiver B, signed with a whsec_ secret, no headers;
#           subscribed to orders.> and invoices.*
#   cache   notify on channel dest_cache; subscribed to orders.> and invoices.>
#   stream  nats (JetStream) with subject dest.{topic}; subscribed to
#           orders.created (when nats-server and the plug-in are here)
# and the default destination (outbox.publisher = notify, channel = topic)
# for what no subscription routes.
#
# Checked: each receiver gets exactly the messages routed to it, once, in
# per-key order; each webhook verifies with its own secret and not with the
# other's; the static headers arrive at A only and are not shown by
# outbox.destinations; NOTIFY and NATS carry the messages; unrouted
# messages go to the default destination and nowhere else; every delivery
# and every message ends processed.

use strict;
use warnings;

use JSON::PP;
use MIME::Base64;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxDestinations;
use OutboxHttp;
use OutboxTest;

my $have_nats = OutboxDestinations::nats_available();
my $nats;
if ($have_nats)
{
	$nats = OutboxNats->start('dest');
	$nats->js('add-stream', 'DEST', 'dest.>', 1, 120);
}

my $srv_a = OutboxHttp->start;
my $srv_b = OutboxHttp->start;

my $node = OutboxTest::new_node(
	'dest_routing', conf => ($have_nats ? "shared_preload_libraries = 'outbox, outbox_nats'\n" : '') . q{
outbox.poll_interval = '100ms'
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '500ms'
outbox.max_retries = 1000
});

sub sql { return $node->safe_psql('postgres', $_[0]) }

my $secret_a = 'secret-of-receiver-a';
my $key_b = "\x07key-of-b\xfe\x00";
my $secret_b = 'whsec_' . encode_base64($key_b, '');

my $url_a = $srv_a->url('/a/{topic}');
my $url_b = $srv_b->url('/b/{topic}');
sql(qq{
SELECT outbox.create_destination('hook_a', 'http', '{"url": "$url_a", "signing_secret": "$secret_a",
       "headers": {"Authorization": "Bearer token-of-a", "X-Static": "static-a"}, "timeout": "5s"}');
SELECT outbox.create_destination('hook_b', 'http', '{"url": "$url_b", "signing_secret": "$secret_b"}');
SELECT outbox.create_destination('cache', 'notify', '{"channel": "dest_cache"}');
SELECT outbox.subscribe('hook_a', 'orders.*');
SELECT outbox.subscribe('hook_b', 'orders.>');
SELECT outbox.subscribe('hook_b', 'invoices.*');
SELECT outbox.subscribe('cache', 'orders.>');
SELECT outbox.subscribe('cache', 'invoices.>');
});
if ($have_nats)
{
	my $nurl = $nats->url;
	sql(qq{
SELECT outbox.create_destination('stream', 'nats', '{"url": "$nurl", "subject": "dest.{topic}"}');
SELECT outbox.subscribe('stream', 'orders.created');
});
}

my @names = ('hook_a', 'hook_b', 'cache', ($have_nats ? 'stream' : ()));
my %pid;
$pid{$_} = OutboxDestinations::wait_worker($node, $_) for @names;
ok((scalar grep { $pid{$_} } @names) == @names, 'every destination got a worker of its own: ' . join(', ', @names));
my %distinct = map { $_ => 1 } grep { $_ } values %pid;
is(scalar keys %distinct, scalar @names, 'one process per destination');

my $cache = OutboxTest::Listener->new($node, 'postgres', 'dest_cache');
my $default = OutboxTest::Listener->new($node, 'postgres', 'audit.login', 'orders.created');

########################################################################
# Save: 30 orders.created over three keys, and one of each other topic.

my %id;
my @created;
for my $i (1 .. 30)
{
	my $k = 'k' . (1 + $i % 3);
	push @created, sql(qq{SELECT outbox.save('orders.created', '{"seq": $i, "key": "$k"}'::jsonb, '$k')});
}
$id{eu} = sql(q{SELECT outbox.save('orders.eu.created', '{"n": "eu"}'::jsonb, 'k1')});
$id{invoice} = sql(q{SELECT outbox.save('invoices.paid', '{"n": "invoice"}'::jsonb)});
$id{audit} = sql(q{SELECT outbox.save('audit.login', '{"n": "audit"}'::jsonb)});

is(sql(qq{SELECT destinations IS NULL FROM outbox.messages WHERE id = '$id{audit}'}), 't',
	'audit.login is routed nowhere: the default destination');

ok(OutboxTest::wait_all_processed($node, 'postgres'), 'every message ends processed');
is( sql(q{SELECT count(*) FROM outbox.deliveries WHERE status <> 'processed'}), '0',
	'every delivery is processed');
is( sql(q{SELECT string_agg(destination || '=' || n, ' ' ORDER BY destination) FROM
          (SELECT destination, count(*) AS n FROM outbox.deliveries GROUP BY 1) x}),
	'cache=32 default=1 hook_a=30 hook_b=32' . ($have_nats ? ' stream=30' : ''),
	'deliveries per destination: what the subscriptions route there');

########################################################################
# Receiver A: orders.created only, signed with A's secret, with A's headers.

sub ids_of { return join(' ', sort map { $_->{id} } @_) }

my @a = $srv_a->requests;
is(ids_of(@a), join(' ', sort @created), 'receiver A got exactly the orders.created messages, once each');
is(scalar(grep { $_->{path} eq '/a/orders.created' } @a), 30, 'at its own URL, with {topic} replaced');
is(scalar(grep { OutboxDestinations::signature_ok($_, $secret_a) } @a), 30,
	'every request to A verifies with A\'s secret');
is(scalar(grep { OutboxDestinations::signature_ok($_, $key_b) } @a), 0, 'none with B\'s');
is(scalar(grep { ($_->{headers}{authorization} // '') eq 'Bearer token-of-a' } @a), 30,
	'the static Authorization header arrives with every request to A');
is(scalar(grep { ($_->{headers}{'x-static'} // '') eq 'static-a' } @a), 30, 'and so does X-Static');

########################################################################
# Receiver B: orders.> and invoices.*, signed with B's whsec_ secret.

my @b = $srv_b->requests;
is(ids_of(@b), join(' ', sort(@created, $id{eu}, $id{invoice})),
	'receiver B got orders.created, orders.eu.created and invoices.paid, once each');
is(scalar(grep { OutboxDestinations::signature_ok($_, $key_b) } @b), 32,
	'every request to B verifies with B\'s key (the decoded whsec_ secret)');
is(scalar(grep { OutboxDestinations::signature_ok($_, $secret_a) } @b), 0, 'none with A\'s');
is(scalar(grep { exists $_->{headers}{authorization} || exists $_->{headers}{'x-static'} } @b), 0,
	'A\'s static headers do not reach B');
my ($eu) = grep { $_->{id} eq $id{eu} } @b;
is($eu ? $eu->{path} : '', '/b/orders.eu.created', 'orders.eu.created at B\'s URL');

# Per-key order per receiver: the worker never has two requests of a key
# in flight, so request start times follow the keys' sequence.
for my $pair ([ 'A', \@a ], [ 'B', \@b ])
{
	my ($label, $reqs) = @$pair;
	my (%last, @out_of_order);
	for my $r (sort { $a->{start} <=> $b->{start} } grep { $_->{topic} eq 'orders.created' } @$reqs)
	{
		my $body = decode_json($r->{body});
		push @out_of_order, "$body->{key}: $body->{seq} after $last{$body->{key}}"
		  if defined $last{ $body->{key} } && $body->{seq} <= $last{ $body->{key} };
		$last{ $body->{key} } = $body->{seq};
	}
	is(scalar @out_of_order, 0, "receiver $label got each key's messages in order")
	  or diag("@out_of_order");
}

########################################################################
# NOTIFY: the cache destination's channel, and the default destination.

ok($cache->wait_count(32, 30), 'the cache destination NOTIFYs its 32 messages on its channel');
my @cached = @{ $cache->received };
is(join(' ', sort map { $_->{envelope}{id} } @cached), join(' ', sort(@created, $id{eu}, $id{invoice})),
	'exactly the orders and invoices messages');
is(scalar(grep { $_->{channel} eq 'dest_cache' } @cached), 32, 'all on channel dest_cache');
my (%last, @disorder);
for my $n (grep { $_->{envelope}{topic} eq 'orders.created' } @cached)
{
	my ($k, $s) = @{ $n->{envelope}{payload} }{qw(key seq)};
	push @disorder, "$k: $s after $last{$k}" if defined $last{$k} && $s <= $last{$k};
	$last{$k} = $s;
}
is(scalar @disorder, 0, 'each key\'s messages in order') or diag("@disorder");

ok($default->wait_for_id($id{audit}, 30), 'the unrouted message goes to the default destination (NOTIFY on its topic)');
$default->poll;
is(join(' ', map { $_->{envelope}{id} } @{ $default->received }), $id{audit},
	'and only it: routed messages are not published by the default destination');
ok(!(grep { $_->{envelope}{id} eq $id{audit} } @cached), 'the unrouted message reaches no destination');
is(scalar(grep { $_->{id} eq $id{audit} } @a, @b), 0, 'nor any receiver');

########################################################################
# NATS.

SKIP:
{
	skip 'nats not available here', 4 unless $have_nats;
	my @msgs = $nats->dump('DEST');
	is(scalar @msgs, 30, 'the nats destination published the 30 orders.created messages to its stream');
	is(join(' ', sort map { $_->{headers}{'Nats-Msg-Id'} // '' } @msgs), join(' ', sort @created),
		'each once, Nats-Msg-Id = the message id');
	is(scalar(grep { $_->{subject} eq 'dest.orders.created' } @msgs), 30, 'on the subject its option gives');
	my (%seen, @bad);
	for my $m (@msgs)
	{
		my $body = decode_json($m->{data});
		push @bad, "$body->{key}: $body->{seq}" if defined $seen{ $body->{key} } && $body->{seq} <= $seen{ $body->{key} };
		$seen{ $body->{key} } = $body->{seq};
	}
	is(scalar @bad, 0, 'in per-key order') or diag("@bad");
}

########################################################################
# Secrets stay out of the views.

my $shown = sql(q{SELECT string_agg(name || ' ' || options::text || ' ' || coalesce(last_error, ''), E'\n') FROM outbox.destinations});
unlike($shown, qr/token-of-a|\Q$secret_a\E|whsec_/, 'outbox.destinations shows neither the secrets nor the static headers');
is(sql(q{SELECT options FROM outbox.destinations WHERE name = 'hook_a'}),
	qq{{"url": "$url_a", "timeout": "5s"}}, 'hook_a shows its url and timeout');
is(sql(q{SELECT state FROM outbox.destinations WHERE name IN ('hook_a', 'hook_b', 'cache') GROUP BY state}), 'ok',
	'every destination is ok');

my %after = OutboxDestinations::worker_pids($node);
is(join(' ', map { $after{$_} // 'none' } @names), join(' ', map { $pid{$_} } @names),
	'the same workers ran throughout');

$cache->quit;
$default->quit;
$node->stop;
$srv_a->stop;
$srv_b->stop;
done_testing();
