-- grants.sql: every function of the extension, with who may execute it.
--
-- The list below is the decision for each function: whether PUBLIC may
-- execute it (nothing in schema outbox is PUBLIC's: README, "Privileges"),
-- and which of README's roles it is granted to.  The first test fails when
-- the extension has a function the list does not name (or the list names
-- one it lacks): a new function needs its line here, that is, a decision.
-- The roles:
--   app       saves (save(), the batch path)
--   relay     an external relay of the default destination (store API)
--   ext_relay an external relay of an external destination
--   monitor   reads the stats
--   operator  replays, requeues dead letters, pauses and subscribes
--   worker    the workers' role (outbox.role)
--   owner     only the extension's owner (superusers) and the extension's
--             own objects (triggers, views) use it
BEGIN;

CREATE TEMP TABLE expected_grants (fn text PRIMARY KEY, public_execute boolean NOT NULL, roles text NOT NULL);
INSERT INTO expected_grants VALUES
    ('outbox.alter_destination(text,jsonb)', false, 'owner'),
    ('outbox.create_destination(text,text,jsonb)', false, 'owner'),
    ('outbox.destination_position(integer)', false, 'owner'),
    ('outbox.drop_destination(text,boolean)', false, 'owner'),
    ('outbox.fetch_pending(integer)', false, 'relay'),
    ('outbox.fetch_pending(integer,text)', false, 'ext_relay'),
    ('outbox.mark_failed(uuid,text)', false, 'relay'),
    ('outbox.mark_failed(uuid,text,text)', false, 'ext_relay'),
    ('outbox.mark_processed(uuid[])', false, 'relay'),
    ('outbox.mark_processed_for(uuid[],text)', false, 'ext_relay'),
    ('outbox.next_id()', false, 'app'),
    ('outbox.pause_destination(text)', false, 'operator'),
    ('outbox.public_options(text,jsonb)', false, 'monitor (outbox.destinations calls it)'),
    ('outbox.replay(timestamp with time zone,timestamp with time zone,text,text)', false, 'operator'),
    ('outbox.replay(uuid[])', false, 'operator'),
    ('outbox.resume_destination(text)', false, 'operator'),
    ('outbox.retry_failed(uuid[])', false, 'relay'),
    ('outbox.retry_failed(uuid[],text)', false, 'ext_relay'),
    ('outbox.retry_failed(uuid[],text,text,timestamp with time zone,timestamp with time zone,text)', false, 'operator'),
    ('outbox.route()', false, 'owner (the trigger on outbox.messages)'),
    ('outbox.save(text,bytea,text,jsonb)', false, 'app'),
    ('outbox.set_destination_secret(text,text,text)', false, 'owner'),
    ('outbox.save(text,jsonb,text,jsonb)', false, 'app'),
    ('outbox.save(text,text,text,jsonb)', false, 'app'),
    ('outbox.subscribe(text,text)', false, 'operator'),
    ('outbox.topic_matches(text,text)', false, 'owner'),
    ('outbox.unsubscribe(text,text)', false, 'operator'),
    ('outbox.valid_headers(jsonb)', false, 'app, relay, worker (the CHECK constraint on outbox.messages)'),
    ('outbox.worker_status()', false, 'monitor');

-- One test for the list, one per function.
SELECT plan(1 + (SELECT count(*)::int FROM expected_grants));

-- The functions of the extension, as regprocedure text (schema-qualified:
-- outbox is not on the search path here).
CREATE TEMP VIEW extension_functions AS
    SELECT p.oid, p.oid::regprocedure::text AS fn
    FROM pg_proc p
    JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
    JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'outbox';

SELECT set_eq('SELECT fn FROM extension_functions', 'SELECT fn FROM expected_grants',
              'every function of the extension has its line in this file, and every line a function');

SELECT is(has_function_privilege('public', f.oid, 'EXECUTE'), g.public_execute,
          g.fn || ': PUBLIC ' || CASE WHEN g.public_execute THEN 'may' ELSE 'may not' END
          || ' execute it (granted to: ' || g.roles || ')')
FROM expected_grants g JOIN extension_functions f ON f.fn = g.fn
ORDER BY g.fn;

SELECT * FROM finish();
ROLLBACK;
