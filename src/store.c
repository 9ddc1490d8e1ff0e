/*-------------------------------------------------------------------------
 *
 * store.c
 *		The store: claim due messages, mark them processed or failed,
 *		recover stuck claims and purge old rows.
 *
 * The relay worker and the SQL store API (outbox.fetch_pending and
 * friends, for external relays) share these functions, so both follow one
 * contract.  Every statement is prepared once per process and kept.
 * Message data only ever travels as parameters, never inside SQL text.
 *
 * Claiming is one short transaction:
 *	1. read the pending messages in id order from the oldest, without
 *	   locking them (under outbox.ordering = 'none' only the due ones), all
 *	   on one snapshot;
 *	2. choose the due ones whose key nothing holds back, until the batch's
 *	   payloads reach the byte limit: under per-key ordering a message not
 *	   due holds back the later messages of its key, and so do the keys of
 *	   external relays' claims;
 *	3. lock the chosen rows by address with FOR UPDATE SKIP LOCKED, and
 *	   keep those locked and not in a relay worker's batch in flight (see
 *	   below); under per-key ordering one not kept (locked by someone else,
 *	   changed since it was read, in flight) holds back its key too;
 *	4. for outbox.fetch_pending, set the kept ones to processing.
 * Steps 1-3 repeat, reading more rows each time, while held-back messages
 * fill the reads.  Because the reads start at the oldest pending message,
 * a message is its key's oldest unfinished one exactly when nothing of its
 * key was read before it that can not be claimed: no lookup per key.
 *
 * Two ways to hold a claimed message while it is published, without a
 * transaction open across network I/O:
 *	- an external relay's claim is stored: status processing, claimed_at,
 *	  claimed_by, and a timed-out or orphaned claim is recovered;
 *	- the relay worker writes nothing: it records the id range of its batch
 *	  in its shared-memory slot before the claim commits, and clears it
 *	  once the batch is marked.  Its messages stay pending in the table, so
 *	  a worker that dies leaves nothing to recover, and a message costs one
 *	  row update (the mark) instead of two.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "outbox.h"

PG_FUNCTION_INFO_V1(outbox_fetch_pending);
PG_FUNCTION_INFO_V1(outbox_mark_processed);
PG_FUNCTION_INFO_V1(outbox_mark_failed);
PG_FUNCTION_INFO_V1(outbox_retry_failed);

/*
 * A claim first reads, without locking, the next $1 pending messages in id
 * order, due or not, after id $3 and of none of the keys $4 already held
 * back; $2 = now.  Read from the very first pending message and all on one
 * snapshot, they tell which messages are their key's oldest unfinished
 * ones, with no lookup per key.
 */
#define CLAIM_SCAN_SQL \
	"SELECT m.ctid, m.id, m.key, m.next_attempt_at <= $2 AS due, " \
	"octet_length(m.payload) AS bytes FROM outbox.messages m " \
	"WHERE m.status = 'pending' AND m.id > $3 AND m.key <> ALL ($4) " \
	"ORDER BY m.id LIMIT $1"

/*
 * Under outbox.ordering = 'none' only the due messages matter: the same
 * scan without the messages not due.  ($4 is always empty here.)
 */
#define CLAIM_SCAN_DUE_SQL \
	"SELECT m.ctid, m.id, m.key, true AS due, " \
	"octet_length(m.payload) AS bytes FROM outbox.messages m " \
	"WHERE m.status = 'pending' AND m.next_attempt_at <= $2 AND m.id > $3 " \
	"AND m.key <> ALL ($4) ORDER BY m.id LIMIT $1"

/* Keys held back by an external relay's claim. */
#define CLAIM_PROCESSING_KEYS_SQL \
	"SELECT DISTINCT m.key FROM outbox.messages m " \
	"WHERE m.status = 'processing' AND m.key <> ''"

/*
 * Then it locks the messages it chose, by row address ($1): a row that is
 * locked by someone else, or that changed since it was read, is left out,
 * and holds back the later messages of its key.  $2 = now.
 */
#define CLAIM_LOCK_SQL \
	"SELECT m.* FROM outbox.messages m " \
	"WHERE m.ctid = ANY ($1) AND m.status = 'pending' AND m.next_attempt_at <= $2 " \
	"ORDER BY m.id FOR UPDATE OF m SKIP LOCKED"

/*
 * Most scans per claim, and the most rows one scan reads.  A scan is
 * repeated, reading twice as many rows, only when held-back messages filled
 * it; the keys held back are left out of the next.
 */
#define CLAIM_MAX_ROUNDS 8
#define CLAIM_MAX_SCAN_ROWS 10000

/* Step 4 (outbox.fetch_pending); $1 = ids, $2 = now, $3 = claimer's pid. */
#define CLAIM_MARK_SQL \
	"WITH claimed AS (UPDATE outbox.messages SET status = 'processing', " \
	"  claimed_at = $2, claimed_by = $3 WHERE id = ANY($1) RETURNING *) " \
	"SELECT * FROM claimed ORDER BY id"

#define MARK_PROCESSED_SQL \
	"UPDATE outbox.messages SET status = 'processed', processed_at = $2, " \
	"claimed_at = NULL, claimed_by = NULL " \
	"WHERE id = ANY($1) AND status <> 'processed'"

/*
 * $1 = id, $2 = error, $3 = permanent, $4 = max_retries, $5 = retry_at or
 * NULL, $6 = now, $7 = backoff base (ms), $8 = backoff max (ms).  The delay
 * is base * 2^(retries) capped at max, with "equal jitter": a random point
 * in its upper half.
 */
#define MARK_FAILED_SQL \
	"UPDATE outbox.messages SET retries = retries + 1, last_error = $2, " \
	"status = CASE WHEN $3 OR retries + 1 >= $4 THEN 'failed'::outbox.message_status " \
	"              ELSE 'pending'::outbox.message_status END, " \
	"next_attempt_at = COALESCE($5, $6 + least($8::float8, $7::float8 * power(2, least(retries, 60))) " \
	"                                 * (0.5 + random() * 0.5) * interval '1 millisecond'), " \
	"claimed_at = NULL, claimed_by = NULL " \
	"WHERE id = $1 AND status IN ('pending', 'processing') RETURNING status::text"

/*
 * Claims older than the timeout, or whose claimer is gone, go back to
 * pending; rows someone holds locked wait for a later pass.  $1 = the
 * oldest claim time still trusted.
 */
#define RECOVER_SQL \
	"UPDATE outbox.messages SET status = 'pending', claimed_at = NULL, claimed_by = NULL " \
	"WHERE id IN (SELECT m.id FROM outbox.messages m " \
	"  WHERE m.status = 'processing' AND (m.claimed_at < $1 OR m.claimed_by IS NULL " \
	"    OR NOT EXISTS (SELECT 1 FROM pg_stat_get_activity(m.claimed_by))) " \
	"  FOR UPDATE SKIP LOCKED)"

/*
 * $1 = processed before, $2 = an id made before $1, $3 = most rows.  Rows
 * someone holds locked are left for a later pass rather than waited for.
 */
#define PURGE_SQL \
	"DELETE FROM outbox.messages WHERE id IN (" \
	"  SELECT id FROM outbox.messages WHERE id < $2 AND status = 'processed' " \
	"  AND processed_at < $1 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)"

/* Earliest retry among the oldest pending messages, for the worker's sleep. */
#define NEXT_DUE_SQL \
	"SELECT min(next_attempt_at) FROM (SELECT next_attempt_at FROM outbox.messages " \
	"WHERE status = 'pending' ORDER BY id LIMIT 1000) p"

/* $1 = ids or NULL for all, $2 = now. */
#define RETRY_FAILED_SQL \
	"UPDATE outbox.messages SET status = 'pending', retries = 0, next_attempt_at = $2 " \
	"WHERE status = 'failed' AND ($1 IS NULL OR id = ANY($1))"

/* One prepared statement, kept for the life of the process. */
typedef struct StorePlan
{
	SPIPlanPtr	plan;
} StorePlan;

static StorePlan claim_scan_plan;
static StorePlan claim_scan_due_plan;
static StorePlan claim_processing_keys_plan;
static StorePlan claim_lock_plan;
static StorePlan claim_mark_plan;
static StorePlan mark_processed_plan;
static StorePlan mark_failed_plan;
static StorePlan recover_plan;
static StorePlan purge_plan;
static StorePlan next_due_plan;
static StorePlan retry_failed_plan;

/*
 * Prepare a statement the first time it is used, keep it, and return it.
 * Must be called while connected to SPI.
 */
static SPIPlanPtr
store_plan(StorePlan *cache, const char *sql, int nargs, Oid *argtypes)
{
	if (cache->plan == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

		if (plan == NULL)
			elog(ERROR, "could not prepare outbox statement: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		cache->plan = plan;
	}
	return cache->plan;
}

/*
 * GUC nesting level of the store call in progress, so store_finish() can
 * undo its settings.
 */
static int	store_guc_level = -1;

/*
 * Connect to SPI for one store call, with search_path pinned to pg_catalog
 * (so no operator or function in these statements can be taken over by an
 * object in a schema the caller or a database owner controls), and with
 * sequential scans of the outbox off.  Every statement here is built for an index, and a plan kept from
 * when the table was small (a new install, after a TRUNCATE) would
 * otherwise scan the whole table on every claim once it has grown.  Setting
 * this in every backend that uses the store covers the worker and external
 * relays alike; an error unwinds it with the transaction.
 */
static void
store_connect(void)
{
	store_guc_level = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("enable_seqscan", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	SPI_connect();
}

/* Disconnect from SPI and restore the settings store_connect() changed. */
static void
store_finish(void)
{
	SPI_finish();
	AtEOXact_GUC(true, store_guc_level);
}

/* Build a uuid[] from ids. */
static ArrayType *
uuid_array(const pg_uuid_t *ids, int nids)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(nids, 1));
	int			i;

	for (i = 0; i < nids; i++)
		elems[i] = UUIDPGetDatum(&ids[i]);
	return construct_array(elems, nids, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR);
}

/* Fetch a column by name from a result row, or raise an error. */
static Datum
row_value(HeapTuple tuple, TupleDesc tupdesc, const char *column, bool *isnull)
{
	int			attno = SPI_fnumber(tupdesc, column);

	if (attno <= 0)
		elog(ERROR, "outbox.messages has no column \"%s\"", column);
	return SPI_getbinval(tuple, tupdesc, attno, isnull);
}

/* Start an empty batch in context; it grows as rows come. */
static void
init_batch(OutboxBatch *batch, MemoryContext context)
{
	memset(batch, 0, sizeof(OutboxBatch));
	batch->capacity = 64;
	batch->messages = MemoryContextAllocZero(context, sizeof(OutboxMessage) * batch->capacity);
	batch->tuples = MemoryContextAllocZero(context, sizeof(HeapTuple) * batch->capacity);
}

/* Make room for n more messages. */
static void
grow_batch(OutboxBatch *batch, uint64 n)
{
	int			needed = batch->nmessages + (int) n;

	if (needed <= batch->capacity)
		return;
	while (batch->capacity < needed)
		batch->capacity *= 2;
	batch->messages = repalloc(batch->messages, sizeof(OutboxMessage) * batch->capacity);
	batch->tuples = repalloc(batch->tuples, sizeof(HeapTuple) * batch->capacity);
}

/*
 * Append result rows to batch as messages allocated in context, detoasted,
 * so they stay valid after the transaction ends.
 */
static void
collect_messages(SPITupleTable *tuptable, uint64 nrows, MemoryContext context,
				 OutboxBatch *batch)
{
	MemoryContext old = MemoryContextSwitchTo(context);
	TupleDesc	tupdesc = tuptable->tupdesc;
	uint64		i;

	if (batch->tupdesc == NULL)
		batch->tupdesc = CreateTupleDescCopy(tupdesc);
	grow_batch(batch, nrows);

	for (i = 0; i < nrows; i++)
	{
		HeapTuple	tuple = tuptable->vals[i];
		OutboxMessage *m = &batch->messages[batch->nmessages];
		bool		isnull;
		bytea	   *payload;
		char	   *id_text;

		memcpy(&m->id, DatumGetUUIDP(row_value(tuple, tupdesc, "id", &isnull)),
			   sizeof(pg_uuid_t));
		id_text = DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&m->id)));
		strlcpy(m->id_text, id_text, sizeof(m->id_text));
		m->topic = TextDatumGetCString(row_value(tuple, tupdesc, "topic", &isnull));
		m->key = TextDatumGetCString(row_value(tuple, tupdesc, "key", &isnull));
		payload = DatumGetByteaPCopy(row_value(tuple, tupdesc, "payload", &isnull));
		m->payload = VARDATA(payload);
		m->payload_len = VARSIZE(payload) - VARHDRSZ;
		m->headers = DatumGetJsonbPCopy(row_value(tuple, tupdesc, "headers", &isnull));
		m->created_at = DatumGetTimestampTz(row_value(tuple, tupdesc, "created_at", &isnull));
		m->retries = DatumGetInt32(row_value(tuple, tupdesc, "retries", &isnull));
		batch->tuples[batch->nmessages] = SPI_copytuple(tuple);
		batch->nmessages++;
	}
	MemoryContextSwitchTo(old);
}

/* The id ranges of the relay workers' batches in flight in this database. */
typedef struct InflightRanges
{
	int			nranges;
	pg_uuid_t	first[OUTBOX_MAX_DATABASES];
	pg_uuid_t	last[OUTBOX_MAX_DATABASES];
} InflightRanges;

/*
 * Read the in-flight ranges.  This must happen after the rows they are
 * checked against are locked: a worker records its batch before its claim
 * commits and lets go of the row locks, so a row this transaction could
 * lock is either not in flight or recorded as such by now.
 */
static void
load_inflight_ranges(InflightRanges *ranges)
{
	int			i;

	ranges->nranges = 0;
	/* Without the library preloaded there is no worker. */
	if (OutboxShared == NULL)
		return;
	SpinLockAcquire(&OutboxShared->mutex);
	for (i = 0; i < OutboxShared->nslots; i++)
	{
		OutboxWorkerSlot *slot = &OutboxShared->slots[i];

		if (slot->inflight && slot->dboid == MyDatabaseId)
		{
			ranges->first[ranges->nranges] = slot->inflight_first;
			ranges->last[ranges->nranges] = slot->inflight_last;
			ranges->nranges++;
		}
	}
	SpinLockRelease(&OutboxShared->mutex);
}

/* Whether a relay worker is publishing the message with this id. */
static bool
is_inflight(const InflightRanges *ranges, const pg_uuid_t *id)
{
	int			r;

	for (r = 0; r < ranges->nranges; r++)
	{
		if (memcmp(id->data, ranges->first[r].data, UUID_LEN) >= 0 &&
			memcmp(id->data, ranges->last[r].data, UUID_LEN) <= 0)
			return true;
	}
	return false;
}

/*
 * A claim's state of one key: whether a message of the key was met
 * that can not be claimed (not due, locked by someone else, changed, in
 * flight, or claimed by an external relay), which holds back every later
 * message of the key.
 */
typedef struct KeyState
{
	const char *key;			/* hash key; the string lives in the claim */
	bool		held_back;
	bool		lock_missed;	/* a message chosen to be locked was not kept */
} KeyState;

/* Hash a KeyState's key: the string it points to. */
static uint32
key_state_hash(const void *key, Size keysize)
{
	const char *k = *(const char *const *) key;

	return hash_bytes((const unsigned char *) k, (int) strlen(k));
}

/* Compare two KeyState keys as strings. */
static int
key_state_match(const void *key1, const void *key2, Size keysize)
{
	return strcmp(*(const char *const *) key1, *(const char *const *) key2);
}

/* A claim in progress. */
typedef struct ClaimState
{
	HTAB	   *keys;			/* KeyState by key */
	List	   *held_back;		/* text datums of the keys held back */
	Snapshot	snapshot;		/* every scan of the claim reads this */
} ClaimState;

/* The state of a key, created open when new. */
static KeyState *
key_state(ClaimState *claim, const char *key)
{
	bool		found;
	KeyState   *state = hash_search(claim->keys, &key, HASH_ENTER, &found);

	if (!found)
	{
		state->key = key;
		state->held_back = false;
		state->lock_missed = false;
	}
	return state;
}

/* Hold back every later message of a key. */
static void
hold_back(ClaimState *claim, KeyState *state)
{
	if (state->held_back)
		return;
	state->held_back = true;
	claim->held_back = lappend(claim->held_back,
							   DatumGetPointer(CStringGetTextDatum(state->key)));
}

/* Build a text[] of the keys in a list of text datums. */
static ArrayType *
key_array(List *keys)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(list_length(keys), 1));
	ListCell   *lc;
	int			n = 0;

	foreach(lc, keys)
		elems[n++] = PointerGetDatum(lfirst(lc));
	return construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT);
}

/* Hold back the keys of the messages external relays have claimed. */
static void
hold_back_processing_keys(ClaimState *claim)
{
	int			ret;
	uint64		i;

	ret = SPI_execute_snapshot(store_plan(&claim_processing_keys_plan,
										  CLAIM_PROCESSING_KEYS_SQL, 0, NULL),
							   NULL, NULL, claim->snapshot, InvalidSnapshot,
							   true, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read outbox claims: %s", SPI_result_code_string(ret));
	for (i = 0; i < SPI_processed; i++)
	{
		char	   *key = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);

		hold_back(claim, key_state(claim, key));
	}
}

/* One message read by a claim's scan. */
typedef struct ScannedMessage
{
	ItemPointerData ctid;
	pg_uuid_t	id;
	char	   *key;
	bool		due;
	int64		bytes;			/* of the payload */
	bool		chosen;			/* to be locked */
} ScannedMessage;

/*
 * Claim, appending to batch: scan the pending messages in id order, choose
 * the due ones whose key nothing holds back (until their payloads reach
 * max_bytes, when not 0), lock them, and keep those locked and in no relay
 * worker's batch in flight.  Under per-key ordering (ordered) a message is
 * kept only in an unbroken run of its key's oldest unfinished messages;
 * otherwise every message is treated as keyless, and the scan reads only
 * due ones.
 */
static void
claim_messages(int max_messages, int64 max_bytes, bool ordered, TimestampTz now,
			   MemoryContext caller, OutboxBatch *batch)
{
	int64		chosen_bytes = 0;
	bool		bytes_reached = false;
	ClaimState	claim;
	HASHCTL		ctl;
	pg_uuid_t	after;
	int			limit = max_messages;
	int			round;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(char *);
	ctl.entrysize = sizeof(KeyState);
	ctl.hash = key_state_hash;
	ctl.match = key_state_match;
	ctl.hcxt = CurrentMemoryContext;
	claim.keys = hash_create("outbox claim keys", 256, &ctl,
							 HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
	claim.held_back = NIL;
	claim.snapshot = RegisterSnapshot(GetTransactionSnapshot());
	memset(&after, 0, sizeof(after));

	if (ordered)
		hold_back_processing_keys(&claim);

	for (round = 0; round < CLAIM_MAX_ROUNDS && batch->nmessages < max_messages; round++)
	{
		Oid			scan_types[4] = {INT4OID, TIMESTAMPTZOID, UUIDOID, TEXTARRAYOID};
		Oid			lock_types[2] = {TIDARRAYOID, TIMESTAMPTZOID};
		Datum		args[4];
		int			ret;
		int			nscanned;
		ScannedMessage *scanned;
		Datum	   *chosen_ctids;
		int			nchosen = 0;
		InflightRanges inflight;
		SPITupleTable *locked;
		uint64		nlocked;
		uint64		next_locked = 0;
		int			first = batch->nmessages;
		int			kept = first;
		int			i;

		/* Read the next pending messages, due or not. */
		args[0] = Int32GetDatum(limit);
		args[1] = TimestampTzGetDatum(now);
		args[2] = UUIDPGetDatum(&after);
		args[3] = PointerGetDatum(key_array(claim.held_back));
		ret = SPI_execute_snapshot(ordered ?
								   store_plan(&claim_scan_plan, CLAIM_SCAN_SQL, 4, scan_types) :
								   store_plan(&claim_scan_due_plan, CLAIM_SCAN_DUE_SQL, 4, scan_types),
								   args, NULL, claim.snapshot, InvalidSnapshot,
								   true, false, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "could not claim outbox messages: %s", SPI_result_code_string(ret));
		nscanned = (int) SPI_processed;
		if (nscanned == 0)
			break;
		scanned = palloc(sizeof(ScannedMessage) * nscanned);
		chosen_ctids = palloc(sizeof(Datum) * nscanned);
		for (i = 0; i < nscanned; i++)
		{
			HeapTuple	tuple = SPI_tuptable->vals[i];
			TupleDesc	tupdesc = SPI_tuptable->tupdesc;
			ScannedMessage *m = &scanned[i];
			bool		isnull;

			ItemPointerCopy((ItemPointer) DatumGetPointer(SPI_getbinval(tuple, tupdesc, 1, &isnull)), &m->ctid);
			memcpy(&m->id, DatumGetUUIDP(SPI_getbinval(tuple, tupdesc, 2, &isnull)), sizeof(pg_uuid_t));
			m->key = ordered ? TextDatumGetCString(SPI_getbinval(tuple, tupdesc, 3, &isnull)) : "";
			m->due = DatumGetBool(SPI_getbinval(tuple, tupdesc, 4, &isnull));
			m->bytes = DatumGetInt32(SPI_getbinval(tuple, tupdesc, 5, &isnull));
			if (m->due)
				batch->ncandidates++;

			/*
			 * Choose it when due and its key is not held back; a message not
			 * due holds back its key.
			 */
			m->chosen = false;
			if (m->key[0] == '\0')
				m->chosen = m->due;
			else
			{
				KeyState   *state = key_state(&claim, m->key);

				if (!m->due)
					hold_back(&claim, state);
				else if (!state->held_back)
					m->chosen = true;
			}
			/* The byte limit reached, nothing more is chosen. */
			if (m->chosen && bytes_reached)
				m->chosen = false;
			if (m->chosen)
			{
				chosen_ctids[nchosen++] = PointerGetDatum(&m->ctid);
				chosen_bytes += m->bytes;
				bytes_reached = max_bytes > 0 && chosen_bytes >= max_bytes;
			}
		}
		after = scanned[nscanned - 1].id;
		SPI_freetuptable(SPI_tuptable);

		/* Lock the chosen ones; whoever holds a lock keeps its row. */
		if (nchosen == 0)
			goto next_round;
		args[0] = PointerGetDatum(construct_array(chosen_ctids, nchosen, TIDOID,
												  sizeof(ItemPointerData), false,
												  TYPALIGN_SHORT));
		args[1] = TimestampTzGetDatum(now);
		ret = SPI_execute_plan(store_plan(&claim_lock_plan, CLAIM_LOCK_SQL, 2, lock_types),
							   args, NULL, false, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "could not claim outbox messages: %s", SPI_result_code_string(ret));
		locked = SPI_tuptable;
		nlocked = SPI_processed;
		collect_messages(locked, nlocked, caller, batch);
		load_inflight_ranges(&inflight);

		/*
		 * Walk the chosen messages again, in id order, beside the locked
		 * rows (also in id order): keep one that was locked and is in no
		 * batch in flight, unless an earlier chosen message of its key was
		 * not kept; one not kept holds back its key.  (A message not due
		 * held back its key already, but only for the messages after it.)
		 */
		for (i = 0; i < nscanned; i++)
		{
			ScannedMessage *m = &scanned[i];
			OutboxMessage *lm = NULL;
			bool		claimable;

			if (!m->chosen)
				continue;
			if (next_locked < nlocked &&
				memcmp(batch->messages[first + next_locked].id.data, m->id.data, UUID_LEN) == 0)
				lm = &batch->messages[first + next_locked++];
			claimable = lm != NULL && !is_inflight(&inflight, &m->id) &&
				kept < max_messages;
			if (m->key[0] != '\0')
			{
				KeyState   *state = key_state(&claim, m->key);

				if (state->lock_missed)
					claimable = false;
				else if (!claimable)
				{
					state->lock_missed = true;
					hold_back(&claim, state);
				}
			}
			if (claimable)
			{
				batch->messages[kept] = *lm;
				batch->tuples[kept] = batch->tuples[lm - batch->messages];
				kept++;
			}
		}
		batch->nmessages = kept;

next_round:
		batch->bytes_reached = bytes_reached;
		/* Go on only when held-back messages filled this scan. */
		if (nscanned < limit || bytes_reached)
			break;
		limit = Min(limit * 2, CLAIM_MAX_SCAN_ROWS);
	}
	UnregisterSnapshot(claim.snapshot);
}

/*
 * Claim up to max_messages due messages in id order, within the current
 * transaction, into batch (allocated in the caller's memory context); with
 * max_bytes not 0, no more once their payloads reach max_bytes (but always
 * one).  Messages in a relay worker's in-flight batch are never claimed.  With
 * set_processing (outbox.fetch_pending), the claimed rows become
 * processing, owned by this backend, and batch->tuples hold them as
 * updated; without it (the relay worker) they stay pending but locked
 * until the transaction ends: a transactional publisher marks them before
 * committing, and otherwise the worker records them in flight.
 */
void
outbox_store_claim(int max_messages, int64 max_bytes, bool ordered_by_key,
				   bool set_processing, OutboxBatch *batch)
{
	MemoryContext caller = CurrentMemoryContext;
	TimestampTz now = GetCurrentTimestamp();

	init_batch(batch, caller);
	store_connect();
	claim_messages(max_messages, max_bytes, ordered_by_key, now, caller, batch);

	if (set_processing && batch->nmessages > 0)
	{
		pg_uuid_t  *ids = palloc(sizeof(pg_uuid_t) * batch->nmessages);
		Oid			markargtypes[3] = {UUIDARRAYOID, TIMESTAMPTZOID, INT4OID};
		Datum		args[3];
		int			ret;
		int			i;

		for (i = 0; i < batch->nmessages; i++)
			ids[i] = batch->messages[i].id;
		args[0] = PointerGetDatum(uuid_array(ids, batch->nmessages));
		args[1] = TimestampTzGetDatum(now);
		args[2] = Int32GetDatum(MyProcPid);
		ret = SPI_execute_plan(store_plan(&claim_mark_plan, CLAIM_MARK_SQL, 3, markargtypes),
							   args, NULL, false, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "could not claim outbox messages: %s", SPI_result_code_string(ret));
		batch->nmessages = 0;
		batch->tupdesc = NULL;
		collect_messages(SPI_tuptable, SPI_processed, caller, batch);
	}

	store_finish();
}

/* Mark messages processed; returns how many changed. */
int
outbox_store_mark_processed(const pg_uuid_t *ids, int nids)
{
	Oid			argtypes[2] = {UUIDARRAYOID, TIMESTAMPTZOID};
	Datum		args[2];
	int			ret;
	int			count;

	if (nids == 0)
		return 0;
	store_connect();
	args[0] = PointerGetDatum(uuid_array(ids, nids));
	args[1] = TimestampTzGetDatum(GetCurrentTimestamp());
	ret = SPI_execute_plan(store_plan(&mark_processed_plan, MARK_PROCESSED_SQL, 2, argtypes),
						   args, NULL, false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "could not mark outbox messages processed: %s", SPI_result_code_string(ret));
	count = (int) SPI_processed;
	store_finish();
	return count;
}

/*
 * Record a failed attempt: count it, keep the error, and either schedule a
 * retry (at retry_at when given, else after backoff) or, when the retries
 * are used up or the failure is permanent, mark the message failed.
 * Returns the new status ("pending" or "failed"), or NULL when the message
 * does not exist or is already finished.
 */
const char *
outbox_store_mark_failed(const pg_uuid_t *id, const char *error, bool permanent,
						 TimestampTz retry_at)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			argtypes[8] = {UUIDOID, TEXTOID, BOOLOID, INT4OID, TIMESTAMPTZOID,
	TIMESTAMPTZOID, INT4OID, INT4OID};
	Datum		args[8];
	char		nulls[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	int			ret;
	const char *status = NULL;

	store_connect();
	args[0] = UUIDPGetDatum(id);
	if (error)
		args[1] = CStringGetTextDatum(error);
	else
		nulls[1] = 'n';
	args[2] = BoolGetDatum(permanent);
	args[3] = Int32GetDatum(outbox_max_retries);
	args[4] = TimestampTzGetDatum(retry_at);
	if (retry_at == 0)
		nulls[4] = 'n';
	args[5] = TimestampTzGetDatum(GetCurrentTimestamp());
	args[6] = Int32GetDatum(outbox_retry_backoff);
	args[7] = Int32GetDatum(outbox_retry_backoff_max);
	ret = SPI_execute_plan(store_plan(&mark_failed_plan, MARK_FAILED_SQL, 8, argtypes),
						   args, nulls, false, 0);
	if (ret != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not mark outbox message failed: %s", SPI_result_code_string(ret));
	if (SPI_processed > 0)
	{
		char	   *value = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		status = MemoryContextStrdup(caller, value);
	}
	store_finish();
	return status;
}

/*
 * Return to pending the messages left processing by a claimer that is gone
 * or that held them longer than outbox.processing_timeout.
 */
int
outbox_store_recover_stuck(void)
{
	Oid			argtypes[1] = {TIMESTAMPTZOID};
	Datum		args[1];
	int			ret;
	int			count;

	store_connect();
	args[0] = TimestampTzGetDatum(TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															  -(int64) outbox_processing_timeout));
	ret = SPI_execute_plan(store_plan(&recover_plan, RECOVER_SQL, 1, argtypes),
						   args, NULL, false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "could not recover outbox messages: %s", SPI_result_code_string(ret));
	count = (int) SPI_processed;
	store_finish();
	return count;
}

/*
 * Delete up to max_rows processed messages older than outbox.retention.
 * Returns how many were deleted.
 */
int
outbox_store_purge_processed(int max_rows)
{
	Oid			argtypes[3] = {TIMESTAMPTZOID, UUIDOID, INT4OID};
	Datum		args[3];
	TimestampTz cutoff;
	pg_uuid_t	bound;
	uint64		cutoff_ms;
	int			ret;
	int			count;
	int			i;

	if (outbox_retention < 0)
		return 0;
	cutoff = GetCurrentTimestamp() - (TimestampTz) outbox_retention * USECS_PER_SEC;

	/* The smallest id that could have been made at the cutoff. */
	cutoff_ms = (uint64) (cutoff / 1000) +
		(uint64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000;
	memset(&bound, 0, sizeof(bound));
	for (i = 0; i < 6; i++)
		bound.data[i] = (unsigned char) (cutoff_ms >> (40 - 8 * i));

	store_connect();
	args[0] = TimestampTzGetDatum(cutoff);
	args[1] = UUIDPGetDatum(&bound);
	args[2] = Int32GetDatum(max_rows);
	ret = SPI_execute_plan(store_plan(&purge_plan, PURGE_SQL, 3, argtypes),
						   args, NULL, false, 0);
	if (ret != SPI_OK_DELETE)
		elog(ERROR, "could not purge outbox messages: %s", SPI_result_code_string(ret));
	count = (int) SPI_processed;
	store_finish();
	return count;
}

/*
 * When the earliest delayed message among the oldest pending ones becomes
 * due, or 0 when none waits.  Lets the worker sleep just long enough.
 */
TimestampTz
outbox_store_next_due(void)
{
	int			ret;
	TimestampTz due = 0;

	store_connect();
	ret = SPI_execute_plan(store_plan(&next_due_plan, NEXT_DUE_SQL, 0, NULL),
						   NULL, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read outbox schedule: %s", SPI_result_code_string(ret));
	if (SPI_processed > 0)
	{
		bool		isnull;
		Datum		value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			due = DatumGetTimestampTz(value);
	}
	store_finish();
	return due;
}

/* Requeue failed messages (all of them when ids is NULL). */
int
outbox_store_retry_failed(ArrayType *ids)
{
	Oid			argtypes[2] = {UUIDARRAYOID, TIMESTAMPTZOID};
	Datum		args[2];
	char		nulls[2] = {' ', ' '};
	int			ret;
	int			count;

	store_connect();
	args[0] = PointerGetDatum(ids);
	if (ids == NULL)
		nulls[0] = 'n';
	args[1] = TimestampTzGetDatum(GetCurrentTimestamp());
	ret = SPI_execute_plan(store_plan(&retry_failed_plan, RETRY_FAILED_SQL, 2, argtypes),
						   args, nulls, false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "could not requeue outbox messages: %s", SPI_result_code_string(ret));
	count = (int) SPI_processed;
	store_finish();
	return count;
}

/* Turn a uuid[] argument into a C array, rejecting NULL elements. */
static pg_uuid_t *
uuid_array_argument(ArrayType *array, int *nids)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;
	pg_uuid_t  *ids;

	deconstruct_array(array, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR,
					  &elems, &nulls, &n);
	ids = palloc(sizeof(pg_uuid_t) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("message ids must not be null")));
		memcpy(&ids[i], DatumGetUUIDP(elems[i]), sizeof(pg_uuid_t));
	}
	*nids = n;
	return ids;
}

/*
 * outbox.fetch_pending(max_messages): claim up to max_messages due
 * messages for an external relay and return them in id order, as
 * processing.  Messages of one key come in order; publish them in order.
 */
Datum
outbox_fetch_pending(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			max_messages = PG_GETARG_INT32(0);
	OutboxBatch batch;
	int			i;

	if (max_messages < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_messages must not be negative")));

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	if (max_messages == 0)
		PG_RETURN_NULL();

	outbox_store_claim(max_messages, 0, outbox_ordering == OUTBOX_ORDERING_KEY,
					   true, &batch);
	for (i = 0; i < batch.nmessages; i++)
	{
		Datum	   *values = palloc(sizeof(Datum) * rsinfo->setDesc->natts);
		bool	   *nulls = palloc(sizeof(bool) * rsinfo->setDesc->natts);
		int			att;

		/* Map by column name, so the row fits the declared row type. */
		for (att = 0; att < rsinfo->setDesc->natts; att++)
		{
			Form_pg_attribute attr = TupleDescAttr(rsinfo->setDesc, att);
			int			src;

			nulls[att] = true;
			values[att] = (Datum) 0;
			if (attr->attisdropped)
				continue;
			src = SPI_fnumber(batch.tupdesc, NameStr(attr->attname));
			if (src > 0)
				values[att] = heap_getattr(batch.tuples[i], src, batch.tupdesc, &nulls[att]);
		}
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	PG_RETURN_NULL();
}

/* outbox.mark_processed(VARIADIC ids): returns how many were marked. */
Datum
outbox_mark_processed(PG_FUNCTION_ARGS)
{
	int			nids;
	pg_uuid_t  *ids = uuid_array_argument(PG_GETARG_ARRAYTYPE_P(0), &nids);

	PG_RETURN_INT32(outbox_store_mark_processed(ids, nids));
}

/*
 * outbox.mark_failed(id, error): record a failed attempt and return the
 * message's new status; NULL when no unfinished message has that id.
 */
Datum
outbox_mark_failed(PG_FUNCTION_ARGS)
{
	const char *status;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("message id must not be null")));
	status = outbox_store_mark_failed(PG_GETARG_UUID_P(0),
									  PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1)),
									  false, 0);
	if (status == NULL)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(DirectFunctionCall2(enum_in, CStringGetDatum(status),
										ObjectIdGetDatum(get_fn_expr_rettype(fcinfo->flinfo))));
}

/* outbox.retry_failed(ids default NULL): requeue failed messages. */
Datum
outbox_retry_failed(PG_FUNCTION_ARGS)
{
	int			count;

	ArrayType  *ids = PG_ARGISNULL(0) ? NULL : PG_GETARG_ARRAYTYPE_P(0);

	if (ids != NULL && array_contains_nulls(ids))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("message ids must not be null")));
	count = outbox_store_retry_failed(ids);
	if (count > 0)
		outbox_wake_worker_at_commit();
	PG_RETURN_INT32(count);
}
