/*-------------------------------------------------------------------------
 *
 * destination.c
 *		Destinations and subscriptions, managed in SQL:
 *		outbox.create_destination(), alter_destination(), drop_destination(),
 *		pause_destination(), resume_destination(), subscribe(),
 *		unsubscribe(), and the options shown without their secrets.
 *
 * A destination names a publisher and its options (validated against the
 * options the publisher declares), and gets its own worker unless its
 * publisher is "external" (a relay outside the database drains it with
 * outbox.fetch_pending).  Changes are transactional: at commit the routing
 * caches reload and the database's main worker resyncs the destination
 * workers (shmem.c), which applies them within a second, without a
 * restart.
 *
 * Only superusers create, alter or drop destinations: options may hold
 * secrets and name files the worker reads, and a function destination runs
 * SQL as the worker's role.  Secret options are never shown (the view
 * outbox.destinations leaves them out), and statements passing options are
 * kept out of the server log (publisher.c) and out of pg_stat_activity.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/jsonapi.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

#include "destination.h"
#include "outbox.h"
#include "pg_compat.h"
#include "publisher.h"
#include "route.h"
#include "shmem.h"
#include "store.h"

PG_FUNCTION_INFO_V1(outbox_create_destination);
PG_FUNCTION_INFO_V1(outbox_alter_destination);
PG_FUNCTION_INFO_V1(outbox_set_destination_secret);
PG_FUNCTION_INFO_V1(outbox_drop_destination);
PG_FUNCTION_INFO_V1(outbox_pause_destination);
PG_FUNCTION_INFO_V1(outbox_resume_destination);
PG_FUNCTION_INFO_V1(outbox_subscribe);
PG_FUNCTION_INFO_V1(outbox_unsubscribe);
PG_FUNCTION_INFO_V1(outbox_public_options);

/* The publisher of destinations drained from outside the database. */
#define EXTERNAL_PUBLISHER "external"

/* Raise an error unless the caller is a superuser. */
static void
require_superuser(const char *action)
{
	if (!superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to %s", action),
				 errdetail("Only superusers manage outbox destinations: their options may hold secrets and name files the worker reads, and a function destination runs SQL as the worker's role.")));
}

/* A text argument that must not be NULL. */
static char *
text_argument(FunctionCallInfo fcinfo, int arg, const char *what)
{
	if (PG_ARGISNULL(arg))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
	return text_to_cstring(PG_GETARG_TEXT_PP(arg));
}

/* Raise an error unless name is a valid destination name. */
static void
check_destination_name(const char *name)
{
	const char *p;
	bool		ok = name[0] >= 'a' && name[0] <= 'z' && strlen(name) < NAMEDATALEN;

	for (p = name; ok && *p; p++)
		ok = (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_';
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("invalid destination name \"%s\"", name),
				 errdetail("A destination name starts with a lower-case letter and holds lower-case letters, digits and underscores, at most %d of them.",
						   NAMEDATALEN - 1)));
	if (strcmp(name, OUTBOX_DEFAULT_DESTINATION) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_RESERVED_NAME),
				 errmsg("destination name \"%s\" is reserved", name),
				 errdetail("\"%s\" is the destination of messages no subscription routes: the outbox.publisher settings.",
						   OUTBOX_DEFAULT_DESTINATION)));
}

/*
 * The publisher of that name, checked; NULL for "external", which takes no
 * options and has no worker.
 */
static const OutboxPublisher *
destination_publisher(const char *name)
{
	const OutboxPublisher *publisher;

	if (strcmp(name, EXTERNAL_PUBLISHER) == 0)
		return NULL;
	publisher = outbox_find_publisher(name);
	if (publisher == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("outbox publisher \"%s\" does not exist", name),
				 errdetail("Known publishers: %s, %s.", outbox_publisher_names(),
						   EXTERNAL_PUBLISHER),
				 errhint("A publisher of a plug-in library needs the library in shared_preload_libraries.")));
	return publisher;
}

/* Check options for a publisher (NULL: external, which takes none). */
static void
check_options(const OutboxPublisher *publisher, const char *publisher_name, Jsonb *options)
{
	if (publisher != NULL)
		outbox_check_destination_options(publisher, options);
	else if (!JB_ROOT_IS_OBJECT(options) || JB_ROOT_IS_SCALAR(options) ||
			 JB_ROOT_COUNT(options) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("publisher \"%s\" takes no options", publisher_name)));
}

/*
 * Show this backend's statement as a call of the function, without its
 * arguments, in pg_stat_activity: they may hold secrets.
 */
static void
hide_statement_arguments(const char *function)
{
	pgstat_report_activity(STATE_RUNNING,
						   psprintf("SELECT outbox.%s(...) -- arguments not shown", function));
}

/* Run a statement on the outbox's tables, with search_path pinned. */
static uint64
run(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls, int expected)
{
	int			ret = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);

	if (ret != expected)
		elog(ERROR, "outbox destination statement failed: %s", SPI_result_code_string(ret));
	return SPI_processed;
}

/*
 * The id and publisher of a destination, locked for the rest of the
 * transaction; raises an error when there is none of that name.
 */
static int32
lock_destination(const char *name, char **publisher)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};
	bool		isnull;
	int32		id;

	if (run("SELECT id, publisher FROM outbox.destination WHERE name = $1 FOR UPDATE",
			1, types, values, NULL, SPI_OK_SELECT) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("outbox destination \"%s\" does not exist", name)));
	id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (publisher)
		*publisher = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	return id;
}

/*
 * Connect for a management call that EXECUTE alone permits (pause,
 * resume, subscribe, unsubscribe): as the outbox's owner.
 */
static void
owner_connect(OutboxStoreCall *call)
{
	outbox_require_shared_state();
	outbox_store_connect_as_owner(call);
}

/*
 * Connect for a management call that only superusers may make (create,
 * alter, drop): as the caller, with search_path pinned by the store, so
 * that no operator or function in these statements can be one that a
 * database owner planted in a schema on the caller's path.  Returns the
 * GUC level to hand to management_finish().
 */
static int
management_connect(void)
{
	outbox_require_shared_state();
	return outbox_store_connect();
}

/* End a management call begun by management_connect(). */
static void
management_finish(int guc_level)
{
	outbox_store_finish(guc_level);
}

/*
 * outbox.create_destination(name, publisher, options DEFAULT '{}'): a new
 * destination, with no subscription yet.
 */
Datum
outbox_create_destination(PG_FUNCTION_ARGS)
{
	char	   *name = text_argument(fcinfo, 0, "destination name");
	char	   *publisher_name = text_argument(fcinfo, 1, "publisher");
	Jsonb	   *options;
	const OutboxPublisher *publisher;
	Oid			types[3] = {TEXTOID, TEXTOID, JSONBOID};
	Datum		values[3];
	pg_uuid_t	start;
	int			guc_level;

	hide_statement_arguments("create_destination");
	require_superuser("create an outbox destination");
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("destination options must not be null"),
				 errhint("Pass '{}' for none.")));
	options = PG_GETARG_JSONB_P(2);
	check_destination_name(name);
	publisher = destination_publisher(publisher_name);
	check_options(publisher, publisher_name, options);

	guc_level = management_connect();
	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(publisher_name);
	values[2] = JsonbPGetDatum(options);
	if (run("INSERT INTO outbox.destination (name, publisher, options) VALUES ($1, $2, $3) "
			"ON CONFLICT (name) DO NOTHING",
			3, types, values, NULL, SPI_OK_INSERT) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("outbox destination \"%s\" already exists", name)));

	/*
	 * Its position starts at the id horizon: every id up to it belongs to a
	 * transaction that has ended, so no message there can be routed to it
	 * any more, while one of an open transaction (whose id may have been
	 * taken before this destination existed) is above it.  Its first read
	 * starts here, not at the oldest message kept.
	 */
	memset(&start, 0, sizeof(start));
	outbox_shmem_id_horizon(&start);
	types[1] = UUIDOID;
	values[1] = UUIDPGetDatum(&start);
	run("INSERT INTO outbox.destination_progress (destination_id, upto) "
		"SELECT id, $2 FROM outbox.destination WHERE name = $1",
		2, types, values, NULL, SPI_OK_INSERT);
	management_finish(guc_level);
	outbox_destinations_changed_at_commit(false);
	PG_RETURN_VOID();
}

/*
 * outbox.alter_destination(name, options): merge options into the
 * destination's; a JSON null removes an option.
 */
Datum
outbox_alter_destination(PG_FUNCTION_ARGS)
{
	char	   *name = text_argument(fcinfo, 0, "destination name");
	Jsonb	   *changes;
	char	   *publisher_name;
	const OutboxPublisher *publisher;
	Oid			types[2] = {INT4OID, JSONBOID};
	Datum		values[2];
	int32		id;
	bool		isnull;
	Jsonb	   *merged;
	int			guc_level;

	hide_statement_arguments("alter_destination");
	require_superuser("alter an outbox destination");
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("destination options must not be null")));
	changes = PG_GETARG_JSONB_P(1);
	if (!JB_ROOT_IS_OBJECT(changes) || JB_ROOT_IS_SCALAR(changes))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("destination options must be a JSON object")));

	guc_level = management_connect();
	id = lock_destination(name, &publisher_name);
	publisher = destination_publisher(publisher_name);

	/* old || changes, without the keys the changes set to null */
	values[0] = Int32GetDatum(id);
	values[1] = JsonbPGetDatum(changes);
	run("SELECT coalesce(jsonb_object_agg(e.key, e.value) "
		"  FILTER (WHERE jsonb_typeof(e.value) <> 'null'), '{}') "
		"FROM outbox.destination d, jsonb_each(d.options || $2) e WHERE d.id = $1",
		2, types, values, NULL, SPI_OK_SELECT);
	merged = DatumGetJsonbPCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
											  1, &isnull));
	check_options(publisher, publisher_name, merged);

	values[1] = JsonbPGetDatum(merged);
	run("UPDATE outbox.destination SET options = $2 WHERE id = $1",
		2, types, values, NULL, SPI_OK_UPDATE);
	management_finish(guc_level);
	outbox_destinations_changed_at_commit(false);
	PG_RETURN_VOID();
}

/*
 * The declaration of a secret option of a publisher; raises an error when
 * the publisher has no option of that name or it is not secret (those are
 * set with alter_destination, where they are shown anyway).
 */
static const OutboxOption *
secret_option(const OutboxPublisher *publisher, const char *publisher_name, const char *name)
{
	char	   *secrets;
	int			i;

	for (i = 0; publisher != NULL && i < publisher->noptions; i++)
	{
		const OutboxOption *option = &publisher->options[i];

		if (option->secret && strcmp(option->name, name) == 0)
			return option;
	}
	secrets = publisher != NULL ? outbox_secret_option_names(publisher) : "";
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("publisher \"%s\" has no secret option \"%s\"", publisher_name, name),
			 secrets[0] != '\0' ?
			 errdetail("The secret options of publisher \"%s\" are: %s.", publisher_name, secrets) :
			 errdetail("Publisher \"%s\" has no secret options.", publisher_name),
			 errhint("Set other options with outbox.alter_destination().")));
	return NULL;				/* keep the compiler quiet */
}

/*
 * outbox.set_destination_secret(name, option, value): set one secret
 * option of a destination (a null value removes it).  The value is meant
 * to be bound as a parameter or read by the server (pg_read_file()), so
 * that it never is in statement text, which the server log, statistics
 * and pg_stat_activity may show; it is never quoted in errors either.  An
 * object option (headers) takes the object's JSON text.
 */
Datum
outbox_set_destination_secret(PG_FUNCTION_ARGS)
{
	char	   *name = text_argument(fcinfo, 0, "destination name");
	char	   *option_name = text_argument(fcinfo, 1, "option");
	char	   *publisher_name;
	const OutboxPublisher *publisher;
	const OutboxOption *option;
	Oid			types[3] = {INT4OID, TEXTOID, TEXTOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	const char *sql;
	int32		id;
	bool		isnull;
	Jsonb	   *merged;
	int			guc_level;

	hide_statement_arguments("set_destination_secret");
	require_superuser("set a secret of an outbox destination");

	guc_level = management_connect();
	id = lock_destination(name, &publisher_name);
	publisher = destination_publisher(publisher_name);
	option = secret_option(publisher, publisher_name, option_name);

	values[0] = Int32GetDatum(id);
	values[1] = CStringGetTextDatum(option_name);
	if (PG_ARGISNULL(2))
	{
		nulls[2] = 'n';
		values[2] = (Datum) 0;
		sql = "SELECT d.options - $2 FROM outbox.destination d WHERE d.id = $1";
	}
	else if (option->type == OUTBOX_OPTION_OBJECT)
	{
		text	   *value = PG_GETARG_TEXT_PP(2);
		JsonLexContext *lex;
		bool		ok;

		/* Parsed here first: the errors of jsonb_in would quote the value. */
		lex = makeJsonLexContextCstringLen(NULL, VARDATA_ANY(value), VARSIZE_ANY_EXHDR(value),
										   GetDatabaseEncoding(), true);
		ok = pg_parse_json(lex, &nullSemAction) == JSON_SUCCESS;
		freeJsonLexContext(lex);
		if (!ok)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid value for option \"%s\" of publisher \"%s\"",
							option_name, publisher_name),
					 errdetail("The value must be the JSON text of an object of strings.")));
		values[2] = PointerGetDatum(value);
		sql = "SELECT d.options || jsonb_build_object($2, $3::jsonb) FROM outbox.destination d WHERE d.id = $1";
	}
	else
	{
		values[2] = PG_GETARG_DATUM(2);
		sql = "SELECT d.options || jsonb_build_object($2, $3) FROM outbox.destination d WHERE d.id = $1";
	}
	run(sql, 3, types, values, nulls, SPI_OK_SELECT);
	merged = DatumGetJsonbPCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
											  1, &isnull));
	check_options(publisher, publisher_name, merged);

	types[1] = JSONBOID;
	values[1] = JsonbPGetDatum(merged);
	run("UPDATE outbox.destination SET options = $2 WHERE id = $1",
		2, types, values, NULL, SPI_OK_UPDATE);
	management_finish(guc_level);
	outbox_destinations_changed_at_commit(false);
	PG_RETURN_VOID();
}

/*
 * outbox.drop_destination(name, force DEFAULT false): refuses while
 * deliveries to it are unfinished, unless force, which gives them up.
 */
Datum
outbox_drop_destination(PG_FUNCTION_ARGS)
{
	char	   *name = text_argument(fcinfo, 0, "destination name");
	bool		force = !PG_ARGISNULL(1) && PG_GETARG_BOOL(1);
	Oid			types[1] = {INT4OID};
	Datum		values[1];
	int32		id;
	int			guc_level;

	require_superuser("drop an outbox destination");
	guc_level = management_connect();
	id = lock_destination(name, NULL);
	values[0] = Int32GetDatum(id);
	if (!force)
	{
		bool		isnull;
		int64		unfinished;

		run("SELECT (SELECT count(*) FROM outbox.delivery x WHERE x.destination_id = $1 "
			"          AND x.status IN ('pending', 'processing')) + "
			"       (SELECT count(*) FROM outbox.messages m WHERE m.status = 'pending' "
			"          AND m.destinations IS NOT NULL AND $1 = ANY (m.destinations) "
			"          AND m.id > coalesce(outbox.destination_position($1), "
			"                              '00000000-0000-0000-0000-000000000000'))",
			1, types, values, NULL, SPI_OK_SELECT);
		unfinished = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 1, &isnull));
		if (unfinished > 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_IN_USE),
					 errmsg("outbox destination \"%s\" has deliveries pending", name),
					 errdetail_plural("%lld message routed to it is not delivered yet.",
									  "%lld messages routed to it are not delivered yet.",
									  (unsigned long) unfinished, (long long) unfinished),
					 errhint("Wait until they are, or drop it with force => true to give them up.")));
	}
	run("DELETE FROM outbox.delivery WHERE destination_id = $1", 1, types, values, NULL,
		SPI_OK_DELETE);
	run("DELETE FROM outbox.destination_progress WHERE destination_id = $1", 1, types, values,
		NULL, SPI_OK_DELETE);
	run("DELETE FROM outbox.destination WHERE id = $1", 1, types, values, NULL, SPI_OK_DELETE);
	management_finish(guc_level);
	outbox_route_subscriptions_changed();
	outbox_destinations_changed_at_commit(true);
	PG_RETURN_VOID();
}

/* Set a destination paused or not; resuming also ends a disabling. */
static void
set_paused(const char *name, bool paused)
{
	Oid			types[2] = {INT4OID, BOOLOID};
	Datum		values[2];
	OutboxStoreCall call;

	owner_connect(&call);
	values[0] = Int32GetDatum(lock_destination(name, NULL));
	values[1] = BoolGetDatum(paused);
	if (paused)
		run("UPDATE outbox.destination SET paused = true WHERE id = $1 AND $2",
			2, types, values, NULL, SPI_OK_UPDATE);
	else
		run("UPDATE outbox.destination SET paused = false, disabled_at = NULL, "
			"disabled_reason = NULL, failing_since = NULL WHERE id = $1 AND NOT $2",
			2, types, values, NULL, SPI_OK_UPDATE);
	outbox_store_finish_as_owner(&call);
	outbox_destinations_changed_at_commit(false);
}

/*
 * outbox.pause_destination(name): its deliveries stay pending, in order,
 * until it is resumed.
 */
Datum
outbox_pause_destination(PG_FUNCTION_ARGS)
{
	set_paused(text_argument(fcinfo, 0, "destination name"), true);
	PG_RETURN_VOID();
}

/*
 * outbox.resume_destination(name): delivers again, from where it stopped;
 * also what brings back a destination that was disabled.
 */
Datum
outbox_resume_destination(PG_FUNCTION_ARGS)
{
	set_paused(text_argument(fcinfo, 0, "destination name"), false);
	PG_RETURN_VOID();
}

/*
 * outbox.subscribe(destination, topic_pattern): messages saved from now on
 * whose topic matches go to the destination (subscribing twice changes
 * nothing).
 */
Datum
outbox_subscribe(PG_FUNCTION_ARGS)
{
	char	   *name = text_argument(fcinfo, 0, "destination name");
	char	   *pattern = text_argument(fcinfo, 1, "topic pattern");
	Oid			types[2] = {INT4OID, TEXTOID};
	Datum		values[2];
	OutboxStoreCall call;

	outbox_check_pattern(pattern);
	owner_connect(&call);
	values[0] = Int32GetDatum(lock_destination(name, NULL));
	values[1] = CStringGetTextDatum(pattern);
	run("INSERT INTO outbox.subscription (destination_id, pattern) VALUES ($1, $2) "
		"ON CONFLICT DO NOTHING", 2, types, values, NULL, SPI_OK_INSERT);
	outbox_store_finish_as_owner(&call);
	outbox_route_subscriptions_changed();
	outbox_destinations_changed_at_commit(true);
	PG_RETURN_VOID();
}

/*
 * outbox.unsubscribe(destination, topic_pattern): messages saved from now
 * on no longer go to the destination by that pattern.
 */
Datum
outbox_unsubscribe(PG_FUNCTION_ARGS)
{
	char	   *name = text_argument(fcinfo, 0, "destination name");
	char	   *pattern = text_argument(fcinfo, 1, "topic pattern");
	Oid			types[2] = {INT4OID, TEXTOID};
	Datum		values[2];
	OutboxStoreCall call;

	owner_connect(&call);
	values[0] = Int32GetDatum(lock_destination(name, NULL));
	values[1] = CStringGetTextDatum(pattern);
	if (run("DELETE FROM outbox.subscription WHERE destination_id = $1 AND pattern = $2",
			2, types, values, NULL, SPI_OK_DELETE) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("outbox destination \"%s\" has no subscription \"%s\"", name, pattern)));
	outbox_store_finish_as_owner(&call);
	outbox_route_subscriptions_changed();
	outbox_destinations_changed_at_commit(true);
	PG_RETURN_VOID();
}

/*
 * outbox.public_options(publisher, options): the options without the
 * secret ones (and without any the publisher does not declare, in case it
 * is not loaded here, or that holds a URL with credentials, as 0.3.0 took
 * them).
 */
Datum
outbox_public_options(PG_FUNCTION_ARGS)
{
	char	   *publisher_name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	Jsonb	   *options = PG_GETARG_JSONB_P(1);
	const OutboxPublisher *publisher = outbox_find_publisher(publisher_name);
	Datum		result = JsonbPGetDatum(options);
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken token;
	List	   *secret_keys = NIL;
	ListCell   *lc;
	char	   *key = NULL;

	if (!JB_ROOT_IS_OBJECT(options) || JB_ROOT_IS_SCALAR(options))
		PG_RETURN_NULL();
	/* Read the options first, then delete the secret ones from a copy. */
	it = JsonbIteratorInit(&options->root);
	while ((token = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (token == WJB_KEY)
			key = pnstrdup(v.val.string.val, v.val.string.len);
		else if (token == WJB_VALUE && key != NULL &&
				 outbox_option_is_secret(publisher, key, &v))
			secret_keys = lappend(secret_keys, key);
	}
	foreach(lc, secret_keys)
		result = DirectFunctionCall2(jsonb_delete, result,
									 CStringGetTextDatum((char *) lfirst(lc)));
	PG_RETURN_DATUM(result);
}
