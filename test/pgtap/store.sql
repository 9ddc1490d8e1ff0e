-- store.sql: the store API for external relays: fetch_pending, mark_processed,
-- mark_failed (with backoff) and retry_failed, and per-key ordering.
--
-- Assumes the default settings (outbox.max_retries = 5, outbox.retry_backoff
-- = 1s, outbox.ordering = key): they are PGC_SIGHUP, so a test cannot SET
-- them.  The first tests check that they hold.
BEGIN;
SELECT plan(110);

SELECT is(current_setting('outbox.max_retries'), '5', 'the suite runs with outbox.max_retries = 5');
SELECT is(current_setting('outbox.retry_backoff'), '1s', 'the suite runs with outbox.retry_backoff = 1s');
SELECT is(current_setting('outbox.retry_backoff_max'), '5min', 'the suite runs with outbox.retry_backoff_max = 5min');
SELECT is(current_setting('outbox.ordering'), 'key', 'the suite runs with outbox.ordering = key');

-- Start from an empty outbox (rolled back at the end).
DELETE FROM outbox.messages;

-- Messages by name: the payload is the name.
CREATE TEMP TABLE msg (name text PRIMARY KEY, id uuid NOT NULL) ON COMMIT DROP;

CREATE FUNCTION pg_temp.put(name text, key text DEFAULT NULL) RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    new_id uuid := outbox.save('store', name, key);
BEGIN
    INSERT INTO msg VALUES (name, new_id);
    RETURN new_id;
END
$$;

-- Save messages given as 'name' or 'name:key'.
CREATE PROCEDURE pg_temp.add(VARIADIC specs text[]) LANGUAGE plpgsql AS $$
DECLARE
    spec text;
BEGIN
    FOREACH spec IN ARRAY specs LOOP
        PERFORM pg_temp.put(split_part(spec, ':', 1), nullif(split_part(spec, ':', 2), ''));
    END LOOP;
END
$$;

CREATE FUNCTION pg_temp.id(msg_name text) RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT id FROM msg WHERE name = msg_name
$$;

-- Claim with fetch_pending(n); the names of the returned messages, in order.
CREATE FUNCTION pg_temp.fetched(n int) RETURNS text[] LANGUAGE sql AS $$
    SELECT coalesce(array_agg(coalesce(m.name, 'unknown ' || f.id::text) ORDER BY f.ordinality), '{}')
    FROM outbox.fetch_pending(n) WITH ORDINALITY AS f
    LEFT JOIN msg m ON m.id = f.id
$$;

-- mark_failed, with the clock read before and after the call.
CREATE TEMP TABLE failures (name text, attempt int, t0 timestamptz, status outbox.message_status,
                            t1 timestamptz) ON COMMIT DROP;
CREATE FUNCTION pg_temp.fail(msg_name text, attempt int) RETURNS outbox.message_status LANGUAGE plpgsql AS $$
DECLARE
    before timestamptz := clock_timestamp();
    result outbox.message_status;
BEGIN
    result := outbox.mark_failed(pg_temp.id(msg_name), 'boom ' || attempt);
    INSERT INTO failures VALUES (msg_name, attempt, before, result, clock_timestamp());
    RETURN result;
END
$$;

-- Make a message in backoff due now.
CREATE PROCEDURE pg_temp.make_due(msg_name text) LANGUAGE sql AS $$
    UPDATE outbox.messages SET next_attempt_at = now() - interval '1 second' WHERE id = pg_temp.id(msg_name)
$$;

-- Fail a message the given number of times.
CREATE PROCEDURE pg_temp.fail_times(msg_name text, times int) LANGUAGE plpgsql AS $$
BEGIN
    FOR attempt IN 1..times LOOP
        PERFORM pg_temp.fail(msg_name, attempt);
    END LOOP;
END
$$;

CREATE FUNCTION pg_temp.status(msg_name text) RETURNS outbox.message_status LANGUAGE sql STABLE AS $$
    SELECT status FROM outbox.messages WHERE id = pg_temp.id(msg_name)
$$;

-- ================================================================ claiming

CALL pg_temp.add('m1', 'm2', 'm3', 'm4', 'm5');

SELECT is_empty($$SELECT * FROM outbox.fetch_pending(0)$$, 'fetch_pending(0) returns nothing');
SELECT is((SELECT count(*) FROM outbox.messages WHERE status = 'pending' AND claimed_by IS NULL), 5::bigint,
          'fetch_pending(0) claims nothing');
SELECT is_empty($$SELECT * FROM outbox.fetch_pending(NULL)$$, 'fetch_pending(NULL) returns nothing');
SELECT throws_ok($$SELECT * FROM outbox.fetch_pending(-1)$$, '22023', NULL, 'fetch_pending(-1) raises 22023');

CREATE TEMP TABLE first_claim ON COMMIT DROP AS
    SELECT * FROM outbox.fetch_pending(2) WITH ORDINALITY AS f;
SELECT is((SELECT array_agg(m.name ORDER BY f.ordinality) FROM first_claim f JOIN msg m USING (id)),
          ARRAY['m1', 'm2'], 'fetch_pending(2) returns the two oldest messages, in id order');
SELECT results_eq(
    $$SELECT DISTINCT status, claimed_by, claimed_at IS NOT NULL FROM first_claim$$,
    $$VALUES ('processing'::outbox.message_status, pg_backend_pid(), true)$$,
    'the returned rows are processing, claimed by the caller''s backend');
SELECT results_eq(
    $$SELECT f.topic, f.key, f.payload, f.headers, f.retries, f.created_at FROM first_claim f ORDER BY f.id$$,
    $$SELECT topic, key, payload, headers, retries, created_at FROM outbox.messages
      WHERE id IN (SELECT id FROM first_claim) ORDER BY id$$,
    'the returned rows carry the stored message');
SELECT is((SELECT convert_from(payload, 'UTF8') FROM first_claim WHERE id = pg_temp.id('m1')), 'm1',
          'a returned row holds its payload');
SELECT results_eq(
    $$SELECT m.name, o.status, o.claimed_by, o.claimed_at IS NOT NULL
      FROM outbox.messages o JOIN msg m USING (id) ORDER BY o.id$$,
    $$VALUES ('m1', 'processing'::outbox.message_status, pg_backend_pid(), true),
             ('m2', 'processing', pg_backend_pid(), true),
             ('m3', 'pending', NULL, false),
             ('m4', 'pending', NULL, false),
             ('m5', 'pending', NULL, false)$$,
    'the claimed messages are stored as processing with claimed_by = pg_backend_pid(); the others are untouched');

SELECT is(pg_temp.fetched(2), ARRAY['m3', 'm4'], 'a second fetch_pending(2) returns the next two');
SELECT is(pg_temp.fetched(10), ARRAY['m5'], 'fetch_pending(10) returns the one left');
SELECT is(pg_temp.fetched(10), '{}'::text[], 'with everything claimed, fetch_pending returns nothing');

-- A message not yet due is not claimed.
CALL pg_temp.add('later');
UPDATE outbox.messages SET next_attempt_at = clock_timestamp() + interval '1 hour' WHERE id = pg_temp.id('later');
SELECT is(pg_temp.fetched(10), '{}'::text[], 'a message whose next attempt is in the future is not claimed');
CALL pg_temp.make_due('later');
SELECT is(pg_temp.fetched(10), ARRAY['later'], 'it is claimed once due');

-- ================================================================ mark_processed

SELECT is(outbox.mark_processed(pg_temp.id('m1'), pg_temp.id('m2')), 2,
          'mark_processed(m1, m2) returns 2');
SELECT results_eq(
    $$SELECT o.status, o.processed_at IS NOT NULL, o.processed_at <= clock_timestamp(), o.claimed_by, o.claimed_at
      FROM outbox.messages o WHERE o.id IN (pg_temp.id('m1'), pg_temp.id('m2'))$$,
    $$VALUES ('processed'::outbox.message_status, true, true, NULL::int, NULL::timestamptz),
             ('processed', true, true, NULL, NULL)$$,
    'mark_processed sets status processed and processed_at, and clears the claim');
SELECT is(outbox.mark_processed(pg_temp.id('m1')), 0, 'marking an already processed message again returns 0');
SELECT is(outbox.mark_processed(VARIADIC ARRAY[pg_temp.id('m3'), gen_random_uuid()]), 1,
          'mark_processed(VARIADIC ARRAY[m3, unknown id]) returns 1');
SELECT is(outbox.mark_processed(pg_temp.id('m4'), pg_temp.id('m4')), 1, 'an id given twice counts once');
SELECT is(outbox.mark_processed(VARIADIC ARRAY[]::uuid[]), 0, 'mark_processed of an empty array returns 0');
SELECT is(outbox.mark_processed(VARIADIC NULL::uuid[]), NULL, 'mark_processed(VARIADIC NULL) returns NULL');
SELECT throws_ok($$SELECT outbox.mark_processed(NULL::uuid)$$, '22004', NULL,
                 'mark_processed with a NULL id raises 22004');
CALL pg_temp.add('never_claimed');
SELECT is(outbox.mark_processed(pg_temp.id('never_claimed')), 1, 'a pending message can be marked processed');
SELECT is(pg_temp.status('never_claimed'), 'processed', 'and is then processed');
SELECT is(pg_temp.fetched(10), '{}'::text[], 'processed messages are not claimed');

-- ================================================================ mark_failed and backoff

CALL pg_temp.add('f');
SELECT is(pg_temp.fetched(10), ARRAY['f'], 'f is claimed');

SELECT is(pg_temp.fail('f', 1), 'pending', 'the first mark_failed returns pending');
SELECT results_eq(
    $$SELECT status, retries, last_error, claimed_by, claimed_at FROM outbox.messages WHERE id = pg_temp.id('f')$$,
    $$VALUES ('pending'::outbox.message_status, 1, 'boom 1', NULL::int, NULL::timestamptz)$$,
    'after the first failure: pending, retries 1, last_error kept, claim cleared');
SELECT ok((SELECT o.next_attempt_at BETWEEN x.t0 + interval '500 ms' AND x.t1 + interval '1000 ms'
           FROM outbox.messages o, failures x WHERE o.id = pg_temp.id('f') AND x.name = 'f' AND x.attempt = 1),
          'after the first failure the next attempt is in [now + 0.5 s, now + 1 s]');
SELECT is(pg_temp.fetched(10), '{}'::text[], 'a message in backoff is not claimed before it is due');

CALL pg_temp.make_due('f');
SELECT is(pg_temp.fetched(10), ARRAY['f'], 'once due, the failed message is claimed again');
SELECT is(pg_temp.fail('f', 2), 'pending', 'the second mark_failed returns pending');
SELECT ok((SELECT o.next_attempt_at BETWEEN x.t0 + interval '1000 ms' AND x.t1 + interval '2000 ms'
           FROM outbox.messages o, failures x WHERE o.id = pg_temp.id('f') AND x.name = 'f' AND x.attempt = 2),
          'after the second failure the next attempt is in [now + 1 s, now + 2 s]');
SELECT is((SELECT retries FROM outbox.messages WHERE id = pg_temp.id('f')), 2, 'retries is 2');

CALL pg_temp.make_due('f');
SELECT is(pg_temp.fetched(10), ARRAY['f'], 'claimed a third time');
SELECT is(pg_temp.fail('f', 3), 'pending', 'the third mark_failed returns pending');
SELECT ok((SELECT o.next_attempt_at BETWEEN x.t0 + interval '2000 ms' AND x.t1 + interval '4000 ms'
           FROM outbox.messages o, failures x WHERE o.id = pg_temp.id('f') AND x.name = 'f' AND x.attempt = 3),
          'after the third failure the next attempt is in [now + 2 s, now + 4 s]');

CALL pg_temp.make_due('f');
SELECT is(pg_temp.fetched(10), ARRAY['f'], 'claimed a fourth time');
SELECT is(pg_temp.fail('f', 4), 'pending', 'the fourth mark_failed returns pending');
SELECT ok((SELECT o.next_attempt_at BETWEEN x.t0 + interval '4000 ms' AND x.t1 + interval '8000 ms'
           FROM outbox.messages o, failures x WHERE o.id = pg_temp.id('f') AND x.name = 'f' AND x.attempt = 4),
          'after the fourth failure the next attempt is in [now + 4 s, now + 8 s]');
SELECT results_eq(
    $$SELECT status, retries, last_error FROM outbox.messages WHERE id = pg_temp.id('f')$$,
    $$VALUES ('pending'::outbox.message_status, 4, 'boom 4')$$,
    'after four failures: pending, retries 4, the last error kept');

CALL pg_temp.make_due('f');
SELECT is(pg_temp.fetched(10), ARRAY['f'], 'claimed a fifth time');
SELECT is(pg_temp.fail('f', 5), 'failed', 'the fifth mark_failed (retries reaches max_retries) returns failed');
SELECT results_eq(
    $$SELECT status, retries, last_error, claimed_by FROM outbox.messages WHERE id = pg_temp.id('f')$$,
    $$VALUES ('failed'::outbox.message_status, 5, 'boom 5', NULL::int)$$,
    'after five failures: failed, retries 5, the last error kept, claim cleared');
CALL pg_temp.make_due('f');
SELECT is(pg_temp.fetched(10), '{}'::text[], 'a failed message is not claimed, even when due');
SELECT is(outbox.mark_failed(pg_temp.id('f'), 'again'), NULL, 'mark_failed on a failed message returns NULL');
SELECT is((SELECT retries FROM outbox.messages WHERE id = pg_temp.id('f')), 5,
          'and does not count another retry');

SELECT is(outbox.mark_failed(gen_random_uuid(), 'x'), NULL, 'mark_failed on an unknown id returns NULL');
SELECT is(outbox.mark_failed(pg_temp.id('m1'), 'x'), NULL, 'mark_failed on a processed message returns NULL');
SELECT results_eq(
    $$SELECT status, retries, last_error FROM outbox.messages WHERE id = pg_temp.id('m1')$$,
    $$VALUES ('processed'::outbox.message_status, 0, NULL::text)$$,
    'and leaves the processed message unchanged');
SELECT throws_ok($$SELECT outbox.mark_failed(NULL, 'x')$$, '22004', NULL, 'mark_failed(NULL id) raises 22004');

-- mark_failed also applies to a pending message that is not claimed.
CALL pg_temp.add('p');
SELECT is(pg_temp.fail('p', 1), 'pending', 'mark_failed on an unclaimed pending message returns pending');
SELECT is((SELECT retries FROM outbox.messages WHERE id = pg_temp.id('p')), 1, 'and counts the retry');
-- Keep p in backoff for the rest of this section, however slow the machine.
UPDATE outbox.messages SET next_attempt_at = clock_timestamp() + interval '1 hour' WHERE id = pg_temp.id('p');

-- ================================================================ retry_failed

SELECT is(outbox.retry_failed(ARRAY[pg_temp.id('f')]), 1, 'retry_failed(ARRAY[f]) returns 1');
SELECT results_eq(
    $$SELECT status, retries, next_attempt_at <= clock_timestamp() FROM outbox.messages WHERE id = pg_temp.id('f')$$,
    $$VALUES ('pending'::outbox.message_status, 0, true)$$,
    'retry_failed makes the message pending with 0 retries, due at once');
SELECT is(outbox.retry_failed(ARRAY[pg_temp.id('f')]), 0, 'retry_failed on a message no longer failed returns 0');
SELECT is(outbox.retry_failed(ARRAY[pg_temp.id('m1'), gen_random_uuid()]), 0,
          'retry_failed on processed or unknown messages returns 0');
SELECT is(pg_temp.fetched(10), ARRAY['f'], 'a requeued message is claimed again');
SELECT is(outbox.mark_processed(pg_temp.id('f')), 1, 'and can then be marked processed');

-- Fail three messages for good, then requeue all of them.
CALL pg_temp.add('g1', 'g2', 'g3');
CALL pg_temp.fail_times('g1', 5);
CALL pg_temp.fail_times('g2', 5);
CALL pg_temp.fail_times('g3', 5);
SELECT is((SELECT array_agg(status::text ORDER BY id) FROM outbox.messages
           WHERE id IN (pg_temp.id('g1'), pg_temp.id('g2'), pg_temp.id('g3'))),
          ARRAY['failed', 'failed', 'failed'], 'g1, g2, g3 failed for good');
SELECT is(outbox.retry_failed(ARRAY[]::uuid[]), 0, 'retry_failed of an empty array returns 0');
SELECT is(outbox.retry_failed(ARRAY[pg_temp.id('g1')]), 1, 'retry_failed(ARRAY[g1]) returns 1');
SELECT is(pg_temp.status('g2'), 'failed', 'and leaves the other failed messages alone');
SELECT is(outbox.retry_failed(), 2, 'retry_failed() requeues all the remaining failed messages');
SELECT is((SELECT count(*) FROM outbox.messages WHERE status = 'failed'), 0::bigint, 'no failed message is left');
SELECT results_eq(
    $$SELECT DISTINCT status, retries FROM outbox.messages
      WHERE id IN (pg_temp.id('g1'), pg_temp.id('g2'), pg_temp.id('g3'))$$,
    $$VALUES ('pending'::outbox.message_status, 0)$$,
    'the requeued messages are pending with 0 retries');
SELECT is(outbox.retry_failed(NULL), 0, 'retry_failed(NULL) with nothing failed returns 0');
SELECT is(pg_temp.fetched(10), ARRAY['g1', 'g2', 'g3'],
          'the requeued messages are claimed in id order (p still waits in backoff)');
SELECT is(outbox.mark_processed(pg_temp.id('g1'), pg_temp.id('g2'), pg_temp.id('g3')), 3,
          'the requeued messages can be marked processed');

-- ================================================================ per-key ordering

DELETE FROM outbox.messages;

-- All due: every key's messages come in one call, in id order.
CALL pg_temp.add('a:k1', 'b:k1', 'c:k2', 'd');
SELECT is(pg_temp.fetched(10), ARRAY['a', 'b', 'c', 'd'],
          'with nothing in flight, fetch_pending(10) returns k1:a, k1:b, k2:c, '''':d in id order');
SELECT is(outbox.mark_processed(pg_temp.id('a'), pg_temp.id('b'), pg_temp.id('c'), pg_temp.id('d')), 4,
          'all four processed');

-- k1's oldest message in backoff holds back the rest of k1 only.
CALL pg_temp.add('a2:k1', 'b2:k1', 'c2:k2', 'd2', 'e2:k2');
SELECT is(pg_temp.fetched(1), ARRAY['a2'], 'fetch_pending(1) claims k1:a2');
SELECT is(pg_temp.fail('a2', 1), 'pending', 'a2 fails and waits in backoff');
SELECT is(pg_temp.fetched(10), ARRAY['c2', 'd2', 'e2'],
          'while a2 waits, k1:b2 is held back; k2:c2, k2:e2 and '''':d2 are claimed');
SELECT is(pg_temp.status('b2'), 'pending', 'b2 stays pending');

-- An in-flight message holds back later messages of its key.
CALL pg_temp.add('f2:k2', 'z2');
SELECT is(pg_temp.fetched(10), ARRAY['z2'], 'k2:f2 is held back while k2:c2 and k2:e2 are processing');
SELECT is(outbox.mark_processed(pg_temp.id('c2')), 1, 'c2 processed');
SELECT is(pg_temp.fetched(10), '{}'::text[], 'k2:f2 is still held back while k2:e2 is processing');
SELECT is(outbox.mark_processed(pg_temp.id('e2')), 1, 'e2 processed');
SELECT is(pg_temp.fetched(10), ARRAY['f2'], 'with k2''s earlier messages processed, k2:f2 is claimed');

-- Once a2 is due it comes first; b2 waits for it to finish.
CALL pg_temp.make_due('a2');
SELECT is(pg_temp.fetched(1), ARRAY['a2'], 'once due, k1:a2 is claimed before k1:b2');
SELECT is(pg_temp.fetched(10), '{}'::text[], 'k1:b2 waits while k1:a2 is processing');
SELECT is(outbox.mark_processed(pg_temp.id('a2')), 1, 'a2 processed');
SELECT is(pg_temp.fetched(10), ARRAY['b2'], 'then k1:b2 is claimed');

-- A due head and its successors come together in one call.
CALL pg_temp.add('h3:k3', 'i3:k3', 'j3:k3');
SELECT is(pg_temp.fail('h3', 1), 'pending', 'k3:h3 fails while pending');
SELECT is(pg_temp.fetched(10), '{}'::text[], 'k3:i3 and k3:j3 wait for k3:h3');
CALL pg_temp.make_due('h3');
SELECT is(pg_temp.fetched(10), ARRAY['h3', 'i3', 'j3'], 'once k3:h3 is due, h3, i3, j3 come in one call, in order');
SELECT is(pg_temp.fetched(10), '{}'::text[], 'nothing else is due');

-- A message in backoff in the middle of a key holds back the ones after it.
CALL pg_temp.add('a5:k5', 'b5:k5', 'c5:k5');
SELECT is(pg_temp.fail('b5', 1), 'pending', 'k5:b5 fails while pending');
SELECT is(pg_temp.fetched(10), ARRAY['a5'], 'k5:a5 is claimed, k5:c5 waits behind k5:b5 in backoff');
SELECT is(outbox.mark_processed(pg_temp.id('a5')), 1, 'a5 processed');
SELECT is(pg_temp.fetched(10), '{}'::text[], 'k5:c5 still waits for k5:b5');
CALL pg_temp.make_due('b5');
SELECT is(pg_temp.fetched(10), ARRAY['b5', 'c5'], 'once k5:b5 is due, b5 and c5 come in order');

-- Many keys interleaved: the oldest N come in id order, a prefix of every key.
DELETE FROM outbox.messages;
INSERT INTO outbox.messages (topic, payload, key)
    SELECT 'many', convert_to(n::text, 'UTF8'), 'key' || (n % 7) FROM generate_series(1, 200) AS n;
SELECT is((SELECT array_agg(convert_from(payload, 'UTF8')::int ORDER BY ord)
           FROM outbox.fetch_pending(50) WITH ORDINALITY AS f(id, topic, key, payload, headers, status, retries,
                                                              last_error, created_at, processed_at,
                                                              next_attempt_at, claimed_at, claimed_by, ord)),
          (SELECT array_agg(n ORDER BY n) FROM generate_series(1, 50) AS n),
          'of 200 due messages over 7 keys, fetch_pending(50) returns the oldest 50 in id order');
SELECT is((SELECT count(*) FROM outbox.fetch_pending(1000)), 0::bigint,
          'the remaining 150 are held back while each key has a message in flight');
SELECT is(outbox.mark_processed(VARIADIC ARRAY(SELECT id FROM outbox.messages WHERE status = 'processing')), 50,
          'the 50 claimed are marked processed');
SELECT is((SELECT array_agg(convert_from(payload, 'UTF8')::int ORDER BY ord)
           FROM outbox.fetch_pending(1000) WITH ORDINALITY AS f(id, topic, key, payload, headers, status, retries,
                                                                last_error, created_at, processed_at,
                                                                next_attempt_at, claimed_at, claimed_by, ord)),
          (SELECT array_agg(n ORDER BY n) FROM generate_series(51, 200) AS n),
          'then fetch_pending(1000) returns the other 150 in id order');

-- Messages held back do not use up max_messages: later keys still get the room.
CALL pg_temp.add('a6:k6', 'b6:k6', 'c61:k6', 'c62:k6', 'c63:k6', 'c64:k6', 'c65:k6', 'c66:k6',
                 'c67:k6', 'c68:k6', 'c69:k6', 'c70:k6', 'z6');
SELECT is(pg_temp.fail('b6', 1), 'pending', 'k6:b6 fails while pending');
SELECT is(pg_temp.fetched(5), ARRAY['a6', 'z6'],
          'fetch_pending(5) claims k6:a6 and keyless z6 although ten due k6 messages wait behind k6:b6');
SELECT is(pg_temp.fetched(5), '{}'::text[], 'nothing of k6 is claimed while k6:a6 is in flight');

-- A failed message no longer holds back its key.
CALL pg_temp.add('x4:k4');
CALL pg_temp.fail_times('x4', 5);
SELECT is(pg_temp.status('x4'), 'failed', 'k4:x4 failed for good');
CALL pg_temp.add('y4:k4');
SELECT is(pg_temp.fetched(10), ARRAY['y4'], 'a failed message does not hold back later messages of its key');

-- Keyless messages never hold each other back.
CALL pg_temp.add('n1');
SELECT is(pg_temp.fetched(10), ARRAY['n1'], 'keyless n1 is claimed');
SELECT is(pg_temp.fail('n1', 1), 'pending', 'n1 fails and waits in backoff');
CALL pg_temp.add('n2', 'n3');
SELECT is(pg_temp.fetched(1), ARRAY['n2'], 'keyless n2 is claimed while the older keyless n1 waits');
SELECT is(pg_temp.fetched(10), ARRAY['n3'], 'keyless n3 is claimed while the older keyless n2 is processing');

SELECT * FROM finish();
ROLLBACK;
