/*-------------------------------------------------------------------------
 *
 * outbox.h
 *		Declarations shared by the files of the outbox extension.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_H
#define OUTBOX_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "storage/latch.h"
#include "storage/spin.h"
#include "access/htup.h"
#include "access/tupdesc.h"
#include "utils/array.h"
#include "utils/uuid.h"

#include "outbox_publisher.h"

/* Most databases one server relays for (entries of outbox.databases). */
#define OUTBOX_MAX_DATABASES 32

/* Longest topic, in bytes. */
#define OUTBOX_MAX_TOPIC_LEN 255

/* Values of outbox.ordering. */
typedef enum OutboxOrdering
{
	OUTBOX_ORDERING_KEY,
	OUTBOX_ORDERING_NONE
} OutboxOrdering;

/* Settings (outbox.c). */
extern char *outbox_databases;
extern char *outbox_role;
extern char *outbox_publisher_name;
extern int	outbox_poll_interval;
extern int	outbox_batch_size;
extern int	outbox_batch_max_bytes;
extern int	outbox_max_retries;
extern int	outbox_retry_backoff;
extern int	outbox_retry_backoff_max;
extern int	outbox_processing_timeout;
extern int	outbox_retention;
extern int	outbox_ordering;
extern char *outbox_notify_channel;
extern bool outbox_enabled;

/*
 * One relayed database: filled by the launcher from outbox.databases, and by
 * the worker once it runs.  Protected by OutboxShared->mutex.
 */
typedef struct OutboxWorkerSlot
{
	char		dbname[NAMEDATALEN];
	Oid			dboid;			/* set by the worker once connected */
	pid_t		pid;			/* worker's pid, 0 when none runs */
	Latch	   *latch;			/* worker's latch, NULL when none runs */
	bool		start_requested;	/* a backend asked for a worker now */
	bool		extension_missing;	/* reported once, until installed */
	TimestampTz paused_until;	/* launcher waits until then (DROP DATABASE) */

	/*
	 * The batch the worker is publishing, when its publisher is not
	 * transactional: its messages stay pending in the table, unlocked, and
	 * only this range (of ids in database dboid) says they are taken.
	 */
	bool		inflight;
	pg_uuid_t	inflight_first;
	pg_uuid_t	inflight_last;
} OutboxWorkerSlot;

/* The extension's shared memory. */
typedef struct OutboxSharedState
{
	slock_t		mutex;			/* protects everything below */
	uint64		id_last_ms;		/* UUIDv7 generator state */
	uint64		id_last_counter;
	pid_t		launcher_pid;
	Latch	   *launcher_latch;
	int			nslots;
	OutboxWorkerSlot slots[OUTBOX_MAX_DATABASES];
} OutboxSharedState;

extern OutboxSharedState *OutboxShared;

/* outbox.c */
extern void outbox_require_shared_state(void);
extern void outbox_wake_launcher(void);

/* save.c */
extern void outbox_generate_id(pg_uuid_t *id);
extern void outbox_wake_worker_at_commit(void);

/* store.c: the queue, shared by the SQL API and the relay worker */
typedef struct OutboxBatch
{
	int			ncandidates;	/* due messages found, before the key guard */
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

/* publisher.c */
extern const OutboxPublisher *outbox_find_publisher(const char *name);
extern char *outbox_publisher_names(void);

/* publishers/notify.c, publishers/envelope.c, publishers/http.c, publishers/function.c */
extern void outbox_register_notify_publisher(void);
extern void outbox_register_http_publisher(void);
extern void outbox_register_function_publisher(void);
extern char *outbox_message_envelope(const OutboxMessage *message);

/* worker.c, launcher.c */
extern PGDLLEXPORT void outbox_worker_main(Datum main_arg);
extern PGDLLEXPORT void outbox_launcher_main(Datum main_arg);
extern void outbox_register_launcher(void);

#endif							/* OUTBOX_H */
