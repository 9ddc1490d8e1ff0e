/*-------------------------------------------------------------------------
 *
 * builtin.c
 *		The table of publishers built into outbox.so, and of the settings
 *		all publishers share.  Module start registers them through it, and
 *		names none of them.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "builtin.h"

/*
 * Each entry defines one publisher's settings and registers it; the first,
 * the settings every publisher shares (before the plug-ins load).
 */
static void (*const builtin_publishers[]) (void) = {
	outbox_register_cloudevents_settings,
	outbox_register_notify_publisher,
	outbox_register_http_publisher,
	outbox_register_function_publisher,
};

/* Register every built-in publisher; from _PG_init(), in every process. */
void
outbox_register_builtin_publishers(void)
{
	size_t		i;

	for (i = 0; i < lengthof(builtin_publishers); i++)
		builtin_publishers[i] ();
}
