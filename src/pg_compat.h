/*-------------------------------------------------------------------------
 *
 * pg_compat.h
 *		What differs between the PostgreSQL versions outbox builds against,
 *		in one place: every other file calls the names defined here.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_PG_COMPAT_H
#define OUTBOX_PG_COMPAT_H

#include "catalog/pg_database.h"
#include "common/jsonapi.h"
#include "utils/acl.h"

/*
 * A JSON lexer over len bytes of text.  PostgreSQL 17 takes a context to
 * fill (NULL: allocate one) and frees it with freeJsonLexContext().
 */
#if PG_VERSION_NUM >= 170000
#define outbox_json_lex_context(text, len, encoding) \
	makeJsonLexContextCstringLen(NULL, (text), (len), (encoding), false)
#define outbox_json_lex_context_free(lex) freeJsonLexContext(lex)
#else
#define outbox_json_lex_context(text, len, encoding) \
	makeJsonLexContextCstringLen((text), (len), (encoding), false)
#define outbox_json_lex_context_free(lex) pfree(lex)
#endif

/* Whether a role owns a database: object_ownercheck() since 16. */
#if PG_VERSION_NUM >= 160000
#define outbox_database_ownercheck(dboid, roleid) \
	object_ownercheck(DatabaseRelationId, (dboid), (roleid))
#else
#define outbox_database_ownercheck(dboid, roleid) \
	pg_database_ownercheck((dboid), (roleid))
#endif

/* This backend's PGPROC number: MyProcNumber since 17. */
#if PG_VERSION_NUM >= 170000
#define outbox_my_procno() ((int) MyProcNumber)
#else
#define outbox_my_procno() (MyProc != NULL ? MyProc->pgprocno : -1)
#endif

#endif							/* OUTBOX_PG_COMPAT_H */
