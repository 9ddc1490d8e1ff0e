-- outbox--0.3.0--0.3.1.sql: ALTER EXTENSION outbox UPDATE from 0.3.0 to 0.3.1:
-- the security release (see README, "Security").
-- Complain if the script is sourced in psql rather than via ALTER EXTENSION.
\echo Use "ALTER EXTENSION outbox UPDATE" to load this file. \quit

-- Issue 22, findings 7 and 8: destination secrets set without statement
-- text (outbox.set_destination_secret), like create_destination for
-- superusers only.
CREATE FUNCTION outbox.set_destination_secret(name text, option text, value text) RETURNS void
	AS 'MODULE_PATHNAME', 'outbox_set_destination_secret'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION outbox.set_destination_secret(text, text, text) FROM PUBLIC;

-- ---------------------------------------------------------------- issue 22: dumps, message ids, stats ages
-- pg_dump: the tables that hold user state are dumped with their data,
-- every row, and the sequence of the destinations' ids.  A restore inserts
-- messages with their destinations column given: its default becomes '{}'
-- ("not routed yet"), so that the trigger outbox.route() tells a restored
-- row (taken as it is) from a new one (routed).
ALTER TABLE outbox.messages ALTER COLUMN destinations SET DEFAULT '{}';
SELECT pg_catalog.pg_extension_config_dump('outbox.messages', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.destination', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.destination_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.subscription', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.destination_progress', '');
SELECT pg_catalog.pg_extension_config_dump('outbox.delivery', '');

-- oldest_pending_age is never NULL while something is pending: an id that
-- is not a UUIDv7 (inserted by hand) takes its age from created_at.
CREATE OR REPLACE VIEW outbox.stats AS
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

CREATE OR REPLACE VIEW outbox.destination_stats AS
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
