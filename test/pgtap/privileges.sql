-- privileges.sql: PUBLIC gets nothing; the grants documented for an
-- application role and for a relay role are enough for what each does, and
-- no more.  The roles are created inside the transaction and rolled back.
BEGIN;
SELECT plan(44);

-- Start from an empty outbox (rolled back at the end).
DELETE FROM outbox.messages;

CREATE ROLE outbox_pgtap_nobody NOLOGIN;
CREATE ROLE outbox_pgtap_app NOLOGIN;
CREATE ROLE outbox_pgtap_relay NOLOGIN;
CREATE ROLE outbox_pgtap_monitor NOLOGIN;

-- Run sql as role r; returns 'ok', or the SQLSTATE it failed with.  The
-- role is switched back before returning, so pgTAP records results as the
-- test's own user.
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

-- Run a query returning one text value as role r; its value, or the
-- SQLSTATE prefixed with "error ".
CREATE FUNCTION pg_temp.value_as(r text, sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    result text;
BEGIN
    EXECUTE format('SET LOCAL ROLE %I', r);
    BEGIN
        EXECUTE sql INTO result;
    EXCEPTION WHEN OTHERS THEN
        result := 'error ' || SQLSTATE;
    END;
    RESET ROLE;
    RETURN result;
END
$$;

-- ================================================================ PUBLIC gets nothing

SELECT is(has_schema_privilege('outbox_pgtap_nobody', 'outbox', 'USAGE'), false,
          'PUBLIC has no USAGE on schema outbox');
SELECT is(has_schema_privilege('outbox_pgtap_nobody', 'outbox', 'CREATE'), false,
          'PUBLIC has no CREATE on schema outbox');
SELECT is(has_table_privilege('outbox_pgtap_nobody', 'outbox.messages',
                              'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER'), false,
          'PUBLIC has no privilege on table outbox.messages');
SELECT is(has_any_column_privilege('outbox_pgtap_nobody', 'outbox.messages', 'SELECT, INSERT, UPDATE, REFERENCES'),
          false, 'PUBLIC has no privilege on any column of outbox.messages');
SELECT is(has_table_privilege('outbox_pgtap_nobody', 'outbox.stats', 'SELECT'), false,
          'PUBLIC has no SELECT on view outbox.stats');
SELECT cmp_ok((SELECT count(*) FROM pg_proc WHERE pronamespace = 'outbox'::regnamespace), '>=', 9::bigint,
              'schema outbox has at least the nine documented functions');
SELECT is((SELECT array_agg(oid::regprocedure::text ORDER BY oid::regprocedure::text) FROM pg_proc
           WHERE pronamespace = 'outbox'::regnamespace
             AND has_function_privilege('outbox_pgtap_nobody', oid, 'EXECUTE')),
          NULL, 'PUBLIC can execute no function in schema outbox');
SELECT is((SELECT array_agg(oid::regprocedure::text ORDER BY oid::regprocedure::text) FROM pg_proc
           WHERE pronamespace = 'outbox'::regnamespace
             AND (proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(proacl) a WHERE a.grantee = 0))),
          NULL, 'no function in schema outbox has a default ACL or an entry for PUBLIC');
SELECT is((SELECT array_agg(relname::text ORDER BY relname) FROM pg_class
           WHERE relnamespace = 'outbox'::regnamespace AND relkind IN ('r', 'v', 'S', 'm', 'p')
             AND (relacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(relacl) a WHERE a.grantee = 0))),
          NULL, 'no table or view in schema outbox has a default ACL or an entry for PUBLIC');
SELECT is((SELECT nspacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(nspacl) a WHERE a.grantee = 0)
           FROM pg_namespace WHERE nspname = 'outbox'),
          false, 'schema outbox has no default ACL nor an entry for PUBLIC');

SELECT is(pg_temp.as_role('outbox_pgtap_nobody', $$SELECT outbox.save('t', 'x'::text)$$), '42501',
          'a role without grants cannot save');
SELECT is(pg_temp.as_role('outbox_pgtap_nobody', $$SELECT * FROM outbox.stats$$), '42501',
          'a role without grants cannot read outbox.stats');

-- ================================================================ the application role

GRANT USAGE ON SCHEMA outbox TO outbox_pgtap_app;
GRANT EXECUTE ON FUNCTION outbox.save(text, jsonb, text, jsonb), outbox.save(text, text, text, jsonb),
    outbox.save(text, bytea, text, jsonb), outbox.next_id(), outbox.valid_headers(jsonb) TO outbox_pgtap_app;
GRANT INSERT ON outbox.messages TO outbox_pgtap_app;

SELECT is(pg_temp.as_role('outbox_pgtap_app', $$SELECT outbox.save('app', '{"a": 1}'::jsonb)$$), 'ok',
          'the app role can save a jsonb payload');
SELECT is(pg_temp.as_role('outbox_pgtap_app', $$SELECT outbox.save('app', 'text', 'k', '{"h": "v"}')$$), 'ok',
          'the app role can save a text payload with key and headers');
SELECT is(pg_temp.as_role('outbox_pgtap_app', $$SELECT outbox.save('app', '\x00ff'::bytea)$$), 'ok',
          'the app role can save a bytea payload');
SELECT is(pg_temp.as_role('outbox_pgtap_app',
                          $$INSERT INTO outbox.messages (topic, payload, key, headers)
                            SELECT 'app_batch', convert_to(n::text, 'UTF8'), 'k', '{"n": "x"}'
                            FROM generate_series(1, 3) AS n$$), 'ok',
          'the app role can batch-insert into outbox.messages');
SELECT is(pg_temp.as_role('outbox_pgtap_app', $$INSERT INTO outbox.messages (topic, payload) VALUES ('app_batch', '\x00')$$),
          'ok', 'the app role can insert a row given only topic and payload');
SELECT results_eq(
    $$SELECT topic, count(*) FROM outbox.messages GROUP BY topic ORDER BY topic$$,
    $$VALUES ('app'::text, 3::bigint), ('app_batch', 4)$$,
    'the app role''s saves and inserts are stored');
SELECT is(pg_temp.value_as('outbox_pgtap_app', $$SELECT outbox.save('app', 'x'::text)::text$$) ~ '^[0-9a-f-]{36}$',
          true, 'save() returns the new id to the app role');
SELECT is(pg_temp.as_role('outbox_pgtap_app', $$SELECT outbox.save('', 'x'::text)$$), '22023',
          'the app role gets the validation errors, not a privilege error');
SELECT is(pg_temp.as_role('outbox_pgtap_app', $$INSERT INTO outbox.messages (topic, payload, headers) VALUES ('t', '\x00', '[]')$$),
          '23514', 'the CHECK constraints apply to the app role''s inserts');

SELECT is(pg_temp.as_role('outbox_pgtap_app', $$SELECT * FROM outbox.messages$$), '42501',
          'the app role cannot SELECT from outbox.messages');
SELECT is(pg_temp.as_role('outbox_pgtap_app', $$UPDATE outbox.messages SET status = 'processed'$$), '42501',
          'the app role cannot UPDATE outbox.messages');
SELECT is(pg_temp.as_role('outbox_pgtap_app', $$DELETE FROM outbox.messages$$), '42501',
          'the app role cannot DELETE from outbox.messages');
SELECT is(pg_temp.as_role('outbox_pgtap_app', $$SELECT * FROM outbox.fetch_pending(10)$$), '42501',
          'the app role cannot call fetch_pending');
SELECT is(pg_temp.as_role('outbox_pgtap_app', $$SELECT outbox.mark_processed(gen_random_uuid())$$), '42501',
          'the app role cannot call mark_processed');
SELECT is(pg_temp.as_role('outbox_pgtap_app', $$SELECT outbox.mark_failed(gen_random_uuid(), 'x')$$), '42501',
          'the app role cannot call mark_failed');
SELECT is(pg_temp.as_role('outbox_pgtap_app', $$SELECT outbox.retry_failed()$$), '42501',
          'the app role cannot call retry_failed');
SELECT is(pg_temp.as_role('outbox_pgtap_app', $$SELECT * FROM outbox.stats$$), '42501',
          'the app role cannot read outbox.stats');
SELECT is((SELECT count(*) FROM outbox.messages WHERE status = 'pending'), 8::bigint,
          'the app role''s attempts changed no message');

-- ================================================================ the relay role

GRANT USAGE ON SCHEMA outbox TO outbox_pgtap_relay;
GRANT SELECT, UPDATE ON outbox.messages TO outbox_pgtap_relay;
-- valid_headers: every UPDATE of outbox.messages re-checks the headers CHECK
-- constraint, which calls it.
GRANT EXECUTE ON FUNCTION outbox.fetch_pending(int), outbox.mark_processed(uuid[]),
    outbox.mark_failed(uuid, text), outbox.retry_failed(uuid[]), outbox.valid_headers(jsonb) TO outbox_pgtap_relay;

CREATE TEMP TABLE relay_claim (id uuid, claimed_by int) ON COMMIT DROP;
GRANT INSERT ON relay_claim TO outbox_pgtap_relay;

SELECT is(pg_temp.as_role('outbox_pgtap_relay',
                          $$INSERT INTO relay_claim SELECT id, claimed_by FROM outbox.fetch_pending(3)$$), 'ok',
          'the relay role can call fetch_pending');
SELECT is((SELECT count(*) FROM relay_claim WHERE claimed_by = pg_backend_pid()), 3::bigint,
          'the relay role claimed three messages under its backend pid');
SELECT is((SELECT count(*) FROM outbox.messages WHERE status = 'processing'), 3::bigint,
          'the relay role''s claim is stored');
SELECT is(pg_temp.value_as('outbox_pgtap_relay',
                           format('SELECT outbox.mark_processed(%L, %L)::text',
                                  (SELECT id FROM relay_claim ORDER BY id LIMIT 1),
                                  (SELECT id FROM relay_claim ORDER BY id LIMIT 1 OFFSET 1))), '2',
          'the relay role can call mark_processed');
SELECT is(pg_temp.value_as('outbox_pgtap_relay',
                           format('SELECT outbox.mark_failed(%L, %L)::text',
                                  (SELECT id FROM relay_claim ORDER BY id LIMIT 1 OFFSET 2), 'relay error')),
          'pending', 'the relay role can call mark_failed');
UPDATE outbox.messages SET status = 'failed' WHERE id = (SELECT id FROM relay_claim ORDER BY id LIMIT 1 OFFSET 2);
SELECT is(pg_temp.value_as('outbox_pgtap_relay',
                           format('SELECT outbox.retry_failed(ARRAY[%L]::uuid[])::text',
                                  (SELECT id FROM relay_claim ORDER BY id LIMIT 1 OFFSET 2))), '1',
          'the relay role can call retry_failed(ids)');
UPDATE outbox.messages SET status = 'failed' WHERE id = (SELECT id FROM relay_claim ORDER BY id LIMIT 1 OFFSET 2);
SELECT is(pg_temp.value_as('outbox_pgtap_relay', $$SELECT outbox.retry_failed()::text$$), '1',
          'the relay role can call retry_failed()');
SELECT results_eq(
    $$SELECT status, count(*) FROM outbox.messages GROUP BY status ORDER BY status$$,
    $$VALUES ('pending'::outbox.message_status, 6::bigint), ('processed', 2)$$,
    'the relay role''s calls are stored');
SELECT is(pg_temp.value_as('outbox_pgtap_relay', $$SELECT count(*)::text FROM outbox.messages$$), '8',
          'the relay role can read outbox.messages');

SELECT is(pg_temp.as_role('outbox_pgtap_relay', $$SELECT outbox.save('t', 'x'::text)$$), '42501',
          'the relay role cannot save');
SELECT is(pg_temp.as_role('outbox_pgtap_relay', $$INSERT INTO outbox.messages (topic, payload) VALUES ('t', '\x00')$$),
          '42501', 'the relay role cannot insert');
SELECT is(pg_temp.as_role('outbox_pgtap_relay', $$DELETE FROM outbox.messages$$), '42501',
          'the relay role cannot delete');

-- ================================================================ a monitoring role

GRANT USAGE ON SCHEMA outbox TO outbox_pgtap_monitor;
GRANT SELECT ON outbox.stats TO outbox_pgtap_monitor;

SELECT is(pg_temp.value_as('outbox_pgtap_monitor', $$SELECT pending::text FROM outbox.stats WHERE topic IS NULL$$), '6',
          'a role with USAGE and SELECT on outbox.stats can read the stats');
SELECT is(pg_temp.as_role('outbox_pgtap_monitor', $$SELECT * FROM outbox.messages$$), '42501',
          'but cannot read the messages themselves');

SELECT * FROM finish();
ROLLBACK;
