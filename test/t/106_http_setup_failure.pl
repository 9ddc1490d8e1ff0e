# 106_http_setup_failure.pl -- the http publisher when building its
# transport fails halfway: a curl option it cannot set.
#
# curl refuses string options longer than 8,000,000 bytes, so a CA file
# name that long makes setting CURLOPT_CAINFO fail after the multi handle
# and the first request handle were made.  The transport must be all or
# nothing:
#
#  - while the option is unusable, every batch tries to build the
#    transport again and fails with the same error; no request is sent with
#    a transport built without it;
#  - once the option is fixed, the message is delivered, once, and the
#    server never crashed.
#
# A destination's option, not the setting: a configuration file line of
# 8 MB takes minutes to parse.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxHttp;
use OutboxTest;

my $srv = OutboxHttp->start;
my $url = $srv->url('/hook/{topic}');

my $node = OutboxTest::new_node('http_setup_failure', conf => qq{
outbox.publisher = 'http'
outbox.poll_interval = '100ms'
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '500ms'
outbox.processing_timeout = '1s'
outbox.max_retries = 1000
log_statement = 'none'
});

sub q1
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql);
}

sub delivery
{
	my ($id) = @_;
	return q1("SELECT status || '|' || retries FROM outbox.deliveries WHERE message_id = '$id'");
}

q1(qq{SELECT outbox.create_destination('hook', 'http', '{"url": "$url", "max_concurrency": 4}');
SELECT outbox.subscribe('hook', 'setup')});
my $first = q1(q{SELECT outbox.save('setup', '{"n": 0}'::jsonb)});
ok(OutboxTest::poll_until($node, 'postgres', "SELECT status FROM outbox.deliveries WHERE message_id = '$first'",
		'processed'),
	'delivered with a working transport');

my $offset = OutboxTest::log_position($node);
my $setup_error = qr/could not set curl option CURLOPT_CAINFO/;
# Paused meanwhile, so that its next worker starts with the new option.
q1(q{SELECT outbox.pause_destination('hook');
SELECT outbox.alter_destination('hook', jsonb_build_object('ca_file', '/' || repeat('x', 8000001)))});
my $id = q1(q{SELECT outbox.save('setup', '{"n": 1}'::jsonb)});
q1(q{SELECT outbox.resume_destination('hook')});

# Each batch that finds the transport missing builds it and fails; one
# that found it half built would send the message instead.
OutboxTest::wait_until(
	$OutboxTest::TIMEOUT,
	sub {
		return OutboxTest::log_count($node, $setup_error, $offset) >= 3
		  || delivery($id) =~ /^processed/;
	});
cmp_ok(OutboxTest::log_count($node, $setup_error, $offset), '>=', 3,
	'every batch builds the transport anew, and fails the same way');
unlike(delivery($id), qr/^processed/, 'no message goes out over a transport built halfway');
is(scalar(@{ [ $srv->requests(topic => 'setup') ] }), 1, 'nothing was posted meanwhile');

q1(q{SELECT outbox.alter_destination('hook', '{"ca_file": null}')});
ok(OutboxTest::poll_until($node, 'postgres', "SELECT status FROM outbox.deliveries WHERE message_id = '$id'",
		'processed'),
	'delivered once the option is fixed');
is(scalar(@{ [ $srv->requests(id => $id) ] }), 1, 'posted once');
my $next = q1(q{SELECT outbox.save('setup', '{"n": 2}'::jsonb)});
ok(OutboxTest::poll_until($node, 'postgres', "SELECT status FROM outbox.deliveries WHERE message_id = '$next'",
		'processed'),
	'and the next message too');
is(OutboxTest::log_count($node, qr/terminated by signal/, $offset), 0, 'the server never crashed');

$node->stop;
done_testing();
