/*-------------------------------------------------------------------------
 *
 * outbox.c
 *		Module start: the settings, the hooks, the launcher's registration.
 *
 * Everything that must exist in every process of the server starts here:
 * the outbox.* settings of the relay (each publisher defines its own), the
 * built-in publishers, the shared-memory hooks (shmem.c owns what they
 * create), and the utility hook that lets DROP DATABASE stop a database's
 * relay worker instead of failing on it.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>
#include <signal.h>

#include "fmgr.h"
#include "access/xact.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/ipc.h"
#include "tcop/utility.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "launcher.h"
#include "outbox.h"
#include "pg_compat.h"
#include "publishers/builtin.h"
#include "shmem.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* Settings; README.md documents each one with its default. */
char	   *outbox_databases = NULL;
char	   *outbox_role = NULL;
char	   *outbox_publisher_name = NULL;
int			outbox_poll_interval = 1000;
int			outbox_batch_size = 100;
int			outbox_batch_max_bytes = 16 * 1024;
int			outbox_max_retries = 5;
int			outbox_retry_backoff = 1000;
int			outbox_retry_backoff_max = 300000;
int			outbox_processing_timeout = 60000;
int			outbox_retention = 7 * 24 * 3600;
int			outbox_ordering = OUTBOX_ORDERING_KEY;
bool		outbox_enabled = true;
int			outbox_destination_disable_after = 5 * 24 * 3600;
int			outbox_max_backlog = 0;

static const struct config_enum_entry ordering_options[] = {
	{"key", OUTBOX_ORDERING_KEY, false},
	{"none", OUTBOX_ORDERING_NONE, false},
	{NULL, 0, false}
};

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static ProcessUtility_hook_type prev_process_utility_hook = NULL;

/*
 * How long DROP DATABASE (or ALTER DATABASE ... RENAME) waits for the
 * database's workers to exit, and how long the launcher may start none at
 * most (the statement lifts the pause when it ends, however it ends).
 */
#define DROP_DATABASE_WAIT_MS	5000
#define DROP_DATABASE_PAUSE_MS	60000

/*
 * Check outbox.databases: a list of distinct database names, each shorter
 * than NAMEDATALEN, at most OUTBOX_MAX_DATABASES of them.
 */
static bool
check_databases(char **newval, void **extra, GucSource source)
{
	char	   *rawstring = pstrdup(*newval);
	char	   *rawcopy = pstrdup(*newval);
	List	   *names = NIL;
	List	   *raw_names = NIL;
	ListCell   *lc;
	bool		ok = true;

	/* SplitIdentifierString truncates long names: measure them untruncated. */
	if (!SplitIdentifierString(rawstring, ',', &names) ||
		!SplitGUCList(rawcopy, ',', &raw_names))
	{
		GUC_check_errdetail("List syntax is invalid.");
		ok = false;
	}
	else if (list_length(names) > OUTBOX_MAX_DATABASES)
	{
		GUC_check_errdetail("At most %d databases can be relayed.",
							OUTBOX_MAX_DATABASES);
		ok = false;
	}
	else
	{
		foreach(lc, raw_names)
		{
			if (strlen((char *) lfirst(lc)) >= NAMEDATALEN)
			{
				GUC_check_errdetail("Database name \"%s\" is too long.",
									(char *) lfirst(lc));
				ok = false;
				break;
			}
		}
		foreach(lc, names)
		{
			ListCell   *other;

			for_each_cell(other, names, lnext(names, lc))
			{
				if (ok && strcmp((char *) lfirst(lc), (char *) lfirst(other)) == 0)
				{
					GUC_check_errdetail("Database \"%s\" is listed twice.",
										(char *) lfirst(lc));
					ok = false;
				}
			}
		}
	}
	list_free(names);
	list_free(raw_names);
	pfree(rawstring);
	pfree(rawcopy);
	return ok;
}

/*
 * Check outbox.publisher: a plain lower-case name.  Whether a publisher of
 * that name is registered can only be known in the worker, since a
 * publisher may come from a library loaded after this one.
 */
static bool
check_publisher(char **newval, void **extra, GucSource source)
{
	const char *p;

	if (**newval == '\0')
	{
		GUC_check_errdetail("The publisher name must not be empty.");
		return false;
	}
	for (p = *newval; *p; p++)
	{
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
		{
			GUC_check_errdetail("Publisher names consist of lower-case letters, digits and underscores.");
			return false;
		}
	}
	return true;
}

/*
 * Define the settings that need a restart.  Only while preloading: a
 * PGC_POSTMASTER setting cannot be created in a running server, and
 * without preloading there are no workers for them to configure anyway.
 */
static void
define_startup_settings(void)
{
	DefineCustomStringVariable("outbox.databases",
							   "Databases whose outbox the relay workers publish.",
							   "Comma-separated list of database names.",
							   &outbox_databases,
							   "postgres",
							   PGC_POSTMASTER,
							   GUC_LIST_INPUT,
							   check_databases, NULL, NULL);

	DefineCustomStringVariable("outbox.role",
							   "Role the relay workers connect as.",
							   "Empty means the bootstrap superuser.",
							   &outbox_role,
							   "",
							   PGC_POSTMASTER,
							   0,
							   NULL, NULL, NULL);
}

/* Define the settings that take effect on reload. */
static void
define_settings(void)
{
	DefineCustomStringVariable("outbox.publisher",
							   "Name of the publisher that delivers messages.",
							   NULL,
							   &outbox_publisher_name,
							   "notify",
							   PGC_SIGHUP,
							   0,
							   check_publisher, NULL, NULL);

	DefineCustomIntVariable("outbox.poll_interval",
							"Longest time the worker sleeps when it is not woken.",
							"Commits that save messages wake the worker at once; this is the fallback.",
							&outbox_poll_interval,
							1000, 10, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("outbox.batch_size",
							"Most messages claimed and published at once.",
							NULL,
							&outbox_batch_size,
							100, 1, 10000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("outbox.batch_max_bytes",
							"Payload bytes after which a batch takes no more messages.",
							"A batch always takes at least one message, however large.",
							&outbox_batch_max_bytes,
							16 * 1024, 64, 1024 * 1024,
							PGC_SIGHUP,
							GUC_UNIT_KB,
							NULL, NULL, NULL);

	DefineCustomIntVariable("outbox.max_retries",
							"Failed attempts after which a message becomes failed.",
							NULL,
							&outbox_max_retries,
							5, 0, 1000000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("outbox.retry_backoff",
							"Delay before the first retry; it doubles with each further one.",
							NULL,
							&outbox_retry_backoff,
							1000, 1, 24 * 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("outbox.retry_backoff_max",
							"Longest delay between two attempts.",
							NULL,
							&outbox_retry_backoff_max,
							300000, 1, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("outbox.processing_timeout",
							"Time after which a claimed message that was not marked returns to pending.",
							NULL,
							&outbox_processing_timeout,
							60000, 1000, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("outbox.retention",
							"Age after which processed messages are deleted; -1 keeps them forever.",
							NULL,
							&outbox_retention,
							7 * 24 * 3600, -1, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomEnumVariable("outbox.ordering",
							 "Whether messages of one key are published strictly in order.",
							 "\"key\" holds a message back while an earlier one of its key is pending; \"none\" does not.",
							 &outbox_ordering,
							 OUTBOX_ORDERING_KEY,
							 ordering_options,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("outbox.destination_disable_after",
							"Time after which a destination whose every attempt failed is disabled; 0 never disables.",
							NULL,
							&outbox_destination_disable_after,
							5 * 24 * 3600, 0, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("outbox.max_backlog",
							"Unfinished messages after which saving is refused; 0 never refuses.",
							"Checked against a counter, approximately; see README.md.",
							&outbox_max_backlog,
							0, 0, INT_MAX,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("outbox.enabled",
							 "Whether the relay workers publish; off pauses them.",
							 NULL,
							 &outbox_enabled,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);
}

/*
 * Ask for the shared memory the extension needs.  This runs in the
 * postmaster once every library of shared_preload_libraries is loaded, so
 * it is also where the "outbox." prefix is reserved: plug-in publishers
 * (outbox_kafka, ...) load after outbox and define outbox.* settings of
 * their own, whose values in postgresql.conf must survive until then.
 */
static void
outbox_shmem_request_hook(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	outbox_shmem_request();
	MarkGUCPrefixReserved("outbox");
}

/* Create or attach to the shared state. */
static void
outbox_shmem_startup_hook(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	outbox_shmem_startup();
}

/*
 * Before DROP DATABASE (or ALTER DATABASE ... RENAME) runs, stop the
 * workers connected to that database (its main worker and its
 * destinations' workers) and keep the launcher from starting them again
 * for a while, so that the statement does not fail with "database is
 * being accessed by other users".
 */
static void
stop_workers_for_drop(const char *dbname)
{
	TimestampTz pause_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														  DROP_DATABASE_PAUSE_MS);
	int			waited_ms;

	if (outbox_shmem_stop_database_workers(dbname, pause_until) == 0)
		return;
	for (waited_ms = 0; waited_ms < DROP_DATABASE_WAIT_MS; waited_ms += 10)
	{
		if (!outbox_shmem_database_workers_running(dbname))
			break;
		CHECK_FOR_INTERRUPTS();
		pg_usleep(10 * 1000L);
	}
}

/*
 * The database a statement needs to itself (no other session connected):
 * DROP DATABASE's, and ALTER DATABASE ... RENAME's; NULL for any other.
 */
static const char *
database_needed_alone(Node *statement)
{
	if (IsA(statement, DropdbStmt))
		return ((DropdbStmt *) statement)->dbname;
	if (IsA(statement, RenameStmt) && ((RenameStmt *) statement)->renameType == OBJECT_DATABASE)
		return ((RenameStmt *) statement)->subname;
	return NULL;
}

/*
 * Whether such a statement would get as far as the connections check: run
 * at top level outside a transaction block (where DROP DATABASE must run
 * anyway; a RENAME inside one is left to fail as before, since its
 * workers could be let back only once it commits), by the owner of an
 * existing database other than the current one.  Anything else fails on
 * its own, and must not stop a worker on the way.
 */
static bool
database_statement_would_proceed(const char *dbname, ProcessUtilityContext context)
{
	Oid			dboid;

	if (context != PROCESS_UTILITY_TOPLEVEL || IsTransactionBlock())
		return false;
	dboid = get_database_oid(dbname, true);
	if (!OidIsValid(dboid) || dboid == MyDatabaseId)
		return false;
	return object_ownercheck(DatabaseRelationId, dboid, GetUserId());
}

/*
 * Utility hook: make way for DROP DATABASE or ALTER DATABASE ... RENAME
 * of a relayed database.
 */
static void
outbox_process_utility(PlannedStmt *pstmt, const char *queryString,
					   bool readOnlyTree, ProcessUtilityContext context,
					   ParamListInfo params, QueryEnvironment *queryEnv,
					   DestReceiver *dest, QueryCompletion *qc)
{
	const char *volatile alone_db = database_needed_alone(pstmt->utilityStmt);

	if (alone_db != NULL && database_statement_would_proceed(alone_db, context))
		stop_workers_for_drop(alone_db);
	else
		alone_db = NULL;

	PG_TRY();
	{
		if (prev_process_utility_hook)
			prev_process_utility_hook(pstmt, queryString, readOnlyTree, context,
									  params, queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
									params, queryEnv, dest, qc);
	}
	PG_CATCH();
	{
		/* The statement failed: the database stays, so should its workers. */
		if (alone_db)
			outbox_shmem_resume_worker(alone_db);
		PG_RE_THROW();
	}
	PG_END_TRY();

	/*
	 * The database is gone, or has another name: the launcher finds the
	 * listed name missing, and a database created (or renamed) again under
	 * it gets its workers with its first commit or the launcher's recheck.
	 */
	if (alone_db)
		outbox_shmem_resume_worker(alone_db);
}

/*
 * Module load: define the settings in every process; when preloaded, also
 * set up shared memory, the utility hook, the launcher and the built-in
 * publishers.
 */
void
_PG_init(void)
{
	if (process_shared_preload_libraries_in_progress)
		define_startup_settings();
	define_settings();
	outbox_register_builtin_publishers();

	if (!process_shared_preload_libraries_in_progress)
	{
		/* Loaded into one session: no plug-in can follow. */
		MarkGUCPrefixReserved("outbox");
		return;
	}

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = outbox_shmem_request_hook;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = outbox_shmem_startup_hook;
	prev_process_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = outbox_process_utility;

	outbox_register_launcher();
}
