/*-------------------------------------------------------------------------
 *
 * function.c
 *		The "function" publisher: delivers each message by calling a SQL
 *		function inside the database.
 *
 * With outbox.publisher = 'function' and outbox.publisher_function =
 * 'schema.fn' (or a destination's "function" option), the worker calls
 * schema.fn(m outbox.messages) once per message, in the transaction that
 * claims and marks the batch, so what the function does (fan-out into
 * other tables, another queue, an audit log) commits together with the
 * mark.  Each call runs in its own subtransaction: an ERROR raised by the
 * function undoes only that call and becomes a failed attempt carrying the
 * error's message.
 *
 * The function receives the row as claimed: status is still 'pending' and
 * retries counts the failed attempts so far.  Its result is ignored.
 *
 * The worker's role is usually a superuser, so the call is built to give
 * nobody else that role's power (CVE-2018-1058's lesson): the name must be
 * schema-qualified; it is resolved to an OID and called through fmgr, not
 * through SQL text; the call runs as the function's owner, in a restricted
 * operation, with search_path pinned to pg_catalog (a function's own SET
 * search_path still applies).
 *
 * The function is looked up before each batch, so creating, replacing or
 * dropping it takes effect at once.  When it cannot be called (not set,
 * missing, wrong signature, not a plain function, no EXECUTE privilege for
 * the worker's role), the problem is logged once and messages stay
 * pending, untouched.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "parser/parse_func.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/varlena.h"

#include "builtin.h"
#include "pg_compat.h"

/* outbox.publisher_function (reload); a destination's "function" option */
static char *setting_function = NULL;
static char *publisher_function = NULL;

/* The statement reading a message's row, prepared once. */
static SPIPlanPtr row_plan = NULL;

/* The last problem logged, to log each one once. */
static OutboxProblem config_problem =
	OUTBOX_PROBLEM_INIT("function", ERRCODE_UNDEFINED_FUNCTION);

/* What a name that is not schema-qualified is told. */
#define FUNCTION_NAME_DETAIL \
	"The value must be a schema-qualified function name, such as \"myschema.deliver\"."

/*
 * Why a function name is not schema.name, or NULL.  An unqualified name
 * would be resolved on a search_path, and whoever may create a schema on
 * it could put a function of that name first.
 */
static char *
function_name_problem(const char *value)
{
	char	   *rawname = pstrdup(value);
	List	   *parts = NIL;
	bool		ok;

	ok = SplitIdentifierString(rawname, '.', &parts) && list_length(parts) == 2;
	list_free(parts);
	pfree(rawname);
	return ok ? NULL : pstrdup(FUNCTION_NAME_DETAIL);
}

/* Check outbox.publisher_function: empty, or a schema-qualified name. */
static bool
check_publisher_function(char **newval, void **extra, GucSource source)
{
	char	   *problem;

	if (**newval == '\0')
		return true;
	problem = function_name_problem(*newval);
	if (problem != NULL)
		GUC_check_errdetail("%s", problem);
	return problem == NULL;
}

/*
 * The function named by outbox.publisher_function (or the destination's
 * "function" option), taking one outbox.messages argument, or InvalidOid
 * after logging why it cannot be used.  The name is schema-qualified, so
 * no search_path takes part in finding it.  Runs in a transaction.
 */
static Oid
lookup_publisher_function(void)
{
	static const char *signature_hint =
	"Create it as CREATE FUNCTION <schema>.<name>(m outbox.messages) RETURNS void ..., or set the function to such a function.";
	Oid			schema;
	Oid			messages_relid;
	Oid			argtype;
	List	   *names;
	Oid			fn;

	if (publisher_function[0] == '\0')
	{
		OutboxPublisherReportProblem(&config_problem, "outbox.publisher_function is not set", signature_hint);
		return InvalidOid;
	}
	if (function_name_problem(publisher_function) != NULL)
	{
		/* A destination of 0.3.0 may hold a name its check let through. */
		OutboxPublisherReportProblem(&config_problem,
									 psprintf("function name \"%s\" is not schema-qualified",
											  publisher_function),
									 "Name the function with its schema, such as \"myschema.deliver\" (outbox.alter_destination, or outbox.publisher_function).");
		return InvalidOid;
	}

	schema = get_namespace_oid("outbox", false);
	messages_relid = get_relname_relid("messages", schema);
	argtype = OidIsValid(messages_relid) ? get_rel_type_id(messages_relid) : InvalidOid;
	if (!OidIsValid(argtype))
		elog(ERROR, "type outbox.messages does not exist");

	names = stringToQualifiedNameList(publisher_function, NULL);
	fn = LookupFuncName(names, 1, &argtype, true);
	if (!OidIsValid(fn))
	{
		char	   *problem;
		int			fgc_flags;

		if (FuncnameGetCandidates(names, -1, NIL, false, false, false, true,
								  &fgc_flags) != NULL)
			problem = psprintf("function %s exists, but not with the signature %s(outbox.messages)",
							   publisher_function, publisher_function);
		else
			problem = psprintf("function %s(outbox.messages) does not exist",
							   publisher_function);
		OutboxPublisherReportProblem(&config_problem, problem, signature_hint);
		return InvalidOid;
	}
	if (get_func_prokind(fn) != PROKIND_FUNCTION || get_func_retset(fn))
	{
		OutboxPublisherReportProblem(&config_problem, psprintf("%s(outbox.messages) is not a plain function (procedures, aggregates, window functions and set-returning functions cannot deliver messages)",
															   publisher_function),
									 signature_hint);
		return InvalidOid;
	}
	if (object_aclcheck(ProcedureRelationId, fn, GetUserId(), ACL_EXECUTE) != ACLCHECK_OK)
	{
		OutboxPublisherReportProblem(&config_problem, psprintf("the outbox worker's role \"%s\" may not execute function %s(outbox.messages)",
															   GetUserNameFromId(GetUserId(), false),
															   publisher_function),
									 "GRANT EXECUTE on the function to the role in outbox.role.");
		return InvalidOid;
	}

	if (config_problem.reported)
	{
		ereport(LOG,
				(errmsg("outbox function publisher: delivering through %s(outbox.messages)",
						publisher_function)));
		OutboxPublisherClearProblem(&config_problem);
	}
	return fn;
}

/*
 * The statement "SELECT m FROM outbox.messages m WHERE m.id = $1", whose
 * operator is named with its schema: it runs as the worker's role.
 */
static SPIPlanPtr
row_statement(void)
{
	Oid			argtypes[1] = {UUIDOID};
	SPIPlanPtr	plan;

	if (row_plan != NULL)
		return row_plan;
	plan = SPI_prepare("SELECT m FROM outbox.messages m WHERE m.id OPERATOR(pg_catalog.=) $1",
					   1, argtypes);
	if (plan == NULL)
		elog(ERROR, "could not prepare the outbox function publisher's read: %s",
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	row_plan = plan;
	return plan;
}

/*
 * Call the function (flinfo, owned by owner; fcinfo has room for its one
 * argument) on one message's row as its
 * owner, in a restricted operation with search_path pinned, inside a
 * subtransaction: the function runs with no more privileges than its
 * owner has, so whoever may replace it (its owner, the owner of its
 * schema) gains nothing from the worker's role, and the settings it
 * changes end with the call.  An ERROR becomes a failed attempt whose
 * error is allocated in context (the caller's: not SPI's, which SPI
 * calls leave current and SPI_finish frees).  A message whose row is
 * gone has nothing left to deliver.
 */
static void
call_function(FmgrInfo *flinfo, FunctionCallInfo fcinfo, Oid owner,
			  const OutboxMessage *message, OutboxPublishResult *result,
			  MemoryContext context)
{
	ResourceOwner resowner = CurrentResourceOwner;
	Datum		arg = UUIDPGetDatum(&message->id);
	Oid			saved_userid;
	int			saved_sec_context;

	GetUserIdAndSecContext(&saved_userid, &saved_sec_context);
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(context);
	PG_TRY();
	{
		int			rc = SPI_execute_plan(row_statement(), &arg, NULL, false, 1);

		if (rc != SPI_OK_SELECT)
			elog(ERROR, "could not read the outbox message to deliver: %s",
				 SPI_result_code_string(rc));
		if (SPI_processed == 1)
		{
			bool		isnull;
			int			guc_level;

			InitFunctionCallInfoData(*fcinfo, flinfo, 1, InvalidOid, NULL, NULL);
			fcinfo->args[0].value = SPI_getbinval(SPI_tuptable->vals[0],
												  SPI_tuptable->tupdesc, 1, &isnull);
			fcinfo->args[0].isnull = isnull;

			guc_level = NewGUCNestLevel();
			(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
									 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
			SetUserIdAndSecContext(owner, saved_sec_context | SECURITY_LOCAL_USERID_CHANGE |
								   SECURITY_RESTRICTED_OPERATION);
			PushActiveSnapshot(GetTransactionSnapshot());
			(void) FunctionCallInvoke(fcinfo);
			PopActiveSnapshot();
			SetUserIdAndSecContext(saved_userid, saved_sec_context);
			AtEOXact_GUC(true, guc_level);
		}
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(context);
		CurrentResourceOwner = resowner;
		result->status = OUTBOX_PUBLISH_OK;
	}
	PG_CATCH();
	{
		ErrorData  *error;

		/* The subtransaction's abort restores the role and the settings. */
		MemoryContextSwitchTo(context);
		error = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(context);
		CurrentResourceOwner = resowner;

		result->status = OUTBOX_PUBLISH_RETRY;
		result->error = pstrdup(error->message ? error->message : "publisher function failed");
		FreeErrorData(error);
	}
	PG_END_TRY();
}

/* Call the function on each message, each call in its own subtransaction. */
static void
function_publish(OutboxMessage *messages, int nmessages, OutboxPublishResult *results)
{
	MemoryContext context = CurrentMemoryContext;
	FmgrInfo	flinfo;
	FunctionCallInfo fcinfo;
	Oid			fn;
	Oid			owner;
	HeapTuple	proc;
	int			i;

	publisher_function = OutboxOptionString("function");
	fn = lookup_publisher_function();
	if (!OidIsValid(fn))
	{
		for (i = 0; i < nmessages; i++)
			results[i].status = OUTBOX_PUBLISH_SKIPPED;
		return;
	}
	proc = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	if (!HeapTupleIsValid(proc))
		elog(ERROR, "cache lookup failed for function %u", fn);
	owner = ((Form_pg_proc) GETSTRUCT(proc))->proowner;
	ReleaseSysCache(proc);
	fmgr_info(fn, &flinfo);
	fcinfo = palloc0(SizeForFunctionCallInfo(1));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	MemoryContextSwitchTo(context);
	for (i = 0; i < nmessages; i++)
		call_function(&flinfo, fcinfo, owner, &messages[i], &results[i], context);
	SPI_finish();
	MemoryContextSwitchTo(context);
}

/* Forget the prepared read. */
static void
function_shutdown(void)
{
	if (row_plan != NULL)
		SPI_freeplan(row_plan);
	row_plan = NULL;
}

/* A destination's option; it defaults to outbox.publisher_function. */
static const OutboxOption function_options[] = {
	{.name = "function", .type = OUTBOX_OPTION_STRING, .setting = "outbox.publisher_function",
	.required = true, .check = function_name_problem},
};

static const OutboxPublisher function_publisher = {
	.api_version = OUTBOX_PUBLISHER_API_VERSION,
	.name = "function",
	.in_transaction = true,
	.check_topic = NULL,
	.init = NULL,
	.publish = function_publish,
	.reload = NULL,
	.shutdown = function_shutdown,
	.options = function_options,
	.noptions = lengthof(function_options),
};

/* Define the function publisher's setting and register it. */
void
outbox_register_function_publisher(void)
{
	DefineCustomStringVariable("outbox.publisher_function",
							   "Function the function publisher calls for each message.",
							   "A function taking one outbox.messages argument, such as \"myschema.deliver\".",
							   &setting_function,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_publisher_function, NULL, NULL);

	OutboxRegisterPublisher(&function_publisher);
}
