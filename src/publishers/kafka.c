/*-------------------------------------------------------------------------
 *
 * kafka.c
 *		The "kafka" publisher (library outbox_kafka): one Kafka record per
 *		message, written by an idempotent librdkafka producer.
 *
 *	shared_preload_libraries = 'outbox, outbox_kafka'	# after outbox
 *	outbox.publisher = 'kafka'
 *	outbox.kafka_brokers = 'kafka1:9092,kafka2:9092'
 *	outbox.kafka_topic = '{topic}'			# "{topic}" = the message topic
 *	outbox.kafka_properties = ''			# name=value;... for librdkafka
 *
 * Each message becomes a record of the Kafka topic named by
 * outbox.kafka_topic; its key is the message key (none when the key is
 * empty), so Kafka's partitioner sends one key to one partition; its value
 * is the raw payload; its headers are the message's headers (string values
 * as they are, null as a null header, anything else as its JSON text) plus
 * outbox-id, outbox-topic and outbox-created-at (RFC 3339).  With the format
 * cloudevents-binary (outbox.kafka_format, or the destination's format) the
 * record is a CloudEvent of the Kafka binding: its attributes are ce_*
 * headers and content-type is the payload's; with cloudevents-structured
 * the value is the JSON event and content-type is
 * application/cloudevents+json (the message's own content-type header goes
 * into the event).
 *
 * The producer is idempotent (enable.idempotence, so acks=all and no
 * duplicates or reordering from its own retries), created at the first
 * batch and reused until a reload changes outbox.kafka_brokers or
 * outbox.kafka_properties, or it reports a fatal error.  A message is
 * marked processed only once its delivery report says the cluster wrote
 * it; a delivery error, including message.timeout.ms (30 s unless set in
 * outbox.kafka_properties) passing, is a failed attempt whose last_error is
 * librdkafka's text ("kafka: Broker: Not enough in-sync replicas").
 * publish() returns once every message of the batch has its report.
 *
 * The worker stays responsive while it waits: the producer's main queue
 * (delivery reports, errors and, through log.queue, librdkafka's logs)
 * signals a pipe when something arrives, and the loop waits on that pipe
 * through OutboxPublisherWait() for at most WAIT_SLICE_MS at a time.  All
 * librdkafka callbacks therefore run in the worker's own thread, inside
 * rd_kafka_poll(); they only record what happened (no palloc, no ereport),
 * and the loop acts on it afterwards.  librdkafka's threads are started
 * with PostgreSQL's signals blocked, so signal handlers only ever run in
 * the main thread.
 *
 * outbox.kafka_properties may hold secrets (SASL passwords, TLS keys): it
 * is superuser-only, never logged (check errors and the "parameter changed"
 * line leave its value out), and its values are cut from librdkafka's
 * messages before they reach the server log.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <signal.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "postmaster/interrupt.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
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

/* A reload arriving while a batch waits this long drops its queued records. */
#define RELOAD_GIVE_UP_MS	1000

/* Longest wait for outstanding records when the producer is closed. */
#define CLOSE_FLUSH_MS		500

/* Longest text put into last_error or the log. */
#define ERROR_TEXT_MAX		500

/* librdkafka log lines kept between two polls; more are counted, dropped. */
#define MAX_LOG_LINES		64

/* Kafka's limit on topic names. */
#define KAFKA_TOPIC_MAX		249

/* Descriptors reserved for librdkafka's sockets, as far as possible. */
#define EXTRA_FDS			8

/* Settings (reload). */
static char *setting_brokers = NULL;
static char *setting_topic = NULL;
static char *setting_properties = NULL;

/* The current destination's options (the settings, by default). */
static char *kafka_brokers = "";
static char *kafka_topic = "{topic}";
static char *kafka_properties = "";
static OutboxFormat kafka_format = OUTBOX_FORMAT_RAW;
static char *kafka_source = NULL;	/* CloudEvents source, unless raw */
static MemoryContext config_context = NULL;

/* One name=value of outbox.kafka_properties. */
typedef struct KafkaProperty
{
	char	   *name;
	char	   *value;
} KafkaProperty;

/* Properties the publisher sets itself: refused in outbox.kafka_properties. */
static const char *const reserved_properties[] = {
	"bootstrap.servers", "metadata.broker.list", "enable.idempotence",
	"log.queue", "delivery.report.only.error", NULL
};

/* Headers the publisher adds to every record. */
static const char *const outbox_headers[] = {
	"outbox-id", "outbox-topic", "outbox-created-at", NULL
};

/* Where one message of the current batch stands. */
typedef enum DeliveryState
{
	DELIVERY_NONE,				/* not handed to librdkafka */
	DELIVERY_SENT,				/* produced, waiting for its report */
	DELIVERY_DONE				/* report received */
} DeliveryState;

typedef struct Delivery
{
	DeliveryState state;
	rd_kafka_resp_err_t err;
} Delivery;

/*
 * The producer and what it was built with.  Strings are in
 * TopMemoryContext; the secrets are the values to cut from log text.
 */
static rd_kafka_t *producer = NULL;
static rd_kafka_queue_t *main_queue = NULL;
static int	wake_pipe[2] = {-1, -1};
static int	fds_reserved = 0;
static char *built_brokers = NULL;
static char *built_properties = NULL;
static char **secrets = NULL;
static int	nsecrets = 0;

/*
 * Delivery reports of the current batch.  Each record carries the sequence
 * number batch_base + i as its opaque; a report whose number is not in the
 * current batch (left over from a batch an ERROR interrupted) is ignored,
 * so no report ever points into freed memory.  malloc'd, grown as needed.
 */
static Delivery *deliveries = NULL;
static int	deliveries_size = 0;
static uint64 next_seq = 1;
static uint64 batch_base = 0;
static int	batch_size = 0;
static int	batch_reported = 0;

/* The last error librdkafka reported (its error callback), for last_error. */
static char last_error_text[ERROR_TEXT_MAX];
static bool fatal_error = false;

/* librdkafka log lines waiting to be written (malloc'd). */
typedef struct LogLine
{
	int			level;
	char	   *text;
} LogLine;
static LogLine log_lines[MAX_LOG_LINES];
static int	nlog_lines = 0;
static int	log_lines_dropped = 0;

/* The last configuration problem logged, to log each one once. */
static OutboxProblem config_problem =
	OUTBOX_PROBLEM_INIT("kafka", ERRCODE_INVALID_PARAMETER_VALUE);

static void kafka_teardown(void);

/* Whether c may appear in a property name (librdkafka's names). */
static bool
is_name_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		(c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

/*
 * Parse outbox.kafka_properties: "name=value;name=value", blanks around
 * names and values ignored, empty entries allowed, "\;" and "\\" standing
 * for ";" and "\" in values.  Returns the number of properties (palloc'd
 * array in *props), or -1 with a reason in *problem that never quotes a
 * value (it may be a secret).
 */
static int
parse_properties(const char *text, KafkaProperty **props, char **problem)
{
	KafkaProperty *result = NULL;
	int			n = 0;
	int			size = 0;
	int			entry = 0;
	const char *p = text;

	*props = NULL;
	*problem = NULL;
	while (*p)
	{
		StringInfoData name;
		StringInfoData value;
		int			end;
		const char *r;

		entry++;
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == ';')
		{
			p++;
			continue;
		}
		if (*p == '\0')
			break;

		initStringInfo(&name);
		while (*p && *p != '=' && *p != ';')
			appendStringInfoChar(&name, *p++);
		if (*p != '=')
		{
			*problem = psprintf("Entry %d has no \"=\"; the syntax is name=value;name=value.", entry);
			return -1;
		}
		p++;
		while (name.len > 0 && (name.data[name.len - 1] == ' ' || name.data[name.len - 1] == '\t'))
			name.data[--name.len] = '\0';
		if (name.len == 0)
		{
			*problem = psprintf("Entry %d has an empty property name.", entry);
			return -1;
		}
		for (r = name.data; *r; r++)
		{
			if (!is_name_char((unsigned char) *r))
			{
				*problem = psprintf("The property name of entry %d has an invalid character at position %d; names contain only letters, digits, \".\", \"_\" and \"-\".",
									entry, (int) (r - name.data) + 1);
				return -1;
			}
		}
		for (r = name.data; *r; r++)
			name.data[r - name.data] = (char) pg_ascii_tolower((unsigned char) *r);

		initStringInfo(&value);
		while (*p == ' ' || *p == '\t')
			p++;
		while (*p && *p != ';')
		{
			if (*p == '\\' && (p[1] == ';' || p[1] == '\\'))
				p++;
			appendStringInfoChar(&value, *p++);
		}
		if (*p == ';')
			p++;
		end = value.len;
		while (end > 0 && (value.data[end - 1] == ' ' || value.data[end - 1] == '\t'))
			end--;
		value.data[end] = '\0';
		value.len = end;

		if (n == size)
		{
			size = Max(8, size * 2);
			result = result ? repalloc(result, sizeof(KafkaProperty) * size) :
				palloc(sizeof(KafkaProperty) * size);
		}
		result[n].name = name.data;
		result[n].value = value.data;
		n++;
	}
	*props = result;
	return n;
}

/* Free what parse_properties() returned. */
static void
free_properties(KafkaProperty *props, int n)
{
	int			i;

	for (i = 0; i < n; i++)
	{
		explicit_bzero(props[i].value, strlen(props[i].value));
		pfree(props[i].name);
		pfree(props[i].value);
	}
	if (props)
		pfree(props);
}

/*
 * Check outbox.kafka_properties: the syntax, and no property the publisher
 * sets itself.  The error message is set here too, since PostgreSQL's
 * default one would quote the value.  Names and values are checked by
 * librdkafka when the producer is built.
 */
static char *
properties_problem(const char *value)
{
	KafkaProperty *props;
	char	   *problem;
	int			n = parse_properties(value, &props, &problem);

	if (n >= 0)
	{
		int			i;

		for (i = 0; i < n && problem == NULL; i++)
		{
			const char *const *r;

			for (r = reserved_properties; *r && problem == NULL; r++)
			{
				if (strcmp(props[i].name, *r) == 0)
					problem = psprintf("\"%s\" is set by the kafka publisher itself%s.", *r,
									   (strcmp(*r, "bootstrap.servers") == 0 ||
										strcmp(*r, "metadata.broker.list") == 0) ?
									   "; use outbox.kafka_brokers" : "");
			}
		}
		free_properties(props, n);
	}
	return problem;
}

/* The check hook of outbox.kafka_properties, over properties_problem(). */
static bool
check_kafka_properties(char **newval, void **extra, GucSource source)
{
	char	   *problem = properties_problem(*newval);

	if (problem == NULL)
		return true;
	GUC_check_errmsg("invalid value for parameter \"outbox.kafka_properties\"");
	GUC_check_errdetail("%s", problem);
	return false;
}

/* Why a topic template is not one, or NULL: what surrounds "{topic}" must be legal. */
static char *
topic_template_problem(const char *value)
{
	const char *p;

	if (*value == '\0')
		return pstrdup("The template must not be empty; \"{topic}\" stands for the message topic.");
	for (p = value; *p; p++)
	{
		if (strncmp(p, "{topic}", 7) == 0)
		{
			p += 6;
			continue;
		}
		if (!is_name_char((unsigned char) *p))
			return pstrdup("Kafka topic names contain only ASCII letters, digits, \".\", \"_\" and \"-\"; \"{topic}\" stands for the message topic.");
	}
	return NULL;
}

/* Check outbox.kafka_topic, over topic_template_problem(). */
static bool
check_kafka_topic(char **newval, void **extra, GucSource source)
{
	char	   *problem = topic_template_problem(*newval);

	if (problem == NULL)
		return true;
	GUC_check_errdetail("%s", problem);
	return false;
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
		config_context = AllocSetContextCreate(TopMemoryContext, "outbox kafka options",
											   ALLOCSET_SMALL_SIZES);
	MemoryContextReset(config_context);
	old = MemoryContextSwitchTo(config_context);
	kafka_brokers = OutboxOptionString("brokers");
	kafka_topic = OutboxOptionString("topic");
	kafka_properties = OutboxOptionString("properties");
	kafka_format = OutboxOptionFormat(&kafka_source);
	MemoryContextSwitchTo(old);
}

/*
 * Text for last_error or the log: at most ERROR_TEXT_MAX bytes, line
 * breaks and other control characters as spaces, every secret value of
 * outbox.kafka_properties replaced by "***".
 */
static char *
clean_text(const char *text)
{
	StringInfoData buf;
	const char *p = text;

	initStringInfo(&buf);
	while (*p && buf.len < ERROR_TEXT_MAX)
	{
		int			i;
		bool		cut = false;

		for (i = 0; i < nsecrets; i++)
		{
			size_t		len = strlen(secrets[i]);

			if (strncmp(p, secrets[i], len) == 0)
			{
				appendStringInfoString(&buf, "***");
				p += len;
				cut = true;
				break;
			}
		}
		if (cut)
			continue;
		if ((unsigned char) *p < 0x20 || *p == 0x7f)
			appendStringInfoChar(&buf, ' ');
		else
			appendStringInfoChar(&buf, *p);
		p++;
	}
	return buf.data;
}

/*
 * Whether a property's value counts as a secret to cut from log text:
 * anything that looks like a credential, and every value long enough not
 * to be a plain number or word.
 */
static bool
is_secret(const KafkaProperty *prop)
{
	static const char *const words[] = {
		"password", "secret", "key", "token", "jaas", "pem", "sasl", "config", NULL
	};
	const char *const *w;

	if (prop->value[0] == '\0')
		return false;
	for (w = words; *w; w++)
	{
		if (strstr(prop->name, *w) != NULL)
			return true;
	}
	return strlen(prop->value) >= 6;
}

/*
 * Delivery report callback, run inside rd_kafka_poll() in this thread:
 * record the outcome in the message's slot, nothing else.
 */
static void
on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	uint64		seq = (uint64) (uintptr_t) msg->_private;
	Delivery   *d;

	if (seq < batch_base || seq >= batch_base + (uint64) batch_size)
		return;					/* from a batch an ERROR interrupted */
	d = &deliveries[seq - batch_base];
	if (d->state != DELIVERY_SENT)
		return;
	d->state = DELIVERY_DONE;
	d->err = msg->err;
	batch_reported++;
}

/* Error callback (inside rd_kafka_poll()): remember the text for last_error. */
static void
on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	strlcpy(last_error_text, reason, sizeof(last_error_text));
	if (err == RD_KAFKA_RESP_ERR__FATAL)
		fatal_error = true;
}

/* Log callback (inside rd_kafka_poll(), through log.queue): keep the line. */
static void
on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	size_t		len;
	char	   *text;

	if (nlog_lines >= MAX_LOG_LINES)
	{
		log_lines_dropped++;
		return;
	}
	len = strlen(fac) + strlen(buf) + 3;
	text = malloc(len);
	if (text == NULL)
	{
		log_lines_dropped++;
		return;
	}
	snprintf(text, len, "%s: %s", fac, buf);
	log_lines[nlog_lines].level = level;
	log_lines[nlog_lines].text = text;
	nlog_lines++;
}

/*
 * Write the kept librdkafka log lines to the server log: errors and
 * warnings at LOG, notices and information at DEBUG1, debugging at DEBUG2;
 * secret values cut.
 */
static void
write_log_lines(void)
{
	int			n = nlog_lines;
	int			dropped = log_lines_dropped;
	int			i;

	nlog_lines = 0;
	log_lines_dropped = 0;
	for (i = 0; i < n; i++)
	{
		int			elevel = log_lines[i].level <= LOG_WARNING ? LOG :
			log_lines[i].level <= LOG_INFO ? DEBUG1 : DEBUG2;

		if (message_level_is_interesting(elevel))
		{
			char	   *text = clean_text(log_lines[i].text);

			ereport(elevel,
					(errmsg_internal("outbox kafka publisher: librdkafka: %s", text)));
			pfree(text);
		}
		free(log_lines[i].text);
	}
	if (dropped > 0)
		ereport(LOG,
				(errmsg_internal("outbox kafka publisher: %d librdkafka log lines dropped", dropped)));
}

/* Serve the producer's main queue, then act on what the callbacks kept. */
static void
serve(void)
{
	char		drain[64];

	/* Empty the pipe first: whatever comes after signals it again. */
	while (read(wake_pipe[0], drain, sizeof(drain)) > 0)
		;
	rd_kafka_poll(producer, 0);
	write_log_lines();
}

/* Set a property the publisher itself chooses; failing is a bug. */
static void
set_own_property(rd_kafka_conf_t *conf, const char *name, const char *value)
{
	char		errstr[512];

	if (rd_kafka_conf_set(conf, name, value, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
	{
		rd_kafka_conf_destroy(conf);
		elog(ERROR, "could not set librdkafka property \"%s\": %s", name, errstr);
	}
}

/*
 * Build the producer for the current settings.  Returns NULL, or a
 * configuration problem (palloc'd, with no property value in it) when the
 * producer cannot be built; other failures raise an ERROR.
 */
static char *
kafka_setup(void)
{
	rd_kafka_conf_t *conf;
	KafkaProperty *props;
	char	   *problem;
	char		errstr[512];
	int			n;
	int			i;
	sigset_t	saved;
	rd_kafka_t *rk;

	/* What a failed attempt may have left. */
	kafka_teardown();

	n = parse_properties(kafka_properties, &props, &problem);
	if (n < 0)
		return psprintf("outbox.kafka_properties is invalid: %s", problem);

	/* The values to keep out of the log, from now on. */
	secrets = MemoryContextAllocZero(TopMemoryContext, sizeof(char *) * Max(n, 1));
	nsecrets = 0;
	for (i = 0; i < n; i++)
	{
		if (is_secret(&props[i]))
			secrets[nsecrets++] = MemoryContextStrdup(TopMemoryContext, props[i].value);
	}

	conf = rd_kafka_conf_new();
	/* Defaults that outbox.kafka_properties may change. */
	set_own_property(conf, "client.id", "outbox");
	set_own_property(conf, "acks", "all");
	set_own_property(conf, "message.timeout.ms", "30000");

	/*
	 * A batch is produced all at once and then waited for, so lingering
	 * only adds latency; and small requests must not wait for Nagle's
	 * algorithm (as the Java client, which sets TCP_NODELAY).
	 */
	set_own_property(conf, "linger.ms", "0");
	set_own_property(conf, "socket.nagle.disable", "true");
	set_own_property(conf, "bootstrap.servers", kafka_brokers);
	for (i = 0; i < n; i++)
	{
		rd_kafka_conf_res_t res = rd_kafka_conf_set(conf, props[i].name, props[i].value,
													errstr, sizeof(errstr));

		explicit_bzero(errstr, sizeof(errstr));
		if (res == RD_KAFKA_CONF_UNKNOWN)
			problem = psprintf("outbox.kafka_properties: unknown librdkafka property \"%s\"",
							   props[i].name);
		else if (res != RD_KAFKA_CONF_OK)
			problem = psprintf("outbox.kafka_properties: invalid value for librdkafka property \"%s\" (the value is not shown)",
							   props[i].name);
		if (problem)
		{
			rd_kafka_conf_destroy(conf);
			free_properties(props, n);
			return problem;
		}
	}
	free_properties(props, n);
	/* What the publisher relies on. */
	set_own_property(conf, "enable.idempotence", "true");
	set_own_property(conf, "delivery.report.only.error", "false");
	set_own_property(conf, "log.queue", "true");
	rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
	rd_kafka_conf_set_error_cb(conf, on_error);
	rd_kafka_conf_set_log_cb(conf, on_log);

	/* The pipe the main queue signals: reserved with fd.c first. */
	ReserveExternalFD();
	ReserveExternalFD();
	fds_reserved = 2;
	while (fds_reserved < 2 + EXTRA_FDS && AcquireExternalFD())
		fds_reserved++;
	if (pipe(wake_pipe) != 0 ||
		fcntl(wake_pipe[0], F_SETFL, O_NONBLOCK) != 0 ||
		fcntl(wake_pipe[1], F_SETFL, O_NONBLOCK) != 0 ||
		fcntl(wake_pipe[0], F_SETFD, FD_CLOEXEC) != 0 ||
		fcntl(wake_pipe[1], F_SETFD, FD_CLOEXEC) != 0)
	{
		int			save_errno = errno;

		rd_kafka_conf_destroy(conf);
		kafka_teardown();
		errno = save_errno;
		elog(ERROR, "could not create a pipe: %m");
	}

	OutboxPublisherBlockSignals(&saved);
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	pthread_sigmask(SIG_SETMASK, &saved, NULL);
	if (rk == NULL)
	{
		rd_kafka_conf_destroy(conf);
		problem = clean_text(errstr);	/* before the secrets are forgotten */
		explicit_bzero(errstr, sizeof(errstr));
		kafka_teardown();
		return psprintf("could not create the Kafka producer: %s", problem);
	}
	producer = rk;
	last_error_text[0] = '\0';
	fatal_error = false;
	if (rd_kafka_set_log_queue(producer, NULL) != RD_KAFKA_RESP_ERR_NO_ERROR)
		elog(LOG, "outbox kafka publisher: could not route librdkafka's log");
	main_queue = rd_kafka_queue_get_main(producer);
	rd_kafka_queue_io_event_enable(main_queue, wake_pipe[1], "1", 1);

	built_brokers = MemoryContextStrdup(TopMemoryContext, kafka_brokers);
	built_properties = MemoryContextStrdup(TopMemoryContext, kafka_properties);
	return NULL;
}

/*
 * Close the producer: wait a little for records still in flight, drop the
 * rest, and release everything.
 */
static void
kafka_teardown(void)
{
	int			i;

	if (producer)
	{
		rd_kafka_flush(producer, CLOSE_FLUSH_MS);
		rd_kafka_purge(producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
		rd_kafka_poll(producer, 0);
		rd_kafka_queue_io_event_enable(main_queue, -1, NULL, 0);
		rd_kafka_queue_destroy(main_queue);
		rd_kafka_destroy(producer);
		producer = NULL;
		main_queue = NULL;
		write_log_lines();
	}
	for (i = 0; i < 2; i++)
	{
		if (wake_pipe[i] >= 0)
			close(wake_pipe[i]);
		wake_pipe[i] = -1;
	}
	while (fds_reserved > 0)
	{
		ReleaseExternalFD();
		fds_reserved--;
	}
	for (i = 0; i < nsecrets; i++)
	{
		explicit_bzero(secrets[i], strlen(secrets[i]));
		pfree(secrets[i]);
	}
	if (secrets)
		pfree(secrets);
	secrets = NULL;
	nsecrets = 0;
	if (built_brokers)
		pfree(built_brokers);
	built_brokers = NULL;
	if (built_properties)
	{
		explicit_bzero(built_properties, strlen(built_properties));
		pfree(built_properties);
	}
	built_properties = NULL;
}

/*
 * The Kafka topic of a message: template (the destination's topic option)
 * with every "{topic}" replaced.  Returns NULL with a reason in *problem
 * when the result is not a legal Kafka topic name.
 */
static char *
kafka_topic_for(const char *template, const char *topic, char **problem)
{
	StringInfoData buf;
	const char *p = template;
	const char *hit;
	int			i;

	*problem = NULL;
	initStringInfo(&buf);
	while ((hit = strstr(p, "{topic}")) != NULL)
	{
		appendBinaryStringInfo(&buf, p, (int) (hit - p));
		appendStringInfoString(&buf, topic);
		p = hit + 7;
	}
	appendStringInfoString(&buf, p);

	for (i = 0; i < buf.len; i++)
	{
		if (!is_name_char((unsigned char) buf.data[i]))
			break;
	}
	if (i < buf.len)
	{
		char	   *shown = clean_text(buf.data);

		*problem = psprintf("\"%.100s\" is not a legal Kafka topic name: it may contain only ASCII letters, digits, \".\", \"_\" and \"-\"",
							shown);
	}
	else if (buf.len == 0 || buf.len > KAFKA_TOPIC_MAX)
		*problem = psprintf("a Kafka topic name must have 1 to %d characters, not %d",
							KAFKA_TOPIC_MAX, buf.len);
	else if (strcmp(buf.data, ".") == 0 || strcmp(buf.data, "..") == 0)
		*problem = psprintf("\"%s\" is not a legal Kafka topic name", buf.data);
	if (*problem)
	{
		pfree(buf.data);
		return NULL;
	}
	return buf.data;
}

/*
 * check_topic: refuse at save time a topic that maps to no legal name with
 * outbox.kafka_topic (the saving backend has no destination).
 */
static char *
kafka_check_topic(const char *topic)
{
	char	   *problem;
	char	   *name = kafka_topic_for(setting_topic, topic, &problem);

	if (name)
	{
		pfree(name);
		return NULL;
	}
	return psprintf("The kafka publisher cannot send it: %s.", problem);
}

/*
 * The record headers of a message, or NULL with the message rejected when
 * one of its headers collides with those the publisher adds.
 */
static rd_kafka_headers_t *
record_headers(const OutboxMessage *m, OutboxPublishResult *result)
{
	rd_kafka_headers_t *hdrs = rd_kafka_headers_new(8);
	OutboxHeaderIterator it;
	OutboxHeader h;
	char	   *created_at;
	bool		has_content_type = false;

	OutboxHeadersBegin(&it, m->headers);
	while (OutboxHeadersNext(&it, &h))
	{
		const char *const *own;

		if (kafka_format == OUTBOX_FORMAT_CLOUDEVENTS_BINARY &&
			OutboxCloudEventHeaderIsReserved(&h, "ce_"))
		{
			rd_kafka_headers_destroy(hdrs);
			result->status = OUTBOX_PUBLISH_REJECT;
			result->error = psprintf("message header \"%.*s\" cannot be sent: with format cloudevents-binary the kafka publisher sets it itself",
									 h.name_len, h.name);
			return NULL;
		}

		for (own = outbox_headers; *own; own++)
		{
			if (OutboxHeaderNameIs(&h, *own))
			{
				rd_kafka_headers_destroy(hdrs);
				result->status = OUTBOX_PUBLISH_REJECT;
				result->error = psprintf("message header \"%s\" cannot be sent: the kafka publisher sets it itself",
										 *own);
				return NULL;
			}
		}
		if (h.value == NULL)
		{
			rd_kafka_headers_destroy(hdrs);
			result->status = OUTBOX_PUBLISH_REJECT;
			result->error = psprintf("message header \"%.*s\" is not a string",
									 h.name_len, h.name);
			return NULL;
		}
		if (OutboxHeaderNameIs(&h, "content-type"))
		{
			has_content_type = true;
			/* Structured: it is the event's datacontenttype. */
			if (kafka_format == OUTBOX_FORMAT_CLOUDEVENTS_STRUCTURED)
				continue;
		}
		rd_kafka_header_add(hdrs, h.name, h.name_len, h.value, h.value_len);
	}

	if (kafka_format == OUTBOX_FORMAT_CLOUDEVENTS_STRUCTURED)
		rd_kafka_header_add(hdrs, "content-type", -1, OUTBOX_CLOUDEVENTS_JSON, -1);
	else if (kafka_format == OUTBOX_FORMAT_CLOUDEVENTS_BINARY)
	{
		OutboxCloudEventAttribute attributes[OUTBOX_CLOUDEVENT_MAX_ATTRIBUTES];
		int			n = OutboxCloudEventAttributes(m, kafka_source, "ce_", false, attributes);
		int			i;

		for (i = 0; i < n; i++)
			rd_kafka_header_add(hdrs, attributes[i].name, -1, attributes[i].value, -1);
		if (!has_content_type)
			rd_kafka_header_add(hdrs, "content-type", -1, OutboxPayloadContentType(m), -1);
	}
	rd_kafka_header_add(hdrs, "outbox-id", -1, m->id_text, -1);
	rd_kafka_header_add(hdrs, "outbox-topic", -1, m->topic, -1);
	created_at = JsonEncodeDateTime(NULL, TimestampTzGetDatum(m->created_at),
									TIMESTAMPTZOID, NULL);
	rd_kafka_header_add(hdrs, "outbox-created-at", -1, created_at, -1);
	pfree(created_at);
	return hdrs;
}

/* A failed attempt with "kafka: <error text>" as last_error. */
static void
set_retry(OutboxPublishResult *result, rd_kafka_resp_err_t err)
{
	char	   *text;

	if (err == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT && last_error_text[0] != '\0')
	{
		char	   *detail = clean_text(last_error_text);

		text = psprintf("kafka: %s (last error: %s)", rd_kafka_err2str(err), detail);
		pfree(detail);
	}
	else
		text = psprintf("kafka: %s", rd_kafka_err2str(err));
	result->status = OUTBOX_PUBLISH_RETRY;
	result->error = clean_text(text);
	pfree(text);
}

/*
 * Hand one message to librdkafka; on a full queue, serve delivery reports
 * and try again.  Returns the error, if any.
 */
static rd_kafka_resp_err_t
produce(const OutboxMessage *m, const char *topic, rd_kafka_headers_t *hdrs, uint64 seq)
{
	bool		keyed = m->key[0] != '\0';
	void	   *key = keyed ? (void *) m->key : NULL;
	size_t		keylen = keyed ? strlen(m->key) : 0;
	void	   *value = m->payload_len > 0 ? (void *) m->payload : (void *) "";
	size_t		valuelen = (size_t) m->payload_len;
	char	   *event = NULL;
	rd_kafka_resp_err_t err;

	/* Structured: the value is the event (librdkafka copies it). */
	if (kafka_format == OUTBOX_FORMAT_CLOUDEVENTS_STRUCTURED)
	{
		int			len;

		event = OutboxCloudEventJson(m, kafka_source, &len);
		value = event;
		valuelen = (size_t) len;
	}

	for (;;)
	{
		err = rd_kafka_producev(producer,
								RD_KAFKA_V_TOPIC(topic),
								RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
								RD_KAFKA_V_KEY(key, keylen),
								RD_KAFKA_V_VALUE(value, valuelen),
								RD_KAFKA_V_HEADERS(hdrs),
								RD_KAFKA_V_OPAQUE((void *) (uintptr_t) seq),
								RD_KAFKA_V_END);
		if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
			break;
		serve();
		(void) OutboxPublisherWait(wake_pipe[0], WL_SOCKET_READABLE, 10);
	}
	if (event)
		pfree(event);
	return err;
}

/*
 * Whether outbox.kafka_brokers or outbox.kafka_properties differ from what
 * the producer was built with.  A reload reads the configuration files even
 * while a batch waits (OutboxPublisherWait), so this can turn true there.
 */
static bool
settings_changed(void)
{
	return built_brokers != NULL &&
		(strcmp(built_brokers, OutboxOptionString("brokers")) != 0 ||
		 strcmp(built_properties, OutboxOptionString("properties")) != 0);
}

/*
 * Wait for the delivery report of every record produced, serving the main
 * queue whenever the pipe says something arrived and calling
 * OutboxPublisherWait() at least every WAIT_SLICE_MS.  A reload that
 * changed the brokers or properties while the batch waits longer than
 * RELOAD_GIVE_UP_MS (a cluster that does not answer) closes the producer, so that the new settings apply soon:
 * records still unsent are dropped and their messages reported as not
 * attempted.
 */
static void
wait_for_reports(int produced)
{
	int64		start = OutboxPublisherNowMs();

	for (;;)
	{
		serve();
		if (batch_reported >= produced)
			break;
		if (OutboxPublisherNowMs() - start >= RELOAD_GIVE_UP_MS && settings_changed())
		{
			kafka_teardown();
			break;
		}
		(void) OutboxPublisherWait(wake_pipe[0], WL_SOCKET_READABLE, WAIT_SLICE_MS);
	}
}

/* Deliver a batch; see the file header. */
static void
kafka_publish(OutboxMessage *messages, int nmessages, OutboxPublishResult *results)
{
	int			produced = 0;
	int			i;

	read_config();
	if (kafka_brokers[0] == '\0')
	{
		OutboxPublisherReportProblem(&config_problem, "outbox.kafka_brokers is not set",
							  "Set outbox.kafka_brokers to the bootstrap servers (host:port,...) and reload.");
		for (i = 0; i < nmessages; i++)
			results[i].status = OUTBOX_PUBLISH_SKIPPED;
		return;
	}

	/* A producer with a fatal error is of no further use. */
	if (producer && (fatal_error || rd_kafka_fatal_error(producer, NULL, 0)))
	{
		char		errstr[512];
		char	   *text;

		rd_kafka_fatal_error(producer, errstr, sizeof(errstr));
		text = clean_text(errstr);
		ereport(LOG,
				(errmsg("outbox kafka publisher: the producer failed, creating a new one: %s", text)));
		pfree(text);
		kafka_teardown();
	}
	if (producer == NULL)
	{
		char	   *problem = kafka_setup();

		if (problem)
		{
			OutboxPublisherReportProblem(&config_problem, problem,
								  "Fix outbox.kafka_properties or outbox.kafka_brokers and reload.");
			for (i = 0; i < nmessages; i++)
				results[i].status = OUTBOX_PUBLISH_SKIPPED;
			return;
		}
	}
	OutboxPublisherClearProblem(&config_problem);

	if (deliveries_size < nmessages)
	{
		Delivery   *grown = realloc(deliveries, sizeof(Delivery) * nmessages);

		if (grown == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory")));
		deliveries = grown;
		deliveries_size = nmessages;
	}
	memset(deliveries, 0, sizeof(Delivery) * nmessages);
	batch_base = next_seq;
	next_seq += nmessages;
	batch_size = nmessages;
	batch_reported = 0;

	for (i = 0; i < nmessages; i++)
	{
		const OutboxMessage *m = &messages[i];
		char	   *problem;
		char	   *topic = kafka_topic_for(kafka_topic, m->topic, &problem);
		rd_kafka_headers_t *hdrs;
		rd_kafka_resp_err_t err;

		if (topic == NULL)
		{
			results[i].status = OUTBOX_PUBLISH_REJECT;
			results[i].error = problem;
			continue;
		}
		hdrs = record_headers(m, &results[i]);
		if (hdrs == NULL)
			continue;
		err = produce(m, topic, hdrs, batch_base + i);
		pfree(topic);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			rd_kafka_headers_destroy(hdrs);
			set_retry(&results[i], err);
			continue;
		}
		deliveries[i].state = DELIVERY_SENT;
		produced++;
	}

	wait_for_reports(produced);

	for (i = 0; i < nmessages; i++)
	{
		Delivery   *d = &deliveries[i];

		if (d->state == DELIVERY_SENT)	/* dropped by a reload */
			results[i].status = OUTBOX_PUBLISH_SKIPPED;
		if (d->state != DELIVERY_DONE)
			continue;
		if (d->err == RD_KAFKA_RESP_ERR_NO_ERROR)
			results[i].status = OUTBOX_PUBLISH_OK;
		else if (d->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE)
			results[i].status = OUTBOX_PUBLISH_SKIPPED;
		else
			set_retry(&results[i], d->err);
	}
	batch_size = 0;
}

/* Rebuild the producer when the settings it was built with changed. */
static void
kafka_reload(void)
{
	read_config();
	if (producer == NULL)
		return;
	if (strcmp(built_brokers, kafka_brokers) != 0 ||
		strcmp(built_properties, kafka_properties) != 0)
		kafka_teardown();
}

static void
kafka_shutdown(void)
{
	kafka_teardown();
	OutboxPublisherClearProblem(&config_problem);
}

/* A destination's options; each defaults to its setting. */
static const OutboxOption kafka_options[] = {
	{.name = "brokers", .type = OUTBOX_OPTION_STRING, .setting = "outbox.kafka_brokers",
	.required = true},
	{.name = "topic", .type = OUTBOX_OPTION_STRING, .setting = "outbox.kafka_topic",
	.check = topic_template_problem},
	{.name = "properties", .type = OUTBOX_OPTION_STRING, .setting = "outbox.kafka_properties",
	.secret = true, .check = properties_problem},
	OUTBOX_FORMAT_OPTIONS("outbox.kafka_format"),
};

static const OutboxPublisher kafka_publisher = {
	.api_version = OUTBOX_PUBLISHER_API_VERSION,
	.name = "kafka",
	.in_transaction = false,
	.check_topic = kafka_check_topic,
	.init = read_config,		/* the producer is built at the first batch */
	.publish = kafka_publish,
	.reload = kafka_reload,
	.shutdown = kafka_shutdown,
	.options = kafka_options,
	.noptions = lengthof(kafka_options),
};

/* Define the kafka publisher's settings and register it. */
void
_PG_init(void)
{
	/* A publisher only works in a worker, which needs preloading. */
	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomStringVariable("outbox.kafka_brokers",
							   "Bootstrap servers (host:port,...) of the Kafka cluster the kafka publisher writes to.",
							   NULL,
							   &setting_brokers,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("outbox.kafka_topic",
							   "Kafka topic of the kafka publisher's records.",
							   "\"{topic}\" in it is replaced by the message topic.",
							   &setting_topic,
							   "{topic}",
							   PGC_SIGHUP,
							   0,
							   check_kafka_topic, NULL, NULL);

	/*
	 * May hold secrets: only superusers (and pg_read_all_settings) may read
	 * it, it is left out of SHOW ALL and pg_settings, and its check hook
	 * never quotes it.
	 */
	DefineCustomStringVariable("outbox.kafka_properties",
							   "Extra librdkafka properties of the kafka publisher, as name=value;name=value.",
							   NULL,
							   &setting_properties,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   check_kafka_properties, NULL, NULL);

	OutboxDefineFormatSetting("outbox.kafka_format", "kafka");

	OutboxPublisherKeepSecret("outbox.kafka_properties");

	/* outbox must be loaded first: it provides OutboxRegisterPublisher. */
	OutboxRegisterPublisher(&kafka_publisher);
}
