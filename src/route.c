/*-------------------------------------------------------------------------
 *
 * route.c
 *		Routing: which destinations a message goes to, decided once, when it
 *		is saved.
 *
 * A subscription is a dot-separated topic pattern: "*" matches exactly one
 * token, ">" as the last token one or more, anything else itself.  The
 * BEFORE INSERT trigger outbox.route() sets a new message's destinations
 * column to the ids of the destinations with a matching subscription, or
 * NULL (the default destination) when none matches; outbox.save() and the
 * batch path go through it alike, and a caller cannot choose the column
 * itself.
 *
 * Each backend keeps the subscriptions, and the destinations of each topic
 * it saw, in memory.  A commit that changes subscriptions bumps a shared
 * routing version (shmem.c); a backend that sees another version reloads
 * before it routes the next message, so a subscription applies to the
 * messages saved after it commits.  The subscriptions are read on a
 * snapshot taken after the version (not the saving transaction's, which
 * may be older under REPEATABLE READ and would cache the old set under the
 * new version).  A transaction that changes subscriptions itself routes its
 * own later messages by what it sees, and its end forgets that view, which
 * a rollback undoes.
 *
 * A routed message's id must come from outbox.next_id() in the saving
 * transaction (the column's default; save() takes one too): destinations
 * read the messages in id order up to the id horizon (shmem.c), which only
 * ids taken by open transactions hold back.  An explicit id older than
 * that, or newer than any id handed out, is refused rather than silently
 * passed by a destination's position.
 *
 * The trigger also refuses any message id below the id floor (shmem.c):
 * no such id was ever handed out, and the nil UUID would never be
 * published; and it counts the row toward the backlog (outbox.max_backlog)
 * when its id is the one this backend just handed out.
 *
 * A row that a superuser inserts with its destinations column given (the
 * column's default is '{}', "not routed yet") is taken as it is: a restore
 * of a dump does that, so that restored messages keep their routing, their
 * ids and their state.  Anyone else's rows are routed.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "catalog/namespace.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/uuid.h"

#include "outbox.h"
#include "route.h"
#include "shmem.h"
#include "store.h"

PG_FUNCTION_INFO_V1(outbox_route);
PG_FUNCTION_INFO_V1(outbox_topic_matches);

/* Longest pattern, in bytes, as for topics. */
#define MAX_PATTERN_LEN OUTBOX_MAX_TOPIC_LEN

/* Topics whose routes a backend keeps; more empty the cache. */
#define MAX_CACHED_TOPICS 1024

/* One subscription. */
typedef struct Subscription
{
	int32		destination_id;
	char	   *pattern;
} Subscription;

/* The routes of one topic. */
typedef struct TopicRoute
{
	char		topic[OUTBOX_MAX_TOPIC_LEN + 1];	/* hash key */
	int			ndestinations;
	int32	   *destinations;	/* in routing_context */
} TopicRoute;

/* The subscriptions this backend routes by, and the version they are of. */
static MemoryContext routing_context = NULL;
static Subscription *subscriptions = NULL;
static int	nsubscriptions = 0;
static uint64 loaded_version = 0;
static bool loaded = false;
static HTAB *topic_routes = NULL;

/* Whether the current transaction saved a routed message. */
static bool saved_routed = false;
static bool xact_callback_registered = false;

/*
 * Whether the current transaction changed subscriptions: it routes by what
 * it sees (reloading before each message), and its end drops that view.
 */
static bool changed_in_transaction = false;
static CommandId loaded_command = InvalidCommandId;

/*
 * The table the subscriptions were read from: its invalidation (DROP
 * EXTENSION, which takes routing version and ids along) drops the cache.
 */
static Oid	subscription_relid = InvalidOid;
static bool relcache_callback_registered = false;

static void register_route_xact_callback(void);

/*
 * Why a pattern is not valid, or NULL: tokens separated by dots, none
 * empty, each "*", ">" (last only) or made of letters, digits, "_", "-".
 */
const char *
outbox_pattern_problem(const char *pattern)
{
	const char *p = pattern;
	size_t		len = strlen(pattern);

	if (len == 0)
		return "A pattern must not be empty";
	if (len > MAX_PATTERN_LEN)
		return "A pattern is at most 255 bytes long";
	for (;;)
	{
		const char *end = strchr(p, '.');
		size_t		toklen = end ? (size_t) (end - p) : strlen(p);

		if (toklen == 0)
			return "Tokens must not be empty (two dots in a row, or a dot at either end)";
		if (toklen == 1 && (*p == '*' || *p == '>'))
		{
			if (*p == '>' && end != NULL)
				return "\">\" may only be the last token";
		}
		else
		{
			size_t		i;

			for (i = 0; i < toklen; i++)
			{
				char		c = p[i];

				if (c == '*' || c == '>')
					return "\"*\" and \">\" must be whole tokens";
				if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
					  (c >= '0' && c <= '9') || c == '_' || c == '-' ||
					  IS_HIGHBIT_SET(c)))
					return "Tokens consist of letters, digits, \"_\" and \"-\" (or are \"*\" or \">\")";
			}
		}
		if (end == NULL)
			return NULL;
		p = end + 1;
	}
}

/*
 * Whether a topic matches a valid pattern.  Tokens are compared whole; a
 * topic token may hold any character but the dot.
 */
bool
outbox_topic_matches_pattern(const char *topic, const char *pattern)
{
	const char *t = topic;
	const char *p = pattern;

	for (;;)
	{
		const char *tend = strchr(t, '.');
		const char *pend = strchr(p, '.');
		size_t		tlen = tend ? (size_t) (tend - t) : strlen(t);
		size_t		plen = pend ? (size_t) (pend - p) : strlen(p);

		if (plen == 1 && *p == '>')
			return tlen > 0;	/* one or more tokens left */
		if (!(plen == 1 && *p == '*') && (plen != tlen || strncmp(p, t, plen) != 0))
			return false;
		if (plen == 1 && *p == '*' && tlen == 0)
			return false;
		if (pend == NULL || tend == NULL)
			return pend == NULL && tend == NULL;
		t = tend + 1;
		p = pend + 1;
	}
}

/*
 * Raise 22023 unless pattern is a valid topic pattern: what subscribe(),
 * topic_matches(), replay() and retry_failed() say of a bad one.
 */
void
outbox_check_pattern(const char *pattern)
{
	const char *problem = outbox_pattern_problem(pattern);

	if (problem)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid topic pattern \"%s\"", pattern),
				 errdetail("%s.", problem),
				 errhint("Patterns are dot-separated tokens: \"*\" matches exactly one token, \">\" as the last token one or more, for example \"orders.*\" or \"orders.>\".")));
}

/* outbox.topic_matches(topic, pattern) */
Datum
outbox_topic_matches(PG_FUNCTION_ARGS)
{
	char	   *topic = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *pattern = text_to_cstring(PG_GETARG_TEXT_PP(1));

	outbox_check_pattern(pattern);
	PG_RETURN_BOOL(outbox_topic_matches_pattern(topic, pattern));
}

/*
 * A relation's cache entry was invalidated: forget the subscriptions when
 * it is their table's (or every relation's).
 */
static void
routing_relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == subscription_relid)
		loaded = false;
}

/* The subscriptions, in destination order. */
static OutboxStatement subscriptions_stmt = {
	.sql = "SELECT s.destination_id, s.pattern FROM outbox.subscription s "
	"ORDER BY s.destination_id, s.pattern",
	.nargs = 0, .argtypes = {InvalidOid},
	.read_only = true, .expected = SPI_OK_SELECT, .action = "read outbox subscriptions"
};

/*
 * Read the subscriptions, when the routing version changed since they were
 * read (or never were), or the current transaction changed them.  Runs in
 * the saving transaction.
 */
static void
load_subscriptions(void)
{
	uint64		version = outbox_shmem_routing_version();
	HASHCTL		ctl;
	uint64		i;
	uint64		nrows;
	OutboxStoreCall call;
	Snapshot	snapshot;

	if (loaded && version == loaded_version &&
		(!changed_in_transaction || loaded_command == GetCurrentCommandId(false)))
		return;

	if (routing_context == NULL)
		routing_context = AllocSetContextCreate(TopMemoryContext, "outbox routing",
												ALLOCSET_SMALL_SIZES);
	MemoryContextReset(routing_context);
	subscriptions = NULL;
	nsubscriptions = 0;
	topic_routes = NULL;
	loaded = false;

	/*
	 * Read them as the table's owner (saving roles have no privilege on
	 * it), in a restricted operation, with search_path pinned by the store
	 * call, on a snapshot taken now: after the version was read, so it sees
	 * every commit that bumped it.
	 */
	if (!relcache_callback_registered)
	{
		CacheRegisterRelcacheCallback(routing_relcache_callback, (Datum) 0);
		relcache_callback_registered = true;
	}
	subscription_relid = get_relname_relid("subscription", get_namespace_oid("outbox", false));
	outbox_store_connect_as_owner(&call);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	nrows = outbox_store_execute(&subscriptions_stmt, NULL, NULL, snapshot, 0);
	UnregisterSnapshot(snapshot);
	subscriptions = MemoryContextAlloc(routing_context,
									   sizeof(Subscription) * Max(nrows, 1));
	for (i = 0; i < nrows; i++)
	{
		bool		isnull;
		HeapTuple	tuple = SPI_tuptable->vals[i];
		Subscription *s = &subscriptions[nsubscriptions++];

		s->destination_id = DatumGetInt32(SPI_getbinval(tuple, SPI_tuptable->tupdesc, 1, &isnull));
		s->pattern = MemoryContextStrdup(routing_context,
										 SPI_getvalue(tuple, SPI_tuptable->tupdesc, 2));
	}
	outbox_store_finish_as_owner(&call);

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = OUTBOX_MAX_TOPIC_LEN + 1;
	ctl.entrysize = sizeof(TopicRoute);
	ctl.hcxt = routing_context;
	topic_routes = hash_create("outbox topic routes", 64, &ctl,
							   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	loaded_version = version;
	loaded_command = GetCurrentCommandId(false);
	loaded = true;
}

/*
 * The destinations a message of this topic goes to: their number, and
 * their ids in *destinations (in routing memory, valid until the next
 * call).  0 means the default destination.  Runs inside a transaction.
 */
int
outbox_route_topic(const char *topic, const int32 **destinations)
{
	TopicRoute *route;
	bool		found;

	*destinations = NULL;
	if (strlen(topic) > OUTBOX_MAX_TOPIC_LEN)
		return 0;				/* the table's check constraint refuses it */
	load_subscriptions();
	if (nsubscriptions == 0)
		return 0;

	if (hash_get_num_entries(topic_routes) >= MAX_CACHED_TOPICS)
	{
		loaded = false;
		load_subscriptions();
	}
	route = hash_search(topic_routes, topic, HASH_ENTER, &found);
	if (!found)
	{
		int			i;

		route->ndestinations = 0;
		route->destinations = MemoryContextAlloc(routing_context,
												 sizeof(int32) * nsubscriptions);
		for (i = 0; i < nsubscriptions; i++)
		{
			Subscription *s = &subscriptions[i];

			/* Subscriptions come sorted by destination: one entry each. */
			if (route->ndestinations > 0 &&
				route->destinations[route->ndestinations - 1] == s->destination_id)
				continue;
			if (outbox_topic_matches_pattern(topic, s->pattern))
				route->destinations[route->ndestinations++] = s->destination_id;
		}
	}
	*destinations = route->destinations;
	return route->ndestinations;
}

/*
 * A transaction that saved routed messages cannot be prepared: until it
 * commits it holds back the id horizon, and a prepared transaction would
 * hold it across restarts, where shared memory forgets it.  The end of any
 * transaction forgets that it saved some.
 */
static void
route_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_PRE_PREPARE && saved_routed)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot prepare a transaction that saved outbox messages routed to destinations"),
				 errhint("Commit it instead: the outbox itself is what replaces two-phase commit between the database and a broker.")));
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PREPARE)
	{
		saved_routed = false;
		if (changed_in_transaction)
		{
			/* what it saw of its own changes is gone, or the version moves */
			changed_in_transaction = false;
			loaded = false;
		}
	}
}

/* Register route_xact_callback, once per backend. */
static void
register_route_xact_callback(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(route_xact_callback, NULL);
		xact_callback_registered = true;
	}
}

/*
 * Note that the current transaction changes subscriptions (destination.c):
 * its later messages are routed by what it sees, and its end drops that
 * view.
 */
void
outbox_route_subscriptions_changed(void)
{
	register_route_xact_callback();
	changed_in_transaction = true;
	loaded = false;
}

/*
 * Note that the current transaction saved a message routed to these
 * destinations: its commit wakes their workers.
 */
static void
note_routed_message(const int32 *ids, int n)
{
	register_route_xact_callback();
	saved_routed = true;
	outbox_wake_destinations_at_commit(ids, n);
}

/*
 * Raise an error unless a routed message's id is one the current
 * transaction may route: not older than the first id it took from the
 * clock (which holds back the id horizon), and not newer than the newest
 * id handed out.  Ids from outbox.next_id() in this transaction always are.
 */
static void
check_routed_id(HeapTuple tuple, TupleDesc tupdesc)
{
	int			id_attno = SPI_fnumber(tupdesc, "id");
	bool		isnull;
	Datum		value;
	const unsigned char *b;
	uint64		id_ms = 0;
	uint64		first_ms = outbox_shmem_transaction_first_id_ms();
	int			i;

	if (id_attno <= 0)
		elog(ERROR, "outbox.messages lacks the id column");
	value = heap_getattr(tuple, id_attno, tupdesc, &isnull);
	if (isnull)
		return;					/* the primary key refuses it */
	b = DatumGetUUIDP(value)->data;
	for (i = 0; i < 6; i++)
		id_ms = (id_ms << 8) | b[i];
	if (first_ms != 0 && id_ms >= first_ms && id_ms <= outbox_shmem_id_clock_ms())
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("outbox message id %s cannot be routed to destinations",
					DatumGetCString(DirectFunctionCall1(uuid_out, value))),
			 errdetail("A message that subscriptions route must take its id from outbox.next_id() in the saving transaction: destinations read messages in id order, and could already have passed an older id, or wait for a newer one until the clock reaches it."),
			 errhint("Leave the id to its default.")));
}

/*
 * Raise an error when a message id is below the id floor: the nil UUID, a
 * UUIDv7 older than outbox's clock can make, or an id of version 0 or
 * above 8 that sorts before them.  UUIDs of the other versions (such as a
 * random UUIDv4) carry no time of outbox's clock and are taken as before.
 */
static void
check_id_floor(Datum value)
{
	const pg_uuid_t *id = DatumGetUUIDP(value);
	int			version = id->data[6] >> 4;
	pg_uuid_t	floor;

	if (version != 0 && version != 7 && version <= 8)
		return;
	outbox_shmem_id_floor(&floor);
	if (memcmp(id->data, floor.data, UUID_LEN) >= 0)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("outbox message id %s is older than any id outbox hands out",
					DatumGetCString(DirectFunctionCall1(uuid_out, value))),
			 errdetail("Message ids must not be below %s: messages go out in id order, and the stats take their age from it.",
					   DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&floor)))),
			 errhint("Leave the id to its default, outbox.next_id().")));
}

/*
 * Whether a new row's destinations column was given by the insert rather
 * than left to its default, '{}' (no message is routed to no destination).
 * A schema older than 0.3.1 has no default there: every row is routed.
 */
static bool
destinations_given(TupleDesc tupdesc, int destinations_attno, Datum value, bool isnull)
{
	ArrayType  *array;

	if (!TupleDescAttr(tupdesc, destinations_attno - 1)->atthasdef)
		return false;
	if (isnull)
		return true;
	array = DatumGetArrayTypeP(value);
	return ArrayGetNItems(ARR_NDIM(array), ARR_DIMS(array)) > 0;
}

/*
 * outbox.route(): BEFORE INSERT trigger on outbox.messages, setting the
 * destinations column from the topic (unless the insert gave it: see the
 * top of this file), refusing ids below the floor, and counting the row
 * toward the backlog.
 */
Datum
outbox_route(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	tuple;
	TupleDesc	tupdesc;
	int			topic_attno;
	int			destinations_attno;
	int			id_attno;
	bool		isnull;
	Datum		topic_datum;
	Datum		id_datum;
	bool		id_isnull;
	bool		destinations_isnull;
	const int32 *ids;
	int			n;
	Datum		value;
	bool		replace_null;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("outbox.route() must run as a BEFORE INSERT FOR EACH ROW trigger")));

	tuple = trigdata->tg_trigtuple;
	tupdesc = RelationGetDescr(trigdata->tg_relation);
	topic_attno = SPI_fnumber(tupdesc, "topic");
	destinations_attno = SPI_fnumber(tupdesc, "destinations");
	id_attno = SPI_fnumber(tupdesc, "id");
	if (topic_attno <= 0 || destinations_attno <= 0 || id_attno <= 0)
		elog(ERROR, "outbox.messages lacks the id, topic or destinations column");

	/* Destinations given by a superuser (a restore): taken as it is. */
	value = heap_getattr(tuple, destinations_attno, tupdesc, &destinations_isnull);
	if (destinations_given(tupdesc, destinations_attno, value, destinations_isnull) &&
		superuser())
		return PointerGetDatum(tuple);

	id_datum = heap_getattr(tuple, id_attno, tupdesc, &id_isnull);
	/* Refused once the backlog is full (outbox.max_backlog); counted else. */
	if (!id_isnull && outbox_take_handed_out_id(DatumGetUUIDP(id_datum)))
		outbox_shmem_admit_message();

	topic_datum = heap_getattr(tuple, topic_attno, tupdesc, &isnull);
	if (isnull)
		n = 0;					/* the NOT NULL constraint refuses it */
	else
		n = outbox_route_topic(TextDatumGetCString(topic_datum), &ids);

	/* A routed message's id is checked more strictly below. */
	if (n == 0 && !id_isnull)	/* (a NULL id: the primary key refuses it) */
		check_id_floor(id_datum);

	if (n == 0 && destinations_isnull)
		return PointerGetDatum(tuple);	/* (a schema older than 0.3.1) */

	if (n == 0)
	{
		value = (Datum) 0;
		replace_null = true;
	}
	else
	{
		Datum	   *elems = palloc(sizeof(Datum) * n);
		int			i;

		check_routed_id(tuple, tupdesc);
		for (i = 0; i < n; i++)
			elems[i] = Int32GetDatum(ids[i]);
		value = PointerGetDatum(construct_array(elems, n, INT4OID, sizeof(int32),
												true, TYPALIGN_INT));
		replace_null = false;
		note_routed_message(ids, n);
	}
	return PointerGetDatum(heap_modify_tuple_by_cols(tuple, tupdesc, 1,
													 &destinations_attno, &value,
													 &replace_null));
}
