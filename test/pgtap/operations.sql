-- operations.sql: outbox.replay(), outbox.retry_failed() with filters, the
-- view outbox.dead_letters, outbox.worker_status(), and what a monitoring
-- role needs for them.  (Their effect on the workers is in
-- test/t/150_operations.pl; this database has no worker.)
BEGIN;
SELECT plan(65);

-- Start from an empty outbox (rolled back at the end).
DELETE FROM outbox.messages;

-- Run sql as role r; returns 'ok', or the SQLSTATE it failed with.
CREATE FUNCTION pg_temp.as_role(r text, sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    outcome text := 'ok';
BEGIN
    EXECUTE format('SET LOCAL ROLE %I', r);
    BEGIN
        EXECUTE sql;
    EXCEPTION WHEN OTHERS THEN
        outcome := SQLSTATE;
    END;
    RESET ROLE;
    RETURN outcome;
END
$$;

-- The function a call resolves to (through a view that is never read).
CREATE FUNCTION pg_temp.resolves_to(call text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    result text;
BEGIN
    EXECUTE format('CREATE TEMP VIEW resolved AS SELECT %s AS r', call);
    SELECT string_agg(d.refobjid::regprocedure::text, ', ') INTO result
    FROM pg_depend d JOIN pg_rewrite w ON w.oid = d.objid
    WHERE w.ev_class = 'resolved'::regclass AND d.refclassid = 'pg_proc'::regclass
    AND d.refobjid::regprocedure::text LIKE 'outbox.%';
    DROP VIEW resolved;
    RETURN result;
END
$$;

-- ================================================================ replay
-- Kept messages, by hand: processed ones of three topics, two saved in the
-- window [t0 - 1 h, t0), one before; one pending, one failed.
CREATE TEMP TABLE t0 AS SELECT now() AS t;
INSERT INTO outbox.messages (topic, key, payload, status, retries, created_at, processed_at)
VALUES ('orders.created', 'k1', '\x01', 'processed', 2, (SELECT t FROM t0) - interval '50 minutes', now()),
       ('orders.created', 'k1', '\x02', 'processed', 0, (SELECT t FROM t0) - interval '40 minutes', now()),
       ('orders.eu.created', 'k2', '\x03', 'processed', 0, (SELECT t FROM t0) - interval '30 minutes', now()),
       ('invoices.sent', '', '\x04', 'processed', 0, (SELECT t FROM t0) - interval '20 minutes', now()),
       ('orders.created', 'k1', '\x05', 'processed', 0, (SELECT t FROM t0) - interval '2 hours', now()),
       ('orders.created', 'k3', '\x06', 'pending', 0, (SELECT t FROM t0) - interval '10 minutes', NULL),
       ('orders.created', 'k4', '\x07', 'failed', 5, (SELECT t FROM t0) - interval '10 minutes', NULL);
CREATE TEMP TABLE kept AS SELECT id, payload FROM outbox.messages;

SELECT is(outbox.replay((SELECT t FROM t0) - interval '1 hour', (SELECT t FROM t0), 'orders.*'), 2::bigint,
          'replay(since, until, ''orders.*'') queues the two processed orders.created messages of the window');
SELECT results_eq(
    $$SELECT payload, status::text, retries, processed_at IS NULL FROM outbox.messages
      WHERE id IN (SELECT id FROM kept) ORDER BY payload$$,
    $$VALUES ('\x01'::bytea, 'pending'::text, 0, true), ('\x02', 'pending', 0, true),
             ('\x03', 'processed', 0, false), ('\x04', 'processed', 0, false),
             ('\x05', 'processed', 0, false), ('\x06', 'pending', 0, true), ('\x07', 'failed', 5, true)$$,
    'they are pending again, with their retries reset; others are left as they were');
SELECT is((SELECT count(*) FROM outbox.messages m JOIN kept k USING (id, payload)), 7::bigint,
          'replayed messages keep their ids');
SELECT is(outbox.replay((SELECT t FROM t0) - interval '1 hour', (SELECT t FROM t0), 'orders.*'), 0::bigint,
          'replaying them again while they are pending queues nothing');
SELECT is(outbox.replay((SELECT t FROM t0) - interval '1 hour', (SELECT t FROM t0), 'orders.>'), 1::bigint,
          '''orders.>'' also takes orders.eu.created');
SELECT is(outbox.replay('-infinity', 'infinity'), 2::bigint,
          'without a pattern every processed message kept is queued');
SELECT is(outbox.replay((SELECT t FROM t0), 'infinity'), 0::bigint,
          'until is exclusive and since inclusive: nothing was saved at or after t0');

UPDATE outbox.messages SET status = 'processed', processed_at = now() WHERE status = 'pending';
SELECT is(outbox.replay(ARRAY(SELECT id FROM kept WHERE payload IN ('\x01', '\x07'))
                        || '00000000-0000-7000-8000-000000000000'::uuid), 1::bigint,
          'replay(ids) queues those ids that are processed (not the failed one, not an unknown id)');
SELECT is((SELECT status::text FROM outbox.messages WHERE payload = '\x01'), 'pending',
          'the message replayed by id is pending');
SELECT is(outbox.replay('-infinity', 'infinity', destination => 'default'), 5::bigint,
          'replay(..., destination => ''default'') queues the default destination''s messages');

-- Errors: nothing changes.
UPDATE outbox.messages SET status = 'processed', processed_at = now() WHERE status = 'pending';
SELECT throws_ok($$SELECT outbox.replay(NULL, now())$$, '22004', NULL, 'replay needs since');
SELECT throws_ok($$SELECT outbox.replay(now(), NULL)$$, '22004', NULL, 'replay needs until');
SELECT throws_ok($$SELECT outbox.replay(now(), now() - interval '1 second')$$, '22023', NULL,
                 'since after until is refused');
SELECT throws_ok($$SELECT outbox.replay('-infinity', 'infinity', 'orders..x')$$, '22023', NULL,
                 'a bad topic pattern is refused');
SELECT throws_ok($$SELECT outbox.replay('-infinity', 'infinity', NULL, 'nowhere')$$, '42704', NULL,
                 'an unknown destination is refused');
SELECT throws_ok($$SELECT outbox.replay(NULL::uuid[])$$, '22004', NULL, 'replay(ids) needs ids');
SELECT throws_ok($$SELECT outbox.replay(ARRAY[NULL::uuid])$$, '22004', NULL, 'ids must not be null');
SELECT is((SELECT count(*) FROM outbox.messages WHERE status = 'pending'), 0::bigint,
          'the refused calls changed nothing');

-- Destinations: routed messages get a pending delivery per destination.
SELECT lives_ok($$SELECT outbox.create_destination('replay_a', 'notify', '{"channel": "replay_a"}')$$,
                'destination replay_a created');
SELECT lives_ok($$SELECT outbox.create_destination('replay_b', 'notify', '{"channel": "replay_b"}')$$,
                'destination replay_b created');
-- (Subscriptions apply to messages saved after they commit: these
-- messages get their destinations by hand.)
ALTER TABLE outbox.messages DISABLE TRIGGER route;
INSERT INTO outbox.messages (topic, key, payload, status, created_at, processed_at, destinations)
    SELECT 'shipments.sent', 'k9', '\x10', 'processed', (SELECT t FROM t0) - interval '5 minutes', now(),
           ARRAY(SELECT id FROM outbox.destination WHERE name IN ('replay_a', 'replay_b') ORDER BY id);
ALTER TABLE outbox.messages ENABLE TRIGGER route;
-- replay_a delivered it at the first attempt (no row), replay_b after a retry.
INSERT INTO outbox.delivery (destination_id, message_id, key, status, retries, processed_at)
    SELECT d.id, m.id, 'k9', 'processed', 1, now() FROM outbox.destination d, outbox.messages m
    WHERE d.name = 'replay_b' AND m.payload = '\x10';

SELECT is(outbox.replay('-infinity', 'infinity', 'shipments.*'), 1::bigint,
          'a routed message is replayed to where it went');
SELECT results_eq(
    $$SELECT d.name, x.status::text, x.retries FROM outbox.delivery x
      JOIN outbox.destination d ON d.id = x.destination_id ORDER BY d.name$$,
    $$VALUES ('replay_a'::text, 'pending'::text, 0), ('replay_b', 'pending', 0)$$,
    'each of its destinations has a pending delivery (a new one, or its finished one requeued)');
SELECT is((SELECT status::text FROM outbox.messages WHERE payload = '\x10'), 'pending',
          'the routed message is pending until its deliveries are done');
SELECT results_eq(
    $$SELECT destination, status::text FROM outbox.deliveries
      WHERE message_id = (SELECT id FROM outbox.messages WHERE payload = '\x10') ORDER BY destination$$,
    $$VALUES ('replay_a'::text, 'pending'::text), ('replay_b', 'pending')$$,
    'outbox.deliveries shows both deliveries pending');

-- A backfill: messages of the default destination replayed to a destination.
SELECT lives_ok($$SELECT outbox.create_destination('backfill', 'notify', '{"channel": "backfill"}')$$,
                'destination backfill created after the messages were saved');
SELECT is(outbox.replay('-infinity', 'infinity', 'orders.>', 'backfill'), 5::bigint,
          'replay(..., destination => ''backfill'') queues the matching processed messages for it');
SELECT results_eq(
    $$SELECT m.payload, x.status::text FROM outbox.delivery x JOIN outbox.messages m ON m.id = x.message_id
      WHERE x.destination_id = (SELECT id FROM outbox.destination WHERE name = 'backfill') ORDER BY m.payload$$,
    $$VALUES ('\x01'::bytea, 'pending'::text), ('\x02', 'pending'), ('\x03', 'pending'), ('\x05', 'pending'),
             ('\x06', 'pending')$$,
    'one pending delivery per message, in backfill');
SELECT is((SELECT count(*) FROM outbox.messages WHERE topic LIKE 'orders.%' AND status = 'processed'), 5::bigint,
          'messages of the default destination stay processed there (not published to it again)');
SELECT is(outbox.replay('-infinity', 'infinity', 'orders.>', 'backfill'), 0::bigint,
          'a delivery still pending is not queued twice');

-- ================================================================ retry_failed with filters
DELETE FROM outbox.delivery;
DELETE FROM outbox.messages;
INSERT INTO outbox.messages (topic, key, payload, status, retries, last_error, created_at, processed_at)
VALUES ('orders.created', '', '\x21', 'failed', 5, 'HTTP 503: busy', now() - interval '3 hours', now() - interval '2 hours'),
       ('orders.created', '', '\x22', 'failed', 5, 'HTTP 503: busy', now() - interval '3 hours', now() - interval '30 minutes'),
       ('orders.paid', '', '\x23', 'failed', 5, 'timeout', now() - interval '3 hours', now() - interval '30 minutes'),
       ('invoices.sent', '', '\x24', 'failed', 5, 'HTTP 503: busy', now() - interval '3 hours', now() - interval '30 minutes'),
       ('orders.created', '', '\x25', 'failed', 5, 'HTTP 404', now() - interval '3 hours', NULL);
ALTER TABLE outbox.messages DISABLE TRIGGER route;
INSERT INTO outbox.messages (topic, payload, status, destinations)
    SELECT 'shipments.sent', '\x26', 'failed', ARRAY[d.id] FROM outbox.destination d WHERE d.name = 'replay_a';
ALTER TABLE outbox.messages ENABLE TRIGGER route;
INSERT INTO outbox.delivery (destination_id, message_id, status, retries, last_error, processed_at)
    SELECT d.id, m.id, 'failed', 5, 'HTTP 503: busy', now() - interval '30 minutes'
    FROM outbox.destination d, outbox.messages m WHERE d.name = 'replay_a' AND m.payload = '\x26';

SELECT results_eq(
    $$SELECT destination, error, failed, topics FROM outbox.dead_letters ORDER BY destination, error$$,
    $$VALUES ('default'::text, 'HTTP 404'::text, 1::bigint, ARRAY['orders.created']),
             ('default', 'HTTP 503: busy', 3, ARRAY['invoices.sent', 'orders.created']),
             ('default', 'timeout', 1, ARRAY['orders.paid']),
             ('replay_a', 'HTTP 503: busy', 1, ARRAY['shipments.sent'])$$,
    'outbox.dead_letters groups failed messages and deliveries by destination and error');
SELECT results_eq(
    $$SELECT first_failed_at = now() - interval '2 hours', last_failed_at = now() - interval '30 minutes',
             oldest_message_id = (SELECT min(id::text)::uuid FROM outbox.messages WHERE payload IN ('\x21', '\x22', '\x24'))
      FROM outbox.dead_letters WHERE destination = 'default' AND error = 'HTTP 503: busy'$$,
    $$VALUES (true, true, true)$$,
    'with when the first and last of them failed, and the oldest message');

SELECT is(outbox.retry_failed(NULL, NULL, 'orders.*', error_like => 'HTTP 503%',
                              failed_after => now() - interval '1 hour'), 1,
          'topic, error and failed_after together pick one message');
SELECT is((SELECT status::text FROM outbox.messages WHERE payload = '\x22'), 'pending', 'that one');
SELECT is((SELECT retries FROM outbox.messages WHERE payload = '\x22'), 0, 'with its retries reset');
SELECT is(outbox.retry_failed(NULL, NULL, NULL, failed_before => now() - interval '1 hour'), 2,
          'failed_before: the message failed 2 hours ago, and the one without a failure time (its created_at counts)');
SELECT is(outbox.retry_failed(NULL, 'default', NULL, error_like => 'HTTP 503%'), 1,
          'destination ''default'': only the default destination''s messages');
SELECT is((SELECT status::text FROM outbox.messages WHERE payload = '\x26'), 'failed',
          'the failed delivery of replay_a is left');
SELECT is(outbox.retry_failed(NULL, 'replay_a', NULL), 1, 'destination replay_a: its failed delivery');
SELECT results_eq(
    $$SELECT x.status::text, x.retries, m.status::text FROM outbox.delivery x
      JOIN outbox.messages m ON m.id = x.message_id WHERE m.payload = '\x26'$$,
    $$VALUES ('pending'::text, 0, 'pending'::text)$$,
    'the delivery and its message are pending again');
SELECT is(outbox.retry_failed(ARRAY(SELECT id FROM outbox.messages WHERE payload = '\x23'), NULL, NULL), 1,
          'ids filter too');
SELECT is((SELECT count(*) FROM outbox.messages WHERE status = 'failed'), 0::bigint, 'nothing is left failed');
SELECT is(outbox.retry_failed(NULL, NULL, NULL), 0, 'with nothing failed it returns 0');
SELECT throws_ok($$SELECT outbox.retry_failed(NULL, NULL, 'a..b')$$, '22023', NULL, 'a bad pattern is refused');
SELECT throws_ok($$SELECT outbox.retry_failed(NULL, 'nowhere', NULL)$$, '42704', NULL,
                 'an unknown destination is refused');
SELECT throws_ok($$SELECT outbox.retry_failed(ARRAY[NULL::uuid], NULL, NULL)$$, '22004', NULL,
                 'null ids are refused');

-- A message that fails for good records when, in processed_at.
INSERT INTO outbox.messages (topic, payload) VALUES ('failing.one', '\x30');
SELECT is((SELECT string_agg(outbox.mark_failed(id, 'boom')::text, ',') FROM outbox.messages, generate_series(1, 5)
           WHERE payload = '\x30'), 'pending,pending,pending,pending,failed',
          'five failed attempts (outbox.max_retries) fail the message');
SELECT ok((SELECT processed_at BETWEEN now() AND clock_timestamp() FROM outbox.messages WHERE payload = '\x30'),
          'processed_at is when it failed');
SELECT is(outbox.retry_failed(NULL, NULL, 'failing.*', failed_after => now()), 1,
          'so failed_after finds it');
SELECT is((SELECT processed_at FROM outbox.messages WHERE payload = '\x30'), NULL,
          'requeued, it has no processed_at');

-- The older signatures keep resolving to their functions (and grants).
SELECT is(pg_temp.resolves_to('outbox.retry_failed()'), 'outbox.retry_failed(uuid[])',
          'retry_failed() is still retry_failed(ids)');
SELECT is(pg_temp.resolves_to('outbox.retry_failed(NULL)'), 'outbox.retry_failed(uuid[])',
          'retry_failed(NULL) is still retry_failed(ids)');
SELECT is(pg_temp.resolves_to($$outbox.retry_failed(NULL, 'x')$$), 'outbox.retry_failed(uuid[],text)',
          'retry_failed(NULL, destination) is still retry_failed(ids, destination)');
SELECT is(pg_temp.resolves_to($$outbox.retry_failed(NULL, NULL, 'x')$$),
          'outbox.retry_failed(uuid[],text,text,timestamp with time zone,timestamp with time zone,text)',
          'three arguments take the filters');

-- ================================================================ worker_status
SELECT has_function('outbox', 'worker_status', ARRAY[]::text[], 'outbox.worker_status() exists');
SELECT results_eq(
    $$SELECT database, destination FROM outbox.worker_status()$$,
    $$VALUES ('postgres'::text, 'default'::text)$$,
    'one row per relayed database (here postgres, which has no extension, so no destination)');
SELECT ok((SELECT state IN ('idle', 'publishing', 'backoff', 'paused', 'stopped', 'failing')
                  AND (state = 'stopped') = (pid IS NULL)
           FROM outbox.worker_status()),
          'its state is one of the documented ones, stopped exactly when no worker runs');
SELECT ok((SELECT messages_published >= 0 AND attempts_failed >= 0 AND batches >= 0
           FROM outbox.worker_status()), 'its totals are counts');

-- ================================================================ privileges
CREATE ROLE outbox_pgtap_watcher NOLOGIN;
CREATE ROLE outbox_pgtap_stranger NOLOGIN;
GRANT USAGE ON SCHEMA outbox TO outbox_pgtap_watcher, outbox_pgtap_stranger;
-- The grants README documents for a monitoring role.
GRANT SELECT ON outbox.stats, outbox.destination_stats TO outbox_pgtap_watcher;
GRANT EXECUTE ON FUNCTION outbox.worker_status() TO outbox_pgtap_watcher;
SELECT is(pg_temp.as_role('outbox_pgtap_watcher', $$SELECT * FROM outbox.worker_status()$$), 'ok',
          'a monitoring role can call worker_status()');
SELECT is(pg_temp.as_role('outbox_pgtap_watcher', $$SELECT * FROM outbox.stats$$), 'ok',
          'and read outbox.stats');
SELECT is(pg_temp.as_role('outbox_pgtap_watcher', $$SELECT * FROM outbox.destination_stats$$), 'ok',
          'and outbox.destination_stats');
SELECT is(pg_temp.as_role('outbox_pgtap_watcher', $$SELECT count(*) FROM outbox.messages$$), '42501',
          'without SELECT on outbox.messages');
SELECT is(pg_temp.as_role('outbox_pgtap_stranger', $$SELECT * FROM outbox.worker_status()$$), '42501',
          'a role without the grant cannot call worker_status()');
SELECT is(pg_temp.as_role('outbox_pgtap_stranger', $$SELECT * FROM outbox.dead_letters$$), '42501',
          'nor read outbox.dead_letters');
SELECT is(pg_temp.as_role('outbox_pgtap_stranger', $$SELECT outbox.replay('-infinity', 'infinity')$$), '42501',
          'nor replay');
SELECT is(pg_temp.as_role('outbox_pgtap_stranger', $$SELECT outbox.retry_failed(NULL, NULL, NULL)$$), '42501',
          'nor retry_failed with filters');

SELECT * FROM finish();
ROLLBACK;
