/*-------------------------------------------------------------------------
 *
 * notify.c
 *		The "notify" publisher: one NOTIFY per message, sent by PostgreSQL
 *		when the transaction that marks the message processed commits.
 *
 * The channel is outbox.notify_channel when set, else the message's topic.
 * The payload is the message's JSON envelope.  NOTIFY limits channels to
 * 63 bytes and payloads to 7999 bytes: a message over either limit can
 * never be delivered, so it is rejected (marked failed at once) with the
 * reason, instead of being retried.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/async.h"

#include "outbox.h"

/* NOTIFY's limit on payloads (commands/async.c), including the NUL. */
#define NOTIFY_MAX_PAYLOAD 8000

/* Why a topic cannot be a channel name, or NULL when it can. */
static char *
notify_check_topic(const char *topic)
{
	if (outbox_notify_channel[0] != '\0')
		return NULL;
	if (strlen(topic) >= NAMEDATALEN)
		return psprintf("The notify publisher uses the topic as channel name, and channel names are limited to %d bytes; set outbox.notify_channel to publish longer topics.",
						NAMEDATALEN - 1);
	return NULL;
}

/* Queue one notification per message; they are sent at commit. */
static void
notify_publish(OutboxMessage *messages, int nmessages, OutboxPublishResult *results)
{
	int			i;

	for (i = 0; i < nmessages; i++)
	{
		const OutboxMessage *m = &messages[i];
		const char *channel = outbox_notify_channel[0] ? outbox_notify_channel : m->topic;
		char	   *problem = notify_check_topic(m->topic);
		char	   *envelope;

		if (problem)
		{
			results[i].status = OUTBOX_PUBLISH_REJECT;
			results[i].error = psprintf("channel name \"%s\" is too long for NOTIFY", channel);
			continue;
		}
		/* The envelope is longer than the payload: spare building it. */
		if (m->payload_len >= NOTIFY_MAX_PAYLOAD)
		{
			results[i].status = OUTBOX_PUBLISH_REJECT;
			results[i].error = psprintf("notification payload of over %d bytes exceeds NOTIFY's limit of %d bytes",
										m->payload_len, NOTIFY_MAX_PAYLOAD - 1);
			continue;
		}
		envelope = outbox_message_envelope(m);
		if (strlen(envelope) >= NOTIFY_MAX_PAYLOAD)
		{
			results[i].status = OUTBOX_PUBLISH_REJECT;
			results[i].error = psprintf("notification payload of %zu bytes exceeds NOTIFY's limit of %d bytes",
										strlen(envelope), NOTIFY_MAX_PAYLOAD - 1);
			pfree(envelope);
			continue;
		}
		Async_Notify(channel, envelope);
		pfree(envelope);
		results[i].status = OUTBOX_PUBLISH_OK;
	}
}

static const OutboxPublisher notify_publisher = {
	.api_version = OUTBOX_PUBLISHER_API_VERSION,
	.name = "notify",
	.in_transaction = true,
	.check_topic = notify_check_topic,
	.init = NULL,
	.publish = notify_publish,
	.reload = NULL,
	.shutdown = NULL,
};

/* Register the built-in notify publisher. */
void
outbox_register_notify_publisher(void)
{
	OutboxRegisterPublisher(&notify_publisher);
}
