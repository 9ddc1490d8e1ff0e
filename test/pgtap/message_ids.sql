-- message_ids.sql: ids below the id floor are refused (22023), on the
-- batch path and with an explicit id: no id below it was ever handed out,
-- and the nil UUID would never be published (a claim reads after it),
-- while outbox.stats showed no age for it.  The floor is the UUIDv7 of
-- 2026-01-01 00:00 UTC (or of the server's start, if its clock was
-- earlier).  UUIDs of versions 1-6 and 8 carry no time of outbox's clock
-- and are taken as before; their age comes from created_at.
BEGIN;
SELECT plan(14);

DELETE FROM outbox.messages;

-- outcome(sql): 'ok', or the SQLSTATE it failed with.
CREATE FUNCTION pg_temp.outcome(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END
$$;
CREATE FUNCTION pg_temp.insert_id(id text) RETURNS text LANGUAGE sql AS $$
    SELECT pg_temp.outcome(format($i$INSERT INTO outbox.messages (id, topic, payload) VALUES (%L, 'ids', '\x00')$i$, id))
$$;

SELECT is(pg_temp.insert_id('00000000-0000-0000-0000-000000000000'), '22023', 'the nil UUID is refused: 22023');
SELECT throws_ok($$INSERT INTO outbox.messages (id, topic, payload) VALUES ('00000000-0000-0000-0000-000000000000', 'ids', '\x00')$$,
                 '22023', 'outbox message id 00000000-0000-0000-0000-000000000000 is older than any id outbox hands out',
                 'the error names the id');
SELECT is(pg_temp.insert_id('00000000-0000-0000-0000-000000000001'), '22023', 'an id just above it too');
SELECT is(pg_temp.insert_id('01000000-0000-7000-8000-000000000000'), '22023', 'a UUIDv7 of 1971: 22023');
SELECT is(pg_temp.insert_id('019b76da-a7ff-7fff-bfff-ffffffffffff'), '22023',
          'the last UUIDv7 before 2026-01-01 00:00 UTC: 22023');
SELECT is(pg_temp.insert_id('ffffffff-ffff-0fff-8fff-ffffffffffff'), 'ok', 'a version-0 id above the floor is taken');
SELECT is((SELECT count(*) FROM outbox.messages), 1::bigint, 'only that one: the refused ones stored nothing');
SELECT is(pg_temp.insert_id('019b76da-a800-7000-8000-000000000000'), 'ok', 'the floor itself is taken');
SELECT is(pg_temp.insert_id('00000000-0000-4000-8000-000000000002'), 'ok',
          'a UUIDv4 is taken, however it sorts (it carries no time)');
SELECT is(pg_temp.outcome($$INSERT INTO outbox.messages (topic, payload) SELECT 'ids', '\x00' FROM generate_series(1, 3)$$),
          'ok', 'the batch path with its default ids');
SELECT is(pg_temp.outcome($$SELECT outbox.save('ids', 'x'::text)$$), 'ok', 'and save()');
SELECT ok(outbox.next_id() >= '019b76da-a800-7000-8000-000000000000'::uuid, 'every id handed out is above the floor');

-- Ages: never NULL while something is pending, whatever its id.
UPDATE outbox.messages SET created_at = now() - interval '1 minute'
WHERE id = '00000000-0000-4000-8000-000000000002';
SELECT is((SELECT oldest_pending_age FROM outbox.stats WHERE topic IS NULL), interval '1 minute',
          'outbox.stats: the oldest pending message (a UUIDv4) has its created_at''s age');
SELECT is((SELECT oldest_pending_age FROM outbox.destination_stats WHERE destination = 'default'), interval '1 minute',
          'so does outbox.destination_stats');

SELECT * FROM finish();
ROLLBACK;
