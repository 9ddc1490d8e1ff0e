/*-------------------------------------------------------------------------
 *
 * nats.c
 *		The "nats" publisher: messages published to NATS JetStream with
 *		libnats (the NATS C client), built as the plug-in library
 *		outbox_nats.
 *
 *	shared_preload_libraries = 'outbox, outbox_nats'	# after outbox
 *	outbox.publisher = 'nats'
 *	outbox.nats_url = 'nats://127.0.0.1:4222'	# comma-separated servers
 *	outbox.nats_subject = '{topic}'
 *
 * Each message is published to the subject outbox.nats_subject with
 * "{topic}" replaced by its topic; the payload is the raw bytes; its
 * headers become NATS headers (string values as they are, other values as
 * JSON text), plus Outbox-Id, Outbox-Topic, Outbox-Key, Outbox-Created-At,
 * and Nats-Msg-Id = the message id: a message published again (after a
 * crash of the worker between the publication and its mark) falls in the
 * stream's duplicate window and is stored once.
 *
 * With the format cloudevents-binary (outbox.nats_format, or the
 * destination's format) the message is a CloudEvent of the NATS binding:
 * its attributes are ce-* headers and content-type is the payload's; with
 * cloudevents-structured the payload is the JSON event and content-type is
 * application/cloudevents+json (the message's own content-type header goes
 * into the event).  The other headers are the same in every format.
 *
 * Publications are asynchronous (js_PublishMsgAsync), up to
 * outbox.nats_max_pending in flight.  A message is confirmed (OK) only by
 * its PubAck.  "No responders" (no stream captures the subject), a
 * negative ack or no PubAck within outbox.nats_timeout is a failed
 * attempt with a clear last_error.  A subject that is not a valid NATS
 * subject, or a header NATS cannot carry, fails its message at once.
 *
 * libnats runs its own threads (socket reader, flusher, timers, the
 * delivery of PubAcks) and calls back from them.  Nothing in those
 * callbacks touches PostgreSQL: they record what happened in malloc'd
 * memory under a pthread mutex and wake the worker through a pipe that
 * the main thread waits on with OutboxPublisherWait().  PostgreSQL's
 * signals are blocked whenever libnats may start a thread, so that those
 * threads never run a signal handler; the main thread unblocks them
 * whenever it waits.  The connection is made in a thread of its own too,
 * so that a slow or unreachable server never blocks the worker; it is
 * kept across batches, reconnects by itself (forever, to any server of
 * the list or of the cluster), and is rebuilt when outbox.nats_url or the
 * credentials (outbox.nats_credentials, _user, _password, _token) change.  While it is not connected, batches are
 * left pending (SKIPPED) and the problem is logged once.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "storage/latch.h"
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

/* How long a batch waits for a (re)connection before it is left pending. */
#define CONNECT_WAIT_MS		1000

/* Grace after outbox.nats_timeout before the worker stops waiting itself. */
#define ACK_GRACE_MS		1000

/* Descriptors the publisher holds: the wake-up pipe and the socket. */
#define FDS_RESERVED		3

/* Longest error text kept from a callback. */
#define ERROR_TEXT_LEN		256

/* Settings (reload). */
static char *setting_url = NULL;
static char *setting_subject = NULL;
static char *setting_credentials = NULL;
static char *setting_user = NULL;
static char *setting_password = NULL;
static char *setting_token = NULL;
static int	setting_max_pending = 256;
static int	setting_timeout = 5000;

/* The current destination's options (the settings, by default). */
static char *nats_url = "";
static char *nats_subject = "{topic}";
static char *nats_credentials = "";
static char *nats_user = "";
static char *nats_password = "";
static char *nats_token = "";
static int	nats_max_pending = 256;
static int	nats_timeout = 5000;
static OutboxFormat nats_format = OUTBOX_FORMAT_RAW;
static char *nats_source = NULL;	/* CloudEvents source, unless raw */
static MemoryContext config_context = NULL;

/*
 * What a callback reports about one message: recorded by a libnats thread,
 * turned into a result by the main thread.
 */
typedef struct NatsCompletion
{
	natsMsg    *msg;			/* the published message, destroyed by the main thread */
	natsStatus	status;			/* NATS_OK for a PubAck */
	jsErrCode	code;			/* JetStream error code of a negative ack */
	bool		duplicate;		/* the stream had it already (Nats-Msg-Id) */
	char		text[ERROR_TEXT_LEN];
} NatsCompletion;

/*
 * State shared with libnats's threads, under shared_lock.  The completion
 * queue is malloc'd, never palloc'd: callbacks must not touch PostgreSQL.
 */
static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static NatsCompletion *completions = NULL;
static int	ncompletions = 0;
static int	completions_size = 0;
static bool wake_pending = false;
static int	wake_fds[2] = {-1, -1};
static char async_error[ERROR_TEXT_LEN];	/* last error the server sent */

/*
 * A connection being made in a thread of its own.  Once started, the job
 * belongs to the thread until it sets done; a job the worker no longer
 * wants is marked abandoned and the thread cleans up after itself.
 */
typedef struct ConnectJob
{
	natsOptions *opts;
	natsConnection *conn;
	natsStatus	status;
	char		error[ERROR_TEXT_LEN];
	bool		done;			/* under shared_lock */
	bool		abandoned;		/* under shared_lock */
} ConnectJob;

/* The connection, kept across batches. */
static ConnectJob *connect_job = NULL;
static natsConnection *conn = NULL;
static jsCtx *js = NULL;
static bool js_published = false;	/* js took an asynchronous publication */
static char *built_url = NULL;
static char *built_credentials = NULL;
static bool fds_reserved = false;
static bool nats_opened = false;

/* One publication in flight in the current publish() call. */
typedef struct InFlight
{
	natsMsg    *msg;			/* key only: owned by libnats until completed */
	int			index;			/* message index, -1 when the slot is free */
	int64		deadline;		/* OutboxPublisherNowMs() after which it counts as lost */
} InFlight;

static InFlight *slots = NULL;
static int	nslots = 0;

/* The last problem logged, to log each one once. */
static OutboxProblem connection_problem =
	OUTBOX_PROBLEM_INIT("nats", ERRCODE_CONNECTION_FAILURE);

/* The signals blocked while libnats may start threads. */
static sigset_t saved_mask;
static bool signals_blocked = false;

/*
 * Block PostgreSQL's signals, so that a thread libnats starts now inherits
 * a mask that keeps their handlers on the main thread; they are delivered
 * once unblocked.
 */
static void
block_signals(void)
{
	if (signals_blocked)
		return;
	OutboxPublisherBlockSignals(&saved_mask);
	signals_blocked = true;
}

/* Restore the mask block_signals() changed (pending signals run now). */
static void
unblock_signals(void)
{
	if (!signals_blocked)
		return;
	signals_blocked = false;
	pthread_sigmask(SIG_SETMASK, &saved_mask, NULL);
}

/* Forget the problem logged last, and say that it went away. */
static void
clear_problem(void)
{
	if (connection_problem.reported == NULL)
		return;
	ereport(LOG,
			(errmsg("outbox nats publisher: publishing again (after: %s)",
					connection_problem.reported)));
	OutboxPublisherClearProblem(&connection_problem);
}

/* ------------------------------------------------------------------ subjects */

/*
 * Why subject is not a subject one can publish to, or NULL.  Tokens are
 * separated by dots and must not be empty; whitespace and control
 * characters are never allowed, and "*" and ">" tokens are wildcards.
 */
static const char *
subject_problem(const char *subject)
{
	const char *p;
	const char *token = subject;

	if (subject[0] == '\0')
		return "it is empty";
	for (p = subject;; p++)
	{
		unsigned char c = (unsigned char) *p;

		if (c == '.' || c == '\0')
		{
			int			len = (int) (p - token);

			if (len == 0)
				return "it has an empty token (a leading, trailing or double dot)";
			if (len == 1 && (token[0] == '*' || token[0] == '>'))
				return "it has a wildcard token (\"*\" or \">\")";
			if (c == '\0')
				break;
			token = p + 1;
		}
		else if (c == ' ' || c == '\t')
			return "it contains whitespace";
		else if (c < 0x20 || c == 0x7f)
			return "it contains a control character";
	}
	return NULL;
}

/* The subject of a topic: outbox.nats_subject with "{topic}" replaced. */
static char *
subject_for(const char *template, const char *topic)
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

/* ------------------------------------------------------------------ settings */

/*
 * Check outbox.nats_url: a comma-separated list of server URLs, none of
 * them empty or with whitespace in it, nor with a user name, password or
 * token (that value is never quoted).
 */
static bool
check_nats_url(char **newval, void **extra, GucSource source)
{
	const char *p = *newval;
	bool		empty = true;

	if (!OutboxCheckUrlSetting("outbox.nats_url", *newval,
							   "outbox.nats_user and outbox.nats_password, or outbox.nats_token,"))
		return false;

	for (; *p; p++)
	{
		if (*p == ',')
		{
			if (empty)
			{
				GUC_check_errdetail("The list of servers has an empty entry.");
				return false;
			}
			empty = true;
		}
		else if (*p != ' ')
			empty = false;
	}
	if (empty)
	{
		GUC_check_errdetail(**newval == '\0' ? "No server is given." :
							"The list of servers has an empty entry.");
		return false;
	}
	return true;
}

/*
 * Check outbox.nats_subject: with "{topic}" standing for a one-token topic,
 * it must be a valid subject.
 */
static bool
check_nats_subject(char **newval, void **extra, GucSource source)
{
	char	   *sample = subject_for(*newval, "topic");
	const char *problem = subject_problem(sample);

	pfree(sample);
	if (problem)
	{
		GUC_check_errdetail("The subject template is not a valid NATS subject: %s.", problem);
		return false;
	}
	return true;
}

/* Why a server list is not one, or NULL (never quoting it). */
static char *
url_list_problem(const char *value)
{
	const char *p = value;
	bool		empty = true;

	/* Also a server given without a scheme, which libnats takes. */
	if (OutboxUrlHasUserinfo(value, true))
		return pstrdup("A server URL must not hold a user name, password or token: set the secret options user and password, or token.");

	for (; *p; p++)
	{
		if (*p == ',')
		{
			if (empty)
				return pstrdup("The list of servers has an empty entry.");
			empty = true;
		}
		else if (*p != ' ')
			empty = false;
	}
	if (empty)
		return pstrdup(*value == '\0' ? "No server is given." :
					   "The list of servers has an empty entry.");
	return NULL;
}

/* Why a subject template is not one, or NULL. */
static char *
subject_template_problem(const char *value)
{
	char	   *sample = subject_for(value, "topic");
	const char *problem = subject_problem(sample);

	pfree(sample);
	if (problem)
		return psprintf("The subject template is not a valid NATS subject: %s.", problem);
	return NULL;
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
		config_context = AllocSetContextCreate(TopMemoryContext, "outbox nats options",
											   ALLOCSET_SMALL_SIZES);
	MemoryContextReset(config_context);
	old = MemoryContextSwitchTo(config_context);
	nats_url = OutboxOptionString("url");
	nats_subject = OutboxOptionString("subject");
	nats_credentials = OutboxOptionString("credentials");
	nats_user = OutboxOptionString("user");
	nats_password = OutboxOptionString("password");
	nats_token = OutboxOptionString("token");
	nats_max_pending = (int) OutboxOptionInteger("max_pending");
	nats_timeout = (int) OutboxOptionInteger("timeout");
	nats_format = OutboxOptionFormat(&nats_source);
	MemoryContextSwitchTo(old);
}

/* ------------------------------------------------------------------ callbacks (libnats threads) */

/*
 * Wake the main thread: one byte in the pipe until it reads it.  Called
 * with shared_lock held, from any thread.
 */
static void
wake_locked(void)
{
	if (!wake_pending && wake_fds[1] >= 0)
	{
		wake_pending = true;
		if (write(wake_fds[1], "x", 1) < 0)
			wake_pending = false;
	}
}

/*
 * PubAck handler, run by libnats's thread for every asynchronous
 * publication (acknowledged, refused, or timed out).  No PostgreSQL call
 * here: record and wake.  The message is ours to destroy; the main thread
 * does it, after matching it to its slot.
 */
static void
on_ack(jsCtx *ctx, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
	NatsCompletion *c;

	pthread_mutex_lock(&shared_lock);
	if (ncompletions == completions_size)
	{
		int			size = Max(64, completions_size * 2);
		NatsCompletion *grown = realloc(completions, sizeof(NatsCompletion) * size);

		if (grown == NULL)
		{
			/* Out of memory: the message counts as lost (it times out). */
			pthread_mutex_unlock(&shared_lock);
			return;
		}
		completions = grown;
		completions_size = size;
	}
	c = &completions[ncompletions++];
	c->msg = msg;
	c->status = NATS_OK;
	c->code = 0;
	c->duplicate = pa != NULL && pa->Duplicate;
	c->text[0] = '\0';
	if (pae != NULL)
	{
		c->status = pae->Err != NATS_OK ? pae->Err : NATS_ERR;
		c->code = pae->ErrCode;
		snprintf(c->text, sizeof(c->text), "%s",
				 pae->ErrText ? pae->ErrText : natsStatus_GetText(c->status));
	}
	else if (pa == NULL)
	{
		c->status = NATS_ERR;
		snprintf(c->text, sizeof(c->text), "no PubAck in the answer");
	}
	wake_locked();
	pthread_mutex_unlock(&shared_lock);
}

/* Connection state changes: wake the main thread, which may be waiting for one. */
static void
on_connection_event(natsConnection *nc, void *closure)
{
	pthread_mutex_lock(&shared_lock);
	wake_locked();
	pthread_mutex_unlock(&shared_lock);
}

/* An asynchronous error (say, a permissions violation): keep its text. */
static void
on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
	const char *text = NULL;

	if (natsConnection_GetLastError(nc, &text) == NATS_OK || text == NULL || text[0] == '\0')
		text = natsStatus_GetText(err);
	pthread_mutex_lock(&shared_lock);
	snprintf(async_error, sizeof(async_error), "%s", text);
	wake_locked();
	pthread_mutex_unlock(&shared_lock);
}

/*
 * The connecting thread: connect (with retries on failure in the
 * background, so this ends after one pass over the servers), then hand
 * the connection over, or close it when it is no longer wanted.
 */
static void *
connect_main(void *arg)
{
	ConnectJob *job = (ConnectJob *) arg;
	natsConnection *nc = NULL;
	natsStatus	s;
	bool		abandoned;

	s = natsConnection_Connect(&nc, job->opts);
	natsOptions_Destroy(job->opts);
	job->opts = NULL;

	pthread_mutex_lock(&shared_lock);
	job->status = s;
	if (s != NATS_OK && s != NATS_NOT_YET_CONNECTED)
	{
		const char *text = nats_GetLastError(NULL);

		snprintf(job->error, sizeof(job->error), "%s",
				 text && text[0] ? text : natsStatus_GetText(s));
	}
	job->conn = nc;
	job->done = true;
	abandoned = job->abandoned;
	if (!abandoned)
		wake_locked();
	pthread_mutex_unlock(&shared_lock);

	if (abandoned)
	{
		natsConnection_Destroy(nc);
		free(job);
	}
	return NULL;
}

/* ------------------------------------------------------------------ connection (main thread) */

/* Read what the wake-up pipe holds, so that it can wake us again. */
static void
drain_wake_pipe(void)
{
	char		buf[64];

	pthread_mutex_lock(&shared_lock);
	while (read(wake_fds[0], buf, sizeof(buf)) > 0)
		;
	wake_pending = false;
	pthread_mutex_unlock(&shared_lock);
}

/*
 * Wait up to ms for a callback (or an interrupt), with PostgreSQL's
 * signals deliverable meanwhile.
 */
static void
wait_for_event(long ms)
{
	bool		was_blocked = signals_blocked;

	unblock_signals();
	(void) OutboxPublisherWait(wake_fds[0], WL_SOCKET_READABLE, Max(ms, 0));
	drain_wake_pipe();
	if (was_blocked)
		block_signals();
}

/* Destroy the completions recorded so far that no slot waits for. */
static void
drop_stale_completions(void)
{
	int			i;

	pthread_mutex_lock(&shared_lock);
	for (i = 0; i < ncompletions; i++)
		natsMsg_Destroy(completions[i].msg);
	ncompletions = 0;
	pthread_mutex_unlock(&shared_lock);
}

/*
 * Take back every publication libnats still waits a PubAck for: their
 * acks, if they come, are ignored, and a republication is deduplicated by
 * Nats-Msg-Id.  libnats makes the context's table of pending publications
 * only when it takes the first one, and js_PublishAsyncGetPendingList()
 * reads that table without looking whether it exists: a context that never
 * published (a server down since the worker started) has nothing to take
 * back and must not be asked.
 */
static void
reclaim_pending(void)
{
	natsMsgList pending;

	if (js == NULL || !js_published)
		return;
	memset(&pending, 0, sizeof(pending));
	if (js_PublishAsyncGetPendingList(&pending, js) == NATS_OK)
		natsMsgList_Destroy(&pending);
}

/*
 * Close the connection (or give up the one being made).  Safe in any state
 * the publisher can be in (never connected, connecting, connected, server
 * down, closed) and when called again: each step looks at what exists.
 * What was in flight is forgotten, never confirmed: its messages stay
 * pending and are published again (Nats-Msg-Id deduplicates them).
 */
static void
nats_teardown(void)
{
	bool		was_blocked = signals_blocked;

	block_signals();
	if (connect_job)
	{
		bool		done;

		pthread_mutex_lock(&shared_lock);
		done = connect_job->done;
		if (!done)
			connect_job->abandoned = true;
		pthread_mutex_unlock(&shared_lock);
		if (done)
		{
			natsConnection_Destroy(connect_job->conn);
			free(connect_job);
		}
		connect_job = NULL;
	}
	if (js)
	{
		reclaim_pending();
		jsCtx_Destroy(js);
	}
	js = NULL;
	js_published = false;
	if (conn)
		natsConnection_Destroy(conn);
	conn = NULL;
	if (!was_blocked)
		unblock_signals();
	drop_stale_completions();
	if (built_url)
		pfree(built_url);
	built_url = NULL;
	if (built_credentials)
		pfree(built_credentials);
	built_credentials = NULL;
}

/* Raise an ERROR for a failed libnats call made while building options. */
static void
check_nats(natsStatus s, const char *what)
{
	if (s == NATS_OK)
		return;
	unblock_signals();
	ereport(ERROR,
			(errmsg("outbox nats publisher: could not set %s: %s", what,
					natsStatus_GetText(s))));
}

/*
 * The credentials a connection is made with, as one palloc'd string (kept
 * as built_credentials, to notice a change): the credentials file, the
 * user name, the password and the token.
 */
static char *
connection_credentials(void)
{
	return psprintf("%s\n%s\n%s\n%s", nats_credentials, nats_user, nats_password, nats_token);
}

/*
 * Start connecting to outbox.nats_url in a thread, with the options for
 * reconnecting forever.  Returns false, with the problem reported, when
 * the settings make it impossible.
 */
static bool
start_connecting(void)
{
	natsOptions *opts = NULL;
	const char **servers;
	int			nservers = 0;
	char	   *list = pstrdup(nats_url);
	char	   *p;
	char	   *save = NULL;
	ConnectJob *job;
	pthread_t	thread;
	int			rc;

	Assert(connect_job == NULL && conn == NULL);

	/* A server list stored with credentials in it is not used (nor shown). */
	if (OutboxUrlHasUserinfo(nats_url, true))
	{
		OutboxPublisherReportProblem(&connection_problem, "the server list holds a user name, password or token, so it is not used",
									 "Remove them from the URL, and set the secret options user and password, or token (outbox.nats_user, outbox.nats_password, outbox.nats_token).");
		return false;
	}
	if (nats_credentials[0] != '\0' && access(nats_credentials, R_OK) != 0)
	{
		OutboxPublisherReportProblem(&connection_problem, psprintf("cannot read the credentials file \"%s\": %m", nats_credentials),
					   "Fix outbox.nats_credentials (or the file's permissions) and reload.");
		return false;
	}

	/* The servers, trimmed. */
	servers = palloc(sizeof(char *) * (strlen(list) / 2 + 2));
	for (p = strtok_r(list, ",", &save); p; p = strtok_r(NULL, ",", &save))
	{
		char	   *end;

		while (*p == ' ')
			p++;
		end = p + strlen(p);
		while (end > p && end[-1] == ' ')
			*--end = '\0';
		if (*p)
			servers[nservers++] = p;
	}

	if (!fds_reserved)
	{
		int			i;

		for (i = 0; i < FDS_RESERVED; i++)
			ReserveExternalFD();
		fds_reserved = true;
	}
	if (wake_fds[0] < 0)
	{
		if (pipe(wake_fds) != 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("outbox nats publisher: could not create a pipe: %m")));
		fcntl(wake_fds[0], F_SETFL, O_NONBLOCK);
		fcntl(wake_fds[1], F_SETFL, O_NONBLOCK);
		fcntl(wake_fds[0], F_SETFD, FD_CLOEXEC);
		fcntl(wake_fds[1], F_SETFD, FD_CLOEXEC);
	}

	/* libnats starts its timer threads now: with our signals blocked. */
	block_signals();
	if (!nats_opened)
	{
		check_nats(nats_Open(-1), "up the NATS library");
		nats_opened = true;
	}
	check_nats(natsOptions_Create(&opts), "up NATS options");
	PG_TRY();
	{
		check_nats(natsOptions_SetServers(opts, servers, nservers), "the servers");
		check_nats(natsOptions_SetName(opts, "outbox"), "the client name");
		check_nats(natsOptions_SetAllowReconnect(opts, true), "reconnections");
		check_nats(natsOptions_SetMaxReconnect(opts, -1), "reconnections");
		check_nats(natsOptions_SetReconnectWait(opts, 250), "the reconnection wait");
		check_nats(natsOptions_SetTimeout(opts, 2000), "the connection timeout");
		check_nats(natsOptions_SetPingInterval(opts, 5000), "the ping interval");
		check_nats(natsOptions_SetMaxPingsOut(opts, 3), "the ping limit");
		check_nats(natsOptions_SetRetryOnFailedConnect(opts, true, on_connection_event, NULL),
				   "connection retries");
		check_nats(natsOptions_SetDisconnectedCB(opts, on_connection_event, NULL),
				   "the disconnection callback");
		check_nats(natsOptions_SetReconnectedCB(opts, on_connection_event, NULL),
				   "the reconnection callback");
		check_nats(natsOptions_SetClosedCB(opts, on_connection_event, NULL),
				   "the close callback");
		check_nats(natsOptions_SetErrorHandler(opts, on_async_error, NULL),
				   "the error handler");
		if (nats_credentials[0] != '\0')
			check_nats(natsOptions_SetUserCredentialsFromFiles(opts, nats_credentials, NULL),
					   "the credentials file");
		if (nats_user[0] != '\0' || nats_password[0] != '\0')
			check_nats(natsOptions_SetUserInfo(opts, nats_user, nats_password),
					   "the user name and password");
		if (nats_token[0] != '\0')
			check_nats(natsOptions_SetToken(opts, nats_token), "the token");
	}
	PG_CATCH();
	{
		natsOptions_Destroy(opts);
		PG_RE_THROW();
	}
	PG_END_TRY();

	job = calloc(1, sizeof(ConnectJob));
	if (job == NULL)
	{
		natsOptions_Destroy(opts);
		unblock_signals();
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	}
	job->opts = opts;
	rc = pthread_create(&thread, NULL, connect_main, job);
	if (rc == 0)
		pthread_detach(thread);
	unblock_signals();
	if (rc != 0)
	{
		natsOptions_Destroy(opts);
		free(job);
		ereport(ERROR,
				(errmsg("outbox nats publisher: could not start a thread: %s", strerror(rc))));
	}
	connect_job = job;
	built_url = MemoryContextStrdup(TopMemoryContext, nats_url);
	built_credentials = MemoryContextStrdup(TopMemoryContext, connection_credentials());
	pfree(servers);
	pfree(list);
	return true;
}

/*
 * Take over the connection the thread made.  Returns false, with the
 * problem reported, when it failed for good (bad URL, credentials, ...).
 */
static bool
finish_connecting(void)
{
	ConnectJob *job = connect_job;
	jsOptions	jo;
	natsStatus	s;

	connect_job = NULL;
	if (job->status != NATS_OK && job->status != NATS_NOT_YET_CONNECTED)
	{
		StringInfoData buf;

		initStringInfo(&buf);
		appendStringInfoString(&buf, "could not connect to ");
		OutboxPublisherAppendPrintable(&buf, built_url, (int) strlen(built_url), false);
		appendStringInfoString(&buf, ": ");
		OutboxPublisherAppendPrintable(&buf, job->error, (int) strlen(job->error), false);
		natsConnection_Destroy(job->conn);
		free(job);
		/* Settings unchanged: tried again on the next batch. */
		pfree(built_url);
		built_url = NULL;
		pfree(built_credentials);
		built_credentials = NULL;
		OutboxPublisherReportProblem(&connection_problem, buf.data, "Check outbox.nats_url and outbox.nats_credentials.");
		return false;
	}
	conn = job->conn;
	free(job);

	jsOptions_Init(&jo);
	jo.Wait = nats_timeout;
	jo.PublishAsync.MaxPending = 0; /* bounded here, by outbox.nats_max_pending */
	jo.PublishAsync.AckHandler = on_ack;
	jo.PublishAsync.AckHandlerClosure = NULL;
	block_signals();
	s = natsConnection_JetStream(&js, conn, &jo);
	unblock_signals();
	js_published = false;
	if (s != NATS_OK)
	{
		/* No connection without its context: the next batch starts over. */
		js = NULL;
		nats_teardown();
		ereport(ERROR,
				(errmsg("outbox nats publisher: could not create a JetStream context: %s",
						natsStatus_GetText(s))));
	}
	return true;
}

/* The URL of the server we are connected to, for messages. */
static char *
connected_url(void)
{
	char		buf[256];

	if (conn && natsConnection_GetConnectedUrl(conn, buf, sizeof(buf)) == NATS_OK && buf[0])
		return pstrdup(buf);
	return pstrdup(built_url ? built_url : nats_url);
}

/*
 * Make sure the connection exists and is connected, waiting up to
 * CONNECT_WAIT_MS (in slices) for it.  Returns false, with the problem
 * reported, when the batch cannot be published now.
 */
static bool
ensure_connected(void)
{
	int64		deadline = OutboxPublisherNowMs() + CONNECT_WAIT_MS;

	if (conn == NULL && connect_job == NULL && !start_connecting())
		return false;

	for (;;)
	{
		if (connect_job)
		{
			bool		done;

			pthread_mutex_lock(&shared_lock);
			done = connect_job->done;
			pthread_mutex_unlock(&shared_lock);
			if (done && !finish_connecting())
				return false;
		}
		if (conn && natsConnection_Status(conn) == NATS_CONN_STATUS_CONNECTED)
			return true;
		if (conn && natsConnection_Status(conn) == NATS_CONN_STATUS_CLOSED)
		{
			/* Should not happen (reconnects are unlimited): start over. */
			nats_teardown();
			return false;
		}
		if (OutboxPublisherNowMs() >= deadline)
			break;
		wait_for_event(Min(WAIT_SLICE_MS, deadline - OutboxPublisherNowMs()));
	}

	{
		StringInfoData buf;
		char		last[ERROR_TEXT_LEN];

		pthread_mutex_lock(&shared_lock);
		memcpy(last, async_error, sizeof(last));
		pthread_mutex_unlock(&shared_lock);
		initStringInfo(&buf);
		appendStringInfoString(&buf, "not connected to any NATS server of ");
		OutboxPublisherAppendPrintable(&buf, built_url, (int) strlen(built_url), false);
		if (last[0])
		{
			appendStringInfoString(&buf, " (last error: ");
			OutboxPublisherAppendPrintable(&buf, last, (int) strlen(last), false);
			appendStringInfoChar(&buf, ')');
		}
		appendStringInfoString(&buf, "; reconnecting");
		OutboxPublisherReportProblem(&connection_problem, buf.data, NULL);
		pfree(buf.data);
	}
	return false;
}

/* ------------------------------------------------------------------ messages */

/* Headers this publisher sets itself. */
static const char *const own_headers[] = {
	"nats-msg-id", "outbox-id", "outbox-topic", "outbox-key", "outbox-created-at", NULL
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

/* Why a header value cannot be sent (CR, LF, other controls), or NULL. */
static const char *
value_problem(const char *value)
{
	for (; *value; value++)
	{
		unsigned char c = (unsigned char) *value;

		if ((c < 0x20 && c != '\t') || c == 0x7f)
			return "contains a control character, which NATS headers cannot carry";
	}
	return NULL;
}

/* Set a header, or say why it could not be set. */
static char *
set_header(natsMsg *msg, const char *name, const char *value, bool add)
{
	natsStatus	s = add ? natsMsgHeader_Add(msg, name, value) :
		natsMsgHeader_Set(msg, name, value);

	if (s != NATS_OK)
		return psprintf("could not set header \"%s\": %s", name, natsStatus_GetText(s));
	return NULL;
}

/*
 * Build the NATS message of an outbox message.  Returns NULL with the
 * message rejected when it cannot be published (invalid subject, headers
 * NATS cannot carry).
 */
static natsMsg *
build_message(const OutboxMessage *m, OutboxPublishResult *result)
{
	char	   *subject = subject_for(nats_subject, m->topic);
	const char *why = subject_problem(subject);
	char	   *problem = NULL;
	natsMsg    *msg = NULL;
	natsStatus	s;
	OutboxHeaderIterator it;
	OutboxHeader h;
	const char *data = m->payload;
	int			data_len = m->payload_len;
	bool		has_content_type = false;

	if (why)
	{
		StringInfoData buf;

		initStringInfo(&buf);
		appendStringInfoString(&buf, "nats: subject \"");
		OutboxPublisherAppendPrintable(&buf, subject, Min((int) strlen(subject), 200), false);
		appendStringInfoString(&buf, "\" (for topic \"");
		OutboxPublisherAppendPrintable(&buf, m->topic, Min((int) strlen(m->topic), 200), false);
		appendStringInfo(&buf, "\") is not a valid NATS subject: %s", why);
		result->status = OUTBOX_PUBLISH_REJECT;
		result->error = buf.data;
		return NULL;
	}
	if (value_problem(m->topic))
		problem = pstrdup("the topic contains control characters, which the Outbox-Topic header cannot carry");
	else if (value_problem(m->key))
		problem = pstrdup("the key contains control characters, which the Outbox-Key header cannot carry");
	if (problem)
	{
		result->status = OUTBOX_PUBLISH_REJECT;
		result->error = psprintf("nats: %s", problem);
		return NULL;
	}

	/* Structured: the payload is the event (natsMsg_Create copies it). */
	if (nats_format == OUTBOX_FORMAT_CLOUDEVENTS_STRUCTURED)
		data = OutboxCloudEventJson(m, nats_source, &data_len);
	s = natsMsg_Create(&msg, subject, NULL, data, data_len);
	if (s != NATS_OK)
	{
		result->status = OUTBOX_PUBLISH_RETRY;
		result->error = psprintf("nats: could not create the message: %s", natsStatus_GetText(s));
		return NULL;
	}

	/* The message's own headers. */
	OutboxHeadersBegin(&it, m->headers);
	while (problem == NULL && OutboxHeadersNext(&it, &h))
	{
		char	   *name = pnstrdup(h.name, h.name_len);
		char	   *value;
		const char *p;

		if (name[0] == '\0')
			problem = pstrdup("a message header has an empty name, which NATS cannot carry");
		for (p = name; problem == NULL && *p; p++)
		{
			unsigned char c = (unsigned char) *p;

			if (c <= 0x20 || c >= 0x7f || c == ':')
			{
				StringInfoData buf;

				initStringInfo(&buf);
				appendStringInfoString(&buf, "message header name \"");
				OutboxPublisherAppendPrintable(&buf, name, Min((int) strlen(name), 100), false);
				appendStringInfo(&buf, "\" is not a valid NATS header name (invalid character at position %d)",
								 (int) (p - name) + 1);
				problem = buf.data;
			}
		}
		if (problem == NULL && is_own_header(name))
			problem = psprintf("message header \"%s\" cannot be sent: the nats publisher sets it itself",
							   name);
		if (problem == NULL && nats_format == OUTBOX_FORMAT_CLOUDEVENTS_BINARY &&
			OutboxCloudEventHeaderIsReserved(&h, "ce-"))
			problem = psprintf("message header \"%s\" cannot be sent: with format cloudevents-binary the nats publisher sets it itself",
							   name);
		if (problem == NULL && h.value == NULL)
			problem = psprintf("message header \"%s\" is not a string", name);
		if (problem != NULL)
			break;
		if (OutboxHeaderNameIs(&h, "content-type"))
		{
			has_content_type = true;
			/* Structured: it is the event's datacontenttype. */
			if (nats_format == OUTBOX_FORMAT_CLOUDEVENTS_STRUCTURED)
				continue;
		}
		value = pnstrdup(h.value, h.value_len);
		why = value_problem(value);
		if (why)
			problem = psprintf("value of message header \"%s\" %s", name, why);
		else
			problem = set_header(msg, name, value, true);
	}

	if (problem == NULL && nats_format == OUTBOX_FORMAT_CLOUDEVENTS_STRUCTURED)
		problem = set_header(msg, "content-type", OUTBOX_CLOUDEVENTS_JSON, false);
	else if (problem == NULL && nats_format == OUTBOX_FORMAT_CLOUDEVENTS_BINARY)
	{
		OutboxCloudEventAttribute attributes[OUTBOX_CLOUDEVENT_MAX_ATTRIBUTES];
		int			n = OutboxCloudEventAttributes(m, nats_source, "ce-", false, attributes);
		int			i;

		for (i = 0; i < n && problem == NULL; i++)
			problem = set_header(msg, attributes[i].name, attributes[i].value, false);
		if (problem == NULL && !has_content_type)
			problem = set_header(msg, "content-type", OutboxPayloadContentType(m), false);
	}
	if (problem == NULL)
		problem = set_header(msg, "Nats-Msg-Id", m->id_text, false);
	if (problem == NULL)
		problem = set_header(msg, "Outbox-Id", m->id_text, false);
	if (problem == NULL)
		problem = set_header(msg, "Outbox-Topic", m->topic, false);
	if (problem == NULL)
		problem = set_header(msg, "Outbox-Key", m->key, false);
	if (problem == NULL)
	{
		char	   *created_at = JsonEncodeDateTime(NULL, TimestampTzGetDatum(m->created_at),
										TIMESTAMPTZOID, NULL);
		problem = set_header(msg, "Outbox-Created-At", created_at, false);
	}
	if (problem)
	{
		natsMsg_Destroy(msg);
		result->status = OUTBOX_PUBLISH_REJECT;
		result->error = psprintf("nats: %s", problem);
		return NULL;
	}
	return msg;
}

/* The last_error of a publication that did not get a positive PubAck. */
static char *
failure_text(const NatsCompletion *c)
{
	StringInfoData buf;
	const char *subject = natsMsg_GetSubject(c->msg);

	initStringInfo(&buf);
	if (c->status == NATS_NO_RESPONDERS)
	{
		appendStringInfoString(&buf, "nats: no stream matches subject \"");
		OutboxPublisherAppendPrintable(&buf, subject, (int) strlen(subject), false);
		appendStringInfoChar(&buf, '"');
	}
	else if (c->status == NATS_TIMEOUT)
		appendStringInfo(&buf, "nats: no PubAck from JetStream within %d ms", nats_timeout);
	else
	{
		appendStringInfoString(&buf, "nats: JetStream did not store the message: ");
		OutboxPublisherAppendPrintable(&buf, c->text, (int) strlen(c->text), false);
		if (c->code != 0)
			appendStringInfo(&buf, " (error code %d)", (int) c->code);
	}
	return buf.data;
}

/*
 * Turn the completions recorded by the callbacks into results.  Returns
 * how many slots were freed.
 */
static int
collect_completions(OutboxPublishResult *results, int *next_slot_hint,
					int *duplicates)
{
	NatsCompletion *mine;
	int			n;
	int			freed = 0;
	int			i;

	pthread_mutex_lock(&shared_lock);
	n = ncompletions;
	if (n == 0)
	{
		pthread_mutex_unlock(&shared_lock);
		return 0;
	}
	mine = palloc(sizeof(NatsCompletion) * n);
	memcpy(mine, completions, sizeof(NatsCompletion) * n);
	ncompletions = 0;
	pthread_mutex_unlock(&shared_lock);

	for (i = 0; i < n; i++)
	{
		NatsCompletion *c = &mine[i];
		int			k;
		int			j;

		/* Acks come mostly in order: look from the oldest slot on. */
		for (j = 0, k = *next_slot_hint; j < nslots; j++, k = (k + 1) % nslots)
		{
			if (slots[k].index >= 0 && slots[k].msg == c->msg)
				break;
		}
		if (j < nslots)
		{
			OutboxPublishResult *r = &results[slots[k].index];

			if (c->status == NATS_OK)
			{
				r->status = OUTBOX_PUBLISH_OK;
				r->error = NULL;
				if (c->duplicate)
					(*duplicates)++;
			}
			else
			{
				r->status = OUTBOX_PUBLISH_RETRY;
				r->error = failure_text(c);
			}
			slots[k].index = -1;
			slots[k].msg = NULL;
			*next_slot_hint = (k + 1) % nslots;
			freed++;
		}
		/* Else a leftover of an earlier batch. */
		natsMsg_Destroy(c->msg);
	}
	pfree(mine);
	return freed;
}

/* Make room for outbox.nats_max_pending slots. */
static void
setup_slots(void)
{
	int			i;

	if (nslots != nats_max_pending)
	{
		if (slots)
			pfree(slots);
		slots = MemoryContextAlloc(TopMemoryContext, sizeof(InFlight) * nats_max_pending);
		nslots = nats_max_pending;
	}
	for (i = 0; i < nslots; i++)
	{
		slots[i].index = -1;
		slots[i].msg = NULL;
	}
}

/*
 * Publish every message, up to nslots in flight, and wait for their
 * PubAcks.  Runs with our signals blocked except while waiting.
 */
static void
publish_all(OutboxMessage *messages, int nmessages, OutboxPublishResult *results)
{
	int			next = 0;
	int			inflight = 0;
	int			free_hint = 0;
	int			ack_hint = 0;
	int			duplicates = 0;
	int64		last_check = OutboxPublisherNowMs();
	bool		lost = false;
	char	   *stop_reason = NULL;
	jsPubOptions po;
	int			i;

	jsPubOptions_Init(&po);
	po.MaxWait = nats_timeout;

	while ((next < nmessages && stop_reason == NULL) || inflight > 0)
	{
		int64		now;
		int64		wait_ms;

		/* Fill the free slots. */
		while (inflight < nslots && next < nmessages && stop_reason == NULL)
		{
			natsMsg    *msg;
			natsMsg    *sent;
			natsStatus	s;
			int			k;

			if (natsConnection_Status(conn) != NATS_CONN_STATUS_CONNECTED)
			{
				stop_reason = "the connection to NATS was lost";
				break;
			}
			msg = build_message(&messages[next], &results[next]);
			if (msg == NULL)
			{
				next++;
				continue;
			}
			for (k = free_hint; slots[k].index >= 0; k = (k + 1) % nslots)
				;
			sent = msg;
			s = js_PublishMsgAsync(js, &msg, &po);
			if (s == NATS_OK)
				js_published = true;
			else
			{
				natsMsg_Destroy(msg);
				results[next].status = OUTBOX_PUBLISH_RETRY;
				results[next].error = psprintf("nats: could not publish: %s",
											   natsStatus_GetText(s));
				next++;
				if (s == NATS_CONNECTION_CLOSED || s == NATS_CONNECTION_DISCONNECTED ||
					s == NATS_INSUFFICIENT_BUFFER || s == NATS_STALE_CONNECTION)
					stop_reason = "the connection to NATS was lost";
				continue;
			}
			slots[k].msg = sent;
			slots[k].index = next;
			slots[k].deadline = OutboxPublisherNowMs() + nats_timeout + ACK_GRACE_MS;
			free_hint = (k + 1) % nslots;
			inflight++;
			next++;

			/* A long fill still looks at interrupts and at acks. */
			if (OutboxPublisherNowMs() - last_check >= WAIT_SLICE_MS)
				break;
		}

		inflight -= collect_completions(results, &ack_hint, &duplicates);

		/* Give up on publications whose ack is overdue. */
		now = OutboxPublisherNowMs();
		wait_ms = WAIT_SLICE_MS;
		for (i = 0; i < nslots && inflight > 0; i++)
		{
			if (slots[i].index < 0)
				continue;
			if (slots[i].deadline <= now)
			{
				OutboxPublishResult *r = &results[slots[i].index];

				r->status = OUTBOX_PUBLISH_RETRY;
				r->error = psprintf("nats: no PubAck from JetStream within %d ms",
									nats_timeout);
				slots[i].index = -1;
				slots[i].msg = NULL;
				inflight--;
				lost = true;
			}
			else
				wait_ms = Min(wait_ms, slots[i].deadline - now);
		}

		if (inflight > 0 && (inflight >= nslots || next >= nmessages || stop_reason))
		{
			/* Nothing more to send now: wait for acks. */
			wait_for_event(wait_ms);
			last_check = OutboxPublisherNowMs();
		}
		else if (now - last_check >= WAIT_SLICE_MS)
		{
			wait_for_event(0);
			last_check = OutboxPublisherNowMs();
		}
	}

	/*
	 * Messages the stream already had: published by an attempt whose result
	 * was lost (a crash, a timeout), now confirmed without a second copy.
	 */
	if (duplicates > 0)
		ereport(LOG,
				(errmsg("outbox nats publisher: %d of %d messages were already in the stream (published by an earlier attempt) and were not stored again",
						duplicates, nmessages)));

	/* What was not sent stays pending as it is. */
	for (; next < nmessages; next++)
		results[next].status = OUTBOX_PUBLISH_SKIPPED;

	if (lost)
	{
		/* libnats may still hold publications given up on: forget them. */
		reclaim_pending();
		drop_stale_completions();
	}
	if (stop_reason)
	{
		char	   *url = connected_url();

		OutboxPublisherReportProblem(&connection_problem, psprintf("%s (%s); reconnecting", stop_reason, url), NULL);
	}
}

/* ------------------------------------------------------------------ callbacks of the publisher API */

/* Publish a batch; see the file header. */
static void
nats_publish(OutboxMessage *messages, int nmessages, OutboxPublishResult *results)
{
	int			i;

	read_config();
	if (!ensure_connected())
	{
		for (i = 0; i < nmessages; i++)
			results[i].status = OUTBOX_PUBLISH_SKIPPED;
		return;
	}

	/* Acks of publications an interrupted batch left behind. */
	drop_stale_completions();
	setup_slots();

	PG_TRY();
	{
		block_signals();
		publish_all(messages, nmessages, results);
		unblock_signals();
	}
	PG_CATCH();
	{
		unblock_signals();
		/* Forget what is in flight: acks of it are ignored. */
		block_signals();
		reclaim_pending();
		unblock_signals();
		setup_slots();
		PG_RE_THROW();
	}
	PG_END_TRY();

	for (i = 0; i < nmessages; i++)
	{
		if (results[i].status == OUTBOX_PUBLISH_OK)
		{
			clear_problem();
			break;
		}
	}
}

/* Rebuild the connection when the settings it was made with changed. */
static void
nats_reload(void)
{
	char	   *credentials;
	bool		changed;

	read_config();
	if (conn == NULL && connect_job == NULL)
		return;
	credentials = connection_credentials();
	changed = strcmp(built_url, nats_url) != 0 || strcmp(built_credentials, credentials) != 0;
	pfree(credentials);
	if (changed)
	{
		ereport(LOG,
				(errmsg("outbox nats publisher: reconnecting with the new settings")));
		nats_teardown();
	}
}

/* Close the connection. */
static void
nats_shutdown(void)
{
	nats_teardown();
	OutboxPublisherClearProblem(&connection_problem);
}

/* A destination's options; each defaults to its setting. */
static const OutboxOption nats_options[] = {
	{.name = "url", .type = OUTBOX_OPTION_STRING, .setting = "outbox.nats_url",
	.check = url_list_problem},
	{.name = "subject", .type = OUTBOX_OPTION_STRING, .setting = "outbox.nats_subject",
	.check = subject_template_problem},
	{.name = "credentials", .type = OUTBOX_OPTION_STRING, .setting = "outbox.nats_credentials",
	.secret = true},
	{.name = "user", .type = OUTBOX_OPTION_STRING, .setting = "outbox.nats_user",
	.secret = true},
	{.name = "password", .type = OUTBOX_OPTION_STRING, .setting = "outbox.nats_password",
	.secret = true},
	{.name = "token", .type = OUTBOX_OPTION_STRING, .setting = "outbox.nats_token",
	.secret = true},
	{.name = "max_pending", .type = OUTBOX_OPTION_INTEGER, .setting = "outbox.nats_max_pending",
	.min_value = 1, .max_value = 65536},
	{.name = "timeout", .type = OUTBOX_OPTION_INTEGER, .setting = "outbox.nats_timeout",
	.unit = GUC_UNIT_MS, .min_value = 100, .max_value = 3600 * 1000},
	OUTBOX_FORMAT_OPTIONS("outbox.nats_format"),
};

static const OutboxPublisher nats_publisher = {
	.api_version = OUTBOX_PUBLISHER_API_VERSION,
	.name = "nats",
	.in_transaction = false,
	.check_topic = NULL,		/* a bad subject fails its message */
	.init = read_config,		/* connects on the first batch */
	.publish = nats_publish,
	.reload = nats_reload,
	.shutdown = nats_shutdown,
	.options = nats_options,
	.noptions = lengthof(nats_options),
};

/* Define the settings and register the publisher. */
void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("outbox_nats must be loaded via shared_preload_libraries"),
				 errhint("Add it after outbox: shared_preload_libraries = 'outbox, outbox_nats'.")));

	DefineCustomStringVariable("outbox.nats_url",
							   "NATS servers the nats publisher connects to (comma-separated URLs).",
							   NULL,
							   &setting_url,
							   "nats://127.0.0.1:4222",
							   PGC_SIGHUP,
							   0,
							   check_nats_url, NULL, NULL);

	DefineCustomStringVariable("outbox.nats_subject",
							   "Subject the nats publisher publishes a message to.",
							   "\"{topic}\" in it is replaced by the message's topic.",
							   &setting_subject,
							   "{topic}",
							   PGC_SIGHUP,
							   0,
							   check_nats_subject, NULL, NULL);

	DefineCustomStringVariable("outbox.nats_credentials",
							   "Credentials file (JWT and NKey seed) for connecting to NATS; empty for none.",
							   NULL,
							   &setting_credentials,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	/* Credentials: never in the URL, which anyone may read. */
	DefineCustomStringVariable("outbox.nats_user",
							   "User name for connecting to NATS (with outbox.nats_password); empty for none.",
							   NULL,
							   &setting_user,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("outbox.nats_password",
							   "Password for connecting to NATS (with outbox.nats_user); empty for none.",
							   NULL,
							   &setting_password,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("outbox.nats_token",
							   "Token for connecting to NATS; empty for none.",
							   NULL,
							   &setting_token,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);
	OutboxPublisherKeepSecret("outbox.nats_user");
	OutboxPublisherKeepSecret("outbox.nats_password");
	OutboxPublisherKeepSecret("outbox.nats_token");

	DefineCustomIntVariable("outbox.nats_max_pending",
							"Most JetStream publications waiting for their PubAck at once.",
							NULL,
							&setting_max_pending,
							256, 1, 65536,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("outbox.nats_timeout",
							"Longest wait for the PubAck of a JetStream publication.",
							NULL,
							&setting_timeout,
							5000, 100, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	OutboxDefineFormatSetting("outbox.nats_format", "nats");

	OutboxRegisterPublisher(&nats_publisher);
}
