/*-------------------------------------------------------------------------
 *
 * publisher.c
 *		The publisher API (outbox_publisher.h), whole: the registry, the
 *		wait a publisher makes inside the worker, and the helpers that
 *		publishers share.
 *
 * Publishers register by name in _PG_init() of their library, so every
 * process of the server (postmaster children inherit it) has the same
 * registry; the worker and the save path look them up by the name in
 * outbox.publisher.  The registry is a small process-local array: there
 * are only ever a handful of publishers.
 *
 * OutboxPublisherWait() is the one place a publisher blocks.  It notes
 * what happened meanwhile (the latch was set by a commit, the
 * configuration was reloaded) for the worker to act on between batches:
 * the worker knows publishers only through this file, and publishers know
 * nothing of the worker.
 *
 * The helpers: a problem logged once, signals blocked around a client
 * library's threads, secret settings kept out of the log, error texts made
 * printable, message headers walked, payloads classified, a monotonic
 * clock.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <pthread.h>
#include <signal.h>
#include <time.h>

#include "common/jsonapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "pg_compat.h"
#include "publisher.h"

#define MAX_PUBLISHERS 32

static const OutboxPublisher *publishers[MAX_PUBLISHERS];
static int	npublishers = 0;

/* What happened while a publisher waited. */
static bool woken_while_publishing = false;
static bool reload_while_publishing = false;

/* Settings whose values never reach the server log. */
#define MAX_SECRETS 32
static const char *secret_settings[MAX_SECRETS];
static int	nsecrets = 0;
static emit_log_hook_type prev_emit_log_hook = NULL;

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
 * The problems of this process's publishers reported and not cleared yet,
 * and how many reports there were, for the worker's status
 * (outbox.worker_status()).
 */
#define MAX_OUTSTANDING_PROBLEMS 32
static OutboxProblem *outstanding_problems[MAX_OUTSTANDING_PROBLEMS];
static int	noutstanding_problems = 0;
static uint64 problems_generation = 0;
static char *problem_text = NULL;

/*
 * Log a publisher's problem once, until its text changes.  Public API
 * (outbox_publisher.h).
 */
void
OutboxPublisherReportProblem(OutboxProblem *problem, const char *text, const char *hint)
{
	if (problem->reported && strcmp(problem->reported, text) == 0)
		return;
	if (problem->reported)
		pfree(problem->reported);
	else if (noutstanding_problems < MAX_OUTSTANDING_PROBLEMS)
		outstanding_problems[noutstanding_problems++] = problem;
	problem->reported = MemoryContextStrdup(TopMemoryContext, text);
	problems_generation++;
	ereport(WARNING,
			(errcode(problem->sqlerrcode),
			 errmsg("outbox %s publisher: %s", problem->publisher, text),
			 errdetail("Messages stay pending until this is fixed."),
			 hint ? errhint("%s", hint) : 0));
}

/* Forget a publisher's problem.  Public API (outbox_publisher.h). */
void
OutboxPublisherClearProblem(OutboxProblem *problem)
{
	int			i;

	if (problem->reported)
		pfree(problem->reported);
	problem->reported = NULL;
	for (i = 0; i < noutstanding_problems; i++)
	{
		if (outstanding_problems[i] == problem)
		{
			outstanding_problems[i] = outstanding_problems[--noutstanding_problems];
			break;
		}
	}
}

/*
 * A problem that the publisher of this name reported and did not clear
 * (it cannot publish: messages stay pending), as "outbox <name> publisher:
 * <text>", else NULL; valid until the next call.  *generation counts the
 * reports, so that the worker shows each new one once.
 */
const char *
outbox_publisher_problem(const char *publisher, uint64 *generation)
{
	int			i;

	*generation = problems_generation;
	for (i = 0; i < noutstanding_problems; i++)
	{
		OutboxProblem *problem = outstanding_problems[i];

		if (strcmp(problem->publisher, publisher) == 0)
		{
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			if (problem_text)
				pfree(problem_text);
			problem_text = psprintf("outbox %s publisher: %s", problem->publisher,
									problem->reported);
			MemoryContextSwitchTo(old);
			return problem_text;
		}
	}
	return NULL;
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
 * Keep statements that mention a word out of one log message: the logged
 * statement itself (log_statement, log_min_duration_statement, and the
 * extended protocol's parse, bind and execute lines, whose detail holds
 * the parameters), the STATEMENT line of an error, and the parameters an
 * error's context shows (log_parameter_max_length_on_error).  what names
 * it in the replacement.
 */
static void
redact_statement(ErrorData *edata, const char *word, const char *what)
{
	/* The untranslated formats of statement logs (tcop/postgres.c). */
	static const char *const statement_logs[] = {
		"statement: ", "duration: ", "execute ", "parse ", "bind ", NULL
	};
	static const char *const statement_formats[] = {
		"%s %s%s%s: %s",		/* execute <portal>: <statement> */
		NULL
	};

	/*
	 * A statement log that mentions the word, or any logged while such a
	 * statement runs: the plans auto_explain logs of the statements nested
	 * in it may show their parameters' values.
	 */
	if (edata->message_id != NULL && edata->message != NULL &&
		(contains_ignoring_case(edata->message, word) ||
		 (debug_query_string != NULL && contains_ignoring_case(debug_query_string, word))))
	{
		const char *const *prefix;
		bool		statement = false;

		for (prefix = statement_logs; *prefix && !statement; prefix++)
			statement = strncmp(edata->message_id, *prefix, strlen(*prefix)) == 0;
		for (prefix = statement_formats; *prefix && !statement; prefix++)
			statement = strcmp(edata->message_id, *prefix) == 0;
		if (statement)
		{
			edata->message = psprintf("statement: (a statement mentioning %s, not shown)",
									  what);
			edata->detail = NULL;
			edata->detail_log = NULL;
		}
	}
	if (debug_query_string != NULL && contains_ignoring_case(debug_query_string, word))
	{
		edata->hide_stmt = true;
		/* "unnamed portal with parameters: $1 = ..." */
		if (edata->context != NULL && strstr(edata->context, " with parameters: ") != NULL)
			edata->context = NULL;
	}
}

/*
 * Keep a secret setting's value out of one log message.  The
 * changed-parameter message is recognized by its untranslated format, and
 * the name is looked for without regard to case (it is spelled as in the
 * configuration file or the statement); statements are matched on the name
 * without its "outbox." prefix, so that quoting the two parts apart does
 * not let one through.
 */
static void
redact_setting(ErrorData *edata, const char *setting)
{
	const char *dot = strchr(setting, '.');
	const char *bare = dot ? dot + 1 : setting;

	if (edata->message_id != NULL && edata->message != NULL &&
		strcmp(edata->message_id, "parameter \"%s\" changed to \"%s\"") == 0 &&
		contains_ignoring_case(edata->message, setting))
		edata->message = psprintf("parameter \"%s\" changed", setting);
	redact_statement(edata, bare, setting);
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

/*
 * Whether a value holds a URL with a user name or password.  Public API
 * (outbox_publisher.h).  Each comma-separated entry is looked at: its
 * authority follows "://" (or, with all_urls, starts the entry when it has
 * no scheme) and ends at a path, query or fragment; an "@" in it ends a
 * user name or password.
 */
bool
OutboxUrlHasUserinfo(const char *value, bool all_urls)
{
	const char *entry = value;

	for (;;)
	{
		size_t		len = strcspn(entry, ",");
		const char *end = entry + len;
		const char *authority = NULL;
		const char *p;

		for (p = entry; p + 3 <= end; p++)
		{
			if (strncmp(p, "://", 3) == 0)
			{
				authority = p + 3;
				break;
			}
		}
		if (authority == NULL && all_urls)
			authority = entry;
		/* Without all_urls, a later "://" of the same entry counts too. */
		while (authority != NULL)
		{
			for (p = authority; p < end && strchr("/?#", *p) == NULL; p++)
			{
				if (*p == '@')
					return true;
			}
			authority = NULL;
			for (; p + 3 <= end && authority == NULL; p++)
			{
				if (strncmp(p, "://", 3) == 0)
					authority = p + 3;
			}
		}
		if (*end == '\0')
			return false;
		entry = end + 1;
	}
}

/*
 * The check of a URL setting against credentials in it.  Public API
 * (outbox_publisher.h).  The message replaces PostgreSQL's, which would
 * quote the value.
 */
bool
OutboxCheckUrlSetting(const char *setting, const char *value, const char *instead)
{
	if (!OutboxUrlHasUserinfo(value, true))
		return true;
	GUC_check_errmsg("invalid value for parameter \"%s\" (not shown)", setting);
	GUC_check_errdetail("The URL holds a user name or password, which would be shown to anyone who can read the setting.");
	GUC_check_errhint("Set %s instead.", instead);
	return false;
}

/* emit_log_hook: keep every registered secret out of the message. */
static void
redact_secrets(ErrorData *edata)
{
	int			i;

	for (i = 0; i < nsecrets; i++)
		redact_setting(edata, secret_settings[i]);
	/* Destinations' options may hold secrets. */
	redact_statement(edata, "create_destination", "outbox.create_destination");
	redact_statement(edata, "alter_destination", "outbox.alter_destination");
	redact_statement(edata, "set_destination_secret", "outbox.set_destination_secret");
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

/*
 * Register a secret setting, so that its value is kept out of the server
 * log; the log hook is installed with the first one.  Public API
 * (outbox_publisher.h).
 */
void
OutboxPublisherKeepSecret(const char *setting)
{
	int			i;

	for (i = 0; i < nsecrets; i++)
	{
		if (strcmp(secret_settings[i], setting) == 0)
			return;
	}
	if (nsecrets >= MAX_SECRETS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many outbox secret settings registered"),
				 errdetail("At most %d settings can be kept out of the log.", MAX_SECRETS)));
	secret_settings[nsecrets++] = MemoryContextStrdup(TopMemoryContext, setting);
	outbox_publisher_install_log_hook();
}

/*
 * Install the log hook that keeps secrets out of the server log, once per
 * process (module start calls it; so does the first secret setting).
 */
void
outbox_publisher_install_log_hook(void)
{
	static bool installed = false;

	if (installed)
		return;
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = redact_secrets;
	installed = true;
}

/*
 * Wait for the latch, a socket or a timeout while a publisher has requests
 * in flight, staying responsive to SIGTERM, SIGHUP and postmaster death.
 * Public API (outbox_publisher.h).
 */
int
OutboxPublisherWait(pgsocket sock, int socket_events, long timeout_ms)
{
	int			events = WL_LATCH_SET | WL_EXIT_ON_PM_DEATH;
	int			rc;

	if (timeout_ms >= 0)
		events |= WL_TIMEOUT;
	if (sock != PGINVALID_SOCKET && socket_events != 0)
	{
		events |= socket_events;
		rc = WaitLatchOrSocket(MyLatch, events, sock, timeout_ms, PG_WAIT_EXTENSION);
	}
	else
		rc = WaitLatch(MyLatch, events, timeout_ms, PG_WAIT_EXTENSION);
	if (rc & WL_LATCH_SET)
	{
		/* A commit's wake-up: the worker keeps it for after the batch. */
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
		reload_while_publishing = true;
	}
	return rc;
}

/* Whether the latch was set while a publisher waited; clears it. */
bool
outbox_publisher_take_wakeup(void)
{
	bool		woken = woken_while_publishing;

	woken_while_publishing = false;
	return woken;
}

/*
 * Whether the configuration was reloaded while a publisher waited, so the
 * publisher's reload() is still due; clears it.
 */
bool
outbox_publisher_take_reload(void)
{
	bool		reloaded = reload_while_publishing;

	reload_while_publishing = false;
	return reloaded;
}

/* Monotonic milliseconds.  Public API (outbox_publisher.h). */
int64
OutboxPublisherNowMs(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Start walking a message's headers.  Public API (outbox_publisher.h). */
void
OutboxHeadersBegin(OutboxHeaderIterator *iterator, Jsonb *headers)
{
	iterator->it = JsonbIteratorInit(&headers->root);
	iterator->name = NULL;
	iterator->name_len = 0;
}

/*
 * The next header, or false after the last.  A value that is not a string
 * (which the table's check constraint keeps out) comes as NULL.  Public
 * API (outbox_publisher.h).
 */
bool
OutboxHeadersNext(OutboxHeaderIterator *iterator, OutboxHeader *header)
{
	JsonbValue	v;
	JsonbIteratorToken token;

	if (iterator->it == NULL)
		return false;
	while ((token = JsonbIteratorNext(&iterator->it, &v, true)) != WJB_DONE)
	{
		if (token == WJB_KEY)
		{
			iterator->name = v.val.string.val;
			iterator->name_len = v.val.string.len;
		}
		else if (token == WJB_VALUE)
		{
			header->name = iterator->name;
			header->name_len = iterator->name_len;
			if (v.type == jbvString)
			{
				header->value = v.val.string.val;
				header->value_len = v.val.string.len;
			}
			else
			{
				header->value = NULL;
				header->value_len = 0;
			}
			return true;
		}
	}
	iterator->it = NULL;
	return false;
}

/* Whether a header is called name, in any letter case.  Public API. */
bool
OutboxHeaderNameIs(const OutboxHeader *header, const char *name)
{
	return header->name_len == (int) strlen(name) &&
		pg_strncasecmp(header->name, name, header->name_len) == 0;
}

/*
 * Whether a payload is JSON, other UTF-8 text, or binary.  Payloads saved
 * as jsonb or text are UTF-8 whatever the database encoding, so they are
 * parsed as UTF-8.  Public API (outbox_publisher.h).
 */
OutboxPayloadKind
OutboxPayloadKindOf(const OutboxMessage *message)
{
	JsonLexContext *lex;
	char	   *text;
	bool		json;

	if (!pg_verify_mbstr(PG_UTF8, message->payload, message->payload_len, true))
		return OUTBOX_PAYLOAD_BINARY;
	if (message->payload_len == 0)
		return OUTBOX_PAYLOAD_TEXT;
	text = pnstrdup(message->payload, message->payload_len);
	lex = makeJsonLexContextCstringLen(NULL, text, message->payload_len, PG_UTF8, false);
	json = pg_parse_json(lex, &nullSemAction) == JSON_SUCCESS;
	freeJsonLexContext(lex);
	pfree(text);
	return json ? OUTBOX_PAYLOAD_JSON : OUTBOX_PAYLOAD_TEXT;
}

/*
 * Destinations' options.  The worker sets the destination it publishes for
 * (outbox_publisher_set_destination); publishers read its values with the
 * OutboxOption*() functions.  A destination's own options come first; an
 * option it leaves out takes its setting's value, which is also what the
 * default destination (options NULL) uses.
 */
static const OutboxPublisher *current_publisher = NULL;
static const char *current_destination = "default";
static Jsonb *current_options = NULL;

/*
 * The names of a publisher's secret options, comma-separated, for a hint
 * or a detail ("" when none).
 */
char *
outbox_secret_option_names(const OutboxPublisher *publisher)
{
	StringInfoData names;
	int			i;

	initStringInfo(&names);
	for (i = 0; i < publisher->noptions; i++)
	{
		if (publisher->options[i].secret)
			appendStringInfo(&names, "%s%s", names.len > 0 ? ", " : "",
							 publisher->options[i].name);
	}
	return names.data;
}

/*
 * Whether an option's value holds a URL with a user name or password: an
 * option that is not secret must not, since anyone who reads the
 * destination's options sees it.
 */
static bool
holds_credentials(const OutboxOption *option, JsonbValue *v)
{
	char	   *text;
	bool		found;

	if (option->secret || v->type != jbvString)
		return false;
	text = pnstrdup(v->val.string.val, v->val.string.len);
	found = OutboxUrlHasUserinfo(text, false);
	pfree(text);
	return found;
}

/* Why a destination's options cannot be used; logged once. */
static OutboxProblem stored_options_problem =
	OUTBOX_PROBLEM_INIT(NULL, ERRCODE_INVALID_PARAMETER_VALUE);

/*
 * Make the worker's destination the one the OutboxOption*() calls read.
 * Returns false, with the problem reported (as the publisher's, so that
 * the worker's status shows it), when its options cannot be used: an
 * option that is not secret holds a URL with credentials, as 0.3.0 took
 * them.  The value is never shown; nothing connects with it.
 */
bool
outbox_publisher_set_destination(const OutboxPublisher *publisher, const char *name,
								 Jsonb *options)
{
	char	   *key = NULL;
	char	   *bad = NULL;

	current_publisher = publisher;
	current_destination = name;
	current_options = options;
	if (options != NULL && JB_ROOT_IS_OBJECT(options) && !JB_ROOT_IS_SCALAR(options))
	{
		JsonbIterator *it = JsonbIteratorInit(&options->root);
		JsonbValue	v;
		JsonbIteratorToken token;

		/* To the end, which frees the iterator. */
		while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			if (token == WJB_KEY && bad == NULL)
			{
				if (key)
					pfree(key);
				key = pnstrdup(v.val.string.val, v.val.string.len);
			}
			else if (token == WJB_VALUE && key != NULL && bad == NULL)
			{
				int			i;

				for (i = 0; i < publisher->noptions; i++)
				{
					if (strcmp(publisher->options[i].name, key) == 0 &&
						holds_credentials(&publisher->options[i], &v))
						bad = key;
				}
			}
		}
	}
	if (bad != NULL)
	{
		char	   *secrets = outbox_secret_option_names(publisher);
		char	   *text = psprintf("destination \"%s\" is not used: its option \"%s\" holds a URL with a user name or password",
									name, bad);
		char	   *hint = psprintf("Remove them from the URL with outbox.alter_destination(), and set the secret options (%s) with outbox.set_destination_secret().",
									secrets);

		/* Checked on every poll while it lasts: logged once. */
		stored_options_problem.publisher = publisher->name;
		OutboxPublisherReportProblem(&stored_options_problem, text, hint);
		pfree(text);
		pfree(hint);
		pfree(secrets);
	}
	else
		OutboxPublisherClearProblem(&stored_options_problem);
	if (key)
		pfree(key);
	return bad == NULL;
}

/* The declaration of one of the current publisher's options, or an error. */
static const OutboxOption *
find_option(const OutboxPublisher *publisher, const char *name)
{
	int			i;

	for (i = 0; publisher != NULL && i < publisher->noptions; i++)
	{
		if (strcmp(publisher->options[i].name, name) == 0)
			return &publisher->options[i];
	}
	elog(ERROR, "outbox publisher \"%s\" has no option \"%s\"",
		 publisher ? publisher->name : "(none)", name);
	return NULL;				/* keep the compiler quiet */
}

/* The current destination's own value of an option, or NULL. */
static JsonbValue *
destination_value(const char *name)
{
	JsonbValue	key;

	if (current_options == NULL)
		return NULL;
	key.type = jbvString;
	key.val.string.val = (char *) name;
	key.val.string.len = (int) strlen(name);
	return findJsonbValueFromContainer(&current_options->root, JB_FOBJECT, &key);
}

/* An integer option's text ("5s", "200") as its value in its unit. */
static bool
parse_integer_option(const OutboxOption *option, const char *text, int64 *result)
{
	int			value;
	const char *hint = NULL;

	if (!parse_int(text, &value, option->unit, &hint))
		return false;
	*result = value;
	return true;
}

/* Public API (outbox_publisher.h). */
char *
OutboxOptionString(const char *name)
{
	const OutboxOption *option = find_option(current_publisher, name);
	JsonbValue *v = destination_value(name);

	if (v != NULL && v->type == jbvString)
		return pnstrdup(v->val.string.val, v->val.string.len);
	if (option->setting != NULL)
		return pstrdup(GetConfigOption(option->setting, true, false) ?
					   GetConfigOption(option->setting, true, false) : "");
	return pstrdup("");
}

/* Public API (outbox_publisher.h). */
int64
OutboxOptionInteger(const char *name)
{
	const OutboxOption *option = find_option(current_publisher, name);
	JsonbValue *v = destination_value(name);
	int64		result = 0;

	if (v != NULL && v->type == jbvNumeric)
		return DatumGetInt64(DirectFunctionCall1(numeric_int8,
												 NumericGetDatum(v->val.numeric)));
	if (v != NULL && v->type == jbvString)
	{
		char	   *text = pnstrdup(v->val.string.val, v->val.string.len);

		if (parse_integer_option(option, text, &result))
			return result;
	}
	if (option->setting != NULL)
	{
		const char *text = GetConfigOption(option->setting, true, false);

		if (text != NULL && parse_integer_option(option, text, &result))
			return result;
	}
	return 0;
}

/* Public API (outbox_publisher.h). */
bool
OutboxOptionBoolean(const char *name)
{
	const OutboxOption *option = find_option(current_publisher, name);
	JsonbValue *v = destination_value(name);
	bool		result = false;

	if (v != NULL && v->type == jbvBool)
		return v->val.boolean;
	if (option->setting != NULL)
	{
		const char *text = GetConfigOption(option->setting, true, false);

		if (text != NULL && parse_bool(text, &result))
			return result;
	}
	return false;
}

/* Public API (outbox_publisher.h). */
Jsonb *
OutboxOptionObject(const char *name)
{
	const OutboxOption *option = find_option(current_publisher, name);
	JsonbValue *v = destination_value(name);

	if (v != NULL && v->type == jbvBinary)
		return JsonbValueToJsonb(v);
	if (option->setting != NULL)
	{
		const char *text = GetConfigOption(option->setting, true, false);

		if (text != NULL && text[0] != '\0')
			return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
	}
	return NULL;
}

/* Public API (outbox_publisher.h). */
const char *
OutboxDestinationName(void)
{
	return current_destination;
}

/* Raise the error of a bad option value. */
static void
option_error(const OutboxPublisher *publisher, const OutboxOption *option,
			 const char *problem)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid value for option \"%s\" of publisher \"%s\"",
					option->name, publisher->name),
			 errdetail("%s", problem)));
}

/* The error of an option holding credentials, with the options to use. */
static void
credentials_error(const OutboxPublisher *publisher, const OutboxOption *option)
{
	char	   *secrets = outbox_secret_option_names(publisher);

	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid value for option \"%s\" of publisher \"%s\"",
					option->name, publisher->name),
			 errdetail("The value holds a URL with a user name or password, which would be shown to anyone who can read the destination's options."),
			 secrets[0] != '\0' ?
			 errhint("Put credentials in the secret options of publisher \"%s\" (%s), with outbox.set_destination_secret().",
					 publisher->name, secrets) :
			 errhint("Publisher \"%s\" takes no credentials.", publisher->name)));
}

/* Check one option's value against its declaration. */
static void
check_option_value(const OutboxPublisher *publisher, const OutboxOption *option,
				   JsonbValue *v)
{
	char	   *text = NULL;
	char	   *problem;

	switch (option->type)
	{
		case OUTBOX_OPTION_STRING:
			if (v->type != jbvString)
				option_error(publisher, option, "The value must be a JSON string.");
			if (holds_credentials(option, v))
				credentials_error(publisher, option);
			text = pnstrdup(v->val.string.val, v->val.string.len);
			break;
		case OUTBOX_OPTION_INTEGER:
			{
				int64		value = 0;

				if (v->type == jbvNumeric)
				{
					char	   *digits = DatumGetCString(DirectFunctionCall1(numeric_out,
																			 NumericGetDatum(v->val.numeric)));
					char	   *end;

					errno = 0;
					value = strtoi64(digits, &end, 10);
					if (errno != 0 || *end != '\0')
						option_error(publisher, option, "The value must be a whole number.");
				}
				else if (v->type == jbvString)
				{
					text = pnstrdup(v->val.string.val, v->val.string.len);
					if (!parse_integer_option(option, text, &value))
						option_error(publisher, option,
									 option->unit == GUC_UNIT_MS ?
									 "The value must be a number of milliseconds, or a string with a unit such as \"5s\"." :
									 "The value must be a whole number.");
				}
				else
					option_error(publisher, option, "The value must be a JSON number.");
				if (value < option->min_value || value > option->max_value)
					option_error(publisher, option,
								 psprintf("The value must be between " INT64_FORMAT " and " INT64_FORMAT "%s.",
										  option->min_value, option->max_value,
										  option->unit == GUC_UNIT_MS ? " milliseconds" : ""));
				text = psprintf(INT64_FORMAT, value);
			}
			break;
		case OUTBOX_OPTION_BOOLEAN:
			if (v->type != jbvBool)
				option_error(publisher, option, "The value must be true or false.");
			break;
		case OUTBOX_OPTION_OBJECT:
			{
				Jsonb	   *object;
				OutboxHeaderIterator it;
				OutboxHeader h;

				if (v->type != jbvBinary)
					option_error(publisher, option, "The value must be a JSON object of strings.");
				object = JsonbValueToJsonb(v);
				if (!JB_ROOT_IS_OBJECT(object) || JB_ROOT_IS_SCALAR(object))
					option_error(publisher, option, "The value must be a JSON object of strings.");
				OutboxHeadersBegin(&it, object);
				while (OutboxHeadersNext(&it, &h))
				{
					if (h.value == NULL)
						option_error(publisher, option, "The value must be a JSON object of strings.");
				}
				if (option->check != NULL)
					text = JsonbToCString(NULL, &object->root, VARSIZE(object));
			}
			break;
	}
	if (option->check != NULL && text != NULL &&
		(problem = option->check(text)) != NULL)
		option_error(publisher, option, problem);
}

/*
 * Check a destination's options for a publisher: every key a declared
 * option, every value of its type and in its bounds, every required option
 * there.  Raises an error (22023) naming the first problem.
 */
void
outbox_check_destination_options(const OutboxPublisher *publisher, Jsonb *options)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken token;
	char	   *key = NULL;
	int			i;

	if (!JB_ROOT_IS_OBJECT(options) || JB_ROOT_IS_SCALAR(options))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("destination options must be a JSON object")));

	it = JsonbIteratorInit(&options->root);
	while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (token == WJB_KEY)
		{
			const OutboxOption *option = NULL;

			key = pnstrdup(v.val.string.val, v.val.string.len);
			for (i = 0; i < publisher->noptions && option == NULL; i++)
			{
				if (strcmp(publisher->options[i].name, key) == 0)
					option = &publisher->options[i];
			}
			if (option == NULL)
			{
				StringInfoData known;

				initStringInfo(&known);
				for (i = 0; i < publisher->noptions; i++)
					appendStringInfo(&known, "%s%s", i > 0 ? ", " : "",
									 publisher->options[i].name);
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("unknown option \"%s\" for publisher \"%s\"", key, publisher->name),
						 publisher->noptions > 0 ?
						 errdetail("Publisher \"%s\" takes: %s.", publisher->name, known.data) :
						 errdetail("Publisher \"%s\" takes no options.", publisher->name)));
			}
		}
		else if (token == WJB_VALUE && key != NULL)
		{
			const OutboxOption *option = find_option(publisher, key);

			check_option_value(publisher, option, &v);
		}
	}
	for (i = 0; i < publisher->noptions; i++)
	{
		const OutboxOption *option = &publisher->options[i];
		JsonbValue	k;

		k.type = jbvString;
		k.val.string.val = (char *) option->name;
		k.val.string.len = (int) strlen(option->name);
		if (option->required &&
			findJsonbValueFromContainer(&options->root, JB_FOBJECT, &k) == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"%s\" is required for publisher \"%s\"",
							option->name, publisher->name)));
	}
}

/*
 * Whether an option's value of a publisher may not be shown: a secret
 * option's (unknown options are taken for secret, to be safe), or one
 * holding a URL with credentials (as 0.3.0 took them).
 */
bool
outbox_option_is_secret(const OutboxPublisher *publisher, const char *name,
						JsonbValue *value)
{
	int			i;

	for (i = 0; publisher != NULL && i < publisher->noptions; i++)
	{
		if (strcmp(publisher->options[i].name, name) == 0)
			return publisher->options[i].secret ||
				(value != NULL && holds_credentials(&publisher->options[i], value));
	}
	return true;
}
