-- bench/sql/setup.sql: the benchmark's own objects, created in the
-- throw-away cluster's "bench" database after CREATE EXTENSION outbox, pgq.
--
-- Baselines run on copies of outbox.messages with exactly the same columns,
-- defaults, CHECK constraints and indexes; only the id default differs: an
-- increasing uuid from a sequence instead of outbox.next_id(), so the
-- baseline's primary key grows at its right edge just as outbox's UUIDv7
-- ids do, and no outbox code runs on the baseline's path.

CREATE SCHEMA bench;

CREATE SEQUENCE bench.id_seq;

-- Target of the plain INSERT in the save-cost scenario.
CREATE TABLE bench.plain_messages
	(LIKE outbox.messages INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
ALTER TABLE bench.plain_messages
	ALTER COLUMN id SET DEFAULT lpad(to_hex(nextval('bench.id_seq')), 32, '0')::uuid;

-- Queue table of the PL/pgSQL claim-and-mark relay in the drain scenario.
CREATE TABLE bench.relay_messages
	(LIKE outbox.messages INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
ALTER TABLE bench.relay_messages
	ALTER COLUMN id SET DEFAULT lpad(to_hex(nextval('bench.id_seq')), 32, '0')::uuid;

-- From 0.3.0 on, the pending index of outbox.messages covers only the default
-- destination's messages (destinations IS NULL), which the loop below does not
-- ask for: without this, the copy's pending messages would have no index the
-- loop can use, and it would scan the table.  Give the copy 0.2.0's pending
-- index instead of the two per-destination ones.
DO $$
DECLARE
	idx regclass;
BEGIN
	FOR idx IN
		SELECT i.indexrelid::regclass FROM pg_index i
		 WHERE i.indrelid = 'bench.relay_messages'::regclass
		   AND pg_get_expr(i.indpred, i.indrelid) LIKE '%destinations%'
	LOOP
		EXECUTE format('DROP INDEX %s', idx);
	END LOOP;
	IF FOUND THEN
		CREATE INDEX relay_messages_pending_idx ON bench.relay_messages (id)
			WHERE status = 'pending';
	END IF;
END
$$;

-- The classic polling relay, done as fairly as it can be: claim a batch in
-- id order with UPDATE ... FOR UPDATE SKIP LOCKED, send each message with
-- pg_notify (the same JSON envelope as outbox's notify publisher), mark the
-- batch processed, COMMIT; again until nothing is pending.  The same
-- transaction shape as outbox's worker with the notify publisher.
CREATE PROCEDURE bench.plpgsql_relay(batch_size int, INOUT relayed bigint DEFAULT 0)
LANGUAGE plpgsql AS $$
DECLARE
	ids uuid[];
BEGIN
	relayed := 0;
	LOOP
		WITH claimed AS (
			UPDATE bench.relay_messages m
			   SET status = 'processing', claimed_at = now(), claimed_by = pg_backend_pid()
			 WHERE m.id IN (SELECT p.id FROM bench.relay_messages p
							 WHERE p.status = 'pending' AND p.next_attempt_at <= now()
							 ORDER BY p.id LIMIT batch_size
							 FOR UPDATE SKIP LOCKED)
			RETURNING m.*),
		sent AS (
			SELECT c.id,
				   pg_notify(c.topic,
							 json_build_object('id', c.id, 'topic', c.topic, 'key', c.key,
											   'headers', c.headers,
											   'payload', convert_from(c.payload, 'UTF8')::json,
											   'created_at', c.created_at)::text) AS sent
			  FROM claimed c ORDER BY c.id)
		SELECT array_agg(s.id) INTO ids FROM sent s;
		EXIT WHEN ids IS NULL;
		UPDATE bench.relay_messages
		   SET status = 'processed', processed_at = now(), claimed_at = NULL, claimed_by = NULL
		 WHERE id = ANY (ids);
		relayed := relayed + cardinality(ids);
		COMMIT;
	END LOOP;
END
$$;

-- Fill a PgQ queue with total events, ticking after every per_tick events
-- so that each PgQ batch holds per_tick events (in production the ticker
-- runs while events are produced; here the ticks are made by hand).
-- The queue's ticker_max_count must be per_tick.
CREATE PROCEDURE bench.pgq_fill(queue text, total int, per_tick int)
LANGUAGE plpgsql AS $$
DECLARE
	done int := 0;
	n int;
BEGIN
	WHILE done < total LOOP
		n := least(per_tick, total - done);
		PERFORM pgq.insert_event(queue, 'bench.drain',
					format('{"order_id": %s, "customer_id": "customer-%s", "status": "created", "currency": "EUR", "total": 129.95, "items": [{"sku": "SKU-1001", "qty": 2}, {"sku": "SKU-2002", "qty": 1}], "note": "leave it at the door"}',
						   g, (random() * 999)::int),
					'customer-' || (random() * 999)::int,
					'{"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}', NULL, NULL)
		  FROM generate_series(done + 1, done + n) g;
		done := done + n;
		COMMIT;
		PERFORM pgq.ticker(queue);
		COMMIT;
	END LOOP;
END
$$;

-- A PgQ consumer doing the same work per event as the relays: one
-- pg_notify with a JSON envelope; one batch per transaction.
CREATE PROCEDURE bench.pgq_consume(queue text, consumer text, INOUT consumed bigint DEFAULT 0)
LANGUAGE plpgsql AS $$
DECLARE
	batch bigint;
	n bigint;
BEGIN
	consumed := 0;
	LOOP
		batch := pgq.next_batch(queue, consumer);
		EXIT WHEN batch IS NULL;
		PERFORM pg_notify('bench.pgq',
						  json_build_object('id', e.ev_id, 'topic', e.ev_type, 'key', e.ev_extra1,
											'headers', e.ev_extra2::json,
											'payload', e.ev_data::json,
											'created_at', e.ev_time)::text)
		   FROM pgq.get_batch_events(batch) e;
		GET DIAGNOSTICS n = ROW_COUNT;
		PERFORM pgq.finish_batch(batch);
		consumed := consumed + n;
		COMMIT;
	END LOOP;
END
$$;

-- A relay outside the database that polls every `every` seconds (the usual
-- library default is one second), with outbox's store API: fetch_pending,
-- pg_notify each message, mark_processed, COMMIT, until nothing is due;
-- then sleep.  Runs for run_for seconds.
CREATE PROCEDURE bench.poll_relay(run_for float8, every float8, INOUT relayed bigint DEFAULT 0)
LANGUAGE plpgsql AS $$
DECLARE
	stop_at timestamptz := clock_timestamp() + run_for * interval '1 second';
	ids uuid[];
BEGIN
	relayed := 0;
	WHILE clock_timestamp() < stop_at LOOP
		LOOP
			WITH fetched AS (SELECT * FROM outbox.fetch_pending(1000)),
			sent AS (
				SELECT f.id,
					   pg_notify(f.topic,
								 json_build_object('id', f.id, 'topic', f.topic, 'key', f.key,
												   'headers', f.headers,
												   'payload', convert_from(f.payload, 'UTF8')::json,
												   'created_at', f.created_at)::text) AS sent
				  FROM fetched f ORDER BY f.id)
			SELECT array_agg(s.id) INTO ids FROM sent s;
			EXIT WHEN ids IS NULL;
			PERFORM outbox.mark_processed(VARIADIC ids);
			relayed := relayed + cardinality(ids);
			COMMIT;
		END LOOP;
		COMMIT;
		PERFORM pg_sleep(every);
	END LOOP;
END
$$;
