-- bench/sql/destinations-design.sql: the measurement behind the design of
-- destinations (issue 13), the write cost of relaying N messages to three
-- destinations in two designs, in one session, on tables of their own:
--
--   rows:      a delivery row per (message, destination), written when the
--              message is saved, marked processed by each destination, and
--              the message marked once all three are (what a row-status
--              relay does per destination);
--   positions: each destination keeps a position in the id-ordered log, one
--              row per batch, and the message is marked once (what
--              delivery.c does; a delivery row only for exceptions, none
--              here).
--
--   psql -X -v n=200000 -v batch=100 -f bench/sql/destinations-design.sql
--
-- Prints each step's milliseconds as NOTICEs, and the ratio.  Needs nothing
-- of the extension: the tables have the shape of outbox.messages and
-- outbox.delivery, and are dropped at the end.

\set ON_ERROR_STOP on
\if :{?n}
\else
\set n 200000
\endif
\if :{?batch}
\else
\set batch 100
\endif

SET synchronous_commit = off;
SET client_min_messages = warning;
DROP TABLE IF EXISTS design_messages, design_messages_b, design_delivery, design_progress;
RESET client_min_messages;

CREATE TABLE design_messages (
	id bigint PRIMARY KEY,
	topic text NOT NULL,
	key text,
	payload bytea NOT NULL,
	status text NOT NULL DEFAULT 'pending',
	destinations int[],
	processed_at timestamptz
);
CREATE TABLE design_delivery (
	destination_id int NOT NULL,
	message_id bigint NOT NULL,
	status text NOT NULL DEFAULT 'pending',
	retries int NOT NULL DEFAULT 0,
	processed_at timestamptz,
	PRIMARY KEY (destination_id, message_id)
);
CREATE INDEX design_delivery_unfinished ON design_delivery (destination_id, message_id)
	WHERE status = 'pending';
CREATE TABLE design_progress (
	destination_id int NOT NULL,
	upto bigint NOT NULL,
	at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (destination_id, upto)
);

INSERT INTO design_messages (id, topic, key, payload, destinations)
SELECT i, 'orders.created', 'customer-' || (i % 1000), convert_to(repeat('x', 100), 'UTF8'), '{1,2,3}'
FROM generate_series(1, :n) i;
CREATE TABLE design_messages_b (LIKE design_messages INCLUDING ALL);
INSERT INTO design_messages_b SELECT * FROM design_messages;
VACUUM ANALYZE design_messages, design_messages_b;

CREATE FUNCTION pg_temp.measure(n int, batch int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	t timestamptz;
	ins_ms float8;
	upd_ms float8;
	msg_ms float8;
	prog_ms float8;
	msg2_ms float8;
	d int;
	lo bigint;
BEGIN
	-- rows: one per (message, destination) at save time
	t := clock_timestamp();
	INSERT INTO design_delivery (destination_id, message_id)
	SELECT g.dest, m.id FROM design_messages m, generate_series(1, 3) g(dest);
	ins_ms := extract(epoch FROM clock_timestamp() - t) * 1000;
	-- each destination marks its deliveries, batch by batch
	t := clock_timestamp();
	FOR d IN 1 .. 3 LOOP
		lo := 0;
		WHILE lo < n LOOP
			UPDATE design_delivery x SET status = 'processed', processed_at = now()
			WHERE x.destination_id = d AND x.message_id > lo AND x.message_id <= lo + batch;
			lo := lo + batch;
		END LOOP;
	END LOOP;
	upd_ms := extract(epoch FROM clock_timestamp() - t) * 1000;
	-- and the message once all three are processed
	t := clock_timestamp();
	lo := 0;
	WHILE lo < n LOOP
		UPDATE design_messages m SET status = 'processed', processed_at = now()
		WHERE m.id > lo AND m.id <= lo + batch;
		lo := lo + batch;
	END LOOP;
	msg_ms := extract(epoch FROM clock_timestamp() - t) * 1000;

	-- positions: a row per batch per destination ...
	t := clock_timestamp();
	FOR d IN 1 .. 3 LOOP
		lo := 0;
		WHILE lo < n LOOP
			INSERT INTO design_progress (destination_id, upto) VALUES (d, lo + batch);
			lo := lo + batch;
		END LOOP;
	END LOOP;
	prog_ms := extract(epoch FROM clock_timestamp() - t) * 1000;
	-- ... and the message marked once, by the last destination (in a copy
	-- of the messages as they were before the first design marked them)
	t := clock_timestamp();
	lo := 0;
	WHILE lo < n LOOP
		UPDATE design_messages_b m SET status = 'processed', processed_at = now()
		WHERE m.id > lo AND m.id <= lo + batch;
		lo := lo + batch;
	END LOOP;
	msg2_ms := extract(epoch FROM clock_timestamp() - t) * 1000;

	RAISE NOTICE 'rows: insert % ms + mark deliveries % ms + mark messages % ms = % ms',
		round(ins_ms), round(upd_ms), round(msg_ms), round(ins_ms + upd_ms + msg_ms);
	RAISE NOTICE 'positions: progress rows % ms + mark messages % ms = % ms',
		round(prog_ms), round(msg2_ms), round(prog_ms + msg2_ms);
	RAISE NOTICE 'rows / positions: %x', round(((ins_ms + upd_ms + msg_ms) / (prog_ms + msg2_ms))::numeric, 2);
END $$;

SELECT pg_temp.measure(:n, :batch);

DROP TABLE design_messages, design_messages_b, design_delivery, design_progress;
