-- stats.sql: outbox.stats counts the unfinished messages per topic, from
-- their partial indexes, plus a row for all topics (topic NULL) with an
-- estimate of the processed ones; outbox.destination_stats counts what
-- waits for each destination.
BEGIN;
SELECT plan(24);

-- Start from an empty outbox (rolled back at the end).
DELETE FROM outbox.messages;

-- An id made at a given time (a UUIDv7 starts with its millisecond).
CREATE FUNCTION pg_temp.id_at(t timestamptz, n int) RETURNS uuid LANGUAGE sql AS $$
    SELECT (substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-7000-8000-' || lpad(n::text, 12, '0'))::uuid
    FROM (SELECT lpad(to_hex(floor(extract(epoch FROM t) * 1000)::bigint), 12, '0') AS h) x
$$;

SELECT results_eq(
    $$SELECT topic, pending, processing, failed FROM outbox.stats$$,
    $$VALUES (NULL::text, 0::bigint, 0::bigint, 0::bigint)$$,
    'an empty outbox has one stats row: the total, with nothing in it');
SELECT is((SELECT oldest_pending_age FROM outbox.stats), NULL,
          'no oldest_pending_age without pending messages');
SELECT cmp_ok((SELECT processed FROM outbox.stats), '>=', 0::bigint,
              'the total row estimates the processed messages (never negative)');

-- alpha: 3 pending, 2 processing, 1 processed, 1 failed; beta: 2 processed;
-- gamma: 1 pending.
INSERT INTO outbox.messages (topic, payload)
    SELECT t, '\x00' FROM unnest(ARRAY['alpha', 'alpha', 'alpha', 'alpha', 'alpha', 'alpha', 'alpha',
                                       'beta', 'beta']) AS t;
-- Claim the oldest four messages (all alpha), then settle two of them.
CREATE TEMP TABLE claimed ON COMMIT DROP AS
    SELECT id, row_number() OVER (ORDER BY id) AS n FROM outbox.fetch_pending(4);
SELECT is((SELECT count(*) FROM claimed), 4::bigint, 'four alpha messages claimed');
SELECT is(outbox.mark_processed((SELECT id FROM claimed WHERE n = 1)), 1, 'one alpha message processed');
UPDATE outbox.messages SET status = 'failed', retries = 5 WHERE id = (SELECT id FROM claimed WHERE n = 2);
SELECT is(outbox.mark_processed(VARIADIC ARRAY(SELECT id FROM outbox.messages WHERE topic = 'beta')), 2,
          'both beta messages processed');
SELECT isnt(outbox.save('gamma', 'g'::text), NULL, 'one gamma message saved');

SELECT results_eq(
    $$SELECT topic, pending, processing, failed FROM outbox.stats WHERE topic IS NOT NULL ORDER BY topic$$,
    $$VALUES ('alpha'::text, 3::bigint, 2::bigint, 1::bigint),
             ('gamma', 1, 0, 0)$$,
    'a row per topic with unfinished messages: pending, processing and failed');
SELECT results_eq(
    $$SELECT pending, processing, failed FROM outbox.stats WHERE topic IS NULL$$,
    $$VALUES (4::bigint, 2::bigint, 1::bigint)$$,
    'the row with topic NULL adds up every topic');
SELECT is((SELECT count(*) FROM outbox.stats WHERE topic = 'beta'), 0::bigint,
          'a topic with only processed messages has no row (they are not read)');
SELECT is((SELECT count(*) FROM outbox.stats WHERE topic IS NOT NULL AND processed IS NOT NULL), 0::bigint,
          'processed is not counted per topic');
SELECT is((SELECT oldest_pending_age FROM outbox.stats WHERE topic = 'gamma'), interval '0',
          'the age of a message saved in this transaction is 0 (never negative)');

-- Ages come from the ids: a message whose id was made 5 minutes ago.
INSERT INTO outbox.messages (id, topic, payload)
    VALUES (pg_temp.id_at(now() - interval '5 minutes', 1), 'delta', '\x00'),
           (pg_temp.id_at(now() - interval '2 minutes', 2), 'delta', '\x00');
SELECT ok((SELECT oldest_pending_age >= interval '5 minutes'
                  AND oldest_pending_age < interval '5 minutes 0.001 seconds'
           FROM outbox.stats WHERE topic = 'delta'),
          'oldest_pending_age is the age of the oldest pending id of the topic');
SELECT ok((SELECT oldest_pending_age >= interval '5 minutes'
                  AND oldest_pending_age < interval '5 minutes 0.001 seconds'
           FROM outbox.stats WHERE topic IS NULL),
          'the total row has the age of the oldest pending id of all');
-- A failed message older still does not count: it is not pending.
INSERT INTO outbox.messages (id, topic, payload, status)
    VALUES (pg_temp.id_at(now() - interval '1 hour', 3), 'delta', '\x00', 'failed');
SELECT ok((SELECT oldest_pending_age < interval '6 minutes' AND failed = 1
           FROM outbox.stats WHERE topic = 'delta'),
          'failed messages count as failed, not in oldest_pending_age');
-- An id that is not a UUIDv7 (inserted by hand) carries no time: the age
-- comes from its created_at, never NULL while it is pending.
INSERT INTO outbox.messages (id, topic, payload, created_at)
    VALUES ('00000000-0000-4000-8000-000000000001', 'epsilon', '\x00', now() - interval '3 minutes');
SELECT is((SELECT oldest_pending_age FROM outbox.stats WHERE topic = 'epsilon'), interval '3 minutes',
          'an id that is not a UUIDv7 takes its age from created_at');

-- Per destination: the default one, and a destination with a subscription.
SELECT lives_ok($$SELECT outbox.create_destination('stats_dest', 'notify', '{"channel": "stats_dest"}')$$,
                'destination stats_dest created');
SELECT lives_ok($$SELECT outbox.subscribe('stats_dest', 'routed.*')$$, 'stats_dest subscribes to routed.*');
-- A subscription routes the messages saved after it commits: inside this
-- transaction the messages get their destinations by hand.
ALTER TABLE outbox.messages DISABLE TRIGGER route;
INSERT INTO outbox.messages (topic, payload, destinations)
    SELECT t, '\x00', ARRAY[d.id] FROM outbox.destination d, unnest(ARRAY['routed.a', 'routed.b']) t
    WHERE d.name = 'stats_dest';
ALTER TABLE outbox.messages ENABLE TRIGGER route;
SELECT results_eq(
    $$SELECT destination, state, pending, processing, failed FROM outbox.destination_stats ORDER BY destination$$,
    $$VALUES ('default'::text, 'ok'::text, 7::bigint, 2::bigint, 2::bigint),
             ('stats_dest', 'ok', 2, 0, 0)$$,
    'destination_stats: what waits for the default destination and for stats_dest');
SELECT results_eq(
    $$SELECT pending FROM outbox.stats WHERE topic IS NULL$$,
    $$VALUES (9::bigint)$$,
    'routed messages are pending in outbox.stats too');
-- A failed delivery, and one waiting for a retry, of stats_dest.
INSERT INTO outbox.delivery (destination_id, message_id, status, retries, last_error)
    SELECT d.id, pg_temp.id_at(now() - interval '10 minutes', 9), 'pending', 1, 'HTTP 503'
    FROM outbox.destination d WHERE d.name = 'stats_dest';
INSERT INTO outbox.delivery (destination_id, message_id, status, retries, last_error)
    SELECT d.id, pg_temp.id_at(now() - interval '20 minutes', 8), 'failed', 5, 'HTTP 500'
    FROM outbox.destination d WHERE d.name = 'stats_dest';
SELECT results_eq(
    $$SELECT pending, failed FROM outbox.destination_stats WHERE destination = 'stats_dest'$$,
    $$VALUES (3::bigint, 1::bigint)$$,
    'deliveries waiting for a retry count as pending, failed ones as failed');
SELECT ok((SELECT oldest_pending_age >= interval '10 minutes' AND oldest_pending_age < interval '11 minutes'
           FROM outbox.destination_stats WHERE destination = 'stats_dest'),
          'the oldest waiting message of a destination may be a retry');
SELECT lives_ok($$SELECT outbox.pause_destination('stats_dest')$$, 'stats_dest paused');
SELECT is((SELECT state FROM outbox.destination_stats WHERE destination = 'stats_dest'), 'paused',
          'destination_stats shows a paused destination as paused');

SELECT * FROM finish();
ROLLBACK;
