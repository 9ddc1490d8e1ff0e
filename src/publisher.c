/*-------------------------------------------------------------------------
 *
 * publisher.c
 *		The publisher registry: publishers register by name, the worker and
 *		the save path look them up by the name in outbox.publisher.
 *
 * Registration happens in _PG_init() of each library, so every process of
 * the server (postmaster children inherit it) has the same registry.  The
 * registry is a small process-local array: there are only ever a handful
 * of publishers.
 *
 * It also holds the helpers outbox_publisher.h offers publishers: a
 * problem logged once, signals blocked around a client library's threads,
 * secret settings kept out of the log, error texts made printable.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <pthread.h>
#include <signal.h>

#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"

#include "outbox.h"

#define MAX_PUBLISHERS 32

static const OutboxPublisher *publishers[MAX_PUBLISHERS];
static int	npublishers = 0;

/*
 * Register a publisher.  Public API (outbox_publisher.h): called from
 * _PG_init() of the library that provides it.
 */
void
OutboxRegisterPublisher(const OutboxPublisher *publisher)
{
	int			i;

	if (publisher == NULL || publisher->name == NULL ||
		publisher->publish == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("an outbox publisher needs a name and a publish callback")));
	if (publisher->api_version != OUTBOX_PUBLISHER_API_VERSION)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("outbox publisher \"%s\" was built for publisher API version %d",
						publisher->name, publisher->api_version),
				 errdetail("This outbox provides publisher API version %d.",
						   OUTBOX_PUBLISHER_API_VERSION),
				 errhint("Rebuild the publisher against the installed outbox_publisher.h.")));

	for (i = 0; i < npublishers; i++)
	{
		if (strcmp(publishers[i]->name, publisher->name) == 0)
		{
			/* The same library loaded twice registers the same struct. */
			if (publishers[i] == publisher)
				return;
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("an outbox publisher named \"%s\" is already registered",
							publisher->name)));
		}
	}
	if (npublishers >= MAX_PUBLISHERS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many outbox publishers registered"),
				 errdetail("At most %d publishers can be registered.", MAX_PUBLISHERS)));
	publishers[npublishers++] = publisher;
}

/* The publisher registered under name, or NULL. */
const OutboxPublisher *
outbox_find_publisher(const char *name)
{
	int			i;

	for (i = 0; i < npublishers; i++)
	{
		if (strcmp(publishers[i]->name, name) == 0)
			return publishers[i];
	}
	return NULL;
}

/* The registered names, comma-separated, for error messages. */
char *
outbox_publisher_names(void)
{
	StringInfoData names;
	int			i;

	initStringInfo(&names);
	for (i = 0; i < npublishers; i++)
		appendStringInfo(&names, "%s%s", i > 0 ? ", " : "", publishers[i]->name);
	return names.data;
}

/*
 * Log a publisher's problem once, until its text changes.  Public API
 * (outbox_publisher.h).
 */
void
OutboxPublisherReportProblem(OutboxProblem *problem, const char *publisher,
							 int sqlerrcode, const char *text, const char *hint)
{
	if (problem->reported && strcmp(problem->reported, text) == 0)
		return;
	if (problem->reported)
		pfree(problem->reported);
	problem->reported = MemoryContextStrdup(TopMemoryContext, text);
	ereport(WARNING,
			(errcode(sqlerrcode),
			 errmsg("outbox %s publisher: %s", publisher, text),
			 errdetail("Messages stay pending until this is fixed."),
			 hint ? errhint("%s", hint) : 0));
}

/* Forget a publisher's problem.  Public API (outbox_publisher.h). */
void
OutboxPublisherClearProblem(OutboxProblem *problem)
{
	if (problem->reported)
		pfree(problem->reported);
	problem->reported = NULL;
}

/*
 * Block the signals PostgreSQL handles in the calling thread.  Public API
 * (outbox_publisher.h).
 */
void
OutboxPublisherBlockSignals(sigset_t *saved)
{
	sigset_t	block;

	sigemptyset(&block);
	sigaddset(&block, SIGHUP);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGQUIT);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGUSR2);
	sigaddset(&block, SIGALRM);
	sigaddset(&block, SIGCHLD);
	sigaddset(&block, SIGURG);
	sigaddset(&block, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &block, saved);
}

/* Whether haystack contains needle, ignoring ASCII case. */
static bool
contains_ignoring_case(const char *haystack, const char *needle)
{
	size_t		n = strlen(needle);

	for (; *haystack; haystack++)
	{
		if (pg_strncasecmp(haystack, needle, n) == 0)
			return true;
	}
	return false;
}

/*
 * Keep a secret setting's value out of the server log.  Public API
 * (outbox_publisher.h).  The changed-parameter message is recognized by its
 * untranslated format, and the name is looked for without regard to case
 * (it is spelled as in the configuration file or the statement); statements
 * are matched on the name without its "outbox." prefix, so that quoting the
 * two parts apart does not let one through.
 */
void
OutboxPublisherRedactSetting(ErrorData *edata, const char *setting)
{
	const char *dot = strchr(setting, '.');
	const char *bare = dot ? dot + 1 : setting;

	if (edata->message_id != NULL && edata->message != NULL)
	{
		if (strcmp(edata->message_id, "parameter \"%s\" changed to \"%s\"") == 0 &&
			contains_ignoring_case(edata->message, setting))
			edata->message = psprintf("parameter \"%s\" changed", setting);
		else if (strncmp(edata->message_id, "statement: ", 11) == 0 &&
				 contains_ignoring_case(edata->message, bare))
			edata->message = psprintf("statement: (a statement mentioning %s, not shown)",
									  setting);
	}
	if (debug_query_string != NULL && contains_ignoring_case(debug_query_string, bare))
		edata->hide_stmt = true;
}

/*
 * Append bytes to an error text, made printable.  Public API
 * (outbox_publisher.h).
 */
void
OutboxPublisherAppendPrintable(StringInfo buf, const char *s, int len, bool flatten)
{
	bool		utf8 = GetDatabaseEncoding() == PG_UTF8;
	int			i = 0;

	while (i < len)
	{
		unsigned char c = (unsigned char) s[i];

		if (c >= 0x20 && c < 0x7f)
		{
			appendStringInfoChar(buf, (char) c);
			i++;
			continue;
		}
		if (flatten && (c == '\r' || c == '\n' || c == '\t'))
		{
			appendStringInfoChar(buf, ' ');
			i++;
			continue;
		}
		if (utf8 && IS_HIGHBIT_SET(c))
		{
			int			n = pg_utf_mblen((const unsigned char *) s + i);

			if (i + n <= len && pg_utf8_islegal((const unsigned char *) s + i, n))
			{
				appendBinaryStringInfo(buf, s + i, n);
				i += n;
				continue;
			}
		}
		appendStringInfo(buf, "\\x%02x", c);
		i++;
	}
}
