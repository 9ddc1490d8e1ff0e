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

/* Module start (outbox.c): from shmem_request_hook and shmem_startup_hook. */
extern void outbox_shmem_request(void);
extern void outbox_shmem_startup(void);
extern void outbox_require_shared_state(void);

/* The counter part of a UUIDv7 id: 12 bits of rand_a and 30 of rand_b. */
#define OUTBOX_ID_COUNTER_BITS 42

/* The UUIDv7 clock (save.c). */
extern void outbox_shmem_next_id_clock(uint64 now_ms, uint64 fresh_counter,
									   uint64 *ms, uint64 *counter);

/* Ids (save.c), the id horizon (delivery.c), and the clock (destination.c). */
extern void outbox_uuid_from_clock(uint64 ms, uint64 counter, uint32 tail, pg_uuid_t *id);
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

/* External relays (store.c). */
extern bool outbox_shmem_read_inflight(Oid dboid, pg_uuid_t *first, pg_uuid_t *last);

/* DROP DATABASE (outbox.c). */
extern pid_t outbox_shmem_pause_worker(const char *dbname, TimestampTz until);
extern bool outbox_shmem_worker_running(pid_t pid);
extern void outbox_shmem_resume_worker(const char *dbname);

#endif							/* OUTBOX_SHMEM_H */
