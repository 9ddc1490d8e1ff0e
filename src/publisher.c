/*-------------------------------------------------------------------------
 *
 * publisher.c
 *		The publisher registry: publishers register by name, the worker and
 *		the save path look them up by the name in outbox.publisher.
 *
 * Registration happens in _PG_init() of each library, so every process of
 * the server (postmaster children inherit it) has the same registry.  The
 * registry is a small process-local array: there are only ever a handful
 * of publishers.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "miscadmin.h"

#include "outbox.h"

#define MAX_PUBLISHERS 32

static const OutboxPublisher *publishers[MAX_PUBLISHERS];
static int	npublishers = 0;

/*
 * Register a publisher.  Public API (outbox_publisher.h): called from
 * _PG_init() of the library that provides it.
 */
void
OutboxRegisterPublisher(const OutboxPublisher *publisher)
{
	int			i;

	if (publisher == NULL || publisher->name == NULL ||
		publisher->publish == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("an outbox publisher needs a name and a publish callback")));
	if (publisher->api_version != OUTBOX_PUBLISHER_API_VERSION)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("outbox publisher \"%s\" was built for publisher API version %d",
						publisher->name, publisher->api_version),
				 errdetail("This outbox provides publisher API version %d.",
						   OUTBOX_PUBLISHER_API_VERSION),
				 errhint("Rebuild the publisher against the installed outbox_publisher.h.")));

	for (i = 0; i < npublishers; i++)
	{
		if (strcmp(publishers[i]->name, publisher->name) == 0)
		{
			/* The same library loaded twice registers the same struct. */
			if (publishers[i] == publisher)
				return;
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("an outbox publisher named \"%s\" is already registered",
							publisher->name)));
		}
	}
	if (npublishers >= MAX_PUBLISHERS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many outbox publishers registered"),
				 errdetail("At most %d publishers can be registered.", MAX_PUBLISHERS)));
	publishers[npublishers++] = publisher;
}

/* The publisher registered under name, or NULL. */
const OutboxPublisher *
outbox_find_publisher(const char *name)
{
	int			i;

	for (i = 0; i < npublishers; i++)
	{
		if (strcmp(publishers[i]->name, name) == 0)
			return publishers[i];
	}
	return NULL;
}

/* The registered names, comma-separated, for error messages. */
char *
outbox_publisher_names(void)
{
	StringInfoData names;
	int			i;

	initStringInfo(&names);
	for (i = 0; i < npublishers; i++)
		appendStringInfo(&names, "%s%s", i > 0 ? ", " : "", publishers[i]->name);
	return names.data;
}
