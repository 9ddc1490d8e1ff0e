/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The relay worker: one per database, it claims committed messages,
 *		hands them to the publisher and marks the outcome.
 *
 * Two kinds of worker run this loop: each database's main worker relays the
 * default destination (messages no subscription routes, by the
 * outbox.publisher settings), and one worker per destination relays the
 * messages routed to it (delivery.c), with the destination's publisher
 * and options.
 *
 * The loop, modelled on worker_spi and autoprewarm: relay a batch, go again
 * at once while batches come back full, else sleep on the latch until a
 * commit wakes it, a retry falls due, or outbox.poll_interval passes.
 * Every few seconds the main worker also returns stuck claims to pending,
 * deletes processed messages older than outbox.retention, finishes routed
 * messages a crash left unfinished, keeps the destination workers in step
 * with outbox.destination (at once when a commit changed it) and, while
 * outbox.max_backlog is set, counts the unfinished messages to correct the
 * database's backlog counter.
 *
 * Each worker reports what it does in its shared-memory slot, for
 * outbox.worker_status(): its state when it changes, and once per batch
 * the batch's outcome (published, failed attempts, the last error), after
 * the batch's marks committed; it then takes the messages the batch
 * finished off the backlog counter.
 *
 * A batch is relayed in one of two ways, each a function read top to
 * bottom:
 *	- relay_batch_in_transaction(), for a transactional publisher (notify,
 *	  function): claim, publish and mark in one transaction, so that what
 *	  the publisher did commits with the marks, or not at all;
 *	- relay_batch_detached(), for any other (http, brokers): claim in a
 *	  short transaction (FOR UPDATE SKIP LOCKED) that records the batch as
 *	  in flight in shared memory before it commits, publish with no
 *	  transaction open, mark in another short transaction, then clear the
 *	  record.  Nothing is written to claim the messages: they stay pending
 *	  in the table, and a worker that dies leaves nothing behind.
 *
 * A batch may hold several messages of one key (in id order).  The worker
 * hands them to the publisher in waves, at most one message per key in a
 * wave, and a message whose predecessor of the same key did not succeed is
 * not attempted: per-key order holds even with a publisher that delivers a
 * wave concurrently.
 *
 * An ERROR thrown by a publisher costs only the batch: the worker cleans up
 * as bgwriter does (also with no transaction open), logs it, and publishes
 * the next batch one message at a time (each in its own subtransaction
 * when transactional), so a message that always fails is pinned down and
 * retried on its own without stopping the others.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/bufmgr.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "destination.h"
#include "operations.h"
#include "outbox.h"
#include "publisher.h"
#include "shmem.h"
#include "store.h"
#include "worker.h"

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

/*
 * A publisher's retry_at is honoured up to an hour from now, or the longest
 * backoff when that is longer.
 */
#define RETRY_AT_MAX_MS			(3600 * 1000)

/* How often the main worker rereads the destinations, at least. */
#define DESTINATIONS_SYNC_MS	1000

/* Routed messages finished per maintenance step, at most. */
#define STRAGGLERS_PER_STEP		1000

/*
 * What a batch came to, counted while its results are recorded and
 * reported once they committed.
 */
typedef struct BatchOutcome
{
	int64		published;		/* messages the publisher delivered */
	int64		attempts_failed;	/* results RETRY or REJECT */
	int64		finished;		/* messages that left the backlog */
	const char *last_error;		/* of the last failed attempt, or NULL */
} BatchOutcome;

/* The database this worker relays. */
static char my_dbname[NAMEDATALEN];

/*
 * The destination a destination worker relays (NULL in the main worker,
 * which relays the default destination), and its configuration version.
 */
static OutboxDestination *destination = NULL;
static MemoryContext destination_context = NULL;
static uint32 destination_version = 0;

/* The publisher in use, and the name it was selected by. */
static const OutboxPublisher *publisher = NULL;
static char *publisher_name = NULL;
static bool publisher_ready = false;

/* Publish the next batch one message at a time, after an error. */
static bool careful_next_batch = false;

/*
 * The state this worker last reported, and whether it is failing: its last
 * batch that attempted something had every attempt fail.
 */
static OutboxWorkerState reported_state = OUTBOX_WORKER_IDLE;
static bool failing = false;

/* The requeue version of a destination worker's deliveries it has seen. */
static uint32 requeue_version = 0;

/* Memory for the worker's life, and for one batch (reset before each). */
static MemoryContext worker_context = NULL;
static MemoryContext batch_context = NULL;

/* Call the current publisher's shutdown callback when the worker exits. */
static void
shutdown_publisher(int code, Datum arg)
{
	if (publisher && publisher_ready && publisher->shutdown)
		publisher->shutdown();
	publisher_ready = false;
}

/*
 * Whether the publisher has a problem reported (it cannot publish: not
 * configured, its server unreachable); a new one becomes the status's
 * last_error.
 */
static bool
publisher_problem(void)
{
	static uint64 reported_generation = 0;
	uint64		generation;
	const char *problem = outbox_publisher_problem(publisher->name, &generation);

	if (problem != NULL && generation != reported_generation)
		outbox_shmem_status_error(problem);
	reported_generation = generation;
	return problem != NULL;
}

/* Report the worker's state in shared memory, when it changed. */
static void
report_state(OutboxWorkerState state)
{
	if (state == reported_state)
		return;
	outbox_shmem_status_set_state(state);
	reported_state = state;
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
	const char *wanted_name = destination ? destination->publisher : outbox_publisher_name;

	if (publisher_name && strcmp(publisher_name, wanted_name) == 0 &&
		publisher_ready)
		return;

	if (publisher && publisher_ready && publisher->shutdown)
		publisher->shutdown();
	publisher_ready = false;

	wanted = outbox_find_publisher(wanted_name);
	if (wanted == NULL)
	{
		/* Log once per name, not once per poll. */
		if (publisher_name == NULL || strcmp(publisher_name, wanted_name) != 0)
		{
			char	   *problem = psprintf("outbox publisher \"%s\" does not exist",
										   wanted_name);

			outbox_shmem_status_error(problem);
			pfree(problem);
			ereport(WARNING,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("outbox publisher \"%s\" does not exist", wanted_name),
					 errdetail("Known publishers: %s.", outbox_publisher_names()),
					 destination ?
					 errhint("Add the library that provides it to shared_preload_libraries.") :
					 errhint("Set outbox.publisher to a known publisher, or add the library that provides it to shared_preload_libraries.")));
		}
		publisher = NULL;
	}
	else if (!outbox_publisher_set_destination(wanted,
											   destination ? destination->name : OUTBOX_DEFAULT_DESTINATION,
											   destination ? destination->options : NULL))
	{
		/* Options it must not use (the problem is reported): not ready. */
		publisher = wanted;
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
	publisher_name = MemoryContextStrdup(TopMemoryContext, wanted_name);
	outbox_shmem_status_set_publisher(wanted_name);
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
	(void) outbox_publisher_take_reload();
	if (publisher && publisher_ready && publisher->reload &&
		strcmp(publisher_name, destination ? destination->publisher : outbox_publisher_name) == 0)
		publisher->reload();
}

/*
 * Start a transaction with a snapshot for store calls.  The caller's memory
 * context stays current (StartTransactionCommand switches to the
 * transaction's), so that what the calls return outlives the transaction.
 */
static void
begin_store_transaction(const char *activity)
{
	MemoryContext caller = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
	MemoryContextSwitchTo(caller);
}

/* Commit a transaction begun by begin_store_transaction. */
static void
end_store_transaction(void)
{
	MemoryContext caller = CurrentMemoryContext;

	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextSwitchTo(caller);
}

/*
 * Release what an ERROR may leave held when no transaction is open to be
 * aborted: LWLocks, a condition variable sleep, the wait event, buffer pins
 * and hash table scans, as bgwriter and walwriter do in their error blocks.
 * Inside a transaction, aborting it does the same.
 */
static void
release_after_error(void)
{
	LWLockReleaseAll();
	ConditionVariableCancelSleep();
	pgstat_report_wait_end();
	UnlockBuffers();
	AtEOXact_HashTables(false);
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
 * subtransaction, so the error undoes only this message's effects; any
 * other is cleaned up after the way the worker's own error block does.
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
		else
			release_after_error();
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
 * messages whose predecessor of the same key did not succeed.  Returns one
 * result per message.
 */
static OutboxPublishResult *
publish_batch(OutboxBatch *batch, bool carefully)
{
	int			n = Max(batch->nmessages, 1);
	OutboxPublishResult *results = palloc0(sizeof(OutboxPublishResult) * n);
	int		   *previous = previous_of_same_key(batch);
	bool	   *done = palloc0(sizeof(bool) * n);
	OutboxMessage *wave = palloc(sizeof(OutboxMessage) * n);
	OutboxPublishResult *wave_results = palloc(sizeof(OutboxPublishResult) * n);
	int		   *wave_index = palloc(sizeof(int) * n);
	int			remaining = batch->nmessages;

	pgstat_report_activity(STATE_RUNNING, "publishing outbox messages");
	while (remaining > 0)
	{
		int			nwave = 0;
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
			wave[nwave] = batch->messages[i];
			wave_index[nwave] = i;
			nwave++;
		}
		if (nwave == 0)
			continue;

		memset(wave_results, 0, sizeof(OutboxPublishResult) * nwave);
		if (carefully)
		{
			for (i = 0; i < nwave; i++)
				publish_one_carefully(&wave[i], &wave_results[i]);
		}
		else
			publisher->publish(wave, nwave, wave_results);

		for (i = 0; i < nwave; i++)
		{
			results[wave_index[i]] = wave_results[i];
			done[wave_index[i]] = true;
		}
		remaining -= nwave;
	}
	return results;
}

/*
 * Record the publisher's results in the store (the messages' marks for the
 * default destination, delivery.c's for a destination), with retry_at
 * capped.
 */
static void
record_results(OutboxBatch *batch, OutboxPublishResult *results, BatchOutcome *outcome)
{
	pg_uuid_t  *ok = palloc(sizeof(pg_uuid_t) * Max(batch->nmessages, 1));
	TimestampTz latest_retry = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														   Max((int64) RETRY_AT_MAX_MS,
															   (int64) outbox_retry_backoff_max));
	int			nok = 0;
	int			i;

	for (i = 0; i < batch->nmessages; i++)
	{
		results[i].retry_at = Min(results[i].retry_at, latest_retry);
		if (results[i].status == OUTBOX_PUBLISH_OK)
			outcome->published++;
		else if (results[i].status == OUTBOX_PUBLISH_RETRY ||
				 results[i].status == OUTBOX_PUBLISH_REJECT)
		{
			outcome->attempts_failed++;
			outcome->last_error = results[i].error ? results[i].error : "publish failed";
		}
	}
	if (destination)
	{
		/* its messages leave the backlog when they are finished */
		outbox_delivery_record(destination, batch, results);
		return;
	}

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
				{
					const char *status;

					status = outbox_store_mark_failed(&m->id,
													  results[i].error ? results[i].error : "publish failed",
													  results[i].status == OUTBOX_PUBLISH_REJECT,
													  results[i].retry_at);
					if (status != NULL && strcmp(status, "failed") == 0)
						outcome->finished++;
				}
				break;
		}
	}
	outcome->finished += outbox_store_mark_processed(ok, nok);
}

/*
 * After a batch's results committed: report its outcome, take what it
 * finished off the backlog counter, and tell whether the worker is failing
 * now (only a batch that attempted something changes that).
 */
static void
report_batch(OutboxBatch *batch, BatchOutcome *outcome)
{
	if (batch->nmessages == 0)
		return;
	outbox_shmem_status_batch((uint64) outcome->published, (uint64) outcome->attempts_failed,
							  outcome->last_error);
	outbox_shmem_backlog_finished(outcome->finished);
	if (outcome->published > 0)
		failing = false;
	else if (outcome->attempts_failed > 0)
		failing = true;
}

/* Claim a batch, in the current transaction, into the current context. */
static OutboxBatch *
claim_batch(void)
{
	OutboxBatch *batch;

	if (destination)
		return outbox_delivery_claim(destination, outbox_batch_size,
									 (int64) outbox_batch_max_bytes * 1024,
									 outbox_ordering == OUTBOX_ORDERING_KEY);
	batch = palloc0(sizeof(OutboxBatch));
	outbox_store_claim(outbox_batch_size, (int64) outbox_batch_max_bytes * 1024,
					   outbox_ordering == OUTBOX_ORDERING_KEY, false, batch);
	return batch;
}

/* When the next retry falls due, read in the current transaction. */
static TimestampTz
read_next_due(void)
{
	if (destination)
		return outbox_delivery_next_due(destination);
	return outbox_store_next_due();
}

/*
 * After a destination's batch committed: finish the routed messages that
 * every destination has passed now, in a transaction of its own.
 */
static void
finish_routed_messages(OutboxBatch *batch)
{
	int			finished;

	if (destination == NULL || batch->nmessages == 0)
		return;
	begin_store_transaction("finishing outbox messages");
	finished = outbox_delivery_finalize(batch);
	end_store_transaction();
	outbox_shmem_backlog_finished(finished);
}

/*
 * Whether more messages are probably due at once: the batch was cut by its
 * size or byte limit, and the publisher attempted something (one that is
 * not configured yet makes no progress, and must not be called in a loop).
 */
static bool
batch_was_full(OutboxBatch *batch, OutboxPublishResult *results)
{
	int			i;

	if (batch->nmessages + batch->ndiverted < outbox_batch_size && !batch->bytes_reached)
		return false;
	for (i = 0; i < batch->nmessages; i++)
	{
		if (results[i].status != OUTBOX_PUBLISH_SKIPPED)
			return true;
	}
	return false;
}

/*
 * Relay one batch with a transactional publisher: claim, publish and mark
 * in one transaction.  Returns whether more are probably due at once;
 * otherwise sets *next_due to the earliest retry still to come (0: none),
 * read after the marks, which may have just scheduled one.
 */
static bool
relay_batch_in_transaction(bool carefully, TimestampTz *next_due)
{
	OutboxBatch *batch;
	BatchOutcome outcome = {0};
	bool		more = false;

	begin_store_transaction("relaying outbox messages");
	batch = claim_batch();
	if (batch->nmessages > 0 || batch->ndiverted > 0 || batch->advance)
	{
		OutboxPublishResult *results;

		if (batch->nmessages > 0)
			report_state(failing ? OUTBOX_WORKER_FAILING : OUTBOX_WORKER_PUBLISHING);
		results = publish_batch(batch, carefully);
		record_results(batch, results, &outcome);
		more = batch_was_full(batch, results);
	}
	if (!more)
		*next_due = read_next_due();
	end_store_transaction();
	report_batch(batch, &outcome);
	finish_routed_messages(batch);
	return more;
}

/*
 * Relay one batch with a publisher that is not transactional: claim in a
 * short transaction that records the batch in flight before it commits,
 * publish with no transaction open, mark in another short transaction, and
 * only then let the batch's messages be claimed again.  Returns like
 * relay_batch_in_transaction().
 */
static bool
relay_batch_detached(bool carefully, TimestampTz *next_due)
{
	OutboxBatch *batch;
	OutboxPublishResult *results;
	BatchOutcome outcome = {0};
	bool		more;

	begin_store_transaction("claiming outbox messages");
	batch = claim_batch();
	if (batch->nmessages == 0 && batch->ndiverted == 0 && !batch->advance)
	{
		*next_due = read_next_due();
		end_store_transaction();
		return false;
	}
	/* A destination's messages are its worker's alone: no record needed. */
	if (destination == NULL)
		outbox_shmem_set_inflight(&batch->messages[0].id,
								  &batch->messages[batch->nmessages - 1].id);
	end_store_transaction();

	if (batch->nmessages > 0)
		report_state(failing ? OUTBOX_WORKER_FAILING : OUTBOX_WORKER_PUBLISHING);
	results = publish_batch(batch, carefully);

	begin_store_transaction("marking outbox messages");
	record_results(batch, results, &outcome);
	more = batch_was_full(batch, results);
	if (!more)
		*next_due = read_next_due();
	end_store_transaction();
	if (destination == NULL)
		outbox_shmem_clear_inflight();
	report_batch(batch, &outcome);
	finish_routed_messages(batch);
	return more;
}

/* Relay one batch, in the batch's memory context. */
static bool
relay_batch(TimestampTz *next_due)
{
	bool		carefully = careful_next_batch;
	bool		more;
	MemoryContext old;

	careful_next_batch = false;
	MemoryContextReset(batch_context);
	old = MemoryContextSwitchTo(batch_context);
	if (publisher->in_transaction)
		more = relay_batch_in_transaction(carefully, next_due);
	else
		more = relay_batch_detached(carefully, next_due);
	MemoryContextSwitchTo(old);
	return more;
}

/* Return stuck claims to pending. */
static void
recover_stuck_claims(void)
{
	begin_store_transaction("recovering stuck outbox messages");
	if (outbox_store_recover_stuck() + outbox_delivery_recover_stuck() > 0)
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
	if (purged < PURGE_BATCH_ROWS)
		outbox_delivery_purge();
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
 * until it is installed; the launcher checks again later, or at once when
 * a commit saves messages.
 */
static void
exit_if_extension_missing(void)
{
	if (extension_installed())
	{
		if (destination == NULL)
			(void) outbox_shmem_note_extension_missing(false);
		return;
	}
	if (destination != NULL)
		proc_exit(0);			/* the main worker reports it */
	if (!outbox_shmem_note_extension_missing(true))
		ereport(LOG,
				(errmsg("outbox worker: extension \"outbox\" is not installed in database \"%s\"",
						my_dbname),
				 errhint("Run CREATE EXTENSION outbox in that database; the worker checks again every few seconds.")));
	proc_exit(0);
}

/*
 * After an unexpected error: report it, release what it left held (with
 * or without a transaction to abort), give the batch in flight back (its
 * messages are still pending: a claim wrote nothing), and publish the next
 * batch carefully.
 */
static void
recover_from_error(void)
{
	error_context_stack = NULL;
	HOLD_INTERRUPTS();
	EmitErrorReport();
	release_after_error();
	AbortCurrentTransaction();
	MemoryContextSwitchTo(worker_context);
	{
		ErrorData  *error = CopyErrorData();

		outbox_shmem_status_error(error->message ? error->message : "unknown error");
		FreeErrorData(error);
	}
	FlushErrorState();
	RESUME_INTERRUPTS();
	report_state(OUTBOX_WORKER_BACKOFF);

	pgstat_report_activity(STATE_IDLE, NULL);
	if (destination == NULL)
		outbox_shmem_clear_inflight();
	careful_next_batch = true;
	exit_if_extension_missing();
}

/*
 * How long to sleep: the poll interval, or less when a retry or the next
 * purge falls due sooner; after an error, the error backoff.
 */
static long
sleep_time(TimestampTz next_due, TimestampTz next_purge, int error_backoff_ms)
{
	TimestampTz now = GetCurrentTimestamp();
	long		timeout_ms = outbox_poll_interval;

	if (error_backoff_ms > 0)
		return error_backoff_ms;
	if (next_due > now)
		timeout_ms = Min(timeout_ms, (long) ((next_due - now) / 1000) + 1);
	if (next_purge > now)
		timeout_ms = Min(timeout_ms, (long) ((next_purge - now) / 1000) + 1);
	return timeout_ms;
}

/*
 * Main worker: keep the destination workers in step with
 * outbox.destination (a worker for each destination that is neither
 * external, paused nor disabled, told when its configuration changed).
 */
static void
sync_destination_workers(void)
{
	static bool reported = false;
	int32	   *ids;
	char	  **names;
	uint32	   *hashes;
	int			n;
	int			missing;

	begin_store_transaction("reading outbox destinations");
	n = outbox_delivery_list_workers(&ids, &names, &hashes);
	end_store_transaction();
	missing = outbox_shmem_sync_destinations(ids, names, hashes, n);
	if (missing > 0 && !reported)
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("outbox: %d destinations of database \"%s\" get no worker",
						missing, my_dbname),
				 errdetail("At most %d destination workers run on a server.",
						   OUTBOX_MAX_DESTINATION_WORKERS)));
	reported = missing > 0;
}

/* Main worker: finish routed messages a crash or a drop left unfinished. */
static void
finish_stragglers(void)
{
	int			finished;

	begin_store_transaction("finishing outbox messages");
	finished = outbox_delivery_finalize_stragglers(STRAGGLERS_PER_STEP);
	end_store_transaction();
	outbox_shmem_backlog_finished(finished);
}

/*
 * Destination worker: exit when the main worker no longer wants this
 * worker (the destination was dropped, paused or disabled), and reread the
 * destination when its configuration changed.
 */
static void
check_destination(void)
{
	uint32		version;
	uint32		requeued = outbox_shmem_requeue_version();

	if (!outbox_shmem_destination_wanted(&version))
		proc_exit(0);
	/* Requeued deliveries: reading the destination again recounts them. */
	if (version == destination_version && requeued == requeue_version)
		return;
	requeue_version = requeued;
	MemoryContextReset(destination_context);
	begin_store_transaction("reading outbox destination");
	if (!outbox_delivery_load(destination->id, destination_context, destination))
		proc_exit(0);
	end_store_transaction();
	if (destination->paused || destination->disabled)
		proc_exit(0);
	if (publisher && publisher_ready)
	{
		/* the options were read again: the publisher must use the new copy */
		if (!outbox_publisher_set_destination(publisher, destination->name, destination->options))
		{
			/* Options it must not use: stop it until they are fixed. */
			publisher_ready = false;
			if (publisher->shutdown)
				publisher->shutdown();
		}
		else if (publisher->reload && version != destination_version)
			publisher->reload();
	}
	destination_version = version;
}

/*
 * Main worker: count the unfinished messages and correct the backlog
 * counter by the difference to what it said before the count's snapshot
 * (so that commits and batches during the count are not lost).
 */
static void
count_backlog(void)
{
	int64		before = outbox_shmem_backlog_read();
	int64		unfinished;

	begin_store_transaction("counting outbox messages");
	unfinished = outbox_count_unfinished();
	end_store_transaction();
	outbox_shmem_backlog_correct(unfinished - before);
}

/*
 * The loop both kinds of worker run; the main worker also does the
 * maintenance.
 */
static void
relay_loop(void)
{
	volatile TimestampTz last_recovery = 0;
	volatile TimestampTz next_purge = 0;
	volatile TimestampTz last_sync = 0;
	volatile uint32 synced_version = 0;
	volatile int error_backoff_ms = 0;
	volatile TimestampTz last_backlog_count = 0;
	volatile bool backlog_counted = false;

	for (;;)
	{
		volatile bool more = false;
		volatile TimestampTz next_retry = 0;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending || outbox_publisher_take_reload())
			reload_settings();

		PG_TRY();
		{
			TimestampTz now = GetCurrentTimestamp();

			if (destination != NULL)
				check_destination();
			else
			{
				uint32		version = outbox_shmem_destinations_version();

				/* Reschedule first: a failing step must not starve publishing. */
				if (TimestampDifferenceExceeds(last_recovery, now, MAINTENANCE_INTERVAL_MS))
				{
					last_recovery = now;
					recover_stuck_claims();
					finish_stragglers();
				}
				if (now >= next_purge)
				{
					next_purge = TimestampTzPlusMilliseconds(now, MAINTENANCE_INTERVAL_MS);
					if (purge_processed())
						next_purge = TimestampTzPlusMilliseconds(now, PURGE_AGAIN_MS);
				}
				if (version != synced_version ||
					TimestampDifferenceExceeds(last_sync, now, DESTINATIONS_SYNC_MS))
				{
					synced_version = version;
					last_sync = now;
					sync_destination_workers();
				}
				if (outbox_max_backlog > 0 &&
					(!backlog_counted ||
					 TimestampDifferenceExceeds(last_backlog_count, now, MAINTENANCE_INTERVAL_MS)))
				{
					last_backlog_count = now;
					count_backlog();
					backlog_counted = true;
				}
				else if (outbox_max_backlog == 0 && backlog_counted)
				{
					outbox_shmem_backlog_forget();
					backlog_counted = false;
				}
			}
			if (!outbox_enabled)
				report_state(OUTBOX_WORKER_PAUSED);
			else
			{
				select_publisher();
				if (publisher && publisher_ready)
				{
					TimestampTz due = 0;

					more = relay_batch(&due);
					next_retry = due;
					report_state(failing || publisher_problem() ? OUTBOX_WORKER_FAILING :
								 more ? OUTBOX_WORKER_PUBLISHING : OUTBOX_WORKER_IDLE);
				}
				else
				{
					/* A publisher refusing its destination's options says why. */
					if (publisher)
						(void) publisher_problem();
					report_state(OUTBOX_WORKER_FAILING);
				}
			}
			error_backoff_ms = 0;
		}
		PG_CATCH();
		{
			recover_from_error();
			error_backoff_ms = Min(Max(error_backoff_ms * 2, 100), MAX_ERROR_BACKOFF_MS);
		}
		PG_END_TRY();

		/* A commit's wake-up that went to the publisher's wait: keep it. */
		if (outbox_publisher_take_wakeup())
			SetLatch(MyLatch);
		if (more && error_backoff_ms == 0)
			continue;

		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 sleep_time(next_retry,
									destination == NULL ? next_purge : 0,
									error_backoff_ms),
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* Set up what both kinds of worker need once connected. */
static void
start_worker_common(void)
{
	pgstat_report_appname(destination ? "outbox destination worker" : "outbox worker");
	before_shmem_exit(shutdown_publisher, (Datum) 0);

	/*
	 * Marks are safe to lose in a crash: the message is published again
	 * (at-least-once), never lost.  So the worker does not wait for WAL
	 * flushes.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_USERSET, PGC_S_OVERRIDE);

	/*
	 * The worker's role is usually a superuser, and the database owner
	 * chooses the database's search_path (ALTER DATABASE ... SET): an
	 * operator or function planted in a schema on it would run with the
	 * worker's privileges.  So the whole session resolves names in
	 * pg_catalog only, whatever the database or role settings say
	 * (PGC_S_SESSION outranks both, and a function's own SET search_path
	 * still applies to its body).  The store pins it again for every
	 * statement, as it does for SQL callers.
	 */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION);

	worker_context = AllocSetContextCreate(TopMemoryContext, "outbox worker",
										   ALLOCSET_DEFAULT_SIZES);
	batch_context = AllocSetContextCreate(worker_context, "outbox batch",
										  ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(worker_context);
}

/* Entry point of a database's main worker; main_arg is its slot number. */
void
outbox_worker_main(Datum main_arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* One worker per database: a second one exits here. */
	outbox_shmem_attach_worker(DatumGetInt32(main_arg), my_dbname);

	BackgroundWorkerInitializeConnection(my_dbname,
										 outbox_role[0] ? outbox_role : NULL, 0);
	outbox_shmem_worker_connected();
	start_worker_common();
	exit_if_extension_missing();

	ereport(LOG,
			(errmsg("outbox worker started for database \"%s\"", my_dbname)));
	relay_loop();
}

/*
 * Entry point of a destination's worker; main_arg is its destination
 * slot.  It exits when its destination is gone, paused or disabled.
 */
void
outbox_destination_worker_main(Datum main_arg)
{
	char		name[NAMEDATALEN];
	int32		destination_id;
	bool		found;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* One worker per destination: a second one exits here. */
	outbox_shmem_attach_destination_worker(DatumGetInt32(main_arg), my_dbname,
										   &destination_id, name);

	BackgroundWorkerInitializeConnection(my_dbname,
										 outbox_role[0] ? outbox_role : NULL, 0);
	destination_context = AllocSetContextCreate(TopMemoryContext, "outbox destination",
												ALLOCSET_SMALL_SIZES);
	destination = MemoryContextAllocZero(TopMemoryContext, sizeof(OutboxDestination));
	destination->id = destination_id;
	start_worker_common();

	begin_store_transaction("reading outbox destination");
	found = outbox_delivery_load(destination_id, destination_context, destination);
	end_store_transaction();
	if (!found || destination->paused || destination->disabled)
		proc_exit(0);
	(void) outbox_shmem_destination_wanted(&destination_version);
	requeue_version = outbox_shmem_requeue_version();
	failing = destination->failing_since != 0;

	ereport(LOG,
			(errmsg("outbox worker started for destination \"%s\" of database \"%s\"",
					name, my_dbname)));
	relay_loop();
}
