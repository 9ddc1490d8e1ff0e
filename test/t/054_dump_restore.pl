# 054_dump_restore.pl -- a superuser's pg_dump holds the outbox, and a
# restore into a new cluster (outbox preloaded, the database relayed, its
# workers running during the restore) goes on delivering with nothing lost.
#
# The source database holds messages in every state: processed, pending,
# in backoff after a failed attempt, claimed by an external relay whose
# session is still open (of the default destination and of an external
# destination), failed, and routed part-way (delivered by a function
# destination, not yet by an external one); destinations with secret
# options (a paused http destination), subscriptions and positions.
#
# In the new cluster every message is there in the state it had; the
# claims, whose relay is gone, are picked up again; each pending message
# reaches its consumer (a function writing into a table, for the default
# destination and a function destination; the external relay fetching
# it); the one in backoff keeps its schedule; the failed one can be
# requeued; the processed ones are not delivered again; the secret options
# and the destinations' ids survive, and new messages flow too.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxTest qw(poll_until wait_for_worker set_conf);

my $conf = q{
outbox.poll_interval = '100ms'
outbox.publisher = 'function'
outbox.publisher_function = 'app.take'
outbox.processing_timeout = '1h'
outbox.retention = -1
outbox.retry_backoff = '1h'
outbox.retry_backoff_max = '1h'
};

my $src = OutboxTest::new_node('dump_src', conf => $conf);
sub src { return $src->safe_psql('postgres', $_[0]) }

# The consumers: a table of what each cluster delivered, filled by the
# default destination's function and by a function destination.  In the
# source cluster a payload 'fail' fails.
src(q{
CREATE SCHEMA app;
CREATE TABLE app.got (id uuid, via text, cluster text DEFAULT current_setting('cluster_name'));
CREATE FUNCTION app.take(m outbox.messages) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	IF convert_from(m.payload, 'UTF8') = 'fail' AND current_setting('cluster_name') = 'dump_src' THEN
		RAISE EXCEPTION 'consumer down';
	END IF;
	INSERT INTO app.got (id, via) VALUES (m.id, 'default');
END $$;
CREATE FUNCTION app.take_fn(m outbox.messages) RETURNS void LANGUAGE sql
	AS $$ INSERT INTO app.got (id, via) VALUES (m.id, 'fn') $$;
SELECT outbox.create_destination('fn', 'function', '{"function": "app.take_fn"}');
SELECT outbox.create_destination('ext', 'external');
SELECT outbox.create_destination('hook', 'http',
	'{"url": "http://127.0.0.1:9/hook", "signing_secret": "whsec_dump_secret",
	  "headers": {"Authorization": "Bearer dump-token"}}');
SELECT outbox.pause_destination('hook');
SELECT outbox.subscribe('fn', 'r.>');
SELECT outbox.subscribe('ext', 'r.>');
SELECT outbox.subscribe('hook', 'h.>');
});

my %id;
sub save
{
	my ($name, $topic, $payload) = @_;
	$id{$name} = src("SELECT outbox.save('$topic', '$payload'::text)");
	return $id{$name};
}

# Processed, in backoff, routed part-way.
save('processed', 'd.done', 'done');
ok(poll_until($src, 'postgres', "SELECT status FROM outbox.messages WHERE id = '$id{processed}'", 'processed'),
	'source: a processed message');
save('backoff', 'd.backoff', 'fail');
ok(poll_until($src, 'postgres',
		"SELECT status || '/' || retries FROM outbox.messages WHERE id = '$id{backoff}'", 'pending/1'),
	'source: a message in backoff after a failed attempt');
save('r1', 'r.one', 'r1');
save('r2', 'r.two', 'r2');
ok(poll_until($src, 'postgres', "SELECT count(*) FROM app.got WHERE via = 'fn'", '2'),
	'source: two routed messages delivered by the function destination, not yet fetched by the external one');

# Pending, claimed by external relays (whose session stays open), failed,
# and one routed to the paused http destination.
set_conf($src, 'outbox.enabled' => 'off');
ok(poll_until($src, 'postgres',
		"SELECT state FROM outbox.worker_status() WHERE destination = 'default'", 'paused'),
	'source: the relay is paused');
save('claimed', 'd.claimed', 'claimed');
save('pending', 'd.pending', 'pending');
my $relay = $src->background_psql('postgres');
is($relay->query_safe('SELECT id FROM outbox.fetch_pending(1)'), $id{claimed},
	'source: an external relay claims a message of the default destination');
is($relay->query_safe(q{SELECT id FROM outbox.fetch_pending(1, 'ext')}), $id{r1},
	'and one of the external destination');
save('failed', 'd.failed', 'failed');
src(qq{UPDATE outbox.messages SET status = 'failed', retries = 5, last_error = 'gave up', processed_at = now()
       WHERE id = '$id{failed}'});
save('hooked', 'h.one', 'hooked');

my $src_messages = src(q{SELECT string_agg(id || ' ' || topic || ' ' || coalesce(destinations::text, 'default'),
                         E'\n' ORDER BY id) FROM outbox.messages});
my $src_options = src(q{SELECT string_agg(name || ' ' || options::text || ' ' || paused, E'\n' ORDER BY id)
                        FROM outbox.destination});
is(src(q{SELECT count(*) FROM outbox.messages WHERE status = 'processing'}) . '/'
	  . src(q{SELECT count(*) FROM outbox.delivery WHERE status = 'processing'}),
	'1/1', 'source: the two claims are held');

# A superuser's dump, taken while the claims are held.
my $dump = $src->basedir . '/outbox.sql';
$src->command_ok([ 'pg_dump', '-d', $src->connstr('postgres'), '-f', $dump ], 'pg_dump as a superuser');
my $text = slurp_file($dump);
like($text, qr/^COPY outbox\.messages \(/m, 'the dump holds outbox.messages');
like($text, qr/^COPY outbox\.$_ \(/m, "and outbox.$_") for qw(destination subscription destination_progress delivery);
like($text, qr/setval\('outbox\.destination_id_seq', 3, true\)/, 'and the sequence of the destinations\' ids');
like($text, qr/whsec_dump_secret/, '(secret options are in the dump: keep it safe)');
$relay->quit;
$src->stop;

# A new cluster with outbox preloaded and the database relayed: its
# workers run while the dump is restored.
my $dst = OutboxTest::new_node('dump_dst', databases => 'restored', extension_in => [],
	wait_worker => 0, conf => $conf);
$dst->safe_psql('postgres', 'CREATE DATABASE restored');
$dst->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $dst->connstr('restored'), '-f', $dump ],
	'the dump restores');
sub dst { return $dst->safe_psql('restored', $_[0]) }
ok(wait_for_worker($dst, 'restored'), 'the restored database\'s worker runs');

is(dst(q{SELECT string_agg(id || ' ' || topic || ' ' || coalesce(destinations::text, 'default'),
         E'\n' ORDER BY id) FROM outbox.messages}), $src_messages,
	'every message is restored with its id and its routing');
is(dst(q{SELECT string_agg(name || ' ' || options::text || ' ' || paused, E'\n' ORDER BY id) FROM outbox.destination}),
	$src_options, 'the destinations are restored with their ids, secret options and pause');
is(dst(q{SELECT options::text FROM outbox.destinations WHERE name = 'hook'}), '{"url": "http://127.0.0.1:9/hook"}',
	'(the view still hides the secrets)');
is(dst(q{SELECT string_agg(d.name || ':' || s.pattern, ',' ORDER BY d.name) FROM outbox.subscription s
         JOIN outbox.destination d ON d.id = s.destination_id}), 'ext:r.>,fn:r.>,hook:h.>',
	'and their subscriptions');

# Nothing lost: the restored claims are picked up again, every pending
# message reaches its consumer.
ok(poll_until($dst, 'restored',
		qq{SELECT count(*) FROM app.got WHERE cluster = 'dump_dst' AND via = 'default'
           AND id IN ('$id{claimed}', '$id{pending}')}, '2'),
	'the default destination\'s pending message and the one a relay had claimed are delivered');
my %fetched;
ok( OutboxTest::wait_until(
		30,
		sub {
			$fetched{$_} = 1
			  for split /\n/, dst(q{SELECT id FROM outbox.fetch_pending(10, 'ext')});
			return keys %fetched == 2;
		}),
	'the external relay fetches both routed messages: the one it had claimed (picked up again) and the other');
is(join(',', sort keys %fetched), join(',', sort $id{r1}, $id{r2}), '(those two)');
is(dst(qq{SELECT outbox.mark_processed_for(ARRAY['$id{r1}', '$id{r2}']::uuid[], 'ext')}), '2', 'it marks them');
ok(poll_until($dst, 'restored', qq{SELECT string_agg(status::text, ',') FROM outbox.messages
                                   WHERE id IN ('$id{r1}', '$id{r2}')}, 'processed,processed'),
	'the routed messages end processed');
is(dst(qq{SELECT count(*) FROM app.got WHERE cluster = 'dump_dst' AND id = '$id{processed}'}), '0',
	'the processed message is not delivered again');
is(dst(qq{SELECT status || '/' || retries || '/' || last_error || '/' || (next_attempt_at > now() + interval '30 minutes')
          FROM outbox.messages WHERE id = '$id{backoff}'}),
	'pending/1/consumer down/true', 'the message in backoff keeps its schedule');
dst(qq{UPDATE outbox.messages SET next_attempt_at = now() WHERE id = '$id{backoff}'});
ok(poll_until($dst, 'restored', qq{SELECT count(*) FROM app.got WHERE cluster = 'dump_dst' AND id = '$id{backoff}'}, '1'),
	'and is delivered when it is due');
is(dst(qq{SELECT status || '/' || last_error FROM outbox.messages WHERE id = '$id{failed}'}), 'failed/gave up',
	'the failed message stays failed');
is(dst(qq{SELECT outbox.retry_failed(ARRAY['$id{failed}']::uuid[])}), '1', 'retry_failed requeues it');
ok(poll_until($dst, 'restored', qq{SELECT count(*) FROM app.got WHERE cluster = 'dump_dst' AND id = '$id{failed}'}, '1'),
	'and it is delivered');
is(dst(qq{SELECT status || ' ' || destination FROM outbox.deliveries WHERE message_id = '$id{hooked}'}),
	'pending hook', 'the paused http destination\'s delivery waits');

# New messages flow, and a new destination takes the next id.
my $new = dst(q{SELECT outbox.save('r.new', 'new'::text)});
ok(poll_until($dst, 'restored', qq{SELECT count(*) FROM app.got WHERE id = '$new' AND via = 'fn'}, '1'),
	'a new routed message is delivered');
dst(q{SELECT outbox.create_destination('later', 'external')});
is(dst(q{SELECT id FROM outbox.destination WHERE name = 'later'}), '4', 'a new destination takes the next id');

$dst->stop;
done_testing();
