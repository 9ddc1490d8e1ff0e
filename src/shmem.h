/*-------------------------------------------------------------------------
 *
 * shmem.h
 *		The extension's shared memory, and the only way to it: the UUIDv7
 *		clock, the launcher, and one slot per relayed database (its
 *		worker, the batch that worker has in flight, start requests,
 *		pauses, the worker's status and the database's backlog counter).
 *		See shmem.c.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_SHMEM_H
#define OUTBOX_SHMEM_H

#include "datatype/timestamp.h"
#include "utils/uuid.h"

/* What the launcher reads of a slot. */
typedef struct OutboxSlotView
{
	char		dbname[NAMEDATALEN];
	pid_t		pid;			/* its worker, 0 when none runs */
	TimestampTz paused_until;	/* no worker before then (DROP DATABASE) */
} OutboxSlotView;

/* What the launcher reads of a destination slot. */
typedef struct OutboxDestinationView
{
	bool		in_use;			/* wanted by its database's main worker */
	pid_t		pid;			/* its worker, 0 when none runs */
	int32		destination_id;
	char		name[NAMEDATALEN];
	char		dbname[NAMEDATALEN];
	TimestampTz paused_until;	/* its database's DROP DATABASE pause */
} OutboxDestinationView;

/* What a worker is doing, as outbox.worker_status() shows it. */
typedef enum OutboxWorkerState
{
	OUTBOX_WORKER_IDLE,			/* nothing due: waiting for a commit or a retry */
	OUTBOX_WORKER_PUBLISHING,	/* a batch is in progress */
	OUTBOX_WORKER_BACKOFF,		/* pausing after an error of its own */
	OUTBOX_WORKER_PAUSED,		/* outbox.enabled is off */
	OUTBOX_WORKER_STOPPED,		/* no worker runs */
	OUTBOX_WORKER_FAILING		/* its last attempts all failed */
} OutboxWorkerState;

/* Longest last_error kept in a status, in bytes. */
#define OUTBOX_STATUS_ERROR_LEN 512

/* A copy of one worker's status (outbox.worker_status()). */
typedef struct OutboxStatusView
{
	char		dbname[NAMEDATALEN];
	char		destination[NAMEDATALEN];	/* "default" for the main worker */
	pid_t		pid;			/* 0 when no worker runs */
	OutboxWorkerState state;
	char		publisher[NAMEDATALEN];
	TimestampTz started_at;		/* 0 when never */
	TimestampTz last_batch_at;
	uint64		published;
	uint64		attempts_failed;
	uint64		batches;
	char		last_error[OUTBOX_STATUS_ERROR_LEN];
	TimestampTz last_error_at;
	bool		backlog_known;	/* a main worker's row: its database's counter */
	int64		backlog;
} OutboxStatusView;

/* Module start (outbox.c): from shmem_request_hook and shmem_startup_hook. */
extern void outbox_shmem_request(void);
extern void outbox_shmem_startup(void);
extern void outbox_require_shared_state(void);

/* The counter part of a UUIDv7 id: 12 bits of rand_a and 30 of rand_b. */
#define OUTBOX_ID_COUNTER_BITS 42

/*
 * No id is below this millisecond (2026-01-01 00:00 UTC, before the first
 * release of outbox), unless the server's clock was earlier when it started.
 */
#define OUTBOX_ID_FLOOR_MS UINT64CONST(1767225600000)

/* The UUIDv7 clock (save.c). */
extern void outbox_shmem_next_id_clock(uint64 now_ms, uint64 fresh_counter,
									   uint64 *ms, uint64 *counter);

/* Ids (save.c), the id horizon (delivery.c), and the clock (destination.c). */
extern void outbox_uuid_from_clock(uint64 ms, uint64 counter, uint32 tail, pg_uuid_t *id);
extern void outbox_shmem_id_floor(pg_uuid_t *floor);
extern void outbox_shmem_id_horizon(pg_uuid_t *upto);
extern uint64 outbox_shmem_id_clock_ms(void);
extern uint64 outbox_shmem_transaction_first_id_ms(void);

/* Waking workers at commit, and routing (save.c, store.c, route.c, destination.c). */
extern void outbox_wake_worker_at_commit(void);
extern void outbox_wake_destinations_at_commit(const int32 *destination_ids, int n);
extern void outbox_destinations_changed_at_commit(bool subscriptions);
extern uint64 outbox_shmem_routing_version(void);

/* The launcher (launcher.c). */
extern void outbox_shmem_attach_launcher(void);
extern int	outbox_shmem_slot_count(void);
extern void outbox_shmem_view_slot(int slot, OutboxSlotView *view);
extern bool outbox_shmem_take_start_request(int slot);
extern bool outbox_shmem_take_exit_for_missing_extension(int slot);

/* Destination workers (launcher.c, worker.c). */
extern int	outbox_shmem_sync_destinations(const int32 *ids, char *const *names,
										   const uint32 *config_hashes, int n);
extern void outbox_shmem_view_destination(int slot, OutboxDestinationView *view);
extern void outbox_shmem_attach_destination_worker(int slot, char *dbname,
												   int32 *destination_id, char *name);
extern bool outbox_shmem_destination_wanted(uint32 *config_version);
extern uint32 outbox_shmem_destinations_version(void);

/* A relay worker (worker.c). */
extern void outbox_shmem_attach_worker(int slot, char *dbname);
extern void outbox_shmem_worker_connected(void);
extern bool outbox_shmem_note_extension_missing(bool missing);
extern void outbox_shmem_set_inflight(const pg_uuid_t *first, const pg_uuid_t *last);
extern void outbox_shmem_clear_inflight(void);

/* A worker's own status (worker.c): its slot's, whichever kind it is. */
extern void outbox_shmem_status_set_publisher(const char *publisher);
extern void outbox_shmem_status_set_state(OutboxWorkerState state);
extern void outbox_shmem_status_batch(uint64 published, uint64 attempts_failed,
									  const char *error);
extern void outbox_shmem_status_error(const char *error);

/* Every worker's status (outbox.worker_status()). */
extern int	outbox_shmem_status_rows(OutboxStatusView *rows, int max_rows);

/*
 * The backlog counter of this backend's database: the save path checks it
 * against outbox.max_backlog (save.c), commits and workers move it, and
 * the main worker corrects it from the table (worker.c, operations.c).
 */
extern void outbox_shmem_admit_message(void);
extern void outbox_backlog_changes_at_commit(int64 delta);
extern void outbox_shmem_backlog_finished(int64 messages);
extern int64 outbox_shmem_backlog_read(void);
extern void outbox_shmem_backlog_correct(int64 delta);
extern void outbox_shmem_backlog_forget(void);

/* Requeued deliveries (operations.c, worker.c). */
extern void outbox_requeued_deliveries_at_commit(const int32 *destination_ids, int n);
extern uint32 outbox_shmem_requeue_version(void);

/* External relays (store.c). */
extern bool outbox_shmem_read_inflight(Oid dboid, pg_uuid_t *first, pg_uuid_t *last);

/* DROP DATABASE (outbox.c). */
extern int	outbox_shmem_stop_database_workers(const char *dbname, TimestampTz until);
extern bool outbox_shmem_database_workers_running(const char *dbname);
extern void outbox_shmem_resume_worker(const char *dbname);

#endif							/* OUTBOX_SHMEM_H */
