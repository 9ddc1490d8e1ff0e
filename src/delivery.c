/*-------------------------------------------------------------------------
 *
 * delivery.c
 *		The store of a destination: its position in the messages, and the
 *		deliveries that did not go through at the first attempt.
 *
 * A destination reads the messages routed to it (destinations column) in
 * id order after its position, up to the id horizon (shmem.c): below the
 * horizon no message can still commit, so a position never skips a
 * message that commits late.  What it delivers at the first attempt
 * costs no write of its own; the batch moves the position (one row in
 * outbox.destination_progress).  A failed attempt, a rejected message, one
 * not attempted, and every later message of a key that has an unfinished
 * delivery (per-key order per destination) get a row in outbox.delivery,
 * retried like the default destination's messages: due, in id order, key
 * heads only.  Each destination has one worker, the only writer of its
 * position and rows; an external destination is claimed by
 * outbox.fetch_pending(), serialised by a lock on its row.
 *
 * A routed message's own status becomes processed (or failed) when every
 * destination it went to passed it and none of its deliveries is
 * unfinished: the destination that passes it last sets it, after its
 * position committed (of two destinations passing it at once, at least
 * one sees the other's position), and the main worker catches what a
 * crash left behind.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "catalog/namespace.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "destination.h"
#include "outbox.h"
#include "shmem.h"
#include "store.h"

/* Most delivery rows one claim reads to find the due key heads. */
#define MAX_RETRIES_SCANNED 10000

#define LOAD_SQL \
	"SELECT d.name, d.publisher, d.options, d.paused, d.disabled_at IS NOT NULL, " \
	"d.failing_since, d.last_error FROM outbox.destination d WHERE d.id = $1"

#define POSITION_SQL \
	"SELECT p.upto FROM outbox.destination_progress p WHERE p.destination_id = $1 " \
	"ORDER BY p.upto DESC LIMIT 1"

#define UNFINISHED_SQL \
	"SELECT count(*) FROM outbox.delivery x WHERE x.destination_id = $1 " \
	"AND x.status IN ('pending', 'processing')"

#define HELD_KEYS_SQL \
	"SELECT DISTINCT x.key FROM outbox.delivery x WHERE x.destination_id = $1 " \
	"AND x.status IN ('pending', 'processing') AND x.key <> ''"

/*
 * The unfinished deliveries in id order, and whether each may be attempted
 * now: pending and due.  One that is not (in backoff, or claimed by an
 * external relay: processing) holds back the later ones of its key.  $1 =
 * destination, $2 = now, $3 = most rows.
 */
#define RETRIES_SQL \
	"SELECT x.message_id, x.key, x.status = 'pending' AND x.next_attempt_at <= $2, x.retries " \
	"FROM outbox.delivery x WHERE x.destination_id = $1 AND x.status IN ('pending', 'processing') " \
	"ORDER BY x.message_id LIMIT $3"

/* $1 = destination, $2 = after, $3 = up to, $4 = most rows. */
#define LOG_SCAN_SQL \
	"SELECT m.id, m.key, octet_length(m.payload) FROM outbox.messages m " \
	"WHERE m.id > $2 AND m.id <= $3 AND m.destinations IS NOT NULL " \
	"AND $1 = ANY (m.destinations) ORDER BY m.id LIMIT $4"

/*
 * The newest message up to $1 (the id horizon), routed or not: a
 * destination that read to the horizon moves its position up to it.
 */
#define NEWEST_SQL \
	"SELECT m.id FROM outbox.messages m WHERE m.id <= $1 ORDER BY m.id DESC LIMIT 1"

#define FETCH_SQL \
	"SELECT m.* FROM outbox.messages m WHERE m.id = ANY ($1) ORDER BY m.id"

/*
 * New delivery rows: $1 = destination, then per row id, key, status, retries,
 * last_error, next_attempt_at; $8 = claimed_by (NULL: not claimed), $9 = now.
 */
#define INSERT_DELIVERIES_SQL \
	"INSERT INTO outbox.delivery (destination_id, message_id, key, status, retries, " \
	"last_error, next_attempt_at, claimed_at, claimed_by, processed_at) " \
	"SELECT $1, r.id, r.key, r.status::outbox.message_status, r.retries, r.error, r.next, " \
	"CASE WHEN $8 IS NULL THEN NULL ELSE $9 END, $8, " \
	"CASE WHEN r.status = 'failed' THEN $9 END " \
	"FROM unnest($2::uuid[], $3::text[], $4::text[], $5::int[], $6::text[], $7::timestamptz[]) " \
	"AS r(id, key, status, retries, error, next) " \
	"ON CONFLICT (destination_id, message_id) DO NOTHING"

/* $1 = destination, $2 = ids, $3 = now. */
#define DELIVERED_SQL \
	"UPDATE outbox.delivery SET status = 'processed', processed_at = $3, " \
	"claimed_at = NULL, claimed_by = NULL " \
	"WHERE destination_id = $1 AND message_id = ANY ($2) AND status IN ('pending', 'processing')"

/*
 * A failed attempt of a delivery row, as MARK_FAILED_SQL in store.c: $1 =
 * destination, $2 = id, $3 = error, $4 = permanent, $5 = max_retries, $6 =
 * retry_at or NULL, $7 = now, $8 = backoff base, $9 = backoff max.  A
 * delivery that fails for good records when, in processed_at.
 */
#define DELIVERY_FAILED_SQL \
	"UPDATE outbox.delivery SET retries = retries + 1, last_error = $3, " \
	"status = CASE WHEN $4 OR retries + 1 >= $5 THEN 'failed'::outbox.message_status " \
	"              ELSE 'pending'::outbox.message_status END, " \
	"processed_at = CASE WHEN $4 OR retries + 1 >= $5 THEN $7 END, " \
	"next_attempt_at = COALESCE($6, $7 + least($9::float8, $8::float8 * power(2, least(retries, 60))) " \
	"                                 * (0.5 + random() * 0.5) * interval '1 millisecond'), " \
	"claimed_at = NULL, claimed_by = NULL " \
	"WHERE destination_id = $1 AND message_id = $2 AND status IN ('pending', 'processing') " \
	"RETURNING status::text"

#define PROGRESS_SQL \
	"INSERT INTO outbox.destination_progress (destination_id, upto, at) " \
	"VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"

/*
 * Routed messages among $1 that every destination passed, with no
 * unfinished delivery, become processed, or failed when one of their
 * deliveries failed.  Destinations dropped since do not count.  $2 = now.
 */
#define FINALIZE_SQL \
	"WITH pos AS MATERIALIZED (SELECT d.id, coalesce(outbox.destination_position(d.id), " \
	"    '00000000-0000-0000-0000-000000000000') AS upto FROM outbox.destination d) " \
	"UPDATE outbox.messages m SET processed_at = $2, " \
	"status = CASE WHEN EXISTS (SELECT 1 FROM outbox.delivery x JOIN pos ON pos.id = x.destination_id " \
	"    WHERE x.message_id = m.id AND x.status = 'failed') " \
	"  THEN 'failed'::outbox.message_status ELSE 'processed'::outbox.message_status END " \
	"WHERE m.id = ANY ($1) AND m.status = 'pending' AND m.destinations IS NOT NULL " \
	"AND NOT EXISTS (SELECT 1 FROM unnest(m.destinations) r(id) JOIN pos ON pos.id = r.id " \
	"    WHERE pos.upto < m.id) " \
	"AND NOT EXISTS (SELECT 1 FROM outbox.delivery x JOIN pos ON pos.id = x.destination_id " \
	"    WHERE x.message_id = m.id AND x.status IN ('pending', 'processing'))"

/*
 * Routed messages not finished yet, in id order after $2; $1 = most.  The
 * main worker pages through them (a backlog of one slow destination must
 * not hide the stragglers after it).
 */
#define STRAGGLERS_SQL \
	"SELECT m.id FROM outbox.messages m WHERE m.status = 'pending' " \
	"AND m.destinations IS NOT NULL AND m.id > $2 ORDER BY m.id LIMIT $1"

#define FAILING_SQL \
	"UPDATE outbox.destination SET failing_since = coalesce(failing_since, $2), " \
	"last_error = $3, last_error_at = $2 WHERE id = $1"

#define RECOVERED_SQL \
	"UPDATE outbox.destination SET failing_since = NULL WHERE id = $1"

#define DISABLE_SQL \
	"UPDATE outbox.destination SET disabled_at = $2, disabled_reason = $3 " \
	"WHERE id = $1 AND disabled_at IS NULL"

/* The earliest retry still to come; $1 = destination, $2 = now. */
#define NEXT_DUE_SQL \
	"SELECT min(x.next_attempt_at) FROM outbox.delivery x WHERE x.destination_id = $1 " \
	"AND x.status = 'pending' AND x.next_attempt_at > $2"

static OutboxStatement load_stmt = {
	.sql = LOAD_SQL, .nargs = 1, .argtypes = {INT4OID},
	.read_only = true, .expected = SPI_OK_SELECT, .action = "read an outbox destination"
};
static OutboxStatement position_stmt = {
	.sql = POSITION_SQL, .nargs = 1, .argtypes = {INT4OID},
	.read_only = false, .expected = SPI_OK_SELECT, .action = "read an outbox destination's position"
};
static OutboxStatement unfinished_stmt = {
	.sql = UNFINISHED_SQL, .nargs = 1, .argtypes = {INT4OID},
	.read_only = false, .expected = SPI_OK_SELECT, .action = "count outbox deliveries"
};
static OutboxStatement held_keys_stmt = {
	.sql = HELD_KEYS_SQL, .nargs = 1, .argtypes = {INT4OID},
	.read_only = false, .expected = SPI_OK_SELECT, .action = "read outbox deliveries"
};
static OutboxStatement retries_stmt = {
	.sql = RETRIES_SQL, .nargs = 3, .argtypes = {INT4OID, TIMESTAMPTZOID, INT4OID},
	.read_only = false, .expected = SPI_OK_SELECT, .action = "read outbox deliveries"
};
static OutboxStatement log_scan_stmt = {
	.sql = LOG_SCAN_SQL, .nargs = 4, .argtypes = {INT4OID, UUIDOID, UUIDOID, INT4OID},
	.read_only = true, .expected = SPI_OK_SELECT, .action = "read outbox messages"
};
static OutboxStatement newest_stmt = {
	.sql = NEWEST_SQL, .nargs = 1, .argtypes = {UUIDOID},
	.read_only = true, .expected = SPI_OK_SELECT, .action = "read outbox messages"
};
static OutboxStatement fetch_stmt = {
	.sql = FETCH_SQL, .nargs = 1, .argtypes = {UUIDARRAYOID},
	.read_only = false, .expected = SPI_OK_SELECT, .action = "read outbox messages"
};
static OutboxStatement insert_deliveries_stmt = {
	.sql = INSERT_DELIVERIES_SQL, .nargs = 9,
	.argtypes = {INT4OID, UUIDARRAYOID, TEXTARRAYOID, TEXTARRAYOID, INT4ARRAYOID,
	TEXTARRAYOID, TIMESTAMPTZARRAYOID, INT4OID, TIMESTAMPTZOID},
	.read_only = false, .expected = SPI_OK_INSERT, .action = "record outbox deliveries"
};
static OutboxStatement delivered_stmt = {
	.sql = DELIVERED_SQL, .nargs = 3, .argtypes = {INT4OID, UUIDARRAYOID, TIMESTAMPTZOID},
	.read_only = false, .expected = SPI_OK_UPDATE, .action = "record outbox deliveries"
};
static OutboxStatement delivery_failed_stmt = {
	.sql = DELIVERY_FAILED_SQL, .nargs = 9,
	.argtypes = {INT4OID, UUIDOID, TEXTOID, BOOLOID, INT4OID, TIMESTAMPTZOID,
	TIMESTAMPTZOID, INT4OID, INT4OID},
	.read_only = false, .expected = SPI_OK_UPDATE_RETURNING, .action = "record an outbox delivery"
};
static OutboxStatement progress_stmt = {
	.sql = PROGRESS_SQL, .nargs = 3, .argtypes = {INT4OID, UUIDOID, TIMESTAMPTZOID},
	.read_only = false, .expected = SPI_OK_INSERT, .action = "record an outbox destination's position"
};
static OutboxStatement finalize_stmt = {
	.sql = FINALIZE_SQL, .nargs = 2, .argtypes = {UUIDARRAYOID, TIMESTAMPTZOID},
	.read_only = false, .expected = SPI_OK_UPDATE, .action = "finish outbox messages"
};
static OutboxStatement stragglers_stmt = {
	.sql = STRAGGLERS_SQL, .nargs = 2, .argtypes = {INT4OID, UUIDOID},
	.read_only = false, .expected = SPI_OK_SELECT, .action = "read outbox messages"
};
static OutboxStatement failing_stmt = {
	.sql = FAILING_SQL, .nargs = 3, .argtypes = {INT4OID, TIMESTAMPTZOID, TEXTOID},
	.read_only = false, .expected = SPI_OK_UPDATE, .action = "record an outbox destination's state"
};
static OutboxStatement recovered_stmt = {
	.sql = RECOVERED_SQL, .nargs = 1, .argtypes = {INT4OID},
	.read_only = false, .expected = SPI_OK_UPDATE, .action = "record an outbox destination's state"
};
static OutboxStatement disable_stmt = {
	.sql = DISABLE_SQL, .nargs = 3, .argtypes = {INT4OID, TIMESTAMPTZOID, TEXTOID},
	.read_only = false, .expected = SPI_OK_UPDATE, .action = "disable an outbox destination"
};
static OutboxStatement next_due_stmt = {
	.sql = NEXT_DUE_SQL, .nargs = 2, .argtypes = {INT4OID, TIMESTAMPTZOID},
	.read_only = false, .expected = SPI_OK_SELECT, .action = "read outbox deliveries"
};

/* What this (destination) worker knows of its destination between batches. */
static pg_uuid_t position;
static bool position_known = false;
static int64 unfinished = -1;	/* delivery rows pending or processing; -1: unknown */

/*
 * Read a destination into *destination (in context); false when it is
 * gone.  Runs in a transaction.
 */
bool
outbox_delivery_load(int32 destination_id, MemoryContext context,
					 OutboxDestination *destination)
{
	Datum		args[1] = {Int32GetDatum(destination_id)};
	OutboxStoreCall call;
	bool		found = false;

	outbox_store_connect_as_owner(&call);

	if (outbox_store_execute(&load_stmt, args, NULL, InvalidSnapshot, 1) > 0)
	{
		HeapTuple	tuple = SPI_tuptable->vals[0];
		TupleDesc	tupdesc = SPI_tuptable->tupdesc;
		MemoryContext old = MemoryContextSwitchTo(context);
		bool		isnull;
		Datum		value;

		destination->id = destination_id;
		destination->name = SPI_getvalue(tuple, tupdesc, 1);
		destination->publisher = SPI_getvalue(tuple, tupdesc, 2);
		destination->options = DatumGetJsonbPCopy(SPI_getbinval(tuple, tupdesc, 3, &isnull));
		destination->paused = DatumGetBool(SPI_getbinval(tuple, tupdesc, 4, &isnull));
		destination->disabled = DatumGetBool(SPI_getbinval(tuple, tupdesc, 5, &isnull));
		value = SPI_getbinval(tuple, tupdesc, 6, &isnull);
		destination->failing_since = isnull ? 0 : DatumGetTimestampTz(value);
		destination->last_error = SPI_getvalue(tuple, tupdesc, 7);
		MemoryContextSwitchTo(old);
		found = true;
	}
	outbox_store_finish_as_owner(&call);
	unfinished = -1;
	position_known = false;
	return found;
}

/* A claim's key guard: the keys held back by an unfinished delivery. */
typedef struct HeldKey
{
	char	   *key;
} HeldKey;

/* An empty set of keys, in the current memory context. */
static HTAB *
new_key_set(void)
{
	HASHCTL		ctl;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(char *);
	ctl.entrysize = sizeof(HeldKey);
	ctl.hash = outbox_string_key_hash;
	ctl.match = outbox_string_key_match;
	ctl.hcxt = CurrentMemoryContext;
	return hash_create("outbox held keys", 64, &ctl,
					   HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
}

/* Add a key to a set; returns whether it was there already. */
static bool
key_set_add(HTAB *keys, char *key)
{
	bool		found;
	HeldKey    *entry = hash_search(keys, &key, HASH_ENTER, &found);

	if (!found)
		entry->key = key;
	return found;
}

/* Whether a key is in a set. */
static bool
key_set_has(HTAB *keys, const char *key)
{
	return hash_search(keys, &key, HASH_FIND, NULL) != NULL;
}

/* Make room in a batch for its per-message flags and diverted rows. */
static void
prepare_destination_batch(OutboxBatch *batch, int capacity)
{
	batch->retried = palloc0(sizeof(bool) * Max(capacity, 1));
	batch->diverted_ids = palloc(sizeof(pg_uuid_t) * Max(capacity, 1));
	batch->diverted_keys = palloc(sizeof(char *) * Max(capacity, 1));
	batch->ndiverted = 0;
	batch->advance = false;
}

/*
 * The messages of ids (in id order), fetched whole into the batch after
 * the ones it holds, with retried[] and retries as given.
 */
static void
fetch_messages(OutboxBatch *batch, pg_uuid_t *ids, int nids, bool retried,
			   const int *retries, MemoryContext context)
{
	Datum		args[1];
	uint64		n;
	int			first = batch->nmessages;
	int			i;

	if (nids == 0)
		return;
	args[0] = PointerGetDatum(outbox_uuid_array(ids, nids));
	n = outbox_store_execute(&fetch_stmt, args, NULL, InvalidSnapshot, 0);
	outbox_store_collect(SPI_tuptable, n, context, batch);
	for (i = first; i < batch->nmessages; i++)
	{
		batch->retried[i] = retried;
		if (retries != NULL)
		{
			int			j;

			/* the rows come in id order, as ids: match them up */
			for (j = 0; j < nids; j++)
			{
				if (memcmp(ids[j].data, batch->messages[i].id.data, UUID_LEN) == 0)
				{
					int			attno = SPI_fnumber(batch->tupdesc, "retries");
					Datum		value = Int32GetDatum(retries[j]);
					bool		isnull = false;
					MemoryContext old = MemoryContextSwitchTo(context);

					/* the row shows the delivery's attempts, as the message does */
					batch->messages[i].retries = retries[j];
					if (attno > 0)
						batch->tuples[i] = heap_modify_tuple_by_cols(batch->tuples[i],
																	 batch->tupdesc, 1,
																	 &attno, &value, &isnull);
					MemoryContextSwitchTo(old);
					break;
				}
			}
		}
	}
}

/*
 * Claim a destination's next batch, in the current transaction, into the
 * current memory context: first its due retries (key heads, in id order),
 * then the messages routed to it after its position and below the id
 * horizon, with those whose key is held back by an unfinished delivery
 * diverted behind it.  The batch carries the position it moves to.
 */
OutboxBatch *
outbox_delivery_claim(OutboxDestination *destination, int max_messages, int64 max_bytes,
					  bool ordered_by_key)
{
	MemoryContext caller = CurrentMemoryContext;
	OutboxBatch *batch = palloc0(sizeof(OutboxBatch));
	TimestampTz now = GetCurrentTimestamp();
	HTAB	   *held = new_key_set();
	Datum		args[4];
	OutboxStoreCall call;
	int64		bytes = 0;
	uint64		i;
	bool		isnull;

	batch->capacity = 64;
	batch->messages = palloc0(sizeof(OutboxMessage) * batch->capacity);
	batch->tuples = palloc0(sizeof(HeapTuple) * batch->capacity);
	prepare_destination_batch(batch, max_messages * 2);

	/*
	 * A destination this worker disabled (an HTTP 410, failing too long)
	 * gets no more attempts: the worker exits once the main worker has
	 * taken its slot back.
	 */
	if (destination->disabled)
		return batch;

	outbox_store_connect_as_owner(&call);
	args[0] = Int32GetDatum(destination->id);

	if (!position_known)
	{
		memset(position.data, 0, UUID_LEN);
		if (outbox_store_execute(&position_stmt, args, NULL, InvalidSnapshot, 1) > 0)
			memcpy(position.data,
				   DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
											   &isnull))->data, UUID_LEN);
		position_known = true;
	}
	if (unfinished < 0)
	{
		outbox_store_execute(&unfinished_stmt, args, NULL, InvalidSnapshot, 1);
		unfinished = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}

	/* 1. The due retries: under per-key order, only a key's head and its run. */
	if (unfinished > 0)
	{
		HTAB	   *stopped = new_key_set();
		uint64		nrows;
		int			nretry = 0;
		pg_uuid_t  *retry_ids = palloc(sizeof(pg_uuid_t) * max_messages);
		int		   *retry_counts = palloc(sizeof(int) * max_messages);

		if (ordered_by_key)
		{
			uint64		nkeys = outbox_store_execute(&held_keys_stmt, args, NULL, InvalidSnapshot, 0);

			for (i = 0; i < nkeys; i++)
				(void) key_set_add(held, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
		}
		args[1] = TimestampTzGetDatum(now);
		args[2] = Int32GetDatum(MAX_RETRIES_SCANNED);
		nrows = outbox_store_execute(&retries_stmt, args, NULL, InvalidSnapshot, 0);
		for (i = 0; i < nrows && nretry < max_messages; i++)
		{
			HeapTuple	tuple = SPI_tuptable->vals[i];
			TupleDesc	tupdesc = SPI_tuptable->tupdesc;
			char	   *key = SPI_getvalue(tuple, tupdesc, 2);
			bool		due = DatumGetBool(SPI_getbinval(tuple, tupdesc, 3, &isnull));

			if (ordered_by_key && key[0] != '\0')
			{
				if (key_set_has(stopped, key))
					continue;
				if (!due)
				{
					(void) key_set_add(stopped, key);
					continue;
				}
			}
			else if (!due)
				continue;
			memcpy(retry_ids[nretry].data,
				   DatumGetUUIDP(SPI_getbinval(tuple, tupdesc, 1, &isnull))->data, UUID_LEN);
			retry_counts[nretry] = DatumGetInt32(SPI_getbinval(tuple, tupdesc, 4, &isnull));
			nretry++;
		}
		SPI_freetuptable(SPI_tuptable);
		fetch_messages(batch, retry_ids, nretry, true, retry_counts, caller);
		for (i = 0; i < (uint64) batch->nmessages; i++)
			bytes += batch->messages[i].payload_len;
	}

	/* 2. The log, below the horizon, on a snapshot taken after reading it. */
	if (batch->nmessages < max_messages && (max_bytes == 0 || bytes < max_bytes))
	{
		pg_uuid_t	horizon;
		Snapshot	snapshot;
		int			limit = max_messages - batch->nmessages;
		uint64		nscanned;
		SPITupleTable *scanned;
		pg_uuid_t  *chosen = palloc(sizeof(pg_uuid_t) * limit);
		int			nchosen = 0;
		bool		cut = false;

		memset(&horizon, 0, sizeof(horizon));
		outbox_shmem_id_horizon(&horizon);
		snapshot = RegisterSnapshot(GetLatestSnapshot());
		args[1] = UUIDPGetDatum(&position);
		args[2] = UUIDPGetDatum(&horizon);
		args[3] = Int32GetDatum(limit);
		nscanned = outbox_store_execute(&log_scan_stmt, args, NULL, snapshot, 0);
		scanned = SPI_tuptable;

		for (i = 0; i < nscanned; i++)
		{
			HeapTuple	tuple = scanned->vals[i];
			TupleDesc	tupdesc = scanned->tupdesc;
			pg_uuid_t  *id = DatumGetUUIDP(SPI_getbinval(tuple, tupdesc, 1, &isnull));
			char	   *key = ordered_by_key ? SPI_getvalue(tuple, tupdesc, 2) : "";
			int64		size = DatumGetInt32(SPI_getbinval(tuple, tupdesc, 3, &isnull));

			if (key[0] != '\0' && key_set_has(held, key))
			{
				/* behind an unfinished delivery of its key: wait in line */
				batch->diverted_ids[batch->ndiverted] = *id;
				batch->diverted_keys[batch->ndiverted] = MemoryContextStrdup(caller, key);
				batch->ndiverted++;
			}
			else
			{
				/* a batch always takes one message, however large */
				if (max_bytes > 0 && bytes > 0 && bytes + size > max_bytes)
				{
					cut = true;
					break;
				}
				bytes += size;
				chosen[nchosen++] = *id;
			}
			batch->position = *id;
			batch->advance = true;
		}
		if (!cut && nscanned < (uint64) limit)
		{
			/*
			 * Read to the horizon: everything up to it is handled.  The
			 * position moves up to the newest message below the horizon,
			 * not past it: messages appear below the horizon when a dump
			 * is restored (inserted with their destinations, and ids older
			 * than the clock), and a destination whose worker ran before
			 * they were in must not pass them.
			 */
			args[0] = UUIDPGetDatum(&horizon);
			if (outbox_store_execute(&newest_stmt, args, NULL, snapshot, 1) > 0)
			{
				pg_uuid_t  *newest = DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[0],
																 SPI_tuptable->tupdesc, 1,
																 &isnull));

				if (memcmp(newest->data, position.data, UUID_LEN) > 0 &&
					memcmp(newest->data, batch->position.data, UUID_LEN) > 0)
				{
					batch->position = *newest;
					batch->advance = true;
				}
			}
		}
		UnregisterSnapshot(snapshot);
		batch->bytes_reached = cut;
		SPI_freetuptable(scanned);
		fetch_messages(batch, chosen, nchosen, false, NULL, caller);
	}
	outbox_store_finish_as_owner(&call);
	return batch;
}

/* Build a text[] of C strings. */
static ArrayType *
text_array(char **values, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	int			i;

	for (i = 0; i < n; i++)
		elems[i] = CStringGetTextDatum(values[i]);
	return construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT);
}

/* New delivery rows, accumulated for one insert. */
typedef struct NewDeliveries
{
	int			n;
	pg_uuid_t  *ids;
	char	  **keys;
	char	  **statuses;
	Datum	   *retries;
	char	  **errors;
	bool	   *error_nulls;
	Datum	   *next;
} NewDeliveries;

/* Room for up to capacity new rows. */
static void
new_deliveries_init(NewDeliveries *rows, int capacity)
{
	capacity = Max(capacity, 1);
	rows->n = 0;
	rows->ids = palloc(sizeof(pg_uuid_t) * capacity);
	rows->keys = palloc(sizeof(char *) * capacity);
	rows->statuses = palloc(sizeof(char *) * capacity);
	rows->retries = palloc(sizeof(Datum) * capacity);
	rows->errors = palloc(sizeof(char *) * capacity);
	rows->error_nulls = palloc(sizeof(bool) * capacity);
	rows->next = palloc(sizeof(Datum) * capacity);
}

/* One new row. */
static void
new_deliveries_add(NewDeliveries *rows, const pg_uuid_t *id, const char *key,
				   const char *status, int retries, const char *error, TimestampTz next)
{
	int			i = rows->n++;

	rows->ids[i] = *id;
	rows->keys[i] = (char *) key;
	rows->statuses[i] = (char *) status;
	rows->retries[i] = Int32GetDatum(retries);
	rows->errors[i] = (char *) (error ? error : "");
	rows->error_nulls[i] = error == NULL;
	rows->next[i] = TimestampTzGetDatum(next);
}

/* Insert the new rows (claimed by claimed_by, when not 0). */
static void
new_deliveries_insert(int32 destination_id, NewDeliveries *rows, int claimed_by)
{
	Datum		args[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	Datum	   *errors;
	int			dims[1];
	int			lbs[1] = {1};
	int			i;

	if (rows->n == 0)
		return;
	errors = palloc(sizeof(Datum) * rows->n);
	for (i = 0; i < rows->n; i++)
		errors[i] = rows->error_nulls[i] ? (Datum) 0 : CStringGetTextDatum(rows->errors[i]);
	dims[0] = rows->n;
	args[0] = Int32GetDatum(destination_id);
	args[1] = PointerGetDatum(outbox_uuid_array(rows->ids, rows->n));
	args[2] = PointerGetDatum(text_array(rows->keys, rows->n));
	args[3] = PointerGetDatum(text_array(rows->statuses, rows->n));
	args[4] = PointerGetDatum(construct_array(rows->retries, rows->n, INT4OID, sizeof(int32),
											  true, TYPALIGN_INT));
	args[5] = PointerGetDatum(construct_md_array(errors, rows->error_nulls, 1, dims, lbs,
												 TEXTOID, -1, false, TYPALIGN_INT));
	args[6] = PointerGetDatum(construct_array(rows->next, rows->n, TIMESTAMPTZOID,
											  sizeof(TimestampTz), FLOAT8PASSBYVAL,
											  TYPALIGN_DOUBLE));
	args[7] = Int32GetDatum(claimed_by);
	if (claimed_by == 0)
		nulls[7] = 'n';
	args[8] = TimestampTzGetDatum(GetCurrentTimestamp());
	outbox_store_execute(&insert_deliveries_stmt, args, nulls, InvalidSnapshot, 0);
}

/*
 * When the first retry of a failed attempt falls due: the first step of the
 * backoff, with equal jitter (as mark_failed computes the later ones).
 */
static TimestampTz
first_retry_at(TimestampTz retry_at)
{
	double		delay_ms;

	if (retry_at != 0)
		return retry_at;
	delay_ms = Min((double) outbox_retry_backoff, (double) outbox_retry_backoff_max) *
		(0.5 + pg_prng_double(&pg_global_prng_state) * 0.5);
	return TimestampTzPlusMilliseconds(GetCurrentTimestamp(), (int64) delay_ms);
}

/*
 * Record what a destination's publisher made of a batch, in the current
 * transaction: retries that succeeded or failed again, first attempts that
 * failed (now delivery rows), the diverted messages, the new position, and
 * the destination's state (failing, recovered, disabled).
 */
void
outbox_delivery_record(OutboxDestination *destination, OutboxBatch *batch,
					   OutboxPublishResult *results)
{
	NewDeliveries rows;
	pg_uuid_t  *ok = palloc(sizeof(pg_uuid_t) * Max(batch->nmessages, 1));
	int			nok = 0;
	int			nfailed = 0;
	int			ndelivered = 0;
	const char *last_error = NULL;
	const char *disable_reason = NULL;
	TimestampTz now = GetCurrentTimestamp();
	Datum		args[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	OutboxStoreCall call;
	int			i;

	new_deliveries_init(&rows, batch->nmessages + batch->ndiverted);
	outbox_store_connect_as_owner(&call);
	args[0] = Int32GetDatum(destination->id);

	for (i = 0; i < batch->nmessages; i++)
	{
		OutboxMessage *m = &batch->messages[i];
		OutboxPublishResult *r = &results[i];
		const char *error = r->error ? r->error : "publish failed";

		if (r->status == OUTBOX_PUBLISH_OK)
		{
			ndelivered++;
			if (batch->retried[i])
				ok[nok++] = m->id;
			continue;
		}
		if (r->status == OUTBOX_PUBLISH_SKIPPED)
		{
			if (!batch->retried[i])
				new_deliveries_add(&rows, &m->id, m->key, "pending", 0, NULL, now);
			continue;
		}
		nfailed++;
		last_error = error;
		if (r->disable_destination)
			disable_reason = error;
		if (batch->retried[i])
		{
			args[1] = UUIDPGetDatum(&m->id);
			args[2] = CStringGetTextDatum(error);
			args[3] = BoolGetDatum(r->status == OUTBOX_PUBLISH_REJECT);
			args[4] = Int32GetDatum(outbox_max_retries);
			args[5] = TimestampTzGetDatum(r->retry_at);
			nulls[5] = r->retry_at == 0 ? 'n' : ' ';
			args[6] = TimestampTzGetDatum(now);
			args[7] = Int32GetDatum(outbox_retry_backoff);
			args[8] = Int32GetDatum(outbox_retry_backoff_max);
			outbox_store_execute(&delivery_failed_stmt, args, nulls, InvalidSnapshot, 0);
			nulls[5] = ' ';
		}
		else
		{
			bool		failed = r->status == OUTBOX_PUBLISH_REJECT || outbox_max_retries <= 1;

			new_deliveries_add(&rows, &m->id, m->key, failed ? "failed" : "pending", 1,
							   error, failed ? now : first_retry_at(r->retry_at));
		}
	}
	for (i = 0; i < batch->ndiverted; i++)
		new_deliveries_add(&rows, &batch->diverted_ids[i], batch->diverted_keys[i],
						   "pending", 0, NULL, now);
	new_deliveries_insert(destination->id, &rows, 0);

	if (nok > 0)
	{
		args[1] = PointerGetDatum(outbox_uuid_array(ok, nok));
		args[2] = TimestampTzGetDatum(now);
		outbox_store_execute(&delivered_stmt, args, NULL, InvalidSnapshot, 0);
	}
	if (batch->advance)
	{
		args[1] = UUIDPGetDatum(&batch->position);
		args[2] = TimestampTzGetDatum(now);
		outbox_store_execute(&progress_stmt, args, NULL, InvalidSnapshot, 0);
		position = batch->position;
	}

	/* The destination's state changes only when it turns. */
	if (nfailed > 0 && ndelivered == 0)
	{
		if (destination->failing_since == 0 || destination->last_error == NULL ||
			strcmp(destination->last_error, last_error) != 0)
		{
			args[1] = TimestampTzGetDatum(now);
			args[2] = CStringGetTextDatum(last_error);
			outbox_store_execute(&failing_stmt, args, NULL, InvalidSnapshot, 0);
			if (destination->failing_since == 0)
				destination->failing_since = now;
			destination->last_error = MemoryContextStrdup(TopMemoryContext, last_error);
		}
	}
	else if (ndelivered > 0 && destination->failing_since != 0)
	{
		outbox_store_execute(&recovered_stmt, args, NULL, InvalidSnapshot, 0);
		destination->failing_since = 0;
	}
	if (disable_reason == NULL && destination->failing_since != 0 &&
		outbox_destination_disable_after > 0 &&
		now - destination->failing_since > (int64) outbox_destination_disable_after * USECS_PER_SEC)
		disable_reason = psprintf("every attempt failed for more than %d s (outbox.destination_disable_after); the last error: %s",
								  outbox_destination_disable_after,
								  last_error ? last_error : destination->last_error);
	if (disable_reason != NULL)
	{
		args[1] = TimestampTzGetDatum(now);
		args[2] = CStringGetTextDatum(disable_reason);
		outbox_store_execute(&disable_stmt, args, NULL, InvalidSnapshot, 0);
		destination->disabled = true;
		/* the main worker takes the slot back at once after the commit */
		outbox_destinations_changed_at_commit(false);
		ereport(WARNING,
				(errmsg("outbox destination \"%s\" is disabled", destination->name),
				 errdetail("%s", disable_reason),
				 errhint("Messages routed to it stay pending; outbox.resume_destination('%s') delivers them again.",
						 destination->name)));
	}
	outbox_store_finish_as_owner(&call);
	unfinished = -1;			/* recounted at the next claim */
}

/*
 * Finish the routed messages of a batch that every destination has passed,
 * in a transaction of its own after the batch's position committed.
 * Returns how many were finished.
 */
int
outbox_delivery_finalize(OutboxBatch *batch)
{
	Datum		args[2];
	pg_uuid_t  *ids;
	OutboxStoreCall call;
	int			finished;
	int			i;

	if (batch->nmessages == 0)
		return 0;
	ids = palloc(sizeof(pg_uuid_t) * batch->nmessages);
	for (i = 0; i < batch->nmessages; i++)
		ids[i] = batch->messages[i].id;
	outbox_store_connect_as_owner(&call);
	args[0] = PointerGetDatum(outbox_uuid_array(ids, batch->nmessages));
	args[1] = TimestampTzGetDatum(GetCurrentTimestamp());
	finished = (int) outbox_store_execute(&finalize_stmt, args, NULL, InvalidSnapshot, 0);
	outbox_store_finish_as_owner(&call);
	return finished;
}

/* Where the main worker's next pass over the unfinished routed messages starts. */
static pg_uuid_t stragglers_after;

/*
 * Finish routed messages that are done but not finished (a worker that
 * died between its position and the finishing, a destination dropped):
 * the next max_messages unfinished ones after the last pass, from the
 * oldest again once the end is reached.  Returns how many were finished.
 * In the main worker.
 */
int
outbox_delivery_finalize_stragglers(int max_messages)
{
	Datum		args[2];
	OutboxStoreCall call;
	uint64		n;
	int			finished = 0;
	bool		last_isnull;

	outbox_store_connect_as_owner(&call);

	args[0] = Int32GetDatum(max_messages);
	args[1] = UUIDPGetDatum(&stragglers_after);
	n = outbox_store_execute(&stragglers_stmt, args, NULL, InvalidSnapshot, 0);
	if (n < (uint64) max_messages)
		memset(stragglers_after.data, 0, UUID_LEN);	/* from the oldest next time */
	else
		memcpy(stragglers_after.data,
			   DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[n - 1], SPI_tuptable->tupdesc, 1,
										   &last_isnull))->data, UUID_LEN);
	if (n > 0)
	{
		pg_uuid_t  *ids = palloc(sizeof(pg_uuid_t) * n);
		uint64		i;
		bool		isnull;

		for (i = 0; i < n; i++)
			memcpy(ids[i].data, DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[i],
															SPI_tuptable->tupdesc, 1,
															&isnull))->data, UUID_LEN);
		args[0] = PointerGetDatum(outbox_uuid_array(ids, (int) n));
		args[1] = TimestampTzGetDatum(GetCurrentTimestamp());
		finished = (int) outbox_store_execute(&finalize_stmt, args, NULL, InvalidSnapshot, 0);
	}
	outbox_store_finish_as_owner(&call);
	return finished;
}

/*
 * When this destination's next retry falls due, or 0 when none waits.
 * Runs in a transaction.
 */
TimestampTz
outbox_delivery_next_due(OutboxDestination *destination)
{
	Datum		args[2];
	TimestampTz due = 0;
	OutboxStoreCall call;

	if (unfinished == 0)
		return 0;
	args[0] = Int32GetDatum(destination->id);
	args[1] = TimestampTzGetDatum(GetCurrentTimestamp());
	outbox_store_connect_as_owner(&call);
	if (outbox_store_execute(&next_due_stmt, args, NULL, InvalidSnapshot, 1) > 0)
	{
		bool		isnull;
		Datum		value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			due = DatumGetTimestampTz(value);
	}
	outbox_store_finish_as_owner(&call);
	return due;
}

#define LIST_WORKERS_SQL \
	"SELECT d.id, d.name, hashtext(d.publisher || d.options::text) FROM outbox.destination d " \
	"WHERE d.publisher <> 'external' AND NOT d.paused AND d.disabled_at IS NULL ORDER BY d.id"

static OutboxStatement list_workers_stmt = {
	.sql = LIST_WORKERS_SQL, .nargs = 0, .argtypes = {InvalidOid},
	.read_only = true, .expected = SPI_OK_SELECT, .action = "read outbox destinations"
};

/*
 * The destinations that need a worker: their ids, names and a hash of
 * their configuration, palloc'd.  Returns how many.  Runs in a
 * transaction.
 */
int
outbox_delivery_list_workers(int32 **ids, char ***names, uint32 **hashes)
{
	MemoryContext caller = CurrentMemoryContext;
	OutboxStoreCall call;
	uint64		n;
	uint64		i;

	*ids = NULL;
	*names = NULL;
	*hashes = NULL;
	if (!outbox_have_destinations())
		return 0;
	outbox_store_connect_as_owner(&call);
	n = outbox_store_execute(&list_workers_stmt, NULL, NULL, InvalidSnapshot, 0);
	*ids = MemoryContextAlloc(caller, sizeof(int32) * Max(n, 1));
	*names = MemoryContextAlloc(caller, sizeof(char *) * Max(n, 1));
	*hashes = MemoryContextAlloc(caller, sizeof(uint32) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	tupdesc = SPI_tuptable->tupdesc;
		bool		isnull;

		(*ids)[i] = DatumGetInt32(SPI_getbinval(tuple, tupdesc, 1, &isnull));
		(*names)[i] = MemoryContextStrdup(caller, SPI_getvalue(tuple, tupdesc, 2));
		(*hashes)[i] = (uint32) DatumGetInt32(SPI_getbinval(tuple, tupdesc, 3, &isnull));
	}
	outbox_store_finish_as_owner(&call);
	return (int) n;
}

/*
 * The store API of external destinations: outbox.fetch_pending(n,
 * destination) and the mark functions with a destination.  The relay
 * outside the database holds its claims as delivery rows in processing,
 * recovered like the default destination's when its session dies or
 * outbox.processing_timeout passes.
 */

#define STORE_API_DESTINATION_SQL \
	"SELECT d.id, d.publisher, d.paused OR d.disabled_at IS NOT NULL " \
	"FROM outbox.destination d WHERE d.name = $1"
#define LOCK_EXTERNAL_SQL STORE_API_DESTINATION_SQL " FOR UPDATE"

#define CLAIM_RETRIES_SQL \
	"UPDATE outbox.delivery SET status = 'processing', claimed_at = $3, claimed_by = $4 " \
	"WHERE destination_id = $1 AND message_id = ANY ($2) AND status = 'pending'"

#define RECOVER_DELIVERIES_SQL \
	"UPDATE outbox.delivery SET status = 'pending', claimed_at = NULL, claimed_by = NULL " \
	"WHERE (destination_id, message_id) IN (SELECT x.destination_id, x.message_id " \
	"  FROM outbox.delivery x WHERE x.status = 'processing' AND (x.claimed_at < $1 " \
	"    OR x.claimed_by IS NULL OR NOT EXISTS (SELECT 1 FROM pg_stat_get_activity(x.claimed_by) a " \
	"      WHERE a.backend_start IS NULL OR a.backend_start <= x.claimed_at)) " \
	"  FOR UPDATE SKIP LOCKED)"

#define RETRY_DELIVERIES_SQL \
	"WITH requeued AS (UPDATE outbox.delivery x SET status = 'pending', retries = 0, " \
	"    next_attempt_at = $3, claimed_at = NULL, claimed_by = NULL " \
	"  WHERE x.destination_id = $1 AND x.status = 'failed' " \
	"  AND ($2 IS NULL OR x.message_id = ANY ($2)) RETURNING x.message_id), " \
	"messages AS (UPDATE outbox.messages m SET status = 'pending', processed_at = NULL " \
	"  WHERE m.id IN (SELECT message_id FROM requeued) AND m.status = 'failed' RETURNING m.id) " \
	"SELECT count(*) FROM requeued"

static OutboxStatement lock_external_stmt = {
	.sql = LOCK_EXTERNAL_SQL, .nargs = 1, .argtypes = {TEXTOID},
	.read_only = false, .expected = SPI_OK_SELECT, .action = "lock an outbox destination"
};
static OutboxStatement claim_retries_stmt = {
	.sql = CLAIM_RETRIES_SQL, .nargs = 4, .argtypes = {INT4OID, UUIDARRAYOID, TIMESTAMPTZOID, INT4OID},
	.read_only = false, .expected = SPI_OK_UPDATE, .action = "claim outbox deliveries"
};
static OutboxStatement store_api_destination_stmt = {
	.sql = STORE_API_DESTINATION_SQL, .nargs = 1, .argtypes = {TEXTOID},
	.read_only = false, .expected = SPI_OK_SELECT, .action = "read an outbox destination"
};
static OutboxStatement recover_deliveries_stmt = {
	.sql = RECOVER_DELIVERIES_SQL, .nargs = 1, .argtypes = {TIMESTAMPTZOID},
	.read_only = false, .expected = SPI_OK_UPDATE, .action = "recover outbox deliveries"
};
static OutboxStatement retry_deliveries_stmt = {
	.sql = RETRY_DELIVERIES_SQL, .nargs = 3, .argtypes = {INT4OID, UUIDARRAYOID, TIMESTAMPTZOID},
	.read_only = false, .expected = SPI_OK_SELECT, .action = "requeue outbox deliveries"
};

/* Raise an error unless the schema has destinations. */
static void
require_destinations(void)
{
	if (!outbox_have_destinations())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("this outbox has no destinations"),
				 errhint("Run ALTER EXTENSION outbox UPDATE to get them.")));
}

/*
 * The destination that a call of the store API names (fetch_pending,
 * mark_processed_for, mark_failed and retry_failed with a destination),
 * inside a store call as the outbox's owner; locked for fetch_pending
 * (fetching: concurrent calls take turns on it).  Sets *paused when it is
 * paused or disabled.  The store API acts for a relay outside the database, so it
 * serves destinations of publisher "external": one that has a worker of
 * its own is refused (42809), to fetch_pending always (its worker delivers
 * the same messages), to the other calls unless the caller is a superuser
 * (an operator may mark or requeue any destination's deliveries; a relay
 * role may not mark as sent what was never sent, nor forge failures).
 */
static int32
store_api_destination(const OutboxStoreCall *call, const char *name, const char *function,
					  bool fetching, bool *paused)
{
	Datum		args[1] = {CStringGetTextDatum(name)};
	bool		isnull;
	char	   *publisher;

	if (outbox_store_execute(fetching ? &lock_external_stmt : &store_api_destination_stmt,
							 args, NULL, InvalidSnapshot, 1) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("outbox destination \"%s\" does not exist", name)));
	publisher = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	if (strcmp(publisher, "external") != 0 &&
		(fetching || !superuser_arg(call->saved_userid)))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("outbox destination \"%s\" is relayed by its own worker", name),
				 errdetail("%s() serves destinations of publisher \"external\"; \"%s\" has publisher \"%s\".",
						   function, name, publisher)));
	if (paused)
		*paused = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3,
											 &isnull));
	return DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * outbox.fetch_pending(n, destination): claim up to n messages of an
 * external destination, in id order, per key an unbroken run of its oldest
 * unfinished ones; they become delivery rows in processing, held by this
 * session.  Concurrent callers take turns on the destination's row lock.
 */
OutboxBatch *
outbox_delivery_fetch(const char *name, int max_messages)
{
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext store_context;
	OutboxDestination destination;
	OutboxBatch *batch;
	NewDeliveries rows;
	Datum		args[4];
	TimestampTz now = GetCurrentTimestamp();
	pg_uuid_t  *retried;
	int			nretried = 0;
	OutboxStoreCall call;
	bool		paused;
	int			i;

	require_destinations();
	outbox_store_connect_as_owner(&call);
	memset(&destination, 0, sizeof(destination));
	destination.id = store_api_destination(&call, name, "fetch_pending", true, &paused);
	destination.name = pstrdup(name);
	if (paused)
	{
		/* Paused or disabled: nothing to hand out. */
		outbox_store_finish_as_owner(&call);
		batch = palloc0(sizeof(OutboxBatch));
		return batch;
	}

	position_known = false;
	unfinished = -1;

	/*
	 * The batch goes back to the caller: claim it into the caller's memory,
	 * not into this store call's, which its end frees.
	 */
	store_context = MemoryContextSwitchTo(caller);
	batch = outbox_delivery_claim(&destination, max_messages, 0,
								  outbox_ordering == OUTBOX_ORDERING_KEY);
	MemoryContextSwitchTo(store_context);

	new_deliveries_init(&rows, batch->nmessages + batch->ndiverted);
	retried = palloc(sizeof(pg_uuid_t) * Max(batch->nmessages, 1));
	for (i = 0; i < batch->nmessages; i++)
	{
		if (batch->retried[i])
			retried[nretried++] = batch->messages[i].id;
		else
			new_deliveries_add(&rows, &batch->messages[i].id, batch->messages[i].key,
							   "processing", 0, NULL, now);
	}
	new_deliveries_insert(destination.id, &rows, MyProcPid);
	new_deliveries_init(&rows, batch->ndiverted);
	for (i = 0; i < batch->ndiverted; i++)
		new_deliveries_add(&rows, &batch->diverted_ids[i], batch->diverted_keys[i],
						   "pending", 0, NULL, now);
	new_deliveries_insert(destination.id, &rows, 0);
	args[0] = Int32GetDatum(destination.id);
	if (nretried > 0)
	{
		args[1] = PointerGetDatum(outbox_uuid_array(retried, nretried));
		args[2] = TimestampTzGetDatum(now);
		args[3] = Int32GetDatum(MyProcPid);
		outbox_store_execute(&claim_retries_stmt, args, NULL, InvalidSnapshot, 0);
	}
	if (batch->advance)
	{
		args[1] = UUIDPGetDatum(&batch->position);
		args[2] = TimestampTzGetDatum(now);
		outbox_store_execute(&progress_stmt, args, NULL, InvalidSnapshot, 0);
	}
	outbox_store_finish_as_owner(&call);
	return batch;
}

/* Finish messages by id (see FINALIZE_SQL), inside a store call. */
static void
finalize_ids(const pg_uuid_t *ids, int nids)
{
	Datum		args[2];

	if (nids == 0)
		return;
	args[0] = PointerGetDatum(outbox_uuid_array(ids, nids));
	args[1] = TimestampTzGetDatum(GetCurrentTimestamp());
	outbox_store_execute(&finalize_stmt, args, NULL, InvalidSnapshot, 0);
}

/*
 * outbox.mark_processed_for(ids, destination): the external relay delivered
 * these; returns how many deliveries changed.
 */
int
outbox_delivery_mark_processed(const char *name, const pg_uuid_t *ids, int nids)
{
	Datum		args[3];
	OutboxStoreCall call;
	int			count;

	require_destinations();
	outbox_store_connect_as_owner(&call);
	args[0] = Int32GetDatum(store_api_destination(&call, name, "mark_processed_for", false, NULL));
	args[1] = PointerGetDatum(outbox_uuid_array(ids, nids));
	args[2] = TimestampTzGetDatum(GetCurrentTimestamp());
	count = (int) outbox_store_execute(&delivered_stmt, args, NULL, InvalidSnapshot, 0);
	finalize_ids(ids, nids);
	outbox_store_finish_as_owner(&call);
	return count;
}

/*
 * outbox.mark_failed(id, error, destination): a failed attempt of an
 * external relay; returns the delivery's new status, or NULL when it has
 * no unfinished delivery there.
 */
const char *
outbox_delivery_mark_failed(const char *name, const pg_uuid_t *id, const char *error)
{
	MemoryContext caller = CurrentMemoryContext;
	Datum		args[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', 'n', ' ', ' ', ' '};
	const char *status = NULL;
	OutboxStoreCall call;

	require_destinations();
	outbox_store_connect_as_owner(&call);
	args[0] = Int32GetDatum(store_api_destination(&call, name, "mark_failed", false, NULL));
	args[1] = UUIDPGetDatum(id);
	args[2] = CStringGetTextDatum(error ? error : "publish failed");
	args[3] = BoolGetDatum(false);
	args[4] = Int32GetDatum(outbox_max_retries);
	args[5] = (Datum) 0;
	args[6] = TimestampTzGetDatum(GetCurrentTimestamp());
	args[7] = Int32GetDatum(outbox_retry_backoff);
	args[8] = Int32GetDatum(outbox_retry_backoff_max);
	if (outbox_store_execute(&delivery_failed_stmt, args, nulls, InvalidSnapshot, 0) > 0)
		status = MemoryContextStrdup(caller, SPI_getvalue(SPI_tuptable->vals[0],
														  SPI_tuptable->tupdesc, 1));
	if (status && strcmp(status, "failed") == 0)
		finalize_ids(id, 1);
	outbox_store_finish_as_owner(&call);
	return status;
}

/*
 * outbox.retry_failed(ids, destination): requeue the failed deliveries of
 * a destination (all of them when ids is NULL); returns how many.
 */
int
outbox_delivery_retry_failed(const char *name, ArrayType *ids)
{
	Datum		args[3];
	char		nulls[3] = {' ', ' ', ' '};
	OutboxStoreCall call;
	int			count;
	bool		isnull;

	require_destinations();
	outbox_store_connect_as_owner(&call);
	args[0] = Int32GetDatum(store_api_destination(&call, name, "retry_failed", false, NULL));
	args[1] = PointerGetDatum(ids);
	if (ids == NULL)
		nulls[1] = 'n';
	args[2] = TimestampTzGetDatum(GetCurrentTimestamp());
	outbox_store_execute(&retry_deliveries_stmt, args, nulls, InvalidSnapshot, 0);
	count = (int) DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	outbox_store_finish_as_owner(&call);
	if (count > 0)
		outbox_destinations_changed_at_commit(false);
	return count;
}

#define REQUEUE_FAILED_SQL \
	"UPDATE outbox.delivery x SET status = 'pending', retries = 0, next_attempt_at = $2, " \
	"claimed_at = NULL, claimed_by = NULL " \
	"WHERE x.status = 'failed' AND ($1 IS NULL OR x.message_id = ANY ($1)) " \
	"RETURNING x.message_id"

static OutboxStatement requeue_failed_stmt = {
	.sql = REQUEUE_FAILED_SQL, .nargs = 2, .argtypes = {UUIDARRAYOID, TIMESTAMPTZOID},
	.read_only = false, .expected = SPI_OK_UPDATE_RETURNING, .action = "requeue outbox deliveries"
};

/*
 * outbox.retry_failed(ids) without a destination: requeue the failed
 * deliveries of the messages ids (all when NULL), to every destination, as
 * the outbox's owner (the caller, an external relay of the default
 * destination, has no privilege on them).  Returns how many, with the
 * messages' ids (palloc'd, repeated for each of their destinations) in
 * *message_ids, for the caller to set those messages pending again.
 */
int
outbox_delivery_requeue_failed(ArrayType *ids, pg_uuid_t **message_ids)
{
	MemoryContext caller = CurrentMemoryContext;
	Datum		args[2];
	char		nulls[2] = {' ', ' '};
	OutboxStoreCall call;
	uint64		n;
	uint64		i;

	args[0] = PointerGetDatum(ids);
	if (ids == NULL)
		nulls[0] = 'n';
	args[1] = TimestampTzGetDatum(GetCurrentTimestamp());
	outbox_store_connect_as_owner(&call);
	n = outbox_store_execute(&requeue_failed_stmt, args, nulls, InvalidSnapshot, 0);
	*message_ids = MemoryContextAlloc(caller, sizeof(pg_uuid_t) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		bool		isnull;

		memcpy((*message_ids)[i].data,
			   DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1,
										   &isnull))->data, UUID_LEN);
	}
	outbox_store_finish_as_owner(&call);
	return (int) n;
}

/*
 * Return to pending the deliveries left processing by an external relay
 * that is gone or held them past outbox.processing_timeout.
 */
int
outbox_delivery_recover_stuck(void)
{
	Datum		args[1];
	OutboxStoreCall call;
	int			count;

	if (!outbox_have_destinations())
		return 0;
	args[0] = TimestampTzGetDatum(TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															  -(int64) outbox_processing_timeout));
	outbox_store_connect_as_owner(&call);
	count = (int) outbox_store_execute(&recover_deliveries_stmt, args, NULL, InvalidSnapshot, 0);
	outbox_store_finish_as_owner(&call);
	return count;
}

#define PURGE_DELIVERIES_SQL \
	"DELETE FROM outbox.delivery x WHERE x.status = 'processed' AND x.processed_at < $1"

#define PURGE_PROGRESS_SQL \
	"DELETE FROM outbox.destination_progress p WHERE p.at < $1 " \
	"AND p.upto < outbox.destination_position(p.destination_id)"

static OutboxStatement purge_deliveries_stmt = {
	.sql = PURGE_DELIVERIES_SQL, .nargs = 1, .argtypes = {TIMESTAMPTZOID},
	.read_only = false, .expected = SPI_OK_DELETE, .action = "purge outbox deliveries"
};
static OutboxStatement purge_progress_stmt = {
	.sql = PURGE_PROGRESS_SQL, .nargs = 1, .argtypes = {TIMESTAMPTZOID},
	.read_only = false, .expected = SPI_OK_DELETE, .action = "purge outbox positions"
};

/*
 * Delete the processed deliveries and the positions older than
 * outbox.retention (each destination keeps its newest position).
 */
void
outbox_delivery_purge(void)
{
	Datum		args[1];
	OutboxStoreCall call;

	if (outbox_retention < 0 || !outbox_have_destinations())
		return;
	args[0] = TimestampTzGetDatum(GetCurrentTimestamp() -
								  (TimestampTz) outbox_retention * USECS_PER_SEC);
	outbox_store_connect_as_owner(&call);
	outbox_store_execute(&purge_deliveries_stmt, args, NULL, InvalidSnapshot, 0);
	outbox_store_execute(&purge_progress_stmt, args, NULL, InvalidSnapshot, 0);
	outbox_store_finish_as_owner(&call);
}
