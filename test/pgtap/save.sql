-- save.sql: outbox.save() in all its forms, message ids, and the batch path.
BEGIN;
SELECT plan(53);

-- Start from an empty outbox (rolled back at the end).
DELETE FROM outbox.messages;

-- Each save's returned id, by name.
CREATE TEMP TABLE saved (seq serial, name text PRIMARY KEY, id uuid) ON COMMIT DROP;

-- ---------------------------------------------------------------- forms

INSERT INTO saved (name, id) VALUES ('jsonb', outbox.save('orders', '{"b": [1, 2], "a": "x"}'::jsonb));
INSERT INTO saved (name, id) VALUES ('text', outbox.save('orders', 'héllo wörld'::text));
INSERT INTO saved (name, id) VALUES ('bytea', outbox.save('orders', '\x00ff'::bytea));
INSERT INTO saved (name, id) VALUES ('bytea_empty', outbox.save('orders', ''::bytea));
INSERT INTO saved (name, id) VALUES ('keyed', outbox.save('orders', '{}'::jsonb, 'order-42'));
INSERT INTO saved (name, id) VALUES ('key_null', outbox.save('orders', 'x'::text, NULL));
INSERT INTO saved (name, id) VALUES ('named_key', outbox.save('orders', '[1]'::jsonb, key => 'k-named'));
INSERT INTO saved (name, id) VALUES ('named_headers',
    outbox.save('orders', 'plain'::text, headers => '{"trace_id": "abc"}'));
INSERT INTO saved (name, id) VALUES ('named_all',
    outbox.save(topic => 'named', payload => '\xdeadbeef'::bytea, key => 'k', headers => '{"h": "v"}'));
INSERT INTO saved (name, id) VALUES ('positional_all',
    outbox.save('orders', '{"n": 1}'::jsonb, 'k2', '{"trace_id": "t"}'));
INSERT INTO saved (name, id) VALUES ('headers_null', outbox.save('orders', 'x'::text, 'k', NULL));
INSERT INTO saved (name, id) VALUES ('jsonb_headers_null', outbox.save('orders', '1'::jsonb, 'k', NULL));
INSERT INTO saved (name, id) VALUES ('ct_given',
    outbox.save('orders', '{"a": 1}'::jsonb, headers => '{"content-type": "application/cloudevents+json"}'));
INSERT INTO saved (name, id) VALUES ('ct_other_case',
    outbox.save('orders', '{"a": 1}'::jsonb, headers => '{"Content-Type": "text/plain"}'));
INSERT INTO saved (name, id) VALUES ('ct_upper',
    outbox.save('orders', '{"a": 1}'::jsonb, headers => '{"CONTENT-TYPE": "application/x"}'));
INSERT INTO saved (name, id) VALUES ('ct_lookalike',
    outbox.save('orders', '{"a": 1}'::jsonb, headers => '{"content-type-x": "no"}'));
INSERT INTO saved (name, id) VALUES ('jsonb_scalar', outbox.save('orders', '"just a string"'::jsonb));
INSERT INTO saved (name, id) VALUES ('unknown_literal', outbox.save('orders', 'untyped'));

SELECT is((SELECT count(*) FROM outbox.messages), (SELECT count(*) FROM saved),
          'every save stored exactly one row');
SELECT is((SELECT count(*) FROM saved s JOIN outbox.messages m USING (id)), (SELECT count(*) FROM saved),
          'every id save() returned is the id of a stored row');

-- Payload bytes
SELECT is((SELECT m.payload FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'jsonb'),
          convert_to('{"a": "x", "b": [1, 2]}', 'UTF8'),
          'a jsonb payload is stored as the text of the jsonb value');
SELECT is((SELECT m.payload FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'jsonb_scalar'),
          convert_to('"just a string"', 'UTF8'),
          'a scalar jsonb payload is stored as its JSON text');
SELECT is((SELECT m.payload FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'text'),
          '\x68c3a96c6c6f2077c3b6726c64'::bytea,
          'a text payload is stored as its UTF-8 bytes');
SELECT is((SELECT m.payload FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'bytea'),
          '\x00ff'::bytea, 'a bytea payload is stored as-is, NUL byte included');
SELECT is((SELECT m.payload FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'bytea_empty'),
          ''::bytea, 'an empty bytea payload is stored as empty');
SELECT is((SELECT m.payload FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'named_all'),
          '\xdeadbeef'::bytea, 'a bytea payload passed by name is stored as-is');
SELECT is((SELECT m.payload FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'unknown_literal'),
          convert_to('untyped', 'UTF8'), 'an untyped literal payload is saved as text');

-- Keys
SELECT is((SELECT m.key FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'keyed'),
          'order-42', 'a positional key is stored');
SELECT is((SELECT m.key FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'key_null'),
          '', 'a NULL key is stored as the empty string');
SELECT is((SELECT m.key FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'jsonb'),
          '', 'an omitted key is stored as the empty string');
SELECT is((SELECT m.key FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'named_key'),
          'k-named', 'key => is stored');

-- Topics
SELECT is((SELECT m.topic FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'named_all'),
          'named', 'topic => is stored');
SELECT is((SELECT count(*) FROM outbox.messages WHERE topic = 'orders'),
          (SELECT count(*) FROM saved WHERE name <> 'named_all'), 'positional topics are stored');

-- Headers and the content-type of JSON payloads
SELECT is((SELECT m.headers FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'jsonb'),
          '{"content-type": "application/json"}'::jsonb,
          'a jsonb payload gets header content-type: application/json');
SELECT is((SELECT m.headers FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'text'),
          '{}'::jsonb, 'a text payload gets no headers');
SELECT is((SELECT m.headers FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'bytea'),
          '{}'::jsonb, 'a bytea payload gets no headers');
SELECT is((SELECT m.headers FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'named_headers'),
          '{"trace_id": "abc"}'::jsonb, 'headers => on a text payload are stored unchanged');
SELECT is((SELECT m.headers FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'named_all'),
          '{"h": "v"}'::jsonb, 'headers => on a bytea payload are stored unchanged');
SELECT is((SELECT m.headers FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'positional_all'),
          '{"trace_id": "t", "content-type": "application/json"}'::jsonb,
          'a jsonb payload keeps the given headers and adds content-type');
SELECT is((SELECT m.headers FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'headers_null'),
          '{}'::jsonb, 'NULL headers are stored as {}');
SELECT is((SELECT m.headers FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'jsonb_headers_null'),
          '{"content-type": "application/json"}'::jsonb,
          'NULL headers with a jsonb payload become just the content-type');
SELECT is((SELECT m.headers FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'ct_given'),
          '{"content-type": "application/cloudevents+json"}'::jsonb,
          'a given content-type is not overridden');
SELECT is((SELECT m.headers FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'ct_other_case'),
          '{"Content-Type": "text/plain"}'::jsonb,
          'a given Content-Type (other letter case) is not overridden nor duplicated');
SELECT is((SELECT m.headers FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'ct_upper'),
          '{"CONTENT-TYPE": "application/x"}'::jsonb,
          'a given CONTENT-TYPE is not overridden nor duplicated');
SELECT is((SELECT m.headers FROM outbox.messages m JOIN saved s USING (id) WHERE s.name = 'ct_lookalike'),
          '{"content-type-x": "no", "content-type": "application/json"}'::jsonb,
          'a header that only starts with content-type does not count as one');

-- The other columns of a saved message
SELECT results_eq(
    $$SELECT DISTINCT status, retries, last_error, processed_at, claimed_at, claimed_by
      FROM outbox.messages$$,
    $$VALUES ('pending'::outbox.message_status, 0, NULL::text, NULL::timestamptz, NULL::timestamptz, NULL::int)$$,
    'saved messages are pending, with no retries, error, processing time or claim');
SELECT is((SELECT count(*) FROM outbox.messages WHERE created_at = now() AND next_attempt_at <= clock_timestamp()),
          (SELECT count(*) FROM saved),
          'saved messages are created now and due at once');

-- ---------------------------------------------------------------- ids

-- Every id so far is a UUIDv7 whose time is now.
SELECT is((SELECT count(*) FROM outbox.messages
           WHERE substr(id::text, 15, 1) <> '7' OR substr(id::text, 20, 1) NOT IN ('8', '9', 'a', 'b')),
          0::bigint, 'saved ids are UUIDv7: version nibble 7, variant bits 10');
SELECT is((SELECT count(*) FROM outbox.messages
           WHERE abs(('x' || substr(replace(id::text, '-', ''), 1, 12))::bit(48)::bigint
                     - (extract(epoch FROM clock_timestamp()) * 1000)::bigint) > 60000),
          0::bigint, 'the timestamp of a saved id is the current time (within a minute)');
SELECT results_eq(
    $$SELECT id FROM outbox.messages m JOIN saved s USING (id) ORDER BY s.seq$$,
    $$SELECT id FROM outbox.messages ORDER BY id$$,
    'ids increase in the order save() was called');

-- 1000 saves in one statement return strictly increasing ids.
CREATE TEMP TABLE thousand ON COMMIT DROP AS
    SELECT n, outbox.save('bulk', n::text) AS id FROM generate_series(1, 1000) AS n;
SELECT is((SELECT count(DISTINCT id) FROM thousand), 1000::bigint,
          '1000 saves in one statement return 1000 distinct ids');
SELECT is((SELECT count(*) FROM (SELECT id, lag(id) OVER (ORDER BY n) AS prev FROM thousand) t
           WHERE prev IS NOT NULL AND id <= prev),
          0::bigint, '1000 saves in one statement return strictly increasing ids');
SELECT ok((SELECT id FROM thousand ORDER BY id LIMIT 1) > (SELECT id FROM saved ORDER BY id DESC LIMIT 1),
          'ids of a later statement are larger than all earlier ones');
SELECT is((SELECT count(*) FROM thousand
           WHERE substr(id::text, 15, 1) <> '7' OR substr(id::text, 20, 1) NOT IN ('8', '9', 'a', 'b')),
          0::bigint, 'the 1000 ids are all UUIDv7');
SELECT is((SELECT count(*) FROM thousand t JOIN outbox.messages m USING (id)
           WHERE m.payload = convert_to(t.n::text, 'UTF8')),
          1000::bigint, 'each of the 1000 rows holds the payload saved under its id');

-- next_id() on its own
SELECT ok(outbox.next_id() > (SELECT id FROM outbox.messages ORDER BY id DESC LIMIT 1),
          'outbox.next_id() is larger than every id saved before');
SELECT is((SELECT count(*) FROM (SELECT outbox.next_id() AS id FROM generate_series(1, 100)) t
           WHERE substr(id::text, 15, 1) = '7' AND substr(id::text, 20, 1) IN ('8', '9', 'a', 'b')),
          100::bigint, 'outbox.next_id() makes UUIDv7s');

-- ---------------------------------------------------------------- save from PL/pgSQL

CREATE TABLE pg_temp.orders (id int PRIMARY KEY, item text);
CREATE FUNCTION pg_temp.orders_to_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM outbox.save('order_created', to_jsonb(NEW), NEW.id::text);
    RETURN NEW;
END
$$;
CREATE TRIGGER orders_outbox AFTER INSERT ON pg_temp.orders
    FOR EACH ROW EXECUTE FUNCTION pg_temp.orders_to_outbox();
INSERT INTO pg_temp.orders VALUES (1, 'apple'), (2, 'pear');
SELECT results_eq(
    $$SELECT key, convert_from(payload, 'UTF8')::jsonb FROM outbox.messages
      WHERE topic = 'order_created' ORDER BY id$$,
    $$VALUES ('1', '{"id": 1, "item": "apple"}'::jsonb), ('2', '{"id": 2, "item": "pear"}'::jsonb)$$,
    'save() from a row trigger stores one message per row, in row order');

CREATE PROCEDURE pg_temp.place_order(order_id int) LANGUAGE plpgsql AS $$
DECLARE
    saved_id uuid;
BEGIN
    saved_id := outbox.save('from_procedure', jsonb_build_object('order', order_id), 'p');
    INSERT INTO saved (name, id) VALUES ('procedure', saved_id);
END
$$;
CALL pg_temp.place_order(7);
SELECT is((SELECT convert_from(m.payload, 'UTF8') FROM outbox.messages m JOIN saved s USING (id)
           WHERE s.name = 'procedure' AND m.topic = 'from_procedure'),
          '{"order": 7}', 'save() from a procedure stores the message under the id it returned');

DO $$
BEGIN
    INSERT INTO saved (name, id) VALUES ('do', outbox.save('from_do', 'in a DO block'::text));
END
$$;
SELECT is((SELECT convert_from(m.payload, 'UTF8') FROM outbox.messages m JOIN saved s USING (id)
           WHERE s.name = 'do' AND m.topic = 'from_do'),
          'in a DO block', 'save() from a DO block stores the message');

-- A save rolled back with its subtransaction leaves nothing.
SAVEPOINT before_rollback;
INSERT INTO saved (name, id) VALUES ('rolled_back', outbox.save('rolled_back', 'gone'::text));
ROLLBACK TO SAVEPOINT before_rollback;
SELECT is((SELECT count(*) FROM outbox.messages WHERE topic = 'rolled_back'), 0::bigint,
          'a save rolled back with its savepoint leaves no row');

-- ---------------------------------------------------------------- batch path

CREATE TEMP TABLE before_batch ON COMMIT DROP AS
    SELECT id AS max_id FROM outbox.messages ORDER BY id DESC LIMIT 1;
INSERT INTO outbox.messages (topic, payload, key, headers)
    SELECT 'batch', convert_to('item ' || n, 'UTF8'), 'k' || (n % 3), jsonb_build_object('n', n::text)
    FROM generate_series(1, 50) AS n;
SELECT is((SELECT count(*) FROM outbox.messages WHERE topic = 'batch'), 50::bigint,
          'INSERT ... SELECT into outbox.messages stores every row');
SELECT results_eq(
    $$SELECT DISTINCT status, retries, last_error, processed_at, claimed_at, claimed_by, created_at = now()
      FROM outbox.messages WHERE topic = 'batch'$$,
    $$VALUES ('pending'::outbox.message_status, 0, NULL::text, NULL::timestamptz, NULL::timestamptz, NULL::int, true)$$,
    'batch rows get the defaults: pending, 0 retries, no error or claim, created now');
SELECT is((SELECT count(*) FROM outbox.messages WHERE topic = 'batch' AND next_attempt_at <= clock_timestamp()),
          50::bigint, 'batch rows are due at once');
SELECT ok((SELECT id FROM outbox.messages WHERE topic = 'batch' ORDER BY id LIMIT 1) > (SELECT max_id FROM before_batch),
          'batch rows get ids larger than those of every earlier save');
SELECT is((SELECT array_agg(convert_from(payload, 'UTF8') ORDER BY id) FROM outbox.messages WHERE topic = 'batch'),
          (SELECT array_agg('item ' || n ORDER BY n) FROM generate_series(1, 50) AS n),
          'batch row ids increase in insertion order');
SELECT is((SELECT count(*) FROM outbox.messages WHERE topic = 'batch'
           AND (substr(id::text, 15, 1) <> '7' OR substr(id::text, 20, 1) NOT IN ('8', '9', 'a', 'b'))),
          0::bigint, 'batch row ids are UUIDv7');
SELECT is((SELECT headers FROM outbox.messages WHERE topic = 'batch' ORDER BY id LIMIT 1),
          '{"n": "1"}'::jsonb, 'batch rows keep their headers, without an added content-type');

INSERT INTO outbox.messages (topic, payload) VALUES ('batch_min', '\x01');
SELECT results_eq(
    $$SELECT key, headers, status FROM outbox.messages WHERE topic = 'batch_min'$$,
    $$VALUES (''::text, '{}'::jsonb, 'pending'::outbox.message_status)$$,
    'a batch row given only topic and payload gets key '''' and headers {}');
SELECT ok((SELECT id FROM outbox.messages WHERE topic = 'batch_min') >
          (SELECT id FROM outbox.messages WHERE topic = 'batch' ORDER BY id DESC LIMIT 1),
          'a later batch row gets a larger id');
SELECT ok(outbox.save('after_batch', 'x'::text) > (SELECT id FROM outbox.messages WHERE topic <> 'after_batch' ORDER BY id DESC LIMIT 1),
          'a save after the batch inserts gets a larger id than all of them');

SELECT * FROM finish();
ROLLBACK;
