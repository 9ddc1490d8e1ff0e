/*
 * amqp_tool.c -- a small AMQP 0-9-1 client (librabbitmq) for the tests of
 * the "amqp" publisher (test/t/130_amqp.pl, 131_amqp_faults.pl) and
 * bench/amqp.sh.
 *
 *   amqp_tool URL wait-ready [SECONDS]
 *       wait until the broker accepts a login
 *   amqp_tool URL declare-queue NAME [ARG=VALUE...]
 *       declare a durable queue; arguments such as x-max-length=1 (a
 *       number) or x-overflow=reject-publish (a string)
 *   amqp_tool URL bind QUEUE EXCHANGE ROUTING-KEY
 *   amqp_tool URL declare-exchange NAME TYPE
 *   amqp_tool URL delete-exchange NAME
 *   amqp_tool URL delete-queue NAME
 *   amqp_tool URL purge NAME
 *   amqp_tool URL count NAME
 *       print the number of ready messages in the queue
 *   amqp_tool URL dump NAME
 *       print every ready message of the queue as one JSON line, and leave
 *       them in the queue (they are received without acknowledging them and
 *       requeued when the connection closes):
 *       {"exchange":"...","routing_key":"...","redelivered":false,
 *        "message_id":"...","content_type":"...","delivery_mode":2,
 *        "timestamp":N,"headers":{"name":"value",...},"body":"..."}
 *       bytes outside printable ASCII are written as \u00XX, so that a JSON
 *       decoder gives back the exact bytes (as characters 0-255)
 *   amqp_tool URL publish EXCHANGE ROUTING-KEY COUNT WINDOW
 *       publish COUNT messages shaped as the bench's (a 100-byte JSON body,
 *       persistent, mandatory, message-id, timestamp, headers outbox-topic
 *       and outbox-key) with publisher confirms, up to WINDOW unconfirmed,
 *       and print "messages/s": what a bare librabbitmq client gets from
 *       the broker (bench/amqp.sh)
 *
 * URL is amqp://[user:password@]host:port[/vhost].  Exits 0 on success, 1
 * on failure with a message on stderr.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>

static amqp_connection_state_t conn;

/* Seconds since some fixed point, for timeouts. */
static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Describe a failed RPC. */
static const char *
reply_text(amqp_rpc_reply_t r)
{
	static char buf[600];

	switch (r.reply_type)
	{
		case AMQP_RESPONSE_NORMAL:
			return "ok";
		case AMQP_RESPONSE_NONE:
			return "no reply";
		case AMQP_RESPONSE_LIBRARY_EXCEPTION:
			return amqp_error_string2(r.library_error);
		case AMQP_RESPONSE_SERVER_EXCEPTION:
			if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
			{
				amqp_connection_close_t *m = r.reply.decoded;

				snprintf(buf, sizeof(buf), "%d %.*s", m->reply_code,
						 (int) m->reply_text.len, (char *) m->reply_text.bytes);
				return buf;
			}
			if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
			{
				amqp_channel_close_t *m = r.reply.decoded;

				snprintf(buf, sizeof(buf), "%d %.*s", m->reply_code,
						 (int) m->reply_text.len, (char *) m->reply_text.bytes);
				return buf;
			}
			return "unexpected method";
	}
	return "?";
}

/* Exit with a message when an RPC failed. */
static void
check(amqp_rpc_reply_t r, const char *what)
{
	if (r.reply_type == AMQP_RESPONSE_NORMAL)
		return;
	fprintf(stderr, "amqp_tool: %s: %s\n", what, reply_text(r));
	exit(1);
}

/* Connect and log in; returns an error text, or NULL. */
static const char *
try_connect(const char *url_text)
{
	static char err[600];
	char	   *url = strdup(url_text);
	struct amqp_connection_info info;
	amqp_socket_t *sock;
	struct timeval tv = {5, 0};
	amqp_rpc_reply_t r;
	int			rc;

	if (amqp_parse_url(url, &info) != AMQP_STATUS_OK)
	{
		fprintf(stderr, "amqp_tool: bad URL %s\n", url_text);
		exit(2);
	}
	conn = amqp_new_connection();
	sock = amqp_tcp_socket_new(conn);
	rc = amqp_socket_open_noblock(sock, info.host, info.port, &tv);
	if (rc != AMQP_STATUS_OK)
	{
		snprintf(err, sizeof(err), "connect: %s", amqp_error_string2(rc));
		amqp_destroy_connection(conn);
		free(url);
		return err;
	}
	amqp_set_rpc_timeout(conn, &tv);
	r = amqp_login(conn, info.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN,
				   info.user, info.password);
	free(url);
	if (r.reply_type != AMQP_RESPONSE_NORMAL)
	{
		snprintf(err, sizeof(err), "login: %s", reply_text(r));
		amqp_destroy_connection(conn);
		return err;
	}
	amqp_channel_open(conn, 1);
	r = amqp_get_rpc_reply(conn);
	if (r.reply_type != AMQP_RESPONSE_NORMAL)
	{
		snprintf(err, sizeof(err), "channel: %s", reply_text(r));
		amqp_destroy_connection(conn);
		return err;
	}
	return NULL;
}

/* Write bytes as the inside of a JSON string. */
static void
put_json_string(const void *data, size_t len)
{
	const unsigned char *s = data;
	size_t		i;

	putchar('"');
	for (i = 0; i < len; i++)
	{
		unsigned char c = s[i];

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c >= 0x20 && c < 0x7f)
			putchar(c);
		else
			printf("\\u%04x", c);
	}
	putchar('"');
}

/* The number of ready messages of a queue (passive declare). */
static uint32_t
queue_count(const char *name)
{
	amqp_queue_declare_ok_t *ok;

	ok = amqp_queue_declare(conn, 1, amqp_cstring_bytes(name), 1, 0, 0, 0, amqp_empty_table);
	check(amqp_get_rpc_reply(conn), "queue.declare (passive)");
	return ok->message_count;
}

/* Print the headers table as a JSON object (string values; others as null). */
static void
put_headers(const amqp_table_t *t)
{
	int			i;

	putchar('{');
	for (i = 0; i < t->num_entries; i++)
	{
		const amqp_table_entry_t *e = &t->entries[i];

		if (i > 0)
			putchar(',');
		put_json_string(e->key.bytes, e->key.len);
		putchar(':');
		if (e->value.kind == AMQP_FIELD_KIND_UTF8 || e->value.kind == AMQP_FIELD_KIND_BYTES)
			put_json_string(e->value.value.bytes.bytes, e->value.value.bytes.len);
		else
			printf("null");
	}
	putchar('}');
}

/* Print every ready message of a queue; they stay in it. */
static void
dump(const char *name)
{
	uint32_t	count = queue_count(name);
	uint32_t	got = 0;

	if (count == 0)
		return;
	amqp_basic_qos(conn, 1, 0, 0, 0);
	check(amqp_get_rpc_reply(conn), "basic.qos");
	amqp_basic_consume(conn, 1, amqp_cstring_bytes(name), amqp_empty_bytes, 0, 0, 0,
					   amqp_empty_table);
	check(amqp_get_rpc_reply(conn), "basic.consume");
	while (got < count)
	{
		amqp_envelope_t env;
		struct timeval tv = {10, 0};
		amqp_rpc_reply_t r;
		const amqp_basic_properties_t *p;

		amqp_maybe_release_buffers(conn);
		r = amqp_consume_message(conn, &env, &tv, 0);
		if (r.reply_type != AMQP_RESPONSE_NORMAL)
		{
			fprintf(stderr, "amqp_tool: consume after %u of %u messages: %s\n", got, count,
					reply_text(r));
			exit(1);
		}
		p = &env.message.properties;
		printf("{\"exchange\":");
		put_json_string(env.exchange.bytes, env.exchange.len);
		printf(",\"routing_key\":");
		put_json_string(env.routing_key.bytes, env.routing_key.len);
		printf(",\"redelivered\":%s", env.redelivered ? "true" : "false");
		printf(",\"message_id\":");
		if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
			put_json_string(p->message_id.bytes, p->message_id.len);
		else
			printf("null");
		printf(",\"content_type\":");
		if (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG)
			put_json_string(p->content_type.bytes, p->content_type.len);
		else
			printf("null");
		printf(",\"delivery_mode\":%d",
			   (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG) ? (int) p->delivery_mode : 0);
		printf(",\"timestamp\":%" PRIu64,
			   (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG) ? (uint64_t) p->timestamp : 0);
		printf(",\"headers\":");
		if (p->_flags & AMQP_BASIC_HEADERS_FLAG)
			put_headers(&p->headers);
		else
			printf("{}");
		printf(",\"body\":");
		put_json_string(env.message.body.bytes, env.message.body.len);
		printf("}\n");
		amqp_destroy_envelope(&env);
		got++;
	}
}

/* Publish count bench-shaped messages with confirms; print the rate. */
static void
publish(const char *exchange, const char *routing_key, long count, long window)
{
	const char *body = "{\"order_id\": 123456, \"customer\": \"c-0042\", \"amount\": 19.99, \"currency\": \"EUR\", \"items\": [1, 2, 3]}";
	amqp_basic_properties_t p;
	amqp_table_entry_t headers[2];
	long		sent = 0;
	long		confirmed = 0;
	double		start;
	char		id[40];

	amqp_confirm_select(conn, 1);
	check(amqp_get_rpc_reply(conn), "confirm.select");
	memset(&p, 0, sizeof(p));
	p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG |
		AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_HEADERS_FLAG;
	p.delivery_mode = 2;
	p.timestamp = (uint64_t) time(NULL);
	headers[0].key = amqp_cstring_bytes("outbox-topic");
	headers[0].value.kind = AMQP_FIELD_KIND_UTF8;
	headers[0].value.value.bytes = amqp_cstring_bytes("orders");
	headers[1].key = amqp_cstring_bytes("outbox-key");
	headers[1].value.kind = AMQP_FIELD_KIND_UTF8;
	p.headers.num_entries = 2;
	p.headers.entries = headers;
	start = now();
	while (confirmed < count)
	{
		amqp_frame_t f;
		struct timeval tv = {10, 0};
		int			rc;

		while (sent < count && sent - confirmed < window)
		{
			char		key[32];

			snprintf(id, sizeof(id), "0190a3d2-0000-7000-8000-%012ld", sent);
			snprintf(key, sizeof(key), "customer-%ld", sent % 1000);
			p.message_id = amqp_cstring_bytes(id);
			headers[1].value.value.bytes = amqp_cstring_bytes(key);
			rc = amqp_basic_publish(conn, 1, amqp_cstring_bytes(exchange),
									amqp_cstring_bytes(routing_key), 1, 0, &p,
									amqp_cstring_bytes(body));
			if (rc != AMQP_STATUS_OK)
			{
				fprintf(stderr, "amqp_tool: publish: %s\n", amqp_error_string2(rc));
				exit(1);
			}
			sent++;
		}
		rc = amqp_simple_wait_frame_noblock(conn, &f, &tv);
		if (rc != AMQP_STATUS_OK)
		{
			fprintf(stderr, "amqp_tool: waiting for confirms: %s\n", amqp_error_string2(rc));
			exit(1);
		}
		if (f.frame_type == AMQP_FRAME_METHOD && f.payload.method.id == AMQP_BASIC_ACK_METHOD)
		{
			amqp_basic_ack_t *ack = f.payload.method.decoded;

			confirmed = ack->multiple ? (long) ack->delivery_tag : confirmed + 1;
		}
		else if (f.frame_type == AMQP_FRAME_METHOD && f.payload.method.id != AMQP_BASIC_RETURN_METHOD)
		{
			fprintf(stderr, "amqp_tool: unexpected method 0x%08x\n", (unsigned) f.payload.method.id);
			exit(1);
		}
		amqp_maybe_release_buffers(conn);
	}
	printf("%.0f\n", count / (now() - start));
}

int
main(int argc, char **argv)
{
	const char *url;
	const char *cmd;
	const char *err;

	if (argc < 3)
	{
		fprintf(stderr, "usage: amqp_tool URL COMMAND [ARGS]\n");
		return 2;
	}
	url = argv[1];
	cmd = argv[2];

	if (strcmp(cmd, "wait-ready") == 0)
	{
		double		deadline = now() + (argc > 3 ? atof(argv[3]) : 30);

		while ((err = try_connect(url)) != NULL)
		{
			if (now() > deadline)
			{
				fprintf(stderr, "amqp_tool: the broker did not get ready: %s\n", err);
				return 1;
			}
			usleep(200 * 1000);
		}
		amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
		return 0;
	}

	if ((err = try_connect(url)) != NULL)
	{
		fprintf(stderr, "amqp_tool: %s\n", err);
		return 1;
	}

	if (strcmp(cmd, "declare-queue") == 0 && argc >= 4)
	{
		amqp_table_entry_t entries[16];
		amqp_table_t args = {0, entries};
		int			i;

		for (i = 4; i < argc && args.num_entries < 16; i++)
		{
			char	   *eq = strchr(argv[i], '=');
			char	   *end;
			long long	n;
			amqp_table_entry_t *e = &entries[args.num_entries++];

			if (eq == NULL)
			{
				fprintf(stderr, "amqp_tool: argument %s has no '='\n", argv[i]);
				return 2;
			}
			*eq = '\0';
			e->key = amqp_cstring_bytes(argv[i]);
			n = strtoll(eq + 1, &end, 10);
			if (*end == '\0' && end != eq + 1)
			{
				e->value.kind = AMQP_FIELD_KIND_I64;
				e->value.value.i64 = n;
			}
			else
			{
				e->value.kind = AMQP_FIELD_KIND_UTF8;
				e->value.value.bytes = amqp_cstring_bytes(eq + 1);
			}
		}
		amqp_queue_declare(conn, 1, amqp_cstring_bytes(argv[3]), 0, 1, 0, 0, args);
		check(amqp_get_rpc_reply(conn), "queue.declare");
	}
	else if (strcmp(cmd, "bind") == 0 && argc == 6)
	{
		amqp_queue_bind(conn, 1, amqp_cstring_bytes(argv[3]), amqp_cstring_bytes(argv[4]),
						amqp_cstring_bytes(argv[5]), amqp_empty_table);
		check(amqp_get_rpc_reply(conn), "queue.bind");
	}
	else if (strcmp(cmd, "declare-exchange") == 0 && argc == 5)
	{
		amqp_exchange_declare(conn, 1, amqp_cstring_bytes(argv[3]), amqp_cstring_bytes(argv[4]),
							  0, 1, 0, 0, amqp_empty_table);
		check(amqp_get_rpc_reply(conn), "exchange.declare");
	}
	else if (strcmp(cmd, "delete-exchange") == 0 && argc == 4)
	{
		amqp_exchange_delete(conn, 1, amqp_cstring_bytes(argv[3]), 0);
		check(amqp_get_rpc_reply(conn), "exchange.delete");
	}
	else if (strcmp(cmd, "delete-queue") == 0 && argc == 4)
	{
		amqp_queue_delete(conn, 1, amqp_cstring_bytes(argv[3]), 0, 0);
		check(amqp_get_rpc_reply(conn), "queue.delete");
	}
	else if (strcmp(cmd, "purge") == 0 && argc == 4)
	{
		amqp_queue_purge(conn, 1, amqp_cstring_bytes(argv[3]));
		check(amqp_get_rpc_reply(conn), "queue.purge");
	}
	else if (strcmp(cmd, "count") == 0 && argc == 4)
		printf("%u\n", queue_count(argv[3]));
	else if (strcmp(cmd, "dump") == 0 && argc == 4)
		dump(argv[3]);
	else if (strcmp(cmd, "publish") == 0 && argc == 7)
		publish(argv[3], argv[4], atol(argv[5]), atol(argv[6]));
	else
	{
		fprintf(stderr, "amqp_tool: unknown command or wrong arguments: %s\n", cmd);
		return 2;
	}
	fflush(stdout);
	amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(conn);
	return 0;
}
