/*-------------------------------------------------------------------------
 *
 * shmem.h
 *		The extension's shared memory, and the only way to it: the UUIDv7
 *		clock, the launcher, and one slot per relayed database (its
 *		worker, the batch that worker has in flight, start requests and
 *		pauses).  See shmem.c.
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

/* Module start (outbox.c): from shmem_request_hook and shmem_startup_hook. */
extern void outbox_shmem_request(void);
extern void outbox_shmem_startup(void);
extern void outbox_require_shared_state(void);

/* The counter part of a UUIDv7 id: 12 bits of rand_a and 30 of rand_b. */
#define OUTBOX_ID_COUNTER_BITS 42

/* The UUIDv7 clock (save.c). */
extern void outbox_shmem_next_id_clock(uint64 now_ms, uint64 fresh_counter,
									   uint64 *ms, uint64 *counter);

/* Waking workers (save.c, store.c). */
extern void outbox_wake_worker_at_commit(void);

/* The launcher (launcher.c). */
extern void outbox_shmem_attach_launcher(void);
extern int	outbox_shmem_slot_count(void);
extern void outbox_shmem_view_slot(int slot, OutboxSlotView *view);
extern bool outbox_shmem_take_start_request(int slot);
extern bool outbox_shmem_take_exit_for_missing_extension(int slot);

/* A relay worker (worker.c). */
extern void outbox_shmem_attach_worker(int slot, char *dbname);
extern void outbox_shmem_worker_connected(void);
extern bool outbox_shmem_note_extension_missing(bool missing);
extern void outbox_shmem_set_inflight(const pg_uuid_t *first, const pg_uuid_t *last);
extern void outbox_shmem_clear_inflight(void);

/* External relays (store.c). */
extern bool outbox_shmem_read_inflight(Oid dboid, pg_uuid_t *first, pg_uuid_t *last);

/* DROP DATABASE (outbox.c). */
extern pid_t outbox_shmem_pause_worker(const char *dbname, TimestampTz until);
extern bool outbox_shmem_worker_running(pid_t pid);
extern void outbox_shmem_resume_worker(const char *dbname);

#endif							/* OUTBOX_SHMEM_H */
