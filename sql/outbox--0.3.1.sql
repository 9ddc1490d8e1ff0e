-- outbox--0.3.1.sql: the transactional outbox, version 0.3.1 (a fresh install;
-- the update scripts bring older installs to the same objects).
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
	-- the destinations a message is routed to, set when it is saved (NULL:
	-- the default destination).  The default, '{}', is "not routed yet":
	-- the trigger outbox.route() routes the row; a row inserted with the
	-- column given (a restore of a dump: 0.3.1) is taken as it is.
	destinations	int[] DEFAULT '{}',
	CONSTRAINT messages_topic_check
		CHECK (topic <> '' AND octet_length(topic) <= 255),
	CONSTRAINT messages_key_check
		CHECK (octet_length(key) <= 1024),
	CONSTRAINT messages_headers_check
		CHECK (outbox.valid_headers(headers))
);

COMMENT ON TABLE outbox.messages IS 'Messages saved by outbox.save() or INSERT, published by the outbox worker';

-- pg_dump (0.3.1): the tables that hold user state are dumped with their
-- data, every row (processed messages and claims too: a restored claim's
-- process is gone, and recovery returns it to pending).
SELECT pg_catalog.pg_extension_config_dump('outbox.messages', '');

-- The default destination's claims scan its pending messages in id order
-- (under per-key ordering too: the scan from the oldest pending message
-- tells each key's oldest one); routed ones wait in an index of their own
-- until every destination has them.
CREATE INDEX messages_pending_idx ON outbox.messages (id)
	WHERE status = 'pending' AND destinations IS NULL;
CREATE INDEX messages_routed_idx ON outbox.messages (id)
	WHERE status = 'pending' AND destinations IS NOT NULL;
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

-- Per topic: pending, processing and failed messages, and the age of the
-- oldest pending one (from its id: a UUIDv7 starts with its millisecond;
-- an id of another version, inserted by hand, by its created_at: 0.3.1);
-- plus a row with topic NULL for all topics, whose processed column is an
-- estimate from the statistics system (live rows less the unfinished
-- ones).  Only the partial indexes of the unfinished messages are read,
-- never the processed rows.
CREATE VIEW outbox.stats AS
	SELECT s.topic, s.pending, s.processing,
		   CASE WHEN s.topic IS NULL THEN
				greatest(0, pg_stat_get_live_tuples('outbox.messages'::regclass)
							- s.pending - s.processing - s.failed) END AS processed,
		   s.failed,
		   CASE WHEN substr(s.oldest, 15, 1) = '7' THEN greatest(interval '0',
				now() - to_timestamp(('x' || replace(left(s.oldest, 13), '-', ''))::bit(48)::bigint
									 / 1000.0))
				ELSE (SELECT greatest(interval '0', now() - m.created_at) FROM outbox.messages m
					  WHERE m.id = s.oldest::uuid) END AS oldest_pending_age
	FROM (SELECT u.topic,
				 count(*) FILTER (WHERE u.status = 'pending') AS pending,
				 count(*) FILTER (WHERE u.status = 'processing') AS processing,
				 count(*) FILTER (WHERE u.status = 'failed') AS failed,
				 min(u.id::text) FILTER (WHERE u.status = 'pending') AS oldest
		  FROM (SELECT m.topic, m.status, m.id FROM outbox.messages m
				WHERE m.status = 'pending' AND m.destinations IS NULL
				UNION ALL
				SELECT m.topic, m.status, m.id FROM outbox.messages m
				WHERE m.status = 'pending' AND m.destinations IS NOT NULL
				UNION ALL
				SELECT m.topic, m.status, m.id FROM outbox.messages m
				WHERE m.status = 'processing'
				UNION ALL
				SELECT m.topic, m.status, m.id FROM outbox.messages m
				WHERE m.status = 'failed') u
		  GROUP BY ROLLUP (u.topic)) s;

-- Destinations and subscriptions (0.3.0).
-- Destinations: where messages of subscribed topics go, each with its own
-- publisher, options, worker, retries and order.  Messages that no
-- subscription routes anywhere go to the default destination (the
-- outbox.publisher settings), as before.  Internal: managed through the
-- functions below, shown by the view outbox.destinations.
CREATE TABLE outbox.destination (
	id				serial PRIMARY KEY,
	name			text NOT NULL UNIQUE,
	publisher		text NOT NULL,
	options			jsonb NOT NULL DEFAULT '{}',
	paused			boolean NOT NULL DEFAULT false,
	disabled_at		timestamptz,
	disabled_reason	text,
	-- since when every attempt failed, and the last error (the worker writes
	-- them when they change)
	failing_since	timestamptz,
	last_error		text,
	last_error_at	timestamptz,
	created_at		timestamptz NOT NULL DEFAULT now(),
	CONSTRAINT destination_name_check
		CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$' AND name <> 'default'),
	CONSTRAINT destination_options_check
		CHECK (jsonb_typeof(options) = 'object')
);
COMMENT ON TABLE outbox.destination IS 'Destinations of the outbox: see outbox.destinations';

-- Which topics go to a destination; dot-separated patterns, "*" one token,
-- ">" (last) one or more.
CREATE TABLE outbox.subscription (
	destination_id	int NOT NULL REFERENCES outbox.destination ON DELETE CASCADE,
	pattern			text NOT NULL,
	created_at		timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (destination_id, pattern)
);

-- How far each destination has read the messages: every message routed to
-- it with an id up to "upto" was delivered, or has a row in
-- outbox.delivery.  One row per batch; the newest is the position.
CREATE TABLE outbox.destination_progress (
	destination_id	int NOT NULL,
	upto			uuid NOT NULL,
	at				timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (destination_id, upto)
);

-- The deliveries that did not go through at the first attempt (failed
-- attempts waiting for a retry, failed ones, messages waiting behind them
-- under per-key order, claims of external relays).  Deliveries that went
-- through at once have no row: the destination's position covers them.
CREATE TABLE outbox.delivery (
	destination_id	int NOT NULL,
	message_id		uuid NOT NULL,
	key				text NOT NULL DEFAULT '',
	status			outbox.message_status NOT NULL DEFAULT 'pending',
	retries			int NOT NULL DEFAULT 0,
	last_error		text,
	next_attempt_at	timestamptz NOT NULL DEFAULT now(),
	claimed_at		timestamptz,
	claimed_by		int,
	processed_at	timestamptz,
	PRIMARY KEY (destination_id, message_id)
);
-- pg_dump (0.3.1): destinations (with their secret options), their
-- subscriptions, positions and deliveries, and the sequence of their ids.
SELECT pg_catalog.pg_extension_config_dump('outbox.destination', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.destination_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.subscription', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.destination_progress', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.delivery', '');

CREATE INDEX delivery_message_idx ON outbox.delivery (message_id);
CREATE INDEX delivery_unfinished_idx ON outbox.delivery (destination_id, message_id)
	WHERE status IN ('pending', 'processing');

-- Routing, in the saving transaction, for save() and the batch path alike.
-- (It reads the subscriptions as their owner: saving roles need no
-- privilege on them.)
CREATE FUNCTION outbox.route() RETURNS trigger
	AS 'MODULE_PATHNAME', 'outbox_route'
	LANGUAGE C;
CREATE TRIGGER route BEFORE INSERT ON outbox.messages
	FOR EACH ROW EXECUTE FUNCTION outbox.route();

-- Managing destinations.
CREATE FUNCTION outbox.create_destination(name text, publisher text,
										  options jsonb DEFAULT '{}') RETURNS void
	AS 'MODULE_PATHNAME', 'outbox_create_destination'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION outbox.alter_destination(name text, options jsonb) RETURNS void
	AS 'MODULE_PATHNAME', 'outbox_alter_destination'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
-- (0.3.1) One secret option, its value never in statement text: bound as a
-- parameter, or read by the server (pg_read_file); NULL removes it.
CREATE FUNCTION outbox.set_destination_secret(name text, option text, value text) RETURNS void
	AS 'MODULE_PATHNAME', 'outbox_set_destination_secret'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION outbox.drop_destination(name text, force boolean DEFAULT false) RETURNS void
	AS 'MODULE_PATHNAME', 'outbox_drop_destination'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION outbox.pause_destination(name text) RETURNS void
	AS 'MODULE_PATHNAME', 'outbox_pause_destination'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION outbox.resume_destination(name text) RETURNS void
	AS 'MODULE_PATHNAME', 'outbox_resume_destination'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION outbox.subscribe(destination text, topic_pattern text) RETURNS void
	AS 'MODULE_PATHNAME', 'outbox_subscribe'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION outbox.unsubscribe(destination text, topic_pattern text) RETURNS void
	AS 'MODULE_PATHNAME', 'outbox_unsubscribe'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- Whether a topic matches a subscription pattern.
CREATE FUNCTION outbox.topic_matches(topic text, topic_pattern text) RETURNS boolean
	AS 'MODULE_PATHNAME', 'outbox_topic_matches'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- A destination's options without its secrets (for the view).
CREATE FUNCTION outbox.public_options(publisher text, options jsonb) RETURNS jsonb
	AS 'MODULE_PATHNAME', 'outbox_public_options'
	LANGUAGE C STABLE STRICT PARALLEL SAFE;

-- Position of a destination: every routed message up to it was read.
CREATE FUNCTION outbox.destination_position(destination_id int) RETURNS uuid
	LANGUAGE sql STABLE PARALLEL SAFE
	BEGIN ATOMIC
		SELECT p.upto FROM outbox.destination_progress p
		WHERE p.destination_id = destination_position.destination_id
		ORDER BY p.upto DESC LIMIT 1;
	END;

-- The store API per destination (external relays): the functions of 0.2.0
-- stay as they are (and so do the privileges granted on them); these take
-- the destination.
CREATE FUNCTION outbox.fetch_pending(max_messages int, destination text)
	RETURNS SETOF outbox.messages
	AS 'MODULE_PATHNAME', 'outbox_fetch_pending'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
-- (mark_processed_for, not a second mark_processed: two untyped literals,
-- mark_processed('<id>', '<id>'), would match both forms and be ambiguous.)
CREATE FUNCTION outbox.mark_processed_for(ids uuid[], destination text) RETURNS int
	AS 'MODULE_PATHNAME', 'outbox_mark_processed_for'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION outbox.mark_failed(id uuid, error text, destination text)
	RETURNS outbox.message_status
	AS 'MODULE_PATHNAME', 'outbox_mark_failed'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION outbox.retry_failed(ids uuid[], destination text) RETURNS int
	AS 'MODULE_PATHNAME', 'outbox_retry_failed'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- What users see of destinations: no secret option, a state.
CREATE VIEW outbox.destinations AS
	SELECT d.name, d.publisher,
		   outbox.public_options(d.publisher, d.options) AS options,
		   d.paused,
		   CASE WHEN d.disabled_at IS NOT NULL THEN 'disabled'
				WHEN d.paused THEN 'paused'
				WHEN d.failing_since IS NOT NULL THEN 'failing'
				ELSE 'ok' END AS state,
		   d.last_error,
		   d.last_error_at,
		   d.failing_since,
		   d.disabled_reason,
		   d.disabled_at,
		   ARRAY(SELECT s.pattern FROM outbox.subscription s
				 WHERE s.destination_id = d.id ORDER BY s.pattern) AS subscriptions,
		   d.created_at
	FROM outbox.destination d;

-- One row per (message, destination) the message is routed to; messages of
-- the default destination show it as "default".  (It reads the positions
-- itself, not through destination_position(), so that a role granted SELECT
-- on the view needs no privilege on the tables.)
CREATE VIEW outbox.deliveries AS
	SELECT m.id AS message_id, 'default'::text AS destination, m.status, m.retries,
		   m.last_error, m.next_attempt_at, m.processed_at
	FROM outbox.messages m
	WHERE m.destinations IS NULL
	UNION ALL
	SELECT m.id, d.name,
		   coalesce(x.status,
					CASE WHEN m.id <= (SELECT p.upto FROM outbox.destination_progress p
									   WHERE p.destination_id = d.id
									   ORDER BY p.upto DESC LIMIT 1)
						 THEN 'processed'::outbox.message_status
						 ELSE 'pending'::outbox.message_status END),
		   coalesce(x.retries, 0), x.last_error,
		   coalesce(x.next_attempt_at, m.created_at),
		   CASE WHEN x.status IS NOT NULL THEN x.processed_at
				ELSE (SELECT min(p.at) FROM outbox.destination_progress p
					  WHERE p.destination_id = d.id AND p.upto >= m.id) END
	FROM outbox.messages m
	CROSS JOIN LATERAL unnest(m.destinations) AS r(destination_id)
	JOIN outbox.destination d ON d.id = r.destination_id
	LEFT JOIN outbox.delivery x ON x.destination_id = d.id AND x.message_id = m.id
	WHERE m.destinations IS NOT NULL;

REVOKE ALL ON outbox.destination, outbox.subscription, outbox.destination_progress,
	outbox.delivery, outbox.destinations, outbox.deliveries FROM PUBLIC;
REVOKE ALL ON SEQUENCE outbox.destination_id_seq FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox.route(), outbox.create_destination(text, text, jsonb),
	outbox.alter_destination(text, jsonb), outbox.drop_destination(text, boolean),
	outbox.pause_destination(text), outbox.resume_destination(text),
	outbox.subscribe(text, text), outbox.unsubscribe(text, text),
	outbox.topic_matches(text, text), outbox.public_options(text, jsonb),
	outbox.destination_position(int), outbox.fetch_pending(int, text),
	outbox.mark_processed_for(uuid[], text), outbox.mark_failed(uuid, text, text),
	outbox.retry_failed(uuid[], text) FROM PUBLIC;
-- (0.3.1) Like create_destination: superusers only.
REVOKE ALL ON FUNCTION outbox.set_destination_secret(text, text, text) FROM PUBLIC;

-- Operations (0.3.0): live status without table scans, replay, dead letters.
-- Failed messages and deliveries are rare: a partial index on each costs
-- nothing when saving (a new row is pending) and lets the stats and
-- retry_failed() find them without reading the processed ones.
CREATE INDEX messages_failed_idx ON outbox.messages (id) WHERE status = 'failed';
CREATE INDEX delivery_failed_idx ON outbox.delivery (destination_id, message_id)
	WHERE status = 'failed';

-- What a database's workers are doing, from shared memory (no table read).
CREATE FUNCTION outbox.worker_status()
	RETURNS TABLE (database text, destination text, pid int, state text, publisher text,
				   started_at timestamptz, last_batch_at timestamptz,
				   messages_published bigint, attempts_failed bigint, batches bigint,
				   last_error text, last_error_at timestamptz, backlog bigint)
	AS 'MODULE_PATHNAME', 'outbox_worker_status'
	LANGUAGE C VOLATILE PARALLEL RESTRICTED;

-- Per destination (the default one and each destination): what waits for
-- it, through the partial indexes; oldest_pending_age from the oldest
-- waiting id (a UUIDv7 starts with its millisecond; another id, by its
-- message's created_at: 0.3.1).
CREATE VIEW outbox.destination_stats AS
	SELECT 'default'::text AS destination,
		   CASE WHEN current_setting('outbox.enabled', true) = 'off' THEN 'paused'
				ELSE 'ok' END AS state,
		   (SELECT count(*) FROM outbox.messages m
			WHERE m.status = 'pending' AND m.destinations IS NULL) AS pending,
		   (SELECT count(*) FROM outbox.messages m WHERE m.status = 'processing') AS processing,
		   (SELECT count(*) FROM outbox.messages m
			WHERE m.status = 'failed' AND m.destinations IS NULL) AS failed,
		   (SELECT CASE WHEN substr(m.id::text, 15, 1) = '7' THEN greatest(interval '0',
				   now() - to_timestamp(('x' || replace(left(m.id::text, 13), '-', ''))::bit(48)::bigint
										/ 1000.0))
				   ELSE greatest(interval '0', now() - m.created_at) END
			FROM outbox.messages m WHERE m.status = 'pending' AND m.destinations IS NULL
			ORDER BY m.id LIMIT 1) AS oldest_pending_age
	UNION ALL
	SELECT d.name,
		   CASE WHEN d.disabled_at IS NOT NULL THEN 'disabled'
				WHEN d.paused THEN 'paused'
				WHEN d.failing_since IS NOT NULL THEN 'failing'
				ELSE 'ok' END,
		   w.log_pending + w.retry_pending,
		   w.processing,
		   w.failed,
		   CASE WHEN substr(w.oldest::text, 15, 1) = '7' THEN greatest(interval '0',
				now() - to_timestamp(('x' || replace(left(w.oldest::text, 13), '-', ''))::bit(48)::bigint
									 / 1000.0))
				ELSE (SELECT greatest(interval '0', now() - m.created_at) FROM outbox.messages m
					  WHERE m.id = w.oldest) END
	FROM outbox.destination d
	CROSS JOIN LATERAL (
		SELECT (SELECT count(*) FROM outbox.messages m
				WHERE m.status = 'pending' AND m.destinations IS NOT NULL
				AND m.id > p.upto AND d.id = ANY (m.destinations)) AS log_pending,
			   (SELECT count(*) FROM outbox.delivery x
				WHERE x.destination_id = d.id AND x.status = 'pending') AS retry_pending,
			   (SELECT count(*) FROM outbox.delivery x
				WHERE x.destination_id = d.id AND x.status = 'processing') AS processing,
			   (SELECT count(*) FROM outbox.delivery x
				WHERE x.destination_id = d.id AND x.status = 'failed') AS failed,
			   least((SELECT m.id FROM outbox.messages m
					  WHERE m.status = 'pending' AND m.destinations IS NOT NULL
					  AND m.id > p.upto AND d.id = ANY (m.destinations) ORDER BY m.id LIMIT 1),
					 (SELECT x.message_id FROM outbox.delivery x
					  WHERE x.destination_id = d.id AND x.status = 'pending'
					  ORDER BY x.message_id LIMIT 1)) AS oldest
		FROM (SELECT coalesce((SELECT p.upto FROM outbox.destination_progress p
							   WHERE p.destination_id = d.id ORDER BY p.upto DESC LIMIT 1),
							  '00000000-0000-0000-0000-000000000000'::uuid) AS upto) p) w;

-- Dead letters: failed messages of the default destination and failed
-- deliveries, by destination and error.
CREATE VIEW outbox.dead_letters AS
	SELECT f.destination, f.error, count(*) AS failed,
		   min(f.failed_at) AS first_failed_at, max(f.failed_at) AS last_failed_at,
		   min(f.message_id::text)::uuid AS oldest_message_id,
		   array_agg(DISTINCT f.topic ORDER BY f.topic) AS topics
	FROM (SELECT 'default'::text AS destination, m.last_error AS error, m.id AS message_id,
				 m.topic, coalesce(m.processed_at, m.created_at) AS failed_at
		  FROM outbox.messages m WHERE m.status = 'failed' AND m.destinations IS NULL
		  UNION ALL
		  SELECT d.name, x.last_error, x.message_id, m.topic,
				 coalesce(x.processed_at, x.next_attempt_at)
		  FROM outbox.delivery x
		  JOIN outbox.destination d ON d.id = x.destination_id
		  LEFT JOIN outbox.messages m ON m.id = x.message_id
		  WHERE x.status = 'failed') f
	GROUP BY f.destination, f.error;

-- Publish processed messages again, with their ids, in id order.
CREATE FUNCTION outbox.replay(since timestamptz, until timestamptz,
							  topic_pattern text DEFAULT NULL,
							  destination text DEFAULT NULL) RETURNS bigint
	AS 'MODULE_PATHNAME', 'outbox_replay'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
CREATE FUNCTION outbox.replay(ids uuid[]) RETURNS bigint
	AS 'MODULE_PATHNAME', 'outbox_replay_ids'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- Requeue failed messages and deliveries by filter.  Its first three
-- arguments have no default (NULL: any), so that every call of the older
-- signatures, retry_failed(), retry_failed(ids) and retry_failed(ids,
-- destination), still resolves to them (and their grants).
CREATE FUNCTION outbox.retry_failed(ids uuid[], destination text, topic_pattern text,
									failed_after timestamptz DEFAULT NULL,
									failed_before timestamptz DEFAULT NULL,
									error_like text DEFAULT NULL) RETURNS int
	AS 'MODULE_PATHNAME', 'outbox_retry_failed_where'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;

REVOKE ALL ON outbox.destination_stats, outbox.dead_letters FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox.worker_status(),
	outbox.replay(timestamptz, timestamptz, text, text), outbox.replay(uuid[]),
	outbox.retry_failed(uuid[], text, text, timestamptz, timestamptz, text) FROM PUBLIC;

-- Least privilege: nothing for PUBLIC; README shows the grants roles need.
REVOKE ALL ON SCHEMA outbox FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA outbox FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA outbox FROM PUBLIC;
