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
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "extension/outbox/outbox_publisher.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static int	fail_attempts = 2;
static char *reject_topic = NULL;
static int	delay_ms = 0;

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

/* One result per message: reject, fail on purpose, or deliver. */
static void
flaky_publish(OutboxMessage *messages, int nmessages, OutboxPublishResult *results)
{
	int			i;

	for (i = 0; i < nmessages; i++)
	{
		const OutboxMessage *m = &messages[i];
		int			attempt = m->retries + 1;

		if (delay_ms > 0)
			flaky_wait();

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
	MarkGUCPrefixReserved("outbox_flaky");

	/* outbox must be loaded first: it provides OutboxRegisterPublisher. */
	OutboxRegisterPublisher(&flaky_publisher);
}
