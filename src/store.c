/*-------------------------------------------------------------------------
 *
 * store.c
 *		The store: claim due messages, mark them processed or failed, release,
 *		recover stuck claims and purge old rows.
 *
 * The relay worker and the SQL store API (outbox.fetch_pending and
 * friends, for external relays) share these functions, so both follow one
 * contract.  Every statement is prepared once per process and kept.
 * Message data only ever travels as parameters, never inside SQL text.
 *
 * Claiming is one short transaction:
 *	1. lock up to N due pending messages in id order with FOR UPDATE SKIP
 *	   LOCKED; under per-key ordering only those whose key's oldest
 *	   unfinished message is itself pending and due;
 *	2. under per-key ordering, keep of each key only the run of candidates
 *	   that are exactly the key's oldest unfinished messages, so a message
 *	   skipped because someone else locked it, or one still in backoff,
 *	   holds back every later message of its key;
 *	3. optionally set the kept ones to processing.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "outbox.h"

PG_FUNCTION_INFO_V1(outbox_fetch_pending);
PG_FUNCTION_INFO_V1(outbox_mark_processed);
PG_FUNCTION_INFO_V1(outbox_mark_failed);
PG_FUNCTION_INFO_V1(outbox_retry_failed);

/*
 * Step 1 of a claim; $1 = limit, $2 = now, $3 = continue after this id,
 * $4 = keys already decided in an earlier round.  %s is the per-key guard.
 */
#define CLAIM_CANDIDATES_SQL \
	"SELECT m.* %s FROM outbox.messages m %s " \
	"WHERE m.status = 'pending' AND m.next_attempt_at <= $2 " \
	"AND m.id > $3 AND m.key <> ALL ($4) %s " \
	"ORDER BY m.id LIMIT $1 FOR UPDATE OF m SKIP LOCKED"

/*
 * A key's oldest unfinished messages are looked up with the key compared as
 * a range, "key >= k AND key <= k", not as "key = k".  With the equality
 * the key is a constant to the planner, so "ORDER BY key, id" is just
 * "ORDER BY id", which walking the primary key also gives: on statistics
 * that still say "all pending" the planner may pick that, and filter out
 * every processed message older than the head, a claim then costing as
 * much as the table is large.  With the range, only the key index gives
 * the (key, id) order, and the range bounds its scan to the one key.
 */
#define KEY_IS(col, key) col " >= " key " AND " col " <= " key

/*
 * The per-key guard of step 1: the key's oldest unfinished message (its
 * head) must be pending and due; its id comes along, so that a key with a
 * single candidate needs no further check.
 */
#define CLAIM_KEY_HEAD_COLUMN ", head.id AS head_id"
#define CLAIM_KEY_HEAD_JOIN \
	"LEFT JOIN LATERAL (SELECT h.id, h.status, h.next_attempt_at FROM outbox.messages h " \
	"                   WHERE " KEY_IS("h.key", "m.key") " AND h.key <> '' " \
	"                     AND h.status IN ('pending', 'processing') " \
	"                   ORDER BY h.key, h.id LIMIT 1) head ON m.key <> ''"
#define CLAIM_KEY_GUARD \
	"AND (m.key = '' OR (head.status = 'pending' AND head.next_attempt_at <= $2))"

/*
 * Most rounds of step 1 per claim.  A round is repeated only when keys held
 * back by a locked message filled it, each time without the keys seen.
 */
#define CLAIM_MAX_ROUNDS 8

/*
 * Step 2: the oldest $2[i] unfinished messages of key $1[i], looked up as a
 * key's head is.
 */
#define CLAIM_KEY_HEADS_SQL \
	"SELECT k.ord, h.id FROM unnest($1::text[], $2::int[]) WITH ORDINALITY AS k(key, n, ord), " \
	"LATERAL (SELECT h.id FROM outbox.messages h " \
	"         WHERE " KEY_IS("h.key", "k.key") " AND h.key <> '' " \
	"           AND h.status IN ('pending', 'processing') " \
	"         ORDER BY h.key, h.id LIMIT k.n) h " \
	"ORDER BY k.ord, h.id"

/* Step 3; $1 = ids, $2 = now, $3 = claimer's pid. */
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

#define RELEASE_SQL \
	"UPDATE outbox.messages SET status = 'pending', claimed_at = NULL, claimed_by = NULL " \
	"WHERE id = ANY($1) AND status = 'processing'"

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

static StorePlan claim_key_plan;
static StorePlan claim_none_plan;
static StorePlan key_heads_plan;
static StorePlan claim_mark_plan;
static StorePlan mark_processed_plan;
static StorePlan mark_failed_plan;
static StorePlan release_plan;
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

/* Sort context for keyed_order: the batch whose messages are sorted. */
static int
compare_by_key_then_id(const void *a, const void *b, void *arg)
{
	OutboxMessage *messages = (OutboxMessage *) arg;
	const OutboxMessage *ma = &messages[*(const int *) a];
	const OutboxMessage *mb = &messages[*(const int *) b];
	int			cmp = strcmp(ma->key, mb->key);

	if (cmp != 0)
		return cmp;
	return memcmp(ma->id.data, mb->id.data, UUID_LEN);
}

/*
 * Whether a candidate is its key's oldest unfinished message, as the
 * head_id column of the candidate query says.
 */
static bool
candidate_is_head(HeapTuple tuple, TupleDesc tupdesc, const OutboxMessage *m)
{
	bool		isnull;
	Datum		head = row_value(tuple, tupdesc, "head_id", &isnull);

	return !isnull && memcmp(DatumGetUUIDP(head)->data, m->id.data, UUID_LEN) == 0;
}

/*
 * Under per-key ordering, drop from the candidates batch->messages[first..]
 * every message that is not among its key's oldest unfinished messages in
 * an unbroken run, so a locked, delayed or in-flight earlier message holds
 * back the later ones.  A key with one candidate needs only the head_id
 * the candidate query returned; keys with several are checked against
 * their oldest unfinished messages in one more query.  Candidates are in
 * id order and stay so; the kept ones are compacted in place.  Each key
 * met is added to *seen_keys.
 */
static void
keep_key_runs(OutboxBatch *batch, int first, List **seen_keys)
{
	OutboxMessage *messages = batch->messages + first;
	HeapTuple  *tuples = batch->tuples + first;
	int			n = batch->nmessages - first;
	int		   *order = palloc(sizeof(int) * n);
	int			nkeyed = 0;
	Datum	   *run_keys = palloc(sizeof(Datum) * n);
	Datum	   *run_counts = palloc(sizeof(Datum) * n);
	int		   *run_starts = palloc(sizeof(int) * n);
	int			nruns = 0;
	bool	   *keep = palloc0(sizeof(bool) * n);
	int			i;
	int			kept = 0;

	/* Keyless messages need no guard; sort the others by key, then id. */
	for (i = 0; i < n; i++)
	{
		if (messages[i].key[0] == '\0')
			keep[i] = true;
		else
			order[nkeyed++] = i;
	}
	qsort_arg(order, nkeyed, sizeof(int), compare_by_key_then_id, messages);

	/* Group by key: single candidates are settled here, runs queued. */
	for (i = 0; i < nkeyed;)
	{
		const char *key = messages[order[i]].key;
		int			count = 1;

		while (i + count < nkeyed && strcmp(messages[order[i + count]].key, key) == 0)
			count++;
		*seen_keys = lappend(*seen_keys, DatumGetPointer(CStringGetTextDatum(key)));
		if (count == 1)
			keep[order[i]] = candidate_is_head(tuples[order[i]], batch->tupdesc,
											   &messages[order[i]]);
		else
		{
			run_keys[nruns] = CStringGetTextDatum(key);
			run_counts[nruns] = Int32GetDatum(count);
			run_starts[nruns] = i;
			nruns++;
		}
		i += count;
	}

	if (nruns > 0)
	{
		Oid			argtypes[2] = {TEXTARRAYOID, INT4ARRAYOID};
		Datum		args[2];
		int			ret;
		SPITupleTable *heads;
		uint64		nheads;
		uint64		h = 0;
		int			r;

		args[0] = PointerGetDatum(construct_array(run_keys, nruns, TEXTOID, -1, false, TYPALIGN_INT));
		args[1] = PointerGetDatum(construct_array(run_counts, nruns, INT4OID, 4, true, TYPALIGN_INT));
		ret = SPI_execute_plan(store_plan(&key_heads_plan, CLAIM_KEY_HEADS_SQL, 2, argtypes),
							   args, NULL, false, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "could not read outbox key heads: %s", SPI_result_code_string(ret));
		heads = SPI_tuptable;
		nheads = SPI_processed;

		/*
		 * Heads come ordered by run position, then id; each run's
		 * candidates are in id order too.  Keep each run's common prefix.
		 */
		for (r = 0; r < nruns; r++)
		{
			bool		matching = true;
			int			c;

			for (c = run_starts[r]; c < run_starts[r] + DatumGetInt32(run_counts[r]); c++)
			{
				bool		isnull;
				OutboxMessage *m = &messages[order[c]];

				if (matching && h < nheads &&
					DatumGetInt64(SPI_getbinval(heads->vals[h], heads->tupdesc, 1, &isnull)) == r + 1 &&
					memcmp(DatumGetUUIDP(SPI_getbinval(heads->vals[h], heads->tupdesc, 2, &isnull))->data,
						   m->id.data, UUID_LEN) == 0)
				{
					keep[order[c]] = true;
					h++;
				}
				else
					matching = false;
			}
			/* Skip this run's remaining heads. */
			while (h < nheads)
			{
				bool		isnull;

				if (DatumGetInt64(SPI_getbinval(heads->vals[h], heads->tupdesc, 1, &isnull)) != r + 1)
					break;
				h++;
			}
		}
	}

	for (i = 0; i < n; i++)
	{
		if (!keep[i])
			continue;
		messages[kept] = messages[i];
		tuples[kept] = tuples[i];
		kept++;
	}
	batch->nmessages = first + kept;
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

/*
 * Claim up to max_messages due messages in id order, within the current
 * transaction, into batch (allocated in the caller's memory context).
 * With set_processing, the claimed rows become processing, owned by this
 * backend, and batch->tuples hold them as updated; without it they stay
 * pending but locked until the transaction ends, for transactional
 * publishers that mark them before committing.
 */
void
outbox_store_claim(int max_messages, bool ordered_by_key, bool set_processing,
				   OutboxBatch *batch)
{
	MemoryContext caller = CurrentMemoryContext;
	TimestampTz now = GetCurrentTimestamp();
	Oid			argtypes[4] = {INT4OID, TIMESTAMPTZOID, UUIDOID, TEXTARRAYOID};
	Datum		args[4];
	int			ret;
	StorePlan  *cache = ordered_by_key ? &claim_key_plan : &claim_none_plan;
	SPIPlanPtr	plan;
	pg_uuid_t	after;
	List	   *seen_keys = NIL;
	int			round;
	int			ncandidates = 0;

	init_batch(batch, caller);
	memset(&after, 0, sizeof(after));
	store_connect();
	if (ordered_by_key)
		plan = store_plan(cache, psprintf(CLAIM_CANDIDATES_SQL, CLAIM_KEY_HEAD_COLUMN,
										  CLAIM_KEY_HEAD_JOIN, CLAIM_KEY_GUARD),
						  4, argtypes);
	else
		plan = store_plan(cache, psprintf(CLAIM_CANDIDATES_SQL, "", "", ""),
						  4, argtypes);

	for (round = 0; round < CLAIM_MAX_ROUNDS; round++)
	{
		int			first = batch->nmessages;
		int			wanted = max_messages - first;
		int			found;

		args[0] = Int32GetDatum(wanted);
		args[1] = TimestampTzGetDatum(now);
		args[2] = UUIDPGetDatum(&after);
		args[3] = PointerGetDatum(key_array(seen_keys));
		ret = SPI_execute_plan(plan, args, NULL, false, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "could not claim outbox messages: %s", SPI_result_code_string(ret));
		found = (int) SPI_processed;
		collect_messages(SPI_tuptable, SPI_processed, caller, batch);
		ncandidates += found;

		if (!ordered_by_key || found == 0)
			break;
		after = batch->messages[batch->nmessages - 1].id;
		keep_key_runs(batch, first, &seen_keys);

		/* Go on only when held-back messages filled this round. */
		if (found < wanted || batch->nmessages == max_messages)
			break;
	}
	batch->ncandidates = ncandidates;

	if (set_processing && batch->nmessages > 0)
	{
		pg_uuid_t  *ids = palloc(sizeof(pg_uuid_t) * batch->nmessages);
		Oid			markargtypes[3] = {UUIDARRAYOID, TIMESTAMPTZOID, INT4OID};
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

/* Return claimed messages to pending without counting an attempt. */
void
outbox_store_release(const pg_uuid_t *ids, int nids)
{
	Oid			argtypes[1] = {UUIDARRAYOID};
	Datum		args[1];
	int			ret;

	if (nids == 0)
		return;
	store_connect();
	args[0] = PointerGetDatum(uuid_array(ids, nids));
	ret = SPI_execute_plan(store_plan(&release_plan, RELEASE_SQL, 1, argtypes),
						   args, NULL, false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "could not release outbox messages: %s", SPI_result_code_string(ret));
	store_finish();
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

	outbox_store_claim(max_messages, outbox_ordering == OUTBOX_ORDERING_KEY,
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
