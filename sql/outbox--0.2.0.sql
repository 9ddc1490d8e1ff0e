-- outbox--0.2.0.sql: the transactional outbox, version 0.2.0 (a fresh install;
-- outbox--0.1.0--0.2.0.sql brings a 0.1.0 install to the same objects).
-- Complain if the script is sourced in psql rather than via CREATE EXTENSION.
\echo Use "CREATE EXTENSION outbox" to load this file. \quit

CREATE TYPE outbox.message_status AS ENUM ('pending', 'processing', 'processed', 'failed');

-- The id default: an increasing UUIDv7 that also wakes the worker at commit.
CREATE FUNCTION outbox.next_id() RETURNS uuid
	AS 'MODULE_PATHNAME', 'outbox_next_id'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- Headers are a JSON object of strings.
CREATE FUNCTION outbox.valid_headers(headers jsonb) RETURNS boolean
	AS 'MODULE_PATHNAME', 'outbox_valid_headers'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE TABLE outbox.messages (
	id				uuid PRIMARY KEY DEFAULT outbox.next_id(),
	topic			text NOT NULL,
	key				text NOT NULL DEFAULT '',
	payload			bytea NOT NULL,
	headers			jsonb NOT NULL DEFAULT '{}',
	status			outbox.message_status NOT NULL DEFAULT 'pending',
	retries			int NOT NULL DEFAULT 0,
	last_error		text,
	created_at		timestamptz NOT NULL DEFAULT now(),
	processed_at	timestamptz,
	-- internal: when the next attempt may happen, and who holds the claim
	next_attempt_at timestamptz NOT NULL DEFAULT now(),
	claimed_at		timestamptz,
	claimed_by		int,
	CONSTRAINT messages_topic_check
		CHECK (topic <> '' AND octet_length(topic) <= 255),
	CONSTRAINT messages_key_check
		CHECK (octet_length(key) <= 1024),
	CONSTRAINT messages_headers_check
		CHECK (outbox.valid_headers(headers))
);

COMMENT ON TABLE outbox.messages IS 'Messages saved by outbox.save() or INSERT, published by the outbox worker';

-- Claims scan pending messages in id order (under per-key ordering too: the
-- scan from the oldest pending message tells each key's oldest one).
CREATE INDEX messages_pending_idx ON outbox.messages (id)
	WHERE status = 'pending';
-- Recovery finds claims that timed out.
CREATE INDEX messages_processing_idx ON outbox.messages (claimed_at)
	WHERE status = 'processing';

-- Save a message in the current transaction; returns its id.
CREATE FUNCTION outbox.save(topic text, payload jsonb, key text DEFAULT NULL,
							headers jsonb DEFAULT '{}') RETURNS uuid
	AS 'MODULE_PATHNAME', 'outbox_save_jsonb'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION outbox.save(topic text, payload text, key text DEFAULT NULL,
							headers jsonb DEFAULT '{}') RETURNS uuid
	AS 'MODULE_PATHNAME', 'outbox_save_text'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION outbox.save(topic text, payload bytea, key text DEFAULT NULL,
							headers jsonb DEFAULT '{}') RETURNS uuid
	AS 'MODULE_PATHNAME', 'outbox_save_bytea'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- The store API, for relays outside the database.
CREATE FUNCTION outbox.fetch_pending(max_messages int) RETURNS SETOF outbox.messages
	AS 'MODULE_PATHNAME', 'outbox_fetch_pending'
	LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION outbox.mark_processed(VARIADIC ids uuid[]) RETURNS int
	AS 'MODULE_PATHNAME', 'outbox_mark_processed'
	LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION outbox.mark_failed(id uuid, error text) RETURNS outbox.message_status
	AS 'MODULE_PATHNAME', 'outbox_mark_failed'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION outbox.retry_failed(ids uuid[] DEFAULT NULL) RETURNS int
	AS 'MODULE_PATHNAME', 'outbox_retry_failed'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- Per topic: messages in each status and the age of the oldest pending one.
CREATE VIEW outbox.stats AS
	SELECT topic,
		   count(*) FILTER (WHERE status = 'pending') AS pending,
		   count(*) FILTER (WHERE status = 'processing') AS processing,
		   count(*) FILTER (WHERE status = 'processed') AS processed,
		   count(*) FILTER (WHERE status = 'failed') AS failed,
		   now() - min(created_at) FILTER (WHERE status = 'pending') AS oldest_pending_age
	FROM outbox.messages
	GROUP BY topic;

-- Least privilege: nothing for PUBLIC; README shows the grants roles need.
REVOKE ALL ON SCHEMA outbox FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA outbox FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA outbox FROM PUBLIC;
