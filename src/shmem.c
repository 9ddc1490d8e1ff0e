/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		The extension's shared memory.  No other file touches it: every
 *		process goes through the functions here.
 *
 * What lives here:
 *	- the UUIDv7 clock (last millisecond and counter), under a spinlock of
 *	  its own, since every saved message takes it;
 *	- the launcher's pid and latch;
 *	- one slot per database of outbox.databases, filled when shared memory
 *	  is created (the setting needs a restart, so the slots never change):
 *	  the worker attached to it (one at most: a second one is refused), the
 *	  id range of the batch that worker is publishing, a start request that
 *	  committing backends set without any lock, and the pause that DROP
 *	  DATABASE asks for.  The launcher fields and the slots are protected by
 *	  one LWLock; the slot's database name is written once, before any
 *	  other process runs, and read without it;
 *	- a pool of destination slots, one per destination that needs a worker
 *	  (any publisher but "external"), kept in sync with outbox.destination by
 *	  each database's main worker and tended by the launcher;
 *	- the id horizon: per backend, the millisecond of the first id its open
 *	  transaction took (set under the clock's spinlock, cleared when the
 *	  transaction ended), so that a destination knows below which id no
 *	  message can still commit;
 *	- the routing version, bumped by every commit that changed
 *	  subscriptions, for the backends' routing caches;
 *	- per worker (of a database or of a destination), what it is doing and
 *	  its totals since it started, for outbox.worker_status(): written by
 *	  the worker once per batch (never per message) under a spinlock of the
 *	  slot's own, so that neither savers nor the launcher wait for it;
 *	- per database, the backlog counter outbox.max_backlog is checked
 *	  against: committing transactions add what they saved, workers take
 *	  away what they finished, and the main worker corrects it from the
 *	  table every few seconds (an atomic, read without a lock);
 *	- the commit-time wake-up: a transaction that saved messages sets its
 *	  database's worker's latch (or the latches of the destinations it
 *	  routed them to) when it commits, or asks the launcher for a worker,
 *	  like pg_net's.  Each backend finds its database's slot once and keeps
 *	  its number.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "mb/pg_wchar.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "outbox.h"
#include "pg_compat.h"
#include "shmem.h"

/*
 * What a worker reports of itself.  Written by the worker, read by
 * outbox.worker_status(), both under mutex.  A new worker starts it afresh;
 * when the worker is gone it keeps what the last one reported.
 */
typedef struct OutboxWorkerStatus
{
	slock_t		mutex;
	OutboxWorkerState state;
	char		publisher[NAMEDATALEN];
	TimestampTz started_at;
	TimestampTz last_batch_at;
	uint64		published;
	uint64		attempts_failed;
	uint64		batches;
	char		last_error[OUTBOX_STATUS_ERROR_LEN];
	TimestampTz last_error_at;
} OutboxWorkerStatus;

/* One relayed database. */
typedef struct OutboxWorkerSlot
{
	/* Written when shared memory is created, read-only afterwards. */
	char		dbname[NAMEDATALEN];

	/* Protected by OutboxSharedState.lock. */
	pid_t		pid;			/* attached worker, 0 when none */
	Latch	   *latch;			/* its latch, NULL when none */
	Oid			dboid;			/* its database, once connected */
	bool		extension_missing_reported; /* logged once, until installed */
	bool		exited_for_missing_extension;	/* read by the launcher */
	TimestampTz paused_until;	/* no worker before then (DROP DATABASE) */

	/*
	 * The batch the worker is publishing, when its publisher is not
	 * transactional: its messages stay pending in the table, unlocked, and
	 * only this range (of ids in database dboid) says they are taken.
	 */
	bool		inflight;
	pg_uuid_t	inflight_first;
	pg_uuid_t	inflight_last;

	/* Set by committing backends, taken by the launcher; no lock. */
	pg_atomic_uint32 start_requested;

	/* Bumped by commits that changed the database's destinations. */
	pg_atomic_uint32 destinations_version;

	/* Its main worker's status. */
	OutboxWorkerStatus status;

	/*
	 * Unfinished (pending or processing) messages of the database, an int64
	 * kept in a uint64: approximate (see outbox_shmem_admit_message), and
	 * only checked once backlog_known says the main worker counted it.
	 */
	pg_atomic_uint64 backlog;
	pg_atomic_uint32 backlog_known;
} OutboxWorkerSlot;

/* One destination's worker. */
typedef struct OutboxDestinationSlot
{
	/* Protected by OutboxSharedState.lock. */
	bool		in_use;			/* wanted by its database's main worker */
	int			db_slot;		/* its database's slot */
	int32		destination_id;
	char		name[NAMEDATALEN];
	pid_t		pid;			/* attached worker, 0 when none */
	Latch	   *latch;

	/* Bumped when the destination's row changed; no lock. */
	pg_atomic_uint32 options_version;

	/* Bumped by commits that requeued deliveries of it; no lock. */
	pg_atomic_uint32 requeue_version;

	/* Its worker's status. */
	OutboxWorkerStatus status;
} OutboxDestinationSlot;

typedef struct OutboxSharedState
{
	LWLock	   *lock;			/* the launcher fields and the slots */
	pid_t		launcher_pid;
	Latch	   *launcher_latch;
	int			nslots;			/* fixed when shared memory is created */
	OutboxWorkerSlot slots[OUTBOX_MAX_DATABASES];
	OutboxDestinationSlot destinations[OUTBOX_MAX_DESTINATION_WORKERS];

	/* Bumped by every commit that changed subscriptions. */
	pg_atomic_uint64 routing_version;

	/* The UUIDv7 clock. */
	slock_t		id_mutex;
	uint64		id_last_ms;
	uint64		id_last_counter;
	uint64		id_start_ms;	/* the clock when shared memory was created */

	/*
	 * The id horizon: per PGPROC number, the millisecond of the first id
	 * its open transaction took, 0 when none.  Written by its backend under
	 * id_mutex (set) or alone (cleared), read by anyone.
	 */
	int			nhorizon;
	pg_atomic_uint64 horizon[FLEXIBLE_ARRAY_MEMBER];
} OutboxSharedState;

static OutboxSharedState *OutboxShared = NULL;

/* This backend's database's slot: not looked up yet, or none. */
#define SLOT_UNKNOWN	(-2)
#define SLOT_NONE		(-1)
static int	my_database_slot = SLOT_UNKNOWN;

/* The slot this process is the worker of, or -1; likewise a destination's. */
static int	my_worker_slot = -1;
static int	my_destination_slot = -1;

/*
 * What the current transaction's commit must do.  The main worker is woken
 * when more messages were saved (or requeued) than routed to destinations.
 */
static bool wake_at_commit = false;
static int64 saved_messages = 0;
static int64 routed_messages = 0;
static bool routing_changed = false;
static int64 backlog_added = 0;		/* messages saved or requeued, less finished */
static bool requeued_deliveries = false;
static bool destinations_changed = false;
#define MAX_WOKEN_DESTINATIONS 16
static int32 woken_destinations[MAX_WOKEN_DESTINATIONS];
static int	nwoken_destinations = 0;
static bool wake_all_destinations = false;
static bool horizon_set = false;
static bool xact_callback_registered = false;

/*
 * backlog_added as it stood when an open subtransaction first changed it,
 * one mark per nesting level that did (innermost last): the messages of a
 * subtransaction that rolls back were rolled back with it, and stop
 * counting.
 */
typedef struct BacklogMark
{
	int			level;
	int64		before;
} BacklogMark;
static BacklogMark *backlog_marks = NULL;
static int	nbacklog_marks = 0;
static int	max_backlog_marks = 0;

static void register_xact_callback(void);
static void note_woken_destinations(const int32 *destination_ids, int n);

/* Start a status afresh: a new worker, or a slot given to another destination. */
static void
status_reset(OutboxWorkerStatus *status, OutboxWorkerState state, TimestampTz started_at)
{
	SpinLockAcquire(&status->mutex);
	status->state = state;
	status->publisher[0] = '\0';
	status->started_at = started_at;
	status->last_batch_at = 0;
	status->published = 0;
	status->attempts_failed = 0;
	status->batches = 0;
	status->last_error[0] = '\0';
	status->last_error_at = 0;
	SpinLockRelease(&status->mutex);
}

/* The size of the shared state, with a horizon entry per PGPROC. */
static Size
shared_state_size(void)
{
	return add_size(offsetof(OutboxSharedState, horizon),
					mul_size(sizeof(pg_atomic_uint64), MaxBackends));
}

/* Ask for the shared memory and the LWLock (from shmem_request_hook). */
void
outbox_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(shared_state_size()));
	RequestNamedLWLockTranche("outbox", 1);
}

/*
 * Fill the slots from outbox.databases, when shared memory is created.  The
 * setting's check hook accepted the list already.
 */
static void
fill_slots(void)
{
	char	   *rawstring = pstrdup(outbox_databases);
	List	   *names = NIL;
	ListCell   *lc;
	int			n = 0;

	if (!SplitIdentifierString(rawstring, ',', &names))
		elog(FATAL, "invalid outbox.databases");
	foreach(lc, names)
	{
		OutboxWorkerSlot *slot = &OutboxShared->slots[n++];

		strlcpy(slot->dbname, (char *) lfirst(lc), NAMEDATALEN);
		pg_atomic_init_u32(&slot->start_requested, 0);
		pg_atomic_init_u32(&slot->destinations_version, 0);
		SpinLockInit(&slot->status.mutex);
		slot->status.state = OUTBOX_WORKER_STOPPED;
		pg_atomic_init_u64(&slot->backlog, 0);
		pg_atomic_init_u32(&slot->backlog_known, 0);
	}
	OutboxShared->nslots = n;
	list_free(names);
	pfree(rawstring);
}

/* Create or attach to the shared state (from shmem_startup_hook). */
void
outbox_shmem_startup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	OutboxShared = ShmemInitStruct("outbox", shared_state_size(), &found);
	if (!found)
	{
		int			i;

		memset(OutboxShared, 0, shared_state_size());
		OutboxShared->lock = &(GetNamedLWLockTranche("outbox"))->lock;
		SpinLockInit(&OutboxShared->id_mutex);
		/* ids, and the horizon, start from now: never below it */
		OutboxShared->id_last_ms = (uint64) (GetCurrentTimestamp() / 1000) +
			(uint64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000;
		OutboxShared->id_last_counter = 0;
		OutboxShared->id_start_ms = OutboxShared->id_last_ms;
		fill_slots();
		for (i = 0; i < OUTBOX_MAX_DESTINATION_WORKERS; i++)
		{
			OutboxDestinationSlot *d = &OutboxShared->destinations[i];

			pg_atomic_init_u32(&d->options_version, 0);
			pg_atomic_init_u32(&d->requeue_version, 0);
			SpinLockInit(&d->status.mutex);
			d->status.state = OUTBOX_WORKER_STOPPED;
		}
		pg_atomic_init_u64(&OutboxShared->routing_version, 1);
		OutboxShared->nhorizon = MaxBackends;
		for (i = 0; i < MaxBackends; i++)
			pg_atomic_init_u64(&OutboxShared->horizon[i], 0);
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Raise an error when the library was not preloaded: without the shared
 * state there are neither increasing ids nor workers to wake.
 */
void
outbox_require_shared_state(void)
{
	if (OutboxShared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("outbox must be loaded via shared_preload_libraries"),
				 errhint("Add outbox to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/*
 * Advance the UUIDv7 clock: a later millisecond starts a fresh counter,
 * the same (or an earlier: the clock stepped back) one increments it, and
 * an exhausted counter borrows the next millisecond.  Returns the
 * millisecond and counter of the new id.  The first id of a transaction
 * also sets this backend's horizon entry, under the same spinlock, so that
 * a reader of the horizon who saw the clock also sees the entry.
 */
void
outbox_shmem_next_id_clock(uint64 now_ms, uint64 fresh_counter,
						   uint64 *ms, uint64 *counter)
{
	int			procno = outbox_my_procno();

	if (!horizon_set)
		register_xact_callback();
	SpinLockAcquire(&OutboxShared->id_mutex);
	if (now_ms > OutboxShared->id_last_ms)
	{
		OutboxShared->id_last_ms = now_ms;
		OutboxShared->id_last_counter = fresh_counter;
	}
	else if (++OutboxShared->id_last_counter >= (UINT64CONST(1) << OUTBOX_ID_COUNTER_BITS))
	{
		OutboxShared->id_last_ms++;
		OutboxShared->id_last_counter = 0;
	}
	*ms = OutboxShared->id_last_ms;
	*counter = OutboxShared->id_last_counter;
	if (!horizon_set && procno >= 0 && procno < OutboxShared->nhorizon)
		pg_atomic_write_u64(&OutboxShared->horizon[procno], *ms);
	SpinLockRelease(&OutboxShared->id_mutex);
	horizon_set = true;
}

/*
 * The millisecond of the first id the current transaction took from the
 * clock (its entry in the id horizon), or 0 when it took none (route.c).
 */
uint64
outbox_shmem_transaction_first_id_ms(void)
{
	int			procno = outbox_my_procno();

	if (!horizon_set || procno < 0 || procno >= OutboxShared->nhorizon)
		return 0;
	return pg_atomic_read_u64(&OutboxShared->horizon[procno]);
}

/* The millisecond of the newest id (or of the server's start). */
uint64
outbox_shmem_id_clock_ms(void)
{
	uint64		ms;

	outbox_require_shared_state();
	SpinLockAcquire(&OutboxShared->id_mutex);
	ms = OutboxShared->id_last_ms;
	SpinLockRelease(&OutboxShared->id_mutex);
	return ms;
}

/*
 * The id floor: no id below it was ever handed out, so none is accepted
 * (route.c).  Ids start from the server's clock, never below the day
 * before the first release of outbox; should the clock have been set
 * earlier when the server started, from then.  The floor holds across
 * restarts, and the ids of a restored dump are above it.
 */
void
outbox_shmem_id_floor(pg_uuid_t *floor)
{
	outbox_require_shared_state();
	outbox_uuid_from_clock(Min(OUTBOX_ID_FLOOR_MS, OutboxShared->id_start_ms), 0, 0, floor);
}

/*
 * Write the UUIDv7 id of clock position (ms, counter) with its last 32 bits
 * (random) as tail: ids compare as the clock advanced.
 */
void
outbox_uuid_from_clock(uint64 ms, uint64 counter, uint32 tail, pg_uuid_t *id)
{
	/* id is only written here */
	/* cppcheck-suppress ctuuninitvar */
	unsigned char *b = id->data;

	b[0] = (unsigned char) (ms >> 40);
	b[1] = (unsigned char) (ms >> 32);
	b[2] = (unsigned char) (ms >> 24);
	b[3] = (unsigned char) (ms >> 16);
	b[4] = (unsigned char) (ms >> 8);
	b[5] = (unsigned char) ms;
	b[6] = (unsigned char) (0x70 | ((counter >> 38) & 0x0F));	/* version 7 */
	b[7] = (unsigned char) (counter >> 30);
	b[8] = (unsigned char) (0x80 | ((counter >> 24) & 0x3F));	/* variant */
	b[9] = (unsigned char) (counter >> 16);
	b[10] = (unsigned char) (counter >> 8);
	b[11] = (unsigned char) counter;
	b[12] = (unsigned char) (tail >> 24);
	b[13] = (unsigned char) (tail >> 16);
	b[14] = (unsigned char) (tail >> 8);
	b[15] = (unsigned char) tail;
}

/*
 * The id horizon: the largest id such that every id up to it belongs to a
 * transaction that has ended (committed or rolled back), so a snapshot
 * taken after this call sees every committed message up to it.  With no
 * transaction open that took an id, that is the newest id; else the last
 * one before the millisecond of the oldest such transaction's first id.
 */
void
outbox_shmem_id_horizon(pg_uuid_t *upto)
{
	uint64		last_ms;
	uint64		last_counter;
	uint64		open_ms = PG_UINT64_MAX;
	int			i;

	SpinLockAcquire(&OutboxShared->id_mutex);
	last_ms = OutboxShared->id_last_ms;
	last_counter = OutboxShared->id_last_counter;
	SpinLockRelease(&OutboxShared->id_mutex);
	for (i = 0; i < OutboxShared->nhorizon; i++)
	{
		uint64		ms = pg_atomic_read_u64(&OutboxShared->horizon[i]);

		if (ms != 0 && ms < open_ms)
			open_ms = ms;
	}
	if (open_ms <= last_ms)
	{
		/* the last id of the millisecond before */
		outbox_uuid_from_clock(open_ms - 1, (UINT64CONST(1) << OUTBOX_ID_COUNTER_BITS) - 1,
							   PG_UINT32_MAX, upto);
	}
	else
		outbox_uuid_from_clock(last_ms, last_counter, PG_UINT32_MAX, upto);
}

/*
 * The slot of this backend's database, looked up once: a backend never
 * changes database, and a database connected to cannot be renamed.
 */
static int
database_slot(void)
{
	if (my_database_slot == SLOT_UNKNOWN)
	{
		char	   *dbname = get_database_name(MyDatabaseId);
		int			i;

		my_database_slot = SLOT_NONE;
		for (i = 0; dbname != NULL && i < OutboxShared->nslots; i++)
		{
			if (strcmp(OutboxShared->slots[i].dbname, dbname) == 0)
				my_database_slot = i;
		}
	}
	return my_database_slot;
}

/* Set the latches of the destination workers of this database woken. */
static void
wake_destination_workers(void)
{
	Latch	   *latches[OUTBOX_MAX_DESTINATION_WORKERS];
	int			nlatches = 0;
	int			i;
	int			j;

	LWLockAcquire(OutboxShared->lock, LW_SHARED);
	for (i = 0; i < OUTBOX_MAX_DESTINATION_WORKERS; i++)
	{
		OutboxDestinationSlot *d = &OutboxShared->destinations[i];

		if (!d->in_use || d->db_slot != my_database_slot || d->latch == NULL)
			continue;
		for (j = 0; j < nwoken_destinations && !wake_all_destinations; j++)
		{
			if (woken_destinations[j] == d->destination_id)
				break;
		}
		if (wake_all_destinations || j < nwoken_destinations)
		{
			if (requeued_deliveries)
				pg_atomic_fetch_add_u32(&d->requeue_version, 1);
			latches[nlatches++] = d->latch;
		}
	}
	LWLockRelease(OutboxShared->lock);
	for (i = 0; i < nlatches; i++)
		SetLatch(latches[i]);
}

/* Set the latch of this database's main worker, or ask for one. */
static void
wake_main_worker(void)
{
	OutboxWorkerSlot *slot = &OutboxShared->slots[my_database_slot];
	Latch	   *worker_latch;
	Latch	   *launcher_latch;

	LWLockAcquire(OutboxShared->lock, LW_SHARED);
	worker_latch = slot->pid != 0 ? slot->latch : NULL;
	launcher_latch = OutboxShared->launcher_latch;
	LWLockRelease(OutboxShared->lock);

	if (worker_latch)
	{
		/* a paused worker looks again when it is resumed (SIGHUP) */
		if (outbox_enabled || destinations_changed)
			SetLatch(worker_latch);
	}
	else
	{
		pg_atomic_write_u32(&slot->start_requested, 1);
		if (launcher_latch)
			SetLatch(launcher_latch);
	}
}

/*
 * At the end of a transaction: clear this backend's horizon entry (the
 * transaction left the ProcArray already), and at commit wake whom its
 * messages wait for, bump the routing version after a subscription change,
 * and wake the main worker after a change of destinations.
 */
static void
end_of_xact_callback(XactEvent event, void *arg)
{
	bool		commit = event == XACT_EVENT_COMMIT;

	if (event != XACT_EVENT_COMMIT && event != XACT_EVENT_ABORT &&
		event != XACT_EVENT_PREPARE)
		return;

	if (horizon_set)
	{
		int			procno = outbox_my_procno();

		if (procno >= 0 && procno < OutboxShared->nhorizon)
			pg_atomic_write_u64(&OutboxShared->horizon[procno], 0);
		horizon_set = false;
	}

	if (commit && routing_changed)
		pg_atomic_fetch_add_u64(&OutboxShared->routing_version, 1);
	if (commit && my_database_slot >= 0)
	{
		if (backlog_added != 0)
			pg_atomic_fetch_add_u64(&OutboxShared->slots[my_database_slot].backlog,
									backlog_added);
		if (destinations_changed)
			pg_atomic_fetch_add_u32(&OutboxShared->slots[my_database_slot].destinations_version, 1);
		if ((wake_at_commit && saved_messages > routed_messages) || destinations_changed)
			wake_main_worker();
		/*
		 * While the relay is paused (outbox.enabled off) its workers look
		 * again when it is resumed, so commits leave them asleep: waking
		 * three sleeping workers per commit costs a saver more than its
		 * save.  A session that has not read the resuming SIGHUP yet skips
		 * a wake-up it should have done; the worker then finds its
		 * messages at its next poll, late but not lost.
		 */
		if ((nwoken_destinations > 0 || wake_all_destinations) &&
			(outbox_enabled || requeued_deliveries))
			wake_destination_workers();
	}
	backlog_added = 0;
	nbacklog_marks = 0;
	requeued_deliveries = false;
	wake_at_commit = false;
	saved_messages = 0;
	routed_messages = 0;
	routing_changed = false;
	destinations_changed = false;
	nwoken_destinations = 0;
	wake_all_destinations = false;
}

/*
 * At the end of a subtransaction that changed the backlog: a rollback takes
 * its change back; a commit hands it to its parent (the top level needs no
 * mark).
 */
static void
end_of_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	int			level;

	if (nbacklog_marks == 0 ||
		(event != SUBXACT_EVENT_ABORT_SUB && event != SUBXACT_EVENT_COMMIT_SUB))
		return;
	level = GetCurrentTransactionNestLevel();
	if (backlog_marks[nbacklog_marks - 1].level < level)
		return;					/* this subtransaction changed nothing */
	if (event == SUBXACT_EVENT_ABORT_SUB)
		backlog_added = backlog_marks[--nbacklog_marks].before;
	else if (level - 1 <= 1 ||
			 (nbacklog_marks >= 2 && backlog_marks[nbacklog_marks - 2].level == level - 1))
		nbacklog_marks--;
	else
		backlog_marks[nbacklog_marks - 1].level = level - 1;
}

/* Register the end-of-transaction callbacks, once per backend. */
static void
register_xact_callback(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(end_of_xact_callback, NULL);
		RegisterSubXactCallback(end_of_subxact_callback, NULL);
		xact_callback_registered = true;
	}
}

/*
 * Add delta to what the current transaction adds to the backlog, noting
 * where the current subtransaction (if any) started from.
 */
static void
change_backlog(int64 delta)
{
	int			level = GetCurrentTransactionNestLevel();

	if (level > 1 &&
		(nbacklog_marks == 0 || backlog_marks[nbacklog_marks - 1].level < level))
	{
		if (nbacklog_marks == max_backlog_marks)
		{
			max_backlog_marks = Max(8, max_backlog_marks * 2);
			backlog_marks = backlog_marks == NULL ?
				MemoryContextAlloc(TopMemoryContext, sizeof(BacklogMark) * max_backlog_marks) :
				repalloc(backlog_marks, sizeof(BacklogMark) * max_backlog_marks);
		}
		backlog_marks[nbacklog_marks].level = level;
		backlog_marks[nbacklog_marks].before = backlog_added;
		nbacklog_marks++;
	}
	backlog_added += delta;
}

/*
 * Note that the current transaction saves messages for the default
 * destination (or requeued some), so that its commit wakes the database's
 * worker.  Must run inside a transaction.  Without the library preloaded
 * there is no worker to wake.
 */
void
outbox_wake_worker_at_commit(void)
{
	if (OutboxShared == NULL)
		return;
	register_xact_callback();
	(void) database_slot();
	wake_at_commit = true;
	saved_messages++;
}

/*
 * Note that a message saved in the current transaction is routed to these
 * destinations (not to the default one): its commit wakes their workers.
 */
void
outbox_wake_destinations_at_commit(const int32 *destination_ids, int n)
{
	if (OutboxShared == NULL)
		return;
	routed_messages++;
	note_woken_destinations(destination_ids, n);
}

/*
 * Note that the current transaction requeued deliveries of these
 * destinations (replay, retry_failed; NULL: of any destination): at commit
 * their workers are woken and look at their deliveries again.
 */
void
outbox_requeued_deliveries_at_commit(const int32 *destination_ids, int n)
{
	if (OutboxShared == NULL)
		return;
	requeued_deliveries = true;
	note_woken_destinations(destination_ids, n);
}

/*
 * Add destinations to those the current transaction's commit wakes (all of
 * them once there are too many to list).
 */
static void
note_woken_destinations(const int32 *destination_ids, int n)
{
	int			i;
	int			j;

	register_xact_callback();
	(void) database_slot();
	if (destination_ids == NULL)
		wake_all_destinations = true;
	for (j = 0; j < n && !wake_all_destinations; j++)
	{
		for (i = 0; i < nwoken_destinations; i++)
		{
			if (woken_destinations[i] == destination_ids[j])
				break;
		}
		if (i < nwoken_destinations)
			continue;
		if (nwoken_destinations < MAX_WOKEN_DESTINATIONS)
			woken_destinations[nwoken_destinations++] = destination_ids[j];
		else
			wake_all_destinations = true;
	}
}

/*
 * Note that the current transaction changes destinations (and, with
 * subscriptions, routing): at commit the routing caches reload, the main
 * worker resyncs the destination workers, and they reread their options.
 */
void
outbox_destinations_changed_at_commit(bool subscriptions)
{
	if (OutboxShared == NULL)
		return;
	register_xact_callback();
	(void) database_slot();
	destinations_changed = true;
	if (subscriptions)
		routing_changed = true;
}

/* The routing version, for the routing caches. */
uint64
outbox_shmem_routing_version(void)
{
	if (OutboxShared == NULL)
		return 0;
	return pg_atomic_read_u64(&OutboxShared->routing_version);
}

/* Forget the launcher's latch when it exits. */
static void
detach_launcher(int code, Datum arg)
{
	LWLockAcquire(OutboxShared->lock, LW_EXCLUSIVE);
	if (OutboxShared->launcher_pid == MyProcPid)
	{
		OutboxShared->launcher_pid = 0;
		OutboxShared->launcher_latch = NULL;
	}
	LWLockRelease(OutboxShared->lock);
}

/* Publish the launcher's latch, so that commits and workers can wake it. */
void
outbox_shmem_attach_launcher(void)
{
	LWLockAcquire(OutboxShared->lock, LW_EXCLUSIVE);
	OutboxShared->launcher_pid = MyProcPid;
	OutboxShared->launcher_latch = MyLatch;
	LWLockRelease(OutboxShared->lock);
	before_shmem_exit(detach_launcher, (Datum) 0);
}

/* Wake the launcher, if it runs. */
static void
wake_launcher(void)
{
	Latch	   *latch;

	LWLockAcquire(OutboxShared->lock, LW_SHARED);
	latch = OutboxShared->launcher_latch;
	LWLockRelease(OutboxShared->lock);
	if (latch)
		SetLatch(latch);
}

/* How many databases are relayed. */
int
outbox_shmem_slot_count(void)
{
	return OutboxShared->nslots;
}

/* Copy what the launcher needs of a slot. */
void
outbox_shmem_view_slot(int slot, OutboxSlotView *view)
{
	OutboxWorkerSlot *s = &OutboxShared->slots[slot];

	strlcpy(view->dbname, s->dbname, NAMEDATALEN);
	LWLockAcquire(OutboxShared->lock, LW_SHARED);
	view->pid = s->pid;
	view->paused_until = s->paused_until;
	LWLockRelease(OutboxShared->lock);
}

/* Whether a commit asked for a worker since the last call; clears it. */
bool
outbox_shmem_take_start_request(int slot)
{
	return pg_atomic_exchange_u32(&OutboxShared->slots[slot].start_requested, 0) != 0;
}

/*
 * Whether the slot's last worker exited because the extension was not
 * installed (rather than failing); clears it.
 */
bool
outbox_shmem_take_exit_for_missing_extension(int slot)
{
	OutboxWorkerSlot *s = &OutboxShared->slots[slot];
	bool		missing;

	LWLockAcquire(OutboxShared->lock, LW_EXCLUSIVE);
	missing = s->exited_for_missing_extension;
	s->exited_for_missing_extension = false;
	LWLockRelease(OutboxShared->lock);
	return missing;
}

/* Leave this worker's slot when it exits, however it exits. */
static void
detach_worker(int code, Datum arg)
{
	OutboxWorkerSlot *s = &OutboxShared->slots[my_worker_slot];

	LWLockAcquire(OutboxShared->lock, LW_EXCLUSIVE);
	if (s->pid == MyProcPid)
	{
		s->pid = 0;
		s->latch = NULL;
		s->inflight = false;
	}
	LWLockRelease(OutboxShared->lock);
	my_worker_slot = -1;
	wake_launcher();
}

/*
 * Attach this process as the worker of a slot and copy the slot's database
 * name into dbname (NAMEDATALEN bytes).  A slot has one worker at most: a
 * second one (a launcher that restarted while its predecessor's worker
 * still ran could start one) logs who owns the slot and exits, like
 * autoprewarm's second worker.  Two workers would each record their batch
 * in flight over the other's, and publish messages twice and out of order.
 */
void
outbox_shmem_attach_worker(int slot, char *dbname)
{
	OutboxWorkerSlot *s;
	pid_t		owner = 0;

	if (slot < 0 || slot >= OutboxShared->nslots)
		elog(FATAL, "outbox worker started for slot %d of %d", slot, OutboxShared->nslots);
	s = &OutboxShared->slots[slot];
	strlcpy(dbname, s->dbname, NAMEDATALEN);

	LWLockAcquire(OutboxShared->lock, LW_EXCLUSIVE);
	if (s->pid != 0)
		owner = s->pid;
	else
	{
		s->pid = MyProcPid;
		s->latch = MyLatch;
		s->dboid = InvalidOid;
		s->inflight = false;
		status_reset(&s->status, OUTBOX_WORKER_IDLE, GetCurrentTimestamp());
	}
	LWLockRelease(OutboxShared->lock);

	if (owner != 0)
	{
		ereport(LOG,
				(errmsg("outbox worker for database \"%s\" is already running under PID %d",
						dbname, (int) owner)));
		proc_exit(0);
	}
	my_worker_slot = slot;
	my_database_slot = slot;
	before_shmem_exit(detach_worker, (Datum) 0);
	/* This worker's first claim serves the commits that asked for it. */
	pg_atomic_write_u32(&s->start_requested, 0);
}

/* Record the database the worker connected to. */
void
outbox_shmem_worker_connected(void)
{
	OutboxWorkerSlot *s = &OutboxShared->slots[my_worker_slot];

	LWLockAcquire(OutboxShared->lock, LW_EXCLUSIVE);
	s->dboid = MyDatabaseId;
	LWLockRelease(OutboxShared->lock);
}

/*
 * Record whether the extension is missing in the worker's database, and
 * return whether that was reported already (so it is logged once until
 * installed).  A worker that finds it missing exits, and the launcher then
 * waits for an install rather than for a failure's restart delay.
 */
bool
outbox_shmem_note_extension_missing(bool missing)
{
	OutboxWorkerSlot *s = &OutboxShared->slots[my_worker_slot];
	bool		reported;

	LWLockAcquire(OutboxShared->lock, LW_EXCLUSIVE);
	reported = s->extension_missing_reported;
	s->extension_missing_reported = missing;
	s->exited_for_missing_extension = missing;
	LWLockRelease(OutboxShared->lock);
	return reported;
}

/*
 * Record the id range of the batch about to be published as in flight.
 * Called before the claiming transaction commits, so that whoever locks
 * one of these rows after the commit finds it recorded.
 */
void
outbox_shmem_set_inflight(const pg_uuid_t *first, const pg_uuid_t *last)
{
	OutboxWorkerSlot *s = &OutboxShared->slots[my_worker_slot];

	LWLockAcquire(OutboxShared->lock, LW_EXCLUSIVE);
	s->inflight = true;
	s->inflight_first = *first;
	s->inflight_last = *last;
	LWLockRelease(OutboxShared->lock);
}

/* The batch in flight is marked, or given up: it may be claimed again. */
void
outbox_shmem_clear_inflight(void)
{
	OutboxWorkerSlot *s = &OutboxShared->slots[my_worker_slot];

	LWLockAcquire(OutboxShared->lock, LW_EXCLUSIVE);
	s->inflight = false;
	LWLockRelease(OutboxShared->lock);
}

/*
 * The id range of the batch the relay worker of database dboid (which must
 * be this backend's) is publishing; false when none is in flight.  Read it
 * only after locking the rows to check against it (see store.c).
 */
bool
outbox_shmem_read_inflight(Oid dboid, pg_uuid_t *first, pg_uuid_t *last)
{
	OutboxWorkerSlot *s;
	bool		inflight = false;
	int			slot;

	/* Without the library preloaded there is no worker. */
	if (OutboxShared == NULL)
		return false;
	Assert(dboid == MyDatabaseId);
	slot = database_slot();
	if (slot < 0)
		return false;
	s = &OutboxShared->slots[slot];
	LWLockAcquire(OutboxShared->lock, LW_SHARED);
	if (s->inflight && s->dboid == dboid)
	{
		inflight = true;
		*first = s->inflight_first;
		*last = s->inflight_last;
	}
	LWLockRelease(OutboxShared->lock);
	return inflight;
}

/* The slot of a database, by name, or -1. */
static int
slot_by_name(const char *dbname)
{
	int			i;

	for (i = 0; i < OutboxShared->nslots; i++)
	{
		if (strcmp(OutboxShared->slots[i].dbname, dbname) == 0)
			return i;
	}
	return -1;
}

/*
 * Keep the launcher from starting any worker for dbname (its main worker
 * and its destinations' workers) until "until", and ask every one of them
 * running now to exit (SIGTERM): DROP DATABASE is about to need the
 * database to itself.  Returns how many were asked.
 */
int
outbox_shmem_stop_database_workers(const char *dbname, TimestampTz until)
{
	int			slot = slot_by_name(dbname);
	int			stopped = 0;
	int			i;

	if (slot < 0)
		return 0;
	LWLockAcquire(OutboxShared->lock, LW_EXCLUSIVE);
	OutboxShared->slots[slot].paused_until = until;
	if (OutboxShared->slots[slot].pid != 0 &&
		kill(OutboxShared->slots[slot].pid, SIGTERM) == 0)
		stopped++;
	for (i = 0; i < OUTBOX_MAX_DESTINATION_WORKERS; i++)
	{
		OutboxDestinationSlot *d = &OutboxShared->destinations[i];

		if (d->in_use && d->db_slot == slot && d->pid != 0 && kill(d->pid, SIGTERM) == 0)
			stopped++;
	}
	LWLockRelease(OutboxShared->lock);
	return stopped;
}

/* Whether any worker of dbname (main or destination) is still attached. */
bool
outbox_shmem_database_workers_running(const char *dbname)
{
	int			slot = slot_by_name(dbname);
	bool		running;
	int			i;

	if (slot < 0)
		return false;
	LWLockAcquire(OutboxShared->lock, LW_SHARED);
	running = OutboxShared->slots[slot].pid != 0;
	for (i = 0; i < OUTBOX_MAX_DESTINATION_WORKERS && !running; i++)
	{
		OutboxDestinationSlot *d = &OutboxShared->destinations[i];

		running = d->in_use && d->db_slot == slot && d->pid != 0;
	}
	LWLockRelease(OutboxShared->lock);
	return running;
}

/* Lift a pause (the DROP DATABASE failed) and let the launcher act. */
void
outbox_shmem_resume_worker(const char *dbname)
{
	int			slot = slot_by_name(dbname);

	if (slot < 0)
		return;
	LWLockAcquire(OutboxShared->lock, LW_EXCLUSIVE);
	OutboxShared->slots[slot].paused_until = 0;
	LWLockRelease(OutboxShared->lock);
	wake_launcher();
}

/*
 * Keep the destination slots of this (main) worker's database in step with
 * the destinations that need a worker: n ids with their names and a hash
 * of their configuration.  A slot is taken for each new one, its hash
 * updated for each known one (its worker rereads its options when the hash
 * changes), and the slots of the others are let go (their workers exit).
 * Returns how many did not find a free slot.
 */
int
outbox_shmem_sync_destinations(const int32 *ids, char *const *names,
							   const uint32 *config_hashes, int n)
{
	int			db = my_worker_slot;
	int			missing = 0;
	int			i;
	int			j;

	LWLockAcquire(OutboxShared->lock, LW_EXCLUSIVE);
	for (j = 0; j < OUTBOX_MAX_DESTINATION_WORKERS; j++)
	{
		OutboxDestinationSlot *d = &OutboxShared->destinations[j];
		bool		wanted = false;

		if (!d->in_use || d->db_slot != db)
			continue;
		for (i = 0; i < n && !wanted; i++)
			wanted = ids[i] == d->destination_id;
		if (!wanted)
			d->in_use = false;
	}
	for (i = 0; i < n; i++)
	{
		OutboxDestinationSlot *found = NULL;

		for (j = 0; j < OUTBOX_MAX_DESTINATION_WORKERS && found == NULL; j++)
		{
			OutboxDestinationSlot *d = &OutboxShared->destinations[j];

			if (d->in_use && d->db_slot == db && d->destination_id == ids[i])
				found = d;
		}
		for (j = 0; j < OUTBOX_MAX_DESTINATION_WORKERS && found == NULL; j++)
		{
			OutboxDestinationSlot *d = &OutboxShared->destinations[j];

			if (!d->in_use && d->pid == 0)
			{
				found = d;
				found->in_use = true;
				found->db_slot = db;
				found->destination_id = ids[i];
				strlcpy(found->name, names[i], NAMEDATALEN);
				status_reset(&found->status, OUTBOX_WORKER_STOPPED, 0);
			}
		}
		if (found == NULL)
			missing++;
		else if (pg_atomic_read_u32(&found->options_version) != config_hashes[i])
		{
			pg_atomic_write_u32(&found->options_version, config_hashes[i]);
			if (found->latch)
				SetLatch(found->latch);
		}
	}
	LWLockRelease(OutboxShared->lock);
	wake_launcher();
	return missing;
}

/* Copy what the launcher needs of a destination slot. */
void
outbox_shmem_view_destination(int slot, OutboxDestinationView *view)
{
	OutboxDestinationSlot *d = &OutboxShared->destinations[slot];

	LWLockAcquire(OutboxShared->lock, LW_SHARED);
	view->in_use = d->in_use;
	view->pid = d->pid;
	view->destination_id = d->destination_id;
	strlcpy(view->name, d->name, NAMEDATALEN);
	if (d->in_use)
		strlcpy(view->dbname, OutboxShared->slots[d->db_slot].dbname, NAMEDATALEN);
	else
		view->dbname[0] = '\0';
	view->paused_until = d->in_use ? OutboxShared->slots[d->db_slot].paused_until : 0;
	LWLockRelease(OutboxShared->lock);
}

/* Leave this destination worker's slot when it exits. */
static void
detach_destination_worker(int code, Datum arg)
{
	OutboxDestinationSlot *d = &OutboxShared->destinations[my_destination_slot];

	LWLockAcquire(OutboxShared->lock, LW_EXCLUSIVE);
	if (d->pid == MyProcPid)
	{
		d->pid = 0;
		d->latch = NULL;
	}
	LWLockRelease(OutboxShared->lock);
	my_destination_slot = -1;
	wake_launcher();
}

/*
 * Attach this process as the worker of a destination slot, and copy its
 * database and destination.  Like a database's worker, a destination has
 * one worker at most; a slot let go meanwhile makes the worker exit too.
 */
void
outbox_shmem_attach_destination_worker(int slot, char *dbname, int32 *destination_id,
									   char *name)
{
	OutboxDestinationSlot *d;
	pid_t		owner = 0;
	bool		in_use;

	if (slot < 0 || slot >= OUTBOX_MAX_DESTINATION_WORKERS)
		elog(FATAL, "outbox destination worker started for slot %d", slot);
	d = &OutboxShared->destinations[slot];

	LWLockAcquire(OutboxShared->lock, LW_EXCLUSIVE);
	in_use = d->in_use;
	if (in_use)
	{
		strlcpy(dbname, OutboxShared->slots[d->db_slot].dbname, NAMEDATALEN);
		*destination_id = d->destination_id;
		strlcpy(name, d->name, NAMEDATALEN);
		if (d->pid != 0)
			owner = d->pid;
		else
		{
			d->pid = MyProcPid;
			d->latch = MyLatch;
			status_reset(&d->status, OUTBOX_WORKER_IDLE, GetCurrentTimestamp());
		}
	}
	LWLockRelease(OutboxShared->lock);

	if (!in_use)
		proc_exit(0);
	if (owner != 0)
	{
		ereport(LOG,
				(errmsg("outbox worker for destination \"%s\" of database \"%s\" is already running under PID %d",
						name, dbname, (int) owner)));
		proc_exit(0);
	}
	my_destination_slot = slot;
	my_database_slot = d->db_slot;
	before_shmem_exit(detach_destination_worker, (Datum) 0);
}

/*
 * Whether this destination worker's slot is still wanted for its
 * destination, and the version of the destination's configuration.
 */
bool
outbox_shmem_destination_wanted(uint32 *config_version)
{
	OutboxDestinationSlot *d = &OutboxShared->destinations[my_destination_slot];
	bool		wanted;

	LWLockAcquire(OutboxShared->lock, LW_SHARED);
	wanted = d->in_use && d->pid == MyProcPid;
	LWLockRelease(OutboxShared->lock);
	*config_version = pg_atomic_read_u32(&d->options_version);
	return wanted;
}

/* The version of the main worker's database's destinations. */
uint32
outbox_shmem_destinations_version(void)
{
	return pg_atomic_read_u32(&OutboxShared->slots[my_worker_slot].destinations_version);
}

/* This process's status: its worker slot's or its destination slot's. */
static OutboxWorkerStatus *
my_status(void)
{
	if (OutboxShared == NULL)
		return NULL;
	if (my_worker_slot >= 0)
		return &OutboxShared->slots[my_worker_slot].status;
	if (my_destination_slot >= 0)
		return &OutboxShared->destinations[my_destination_slot].status;
	return NULL;
}

/* Record the publisher the worker uses. */
void
outbox_shmem_status_set_publisher(const char *publisher)
{
	OutboxWorkerStatus *status = my_status();

	if (status == NULL)
		return;
	SpinLockAcquire(&status->mutex);
	strlcpy(status->publisher, publisher, NAMEDATALEN);
	SpinLockRelease(&status->mutex);
}

/* Record what the worker is doing. */
void
outbox_shmem_status_set_state(OutboxWorkerState state)
{
	OutboxWorkerStatus *status = my_status();

	if (status == NULL)
		return;
	SpinLockAcquire(&status->mutex);
	status->state = state;
	SpinLockRelease(&status->mutex);
}

/*
 * Copy an error into a status's last_error, cut at a character boundary,
 * with the time; the caller holds the status's mutex.  len was measured
 * before, outside the spinlock.
 */
static void
status_copy_error(OutboxWorkerStatus *status, const char *error, int len, TimestampTz now)
{
	memcpy(status->last_error, error, len);
	status->last_error[len] = '\0';
	status->last_error_at = now;
}

/* How much of an error a status keeps: whole characters, under the limit. */
static int
status_error_length(const char *error)
{
	int			len = (int) strlen(error);

	if (len < OUTBOX_STATUS_ERROR_LEN)
		return len;
	return pg_mbcliplen(error, len, OUTBOX_STATUS_ERROR_LEN - 1);
}

/*
 * Record a batch whose results are committed: its messages published and
 * its failed attempts, added to the totals, and the last of its errors
 * (NULL: none).  Once per batch.
 */
void
outbox_shmem_status_batch(uint64 published, uint64 attempts_failed, const char *error)
{
	OutboxWorkerStatus *status = my_status();
	TimestampTz now = GetCurrentTimestamp();
	int			len = error ? status_error_length(error) : 0;

	if (status == NULL)
		return;
	SpinLockAcquire(&status->mutex);
	status->published += published;
	status->attempts_failed += attempts_failed;
	status->batches++;
	status->last_batch_at = now;
	if (error)
		status_copy_error(status, error, len, now);
	SpinLockRelease(&status->mutex);
}

/* Record an error that is not a publisher's result (the worker's own). */
void
outbox_shmem_status_error(const char *error)
{
	OutboxWorkerStatus *status = my_status();
	int			len = status_error_length(error);

	if (status == NULL)
		return;
	SpinLockAcquire(&status->mutex);
	status_copy_error(status, error, len, GetCurrentTimestamp());
	SpinLockRelease(&status->mutex);
}

/* Copy a status into a view row. */
static void
status_copy(OutboxWorkerStatus *status, OutboxStatusView *row)
{
	SpinLockAcquire(&status->mutex);
	row->state = status->state;
	strlcpy(row->publisher, status->publisher, NAMEDATALEN);
	row->started_at = status->started_at;
	row->last_batch_at = status->last_batch_at;
	row->published = status->published;
	row->attempts_failed = status->attempts_failed;
	row->batches = status->batches;
	strlcpy(row->last_error, status->last_error, OUTBOX_STATUS_ERROR_LEN);
	row->last_error_at = status->last_error_at;
	SpinLockRelease(&status->mutex);
	if (row->pid == 0)
		row->state = OUTBOX_WORKER_STOPPED;
}

/*
 * Copy the status of every worker of the server into rows (room for
 * max_rows): each relayed database's main worker, then each destination
 * worker that its main worker wants.  Returns how many rows were filled.
 */
int
outbox_shmem_status_rows(OutboxStatusView *rows, int max_rows)
{
	int			n = 0;
	int			i;

	outbox_require_shared_state();
	LWLockAcquire(OutboxShared->lock, LW_SHARED);
	for (i = 0; i < OutboxShared->nslots && n < max_rows; i++)
	{
		OutboxWorkerSlot *s = &OutboxShared->slots[i];
		OutboxStatusView *row = &rows[n++];

		strlcpy(row->dbname, s->dbname, NAMEDATALEN);
		strlcpy(row->destination, "default", NAMEDATALEN);
		row->pid = s->pid;
		status_copy(&s->status, row);
		row->backlog_known = pg_atomic_read_u32(&s->backlog_known) != 0;
		row->backlog = (int64) pg_atomic_read_u64(&s->backlog);
	}
	for (i = 0; i < OUTBOX_MAX_DESTINATION_WORKERS && n < max_rows; i++)
	{
		OutboxDestinationSlot *d = &OutboxShared->destinations[i];
		OutboxStatusView *row;

		if (!d->in_use)
			continue;
		row = &rows[n++];
		strlcpy(row->dbname, OutboxShared->slots[d->db_slot].dbname, NAMEDATALEN);
		strlcpy(row->destination, d->name, NAMEDATALEN);
		row->pid = d->pid;
		status_copy(&d->status, row);
		row->backlog_known = false;
	}
	LWLockRelease(OutboxShared->lock);
	return n;
}

/*
 * The save path, once per message row (the BEFORE INSERT trigger of
 * outbox.messages, route.c, for the rows whose id outbox.next_id() or
 * save() just handed out): refuse the message with 53400 when the backlog
 * of this backend's database has reached outbox.max_backlog, else count it
 * for the commit.  Only rows count: ids taken without a row, and rows of a
 * subtransaction that rolled back, do not.
 *
 * The check is approximate, by design: it costs an atomic read, never a
 * count of rows.  The backlog it reads is what committed transactions
 * saved or requeued, less what workers finished (each one after its batch
 * committed), plus what this transaction saved so far; it misses what
 * other transactions saved and have not committed yet, and counts what a
 * worker finished but has not taken away yet (at most one batch per
 * worker).  Rows deleted by hand or inserted with an explicit id, COMMIT
 * PREPARED and the old retry_failed() calls make it drift, and the main
 * worker corrects it from the table every few seconds.  Until the
 * main worker first counted it (after a start, or when max_backlog was
 * 0), nothing is refused.  Databases that are not relayed have no
 * counter, and no limit.
 */
void
outbox_shmem_admit_message(void)
{
	OutboxWorkerSlot *slot;
	int			db;

	if (OutboxShared == NULL)
		return;
	register_xact_callback();
	db = database_slot();
	if (db < 0)
		return;
	slot = &OutboxShared->slots[db];
	if (outbox_max_backlog > 0 && pg_atomic_read_u32(&slot->backlog_known) != 0)
	{
		int64		backlog = (int64) pg_atomic_read_u64(&slot->backlog) + backlog_added;

		if (backlog >= outbox_max_backlog)
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("the outbox of database \"%s\" is full", slot->dbname),
					 errdetail("%lld messages are waiting to be published; outbox.max_backlog is %d.",
							   (long long) backlog, outbox_max_backlog),
					 errhint("Saving works again as the relay publishes them; see outbox.worker_status().")));
	}
	change_backlog(1);
}

/*
 * Note that the current transaction adds delta messages to its database's
 * backlog (requeued: positive; finished by an external relay: negative),
 * counted when it commits.
 */
void
outbox_backlog_changes_at_commit(int64 delta)
{
	if (OutboxShared == NULL || delta == 0)
		return;
	register_xact_callback();
	if (database_slot() < 0)
		return;
	change_backlog(delta);
}

/* A worker's batch finished these messages (its marks committed). */
void
outbox_shmem_backlog_finished(int64 messages)
{
	if (OutboxShared == NULL || my_database_slot < 0 || messages == 0)
		return;
	pg_atomic_fetch_sub_u64(&OutboxShared->slots[my_database_slot].backlog, messages);
}

/* The main worker: its database's backlog counter as it stands. */
int64
outbox_shmem_backlog_read(void)
{
	return (int64) pg_atomic_read_u64(&OutboxShared->slots[my_worker_slot].backlog);
}

/*
 * The main worker: correct its database's backlog counter by delta (the
 * count from the table less the counter read before it), and let the save
 * path check it from now on.
 */
void
outbox_shmem_backlog_correct(int64 delta)
{
	OutboxWorkerSlot *slot = &OutboxShared->slots[my_worker_slot];

	pg_atomic_fetch_add_u64(&slot->backlog, delta);
	pg_atomic_write_u32(&slot->backlog_known, 1);
}

/* The main worker: stop checking the counter (outbox.max_backlog is 0). */
void
outbox_shmem_backlog_forget(void)
{
	pg_atomic_write_u32(&OutboxShared->slots[my_worker_slot].backlog_known, 0);
}

/* The version of this destination worker's requeued deliveries. */
uint32
outbox_shmem_requeue_version(void)
{
	return pg_atomic_read_u32(&OutboxShared->destinations[my_destination_slot].requeue_version);
}
