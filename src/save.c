/*-------------------------------------------------------------------------
 *
 * save.c
 *		The save path: outbox.save(), message ids, and the commit-time wake-up.
 *
 * outbox.save() validates its arguments, takes an increasing UUIDv7 from
 * the shared clock and inserts the row through a plan prepared once per
 * backend.  Both save() and the column default outbox.next_id() (which the
 * batch path INSERT ... SELECT uses) note that this transaction saved
 * messages, so that its commit wakes the relay worker (shmem.c); a
 * rollback wakes nobody.  The backlog (outbox.max_backlog) counts rows,
 * not ids: the BEFORE INSERT trigger (route.c) counts a row whose id this
 * backend just handed out.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "outbox.h"
#include "publisher.h"
#include "route.h"
#include "shmem.h"
#include "store.h"

PG_FUNCTION_INFO_V1(outbox_save_bytea);
PG_FUNCTION_INFO_V1(outbox_save_text);
PG_FUNCTION_INFO_V1(outbox_save_jsonb);
PG_FUNCTION_INFO_V1(outbox_next_id);
PG_FUNCTION_INFO_V1(outbox_valid_headers);

/* The INSERT of outbox.save(), prepared once per backend. */
static SPIPlanPtr save_plan = NULL;

/* The last id this backend handed out, until a row took it. */
static pg_uuid_t handed_out_id;
static bool handed_out = false;

/*
 * Make a new message id: a UUIDv7 whose 42 bits after the millisecond
 * timestamp are a counter shared by all backends, so every id is larger
 * than any id made before it on this server, even within one millisecond.
 * A clock that steps back keeps using the last millisecond seen.
 */
static void
generate_id(pg_uuid_t *id)
{
	TimestampTz now = GetCurrentTimestamp();
	uint64		now_ms;
	uint64		fresh_counter = pg_prng_uint64(&pg_global_prng_state) &
		((UINT64CONST(1) << (OUTBOX_ID_COUNTER_BITS - 1)) - 1);
	uint32		tail = (uint32) pg_prng_uint64(&pg_global_prng_state);
	uint64		ms;
	uint64		counter;

	outbox_require_shared_state();
	now_ms = (uint64) (now / 1000) +
		(uint64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000;
	outbox_shmem_next_id_clock(now_ms, fresh_counter, &ms, &counter);

	outbox_uuid_from_clock(ms, counter, tail, id);
	handed_out_id = *id;
	handed_out = true;
}

/*
 * Whether id is the one this backend handed out last (save() or
 * outbox.next_id(): the row being inserted took its id from there); it is
 * forgotten, so that one id counts for one row at most (route.c).
 */
bool
outbox_take_handed_out_id(const pg_uuid_t *id)
{
	if (!handed_out || memcmp(id->data, handed_out_id.data, UUID_LEN) != 0)
		return false;
	handed_out = false;
	return true;
}

/*
 * Check that headers are a JSON object whose values are all strings, as
 * every transport (HTTP, Kafka, NATS) carries them.  Returns NULL when they
 * are, else a description of the problem.
 */
static const char *
headers_problem(Jsonb *headers)
{
	OutboxHeaderIterator it;
	OutboxHeader header;

	if (!JB_ROOT_IS_OBJECT(headers) || JB_ROOT_IS_SCALAR(headers))
		return "headers must be a JSON object";
	OutboxHeadersBegin(&it, headers);
	while (OutboxHeadersNext(&it, &header))
	{
		if (header.value == NULL)
			return "header values must be JSON strings";
	}
	return NULL;
}

/* Whether headers already name a content type, in any letter case. */
static bool
headers_have_content_type(Jsonb *headers)
{
	OutboxHeaderIterator it;
	OutboxHeader header;

	OutboxHeadersBegin(&it, headers);
	while (OutboxHeadersNext(&it, &header))
	{
		if (OutboxHeaderNameIs(&header, "content-type"))
			return true;
	}
	return false;
}

/*
 * outbox.valid_headers(jsonb): the CHECK constraint on outbox.messages, so
 * the batch path rejects the same headers that save() does.
 */
Datum
outbox_valid_headers(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(headers_problem(PG_GETARG_JSONB_P(0)) == NULL);
}

/*
 * Whether subscriptions route messages of this topic to destinations (not
 * to the default one); never with a schema older than 0.3.0.
 */
static bool
topic_is_routed(const char *topic)
{
	const int32 *destinations;

	return outbox_have_destinations() && outbox_route_topic(topic, &destinations) > 0;
}

/*
 * Validate the arguments of save() and raise an ERROR, before anything is
 * stored, for anything that could never be published.
 */
static void
check_save_arguments(FunctionCallInfo fcinfo, char **topic_out,
					 text **key_out, Jsonb **headers_out)
{
	char	   *topic;
	const char *problem;
	const OutboxPublisher *publisher;
	text	   *key;
	Jsonb	   *headers;

	outbox_require_shared_state();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("outbox message topic must not be null")));
	topic = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (topic[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("outbox message topic must not be empty")));
	if (strlen(topic) > OUTBOX_MAX_TOPIC_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("outbox message topic is too long"),
				 errdetail("The topic is %zu bytes; the limit is %d.",
						   strlen(topic), OUTBOX_MAX_TOPIC_LEN)));
	/* The default destination's publisher checks the topics it will get. */
	publisher = outbox_find_publisher(outbox_publisher_name);
	if (publisher && publisher->check_topic &&
		(problem = publisher->check_topic(topic)) != NULL && !topic_is_routed(topic))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("outbox message topic \"%s\" cannot be published by publisher \"%s\"",
						topic, publisher->name),
				 errdetail_internal("%s", problem)));

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("outbox message payload must not be null")));

	key = PG_ARGISNULL(2) ? cstring_to_text("") : PG_GETARG_TEXT_PP(2);
	if (VARSIZE_ANY_EXHDR(key) > OUTBOX_MAX_KEY_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("outbox message key is too long"),
				 errdetail("The key is %zu bytes; the limit is %d.",
						   (size_t) VARSIZE_ANY_EXHDR(key), OUTBOX_MAX_KEY_LEN)));

	if (PG_ARGISNULL(3))
		headers = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
													 CStringGetDatum("{}")));
	else
		headers = PG_GETARG_JSONB_P(3);
	if ((problem = headers_problem(headers)) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid outbox message headers"),
				 errdetail("%s.", problem),
				 errhint("Pass headers as a JSON object of strings, for example '{\"trace_id\": \"abc\"}'.")));

	*topic_out = topic;
	*key_out = key;
	*headers_out = headers;
}

/* Insert one message through the prepared plan and return its id. */
static Datum
insert_message(const char *topic, bytea *payload, text *key, Jsonb *headers)
{
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));
	Datum		values[5];
	int			ret;

	generate_id(id);

	/*
	 * Unlike the store's statements, this one runs under the caller's
	 * search_path, pinning which would cost every save two recomputations
	 * of the path: it names only outbox.messages, schema-qualified, and
	 * resolves no operator, function or cast (the parameters have the
	 * columns' types), so no path can change what it does.
	 */
	SPI_connect();
	if (save_plan == NULL)
	{
		Oid			argtypes[5] = {UUIDOID, TEXTOID, TEXTOID, BYTEAOID, JSONBOID};
		SPIPlanPtr	plan;

		plan = SPI_prepare("INSERT INTO outbox.messages (id, topic, key, payload, headers) "
						   "VALUES ($1, $2, $3, $4, $5)", 5, argtypes);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		save_plan = plan;
	}

	values[0] = UUIDPGetDatum(id);
	values[1] = CStringGetTextDatum(topic);
	values[2] = PointerGetDatum(key);
	values[3] = PointerGetDatum(payload);
	values[4] = JsonbPGetDatum(headers);

	ret = SPI_execute_plan(save_plan, values, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "could not save outbox message: %s", SPI_result_code_string(ret));
	SPI_finish();

	outbox_wake_worker_at_commit();
	return UUIDPGetDatum(id);
}

/* Convert server-encoded text to a bytea holding its UTF-8 form. */
static bytea *
utf8_bytes(const char *server_text)
{
	char	   *utf8 = pg_server_to_any(server_text, (int) strlen(server_text), PG_UTF8);
	size_t		len = strlen(utf8);
	bytea	   *bytes = palloc(VARHDRSZ + len);

	SET_VARSIZE(bytes, VARHDRSZ + len);
	memcpy(VARDATA(bytes), utf8, len);
	return bytes;
}

/* outbox.save(topic, payload bytea, key, headers): save raw bytes. */
Datum
outbox_save_bytea(PG_FUNCTION_ARGS)
{
	char	   *topic;
	text	   *key;
	Jsonb	   *headers;

	check_save_arguments(fcinfo, &topic, &key, &headers);
	return insert_message(topic, PG_GETARG_BYTEA_PP(1), key, headers);
}

/* outbox.save(topic, payload text, key, headers): save text as UTF-8. */
Datum
outbox_save_text(PG_FUNCTION_ARGS)
{
	char	   *topic;
	text	   *key;
	Jsonb	   *headers;

	check_save_arguments(fcinfo, &topic, &key, &headers);
	return insert_message(topic,
						  utf8_bytes(text_to_cstring(PG_GETARG_TEXT_PP(1))),
						  key, headers);
}

/*
 * outbox.save(topic, payload jsonb, key, headers): save the JSON text and
 * add a content-type header unless the caller gave one.
 */
Datum
outbox_save_jsonb(PG_FUNCTION_ARGS)
{
	char	   *topic;
	text	   *key;
	Jsonb	   *headers;
	Jsonb	   *payload;
	bytea	   *bytes;

	check_save_arguments(fcinfo, &topic, &key, &headers);
	payload = PG_GETARG_JSONB_P(1);
	bytes = utf8_bytes(JsonbToCString(NULL, &payload->root, VARSIZE(payload)));

	if (!headers_have_content_type(headers))
	{
		Datum		content_type = DirectFunctionCall1(jsonb_in,
													   CStringGetDatum("{\"content-type\": \"application/json\"}"));

		headers = DatumGetJsonbP(DirectFunctionCall2(jsonb_concat,
													 JsonbPGetDatum(headers),
													 content_type));
	}
	return insert_message(topic, bytes, key, headers);
}

/*
 * outbox.next_id(): the default of outbox.messages.id.  Rows inserted
 * directly (the batch path) get increasing ids and wake the worker at
 * commit, exactly like save().
 */
Datum
outbox_next_id(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));

	generate_id(id);
	outbox_wake_worker_at_commit();
	PG_RETURN_UUID_P(id);
}
