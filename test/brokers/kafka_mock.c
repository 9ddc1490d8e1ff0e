/*
 * kafka_mock.c -- a Kafka cluster for the tests and benches of the outbox
 * "kafka" publisher, built on librdkafka's in-process mock cluster.
 *
 *   kafka_mock [-b BROKERS] [-p PARTITIONS] [-q] TOPIC...
 *
 * Starts a mock cluster of BROKERS brokers (default 3), creates each TOPIC
 * with PARTITIONS partitions (default 4) and a replication factor of
 * min(3, BROKERS), prints
 *
 *   bootstrap <host:port,...>
 *
 * and then consumes every topic from the beginning (all partitions
 * assigned, no consumer group), printing one JSON line per record:
 *
 *   {"topic":"t","partition":0,"offset":0,"key":"k"|null,"value":"..."|null,
 *    "headers":[["name","value"|null],...]}
 *
 * With -q records are only counted, not printed.  Commands on stdin, one
 * per line, each answered by a line:
 *
 *   errors APIKEY COUNT ERR   the next COUNT requests of APIKEY (Produce = 0)
 *                             fail with error code ERR      -> ok
 *   topic NAME PARTITIONS     create another topic and consume it -> ok
 *   count                     -> count <records consumed so far>
 *   down                      every broker disconnects its clients and
 *                             refuses new connections          -> ok
 *   up                        the brokers take connections again -> ok
 *   quit (or end of input)    exit
 *
 * stdout is flushed after every line.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

static rd_kafka_t *cluster_rk;	/* the handle the mock cluster belongs to */
static rd_kafka_mock_cluster_t *mcluster;
static rd_kafka_t *consumer;
static rd_kafka_topic_partition_list_t *assignment;
static int	nbrokers = 3;
static int	replication = 3;
static int	quiet = 0;
static long long consumed = 0;

/* Print an error and exit. */
static void
die(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	fprintf(stderr, "kafka_mock: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

/* Write bytes as a JSON string: escapes quotes, backslashes and controls. */
static void
put_json_string(FILE *out, const char *s, size_t len)
{
	size_t		i;

	fputc('"', out);
	for (i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (c == '"' || c == '\\')
		{
			fputc('\\', out);
			fputc(c, out);
		}
		else if (c == '\n')
			fputs("\\n", out);
		else if (c == '\r')
			fputs("\\r", out);
		else if (c == '\t')
			fputs("\\t", out);
		else if (c < 0x20 || c == 0x7f)
			fprintf(out, "\\u%04x", c);
		else
			fputc(c, out);
	}
	fputc('"', out);
}

/* Write bytes as a JSON string, or null for a NULL pointer. */
static void
put_json_or_null(FILE *out, const void *p, size_t len)
{
	if (p == NULL)
		fputs("null", out);
	else
		put_json_string(out, (const char *) p, len);
}

/* Print one consumed record as a JSON line. */
static void
print_record(const rd_kafka_message_t *m)
{
	rd_kafka_headers_t *hdrs = NULL;
	size_t		i;
	const char *name;
	const void *value;
	size_t		size;

	consumed++;
	if (quiet)
		return;
	fputs("{\"topic\":", stdout);
	put_json_string(stdout, rd_kafka_topic_name(m->rkt), strlen(rd_kafka_topic_name(m->rkt)));
	printf(",\"partition\":%" PRId32 ",\"offset\":%" PRId64 ",\"key\":", m->partition, m->offset);
	put_json_or_null(stdout, m->key, m->key_len);
	fputs(",\"value\":", stdout);
	put_json_or_null(stdout, m->payload, m->len);
	fputs(",\"headers\":[", stdout);
	if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		for (i = 0; rd_kafka_header_get_all(hdrs, i, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR; i++)
		{
			if (i > 0)
				fputc(',', stdout);
			fputc('[', stdout);
			put_json_string(stdout, name, strlen(name));
			fputc(',', stdout);
			put_json_or_null(stdout, value, size);
			fputc(']', stdout);
		}
	}
	fputs("]}\n", stdout);
	fflush(stdout);
}

/* Create a topic in the mock cluster and add its partitions to the consumer. */
static void
add_topic(const char *name, int partitions)
{
	rd_kafka_resp_err_t err;
	int			p;

	err = rd_kafka_mock_topic_create(mcluster, name, partitions, replication);
	if (err)
		die("could not create topic %s: %s", name, rd_kafka_err2str(err));
	for (p = 0; p < partitions; p++)
		rd_kafka_topic_partition_list_add(assignment, name, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
	err = rd_kafka_assign(consumer, assignment);
	if (err)
		die("could not assign partitions: %s", rd_kafka_err2str(err));
}

/* Set a configuration property or exit. */
static void
set_conf(rd_kafka_conf_t *conf, const char *name, const char *value)
{
	char		errstr[512];

	if (rd_kafka_conf_set(conf, name, value, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
		die("%s", errstr);
}

/* Run one command line; returns 0 to quit. */
static int
command(char *line)
{
	int			apikey;
	int			partitions;
	size_t		count;
	int			code;
	char		name[256];

	line[strcspn(line, "\r\n")] = '\0';
	if (strcmp(line, "quit") == 0)
		return 0;
	if (sscanf(line, "errors %d %zu %d", &apikey, &count, &code) == 3 && count < 100000)
	{
		rd_kafka_resp_err_t *errors = calloc(count + 1, sizeof(rd_kafka_resp_err_t));
		size_t		i;

		if (errors == NULL)
			die("out of memory");
		for (i = 0; i < count; i++)
			errors[i] = (rd_kafka_resp_err_t) code;
		rd_kafka_mock_push_request_errors_array(mcluster, (int16_t) apikey, count, errors);
		free(errors);
		puts("ok");
	}
	else if (sscanf(line, "topic %255s %d", name, &partitions) == 2 && partitions > 0)
	{
		add_topic(name, partitions);
		puts("ok");
	}
	else if (strcmp(line, "count") == 0)
		printf("count %lld\n", consumed);
	else if (strcmp(line, "down") == 0 || strcmp(line, "up") == 0)
	{
		int			id;

		/* The mock numbers its brokers from 1. */
		for (id = 1; id <= nbrokers; id++)
		{
			rd_kafka_resp_err_t err = line[0] == 'd' ?
				rd_kafka_mock_broker_set_down(mcluster, id) :
				rd_kafka_mock_broker_set_up(mcluster, id);

			if (err)
				die("could not set broker %d %s: %s", id, line, rd_kafka_err2str(err));
		}
		puts("ok");
	}
	else
		printf("error unknown command: %s\n", line);
	fflush(stdout);
	return 1;
}

int
main(int argc, char **argv)
{
	rd_kafka_conf_t *conf;
	char		errstr[512];
	int			brokers = 3;
	int			partitions = 4;
	int			opt;
	int			i;
	char		line[1024];
	size_t		used = 0;
	int			running = 1;

	while ((opt = getopt(argc, argv, "b:p:q")) != -1)
	{
		switch (opt)
		{
			case 'b':
				brokers = atoi(optarg);
				break;
			case 'p':
				partitions = atoi(optarg);
				break;
			case 'q':
				quiet = 1;
				break;
			default:
				die("usage: kafka_mock [-b BROKERS] [-p PARTITIONS] [-q] TOPIC...");
		}
	}
	if (brokers < 1 || partitions < 1)
		die("brokers and partitions must be positive");
	nbrokers = brokers;
	replication = brokers < 3 ? brokers : 3;
	signal(SIGPIPE, SIG_IGN);

	/* The mock cluster needs a client handle to live in. */
	conf = rd_kafka_conf_new();
	set_conf(conf, "log_level", "3");
	cluster_rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (cluster_rk == NULL)
		die("%s", errstr);
	mcluster = rd_kafka_mock_cluster_new(cluster_rk, brokers);
	if (mcluster == NULL)
		die("could not create the mock cluster");

	conf = rd_kafka_conf_new();
	set_conf(conf, "bootstrap.servers", rd_kafka_mock_cluster_bootstraps(mcluster));
	set_conf(conf, "group.id", "kafka_mock");
	set_conf(conf, "enable.auto.commit", "false");
	set_conf(conf, "enable.partition.eof", "false");
	set_conf(conf, "fetch.wait.max.ms", "20");
	set_conf(conf, "socket.nagle.disable", "true");
	set_conf(conf, "log_level", "3");
	consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (consumer == NULL)
		die("%s", errstr);
	rd_kafka_poll_set_consumer(consumer);
	assignment = rd_kafka_topic_partition_list_new(8);
	for (i = optind; i < argc; i++)
		add_topic(argv[i], partitions);

	printf("bootstrap %s\n", rd_kafka_mock_cluster_bootstraps(mcluster));
	fflush(stdout);

	while (running)
	{
		struct pollfd pfd = {.fd = 0,.events = POLLIN};
		rd_kafka_message_t *m;
		int			n = 0;

		/* Records first, as many as are ready (bounded, to read commands). */
		while (n++ < 10000 && (m = rd_kafka_consumer_poll(consumer, n == 1 ? 50 : 0)) != NULL)
		{
			if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
				print_record(m);
			else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
				fprintf(stderr, "kafka_mock: consumer: %s\n", rd_kafka_message_errstr(m));
			rd_kafka_message_destroy(m);
		}
		rd_kafka_poll(cluster_rk, 0);

		/* Then commands. */
		if (poll(&pfd, 1, 0) > 0)
		{
			ssize_t		got = read(0, line + used, sizeof(line) - 1 - used);
			char	   *nl;

			if (got <= 0)
				break;			/* end of input */
			used += got;
			line[used] = '\0';
			while (running && (nl = strchr(line, '\n')) != NULL)
			{
				*nl = '\0';
				running = command(line);
				memmove(line, nl + 1, used - (nl + 1 - line) + 1);
				used -= nl + 1 - line;
			}
			if (used == sizeof(line) - 1)
				die("command line too long");
		}
	}

	rd_kafka_topic_partition_list_destroy(assignment);
	rd_kafka_consumer_close(consumer);
	rd_kafka_destroy(consumer);
	rd_kafka_mock_cluster_destroy(mcluster);
	rd_kafka_destroy(cluster_rk);
	return 0;
}
