-- bad_input.sql: hostile and extreme input to save() and the store API.
--
-- Every input either is stored exactly as given (read back byte for byte)
-- or raises an ERROR with a specific SQLSTATE, and an ERROR leaves nothing
-- behind (the row count is unchanged).  Strings that look like SQL
-- injection are stored verbatim and the table is still there afterwards.
--
-- Runs inside one transaction that is rolled back; the relay worker of the
-- pgtap suite runs in database "postgres", not here, so nothing is published.
BEGIN;
SELECT plan(85);

-- The NOTIFY channel limit (63 bytes) applies under these settings.
SELECT is(current_setting('outbox.publisher') || '/' || current_setting('outbox.notify_channel'), 'notify/',
          'the suite runs with outbox.publisher = notify and no outbox.notify_channel');

-- outcome(sql): 'ok', or the SQLSTATE sql failed with; an error that left
-- the row count of outbox.messages changed is reported as such.
CREATE FUNCTION pg_temp.outcome(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    before bigint := (SELECT count(*) FROM outbox.messages);
    state text := 'ok';
BEGIN
    BEGIN
        EXECUTE sql;
    EXCEPTION WHEN OTHERS THEN
        state := SQLSTATE;
    END;
    IF state <> 'ok' AND (SELECT count(*) FROM outbox.messages) <> before THEN
        RETURN state || ' but the row count changed';
    END IF;
    RETURN state;
END
$$;

-- Saved messages by name, to read them back.
CREATE TEMP TABLE saved (name text PRIMARY KEY, id uuid NOT NULL) ON COMMIT DROP;

CREATE TEMP TABLE start_count ON COMMIT DROP AS SELECT count(*) AS n FROM outbox.messages;

-- ================================================================ topics

SELECT is(pg_temp.outcome($$SELECT outbox.save(NULL, 'x'::text)$$), '22004', 'NULL topic: 22004');
SELECT is(pg_temp.outcome($$SELECT outbox.save('', 'x'::text)$$), '22023', 'empty topic: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.save(repeat('t', 10000), 'x'::text)$$), '22001',
          '10,000-byte topic: 22001');
SELECT throws_ok($$SELECT outbox.save(repeat('t', 10000), 'x'::text)$$, '22001',
                 'outbox message topic is too long', 'the 22001 error says the topic is too long');

-- A text value cannot hold invalid UTF-8 in a UTF8 database: making one
-- fails before save() is even called, so save() never sees such a topic.
SELECT is(pg_temp.outcome($$SELECT outbox.save(convert_from('\xff'::bytea, 'UTF8'), 'x'::text)$$), '22021',
          'a topic of invalid UTF-8 cannot be made (22021 from convert_from), nothing is stored');
SELECT is(pg_temp.outcome($$SELECT outbox.save(convert_from('\x61c3'::bytea, 'UTF8'), 'x'::text)$$), '22021',
          'a topic ending in a truncated UTF-8 sequence cannot be made (22021)');
-- Nor can it hold NUL.
SELECT is(pg_temp.outcome($$SELECT outbox.save('a' || chr(0), 'x'::text)$$), '54000',
          'a topic with a NUL character cannot be made (54000 from chr), nothing is stored');

-- Multibyte topics: the limits count bytes, not characters.
-- '€' is 3 bytes in UTF-8, '😀' 4 bytes.
SELECT is(octet_length(repeat('€', 21)), 63, '21 euro signs are 63 bytes');
SELECT is(pg_temp.outcome($$INSERT INTO saved SELECT 'euro63', outbox.save(repeat('€', 21), 'x'::text)$$), 'ok',
          'a 63-byte topic of 3-byte characters is accepted under notify routing');
SELECT is(pg_temp.outcome($$SELECT outbox.save(repeat('€', 21) || 'a', 'x'::text)$$), '22023',
          'a 64-byte topic of 22 characters is rejected under notify routing (22023)');
SELECT is(pg_temp.outcome($$INSERT INTO saved SELECT 'emoji63', outbox.save(repeat('😀', 15) || 'abc', 'x'::text)$$), 'ok',
          'a 63-byte topic of 4-byte characters is accepted');
SELECT is(pg_temp.outcome($$SELECT outbox.save(repeat('😀', 16), 'x'::text)$$), '22023',
          'a 64-byte topic of 16 four-byte characters is rejected (22023)');
SELECT is(pg_temp.outcome($$SELECT outbox.save(repeat('😀', 64), 'x'::text)$$), '22001',
          'a 256-byte topic of 64 four-byte characters is rejected as too long (22001)');
SELECT is((SELECT topic FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'euro63')),
          repeat('€', 21), 'the multibyte topic is stored unchanged');
SELECT is((SELECT topic FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'emoji63')),
          repeat('😀', 15) || 'abc', 'the 4-byte-character topic is stored unchanged');

-- Topics with quotes, newlines, control characters and SQL: stored verbatim.
INSERT INTO saved VALUES
    ('inj_topic', outbox.save('"; DROP TABLE outbox.messages; --', 'x'::text)),
    ('quote_topic', outbox.save($t$it's a "quoted" \topic$t$, 'x'::text)),
    ('newline_topic', outbox.save(E'line1\nline2\r\n\ttabbed', 'x'::text)),
    ('space_topic', outbox.save(' ', 'x'::text)),
    ('control_topic', outbox.save(E'bell\x07esc\x1bdel\x7f', 'x'::text));
SELECT is((SELECT topic FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'inj_topic')),
          '"; DROP TABLE outbox.messages; --', 'an SQL-injection-looking topic is stored verbatim');
SELECT is((SELECT topic FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'quote_topic')),
          $t$it's a "quoted" \topic$t$, 'a topic with quotes and a backslash is stored verbatim');
SELECT is((SELECT topic FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'newline_topic')),
          E'line1\nline2\r\n\ttabbed', 'a topic with newlines and tabs is stored verbatim');
SELECT is((SELECT topic FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'space_topic')),
          ' ', 'a topic of one space is a topic (not empty) and stored as is');
SELECT is((SELECT topic FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'control_topic')),
          E'bell\x07esc\x1bdel\x7f', 'a topic with control characters is stored verbatim');
SELECT has_table('outbox', 'messages', 'outbox.messages still exists after the injection-looking topic');

-- ================================================================ keys

INSERT INTO saved VALUES
    ('inj_key', outbox.save('k', 'x'::text, $k$'; DELETE FROM outbox.messages; --$k$)),
    ('nl_key', outbox.save('k', 'x'::text, E'a\nb"c''d')),
    ('mb_key', outbox.save('k', 'x'::text, repeat('€', 341) || 'a'));
SELECT is((SELECT key FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'inj_key')),
          $k$'; DELETE FROM outbox.messages; --$k$, 'an SQL-injection-looking key is stored verbatim');
SELECT is((SELECT key FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'nl_key')),
          E'a\nb"c''d', 'a key with a newline and quotes is stored verbatim');
SELECT is((SELECT octet_length(key) FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'mb_key')),
          1024, 'a 1024-byte key of 3-byte characters is accepted');
SELECT is(pg_temp.outcome($$SELECT outbox.save('k', 'x'::text, repeat('€', 342))$$), '22001',
          'a 1026-byte key of 342 three-byte characters is rejected (22001)');
SELECT is(pg_temp.outcome($$SELECT outbox.save('k', 'x'::text, repeat('k', 100000))$$), '22001',
          'a 100,000-byte key is rejected (22001)');

-- ================================================================ payloads

-- Empty payloads of each type.
SELECT is(pg_temp.outcome($$INSERT INTO saved SELECT 'empty_bytea', outbox.save('p', ''::bytea)$$), 'ok',
          'an empty bytea payload is accepted');
SELECT is(pg_temp.outcome($$INSERT INTO saved SELECT 'empty_text', outbox.save('p', ''::text)$$), 'ok',
          'an empty text payload is accepted');
SELECT is(pg_temp.outcome($$SELECT outbox.save('p', ''::jsonb)$$), '22P02',
          'an empty jsonb payload cannot be made (22P02 from the jsonb cast)');
SELECT is(pg_temp.outcome($$INSERT INTO saved SELECT 'json_empty_string', outbox.save('p', '""'::jsonb)$$), 'ok',
          'a jsonb empty string payload is accepted');
SELECT is((SELECT payload FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'empty_bytea')),
          ''::bytea, 'the empty bytea payload is stored as zero bytes');
SELECT is((SELECT payload FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'empty_text')),
          ''::bytea, 'the empty text payload is stored as zero bytes');
SELECT is((SELECT payload FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'json_empty_string')),
          '\x2222'::bytea, 'the jsonb "" payload is stored as its two-character JSON text');
SELECT is(pg_temp.outcome($$SELECT outbox.save('p', NULL::bytea)$$), '22004', 'NULL bytea payload: 22004');

-- One byte, NUL bytes, invalid UTF-8: bytea is stored as is.
INSERT INTO saved VALUES
    ('one_byte', outbox.save('p', '\x41'::bytea)),
    ('nul_bytes', outbox.save('p', '\x000100ff00'::bytea)),
    ('bad_utf8', outbox.save('p', '\xfffec328a080'::bytea)),
    ('overlong_utf8', outbox.save('p', '\xc0af'::bytea)),
    ('surrogate_utf8', outbox.save('p', '\xeda080'::bytea));
SELECT is((SELECT payload FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'one_byte')),
          '\x41'::bytea, 'a one-byte payload is stored');
SELECT is((SELECT payload FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'nul_bytes')),
          '\x000100ff00'::bytea, 'a payload with NUL bytes is stored byte for byte');
SELECT is((SELECT payload FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'bad_utf8')),
          '\xfffec328a080'::bytea, 'a payload of invalid UTF-8 is stored as is');
SELECT is((SELECT payload FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'overlong_utf8')),
          '\xc0af'::bytea, 'a payload with an overlong UTF-8 sequence is stored as is');
SELECT is((SELECT payload FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'surrogate_utf8')),
          '\xeda080'::bytea, 'a payload with an encoded UTF-16 surrogate is stored as is');

-- Text payloads are stored as their UTF-8 bytes, whatever they contain.
INSERT INTO saved VALUES
    ('inj_payload', outbox.save('p', $p$Robert'); DROP TABLE outbox.messages;--$p$)),
    ('mb_payload', outbox.save('p', 'é€😀'::text)),
    ('nl_payload', outbox.save('p', E'a\nb\r\n\\"\x01'::text));
SELECT is((SELECT payload FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'inj_payload')),
          convert_to($p$Robert'); DROP TABLE outbox.messages;--$p$, 'UTF8'),
          'an SQL-injection-looking text payload is stored verbatim');
SELECT is((SELECT payload FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'mb_payload')),
          '\xc3a9e282acf09f9880'::bytea, 'a multibyte text payload is stored as its UTF-8 bytes');
SELECT is((SELECT payload FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'nl_payload')),
          convert_to(E'a\nb\r\n\\"\x01', 'UTF8'), 'a text payload with newlines, quotes and control characters is stored verbatim');
SELECT is(pg_temp.outcome($$SELECT outbox.save('p', convert_from('\xc328'::bytea, 'UTF8'))$$), '22021',
          'a text payload of invalid UTF-8 cannot be made (22021): use bytea for arbitrary bytes');

-- Deep nesting.  As text or bytea it is just bytes.
INSERT INTO saved VALUES
    ('nested_text', outbox.save('p', repeat('[', 10000) || repeat(']', 10000))),
    ('nested_bytea', outbox.save('p', convert_to(repeat('{"a":', 10000) || '1' || repeat('}', 10000), 'UTF8')));
SELECT is((SELECT payload FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'nested_text')),
          convert_to(repeat('[', 10000) || repeat(']', 10000), 'UTF8'),
          'a text payload of 10,000 nested arrays is stored verbatim');
SELECT is((SELECT octet_length(payload) FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'nested_bytea')),
          60001, 'a bytea payload of 10,000 nested objects is stored whole');
-- As jsonb, the server's JSON parser limits the depth (through the stack
-- depth check) before save() is called; within the limit save() stores it.
SELECT is(pg_temp.outcome($$INSERT INTO saved SELECT 'nested_jsonb', outbox.save('p', (repeat('[', 5000) || repeat(']', 5000))::jsonb)$$),
          'ok', 'a jsonb payload of 5,000 nested arrays is accepted');
SELECT is((SELECT payload FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'nested_jsonb')),
          convert_to(repeat('[', 5000) || repeat(']', 5000), 'UTF8'),
          'the 5,000-deep jsonb payload is stored as its JSON text');
SELECT is(pg_temp.outcome($$SELECT outbox.save('p', (repeat('[', 1000000) || repeat(']', 1000000))::jsonb)$$), '54001',
          'a jsonb payload nested 1,000,000 deep fails in the jsonb parser with 54001 (stack depth), nothing stored');

-- JSON-looking text with \u0000 is just text.
INSERT INTO saved VALUES ('u0000_text', outbox.save('p', '"\u0000"'::text));
SELECT is((SELECT payload FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'u0000_text')),
          convert_to('"\u0000"', 'UTF8'), 'a text payload holding the JSON escape \u0000 is stored verbatim');

-- 100 MiB, once, then rolled back.  (decode(repeat('ab', 50 * 1024 * 1024),
-- 'hex') would be 50 MiB; this is 100 MiB and cheaper to build.)  The
-- checksum is that of 104,857,600 bytes 'x' (0x78).  lz4 instead of the
-- default pglz only to make TOAST compression (and the test) faster.
SAVEPOINT big;
SET LOCAL default_toast_compression = lz4;
SELECT is(pg_temp.outcome($$INSERT INTO saved SELECT 'big', outbox.save('big', convert_to(repeat('x', 100 * 1024 * 1024), 'UTF8'))$$),
          'ok', 'a 100 MiB bytea payload is accepted');
SELECT is((SELECT octet_length(payload) FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'big')),
          104857600, 'the 100 MiB payload is stored with its full length');
SELECT is((SELECT md5(payload) FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'big')),
          '2cc945f75047a4b03baf9743067420b8', 'the 100 MiB payload is stored byte for byte (md5)');
ROLLBACK TO SAVEPOINT big;
SELECT is((SELECT count(*) FROM outbox.messages WHERE topic = 'big'), 0::bigint,
          'the 100 MiB message is gone after ROLLBACK TO SAVEPOINT');

-- ================================================================ headers

SELECT is(pg_temp.outcome($$SELECT outbox.save('h', 'x'::text, NULL, '["a", "b"]')$$), '22023', 'array headers: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.save('h', 'x'::text, NULL, '42')$$), '22023', 'number headers: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.save('h', 'x'::text, NULL, '{"n": 42}')$$), '22023', 'a number header value: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.save('h', 'x'::text, NULL, '{"a": {"b": "c"}}')$$), '22023', 'a nested object header value: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.save('h', 'x'::text, NULL, '{"a": ["b"]}')$$), '22023', 'an array header value: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.save('h', 'x'::text, NULL, '{"a": null}')$$), '22023', 'a JSON null header value: 22023');
SELECT is(pg_temp.outcome($$SELECT outbox.save('h', 'x'::text, NULL, 'null'::jsonb)$$), '22023', 'JSON null as headers: 22023');
SELECT throws_ok($$SELECT outbox.save('h', 'x'::text, NULL, '{"a": null}')$$, '22023', 'invalid outbox message headers',
                 'the headers error says what is wrong');

-- SQL NULL headers mean no headers.
INSERT INTO saved VALUES
    ('null_headers_text', outbox.save('h', 'x'::text, NULL, NULL)),
    ('null_headers_jsonb', outbox.save('h', '{}'::jsonb, NULL, NULL)),
    ('null_headers_bytea', outbox.save('h', '\x00'::bytea, headers => NULL));
SELECT is((SELECT headers FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'null_headers_text')),
          '{}'::jsonb, 'SQL NULL headers are stored as {} (text payload)');
SELECT is((SELECT headers FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'null_headers_jsonb')),
          '{"content-type": "application/json"}'::jsonb,
          'SQL NULL headers with a jsonb payload get just the content-type');
SELECT is((SELECT headers FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'null_headers_bytea')),
          '{}'::jsonb, 'SQL NULL headers are stored as {} (bytea payload)');

-- Hostile header names and values are data.
INSERT INTO saved VALUES
    ('inj_headers', outbox.save('h', 'x'::text, NULL,
        jsonb_build_object($h$x'); DROP TABLE outbox.messages; --$h$, E'v"\n\\\u0001', '', '', 'ключ', '値'))),
    ('many_headers', outbox.save('h', 'x'::text, NULL,
        (SELECT jsonb_object_agg('header-' || n, 'value-' || n) FROM generate_series(1, 10000) AS n)));
SELECT is((SELECT headers FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'inj_headers')),
          jsonb_build_object($h$x'); DROP TABLE outbox.messages; --$h$, E'v"\n\\\u0001', '', '', 'ключ', '値'),
          'headers with injection-looking, empty, control-character and non-ASCII names and values are stored verbatim');
SELECT is((SELECT (SELECT count(*) FROM jsonb_object_keys(headers)) FROM outbox.messages
           WHERE id = (SELECT id FROM saved WHERE name = 'many_headers')),
          10000::bigint, '10,000 header keys are accepted and stored');
SELECT is((SELECT headers ->> 'header-9999' FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'many_headers')),
          'value-9999', 'the 10,000-key headers keep their values');
SELECT is(pg_temp.outcome($$SELECT outbox.save('h', 'x'::text, NULL,
              (SELECT jsonb_object_agg('header-' || n, 'value-' || n) || '{"bad": 1}' FROM generate_series(1, 10000) AS n))$$),
          '22023', 'one non-string value among 10,001 headers: 22023');

-- The content-type check ignores letter case, also for odd names.
INSERT INTO saved VALUES ('ct_case', outbox.save('h', '{}'::jsonb, NULL, '{"CoNtEnT-TyPe": "application/x-custom"}'));
SELECT is((SELECT headers FROM outbox.messages WHERE id = (SELECT id FROM saved WHERE name = 'ct_case')),
          '{"CoNtEnT-TyPe": "application/x-custom"}'::jsonb,
          'a content-type header in odd letter case is kept and no second one is added');

-- ================================================================ after all that

SELECT has_table('outbox', 'messages', 'outbox.messages still exists');
SELECT is((SELECT count(*) FROM outbox.messages), (SELECT n FROM start_count) + (SELECT count(*) FROM saved),
          'exactly the accepted messages were stored: every rejected one left nothing behind');
SELECT is((SELECT count(*) FROM outbox.messages m JOIN saved s USING (id)), (SELECT count(*) FROM saved),
          'every accepted save is stored under the id it returned');
SELECT is((SELECT count(*) FROM outbox.messages m JOIN saved s USING (id) WHERE m.status <> 'pending'), 0::bigint,
          'every accepted message is pending');

-- ================================================================ the store API

SELECT is(pg_temp.outcome($$SELECT * FROM outbox.fetch_pending(-1)$$), '22023', 'fetch_pending(-1): 22023');
SELECT is(pg_temp.outcome($$SELECT * FROM outbox.fetch_pending(-2147483648)$$), '22023', 'fetch_pending(minimum int): 22023');
SELECT is((SELECT count(*) FROM outbox.fetch_pending(NULL)), 0::bigint, 'fetch_pending(NULL) returns nothing (strict)');
SELECT is((SELECT count(*) FROM outbox.messages WHERE status = 'processing'), 0::bigint,
          'the rejected fetch_pending calls claimed nothing');
-- A huge max_messages must not turn into a huge allocation: either it
-- works (claiming what there is) or it fails cleanly as a bad argument.
SELECT ok(pg_temp.outcome($$SELECT count(*) FROM outbox.fetch_pending(2147483647)$$) IN ('ok', '22023', '54000'),
          'fetch_pending(2147483647) works or raises a clean argument error, not an internal error');
SELECT ok(pg_temp.outcome($$SELECT count(*) FROM outbox.fetch_pending(20000000)$$) IN ('ok', '22023', '54000'),
          'fetch_pending(20,000,000) works or raises a clean argument error, not an internal error');
SELECT is(pg_temp.outcome($$SELECT outbox.mark_failed(gen_random_uuid(), repeat('e', 1000000))$$), 'ok',
          'mark_failed with a 1 MB error text for an unknown id is fine');
SELECT is(pg_temp.outcome($$SELECT outbox.mark_processed(VARIADIC ARRAY[NULL]::uuid[])$$), '22004',
          'mark_processed with a NULL id: 22004');
SELECT is(pg_temp.outcome($$SELECT outbox.mark_processed(VARIADIC '[5:6]={a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12}'::uuid[])$$),
          'ok', 'mark_processed with an array of odd bounds works');
SELECT is(pg_temp.outcome($$SELECT outbox.retry_failed(ARRAY[[gen_random_uuid()], [gen_random_uuid()]])$$), 'ok',
          'retry_failed with a two-dimensional array works');
SELECT is((SELECT count(*) FROM outbox.messages), (SELECT n FROM start_count) + (SELECT count(*) FROM saved),
          'the store API calls neither added nor removed messages');

SELECT * FROM finish();
ROLLBACK;
