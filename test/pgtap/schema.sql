-- schema.sql: the objects CREATE EXTENSION outbox makes, and their shapes.
BEGIN;
SELECT plan(118);

-- The extension and its schema
SELECT has_extension('outbox', 'extension outbox is installed');
SELECT is((SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'outbox'),
          'outbox', 'extension outbox lives in schema outbox');
SELECT has_schema('outbox', 'schema outbox exists');
SELECT is((SELECT extrelocatable FROM pg_extension WHERE extname = 'outbox'),
          false, 'extension outbox is not relocatable');

-- The status enum, labels in their order
SELECT has_enum('outbox', 'message_status', 'enum outbox.message_status exists');
SELECT enum_has_labels('outbox', 'message_status',
                       ARRAY['pending', 'processing', 'processed', 'failed'],
                       'outbox.message_status has labels pending, processing, processed, failed in that order');

-- The table
SELECT has_table('outbox', 'messages', 'table outbox.messages exists');
SELECT tables_are('outbox', ARRAY['messages', 'destination', 'subscription', 'destination_progress', 'delivery'],
                  'schema outbox has the messages table and the four tables of destinations');
SELECT columns_are('outbox', 'messages',
                   ARRAY['id', 'topic', 'key', 'payload', 'headers', 'status', 'retries',
                         'last_error', 'created_at', 'processed_at', 'next_attempt_at',
                         'claimed_at', 'claimed_by', 'destinations'],
                   'outbox.messages has exactly the documented columns');
SELECT is((SELECT attname::text FROM pg_attribute WHERE attrelid = 'outbox.messages'::regclass
           AND attnum > 0 AND NOT attisdropped ORDER BY attnum DESC LIMIT 1),
          'destinations', 'destinations is the last column of outbox.messages (an update adds it at the end)');

SELECT col_type_is('outbox', 'messages', 'id', 'uuid', 'id is uuid');
SELECT col_not_null('outbox', 'messages', 'id', 'id is NOT NULL');
SELECT col_default_is('outbox', 'messages', 'id', 'outbox.next_id()', 'id defaults to outbox.next_id()');
SELECT col_is_pk('outbox', 'messages', ARRAY['id'], 'id is the primary key');

SELECT col_type_is('outbox', 'messages', 'topic', 'text', 'topic is text');
SELECT col_not_null('outbox', 'messages', 'topic', 'topic is NOT NULL');
SELECT col_hasnt_default('outbox', 'messages', 'topic', 'topic has no default');

SELECT col_type_is('outbox', 'messages', 'key', 'text', 'key is text');
SELECT col_not_null('outbox', 'messages', 'key', 'key is NOT NULL');
SELECT col_default_is('outbox', 'messages', 'key', ''::text, 'key defaults to the empty string');

SELECT col_type_is('outbox', 'messages', 'payload', 'bytea', 'payload is bytea');
SELECT col_not_null('outbox', 'messages', 'payload', 'payload is NOT NULL');
SELECT col_hasnt_default('outbox', 'messages', 'payload', 'payload has no default');

SELECT col_type_is('outbox', 'messages', 'headers', 'jsonb', 'headers is jsonb');
SELECT col_not_null('outbox', 'messages', 'headers', 'headers is NOT NULL');
SELECT col_default_is('outbox', 'messages', 'headers', '{}'::jsonb, 'headers default to {}');

SELECT col_type_is('outbox', 'messages', 'status', 'outbox.message_status', 'status is outbox.message_status');
SELECT col_not_null('outbox', 'messages', 'status', 'status is NOT NULL');
SELECT col_default_is('outbox', 'messages', 'status', 'pending'::outbox.message_status,
                      'status defaults to pending');

SELECT col_type_is('outbox', 'messages', 'retries', 'integer', 'retries is integer');
SELECT col_not_null('outbox', 'messages', 'retries', 'retries is NOT NULL');
SELECT col_default_is('outbox', 'messages', 'retries', 0, 'retries default to 0');

SELECT col_type_is('outbox', 'messages', 'last_error', 'text', 'last_error is text');
SELECT col_is_null('outbox', 'messages', 'last_error', 'last_error is nullable');

SELECT col_type_is('outbox', 'messages', 'created_at', 'timestamp with time zone', 'created_at is timestamptz');
SELECT col_not_null('outbox', 'messages', 'created_at', 'created_at is NOT NULL');
SELECT col_default_is('outbox', 'messages', 'created_at', 'now()', 'created_at defaults to now()');

SELECT col_type_is('outbox', 'messages', 'processed_at', 'timestamp with time zone', 'processed_at is timestamptz');
SELECT col_is_null('outbox', 'messages', 'processed_at', 'processed_at is nullable');

SELECT col_type_is('outbox', 'messages', 'next_attempt_at', 'timestamp with time zone', 'next_attempt_at is timestamptz');
SELECT col_not_null('outbox', 'messages', 'next_attempt_at', 'next_attempt_at is NOT NULL');
SELECT col_default_is('outbox', 'messages', 'next_attempt_at', 'now()', 'next_attempt_at defaults to now()');

SELECT col_type_is('outbox', 'messages', 'claimed_at', 'timestamp with time zone', 'claimed_at is timestamptz');
SELECT col_is_null('outbox', 'messages', 'claimed_at', 'claimed_at is nullable');

SELECT col_type_is('outbox', 'messages', 'claimed_by', 'integer', 'claimed_by is integer');
SELECT col_is_null('outbox', 'messages', 'claimed_by', 'claimed_by is nullable');

SELECT col_type_is('outbox', 'messages', 'destinations', 'integer[]', 'destinations is integer[]');
SELECT col_is_null('outbox', 'messages', 'destinations', 'destinations is nullable (NULL: the default destination)');
SELECT col_default_is('outbox', 'messages', 'destinations', '{}'::int[],
                      'destinations defaults to the empty array, not routed yet (the route trigger sets it)');
SELECT has_trigger('outbox', 'messages', 'route', 'outbox.messages has the trigger route');
SELECT trigger_is('outbox', 'messages', 'route', 'outbox', 'route', 'trigger route runs outbox.route()');
SELECT is((SELECT tgtype::int & 7 FROM pg_trigger WHERE tgrelid = 'outbox.messages'::regclass AND tgname = 'route'),
          7, 'trigger route fires BEFORE INSERT FOR EACH ROW');
SELECT is((SELECT tgtype::int & 56 FROM pg_trigger WHERE tgrelid = 'outbox.messages'::regclass AND tgname = 'route'),
          0, 'trigger route fires on INSERT only (not UPDATE, DELETE, TRUNCATE)');
SELECT is((SELECT count(*) FROM pg_trigger WHERE tgrelid = 'outbox.messages'::regclass AND NOT tgisinternal),
          1::bigint, 'route is the only trigger on outbox.messages (each costs every save)');

-- CHECK constraints (their behaviour is in validation.sql)
SELECT col_has_check('outbox', 'messages', 'topic', 'topic has a CHECK constraint');
SELECT col_has_check('outbox', 'messages', 'key', 'key has a CHECK constraint');
SELECT col_has_check('outbox', 'messages', 'headers', 'headers have a CHECK constraint');

-- Indexes the claim and recovery rely on, and no more
SELECT has_index('outbox', 'messages', 'messages_pending_idx', 'index messages_pending_idx exists');
SELECT is((SELECT pg_get_expr(indpred, indrelid) FROM pg_index
           WHERE indexrelid = 'outbox.messages_pending_idx'::regclass),
          '((status = ''pending''::outbox.message_status) AND (destinations IS NULL))',
          'messages_pending_idx is partial on pending messages of the default destination');
SELECT has_index('outbox', 'messages', 'messages_routed_idx', 'index messages_routed_idx exists');
SELECT is((SELECT pg_get_expr(indpred, indrelid) FROM pg_index
           WHERE indexrelid = 'outbox.messages_routed_idx'::regclass),
          '((status = ''pending''::outbox.message_status) AND (destinations IS NOT NULL))',
          'messages_routed_idx is partial on pending routed messages');
SELECT is((SELECT count(*) FROM pg_index WHERE indrelid = 'outbox.messages'::regclass), 5::bigint,
          'five indexes: the primary key, pending, routed, processing and failed (each is one more check on every save)');
SELECT has_index('outbox', 'messages', 'messages_failed_idx', 'index messages_failed_idx exists');
SELECT has_index('outbox', 'messages', 'messages_processing_idx', 'index messages_processing_idx exists');

-- Functions: signatures, argument names and defaults, return types
SELECT has_function('outbox', 'save', ARRAY['text', 'jsonb', 'text', 'jsonb'],
                    'outbox.save(text, jsonb, text, jsonb) exists');
SELECT has_function('outbox', 'save', ARRAY['text', 'text', 'text', 'jsonb'],
                    'outbox.save(text, text, text, jsonb) exists');
SELECT has_function('outbox', 'save', ARRAY['text', 'bytea', 'text', 'jsonb'],
                    'outbox.save(text, bytea, text, jsonb) exists');
SELECT function_returns('outbox', 'save', ARRAY['text', 'jsonb', 'text', 'jsonb'], 'uuid',
                        'outbox.save(jsonb payload) returns uuid');
SELECT function_returns('outbox', 'save', ARRAY['text', 'text', 'text', 'jsonb'], 'uuid',
                        'outbox.save(text payload) returns uuid');
SELECT function_returns('outbox', 'save', ARRAY['text', 'bytea', 'text', 'jsonb'], 'uuid',
                        'outbox.save(bytea payload) returns uuid');
SELECT results_eq(
    $$SELECT pg_get_function_arguments(p.oid) FROM pg_proc p
      WHERE p.oid IN ('outbox.save(text, jsonb, text, jsonb)'::regprocedure,
                      'outbox.save(text, text, text, jsonb)'::regprocedure,
                      'outbox.save(text, bytea, text, jsonb)'::regprocedure)
      ORDER BY 1$$,
    $$VALUES ('topic text, payload bytea, key text DEFAULT NULL::text, headers jsonb DEFAULT ''{}''::jsonb'),
             ('topic text, payload jsonb, key text DEFAULT NULL::text, headers jsonb DEFAULT ''{}''::jsonb'),
             ('topic text, payload text, key text DEFAULT NULL::text, headers jsonb DEFAULT ''{}''::jsonb')$$,
    'the save() forms take (topic, payload, key DEFAULT NULL, headers DEFAULT {})');
SELECT volatility_is('outbox', 'save', ARRAY['text', 'jsonb', 'text', 'jsonb'], 'volatile',
                     'outbox.save is volatile');

SELECT has_function('outbox', 'next_id', ARRAY[]::text[], 'outbox.next_id() exists');
SELECT function_returns('outbox', 'next_id', ARRAY[]::text[], 'uuid', 'outbox.next_id() returns uuid');
SELECT volatility_is('outbox', 'next_id', ARRAY[]::text[], 'volatile', 'outbox.next_id() is volatile');

SELECT has_function('outbox', 'valid_headers', ARRAY['jsonb'], 'outbox.valid_headers(jsonb) exists');
SELECT function_returns('outbox', 'valid_headers', ARRAY['jsonb'], 'boolean',
                        'outbox.valid_headers(jsonb) returns boolean');

SELECT has_function('outbox', 'fetch_pending', ARRAY['integer'], 'outbox.fetch_pending(integer) exists');
SELECT function_returns('outbox', 'fetch_pending', ARRAY['integer'], 'setof outbox.messages',
                        'outbox.fetch_pending returns setof outbox.messages');
SELECT is(pg_get_function_arguments('outbox.fetch_pending(integer)'::regprocedure),
          'max_messages integer', 'outbox.fetch_pending takes max_messages');

SELECT has_function('outbox', 'mark_processed', ARRAY['uuid[]'], 'outbox.mark_processed(uuid[]) exists');
SELECT function_returns('outbox', 'mark_processed', ARRAY['uuid[]'], 'integer',
                        'outbox.mark_processed returns integer');
SELECT is(pg_get_function_arguments('outbox.mark_processed(uuid[])'::regprocedure),
          'VARIADIC ids uuid[]', 'outbox.mark_processed takes VARIADIC ids');

SELECT has_function('outbox', 'mark_failed', ARRAY['uuid', 'text'], 'outbox.mark_failed(uuid, text) exists');
SELECT function_returns('outbox', 'mark_failed', ARRAY['uuid', 'text'], 'outbox.message_status',
                        'outbox.mark_failed returns outbox.message_status');
SELECT is(pg_get_function_arguments('outbox.mark_failed(uuid, text)'::regprocedure),
          'id uuid, error text', 'outbox.mark_failed takes (id, error)');

SELECT has_function('outbox', 'retry_failed', ARRAY['uuid[]'], 'outbox.retry_failed(uuid[]) exists');
SELECT function_returns('outbox', 'retry_failed', ARRAY['uuid[]'], 'integer',
                        'outbox.retry_failed returns integer');
SELECT is(pg_get_function_arguments('outbox.retry_failed(uuid[])'::regprocedure),
          'ids uuid[] DEFAULT NULL::uuid[]', 'outbox.retry_failed takes ids DEFAULT NULL');

-- Destinations: the tables (internal) ...
SELECT columns_are('outbox', 'destination',
                   ARRAY['id', 'name', 'publisher', 'options', 'paused', 'disabled_at', 'disabled_reason',
                         'failing_since', 'last_error', 'last_error_at', 'created_at'],
                   'outbox.destination has its columns');
SELECT col_is_pk('outbox', 'destination', ARRAY['id'], 'outbox.destination: id is the primary key');
SELECT col_is_unique('outbox', 'destination', ARRAY['name'], 'outbox.destination: names are unique');
SELECT col_has_check('outbox', 'destination', 'name', 'outbox.destination: name has a CHECK constraint');
SELECT col_default_is('outbox', 'destination', 'options', '{}'::jsonb, 'outbox.destination: options default to {}');
SELECT col_default_is('outbox', 'destination', 'paused', false, 'outbox.destination: paused defaults to false');
SELECT columns_are('outbox', 'subscription', ARRAY['destination_id', 'pattern', 'created_at'],
                   'outbox.subscription has its columns');
SELECT col_is_pk('outbox', 'subscription', ARRAY['destination_id', 'pattern'],
                 'outbox.subscription: (destination_id, pattern) is the primary key');
SELECT fk_ok('outbox', 'subscription', 'destination_id', 'outbox', 'destination', 'id',
             'outbox.subscription references outbox.destination');
SELECT columns_are('outbox', 'destination_progress', ARRAY['destination_id', 'upto', 'at'],
                   'outbox.destination_progress has its columns');
SELECT col_is_pk('outbox', 'destination_progress', ARRAY['destination_id', 'upto'],
                 'outbox.destination_progress: (destination_id, upto) is the primary key');
SELECT columns_are('outbox', 'delivery',
                   ARRAY['destination_id', 'message_id', 'key', 'status', 'retries', 'last_error',
                         'next_attempt_at', 'claimed_at', 'claimed_by', 'processed_at'],
                   'outbox.delivery has its columns');
SELECT col_is_pk('outbox', 'delivery', ARRAY['destination_id', 'message_id'],
                 'outbox.delivery: (destination_id, message_id) is the primary key');
SELECT col_type_is('outbox', 'delivery', 'status', 'outbox.message_status', 'outbox.delivery: status is outbox.message_status');
SELECT indexes_are('outbox', 'delivery', ARRAY['delivery_pkey', 'delivery_message_idx', 'delivery_unfinished_idx',
                                              'delivery_failed_idx'],
                   'outbox.delivery has its primary key, a message index and indexes of unfinished and of failed deliveries');

-- ... the functions that manage them ...
SELECT results_eq(
    $$SELECT p.proname::text COLLATE "default", pg_get_function_arguments(p.oid), pg_get_function_result(p.oid),
             p.provolatile::text, p.proisstrict
      FROM pg_proc p WHERE p.oid IN ('outbox.create_destination(text, text, jsonb)'::regprocedure,
                                     'outbox.alter_destination(text, jsonb)'::regprocedure,
                                     'outbox.drop_destination(text, boolean)'::regprocedure,
                                     'outbox.pause_destination(text)'::regprocedure,
                                     'outbox.resume_destination(text)'::regprocedure,
                                     'outbox.subscribe(text, text)'::regprocedure,
                                     'outbox.unsubscribe(text, text)'::regprocedure,
                                     'outbox.topic_matches(text, text)'::regprocedure,
                                     'outbox.public_options(text, jsonb)'::regprocedure,
                                     'outbox.destination_position(integer)'::regprocedure,
                                     'outbox.set_destination_secret(text, text, text)'::regprocedure)
      ORDER BY 1$$,
    $$VALUES ('alter_destination'::text, 'name text, options jsonb'::text, 'void'::text, 'v'::text, false),
             ('create_destination', 'name text, publisher text, options jsonb DEFAULT ''{}''::jsonb', 'void', 'v', false),
             ('destination_position', 'destination_id integer', 'uuid', 's', false),
             ('drop_destination', 'name text, force boolean DEFAULT false', 'void', 'v', false),
             ('pause_destination', 'name text', 'void', 'v', false),
             ('public_options', 'publisher text, options jsonb', 'jsonb', 's', true),
             ('resume_destination', 'name text', 'void', 'v', false),
             ('set_destination_secret', 'name text, option text, value text', 'void', 'v', false),
             ('subscribe', 'destination text, topic_pattern text', 'void', 'v', false),
             ('topic_matches', 'topic text, topic_pattern text', 'boolean', 'i', true),
             ('unsubscribe', 'destination text, topic_pattern text', 'void', 'v', false)$$,
    'the destination functions: arguments, defaults, results, volatility, strictness (NULLs get 22004, not silence)');
SELECT has_function('outbox', 'route', ARRAY[]::text[], 'outbox.route() exists');
SELECT function_returns('outbox', 'route', ARRAY[]::text[], 'trigger', 'outbox.route() is a trigger function');

-- ... the store API per destination (the 0.2.0 signatures stay as they were) ...
SELECT results_eq(
    $$SELECT p.proname::text COLLATE "default", pg_get_function_arguments(p.oid), pg_get_function_result(p.oid)
      FROM pg_proc p WHERE p.oid IN ('outbox.fetch_pending(integer, text)'::regprocedure,
                                     'outbox.mark_processed_for(uuid[], text)'::regprocedure,
                                     'outbox.mark_failed(uuid, text, text)'::regprocedure,
                                     'outbox.retry_failed(uuid[], text)'::regprocedure)
      ORDER BY 1$$,
    $$VALUES ('fetch_pending'::text, 'max_messages integer, destination text'::text, 'SETOF outbox.messages'::text),
             ('mark_failed', 'id uuid, error text, destination text', 'outbox.message_status'),
             ('mark_processed_for', 'ids uuid[], destination text', 'integer'),
             ('retry_failed', 'ids uuid[], destination text', 'integer')$$,
    'the store API of external destinations: fetch_pending, mark_processed_for, mark_failed, retry_failed');
SELECT is((SELECT count(*) FROM pg_proc WHERE pronamespace = 'outbox'::regnamespace AND proname = 'mark_processed'),
          1::bigint, 'mark_processed keeps one form, so mark_processed(''<id>'', ''<id>'') is not ambiguous');
SELECT is((SELECT oid::regprocedure::text FROM pg_proc
           WHERE pronamespace = 'outbox'::regnamespace AND proname = 'mark_processed'),
          'outbox.mark_processed(uuid[])', 'and it is the VARIADIC one of 0.2.0');
SELECT results_eq(
    $$SELECT proname::text COLLATE "default", count(*) FROM pg_proc WHERE pronamespace = 'outbox'::regnamespace
      AND proname IN ('fetch_pending', 'mark_failed', 'retry_failed') GROUP BY 1 ORDER BY 1$$,
    $$VALUES ('fetch_pending'::text, 2::bigint), ('mark_failed', 2), ('retry_failed', 3)$$,
    'fetch_pending, mark_failed and retry_failed each have the 0.2.0 form and one with a destination; retry_failed also one with filters');

-- ... and the views.
SELECT has_view('outbox', 'destinations', 'view outbox.destinations exists');
SELECT is(
    (SELECT array_agg(attname::text || ' ' || format_type(atttypid, atttypmod) ORDER BY attnum)
     FROM pg_attribute WHERE attrelid = 'outbox.destinations'::regclass AND attnum > 0),
    ARRAY['name text', 'publisher text', 'options jsonb', 'paused boolean', 'state text',
          'last_error text', 'last_error_at timestamp with time zone',
          'failing_since timestamp with time zone', 'disabled_reason text',
          'disabled_at timestamp with time zone', 'subscriptions text[]',
          'created_at timestamp with time zone'],
    'outbox.destinations: name, publisher, options, paused, state, last_error, ..., subscriptions, created_at');
SELECT has_view('outbox', 'deliveries', 'view outbox.deliveries exists');
SELECT is(
    (SELECT array_agg(attname::text || ' ' || format_type(atttypid, atttypmod) ORDER BY attnum)
     FROM pg_attribute WHERE attrelid = 'outbox.deliveries'::regclass AND attnum > 0),
    ARRAY['message_id uuid', 'destination text', 'status outbox.message_status', 'retries integer',
          'last_error text', 'next_attempt_at timestamp with time zone',
          'processed_at timestamp with time zone'],
    'outbox.deliveries: message_id, destination, status, retries, last_error, next_attempt_at, processed_at');

-- The stats view
SELECT has_view('outbox', 'stats', 'view outbox.stats exists');
SELECT columns_are('outbox', 'stats',
                   ARRAY['topic', 'pending', 'processing', 'processed', 'failed', 'oldest_pending_age'],
                   'outbox.stats has columns topic, pending, processing, processed, failed, oldest_pending_age');
SELECT is(
    (SELECT array_agg(attname::text || ' ' || format_type(atttypid, atttypmod) ORDER BY attnum)
     FROM pg_attribute WHERE attrelid = 'outbox.stats'::regclass AND attnum > 0),
    ARRAY['topic text', 'pending bigint', 'processing bigint', 'processed bigint',
          'failed bigint', 'oldest_pending_age interval'],
    'outbox.stats columns are in order with types text, bigint x4, interval');

SELECT * FROM finish();
ROLLBACK;
