/*-------------------------------------------------------------------------
 *
 * operations.c
 *		Operating an outbox: what the workers are doing (from shared memory),
 *		replaying processed messages, requeueing dead letters by filter,
 *		and the count that keeps the backlog counter of outbox.max_backlog
 *		true.
 *
 *	- outbox.worker_status() copies every worker's status out of shared
 *	  memory (shmem.c): no table is read, so a monitoring role needs only
 *	  EXECUTE on it.
 *	- outbox.replay() publishes processed messages again, with their ids:
 *	  a message of the default destination becomes pending again (its
 *	  worker claims it in id order, before the newer messages of its key);
 *	  a routed message gets a pending delivery row in each destination (or
 *	  in the one named), which its worker retries in id order like any
 *	  other delivery.  Replaying to a destination that did not exist when
 *	  the messages were saved is how a backfill is done.
 *	- outbox.retry_failed(ids, destination, topic_pattern, failed_after,
 *	  failed_before, error_like) requeues the failed messages and
 *	  deliveries that match.
 * Both run their statements as the owner of the outbox's tables, in a
 * restricted operation with search_path pinned (store.c), like the other
 * destination functions: EXECUTE is the only privilege they need.  They
 * wake the workers concerned at commit, and tell the backlog counter.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "destination.h"
#include "operations.h"
#include "outbox.h"
#include "pg_compat.h"
#include "route.h"
#include "shmem.h"
#include "store.h"

PG_FUNCTION_INFO_V1(outbox_worker_status);
PG_FUNCTION_INFO_V1(outbox_replay);
PG_FUNCTION_INFO_V1(outbox_replay_ids);
PG_FUNCTION_INFO_V1(outbox_retry_failed_where);

/* The names of the states, as outbox.worker_status() shows them. */
static const char *const state_names[] = {
	[OUTBOX_WORKER_IDLE] = "idle",
	[OUTBOX_WORKER_PUBLISHING] = "publishing",
	[OUTBOX_WORKER_BACKOFF] = "backoff",
	[OUTBOX_WORKER_PAUSED] = "paused",
	[OUTBOX_WORKER_STOPPED] = "stopped",
	[OUTBOX_WORKER_FAILING] = "failing",
};

/* Most rows of outbox.worker_status(): every database, every destination. */
#define MAX_STATUS_ROWS (OUTBOX_MAX_DATABASES + OUTBOX_MAX_DESTINATION_WORKERS)

/*
 * The unfinished messages (pending or processing), each status counted
 * through its partial index; the library also serves 0.2.0's schema.
 */
#define COUNT_UNFINISHED_SQL \
	"SELECT (SELECT count(*) FROM outbox.messages m " \
	"        WHERE m.status = 'pending' AND m.destinations IS NULL) " \
	"     + (SELECT count(*) FROM outbox.messages m " \
	"        WHERE m.status = 'pending' AND m.destinations IS NOT NULL) " \
	"     + (SELECT count(*) FROM outbox.messages m WHERE m.status = 'processing')"

#define COUNT_UNFINISHED_0_2_SQL \
	"SELECT (SELECT count(*) FROM outbox.messages m WHERE m.status = 'pending') " \
	"     + (SELECT count(*) FROM outbox.messages m WHERE m.status = 'processing')"

static OutboxStatement count_unfinished_stmt = {
	.sql = COUNT_UNFINISHED_SQL, .nargs = 0, .argtypes = {InvalidOid},
	.read_only = true, .expected = SPI_OK_SELECT, .action = "count outbox messages"
};
static OutboxStatement count_unfinished_0_2_stmt = {
	.sql = COUNT_UNFINISHED_0_2_SQL, .nargs = 0, .argtypes = {InvalidOid},
	.read_only = true, .expected = SPI_OK_SELECT, .action = "count outbox messages"
};

/*
 * The arguments of a replay statement: $1 since, $2 until, $3 topic
 * pattern (window replays), $4 ids (replays by id), $5 now, $6 the
 * destination's id (replays to one destination).  Each statement returns
 * one row: messages queued, messages made pending again, and the
 * destinations that got pending deliveries.
 */
#define REPLAY_NARGS 6

#define REPLAY_WINDOW_FILTER \
	"m.created_at >= $1 AND m.created_at < $2 " \
	"AND ($3::text IS NULL OR outbox.topic_matches(m.topic, $3))"

#define REPLAY_IDS_FILTER "m.id = ANY ($4)"

/* What a requeued delivery row becomes (on conflict with a finished one). */
#define REQUEUE_DELIVERY \
	"ON CONFLICT (destination_id, message_id) DO UPDATE SET status = 'pending', " \
	"retries = 0, next_attempt_at = excluded.next_attempt_at, claimed_at = NULL, " \
	"claimed_by = NULL, processed_at = NULL WHERE x.status IN ('processed', 'failed') "

/*
 * Each message to where it went: the default destination's become pending,
 * routed ones pending with a pending delivery in each destination that
 * still exists (routed messages whose destinations are all gone are left).
 */
#define REPLAY_AS_SAVED_SQL \
	"WITH chosen AS (SELECT m.id, m.key, m.destinations FROM outbox.messages m " \
	"    WHERE m.status = 'processed' AND %s " \
	"    AND (m.destinations IS NULL OR EXISTS (SELECT 1 FROM unnest(m.destinations) r(id) " \
	"         JOIN outbox.destination d ON d.id = r.id)) " \
	"    ORDER BY m.id FOR UPDATE OF m), " \
	"deliveries AS (INSERT INTO outbox.delivery AS x (destination_id, message_id, key, " \
	"    status, next_attempt_at) " \
	"  SELECT d.id, c.id, c.key, 'pending', $5 FROM chosen c " \
	"  CROSS JOIN LATERAL unnest(c.destinations) AS r(id) " \
	"  JOIN outbox.destination d ON d.id = r.id " \
	REQUEUE_DELIVERY "RETURNING x.destination_id), " \
	"requeued AS (UPDATE outbox.messages m SET status = 'pending', retries = 0, " \
	"    next_attempt_at = $5, processed_at = NULL, claimed_at = NULL, claimed_by = NULL " \
	"  FROM chosen c WHERE m.id = c.id RETURNING m.destinations IS NULL AS to_default) " \
	"SELECT (SELECT count(*) FROM requeued), (SELECT count(*) FROM requeued WHERE to_default), " \
	"ARRAY(SELECT DISTINCT destination_id FROM deliveries)"

/* The default destination's messages only. */
#define REPLAY_DEFAULT_SQL \
	"WITH requeued AS (UPDATE outbox.messages m SET status = 'pending', retries = 0, " \
	"    next_attempt_at = $5, processed_at = NULL, claimed_at = NULL, claimed_by = NULL " \
	"  WHERE m.status = 'processed' AND m.destinations IS NULL AND %s RETURNING 1) " \
	"SELECT (SELECT count(*) FROM requeued), (SELECT count(*) FROM requeued), '{}'::int[]"

/*
 * Every chosen message to destination $6, routed there or not: a pending
 * delivery row each.  A routed message is pending again until that
 * delivery is finished too; one of the default destination stays
 * processed (retention keeps it while the delivery is unfinished).
 */
#define REPLAY_TO_SQL \
	"WITH chosen AS (SELECT m.id, m.key FROM outbox.messages m " \
	"    WHERE m.status = 'processed' AND %s ORDER BY m.id FOR UPDATE OF m), " \
	"deliveries AS (INSERT INTO outbox.delivery AS x (destination_id, message_id, key, " \
	"    status, next_attempt_at) " \
	"  SELECT $6, c.id, c.key, 'pending', $5 FROM chosen c " \
	REQUEUE_DELIVERY "RETURNING x.message_id), " \
	"requeued AS (UPDATE outbox.messages m SET status = 'pending', processed_at = NULL " \
	"  FROM deliveries q WHERE m.id = q.message_id AND m.destinations IS NOT NULL RETURNING 1) " \
	"SELECT (SELECT count(*) FROM deliveries), (SELECT count(*) FROM requeued), ARRAY[$6]"

/*
 * Failed deliveries ($3: any; $4: of that destination only) and failed
 * messages of the default destination ($2) that match: $1 topic pattern,
 * failed at or after $5 and before $6, last_error LIKE $7, id among $9;
 * $8 = now.  A
 * routed message whose delivery is requeued is pending again.  Returns
 * how many were requeued (deliveries and messages of the default
 * destination), how many messages became pending, and the destinations.
 */
#define RETRY_WHERE_SQL \
	"WITH deliveries AS (UPDATE outbox.delivery x SET status = 'pending', retries = 0, " \
	"    next_attempt_at = $8, claimed_at = NULL, claimed_by = NULL, processed_at = NULL " \
	"  FROM outbox.messages m " \
	"  WHERE $3 AND x.status = 'failed' AND m.id = x.message_id " \
	"  AND ($4::int IS NULL OR x.destination_id = $4) " \
	"  AND ($9::uuid[] IS NULL OR x.message_id = ANY ($9)) " \
	"  AND ($1::text IS NULL OR outbox.topic_matches(m.topic, $1)) " \
	"  AND ($5::timestamptz IS NULL OR coalesce(x.processed_at, x.next_attempt_at) >= $5) " \
	"  AND ($6::timestamptz IS NULL OR coalesce(x.processed_at, x.next_attempt_at) < $6) " \
	"  AND ($7::text IS NULL OR x.last_error LIKE $7) " \
	"  RETURNING x.message_id, x.destination_id), " \
	"routed AS (UPDATE outbox.messages m SET status = 'pending', processed_at = NULL " \
	"  WHERE m.status = 'failed' AND m.destinations IS NOT NULL " \
	"  AND m.id IN (SELECT message_id FROM deliveries) RETURNING 1), " \
	"unrouted AS (UPDATE outbox.messages m SET status = 'pending', retries = 0, " \
	"    next_attempt_at = $8, processed_at = NULL " \
	"  WHERE $2 AND m.status = 'failed' AND m.destinations IS NULL " \
	"  AND ($9::uuid[] IS NULL OR m.id = ANY ($9)) " \
	"  AND ($1::text IS NULL OR outbox.topic_matches(m.topic, $1)) " \
	"  AND ($5::timestamptz IS NULL OR coalesce(m.processed_at, m.created_at) >= $5) " \
	"  AND ($6::timestamptz IS NULL OR coalesce(m.processed_at, m.created_at) < $6) " \
	"  AND ($7::text IS NULL OR m.last_error LIKE $7) RETURNING 1) " \
	"SELECT (SELECT count(*) FROM deliveries) + (SELECT count(*) FROM unrouted), " \
	"(SELECT count(*) FROM routed) + (SELECT count(*) FROM unrouted), " \
	"ARRAY(SELECT DISTINCT destination_id FROM deliveries)"

/*
 * Count the unfinished messages of this database, in the main worker (as
 * its role, through the partial indexes), to correct the backlog counter.
 * Runs in a transaction.
 */
int64
outbox_count_unfinished(void)
{
	int			guc_level = outbox_store_connect();
	bool		isnull;
	int64		count;

	(void) outbox_store_execute(outbox_have_destinations() ? &count_unfinished_stmt :
								&count_unfinished_0_2_stmt, NULL, NULL, InvalidSnapshot, 1);
	count = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	outbox_store_finish(guc_level);
	return isnull ? 0 : count;
}

/* A timestamp column: NULL when never. */
static Datum
timestamp_or_null(TimestampTz value, bool *isnull)
{
	*isnull = value == 0;
	return TimestampTzGetDatum(value);
}

/*
 * outbox.worker_status(): one row per relayed database (its main worker,
 * destination "default") and per destination worker, copied from shared
 * memory.  The last error of another database's worker is shown only to
 * roles with the privileges of pg_read_all_stats, as pg_stat_activity
 * shows other sessions' queries.  A main worker's row also has the backlog
 * counter outbox.max_backlog is checked against (NULL while it is not
 * counted: outbox.max_backlog is 0, or the worker has not counted yet).
 */
Datum
outbox_worker_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	OutboxStatusView *rows = palloc(sizeof(OutboxStatusView) * MAX_STATUS_ROWS);
	char	   *current_db = get_database_name(MyDatabaseId);
	bool		all_stats = has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS);
	int			n;
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	n = outbox_shmem_status_rows(rows, MAX_STATUS_ROWS);
	for (i = 0; i < n; i++)
	{
		OutboxStatusView *row = &rows[i];
		Datum		values[13];
		bool		nulls[13] = {false};
		bool		error_shown = all_stats ||
			(current_db != NULL && strcmp(row->dbname, current_db) == 0);

		values[0] = CStringGetTextDatum(row->dbname);
		values[1] = CStringGetTextDatum(row->destination);
		values[2] = Int32GetDatum((int32) row->pid);
		nulls[2] = row->pid == 0;
		values[3] = CStringGetTextDatum(state_names[row->state]);
		values[4] = CStringGetTextDatum(row->publisher);
		nulls[4] = row->publisher[0] == '\0';
		values[5] = timestamp_or_null(row->started_at, &nulls[5]);
		values[6] = timestamp_or_null(row->last_batch_at, &nulls[6]);
		values[7] = Int64GetDatum((int64) row->published);
		values[8] = Int64GetDatum((int64) row->attempts_failed);
		values[9] = Int64GetDatum((int64) row->batches);
		values[10] = CStringGetTextDatum(row->last_error);
		nulls[10] = row->last_error[0] == '\0' || !error_shown;
		values[11] = timestamp_or_null(row->last_error_at, &nulls[11]);
		values[12] = Int64GetDatum(Max(row->backlog, 0));
		nulls[12] = !row->backlog_known;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * The id of a destination by name, inside a store call; -1 for the default
 * destination ("default"); an error when there is none by that name.
 */
static int32
lookup_destination(const char *name)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	bool		isnull;
	int			ret;

	if (strcmp(name, OUTBOX_DEFAULT_DESTINATION) == 0)
		return -1;
	values[0] = CStringGetTextDatum(name);
	ret = SPI_execute_with_args("SELECT d.id FROM outbox.destination d WHERE d.name = $1",
								1, types, values, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read outbox destinations: %s", SPI_result_code_string(ret));
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("outbox destination \"%s\" does not exist", name)));
	return DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * Run a requeueing statement (replay, retry_failed) inside a store call,
 * and act on its row: tell the backlog counter how many messages became
 * pending, wake the main worker when some are its own, and the workers of
 * the destinations that got pending deliveries, at commit.  Returns the
 * statement's first column (how many were queued).
 */
static int64
run_requeue(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls,
			bool default_destination)
{
	int			ret = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);
	HeapTuple	tuple;
	TupleDesc	tupdesc;
	bool		isnull;
	int64		queued;
	int64		pending;
	ArrayType  *destinations;
	Datum	   *elems;
	int			ndestinations;

	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not requeue outbox messages: %s", SPI_result_code_string(ret));
	tuple = SPI_tuptable->vals[0];
	tupdesc = SPI_tuptable->tupdesc;
	queued = DatumGetInt64(SPI_getbinval(tuple, tupdesc, 1, &isnull));
	pending = DatumGetInt64(SPI_getbinval(tuple, tupdesc, 2, &isnull));
	destinations = DatumGetArrayTypeP(SPI_getbinval(tuple, tupdesc, 3, &isnull));
	deconstruct_array(destinations, INT4OID, sizeof(int32), true, TYPALIGN_INT,
					  &elems, NULL, &ndestinations);

	outbox_backlog_changes_at_commit(pending);
	if (default_destination && queued > 0)
		outbox_wake_worker_at_commit();
	if (ndestinations > 0)
	{
		int32	   *ids = palloc(sizeof(int32) * ndestinations);
		int			i;

		for (i = 0; i < ndestinations; i++)
			ids[i] = DatumGetInt32(elems[i]);
		outbox_requeued_deliveries_at_commit(ids, ndestinations);
	}
	return queued;
}

/*
 * Replay the processed messages that filter (REPLAY_WINDOW_FILTER or
 * REPLAY_IDS_FILTER) chooses among values, to where they went (destination
 * NULL), to the default destination, or to the destination named.
 */
static int64
replay(const char *filter, Datum *values, char *nulls, const char *destination)
{
	Oid			types[REPLAY_NARGS] = {TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID,
	UUIDARRAYOID, TIMESTAMPTZOID, INT4OID};
	OutboxStoreCall call;
	int32		destination_id = 0;
	int64		queued;
	const char *sql;

	outbox_require_shared_state();
	outbox_store_connect_as_owner(&call);
	if (destination != NULL)
		destination_id = lookup_destination(destination);
	values[4] = TimestampTzGetDatum(GetCurrentTimestamp());
	nulls[4] = ' ';
	values[5] = Int32GetDatum(destination_id);
	nulls[5] = destination_id > 0 ? ' ' : 'n';
	if (destination == NULL)
		sql = psprintf(REPLAY_AS_SAVED_SQL, filter);
	else if (destination_id < 0)
		sql = psprintf(REPLAY_DEFAULT_SQL, filter);
	else
		sql = psprintf(REPLAY_TO_SQL, filter);
	queued = run_requeue(sql, REPLAY_NARGS, types, values, nulls,
						 destination == NULL || destination_id < 0);
	outbox_store_finish_as_owner(&call);
	return queued;
}

/*
 * outbox.replay(since, until, topic_pattern DEFAULT NULL, destination
 * DEFAULT NULL): publish again the processed messages saved (created_at)
 * at or after since and before until, whose topic matches the pattern,
 * with their ids, in id order.  Returns how many were queued.
 */
Datum
outbox_replay(PG_FUNCTION_ARGS)
{
	Datum		values[REPLAY_NARGS] = {0};
	char		nulls[REPLAY_NARGS] = {' ', ' ', 'n', 'n', ' ', 'n'};
	char	   *destination = NULL;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("replay needs since and until"),
				 errhint("Pass '-infinity' or 'infinity' for an open end.")));
	if (PG_GETARG_TIMESTAMPTZ(0) > PG_GETARG_TIMESTAMPTZ(1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("replay's since must not be later than its until")));
	values[0] = PG_GETARG_DATUM(0);
	values[1] = PG_GETARG_DATUM(1);
	if (!PG_ARGISNULL(2))
	{
		char	   *pattern = text_to_cstring(PG_GETARG_TEXT_PP(2));

		outbox_check_pattern(pattern);
		values[2] = CStringGetTextDatum(pattern);
		nulls[2] = ' ';
	}
	if (!PG_ARGISNULL(3))
		destination = text_to_cstring(PG_GETARG_TEXT_PP(3));
	PG_RETURN_INT64(replay(REPLAY_WINDOW_FILTER, values, nulls, destination));
}

/*
 * outbox.replay(ids uuid[]): publish again these messages, those of them
 * that are processed, to where they went.  Returns how many were queued.
 */
Datum
outbox_replay_ids(PG_FUNCTION_ARGS)
{
	Datum		values[REPLAY_NARGS] = {0};
	char		nulls[REPLAY_NARGS] = {'n', 'n', 'n', ' ', ' ', 'n'};
	ArrayType  *ids;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("message ids must not be null")));
	ids = PG_GETARG_ARRAYTYPE_P(0);
	if (array_contains_nulls(ids))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("message ids must not be null")));
	values[3] = PointerGetDatum(ids);
	PG_RETURN_INT64(replay(REPLAY_IDS_FILTER, values, nulls, NULL));
}

/*
 * outbox.retry_failed(ids, destination, topic_pattern, failed_after
 * DEFAULT NULL, failed_before DEFAULT NULL, error_like DEFAULT NULL):
 * requeue the failed messages and deliveries that match every filter given
 * (NULL: any).  destination NULL means every destination and the default
 * one, "default" the default destination alone.  Returns how many were
 * requeued.
 */
Datum
outbox_retry_failed_where(PG_FUNCTION_ARGS)
{
	Oid			types[9] = {TEXTOID, BOOLOID, BOOLOID, INT4OID, TIMESTAMPTZOID,
	TIMESTAMPTZOID, TEXTOID, TIMESTAMPTZOID, UUIDARRAYOID};
	Datum		values[9] = {0};
	char		nulls[9] = {'n', ' ', ' ', 'n', 'n', 'n', 'n', ' ', 'n'};
	OutboxStoreCall call;
	int32		destination_id = 0;
	int64		count;
	int			arg;

	outbox_require_shared_state();
	if (!PG_ARGISNULL(0))
	{
		ArrayType  *ids = PG_GETARG_ARRAYTYPE_P(0);

		if (array_contains_nulls(ids))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("message ids must not be null")));
		values[8] = PointerGetDatum(ids);
		nulls[8] = ' ';
	}
	if (!PG_ARGISNULL(2))
	{
		char	   *pattern = text_to_cstring(PG_GETARG_TEXT_PP(2));

		outbox_check_pattern(pattern);
		values[0] = CStringGetTextDatum(pattern);
		nulls[0] = ' ';
	}
	/* failed_after, failed_before, error_like: $5, $6, $7 */
	for (arg = 3; arg <= 5; arg++)
	{
		if (!PG_ARGISNULL(arg))
		{
			values[arg + 1] = PG_GETARG_DATUM(arg);
			nulls[arg + 1] = ' ';
		}
	}
	values[7] = TimestampTzGetDatum(GetCurrentTimestamp());

	outbox_store_connect_as_owner(&call);
	if (!PG_ARGISNULL(1))
		destination_id = lookup_destination(text_to_cstring(PG_GETARG_TEXT_PP(1)));
	/* the default destination's messages: unless one destination is named */
	values[1] = BoolGetDatum(destination_id <= 0);
	/* deliveries: unless the default destination is named */
	values[2] = BoolGetDatum(destination_id >= 0);
	if (destination_id > 0)
	{
		values[3] = Int32GetDatum(destination_id);
		nulls[3] = ' ';
	}
	count = run_requeue(RETRY_WHERE_SQL, 9, types, values, nulls, destination_id <= 0);
	outbox_store_finish_as_owner(&call);
	if (count > PG_INT32_MAX)
		count = PG_INT32_MAX;
	PG_RETURN_INT32((int32) count);
}
