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
 *	- the commit-time wake-up: a transaction that saved messages sets its
 *	  database's worker's latch when it commits (or asks the launcher for a
 *	  worker), like pg_net's.  Each backend finds its database's slot once
 *	  and keeps its number.
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
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/varlena.h"

#include "outbox.h"
#include "shmem.h"

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
} OutboxWorkerSlot;

typedef struct OutboxSharedState
{
	LWLock	   *lock;			/* the launcher fields and the slots */
	pid_t		launcher_pid;
	Latch	   *launcher_latch;
	int			nslots;			/* fixed when shared memory is created */
	OutboxWorkerSlot slots[OUTBOX_MAX_DATABASES];

	/* The UUIDv7 clock. */
	slock_t		id_mutex;
	uint64		id_last_ms;
	uint64		id_last_counter;
} OutboxSharedState;

static OutboxSharedState *OutboxShared = NULL;

/* This backend's database's slot: not looked up yet, or none. */
#define SLOT_UNKNOWN	(-2)
#define SLOT_NONE		(-1)
static int	my_database_slot = SLOT_UNKNOWN;

/* The slot this process is the worker of, or -1. */
static int	my_worker_slot = -1;

/* Whether the current transaction saved messages. */
static bool wake_at_commit = false;
static bool xact_callback_registered = false;

/* Ask for the shared memory and the LWLock (from shmem_request_hook). */
void
outbox_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(OutboxSharedState)));
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
	OutboxShared = ShmemInitStruct("outbox", sizeof(OutboxSharedState), &found);
	if (!found)
	{
		memset(OutboxShared, 0, sizeof(OutboxSharedState));
		OutboxShared->lock = &(GetNamedLWLockTranche("outbox"))->lock;
		SpinLockInit(&OutboxShared->id_mutex);
		fill_slots();
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
 * millisecond and counter of the new id.
 */
void
outbox_shmem_next_id_clock(uint64 now_ms, uint64 fresh_counter,
						   uint64 *ms, uint64 *counter)
{
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
	SpinLockRelease(&OutboxShared->id_mutex);
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

/*
 * At commit of a transaction that saved messages, set the latch of this
 * database's relay worker; when none runs, ask the launcher for one.
 */
static void
wake_worker_callback(XactEvent event, void *arg)
{
	OutboxWorkerSlot *slot;
	Latch	   *worker_latch;
	Latch	   *launcher_latch;

	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PREPARE)
		wake_at_commit = false;
	if (event != XACT_EVENT_COMMIT || !wake_at_commit)
		return;
	wake_at_commit = false;
	if (my_database_slot < 0)
		return;

	slot = &OutboxShared->slots[my_database_slot];
	LWLockAcquire(OutboxShared->lock, LW_SHARED);
	worker_latch = slot->pid != 0 ? slot->latch : NULL;
	launcher_latch = OutboxShared->launcher_latch;
	LWLockRelease(OutboxShared->lock);

	if (worker_latch)
		SetLatch(worker_latch);
	else
	{
		pg_atomic_write_u32(&slot->start_requested, 1);
		if (launcher_latch)
			SetLatch(launcher_latch);
	}
}

/*
 * Note that the current transaction saves messages, so that its commit
 * wakes the relay worker.  Must run inside a transaction.  Without the
 * library preloaded there is no worker to wake.
 */
void
outbox_wake_worker_at_commit(void)
{
	if (OutboxShared == NULL)
		return;
	if (!xact_callback_registered)
	{
		RegisterXactCallback(wake_worker_callback, NULL);
		xact_callback_registered = true;
	}
	(void) database_slot();
	wake_at_commit = true;
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
 * Keep the launcher from starting a worker for dbname until "until", and
 * return the pid of the worker running now (0 when none), for DROP
 * DATABASE to stop it.
 */
pid_t
outbox_shmem_pause_worker(const char *dbname, TimestampTz until)
{
	int			slot = slot_by_name(dbname);
	pid_t		pid;

	if (slot < 0)
		return 0;
	LWLockAcquire(OutboxShared->lock, LW_EXCLUSIVE);
	OutboxShared->slots[slot].paused_until = until;
	pid = OutboxShared->slots[slot].pid;
	LWLockRelease(OutboxShared->lock);
	return pid;
}

/* Whether the worker with this pid is still attached to its slot. */
bool
outbox_shmem_worker_running(pid_t pid)
{
	bool		running = false;
	int			i;

	LWLockAcquire(OutboxShared->lock, LW_SHARED);
	for (i = 0; i < OutboxShared->nslots; i++)
	{
		if (OutboxShared->slots[i].pid == pid)
			running = true;
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
