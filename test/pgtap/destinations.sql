-- destinations.sql: destinations and subscriptions (0.3.0).
--
-- The SQL API (create_destination, alter_destination, drop_destination,
-- pause_destination, resume_destination, subscribe, unsubscribe,
-- topic_matches) and every validation error with its SQLSTATE, the views
-- (secrets left out, state), routing at save time, transactional changes,
-- permissions, and the store API of an external destination
-- (fetch_pending(n, destination), mark_processed_for, mark_failed,
-- retry_failed) with its per-key order.
--
-- No worker relays this database (the pgtap suite's worker runs in
-- "postgres"), so nothing here is published.  Most of the file is one
-- transaction, rolled back.  The store API needs committed messages (an
-- open transaction's messages are above the id horizon, and no destination
-- hands them out: tested below), so a short setup commits two external
-- destinations and their messages first, and the end drops them again.
-- Setup and cleanup are DO blocks: they print nothing.

-- Names of the setup's messages (a temporary table lives for the session).
CREATE TEMP TABLE dst_msg (name text PRIMARY KEY, id uuid NOT NULL);

DO $$
BEGIN
    PERFORM outbox.create_destination('pgtap_ext', 'external');
    PERFORM outbox.create_destination('pgtap_ext2', 'external');
    PERFORM outbox.subscribe('pgtap_ext', 'st.>');
    PERFORM outbox.subscribe('pgtap_ext2', 'st.both.*');
END $$;

-- Saved after the subscriptions committed, each in the order given: key k1
-- has a1 a2 a3, key k2 has b1 b2, n1 and c1 have no key, both1 (key k3)
-- and p1 go to both destinations.
DO $$
BEGIN
    INSERT INTO dst_msg VALUES ('a1', outbox.save('st.a', 'a1'::text, 'k1'));
    INSERT INTO dst_msg VALUES ('b1', outbox.save('st.b', 'b1'::text, 'k2'));
    INSERT INTO dst_msg VALUES ('a2', outbox.save('st.a', 'a2'::text, 'k1'));
    INSERT INTO dst_msg VALUES ('n1', outbox.save('st.n', 'n1'::text));
    INSERT INTO dst_msg VALUES ('a3', outbox.save('st.a', 'a3'::text, 'k1'));
    INSERT INTO dst_msg VALUES ('b2', outbox.save('st.b', 'b2'::text, 'k2'));
    INSERT INTO dst_msg VALUES ('both1', outbox.save('st.both.x', 'both1'::text, 'k3'));
    INSERT INTO dst_msg VALUES ('c1', outbox.save('st.c', 'c1'::text));
    INSERT INTO dst_msg VALUES ('p1', outbox.save('st.both.p', 'p1'::text));
END $$;

-- A transaction that subscribes and saves, then rolls back: the backend
-- must not keep routing by the subscription that never committed.
BEGIN;
DO $$
BEGIN
    PERFORM outbox.subscribe('pgtap_ext', 'probe.rolledback.*');
    PERFORM outbox.save('probe.rolledback.x', 'in'::text);
END $$;
ROLLBACK;
DO $$
BEGIN
    INSERT INTO dst_msg VALUES ('probe_after', outbox.save('probe.rolledback.y', 'after'::text));
END $$;

BEGIN;
SELECT plan(293);

-- outcome(sql): 'ok', or the SQLSTATE sql failed with; an error that left
-- a destination, a subscription or a message changed says so.
CREATE FUNCTION pg_temp.snapshot() RETURNS text LANGUAGE sql AS $$
    SELECT md5(coalesce((SELECT string_agg(d::text, '|' ORDER BY d.id) FROM outbox.destination d), '') ||
               coalesce((SELECT string_agg(s::text, '|' ORDER BY s.destination_id, s.pattern) FROM outbox.subscription s), '') ||
               coalesce((SELECT string_agg(x::text, '|' ORDER BY x.destination_id, x.message_id) FROM outbox.delivery x), '') ||
               (SELECT count(*) FROM outbox.messages)::text)
$$;
CREATE FUNCTION pg_temp.outcome(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    before text := pg_temp.snapshot();
    state text := 'ok';
BEGIN
    BEGIN
        EXECUTE sql;
    EXCEPTION WHEN OTHERS THEN
        state := SQLSTATE;
    END;
    IF state <> 'ok' AND pg_temp.snapshot() <> before THEN
        RETURN state || ' but something changed';
    END IF;
    RETURN state;
END
$$;

-- The destinations of the last message saved with this topic, by name.
CREATE FUNCTION pg_temp.routed(t text) RETURNS text[] LANGUAGE sql AS $$
    SELECT (SELECT array_agg(d.name ORDER BY d.name) FROM outbox.destination d WHERE d.id = ANY (m.destinations))
    FROM outbox.messages m WHERE m.topic = t ORDER BY m.id DESC LIMIT 1
$$;

CREATE FUNCTION pg_temp.id(n text) RETURNS uuid LANGUAGE sql AS $$
    SELECT id FROM dst_msg WHERE name = n
$$;

-- fetch_pending(n, destination): the names of the messages handed out, in order.
CREATE FUNCTION pg_temp.fetched(n int, dest text) RETURNS text[] LANGUAGE sql AS $$
    SELECT coalesce(array_agg(coalesce(m.name, convert_from(f.payload, 'UTF8')) ORDER BY f.ordinality), '{}')
    FROM outbox.fetch_pending(n, dest) WITH ORDINALITY AS f
    LEFT JOIN dst_msg m ON m.id = f.id
$$;

CREATE FUNCTION pg_temp.ids(VARIADIC names text[]) RETURNS uuid[] LANGUAGE sql AS $$
    SELECT array_agg(pg_temp.id(n) ORDER BY o) FROM unnest(names) WITH ORDINALITY AS u(n, o)
$$;

-- A delivery's state in the view: status/retries/last_error.
CREATE FUNCTION pg_temp.delivery(n text, dest text) RETURNS text LANGUAGE sql AS $$
    SELECT status || '/' || retries || coalesce('/' || last_error, '')
    FROM outbox.deliveries WHERE message_id = pg_temp.id(n) AND destination = dest
$$;

-- ================================================================ create_destination

SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_hooks', 'http',
              '{"url": "http://127.0.0.1:1/hooks/{topic}", "timeout": "2s", "max_concurrency": 4,
                "signing_secret": "whsec_c2VjcmV0LW9mLWhvb2tz", "headers": {"Authorization": "Bearer pgtap-token"}}')$$),
          'ok', 'create_destination: an http destination with a URL, a timeout, a signing secret and static headers');
SELECT is((SELECT publisher || ' ' || options::text FROM outbox.destination WHERE name = 'pgtap_hooks'),
          'http {"url": "http://127.0.0.1:1/hooks/{topic}", "headers": {"Authorization": "Bearer pgtap-token"}, "timeout": "2s", "signing_secret": "whsec_c2VjcmV0LW9mLWhvb2tz", "max_concurrency": 4}',
          'the destination is stored with its publisher and options, as given');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_notify', 'notify', '{"channel": "pgtap_chan"}')$$),
          'ok', 'create_destination: a notify destination with its channel');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_plain', 'notify')$$),
          'ok', 'create_destination: options default to {}');
SELECT is((SELECT options FROM outbox.destination WHERE name = 'pgtap_plain'), '{}'::jsonb,
          'and are stored as {}');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_fn', 'function', '{"function": "pg_temp.nothing"}')$$),
          'ok', 'create_destination: a function destination');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_relay', 'external', '{}')$$),
          'ok', 'create_destination: an external destination');
SELECT is(pg_temp.outcome(format('SELECT outbox.create_destination(%L, %L)', 'a' || repeat('z', 62), 'notify')),
          'ok', 'a 63-character name is accepted');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('d_2', 'notify')$$),
          'ok', 'names may hold digits and underscores');
SELECT is((SELECT count(*) FROM outbox.destination_progress p JOIN outbox.destination d ON d.id = p.destination_id
           WHERE d.name = 'pgtap_hooks'), 1::bigint,
          'a new destination gets its start position');

-- Bad input: a clear SQLSTATE, and nothing changes.
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('Bad', 'notify')$$), '42602',
          'a name with a capital letter: 42602');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('1abc', 'notify')$$), '42602',
          'a name starting with a digit: 42602');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('', 'notify')$$), '42602',
          'an empty name: 42602');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('a-b', 'notify')$$), '42602',
          'a name with a hyphen: 42602');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('a b', 'notify')$$), '42602',
          'a name with a blank: 42602');
SELECT is(pg_temp.outcome(format('SELECT outbox.create_destination(%L, %L)', repeat('a', 64), 'notify')), '42602',
          'a 64-character name: 42602');
SELECT throws_ok($$SELECT outbox.create_destination('Bad', 'notify')$$, '42602',
                 'invalid destination name "Bad"', 'the 42602 error names the bad name');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('default', 'notify')$$), '42939',
          'the name "default" is reserved: 42939');
SELECT throws_ok($$SELECT outbox.create_destination('default', 'notify')$$, '42939',
                 'destination name "default" is reserved', 'the 42939 error says so');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', 'nope')$$), '42704',
          'an unknown publisher: 42704');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', 'HTTP')$$), '42704',
          'publisher names are case-sensitive: 42704');
SELECT throws_ok($$SELECT outbox.create_destination('pgtap_x', 'nope')$$, '42704',
                 'outbox publisher "nope" does not exist', 'the 42704 error names the publisher');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_hooks', 'notify')$$), '42710',
          'a duplicate name: 42710');
SELECT throws_ok($$SELECT outbox.create_destination('pgtap_hooks', 'notify')$$, '42710',
                 'outbox destination "pgtap_hooks" already exists', 'the 42710 error names the destination');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', 'http', '{"url": "http://h/", "bogus": 1}')$$),
          '22023', 'an unknown option: 22023');
SELECT throws_ok($$SELECT outbox.create_destination('pgtap_x', 'http', '{"url": "http://h/", "bogus": 1}')$$, '22023',
                 'unknown option "bogus" for publisher "http"', 'the error names the option and the publisher');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', 'http', '{}')$$), '22023',
          'a missing required option (http url): 22023');
SELECT throws_ok($$SELECT outbox.create_destination('pgtap_x', 'http', '{}')$$, '22023',
                 'option "url" is required for publisher "http"', 'the error names the required option');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', 'function', '{}')$$), '22023',
          'a missing required option (function function): 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', 'http', '{"url": "ftp://h/"}')$$), '22023',
          'a URL that is not http(s): 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', 'http', '{"url": 5}')$$), '22023',
          'a string option given a number: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', 'http', '{"url": "http://h/", "timeout": "soon"}')$$),
          '22023', 'an integer option given words: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', 'http', '{"url": "http://h/", "timeout": 5}')$$),
          '22023', 'an integer option below its minimum (timeout 5 ms < 10 ms): 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', 'http', '{"url": "http://h/", "timeout": 1.5}')$$),
          '22023', 'an integer option given a fraction: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', 'http', '{"url": "http://h/", "max_concurrency": 1001}')$$),
          '22023', 'an integer option above its maximum: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', 'http', '{"url": "http://h/", "headers": {"a": 1}}')$$),
          '22023', 'headers that are not an object of strings: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', 'http', '{"url": "http://h/", "headers": "x"}')$$),
          '22023', 'headers that are not an object: 22023');
SELECT is(pg_temp.outcome(format('SELECT outbox.create_destination(%L, %L, %L)', 'pgtap_x', 'notify',
                                 jsonb_build_object('channel', repeat('c', 64)))),
          '22023', 'a notify channel of 64 bytes: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', 'http', '[]')$$), '22023',
          'options that are an array: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', 'http', '"x"')$$), '22023',
          'options that are a string: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', 'external', '{"url": "http://h/"}')$$), '22023',
          'options for an external destination: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination(NULL, 'notify')$$), '22004',
          'a NULL name: 22004');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', NULL)$$), '22004',
          'a NULL publisher: 22004');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', 'notify', NULL)$$), '22004',
          'NULL options: 22004');
SELECT is((SELECT count(*) FROM outbox.destination WHERE name = 'pgtap_x'), 0::bigint,
          'none of those created a destination');

-- ================================================================ the destinations view

SELECT is((SELECT options FROM outbox.destinations WHERE name = 'pgtap_hooks'),
          '{"url": "http://127.0.0.1:1/hooks/{topic}", "timeout": "2s", "max_concurrency": 4}'::jsonb,
          'outbox.destinations shows the options without the secret ones (signing_secret, headers)');
SELECT is((SELECT count(*) FROM outbox.destinations
           WHERE options::text LIKE '%pgtap-token%' OR options::text LIKE '%c2VjcmV0%'
              OR last_error LIKE '%pgtap-token%'), 0::bigint,
          'no secret value appears anywhere in outbox.destinations');
SELECT is((SELECT options FROM outbox.destinations WHERE name = 'pgtap_notify'), '{"channel": "pgtap_chan"}'::jsonb,
          'a destination without secret options shows them all');
SELECT is(outbox.public_options('http', '{"url": "http://h/", "signing_secret": "s", "headers": {}, "ca_file": "/f"}'),
          '{"url": "http://h/", "ca_file": "/f"}'::jsonb, 'public_options leaves out the http secrets');
SELECT is(outbox.public_options('nats', '{"url": "nats://h", "credentials": "/c"}') ->> 'credentials', NULL,
          'public_options leaves out options of a publisher it does not know (not loaded here): maybe secret');
SELECT results_eq(
    $$SELECT name, publisher, paused, state, last_error, disabled_reason, subscriptions
      FROM outbox.destinations WHERE name IN ('pgtap_hooks', 'pgtap_relay') ORDER BY name$$,
    $$VALUES ('pgtap_hooks'::text, 'http'::text, false, 'ok'::text, NULL::text, NULL::text, '{}'::text[]),
             ('pgtap_relay', 'external', false, 'ok', NULL, NULL, '{}')$$,
    'a new destination: not paused, state ok, no error, no subscription');

-- ================================================================ subscribe, unsubscribe

SELECT is(pg_temp.outcome($$SELECT outbox.subscribe('pgtap_hooks', 'orders.*')$$), 'ok', 'subscribe');
SELECT is(pg_temp.outcome($$SELECT outbox.subscribe('pgtap_notify', 'orders.>')$$), 'ok', 'subscribe another destination');
SELECT is(pg_temp.outcome($$SELECT outbox.subscribe('pgtap_notify', 'orders.eu.*')$$), 'ok',
          'a destination may hold overlapping subscriptions');
SELECT is(pg_temp.outcome($$SELECT outbox.subscribe('pgtap_hooks', 'invoices.paid')$$), 'ok', 'a literal pattern');
SELECT is(pg_temp.outcome($$SELECT outbox.subscribe('pgtap_hooks', 'orders.*')$$), 'ok',
          'subscribing twice is no error');
SELECT is((SELECT subscriptions FROM outbox.destinations WHERE name = 'pgtap_hooks'),
          ARRAY['invoices.paid', 'orders.*'], 'and changes nothing: the view lists each subscription once, sorted');
SELECT is((SELECT count(*) FROM outbox.subscription s JOIN outbox.destination d ON d.id = s.destination_id
           WHERE d.name = 'pgtap_hooks'), 2::bigint, 'two subscriptions stored');

SELECT is(pg_temp.outcome($$SELECT outbox.subscribe('pgtap_hooks', '')$$), '22023', 'an empty pattern: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.subscribe('pgtap_hooks', 'orders..x')$$), '22023', 'an empty token: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.subscribe('pgtap_hooks', '.orders')$$), '22023', 'a leading dot: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.subscribe('pgtap_hooks', 'orders.')$$), '22023', 'a trailing dot: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.subscribe('pgtap_hooks', 'orders.>.x')$$), '22023', '">" not last: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.subscribe('pgtap_hooks', 'orders.a*')$$), '22023', '"*" inside a token: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.subscribe('pgtap_hooks', 'orders.>>')$$), '22023', '">>" as a token: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.subscribe('pgtap_hooks', 'orders created')$$), '22023', 'a blank in a token: 22023');
SELECT is(pg_temp.outcome(format('SELECT outbox.subscribe(%L, %L)', 'pgtap_hooks', repeat('a', 256))), '22023',
          'a 256-byte pattern: 22023');
SELECT throws_ok($$SELECT outbox.subscribe('pgtap_hooks', 'orders.>.x')$$, '22023',
                 'invalid topic pattern "orders.>.x"', 'the 22023 error names the pattern');
SELECT is(pg_temp.outcome($$SELECT outbox.subscribe('pgtap_nope', 'orders.*')$$), '42704', 'an unknown destination: 42704');
SELECT is(pg_temp.outcome($$SELECT outbox.subscribe(NULL, 'orders.*')$$), '22004', 'a NULL destination: 22004');
SELECT is(pg_temp.outcome($$SELECT outbox.subscribe('pgtap_hooks', NULL)$$), '22004', 'a NULL pattern: 22004');

SELECT is(pg_temp.outcome($$SELECT outbox.unsubscribe('pgtap_hooks', 'invoices.paid')$$), 'ok', 'unsubscribe');
SELECT is((SELECT subscriptions FROM outbox.destinations WHERE name = 'pgtap_hooks'), ARRAY['orders.*'],
          'the subscription is gone');
SELECT is(pg_temp.outcome($$SELECT outbox.unsubscribe('pgtap_hooks', 'invoices.paid')$$), '42704',
          'unsubscribing a pattern the destination does not have: 42704');
SELECT throws_ok($$SELECT outbox.unsubscribe('pgtap_hooks', 'nothing.*')$$, '42704',
                 'outbox destination "pgtap_hooks" has no subscription "nothing.*"', 'the error names both');
SELECT is(pg_temp.outcome($$SELECT outbox.unsubscribe('pgtap_nope', 'orders.*')$$), '42704',
          'unsubscribe from an unknown destination: 42704');
SELECT is(pg_temp.outcome($$SELECT outbox.unsubscribe(NULL, 'orders.*')$$), '22004', 'unsubscribe, NULL destination: 22004');
SELECT is(pg_temp.outcome($$SELECT outbox.unsubscribe('pgtap_hooks', NULL)$$), '22004', 'unsubscribe, NULL pattern: 22004');

-- ================================================================ topic_matches

SELECT is(outbox.topic_matches('orders.created', 'orders.*'), true, 'orders.* matches orders.created');
SELECT is(outbox.topic_matches('orders.eu.created', 'orders.*'), false, 'orders.* does not match orders.eu.created');
SELECT is(outbox.topic_matches('orders.created', 'orders.>'), true, 'orders.> matches orders.created');
SELECT is(outbox.topic_matches('orders.eu.created', 'orders.>'), true, 'orders.> matches orders.eu.created');
SELECT is(outbox.topic_matches('orders', 'orders.>'), false, 'orders.> does not match orders (">" is one or more tokens)');
SELECT is(outbox.topic_matches('orders', 'orders.*'), false, 'orders.* does not match orders');
SELECT is(outbox.topic_matches('orders', '*'), true, '* matches a one-token topic');
SELECT is(outbox.topic_matches('orders.created', '*'), false, '* does not match two tokens');
SELECT is(outbox.topic_matches('a.b.c', '>'), true, '> matches anything');
SELECT is(outbox.topic_matches('orders.created', '*.created'), true, '*.created matches orders.created');
SELECT is(outbox.topic_matches('orders.created', '*.*'), true, '*.* matches two tokens');
SELECT is(outbox.topic_matches('orders.created', 'orders.created'), true, 'a literal pattern matches its topic');
SELECT is(outbox.topic_matches('orders.createdx', 'orders.created'), false, 'tokens are compared whole');
SELECT is(outbox.topic_matches('orders.create', 'orders.created'), false, 'tokens are compared whole (shorter)');
SELECT is(outbox.topic_matches('Orders.created', 'orders.*'), false, 'matching is case-sensitive');
SELECT is(outbox.topic_matches('orders..created', 'orders.*.created'), false, 'an empty topic token matches no "*"');
SELECT is(outbox.topic_matches('orders.a b', 'orders.*'), true, 'a topic token may hold characters patterns may not');
SELECT is(outbox.topic_matches('orders.x.y', 'orders.*.>'), true, 'orders.*.> matches orders.x.y');
SELECT is(outbox.topic_matches('orders.x', 'orders.*.>'), false, 'orders.*.> does not match orders.x');
SELECT is(outbox.topic_matches(NULL, 'orders.*'), NULL, 'a NULL topic matches nothing (NULL)');
SELECT throws_ok($$SELECT outbox.topic_matches('orders.x', 'orders..x')$$, '22023',
                 'invalid topic pattern "orders..x"', 'an invalid pattern: 22023');

-- ================================================================ routing at save time

SELECT is(pg_temp.outcome($$SELECT outbox.save('orders.created', '{"n": 1}'::jsonb, 'c1')$$), 'ok', 'save orders.created');
SELECT is(pg_temp.routed('orders.created'), ARRAY['pgtap_hooks', 'pgtap_notify'],
          'orders.created goes to both destinations (orders.* and orders.>): fan-out, one row');
SELECT is(pg_temp.outcome($$SELECT outbox.save('orders.eu.created', '{"n": 2}'::jsonb)$$), 'ok', 'save orders.eu.created');
SELECT is(pg_temp.routed('orders.eu.created'), ARRAY['pgtap_notify'],
          'orders.eu.created goes to pgtap_notify only, once although two of its patterns match');
SELECT is((SELECT destinations FROM outbox.messages WHERE topic = 'orders.created'),
          (SELECT array_agg(id ORDER BY id) FROM outbox.destination WHERE name IN ('pgtap_hooks', 'pgtap_notify')),
          'the destinations column holds the destination ids, sorted');
SELECT is(pg_temp.outcome($$SELECT outbox.save('invoices.sent', 'x'::text)$$), 'ok', 'save invoices.sent');
SELECT is((SELECT destinations FROM outbox.messages WHERE topic = 'invoices.sent'), NULL,
          'a topic no subscription matches goes to the default destination (destinations NULL)');
SELECT is(pg_temp.outcome($$INSERT INTO outbox.messages (topic, payload) SELECT 'orders.batch', '\x00' FROM generate_series(1, 3)$$),
          'ok', 'the batch path');
SELECT is((SELECT count(*) FROM outbox.messages WHERE topic = 'orders.batch'
           AND destinations = (SELECT array_agg(id ORDER BY id) FROM outbox.destination WHERE name IN ('pgtap_hooks', 'pgtap_notify'))),
          3::bigint, 'routes like save()');
SELECT is(pg_temp.outcome($$INSERT INTO outbox.messages (topic, payload, destinations) VALUES ('invoices.given', '\x00', '{99999}')$$),
          'ok', 'a superuser''s insert that gives the destinations column itself (as a restore does)');
SELECT is((SELECT destinations FROM outbox.messages WHERE topic = 'invoices.given'), '{99999}',
          'is taken as it is');
SELECT is(pg_temp.outcome($$INSERT INTO outbox.messages (topic, payload, destinations) VALUES ('orders.given', '\x00', NULL)$$),
          'ok', 'likewise NULL (the default destination) for a routed topic');
SELECT is(pg_temp.routed('orders.given'), NULL, 'which stays with the default destination');
SELECT is(pg_temp.outcome($$INSERT INTO outbox.messages (topic, payload, destinations) VALUES ('orders.given2', '\x00', '{}')$$),
          'ok', 'an insert that gives the column''s default, the empty array');
SELECT is(pg_temp.routed('orders.given2'), ARRAY['pgtap_hooks', 'pgtap_notify'], 'is routed');
SELECT is(pg_temp.outcome(format('SELECT outbox.save(%L, %L::text)', 'orders.' || repeat('x', 100), 'long')), 'ok',
          'a routed topic over 63 bytes saves, though the default destination''s notify publisher could not take it');
SELECT is(pg_temp.outcome(format('SELECT outbox.save(%L, %L::text)', 'invoices.' || repeat('x', 100), 'long')), '22023',
          'an unrouted one still gets the notify publisher''s 22023');
SELECT is(pg_temp.outcome($$INSERT INTO outbox.messages (id, topic, payload) VALUES (gen_random_uuid(), 'orders.explicit', '\x00')$$),
          '22023', 'a routed message with an explicit random id: 22023 (a destination could pass it unseen)');
SELECT is(pg_temp.outcome($$INSERT INTO outbox.messages (id, topic, payload) VALUES ('01000000-0000-7000-8000-000000000000', 'orders.explicit', '\x00')$$),
          '22023', 'a routed message with an explicit old UUIDv7: 22023');
SELECT throws_ok($$INSERT INTO outbox.messages (id, topic, payload) VALUES ('01000000-0000-7000-8000-000000000000', 'orders.explicit', '\x00')$$,
                 '22023', 'outbox message id 01000000-0000-7000-8000-000000000000 cannot be routed to destinations',
                 'the error names the id');
SELECT is(pg_temp.outcome($$INSERT INTO outbox.messages (id, topic, payload) VALUES (outbox.next_id(), 'orders.explicit', '\x00')$$),
          'ok', 'an explicit id from outbox.next_id() in the saving transaction is fine');
SELECT is(pg_temp.routed('orders.explicit'), ARRAY['pgtap_hooks', 'pgtap_notify'], 'and is routed');
SELECT is(pg_temp.outcome($$INSERT INTO outbox.messages (id, topic, payload) VALUES (gen_random_uuid(), 'invoices.explicit', '\x00')$$),
          'ok', 'an unrouted message takes any explicit id, as before');

-- ================================================================ transactional changes

-- Changes made in a subtransaction that is then rolled back (pgTAP's own
-- results would be rolled back with it, so the function reports what it
-- saw and undoes everything by raising).
CREATE FUNCTION pg_temp.changes_rolled_back() RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    seen text;
BEGIN
    BEGIN
        PERFORM outbox.create_destination('pgtap_tx', 'notify');
        PERFORM outbox.subscribe('pgtap_tx', 'tx.*');
        PERFORM outbox.subscribe('pgtap_hooks', 'tx.*');
        PERFORM outbox.unsubscribe('pgtap_notify', 'orders.>');
        PERFORM outbox.pause_destination('pgtap_notify');
        PERFORM outbox.alter_destination('pgtap_notify', '{"channel": "changed"}');
        PERFORM outbox.save('tx.a', 'x'::text);
        seen := array_to_string(pg_temp.routed('tx.a'), ',') || ' / ' ||
            (SELECT count(*) FROM outbox.destination WHERE name = 'pgtap_tx') || ' / ' ||
            (SELECT paused FROM outbox.destination WHERE name = 'pgtap_notify');
        RAISE EXCEPTION 'undo';
    EXCEPTION WHEN raise_exception THEN
        RETURN seen;
    END;
END
$$;
SELECT is(pg_temp.changes_rolled_back(), 'pgtap_hooks,pgtap_tx / 1 / true',
          'in a transaction that creates, subscribes, unsubscribes, pauses and alters, its own later messages are routed by its changes');
SELECT is((SELECT count(*) FROM outbox.destination WHERE name = 'pgtap_tx'), 0::bigint,
          'rolled back: the destination is gone');
SELECT is((SELECT string_agg(d.name || ' ' || s.pattern, ', ' ORDER BY d.name, s.pattern)
           FROM outbox.subscription s JOIN outbox.destination d ON d.id = s.destination_id
           WHERE d.name IN ('pgtap_hooks', 'pgtap_notify')),
          'pgtap_hooks orders.*, pgtap_notify orders.>, pgtap_notify orders.eu.*',
          'rolled back: the subscriptions are as they were');
SELECT is((SELECT paused::text || ' ' || options::text FROM outbox.destination WHERE name = 'pgtap_notify'),
          'false {"channel": "pgtap_chan"}', 'rolled back: the pause and the new options are undone');
SELECT is((SELECT count(*) FROM outbox.messages WHERE topic = 'tx.a'), 0::bigint, 'rolled back: the message is gone');
SELECT is(pg_temp.outcome($$SELECT outbox.save('tx.b', 'x'::text)$$), 'ok', 'save after the rollback');
SELECT is(pg_temp.routed('tx.b'), NULL, 'is not routed by the rolled-back subscriptions');
SELECT is(pg_temp.outcome($$SELECT outbox.save('orders.again', 'x'::text)$$), 'ok', 'save orders.again');
SELECT is(pg_temp.routed('orders.again'), ARRAY['pgtap_hooks', 'pgtap_notify'],
          'is routed by the subscriptions as they are');
SELECT is((SELECT destinations FROM outbox.messages WHERE id = pg_temp.id('probe_after')), NULL,
          'a transaction that subscribed, saved and rolled back left its backend routing by the committed subscriptions only');

-- ================================================================ alter_destination

SELECT is(pg_temp.outcome($$SELECT outbox.alter_destination('pgtap_hooks', '{"timeout": "3s", "max_concurrency": 8}')$$), 'ok',
          'alter_destination');
SELECT is((SELECT options FROM outbox.destination WHERE name = 'pgtap_hooks'),
          '{"url": "http://127.0.0.1:1/hooks/{topic}", "headers": {"Authorization": "Bearer pgtap-token"}, "timeout": "3s", "signing_secret": "whsec_c2VjcmV0LW9mLWhvb2tz", "max_concurrency": 8}'::jsonb,
          'merges the options: the given ones change, the others stay');
SELECT is(pg_temp.outcome($$SELECT outbox.alter_destination('pgtap_hooks', '{"signing_secret": null, "ca_file": "/etc/ssl/x.pem"}')$$), 'ok',
          'alter_destination with a JSON null');
SELECT is((SELECT options FROM outbox.destination WHERE name = 'pgtap_hooks') ? 'signing_secret', false,
          'a JSON null removes the option');
SELECT is((SELECT options ->> 'ca_file' FROM outbox.destination WHERE name = 'pgtap_hooks'), '/etc/ssl/x.pem',
          'and a new one is added');
SELECT is(pg_temp.outcome($$SELECT outbox.alter_destination('pgtap_hooks', '{}')$$), 'ok', 'altering with {} is no error');
SELECT is(pg_temp.outcome($$SELECT outbox.alter_destination('pgtap_hooks', '{"url": null}')$$), '22023',
          'removing a required option: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.alter_destination('pgtap_hooks', '{"bogus": 1}')$$), '22023',
          'an unknown option: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.alter_destination('pgtap_hooks', '{"timeout": -1}')$$), '22023',
          'a bad value: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.alter_destination('pgtap_hooks', '[1]')$$), '22023',
          'options that are not an object: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.alter_destination('pgtap_relay', '{"url": "http://h/"}')$$), '22023',
          'options for an external destination: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.alter_destination('pgtap_nope', '{}')$$), '42704', 'an unknown destination: 42704');
SELECT is(pg_temp.outcome($$SELECT outbox.alter_destination(NULL, '{}')$$), '22004', 'a NULL name: 22004');
SELECT is(pg_temp.outcome($$SELECT outbox.alter_destination('pgtap_hooks', NULL)$$), '22004', 'NULL options: 22004');
SELECT is((SELECT options ->> 'url' FROM outbox.destination WHERE name = 'pgtap_hooks'), 'http://127.0.0.1:1/hooks/{topic}',
          'the failed alters changed nothing');

-- ================================================================ credentials, secrets, static headers (0.3.1)

-- error_of(sql): 'SQLSTATE: message | detail | hint' of the error sql raises,
-- or 'ok'.
CREATE FUNCTION pg_temp.error_of(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    st text; msg text; det text; hin text;
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL,
                            hin = PG_EXCEPTION_HINT;
    RETURN st || ': ' || msg || ' | ' || coalesce(det, '') || ' | ' || coalesce(hin, '');
END
$$;

-- A URL is never secret: credentials in one are refused, with a hint.
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', 'http', '{"url": "https://alice:hunter2@h/x"}')$$),
          '22023', 'an http URL with a user name and password: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', 'http', '{"url": "http://tok3n@h/x"}')$$),
          '22023', 'an http URL with a user name (a token) only: 22023');
SELECT is(pg_temp.error_of($$SELECT outbox.create_destination('pgtap_x', 'http', '{"url": "https://alice:hunter2@h/x"}')$$),
          '22023: invalid value for option "url" of publisher "http" | The value holds a URL with a user name or password, which would be shown to anyone who can read the destination''s options. | Put credentials in the secret options of publisher "http" (signing_secret, headers), with outbox.set_destination_secret().',
          'the error names the option, says why without quoting the URL, and the hint names the secret options');
SELECT is(pg_temp.outcome($$SELECT outbox.alter_destination('pgtap_hooks', '{"url": "http://u:p@127.0.0.1:1/hooks"}')$$),
          '22023', 'alter_destination refuses one too: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', 'http', '{"url": "http://h/x?next=http://u:p@evil/"}')$$),
          '22023', 'also a URL with credentials further in the value: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_x', 'http', '{"url": "http://h/a@b?c=d@e"}')$$),
          'ok', 'an "@" in the path or query is no user name');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_y', 'notify', '{"channel": "mail@example"}')$$),
          'ok', 'nor in an option that is not a URL');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_z', 'http', '{"url": "http://h/", "signing_secret": "http://u:p@h"}')$$),
          'ok', 'a secret option may hold anything');

-- A destination stored with credentials in a URL (as 0.3.0 took it): the
-- view leaves that option out.
UPDATE outbox.destination SET options = options || '{"url": "http://alice:hunter2@127.0.0.1:1/old"}' WHERE name = 'pgtap_x';
SELECT is((SELECT options::text FROM outbox.destinations WHERE name = 'pgtap_x'), '{}',
          'outbox.destinations leaves out a stored URL that holds credentials');

-- Static headers HTTP cannot carry are refused when set, not at every message.
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_w', 'http', '{"url": "http://h/", "headers": {"Bad Name": "x"}}')$$),
          '22023', 'a static header with an invalid name: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_w', 'http', '{"url": "http://h/", "headers": {"X-A\r\nX-B": "x"}}')$$),
          '22023', 'a static header name with CR/LF: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_w', 'http', '{"url": "http://h/", "headers": {"Authorization": "Bearer hunter2\r\nX-Evil: 1"}}')$$),
          '22023', 'a static header value with CR/LF: 22023');
SELECT is(pg_temp.error_of($$SELECT outbox.create_destination('pgtap_w', 'http', '{"url": "http://h/", "headers": {"Authorization": "Bearer hunter2\nX-Evil: 1"}}')$$),
          '22023: invalid value for option "headers" of publisher "http" | Value of header "Authorization" contains the control character \x0a, which HTTP cannot carry. | ',
          'the error names the header without quoting its value');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_w', 'http', '{"url": "http://h/", "headers": {"host": "evil"}}')$$),
          '22023', 'a static Host header: 22023');
SELECT is(pg_temp.error_of($$SELECT outbox.create_destination('pgtap_w', 'http', '{"url": "http://h/", "headers": {"Content-Length": "1"}}')$$),
          '22023: invalid value for option "headers" of publisher "http" | Header "Content-Length" cannot be sent: the http publisher sets it itself. | ',
          'a static Content-Length header: 22023, saying why');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_w', 'http', '{"url": "http://h/", "headers": {"Transfer-Encoding": "chunked"}}')$$),
          '22023', 'a static Transfer-Encoding header: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_w', 'http', '{"url": "http://h/", "headers": {"Outbox-Id": "x"}}')$$),
          '22023', 'a static Outbox-Id header (the publisher sets it): 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.alter_destination('pgtap_hooks', '{"headers": {"Connection": "close"}}')$$),
          '22023', 'alter_destination refuses them too: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.create_destination('pgtap_w', 'http', '{"url": "http://h/", "headers": {"Authorization": "Bearer t", "X-Empty": "", "X-Tab": "a\tb"}}')$$),
          'ok', 'headers HTTP carries are accepted (an empty value, a tab)');

-- set_destination_secret(name, option, value): one secret option, its value
-- bound or read by the server, never in statement text.
SELECT is(pg_temp.outcome($$SELECT outbox.set_destination_secret('pgtap_hooks', 'signing_secret', 'whsec_bmV3LXNlY3JldA==')$$),
          'ok', 'set_destination_secret sets a secret option');
SELECT is((SELECT options ->> 'signing_secret' FROM outbox.destination WHERE name = 'pgtap_hooks'), 'whsec_bmV3LXNlY3JldA==',
          'and stores it as a string');
SELECT is(pg_temp.outcome($$SELECT outbox.set_destination_secret('pgtap_hooks', 'headers', '{"Authorization": "Bearer b"}')$$),
          'ok', 'an object option takes the object''s JSON text');
SELECT is((SELECT options -> 'headers' FROM outbox.destination WHERE name = 'pgtap_hooks'), '{"Authorization": "Bearer b"}'::jsonb,
          'and stores the object');
SELECT is(pg_temp.outcome($$SELECT outbox.set_destination_secret('pgtap_hooks', 'signing_secret', NULL)$$),
          'ok', 'a NULL value');
SELECT is((SELECT options ? 'signing_secret' FROM outbox.destination WHERE name = 'pgtap_hooks'), false,
          'removes the option');
SELECT is(pg_temp.outcome($$SELECT outbox.set_destination_secret('pgtap_hooks', 'url', 'http://h/')$$),
          '22023', 'an option that is not secret: 22023');
SELECT is(pg_temp.error_of($$SELECT outbox.set_destination_secret('pgtap_hooks', 'timeout', '1s')$$),
          '22023: publisher "http" has no secret option "timeout" | The secret options of publisher "http" are: signing_secret, headers. | Set other options with outbox.alter_destination().',
          'the error names the secret options');
SELECT is(pg_temp.outcome($$SELECT outbox.set_destination_secret('pgtap_hooks', 'bogus', 'x')$$),
          '22023', 'an unknown option: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.set_destination_secret('pgtap_relay', 'password', 'x')$$),
          '22023', 'an external destination has no secret options: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.set_destination_secret('pgtap_nope', 'signing_secret', 'x')$$),
          '42704', 'an unknown destination: 42704');
SELECT is(pg_temp.outcome($$SELECT outbox.set_destination_secret(NULL, 'signing_secret', 'x')$$),
          '22004', 'a NULL name: 22004');
SELECT is(pg_temp.error_of($$SELECT outbox.set_destination_secret('pgtap_hooks', 'headers', '{"Authorization": hunter2}')$$),
          '22023: invalid value for option "headers" of publisher "http" | The value must be the JSON text of an object of strings. | ',
          'headers that are not JSON: 22023, without quoting them');
SELECT is(pg_temp.outcome($$SELECT outbox.set_destination_secret('pgtap_hooks', 'headers', '{"a": "\u0000"}')$$),
          '22023', 'nor a NUL escape that jsonb would quote in its error: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.set_destination_secret('pgtap_hooks', 'headers', '{"Host": "h"}')$$),
          '22023', 'static headers set this way are checked too: 22023');
SELECT is((SELECT options -> 'headers' FROM outbox.destination WHERE name = 'pgtap_hooks'), '{"Authorization": "Bearer b"}'::jsonb,
          'the failed calls changed nothing');

-- ================================================================ pause, resume, state

SELECT is(pg_temp.outcome($$SELECT outbox.pause_destination('pgtap_hooks')$$), 'ok', 'pause_destination');
SELECT is((SELECT paused::text || ' ' || state FROM outbox.destinations WHERE name = 'pgtap_hooks'), 'true paused',
          'a paused destination: paused, state paused');
SELECT is(pg_temp.outcome($$SELECT outbox.pause_destination('pgtap_hooks')$$), 'ok', 'pausing twice is no error');
SELECT is(pg_temp.outcome($$SELECT outbox.resume_destination('pgtap_hooks')$$), 'ok', 'resume_destination');
SELECT is((SELECT paused::text || ' ' || state FROM outbox.destinations WHERE name = 'pgtap_hooks'), 'false ok',
          'resumed: state ok');
UPDATE outbox.destination SET failing_since = now() - interval '1 min', last_error = 'HTTP 503: down',
    last_error_at = now() WHERE name = 'pgtap_hooks';
SELECT is((SELECT state || ' ' || last_error FROM outbox.destinations WHERE name = 'pgtap_hooks'), 'failing HTTP 503: down',
          'a destination whose every attempt fails: state failing, with the last error');
UPDATE outbox.destination SET disabled_at = now(), disabled_reason = 'HTTP 410: gone', paused = true
    WHERE name = 'pgtap_hooks';
SELECT is((SELECT state || ' ' || disabled_reason FROM outbox.destinations WHERE name = 'pgtap_hooks'), 'disabled HTTP 410: gone',
          'a disabled destination: state disabled (over paused), with the reason');
SELECT is(pg_temp.outcome($$SELECT outbox.resume_destination('pgtap_hooks')$$), 'ok', 'resume a disabled destination');
SELECT results_eq(
    $$SELECT state, paused, disabled_at IS NULL, disabled_reason, failing_since IS NULL
      FROM outbox.destinations WHERE name = 'pgtap_hooks'$$,
    $$VALUES ('ok'::text, false, true, NULL::text, true)$$,
    'resume_destination brings it back: not paused, not disabled, no longer failing');
SELECT is(pg_temp.outcome($$SELECT outbox.pause_destination('pgtap_nope')$$), '42704', 'pause an unknown destination: 42704');
SELECT is(pg_temp.outcome($$SELECT outbox.resume_destination('pgtap_nope')$$), '42704', 'resume an unknown destination: 42704');
SELECT is(pg_temp.outcome($$SELECT outbox.pause_destination(NULL)$$), '22004', 'pause NULL: 22004');
SELECT is(pg_temp.outcome($$SELECT outbox.resume_destination(NULL)$$), '22004', 'resume NULL: 22004');

-- ================================================================ the deliveries view

SELECT results_eq(
    $$SELECT destination, status, retries, last_error, processed_at
      FROM outbox.deliveries WHERE message_id = (SELECT id FROM outbox.messages WHERE topic = 'orders.created')
      ORDER BY destination$$,
    $$VALUES ('pgtap_hooks'::text, 'pending'::outbox.message_status, 0, NULL::text, NULL::timestamptz),
             ('pgtap_notify', 'pending', 0, NULL, NULL)$$,
    'outbox.deliveries: one row per destination a message is routed to, pending');
SELECT results_eq(
    $$SELECT destination, status FROM outbox.deliveries
      WHERE message_id = (SELECT id FROM outbox.messages WHERE topic = 'invoices.sent')$$,
    $$VALUES ('default'::text, 'pending'::outbox.message_status)$$,
    'a message of the default destination shows as destination "default"');

-- ================================================================ permissions

CREATE ROLE pgtap_dst_user NOLOGIN;
CREATE ROLE pgtap_dst_operator NOLOGIN;
CREATE ROLE pgtap_dst_monitor NOLOGIN;

CREATE FUNCTION pg_temp.as_role(r text, sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    before text := pg_temp.snapshot();
    outcome text := 'ok';
BEGIN
    EXECUTE format('SET LOCAL ROLE %I', r);
    BEGIN
        EXECUTE sql;
    EXCEPTION WHEN OTHERS THEN
        outcome := SQLSTATE;
    END;
    RESET ROLE;
    IF outcome <> 'ok' AND pg_temp.snapshot() <> before THEN
        RETURN outcome || ' but something changed';
    END IF;
    RETURN outcome;
END
$$;

CREATE FUNCTION pg_temp.error_as(r text, sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    outcome text := 'ok';
BEGIN
    EXECUTE format('SET LOCAL ROLE %I', r);
    BEGIN
        EXECUTE sql;
    EXCEPTION WHEN OTHERS THEN
        outcome := SQLSTATE || ': ' || SQLERRM;
    END;
    RESET ROLE;
    RETURN outcome;
END
$$;

GRANT USAGE ON SCHEMA outbox TO pgtap_dst_user, pgtap_dst_operator, pgtap_dst_monitor;
SELECT is(pg_temp.as_role('pgtap_dst_user', $$SELECT outbox.create_destination('pgtap_x', 'notify')$$), '42501',
          'a role without EXECUTE cannot create a destination: 42501');
GRANT EXECUTE ON FUNCTION outbox.create_destination(text, text, jsonb), outbox.alter_destination(text, jsonb),
    outbox.drop_destination(text, boolean) TO pgtap_dst_user;
SELECT is(pg_temp.as_role('pgtap_dst_user', $$SELECT outbox.create_destination('pgtap_x', 'notify')$$), '42501',
          'nor a non-superuser with EXECUTE: 42501');
SELECT is(pg_temp.error_as('pgtap_dst_user', $$SELECT outbox.create_destination('pgtap_x', 'notify')$$),
          '42501: permission denied to create an outbox destination', 'the error says what was denied');
SELECT is(pg_temp.as_role('pgtap_dst_user', $$SELECT outbox.alter_destination('pgtap_hooks', '{"timeout": 100}')$$), '42501',
          'a non-superuser with EXECUTE cannot alter a destination: 42501');
SELECT is(pg_temp.as_role('pgtap_dst_user', $$SELECT outbox.drop_destination('pgtap_plain')$$), '42501',
          'nor drop one: 42501');
SELECT is(pg_temp.as_role('pgtap_dst_user', $$SELECT outbox.set_destination_secret('pgtap_hooks', 'signing_secret', 'x')$$), '42501',
          'a role without EXECUTE cannot set a secret: 42501');
GRANT EXECUTE ON FUNCTION outbox.set_destination_secret(text, text, text) TO pgtap_dst_user;
SELECT is(pg_temp.error_as('pgtap_dst_user', $$SELECT outbox.set_destination_secret('pgtap_hooks', 'signing_secret', 'x')$$),
          '42501: permission denied to set a secret of an outbox destination', 'nor a non-superuser with EXECUTE: 42501');
SELECT is(pg_temp.as_role('pgtap_dst_user', $$SELECT outbox.pause_destination('pgtap_hooks')$$), '42501',
          'a role without EXECUTE on pause_destination cannot pause: 42501');

GRANT EXECUTE ON FUNCTION outbox.pause_destination(text), outbox.resume_destination(text),
    outbox.subscribe(text, text), outbox.unsubscribe(text, text) TO pgtap_dst_operator;
SELECT is(has_table_privilege('pgtap_dst_operator', 'outbox.destination', 'SELECT, UPDATE'), false,
          'the operator role has no privilege on the destination table');
SELECT is(pg_temp.as_role('pgtap_dst_operator', $$SELECT outbox.pause_destination('pgtap_hooks')$$), 'ok',
          'a role with EXECUTE on pause_destination pauses without table privileges');
SELECT is((SELECT paused FROM outbox.destination WHERE name = 'pgtap_hooks'), true, 'the destination is paused');
SELECT is(pg_temp.as_role('pgtap_dst_operator', $$SELECT outbox.resume_destination('pgtap_hooks')$$), 'ok',
          'and resumes it');
SELECT is((SELECT paused FROM outbox.destination WHERE name = 'pgtap_hooks'), false, 'the destination is resumed');
SELECT is(pg_temp.as_role('pgtap_dst_operator', $$SELECT outbox.subscribe('pgtap_hooks', 'operator.*')$$), 'ok',
          'a role with EXECUTE on subscribe subscribes without table privileges');
SELECT is(pg_temp.as_role('pgtap_dst_operator', $$SELECT outbox.unsubscribe('pgtap_hooks', 'operator.*')$$), 'ok',
          'and unsubscribes');
SELECT is(pg_temp.as_role('pgtap_dst_operator', $$SELECT outbox.pause_destination('pgtap_nope')$$), '42704',
          'it gets the same errors (unknown destination: 42704)');
SELECT is(pg_temp.as_role('pgtap_dst_operator', $$SELECT * FROM outbox.destination$$), '42501',
          'but cannot read the destination table (options hold secrets)');

-- A monitoring role with the grants README documents: SELECT on the views,
-- EXECUTE on public_options (outbox.destinations calls it).
GRANT SELECT ON outbox.destinations, outbox.deliveries TO pgtap_dst_monitor;
GRANT EXECUTE ON FUNCTION outbox.public_options(text, jsonb) TO pgtap_dst_monitor;
SELECT is(pg_temp.as_role('pgtap_dst_monitor', $$SELECT * FROM outbox.destinations$$), 'ok',
          'a monitoring role reads outbox.destinations');
SELECT is(pg_temp.as_role('pgtap_dst_monitor', $$SELECT * FROM outbox.deliveries$$), 'ok',
          'and outbox.deliveries');
CREATE TEMP TABLE seen_by_monitor (options text) ON COMMIT DROP;
GRANT INSERT ON seen_by_monitor TO pgtap_dst_monitor;
SELECT is(pg_temp.as_role('pgtap_dst_monitor', $$INSERT INTO seen_by_monitor SELECT options::text FROM outbox.destinations$$), 'ok',
          'what it reads of the options');
SELECT is((SELECT count(*) FROM seen_by_monitor WHERE options LIKE '%pgtap-token%' OR options LIKE '%whsec%'), 0::bigint,
          'holds no secret');
SELECT is(pg_temp.as_role('pgtap_dst_monitor', $$SELECT * FROM outbox.destination$$), '42501',
          'it cannot read the table with the secrets');

-- ================================================================ the store API of an external destination

-- The setup's messages: committed, routed to pgtap_ext (st.>) and for both1
-- to pgtap_ext2 as well.
SELECT results_eq(
    $$SELECT d.name, m.status, pg_temp.routed(m.topic)
      FROM dst_msg d JOIN outbox.messages m USING (id) WHERE d.name IN ('a1', 'both1') ORDER BY d.name$$,
    $$VALUES ('a1'::text, 'pending'::outbox.message_status, ARRAY['pgtap_ext']),
             ('both1', 'pending', ARRAY['pgtap_ext', 'pgtap_ext2'])$$,
    'the setup''s messages are pending and routed');
SELECT is((SELECT count(*) FROM outbox.fetch_pending(100) f WHERE f.topic LIKE 'st.%'), 0::bigint,
          'fetch_pending(n) (the default destination) never hands out routed messages');
SELECT is(pg_temp.fetched(1, 'pgtap_ext'), ARRAY['a1'], 'fetch_pending(1, destination): the oldest message');
SELECT is(pg_temp.delivery('a1', 'pgtap_ext'), 'processing/0', 'its delivery is processing');
SELECT is((SELECT claimed_by FROM outbox.delivery WHERE message_id = pg_temp.id('a1')), pg_backend_pid(),
          'claimed by this session');
SELECT is((SELECT status FROM outbox.messages WHERE id = pg_temp.id('a1')), 'pending',
          'the message itself stays pending while a delivery is unfinished');
SELECT is(pg_temp.fetched(10, 'pgtap_ext'), ARRAY['b1', 'n1', 'b2', 'both1', 'c1', 'p1'],
          'the next fetch: per key, only runs of the oldest unfinished (k1 waits behind a1)');
SELECT is(pg_temp.delivery('a2', 'pgtap_ext'), 'pending/0', 'a2 waits, pending, behind a1');
SELECT is(pg_temp.fetched(10, 'pgtap_ext'), '{}', 'nothing more while a1 is unfinished');
SELECT is(outbox.mark_failed(pg_temp.id('a1'), 'boom 1', 'pgtap_ext'), 'pending',
          'mark_failed(id, error, destination): pending again after one failed attempt');
SELECT is(pg_temp.delivery('a1', 'pgtap_ext'), 'pending/1/boom 1', 'with its retries and last_error');
SELECT cmp_ok((SELECT next_attempt_at FROM outbox.deliveries WHERE message_id = pg_temp.id('a1') AND destination = 'pgtap_ext'),
              '>', clock_timestamp(), 'and its next attempt in the future (backoff)');
SELECT is(pg_temp.fetched(10, 'pgtap_ext'), '{}', 'while it waits, neither it nor a later message of its key is handed out');
UPDATE outbox.delivery SET next_attempt_at = clock_timestamp() - interval '1 s' WHERE message_id = pg_temp.id('a1');
SELECT is(pg_temp.fetched(10, 'pgtap_ext'), ARRAY['a1', 'a2', 'a3'],
          'once due, a1 comes again, with a2 and a3 behind it, in order');
SELECT is((SELECT retries FROM outbox.fetch_pending(1, 'pgtap_ext2')), 0, '(the other destination hands out both1, retries 0)');
SELECT is(outbox.mark_processed_for(pg_temp.ids('a1', 'a2', 'a3', 'b1', 'n1', 'b2'), 'pgtap_ext'), 6,
          'mark_processed_for(ids, destination) returns how many deliveries it marked');
SELECT is(outbox.mark_processed_for(pg_temp.ids('a1'), 'pgtap_ext'), 0, 'marking again changes nothing');
SELECT is((SELECT string_agg(d.name || ':' || m.status, ' ' ORDER BY d.name) FROM dst_msg d JOIN outbox.messages m USING (id)
           WHERE d.name IN ('a1', 'a2', 'a3', 'b1', 'b2', 'n1')),
          'a1:processed a2:processed a3:processed b1:processed b2:processed n1:processed',
          'messages whose every delivery is processed are processed');
SELECT is((SELECT count(*) FROM dst_msg d JOIN outbox.messages m USING (id)
           WHERE d.name IN ('a1', 'a2', 'a3', 'b1', 'b2', 'n1') AND m.processed_at IS NULL), 0::bigint,
          'with processed_at set');
SELECT is(outbox.mark_processed_for(pg_temp.ids('both1'), 'pgtap_ext'), 1, 'both1 delivered to pgtap_ext');
SELECT is((SELECT status FROM outbox.messages WHERE id = pg_temp.id('both1')), 'pending',
          'a message stays pending while another destination has not delivered it');
SELECT results_eq(
    $$SELECT destination, status FROM outbox.deliveries WHERE message_id = pg_temp.id('both1') ORDER BY destination$$,
    $$VALUES ('pgtap_ext'::text, 'processed'::outbox.message_status), ('pgtap_ext2', 'processing')$$,
    'each destination has its own delivery status');
SELECT is(outbox.mark_failed(pg_temp.id('both1'), 'e1', 'pgtap_ext2'), 'pending', 'failed attempt 1 of 5');
SELECT is(outbox.mark_failed(pg_temp.id('both1'), 'e2', 'pgtap_ext2'), 'pending', 'failed attempt 2 of 5');
SELECT is(outbox.mark_failed(pg_temp.id('both1'), 'e3', 'pgtap_ext2'), 'pending', 'failed attempt 3 of 5');
SELECT is(outbox.mark_failed(pg_temp.id('both1'), 'e4', 'pgtap_ext2'), 'pending', 'failed attempt 4 of 5');
SELECT is(outbox.mark_failed(pg_temp.id('both1'), 'e5', 'pgtap_ext2'), 'failed',
          'after outbox.max_retries failed attempts the delivery is failed');
SELECT is((SELECT status FROM outbox.messages WHERE id = pg_temp.id('both1')), 'failed',
          'a message is failed once a delivery failed and none is unfinished');
SELECT is(outbox.mark_failed(pg_temp.id('both1'), 'e6', 'pgtap_ext2'), NULL,
          'mark_failed of a finished delivery: NULL');
SELECT is(outbox.retry_failed(ARRAY[pg_temp.id('both1')], 'pgtap_ext2'), 1,
          'retry_failed(ids, destination) requeues the failed delivery');
SELECT is(pg_temp.delivery('both1', 'pgtap_ext2') || ' ' || (SELECT status FROM outbox.messages WHERE id = pg_temp.id('both1')),
          'pending/0/e5 pending', 'the delivery is pending with retries reset, and so is its message');
SELECT is(pg_temp.fetched(1, 'pgtap_ext2'), ARRAY['both1'], 'and handed out again');
SELECT is(outbox.mark_processed_for(pg_temp.ids('both1'), 'pgtap_ext2'), 1, 'delivered');
SELECT is((SELECT status FROM outbox.messages WHERE id = pg_temp.id('both1')), 'processed',
          'now every destination delivered it: processed');

-- retry_failed() without a destination (the 0.2.0 call) requeues failed deliveries too.
SELECT is((SELECT string_agg(outbox.mark_failed(pg_temp.id('c1'), 'c' || i, 'pgtap_ext')::text, ',' ORDER BY i)
           FROM generate_series(1, 5) i), 'pending,pending,pending,pending,failed', 'c1 fails for good');
SELECT is((SELECT status FROM outbox.messages WHERE id = pg_temp.id('c1')), 'failed', 'c1 is failed');
SELECT is(outbox.retry_failed(ARRAY[pg_temp.id('c1')]), 1, 'retry_failed(ids) requeues its failed delivery');
SELECT is(pg_temp.delivery('c1', 'pgtap_ext') || ' ' || (SELECT status FROM outbox.messages WHERE id = pg_temp.id('c1')),
          'pending/0/c5 pending', 'delivery and message are pending again');
SELECT is(pg_temp.fetched(10, 'pgtap_ext'), ARRAY['c1'], 'and c1 is handed out again');

-- Bad calls.
SELECT is(pg_temp.outcome($$SELECT * FROM outbox.fetch_pending(5, 'pgtap_nope')$$), '42704', 'fetch_pending, unknown destination: 42704');
SELECT is(pg_temp.outcome($$SELECT * FROM outbox.fetch_pending(5, 'pgtap_notify')$$), '42809',
          'fetch_pending for a destination with a worker of its own: 42809');
SELECT is(pg_temp.outcome($$SELECT * FROM outbox.fetch_pending(NULL, 'pgtap_ext')$$), '22004', 'fetch_pending(NULL, ...): 22004');
SELECT is(pg_temp.outcome($$SELECT * FROM outbox.fetch_pending(-1, 'pgtap_ext')$$), '22023', 'fetch_pending(-1, ...): 22023');
SELECT is(pg_temp.fetched(0, 'pgtap_ext'), '{}', 'fetch_pending(0, ...) hands out nothing');
SELECT is(pg_temp.outcome($$SELECT outbox.mark_processed_for(ARRAY[gen_random_uuid()], 'pgtap_nope')$$), '42704',
          'mark_processed_for, unknown destination: 42704');
SELECT is(pg_temp.outcome($$SELECT outbox.mark_processed_for(NULL, 'pgtap_ext')$$), '22004', 'mark_processed_for(NULL, ...): 22004');
SELECT is(pg_temp.outcome($$SELECT outbox.mark_processed_for(ARRAY[NULL]::uuid[], 'pgtap_ext')$$), '22004',
          'mark_processed_for with a NULL id: 22004');
SELECT is(outbox.mark_processed_for(ARRAY[gen_random_uuid()], 'pgtap_ext'), 0, 'mark_processed_for of an unknown id: 0');
SELECT is(outbox.mark_failed(gen_random_uuid(), 'x', 'pgtap_ext'), NULL, 'mark_failed of an unknown id: NULL');
SELECT is(pg_temp.outcome($$SELECT outbox.mark_failed(gen_random_uuid(), 'x', 'pgtap_nope')$$), '42704',
          'mark_failed, unknown destination: 42704');
SELECT is(pg_temp.outcome($$SELECT outbox.mark_failed(NULL, 'x', 'pgtap_ext')$$), '22004', 'mark_failed(NULL, ...): 22004');
SELECT is(pg_temp.outcome($$SELECT outbox.retry_failed(NULL, 'pgtap_nope')$$), '42704', 'retry_failed, unknown destination: 42704');
SELECT is(pg_temp.outcome($$SELECT outbox.retry_failed(ARRAY[NULL]::uuid[], 'pgtap_ext')$$), '22004',
          'retry_failed with a NULL id: 22004');

-- A paused external destination hands out nothing; resumed, it continues.
SELECT is(pg_temp.outcome($$SELECT outbox.pause_destination('pgtap_ext2')$$), 'ok', 'pause an external destination');
SELECT is(pg_temp.fetched(10, 'pgtap_ext2'), '{}', 'a paused external destination hands out nothing');
SELECT is(pg_temp.delivery('p1', 'pgtap_ext2'), 'pending/0', 'its messages stay pending');
SELECT is(pg_temp.outcome($$SELECT outbox.resume_destination('pgtap_ext2')$$), 'ok', 'resume it');
SELECT is(pg_temp.fetched(10, 'pgtap_ext2'), ARRAY['p1'], 'resumed, it hands out what waited');

-- A message saved in a transaction that is still open (this one) is not
-- handed out: it is above the id horizon.
SELECT is(pg_temp.outcome($$SELECT outbox.save('st.both.y', 'open1'::text)$$), 'ok', 'save a routed message in this transaction');
SELECT is(pg_temp.fetched(10, 'pgtap_ext2'), '{}',
          'a routed message saved in a transaction still open is not handed out (the id horizon holds it back)');
SELECT is((SELECT status FROM outbox.messages WHERE payload = convert_to('open1', 'UTF8')), 'pending',
          '(it is there, pending, for this transaction)');

-- ================================================================ drop_destination

SELECT is(pg_temp.outcome($$SELECT outbox.drop_destination('pgtap_ext2')$$), '55006',
          'drop_destination refuses while deliveries are pending: 55006');
SELECT throws_ok($$SELECT outbox.drop_destination('pgtap_ext2')$$, '55006',
                 'outbox destination "pgtap_ext2" has deliveries pending', 'the error says why');
SELECT is(pg_temp.outcome($$SELECT outbox.drop_destination('pgtap_ext2', force => true)$$), 'ok',
          'drop_destination(force => true) drops it anyway');
SELECT is((SELECT count(*) FROM outbox.destination WHERE name = 'pgtap_ext2'), 0::bigint, 'the destination is gone');
SELECT is((SELECT count(*) FROM outbox.subscription WHERE pattern = 'st.both.*'), 0::bigint, 'with its subscriptions');
SELECT is((SELECT count(*) FROM outbox.delivery x WHERE NOT EXISTS (SELECT 1 FROM outbox.destination d WHERE d.id = x.destination_id)),
          0::bigint, 'and its deliveries');
SELECT is((SELECT count(*) FROM outbox.destination_progress p WHERE NOT EXISTS (SELECT 1 FROM outbox.destination d WHERE d.id = p.destination_id)),
          0::bigint, 'and its positions');
SELECT is(pg_temp.outcome($$SELECT outbox.drop_destination('pgtap_plain')$$), 'ok',
          'a destination with nothing pending drops without force');
SELECT is(pg_temp.outcome($$SELECT outbox.drop_destination('pgtap_notify')$$), '55006',
          'one with routed messages not yet read (no delivery row): 55006');
SELECT is(pg_temp.outcome($$SELECT outbox.drop_destination('pgtap_nope')$$), '42704', 'an unknown destination: 42704');
SELECT is(pg_temp.outcome($$SELECT outbox.drop_destination(NULL)$$), '22004', 'a NULL name: 22004');
SELECT is(pg_temp.outcome($$SELECT outbox.save('st.both.z', 'x'::text)$$), 'ok', 'save to a topic only the dropped one had');
SELECT is(pg_temp.routed('st.both.z'), ARRAY['pgtap_ext'], 'it is no longer routed there');

SELECT * FROM finish();
ROLLBACK;

-- Cleanup: the setup's destinations and messages.
DO $$
BEGIN
    PERFORM outbox.drop_destination(name, force => true)
    FROM outbox.destination WHERE name IN ('pgtap_ext', 'pgtap_ext2');
    DELETE FROM outbox.messages WHERE id IN (SELECT id FROM dst_msg);
END $$;
DROP TABLE dst_msg;
