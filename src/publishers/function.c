/*-------------------------------------------------------------------------
 *
 * function.c
 *		The "function" publisher: delivers each message by calling a SQL
 *		function inside the database.
 *
 * With outbox.publisher = 'function' and outbox.publisher_function =
 * 'schema.fn', the worker calls schema.fn(m outbox.messages) once per
 * message, in the transaction that claims and marks the batch, so what the
 * function does (fan-out into other tables, another queue, an audit log)
 * commits together with the mark.  Each call runs in its own
 * subtransaction: an ERROR raised by the function undoes only that call and
 * becomes a failed attempt carrying the error's message.
 *
 * The function receives the row as claimed: status is still 'pending' and
 * retries counts the failed attempts so far.  Its result is ignored.  It
 * runs as the worker's role (outbox.role).
 *
 * The function is looked up before each batch, so creating, replacing or
 * dropping it takes effect at once.  When it cannot be called (not set,
 * missing, wrong signature, not a plain function, no EXECUTE privilege),
 * the problem is logged once and messages stay pending, untouched.
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
#include "utils/varlena.h"

#include "builtin.h"
#include "pg_compat.h"

/* outbox.publisher_function (reload); a destination's "function" option */
static char *setting_function = NULL;
static char *publisher_function = NULL;

/* The statement calling the function, kept while it stays the same. */
static SPIPlanPtr call_plan = NULL;
static Oid	call_plan_function = InvalidOid;

/* The last problem logged, to log each one once. */
static OutboxProblem config_problem =
	OUTBOX_PROBLEM_INIT("function", ERRCODE_UNDEFINED_FUNCTION);

/*
 * Check outbox.publisher_function: empty, or a function name, optionally
 * schema-qualified, in SQL identifier syntax.
 */
static bool
check_publisher_function(char **newval, void **extra, GucSource source)
{
	char	   *rawname;
	List	   *parts = NIL;
	bool		ok;

	if (**newval == '\0')
		return true;
	rawname = pstrdup(*newval);
	ok = SplitIdentifierString(rawname, '.', &parts) &&
		list_length(parts) >= 1 && list_length(parts) <= 2;
	list_free(parts);
	pfree(rawname);
	if (!ok)
		GUC_check_errdetail("The value must be a function name, such as \"myschema.deliver\".");
	return ok;
}

/*
 * The function named by outbox.publisher_function, taking one
 * outbox.messages argument, or InvalidOid after logging why it cannot be
 * used.  Runs in a transaction.
 */
static Oid
lookup_publisher_function(void)
{
	static const char *signature_hint =
	"Create it as CREATE FUNCTION <name>(m outbox.messages) RETURNS void ..., or set outbox.publisher_function to such a function and reload.";
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

	schema = get_namespace_oid("outbox", false);
	messages_relid = get_relname_relid("messages", schema);
	argtype = OidIsValid(messages_relid) ? get_rel_type_id(messages_relid) : InvalidOid;
	if (!OidIsValid(argtype))
		elog(ERROR, "type outbox.messages does not exist");

	/* The check hook made sure that the name parses. */
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
	if (get_func_prokind(fn) != PROKIND_FUNCTION)
	{
		OutboxPublisherReportProblem(&config_problem, psprintf("%s(outbox.messages) is not a plain function (procedures, aggregates and window functions cannot deliver messages)",
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
 * The statement "SELECT schema.fn(m) FROM outbox.messages m WHERE m.id =
 * $1", prepared for function fn and kept until another function is used.
 */
static SPIPlanPtr
call_statement(Oid fn)
{
	char	   *sql;
	Oid			argtypes[1] = {UUIDOID};
	SPIPlanPtr	plan;

	if (call_plan != NULL && call_plan_function == fn)
		return call_plan;
	if (call_plan != NULL)
		SPI_freeplan(call_plan);
	call_plan = NULL;

	sql = psprintf("SELECT %s(m) FROM outbox.messages m WHERE m.id = $1",
				   quote_qualified_identifier(get_namespace_name(get_func_namespace(fn)),
											  get_func_name(fn)));
	plan = SPI_prepare(sql, 1, argtypes);
	if (plan == NULL)
		elog(ERROR, "could not prepare the call of %s: %s", sql,
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	call_plan = plan;
	call_plan_function = fn;
	pfree(sql);
	return plan;
}

/*
 * Call the function on one message in a subtransaction, turning an ERROR
 * into a failed attempt whose error is allocated in context (the caller's:
 * not SPI's, which SPI calls leave current and SPI_finish frees).
 */
static void
call_function(SPIPlanPtr plan, const OutboxMessage *message, OutboxPublishResult *result,
			  MemoryContext context)
{
	ResourceOwner owner = CurrentResourceOwner;
	Datum		arg = UUIDPGetDatum(&message->id);

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(context);
	PG_TRY();
	{
		int			rc = SPI_execute_plan(plan, &arg, NULL, false, 0);

		if (rc < 0)
			elog(ERROR, "could not call the outbox publisher function: %s",
				 SPI_result_code_string(rc));
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(context);
		CurrentResourceOwner = owner;
		result->status = OUTBOX_PUBLISH_OK;
	}
	PG_CATCH();
	{
		ErrorData  *error;

		MemoryContextSwitchTo(context);
		error = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(context);
		CurrentResourceOwner = owner;

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
	SPIPlanPtr	plan;
	Oid			fn;
	int			i;

	publisher_function = OutboxOptionString("function");
	fn = lookup_publisher_function();
	if (!OidIsValid(fn))
	{
		for (i = 0; i < nmessages; i++)
			results[i].status = OUTBOX_PUBLISH_SKIPPED;
		return;
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	MemoryContextSwitchTo(context);
	plan = call_statement(fn);
	MemoryContextSwitchTo(context);
	for (i = 0; i < nmessages; i++)
		call_function(plan, &messages[i], &results[i], context);
	SPI_finish();
	MemoryContextSwitchTo(context);
}

static void
function_shutdown(void)
{
	if (call_plan != NULL)
		SPI_freeplan(call_plan);
	call_plan = NULL;
	call_plan_function = InvalidOid;
}

/* Why a destination's function is not a function name, or NULL. */
static char *
function_name_problem(const char *value)
{
	char	   *copy = pstrdup(value);
	char	   *rawname = copy;
	List	   *parts = NIL;
	bool		ok;

	ok = SplitIdentifierString(rawname, '.', &parts) &&
		list_length(parts) >= 1 && list_length(parts) <= 2;
	list_free(parts);
	pfree(copy);
	return ok ? NULL : pstrdup("The value must be a function name, such as \"myschema.deliver\".");
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
