/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The relay worker: one per database, it claims committed messages,
 *		hands them to the publisher and marks the outcome.
 *
 * The loop, modelled on worker_spi and autoprewarm:
 *	- claim a batch in a short transaction (FOR UPDATE SKIP LOCKED);
 *	- publish it with no transaction open, or, for a transactional
 *	  publisher such as NOTIFY, inside the claiming transaction;
 *	- mark each message processed or failed in a short transaction.
 *	  Meanwhile the batch's messages stay pending in the table: the worker
 *	  records the batch as in flight in its shared-memory slot before the
 *	  claim commits, which keeps outbox.fetch_pending off them, and clears
 *	  it once they are marked.  Nothing is written to claim them, and a
 *	  worker that dies leaves nothing behind to recover;
 *	- go again at once while batches come back full, else sleep on the
 *	  latch until a commit wakes it, a retry falls due, or
 *	  outbox.poll_interval passes.
 * Every few seconds it also returns stuck claims to pending and deletes
 * processed messages older than outbox.retention.
 *
 * A batch may hold several messages of one key (in id order).  The worker
 * hands them to the publisher in waves, at most one message per key in a
 * wave, and a message whose predecessor of the same key did not succeed is
 * not attempted: per-key order holds even with a publisher that delivers a
 * wave concurrently.
 *
 * An ERROR thrown by a publisher costs only the batch: the worker logs it,
 * and publishes the next batch one message at a time (each in its own
 * subtransaction when transactional), so a message that always fails is
 * pinned down and retried on its own without stopping the others.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "outbox.h"

/* How often stuck claims are recovered and old messages purged. */
#define MAINTENANCE_INTERVAL_MS	5000

/*
 * Rows deleted per retention transaction, and the pause before the next
 * one while more are due: purging goes in small steps between batches, so
 * it never holds up publishing for long.
 */
#define PURGE_BATCH_ROWS		2000
#define PURGE_AGAIN_MS			50

/* Longest pause after an unexpected error. */
#define MAX_ERROR_BACKOFF_MS	30000

/* This worker's slot in shared memory. */
static OutboxWorkerSlot *my_slot = NULL;

/* The publisher in use, and the name it was selected by. */
static const OutboxPublisher *publisher = NULL;
static char *publisher_name = NULL;
static bool publisher_ready = false;

/* Publish the next batch one message at a time, after an error. */
static bool careful_next_batch = false;

/* Whether the latch was set (and reset) while a publisher waited. */
static bool woken_while_publishing = false;

/* The configuration was reloaded while a publisher waited. */
static bool publisher_reload_pending = false;

/* Memory for one batch, reset before each. */
static MemoryContext batch_context = NULL;

/*
 * Record the batch about to be published as in flight in this worker's
 * slot.  Called before the claiming transaction commits, so that whoever
 * locks one of these rows after the commit finds it recorded.
 */
static void
set_inflight(const OutboxBatch *batch)
{
	SpinLockAcquire(&OutboxShared->mutex);
	my_slot->inflight = true;
	my_slot->inflight_first = batch->messages[0].id;
	my_slot->inflight_last = batch->messages[batch->nmessages - 1].id;
	SpinLockRelease(&OutboxShared->mutex);
}

/*
 * The batch in flight is marked, or given up after an error: its messages
 * may be claimed again.
 */
static void
clear_inflight(void)
{
	SpinLockAcquire(&OutboxShared->mutex);
	my_slot->inflight = false;
	SpinLockRelease(&OutboxShared->mutex);
}

/* Clear this worker's slot when it exits, however it exits. */
static void
detach_slot(int code, Datum arg)
{
	SpinLockAcquire(&OutboxShared->mutex);
	if (my_slot->pid == MyProcPid)
	{
		my_slot->pid = 0;
		my_slot->latch = NULL;
		my_slot->inflight = false;
	}
	SpinLockRelease(&OutboxShared->mutex);
	outbox_wake_launcher();
}

/* Call the current publisher's shutdown callback when the worker exits. */
static void
shutdown_publisher(int code, Datum arg)
{
	if (publisher && publisher_ready && publisher->shutdown)
		publisher->shutdown();
	publisher_ready = false;
}

/*
 * Select the publisher named by outbox.publisher, shutting down the old one
 * if the name changed, and initialize it.  An unknown name or a failing
 * init() is logged; messages then wait until a reload fixes it.
 */
static void
select_publisher(void)
{
	const OutboxPublisher *wanted;

	if (publisher_name && strcmp(publisher_name, outbox_publisher_name) == 0 &&
		publisher_ready)
		return;

	if (publisher && publisher_ready && publisher->shutdown)
		publisher->shutdown();
	publisher_ready = false;

	wanted = outbox_find_publisher(outbox_publisher_name);
	if (wanted == NULL)
	{
		/* Log once per name, not once per poll. */
		if (publisher_name == NULL || strcmp(publisher_name, outbox_publisher_name) != 0)
			ereport(WARNING,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("outbox publisher \"%s\" does not exist", outbox_publisher_name),
					 errdetail("Known publishers: %s.", outbox_publisher_names()),
					 errhint("Set outbox.publisher to a known publisher, or add the library that provides it to shared_preload_libraries.")));
		publisher = NULL;
	}
	else
	{
		publisher = wanted;
		if (publisher->init)
		{
			if (publisher->in_transaction)
				StartTransactionCommand();
			publisher->init();
			if (publisher->in_transaction)
				CommitTransactionCommand();
		}
		publisher_ready = true;
	}

	if (publisher_name)
		pfree(publisher_name);
	publisher_name = MemoryContextStrdup(TopMemoryContext, outbox_publisher_name);
}

/*
 * Apply a configuration reload: read the files, then tell the publisher.  A
 * reload that came while a batch was being published (read by
 * OutboxPublisherWait, so that the worker answers SIGHUP within one wait
 * slice) is passed on to the publisher here, between batches.
 */
static void
reload_settings(void)
{
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
	publisher_reload_pending = false;
	if (publisher && publisher_ready && publisher->reload &&
		strcmp(publisher_name, outbox_publisher_name) == 0)
		publisher->reload();
}

/*
 * For each message, the index of the previous message of the same key in
 * the batch, or -1; with ordering "none", always -1.
 */
static int *
previous_of_same_key(OutboxBatch *batch)
{
	int		   *previous = palloc(sizeof(int) * Max(batch->nmessages, 1));
	int			i,
				j;

	for (i = 0; i < batch->nmessages; i++)
	{
		previous[i] = -1;
		if (outbox_ordering != OUTBOX_ORDERING_KEY ||
			batch->messages[i].key[0] == '\0')
			continue;
		/* Batches hold few runs of one key: look back to the nearest. */
		for (j = i - 1; j >= 0; j--)
		{
			if (strcmp(batch->messages[j].key, batch->messages[i].key) == 0)
			{
				previous[i] = j;
				break;
			}
		}
	}
	return previous;
}

/*
 * Publish one message on its own, turning an ERROR into a failed attempt
 * with the error's message.  A transactional publisher runs in a
 * subtransaction, so the error undoes only this message's effects.
 */
static void
publish_one_carefully(OutboxMessage *message, OutboxPublishResult *result)
{
	MemoryContext context = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	if (publisher->in_transaction)
	{
		BeginInternalSubTransaction(NULL);
		/* Results must outlive the subtransaction. */
		MemoryContextSwitchTo(context);
	}
	PG_TRY();
	{
		publisher->publish(message, 1, result);
		if (publisher->in_transaction)
			ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *error;

		MemoryContextSwitchTo(context);
		error = CopyErrorData();
		FlushErrorState();
		if (publisher->in_transaction)
			RollbackAndReleaseCurrentSubTransaction();
		result->status = OUTBOX_PUBLISH_RETRY;
		result->error = pstrdup(error->message);
		FreeErrorData(error);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(context);
	CurrentResourceOwner = owner;
}

/*
 * Publish a batch in waves with at most one message per key each, skipping
 * messages whose predecessor of the same key did not succeed.
 */
static void
publish_batch(OutboxBatch *batch, OutboxPublishResult *results, bool carefully)
{
	int		   *previous = previous_of_same_key(batch);
	bool	   *done = palloc0(sizeof(bool) * Max(batch->nmessages, 1));
	OutboxMessage *wave = palloc(sizeof(OutboxMessage) * Max(batch->nmessages, 1));
	OutboxPublishResult *wave_results = palloc(sizeof(OutboxPublishResult) * Max(batch->nmessages, 1));
	int		   *wave_index = palloc(sizeof(int) * Max(batch->nmessages, 1));
	int			remaining = batch->nmessages;

	while (remaining > 0)
	{
		int			n = 0;
		int			i;

		/* A message joins the wave once its predecessor is done. */
		for (i = 0; i < batch->nmessages; i++)
		{
			if (done[i])
				continue;
			if (previous[i] >= 0 && !done[previous[i]])
				continue;
			if (previous[i] >= 0 && results[previous[i]].status != OUTBOX_PUBLISH_OK)
			{
				results[i].status = OUTBOX_PUBLISH_SKIPPED;
				done[i] = true;
				remaining--;
				continue;
			}
			wave[n] = batch->messages[i];
			wave_index[n] = i;
			n++;
		}
		if (n == 0)
			continue;

		memset(wave_results, 0, sizeof(OutboxPublishResult) * n);
		if (carefully)
		{
			for (i = 0; i < n; i++)
				publish_one_carefully(&wave[i], &wave_results[i]);
		}
		else
			publisher->publish(wave, n, wave_results);

		for (i = 0; i < n; i++)
		{
			results[wave_index[i]] = wave_results[i];
			done[wave_index[i]] = true;
		}
		remaining -= n;
	}
}

/* Record the publisher's results in the store. */
static void
record_results(OutboxBatch *batch, OutboxPublishResult *results)
{
	pg_uuid_t  *ok = palloc(sizeof(pg_uuid_t) * Max(batch->nmessages, 1));
	int			nok = 0;
	int			i;

	for (i = 0; i < batch->nmessages; i++)
	{
		OutboxMessage *m = &batch->messages[i];

		switch (results[i].status)
		{
			case OUTBOX_PUBLISH_OK:
				ok[nok++] = m->id;
				break;
			case OUTBOX_PUBLISH_SKIPPED:
				/* Still pending: the next claim finds it again. */
				break;
			case OUTBOX_PUBLISH_RETRY:
			case OUTBOX_PUBLISH_REJECT:
				outbox_store_mark_failed(&m->id,
										 results[i].error ? results[i].error : "publish failed",
										 results[i].status == OUTBOX_PUBLISH_REJECT,
										 results[i].retry_at);
				break;
		}
	}
	outbox_store_mark_processed(ok, nok);
}

/* Start a transaction with a snapshot, for store calls. */
static void
begin_store_transaction(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

/* Commit a transaction begun by begin_store_transaction. */
static void
end_store_transaction(void)
{
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Claim, publish and mark one batch.  Returns true when the batch came back
 * full, so more messages are probably due; sets *next_due when nothing was
 * due but a delayed message will be.
 */
static bool
relay_batch(TimestampTz *next_due)
{
	OutboxBatch *batch;
	bool		carefully = careful_next_batch;
	bool		full;
	MemoryContext old;

	MemoryContextReset(batch_context);
	old = MemoryContextSwitchTo(batch_context);
	batch = palloc0(sizeof(OutboxBatch));

	begin_store_transaction("claiming outbox messages");
	/* The batch must outlive the claiming transaction. */
	MemoryContextSwitchTo(batch_context);
	outbox_store_claim(outbox_batch_size, (int64) outbox_batch_max_bytes * 1024,
					   outbox_ordering == OUTBOX_ORDERING_KEY, false, batch);
	full = (batch->ncandidates >= outbox_batch_size || batch->bytes_reached) &&
		batch->nmessages > 0;
	if (batch->ncandidates == 0)
		*next_due = outbox_store_next_due();

	if (!publisher->in_transaction)
	{
		if (batch->nmessages > 0)
			set_inflight(batch);
		end_store_transaction();
		MemoryContextSwitchTo(batch_context);
	}

	if (batch->nmessages > 0)
	{
		OutboxPublishResult *results = palloc0(sizeof(OutboxPublishResult) * batch->nmessages);

		pgstat_report_activity(STATE_RUNNING, "publishing outbox messages");
		publish_batch(batch, results, carefully);

		/*
		 * A publisher that attempted nothing (say, it is not configured yet)
		 * makes no progress: sleep before claiming the same messages again.
		 */
		if (full)
		{
			int			i;

			full = false;
			for (i = 0; i < batch->nmessages && !full; i++)
				full = results[i].status != OUTBOX_PUBLISH_SKIPPED;
		}

		if (!publisher->in_transaction)
			begin_store_transaction("marking outbox messages");
		record_results(batch, results);
		end_store_transaction();
	}
	else if (publisher->in_transaction)
		end_store_transaction();
	clear_inflight();
	careful_next_batch = false;
	MemoryContextSwitchTo(old);
	return full;
}

/* Return stuck claims to pending. */
static void
recover_stuck_claims(void)
{
	begin_store_transaction("recovering stuck outbox messages");
	if (outbox_store_recover_stuck() > 0)
		ereport(DEBUG1, (errmsg("outbox returned stuck messages to pending")));
	end_store_transaction();
}

/*
 * Delete one step of processed messages past retention; returns whether a
 * full step was deleted, so more are probably due.
 */
static bool
purge_processed(void)
{
	int			purged;

	begin_store_transaction("purging processed outbox messages");
	purged = outbox_store_purge_processed(PURGE_BATCH_ROWS);
	end_store_transaction();
	return purged == PURGE_BATCH_ROWS;
}

/* Whether the outbox extension is installed in this database. */
static bool
extension_installed(void)
{
	bool		installed;

	StartTransactionCommand();
	installed = OidIsValid(get_extension_oid("outbox", true));
	CommitTransactionCommand();
	return installed;
}

/*
 * Exit quietly when the extension is not installed here, logging it once
 * until it is installed; the launcher checks again later.
 */
static void
exit_if_extension_missing(void)
{
	bool		reported;

	if (extension_installed())
	{
		SpinLockAcquire(&OutboxShared->mutex);
		my_slot->extension_missing = false;
		SpinLockRelease(&OutboxShared->mutex);
		return;
	}

	SpinLockAcquire(&OutboxShared->mutex);
	reported = my_slot->extension_missing;
	my_slot->extension_missing = true;
	SpinLockRelease(&OutboxShared->mutex);
	if (!reported)
		ereport(LOG,
				(errmsg("outbox worker: extension \"outbox\" is not installed in database \"%s\"",
						my_slot->dbname),
				 errhint("Run CREATE EXTENSION outbox in that database; the worker checks again every few seconds.")));
	proc_exit(0);
}

/*
 * After an unexpected error: clean up the transaction, give the batch in
 * flight back (its messages are still pending: a claim wrote nothing), and
 * publish the next batch carefully.
 */
static void
recover_from_error(MemoryContext worker_context)
{
	MemoryContextSwitchTo(worker_context);
	EmitErrorReport();
	FlushErrorState();
	AbortCurrentTransaction();
	pgstat_report_activity(STATE_IDLE, NULL);
	clear_inflight();
	careful_next_batch = true;
	exit_if_extension_missing();
}

/* Entry point of a relay worker; main_arg is its slot number. */
void
outbox_worker_main(Datum main_arg)
{
	int			slot_index = DatumGetInt32(main_arg);
	char		dbname[NAMEDATALEN];
	MemoryContext worker_context;
	volatile TimestampTz last_recovery = 0;
	volatile TimestampTz next_purge = 0;
	volatile int error_backoff_ms = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	my_slot = &OutboxShared->slots[slot_index];
	SpinLockAcquire(&OutboxShared->mutex);
	strlcpy(dbname, my_slot->dbname, NAMEDATALEN);
	SpinLockRelease(&OutboxShared->mutex);

	BackgroundWorkerInitializeConnection(dbname,
										 outbox_role[0] ? outbox_role : NULL, 0);
	pgstat_report_appname("outbox worker");

	SpinLockAcquire(&OutboxShared->mutex);
	my_slot->pid = MyProcPid;
	my_slot->latch = MyLatch;
	my_slot->dboid = MyDatabaseId;
	my_slot->start_requested = false;
	SpinLockRelease(&OutboxShared->mutex);
	before_shmem_exit(detach_slot, (Datum) 0);
	before_shmem_exit(shutdown_publisher, (Datum) 0);

	/*
	 * Marks are safe to lose in a crash: the message is published again
	 * (at-least-once), never lost.  So the worker does not wait for WAL
	 * flushes.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_USERSET, PGC_S_OVERRIDE);

	exit_if_extension_missing();

	worker_context = AllocSetContextCreate(TopMemoryContext, "outbox worker",
										   ALLOCSET_DEFAULT_SIZES);
	batch_context = AllocSetContextCreate(worker_context, "outbox batch",
										  ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(worker_context);

	ereport(LOG,
			(errmsg("outbox worker started for database \"%s\"", dbname)));

	for (;;)
	{
		bool		more = false;
		TimestampTz next_due = 0;
		long		timeout_ms;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending || publisher_reload_pending)
			reload_settings();

		PG_TRY();
		{
			TimestampTz now = GetCurrentTimestamp();

			/* Reschedule first: a failing step must not starve publishing. */
			if (TimestampDifferenceExceeds(last_recovery, now, MAINTENANCE_INTERVAL_MS))
			{
				last_recovery = now;
				recover_stuck_claims();
			}
			if (now >= next_purge)
			{
				next_purge = TimestampTzPlusMilliseconds(now, MAINTENANCE_INTERVAL_MS);
				if (purge_processed())
					next_purge = TimestampTzPlusMilliseconds(now, PURGE_AGAIN_MS);
			}
			if (outbox_enabled)
			{
				select_publisher();
				if (publisher && publisher_ready)
					more = relay_batch(&next_due);
			}
			error_backoff_ms = 0;
		}
		PG_CATCH();
		{
			recover_from_error(worker_context);
			error_backoff_ms = Min(Max(error_backoff_ms * 2, 100), MAX_ERROR_BACKOFF_MS);
		}
		PG_END_TRY();

		if (woken_while_publishing)
		{
			/* A commit's wake-up went to the publisher's wait: keep it. */
			woken_while_publishing = false;
			SetLatch(MyLatch);
		}
		if (more && error_backoff_ms == 0 && !ConfigReloadPending &&
			!publisher_reload_pending)
			continue;

		timeout_ms = error_backoff_ms > 0 ? error_backoff_ms : outbox_poll_interval;
		if (error_backoff_ms == 0)
		{
			TimestampTz now = GetCurrentTimestamp();

			/* Wake for the next retry that falls due, and the next purge. */
			if (next_due > now)
				timeout_ms = Min(timeout_ms, (long) ((next_due - now) / 1000) + 1);
			if (next_purge > now)
				timeout_ms = Min(timeout_ms, (long) ((next_purge - now) / 1000) + 1);
		}

		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout_ms,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * Public API (outbox_publisher.h): wait for the latch, a socket or a
 * timeout while a publisher has requests in flight, staying responsive to
 * SIGTERM, SIGHUP and postmaster death.
 */
int
OutboxPublisherWait(pgsocket sock, int socket_events, long timeout_ms)
{
	int			events = WL_LATCH_SET | WL_EXIT_ON_PM_DEATH;
	int			rc;

	if (timeout_ms >= 0)
		events |= WL_TIMEOUT;
	if (sock != PGINVALID_SOCKET && socket_events != 0)
		events |= socket_events;

	if (sock != PGINVALID_SOCKET && socket_events != 0)
		rc = WaitLatchOrSocket(MyLatch, events, sock, timeout_ms, PG_WAIT_EXTENSION);
	else
		rc = WaitLatch(MyLatch, events, timeout_ms, PG_WAIT_EXTENSION);
	if (rc & WL_LATCH_SET)
	{
		ResetLatch(MyLatch);
		woken_while_publishing = true;
	}
	CHECK_FOR_INTERRUPTS();

	/*
	 * SIGHUP: read the configuration now, even in the middle of a long
	 * batch, so that settings such as log levels take effect at once; the
	 * publisher's own reload() waits for the end of the batch, so that it
	 * never rebuilds its transport under requests in flight.
	 */
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
		publisher_reload_pending = true;
	}
	return rc;
}
