-- store_nesting.sql: store calls nest.  Each store call pins search_path
-- and enable_seqscan for its own statements and must restore the caller's
-- values when it ends, also when another store call ran inside it: a
-- trigger on outbox.messages that calls retry_failed() from inside
-- mark_processed() or mark_failed(), or fetch_pending() from inside
-- mark_processed().  The settings are read right after each call, then put
-- back, so that pgTAP itself (in schema public) keeps working whatever the
-- call left behind.
BEGIN;
SELECT plan(9);

DELETE FROM outbox.messages;
SET LOCAL search_path = public, outbox;
SET LOCAL enable_seqscan = on;

CREATE FUNCTION public.requeue_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM outbox.retry_failed(ARRAY[]::uuid[]);
    RETURN NEW;
END
$$;
CREATE FUNCTION public.fetch_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM count(*) FROM outbox.fetch_pending(1);
    RETURN NEW;
END
$$;

SELECT outbox.save('nest', 'one') AS one, outbox.save('nest', 'two') AS two,
       outbox.save('nest', 'three') AS three \gset

-- 1. retry_failed() inside mark_processed().
CREATE TRIGGER nested AFTER UPDATE ON outbox.messages
    FOR EACH ROW EXECUTE FUNCTION public.requeue_on_update();
SELECT outbox.mark_processed(:'one') AS result \gset
SELECT current_setting('search_path') AS path, current_setting('enable_seqscan') AS seqscan \gset
SET LOCAL search_path = public, outbox;
SET LOCAL enable_seqscan = on;
SELECT is(:'result'::text, '1', 'mark_processed() with retry_failed() in a trigger marks the message');
SELECT is(:'path'::text, 'public, outbox', 'then search_path is the caller''s');
SELECT is(:'seqscan'::text, 'on', 'and enable_seqscan is the caller''s');

-- 2. retry_failed() inside mark_failed().
SELECT outbox.mark_failed(:'two', 'boom') AS result \gset
SELECT current_setting('search_path') AS path, current_setting('enable_seqscan') AS seqscan \gset
SET LOCAL search_path = public, outbox;
SET LOCAL enable_seqscan = on;
SELECT is(:'result'::text, 'pending', 'mark_failed() with retry_failed() in a trigger records the attempt');
SELECT is(:'path'::text, 'public, outbox', 'then search_path is the caller''s');
SELECT is(:'seqscan'::text, 'on', 'and enable_seqscan is the caller''s');
DROP TRIGGER nested ON outbox.messages;

-- 3. fetch_pending() inside mark_processed().
CREATE TRIGGER nested AFTER UPDATE ON outbox.messages
    FOR EACH ROW EXECUTE FUNCTION public.fetch_on_update();
SELECT outbox.mark_processed(:'three') AS result \gset
SELECT current_setting('search_path') AS path, current_setting('enable_seqscan') AS seqscan \gset
SET LOCAL search_path = public, outbox;
SET LOCAL enable_seqscan = on;
SELECT is(:'result'::text, '1', 'mark_processed() with fetch_pending() in a trigger marks the message');
SELECT is(:'path'::text, 'public, outbox', 'then search_path is the caller''s');
SELECT is(:'seqscan'::text, 'on', 'and enable_seqscan is the caller''s');

SELECT * FROM finish();
ROLLBACK;
