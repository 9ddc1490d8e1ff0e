/*-------------------------------------------------------------------------
 *
 * outbox_flaky.c
 *		An example outbox publisher in its own library: it fails the first
 *		attempts of every message on purpose, then "delivers" it by writing
 *		a line to the server log.
 *
 * It shows the whole publisher API (outbox_publisher.h, installed by
 * "make install" of outbox) and is what the tests use to exercise the
 * worker's retry paths:
 *
 *	shared_preload_libraries = 'outbox, outbox_flaky'	# after outbox
 *	outbox.publisher = 'flaky'
 *	outbox_flaky.fail_attempts = 2		# attempts failing per message
 *	outbox_flaky.reject_topic = ''		# messages of this topic are rejected
 *	outbox_flaky.delay = 0				# ms spent on each message
 *	outbox_flaky.error_topic = ''		# messages of this topic raise an ERROR
 *	outbox_flaky.error_holds_lock = off	# ... while holding the module's LWLock
 *
 * A delivered message is logged as
 *	outbox_flaky: delivered <id> topic=<topic> key=<key> attempt=<n>
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "extension/outbox/outbox_publisher.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static int	fail_attempts = 2;
static char *reject_topic = NULL;
static int	delay_ms = 0;
static char *error_topic = NULL;
static bool error_holds_lock = false;

/*
 * A lock the publisher takes around each message (as a plug-in keeping
 * shared statistics would); an ERROR raised while holding it must not leave
 * it held, or the next message waits for it forever.
 */
static LWLock *message_lock = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;

/*
 * Saving a message checks its topic in the saving backend: this publisher
 * refuses topics with spaces (to show the hook; the reason becomes the
 * errdetail of outbox.save()'s ERROR).
 */
static char *
flaky_check_topic(const char *topic)
{
	if (strchr(topic, ' ') != NULL)
		return pstrdup("The flaky publisher does not accept spaces in topics.");
	return NULL;
}

/*
 * Spend delay_ms on a message.  A publisher that is not transactional must
 * never block for long without OutboxPublisherWait(), which keeps the
 * worker responsive to SIGTERM, reloads and postmaster death.
 */
static void
flaky_wait(void)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay_ms);

	for (;;)
	{
		long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);

		if (left <= 0)
			break;
		(void) OutboxPublisherWait(PGINVALID_SOCKET, 0, left);
	}
}

/* Ask for the module's LWLock. */
static void
flaky_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestNamedLWLockTranche("outbox_flaky", 1);
}

/*
 * One result per message: raise an error, reject, fail on purpose, or
 * deliver.
 */
static void
flaky_publish(OutboxMessage *messages, int nmessages, OutboxPublishResult *results)
{
	int			i;

	if (error_holds_lock && message_lock == NULL)
		message_lock = &(GetNamedLWLockTranche("outbox_flaky"))->lock;

	for (i = 0; i < nmessages; i++)
	{
		const OutboxMessage *m = &messages[i];
		int			attempt = m->retries + 1;

		if (error_holds_lock)
			LWLockAcquire(message_lock, LW_EXCLUSIVE);
		if (delay_ms > 0)
			flaky_wait();

		if (error_topic[0] != '\0' && strcmp(m->topic, error_topic) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("outbox_flaky raises an error for message %s on purpose",
							m->id_text)));

		if (reject_topic[0] != '\0' && strcmp(m->topic, reject_topic) == 0)
		{
			/* Can never succeed: failed at once, no retries. */
			results[i].status = OUTBOX_PUBLISH_REJECT;
			results[i].error = psprintf("outbox_flaky rejects topic \"%s\"", m->topic);
		}
		else if (m->retries < fail_attempts)
		{
			/* A failed attempt: retried after the worker's backoff. */
			results[i].status = OUTBOX_PUBLISH_RETRY;
			results[i].error = psprintf("outbox_flaky: attempt %d of %d fails on purpose",
										attempt, fail_attempts);
		}
		else
		{
			elog(LOG, "outbox_flaky: delivered %s topic=%s key=%s attempt=%d",
				 m->id_text, m->topic, m->key, attempt);
			results[i].status = OUTBOX_PUBLISH_OK;
		}
		if (error_holds_lock)
			LWLockRelease(message_lock);
	}
}

/* The struct lives as long as the process: a static constant. */
static const OutboxPublisher flaky_publisher = {
	.api_version = OUTBOX_PUBLISHER_API_VERSION,
	.name = "flaky",
	.in_transaction = false,	/* called with no transaction open */
	.check_topic = flaky_check_topic,
	.init = NULL,				/* optional callbacks may be NULL */
	.publish = flaky_publish,
	.reload = NULL,				/* settings are read at each publish */
	.shutdown = NULL,
};

void
_PG_init(void)
{
	DefineCustomIntVariable("outbox_flaky.fail_attempts",
							"Attempts of each message that fail on purpose.",
							NULL,
							&fail_attempts,
							2, 0, 1000000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
	DefineCustomStringVariable("outbox_flaky.reject_topic",
							   "Topic whose messages are rejected.",
							   NULL,
							   &reject_topic,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("outbox_flaky.delay",
							"Time spent on each message.",
							NULL,
							&delay_ms,
							0, 0, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomStringVariable("outbox_flaky.error_topic",
							   "Topic whose messages make publish() raise an ERROR.",
							   NULL,
							   &error_topic,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);
	DefineCustomBoolVariable("outbox_flaky.error_holds_lock",
							 "Whether publish() holds the module's LWLock around each message.",
							 NULL,
							 &error_holds_lock,
							 false,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);
	MarkGUCPrefixReserved("outbox_flaky");

	if (process_shared_preload_libraries_in_progress)
	{
		prev_shmem_request_hook = shmem_request_hook;
		shmem_request_hook = flaky_shmem_request;
	}

	/* outbox must be loaded first: it provides OutboxRegisterPublisher. */
	OutboxRegisterPublisher(&flaky_publisher);
}
