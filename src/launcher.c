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
 *	  asks for one and wakes the launcher.  That cuts short only the wait
 *	  for a database or an extension to appear (the commit shows both are
 *	  there now), never a failing worker's restart delay nor a pause;
 *	- a DROP DATABASE pauses the database's worker (see outbox.c).
 * The slots themselves, and the rule of one worker per slot, are in
 * shared memory (shmem.c).
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
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "launcher.h"
#include "outbox.h"
#include "shmem.h"

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
	bool		awaiting_install;	/* next_start only rechecks a database
									 * or extension that was missing */
	bool		database_missing;	/* reported once */
	bool		register_failed;	/* reported once */
} LauncherSlotState;

static LauncherSlotState launcher_slots[OUTBOX_MAX_DATABASES];
static LauncherSlotState destination_states[OUTBOX_MAX_DESTINATION_WORKERS];

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

/*
 * Start a worker (function outbox_worker_main for a database's slot i,
 * outbox_destination_worker_main for destination slot i), recording its
 * handle in state; false when it could not be started.
 */
static bool
start_worker(LauncherSlotState *state, int i, const char *function, const char *type,
			 const char *name)
{
	BackgroundWorker worker;
	pid_t		pid;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "outbox");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(worker.bgw_name, BGW_MAXLEN, "outbox worker for %s", name);
	snprintf(worker.bgw_type, BGW_MAXLEN, "%s", type);
	worker.bgw_main_arg = Int32GetDatum(i);
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, &state->handle))
	{
		state->handle = NULL;
		if (!state->register_failed)
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("outbox launcher could not start a worker for %s", name),
					 errhint("Raise max_worker_processes: the outbox needs one worker per relayed database and per destination, plus its launcher.")));
		state->register_failed = true;
		return false;
	}
	state->register_failed = false;
	if (WaitForBackgroundWorkerStartup(state->handle, &pid) == BGWH_POSTMASTER_DIED)
		proc_exit(1);
	state->started_at = GetCurrentTimestamp();
	return true;
}

/* Whether the worker of state still runs. */
static bool
worker_running(LauncherSlotState *state)
{
	pid_t		pid;

	return GetBackgroundWorkerPid(state->handle, &pid) != BGWH_STOPPED;
}

/*
 * Forget a worker that stopped and schedule its next start: after a delay
 * that grows while it keeps failing soon after starting, or a recheck when
 * it found no extension.
 */
static void
schedule_restart(LauncherSlotState *state, TimestampTz now, bool missing_extension)
{
	pfree(state->handle);
	state->handle = NULL;
	if (missing_extension)
	{
		state->next_start = TimestampTzPlusMilliseconds(now, EXTENSION_RECHECK_MS);
		state->awaiting_install = true;
	}
	else
	{
		if (TimestampDifferenceExceeds(state->started_at, now, HEALTHY_RUN_MS))
			state->restart_delay_ms = MIN_RESTART_DELAY_MS;
		else
			state->restart_delay_ms = Min(Max(state->restart_delay_ms * 2,
											  MIN_RESTART_DELAY_MS),
										  MAX_RESTART_DELAY_MS);
		state->next_start = TimestampTzPlusMilliseconds(now, state->restart_delay_ms);
		state->awaiting_install = false;
	}
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
	OutboxSlotView view;
	outbox_shmem_view_slot(i, &view);

	if (state->handle != NULL)
	{
		if (worker_running(state))
			return EXTENSION_RECHECK_MS;	/* running: the exit wakes us */
		schedule_restart(state, now, outbox_shmem_take_exit_for_missing_extension(i));
	}
	else if (view.pid != 0)
		return EXTENSION_RECHECK_MS;	/* started by a previous launcher */

	if (view.paused_until > now)
		return Max(1, (long) ((view.paused_until - now) / 1000));

	/*
	 * A commit that saved messages shows that the database and the
	 * extension exist: it ends a recheck wait, never a restart delay.
	 */
	if (outbox_shmem_take_start_request(i) && state->awaiting_install)
		state->next_start = now;
	if (state->next_start > now)
		return Max(1, (long) ((state->next_start - now) / 1000));

	if (!database_exists(view.dbname))
	{
		if (!state->database_missing)
			ereport(LOG,
					(errmsg("outbox launcher: database \"%s\" listed in outbox.databases does not exist",
							view.dbname),
					 errhint("Create the database or remove it from outbox.databases; it is checked again every few seconds.")));
		state->database_missing = true;
		state->next_start = TimestampTzPlusMilliseconds(now, EXTENSION_RECHECK_MS);
		state->awaiting_install = true;
		return EXTENSION_RECHECK_MS;
	}
	state->database_missing = false;

	if (!start_worker(state, i, "outbox_worker_main", "outbox worker",
					  psprintf("database %s", view.dbname)))
	{
		state->next_start = TimestampTzPlusMilliseconds(now, EXTENSION_RECHECK_MS);
		state->awaiting_install = false;
	}
	return EXTENSION_RECHECK_MS;
}

/*
 * Look at one destination slot: start its worker when its database's main
 * worker wants one and none runs, with the same restart delays.  Returns
 * the milliseconds until it next needs attention.
 */
static long
tend_destination_slot(int i, TimestampTz now)
{
	LauncherSlotState *state = &destination_states[i];
	OutboxDestinationView view;

	outbox_shmem_view_destination(i, &view);
	if (state->handle != NULL)
	{
		if (worker_running(state))
			return EXTENSION_RECHECK_MS;	/* running: the exit wakes us */
		schedule_restart(state, now, false);
	}
	if (!view.in_use)
	{
		/* a free slot starts afresh for the next destination */
		memset(state, 0, sizeof(LauncherSlotState));
		return EXTENSION_RECHECK_MS;
	}
	if (view.pid != 0)
		return EXTENSION_RECHECK_MS;	/* started by a previous launcher */
	if (view.paused_until > now)
		return Max(1, (long) ((view.paused_until - now) / 1000));
	if (state->next_start > now)
		return Max(1, (long) ((state->next_start - now) / 1000));
	if (!start_worker(state, i, "outbox_destination_worker_main",
					  "outbox destination worker",
					  psprintf("destination %s of database %s", view.name, view.dbname)))
		state->next_start = TimestampTzPlusMilliseconds(now, EXTENSION_RECHECK_MS);
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

	outbox_shmem_attach_launcher();
	memset(launcher_slots, 0, sizeof(launcher_slots));
	memset(destination_states, 0, sizeof(destination_states));

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

		for (i = 0; i < outbox_shmem_slot_count(); i++)
			timeout_ms = Min(timeout_ms, tend_slot(i, now));
		for (i = 0; i < OUTBOX_MAX_DESTINATION_WORKERS; i++)
			timeout_ms = Min(timeout_ms, tend_destination_slot(i, now));

		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout_ms,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
