/*-------------------------------------------------------------------------
 *
 * notify.c
 *		The "notify" publisher: one NOTIFY per message, sent by PostgreSQL
 *		when the transaction that marks the message processed commits.
 *
 * The channel is outbox.notify_channel when set, else the message's topic.
 * The payload is the message's JSON envelope, or with outbox.notify_envelope
 * = 'id' (a destination's option "envelope") only its id and topic: every
 * role that may connect to the database can LISTEN on any channel, so
 * consumers then read the message itself with their own privileges.
 * NOTIFY limits channels to 63 bytes and payloads to 7999 bytes: a message
 * over either limit can never be delivered, so it is rejected (marked
 * failed at once) with the reason, instead of being retried.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/async.h"
#include "utils/guc.h"

#include "builtin.h"

/* NOTIFY's limit on payloads (commands/async.c), including the NUL. */
#define NOTIFY_MAX_PAYLOAD 8000

/* outbox.notify_channel (reload): empty means each message's topic. */
static char *notify_channel = NULL;

/* outbox.notify_envelope (reload): what a notification carries. */
typedef enum NotifyEnvelope
{
	NOTIFY_ENVELOPE_FULL,		/* the whole message */
	NOTIFY_ENVELOPE_ID			/* its id and topic */
} NotifyEnvelope;

static const struct config_enum_entry notify_envelope_entries[] = {
	{"full", NOTIFY_ENVELOPE_FULL, false},
	{"id", NOTIFY_ENVELOPE_ID, false},
	{NULL, 0, false}
};

static int	notify_envelope = NOTIFY_ENVELOPE_FULL;

/* Check outbox.notify_channel: empty, or a valid channel name. */
static bool
check_notify_channel(char **newval, void **extra, GucSource source)
{
	if (strlen(*newval) >= NAMEDATALEN)
	{
		GUC_check_errdetail("A channel name must be shorter than %d bytes.",
							NAMEDATALEN);
		return false;
	}
	return true;
}

/* Why a topic cannot be a channel name, or NULL when it can. */
static char *
notify_check_topic(const char *topic)
{
	if (notify_channel[0] != '\0')
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
	char	   *fixed_channel = OutboxOptionString("channel");
	bool		id_only = strcmp(OutboxOptionString("envelope"), "id") == 0;
	int			i;

	for (i = 0; i < nmessages; i++)
	{
		const OutboxMessage *m = &messages[i];
		const char *channel = fixed_channel[0] ? fixed_channel : m->topic;
		char	   *envelope;

		if (strlen(channel) >= NAMEDATALEN)
		{
			results[i].status = OUTBOX_PUBLISH_REJECT;
			results[i].error = psprintf("channel name \"%s\" is too long for NOTIFY", channel);
			continue;
		}
		/* The envelope is longer than the payload: spare building it. */
		if (!id_only && m->payload_len >= NOTIFY_MAX_PAYLOAD)
		{
			results[i].status = OUTBOX_PUBLISH_REJECT;
			results[i].error = psprintf("notification payload of over %d bytes exceeds NOTIFY's limit of %d bytes",
										m->payload_len, NOTIFY_MAX_PAYLOAD - 1);
			continue;
		}
		envelope = id_only ? outbox_message_id_envelope(m) : outbox_message_envelope(m);
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

/* Why a destination's channel cannot be one, or NULL. */
static char *
channel_problem(const char *value)
{
	if (strlen(value) >= NAMEDATALEN)
		return psprintf("A channel name must be shorter than %d bytes.", NAMEDATALEN);
	return NULL;
}

/* Why a destination's envelope is not one of the setting's values, or NULL. */
static char *
envelope_problem(const char *value)
{
	const struct config_enum_entry *entry;

	for (entry = notify_envelope_entries; entry->name != NULL; entry++)
	{
		if (strcmp(value, entry->name) == 0)
			return NULL;
	}
	return pstrdup("The envelope must be full or id.");
}

/* A destination's options; they default to the settings. */
static const OutboxOption notify_options[] = {
	{.name = "channel", .type = OUTBOX_OPTION_STRING, .setting = "outbox.notify_channel",
	.check = channel_problem},
	{.name = "envelope", .type = OUTBOX_OPTION_STRING, .setting = "outbox.notify_envelope",
	.check = envelope_problem},
};

static const OutboxPublisher notify_publisher = {
	.api_version = OUTBOX_PUBLISHER_API_VERSION,
	.name = "notify",
	.in_transaction = true,
	.check_topic = notify_check_topic,
	.init = NULL,
	.publish = notify_publish,
	.reload = NULL,
	.shutdown = NULL,
	.options = notify_options,
	.noptions = lengthof(notify_options),
};

/* Define the notify publisher's settings and register it. */
void
outbox_register_notify_publisher(void)
{
	DefineCustomStringVariable("outbox.notify_channel",
							   "Channel the notify publisher uses; empty means each message's topic.",
							   NULL,
							   &notify_channel,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_notify_channel, NULL, NULL);
	DefineCustomEnumVariable("outbox.notify_envelope",
							 "What a notification of the notify publisher carries: full (the message) or id (its id and topic).",
							 "A destination's option envelope overrides it.",
							 &notify_envelope,
							 NOTIFY_ENVELOPE_FULL,
							 notify_envelope_entries,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);
	OutboxRegisterPublisher(&notify_publisher);
}
