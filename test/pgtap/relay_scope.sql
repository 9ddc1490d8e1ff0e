-- relay_scope.sql: the store API acts for relays outside the database, so a
-- relay role (EXECUTE on the store API, README's grants) acts only on the
-- default destination and on destinations of publisher "external":
-- mark_processed_for, mark_failed and retry_failed with a destination that
-- has a worker of its own are refused (42809, as fetch_pending), so such a
-- role can neither mark as sent what was never sent, nor forge a failed
-- attempt, nor requeue that destination's dead letters; retry_failed(ids)
-- without a destination requeues only the default destination's failed
-- messages.  A superuser (an operator) may act on any destination, except
-- with fetch_pending.
--
-- No worker relays this database; everything is one transaction, rolled
-- back.
BEGIN;
SELECT plan(27);

DELETE FROM outbox.messages;

CREATE ROLE outbox_pgtap_xrelay NOLOGIN;
GRANT USAGE ON SCHEMA outbox TO outbox_pgtap_xrelay;
GRANT SELECT, UPDATE ON outbox.messages TO outbox_pgtap_xrelay;
GRANT EXECUTE ON FUNCTION outbox.fetch_pending(int), outbox.mark_processed(uuid[]),
    outbox.mark_failed(uuid, text), outbox.retry_failed(uuid[]), outbox.valid_headers(jsonb),
    outbox.fetch_pending(int, text), outbox.mark_processed_for(uuid[], text),
    outbox.mark_failed(uuid, text, text), outbox.retry_failed(uuid[], text) TO outbox_pgtap_xrelay;

-- Run sql as role r: 'ok', or the SQLSTATE and the message it failed with.
CREATE FUNCTION pg_temp.as_relay(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    outcome text := 'ok';
BEGIN
    SET LOCAL ROLE outbox_pgtap_xrelay;
    BEGIN
        EXECUTE sql;
    EXCEPTION WHEN OTHERS THEN
        outcome := SQLSTATE || ': ' || SQLERRM;
    END;
    RESET ROLE;
    RETURN outcome;
END
$$;

-- A query's one value as the relay role.
CREATE FUNCTION pg_temp.value_as_relay(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    result text;
BEGIN
    SET LOCAL ROLE outbox_pgtap_xrelay;
    EXECUTE sql INTO result;
    RESET ROLE;
    RETURN result;
END
$$;

SELECT outbox.create_destination('pgtap_scope_hook', 'http', '{"url": "http://127.0.0.1:9/hook"}');
SELECT outbox.create_destination('pgtap_scope_ext', 'external');
SELECT outbox.subscribe('pgtap_scope_hook', 'scope.>');
SELECT outbox.subscribe('pgtap_scope_ext', 'scope.>');

CREATE TEMP TABLE scope_msg (name text PRIMARY KEY, id uuid NOT NULL);
INSERT INTO scope_msg VALUES
    ('pending', outbox.save('scope.a', 'pending'::text)),
    ('failed', outbox.save('scope.b', 'failed'::text)),
    ('plain_failed', outbox.save('plain', 'plain'::text));
GRANT SELECT ON scope_msg TO outbox_pgtap_xrelay;

CREATE FUNCTION pg_temp.id(n text) RETURNS uuid LANGUAGE sql AS $$
    SELECT id FROM scope_msg WHERE name = n
$$;
CREATE FUNCTION pg_temp.dest(n text) RETURNS int LANGUAGE sql AS $$
    SELECT id FROM outbox.destination WHERE name = n
$$;
-- A delivery as status/retries/last_error.
CREATE FUNCTION pg_temp.delivery(n text, d text) RETURNS text LANGUAGE sql AS $$
    SELECT x.status || '/' || x.retries || coalesce('/' || x.last_error, '')
    FROM outbox.delivery x WHERE x.message_id = pg_temp.id(n) AND x.destination_id = pg_temp.dest(d)
$$;

-- Deliveries as a destination's worker leaves them: one waiting for a
-- retry, one failed for good, in each destination; and a failed message of
-- the default destination.
INSERT INTO outbox.delivery (destination_id, message_id, status, retries, last_error, processed_at)
SELECT pg_temp.dest(d), pg_temp.id(n), s::outbox.message_status, r, e, CASE WHEN s = 'failed' THEN now() END
FROM (VALUES ('pending', 'pending', 1, 'HTTP 503'), ('failed', 'failed', 5, 'HTTP 500')) v(n, s, r, e),
     unnest(ARRAY['pgtap_scope_hook', 'pgtap_scope_ext']) d;
UPDATE outbox.messages SET status = 'failed', processed_at = now() WHERE id = pg_temp.id('failed');
UPDATE outbox.messages SET status = 'failed', retries = 5, processed_at = now() WHERE id = pg_temp.id('plain_failed');

-- ================================================================ a destination with a worker of its own

SELECT is(pg_temp.as_relay($$SELECT outbox.mark_processed_for(ARRAY[pg_temp.id('pending')], 'pgtap_scope_hook')$$),
          '42809: outbox destination "pgtap_scope_hook" is relayed by its own worker',
          'a relay role cannot mark an http destination''s delivery processed: 42809');
SELECT is(pg_temp.delivery('pending', 'pgtap_scope_hook'), 'pending/1/HTTP 503', '(the delivery is untouched)');
SELECT is(pg_temp.as_relay($$SELECT outbox.mark_failed(pg_temp.id('pending'), 'forged', 'pgtap_scope_hook')$$),
          '42809: outbox destination "pgtap_scope_hook" is relayed by its own worker',
          'nor record a failed attempt of it: 42809');
SELECT is(pg_temp.delivery('pending', 'pgtap_scope_hook'), 'pending/1/HTTP 503', '(still untouched)');
SELECT is(pg_temp.as_relay($$SELECT outbox.retry_failed(ARRAY[pg_temp.id('failed')], 'pgtap_scope_hook')$$),
          '42809: outbox destination "pgtap_scope_hook" is relayed by its own worker',
          'nor requeue its dead letters by id: 42809');
SELECT is(pg_temp.as_relay($$SELECT outbox.retry_failed(NULL, 'pgtap_scope_hook')$$),
          '42809: outbox destination "pgtap_scope_hook" is relayed by its own worker',
          'nor all of them: 42809');
SELECT is(pg_temp.delivery('failed', 'pgtap_scope_hook'), 'failed/5/HTTP 500', '(the dead letter stays failed)');
SELECT is(pg_temp.as_relay($$SELECT * FROM outbox.fetch_pending(10, 'pgtap_scope_hook')$$),
          '42809: outbox destination "pgtap_scope_hook" is relayed by its own worker',
          'fetch_pending refuses it too, with the same error');
SELECT is(pg_temp.as_relay($$SELECT outbox.mark_failed(pg_temp.id('pending'), 'x', 'pgtap_scope_nope')$$),
          '42704: outbox destination "pgtap_scope_nope" does not exist', 'an unknown destination: 42704');

-- ================================================================ an external destination

SELECT is(pg_temp.value_as_relay($$SELECT outbox.mark_failed(pg_temp.id('pending'), 'broker down', 'pgtap_scope_ext')$$),
          'pending', 'a relay role records a failed attempt of an external destination''s delivery');
SELECT is(pg_temp.delivery('pending', 'pgtap_scope_ext'), 'pending/2/broker down', '(retries 2, its error)');
SELECT is(pg_temp.value_as_relay($$SELECT outbox.mark_processed_for(ARRAY[pg_temp.id('pending')], 'pgtap_scope_ext')$$),
          '1', 'marks it processed');
SELECT is(pg_temp.value_as_relay($$SELECT outbox.retry_failed(ARRAY[pg_temp.id('failed')], 'pgtap_scope_ext')$$),
          '1', 'and requeues its dead letters');
SELECT is(pg_temp.delivery('failed', 'pgtap_scope_ext'), 'pending/0/HTTP 500', '(pending again, retries 0)');
SELECT is(pg_temp.delivery('failed', 'pgtap_scope_hook'), 'failed/5/HTTP 500', '(the http destination''s stays failed)');

-- ================================================================ retry_failed(ids) without a destination

UPDATE outbox.delivery SET status = 'failed', retries = 5, processed_at = now()
WHERE message_id = pg_temp.id('failed') AND destination_id = pg_temp.dest('pgtap_scope_ext');
SELECT is(pg_temp.value_as_relay($$SELECT outbox.retry_failed(NULL)$$), '1',
          'retry_failed(NULL) as a relay role requeues the default destination''s failed messages only');
SELECT is((SELECT status::text FROM outbox.messages WHERE id = pg_temp.id('plain_failed')), 'pending',
          '(the default destination''s message is pending again)');
SELECT is(pg_temp.delivery('failed', 'pgtap_scope_hook'), 'failed/5/HTTP 500', '(no destination''s dead letter is requeued)');
SELECT is(pg_temp.delivery('failed', 'pgtap_scope_ext'), 'failed/5/HTTP 500', '(not even an external one''s)');
SELECT is(pg_temp.value_as_relay(format('SELECT outbox.retry_failed(ARRAY[%L]::uuid[])', pg_temp.id('failed'))), '0',
          'nor by its id');

-- ================================================================ a superuser

SELECT is(outbox.mark_failed(pg_temp.id('pending'), 'operator', 'pgtap_scope_hook')::text, 'pending',
          'a superuser may record a failed attempt of any destination''s delivery');
SELECT is(pg_temp.delivery('pending', 'pgtap_scope_hook'), 'pending/2/operator', '(it is recorded)');
SELECT is(outbox.mark_processed_for(ARRAY[pg_temp.id('pending')], 'pgtap_scope_hook'), 1,
          'mark it processed');
SELECT is(outbox.retry_failed(NULL, 'pgtap_scope_hook'), 1, 'and requeue its dead letters');
SELECT is(outbox.retry_failed(NULL), 1,
          'retry_failed(NULL) as a superuser requeues every destination''s dead letters (the external one''s here)');
SELECT is(pg_temp.delivery('failed', 'pgtap_scope_ext'), 'pending/0/HTTP 500', '(pending again)');
SELECT throws_ok($$SELECT * FROM outbox.fetch_pending(10, 'pgtap_scope_hook')$$, '42809',
                 'outbox destination "pgtap_scope_hook" is relayed by its own worker',
                 'fetch_pending refuses a destination with a worker of its own, to a superuser too');

SELECT * FROM finish();
ROLLBACK;
