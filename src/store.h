/*-------------------------------------------------------------------------
 *
 * store.h
 *		The store: the queue in outbox.messages, shared by the relay worker
 *		and the SQL store API (outbox.fetch_pending and friends).  See
 *		store.c.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_STORE_H
#define OUTBOX_STORE_H

#include "access/htup.h"
#include "access/tupdesc.h"
#include "datatype/timestamp.h"
#include "utils/array.h"
#include "utils/uuid.h"

#include "outbox_publisher.h"

/* A claimed batch, in the memory context current at the claim. */
typedef struct OutboxBatch
{
	bool		bytes_reached;	/* the byte limit ended it: more may be due */
	int			capacity;		/* room in the arrays */
	int			nmessages;
	OutboxMessage *messages;	/* in id order */
	HeapTuple  *tuples;			/* the same rows as stored */
	TupleDesc	tupdesc;
} OutboxBatch;

extern void outbox_store_claim(int max_messages, int64 max_bytes, bool ordered_by_key,
							   bool set_processing, OutboxBatch *batch);
extern int	outbox_store_mark_processed(const pg_uuid_t *ids, int nids);
extern const char *outbox_store_mark_failed(const pg_uuid_t *id, const char *error,
											bool permanent, TimestampTz retry_at);
extern int	outbox_store_recover_stuck(void);
extern int	outbox_store_purge_processed(int max_rows);
extern TimestampTz outbox_store_next_due(void);
extern int	outbox_store_retry_failed(ArrayType *ids);

#endif							/* OUTBOX_STORE_H */
