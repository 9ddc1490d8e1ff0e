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
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/snapshot.h"
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

	/* A destination's batch (delivery.c). */
	bool	   *retried;		/* per message: a retry of a delivery row */
	int			ndiverted;		/* read from the log, but behind a retry */
	pg_uuid_t  *diverted_ids;
	char	  **diverted_keys;
	bool		advance;		/* the position moves to "position" */
	pg_uuid_t	position;
} OutboxBatch;

/*
 * One statement of the store: prepared the first time it runs, kept for the
 * life of the process.  Run it with outbox_store_execute() between
 * outbox_store_connect() and outbox_store_finish().
 */
typedef struct OutboxStatement
{
	const char *sql;
	int			nargs;
	Oid			argtypes[10];
	bool		read_only;
	int			expected;		/* the SPI_OK_* result that means success */
	const char *action;			/* what it does, for its error message */
	SPIPlanPtr	plan;
} OutboxStatement;

/* A store call as the outbox's owner: what it must restore. */
typedef struct OutboxStoreCall
{
	int			guc_level;
	Oid			saved_userid;
	int			saved_sec_context;
} OutboxStoreCall;

extern bool outbox_have_destinations(void);
extern int	outbox_store_connect(void);
extern void outbox_store_connect_as_owner(OutboxStoreCall *call);
extern void outbox_store_finish_as_owner(OutboxStoreCall *call);
extern void outbox_store_finish(int guc_level);
extern uint64 outbox_store_execute(OutboxStatement *stmt, Datum *args, const char *nulls,
								   Snapshot snapshot, long max_rows);
extern ArrayType *outbox_uuid_array(const pg_uuid_t *ids, int nids);
extern uint32 outbox_string_key_hash(const void *key, Size keysize);
extern int	outbox_string_key_match(const void *key1, const void *key2, Size keysize);
extern void outbox_store_collect(SPITupleTable *tuptable, uint64 nrows,
								 MemoryContext context, OutboxBatch *batch);

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
