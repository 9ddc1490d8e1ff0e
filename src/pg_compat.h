/*-------------------------------------------------------------------------
 *
 * pg_compat.h
 *		What differs between the PostgreSQL versions outbox builds against
 *		(15 to 19), in one place.
 *
 * The code is written against the newest API; for older servers this
 * header provides the newer calls in terms of the older ones (a macro of the
 * newer signature calling an inline function that calls the older one).  A
 * call site needs no #if: it includes this header (after postgres.h) and
 * calls the newest spelling.  When support for a version is dropped, its
 * section goes.
 *
 * src/pg_compat.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_PG_COMPAT_H
#define OUTBOX_PG_COMPAT_H

#include "catalog/namespace.h"
#include "catalog/pg_database.h"
#include "catalog/pg_proc.h"
#include "common/base64.h"
#include "common/jsonapi.h"
#include "utils/acl.h"
#include "utils/regproc.h"

#if PG_VERSION_NUM < 150000
#error "outbox needs PostgreSQL 15 or later"
#endif

/*
 * PostgreSQL 16 replaced the per-class ACL and ownership checks
 * (pg_proc_aclcheck, pg_database_ownercheck, ...) with object_aclcheck()
 * and object_ownercheck(), and gave stringToQualifiedNameList() a soft-error
 * context.  Only the classes outbox checks are mapped.
 */
#if PG_VERSION_NUM < 160000

/* object_aclcheck() of 16 for functions, on 15. */
static inline AclResult
object_aclcheck(Oid classid, Oid objectid, Oid roleid, AclMode mode)
{
	if (classid != ProcedureRelationId)
		elog(ERROR, "outbox pg_compat.h: object_aclcheck() of class %u is not mapped", classid);
	return pg_proc_aclcheck(objectid, roleid, mode);
}

/* object_ownercheck() of 16 for databases, on 15. */
static inline bool
object_ownercheck(Oid classid, Oid objectid, Oid roleid)
{
	if (classid != DatabaseRelationId)
		elog(ERROR, "outbox pg_compat.h: object_ownercheck() of class %u is not mapped", classid);
	return pg_database_ownercheck(objectid, roleid);
}

/* 15 has no soft errors here: the string must parse (or it raises). */
static inline List *
outbox_compat_stringToQualifiedNameList(const char *string)
{
	return stringToQualifiedNameList(string);
}
#define stringToQualifiedNameList(string, escontext) \
	outbox_compat_stringToQualifiedNameList(string)

#endif							/* PG_VERSION_NUM < 160000 */

/*
 * PostgreSQL 17 lets the caller of makeJsonLexContextCstringLen() pass a
 * context to fill in; NULL (the only value outbox passes) allocates one, as
 * older versions always do.
 */
#if PG_VERSION_NUM < 170000
/* ... and frees it with freeJsonLexContext(), which 15 and 16 lack. */
#define freeJsonLexContext(lex) pfree(lex)

static inline JsonLexContext *
outbox_compat_makeJsonLexContextCstringLen(char *json, int len, int encoding,
										   bool need_escapes)
{
	return makeJsonLexContextCstringLen(json, len, encoding, need_escapes);
}
#define makeJsonLexContextCstringLen(lex, json, len, encoding, need_escapes) \
	(AssertMacro((lex) == NULL), \
	 outbox_compat_makeJsonLexContextCstringLen(json, len, encoding, need_escapes))
#endif

/*
 * PostgreSQL 18 types the binary side of base64 as uint8; before, it was
 * char.  These take any bytes.
 */
#if PG_VERSION_NUM >= 180000
typedef uint8 outbox_b64_byte;
#else
typedef char outbox_b64_byte;
#endif

/* Base64 of len bytes at src into dst (dstlen bytes); -1 when it does not fit. */
static inline int
outbox_b64_encode(const void *src, int len, char *dst, int dstlen)
{
	return pg_b64_encode((const outbox_b64_byte *) src, len, dst, dstlen);
}

/* The bytes of len base64 characters at src into dst; -1 when invalid. */
static inline int
outbox_b64_decode(const char *src, int len, void *dst, int dstlen)
{
	return pg_b64_decode(src, len, (outbox_b64_byte *) dst, dstlen);
}

/*
 * PostgreSQL 19 gives FuncnameGetCandidates() an output argument that says
 * what it found (FGC_* flags); before, it had none, and the flags read 0.
 */
#if PG_VERSION_NUM < 190000
static inline FuncCandidateList
outbox_compat_FuncnameGetCandidates(List *names, int nargs, List *argnames,
									bool expand_variadic, bool expand_defaults,
									bool include_out_arguments, bool missing_ok,
									int *fgc_flags)
{
	*fgc_flags = 0;
	return FuncnameGetCandidates(names, nargs, argnames, expand_variadic,
								 expand_defaults, include_out_arguments, missing_ok);
}
#define FuncnameGetCandidates(names, nargs, argnames, expand_variadic, \
							  expand_defaults, include_out_arguments, \
							  missing_ok, fgc_flags) \
	outbox_compat_FuncnameGetCandidates(names, nargs, argnames, expand_variadic, \
										expand_defaults, include_out_arguments, \
										missing_ok, fgc_flags)
#endif

/* This backend's PGPROC number: MyProcNumber since 17. */
#if PG_VERSION_NUM >= 170000
#define outbox_my_procno() ((int) MyProcNumber)
#else
#define outbox_my_procno() (MyProc != NULL ? MyProc->pgprocno : -1)
#endif

#endif							/* OUTBOX_PG_COMPAT_H */
