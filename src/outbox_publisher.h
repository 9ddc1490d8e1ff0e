/*-------------------------------------------------------------------------
 *
 * outbox_publisher.h
 *		The publisher interface of the outbox extension.
 *
 * A publisher takes a batch of claimed messages and delivers them somewhere
 * (NOTIFY, an HTTP endpoint, a broker), reporting one result per message.
 * The relay worker knows publishers only through this interface, and the
 * built-in publishers use it exactly as a third-party one would: another
 * extension, listed after "outbox" in shared_preload_libraries, calls
 * OutboxRegisterPublisher() from its _PG_init() and can then be selected
 * with outbox.publisher = '<name>'.
 *
 * The worker calls the callbacks in its own process:
 *	- init() once before the first batch (and again after a reload that
 *	  selected this publisher), outside any transaction unless the publisher
 *	  is transactional;
 *	- publish() with a batch in id order containing at most one message per
 *	  non-empty key at a time, so a publisher may deliver the whole batch
 *	  concurrently without breaking per-key order;
 *	- reload() after SIGHUP, so that changed settings apply to the next batch;
 *	- shutdown() when the worker exits or switches to another publisher.
 *
 * Transactional publishers (in_transaction = true, like NOTIFY) are called
 * inside the transaction that claims and marks the batch: their effect
 * happens at commit.  All others are called with no transaction open, and
 * must never block for long without calling OutboxPublisherWait(), which
 * services the worker's latch, interrupts and postmaster death.
 *
 * Like every PostgreSQL header, this one expects postgres.h to be included
 * first by the .c file.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_PUBLISHER_H
#define OUTBOX_PUBLISHER_H

#include <signal.h>

#include "datatype/timestamp.h"
#include "lib/stringinfo.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

/*
 * Bumped whenever the structs or functions below change incompatibly.
 * 2: OutboxProblem names its publisher and error code; secret settings are
 * registered with OutboxPublisherKeepSecret(); header iteration, payload
 * kinds and a monotonic clock for everyone.
 * 3: destinations: a publisher declares its options, reads the current
 * destination's values with OutboxOption*(), and a result may disable its
 * destination; CloudEvents formats (OutboxOptionFormat() and the
 * OutboxCloudEvent*() helpers).
 */
#define OUTBOX_PUBLISHER_API_VERSION 3

/* One message handed to a publisher; all fields are read-only. */
typedef struct OutboxMessage
{
	pg_uuid_t	id;
	char		id_text[UUID_LEN * 2 + 5];	/* canonical text form */
	const char *topic;
	const char *key;			/* "" when the message has no key */
	const char *payload;		/* raw bytes, not NUL-terminated */
	int			payload_len;
	Jsonb	   *headers;		/* always a JSON object of strings */
	TimestampTz created_at;
	int			retries;		/* failed attempts so far */
} OutboxMessage;

/* What happened to one message. */
typedef enum OutboxPublishStatus
{
	OUTBOX_PUBLISH_OK,			/* delivered and confirmed */
	OUTBOX_PUBLISH_RETRY,		/* failed attempt: retry after backoff */
	OUTBOX_PUBLISH_REJECT,		/* can never succeed: mark failed now */
	OUTBOX_PUBLISH_SKIPPED		/* not attempted: back to pending as is */
} OutboxPublishStatus;

/*
 * A publisher fills one of these per message.  The worker zeroes the array
 * before each publish() call, so an untouched entry means OUTBOX_PUBLISH_OK
 * with no error; publishers should still set every status explicitly.
 */
typedef struct OutboxPublishResult
{
	OutboxPublishStatus status;
	char	   *error;			/* palloc'd text for last_error, or NULL */

	/*
	 * Earliest next attempt, 0 = the usual backoff.  The worker caps it at
	 * the larger of one hour and outbox.retry_backoff_max from now.
	 */
	TimestampTz retry_at;

	/*
	 * The receiver said it wants no more messages (HTTP 410 Gone): with a
	 * failed status, the destination is disabled, with error as the reason,
	 * until outbox.resume_destination().  Ignored for the default
	 * destination, which cannot be disabled.
	 */
	bool		disable_destination;
} OutboxPublishResult;

/* The kinds of value a publisher option takes. */
typedef enum OutboxOptionType
{
	OUTBOX_OPTION_STRING,		/* a JSON string */
	OUTBOX_OPTION_INTEGER,		/* a JSON number, or a string with the unit */
	OUTBOX_OPTION_BOOLEAN,		/* a JSON boolean */
	OUTBOX_OPTION_OBJECT		/* a JSON object of strings (headers) */
} OutboxOptionType;

/*
 * One option a publisher takes from a destination's options.  The default
 * destination takes it from the setting named (its value is also every
 * destination's default); an option with no setting has none.
 */
typedef struct OutboxOption
{
	const char *name;			/* the key in the destination's options */
	OutboxOptionType type;
	const char *setting;		/* "outbox.http_url", or NULL */
	bool		secret;			/* superuser-only: never shown nor logged */
	bool		required;		/* a destination must set it */
	int			unit;			/* OUTBOX_OPTION_INTEGER: 0, GUC_UNIT_MS or GUC_UNIT_BYTE */
	int64		min_value;		/* OUTBOX_OPTION_INTEGER bounds */
	int64		max_value;

	/*
	 * Optional check of a value (a string option's text, the text of an
	 * integer's decimal value, or an object's JSON text): NULL when fine,
	 * else a palloc'd reason, which must not quote a secret value.
	 */
	char	   *(*check) (const char *value);
} OutboxOption;

typedef struct OutboxPublisher
{
	int			api_version;	/* OUTBOX_PUBLISHER_API_VERSION */
	const char *name;			/* value of outbox.publisher selecting it */
	bool		in_transaction; /* publish inside the marking transaction */

	/*
	 * Optional check of a topic at save time, in the saving backend: return
	 * NULL when the topic is fine, else a palloc'd reason, which becomes the
	 * errdetail of the ERROR raised by outbox.save().
	 */
	char	   *(*check_topic) (const char *topic);

	/*
	 * init() before the first batch; reload() after the settings or the
	 * destination's options changed; shutdown() when the worker exits or
	 * switches publishers.  Read options with OutboxOption*() in any of
	 * them and in publish().
	 */
	void		(*init) (void);
	void		(*publish) (OutboxMessage *messages, int nmessages,
							OutboxPublishResult *results);
	void		(*reload) (void);
	void		(*shutdown) (void);

	/* The options a destination of this publisher takes. */
	const OutboxOption *options;
	int			noptions;
} OutboxPublisher;

/* Signature of OutboxRegisterPublisher, for load_external_function(). */
typedef void (*OutboxRegisterPublisher_type) (const OutboxPublisher *publisher);

/*
 * Make a publisher selectable by name.  Call from _PG_init() of a library
 * in shared_preload_libraries; the struct must live for the process's life.
 */
extern PGDLLEXPORT void OutboxRegisterPublisher(const OutboxPublisher *publisher);

/*
 * Wait up to timeout_ms for the worker's latch, an interrupt or one of the
 * given socket events (pass PGINVALID_SOCKET and 0 to wait for none).
 * Handles SIGTERM (exits), SIGHUP and postmaster death.  On SIGHUP the
 * configuration files are read at once, so settings may change between two
 * calls (never keep a pointer to a string setting across a wait); the
 * publisher's reload() callback follows after the batch.  Returns the
 * WaitLatchOrSocket() result.
 */
extern PGDLLEXPORT int OutboxPublisherWait(pgsocket sock, int socket_events,
										   long timeout_ms);

/*
 * The current destination's options, inside the worker's callbacks: the
 * value the destination sets, else its setting's value, else "" / 0 /
 * false / NULL.  Strings are palloc'd in the current memory context.
 * OutboxDestinationName() is "default" for the default destination.
 */
extern PGDLLEXPORT char *OutboxOptionString(const char *name);
extern PGDLLEXPORT int64 OutboxOptionInteger(const char *name);
extern PGDLLEXPORT bool OutboxOptionBoolean(const char *name);
extern PGDLLEXPORT Jsonb *OutboxOptionObject(const char *name);
extern PGDLLEXPORT const char *OutboxDestinationName(void);

/* Milliseconds of a monotonic clock, for a publisher's own deadlines. */
extern PGDLLEXPORT int64 OutboxPublisherNowMs(void);

/*
 * A problem that keeps a publisher from publishing (a setting missing, a
 * server out of reach), logged once: OutboxPublisherReportProblem() logs a
 * WARNING "outbox <publisher> publisher: <text>" with the problem's error
 * code and the detail "Messages stay pending until this is fixed." (and
 * hint, when not NULL) the first time, and again only when the text
 * changes; OutboxPublisherClearProblem() forgets it once it went away.
 * Keep one per kind of problem, made with OUTBOX_PROBLEM_INIT; "reported"
 * tells whether a problem is logged now.
 */
typedef struct OutboxProblem
{
	const char *publisher;		/* name for the message */
	int			sqlerrcode;		/* ERRCODE_... of the WARNING */
	char	   *reported;		/* in TopMemoryContext; NULL when none */
} OutboxProblem;

#define OUTBOX_PROBLEM_INIT(publisher, sqlerrcode) {(publisher), (sqlerrcode), NULL}

extern PGDLLEXPORT void OutboxPublisherReportProblem(OutboxProblem *problem,
													 const char *text,
													 const char *hint);
extern PGDLLEXPORT void OutboxPublisherClearProblem(OutboxProblem *problem);

/*
 * Block PostgreSQL's signals in the calling thread and save the old mask in
 * *saved.  Call it before a client library may start a thread (a name
 * resolver, I/O threads): threads inherit the mask, so the signal handlers
 * keep running on the main thread.  Restore with
 * pthread_sigmask(SIG_SETMASK, saved, NULL); signals that came meanwhile
 * are delivered then.
 */
extern PGDLLEXPORT void OutboxPublisherBlockSignals(sigset_t *saved);

/*
 * Keep the value of a secret setting (its full name, "outbox.x_secret") out
 * of the server log, in every process: the message "parameter ... changed
 * to ..." keeps only the name, and a statement that mentions the setting
 * (log_statement, or the STATEMENT line of an error) is not shown.  Call it
 * from _PG_init(), beside the setting's definition.
 */
extern PGDLLEXPORT void OutboxPublisherKeepSecret(const char *setting);

/*
 * Whether value holds a URL with a user name or password in it
 * ("scheme://user:password@host"), alone or in a comma-separated list.  A
 * URL is never secret (outbox.destinations, pg_settings and error texts
 * show it), so credentials must never be put in one.  With all_urls, the
 * value is a URL or a list of them, and an entry without a scheme counts
 * as a URL too ("user@host:4222"); without, only what follows a "://" is
 * looked at, so that other text ("user@example.com") is left alone.
 *
 * outbox itself refuses such a value in every option of a destination that
 * is not secret (with the hint to use the publisher's secret options), and
 * a worker does not use a destination that holds one (stored by an older
 * version); the check hook of a URL setting refuses it with
 * OutboxCheckUrlSetting().
 */
extern PGDLLEXPORT bool OutboxUrlHasUserinfo(const char *value, bool all_urls);

/*
 * For the check hook of a setting holding a URL (or a list of them): true
 * when value holds no user name nor password (OutboxUrlHasUserinfo() with
 * all_urls); else false, with an error message that does not quote the
 * value and the hint "Set <instead> instead." (the secret settings that
 * take the credentials).
 */
extern PGDLLEXPORT bool OutboxCheckUrlSetting(const char *setting, const char *value,
											  const char *instead);

/*
 * Append len bytes of s to buf for an error text (last_error, the log):
 * printable ASCII as is, multibyte characters as is when they are valid
 * UTF-8 in a UTF-8 database, line breaks and tabs as spaces when flatten is
 * true, anything else as \xNN.
 */
extern PGDLLEXPORT void OutboxPublisherAppendPrintable(StringInfo buf, const char *s,
													   int len, bool flatten);

/*
 * The headers of a message, one at a time, in the order jsonb keeps them
 * (by name length, then bytes):
 *
 *	OutboxHeaderIterator it;
 *	OutboxHeader h;
 *
 *	OutboxHeadersBegin(&it, message->headers);
 *	while (OutboxHeadersNext(&it, &h))
 *		use h.name (h.name_len bytes) and h.value (h.value_len bytes);
 *
 * Names and values point into the message and are not NUL-terminated.
 */
typedef struct OutboxHeader
{
	const char *name;
	int			name_len;
	const char *value;
	int			value_len;
} OutboxHeader;

typedef struct OutboxHeaderIterator
{
	JsonbIterator *it;
	const char *name;			/* of the key just read */
	int			name_len;
} OutboxHeaderIterator;

extern PGDLLEXPORT void OutboxHeadersBegin(OutboxHeaderIterator *iterator, Jsonb *headers);
extern PGDLLEXPORT bool OutboxHeadersNext(OutboxHeaderIterator *iterator, OutboxHeader *header);

/* Whether a header's name is name, ignoring ASCII case. */
extern PGDLLEXPORT bool OutboxHeaderNameIs(const OutboxHeader *header, const char *name);

/* What a message's payload holds. */
typedef enum OutboxPayloadKind
{
	OUTBOX_PAYLOAD_JSON,		/* valid UTF-8 that parses as JSON */
	OUTBOX_PAYLOAD_TEXT,		/* other valid UTF-8 (also empty) */
	OUTBOX_PAYLOAD_BINARY		/* anything else */
} OutboxPayloadKind;

extern PGDLLEXPORT OutboxPayloadKind OutboxPayloadKindOf(const OutboxMessage *message);

/*
 * The content type of a message's payload: its "content-type" header when
 * it has a non-empty one, else "application/json" for JSON, "text/plain;
 * charset=utf-8" for other text, "application/octet-stream" for binary.
 * palloc'd.
 */
extern PGDLLEXPORT char *OutboxPayloadContentType(const OutboxMessage *message);

/*
 * CloudEvents 1.0 (https://cloudevents.io).  A publisher that offers them
 * declares the options "format" and "cloudevents_source" with
 * OUTBOX_FORMAT_OPTIONS(its format setting) in its options, defines that
 * setting with OutboxDefineFormatSetting() in _PG_init(), and reads both
 * with OutboxOptionFormat().  A message is the event:
 *	specversion "1.0", id = the message id, source = the destination's
 *	cloudevents_source (outbox.cloudevents_source; by default
 *	"/outbox/<database name>"), type = the topic, time = created_at (RFC
 *	3339, UTC), subject = the key (none when it is empty), datacontenttype
 *	= OutboxPayloadContentType(), data = the payload.
 * Binary content mode puts the attributes in transport headers
 * (OutboxCloudEventAttributes()) and the payload in the body; structured
 * content mode sends OutboxCloudEventJson() as the body, with content type
 * OUTBOX_CLOUDEVENTS_JSON.  Strings are UTF-8.
 */
typedef enum OutboxFormat
{
	OUTBOX_FORMAT_RAW,			/* the payload as it is */
	OUTBOX_FORMAT_CLOUDEVENTS_BINARY,
	OUTBOX_FORMAT_CLOUDEVENTS_STRUCTURED
} OutboxFormat;

#define OUTBOX_CLOUDEVENTS_JSON "application/cloudevents+json"

/* Most attributes OutboxCloudEventAttributes() returns. */
#define OUTBOX_CLOUDEVENT_MAX_ATTRIBUTES 6

/* Check callbacks of the two options (NULL, or a palloc'd reason). */
extern PGDLLEXPORT char *OutboxFormatProblem(const char *value);
extern PGDLLEXPORT char *OutboxCloudEventSourceProblem(const char *value);

/* The entries of a publisher's options array for "format" and "cloudevents_source". */
#define OUTBOX_FORMAT_OPTIONS(format_setting) \
	{.name = "format", .type = OUTBOX_OPTION_STRING, .setting = (format_setting), \
	 .check = OutboxFormatProblem}, \
	{.name = "cloudevents_source", .type = OUTBOX_OPTION_STRING, \
	 .setting = "outbox.cloudevents_source", .check = OutboxCloudEventSourceProblem}

/*
 * Define the setting (PGC_SIGHUP, default raw) that gives the default
 * destination's format, such as "outbox.kafka_format"; from _PG_init().
 */
extern PGDLLEXPORT void OutboxDefineFormatSetting(const char *setting, const char *publisher);

/*
 * The current destination's format; unless it is raw, *source is set to
 * its event source (palloc'd), else to NULL.  In the worker's callbacks.
 */
extern PGDLLEXPORT OutboxFormat OutboxOptionFormat(char **source);

/*
 * Binary content mode: the event's attributes but datacontenttype, as
 * headers named prefix + attribute ("ce-id" with prefix "ce-"), values
 * percent-encoded as the HTTP binding asks when percent_encode is true.
 * Fills attributes (OUTBOX_CLOUDEVENT_MAX_ATTRIBUTES entries) with palloc'd
 * names and values and returns how many.  The content type goes where the
 * transport keeps it (Content-Type, a property, a header).
 */
typedef struct OutboxCloudEventAttribute
{
	const char *name;
	const char *value;
} OutboxCloudEventAttribute;

extern PGDLLEXPORT int OutboxCloudEventAttributes(const OutboxMessage *message,
												  const char *source, const char *prefix,
												  bool percent_encode,
												  OutboxCloudEventAttribute *attributes);

/*
 * Whether a message's header is one binary content mode sets itself
 * (prefix + specversion, id, source, type, time, subject or
 * datacontenttype, in any case): such a message cannot be sent in that
 * mode.
 */
extern PGDLLEXPORT bool OutboxCloudEventHeaderIsReserved(const OutboxHeader *header,
														 const char *prefix);

/*
 * Structured content mode: the event as JSON (palloc'd, *length bytes).
 * The payload is "data" as JSON when it is JSON of a JSON content type,
 * "data" as a string when it is other text, else "data_base64".
 */
extern PGDLLEXPORT char *OutboxCloudEventJson(const OutboxMessage *message,
											  const char *source, int *length);

#endif							/* OUTBOX_PUBLISHER_H */
