/*-------------------------------------------------------------------------
 *
 * store_api.c
 *		The SQL store API, for relays outside the database:
 *		outbox.fetch_pending(), mark_processed(), mark_failed() and
 *		retry_failed(), for the default destination (store.c) or, given a
 *		destination, for an external destination (delivery.c).
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
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/lsyscache.h"
#include "utils/tuplestore.h"

#include "destination.h"
#include "outbox.h"
#include "shmem.h"
#include "store.h"

PG_FUNCTION_INFO_V1(outbox_fetch_pending);
PG_FUNCTION_INFO_V1(outbox_mark_processed);
PG_FUNCTION_INFO_V1(outbox_mark_processed_for);
PG_FUNCTION_INFO_V1(outbox_mark_failed);
PG_FUNCTION_INFO_V1(outbox_retry_failed);

/* The optional destination argument arg, or NULL (the default destination). */
static char *
destination_argument(FunctionCallInfo fcinfo, int arg)
{
	if (PG_NARGS() <= arg || PG_ARGISNULL(arg))
		return NULL;
	return text_to_cstring(PG_GETARG_TEXT_PP(arg));
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
 * outbox.fetch_pending(max_messages, destination DEFAULT NULL): claim up to
 * max_messages due messages for an external relay and return them in id
 * order.  Messages of one key come in order; publish them in order.  The
 * default destination's become processing; an external destination's are
 * held as its deliveries in processing.
 */
Datum
outbox_fetch_pending(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			max_messages;
	char	   *destination = destination_argument(fcinfo, 1);
	OutboxBatch local;
	OutboxBatch *batch = &local;
	int			i;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("max_messages must not be null")));
	max_messages = PG_GETARG_INT32(0);
	if (max_messages < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_messages must not be negative")));

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	if (max_messages == 0)
		PG_RETURN_NULL();

	if (destination != NULL)
		batch = outbox_delivery_fetch(destination, max_messages);
	else
		outbox_store_claim(max_messages, 0, outbox_ordering == OUTBOX_ORDERING_KEY,
						   true, &local);
	for (i = 0; i < batch->nmessages; i++)
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
			src = SPI_fnumber(batch->tupdesc, NameStr(attr->attname));
			if (src > 0)
				values[att] = heap_getattr(batch->tuples[i], src, batch->tupdesc, &nulls[att]);
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
	int			count = outbox_store_mark_processed(ids, nids);

	/* they leave the backlog (outbox.max_backlog) when this commits */
	outbox_backlog_changes_at_commit(-count);
	PG_RETURN_INT32(count);
}

/*
 * outbox.mark_processed_for(ids, destination): an external destination's
 * deliveries went through; returns how many were marked.
 */
Datum
outbox_mark_processed_for(PG_FUNCTION_ARGS)
{
	int			nids;
	pg_uuid_t  *ids;
	char	   *destination = destination_argument(fcinfo, 1);

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("message ids must not be null")));
	ids = uuid_array_argument(PG_GETARG_ARRAYTYPE_P(0), &nids);
	if (destination == NULL)
	{
		int			count = outbox_store_mark_processed(ids, nids);

		outbox_backlog_changes_at_commit(-count);
		PG_RETURN_INT32(count);
	}
	PG_RETURN_INT32(outbox_delivery_mark_processed(destination, ids, nids));
}

/*
 * outbox.mark_failed(id, error, destination DEFAULT NULL): record a failed
 * attempt and return the new status (of the message, or of its delivery to
 * the destination); NULL when there is nothing unfinished by that id.
 */
Datum
outbox_mark_failed(PG_FUNCTION_ARGS)
{
	const char *status;
	char	   *destination = destination_argument(fcinfo, 2);
	char	   *error;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("message id must not be null")));
	error = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (destination != NULL)
		status = outbox_delivery_mark_failed(destination, PG_GETARG_UUID_P(0), error);
	else
	{
		status = outbox_store_mark_failed(PG_GETARG_UUID_P(0), error, false, 0);
		if (status != NULL && strcmp(status, "failed") == 0)
			outbox_backlog_changes_at_commit(-1);
	}
	if (status == NULL)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(DirectFunctionCall2(enum_in, CStringGetDatum(status),
										ObjectIdGetDatum(get_fn_expr_rettype(fcinfo->flinfo))));
}

/*
 * outbox.retry_failed(ids DEFAULT NULL, destination DEFAULT NULL): requeue
 * failed messages (and their failed deliveries), or only the failed
 * deliveries of one destination.
 */
Datum
outbox_retry_failed(PG_FUNCTION_ARGS)
{
	int			count;
	char	   *destination = destination_argument(fcinfo, 1);
	ArrayType  *ids = PG_ARGISNULL(0) ? NULL : PG_GETARG_ARRAYTYPE_P(0);

	if (ids != NULL && array_contains_nulls(ids))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("message ids must not be null")));
	if (destination != NULL)
		count = outbox_delivery_retry_failed(destination, ids);
	else
		count = outbox_store_retry_failed(ids);
	if (count > 0)
	{
		/* requeued deliveries too: every destination worker looks again */
		outbox_wake_worker_at_commit();
		outbox_requeued_deliveries_at_commit(NULL, 0);
		outbox_backlog_changes_at_commit(count);
	}
	PG_RETURN_INT32(count);
}
