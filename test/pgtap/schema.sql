-- schema.sql: the objects CREATE EXTENSION outbox makes, and their shapes.
BEGIN;
SELECT plan(80);

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
SELECT tables_are('outbox', ARRAY['messages'], 'outbox.messages is the only table in schema outbox');
SELECT columns_are('outbox', 'messages',
                   ARRAY['id', 'topic', 'key', 'payload', 'headers', 'status', 'retries',
                         'last_error', 'created_at', 'processed_at', 'next_attempt_at',
                         'claimed_at', 'claimed_by'],
                   'outbox.messages has exactly the documented columns');

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

-- CHECK constraints (their behaviour is in validation.sql)
SELECT col_has_check('outbox', 'messages', 'topic', 'topic has a CHECK constraint');
SELECT col_has_check('outbox', 'messages', 'key', 'key has a CHECK constraint');
SELECT col_has_check('outbox', 'messages', 'headers', 'headers have a CHECK constraint');

-- Indexes the claim and recovery rely on, and no more
SELECT has_index('outbox', 'messages', 'messages_pending_idx', 'index messages_pending_idx exists');
SELECT is((SELECT pg_get_expr(indpred, indrelid) FROM pg_index
           WHERE indexrelid = 'outbox.messages_pending_idx'::regclass),
          '(status = ''pending''::outbox.message_status)',
          'messages_pending_idx is partial on pending messages');
SELECT is((SELECT count(*) FROM pg_index WHERE indrelid = 'outbox.messages'::regclass), 3::bigint,
          'three indexes: the primary key, pending and processing (each costs every save)');
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
