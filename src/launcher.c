/*-------------------------------------------------------------------------
 *
 * launcher.c
 *		The launcher: starts and watches one relay worker per database
 *		listed in outbox.databases.
 *
 * The launcher is a static background worker connected to no database
 * (like the autovacuum launcher, it reads only the shared catalog
 * pg_database).  Each relay worker is a dynamic background worker that the
 * launcher starts and restarts:
 *	- a worker that exits is started again after a delay that grows while
 *	  it keeps failing soon after starting, so a broken setup never floods
 *	  the log;
 *	- a database that does not exist, or lacks the extension, is reported
 *	  once and checked again every EXTENSION_RECHECK_MS;
 *	- a commit that saved messages in a database without a running worker
 *	  asks for one (start_requested) and wakes the launcher;
 *	- a DROP DATABASE pauses the database's worker (see outbox.c).
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "utils/snapmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "outbox.h"

/* How often a database without the extension (or at all) is checked. */
#define EXTENSION_RECHECK_MS	10000

/* Restart delays of a worker that exits unexpectedly. */
#define MIN_RESTART_DELAY_MS	1000
#define MAX_RESTART_DELAY_MS	60000

/* A worker that ran at least this long is considered healthy again. */
#define HEALTHY_RUN_MS			30000

/* The launcher's own view of each slot. */
typedef struct LauncherSlotState
{
	BackgroundWorkerHandle *handle; /* NULL when not started by us */
	TimestampTz started_at;
	TimestampTz next_start;		/* not before this time */
	int			restart_delay_ms;
	bool		database_missing;	/* reported once */
	bool		register_failed;	/* reported once */
} LauncherSlotState;

static LauncherSlotState launcher_slots[OUTBOX_MAX_DATABASES];

/* Register the launcher at server start (called from _PG_init). */
void
outbox_register_launcher(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "outbox");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "outbox_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "outbox launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "outbox launcher");
	RegisterBackgroundWorker(&worker);
}

/* Forget the launcher's latch when it exits. */
static void
detach_launcher(int code, Datum arg)
{
	SpinLockAcquire(&OutboxShared->mutex);
	if (OutboxShared->launcher_pid == MyProcPid)
	{
		OutboxShared->launcher_pid = 0;
		OutboxShared->launcher_latch = NULL;
	}
	SpinLockRelease(&OutboxShared->mutex);
}

/*
 * Fill the slots from outbox.databases.  A restarted launcher keeps the
 * slots as they are: workers started by its predecessor may still run.
 */
static void
fill_slots(void)
{
	char	   *rawstring = pstrdup(outbox_databases);
	List	   *names = NIL;

	/* The check hook already accepted the value. */
	if (!SplitIdentifierString(rawstring, ',', &names))
		elog(ERROR, "invalid outbox.databases");

	SpinLockAcquire(&OutboxShared->mutex);
	if (OutboxShared->nslots == 0)
	{
		ListCell   *lc;
		int			n = 0;

		foreach(lc, names)
		{
			OutboxWorkerSlot *slot = &OutboxShared->slots[n++];

			memset(slot, 0, sizeof(OutboxWorkerSlot));
			strlcpy(slot->dbname, (char *) lfirst(lc), NAMEDATALEN);
		}
		OutboxShared->nslots = n;
	}
	SpinLockRelease(&OutboxShared->mutex);
	list_free(names);
	pfree(rawstring);
}

/*
 * Whether a database of that name exists.  The launcher has no database
 * selected, so it cannot use catalog indexes on a fresh cluster: like
 * autovacuum's launcher, it scans the shared catalog pg_database.
 */
static bool
database_exists(const char *dbname)
{
	bool		exists = false;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tuple;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tuple);

		if (strcmp(NameStr(db->datname), dbname) == 0)
		{
			exists = true;
			break;
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return exists;
}

/* Start the relay worker of slot i; false when it could not be started. */
static bool
start_worker(int i, const char *dbname)
{
	BackgroundWorker worker;
	LauncherSlotState *state = &launcher_slots[i];
	pid_t		pid;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "outbox");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "outbox_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "outbox worker for database %s", dbname);
	snprintf(worker.bgw_type, BGW_MAXLEN, "outbox worker");
	worker.bgw_main_arg = Int32GetDatum(i);
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, &state->handle))
	{
		state->handle = NULL;
		if (!state->register_failed)
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("outbox launcher could not start a worker for database \"%s\"", dbname),
					 errhint("Raise max_worker_processes: the outbox needs one worker per relayed database plus its launcher.")));
		state->register_failed = true;
		return false;
	}
	state->register_failed = false;
	if (WaitForBackgroundWorkerStartup(state->handle, &pid) == BGWH_POSTMASTER_DIED)
		proc_exit(1);
	state->started_at = GetCurrentTimestamp();
	return true;
}

/*
 * Look at one slot: note a worker that stopped and decide when to start the
 * next, start one when due.  Returns the milliseconds until this slot next
 * needs attention.
 */
static long
tend_slot(int i, TimestampTz now)
{
	LauncherSlotState *state = &launcher_slots[i];
	OutboxWorkerSlot *slot = &OutboxShared->slots[i];
	char		dbname[NAMEDATALEN];
	bool		start_requested;
	bool		extension_missing;
	TimestampTz paused_until;
	pid_t		slot_pid;
	pid_t		pid;

	SpinLockAcquire(&OutboxShared->mutex);
	strlcpy(dbname, slot->dbname, NAMEDATALEN);
	start_requested = slot->start_requested;
	extension_missing = slot->extension_missing;
	paused_until = slot->paused_until;
	slot_pid = slot->pid;
	SpinLockRelease(&OutboxShared->mutex);

	if (state->handle != NULL)
	{
		if (GetBackgroundWorkerPid(state->handle, &pid) != BGWH_STOPPED)
			return EXTENSION_RECHECK_MS;	/* running: the exit wakes us */

		/* It stopped: schedule the next start. */
		pfree(state->handle);
		state->handle = NULL;
		if (extension_missing)
			state->next_start = TimestampTzPlusMilliseconds(now, EXTENSION_RECHECK_MS);
		else
		{
			if (TimestampDifferenceExceeds(state->started_at, now, HEALTHY_RUN_MS))
				state->restart_delay_ms = MIN_RESTART_DELAY_MS;
			else
				state->restart_delay_ms = Min(Max(state->restart_delay_ms * 2,
												  MIN_RESTART_DELAY_MS),
											  MAX_RESTART_DELAY_MS);
			state->next_start = TimestampTzPlusMilliseconds(now, state->restart_delay_ms);
		}
	}
	else if (slot_pid != 0)
		return EXTENSION_RECHECK_MS;	/* started by a previous launcher */

	if (!start_requested)
	{
		if (paused_until > now)
			return Max(1, (long) ((paused_until - now) / 1000));
		if (state->next_start > now)
			return Max(1, (long) ((state->next_start - now) / 1000));
	}

	if (!database_exists(dbname))
	{
		if (!state->database_missing)
			ereport(LOG,
					(errmsg("outbox launcher: database \"%s\" listed in outbox.databases does not exist",
							dbname),
					 errhint("Create the database or remove it from outbox.databases; it is checked again every few seconds.")));
		state->database_missing = true;
		state->next_start = TimestampTzPlusMilliseconds(now, EXTENSION_RECHECK_MS);
		SpinLockAcquire(&OutboxShared->mutex);
		slot->start_requested = false;
		SpinLockRelease(&OutboxShared->mutex);
		return EXTENSION_RECHECK_MS;
	}
	state->database_missing = false;

	SpinLockAcquire(&OutboxShared->mutex);
	slot->start_requested = false;
	SpinLockRelease(&OutboxShared->mutex);

	if (!start_worker(i, dbname))
	{
		state->next_start = TimestampTzPlusMilliseconds(now, EXTENSION_RECHECK_MS);
		return EXTENSION_RECHECK_MS;
	}
	return EXTENSION_RECHECK_MS;
}

/* Entry point of the launcher. */
void
outbox_launcher_main(Datum main_arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* No database: the launcher reads only the shared catalog. */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	SpinLockAcquire(&OutboxShared->mutex);
	OutboxShared->launcher_pid = MyProcPid;
	OutboxShared->launcher_latch = MyLatch;
	SpinLockRelease(&OutboxShared->mutex);
	before_shmem_exit(detach_launcher, (Datum) 0);

	fill_slots();
	memset(launcher_slots, 0, sizeof(launcher_slots));

	for (;;)
	{
		long		timeout_ms = EXTENSION_RECHECK_MS;
		TimestampTz now = GetCurrentTimestamp();
		int			i;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		for (i = 0; i < OutboxShared->nslots; i++)
			timeout_ms = Min(timeout_ms, tend_slot(i, now));

		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout_ms,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
