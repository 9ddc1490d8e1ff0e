/*-------------------------------------------------------------------------
 *
 * redis.c
 *		The "redis" publisher (library outbox_redis): each message appended
 *		to a Redis stream with XADD (hiredis), once per stream even when it
 *		is published again.
 *
 *	shared_preload_libraries = 'outbox, outbox_redis'	# after outbox
 *	outbox.publisher = 'redis'
 *	outbox.redis_url = 'redis://127.0.0.1:6379'	# /N selects database N
 *	outbox.redis_stream = '{topic}'			# "{topic}" = the topic
 *
 * Each message becomes one entry of the stream outbox.redis_stream, with
 * the fields id, topic, key ("" without one), headers (the headers as JSON
 * text), payload (the raw bytes) and created_at (ISO 8601); MAXLEN ~
 * outbox.redis_maxlen trims the stream when set.  A message is OK once
 * Redis answered the XADD.
 *
 * With a CloudEvents format (outbox.redis_format, or the destination's
 * format) an entry reads like a Kafka record of the CloudEvents Kafka
 * binding, "data" being its value: cloudevents-binary gives the fields id,
 * the attributes as ce_specversion, ce_id, ce_source, ce_type, ce_time and
 * ce_subject (with a key), content-type (the payload's), headers and data
 * (the payload); cloudevents-structured gives id, content-type
 * (application/cloudevents+json), headers and data (the JSON event).  The
 * field id stays first in every format: the script below dedupes on it.
 *
 * A destination takes the settings below as options ("url", "stream",
 * "password", ...); the default destination takes the settings.
 *
 * Duplicates.  A message is published again when its first publication's
 * answer was lost (the worker died before marking it, the connection
 * broke).  To keep the stream free of such copies, each XADD runs inside a
 * Lua script (EVALSHA, atomic on the server) that:
 *	1. adds the entry with an explicit id derived from the message id: the
 *	   UUIDv7's milliseconds, then its 42-bit counter and 20 more bits
 *	   ("<ms>-<counter << 20 | next 20 bits>"), so entry ids follow message
 *	   ids;
 *	2. when Redis refuses it as "equal or smaller than the target stream
 *	   top item", looks at the entry with that id: if it holds this
 *	   message, the message was there already (a duplicate: OK);
 *	3. else the message is late: a message with a larger id was added
 *	   first.  If the stream's late set (below) holds its id, it was added
 *	   late before: a duplicate too.  Being late is common, not an error:
 *	   transactions commit in another
 *	   order than they took their ids, and under per-key ordering the
 *	   worker publishes a batch in waves (the second message of a key after
 *	   the first messages of all keys, and messages without a key all in
 *	   the first wave) and retries a failed message after newer ones of
 *	   other keys went out.  A late message is added just above the
 *	   stream's top, in its own millisecond or the top's ("<ms>-*", so the
 *	   stream's ids stay on this server's clock, not Redis'), and its id is
 *	   remembered in the sorted set "<stream>:outbox-late" (scored by
 *	   the entry's millisecond; older ones are pruned) for
 *	   outbox.redis_dedupe_window.
 * So a message is in its stream once, unless it is published again after
 * its entry was trimmed away (MAXLEN, XDEL, a deleted stream) or, when it
 * was late, after the dedupe window.  Ids that are not UUIDv7, or whose
 * time is more than a minute ahead, always take the late path.
 *
 * I/O is non-blocking: commands of a batch are pipelined on one kept
 * connection, and the worker waits for the socket with
 * OutboxPublisherWait().  When an ERROR cuts a conversation short (a
 * cancel of the worker, during the handshake or while a batch's replies
 * are due), the connection is not used again: the next batch connects
 * anew, so no reply is ever taken for another command's.  Host names
 * are resolved in a thread of its own (getaddrinfo blocks), with
 * PostgreSQL's signals blocked.  While Redis cannot be reached (or
 * refuses the credentials, or is loading its data) batches stay pending
 * (SKIPPED), the problem is logged once, and connecting is tried again
 * with a backoff from 250 ms to 10 s.
 *
 * hiredis 0.14 (Debian 12) has no TLS: rediss:// URLs are refused.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <hiredis/sds.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/elog.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "outbox_publisher.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* Longest wait before checking for interrupts. */
#define WAIT_SLICE_MS		100

/* Reconnection backoff. */
#define BACKOFF_MIN_MS		250
#define BACKOFF_MAX_MS		10000

/* Descriptors the publisher holds: the socket and the resolver's pipe. */
#define FDS_RESERVED		3

/* Redis refuses bulk arguments over proto-max-bulk-len (512 MB by default). */
#define MAX_PAYLOAD_BYTES	(512 * 1024 * 1024)

/* How far ahead of this server's clock a message id may be and still name its entry. */
#define MAX_FUTURE_MS		60000

/* Addresses of a host tried in turn. */
#define MAX_ADDRS			8

/* Suffix of the sorted set that remembers a stream's late entries. */
#define LATE_SUFFIX			":outbox-late"

/*
 * Settings (reload): the default destination's options, and every
 * destination's defaults.
 */
static char *setting_url = NULL;
static char *setting_stream = NULL;
static char *setting_username = NULL;
static char *setting_password = NULL;
static int	setting_maxlen = 0;
static int	setting_timeout = 5000;
static int	setting_dedupe_window = 600000;

/* The current destination's options (the settings, by default), read by read_config(). */
static char *redis_url = "";
static char *redis_stream = "{topic}";
static char *redis_username = "";
static char *redis_password = "";
static int	redis_maxlen = 0;
static int	redis_timeout = 5000;
static int	redis_dedupe_window = 600000;
static OutboxFormat redis_format = OUTBOX_FORMAT_RAW;
static char *redis_source = NULL;	/* CloudEvents source, unless raw */
static bool is_default_destination = true;
static MemoryContext config_context = NULL;

/*
 * The script every message is added with (see the file header).
 * KEYS: the stream, its late-entry set.  ARGV: the entry id derived from
 * the message id ('' to take the late path at once), the message id,
 * MAXLEN (0: none), the dedupe window in ms, then the entry's fields and
 * values.  Returns {entry id, 0 added | 1 already there | 2 added late}.
 */
static const char add_script[] =
"local stream, late = KEYS[1], KEYS[2]\n"
"local cand, msgid = ARGV[1], ARGV[2]\n"
"local maxlen, window = tonumber(ARGV[3]), tonumber(ARGV[4])\n"
"local fields = {}\n"
"for i = 5, #ARGV do\n"
"  fields[#fields + 1] = ARGV[i]\n"
"end\n"
"local function failed(r)\n"
"  return type(r) == 'table' and r.err ~= nil\n"
"end\n"
"local function add(id)\n"
"  if maxlen > 0 then\n"
"    return redis.pcall('XADD', stream, 'MAXLEN', '~', maxlen, id, unpack(fields))\n"
"  end\n"
"  return redis.pcall('XADD', stream, id, unpack(fields))\n"
"end\n"
"if cand ~= '' then\n"
"  local r = add(cand)\n"
"  if not failed(r) then\n"
"    return {r, 0}\n"
"  end\n"
"  if not string.find(r.err, 'equal or smaller', 1, true) then\n"
"    return r\n"
"  end\n"
"  local e = redis.call('XRANGE', stream, cand, cand)\n"
"  if #e == 1 then\n"
"    local f = e[1][2]\n"
"    for i = 1, #f - 1, 2 do\n"
"      if f[i] == 'id' then\n"
"        if f[i + 1] == msgid then\n"
"          return {cand, 1}\n"
"        end\n"
"        break\n"
"      end\n"
"    end\n"
"  end\n"
"end\n"
"local t = redis.call('TYPE', late)['ok']\n"
"if t ~= 'none' and t ~= 'zset' then\n"
"  return redis.error_reply('WRONGTYPE key ' .. late .. ' (the late entries of stream ' .. stream .. ') holds a ' .. t .. ', not a sorted set')\n"
"end\n"
"if redis.call('ZSCORE', late, msgid) then\n"
"  return {'', 1}\n"
"end\n"
"local r = nil\n"
"if cand ~= '' then\n"
"  r = add(string.match(cand, '^%d+') .. '-*')\n"
"end\n"
"if r == nil or failed(r) then\n"
"  local top = redis.pcall('XREVRANGE', stream, '+', '-', 'COUNT', 1)\n"
"  if failed(top) then\n"
"    return top\n"
"  end\n"
"  r = nil\n"
"  if #top == 1 then\n"
"    r = add(string.match(top[1][1], '^%d+') .. '-*')\n"
"  end\n"
"  if r == nil or failed(r) then\n"
"    r = add('*')\n"
"  end\n"
"end\n"
"if failed(r) then\n"
"  return r\n"
"end\n"
"local now = tonumber(string.match(r, '^%d+'))\n"
"redis.call('ZADD', late, now, msgid)\n"
"redis.call('ZREMRANGEBYSCORE', late, '-inf', '(' .. string.format('%.0f', now - window))\n"
"redis.call('PEXPIRE', late, window)\n"
"return {r, 2}\n";

/*
 * A host name being resolved in a thread of its own.  Once started, the
 * job belongs to the thread until it sets done; a job the worker no longer
 * wants is marked abandoned and the thread frees it.
 */
typedef struct ResolveJob
{
	char		host[256];
	char		port[8];
	int			status;			/* getaddrinfo's result */
	int			naddrs;
	struct sockaddr_storage addrs[MAX_ADDRS];
	socklen_t	lens[MAX_ADDRS];
	bool		done;			/* under shared_lock */
	bool		abandoned;		/* under shared_lock */
} ResolveJob;

static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static int	wake_fds[2] = {-1, -1};

/*
 * The connection, kept across batches.  in_conversation is set while
 * commands are buffered or their replies outstanding (the handshake's, a
 * batch's), and cleared once every reply was read: an ERROR thrown out of
 * a wait (a cancel, a timeout) leaves it set, and ensure_connected()
 * starts over rather than read that conversation's replies as the next
 * one's.
 */
static redisContext *rc = NULL;
static char script_sha[41];
static bool in_conversation = false;
static char *built_fingerprint = NULL;
static int64 next_connect_at = 0;
static int	backoff_ms = 0;
static bool fds_reserved = false;

/* The last problem logged, to log each one once. */
static OutboxProblem connection_problem =
	OUTBOX_PROBLEM_INIT("redis", ERRCODE_CONNECTION_FAILURE);

/* Forget the problem logged last, and say that it went away. */
static void
clear_problem(void)
{
	if (connection_problem.reported == NULL)
		return;
	ereport(LOG,
			(errmsg("outbox redis publisher: publishing again (after: %s)",
					connection_problem.reported)));
	OutboxPublisherClearProblem(&connection_problem);
}

/* ------------------------------------------------------------------ settings */

/* A parsed outbox.redis_url. */
typedef struct RedisTarget
{
	char	   *host;
	char	   *port;
	int			database;
} RedisTarget;

/*
 * Parse redis://host[:port][/database] into *target (palloc'd strings).
 * Returns NULL, or why the URL is not acceptable (without quoting it: a
 * password put in it by mistake must not reach the log).
 */
static const char *
parse_url(const char *url, RedisTarget *target)
{
	const char *p;
	const char *host_end;
	char	   *host;
	char	   *port = NULL;
	int			database = 0;

	if (pg_strncasecmp(url, "rediss://", 9) == 0)
		return "TLS (rediss://) is not available: this build uses hiredis " CppAsString2(HIREDIS_MAJOR) "." CppAsString2(HIREDIS_MINOR) "." CppAsString2(HIREDIS_PATCH) ", which has no TLS (hiredis 1.0 added it).";
	if (pg_strncasecmp(url, "redis://", 8) != 0)
		return "The URL must start with redis://.";
	p = url + 8;
	if (OutboxUrlHasUserinfo(url, true))
		return "The URL must not contain a user name or password: use outbox.redis_username and outbox.redis_password.";
	if (strpbrk(p, "?#") != NULL)
		return "The URL must not have a query or fragment part.";
	if (*p == '[')
	{
		host_end = strchr(p, ']');
		if (host_end == NULL)
			return "The URL has an unclosed \"[\".";
		host = pnstrdup(p + 1, host_end - p - 1);
		p = host_end + 1;
	}
	else
	{
		host_end = p + strcspn(p, ":/");
		host = pnstrdup(p, host_end - p);
		p = host_end;
	}
	if (host[0] == '\0')
		return "The URL has no host.";
	if (*p == ':')
	{
		const char *digits = ++p;
		long		n;

		while (*p >= '0' && *p <= '9')
			p++;
		n = (p > digits && p - digits <= 5) ? strtol(digits, NULL, 10) : 0;
		if (n <= 0 || n > 65535)
			return "The URL has an invalid port.";
		port = pnstrdup(digits, p - digits);
	}
	if (*p == '/')
	{
		const char *digits = ++p;

		while (*p >= '0' && *p <= '9')
			p++;
		if (p == digits || p - digits > 6)
		{
			if (*digits != '\0' || p != digits)
				return "The URL's path must be a database number (redis://host:port/0).";
		}
		else
			database = (int) strtol(digits, NULL, 10);
	}
	if (*p != '\0')
		return "The URL could not be parsed (redis://host[:port][/database]).";
	if (target)
	{
		target->host = host;
		target->port = port ? port : pstrdup("6379");
		target->database = database;
	}
	return NULL;
}

/* The check of a destination's url, over parse_url(). */
static char *
url_problem(const char *value)
{
	const char *problem = parse_url(value, NULL);

	return problem ? pstrdup(problem) : NULL;
}

/* Why a stream key template is not one, or NULL. */
static char *
stream_problem(const char *value)
{
	return value[0] == '\0' ? pstrdup("The stream key template must not be empty.") : NULL;
}

/*
 * Read the current destination's options (the settings, for the default
 * destination).
 */
static void
read_config(void)
{
	MemoryContext old;

	if (config_context == NULL)
		config_context = AllocSetContextCreate(TopMemoryContext, "outbox redis options",
											   ALLOCSET_SMALL_SIZES);
	MemoryContextReset(config_context);
	old = MemoryContextSwitchTo(config_context);
	redis_url = OutboxOptionString("url");
	redis_stream = OutboxOptionString("stream");
	redis_username = OutboxOptionString("username");
	redis_password = OutboxOptionString("password");
	redis_maxlen = (int) OutboxOptionInteger("maxlen");
	redis_timeout = (int) OutboxOptionInteger("timeout");
	redis_dedupe_window = (int) OutboxOptionInteger("dedupe_window");
	redis_format = OutboxOptionFormat(&redis_source);
	is_default_destination = strcmp(OutboxDestinationName(), "default") == 0;
	MemoryContextSwitchTo(old);
}

/*
 * What hints call the settings: "outbox.redis_<name>" for the default
 * destination, else the destination's options (one name, or several).
 */
static char *
named(const char *settings, const char *options)
{
	if (is_default_destination)
		return pstrdup(settings);
	return psprintf("the option%s %s of destination \"%s\"", strchr(options, ' ') ? "s" : "",
					options, OutboxDestinationName());
}

/* Check outbox.redis_url; the error replaces the message that would quote it. */
static bool
check_redis_url(char **newval, void **extra, GucSource source)
{
	const char *problem = parse_url(*newval, NULL);

	if (problem)
	{
		GUC_check_errmsg("invalid value for parameter \"outbox.redis_url\"");
		GUC_check_errdetail("%s", problem);
		return false;
	}
	return true;
}

/* Check outbox.redis_stream, over stream_problem(). */
static bool
check_redis_stream(char **newval, void **extra, GucSource source)
{
	char	   *problem = stream_problem(*newval);

	if (problem == NULL)
		return true;
	GUC_check_errdetail("%s", problem);
	return false;
}

/* The settings a connection is made with: a change of any means a new one. */
static char *
connection_fingerprint(void)
{
	return psprintf("%s\n%s\n%s", redis_url, redis_username, redis_password);
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

/* ------------------------------------------------------------------ resolving host names */

/*
 * The resolver thread: getaddrinfo(), then hand the addresses over, or
 * free the job when it is no longer wanted.  No PostgreSQL calls here.
 */
static void *
resolve_main(void *arg)
{
	ResolveJob *job = (ResolveJob *) arg;
	struct addrinfo hints;
	struct addrinfo *res = NULL;
	struct addrinfo *a;
	int			status;
	bool		abandoned;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	status = getaddrinfo(job->host, job->port, &hints, &res);

	pthread_mutex_lock(&shared_lock);
	job->status = status;
	if (status == 0)
	{
		for (a = res; a && job->naddrs < MAX_ADDRS; a = a->ai_next)
		{
			if (a->ai_addrlen > sizeof(struct sockaddr_storage))
				continue;
			memcpy(&job->addrs[job->naddrs], a->ai_addr, a->ai_addrlen);
			job->lens[job->naddrs] = a->ai_addrlen;
			job->naddrs++;
		}
	}
	job->done = true;
	abandoned = job->abandoned;
	if (!abandoned && write(wake_fds[1], "x", 1) < 0)
	{
		/* The pipe is full: the worker looks anyway. */
	}
	pthread_mutex_unlock(&shared_lock);
	if (res)
		freeaddrinfo(res);
	if (abandoned)
		free(job);
	return NULL;
}

/* Read what the wake-up pipe holds. */
static void
drain_wake_pipe(void)
{
	char		buf[64];

	while (read(wake_fds[0], buf, sizeof(buf)) > 0)
		;
}

/*
 * Resolve host:port into job->addrs, waiting with OutboxPublisherWait() up
 * to deadline.  Numeric addresses are taken as they are.  Returns NULL, or
 * why not (palloc'd).
 */
static char *
resolve(const char *host, const char *port, int64 deadline, ResolveJob *result)
{
	struct addrinfo hints;
	struct addrinfo *res = NULL;
	ResolveJob *job;
	pthread_t	thread;
	sigset_t	saved;
	int			status;

	memset(result, 0, sizeof(*result));
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICHOST;
	if (getaddrinfo(host, port, &hints, &res) == 0)
	{
		memcpy(&result->addrs[0], res->ai_addr, res->ai_addrlen);
		result->lens[0] = res->ai_addrlen;
		result->naddrs = 1;
		freeaddrinfo(res);
		return NULL;
	}

	if (strlen(host) >= sizeof(job->host))
		return psprintf("the host name is too long");
	job = calloc(1, sizeof(ResolveJob));
	if (job == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	strlcpy(job->host, host, sizeof(job->host));
	strlcpy(job->port, port, sizeof(job->port));
	OutboxPublisherBlockSignals(&saved);
	status = pthread_create(&thread, NULL, resolve_main, job);
	if (status == 0)
		pthread_detach(thread);
	pthread_sigmask(SIG_SETMASK, &saved, NULL);
	if (status != 0)
	{
		free(job);
		return psprintf("could not start a thread: %s", strerror(status));
	}

	for (;;)
	{
		bool		done;
		bool		abandoned = false;

		pthread_mutex_lock(&shared_lock);
		done = job->done;
		if (done)
			memcpy(result, job, sizeof(*result));
		else if (OutboxPublisherNowMs() >= deadline)
			job->abandoned = abandoned = true;
		pthread_mutex_unlock(&shared_lock);
		if (done)
		{
			free(job);
			break;
		}
		/* An abandoned job is the thread's to free. */
		if (abandoned)
			return psprintf("resolving \"%s\" took longer than %d ms", host, redis_timeout);
		(void) OutboxPublisherWait(wake_fds[0], WL_SOCKET_READABLE,
								   Min(WAIT_SLICE_MS, deadline - OutboxPublisherNowMs()));
		drain_wake_pipe();
	}
	if (result->status != 0)
		return psprintf("could not resolve \"%s\": %s", host, gai_strerror(result->status));
	if (result->naddrs == 0)
		return psprintf("could not resolve \"%s\": no address", host);
	return NULL;
}

/* ------------------------------------------------------------------ the connection */

/* Close the connection. */
static void
disconnect(void)
{
	if (rc)
		redisFree(rc);
	rc = NULL;
	script_sha[0] = '\0';
	in_conversation = false;
}

/*
 * Whether the kept connection can carry a batch: its handshake loaded the
 * script, and its last conversation ended with nothing left to send and
 * every reply read.
 */
static bool
connection_usable(void)
{
	return rc != NULL && rc->err == 0 && !in_conversation && script_sha[0] != '\0' &&
		sdslen(rc->obuf) == 0 && rc->reader->pos == rc->reader->len;
}

/* The text of a connection error of hiredis. */
static char *
context_error(void)
{
	if (rc == NULL)
		return pstrdup("not connected");
	if (rc->err == REDIS_ERR_EOF)
		return pstrdup("Redis closed the connection");
	return pstrdup(rc->errstr[0] ? rc->errstr : "connection error");
}

/*
 * Connect one address without blocking, waiting for the connection with
 * OutboxPublisherWait() up to deadline.  Returns the socket, or -1 with
 * the reason in *why.
 */
static int
connect_address(const struct sockaddr *addr, socklen_t len, int64 deadline, char **why)
{
	int			fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int			one = 1;

	if (fd < 0)
	{
		*why = psprintf("could not create a socket: %m");
		return -1;
	}
	if (connect(fd, addr, len) != 0)
	{
		if (errno != EINPROGRESS)
		{
			*why = psprintf("%m");
			close(fd);
			return -1;
		}
		for (;;)
		{
			int			err = 0;
			socklen_t	errlen = sizeof(err);
			int			events;

			if (OutboxPublisherNowMs() >= deadline)
			{
				*why = psprintf("no connection within %d ms", redis_timeout);
				close(fd);
				return -1;
			}
			events = OutboxPublisherWait(fd, WL_SOCKET_WRITEABLE,
										 Min(WAIT_SLICE_MS, deadline - OutboxPublisherNowMs()));
			if (!(events & WL_SOCKET_WRITEABLE))
				continue;
			if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &errlen) != 0)
				err = errno;
			if (err != 0)
			{
				*why = psprintf("%s", strerror(err));
				close(fd);
				return -1;
			}
			break;
		}
	}
	(void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	(void) setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	return fd;
}

/* A reply's text (errors, strings), palloc'd and printable. */
static char *
reply_text(const redisReply *reply)
{
	StringInfoData buf;

	initStringInfo(&buf);
	if (reply->type == REDIS_REPLY_ERROR || reply->type == REDIS_REPLY_STRING ||
		reply->type == REDIS_REPLY_STATUS)
		OutboxPublisherAppendPrintable(&buf, reply->str, (int) Min(reply->len, 400), true);
	else
		appendStringInfo(&buf, "(a reply of type %d)", reply->type);
	return buf.data;
}

/*
 * Send what is buffered and read replies until n have come, handing each
 * to on_reply.  Returns NULL, or why the connection cannot go on (broken,
 * or silent for outbox.redis_timeout); *nreplies tells how many came.
 */
static char *
converse(int n, void (*on_reply) (int i, redisReply *reply, void *arg), void *arg,
		 int *nreplies)
{
	int64		last_progress = OutboxPublisherNowMs();

	*nreplies = 0;
	while (*nreplies < n)
	{
		void	   *reply = NULL;
		int			events = WL_SOCKET_READABLE;
		int			result;
		int64		idle;

		if (redisGetReply(rc, &reply) != REDIS_OK)
			return context_error();
		if (reply)
		{
			on_reply((*nreplies)++, (redisReply *) reply, arg);
			freeReplyObject(reply);
			last_progress = OutboxPublisherNowMs();
			continue;
		}
		if (sdslen(rc->obuf) > 0)
		{
			size_t		before = sdslen(rc->obuf);
			int			done = 0;

			if (redisBufferWrite(rc, &done) != REDIS_OK)
				return context_error();
			if (sdslen(rc->obuf) < before)
				last_progress = OutboxPublisherNowMs();
			if (!done)
				events |= WL_SOCKET_WRITEABLE;
		}
		idle = OutboxPublisherNowMs() - last_progress;
		if (idle >= redis_timeout)
			return psprintf("no answer from Redis within %d ms", redis_timeout);
		result = OutboxPublisherWait(rc->fd, events, Min(WAIT_SLICE_MS, redis_timeout - idle));
		if (result & WL_SOCKET_READABLE)
		{
			if (redisBufferRead(rc) != REDIS_OK)
				return context_error();
			last_progress = OutboxPublisherNowMs();
		}
	}
	in_conversation = false;
	return NULL;
}

/* Replies of the connection's first commands, kept for checking. */
typedef struct Handshake
{
	int			nreplies;
	int			auth_at;		/* index of AUTH's reply, -1 when not sent */
	int			select_at;
	int			script_at;
	char	   *texts[3];
	bool		errors[3];
} Handshake;

/* Keep one reply of the handshake. */
static void
keep_handshake_reply(int i, redisReply *reply, void *arg)
{
	Handshake  *h = (Handshake *) arg;

	if (i < 3)
	{
		h->texts[i] = reply_text(reply);
		h->errors[i] = reply->type == REDIS_REPLY_ERROR;
	}
}

/* Count a failed connection and set when to try the next. */
static void
back_off(void)
{
	backoff_ms = backoff_ms == 0 ? BACKOFF_MIN_MS : Min(backoff_ms * 2, BACKOFF_MAX_MS);
	next_connect_at = OutboxPublisherNowMs() + backoff_ms;
}

/* Report why connecting failed and back off. */
static void
connect_failed(const RedisTarget *target, const char *why, const char *hint)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "could not connect to redis://%s%s%s:%s/%d: ",
					 strchr(target->host, ':') ? "[" : "", target->host,
					 strchr(target->host, ':') ? "]" : "", target->port, target->database);
	OutboxPublisherAppendPrintable(&buf, why, (int) strlen(why), true);
	disconnect();
	back_off();
	OutboxPublisherReportProblem(&connection_problem, buf.data, hint);
}

/*
 * Connect, authenticate, select the database and load the script.
 * Returns false, with the problem reported, when Redis cannot be used now.
 */
static bool
ensure_connected(void)
{
	RedisTarget target;
	ResolveJob	addrs;
	const char *argv[3];
	size_t		argvlen[3];
	char		dbtext[16];
	Handshake	h;
	int64		deadline;
	char	   *why = NULL;
	int			fd = -1;
	int			n = 0;
	int			i;

	if (rc != NULL && !connection_usable())
	{
		ereport(LOG,
				(errmsg("outbox redis publisher: reconnecting, the last conversation with Redis was interrupted")));
		disconnect();
	}
	if (rc != NULL)
		return true;
	if (OutboxPublisherNowMs() < next_connect_at)
		return false;

	if (!fds_reserved)
	{
		for (i = 0; i < FDS_RESERVED; i++)
			ReserveExternalFD();
		fds_reserved = true;
	}
	if (wake_fds[0] < 0)
	{
		if (pipe(wake_fds) != 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("outbox redis publisher: could not create a pipe: %m")));
		for (i = 0; i < 2; i++)
		{
			fcntl(wake_fds[i], F_SETFL, O_NONBLOCK);
			fcntl(wake_fds[i], F_SETFD, FD_CLOEXEC);
		}
	}

	/* The check hook accepted the URL. */
	if (parse_url(redis_url, &target) != NULL)
		return false;
	if (built_fingerprint)
		pfree(built_fingerprint);
	built_fingerprint = MemoryContextStrdup(TopMemoryContext, connection_fingerprint());

	deadline = OutboxPublisherNowMs() + redis_timeout;
	why = resolve(target.host, target.port, deadline, &addrs);
	if (why)
	{
		connect_failed(&target, why, psprintf("Check %s.", named("outbox.redis_url", "url")));
		return false;
	}
	for (i = 0; i < addrs.naddrs && fd < 0; i++)
		fd = connect_address((struct sockaddr *) &addrs.addrs[i], addrs.lens[i], deadline, &why);
	if (fd < 0)
	{
		connect_failed(&target, why ? why : "no address to connect to",
					   psprintf("Check %s, and that Redis runs.", named("outbox.redis_url", "url")));
		return false;
	}
	rc = redisConnectFd(fd);
	if (rc == NULL)
	{
		close(fd);
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	}
	rc->flags &= ~REDIS_BLOCK;
	in_conversation = true;

	/* AUTH [user] password, SELECT n, SCRIPT LOAD, pipelined. */
	memset(&h, 0, sizeof(h));
	h.auth_at = h.select_at = -1;
	if (redis_password[0] != '\0')
	{
		int			argc = 0;

		argv[argc] = "AUTH";
		argvlen[argc++] = 4;
		if (redis_username[0] != '\0')
		{
			argv[argc] = redis_username;
			argvlen[argc++] = strlen(redis_username);
		}
		argv[argc] = redis_password;
		argvlen[argc++] = strlen(redis_password);
		redisAppendCommandArgv(rc, argc, argv, argvlen);
		h.auth_at = n++;
	}
	if (target.database != 0)
	{
		snprintf(dbtext, sizeof(dbtext), "%d", target.database);
		argv[0] = "SELECT";
		argvlen[0] = 6;
		argv[1] = dbtext;
		argvlen[1] = strlen(dbtext);
		redisAppendCommandArgv(rc, 2, argv, argvlen);
		h.select_at = n++;
	}
	argv[0] = "SCRIPT";
	argvlen[0] = 6;
	argv[1] = "LOAD";
	argvlen[1] = 4;
	argv[2] = add_script;
	argvlen[2] = strlen(add_script);
	redisAppendCommandArgv(rc, 3, argv, argvlen);
	h.script_at = n++;

	why = converse(n, keep_handshake_reply, &h, &h.nreplies);
	if (why)
	{
		connect_failed(&target, why,
					   psprintf("Check %s, and that Redis runs.", named("outbox.redis_url", "url")));
		return false;
	}
	if (h.auth_at >= 0 && h.errors[h.auth_at])
	{
		connect_failed(&target,
					   psprintf("Redis refused the credentials%s%s%s: %s",
								redis_username[0] ? " of user \"" : "", redis_username,
								redis_username[0] ? "\"" : "", h.texts[h.auth_at]),
					   psprintf("Check %s.", named("outbox.redis_username and outbox.redis_password",
												   "username and password")));
		return false;
	}
	if (h.select_at >= 0 && h.errors[h.select_at])
	{
		connect_failed(&target, psprintf("could not select database %d: %s", target.database,
										 h.texts[h.select_at]),
					   psprintf("Check the database number in %s.", named("outbox.redis_url", "url")));
		return false;
	}
	if (h.errors[h.script_at])
	{
		const char *text = h.texts[h.script_at];

		connect_failed(&target, psprintf("could not load the publisher's script: %s", text),
					   strncmp(text, "NOAUTH", 6) == 0 ?
					   psprintf("Redis needs a password: set %s.",
								named("outbox.redis_password (and outbox.redis_username)",
									  "password (and username)")) :
					   strncmp(text, "LOADING", 7) == 0 ? NULL :
					   "The redis publisher needs EVALSHA, XADD, XRANGE, XREVRANGE, ZADD, ZSCORE and PEXPIRE.");
		return false;
	}
	if (h.texts[h.script_at] == NULL || strlen(h.texts[h.script_at]) != 40)
	{
		connect_failed(&target, psprintf("unexpected answer to SCRIPT LOAD: %s",
										 h.texts[h.script_at] ? h.texts[h.script_at] : "none"), NULL);
		return false;
	}
	memcpy(script_sha, h.texts[h.script_at], 41);
	backoff_ms = 0;
	return true;
}

/* ------------------------------------------------------------------ messages */

/*
 * The stream entry id a message id names: its milliseconds, then its
 * 42-bit counter and 20 more bits; "" when the id is not a UUIDv7 or its
 * time is too far ahead (such messages take the late path).
 */
static void
entry_id(const OutboxMessage *m, char *buf, size_t size)
{
	const unsigned char *b = m->id.data;
	uint64		ms = 0;
	uint64		counter;
	uint64		tail;
	int64		wall_ms;
	int			i;

	buf[0] = '\0';
	if ((b[6] >> 4) != 7 || (b[8] & 0xC0) != 0x80)
		return;
	for (i = 0; i < 6; i++)
		ms = (ms << 8) | b[i];
	counter = ((uint64) (b[6] & 0x0F) << 38) | ((uint64) b[7] << 30) |
		((uint64) (b[8] & 0x3F) << 24) | ((uint64) b[9] << 16) |
		((uint64) b[10] << 8) | (uint64) b[11];
	tail = ((uint64) b[12] << 12) | ((uint64) b[13] << 4) | ((uint64) b[14] >> 4);
	wall_ms = GetCurrentTimestamp() / 1000 +
		(int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000;
	if (ms == 0 || (int64) ms > wall_ms + MAX_FUTURE_MS)
		return;
	snprintf(buf, size, UINT64_FORMAT "-" UINT64_FORMAT, ms, (counter << 20) | tail);
}

/* What happened to the messages of one batch, filled by the reply handler. */
typedef struct BatchReplies
{
	OutboxPublishResult *results;
	int		   *index;			/* message of each command */
	int			added;
	int			late;
	int			duplicates;
	char	   *server_problem; /* a reply saying Redis cannot take messages now */
} BatchReplies;

/* Errors that say Redis cannot take messages now, whichever they are. */
static bool
is_server_state_error(const char *text)
{
	static const char *const prefixes[] = {
		"NOSCRIPT", "LOADING", "NOAUTH", "WRONGPASS", "NOPERM", "READONLY",
		"MASTERDOWN", "BUSY", NULL
	};
	const char *const *p;

	for (p = prefixes; *p; p++)
	{
		if (strncmp(text, *p, strlen(*p)) == 0)
			return true;
	}
	return false;
}

/* Turn the answer to one message's EVALSHA into its result. */
static void
take_reply(int i, redisReply *reply, void *arg)
{
	BatchReplies *b = (BatchReplies *) arg;
	OutboxPublishResult *r = &b->results[b->index[i]];

	if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
		reply->element[1]->type == REDIS_REPLY_INTEGER)
	{
		r->status = OUTBOX_PUBLISH_OK;
		r->error = NULL;
		if (reply->element[1]->integer == 1)
			b->duplicates++;
		else if (reply->element[1]->integer == 2)
			b->late++;
		else
			b->added++;
	}
	else if (reply->type == REDIS_REPLY_ERROR && is_server_state_error(reply->str))
	{
		r->status = OUTBOX_PUBLISH_SKIPPED;
		r->error = NULL;
		if (b->server_problem == NULL)
			b->server_problem = reply_text(reply);
	}
	else
	{
		r->status = OUTBOX_PUBLISH_RETRY;
		r->error = psprintf("redis: %s", reply_text(reply));
	}
}

/*
 * Append one message's EVALSHA to the output buffer.  Returns false with
 * the message rejected when it can never be added.
 */
static bool
append_message(const OutboxMessage *m, OutboxPublishResult *result, const char *maxlen,
			   const char *window)
{
	const char *argv[40];
	size_t		argvlen[40];
	char		cand[48];
	char	   *stream;
	char	   *late;
	char	   *headers;
	char	   *created_at;
	const char *data = m->payload;
	int			data_len = m->payload_len;
	int			argc = 0;

	/* Structured: the data is the event. */
	if (redis_format == OUTBOX_FORMAT_CLOUDEVENTS_STRUCTURED)
		data = OutboxCloudEventJson(m, redis_source, &data_len);
	if (data_len > MAX_PAYLOAD_BYTES)
	{
		result->status = OUTBOX_PUBLISH_REJECT;
		result->error = psprintf("redis: the message is %d bytes; Redis takes at most %d (proto-max-bulk-len)",
								 data_len, MAX_PAYLOAD_BYTES);
		return false;
	}
	stream = expand_template(redis_stream, m->topic);
	late = psprintf("%s%s", stream, LATE_SUFFIX);
	headers = JsonbToCString(NULL, &m->headers->root, VARSIZE(m->headers));
	created_at = JsonEncodeDateTime(NULL, TimestampTzGetDatum(m->created_at), TIMESTAMPTZOID, NULL);
	entry_id(m, cand, sizeof(cand));

#define ARG(s, len) (argv[argc] = (s), argvlen[argc++] = (len))
	ARG("EVALSHA", 7);
	ARG(script_sha, 40);
	ARG("2", 1);
	ARG(stream, strlen(stream));
	ARG(late, strlen(late));
	ARG(cand, strlen(cand));
	ARG(m->id_text, strlen(m->id_text));
	ARG(maxlen, strlen(maxlen));
	ARG(window, strlen(window));
	ARG("id", 2);
	ARG(m->id_text, strlen(m->id_text));
	if (redis_format == OUTBOX_FORMAT_RAW)
	{
		ARG("topic", 5);
		ARG(m->topic, strlen(m->topic));
		ARG("key", 3);
		ARG(m->key, strlen(m->key));
		ARG("headers", 7);
		ARG(headers, strlen(headers));
		ARG("payload", 7);
		ARG(m->payload, m->payload_len);
		ARG("created_at", 10);
		ARG(created_at, strlen(created_at));
	}
	else
	{
		const char *content_type = OUTBOX_CLOUDEVENTS_JSON;

		if (redis_format == OUTBOX_FORMAT_CLOUDEVENTS_BINARY)
		{
			OutboxCloudEventAttribute attributes[OUTBOX_CLOUDEVENT_MAX_ATTRIBUTES];
			int			n = OutboxCloudEventAttributes(m, redis_source, "ce_", false, attributes);
			int			i;

			for (i = 0; i < n; i++)
			{
				ARG(attributes[i].name, strlen(attributes[i].name));
				ARG(attributes[i].value, strlen(attributes[i].value));
			}
			content_type = OutboxPayloadContentType(m);
		}
		ARG("content-type", 12);
		ARG(content_type, strlen(content_type));
		ARG("headers", 7);
		ARG(headers, strlen(headers));
		ARG("data", 4);
		ARG(data, data_len);
	}
#undef ARG
	Assert(argc <= (int) lengthof(argv));

	if (redisAppendCommandArgv(rc, argc, argv, argvlen) != REDIS_OK)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	pfree(stream);
	pfree(late);
	pfree(headers);
	pfree(created_at);
	return true;
}

/* ------------------------------------------------------------------ callbacks of the publisher API */

/* Publish a batch; see the file header. */
static void
redis_publish(OutboxMessage *messages, int nmessages, OutboxPublishResult *results)
{
	BatchReplies b;
	size_t	   *ends;
	size_t		total;
	char		maxlen[16];
	char		window[16];
	char	   *why;
	int			ncommands = 0;
	int			nreplies = 0;
	int			i;

	read_config();
	if (!ensure_connected())
	{
		for (i = 0; i < nmessages; i++)
			results[i].status = OUTBOX_PUBLISH_SKIPPED;
		return;
	}

	memset(&b, 0, sizeof(b));
	b.results = results;
	b.index = palloc(sizeof(int) * Max(nmessages, 1));
	ends = palloc(sizeof(size_t) * Max(nmessages, 1));
	snprintf(maxlen, sizeof(maxlen), "%d", redis_maxlen);
	snprintf(window, sizeof(window), "%d", redis_dedupe_window);
	Assert(sdslen(rc->obuf) == 0);
	in_conversation = true;
	for (i = 0; i < nmessages; i++)
	{
		if (!append_message(&messages[i], &results[i], maxlen, window))
			continue;
		b.index[ncommands] = i;
		ends[ncommands++] = sdslen(rc->obuf);
	}
	total = sdslen(rc->obuf);

	why = converse(ncommands, take_reply, &b, &nreplies);
	if (why)
	{
		/* The messages whose command went out may be in their stream: a failed attempt. */
		size_t		written = total - sdslen(rc->obuf);

		for (i = nreplies; i < ncommands; i++)
		{
			OutboxPublishResult *r = &results[b.index[i]];
			size_t		start = i > 0 ? ends[i - 1] : 0;

			if (start >= written)
			{
				r->status = OUTBOX_PUBLISH_SKIPPED;
				r->error = NULL;
			}
			else
			{
				r->status = OUTBOX_PUBLISH_RETRY;
				r->error = psprintf("redis: %s before Redis answered", why);
			}
		}
		disconnect();
		OutboxPublisherReportProblem(&connection_problem, psprintf("the connection to Redis was lost (%s); reconnecting", why), NULL);
		return;
	}
	if (b.server_problem)
	{
		/* Reconnecting loads the script again, authenticates again. */
		disconnect();
		back_off();
		OutboxPublisherReportProblem(&connection_problem, psprintf("Redis cannot take messages now: %s", b.server_problem), NULL);
		return;
	}
	if (b.duplicates > 0)
		ereport(LOG,
				(errmsg("outbox redis publisher: %d of %d messages were already in their stream (published by an earlier attempt) and were not added again",
						b.duplicates, nmessages)));
	if (b.late > 0)
		ereport(DEBUG1,
				(errmsg("outbox redis publisher: %d of %d messages were added late (a message with a larger id was in their stream first)",
						b.late, nmessages)));
	if (b.added + b.late + b.duplicates > 0)
		clear_problem();
}

/* Reconnect when the settings the connection was made with changed. */
static void
redis_reload(void)
{
	char	   *fingerprint;

	read_config();
	if (built_fingerprint == NULL)
		return;
	fingerprint = connection_fingerprint();
	if (strcmp(fingerprint, built_fingerprint) != 0)
	{
		if (rc)
			ereport(LOG,
					(errmsg("outbox redis publisher: reconnecting with the new settings")));
		disconnect();
		next_connect_at = 0;
		backoff_ms = 0;
		pfree(built_fingerprint);
		built_fingerprint = NULL;
	}
	explicit_bzero(fingerprint, strlen(fingerprint));
	pfree(fingerprint);
}

/* Close the connection. */
static void
redis_shutdown(void)
{
	disconnect();
	OutboxPublisherClearProblem(&connection_problem);
}

/* A destination's options; each defaults to its setting. */
static const OutboxOption redis_options[] = {
	{.name = "url", .type = OUTBOX_OPTION_STRING, .setting = "outbox.redis_url",
	.check = url_problem},
	{.name = "stream", .type = OUTBOX_OPTION_STRING, .setting = "outbox.redis_stream",
	.check = stream_problem},
	{.name = "username", .type = OUTBOX_OPTION_STRING, .setting = "outbox.redis_username"},
	{.name = "password", .type = OUTBOX_OPTION_STRING, .setting = "outbox.redis_password",
	.secret = true},
	{.name = "maxlen", .type = OUTBOX_OPTION_INTEGER, .setting = "outbox.redis_maxlen",
	.min_value = 0, .max_value = INT_MAX},
	{.name = "timeout", .type = OUTBOX_OPTION_INTEGER, .setting = "outbox.redis_timeout",
	.unit = GUC_UNIT_MS, .min_value = 100, .max_value = 3600 * 1000},
	{.name = "dedupe_window", .type = OUTBOX_OPTION_INTEGER,
		.setting = "outbox.redis_dedupe_window", .unit = GUC_UNIT_MS,
	.min_value = 1000, .max_value = INT_MAX},
	OUTBOX_FORMAT_OPTIONS("outbox.redis_format"),
};

static const OutboxPublisher redis_publisher = {
	.api_version = OUTBOX_PUBLISHER_API_VERSION,
	.name = "redis",
	.in_transaction = false,
	.check_topic = NULL,		/* any topic makes a stream key */
	.init = read_config,		/* connects on the first batch */
	.publish = redis_publish,
	.reload = redis_reload,
	.shutdown = redis_shutdown,
	.options = redis_options,
	.noptions = lengthof(redis_options),
};

/* Define the settings and register the publisher. */
void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("outbox_redis must be loaded via shared_preload_libraries"),
				 errhint("Add it after outbox: shared_preload_libraries = 'outbox, outbox_redis'.")));

	DefineCustomStringVariable("outbox.redis_url",
							   "Redis server the redis publisher connects to (redis://host[:port][/database]).",
							   NULL,
							   &setting_url,
							   "redis://127.0.0.1:6379",
							   PGC_SIGHUP,
							   0,
							   check_redis_url, NULL, NULL);

	DefineCustomStringVariable("outbox.redis_stream",
							   "Stream (key) the redis publisher adds a message to.",
							   "\"{topic}\" in it is replaced by the message's topic.",
							   &setting_stream,
							   "{topic}",
							   PGC_SIGHUP,
							   0,
							   check_redis_stream, NULL, NULL);

	DefineCustomStringVariable("outbox.redis_username",
							   "User the redis publisher authenticates as (Redis 6 ACL); empty for the default user.",
							   NULL,
							   &setting_username,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	/*
	 * The password: only superusers (and pg_read_all_settings) may read it,
	 * it is left out of SHOW ALL and pg_settings, and it has no check hook,
	 * so no rejected value can end up in the log.
	 */
	DefineCustomStringVariable("outbox.redis_password",
							   "Password the redis publisher authenticates with (AUTH); empty for none.",
							   NULL,
							   &setting_password,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("outbox.redis_maxlen",
							"Trim streams to about this many entries (XADD MAXLEN ~); 0 keeps them whole.",
							NULL,
							&setting_maxlen,
							0, 0, INT_MAX,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("outbox.redis_timeout",
							"Longest wait for a connection, or for Redis to answer.",
							NULL,
							&setting_timeout,
							5000, 100, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("outbox.redis_dedupe_window",
							"How long a stream remembers the ids of messages added late, to refuse them again.",
							"Keep it longer than outbox.retry_backoff_max plus the time a worker takes to come back.",
							&setting_dedupe_window,
							600000, 1000, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	OutboxDefineFormatSetting("outbox.redis_format", "redis");

	OutboxPublisherKeepSecret("outbox.redis_password");

	OutboxRegisterPublisher(&redis_publisher);
}
