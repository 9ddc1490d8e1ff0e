-- security.sql: what roles without grants and with the documented
-- application grants can and cannot do, and whether the store API can be
-- hijacked through the caller's search_path.
--
-- privileges.sql checks the ACLs and that the documented grants suffice;
-- this file attacks: every forbidden action is actually attempted and must
-- fail with 42501 and change nothing.  Roles and objects are created inside
-- the transaction and rolled back.
BEGIN;
SELECT plan(54);

CREATE ROLE outbox_sec_nobody NOLOGIN;
CREATE ROLE outbox_sec_app NOLOGIN;
CREATE ROLE outbox_sec_app_cols NOLOGIN;
CREATE ROLE outbox_sec_evil NOLOGIN;

-- The application grants README.md documents.
GRANT USAGE ON SCHEMA outbox TO outbox_sec_app;
GRANT EXECUTE ON FUNCTION outbox.save(text, jsonb, text, jsonb),
                          outbox.save(text, text, text, jsonb),
                          outbox.save(text, bytea, text, jsonb),
                          outbox.next_id(), outbox.valid_headers(jsonb) TO outbox_sec_app;
GRANT INSERT (id, topic, key, payload, headers) ON outbox.messages TO outbox_sec_app;

-- as_role(role, sql): 'ok' or the SQLSTATE sql failed with, run as role;
-- an error that left the row count of outbox.messages changed says so.
CREATE FUNCTION pg_temp.as_role(r text, sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    before bigint := (SELECT count(*) FROM outbox.messages);
    outcome text := 'ok';
BEGIN
    EXECUTE format('SET LOCAL ROLE %I', r);
    BEGIN
        EXECUTE sql;
    EXCEPTION WHEN OTHERS THEN
        outcome := SQLSTATE;
    END;
    RESET ROLE;
    IF outcome <> 'ok' AND (SELECT count(*) FROM outbox.messages) <> before THEN
        RETURN outcome || ' but the row count changed';
    END IF;
    RETURN outcome;
END
$$;

-- Someone else's message, with a secret in it.
CREATE TEMP TABLE secret ON COMMIT DROP AS
    SELECT outbox.save('payroll', 'salary: 1000000'::text, 'employee-1', '{"x-secret": "s3cr3t"}') AS id;
CREATE TEMP TABLE start_state ON COMMIT DROP AS
    SELECT count(*) AS n, string_agg(md5(m::text), ',' ORDER BY id) AS digest FROM outbox.messages m;
GRANT SELECT ON start_state TO PUBLIC;

-- ================================================================ a role without grants

SELECT is(pg_temp.as_role('outbox_sec_nobody', $$SELECT * FROM outbox.messages$$), '42501',
          'no grants: SELECT from outbox.messages fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_nobody', $$SELECT count(*) FROM outbox.messages$$), '42501',
          'no grants: even counting the messages fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_nobody', $$INSERT INTO outbox.messages (topic, payload) VALUES ('t', '\x00')$$), '42501',
          'no grants: INSERT fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_nobody', $$UPDATE outbox.messages SET status = 'processed'$$), '42501',
          'no grants: UPDATE fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_nobody', $$DELETE FROM outbox.messages$$), '42501',
          'no grants: DELETE fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_nobody', $$TRUNCATE outbox.messages$$), '42501',
          'no grants: TRUNCATE fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_nobody', $$SELECT outbox.save('t', '{}'::jsonb)$$), '42501',
          'no grants: save(jsonb) fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_nobody', $$SELECT outbox.save('t', 'x'::text)$$), '42501',
          'no grants: save(text) fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_nobody', $$SELECT outbox.save('t', '\x00'::bytea)$$), '42501',
          'no grants: save(bytea) fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_nobody', $$SELECT outbox.next_id()$$), '42501',
          'no grants: next_id() fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_nobody', $$SELECT * FROM outbox.fetch_pending(10)$$), '42501',
          'no grants: fetch_pending fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_nobody', format('SELECT outbox.mark_processed(%L)', (SELECT id FROM secret))), '42501',
          'no grants: mark_processed fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_nobody', format('SELECT outbox.mark_failed(%L, %L)', (SELECT id FROM secret), 'x')), '42501',
          'no grants: mark_failed fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_nobody', $$SELECT outbox.retry_failed()$$), '42501',
          'no grants: retry_failed fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_nobody', $$SELECT outbox.valid_headers('{}')$$), '42501',
          'no grants: valid_headers fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_nobody', $$SELECT * FROM outbox.stats$$), '42501',
          'no grants: outbox.stats fails with 42501');

-- ================================================================ the application role

SELECT is(pg_temp.as_role('outbox_sec_app', $$SELECT outbox.save('orders', '{"n": 1}'::jsonb)$$), 'ok',
          'app role: save works');
SELECT is(pg_temp.as_role('outbox_sec_app', $$INSERT INTO outbox.messages (topic, payload) VALUES ('orders', '\x01')$$), 'ok',
          'app role: the batch path works');

-- Reading, in every way that needs no SELECT grant on paper.
SELECT is(pg_temp.as_role('outbox_sec_app', $$SELECT payload FROM outbox.messages$$), '42501',
          'app role: SELECT fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_app', $$SELECT 1 FROM outbox.messages WHERE false$$), '42501',
          'app role: even a SELECT of no rows fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_app', $$INSERT INTO outbox.messages (topic, payload) VALUES ('t', '\x00') RETURNING *$$), '42501',
          'app role: INSERT ... RETURNING * fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_app', $$INSERT INTO outbox.messages (topic, payload) SELECT topic, payload FROM outbox.messages$$), '42501',
          'app role: INSERT ... SELECT FROM outbox.messages fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_app',
              format($$INSERT INTO outbox.messages (id, topic, payload) VALUES (%L, 't', '\x00')
                       ON CONFLICT (id) DO UPDATE SET topic = excluded.topic$$, (SELECT id FROM secret))), '42501',
          'app role: INSERT ... ON CONFLICT DO UPDATE fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_app', $$UPDATE outbox.messages SET status = 'pending' WHERE false$$), '42501',
          'app role: UPDATE fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_app', $$DELETE FROM outbox.messages WHERE false$$), '42501',
          'app role: DELETE fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_app', $$SELECT * FROM outbox.fetch_pending(1)$$), '42501',
          'app role: fetch_pending fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_app', $$SELECT * FROM outbox.stats$$), '42501',
          'app role: outbox.stats fails with 42501');
-- Planner statistics hold sample values; pg_stats hides them without SELECT.
ANALYZE outbox.messages;
SELECT is(pg_temp.as_role('outbox_sec_app',
              $q$DO $d$ BEGIN IF EXISTS (SELECT 1 FROM pg_stats WHERE schemaname = 'outbox') THEN
                  RAISE EXCEPTION USING ERRCODE = 'P0001'; END IF; END $d$$q$), 'ok',
          'app role: pg_stats shows nothing of outbox.messages after ANALYZE');
SELECT is(pg_temp.as_role('outbox_sec_app', $$SELECT * FROM pg_statistic$$), '42501',
          'app role: pg_statistic fails with 42501');

-- Changing the extension's objects.
SELECT is(pg_temp.as_role('outbox_sec_app', $$CREATE FUNCTION outbox.evil() RETURNS int LANGUAGE sql AS 'SELECT 1'$$), '42501',
          'app role: cannot create a function in schema outbox');
SELECT is(pg_temp.as_role('outbox_sec_app', $$CREATE TABLE outbox.evil (x int)$$), '42501',
          'app role: cannot create a table in schema outbox');
SELECT is(pg_temp.as_role('outbox_sec_app', $$ALTER TABLE outbox.messages DROP CONSTRAINT messages_headers_check$$), '42501',
          'app role: cannot alter outbox.messages');
SELECT is(pg_temp.as_role('outbox_sec_app', $$DROP TABLE outbox.messages$$), '42501',
          'app role: cannot drop outbox.messages');
SELECT is(pg_temp.as_role('outbox_sec_app',
              $$CREATE TRIGGER evil BEFORE INSERT ON outbox.messages FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()$$), '42501',
          'app role: cannot create a trigger on outbox.messages');
SELECT is(pg_temp.as_role('outbox_sec_app', $$CREATE OR REPLACE FUNCTION outbox.next_id() RETURNS uuid LANGUAGE sql AS 'SELECT gen_random_uuid()'$$), '42501',
          'app role: cannot replace outbox.next_id()');
SELECT is(pg_temp.as_role('outbox_sec_app', $$ALTER TYPE outbox.message_status ADD VALUE 'evil'$$), '42501',
          'app role: cannot alter outbox.message_status');

SELECT is((SELECT string_agg(md5(m::text), ',' ORDER BY id) FROM outbox.messages m WHERE id <= (SELECT id FROM secret)),
          (SELECT digest FROM start_state), 'the messages stored before are unchanged');
SELECT is((SELECT count(*) FROM pg_proc WHERE pronamespace = 'outbox'::regnamespace AND prosecdef), 0::bigint,
          'no function in schema outbox is SECURITY DEFINER');

-- With the documented grants the application can also write the internal
-- columns: a message saved as already processed is never published, and a
-- pending message that is due only at 'infinity' holds back every later
-- message of its key under per-key ordering (other applications' too).
SELECT is(pg_temp.as_role('outbox_sec_app', $$INSERT INTO outbox.messages (topic, payload, status) VALUES ('t', '\x00', 'processed')$$), '42501',
          'app role: cannot insert a message as already processed');
SELECT is(pg_temp.as_role('outbox_sec_app',
              $$INSERT INTO outbox.messages (topic, payload, key, next_attempt_at) VALUES ('t', '\x00', 'employee-1', 'infinity')$$), '42501',
          'app role: cannot insert a message that blocks its key forever');

-- The column-level grant suggested above is enough for save() and the
-- batch path.
GRANT USAGE ON SCHEMA outbox TO outbox_sec_app_cols;
GRANT EXECUTE ON FUNCTION outbox.save(text, jsonb, text, jsonb),
                          outbox.save(text, text, text, jsonb),
                          outbox.save(text, bytea, text, jsonb),
                          outbox.next_id(), outbox.valid_headers(jsonb) TO outbox_sec_app_cols;
GRANT INSERT (id, topic, key, payload, headers) ON outbox.messages TO outbox_sec_app_cols;
SELECT is(pg_temp.as_role('outbox_sec_app_cols', $$SELECT outbox.save('t', '{}'::jsonb, 'k', '{"a": "b"}')$$), 'ok',
          'column grant: save(jsonb) works');
SELECT is(pg_temp.as_role('outbox_sec_app_cols', $$SELECT outbox.save('t', '\x00'::bytea)$$), 'ok',
          'column grant: save(bytea) works');
SELECT is(pg_temp.as_role('outbox_sec_app_cols',
              $$INSERT INTO outbox.messages (topic, payload, key, headers) SELECT 't', '\x00', 'k', '{}' FROM generate_series(1, 3)$$), 'ok',
          'column grant: the batch path works');
SELECT is(pg_temp.as_role('outbox_sec_app_cols', $$INSERT INTO outbox.messages (topic, payload, status) VALUES ('t', '\x00', 'processed')$$), '42501',
          'column grant: inserting a status fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_app_cols', $$INSERT INTO outbox.messages (topic, payload, next_attempt_at) VALUES ('t', '\x00', 'infinity')$$), '42501',
          'column grant: inserting next_attempt_at fails with 42501');
SELECT is(pg_temp.as_role('outbox_sec_app_cols', $$INSERT INTO outbox.messages (topic, payload, claimed_by) VALUES ('t', '\x00', 1)$$), '42501',
          'column grant: inserting claimed_by fails with 42501');

-- ================================================================ search_path hijacking
--
-- A role that can create objects in a schema on the caller's search_path
-- (the owner of a database owns its schema public) defines an "=" for
-- outbox.message_status and a power(int, int): both match the store's
-- queries more exactly than the built-ins, so unless the queries pin their
-- operators and functions to pg_catalog, they run as whoever calls the
-- store API (or as the relay worker: see test/t/052_security.pl).

CREATE SCHEMA outbox_sec_evil AUTHORIZATION outbox_sec_evil;
GRANT USAGE ON SCHEMA outbox TO outbox_sec_evil;
CREATE TEMP TABLE hijacked (who name, what text) ON COMMIT DROP;
GRANT INSERT ON hijacked TO PUBLIC;
SET LOCAL ROLE outbox_sec_evil;
CREATE FUNCTION outbox_sec_evil.status_eq(a outbox.message_status, b outbox.message_status) RETURNS boolean
    LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO pg_temp.hijacked VALUES (current_user, 'status =');
    RETURN a::text = b::text;
END
$f$;
CREATE FUNCTION outbox_sec_evil.status_ne(a outbox.message_status, b outbox.message_status) RETURNS boolean
    LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO pg_temp.hijacked VALUES (current_user, 'status <>');
    RETURN a::text <> b::text;
END
$f$;
CREATE OPERATOR outbox_sec_evil.= (LEFTARG = outbox.message_status, RIGHTARG = outbox.message_status,
                                   FUNCTION = outbox_sec_evil.status_eq);
CREATE OPERATOR outbox_sec_evil.<> (LEFTARG = outbox.message_status, RIGHTARG = outbox.message_status,
                                    FUNCTION = outbox_sec_evil.status_ne);
CREATE FUNCTION outbox_sec_evil.power(a int, b int) RETURNS double precision LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO pg_temp.hijacked VALUES (current_user, 'power');
    RETURN pg_catalog.power(a::float8, b::float8);
END
$f$;
RESET ROLE;

-- hijack_count(sql): run sql with the evil schema first on search_path
-- (as a careless caller would have it) and return how many times the evil
-- objects ran.
CREATE FUNCTION pg_temp.hijack_count(sql text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    old_path text := current_setting('search_path');
    n bigint;
BEGIN
    DELETE FROM pg_temp.hijacked;
    PERFORM set_config('search_path', 'outbox_sec_evil, public', true);
    BEGIN
        EXECUTE sql;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'hijack_count: % failed: % %', sql, SQLSTATE, SQLERRM;
    END;
    PERFORM set_config('search_path', old_path, true);
    SELECT count(*) INTO n FROM pg_temp.hijacked;
    RETURN n;
END
$$;

-- The trap works: a plain query under that search_path runs the evil "=".
SELECT cmp_ok(pg_temp.hijack_count($$SELECT count(*) FROM outbox.messages WHERE status = 'pending'$$), '>', 0::bigint,
              'the evil "=" does capture a careless query (the trap is armed)');

-- save() and the batch path run no operator the caller could capture.
SELECT is(pg_temp.hijack_count($$SELECT outbox.save('t', '{}'::jsonb, 'k', '{"a": "b"}')$$), 0::bigint,
          'save() runs none of the caller''s operators or functions');
SELECT is(pg_temp.hijack_count($$INSERT INTO outbox.messages (topic, payload) VALUES ('t', '\x00')$$), 0::bigint,
          'the batch path runs none of the caller''s operators or functions');

CREATE TEMP TABLE claimed ON COMMIT DROP AS SELECT NULL::uuid AS id;
SELECT is(pg_temp.hijack_count($$INSERT INTO claimed SELECT id FROM outbox.fetch_pending(2)$$), 0::bigint,
          'fetch_pending() runs none of the caller''s operators or functions');
SELECT is(pg_temp.hijack_count(format('SELECT outbox.mark_processed(%L)', (SELECT id FROM claimed WHERE id IS NOT NULL ORDER BY id LIMIT 1))), 0::bigint,
          'mark_processed() runs none of the caller''s operators or functions');
SELECT is(pg_temp.hijack_count(format('SELECT outbox.mark_failed(%L, %L)', (SELECT id FROM claimed WHERE id IS NOT NULL ORDER BY id DESC LIMIT 1), 'boom')), 0::bigint,
          'mark_failed() runs none of the caller''s operators or functions');
SELECT is(pg_temp.hijack_count($$SELECT outbox.retry_failed()$$), 0::bigint,
          'retry_failed() runs none of the caller''s operators or functions');
SELECT is((SELECT count(*) FROM claimed WHERE id IS NOT NULL), 2::bigint,
          'fetch_pending() under the hostile search_path still claimed two messages');

SELECT * FROM finish();
ROLLBACK;
