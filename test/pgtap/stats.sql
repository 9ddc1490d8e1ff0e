-- stats.sql: the outbox.stats view counts messages per topic and status.
BEGIN;
SELECT plan(10);

-- Start from an empty outbox (rolled back at the end).
DELETE FROM outbox.messages;

SELECT is_empty($$SELECT * FROM outbox.stats$$, 'an empty outbox has no stats rows');

-- alpha: 3 pending, 2 processing, 1 processed, 1 failed; beta: 2 processed;
-- gamma: 1 pending.
INSERT INTO outbox.messages (topic, payload)
    SELECT t, '\x00' FROM unnest(ARRAY['alpha', 'alpha', 'alpha', 'alpha', 'alpha', 'alpha', 'alpha',
                                       'beta', 'beta']) AS t;
-- Claim the oldest four messages (all alpha), then settle three of them.
CREATE TEMP TABLE claimed ON COMMIT DROP AS
    SELECT id, row_number() OVER (ORDER BY id) AS n FROM outbox.fetch_pending(4);
SELECT is((SELECT count(*) FROM claimed), 4::bigint, 'four alpha messages claimed');
SELECT is(outbox.mark_processed((SELECT id FROM claimed WHERE n = 1)), 1, 'one alpha message processed');
UPDATE outbox.messages SET status = 'failed', retries = 5 WHERE id = (SELECT id FROM claimed WHERE n = 2);
SELECT is(outbox.mark_processed(VARIADIC ARRAY(SELECT id FROM outbox.messages WHERE topic = 'beta')), 2,
          'both beta messages processed');
SELECT isnt(outbox.save('gamma', 'g'::text), NULL, 'one gamma message saved');
-- Make the oldest pending alpha message five minutes old (now() is fixed in
-- this transaction, so the age is exact).
UPDATE outbox.messages SET created_at = now() - interval '5 minutes'
    WHERE id = (SELECT id FROM outbox.messages WHERE topic = 'alpha' AND status = 'pending' ORDER BY id LIMIT 1);
UPDATE outbox.messages SET created_at = now() - interval '1 hour'
    WHERE id = (SELECT id FROM outbox.messages WHERE topic = 'beta' ORDER BY id LIMIT 1);

SELECT results_eq(
    $$SELECT topic, pending, processing, processed, failed FROM outbox.stats ORDER BY topic$$,
    $$VALUES ('alpha'::text, 3::bigint, 2::bigint, 1::bigint, 1::bigint),
             ('beta', 0, 0, 2, 0),
             ('gamma', 1, 0, 0, 0)$$,
    'outbox.stats counts messages per topic and status');
SELECT is((SELECT oldest_pending_age FROM outbox.stats WHERE topic = 'alpha'), interval '5 minutes',
          'oldest_pending_age is the age of the oldest pending message of the topic');
SELECT is((SELECT oldest_pending_age FROM outbox.stats WHERE topic = 'gamma'), interval '0',
          'oldest_pending_age of a message created in this transaction is 0');
SELECT is((SELECT oldest_pending_age FROM outbox.stats WHERE topic = 'beta'), NULL,
          'oldest_pending_age is NULL for a topic without pending messages (older processed ones do not count)');
SELECT is((SELECT count(*) FROM outbox.stats WHERE topic = 'delta'), 0::bigint,
          'a topic without messages has no stats row');

SELECT * FROM finish();
ROLLBACK;
