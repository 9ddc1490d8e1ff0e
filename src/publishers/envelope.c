/*-------------------------------------------------------------------------
 *
 * envelope.c
 *		The JSON envelope that carries a whole message as one text, for
 *		transports without separate headers (NOTIFY).
 *
 *		{"id": ..., "topic": ..., "key": ..., "headers": {...},
 *		 "payload": ..., "created_at": ...}
 *
 * The payload is embedded as JSON when it is valid JSON, as a JSON string
 * when it is other UTF-8 text, and otherwise as base64 with
 * "payload_encoding": "base64".
 *
 * The id envelope, {"id": ..., "topic": ...}, carries none of the message's
 * content, for channels that others may read: the consumer reads the
 * message by its id with its own privileges.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/base64.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "builtin.h"
#include "pg_compat.h"

/* How the payload goes into the envelope. */
typedef enum PayloadForm
{
	PAYLOAD_JSON,
	PAYLOAD_TEXT,
	PAYLOAD_BASE64
} PayloadForm;

/*
 * Decide how to embed a payload.  Text must be valid UTF-8 and, in a
 * database of another encoding, plain ASCII, so that it reads the same in
 * the notification (which is in the database encoding).
 */
static PayloadForm
payload_form(const OutboxMessage *message)
{
	OutboxPayloadKind kind = OutboxPayloadKindOf(message);

	if (kind == OUTBOX_PAYLOAD_BINARY)
		return PAYLOAD_BASE64;
	if (GetDatabaseEncoding() != PG_UTF8)
	{
		for (int i = 0; i < message->payload_len; i++)
		{
			if (IS_HIGHBIT_SET(message->payload[i]))
				return PAYLOAD_BASE64;
		}
	}
	return kind == OUTBOX_PAYLOAD_JSON ? PAYLOAD_JSON : PAYLOAD_TEXT;
}

/* len bytes of data as base64 text, NUL-terminated and palloc'd. */
char *
outbox_base64_text(const char *data, int len)
{
	int			enclen = pg_b64_enc_len(len);
	char	   *encoded = palloc(enclen + 1);
	int			written = outbox_b64_encode(data, len, encoded, enclen);

	if (written < 0)
		elog(ERROR, "could not encode outbox payload as base64");
	encoded[written] = '\0';
	return encoded;
}

/* Build the id envelope of a message, palloc'd in the current context. */
char *
outbox_message_id_envelope(const OutboxMessage *message)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"id\": \"%s\", \"topic\": ", message->id_text);
	escape_json(&buf, message->topic);
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/* Build the envelope of a message, palloc'd in the current context. */
char *
outbox_message_envelope(const OutboxMessage *message)
{
	StringInfoData buf;
	char	   *created_at;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"id\": \"");
	appendStringInfoString(&buf, message->id_text);
	appendStringInfoString(&buf, "\", \"topic\": ");
	escape_json(&buf, message->topic);
	appendStringInfoString(&buf, ", \"key\": ");
	escape_json(&buf, message->key);
	appendStringInfoString(&buf, ", \"headers\": ");
	(void) JsonbToCString(&buf, &message->headers->root, VARSIZE(message->headers));
	appendStringInfoString(&buf, ", \"payload\": ");

	switch (payload_form(message))
	{
		case PAYLOAD_JSON:
			appendBinaryStringInfo(&buf, message->payload, message->payload_len);
			break;
		case PAYLOAD_TEXT:
			escape_json(&buf, pnstrdup(message->payload, message->payload_len));
			break;
		case PAYLOAD_BASE64:
			{
				char	   *encoded = outbox_base64_text(message->payload, message->payload_len);

				appendStringInfo(&buf, "\"%s\", \"payload_encoding\": \"base64\"", encoded);
				pfree(encoded);
			}
			break;
	}

	created_at = JsonEncodeDateTime(NULL, TimestampTzGetDatum(message->created_at),
									TIMESTAMPTZOID, NULL);
	appendStringInfo(&buf, ", \"created_at\": \"%s\"}", created_at);
	return buf.data;
}
