/*-------------------------------------------------------------------------
 *
 * destination.h
 *		Destinations: their management in SQL (destination.c) and their
 *		part of the store (delivery.c).
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_DESTINATION_H
#define OUTBOX_DESTINATION_H

#include "datatype/timestamp.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

#include "store.h"

/* The name of the destination the outbox.publisher settings describe. */
#define OUTBOX_DEFAULT_DESTINATION "default"

/* A destination as its worker reads it. */
typedef struct OutboxDestination
{
	int32		id;
	char	   *name;
	char	   *publisher;
	Jsonb	   *options;
	bool		paused;
	bool		disabled;
	TimestampTz failing_since;	/* 0 when the last attempt did not fail */
	char	   *last_error;
} OutboxDestination;

/* delivery.c: the store of one destination (in its worker). */
extern bool outbox_delivery_load(int32 destination_id, MemoryContext context,
								 OutboxDestination *destination);
extern OutboxBatch *outbox_delivery_claim(OutboxDestination *destination,
										  int max_messages, int64 max_bytes,
										  bool ordered_by_key);
extern void outbox_delivery_record(OutboxDestination *destination, OutboxBatch *batch,
								   OutboxPublishResult *results);
extern int	outbox_delivery_finalize(OutboxBatch *batch);
extern TimestampTz outbox_delivery_next_due(OutboxDestination *destination);

/* delivery.c: maintenance, in the database's main worker. */
extern int	outbox_delivery_list_workers(int32 **ids, char ***names, uint32 **hashes);
extern int	outbox_delivery_finalize_stragglers(int max_messages);
extern void outbox_delivery_purge(void);
extern int	outbox_delivery_recover_stuck(void);

/* delivery.c: the store API of external destinations. */
extern OutboxBatch *outbox_delivery_fetch(const char *destination, int max_messages);
extern int	outbox_delivery_mark_processed(const char *destination, const pg_uuid_t *ids,
										   int nids);
extern const char *outbox_delivery_mark_failed(const char *destination, const pg_uuid_t *id,
											   const char *error);
extern int	outbox_delivery_retry_failed(const char *destination, ArrayType *ids);
extern int	outbox_delivery_requeue_failed(ArrayType *ids, pg_uuid_t **message_ids);

#endif							/* OUTBOX_DESTINATION_H */
