/*
 * nats_js.c -- a small NATS JetStream client for the tests of the "nats"
 * publisher (test/t/120_nats.pl, 121_nats_cluster.pl) and bench/nats.sh.
 *
 *   nats_js URL wait-ready [SECONDS]
 *       wait until JetStream answers (in a cluster: has a meta leader)
 *   nats_js URL add-stream NAME SUBJECT REPLICAS [DUPLICATE-WINDOW-SECONDS]
 *       create a file-storage stream; retried for up to 30 s while
 *       JetStream is not ready (a cluster electing its meta leader)
 *   nats_js URL delete-stream NAME
 *   nats_js URL info NAME
 *       print the number of messages in the stream
 *   nats_js URL leader NAME
 *       print the server name of the stream's leader (clustered streams)
 *   nats_js URL dump NAME
 *       print each stored message as one JSON line:
 *       {"seq":N,"subject":"...","data":"...","headers":{"Name":"value",...}}
 *       a header with several values maps to an array of them; bytes
 *       outside printable ASCII are written as \u00XX, so that a JSON
 *       decoder gives back the exact bytes (as characters 0-255)
 *
 * URL may be a comma-separated list.  Exits 0 on success, 1 on failure with
 * a message on stderr.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

static natsConnection *nc = NULL;
static jsCtx *js = NULL;

/* Print an error with libnats's explanation and exit. */
static void
fail(const char *what, natsStatus s, jsErrCode code)
{
	const char *text = nats_GetLastError(NULL);

	fprintf(stderr, "nats_js: %s: %s", what, natsStatus_GetText(s));
	if (text != NULL && text[0] != '\0')
		fprintf(stderr, " (%s)", text);
	if (code != 0)
		fprintf(stderr, " [error code %d]", (int) code);
	fputc('\n', stderr);
	exit(1);
}

/* Seconds since some fixed point, for timeouts. */
static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Connect to the servers (retrying for up to 10 s) and make a JetStream context. */
static void
connect_to(const char *url)
{
	natsOptions *opts = NULL;
	natsStatus	s;
	double		deadline = now() + 10;

	char	   *list = strdup(url);
	const char *servers[16];
	int			nservers = 0;
	char	   *save = NULL;
	char	   *p;

	for (p = strtok_r(list, ",", &save); p && nservers < 16; p = strtok_r(NULL, ",", &save))
		servers[nservers++] = p;
	s = natsOptions_Create(&opts);
	if (s == NATS_OK)
		s = natsOptions_SetServers(opts, servers, nservers);
	if (s == NATS_OK)
		s = natsOptions_SetTimeout(opts, 2000);
	if (s != NATS_OK)
		fail("options", s, 0);
	while ((s = natsConnection_Connect(&nc, opts)) != NATS_OK)
	{
		if (now() > deadline)
			fail("connect", s, 0);
		usleep(100000);
	}
	natsOptions_Destroy(opts);
	free(list);
	s = natsConnection_JetStream(&js, nc, NULL);
	if (s != NATS_OK)
		fail("JetStream context", s, 0);
}

/* Write a string as JSON, with bytes outside printable ASCII as \u00XX. */
static void
put_json_string(const char *s, int len)
{
	int			i;

	putchar('"');
	for (i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

/* wait-ready: until the account info request gets an answer. */
static int
cmd_wait_ready(int seconds)
{
	double		deadline = now() + seconds;
	natsStatus	s;
	jsErrCode	code = 0;

	for (;;)
	{
		jsAccountInfo *ai = NULL;

		s = js_GetAccountInfo(&ai, js, NULL, &code);
		if (s == NATS_OK)
		{
			jsAccountInfo_Destroy(ai);
			return 0;
		}
		if (now() > deadline)
			fail("JetStream not ready", s, code);
		usleep(200000);
	}
}

/* add-stream: a file-storage stream, retried while JetStream gets ready. */
static int
cmd_add_stream(const char *name, const char *subject, int replicas, int dup_seconds)
{
	jsStreamConfig cfg;
	const char *subjects[1];
	double		deadline = now() + 30;

	jsStreamConfig_Init(&cfg);
	cfg.Name = name;
	subjects[0] = subject;
	cfg.Subjects = subjects;
	cfg.SubjectsLen = 1;
	cfg.Storage = js_FileStorage;
	cfg.Replicas = replicas;
	if (dup_seconds > 0)
		cfg.Duplicates = (int64_t) dup_seconds * 1000000000;

	for (;;)
	{
		jsStreamInfo *si = NULL;
		jsErrCode	code = 0;
		natsStatus	s = js_AddStream(&si, js, &cfg, NULL, &code);

		if (s == NATS_OK)
		{
			jsStreamInfo_Destroy(si);
			return 0;
		}
		if (now() > deadline)
			fail("add stream", s, code);
		usleep(250000);
	}
}

/* delete-stream */
static int
cmd_delete_stream(const char *name)
{
	jsErrCode	code = 0;
	natsStatus	s = js_DeleteStream(js, name, NULL, &code);

	if (s != NATS_OK)
		fail("delete stream", s, code);
	return 0;
}

/* The stream's information, or exit. */
static jsStreamInfo *
stream_info(const char *name)
{
	jsStreamInfo *si = NULL;
	jsErrCode	code = 0;
	natsStatus	s = js_GetStreamInfo(&si, js, name, NULL, &code);

	if (s != NATS_OK)
		fail("stream info", s, code);
	return si;
}

/* info: the message count. */
static int
cmd_info(const char *name)
{
	jsStreamInfo *si = stream_info(name);

	printf("%" PRIu64 "\n", si->State.Msgs);
	jsStreamInfo_Destroy(si);
	return 0;
}

/* leader: the server name of the stream's leader. */
static int
cmd_leader(const char *name)
{
	jsStreamInfo *si = stream_info(name);

	if (si->Cluster == NULL || si->Cluster->Leader == NULL)
	{
		fprintf(stderr, "nats_js: stream %s has no leader\n", name);
		return 1;
	}
	printf("%s\n", si->Cluster->Leader);
	jsStreamInfo_Destroy(si);
	return 0;
}

/* The bytes of base64 text (up to the closing quote); returns the length. */
static int
base64_decode(const char *in, unsigned char *out)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	unsigned int acc = 0;
	int			bits = 0;
	int			n = 0;

	for (; *in && *in != '"' && *in != '='; in++)
	{
		const char *p = strchr(alphabet, *in);

		if (p == NULL)
			continue;
		acc = (acc << 6) | (unsigned int) (p - alphabet);
		bits += 6;
		if (bits >= 8)
		{
			bits -= 8;
			out[n++] = (unsigned char) ((acc >> bits) & 0xff);
		}
	}
	return n;
}

/* The start of the string value of "field" in a JSON text, or NULL. */
static const char *
json_field(const char *json, const char *field)
{
	char		pattern[64];
	const char *p;

	snprintf(pattern, sizeof(pattern), "\"%s\":\"", field);
	p = strstr(json, pattern);
	return p ? p + strlen(pattern) : NULL;
}

/*
 * Print the headers of a raw header block ("NATS/1.0\r\nName: value\r\n...")
 * as a JSON object; a name given several times maps to an array.  Parsed
 * here rather than by libnats, which (3.4) drops every header of a
 * message when one of them has an empty value.
 */
static void
put_headers(const unsigned char *h, int len)
{
	const char *names[256];
	const char *values[256];
	int			namelens[256];
	int			valuelens[256];
	int			n = 0;
	int			pos = 0;
	int			i,
				j;
	bool		first = true;

	/* Skip the status line. */
	while (pos < len && h[pos] != '\n')
		pos++;
	pos++;
	while (pos < len && n < 256)
	{
		int			eol = pos;
		int			colon;

		while (eol < len && h[eol] != '\r' && h[eol] != '\n')
			eol++;
		if (eol == pos)
			break;				/* the blank line at the end */
		for (colon = pos; colon < eol && h[colon] != ':'; colon++)
			;
		if (colon < eol)
		{
			int			v = colon + 1;

			while (v < eol && h[v] == ' ')
				v++;
			names[n] = (const char *) h + pos;
			namelens[n] = colon - pos;
			values[n] = (const char *) h + v;
			valuelens[n] = eol - v;
			n++;
		}
		pos = eol;
		while (pos < len && (h[pos] == '\r' || h[pos] == '\n') && pos < eol + 2)
			pos++;
	}

	putchar('{');
	for (i = 0; i < n; i++)
	{
		int			count = 0;
		bool		seen = false;

		for (j = 0; j < i; j++)
			seen |= namelens[j] == namelens[i] && memcmp(names[j], names[i], namelens[i]) == 0;
		if (seen)
			continue;
		for (j = i; j < n; j++)
			count += namelens[j] == namelens[i] && memcmp(names[j], names[i], namelens[i]) == 0;
		if (!first)
			putchar(',');
		first = false;
		put_json_string(names[i], namelens[i]);
		putchar(':');
		if (count > 1)
			putchar('[');
		for (j = i, count = 0; j < n; j++)
		{
			if (namelens[j] == namelens[i] && memcmp(names[j], names[i], namelens[i]) == 0)
			{
				if (count++ > 0)
					putchar(',');
				put_json_string(values[j], valuelens[j]);
			}
		}
		if (count > 1)
			putchar(']');
	}
	putchar('}');
}

/*
 * dump: every stored message, one JSON line each, read with the stream's
 * message-get API (the raw answer, headers included as stored).
 */
static int
cmd_dump(const char *name)
{
	jsStreamInfo *si = stream_info(name);
	uint64_t	first = si->State.FirstSeq;
	uint64_t	last = si->State.LastSeq;
	uint64_t	seq;
	char		api[256];

	jsStreamInfo_Destroy(si);
	snprintf(api, sizeof(api), "$JS.API.STREAM.MSG.GET.%s", name);
	for (seq = first; seq <= last && last > 0; seq++)
	{
		natsMsg    *resp = NULL;
		char		req[64];
		char	   *json;
		const char *subject;
		const char *hdrs;
		const char *data;
		unsigned char *buf;
		int			n;
		natsStatus	s;

		snprintf(req, sizeof(req), "{\"seq\":%" PRIu64 "}", seq);
		s = natsConnection_RequestString(&resp, nc, api, req, 5000);
		if (s != NATS_OK)
			fail("get message", s, 0);
		n = natsMsg_GetDataLength(resp);
		json = malloc(n + 1);
		buf = malloc(n + 1);
		if (json == NULL || buf == NULL)
			fail("get message", NATS_NO_MEMORY, 0);
		memcpy(json, natsMsg_GetData(resp), n);
		json[n] = '\0';
		natsMsg_Destroy(resp);
		if (strstr(json, "\"error\"") != NULL)
		{
			if (strstr(json, "\"code\":404") != NULL)
			{
				free(json);
				free(buf);
				continue;		/* deleted */
			}
			fprintf(stderr, "nats_js: get message %" PRIu64 ": %s\n", seq, json);
			exit(1);
		}
		subject = json_field(json, "subject");
		hdrs = json_field(json, "hdrs");
		data = json_field(json, "data");

		printf("{\"seq\":%" PRIu64 ",\"subject\":", seq);
		put_json_string(subject ? subject : "", subject ? (int) (strchr(subject, '"') - subject) : 0);
		printf(",\"data\":");
		n = data ? base64_decode(data, buf) : 0;
		put_json_string((const char *) buf, n);
		printf(",\"headers\":");
		n = hdrs ? base64_decode(hdrs, buf) : 0;
		put_headers(buf, n);
		printf("}\n");
		free(json);
		free(buf);
	}
	return 0;
}

static void
usage(void)
{
	fprintf(stderr,
			"usage: nats_js URL wait-ready [SECONDS]\n"
			"       nats_js URL add-stream NAME SUBJECT REPLICAS [DUPLICATE-WINDOW-SECONDS]\n"
			"       nats_js URL delete-stream NAME\n"
			"       nats_js URL info NAME\n"
			"       nats_js URL leader NAME\n"
			"       nats_js URL dump NAME\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	const char *cmd;
	int			rc;

	if (argc < 3)
		usage();
	cmd = argv[2];
	if (strcmp(cmd, "wait-ready") != 0 && argc < 4)
		usage();
	if (strcmp(cmd, "add-stream") == 0 && argc < 6)
		usage();

	connect_to(argv[1]);
	if (strcmp(cmd, "wait-ready") == 0)
		rc = cmd_wait_ready(argc > 3 ? atoi(argv[3]) : 30);
	else if (strcmp(cmd, "add-stream") == 0)
		rc = cmd_add_stream(argv[3], argv[4], atoi(argv[5]), argc > 6 ? atoi(argv[6]) : 0);
	else if (strcmp(cmd, "delete-stream") == 0)
		rc = cmd_delete_stream(argv[3]);
	else if (strcmp(cmd, "info") == 0)
		rc = cmd_info(argv[3]);
	else if (strcmp(cmd, "leader") == 0)
		rc = cmd_leader(argv[3]);
	else if (strcmp(cmd, "dump") == 0)
		rc = cmd_dump(argv[3]);
	else
		usage();

	fflush(stdout);
	jsCtx_Destroy(js);
	natsConnection_Destroy(nc);
	nats_Close();
	return rc;
}
