/*-------------------------------------------------------------------------
 *
 * http.c
 *		The "http" publisher: one webhook POST per message, sent with the
 *		libcurl multi interface.
 *
 * Each message becomes a POST to outbox.http_url (with "{topic}" replaced
 * by the URL-escaped topic).  The body is the raw payload; the message's
 * headers become HTTP headers, plus Outbox-Id, Outbox-Topic, Outbox-Key and
 * Outbox-Created-At; with outbox.http_signing_secret set, the request is
 * signed the Standard Webhooks way (webhook-id, webhook-timestamp,
 * webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">).
 *
 * With outbox.http_format (or the destination's format) a message is sent
 * as a CloudEvent: in binary content mode its attributes are ce-* headers
 * (percent-encoded, as the HTTP binding asks) and Content-Type is the
 * payload's; in structured content mode the body is the JSON event, with
 * Content-Type application/cloudevents+json, and the message's own
 * content-type header goes into the event instead of the request.  The
 * other headers, the Outbox-* ones and the signature (of the body sent)
 * are the same in every format.
 *
 * A 2xx answer confirms the message.  Anything else (another status, a
 * timeout, a refused connection, a DNS failure) is a failed attempt whose
 * last_error is "HTTP <status>: <start of the body>" or curl's error text;
 * "Retry-After" on a 429 or 503 answer sets the next attempt time.  A
 * message whose headers HTTP cannot carry is rejected (failed at once).
 *
 * The publisher is not transactional: the worker calls it with no
 * transaction open.  Up to outbox.http_max_concurrency requests are in
 * flight at once on one multi handle, kept across batches so connections
 * are reused.  The multi handle is driven with curl_multi_socket_action():
 * curl names the sockets to watch and a timer, the loop poll()s them and
 * hands curl only what happened, so a response costs one wake-up, not a
 * scan of every request.  The loop never waits longer than WAIT_SLICE_MS
 * before calling OutboxPublisherWait(), so SIGTERM, SIGHUP and postmaster
 * death are noticed; signals also interrupt the poll() at once.
 *
 * File descriptors: every request may hold up to FDS_PER_REQUEST of them
 * (its socket, and the resolver's socket pair while it resolves a name),
 * and they are reserved with fd.c (AcquireExternalFD) before use, so that
 * PostgreSQL's own file cache leaves room for them.  If fewer can be
 * reserved than the setting asks for, the concurrency is reduced (and
 * that is logged) rather than running out of descriptors.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <poll.h>
#include <signal.h>

#include <curl/curl.h>

#include "catalog/pg_type.h"
#include "common/base64.h"
#include "common/hmac.h"
#include "common/sha2.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "builtin.h"
#include "pg_compat.h"

/* How much of an error answer's body goes into last_error. */
#define ERROR_BODY_BYTES	200

/* Longest wait inside curl before checking for interrupts. */
#define WAIT_SLICE_MS		100

/* Descriptors one request may hold, and those of the multi handle. */
#define FDS_PER_REQUEST		3
#define FDS_FIXED			2

/*
 * Settings (reload): the default destination's options, and every
 * destination's defaults.
 */
static char *setting_url = NULL;
static int	setting_timeout = 5000;
static int	setting_max_concurrency = 32;
static char *setting_signing_secret = NULL;
static char *setting_ca_file = NULL;

/* The current destination's options, read by read_config(). */
typedef struct HttpConfig
{
	char	   *url;
	int			timeout;
	int			max_concurrency;
	char	   *signing_secret;
	char	   *ca_file;
	Jsonb	   *headers;		/* static headers, or NULL */
	OutboxFormat format;
	char	   *source;			/* CloudEvents source, unless raw */
} HttpConfig;

static HttpConfig cfg;
static MemoryContext cfg_context = NULL;

/* One request slot: an easy handle reused request after request. */
typedef struct HttpRequest
{
	CURL	   *easy;
	int			message;		/* index in the current publish() call, or -1 */
	struct curl_slist *headers; /* malloc'd by curl; freed after the request */
	char		errbuf[CURL_ERROR_SIZE];
	char		body[ERROR_BODY_BYTES];
	int			body_len;
} HttpRequest;

/* The transport, built by http_setup() and torn down by http_teardown(). */
static CURLM *multi = NULL;
static HttpRequest *requests = NULL;
static int	nrequests = 0;
static int	fds_reserved = 0;

/* The sockets curl waits on (malloc'd: filled from curl's callbacks). */
static struct pollfd *watched = NULL;
static int	nwatched = 0;
static int	watched_size = 0;

/* When curl wants to be called back (OutboxPublisherNowMs() time), or -1. */
static int64 timer_due = -1;

/* The settings the transport was built with. */
static int	built_timeout = 0;
static int	built_concurrency = 0;
static char *built_ca_file = NULL;

static bool curl_ready = false;

/* Owner of HMAC contexts: the publisher runs outside any transaction. */
static ResourceOwner hmac_owner = NULL;

/* The last configuration problem logged, to log each one once. */
static OutboxProblem config_problem =
	OUTBOX_PROBLEM_INIT("http", ERRCODE_INVALID_PARAMETER_VALUE);

/* Headers that describe the connection or the framing: never from messages. */
static const char *const transport_headers[] = {
	"content-length", "transfer-encoding", "host", "connection", "expect",
	"te", "trailer", "upgrade", "keep-alive", "proxy-connection", NULL
};

/* Headers this publisher sets itself. */
static const char *const outbox_headers[] = {
	"outbox-id", "outbox-topic", "outbox-key", "outbox-created-at", NULL
};
static const char *const signature_headers[] = {
	"webhook-id", "webhook-timestamp", "webhook-signature", NULL
};

/*
 * Check outbox.http_url: empty, or an http:// or https:// URL without a
 * user name or password (that value is never quoted; others may be: the
 * URL is not secret).
 */
static bool
check_http_url(char **newval, void **extra, GucSource source)
{
	if (!OutboxCheckUrlSetting("outbox.http_url", *newval,
							   "an Authorization header in the secret option headers of a destination"))
		return false;
	if (**newval == '\0' ||
		pg_strncasecmp(*newval, "http://", 7) == 0 ||
		pg_strncasecmp(*newval, "https://", 8) == 0)
		return true;
	GUC_check_errdetail("The URL must start with http:// or https://.");
	return false;
}

/* Whether c may appear in a header name (an RFC 7230 token). */
static bool
is_token_char(unsigned char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return true;
	return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Whether name (of len bytes) is one of list, ignoring case. */
static bool
name_in(const char *name, int len, const char *const *list)
{
	for (; *list; list++)
	{
		if ((int) strlen(*list) == len && pg_strncasecmp(name, *list, len) == 0)
			return true;
	}
	return false;
}

/*
 * The position of the first byte an HTTP field value cannot carry, or -1.
 * Values may contain visible ASCII, spaces, tabs and bytes >= 0x80 (RFC
 * 9110 field values); never NUL, CR, LF or other control characters.
 */
static int
bad_value_byte(const char *value, int len)
{
	int			i;

	for (i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) value[i];

		if ((c < 0x20 && c != '\t') || c == 0x7f)
			return i;
	}
	return -1;
}

/*
 * Why a header cannot be sent, or NULL when it can: a message's header, or
 * one of the destination's own (whose names it in the text: "message
 * header", "the destination's header").  The value is never quoted: a
 * destination's headers are secret.  The same check refuses a
 * destination's headers when they are set (headers_problem()).
 */
static char *
header_problem(const char *whose, const char *name, int namelen, const char *value,
			   int valuelen, bool signing)
{
	StringInfoData buf;
	int			i;

	initStringInfo(&buf);
	if (namelen == 0)
		return psprintf("%s has an empty name, which HTTP cannot carry", whose);
	for (i = 0; i < namelen; i++)
	{
		if (!is_token_char((unsigned char) name[i]))
		{
			appendStringInfo(&buf, "%s name \"", whose);
			OutboxPublisherAppendPrintable(&buf, name, Min(namelen, 100), false);
			appendStringInfo(&buf, "\" is not a valid HTTP header name (invalid character at position %d)",
							 i + 1);
			return buf.data;
		}
	}
	if (name_in(name, namelen, transport_headers) ||
		name_in(name, namelen, outbox_headers) ||
		(signing && name_in(name, namelen, signature_headers)))
	{
		appendStringInfo(&buf, "%s \"", whose);
		appendBinaryStringInfo(&buf, name, namelen);
		appendStringInfoString(&buf, "\" cannot be sent: the http publisher sets it itself");
		return buf.data;
	}
	i = bad_value_byte(value, valuelen);
	if (i >= 0)
	{
		appendStringInfo(&buf, "value of %s \"", whose);
		appendBinaryStringInfo(&buf, name, namelen);
		appendStringInfo(&buf, "\" contains the control character \\x%02x, which HTTP cannot carry",
						 (unsigned char) value[i]);
		return buf.data;
	}
	pfree(buf.data);
	return NULL;
}

/*
 * The check of a destination's headers (the option's JSON text, an object
 * of strings): each one a header the publisher may send whatever the
 * message, so that a bad one is refused when it is set rather than
 * failing every message.  Those that only the signing secret or a
 * CloudEvents format rules out are checked when a message is sent.
 */
static char *
headers_problem(const char *value)
{
	Jsonb	   *headers = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(value)));
	OutboxHeaderIterator it;
	OutboxHeader h;
	char	   *problem = NULL;

	OutboxHeadersBegin(&it, headers);
	while (problem == NULL && OutboxHeadersNext(&it, &h))
	{
		problem = header_problem("header", h.name, h.name_len, h.value, h.value_len, false);
		if (problem != NULL)
			problem[0] = (char) pg_toupper((unsigned char) problem[0]);
	}
	if (problem != NULL)
	{
		/* Drain the iterator, which frees it. */
		while (OutboxHeadersNext(&it, &h))
			;
	}
	return problem ? psprintf("%s.", problem) : NULL;
}

/* Whether a value has no content but optional whitespace. */
static bool
is_blank(const char *value, int len)
{
	int			i;

	for (i = 0; i < len; i++)
	{
		if (value[i] != ' ' && value[i] != '\t')
			return false;
	}
	return true;
}

/* Add "name: value" to a request's header list. */
static void
add_header(HttpRequest *r, const char *name, int namelen,
		   const char *value, int valuelen)
{
	StringInfoData line;
	struct curl_slist *list;

	initStringInfo(&line);
	appendBinaryStringInfo(&line, name, namelen);
	/* curl drops "name:" with no value; "name;" sends it empty. */
	if (is_blank(value, valuelen))
		appendStringInfoChar(&line, ';');
	else
	{
		appendStringInfoString(&line, ": ");
		appendBinaryStringInfo(&line, value, valuelen);
	}
	list = curl_slist_append(r->headers, line.data);
	if (list == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	r->headers = list;
	pfree(line.data);
}

static void
add_header_cstr(HttpRequest *r, const char *name, const char *value)
{
	add_header(r, name, (int) strlen(name), value, (int) strlen(value));
}

/*
 * The HMAC key: a Standard Webhooks secret "whsec_<base64>" stands for the
 * decoded bytes; any other secret is used as it is.
 */
static char *
signing_key(int *keylen)
{
	const char *secret = cfg.signing_secret;
	size_t		len = strlen(secret);

	if (len > 6 && strncmp(secret, "whsec_", 6) == 0)
	{
		int			declen = pg_b64_dec_len((int) (len - 6));
		char	   *key = palloc(declen + 1);
		int			n = outbox_b64_decode(secret + 6, (int) (len - 6), key, declen);

		if (n > 0)
		{
			*keylen = n;
			return key;
		}
		pfree(key);
	}
	*keylen = (int) len;
	return pstrdup(secret);
}

/*
 * "v1,<base64 HMAC-SHA256 of id.timestamp.body>".  The HMAC context is
 * tracked by a resource owner, and no transaction (with its owner) is open
 * here, so a private owner holds it.
 */
static char *
webhook_signature(const char *key, int keylen, const char *id,
				  const char *timestamp, const char *body, int body_len)
{
	uint8		mac[PG_SHA256_DIGEST_LENGTH];
	ResourceOwner saved_owner = CurrentResourceOwner;
	pg_hmac_ctx *ctx;
	int			enclen = pg_b64_enc_len(sizeof(mac));
	char	   *signature = palloc(enclen + 4);
	int			written;

	if (hmac_owner == NULL)
		hmac_owner = ResourceOwnerCreate(NULL, "outbox http publisher");
	CurrentResourceOwner = hmac_owner;
	PG_TRY();
	{
		bool		ok;

		ctx = pg_hmac_create(PG_SHA256);
		ok = ctx != NULL &&
			pg_hmac_init(ctx, (const uint8 *) key, keylen) == 0 &&
			pg_hmac_update(ctx, (const uint8 *) id, strlen(id)) == 0 &&
			pg_hmac_update(ctx, (const uint8 *) ".", 1) == 0 &&
			pg_hmac_update(ctx, (const uint8 *) timestamp, strlen(timestamp)) == 0 &&
			pg_hmac_update(ctx, (const uint8 *) ".", 1) == 0 &&
			pg_hmac_update(ctx, (const uint8 *) body, body_len) == 0 &&
			pg_hmac_final(ctx, mac, sizeof(mac)) == 0;
		if (!ok)
			elog(ERROR, "could not compute the webhook signature: %s",
				 pg_hmac_error(ctx));
		pg_hmac_free(ctx);
	}
	PG_FINALLY();
	{
		CurrentResourceOwner = saved_owner;
	}
	PG_END_TRY();

	memcpy(signature, "v1,", 3);
	written = outbox_b64_encode(mac, sizeof(mac), signature + 3, enclen);
	if (written < 0)
		elog(ERROR, "could not encode the webhook signature");
	signature[3 + written] = '\0';
	return signature;
}

/* The URL for a topic: every "{topic}" replaced by the escaped topic. */
static char *
request_url(CURL *easy, const char *topic)
{
	StringInfoData buf;
	const char *p = cfg.url;
	const char *hit;
	char	   *escaped = NULL;

	initStringInfo(&buf);
	while ((hit = strstr(p, "{topic}")) != NULL)
	{
		if (escaped == NULL)
		{
			escaped = curl_easy_escape(easy, topic, 0);
			if (escaped == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_OUT_OF_MEMORY),
						 errmsg("out of memory")));
		}
		appendBinaryStringInfo(&buf, p, (int) (hit - p));
		appendStringInfoString(&buf, escaped);
		p = hit + strlen("{topic}");
	}
	appendStringInfoString(&buf, p);
	if (escaped)
		curl_free(escaped);
	return buf.data;
}

/* Keep the first ERROR_BODY_BYTES of an answer, discard the rest. */
static size_t
collect_body(char *data, size_t size, size_t nmemb, void *userdata)
{
	HttpRequest *r = (HttpRequest *) userdata;
	size_t		n = size * nmemb;
	size_t		room = ERROR_BODY_BYTES - r->body_len;

	if (room > 0)
	{
		size_t		take = Min(room, n);

		memcpy(r->body + r->body_len, data, take);
		r->body_len += (int) take;
	}
	return n;
}

/* Forget a request's per-message state, and take it out of the multi. */
static void
release_request(HttpRequest *r)
{
	if (r->message >= 0)
		curl_multi_remove_handle(multi, r->easy);
	r->message = -1;
	if (r->headers)
		curl_slist_free_all(r->headers);
	r->headers = NULL;
}

/* Close everything: handles, connections, reserved descriptors. */
static void
http_teardown(void)
{
	int			i;

	for (i = 0; i < nrequests; i++)
	{
		if (requests[i].easy == NULL)
			continue;
		release_request(&requests[i]);
		curl_easy_cleanup(requests[i].easy);
	}
	if (requests)
		pfree(requests);
	requests = NULL;
	nrequests = 0;
	/* This reports the sockets still open to on_socket(), to forget. */
	if (multi)
		curl_multi_cleanup(multi);
	multi = NULL;
	if (watched)
		free(watched);
	watched = NULL;
	nwatched = 0;
	watched_size = 0;
	timer_due = -1;
	while (fds_reserved > 0)
	{
		ReleaseExternalFD();
		fds_reserved--;
	}
	if (built_ca_file)
		pfree(built_ca_file);
	built_ca_file = NULL;
}

/* Set a curl option or raise an error naming it. */
#define SET_OPTION(easy, option, value) \
	do { \
		CURLcode	rc_ = curl_easy_setopt((easy), (option), (value)); \
		if (rc_ != CURLE_OK) \
			elog(ERROR, "could not set curl option %s: %s", #option, \
				 curl_easy_strerror(rc_)); \
	} while (0)

/*
 * Socket callback: keep the poll set in step with what curl waits for.
 * Called from inside curl, so it must not raise an ERROR (no palloc).
 */
static int
on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	int			i;

	for (i = 0; i < nwatched; i++)
	{
		if (watched[i].fd == fd)
			break;
	}
	if (what == CURL_POLL_REMOVE)
	{
		if (i < nwatched)
			watched[i] = watched[--nwatched];
		return 0;
	}
	if (i == nwatched)
	{
		if (nwatched == watched_size)
		{
			int			size = Max(16, watched_size * 2);
			struct pollfd *grown = realloc(watched, sizeof(struct pollfd) * size);

			if (grown == NULL)
				return -1;
			watched = grown;
			watched_size = size;
		}
		watched[nwatched].fd = fd;
		watched[nwatched].revents = 0;
		nwatched++;
	}
	watched[i].events = (short) (((what & CURL_POLL_IN) ? POLLIN : 0) |
		((what & CURL_POLL_OUT) ? POLLOUT : 0));
	return 0;
}

/* Timer callback: when curl wants to be called back without socket events. */
static int
on_timer(CURLM *m, long timeout_ms, void *userp)
{
	timer_due = timeout_ms < 0 ? -1 : OutboxPublisherNowMs() + timeout_ms;
	return 0;
}

/* Set a multi handle option or raise an error naming it. */
#define SET_MULTI_OPTION(option, value) \
	do { \
		CURLMcode	rc_ = curl_multi_setopt(multi, (option), (value)); \
		if (rc_ != CURLM_OK) \
			elog(ERROR, "could not set curl option %s: %s", #option, \
				 curl_multi_strerror(rc_)); \
	} while (0)

/*
 * Build the multi handle and the request slots for the current settings:
 * as many slots as outbox.http_max_concurrency asks for and as file
 * descriptors allow.  Raises an ERROR halfway when something fails:
 * http_setup() then tears down what was built.
 */
static void
http_build(void)
{
	int			wanted = cfg.max_concurrency;
	int			n;
	int			i;

	while (fds_reserved < FDS_FIXED + wanted * FDS_PER_REQUEST && AcquireExternalFD())
		fds_reserved++;
	n = Min(wanted, (fds_reserved - FDS_FIXED) / FDS_PER_REQUEST);
	if (n < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("outbox http publisher: no file descriptors available for HTTP connections"),
				 errhint("Raise max_files_per_process or the process's file descriptor limit.")));
	if (n < wanted)
		ereport(LOG,
				(errmsg("outbox http publisher: %d requests in flight at most instead of %d, for lack of file descriptors",
						n, wanted),
				 errhint("Raise max_files_per_process and the process's file descriptor limit (ulimit -n) for more.")));

	requests = MemoryContextAllocZero(TopMemoryContext, sizeof(HttpRequest) * n);
	nrequests = n;
	for (i = 0; i < nrequests; i++)
		requests[i].message = -1;

	multi = curl_multi_init();
	if (multi == NULL)
		elog(ERROR, "could not create a curl multi handle");
	SET_MULTI_OPTION(CURLMOPT_MAX_TOTAL_CONNECTIONS, (long) nrequests);
	SET_MULTI_OPTION(CURLMOPT_MAXCONNECTS, (long) nrequests);
	SET_MULTI_OPTION(CURLMOPT_SOCKETFUNCTION, on_socket);
	SET_MULTI_OPTION(CURLMOPT_TIMERFUNCTION, on_timer);

	for (i = 0; i < nrequests; i++)
	{
		HttpRequest *r = &requests[i];

		r->easy = curl_easy_init();
		if (r->easy == NULL)
			elog(ERROR, "could not create a curl handle");
		SET_OPTION(r->easy, CURLOPT_NOSIGNAL, 1L);
		SET_OPTION(r->easy, CURLOPT_POST, 1L);
		SET_OPTION(r->easy, CURLOPT_PROTOCOLS_STR, "http,https");
		SET_OPTION(r->easy, CURLOPT_TIMEOUT_MS, (long) cfg.timeout);
		SET_OPTION(r->easy, CURLOPT_TCP_KEEPALIVE, 1L);
		SET_OPTION(r->easy, CURLOPT_USERAGENT, "outbox/" OUTBOX_VERSION " (PostgreSQL)");
		SET_OPTION(r->easy, CURLOPT_ERRORBUFFER, r->errbuf);
		SET_OPTION(r->easy, CURLOPT_WRITEFUNCTION, collect_body);
		SET_OPTION(r->easy, CURLOPT_WRITEDATA, r);
		SET_OPTION(r->easy, CURLOPT_PRIVATE, r);
		if (cfg.ca_file[0] != '\0')
			SET_OPTION(r->easy, CURLOPT_CAINFO, cfg.ca_file);
	}

	built_timeout = cfg.timeout;
	built_concurrency = cfg.max_concurrency;
	built_ca_file = MemoryContextStrdup(TopMemoryContext, cfg.ca_file);
}

/*
 * Build the transport, all or nothing: after an ERROR (an option curl
 * refuses, no memory, no descriptors) nothing is kept, so the next batch
 * builds it again rather than use one with request slots missing or
 * options not set.
 */
static void
http_setup(void)
{
	if (!curl_ready)
	{
		CURLcode	rc = curl_global_init(CURL_GLOBAL_DEFAULT);

		if (rc != CURLE_OK)
			elog(ERROR, "could not initialize libcurl: %s", curl_easy_strerror(rc));
		curl_ready = true;
	}

	PG_TRY();
	{
		http_build();
	}
	PG_CATCH();
	{
		http_teardown();
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/* Whether the destination's own headers name this one. */
static bool
static_header(const char *name, int namelen)
{
	OutboxHeaderIterator it;
	OutboxHeader h;

	OutboxHeadersBegin(&it, cfg.headers);
	while (OutboxHeadersNext(&it, &h))
	{
		if (h.name_len == namelen && pg_strncasecmp(h.name, name, namelen) == 0)
			return true;
	}
	return false;
}

/*
 * Why a header cannot be sent beside the CloudEvents attributes of binary
 * content mode (it is one of them), or NULL.  whose names it in the text.
 */
static char *
format_header_problem(const OutboxHeader *h, const char *whose)
{
	if (cfg.format != OUTBOX_FORMAT_CLOUDEVENTS_BINARY ||
		!OutboxCloudEventHeaderIsReserved(h, "ce-"))
		return NULL;
	return psprintf("%s \"%.*s\" cannot be sent: with format cloudevents-binary the http publisher sets it itself",
					whose, h->name_len, h->name);
}

/*
 * Prepare a request for a message.  Returns false, with the message
 * rejected, when its headers cannot be sent.
 */
static bool
prepare_request(HttpRequest *r, const OutboxMessage *m, OutboxPublishResult *result,
				const char *key, int keylen)
{
	bool		signing = key != NULL;
	bool		has_content_type = false;
	OutboxHeaderIterator it;
	OutboxHeader h;
	char	   *problem = NULL;
	char	   *url;
	char	   *created_at;
	const char *body = m->payload;
	int			body_len = m->payload_len;

	Assert(r->headers == NULL);

	/* The message's own headers. */
	OutboxHeadersBegin(&it, m->headers);
	while (problem == NULL && OutboxHeadersNext(&it, &h))
	{
		if (h.value == NULL)
		{
			problem = psprintf("message header \"%.*s\" is not a string",
							   h.name_len, h.name);
			break;
		}
		problem = header_problem("message header", h.name, h.name_len, h.value, h.value_len,
								 signing);
		if (problem == NULL)
			problem = format_header_problem(&h, "message header");
		if (problem)
			break;
		if (OutboxHeaderNameIs(&h, "content-type"))
		{
			if (has_content_type)
			{
				problem = pstrdup("the message has two content-type headers");
				break;
			}
			has_content_type = true;
			/* Structured: it is the event's datacontenttype. */
			if (cfg.format == OUTBOX_FORMAT_CLOUDEVENTS_STRUCTURED)
				continue;
		}
		if (cfg.headers != NULL && static_header(h.name, h.name_len))
		{
			problem = psprintf("message header \"%.*s\" cannot be sent: the destination sets it",
							   h.name_len, h.name);
			break;
		}
		add_header(r, h.name, h.name_len, h.value, h.value_len);
	}
	/* The destination's own headers (Authorization, ...). */
	if (problem == NULL && cfg.headers != NULL)
	{
		OutboxHeadersBegin(&it, cfg.headers);
		while (problem == NULL && OutboxHeadersNext(&it, &h))
		{
			problem = header_problem("the destination's header", h.name, h.name_len,
									 h.value, h.value_len, signing);
			if (problem == NULL && cfg.format != OUTBOX_FORMAT_RAW &&
				OutboxHeaderNameIs(&h, "content-type"))
				problem = pstrdup("the destination's header \"Content-Type\" cannot be sent: with a CloudEvents format the publisher sets it");
			if (problem == NULL)
				problem = format_header_problem(&h, "the destination's header");
			if (problem == NULL)
				add_header(r, h.name, h.name_len, h.value, h.value_len);
		}
	}
	if (problem == NULL && bad_value_byte(m->topic, (int) strlen(m->topic)) >= 0)
		problem = pstrdup("the topic contains control characters, which the Outbox-Topic header cannot carry");
	if (problem == NULL && bad_value_byte(m->key, (int) strlen(m->key)) >= 0)
		problem = pstrdup("the key contains control characters, which the Outbox-Key header cannot carry");
	if (problem)
	{
		if (r->headers)
			curl_slist_free_all(r->headers);
		r->headers = NULL;
		result->status = OUTBOX_PUBLISH_REJECT;
		result->error = problem;
		return false;
	}

	if (cfg.format == OUTBOX_FORMAT_CLOUDEVENTS_STRUCTURED)
	{
		body = OutboxCloudEventJson(m, cfg.source, &body_len);
		add_header_cstr(r, "Content-Type", OUTBOX_CLOUDEVENTS_JSON);
	}
	else if (cfg.format == OUTBOX_FORMAT_CLOUDEVENTS_BINARY)
	{
		OutboxCloudEventAttribute attributes[OUTBOX_CLOUDEVENT_MAX_ATTRIBUTES];
		int			n = OutboxCloudEventAttributes(m, cfg.source, "ce-", true, attributes);
		int			i;

		if (!has_content_type)
			add_header_cstr(r, "Content-Type", OutboxPayloadContentType(m));
		for (i = 0; i < n; i++)
			add_header_cstr(r, attributes[i].name, attributes[i].value);
	}
	else if (!has_content_type)
		add_header_cstr(r, "Content-Type",
						OutboxPayloadKindOf(m) == OUTBOX_PAYLOAD_JSON ? "application/json" : "application/octet-stream");
	add_header_cstr(r, "Outbox-Id", m->id_text);
	add_header_cstr(r, "Outbox-Topic", m->topic);
	add_header_cstr(r, "Outbox-Key", m->key);
	created_at = JsonEncodeDateTime(NULL, TimestampTzGetDatum(m->created_at),
									TIMESTAMPTZOID, NULL);
	add_header_cstr(r, "Outbox-Created-At", created_at);
	/* No "Expect: 100-continue" round trip before larger bodies. */
	{
		struct curl_slist *list = curl_slist_append(r->headers, "Expect:");

		if (list == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory")));
		r->headers = list;
	}

	if (signing)
	{
		char		timestamp[32];

		snprintf(timestamp, sizeof(timestamp), "%lld", (long long) time(NULL));
		add_header_cstr(r, "webhook-id", m->id_text);
		add_header_cstr(r, "webhook-timestamp", timestamp);
		add_header_cstr(r, "webhook-signature",
						webhook_signature(key, keylen, m->id_text, timestamp,
										  body, body_len));
	}

	url = request_url(r->easy, m->topic);
	SET_OPTION(r->easy, CURLOPT_URL, url);
	pfree(url);
	SET_OPTION(r->easy, CURLOPT_HTTPHEADER, r->headers);
	/* The body lives until the end of publish(): the payload, or palloc'd. */
	SET_OPTION(r->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) body_len);
	SET_OPTION(r->easy, CURLOPT_POSTFIELDS, body_len > 0 ? body : "");
	r->errbuf[0] = '\0';
	r->body_len = 0;
	return true;
}

/* Record the outcome of a finished request. */
static void
finish_request(HttpRequest *r, CURLcode code, OutboxPublishResult *result)
{
	StringInfoData error;
	long		status = 0;

	initStringInfo(&error);
	if (code == CURLE_OK)
	{
		curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
		if (status >= 200 && status < 300)
		{
			result->status = OUTBOX_PUBLISH_OK;
			pfree(error.data);
			return;
		}
		appendStringInfo(&error, "HTTP %ld", status);
		/* Standard Webhooks: 410 Gone means "stop sending". */
		if (status == 410)
			result->disable_destination = true;
		if (r->body_len > 0)
		{
			appendStringInfoString(&error, ": ");
			OutboxPublisherAppendPrintable(&error, r->body, r->body_len, true);
		}
		if (status == 429 || status == 503)
		{
			curl_off_t	seconds = 0;

			if (curl_easy_getinfo(r->easy, CURLINFO_RETRY_AFTER, &seconds) == CURLE_OK &&
				seconds > 0)
			{
				/* The worker caps it (see outbox_publisher.h). */
				int64		ms = Min((int64) seconds, (int64) 365 * SECS_PER_DAY) * 1000;

				result->retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);
			}
		}
	}
	else if (r->errbuf[0] != '\0')
		OutboxPublisherAppendPrintable(&error, r->errbuf, (int) strlen(r->errbuf), true);
	else
		appendStringInfoString(&error, curl_easy_strerror(code));

	result->status = OUTBOX_PUBLISH_RETRY;
	result->error = error.data;
}

/* Tell curl about a socket event or its timer; raise an ERROR on failure. */
static void
socket_action(curl_socket_t fd, int events)
{
	int			running;
	CURLMcode	rc = curl_multi_socket_action(multi, fd, events, &running);

	if (rc != CURLM_OK)
		elog(ERROR, "curl_multi_socket_action failed: %s", curl_multi_strerror(rc));
}

/*
 * Hand curl the socket events that poll() reported, and its timer when due,
 * with signals blocked, so that a thread curl starts (the name resolver)
 * keeps PostgreSQL's signal handlers off itself.
 */
static pg_noinline void
dispatch(struct pollfd *ready, int nready)
{
	sigset_t	saved;

	OutboxPublisherBlockSignals(&saved);
	PG_TRY();
	{
		int			i;

		for (i = 0; i < nready; i++)
		{
			int			events = 0;

			if (ready[i].revents & (POLLIN | POLLHUP))
				events |= CURL_CSELECT_IN;
			if (ready[i].revents & POLLOUT)
				events |= CURL_CSELECT_OUT;
			if (ready[i].revents & (POLLERR | POLLNVAL))
				events |= CURL_CSELECT_ERR;
			socket_action(ready[i].fd, events);
		}
		if (timer_due >= 0 && OutboxPublisherNowMs() >= timer_due)
			socket_action(CURL_SOCKET_TIMEOUT, 0);
	}
	PG_FINALLY();
	{
		pthread_sigmask(SIG_SETMASK, &saved, NULL);
	}
	PG_END_TRY();
}

/*
 * Send every message, up to nrequests at a time, and record the results.
 * curl tells which sockets to watch (on_socket) and when to call it back
 * (on_timer); the loop polls those sockets, at most WAIT_SLICE_MS at a
 * time, and hands curl what happened.  On an ERROR, requests may be left
 * in the multi handle: the caller releases them.
 */
static void
send_all(OutboxMessage *messages, int nmessages, OutboxPublishResult *results,
		 const char *key, int keylen)
{
	int			next = 0;
	int			active = 0;
	int64		last_check = OutboxPublisherNowMs();
	struct pollfd *ready = palloc(sizeof(struct pollfd) * Max(watched_size, 16));
	int			ready_size = Max(watched_size, 16);
	int			i;

	while (next < nmessages || active > 0)
	{
		CURLMsg    *done;
		int			queued;
		int			nready;
		int			nfds;
		int			wait_ms;
		int64		now;

		/* Fill the free slots. */
		for (i = 0; i < nrequests && next < nmessages; i++)
		{
			HttpRequest *r = &requests[i];
			CURLMcode	rc;

			if (r->message >= 0)
				continue;
			if (!prepare_request(r, &messages[next], &results[next], key, keylen))
			{
				next++;
				i--;			/* the slot is still free */
				continue;
			}
			rc = curl_multi_add_handle(multi, r->easy);
			if (rc != CURLM_OK)
				elog(ERROR, "could not start an HTTP request: %s",
					 curl_multi_strerror(rc));
			r->message = next++;
			active++;
		}
		if (active == 0)
			break;

		/* Wait for a socket, curl's timer, or at most WAIT_SLICE_MS. */
		now = OutboxPublisherNowMs();
		wait_ms = WAIT_SLICE_MS;
		if (timer_due >= 0)
			wait_ms = (int) Max(0, Min((int64) wait_ms, timer_due - now));
		nfds = poll(watched, nwatched, wait_ms);
		if (nfds < 0 && errno != EINTR)
			elog(ERROR, "poll() failed: %m");

		/* Copy the events first: curl changes the set as it goes. */
		if (ready_size < nwatched)
		{
			ready_size = nwatched;
			ready = repalloc(ready, sizeof(struct pollfd) * ready_size);
		}
		nready = 0;
		for (i = 0; nfds > 0 && i < nwatched; i++)
		{
			if (watched[i].revents != 0)
				ready[nready++] = watched[i];
		}

		dispatch(ready, nready);

		while ((done = curl_multi_info_read(multi, &queued)) != NULL)
		{
			HttpRequest *r;

			if (done->msg != CURLMSG_DONE)
				continue;
			curl_easy_getinfo(done->easy_handle, CURLINFO_PRIVATE, (char **) &r);
			finish_request(r, done->data.result, &results[r->message]);
			release_request(r);
			active--;
		}

		/*
		 * Latch, interrupts, postmaster death: never waits here.  Signals
		 * interrupt poll(), so this runs at once when one came, and at
		 * least every WAIT_SLICE_MS otherwise.
		 */
		now = OutboxPublisherNowMs();
		if (InterruptPending || nfds <= 0 || now - last_check >= WAIT_SLICE_MS)
		{
			(void) OutboxPublisherWait(PGINVALID_SOCKET, 0, 0);
			last_check = now;
		}
	}
	pfree(ready);
}

/*
 * Read the current destination's options (the settings, for the default
 * destination) into cfg.
 */
static void
read_config(void)
{
	MemoryContext old;

	if (cfg_context == NULL)
		cfg_context = AllocSetContextCreate(TopMemoryContext, "outbox http options",
											ALLOCSET_SMALL_SIZES);
	MemoryContextReset(cfg_context);
	old = MemoryContextSwitchTo(cfg_context);
	cfg.url = OutboxOptionString("url");
	cfg.timeout = (int) OutboxOptionInteger("timeout");
	cfg.max_concurrency = (int) OutboxOptionInteger("max_concurrency");
	cfg.signing_secret = OutboxOptionString("signing_secret");
	cfg.ca_file = OutboxOptionString("ca_file");
	cfg.headers = OutboxOptionObject("headers");
	cfg.format = OutboxOptionFormat(&cfg.source);
	MemoryContextSwitchTo(old);
}

/* Deliver a batch; see the file header. */
static void
http_publish(OutboxMessage *messages, int nmessages, OutboxPublishResult *results)
{
	char	   *key = NULL;
	int			len = 0;
	volatile int keylen = 0;
	int			i;

	read_config();
	if (cfg.url[0] == '\0')
	{
		OutboxPublisherReportProblem(&config_problem, "outbox.http_url is not set",
									 "Set outbox.http_url to the webhook URL and reload.");
		for (i = 0; i < nmessages; i++)
			results[i].status = OUTBOX_PUBLISH_SKIPPED;
		return;
	}
	OutboxPublisherClearProblem(&config_problem);

	if (multi == NULL)
		http_setup();
	/* Requests left over by a publish() that an ERROR interrupted. */
	for (i = 0; i < nrequests; i++)
		release_request(&requests[i]);

	if (cfg.signing_secret[0] != '\0')
		key = signing_key(&len);
	keylen = len;

	PG_TRY();
	{
		send_all(messages, nmessages, results, key, keylen);
	}
	PG_CATCH();
	{
		for (i = 0; i < nrequests; i++)
			release_request(&requests[i]);
		PG_RE_THROW();
	}
	PG_END_TRY();

	if (key)
	{
		explicit_bzero(key, keylen);
		pfree(key);
	}
}

/* Rebuild the transport when settings it was built with changed. */
static void
http_reload(void)
{
	read_config();
	if (multi == NULL)
		return;
	if (built_timeout != cfg.timeout ||
		built_concurrency != cfg.max_concurrency ||
		strcmp(built_ca_file, cfg.ca_file) != 0)
		http_teardown();
}

static void
http_shutdown(void)
{
	http_teardown();
	OutboxPublisherClearProblem(&config_problem);
}

/* Why a destination's url is not one, or NULL. */
static char *
url_problem(const char *value)
{
	if (pg_strncasecmp(value, "http://", 7) == 0 ||
		pg_strncasecmp(value, "https://", 8) == 0)
		return NULL;
	return pstrdup("The URL must start with http:// or https://.");
}

/* A destination's options; each but headers defaults to its setting. */
static const OutboxOption http_options[] = {
	{.name = "url", .type = OUTBOX_OPTION_STRING, .setting = "outbox.http_url",
	.required = true, .check = url_problem},
	{.name = "timeout", .type = OUTBOX_OPTION_INTEGER, .setting = "outbox.http_timeout",
	.unit = GUC_UNIT_MS, .min_value = 10, .max_value = 3600 * 1000},
	{.name = "max_concurrency", .type = OUTBOX_OPTION_INTEGER,
	.setting = "outbox.http_max_concurrency", .min_value = 1, .max_value = 1000},
	{.name = "signing_secret", .type = OUTBOX_OPTION_STRING,
	.setting = "outbox.http_signing_secret", .secret = true},
	{.name = "headers", .type = OUTBOX_OPTION_OBJECT, .secret = true,
	.check = headers_problem},
	{.name = "ca_file", .type = OUTBOX_OPTION_STRING, .setting = "outbox.http_ca_file"},
	OUTBOX_FORMAT_OPTIONS("outbox.http_format"),
};

static const OutboxPublisher http_publisher = {
	.api_version = OUTBOX_PUBLISHER_API_VERSION,
	.name = "http",
	.in_transaction = false,
	.check_topic = NULL,
	.init = read_config,
	.publish = http_publish,
	.reload = http_reload,
	.shutdown = http_shutdown,
	.options = http_options,
	.noptions = lengthof(http_options),
};

/* Define the http publisher's settings and register it. */
void
outbox_register_http_publisher(void)
{
	DefineCustomStringVariable("outbox.http_url",
							   "URL the http publisher posts messages to.",
							   "\"{topic}\" in it is replaced by the URL-escaped topic.",
							   &setting_url,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_http_url, NULL, NULL);

	DefineCustomIntVariable("outbox.http_timeout",
							"Longest time one HTTP request may take.",
							NULL,
							&setting_timeout,
							5000, 10, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("outbox.http_max_concurrency",
							"Most HTTP requests in flight at once.",
							NULL,
							&setting_max_concurrency,
							32, 1, 1000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	/*
	 * The secret: only superusers (and pg_read_all_settings) may read it, it
	 * is left out of SHOW ALL and pg_settings, and it has no check hook, so
	 * no rejected value can end up in the log.
	 */
	DefineCustomStringVariable("outbox.http_signing_secret",
							   "Secret the http publisher signs requests with; empty sends them unsigned.",
							   NULL,
							   &setting_signing_secret,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("outbox.http_ca_file",
							   "CA bundle to verify HTTPS servers with; empty means libcurl's default.",
							   NULL,
							   &setting_ca_file,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	OutboxDefineFormatSetting("outbox.http_format", "http");

	OutboxPublisherKeepSecret("outbox.http_signing_secret");

	OutboxRegisterPublisher(&http_publisher);
}
