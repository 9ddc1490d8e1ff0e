/*-------------------------------------------------------------------------
 *
 * outbox_testing.c
 *		Test-only functions that provoke what a running server rarely
 *		does on its own, for the TAP tests.  Never install it in a server
 *		that matters.
 *
 *	CREATE FUNCTION outbox_testing_start_worker(slot int) RETURNS int
 *		AS '<path>/outbox_testing.so' LANGUAGE C STRICT;
 *
 * outbox_testing_start_worker(slot) starts one more relay worker for a
 * slot, as a launcher that restarted while its predecessor's worker still
 * ran could, and returns its pid once it started (0 when it exited before).
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(outbox_testing_start_worker);

/* Start outbox_worker_main for a slot and wait until it runs. */
Datum
outbox_testing_start_worker(PG_FUNCTION_ARGS)
{
	int32		slot = PG_GETARG_INT32(0);
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	pid_t		pid = 0;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "outbox");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "outbox_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "outbox worker started by a test");
	snprintf(worker.bgw_type, BGW_MAXLEN, "outbox worker");
	worker.bgw_main_arg = Int32GetDatum(slot);
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not register a background worker")));
	if (WaitForBackgroundWorkerStartup(handle, &pid) != BGWH_STARTED)
		pid = 0;
	PG_RETURN_INT32((int32) pid);
}
