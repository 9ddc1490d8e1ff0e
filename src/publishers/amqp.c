/*-------------------------------------------------------------------------
 *
 * amqp.c
 *		The "amqp" publisher (library outbox_amqp): messages published to
 *		RabbitMQ (AMQP 0-9-1) with librabbitmq, each confirmed by a
 *		publisher confirm.
 *
 *	shared_preload_libraries = 'outbox, outbox_amqp'	# after outbox
 *	outbox.publisher = 'amqp'
 *	outbox.amqp_url = 'amqp://127.0.0.1:5672'	# comma-separated, failover
 *	outbox.amqp_exchange = 'amq.topic'		# "{topic}" = the topic
 *	outbox.amqp_routing_key = '{topic}'
 *
 * Each message is published, mandatory and persistent (delivery mode 2),
 * to the exchange outbox.amqp_exchange with the routing key
 * outbox.amqp_routing_key ("{topic}" replaced by the message's topic in
 * both).  Its body is the payload; message-id is the message id,
 * timestamp its created_at (seconds), content-type its "content-type"
 * header when it has one; its headers go into the AMQP headers table
 * (as long strings), with outbox-topic and outbox-key.  With the format
 * cloudevents-binary (outbox.amqp_format, or the destination's format) the
 * CloudEvents attributes go into the headers table too, as ce-*, and
 * content-type is always set (the payload's); with cloudevents-structured
 * the body is the JSON event, content-type application/cloudevents+json,
 * and the message's own content-type header goes into the event.
 *
 * A destination takes the settings below as options ("url", "exchange",
 * "password", ...); the default destination takes the settings.
 *
 * The channel is in confirm mode: a message is OK only once the broker
 * acknowledged it (basic.ack).  A basic.nack, a basic.return (mandatory:
 * no queue is bound for the routing key; RabbitMQ sends it before the ack)
 * and a missing confirm after outbox.amqp_timeout are failed attempts with
 * the broker's text in last_error.  Exchanges are checked (a passive
 * exchange.declare on a second channel) the first time a connection
 * publishes to them, so that a missing exchange fails only its own
 * messages instead of closing the publishing channel under the others.
 * When the broker closes the publishing channel anyway (a message over
 * its max_message_size, an exchange deleted meanwhile), the messages the
 * error names fail with its text, the others in flight go back to pending
 * unchanged, and the channel is opened again.
 *
 * librabbitmq's calls block (its sends wait for the socket without a
 * deadline, which a broker that stops reading, as RabbitMQ does under a
 * memory alarm, would make endless), so the connection is owned by a
 * thread of its own: it connects (trying the servers of outbox.amqp_url in
 * turn), serves heartbeats while idle, and publishes the batches the
 * worker hands it, recording what happens to each message.  That thread
 * never calls PostgreSQL: it works on malloc'd memory (a batch is copied
 * into a librabbitmq pool before it is handed over), takes a pthread mutex,
 * and wakes the worker through a pipe the worker waits on with
 * OutboxPublisherWait().  A thread that stops making progress is cut off
 * (shutdown() of its socket) after outbox.amqp_timeout, and its messages
 * are retried over a new connection.  PostgreSQL's signals are blocked in
 * that thread.
 *
 * The connection is kept across batches.  When it is lost, or cannot be
 * made, batches stay pending (SKIPPED), the problem is logged once, and
 * connecting is tried again with a backoff from 250 ms to 10 s.  A broker
 * that blocks the connection (connection.blocked, RabbitMQ's resource
 * alarms) leaves batches pending as well, until it unblocks it.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <openssl/ssl.h>

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/elog.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "outbox_publisher.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* Longest wait before checking for interrupts. */
#define WAIT_SLICE_MS		100

/* How long a batch waits for a connection being made before it is left pending. */
#define CONNECT_WAIT_MS		1000

/* How long confirms may still come once the broker blocked the connection. */
#define BLOCKED_GRACE_MS	1000

/* Grace after outbox.amqp_timeout before the worker cuts a stuck connection off. */
#define STUCK_GRACE_MS		1000

/* How long the worker waits for the thread to let go of a batch it cut off. */
#define RELEASE_WAIT_MS		2000

/* Reconnection backoff. */
#define BACKOFF_MIN_MS		250
#define BACKOFF_MAX_MS		10000

/* Heartbeat interval asked of the broker, in seconds. */
#define HEARTBEAT_S			30

/* Largest frame asked of the broker (RabbitMQ's default). */
#define FRAME_MAX			131072

/* Content header frame bytes besides the properties themselves, with room to spare. */
#define HEADER_FRAME_OVERHEAD 64

/* AMQP short strings (exchange names, routing keys, table keys): at most 255 bytes. */
#define SHORTSTR_MAX		255

/* The publishing channel and the channel exchanges are checked on. */
#define PUBLISH_CHANNEL		1
#define PROBE_CHANNEL		2

/* Exchanges remembered as existing, per connection. */
#define MAX_KNOWN_EXCHANGES 1024

/* Descriptors the publisher may hold: the wake-up pipes and the socket. */
#define FDS_RESERVED		5

/* Longest error text kept by the thread. */
#define ERROR_TEXT_LEN		512

/* delivery-mode of a persistent message. */
#define DELIVERY_PERSISTENT 2

/*
 * Settings (reload): the default destination's options, and every
 * destination's defaults.
 */
static char *setting_url = NULL;
static char *setting_exchange = NULL;
static char *setting_routing_key = NULL;
static char *setting_username = NULL;
static char *setting_password = NULL;
static char *setting_ca_file = NULL;
static char *setting_cert_file = NULL;
static char *setting_key_file = NULL;
static int	setting_max_pending = 256;
static int	setting_timeout = 5000;
static int	setting_max_message_size = 134217728;

/* The current destination's options, read by read_config(). */
typedef struct AmqpOptions
{
	char	   *url;
	char	   *exchange;
	char	   *routing_key;
	char	   *username;
	char	   *password;
	char	   *ca_file;
	char	   *cert_file;
	char	   *key_file;
	int			max_pending;
	int			timeout;
	int			max_message_size;
	OutboxFormat format;
	char	   *source;			/* CloudEvents source, unless raw */
	bool		is_default;		/* the default destination: messages name settings */
} AmqpOptions;

static AmqpOptions opts;
static MemoryContext opts_context = NULL;

/* One server of outbox.amqp_url. */
typedef struct AmqpServer
{
	char	   *host;
	int			port;
	char	   *vhost;
	bool		tls;
	char	   *text;			/* "amqp://host:port/vhost" as given, for messages */
} AmqpServer;

/*
 * What the thread needs to connect: a malloc'd copy of the settings, made
 * when the connection is started (the settings may change meanwhile).
 */
typedef struct AmqpConfig
{
	int			nservers;
	AmqpServer *servers;
	int			first;			/* index of the server to try first */
	char	   *username;
	char	   *password;
	char	   *ca_file;
	char	   *cert_file;
	char	   *key_file;
	int			timeout_ms;
} AmqpConfig;

/* What happened to one message handed to the thread. */
typedef enum AmqpOutcome
{
	OUT_UNSENT,					/* not published: back to pending */
	OUT_SENT,					/* published, waiting for its confirm */
	OUT_ACKED,					/* confirmed (but see returned) */
	OUT_NACKED,					/* basic.nack */
	OUT_FAILED,					/* failed with error (exchange check, channel error) */
	OUT_BYSTANDER,				/* in flight when another message closed the channel */
	OUT_TIMEOUT,				/* no confirm within the timeout */
	OUT_LOST					/* in flight when the connection was lost */
} AmqpOutcome;

/* One message prepared for the thread; everything in the job's pool. */
typedef struct AmqpOut
{
	int			index;			/* in the worker's results array */
	amqp_bytes_t exchange;
	amqp_bytes_t routing_key;
	amqp_bytes_t body;
	amqp_basic_properties_t props;
	/* Written by the thread. */
	AmqpOutcome outcome;
	bool		returned;		/* came back with basic.return */
	char	   *error;			/* pool text for OUT_FAILED and returns */
	int64		sent_at;		/* OutboxPublisherNowMs() when published */
} AmqpOut;

/*
 * A batch handed to the thread.  Built by the worker, owned by the thread
 * until it sets done (or forever once abandoned: it frees it).
 */
typedef struct AmqpJob
{
	amqp_pool_t pool;
	int			n;
	AmqpOut    *out;
	int			max_pending;
	int			timeout_ms;
	/* Under shared_lock. */
	bool		done;
	bool		cancel;			/* the worker gave up waiting */
	int64		progress_at;	/* last publication or confirm */
	bool		blocked;		/* stopped because the broker blocked the connection */
} AmqpJob;

typedef enum LinkState
{
	LINK_CONNECTING,
	LINK_READY,
	LINK_DEAD
} LinkState;

/*
 * One connection and its thread.  The config, the pipe and the connection
 * state are the thread's; the fields marked are shared under shared_lock.
 */
typedef struct AmqpLink
{
	AmqpConfig *config;
	int			cmd_fds[2];		/* worker -> thread wake-up pipe */
	amqp_connection_state_t conn;	/* the thread's */
	bool		probe_open;		/* the thread's: PROBE_CHANNEL is open */
	uint64_t	next_tag;		/* the thread's: delivery tag of the next publish */
	char	  **known;			/* the thread's: exchanges known to exist */
	int			nknown;
	/* A basic.return being read (the thread's). */
	bool		ret_active;
	bool		ret_have_header;
	uint64_t	ret_body_left;
	char		ret_text[ERROR_TEXT_LEN];
	int64		last_rx;		/* the thread's: socket last readable */
	/* Under shared_lock. */
	LinkState	state;
	char		error[ERROR_TEXT_LEN];	/* why it is dead */
	char		server[ERROR_TEXT_LEN]; /* the server connected to */
	int			frame_max;
	int			sockfd;			/* -1 when none */
	bool		blocked;		/* connection.blocked */
	char		blocked_reason[ERROR_TEXT_LEN];
	AmqpJob    *job;			/* handed over, not done yet */
	bool		stop;			/* the worker asks the thread to close */
	bool		abandoned;		/* the worker forgot it: the thread frees all */
	bool		finished;		/* the thread is gone: the worker frees it */
} AmqpLink;

/* The shared state's lock, and the thread -> worker wake-up pipe. */
static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static int	wake_fds[2] = {-1, -1};
static bool wake_pending = false;

/* The worker's side. */
static AmqpLink *current = NULL;
static char *built_fingerprint = NULL;	/* the settings the link was made with */
static int	next_first_server = 0;
static int64 next_connect_at = 0;
static int	backoff_ms = 0;
static bool fds_reserved = false;

/* The last problem logged, to log each one once. */
static OutboxProblem connection_problem =
	OUTBOX_PROBLEM_INIT("amqp", ERRCODE_CONNECTION_FAILURE);

/* printf into a fixed buffer; safe in any thread. */
static void set_text(char *buf, const char *fmt,...) pg_attribute_printf(2, 3);

static void
set_text(char *buf, const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(buf, ERROR_TEXT_LEN, fmt, ap);
	va_end(ap);
}

/* Forget the problem logged last, and say that it went away. */
static void
clear_problem(void)
{
	if (connection_problem.reported == NULL)
		return;
	ereport(LOG,
			(errmsg("outbox amqp publisher: publishing again (after: %s)",
					connection_problem.reported)));
	OutboxPublisherClearProblem(&connection_problem);
}

/* ------------------------------------------------------------------ settings */

/*
 * Parse one server URL (amqp://host[:port][/vhost] or amqps://...) into
 * *server (strings palloc'd, or malloc'd when use_malloc).  Returns NULL,
 * or why the URL is not acceptable.  The URL is never quoted back: a
 * password put in it by mistake must not reach the log.
 */
static const char *
parse_server(const char *url, AmqpServer *server, bool use_malloc)
{
	char	   *copy = pstrdup(url);
	struct amqp_connection_info info;
	const char *problem = NULL;

	if (pg_strncasecmp(url, "amqp://", 7) != 0 && pg_strncasecmp(url, "amqps://", 8) != 0)
		problem = "A server URL must start with amqp:// or amqps://.";
	else if (OutboxUrlHasUserinfo(url, true))
		problem = "A server URL must not contain a user name or password: use outbox.amqp_username and outbox.amqp_password (a destination's options username and password).";
	else if (strpbrk(url, "?#") != NULL)
		problem = "A server URL must not have a query or fragment part.";
	if (problem == NULL)
	{
		char	   *p;

		/* librabbitmq takes the scheme in lower case only. */
		for (p = copy; *p && *p != ':'; p++)
			*p = (char) pg_ascii_tolower((unsigned char) *p);
		if (amqp_parse_url(copy, &info) != AMQP_STATUS_OK || info.host == NULL || info.host[0] == '\0')
			problem = "A server URL could not be parsed (amqp://host[:port][/vhost], the vhost percent-encoded, %2f for \"/\").";
		else if (info.port <= 0 || info.port > 65535)
			problem = "A server URL has an invalid port.";
	}
	if (problem)
	{
		pfree(copy);
		return problem;
	}
	if (server)
	{
		server->port = info.port;
		server->tls = info.ssl != 0;
		if (use_malloc)
		{
			StringInfoData text;

			server->host = strdup(info.host);
			server->vhost = strdup(info.vhost);
			/* For messages: the URL without the default vhost, else percent-encoded. */
			initStringInfo(&text);
			appendStringInfo(&text, "%s://%s:%d", server->tls ? "amqps" : "amqp",
							 info.host, info.port);
			if (strcmp(info.vhost, "/") != 0)
			{
				const char *p;

				appendStringInfoChar(&text, '/');
				for (p = info.vhost; *p; p++)
				{
					if (isalnum((unsigned char) *p) || strchr("-._~", *p))
						appendStringInfoChar(&text, *p);
					else
						appendStringInfo(&text, "%%%02X", (unsigned char) *p);
				}
			}
			server->text = strdup(text.data);
			pfree(text.data);
		}
		else
		{
			server->host = pstrdup(info.host);
			server->vhost = pstrdup(info.vhost);
			server->text = NULL;
		}
	}
	pfree(copy);
	return NULL;
}

/*
 * Split outbox.amqp_url into its trimmed, non-empty entries (palloc'd).
 * Returns how many; *empty_entry tells whether an entry was empty.
 */
static int
split_servers(const char *list, char ***entries, bool *empty_entry)
{
	char	   *copy = pstrdup(list);
	int			max = 1;
	int			n = 0;
	char	   *p;
	char	   *start = copy;

	for (p = copy; *p; p++)
	{
		if (*p == ',')
			max++;
	}
	*entries = palloc(sizeof(char *) * max);
	*empty_entry = false;
	for (;;)
	{
		char	   *comma = strchr(start, ',');
		char	   *end;

		if (comma)
			*comma = '\0';
		while (*start == ' ')
			start++;
		end = start + strlen(start);
		while (end > start && end[-1] == ' ')
			*--end = '\0';
		if (*start)
			(*entries)[n++] = start;
		else
			*empty_entry = true;
		if (comma == NULL)
			break;
		start = comma + 1;
	}
	return n;
}

/*
 * Why a list of server URLs is not one, or NULL; *bad is the 1-based
 * position of the server at fault (0 for the list as a whole), *n how many
 * there are.  Never quotes the value.
 */
static const char *
servers_problem(const char *list, int *bad, int *n)
{
	char	  **entries;
	bool		empty;
	int			i;

	*n = split_servers(list, &entries, &empty);
	*bad = 0;
	if (*n == 0)
		return "No server is given.";
	if (empty)
		return "The list of servers has an empty entry.";
	for (i = 0; i < *n; i++)
	{
		const char *problem = parse_server(entries[i], NULL, false);

		if (problem)
		{
			*bad = i + 1;
			return problem;
		}
	}
	return NULL;
}

/*
 * The end of a check hook over a check of the option: true when there is no
 * problem, else false with it as the detail.
 */
static bool
no_problem(char *problem)
{
	if (problem)
		GUC_check_errdetail("%s", problem);
	return problem == NULL;
}

/*
 * Check outbox.amqp_url: one or more server URLs, comma-separated.  The
 * error replaces PostgreSQL's usual message, which would quote the value.
 */
static bool
check_amqp_url(char **newval, void **extra, GucSource source)
{
	int			bad;
	int			n;
	const char *problem = servers_problem(*newval, &bad, &n);

	if (problem == NULL)
		return true;
	if (bad > 0)
		GUC_check_errmsg("invalid value for parameter \"outbox.amqp_url\" (server %d of %d)", bad, n);
	GUC_check_errdetail("%s", problem);
	return false;
}

/* The check of a destination's url, over servers_problem(). */
static char *
url_option_problem(const char *value)
{
	int			bad;
	int			n;
	const char *problem = servers_problem(value, &bad, &n);

	if (problem == NULL)
		return NULL;
	if (bad > 0)
		return psprintf("Server %d of %d: %s", bad, n, problem);
	return pstrdup(problem);
}

/* template with every "{topic}" replaced by topic (palloc'd). */
static char *
expand_template(const char *template, const char *topic)
{
	StringInfoData buf;
	const char *p = template;
	const char *hit;

	initStringInfo(&buf);
	while ((hit = strstr(p, "{topic}")) != NULL)
	{
		appendBinaryStringInfo(&buf, p, (int) (hit - p));
		appendStringInfoString(&buf, topic);
		p = hit + strlen("{topic}");
	}
	appendStringInfoString(&buf, p);
	return buf.data;
}

/*
 * Why an exchange or routing-key template is not one, or NULL: with a
 * one-character topic it must fit in an AMQP short string.
 */
static char *
template_problem(const char *value)
{
	char	   *sample = expand_template(value, "t");
	int			len = (int) strlen(sample);

	pfree(sample);
	if (len > SHORTSTR_MAX)
		return psprintf("The template gives names of %d bytes or more; AMQP allows at most %d.",
						len, SHORTSTR_MAX);
	return NULL;
}

/* Check an exchange or routing-key setting, over template_problem(). */
static bool
check_template(char **newval, void **extra, GucSource source)
{
	return no_problem(template_problem(*newval));
}

/* Why a user name is not one, or NULL: AMQP PLAIN needs one. */
static char *
username_problem(const char *value)
{
	return value[0] == '\0' ? pstrdup("The user name must not be empty.") : NULL;
}

/* Check outbox.amqp_username, over username_problem(). */
static bool
check_username(char **newval, void **extra, GucSource source)
{
	return no_problem(username_problem(*newval));
}

/*
 * Read the current destination's options (the settings, for the default
 * destination) into opts.
 */
static void
read_config(void)
{
	MemoryContext old;

	/* Made by _PG_init(). */
	MemoryContextReset(opts_context);
	old = MemoryContextSwitchTo(opts_context);
	opts.url = OutboxOptionString("url");
	opts.exchange = OutboxOptionString("exchange");
	opts.routing_key = OutboxOptionString("routing_key");
	opts.username = OutboxOptionString("username");
	opts.password = OutboxOptionString("password");
	opts.ca_file = OutboxOptionString("ca_file");
	opts.cert_file = OutboxOptionString("cert_file");
	opts.key_file = OutboxOptionString("key_file");
	opts.max_pending = (int) OutboxOptionInteger("max_pending");
	opts.timeout = (int) OutboxOptionInteger("timeout");
	opts.max_message_size = (int) OutboxOptionInteger("max_message_size");
	opts.format = OutboxOptionFormat(&opts.source);
	opts.is_default = strcmp(OutboxDestinationName(), "default") == 0;
	MemoryContextSwitchTo(old);
}

/*
 * What messages call an option: its setting for the default destination,
 * else the destination's option.
 */
static char *
option_label(const char *option)
{
	if (opts.is_default)
		return psprintf("outbox.amqp_%s", option);
	return psprintf("option %s of destination \"%s\"", option, OutboxDestinationName());
}

/* The hint of a connection problem. */
static char *
connection_hint(void)
{
	if (opts.is_default)
		return pstrdup("Check outbox.amqp_url, outbox.amqp_username and outbox.amqp_password, and that the broker runs.");
	return psprintf("Check the options url, username and password of destination \"%s\", and that the broker runs.",
					OutboxDestinationName());
}

/*
 * The options a connection is made with, as one string: a change of any
 * means a new connection.
 */
static char *
connection_fingerprint(void)
{
	return psprintf("%s\n%s\n%s\n%s\n%s\n%s", opts.url, opts.username, opts.password,
					opts.ca_file, opts.cert_file, opts.key_file);
}

/*
 * The topic check at save time, with the settings (the saving backend has
 * no destination): a topic that would make an exchange name or routing key
 * longer than AMQP allows is refused.
 */
static char *
amqp_check_topic(const char *topic)
{
	char	   *exchange = expand_template(setting_exchange, topic);
	char	   *routing_key = expand_template(setting_routing_key, topic);
	char	   *problem = NULL;

	if (strlen(exchange) > SHORTSTR_MAX)
		problem = psprintf("With outbox.amqp_exchange = '%s' the exchange name would be %d bytes; AMQP allows at most %d.",
						   setting_exchange, (int) strlen(exchange), SHORTSTR_MAX);
	else if (strlen(routing_key) > SHORTSTR_MAX)
		problem = psprintf("With outbox.amqp_routing_key = '%s' the routing key would be %d bytes; AMQP allows at most %d.",
						   setting_routing_key, (int) strlen(routing_key), SHORTSTR_MAX);
	pfree(exchange);
	pfree(routing_key);
	return problem;
}

/* ------------------------------------------------------------------ the connection's thread */

/*
 * Everything below up to the worker's side runs in the connection's
 * thread: no PostgreSQL calls (no palloc, no ereport), only malloc,
 * librabbitmq and the mutex.
 */

/* Wake the worker: one byte in the pipe until it reads it.  Call with shared_lock held. */
static void
wake_worker_locked(void)
{
	if (!wake_pending && wake_fds[1] >= 0)
	{
		wake_pending = true;
		if (write(wake_fds[1], "x", 1) < 0)
			wake_pending = false;
	}
}

/* Read what a pipe holds. */
static void
drain_pipe(int fd)
{
	char		buf[64];

	while (read(fd, buf, sizeof(buf)) > 0)
		;
}

/* A short string from librabbitmq as C text, cut to fit. */
static void
bytes_text(char *buf, size_t size, amqp_bytes_t bytes)
{
	size_t		len = Min(bytes.len, size - 1);

	memcpy(buf, bytes.bytes, len);
	buf[len] = '\0';
}

/*
 * Describe a failed librabbitmq RPC: the broker's reply (connection.close
 * or channel.close: "ACCESS_REFUSED - ... (403)") or the library's error.
 */
static void
describe_reply(char *buf, amqp_rpc_reply_t reply)
{
	char		text[ERROR_TEXT_LEN];

	switch (reply.reply_type)
	{
		case AMQP_RESPONSE_NORMAL:
			set_text(buf, "no error");
			break;
		case AMQP_RESPONSE_NONE:
			set_text(buf, "no reply from the broker");
			break;
		case AMQP_RESPONSE_LIBRARY_EXCEPTION:
			set_text(buf, "%s", amqp_error_string2(reply.library_error));
			break;
		case AMQP_RESPONSE_SERVER_EXCEPTION:
			if (reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
			{
				amqp_connection_close_t *m = reply.reply.decoded;

				bytes_text(text, sizeof(text), m->reply_text);
				set_text(buf, "%s (%d)", text, (int) m->reply_code);
			}
			else if (reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
			{
				amqp_channel_close_t *m = reply.reply.decoded;

				bytes_text(text, sizeof(text), m->reply_text);
				set_text(buf, "%s (%d)", text, (int) m->reply_code);
			}
			else
				set_text(buf, "unexpected method 0x%08x from the broker", (unsigned) reply.reply.id);
			break;
	}
}

static void link_fail(AmqpLink *lk, const char *fmt,...) pg_attribute_printf(2, 3);

/* Record why the connection is gone (the first reason only). */
static void
link_fail(AmqpLink *lk, const char *fmt,...)
{
	pthread_mutex_lock(&shared_lock);
	if (lk->state != LINK_DEAD)
	{
		va_list		ap;

		va_start(ap, fmt);
		vsnprintf(lk->error, ERROR_TEXT_LEN, fmt, ap);
		va_end(ap);
		lk->state = LINK_DEAD;
	}
	pthread_mutex_unlock(&shared_lock);
}

/* Whether the connection is still usable (not dead, not asked to stop). */
static bool
link_alive(AmqpLink *lk)
{
	bool		alive;

	pthread_mutex_lock(&shared_lock);
	alive = lk->state != LINK_DEAD && !lk->stop && !lk->abandoned;
	pthread_mutex_unlock(&shared_lock);
	return alive;
}

/* Record progress of the job, for the worker's watchdog. */
static void
job_progress(AmqpJob *job)
{
	pthread_mutex_lock(&shared_lock);
	job->progress_at = OutboxPublisherNowMs();
	pthread_mutex_unlock(&shared_lock);
}

/* A copy of text in the job's pool (NULL when out of memory). */
static char *
pool_text(AmqpJob *job, const char *text)
{
	size_t		len = strlen(text);
	char	   *copy = amqp_pool_alloc(&job->pool, len + 1);

	if (copy)
		memcpy(copy, text, len + 1);
	return copy;
}

/* Open a channel; false (with the reason in buf) when it failed. */
static bool
open_channel(AmqpLink *lk, amqp_channel_t channel, bool confirm, char *buf)
{
	amqp_rpc_reply_t reply;

	amqp_channel_open(lk->conn, channel);
	reply = amqp_get_rpc_reply(lk->conn);
	if (reply.reply_type != AMQP_RESPONSE_NORMAL)
	{
		describe_reply(buf, reply);
		return false;
	}
	if (confirm)
	{
		amqp_confirm_select(lk->conn, channel);
		reply = amqp_get_rpc_reply(lk->conn);
		if (reply.reply_type != AMQP_RESPONSE_NORMAL)
		{
			describe_reply(buf, reply);
			return false;
		}
		lk->next_tag = 1;
	}
	return true;
}

/* Answer a channel.close of the broker. */
static bool
close_ok(AmqpLink *lk, amqp_channel_t channel)
{
	amqp_channel_close_ok_t ok;
	int			rc;

	memset(&ok, 0, sizeof(ok));
	rc = amqp_send_method(lk->conn, channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
	if (rc != AMQP_STATUS_OK)
	{
		link_fail(lk, "could not answer the broker: %s", amqp_error_string2(rc));
		return false;
	}
	return true;
}

/* Whether an exchange is known to exist on this connection. */
static bool
exchange_known(AmqpLink *lk, amqp_bytes_t name)
{
	int			i;

	if (name.len == 0)
		return true;			/* the default exchange always exists */
	for (i = 0; i < lk->nknown; i++)
	{
		if (strlen(lk->known[i]) == name.len && memcmp(lk->known[i], name.bytes, name.len) == 0)
			return true;
	}
	return false;
}

/* Remember that an exchange exists. */
static void
remember_exchange(AmqpLink *lk, amqp_bytes_t name)
{
	char	   *copy;

	if (lk->known == NULL)
	{
		lk->known = calloc(MAX_KNOWN_EXCHANGES, sizeof(char *));
		if (lk->known == NULL)
			return;
	}
	if (lk->nknown == MAX_KNOWN_EXCHANGES)
	{
		while (lk->nknown > 0)
			free(lk->known[--lk->nknown]);
	}
	copy = malloc(name.len + 1);
	if (copy == NULL)
		return;
	memcpy(copy, name.bytes, name.len);
	copy[name.len] = '\0';
	lk->known[lk->nknown++] = copy;
}

/* Forget an exchange (the broker said it does not exist). */
static void
forget_exchange(AmqpLink *lk, const char *name)
{
	int			i;

	for (i = 0; i < lk->nknown; i++)
	{
		if (strcmp(lk->known[i], name) == 0)
		{
			free(lk->known[i]);
			lk->known[i] = lk->known[--lk->nknown];
			return;
		}
	}
}

/*
 * Check that the exchanges of a job exist, with a passive exchange.declare
 * on the probe channel for those not checked before on this connection.
 * The messages for an exchange that does not exist (or may not be used)
 * fail with the broker's text.  Returns false when the connection is gone.
 */
static bool
probe_exchanges(AmqpLink *lk, AmqpJob *job)
{
	int			i;

	for (i = 0; i < job->n; i++)
	{
		AmqpOut    *o = &job->out[i];
		amqp_rpc_reply_t reply;
		char		why[ERROR_TEXT_LEN];
		char		name[SHORTSTR_MAX + 1];
		int			j;

		if (o->outcome != OUT_UNSENT || exchange_known(lk, o->exchange))
			continue;
		if (!lk->probe_open)
		{
			if (!open_channel(lk, PROBE_CHANNEL, false, why))
			{
				link_fail(lk, "could not open a channel: %s", why);
				return false;
			}
			lk->probe_open = true;
		}
		amqp_exchange_declare(lk->conn, PROBE_CHANNEL, o->exchange, amqp_cstring_bytes("topic"),
							  1, 0, 0, 0, amqp_empty_table);
		reply = amqp_get_rpc_reply(lk->conn);
		job_progress(job);
		if (reply.reply_type == AMQP_RESPONSE_NORMAL)
		{
			remember_exchange(lk, o->exchange);
			continue;
		}
		if (reply.reply_type != AMQP_RESPONSE_SERVER_EXCEPTION ||
			reply.reply.id != AMQP_CHANNEL_CLOSE_METHOD)
		{
			describe_reply(why, reply);
			link_fail(lk, "%s", why);
			return false;
		}
		/* The broker closed the probe channel: the exchange is not usable. */
		describe_reply(why, reply);
		lk->probe_open = false;
		if (!close_ok(lk, PROBE_CHANNEL))
			return false;
		bytes_text(name, sizeof(name), o->exchange);
		for (j = i; j < job->n; j++)
		{
			AmqpOut    *other = &job->out[j];
			char		text[ERROR_TEXT_LEN * 2];

			if (other->outcome != OUT_UNSENT || other->exchange.len != o->exchange.len ||
				memcmp(other->exchange.bytes, o->exchange.bytes, o->exchange.len) != 0)
				continue;
			snprintf(text, sizeof(text), "amqp: the broker refused exchange \"%s\": %s", name, why);
			other->outcome = OUT_FAILED;
			other->error = pool_text(job, text);
		}
		job_progress(job);
	}
	return true;
}

/* The index in job of the message published with delivery tag tag, or -1. */
static int
find_by_tag(AmqpJob *job, uint64_t first_tag, const int *sent_order, int nsent, uint64_t tag)
{
	if (tag < first_tag || tag - first_tag >= (uint64_t) nsent)
		return -1;
	return sent_order[tag - first_tag];
}

/*
 * Mark messages confirmed (ack) or refused (nack): the one with this tag,
 * or with multiple every one up to it.  Returns how many were in flight.
 */
static int
confirm(AmqpJob *job, uint64_t first_tag, const int *sent_order, int nsent,
		int *floor, uint64_t tag, bool multiple, bool ack)
{
	int			settled = 0;

	if (job == NULL || tag < first_tag)
		return 0;
	if (multiple)
	{
		uint64_t	last = Min(tag - first_tag, (uint64_t) nsent - 1);
		int			k;

		if (nsent == 0)
			return 0;
		for (k = *floor; k <= (int) last; k++)
		{
			AmqpOut    *o = &job->out[sent_order[k]];

			if (o->outcome == OUT_SENT)
			{
				o->outcome = ack ? OUT_ACKED : OUT_NACKED;
				settled++;
			}
		}
	}
	else
	{
		int			idx = find_by_tag(job, first_tag, sent_order, nsent, tag);

		if (idx >= 0 && job->out[idx].outcome == OUT_SENT)
		{
			job->out[idx].outcome = ack ? OUT_ACKED : OUT_NACKED;
			settled++;
		}
	}
	while (*floor < nsent && job->out[sent_order[*floor]].outcome != OUT_SENT)
		(*floor)++;
	return settled;
}

/*
 * The broker closed the publishing channel: the messages its text names
 * (an exchange that does not exist, a message over the size limit) fail
 * with it; the others in flight go back to pending.  When it names none,
 * all in flight fail.  Returns how many were in flight.
 */
static int
channel_closed(AmqpLink *lk, AmqpJob *job, amqp_channel_close_t *m)
{
	char		text[ERROR_TEXT_LEN];
	char		error[ERROR_TEXT_LEN * 2];
	char		exchange[SHORTSTR_MAX + 1] = "";
	long long	size = -1;
	const char *p;
	int			culprits = 0;
	int			settled = 0;
	int			pass;
	int			i;

	bytes_text(text, sizeof(text), m->reply_text);
	snprintf(error, sizeof(error), "amqp: the broker closed the channel: %s (%d)", text,
			 (int) m->reply_code);
	if ((p = strstr(text, "no exchange '")) != NULL)
	{
		const char *start = p + strlen("no exchange '");
		const char *end = strchr(start, '\'');

		if (end && end - start <= SHORTSTR_MAX)
		{
			memcpy(exchange, start, end - start);
			exchange[end - start] = '\0';
			forget_exchange(lk, exchange);
		}
	}
	else if ((p = strstr(text, "message size ")) != NULL)
		size = strtoll(p + strlen("message size "), NULL, 10);

	if (job == NULL)
		return 0;
	for (pass = 0; pass < 2; pass++)
	{
		for (i = 0; i < job->n; i++)
		{
			AmqpOut    *o = &job->out[i];
			bool		named;

			if (o->outcome != OUT_SENT)
				continue;
			named = (exchange[0] != '\0' && o->exchange.len == strlen(exchange) &&
					 memcmp(o->exchange.bytes, exchange, o->exchange.len) == 0) ||
				(size >= 0 && (long long) o->body.len == size);
			if (pass == 0)
			{
				if (named)
					culprits++;
				continue;
			}
			if (named || culprits == 0)
			{
				o->outcome = OUT_FAILED;
				o->error = pool_text(job, error);
			}
			else
				o->outcome = OUT_BYSTANDER;
			settled++;
		}
	}
	return settled;
}

/* The message in flight with this message-id, or NULL. */
static AmqpOut *
find_by_message_id(AmqpJob *job, amqp_bytes_t id)
{
	int			i;

	if (job == NULL)
		return NULL;
	for (i = 0; i < job->n; i++)
	{
		AmqpOut    *o = &job->out[i];

		if (o->outcome == OUT_SENT && o->props.message_id.len == id.len &&
			memcmp(o->props.message_id.bytes, id.bytes, id.len) == 0)
			return o;
	}
	return NULL;
}

/* State of the job being published, for the frame handler. */
typedef struct JobRun
{
	AmqpJob    *job;			/* NULL while idle */
	uint64_t	first_tag;
	int		   *sent_order;		/* job indexes in publication order */
	int			nsent;
	int			floor;			/* first entry of sent_order maybe in flight */
	int			inflight;
	bool		channel_lost;	/* the broker closed the publishing channel */
} JobRun;

/*
 * Handle one frame from the broker.  Returns false when the connection is
 * gone.
 */
static bool
handle_frame(AmqpLink *lk, JobRun *run, amqp_frame_t *frame)
{
	AmqpJob    *job = run->job;

	if (frame->frame_type == AMQP_FRAME_HEADER)
	{
		if (lk->ret_active && !lk->ret_have_header && frame->channel == PUBLISH_CHANNEL)
		{
			amqp_basic_properties_t *p = frame->payload.properties.decoded;
			AmqpOut    *o = NULL;

			lk->ret_have_header = true;
			lk->ret_body_left = frame->payload.properties.body_size;
			if (p && (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG))
				o = find_by_message_id(job, p->message_id);
			if (o)
			{
				o->returned = true;
				o->error = pool_text(job, lk->ret_text);
			}
			if (lk->ret_body_left == 0)
				lk->ret_active = false;
		}
		return true;
	}
	if (frame->frame_type == AMQP_FRAME_BODY)
	{
		if (lk->ret_active && lk->ret_have_header && frame->channel == PUBLISH_CHANNEL)
		{
			uint64_t	len = frame->payload.body_fragment.len;

			lk->ret_body_left -= Min(len, lk->ret_body_left);
			if (lk->ret_body_left == 0)
				lk->ret_active = false;
		}
		return true;
	}
	if (frame->frame_type != AMQP_FRAME_METHOD)
		return true;

	switch (frame->payload.method.id)
	{
		case AMQP_BASIC_ACK_METHOD:
			if (frame->channel == PUBLISH_CHANNEL)
			{
				amqp_basic_ack_t *m = frame->payload.method.decoded;

				run->inflight -= confirm(job, run->first_tag, run->sent_order, run->nsent,
										 &run->floor, m->delivery_tag, m->multiple, true);
				if (job)
					job_progress(job);
			}
			break;
		case AMQP_BASIC_NACK_METHOD:
			if (frame->channel == PUBLISH_CHANNEL)
			{
				amqp_basic_nack_t *m = frame->payload.method.decoded;

				run->inflight -= confirm(job, run->first_tag, run->sent_order, run->nsent,
										 &run->floor, m->delivery_tag, m->multiple, false);
				if (job)
					job_progress(job);
			}
			break;
		case AMQP_BASIC_RETURN_METHOD:
			if (frame->channel == PUBLISH_CHANNEL)
			{
				amqp_basic_return_t *m = frame->payload.method.decoded;
				char		reply[SHORTSTR_MAX + 1];
				char		exchange[SHORTSTR_MAX + 1];
				char		routing_key[SHORTSTR_MAX + 1];

				bytes_text(reply, sizeof(reply), m->reply_text);
				bytes_text(exchange, sizeof(exchange), m->exchange);
				bytes_text(routing_key, sizeof(routing_key), m->routing_key);
				set_text(lk->ret_text,
						 "amqp: the broker returned the message as unroutable: %d %s (exchange \"%s\", routing key \"%s\")",
						 (int) m->reply_code, reply, exchange, routing_key);
				lk->ret_active = true;
				lk->ret_have_header = false;
			}
			break;
		case AMQP_CHANNEL_CLOSE_METHOD:
			{
				amqp_channel_close_t *m = frame->payload.method.decoded;

				if (frame->channel == PUBLISH_CHANNEL)
				{
					run->inflight -= channel_closed(lk, job, m);
					run->channel_lost = true;
					lk->ret_active = false;
				}
				else if (frame->channel == PROBE_CHANNEL)
					lk->probe_open = false;
				if (!close_ok(lk, frame->channel))
					return false;
				if (job)
					job_progress(job);
			}
			break;
		case AMQP_CONNECTION_CLOSE_METHOD:
			{
				amqp_connection_close_t *m = frame->payload.method.decoded;
				amqp_connection_close_ok_t ok;
				char		text[ERROR_TEXT_LEN];

				bytes_text(text, sizeof(text), m->reply_text);
				memset(&ok, 0, sizeof(ok));
				(void) amqp_send_method(lk->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
				link_fail(lk, "the broker closed the connection: %s (%d)", text, (int) m->reply_code);
				return false;
			}
		case AMQP_CONNECTION_BLOCKED_METHOD:
			{
				amqp_connection_blocked_t *m = frame->payload.method.decoded;
				char		text[ERROR_TEXT_LEN];

				bytes_text(text, sizeof(text), m->reason);
				pthread_mutex_lock(&shared_lock);
				lk->blocked = true;
				set_text(lk->blocked_reason, "%s", text);
				wake_worker_locked();
				pthread_mutex_unlock(&shared_lock);
			}
			break;
		case AMQP_CONNECTION_UNBLOCKED_METHOD:
			pthread_mutex_lock(&shared_lock);
			lk->blocked = false;
			wake_worker_locked();
			pthread_mutex_unlock(&shared_lock);
			break;
		default:
			break;
	}
	return true;
}

/*
 * Read and handle every frame available now, without waiting.  Returns
 * false when the connection is gone.
 */
static bool
read_frames(AmqpLink *lk, JobRun *run)
{
	for (;;)
	{
		struct timeval zero = {0, 0};
		amqp_frame_t frame;
		int			rc = amqp_simple_wait_frame_noblock(lk->conn, &frame, &zero);

		if (rc == AMQP_STATUS_TIMEOUT)
			break;
		if (rc != AMQP_STATUS_OK)
		{
			link_fail(lk, "%s", amqp_error_string2(rc));
			return false;
		}
		lk->last_rx = OutboxPublisherNowMs();
		if (!handle_frame(lk, run, &frame))
			return false;
	}
	amqp_maybe_release_buffers(lk->conn);
	return true;
}

/*
 * Wait up to ms for the socket or the worker's pipe, then read what came.
 * Returns false when the connection is gone (or missed its heartbeats).
 */
static bool
wait_and_read(AmqpLink *lk, JobRun *run, int ms)
{
	struct pollfd fds[2];
	int			sockfd = amqp_get_sockfd(lk->conn);

	if (amqp_frames_enqueued(lk->conn) || amqp_data_in_buffer(lk->conn))
		ms = 0;
	fds[0].fd = lk->cmd_fds[0];
	fds[0].events = POLLIN;
	fds[1].fd = sockfd;
	fds[1].events = POLLIN;
	fds[0].revents = fds[1].revents = 0;
	if (poll(fds, 2, Max(ms, 0)) < 0 && errno != EINTR)
	{
		link_fail(lk, "poll failed: %s", strerror(errno));
		return false;
	}
	if (fds[0].revents & POLLIN)
		drain_pipe(lk->cmd_fds[0]);
	if (fds[1].revents)
		lk->last_rx = OutboxPublisherNowMs();
	else if (OutboxPublisherNowMs() - lk->last_rx > 2 * HEARTBEAT_S * 1000 + 5000)
	{
		link_fail(lk, "no heartbeat from the broker for %d s", 2 * HEARTBEAT_S);
		return false;
	}
	return read_frames(lk, run);
}

/*
 * Publish a job: check its exchanges, publish its messages in order with
 * up to max_pending unconfirmed, and wait for their confirms.  Returns
 * false when the connection is gone.
 */
static bool
run_job(AmqpLink *lk, AmqpJob *job)
{
	JobRun		run;
	int			next = 0;
	int			since_read = 0;
	int64		blocked_at = 0;
	bool		alive = true;
	bool		stop = false;
	int			i;

	memset(&run, 0, sizeof(run));
	run.job = job;
	run.sent_order = amqp_pool_alloc(&job->pool, sizeof(int) * Max(job->n, 1));
	if (run.sent_order == NULL)
	{
		link_fail(lk, "out of memory");
		return false;
	}
	/* Confirms of an earlier job that gave up on them are read first. */
	alive = read_frames(lk, &run) && probe_exchanges(lk, job);
	run.first_tag = lk->next_tag;

	while (alive && (next < job->n || run.inflight > 0))
	{
		bool		blocked;
		bool		cancel;

		pthread_mutex_lock(&shared_lock);
		blocked = lk->blocked;
		cancel = job->cancel || lk->stop || lk->abandoned;
		job->blocked = blocked;
		pthread_mutex_unlock(&shared_lock);
		if (cancel)
			break;
		if (blocked && blocked_at == 0)
			blocked_at = OutboxPublisherNowMs();
		stop = stop || blocked || run.channel_lost;

		/* Publish while the window has room. */
		while (!stop && next < job->n && run.inflight < job->max_pending)
		{
			AmqpOut    *o = &job->out[next];
			int			rc;

			if (o->outcome != OUT_UNSENT)
			{
				next++;
				continue;
			}
			rc = amqp_basic_publish(lk->conn, PUBLISH_CHANNEL, o->exchange, o->routing_key,
									1, 0, &o->props, o->body);
			if (rc != AMQP_STATUS_OK)
			{
				/* Maybe partly written: the connection cannot go on. */
				o->outcome = OUT_LOST;
				link_fail(lk, "could not publish: %s", amqp_error_string2(rc));
				alive = false;
				break;
			}
			o->outcome = OUT_SENT;
			o->sent_at = OutboxPublisherNowMs();
			run.sent_order[run.nsent++] = next;
			lk->next_tag++;
			run.inflight++;
			next++;
			if (++since_read >= 64)
			{
				/* Read confirms as they come, so the broker never waits for us. */
				since_read = 0;
				job_progress(job);
				if (!read_frames(lk, &run))
				{
					alive = false;
					break;
				}
				if (run.channel_lost)
					stop = true;
			}
		}
		if (!alive)
			break;
		job_progress(job);

		/* Give up on confirms that are overdue. */
		if (run.inflight > 0)
		{
			int64		now = OutboxPublisherNowMs();
			int64		oldest = INT64_MAX;
			int64		deadline;

			for (i = run.floor; i < run.nsent; i++)
			{
				AmqpOut    *o = &job->out[run.sent_order[i]];

				if (o->outcome == OUT_SENT)
				{
					oldest = o->sent_at;
					break;
				}
			}
			/*
			 * A blocked broker does not read what we sent after its block
			 * until it lifts it: give its confirms a moment, then let those
			 * messages go back to pending, uncounted.
			 */
			deadline = oldest == INT64_MAX ? now : oldest + job->timeout_ms;
			if (blocked_at != 0)
				deadline = Min(deadline, blocked_at + BLOCKED_GRACE_MS);
			if (oldest != INT64_MAX && now >= deadline)
			{
				for (i = run.floor; i < run.nsent; i++)
				{
					AmqpOut    *o = &job->out[run.sent_order[i]];

					if (o->outcome == OUT_SENT)
						o->outcome = blocked_at != 0 ? OUT_BYSTANDER : OUT_TIMEOUT;
				}
				run.inflight = 0;
				run.floor = run.nsent;
				/* The remaining messages wait for the next batch. */
				stop = true;
				continue;
			}
			alive = wait_and_read(lk, &run, (int) Min(WAIT_SLICE_MS, deadline - now));
		}
		else if (stop)
			break;
		else if (next < job->n)
			alive = read_frames(lk, &run);
	}

	if (alive && run.channel_lost)
	{
		char		why[ERROR_TEXT_LEN];

		/* Messages published after the failing one were dropped with the channel. */
		for (i = run.floor; i < run.nsent; i++)
		{
			AmqpOut    *o = &job->out[run.sent_order[i]];

			if (o->outcome == OUT_SENT)
				o->outcome = OUT_BYSTANDER;
		}
		if (!open_channel(lk, PUBLISH_CHANNEL, true, why))
		{
			link_fail(lk, "could not open the publishing channel again: %s", why);
			alive = false;
		}
	}

	/* What is still in flight: lost with the connection, or abandoned. */
	for (i = 0; i < run.nsent; i++)
	{
		AmqpOut    *o = &job->out[run.sent_order[i]];

		if (o->outcome == OUT_SENT)
			o->outcome = alive ? OUT_TIMEOUT : OUT_LOST;
	}
	return alive;
}

/*
 * librabbitmq reports a failed TCP connection as "a socket error
 * occurred": find out why (name resolution, refused, unreachable) with a
 * connection of our own, for a useful message.
 */
static void
diagnose_connect(const char *host, int port, int timeout_ms, char *buf)
{
	struct addrinfo hints;
	struct addrinfo *addrs = NULL;
	struct addrinfo *a;
	char		service[16];
	int			rc;
	int			last_errno = 0;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	snprintf(service, sizeof(service), "%d", port);
	rc = getaddrinfo(host, service, &hints, &addrs);
	if (rc != 0)
	{
		set_text(buf, "could not resolve \"%s\": %s", host, gai_strerror(rc));
		return;
	}
	for (a = addrs; a; a = a->ai_next)
	{
		int			fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
								a->ai_protocol);
		struct pollfd pfd;
		int			err = 0;
		socklen_t	len = sizeof(err);

		if (fd < 0)
		{
			last_errno = errno;
			continue;
		}
		if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
		{
			close(fd);
			last_errno = 0;
			break;
		}
		if (errno != EINPROGRESS)
		{
			last_errno = errno;
			close(fd);
			continue;
		}
		pfd.fd = fd;
		pfd.events = POLLOUT;
		rc = poll(&pfd, 1, timeout_ms);
		if (rc == 0)
			err = ETIMEDOUT;
		else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
			err = errno;
		close(fd);
		last_errno = err;
		if (err == 0)
			break;
	}
	freeaddrinfo(addrs);
	if (last_errno != 0)
		set_text(buf, "%s", strerror(last_errno));
	else
		set_text(buf, "the connection failed (it works now)");
}

/*
 * Connect to one server, log in, open the publishing channel in confirm
 * mode.  Returns false with the reason in buf.
 */
static bool
connect_server(AmqpLink *lk, const AmqpServer *server, char *buf)
{
	const AmqpConfig *cfg = lk->config;
	amqp_socket_t *sock;
	struct timeval tv;
	amqp_rpc_reply_t reply;
	amqp_table_entry_t capabilities[1];
	amqp_table_entry_t properties[3];
	amqp_table_t client;
	char		why[ERROR_TEXT_LEN];
	int			rc;

	lk->conn = amqp_new_connection();
	if (lk->conn == NULL)
	{
		set_text(buf, "out of memory");
		return false;
	}
	if (server->tls)
	{
		sock = amqp_ssl_socket_new(lk->conn);
		if (sock == NULL)
		{
			set_text(buf, "could not set up TLS");
			return false;
		}
		amqp_ssl_socket_set_verify_peer(sock, 1);
		amqp_ssl_socket_set_verify_hostname(sock, 1);
		if (cfg->ca_file[0] != '\0')
		{
			if (amqp_ssl_socket_set_cacert(sock, cfg->ca_file) != AMQP_STATUS_OK)
			{
				set_text(buf, "could not read the CA file \"%s\"", cfg->ca_file);
				return false;
			}
		}
		else if (SSL_CTX_set_default_verify_paths(amqp_ssl_socket_get_context(sock)) != 1)
		{
			set_text(buf, "could not load the system's CA certificates");
			return false;
		}
		if (cfg->cert_file[0] != '\0' &&
			amqp_ssl_socket_set_key(sock, cfg->cert_file, cfg->key_file) != AMQP_STATUS_OK)
		{
			set_text(buf, "could not read the client certificate \"%s\" or its key \"%s\"",
					 cfg->cert_file, cfg->key_file);
			return false;
		}
	}
	else
		sock = amqp_tcp_socket_new(lk->conn);
	if (sock == NULL)
	{
		set_text(buf, "could not create a socket");
		return false;
	}

	tv.tv_sec = cfg->timeout_ms / 1000;
	tv.tv_usec = (cfg->timeout_ms % 1000) * 1000;
	rc = amqp_socket_open_noblock(sock, server->host, server->port, &tv);
	if (rc == AMQP_STATUS_SOCKET_ERROR || rc == AMQP_STATUS_HOSTNAME_RESOLUTION_FAILED)
	{
		diagnose_connect(server->host, server->port, cfg->timeout_ms, buf);
		return false;
	}
	if (rc != AMQP_STATUS_OK)
	{
		set_text(buf, "%s", amqp_error_string2(rc));
		return false;
	}
	pthread_mutex_lock(&shared_lock);
	lk->sockfd = amqp_get_sockfd(lk->conn);
	pthread_mutex_unlock(&shared_lock);
	amqp_set_handshake_timeout(lk->conn, &tv);
	amqp_set_rpc_timeout(lk->conn, &tv);

	/* Ask for connection.blocked, and name the connection. */
	capabilities[0].key = amqp_cstring_bytes("connection.blocked");
	capabilities[0].value.kind = AMQP_FIELD_KIND_BOOLEAN;
	capabilities[0].value.value.boolean = 1;
	properties[0].key = amqp_cstring_bytes("capabilities");
	properties[0].value.kind = AMQP_FIELD_KIND_TABLE;
	properties[0].value.value.table.num_entries = 1;
	properties[0].value.value.table.entries = capabilities;
	properties[1].key = amqp_cstring_bytes("connection_name");
	properties[1].value.kind = AMQP_FIELD_KIND_UTF8;
	properties[1].value.value.bytes = amqp_cstring_bytes("outbox worker");
	properties[2].key = amqp_cstring_bytes("product");
	properties[2].value.kind = AMQP_FIELD_KIND_UTF8;
	properties[2].value.value.bytes = amqp_cstring_bytes("outbox");
	client.num_entries = 3;
	client.entries = properties;

	reply = amqp_login_with_properties(lk->conn, server->vhost, 0, FRAME_MAX, HEARTBEAT_S,
									   &client, AMQP_SASL_METHOD_PLAIN,
									   cfg->username, cfg->password);
	if (reply.reply_type != AMQP_RESPONSE_NORMAL)
	{
		describe_reply(why, reply);
		set_text(buf, "the broker refused the login of user \"%s\" to vhost \"%s\": %s",
				 cfg->username, server->vhost, why);
		return false;
	}
	if (!open_channel(lk, PUBLISH_CHANNEL, true, why))
	{
		set_text(buf, "could not open a channel in confirm mode: %s", why);
		return false;
	}
	lk->probe_open = false;
	lk->last_rx = OutboxPublisherNowMs();
	return true;
}

/* Close and free the connection (gracefully when it is still alive). */
static void
close_connection(AmqpLink *lk, bool graceful)
{
	if (lk->conn == NULL)
		return;
	if (graceful)
	{
		struct timeval tv = {1, 0};

		amqp_set_rpc_timeout(lk->conn, &tv);
		(void) amqp_connection_close(lk->conn, AMQP_REPLY_SUCCESS);
	}
	pthread_mutex_lock(&shared_lock);
	lk->sockfd = -1;
	pthread_mutex_unlock(&shared_lock);
	amqp_destroy_connection(lk->conn);
	lk->conn = NULL;
}

/* Free a link and everything it holds (by the worker, or by an abandoned thread). */
static void
free_link(AmqpLink *lk)
{
	AmqpConfig *cfg = lk->config;
	int			i;

	if (cfg)
	{
		for (i = 0; i < cfg->nservers; i++)
		{
			free(cfg->servers[i].host);
			free(cfg->servers[i].vhost);
			free(cfg->servers[i].text);
		}
		free(cfg->servers);
		if (cfg->password)
			explicit_bzero(cfg->password, strlen(cfg->password));
		free(cfg->username);
		free(cfg->password);
		free(cfg->ca_file);
		free(cfg->cert_file);
		free(cfg->key_file);
		free(cfg);
	}
	for (i = 0; i < lk->nknown; i++)
		free(lk->known[i]);
	free(lk->known);
	if (lk->cmd_fds[0] >= 0)
		close(lk->cmd_fds[0]);
	if (lk->cmd_fds[1] >= 0)
		close(lk->cmd_fds[1]);
	free(lk);
}

/* Free a job and its pool. */
static void
free_job(AmqpJob *job)
{
	empty_amqp_pool(&job->pool);
	free(job);
}

/*
 * The connection's thread: connect, then serve heartbeats and publish the
 * jobs the worker hands over, until the connection is lost or the worker
 * lets go of it.
 */
static void *
link_main(void *arg)
{
	AmqpLink   *lk = (AmqpLink *) arg;
	AmqpConfig *cfg = lk->config;
	char		why[ERROR_TEXT_LEN] = "";
	bool		connected = false;
	bool		abandoned;
	int			i;

	for (i = 0; i < cfg->nservers && !connected; i++)
	{
		const AmqpServer *server = &cfg->servers[(cfg->first + i) % cfg->nservers];

		if (!link_alive(lk))
			break;
		connected = connect_server(lk, server, why);
		pthread_mutex_lock(&shared_lock);
		if (connected)
		{
			lk->state = LINK_READY;
			lk->frame_max = amqp_get_frame_max(lk->conn);
			set_text(lk->server, "%s", server->text);
		}
		else if (i == cfg->nservers - 1 || lk->stop || lk->abandoned)
		{
			if (cfg->nservers == 1)
				set_text(lk->error, "could not connect to %s: %s", server->text, why);
			else
				set_text(lk->error, "could not connect to any of the %d servers (last: %s: %s)",
						 cfg->nservers, server->text, why);
			lk->state = LINK_DEAD;
		}
		wake_worker_locked();
		pthread_mutex_unlock(&shared_lock);
		if (!connected)
			close_connection(lk, false);
	}

	while (connected)
	{
		AmqpJob    *job;
		bool		stop;
		JobRun		idle;

		pthread_mutex_lock(&shared_lock);
		job = lk->job;
		stop = lk->stop || lk->abandoned || lk->state == LINK_DEAD;
		pthread_mutex_unlock(&shared_lock);
		if (stop)
			break;
		if (job)
		{
			bool		alive = run_job(lk, job);

			pthread_mutex_lock(&shared_lock);
			job->done = true;
			lk->job = NULL;
			if (lk->abandoned)
				free_job(job);
			wake_worker_locked();
			pthread_mutex_unlock(&shared_lock);
			if (!alive)
				break;
			continue;
		}
		memset(&idle, 0, sizeof(idle));
		if (!wait_and_read(lk, &idle, 1000))
			break;
		if (idle.channel_lost)
		{
			/* A late error of an earlier job closed the publishing channel. */
			if (!open_channel(lk, PUBLISH_CHANNEL, true, why))
			{
				link_fail(lk, "could not open the publishing channel again: %s", why);
				break;
			}
		}
	}

	pthread_mutex_lock(&shared_lock);
	connected = connected && lk->state != LINK_DEAD;
	if (lk->state != LINK_DEAD)
	{
		set_text(lk->error, "the connection was closed");
		lk->state = LINK_DEAD;
	}
	pthread_mutex_unlock(&shared_lock);
	close_connection(lk, connected);

	pthread_mutex_lock(&shared_lock);
	abandoned = lk->abandoned;
	if (lk->job && abandoned)
	{
		free_job(lk->job);
		lk->job = NULL;
	}
	else if (lk->job)
	{
		/* Handed over after the connection died: nothing of it was sent. */
		lk->job->done = true;
		lk->job = NULL;
	}
	lk->finished = true;
	if (!abandoned)
		wake_worker_locked();
	pthread_mutex_unlock(&shared_lock);
	if (abandoned)
		free_link(lk);
	return NULL;
}

/* ------------------------------------------------------------------ the worker's side */

/* Read what the wake-up pipe holds, so that it can wake us again. */
static void
drain_wake_pipe(void)
{
	pthread_mutex_lock(&shared_lock);
	drain_pipe(wake_fds[0]);
	wake_pending = false;
	pthread_mutex_unlock(&shared_lock);
}

/* Wait up to ms for the thread (or an interrupt). */
static void
wait_for_thread(long ms)
{
	(void) OutboxPublisherWait(wake_fds[0], WL_SOCKET_READABLE, Max(ms, 0));
	drain_wake_pipe();
}

/* Wake the thread. */
static void
wake_thread(AmqpLink *lk)
{
	if (write(lk->cmd_fds[1], "x", 1) < 0)
	{
		/* The pipe is full: the thread will look anyway. */
	}
}

/* A malloc'd copy, or ERROR. */
static char *
strdup_or_error(const char *s)
{
	char	   *copy = strdup(s);

	if (copy == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	return copy;
}

/*
 * Copy the settings for a new connection's thread into lk->config (set
 * first, so that free_link() frees a partial copy after an error).
 */
static void
build_config(AmqpLink *lk)
{
	AmqpConfig *cfg;
	char	  **entries;
	bool		empty;
	int			n = split_servers(opts.url, &entries, &empty);
	int			i;

	cfg = calloc(1, sizeof(AmqpConfig));
	if (cfg == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	lk->config = cfg;
	cfg->servers = calloc(Max(n, 1), sizeof(AmqpServer));
	if (cfg->servers == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	for (i = 0; i < n; i++)
	{
		AmqpServer *server = &cfg->servers[cfg->nservers];

		/* The check hook accepted the list. */
		if (parse_server(entries[i], server, true) != NULL)
			continue;
		cfg->nservers++;
		if (server->host == NULL || server->vhost == NULL || server->text == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory")));
	}
	cfg->first = next_first_server % Max(cfg->nservers, 1);
	cfg->username = strdup_or_error(opts.username);
	cfg->password = strdup_or_error(opts.password);
	cfg->ca_file = strdup_or_error(opts.ca_file);
	cfg->cert_file = strdup_or_error(opts.cert_file);
	cfg->key_file = strdup_or_error(opts.key_file[0] ? opts.key_file : opts.cert_file);
	cfg->timeout_ms = opts.timeout;
}

/* Make the wake-up pipes non-blocking and close-on-exec. */
static void
make_pipe(int fds[2])
{
	if (pipe(fds) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("outbox amqp publisher: could not create a pipe: %m")));
	fcntl(fds[0], F_SETFL, O_NONBLOCK);
	fcntl(fds[1], F_SETFL, O_NONBLOCK);
	fcntl(fds[0], F_SETFD, FD_CLOEXEC);
	fcntl(fds[1], F_SETFD, FD_CLOEXEC);
}

/* Start a new connection in its thread. */
static void
start_link(void)
{
	AmqpLink   *lk;
	pthread_t	thread;
	sigset_t	saved;
	int			rc;

	Assert(current == NULL);
	if (!fds_reserved)
	{
		int			i;

		for (i = 0; i < FDS_RESERVED; i++)
			ReserveExternalFD();
		fds_reserved = true;
	}
	if (wake_fds[0] < 0)
		make_pipe(wake_fds);

	lk = calloc(1, sizeof(AmqpLink));
	if (lk == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	lk->cmd_fds[0] = lk->cmd_fds[1] = -1;
	lk->sockfd = -1;
	lk->state = LINK_CONNECTING;
	PG_TRY();
	{
		build_config(lk);
		make_pipe(lk->cmd_fds);
	}
	PG_CATCH();
	{
		free_link(lk);
		PG_RE_THROW();
	}
	PG_END_TRY();

	/* The thread inherits a mask that keeps PostgreSQL's signals away from it. */
	OutboxPublisherBlockSignals(&saved);
	rc = pthread_create(&thread, NULL, link_main, lk);
	if (rc == 0)
		pthread_detach(thread);
	pthread_sigmask(SIG_SETMASK, &saved, NULL);
	if (rc != 0)
	{
		free_link(lk);
		ereport(ERROR,
				(errmsg("outbox amqp publisher: could not start a thread: %s", strerror(rc))));
	}
	current = lk;
	if (built_fingerprint)
		pfree(built_fingerprint);
	built_fingerprint = MemoryContextStrdup(TopMemoryContext, connection_fingerprint());
}

/*
 * Let go of the current connection: the thread closes it (gracefully
 * unless cut) and frees everything itself.
 */
static void
drop_link(bool cut)
{
	AmqpLink   *lk = current;
	bool		finished;

	if (lk == NULL)
		return;
	current = NULL;
	pthread_mutex_lock(&shared_lock);
	finished = lk->finished;
	if (!finished)
	{
		lk->stop = true;
		lk->abandoned = true;
		if (cut && lk->sockfd >= 0)
			shutdown(lk->sockfd, SHUT_RDWR);
	}
	pthread_mutex_unlock(&shared_lock);
	if (finished)
		free_link(lk);
	else
		wake_thread(lk);
}

/* Count a failed connection and set when to try the next. */
static void
back_off(void)
{
	backoff_ms = backoff_ms == 0 ? BACKOFF_MIN_MS : Min(backoff_ms * 2, BACKOFF_MAX_MS);
	next_connect_at = OutboxPublisherNowMs() + backoff_ms;
	next_first_server++;
}

/*
 * Make sure a connection is ready, waiting up to CONNECT_WAIT_MS for one
 * being made.  Returns false, with the problem reported, when the batch
 * cannot be published now.
 */
static bool
ensure_connected(void)
{
	int64		deadline = OutboxPublisherNowMs() + CONNECT_WAIT_MS;

	if (current == NULL)
	{
		if (OutboxPublisherNowMs() < next_connect_at)
			return false;
		start_link();
	}
	for (;;)
	{
		LinkState	state;
		bool		blocked;
		char		text[ERROR_TEXT_LEN];

		pthread_mutex_lock(&shared_lock);
		state = current->state;
		blocked = current->blocked;
		if (state == LINK_DEAD)
			memcpy(text, current->error, sizeof(text));
		else if (blocked)
			memcpy(text, current->blocked_reason, sizeof(text));
		else
			memcpy(text, current->server, sizeof(text));
		pthread_mutex_unlock(&shared_lock);

		if (state == LINK_READY && !blocked)
		{
			backoff_ms = 0;
			return true;
		}
		if (state == LINK_READY && blocked)
		{
			StringInfoData buf;

			initStringInfo(&buf);
			appendStringInfoString(&buf, "the broker blocked publishing (connection.blocked: ");
			OutboxPublisherAppendPrintable(&buf, text, (int) strlen(text), true);
			appendStringInfoString(&buf, ")");
			OutboxPublisherReportProblem(&connection_problem, buf.data, "RabbitMQ blocks publishers while a memory or disk alarm is in effect.");
			return false;
		}
		if (state == LINK_DEAD)
		{
			StringInfoData buf;

			initStringInfo(&buf);
			OutboxPublisherAppendPrintable(&buf, text, (int) strlen(text), true);
			drop_link(true);
			back_off();
			OutboxPublisherReportProblem(&connection_problem, buf.data, connection_hint());
			return false;
		}
		if (OutboxPublisherNowMs() >= deadline)
			break;
		wait_for_thread(Min(WAIT_SLICE_MS, deadline - OutboxPublisherNowMs()));
	}
	OutboxPublisherReportProblem(&connection_problem, psprintf("still connecting to %s", opts.url), NULL);
	return false;
}

/* Copy len bytes into the job's pool, as amqp_bytes_t. */
static amqp_bytes_t
pool_bytes(AmqpJob *job, const char *data, size_t len)
{
	amqp_bytes_t b;

	b.len = len;
	b.bytes = amqp_pool_alloc(&job->pool, Max(len, 1));
	if (b.bytes == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	if (len > 0)
		memcpy(b.bytes, data, len);
	return b;
}

/*
 * Headers this publisher sets itself.  The id and created_at travel as the
 * message-id and timestamp properties: every header entry costs the
 * broker (RabbitMQ decodes the headers table of every message it takes).
 */
static const char *const own_headers[] = {
	"outbox-topic", "outbox-key", NULL
};

/* Whether name is one of own_headers, ignoring case. */
static bool
is_own_header(const char *name)
{
	const char *const *h;

	for (h = own_headers; *h; h++)
	{
		if (pg_strcasecmp(name, *h) == 0)
			return true;
	}
	return false;
}

/* "amqp: <what> "<name>" (for topic "<topic>") is N bytes; ..." */
static char *
too_long(const char *what, const char *name, const char *topic)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "amqp: the %s \"", what);
	OutboxPublisherAppendPrintable(&buf, name, Min((int) strlen(name), 100), false);
	appendStringInfoString(&buf, "...\" (for topic \"");
	OutboxPublisherAppendPrintable(&buf, topic, Min((int) strlen(topic), 100), false);
	appendStringInfo(&buf, "\") is %d bytes; AMQP allows at most %d", (int) strlen(name), SHORTSTR_MAX);
	return buf.data;
}

/*
 * Prepare one message for the thread in job->out[k].  Returns false with
 * the message rejected when it can never be published as it is.
 */
static bool
prepare_message(AmqpJob *job, int k, const OutboxMessage *m, OutboxPublishResult *result,
				int frame_max)
{
	AmqpOut    *o = &job->out[k];
	char	   *exchange = expand_template(opts.exchange, m->topic);
	char	   *routing_key = expand_template(opts.routing_key, m->topic);
	OutboxHeaderIterator it;
	OutboxHeader h;
	int			nheaders = 0;
	int			i;
	size_t		props_size;
	char	   *problem = NULL;
	char	   *content_type = NULL;
	char	  **names;
	char	  **values;
	const char *body = m->payload;
	int			body_len = m->payload_len;

	/* Structured: the body is the event. */
	if (opts.format == OUTBOX_FORMAT_CLOUDEVENTS_STRUCTURED)
		body = OutboxCloudEventJson(m, opts.source, &body_len);
	if (strlen(exchange) > SHORTSTR_MAX)
		problem = too_long("exchange name", exchange, m->topic);
	else if (strlen(routing_key) > SHORTSTR_MAX)
		problem = too_long("routing key", routing_key, m->topic);
	else if ((int64) body_len > (int64) opts.max_message_size)
		problem = psprintf("amqp: the message is %d bytes, more than %s (%d bytes)",
						   body_len, option_label("max_message_size"), opts.max_message_size);
	if (problem)
	{
		result->status = OUTBOX_PUBLISH_REJECT;
		result->error = problem;
		return false;
	}

	/* The message's headers, checked; room for ours and the attributes. */
	names = palloc(sizeof(char *) * (JsonContainerSize(&m->headers->root) + 4 +
									 OUTBOX_CLOUDEVENT_MAX_ATTRIBUTES));
	values = palloc(sizeof(char *) * (JsonContainerSize(&m->headers->root) + 4 +
									  OUTBOX_CLOUDEVENT_MAX_ATTRIBUTES));
	OutboxHeadersBegin(&it, m->headers);
	while (problem == NULL && OutboxHeadersNext(&it, &h))
	{
		char	   *name = pnstrdup(h.name, h.name_len);

		if (strlen(name) > SHORTSTR_MAX)
			problem = psprintf("amqp: a message header name is %d bytes; AMQP allows at most %d",
							   (int) strlen(name), SHORTSTR_MAX);
		else if (is_own_header(name))
			problem = psprintf("amqp: message header \"%s\" cannot be sent: the amqp publisher sets it itself",
							   name);
		else if (opts.format == OUTBOX_FORMAT_CLOUDEVENTS_BINARY &&
				 OutboxCloudEventHeaderIsReserved(&h, "ce-"))
			problem = psprintf("amqp: message header \"%s\" cannot be sent: with format cloudevents-binary the amqp publisher sets it itself",
							   name);
		else if (h.value == NULL)
			problem = psprintf("amqp: message header \"%s\" is not a string", name);
		if (problem)
			break;
		if (pg_strcasecmp(name, "content-type") == 0)
		{
			content_type = pnstrdup(h.value, h.value_len);
			if (strlen(content_type) > SHORTSTR_MAX)
				problem = psprintf("amqp: the content-type header is %d bytes; the AMQP content-type property holds at most %d",
								   (int) strlen(content_type), SHORTSTR_MAX);
			/* Structured: it is the event's datacontenttype. */
			if (opts.format == OUTBOX_FORMAT_CLOUDEVENTS_STRUCTURED)
				continue;
		}
		names[nheaders] = name;
		values[nheaders] = pnstrdup(h.value, h.value_len);
		nheaders++;
	}
	if (problem)
	{
		result->status = OUTBOX_PUBLISH_REJECT;
		result->error = problem;
		return false;
	}
	names[nheaders] = "outbox-topic";
	values[nheaders++] = (char *) m->topic;
	names[nheaders] = "outbox-key";
	values[nheaders++] = (char *) m->key;
	if (opts.format == OUTBOX_FORMAT_CLOUDEVENTS_STRUCTURED)
		content_type = OUTBOX_CLOUDEVENTS_JSON;
	else if (opts.format == OUTBOX_FORMAT_CLOUDEVENTS_BINARY)
	{
		OutboxCloudEventAttribute attributes[OUTBOX_CLOUDEVENT_MAX_ATTRIBUTES];
		int			n = OutboxCloudEventAttributes(m, opts.source, "ce-", false, attributes);

		for (i = 0; i < n; i++)
		{
			names[nheaders] = (char *) attributes[i].name;
			values[nheaders++] = (char *) attributes[i].value;
		}
		if (content_type == NULL)
			content_type = OutboxPayloadContentType(m);
	}

	/* Properties must fit in the content header frame. */
	props_size = HEADER_FRAME_OVERHEAD + 1 + strlen(m->id_text) + 8 + 1 + 4 +
		(content_type ? 1 + strlen(content_type) : 0);
	for (i = 0; i < nheaders; i++)
		props_size += 1 + strlen(names[i]) + 1 + 4 + strlen(values[i]);
	if (props_size > (size_t) frame_max)
	{
		result->status = OUTBOX_PUBLISH_REJECT;
		result->error = psprintf("amqp: the message's headers and properties take about %zu bytes, more than one AMQP frame holds (frame_max %d bytes)",
								 props_size, frame_max);
		return false;
	}

	memset(o, 0, sizeof(*o));
	o->exchange = pool_bytes(job, exchange, strlen(exchange));
	o->routing_key = pool_bytes(job, routing_key, strlen(routing_key));
	o->body = pool_bytes(job, body, body_len);
	o->props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG |
		AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_HEADERS_FLAG;
	o->props.delivery_mode = DELIVERY_PERSISTENT;
	o->props.message_id = pool_bytes(job, m->id_text, strlen(m->id_text));
	o->props.timestamp = (uint64_t) (m->created_at / USECS_PER_SEC +
									 (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY);
	if (content_type)
	{
		o->props._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
		o->props.content_type = pool_bytes(job, content_type, strlen(content_type));
	}
	o->props.headers.num_entries = nheaders;
	o->props.headers.entries = amqp_pool_alloc(&job->pool, sizeof(amqp_table_entry_t) * nheaders);
	if (o->props.headers.entries == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	for (i = 0; i < nheaders; i++)
	{
		amqp_table_entry_t *e = &o->props.headers.entries[i];

		e->key = pool_bytes(job, names[i], strlen(names[i]));
		e->value.kind = AMQP_FIELD_KIND_UTF8;
		e->value.value.bytes = pool_bytes(job, values[i], strlen(values[i]));
	}
	o->outcome = OUT_UNSENT;
	return true;
}

/* Build the job of a batch: the messages that can be published, copied. */
static AmqpJob *
build_job(OutboxMessage *messages, int nmessages, OutboxPublishResult *results, int frame_max)
{
	AmqpJob    *job = calloc(1, sizeof(AmqpJob));

	if (job == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	init_amqp_pool(&job->pool, 64 * 1024);
	PG_TRY();
	{
		int			i;

		job->out = amqp_pool_alloc(&job->pool, sizeof(AmqpOut) * Max(nmessages, 1));
		if (job->out == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory")));
		for (i = 0; i < nmessages; i++)
		{
			if (prepare_message(job, job->n, &messages[i], &results[i], frame_max))
				job->out[job->n++].index = i;
		}
	}
	PG_CATCH();
	{
		free_job(job);
		PG_RE_THROW();
	}
	PG_END_TRY();
	job->max_pending = opts.max_pending;
	job->timeout_ms = opts.timeout;
	return job;
}

/* The result of one message the thread is done with. */
static void
set_result(const AmqpOut *o, OutboxPublishResult *r, const char *lost_reason, int timeout_ms)
{
	switch (o->outcome)
	{
		case OUT_ACKED:
			if (o->returned)
			{
				r->status = OUTBOX_PUBLISH_RETRY;
				r->error = pstrdup(o->error ? o->error : "amqp: the broker returned the message as unroutable");
			}
			else
			{
				r->status = OUTBOX_PUBLISH_OK;
				r->error = NULL;
			}
			break;
		case OUT_NACKED:
			r->status = OUTBOX_PUBLISH_RETRY;
			r->error = pstrdup("amqp: the broker refused the message (basic.nack)");
			break;
		case OUT_FAILED:
			r->status = OUTBOX_PUBLISH_RETRY;
			r->error = pstrdup(o->error ? o->error : "amqp: the broker refused the message");
			break;
		case OUT_TIMEOUT:
			r->status = OUTBOX_PUBLISH_RETRY;
			r->error = psprintf("amqp: no publisher confirm from the broker within %d ms", timeout_ms);
			break;
		case OUT_LOST:
		case OUT_SENT:
			{
				StringInfoData buf;

				initStringInfo(&buf);
				appendStringInfoString(&buf, "amqp: the connection to the broker was lost before it confirmed the message (");
				OutboxPublisherAppendPrintable(&buf, lost_reason, (int) strlen(lost_reason), true);
				appendStringInfoChar(&buf, ')');
				r->status = OUTBOX_PUBLISH_RETRY;
				r->error = buf.data;
			}
			break;
		case OUT_UNSENT:
		case OUT_BYSTANDER:
			r->status = OUTBOX_PUBLISH_SKIPPED;
			r->error = NULL;
			break;
	}
}

/*
 * Hand a job to the thread and wait until it is done with it.  A thread
 * that makes no progress for outbox.amqp_timeout (plus a grace) has its
 * socket shut down, which ends whatever call it is stuck in.  Returns
 * false when the job had to be left to the thread (its results are then
 * set here).
 */
static bool
run_job_in_thread(AmqpJob *job, OutboxPublishResult *results)
{
	AmqpLink   *lk = current;
	int64		cut_at = 0;
	int			i;

	pthread_mutex_lock(&shared_lock);
	job->progress_at = OutboxPublisherNowMs();
	lk->job = job;
	pthread_mutex_unlock(&shared_lock);
	wake_thread(lk);

	for (;;)
	{
		bool		done;
		int64		progress_at;
		int64		now;

		pthread_mutex_lock(&shared_lock);
		done = job->done;
		progress_at = job->progress_at;
		pthread_mutex_unlock(&shared_lock);
		if (done)
			return true;
		now = OutboxPublisherNowMs();
		if (cut_at == 0 && now - progress_at > job->timeout_ms + STUCK_GRACE_MS)
		{
			pthread_mutex_lock(&shared_lock);
			job->cancel = true;
			if (lk->sockfd >= 0)
				shutdown(lk->sockfd, SHUT_RDWR);
			set_text(lk->error, "the broker did not take or confirm messages for %d ms",
					 job->timeout_ms + STUCK_GRACE_MS);
			lk->state = LINK_DEAD;
			pthread_mutex_unlock(&shared_lock);
			wake_thread(lk);
			cut_at = now;
		}
		if (cut_at != 0 && now - cut_at > RELEASE_WAIT_MS)
			break;
		wait_for_thread(WAIT_SLICE_MS);
	}

	/* The thread is stuck with the job: leave both to it. */
	for (i = 0; i < job->n; i++)
	{
		OutboxPublishResult *r = &results[job->out[i].index];

		r->status = OUTBOX_PUBLISH_RETRY;
		r->error = psprintf("amqp: no publisher confirm from the broker within %d ms", job->timeout_ms);
	}
	pthread_mutex_lock(&shared_lock);
	lk->abandoned = true;
	lk->stop = true;
	pthread_mutex_unlock(&shared_lock);
	current = NULL;
	back_off();
	return false;
}

/* ------------------------------------------------------------------ callbacks of the publisher API */

/* Publish a batch; see the file header. */
static void
amqp_publish(OutboxMessage *messages, int nmessages, OutboxPublishResult *results)
{
	AmqpJob    *job;
	int			frame_max;
	int			i;
	bool		any_ok = false;
	bool		blocked;
	bool		dead;
	char		reason[ERROR_TEXT_LEN];

	read_config();
	if (!ensure_connected())
	{
		for (i = 0; i < nmessages; i++)
			results[i].status = OUTBOX_PUBLISH_SKIPPED;
		return;
	}
	pthread_mutex_lock(&shared_lock);
	frame_max = current->frame_max > 0 ? current->frame_max : FRAME_MAX;
	pthread_mutex_unlock(&shared_lock);

	job = build_job(messages, nmessages, results, frame_max);
	if (job->n == 0)
	{
		free_job(job);
		return;
	}
	if (!run_job_in_thread(job, results))
	{
		OutboxPublisherReportProblem(&connection_problem, "the broker stopped taking messages; reconnecting", NULL);
		return;
	}

	pthread_mutex_lock(&shared_lock);
	dead = current->state == LINK_DEAD;
	blocked = job->blocked;
	memcpy(reason, dead ? current->error : current->blocked_reason, sizeof(reason));
	pthread_mutex_unlock(&shared_lock);

	for (i = 0; i < job->n; i++)
	{
		const AmqpOut *o = &job->out[i];
		OutboxPublishResult *r = &results[o->index];

		set_result(o, r, reason, job->timeout_ms);
		if (r->status == OUTBOX_PUBLISH_OK)
			any_ok = true;
	}
	free_job(job);

	if (any_ok)
		clear_problem();
	if (dead)
	{
		StringInfoData buf;

		initStringInfo(&buf);
		appendStringInfoString(&buf, "the connection to the broker was lost (");
		OutboxPublisherAppendPrintable(&buf, reason, (int) strlen(reason), true);
		appendStringInfoString(&buf, "); reconnecting");
		drop_link(true);
		OutboxPublisherReportProblem(&connection_problem, buf.data, NULL);
	}
	else if (blocked)
		(void) ensure_connected();	/* reports the block */
}

/* Reconnect when the settings the connection was made with changed. */
static void
amqp_reload(void)
{
	char	   *fingerprint;

	read_config();
	if (current == NULL || built_fingerprint == NULL)
		return;
	fingerprint = connection_fingerprint();
	if (strcmp(fingerprint, built_fingerprint) != 0)
	{
		ereport(LOG,
				(errmsg("outbox amqp publisher: reconnecting with the new settings")));
		drop_link(false);
		next_connect_at = 0;
		backoff_ms = 0;
	}
	explicit_bzero(fingerprint, strlen(fingerprint));
	pfree(fingerprint);
}

/*
 * Close the connection.  The thread gets a moment to close it gracefully;
 * the process may exit right after.
 */
static void
amqp_shutdown(void)
{
	AmqpLink   *lk = current;
	int64		deadline = OutboxPublisherNowMs() + 1500;
	bool		finished = false;
	bool		busy;

	if (lk == NULL)
		return;
	pthread_mutex_lock(&shared_lock);
	lk->stop = true;
	busy = lk->job != NULL;
	if (busy && lk->sockfd >= 0)
		shutdown(lk->sockfd, SHUT_RDWR);
	pthread_mutex_unlock(&shared_lock);
	wake_thread(lk);
	while (!finished && OutboxPublisherNowMs() < deadline)
	{
		struct pollfd pfd;

		pthread_mutex_lock(&shared_lock);
		finished = lk->finished;
		pthread_mutex_unlock(&shared_lock);
		if (finished)
			break;
		/* No latch here: this runs when the worker exits. */
		pfd.fd = wake_fds[0];
		pfd.events = POLLIN;
		(void) poll(&pfd, 1, 50);
		drain_wake_pipe();
	}
	if (finished)
	{
		current = NULL;
		free_link(lk);
	}
	else
		drop_link(true);
	OutboxPublisherClearProblem(&connection_problem);
}

/* A destination's options; each defaults to its setting. */
static const OutboxOption amqp_options[] = {
	{.name = "url", .type = OUTBOX_OPTION_STRING, .setting = "outbox.amqp_url",
	.check = url_option_problem},
	{.name = "exchange", .type = OUTBOX_OPTION_STRING, .setting = "outbox.amqp_exchange",
	.check = template_problem},
	{.name = "routing_key", .type = OUTBOX_OPTION_STRING, .setting = "outbox.amqp_routing_key",
	.check = template_problem},
	{.name = "username", .type = OUTBOX_OPTION_STRING, .setting = "outbox.amqp_username",
	.check = username_problem},
	{.name = "password", .type = OUTBOX_OPTION_STRING, .setting = "outbox.amqp_password",
	.secret = true},
	{.name = "ca_file", .type = OUTBOX_OPTION_STRING, .setting = "outbox.amqp_ca_file"},
	{.name = "cert_file", .type = OUTBOX_OPTION_STRING, .setting = "outbox.amqp_cert_file"},
	{.name = "key_file", .type = OUTBOX_OPTION_STRING, .setting = "outbox.amqp_key_file"},
	{.name = "max_pending", .type = OUTBOX_OPTION_INTEGER, .setting = "outbox.amqp_max_pending",
	.min_value = 1, .max_value = 65536},
	{.name = "timeout", .type = OUTBOX_OPTION_INTEGER, .setting = "outbox.amqp_timeout",
	.unit = GUC_UNIT_MS, .min_value = 100, .max_value = 3600 * 1000},
	{.name = "max_message_size", .type = OUTBOX_OPTION_INTEGER,
		.setting = "outbox.amqp_max_message_size", .unit = GUC_UNIT_BYTE,
	.min_value = 1024, .max_value = INT_MAX},
	OUTBOX_FORMAT_OPTIONS("outbox.amqp_format"),
};

static const OutboxPublisher amqp_publisher = {
	.api_version = OUTBOX_PUBLISHER_API_VERSION,
	.name = "amqp",
	.in_transaction = false,
	.check_topic = amqp_check_topic,
	.init = read_config,		/* connects on the first batch */
	.publish = amqp_publish,
	.reload = amqp_reload,
	.shutdown = amqp_shutdown,
	.options = amqp_options,
	.noptions = lengthof(amqp_options),
};

/* Define the settings and register the publisher. */
void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("outbox_amqp must be loaded via shared_preload_libraries"),
				 errhint("Add it after outbox: shared_preload_libraries = 'outbox, outbox_amqp'.")));

	DefineCustomStringVariable("outbox.amqp_url",
							   "AMQP servers the amqp publisher connects to (comma-separated amqp:// or amqps:// URLs, tried in turn).",
							   NULL,
							   &setting_url,
							   "amqp://127.0.0.1:5672",
							   PGC_SIGHUP,
							   0,
							   check_amqp_url, NULL, NULL);

	DefineCustomStringVariable("outbox.amqp_exchange",
							   "Exchange the amqp publisher publishes a message to.",
							   "\"{topic}\" in it is replaced by the message's topic; empty means the default exchange.",
							   &setting_exchange,
							   "amq.topic",
							   PGC_SIGHUP,
							   0,
							   check_template, NULL, NULL);

	DefineCustomStringVariable("outbox.amqp_routing_key",
							   "Routing key of the amqp publisher's messages.",
							   "\"{topic}\" in it is replaced by the message's topic.",
							   &setting_routing_key,
							   "{topic}",
							   PGC_SIGHUP,
							   0,
							   check_template, NULL, NULL);

	DefineCustomStringVariable("outbox.amqp_username",
							   "User the amqp publisher logs in as (SASL PLAIN).",
							   NULL,
							   &setting_username,
							   "guest",
							   PGC_SIGHUP,
							   0,
							   check_username, NULL, NULL);

	/*
	 * The password: only superusers (and pg_read_all_settings) may read it,
	 * it is left out of SHOW ALL and pg_settings, and it has no check hook,
	 * so no rejected value can end up in the log.
	 */
	DefineCustomStringVariable("outbox.amqp_password",
							   "Password of outbox.amqp_username.",
							   NULL,
							   &setting_password,
							   "guest",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("outbox.amqp_ca_file",
							   "CA certificates to verify amqps:// servers with; empty means the system's.",
							   NULL,
							   &setting_ca_file,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("outbox.amqp_cert_file",
							   "Client certificate for amqps:// servers; empty for none.",
							   NULL,
							   &setting_cert_file,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("outbox.amqp_key_file",
							   "Private key of outbox.amqp_cert_file; empty means the certificate file holds it.",
							   NULL,
							   &setting_key_file,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("outbox.amqp_max_pending",
							"Most published messages waiting for their publisher confirm at once.",
							NULL,
							&setting_max_pending,
							256, 1, 65536,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("outbox.amqp_timeout",
							"Longest wait for a connection, a publisher confirm or the broker taking a message.",
							NULL,
							&setting_timeout,
							5000, 100, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("outbox.amqp_max_message_size",
							"Largest payload the amqp publisher sends; larger messages fail at once.",
							"Keep it at most the broker's max_message_size (RabbitMQ: 128 MB by default).",
							&setting_max_message_size,
							134217728, 1024, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	OutboxDefineFormatSetting("outbox.amqp_format", "amqp");

	OutboxPublisherKeepSecret("outbox.amqp_password");

	/* Where read_config() keeps the current destination's options. */
	opts_context = AllocSetContextCreate(TopMemoryContext, "outbox amqp options",
										 ALLOCSET_SMALL_SIZES);

	OutboxRegisterPublisher(&amqp_publisher);
}
