/*-------------------------------------------------------------------------
 *
 * cloudevents.c
 *		CloudEvents 1.0 for every publisher: the "format" option and its
 *		settings, a message's event attributes for binary content mode,
 *		and its JSON event for structured content mode (see
 *		outbox_publisher.h for the mapping).
 *
 * The publishers only choose where the attributes go: HTTP, NATS and AMQP
 * headers with the prefix "ce-" (percent-encoded on HTTP, as its binding
 * asks), Kafka headers with "ce_", Redis stream fields like Kafka's.  Part
 * of outbox.so, so that the plug-in publishers share this one copy through
 * the public API.
 *
 * The default source names the database, "/outbox/<database name>", looked
 * up once per process: in a worker, outside any transaction, that takes a
 * short transaction of its own (a catalog lookup, no I/O); a database
 * cannot be renamed while its workers are connected.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "builtin.h"
#include "pg_compat.h"

/* outbox.cloudevents_source; empty means the database's default. */
static char *setting_source = NULL;

/* "/outbox/<database name>", once known (TopMemoryContext). */
static char *database_source = NULL;

/* The values of every format setting and option. */
static const struct config_enum_entry format_entries[] = {
	{"raw", OUTBOX_FORMAT_RAW, false},
	{"cloudevents-binary", OUTBOX_FORMAT_CLOUDEVENTS_BINARY, false},
	{"cloudevents-structured", OUTBOX_FORMAT_CLOUDEVENTS_STRUCTURED, false},
	{NULL, 0, false}
};

/* The attributes binary content mode sets, which messages may not set too. */
static const char *const reserved_attributes[] = {
	"specversion", "id", "source", "type", "time", "subject", "datacontenttype", NULL
};

/* Why a source is not one, or NULL; "" stands for the default. */
static const char *
source_problem(const char *value)
{
	const unsigned char *p;

	for (p = (const unsigned char *) value; *p; p++)
	{
		if (*p <= 0x20 || *p == 0x7f)
			return "The source must be a URI reference without spaces or control characters, such as \"/outbox/shop\" or \"https://shop.example/orders\".";
	}
	return NULL;
}

/* Check hook of outbox.cloudevents_source, over source_problem(). */
static bool
check_source_setting(char **newval, void **extra, GucSource source)
{
	const char *problem = source_problem(*newval);

	if (problem == NULL)
		return true;
	GUC_check_errdetail("%s", problem);
	return false;
}

/* Define outbox.cloudevents_source; from module start, in every process. */
void
outbox_register_cloudevents_settings(void)
{
	DefineCustomStringVariable("outbox.cloudevents_source",
							   "Source of the CloudEvents that publishers send; empty means \"/outbox/<database name>\".",
							   "A destination's option cloudevents_source overrides it.",
							   &setting_source,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_source_setting, NULL, NULL);
}

/* Option check of "cloudevents_source".  Public API (outbox_publisher.h). */
char *
OutboxCloudEventSourceProblem(const char *value)
{
	const char *problem = source_problem(value);

	return problem ? pstrdup(problem) : NULL;
}

/* The format a value names, or -1. */
static int
format_of(const char *value)
{
	const struct config_enum_entry *e;

	for (e = format_entries; e->name; e++)
	{
		if (strcmp(e->name, value) == 0)
			return e->val;
	}
	return -1;
}

/* Option check of "format".  Public API (outbox_publisher.h). */
char *
OutboxFormatProblem(const char *value)
{
	if (format_of(value) >= 0)
		return NULL;
	return pstrdup("The format must be raw, cloudevents-binary or cloudevents-structured.");
}

/*
 * Define a publisher's format setting.  GUC keeps the descriptions and the
 * variable by reference, so they live in TopMemoryContext.  Public API
 * (outbox_publisher.h).
 */
void
OutboxDefineFormatSetting(const char *setting, const char *publisher)
{
	int		   *variable = MemoryContextAllocZero(TopMemoryContext, sizeof(int));
	char	   *description;

	description = MemoryContextStrdup(TopMemoryContext,
									  psprintf("Message format of the %s publisher: raw, cloudevents-binary or cloudevents-structured.",
											   publisher));
	DefineCustomEnumVariable(setting,
							 description,
							 "A destination's option format overrides it.",
							 variable,
							 OUTBOX_FORMAT_RAW,
							 format_entries,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);
}

/* Append s to buf with every byte but unreserved URI characters as %XX. */
static void
append_uri_escaped(StringInfo buf, const char *s)
{
	const unsigned char *p;

	for (p = (const unsigned char *) s; *p; p++)
	{
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			(*p >= '0' && *p <= '9') || strchr("-._~", *p) != NULL)
			appendStringInfoChar(buf, (char) *p);
		else
			appendStringInfo(buf, "%%%02X", *p);
	}
}

/*
 * "/outbox/<database name>", the name URI-escaped, looked up the first
 * time; a transaction of its own when none is open.
 */
static const char *
default_source(void)
{
	if (database_source == NULL)
	{
		MemoryContext saved_context = CurrentMemoryContext;
		ResourceOwner saved_owner = CurrentResourceOwner;
		bool		own_transaction = !IsTransactionState();
		char	   *name;
		StringInfoData buf;

		if (own_transaction)
			StartTransactionCommand();
		name = get_database_name(MyDatabaseId);
		initStringInfo(&buf);
		appendStringInfoString(&buf, "/outbox/");
		append_uri_escaped(&buf, name ? pg_server_to_any(name, (int) strlen(name), PG_UTF8) : "");
		database_source = MemoryContextStrdup(TopMemoryContext, buf.data);
		if (own_transaction)
		{
			CommitTransactionCommand();
			MemoryContextSwitchTo(saved_context);
			CurrentResourceOwner = saved_owner;
		}
	}
	return database_source;
}

/* The current destination's format and source.  Public API (outbox_publisher.h). */
OutboxFormat
OutboxOptionFormat(char **source)
{
	int			format = format_of(OutboxOptionString("format"));

	/* Values were checked when they were set. */
	if (format < 0)
		format = OUTBOX_FORMAT_RAW;
	*source = NULL;
	if (format != OUTBOX_FORMAT_RAW)
	{
		*source = OutboxOptionString("cloudevents_source");
		if ((*source)[0] == '\0')
			*source = pstrdup(default_source());
	}
	return (OutboxFormat) format;
}

/* A text of the database encoding in UTF-8 (s itself when it is already). */
static char *
utf8(const char *s)
{
	return pg_server_to_any(s, (int) strlen(s), PG_UTF8);
}

/*
 * The UTF-8 RFC 3339 time of a timestamp, in UTC: the timestamp without
 * time zone of the same instant, with "Z".
 */
static char *
rfc3339_utc(TimestampTz t)
{
	char	   *local = JsonEncodeDateTime(NULL, TimestampGetDatum((Timestamp) t),
										   TIMESTAMPOID, NULL);

	return psprintf("%sZ", local);
}

/* Public API (outbox_publisher.h). */
char *
OutboxPayloadContentType(const OutboxMessage *message)
{
	OutboxHeaderIterator it;
	OutboxHeader h;

	OutboxHeadersBegin(&it, message->headers);
	while (OutboxHeadersNext(&it, &h))
	{
		if (OutboxHeaderNameIs(&h, "content-type") && h.value != NULL && h.value_len > 0)
			return pnstrdup(h.value, h.value_len);
	}
	switch (OutboxPayloadKindOf(message))
	{
		case OUTBOX_PAYLOAD_JSON:
			return pstrdup("application/json");
		case OUTBOX_PAYLOAD_TEXT:
			return pstrdup("text/plain; charset=utf-8");
		case OUTBOX_PAYLOAD_BINARY:
			break;
	}
	return pstrdup("application/octet-stream");
}

/*
 * A header value as the HTTP binding wants it: bytes outside printable
 * ASCII, space, '"' and '%' as %XX.
 */
static char *
percent_encoded(const char *value)
{
	StringInfoData buf;
	const unsigned char *p;

	initStringInfo(&buf);
	for (p = (const unsigned char *) value; *p; p++)
	{
		if (*p <= 0x20 || *p >= 0x7f || *p == '"' || *p == '%')
			appendStringInfo(&buf, "%%%02X", *p);
		else
			appendStringInfoChar(&buf, (char) *p);
	}
	return buf.data;
}

/* Fill one attribute header. */
static void
set_attribute(OutboxCloudEventAttribute *attribute, const char *prefix, const char *name,
			  const char *value, bool percent_encode)
{
	attribute->name = psprintf("%s%s", prefix, name);
	attribute->value = percent_encode ? percent_encoded(value) : pstrdup(value);
}

/* Public API (outbox_publisher.h). */
int
OutboxCloudEventAttributes(const OutboxMessage *message, const char *source,
						   const char *prefix, bool percent_encode,
						   OutboxCloudEventAttribute *attributes)
{
	int			n = 0;

	set_attribute(&attributes[n++], prefix, "specversion", "1.0", percent_encode);
	set_attribute(&attributes[n++], prefix, "id", message->id_text, percent_encode);
	set_attribute(&attributes[n++], prefix, "source", utf8(source), percent_encode);
	set_attribute(&attributes[n++], prefix, "type", utf8(message->topic), percent_encode);
	set_attribute(&attributes[n++], prefix, "time", rfc3339_utc(message->created_at),
				  percent_encode);
	if (message->key[0] != '\0')
		set_attribute(&attributes[n++], prefix, "subject", utf8(message->key), percent_encode);
	Assert(n <= OUTBOX_CLOUDEVENT_MAX_ATTRIBUTES);
	return n;
}

/* Public API (outbox_publisher.h). */
bool
OutboxCloudEventHeaderIsReserved(const OutboxHeader *header, const char *prefix)
{
	int			prefix_len = (int) strlen(prefix);
	const char *const *a;

	if (header->name_len <= prefix_len ||
		pg_strncasecmp(header->name, prefix, prefix_len) != 0)
		return false;
	for (a = reserved_attributes; *a; a++)
	{
		if (header->name_len - prefix_len == (int) strlen(*a) &&
			pg_strncasecmp(header->name + prefix_len, *a, strlen(*a)) == 0)
			return true;
	}
	return false;
}

/*
 * Whether a media type is JSON: application/json, text/json or any
 * "+json" type, whatever its parameters and letter case.
 */
static bool
is_json_media_type(const char *content_type)
{
	int			len = (int) strcspn(content_type, ";");

	while (len > 0 && (content_type[len - 1] == ' ' || content_type[len - 1] == '\t'))
		len--;
	while (len > 0 && (*content_type == ' ' || *content_type == '\t'))
	{
		content_type++;
		len--;
	}
	return (len == 16 && pg_strncasecmp(content_type, "application/json", 16) == 0) ||
		(len == 9 && pg_strncasecmp(content_type, "text/json", 9) == 0) ||
		(len > 5 && pg_strncasecmp(content_type + len - 5, "+json", 5) == 0);
}

/* Append "name": <JSON string of value>. */
static void
append_member(StringInfo buf, const char *name, const char *value)
{
	appendStringInfo(buf, ", \"%s\": ", name);
	escape_json(buf, value);
}

/* Public API (outbox_publisher.h). */
char *
OutboxCloudEventJson(const OutboxMessage *message, const char *source, int *length)
{
	StringInfoData buf;
	char	   *content_type = OutboxPayloadContentType(message);
	OutboxPayloadKind kind = OutboxPayloadKindOf(message);

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"specversion\": \"1.0\"");
	append_member(&buf, "id", message->id_text);
	append_member(&buf, "source", utf8(source));
	append_member(&buf, "type", utf8(message->topic));
	append_member(&buf, "time", rfc3339_utc(message->created_at));
	if (message->key[0] != '\0')
		append_member(&buf, "subject", utf8(message->key));
	append_member(&buf, "datacontenttype", content_type);

	if (kind == OUTBOX_PAYLOAD_JSON && is_json_media_type(content_type))
	{
		appendStringInfoString(&buf, ", \"data\": ");
		appendBinaryStringInfo(&buf, message->payload, message->payload_len);
	}
	else if (kind != OUTBOX_PAYLOAD_BINARY)
	{
		/* Valid UTF-8, so without NUL bytes. */
		append_member(&buf, "data", pnstrdup(message->payload, message->payload_len));
	}
	else
		append_member(&buf, "data_base64", outbox_base64_text(message->payload, message->payload_len));
	appendStringInfoChar(&buf, '}');
	*length = buf.len;
	return buf.data;
}
