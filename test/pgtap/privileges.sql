-- privileges.sql: PUBLIC gets nothing; the grants documented for an
-- application role and for a relay role are enough for what each does, and
-- no more.  The roles are created inside the transaction and rolled back.
BEGIN;
SELECT plan(61);

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

SELECT is((SELECT array_agg(c ORDER BY c) FROM unnest(ARRAY['outbox.destination', 'outbox.subscription',
               'outbox.destination_progress', 'outbox.delivery', 'outbox.destinations', 'outbox.deliveries']) c
           WHERE has_table_privilege('outbox_pgtap_nobody', c, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')),
          NULL, 'PUBLIC has no privilege on the destination tables and views');
SELECT is(has_sequence_privilege('outbox_pgtap_nobody', 'outbox.destination_id_seq', 'USAGE, SELECT, UPDATE'), false,
          'PUBLIC has no privilege on the sequence outbox.destination_id_seq');
SELECT is((SELECT array_agg(f ORDER BY f) FROM unnest(ARRAY[
               'outbox.create_destination(text, text, jsonb)', 'outbox.alter_destination(text, jsonb)',
               'outbox.drop_destination(text, boolean)', 'outbox.pause_destination(text)',
               'outbox.resume_destination(text)', 'outbox.subscribe(text, text)', 'outbox.unsubscribe(text, text)',
               'outbox.topic_matches(text, text)', 'outbox.public_options(text, jsonb)',
               'outbox.destination_position(integer)', 'outbox.fetch_pending(integer, text)',
               'outbox.mark_processed_for(uuid[], text)', 'outbox.mark_failed(uuid, text, text)',
               'outbox.retry_failed(uuid[], text)', 'outbox.route()',
               'outbox.set_destination_secret(text, text, text)']) f
           WHERE has_function_privilege('outbox_pgtap_nobody', f, 'EXECUTE')),
          NULL, 'PUBLIC can execute none of the destination functions nor the route trigger''s');
SELECT is(pg_temp.as_role('outbox_pgtap_nobody', $$SELECT * FROM outbox.destinations$$), '42501',
          'a role without grants cannot read outbox.destinations');
SELECT is(pg_temp.as_role('outbox_pgtap_nobody', $$SELECT outbox.save('t', 'x'::text)$$), '42501',
          'a role without grants cannot save');
SELECT is(pg_temp.as_role('outbox_pgtap_nobody', $$SELECT * FROM outbox.stats$$), '42501',
          'a role without grants cannot read outbox.stats');

-- ================================================================ the application role

GRANT USAGE ON SCHEMA outbox TO outbox_pgtap_app;
GRANT EXECUTE ON FUNCTION outbox.save(text, jsonb, text, jsonb), outbox.save(text, text, text, jsonb),
    outbox.save(text, bytea, text, jsonb), outbox.next_id(), outbox.valid_headers(jsonb) TO outbox_pgtap_app;
GRANT INSERT (id, topic, key, payload, headers) ON outbox.messages TO outbox_pgtap_app;

-- Destinations subscribed to some of the app's topics: routing happens in
-- the app's inserts, and must need no privilege of the app role.
DO $$
BEGIN
    PERFORM outbox.create_destination('pgtap_priv_a', 'external');
    PERFORM outbox.create_destination('pgtap_priv_b', 'external');
    PERFORM outbox.subscribe('pgtap_priv_a', 'routed.>');
    PERFORM outbox.subscribe('pgtap_priv_b', 'routed.*');
END $$;

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
SELECT is(pg_temp.as_role('outbox_pgtap_app', $$SELECT outbox.save('routed.one', '{"a": 1}'::jsonb, 'k')$$), 'ok',
          'the app role can save a message that subscriptions route (with only the documented grants)');
SELECT is(pg_temp.as_role('outbox_pgtap_app',
                          $$INSERT INTO outbox.messages (topic, payload)
                            SELECT 'routed.two.deep', convert_to(n::text, 'UTF8') FROM generate_series(1, 2) AS n$$), 'ok',
          'the app role can batch-insert messages that subscriptions route');
SELECT results_eq(
    $$SELECT m.topic, (SELECT array_agg(d.name ORDER BY d.name) FROM outbox.destination d WHERE d.id = ANY (m.destinations))
      FROM outbox.messages m WHERE m.topic LIKE 'routed.%' ORDER BY m.id$$,
    $$VALUES ('routed.one'::text, ARRAY['pgtap_priv_a', 'pgtap_priv_b']::text[]),
             ('routed.two.deep', ARRAY['pgtap_priv_a']), ('routed.two.deep', ARRAY['pgtap_priv_a'])$$,
    'the app role''s messages are routed by the subscriptions (fan-out for routed.one)');
SELECT results_eq(
    $$SELECT topic, count(*) FROM outbox.messages WHERE topic NOT LIKE 'routed.%' GROUP BY topic ORDER BY topic$$,
    $$VALUES ('app'::text, 3::bigint), ('app_batch', 4)$$,
    'the app role''s saves and inserts are stored');
SELECT is((SELECT count(*) FROM outbox.messages WHERE topic NOT LIKE 'routed.%' AND destinations IS NOT NULL), 0::bigint,
          'and those no subscription matches go to the default destination (destinations NULL)');
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
SELECT is(pg_temp.as_role('outbox_pgtap_app', $$INSERT INTO outbox.messages (topic, payload, destinations) VALUES ('t', '\x00', '{1}')$$),
          '42501', 'the app role cannot choose a message''s destinations');
SELECT is(pg_temp.as_role('outbox_pgtap_app', $$SELECT * FROM outbox.destinations$$), '42501',
          'the app role cannot read outbox.destinations');
SELECT is(pg_temp.as_role('outbox_pgtap_app', $$SELECT * FROM outbox.deliveries$$), '42501',
          'the app role cannot read outbox.deliveries');
SELECT is(pg_temp.as_role('outbox_pgtap_app', $$SELECT * FROM outbox.subscription$$), '42501',
          'the app role cannot read outbox.subscription');
SELECT is(pg_temp.as_role('outbox_pgtap_app', $$SELECT outbox.subscribe('pgtap_priv_a', 'app.>')$$), '42501',
          'the app role cannot subscribe');
SELECT is(pg_temp.as_role('outbox_pgtap_app', $$SELECT outbox.create_destination('pgtap_priv_c', 'external')$$), '42501',
          'the app role cannot create a destination');
SELECT is(pg_temp.as_role('outbox_pgtap_app', $$SELECT * FROM outbox.fetch_pending(10, 'pgtap_priv_a')$$), '42501',
          'the app role cannot call fetch_pending for a destination');
SELECT is((SELECT count(*) FROM outbox.messages WHERE status = 'pending' AND topic NOT LIKE 'routed.%'), 8::bigint,
          'the app role''s attempts changed no message');
SELECT is((SELECT string_agg(d.name || ':' || array_to_string(ARRAY(SELECT pattern FROM outbox.subscription s
                                                                     WHERE s.destination_id = d.id ORDER BY 1), ','), ' ' ORDER BY d.name)
           FROM outbox.destination d WHERE d.name LIKE 'pgtap_priv_%'),
          'pgtap_priv_a:routed.> pgtap_priv_b:routed.*', 'nor any destination or subscription');
-- The relay part below counts the default destination's messages only.
DELETE FROM outbox.messages WHERE topic LIKE 'routed.%';

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
SELECT is(pg_temp.value_as('outbox_pgtap_relay', format('SELECT outbox.mark_processed(%L)::text',
                                  (SELECT id FROM relay_claim ORDER BY id LIMIT 1 OFFSET 2))), '1',
          'the relay role can call mark_processed with one untyped id');

-- ================================================================ a monitoring role

GRANT USAGE ON SCHEMA outbox TO outbox_pgtap_monitor;
GRANT SELECT ON outbox.stats TO outbox_pgtap_monitor;

SELECT is(pg_temp.value_as('outbox_pgtap_monitor', $$SELECT pending::text FROM outbox.stats WHERE topic IS NULL$$), '5',
          'a role with USAGE and SELECT on outbox.stats can read the stats');
SELECT is(pg_temp.as_role('outbox_pgtap_monitor', $$SELECT * FROM outbox.messages$$), '42501',
          'but cannot read the messages themselves');

SELECT * FROM finish();
ROLLBACK;
