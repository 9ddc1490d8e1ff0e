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
 * Claiming is one short transaction, in four steps (claim_scan,
 * claim_choose, claim_lock, claim_keep):
 *	1. scan: read the pending messages in id order from the oldest, without
 *	   locking them (under outbox.ordering = 'none' only the due ones), all
 *	   on one snapshot;
 *	2. choose the due ones whose key nothing holds back, until the batch's
 *	   payloads reach the byte limit: under per-key ordering a message not
 *	   due holds back the later messages of its key, and so do the keys of
 *	   external relays' claims;
 *	3. lock the chosen rows by address with FOR UPDATE SKIP LOCKED;
 *	4. keep those locked and not in a relay worker's batch in flight (see
 *	   below); under per-key ordering one not kept (locked by someone else,
 *	   changed since it was read, in flight) holds back its key too.
 * The steps repeat, reading more rows each time, while held-back messages
 * fill the reads.  Because the reads start at the oldest pending message,
 * a message is its key's oldest unfinished one exactly when nothing of its
 * key was read before it that can not be claimed: no lookup per key.  For
 * outbox.fetch_pending the kept ones are then set to processing.
 *
 * Every statement goes through outbox_store_execute(), inside a store call
 * (outbox_store_connect() ... outbox_store_finish()) that pins the settings the
 * statements are planned for; store calls nest.
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
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "destination.h"
#include "outbox.h"
#include "shmem.h"
#include "store.h"


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
#define CLAIM_SCAN_ROUTED_SQL \
	"SELECT m.ctid, m.id, m.key, m.next_attempt_at <= $2 AS due, " \
	"octet_length(m.payload) AS bytes FROM outbox.messages m " \
	"WHERE m.status = 'pending' AND m.destinations IS NULL AND m.id > $3 " \
	"AND m.key <> ALL ($4) ORDER BY m.id LIMIT $1"

#define CLAIM_SCAN_DUE_SQL \
	"SELECT m.ctid, m.id, m.key, true AS due, " \
	"octet_length(m.payload) AS bytes FROM outbox.messages m " \
	"WHERE m.status = 'pending' AND m.next_attempt_at <= $2 AND m.id > $3 " \
	"AND m.key <> ALL ($4) ORDER BY m.id LIMIT $1"

#define CLAIM_SCAN_DUE_ROUTED_SQL \
	"SELECT m.ctid, m.id, m.key, true AS due, " \
	"octet_length(m.payload) AS bytes FROM outbox.messages m " \
	"WHERE m.status = 'pending' AND m.destinations IS NULL " \
	"AND m.next_attempt_at <= $2 AND m.id > $3 " \
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
 * in its upper half.  A message that fails for good records when, in
 * processed_at (retry_failed's filters read it).
 */
#define MARK_FAILED_SQL \
	"UPDATE outbox.messages SET retries = retries + 1, last_error = $2, " \
	"status = CASE WHEN $3 OR retries + 1 >= $4 THEN 'failed'::outbox.message_status " \
	"              ELSE 'pending'::outbox.message_status END, " \
	"processed_at = CASE WHEN $3 OR retries + 1 >= $4 THEN $6 END, " \
	"next_attempt_at = COALESCE($5, $6 + least($8::float8, $7::float8 * power(2, least(retries, 60))) " \
	"                                 * (0.5 + random() * 0.5) * interval '1 millisecond'), " \
	"claimed_at = NULL, claimed_by = NULL " \
	"WHERE id = $1 AND status IN ('pending', 'processing') RETURNING status::text"

/*
 * Claims older than the timeout, or whose claimer is gone, go back to
 * pending; rows someone holds locked wait for a later pass.  $1 = the
 * oldest claim time still trusted.  A claimer is its process id: one that
 * started after the claim (the id was reused, after a restart or in a
 * restored dump's new cluster) is not the claimer.  (A backend_start that
 * the role may not see is NULL: trusted.)
 */
#define RECOVER_SQL \
	"UPDATE outbox.messages SET status = 'pending', claimed_at = NULL, claimed_by = NULL " \
	"WHERE id IN (SELECT m.id FROM outbox.messages m " \
	"  WHERE m.status = 'processing' AND (m.claimed_at < $1 OR m.claimed_by IS NULL " \
	"    OR NOT EXISTS (SELECT 1 FROM pg_stat_get_activity(m.claimed_by) a " \
	"      WHERE a.backend_start IS NULL OR a.backend_start <= m.claimed_at)) " \
	"  FOR UPDATE SKIP LOCKED)"

/*
 * $1 = processed before, $2 = an id made before $1, $3 = most rows.  Rows
 * someone holds locked are left for a later pass rather than waited for.
 */
#define PURGE_SQL \
	"DELETE FROM outbox.messages WHERE id IN (" \
	"  SELECT id FROM outbox.messages WHERE id < $2 AND status = 'processed' " \
	"  AND processed_at < $1 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)"

/*
 * With destinations, a processed message replayed to a destination
 * (outbox.replay) stays while that delivery is unfinished or failed: the
 * worker locks the candidates (as PURGE_SQL chooses them), asks as the
 * outbox's owner which of them have such a delivery (only the owner reads
 * outbox.delivery), and deletes the others, so that its role needs no more
 * privileges than without destinations.
 */
#define PURGE_CANDIDATES_SQL \
	"SELECT id FROM outbox.messages WHERE id < $2 AND status = 'processed' " \
	"AND processed_at < $1 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED"

#define PURGE_REPLAYED_SQL \
	"SELECT DISTINCT x.message_id FROM outbox.delivery x " \
	"WHERE x.message_id = ANY ($1) AND x.status <> 'processed'"

#define PURGE_IDS_SQL \
	"DELETE FROM outbox.messages WHERE id = ANY ($1) AND id <> ALL ($2)"

/*
 * The earliest retry still to come among the oldest pending messages, for
 * the worker's sleep; $1 = now.  With destinations, the default
 * destination's only: routed messages' retries are their deliveries', which
 * their workers schedule, and a scan on status alone would find no index
 * (the pending index is the default destination's) and read the whole
 * table by its primary key at every sleep.
 */
#define NEXT_DUE_SQL \
	"SELECT min(next_attempt_at) FROM (SELECT next_attempt_at FROM outbox.messages " \
	"WHERE status = 'pending' ORDER BY id LIMIT 1000) p WHERE next_attempt_at > $1"

#define NEXT_DUE_ROUTED_SQL \
	"SELECT min(next_attempt_at) FROM (SELECT next_attempt_at FROM outbox.messages " \
	"WHERE status = 'pending' AND destinations IS NULL ORDER BY id LIMIT 1000) p " \
	"WHERE next_attempt_at > $1"

/* $1 = ids or NULL for all, $2 = now. */
#define RETRY_FAILED_SQL \
	"UPDATE outbox.messages SET status = 'pending', retries = 0, next_attempt_at = $2, " \
	"processed_at = NULL " \
	"WHERE status = 'failed' AND ($1 IS NULL OR id = ANY($1))"

/*
 * With destinations, the default destination's failed messages ($1: ids, or
 * NULL for all), and the routed messages whose failed deliveries were just
 * requeued ($3, by delivery.c, as the outbox's owner), pending again;
 * counts the default destination's.  $2 = now.
 */
#define RETRY_FAILED_ROUTED_SQL \
	"WITH messages AS (UPDATE outbox.messages m SET status = 'pending', retries = 0, " \
	"    next_attempt_at = $2, processed_at = NULL " \
	"  WHERE m.status = 'failed' AND (m.destinations IS NULL AND ($1 IS NULL OR m.id = ANY ($1)) " \
	"    OR m.destinations IS NOT NULL AND m.id = ANY ($3)) " \
	"  RETURNING m.destinations IS NULL AS unrouted) " \
	"SELECT count(*) FILTER (WHERE unrouted) FROM messages"

static OutboxStatement claim_scan_stmt = {
	.sql = CLAIM_SCAN_SQL, .nargs = 4, .argtypes = {INT4OID, TIMESTAMPTZOID, UUIDOID, TEXTARRAYOID},
	.read_only = true, .expected = SPI_OK_SELECT, .action = "claim outbox messages"
};
static OutboxStatement claim_scan_routed_stmt = {
	.sql = CLAIM_SCAN_ROUTED_SQL, .nargs = 4, .argtypes = {INT4OID, TIMESTAMPTZOID, UUIDOID, TEXTARRAYOID},
	.read_only = true, .expected = SPI_OK_SELECT, .action = "claim outbox messages"
};
static OutboxStatement claim_scan_due_routed_stmt = {
	.sql = CLAIM_SCAN_DUE_ROUTED_SQL, .nargs = 4, .argtypes = {INT4OID, TIMESTAMPTZOID, UUIDOID, TEXTARRAYOID},
	.read_only = true, .expected = SPI_OK_SELECT, .action = "claim outbox messages"
};
static OutboxStatement claim_scan_due_stmt = {
	.sql = CLAIM_SCAN_DUE_SQL, .nargs = 4, .argtypes = {INT4OID, TIMESTAMPTZOID, UUIDOID, TEXTARRAYOID},
	.read_only = true, .expected = SPI_OK_SELECT, .action = "claim outbox messages"
};
static OutboxStatement claim_processing_keys_stmt = {
	.sql = CLAIM_PROCESSING_KEYS_SQL, .nargs = 0, .argtypes = {InvalidOid},
	.read_only = true, .expected = SPI_OK_SELECT, .action = "read outbox claims"
};
static OutboxStatement claim_lock_stmt = {
	.sql = CLAIM_LOCK_SQL, .nargs = 2, .argtypes = {TIDARRAYOID, TIMESTAMPTZOID},
	.read_only = false, .expected = SPI_OK_SELECT, .action = "claim outbox messages"
};
static OutboxStatement claim_mark_stmt = {
	.sql = CLAIM_MARK_SQL, .nargs = 3, .argtypes = {UUIDARRAYOID, TIMESTAMPTZOID, INT4OID},
	.read_only = false, .expected = SPI_OK_SELECT, .action = "claim outbox messages"
};
static OutboxStatement mark_processed_stmt = {
	.sql = MARK_PROCESSED_SQL, .nargs = 2, .argtypes = {UUIDARRAYOID, TIMESTAMPTZOID},
	.read_only = false, .expected = SPI_OK_UPDATE, .action = "mark outbox messages processed"
};
static OutboxStatement mark_failed_stmt = {
	.sql = MARK_FAILED_SQL, .nargs = 8, .argtypes = {UUIDOID, TEXTOID, BOOLOID, INT4OID, TIMESTAMPTZOID, TIMESTAMPTZOID, INT4OID, INT4OID},
	.read_only = false, .expected = SPI_OK_UPDATE_RETURNING, .action = "mark outbox message failed"
};
static OutboxStatement recover_stmt = {
	.sql = RECOVER_SQL, .nargs = 1, .argtypes = {TIMESTAMPTZOID},
	.read_only = false, .expected = SPI_OK_UPDATE, .action = "recover outbox messages"
};
static OutboxStatement purge_stmt = {
	.sql = PURGE_SQL, .nargs = 3, .argtypes = {TIMESTAMPTZOID, UUIDOID, INT4OID},
	.read_only = false, .expected = SPI_OK_DELETE, .action = "purge outbox messages"
};
static OutboxStatement purge_candidates_stmt = {
	.sql = PURGE_CANDIDATES_SQL, .nargs = 3, .argtypes = {TIMESTAMPTZOID, UUIDOID, INT4OID},
	.read_only = false, .expected = SPI_OK_SELECT, .action = "purge outbox messages"
};
static OutboxStatement purge_replayed_stmt = {
	.sql = PURGE_REPLAYED_SQL, .nargs = 1, .argtypes = {UUIDARRAYOID},
	.read_only = true, .expected = SPI_OK_SELECT, .action = "purge outbox messages"
};
static OutboxStatement purge_ids_stmt = {
	.sql = PURGE_IDS_SQL, .nargs = 2, .argtypes = {UUIDARRAYOID, UUIDARRAYOID},
	.read_only = false, .expected = SPI_OK_DELETE, .action = "purge outbox messages"
};
/* Not read-only: it must see the retries the marks just scheduled. */
static OutboxStatement next_due_stmt = {
	.sql = NEXT_DUE_SQL, .nargs = 1, .argtypes = {TIMESTAMPTZOID},
	.read_only = false, .expected = SPI_OK_SELECT, .action = "read outbox schedule"
};
static OutboxStatement next_due_routed_stmt = {
	.sql = NEXT_DUE_ROUTED_SQL, .nargs = 1, .argtypes = {TIMESTAMPTZOID},
	.read_only = false, .expected = SPI_OK_SELECT, .action = "read outbox schedule"
};
static OutboxStatement retry_failed_routed_stmt = {
	.sql = RETRY_FAILED_ROUTED_SQL, .nargs = 3, .argtypes = {UUIDARRAYOID, TIMESTAMPTZOID, UUIDARRAYOID},
	.read_only = false, .expected = SPI_OK_SELECT, .action = "requeue outbox messages"
};
static OutboxStatement retry_failed_stmt = {
	.sql = RETRY_FAILED_SQL, .nargs = 2, .argtypes = {UUIDARRAYOID, TIMESTAMPTZOID},
	.read_only = false, .expected = SPI_OK_UPDATE, .action = "requeue outbox messages"
};

/*
 * Begin a store call: connect to SPI with search_path pinned to pg_catalog
 * (so no operator or function in these statements can be taken over by an
 * object in a schema the caller or a database owner controls), and with
 * sequential scans of the outbox off.  Every statement here is built for
 * an index, and a plan kept from when the table was small (a new install,
 * after a TRUNCATE) would otherwise scan the whole table on every claim
 * once it has grown.  Setting this in every backend that uses the store
 * covers the worker and external relays alike.
 *
 * Returns the GUC nesting level to hand to outbox_store_finish().  Store calls
 * nest (a trigger on outbox.messages may call retry_failed() from inside
 * a mark, a function publisher may call fetch_pending()), and each one
 * undoes exactly its own settings; an error unwinds them with the
 * (sub)transaction.
 */
int
outbox_store_connect(void)
{
	int			guc_level = NewGUCNestLevel();

	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("enable_seqscan", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "could not connect to SPI for the outbox store");
	return guc_level;
}

/* The owner of the outbox's tables (that of outbox.messages). */
static Oid
outbox_owner(void)
{
	Oid			relid = get_relname_relid("messages", get_namespace_oid("outbox", false));
	HeapTuple	tuple;
	Oid			owner;

	if (!OidIsValid(relid))
		elog(ERROR, "outbox.messages does not exist");
	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	return owner;
}

/*
 * Begin a store call that runs as the owner of the outbox's tables, in a
 * restricted operation: destinations' statements (delivery.c, route.c).
 * Destinations are the outbox's own business: a saving role, the worker's
 * role (outbox.role) and an external relay granted EXECUTE on the store
 * API need no privilege on their tables.  Hand *call to
 * outbox_store_finish_as_owner().
 */
void
outbox_store_connect_as_owner(OutboxStoreCall *call)
{
	GetUserIdAndSecContext(&call->saved_userid, &call->saved_sec_context);
	SetUserIdAndSecContext(outbox_owner(),
						   call->saved_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	call->guc_level = outbox_store_connect();
}

/* End a store call begun by outbox_store_connect_as_owner(). */
void
outbox_store_finish_as_owner(OutboxStoreCall *call)
{
	outbox_store_finish(call->guc_level);
	SetUserIdAndSecContext(call->saved_userid, call->saved_sec_context);
}

/* End a store call: disconnect from SPI and restore the settings. */
void
outbox_store_finish(int guc_level)
{
	SPI_finish();
	AtEOXact_GUC(true, guc_level);
}

/*
 * Run a store statement with args (and nulls, in SPI's form, or NULL), on
 * snapshot when it is valid, returning at most max_rows (0 = all); raise an
 * error unless it succeeds.  Returns the rows processed; a result is in
 * SPI_tuptable.  Runs inside a store call.
 */
uint64
outbox_store_execute(OutboxStatement *stmt, Datum *args, const char *nulls,
			  Snapshot snapshot, long max_rows)
{
	int			ret;

	if (stmt->plan == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(stmt->sql, stmt->nargs, stmt->argtypes);

		if (plan == NULL)
			elog(ERROR, "could not prepare outbox statement: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		stmt->plan = plan;
	}
	if (snapshot != InvalidSnapshot)
		ret = SPI_execute_snapshot(stmt->plan, args, nulls, snapshot, InvalidSnapshot,
								   stmt->read_only, false, max_rows);
	else
		ret = SPI_execute_plan(stmt->plan, args, nulls, stmt->read_only, max_rows);
	if (ret != stmt->expected)
		elog(ERROR, "could not %s: %s", stmt->action, SPI_result_code_string(ret));
	return SPI_processed;
}

/* A whole store call of one statement; returns the rows it processed. */
static int
store_run(OutboxStatement *stmt, Datum *args, const char *nulls)
{
	int			guc_level = outbox_store_connect();
	int			count = (int) outbox_store_execute(stmt, args, nulls, InvalidSnapshot, 0);

	outbox_store_finish(guc_level);
	return count;
}

/*
 * Whether this database's outbox has destinations (0.3.0 and later): the
 * library also serves an older version until ALTER EXTENSION UPDATE.
 */
bool
outbox_have_destinations(void)
{
	Oid			namespace = get_namespace_oid("outbox", true);

	return OidIsValid(namespace) &&
		OidIsValid(get_relname_relid("destination", namespace));
}

/* Build a uuid[] from ids. */
ArrayType *
outbox_uuid_array(const pg_uuid_t *ids, int nids)
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
void
outbox_store_collect(SPITupleTable *tuptable, uint64 nrows, MemoryContext context,
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

/*
 * A claim's state of one key: whether a message of the key was met that
 * can not be claimed (not due, locked by someone else, changed, in flight,
 * or claimed by an external relay), which holds back every later message
 * of the key.
 */
typedef struct KeyState
{
	const char *key;			/* hash key; the string lives in the claim */
	bool		held_back;
	bool		lock_missed;	/* a message chosen to be locked was not kept */
} KeyState;

/*
 * Hash an entry's key that is a pointer to a string (KeyState here,
 * delivery.c's held keys): the string it points to.
 */
uint32
outbox_string_key_hash(const void *key, Size keysize)
{
	const char *k = *(const char *const *) key;

	return hash_bytes((const unsigned char *) k, (int) strlen(k));
}

/* Compare two keys that are pointers to strings, as strings. */
int
outbox_string_key_match(const void *key1, const void *key2, Size keysize)
{
	return strcmp(*(const char *const *) key1, *(const char *const *) key2);
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

/* A claim in progress. */
typedef struct Claim
{
	/* What is asked for. */
	int			max_messages;
	int64		max_bytes;		/* 0: no limit */
	bool		ordered;		/* per-key order */
	bool		routed;			/* the schema routes messages (0.3.0) */
	TimestampTz now;
	MemoryContext caller;		/* where the batch lives */
	OutboxBatch *batch;

	/* The key guard. */
	HTAB	   *keys;			/* KeyState by key */
	List	   *held_back;		/* text datums of the keys held back */

	/* Progress. */
	Snapshot	snapshot;		/* every scan of the claim reads this */
	pg_uuid_t	after;			/* the last id scanned */
	int64		chosen_bytes;
	bool		bytes_reached;
} Claim;

/* The state of a key, created open when new. */
static KeyState *
key_state(Claim *claim, const char *key)
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
hold_back(Claim *claim, KeyState *state)
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

/* Start a claim: an empty key guard, and one snapshot for all its scans. */
static void
claim_begin(Claim *claim, int max_messages, int64 max_bytes, bool ordered,
			TimestampTz now, MemoryContext caller, OutboxBatch *batch)
{
	HASHCTL		ctl;

	memset(claim, 0, sizeof(Claim));
	claim->max_messages = max_messages;
	claim->max_bytes = max_bytes;
	claim->ordered = ordered;
	claim->routed = outbox_have_destinations();
	claim->now = now;
	claim->caller = caller;
	claim->batch = batch;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(char *);
	ctl.entrysize = sizeof(KeyState);
	ctl.hash = outbox_string_key_hash;
	ctl.match = outbox_string_key_match;
	ctl.hcxt = CurrentMemoryContext;
	claim->keys = hash_create("outbox claim keys", 256, &ctl,
							  HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
	claim->snapshot = RegisterSnapshot(GetTransactionSnapshot());
}

/* Hold back the keys of the messages external relays have claimed. */
static void
claim_hold_back_processing_keys(Claim *claim)
{
	uint64		n = outbox_store_execute(&claim_processing_keys_stmt, NULL, NULL,
								  claim->snapshot, 0);
	uint64		i;

	for (i = 0; i < n; i++)
	{
		char	   *key = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);

		hold_back(claim, key_state(claim, key));
	}
}

/*
 * Step 1: read the next limit pending messages in id order after the last
 * one read, due or not (only due ones without per-key order), leaving out
 * the keys held back.  Returns how many were read, into *scanned.
 */
static int
claim_scan(Claim *claim, int limit, ScannedMessage **scanned)
{
	Datum		args[4];
	int			nscanned;
	int			i;

	args[0] = Int32GetDatum(limit);
	args[1] = TimestampTzGetDatum(claim->now);
	args[2] = UUIDPGetDatum(&claim->after);
	args[3] = PointerGetDatum(key_array(claim->held_back));
	nscanned = (int) outbox_store_execute(claim->routed ?
										  (claim->ordered ? &claim_scan_routed_stmt : &claim_scan_due_routed_stmt) :
										  (claim->ordered ? &claim_scan_stmt : &claim_scan_due_stmt),
										  args, NULL, claim->snapshot, 0);
	*scanned = palloc(sizeof(ScannedMessage) * Max(nscanned, 1));
	for (i = 0; i < nscanned; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	tupdesc = SPI_tuptable->tupdesc;
		ScannedMessage *m = &(*scanned)[i];
		bool		isnull;

		ItemPointerCopy((ItemPointer) DatumGetPointer(SPI_getbinval(tuple, tupdesc, 1, &isnull)),
						&m->ctid);
		memcpy(&m->id, DatumGetUUIDP(SPI_getbinval(tuple, tupdesc, 2, &isnull)),
			   sizeof(pg_uuid_t));
		m->key = claim->ordered ?
			TextDatumGetCString(SPI_getbinval(tuple, tupdesc, 3, &isnull)) : "";
		m->due = DatumGetBool(SPI_getbinval(tuple, tupdesc, 4, &isnull));
		m->bytes = DatumGetInt32(SPI_getbinval(tuple, tupdesc, 5, &isnull));
		m->chosen = false;
	}
	if (nscanned > 0)
		claim->after = (*scanned)[nscanned - 1].id;
	SPI_freetuptable(SPI_tuptable);
	return nscanned;
}

/*
 * Step 2: choose the due messages whose key nothing holds back, until their
 * payloads reach the byte limit; a message not due holds back its key.
 * Returns how many were chosen, with their row addresses in chosen_ctids.
 */
static int
claim_choose(Claim *claim, ScannedMessage *scanned, int nscanned, Datum *chosen_ctids)
{
	int			nchosen = 0;
	int			i;

	for (i = 0; i < nscanned; i++)
	{
		ScannedMessage *m = &scanned[i];

		if (m->key[0] == '\0')
			m->chosen = m->due;
		else
		{
			KeyState   *state = key_state(claim, m->key);

			if (!m->due)
				hold_back(claim, state);
			else if (!state->held_back)
				m->chosen = true;
		}
		if (m->chosen && claim->bytes_reached)
			m->chosen = false;
		if (m->chosen)
		{
			chosen_ctids[nchosen++] = PointerGetDatum(&m->ctid);
			claim->chosen_bytes += m->bytes;
			claim->bytes_reached = claim->max_bytes > 0 &&
				claim->chosen_bytes >= claim->max_bytes;
		}
	}
	return nchosen;
}

/*
 * Step 3: lock the chosen rows by address, skipping those someone else
 * holds locked and those changed since they were read, and append the
 * locked ones to the batch (after its first kept messages).  Returns how
 * many were locked.
 */
static int
claim_lock(Claim *claim, Datum *chosen_ctids, int nchosen)
{
	Datum		args[2];
	uint64		nlocked;

	args[0] = PointerGetDatum(construct_array(chosen_ctids, nchosen, TIDOID,
											  sizeof(ItemPointerData), false,
											  TYPALIGN_SHORT));
	args[1] = TimestampTzGetDatum(claim->now);
	nlocked = outbox_store_execute(&claim_lock_stmt, args, NULL, InvalidSnapshot, 0);
	outbox_store_collect(SPI_tuptable, nlocked, claim->caller, claim->batch);
	return (int) nlocked;
}

/*
 * Step 4: keep the locked messages that no relay worker is publishing, in
 * id order, up to max_messages, dropping the rows locked beyond them.
 * Walks the chosen messages beside the locked rows (both in id order, the
 * locked ones from index first of the batch): one not kept (not locked, in
 * flight, or beyond the limit) holds back its key, and so does a key that
 * missed one before, so a key's kept messages are an unbroken run.
 *
 * The in-flight range is read only now, after locking: a worker records
 * its batch before its claim commits and lets go of the row locks, so a
 * row this transaction could lock is either not in flight or recorded as
 * such by now.
 */
static void
claim_keep(Claim *claim, ScannedMessage *scanned, int nscanned, int first, int nlocked)
{
	OutboxBatch *batch = claim->batch;
	pg_uuid_t	inflight_first;
	pg_uuid_t	inflight_last;
	bool		inflight = outbox_shmem_read_inflight(MyDatabaseId, &inflight_first,
													  &inflight_last);
	int			next_locked = 0;
	int			kept = first;
	int			i;

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
		claimable = lm != NULL && kept < claim->max_messages &&
			!(inflight &&
			  memcmp(m->id.data, inflight_first.data, UUID_LEN) >= 0 &&
			  memcmp(m->id.data, inflight_last.data, UUID_LEN) <= 0);
		if (m->key[0] != '\0')
		{
			KeyState   *state = key_state(claim, m->key);

			if (state->lock_missed)
				claimable = false;
			else if (!claimable)
			{
				state->lock_missed = true;
				hold_back(claim, state);
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
}

/*
 * Claim, appending to the batch: scan, choose, lock and keep, in rounds.  A
 * round reads twice as many rows as the one before, and comes only when
 * held-back messages filled the last one, so the batch is short of
 * max_messages while due messages may follow.
 */
static void
claim_messages(Claim *claim)
{
	int			limit = claim->max_messages;
	int			round;

	if (claim->ordered)
		claim_hold_back_processing_keys(claim);

	for (round = 0; round < CLAIM_MAX_ROUNDS &&
		 claim->batch->nmessages < claim->max_messages; round++)
	{
		ScannedMessage *scanned;
		Datum	   *chosen_ctids;
		int			nscanned;
		int			nchosen;

		nscanned = claim_scan(claim, limit, &scanned);
		if (nscanned == 0)
			break;
		chosen_ctids = palloc(sizeof(Datum) * nscanned);
		nchosen = claim_choose(claim, scanned, nscanned, chosen_ctids);
		if (nchosen > 0)
		{
			int			first = claim->batch->nmessages;
			int			nlocked = claim_lock(claim, chosen_ctids, nchosen);

			claim_keep(claim, scanned, nscanned, first, nlocked);
		}
		claim->batch->bytes_reached = claim->bytes_reached;
		if (nscanned < limit || claim->bytes_reached)
			break;
		limit = Min(limit * 2, CLAIM_MAX_SCAN_ROWS);
	}
	UnregisterSnapshot(claim->snapshot);
}

/*
 * Claim up to max_messages due messages in id order, within the current
 * transaction, into batch (allocated in the caller's memory context); with
 * max_bytes not 0, no more once their payloads reach max_bytes (but always
 * one).  Messages in a relay worker's in-flight batch are never claimed.
 * With set_processing (outbox.fetch_pending), the claimed rows become
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
	Claim		claim;
	int			guc_level;

	init_batch(batch, caller);
	guc_level = outbox_store_connect();
	claim_begin(&claim, max_messages, max_bytes, ordered_by_key, now, caller, batch);
	claim_messages(&claim);

	if (set_processing && batch->nmessages > 0)
	{
		pg_uuid_t  *ids = palloc(sizeof(pg_uuid_t) * batch->nmessages);
		Datum		args[3];
		uint64		nclaimed;
		int			i;

		for (i = 0; i < batch->nmessages; i++)
			ids[i] = batch->messages[i].id;
		args[0] = PointerGetDatum(outbox_uuid_array(ids, batch->nmessages));
		args[1] = TimestampTzGetDatum(now);
		args[2] = Int32GetDatum(MyProcPid);
		nclaimed = outbox_store_execute(&claim_mark_stmt, args, NULL, InvalidSnapshot, 0);
		batch->nmessages = 0;
		batch->tupdesc = NULL;
		outbox_store_collect(SPI_tuptable, nclaimed, caller, batch);
	}

	outbox_store_finish(guc_level);
}

/* Mark messages processed; returns how many changed. */
int
outbox_store_mark_processed(const pg_uuid_t *ids, int nids)
{
	Datum		args[2];

	if (nids == 0)
		return 0;
	args[0] = PointerGetDatum(outbox_uuid_array(ids, nids));
	args[1] = TimestampTzGetDatum(GetCurrentTimestamp());
	return store_run(&mark_processed_stmt, args, NULL);
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
	Datum		args[8];
	char		nulls[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	const char *status = NULL;
	int			guc_level;

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

	guc_level = outbox_store_connect();
	if (outbox_store_execute(&mark_failed_stmt, args, nulls, InvalidSnapshot, 0) > 0)
		status = MemoryContextStrdup(caller, SPI_getvalue(SPI_tuptable->vals[0],
														  SPI_tuptable->tupdesc, 1));
	outbox_store_finish(guc_level);
	return status;
}

/*
 * Return to pending the messages left processing by a claimer that is gone
 * or that held them longer than outbox.processing_timeout.
 */
int
outbox_store_recover_stuck(void)
{
	Datum		args[1];

	args[0] = TimestampTzGetDatum(TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															  -(int64) outbox_processing_timeout));
	return store_run(&recover_stmt, args, NULL);
}

/* The ids in the first column of SPI's result, as a uuid[] in context. */
static ArrayType *
result_ids(uint64 n, MemoryContext context)
{
	MemoryContext old = MemoryContextSwitchTo(context);
	pg_uuid_t  *ids = palloc(sizeof(pg_uuid_t) * Max(n, 1));
	ArrayType  *array;
	uint64		i;
	bool		isnull;

	for (i = 0; i < n; i++)
		memcpy(ids[i].data, DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[i],
														SPI_tuptable->tupdesc, 1,
														&isnull))->data, UUID_LEN);
	array = outbox_uuid_array(ids, (int) n);
	MemoryContextSwitchTo(old);
	return array;
}

/*
 * The purge with destinations (PURGE_CANDIDATES_SQL): lock the candidates,
 * leave out those with an unfinished replayed delivery, delete the rest.
 */
static int
purge_unless_replayed(Datum *args)
{
	int			guc_level = outbox_store_connect();
	MemoryContext context = CurrentMemoryContext;
	uint64		n;
	int			count = 0;

	n = outbox_store_execute(&purge_candidates_stmt, args, NULL, InvalidSnapshot, 0);
	if (n > 0)
	{
		OutboxStoreCall call;
		Datum		ids[2];

		ids[0] = PointerGetDatum(result_ids(n, context));
		outbox_store_connect_as_owner(&call);
		n = outbox_store_execute(&purge_replayed_stmt, ids, NULL, InvalidSnapshot, 0);
		ids[1] = PointerGetDatum(result_ids(n, context));
		outbox_store_finish_as_owner(&call);
		count = (int) outbox_store_execute(&purge_ids_stmt, ids, NULL, InvalidSnapshot, 0);
	}
	outbox_store_finish(guc_level);
	return count;
}

/*
 * Delete up to max_rows processed messages older than outbox.retention.
 * Returns how many were deleted.
 */
int
outbox_store_purge_processed(int max_rows)
{
	Datum		args[3];
	TimestampTz cutoff;
	pg_uuid_t	bound;
	uint64		cutoff_ms;
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

	args[0] = TimestampTzGetDatum(cutoff);
	args[1] = UUIDPGetDatum(&bound);
	args[2] = Int32GetDatum(max_rows);
	if (outbox_have_destinations())
		return purge_unless_replayed(args);
	return store_run(&purge_stmt, args, NULL);
}

/*
 * When the earliest delayed message among the oldest pending ones becomes
 * due, or 0 when none waits.  Lets the worker sleep just long enough.
 */
TimestampTz
outbox_store_next_due(void)
{
	Datum		args[1];
	TimestampTz due = 0;
	int			guc_level;

	args[0] = TimestampTzGetDatum(GetCurrentTimestamp());
	guc_level = outbox_store_connect();
	if (outbox_store_execute(outbox_have_destinations() ? &next_due_routed_stmt : &next_due_stmt,
							 args, NULL, InvalidSnapshot, 1) > 0)
	{
		bool		isnull;
		Datum		value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			due = DatumGetTimestampTz(value);
	}
	outbox_store_finish(guc_level);
	return due;
}

/*
 * Requeue failed messages (all of them when ids is NULL), and with
 * destinations, for a superuser, the failed deliveries of routed ones.
 * The messages are updated as the caller (an external relay needs UPDATE
 * on them, as before); the deliveries as the outbox's owner (delivery.c).
 * Other callers (the default destination's external relay) requeue only
 * the default destination's messages: the destinations' dead letters are
 * theirs to requeue (retry_failed(ids, destination), external ones only,
 * or the filter form, granted to operators).
 */
int
outbox_store_retry_failed(ArrayType *ids)
{
	Datum		args[3];
	char		nulls[3] = {' ', ' ', ' '};
	int			guc_level;
	int			count;
	int			nrequeued;
	pg_uuid_t  *requeued;
	bool		isnull;

	args[0] = PointerGetDatum(ids);
	if (ids == NULL)
		nulls[0] = 'n';
	args[1] = TimestampTzGetDatum(GetCurrentTimestamp());
	if (!outbox_have_destinations())
		return store_run(&retry_failed_stmt, args, nulls);
	if (superuser())
		nrequeued = outbox_delivery_requeue_failed(ids, &requeued);
	else
	{
		nrequeued = 0;
		requeued = NULL;
	}
	args[2] = PointerGetDatum(outbox_uuid_array(requeued, nrequeued));
	guc_level = outbox_store_connect();
	(void) outbox_store_execute(&retry_failed_routed_stmt, args, nulls, InvalidSnapshot, 0);
	count = (int) DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
											  1, &isnull));
	outbox_store_finish(guc_level);
	return count + nrequeued;
}
