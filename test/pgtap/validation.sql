-- validation.sql: bad input to save() and to the batch path is rejected
-- with the documented SQLSTATE, and nothing is stored.
BEGIN;
SELECT plan(76);

-- The topic length limit of the notify publisher applies under the
-- defaults this suite runs with.
SELECT is(current_setting('outbox.publisher'), 'notify', 'the suite runs with outbox.publisher = notify');
SELECT is(current_setting('outbox.notify_channel'), '', 'the suite runs with outbox.notify_channel unset');

CREATE TEMP TABLE before_count ON COMMIT DROP AS SELECT count(*) AS n FROM outbox.messages;

-- ---------------------------------------------------------------- save(): NULLs (22004)

SELECT throws_ok($$SELECT outbox.save(NULL, '{}'::jsonb)$$, '22004', NULL,
                 'save(NULL topic, jsonb) raises 22004');
SELECT throws_ok($$SELECT outbox.save(NULL, 'x'::text)$$, '22004', NULL,
                 'save(NULL topic, text) raises 22004');
SELECT throws_ok($$SELECT outbox.save(NULL, '\x00'::bytea)$$, '22004', NULL,
                 'save(NULL topic, bytea) raises 22004');
SELECT throws_ok($$SELECT outbox.save(NULL::text, NULL::text)$$, '22004', NULL,
                 'save(NULL topic, NULL payload) raises 22004');
SELECT throws_ok($$SELECT outbox.save('t', NULL::jsonb)$$, '22004', NULL,
                 'save(topic, NULL jsonb) raises 22004');
SELECT throws_ok($$SELECT outbox.save('t', NULL::text)$$, '22004', NULL,
                 'save(topic, NULL text) raises 22004');
SELECT throws_ok($$SELECT outbox.save('t', NULL::bytea)$$, '22004', NULL,
                 'save(topic, NULL bytea) raises 22004');
SELECT throws_ok($$SELECT outbox.save(topic => 't', payload => NULL::bytea, key => 'k', headers => '{}')$$,
                 '22004', NULL, 'save(payload => NULL) raises 22004');
SELECT throws_ok($$SELECT outbox.save(NULL, '{}'::jsonb)$$, '22004', 'outbox message topic must not be null',
                 'the NULL-topic error names the problem');

-- ---------------------------------------------------------------- save(): empty topic (22023)

SELECT throws_ok($$SELECT outbox.save('', '{}'::jsonb)$$, '22023', NULL,
                 'save(empty topic, jsonb) raises 22023');
SELECT throws_ok($$SELECT outbox.save('', 'x'::text)$$, '22023', NULL,
                 'save(empty topic, text) raises 22023');
SELECT throws_ok($$SELECT outbox.save('', '\x00'::bytea)$$, '22023', NULL,
                 'save(empty topic, bytea) raises 22023');

-- ---------------------------------------------------------------- save(): topic too long (22001)

SELECT throws_ok($$SELECT outbox.save(repeat('a', 256), '{}'::jsonb)$$, '22001', NULL,
                 'save(256-byte topic, jsonb) raises 22001');
SELECT throws_ok($$SELECT outbox.save(repeat('a', 256), 'x'::text)$$, '22001', NULL,
                 'save(256-byte topic, text) raises 22001');
SELECT throws_ok($$SELECT outbox.save(repeat('a', 256), '\x00'::bytea)$$, '22001', NULL,
                 'save(256-byte topic, bytea) raises 22001');
SELECT throws_ok($$SELECT outbox.save(repeat('é', 128), 'x'::text)$$, '22001', NULL,
                 'save(topic of 128 characters but 256 bytes) raises 22001: the limit is in bytes');
SELECT throws_ok($$SELECT outbox.save(repeat('a', 10000), 'x'::text)$$, '22001', NULL,
                 'save(10000-byte topic) raises 22001');

-- ---------------------------------------------------------------- save(): topic not a NOTIFY channel (22023)

SELECT throws_ok($$SELECT outbox.save(repeat('a', 64), '{}'::jsonb)$$, '22023', NULL,
                 'save(64-byte topic, jsonb) raises 22023 under the notify publisher');
SELECT throws_ok($$SELECT outbox.save(repeat('a', 64), 'x'::text)$$, '22023', NULL,
                 'save(64-byte topic, text) raises 22023 under the notify publisher');
SELECT throws_ok($$SELECT outbox.save(repeat('a', 64), '\x00'::bytea)$$, '22023', NULL,
                 'save(64-byte topic, bytea) raises 22023 under the notify publisher');
SELECT throws_ok($$SELECT outbox.save(repeat('a', 255), 'x'::text)$$, '22023', NULL,
                 'save(255-byte topic) raises 22023 under the notify publisher');
SELECT throws_ok($$SELECT outbox.save(repeat('é', 32), 'x'::text)$$, '22023', NULL,
                 'save(topic of 32 characters but 64 bytes) raises 22023: the NOTIFY limit is in bytes');

-- ---------------------------------------------------------------- save(): bad headers (22023)

SELECT throws_ok($$SELECT outbox.save('t', 'x'::text, NULL, '[]')$$, '22023', NULL,
                 'headers [] raise 22023');
SELECT throws_ok($$SELECT outbox.save('t', 'x'::text, NULL, '[{"a": "b"}]')$$, '22023', NULL,
                 'headers as an array of objects raise 22023');
SELECT throws_ok($$SELECT outbox.save('t', 'x'::text, NULL, '"a string"')$$, '22023', NULL,
                 'headers as a JSON string raise 22023');
SELECT throws_ok($$SELECT outbox.save('t', 'x'::text, NULL, '1')$$, '22023', NULL,
                 'headers as a JSON number raise 22023');
SELECT throws_ok($$SELECT outbox.save('t', 'x'::text, NULL, 'true')$$, '22023', NULL,
                 'headers as a JSON boolean raise 22023');
SELECT throws_ok($$SELECT outbox.save('t', 'x'::text, NULL, 'null'::jsonb)$$, '22023', NULL,
                 'headers as JSON null raise 22023');
SELECT throws_ok($$SELECT outbox.save('t', 'x'::text, NULL, '{"a": 1}')$$, '22023', NULL,
                 'a number header value raises 22023');
SELECT throws_ok($$SELECT outbox.save('t', 'x'::text, NULL, '{"a": null}')$$, '22023', NULL,
                 'a null header value raises 22023');
SELECT throws_ok($$SELECT outbox.save('t', 'x'::text, NULL, '{"a": true}')$$, '22023', NULL,
                 'a boolean header value raises 22023');
SELECT throws_ok($$SELECT outbox.save('t', 'x'::text, NULL, '{"a": {"b": "c"}}')$$, '22023', NULL,
                 'an object header value raises 22023');
SELECT throws_ok($$SELECT outbox.save('t', 'x'::text, NULL, '{"a": ["x"]}')$$, '22023', NULL,
                 'an array header value raises 22023');
SELECT throws_ok($$SELECT outbox.save('t', 'x'::text, NULL, '{"good": "x", "bad": 2}')$$, '22023', NULL,
                 'one bad header value among good ones raises 22023');
SELECT throws_ok($$SELECT outbox.save('t', '{}'::jsonb, headers => '{"a": 1}')$$, '22023', NULL,
                 'bad headers with a jsonb payload raise 22023');
SELECT throws_ok($$SELECT outbox.save('t', '{}'::jsonb, headers => '[]')$$, '22023', NULL,
                 'non-object headers with a jsonb payload raise 22023');
SELECT throws_ok($$SELECT outbox.save('t', '\x00'::bytea, headers => '{"a": 1}')$$, '22023', NULL,
                 'bad headers with a bytea payload raise 22023');
SELECT throws_ok($$SELECT outbox.save('t', '{}'::jsonb, headers => '{"content-type": 1}')$$, '22023', NULL,
                 'a non-string content-type header raises 22023');

-- ---------------------------------------------------------------- save(): key too long (22001)

SELECT throws_ok($$SELECT outbox.save('t', 'x'::text, repeat('k', 1025))$$, '22001', NULL,
                 'save(text) with a 1025-byte key raises 22001');
SELECT throws_ok($$SELECT outbox.save('t', '{}'::jsonb, repeat('k', 1025))$$, '22001', NULL,
                 'save(jsonb) with a 1025-byte key raises 22001');
SELECT throws_ok($$SELECT outbox.save('t', '\x00'::bytea, key => repeat('k', 1025))$$, '22001', NULL,
                 'save(bytea) with a 1025-byte key raises 22001');
SELECT throws_ok($$SELECT outbox.save('t', 'x'::text, repeat('é', 513))$$, '22001', NULL,
                 'a key of 513 characters but 1026 bytes raises 22001: the limit is in bytes');

SELECT is((SELECT count(*) FROM outbox.messages), (SELECT n FROM before_count),
          'no rejected save stored anything');

-- ---------------------------------------------------------------- save(): the limits themselves pass

SELECT lives_ok($$SELECT outbox.save(repeat('a', 63), 'x'::text)$$, 'a 63-byte topic is accepted');
SELECT lives_ok($$SELECT outbox.save('t', 'x'::text, repeat('k', 1024))$$, 'a 1024-byte key is accepted');
SELECT lives_ok($$SELECT outbox.save('t', 'x'::text, repeat('é', 512))$$, 'a key of 512 two-byte characters is accepted');
SELECT lives_ok($$SELECT outbox.save('t', ''::text)$$, 'an empty text payload is accepted');
SELECT is((SELECT count(*) FROM outbox.messages), (SELECT n + 4 FROM before_count),
          'the accepted saves stored one row each');

-- ---------------------------------------------------------------- valid_headers()

SELECT is(outbox.valid_headers('{}'), true, 'valid_headers({}) is true');
SELECT is(outbox.valid_headers('{"a": "b", "c": ""}'), true, 'valid_headers of string values is true');
SELECT is(outbox.valid_headers('[]'), false, 'valid_headers([]) is false');
SELECT is(outbox.valid_headers('"x"'), false, 'valid_headers of a scalar is false');
SELECT is(outbox.valid_headers('{"a": 1}'), false, 'valid_headers of a number value is false');
SELECT is(outbox.valid_headers('{"a": {"b": "c"}}'), false, 'valid_headers of a nested object is false');

-- ---------------------------------------------------------------- batch path: CHECK constraints (23514)

TRUNCATE before_count;
INSERT INTO before_count SELECT count(*) FROM outbox.messages;

SELECT throws_ok($$INSERT INTO outbox.messages (topic, payload) VALUES ('', '\x00')$$, '23514', NULL,
                 'batch insert with an empty topic raises 23514');
SELECT throws_ok($$INSERT INTO outbox.messages (topic, payload) VALUES (repeat('a', 256), '\x00')$$,
                 '23514', NULL, 'batch insert with a 256-byte topic raises 23514');
SELECT throws_ok($$INSERT INTO outbox.messages (topic, payload) VALUES (repeat('é', 128), '\x00')$$,
                 '23514', NULL, 'batch insert with a topic of 256 bytes in 128 characters raises 23514');
SELECT throws_ok($$INSERT INTO outbox.messages (topic, payload, key) VALUES ('t', '\x00', repeat('k', 1025))$$,
                 '23514', NULL, 'batch insert with a 1025-byte key raises 23514');
SELECT throws_ok($$INSERT INTO outbox.messages (topic, payload, key) VALUES ('t', '\x00', repeat('é', 513))$$,
                 '23514', NULL, 'batch insert with a key of 1026 bytes in 513 characters raises 23514');
SELECT throws_ok($$INSERT INTO outbox.messages (topic, payload, headers) VALUES ('t', '\x00', '[]')$$,
                 '23514', NULL, 'batch insert with array headers raises 23514');
SELECT throws_ok($$INSERT INTO outbox.messages (topic, payload, headers) VALUES ('t', '\x00', '"s"')$$,
                 '23514', NULL, 'batch insert with scalar headers raises 23514');
SELECT throws_ok($$INSERT INTO outbox.messages (topic, payload, headers) VALUES ('t', '\x00', 'null')$$,
                 '23514', NULL, 'batch insert with JSON null headers raises 23514');
SELECT throws_ok($$INSERT INTO outbox.messages (topic, payload, headers) VALUES ('t', '\x00', '{"a": 1}')$$,
                 '23514', NULL, 'batch insert with a number header value raises 23514');
SELECT throws_ok($$INSERT INTO outbox.messages (topic, payload, headers) VALUES ('t', '\x00', '{"a": null}')$$,
                 '23514', NULL, 'batch insert with a null header value raises 23514');
SELECT throws_ok($$INSERT INTO outbox.messages (topic, payload, headers) VALUES ('t', '\x00', '{"a": {"b": "c"}}')$$,
                 '23514', NULL, 'batch insert with a nested header value raises 23514');
SELECT throws_ok($$INSERT INTO outbox.messages (topic, payload, headers)
                   SELECT 't', '\x00', CASE WHEN n = 3 THEN '{"n": 3}'::jsonb ELSE '{}' END
                   FROM generate_series(1, 5) AS n$$,
                 '23514', NULL, 'one bad row fails the whole INSERT ... SELECT with 23514');

-- batch path: NOT NULL columns (23502)
SELECT throws_ok($$INSERT INTO outbox.messages (topic, payload) VALUES (NULL, '\x00')$$, '23502', NULL,
                 'batch insert with a NULL topic raises 23502');
SELECT throws_ok($$INSERT INTO outbox.messages (topic, payload) VALUES ('t', NULL)$$, '23502', NULL,
                 'batch insert with a NULL payload raises 23502');
SELECT throws_ok($$INSERT INTO outbox.messages (topic) VALUES ('t')$$, '23502', NULL,
                 'batch insert without a payload raises 23502');
SELECT throws_ok($$INSERT INTO outbox.messages (topic, payload, key) VALUES ('t', '\x00', NULL)$$, '23502', NULL,
                 'batch insert with an explicit NULL key raises 23502');
SELECT throws_ok($$INSERT INTO outbox.messages (topic, payload, headers) VALUES ('t', '\x00', NULL)$$, '23502', NULL,
                 'batch insert with explicit NULL headers raises 23502');

SELECT is((SELECT count(*) FROM outbox.messages), (SELECT n FROM before_count),
          'no rejected batch insert stored anything');

-- The CHECK limits themselves pass; the batch path knows no publisher limit.
SELECT lives_ok($$INSERT INTO outbox.messages (topic, payload, key, headers)
                  VALUES (repeat('a', 255), '\x00', repeat('k', 1024), '{"a": "b"}')$$,
                'batch insert with a 255-byte topic, a 1024-byte key and string headers is accepted');
SELECT is((SELECT count(*) FROM outbox.messages), (SELECT n + 1 FROM before_count),
          'the accepted batch insert stored its row');

SELECT * FROM finish();
ROLLBACK;
