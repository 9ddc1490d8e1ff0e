/*-------------------------------------------------------------------------
 *
 * route.h
 *		Routing of messages to destinations by topic pattern.  See route.c.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_ROUTE_H
#define OUTBOX_ROUTE_H

#include "utils/uuid.h"

extern const char *outbox_pattern_problem(const char *pattern);
extern void outbox_check_pattern(const char *pattern);
extern bool outbox_topic_matches_pattern(const char *topic, const char *pattern);
extern int	outbox_route_topic(const char *topic, const int32 **destinations);
extern void outbox_route_subscriptions_changed(void);

/* save.c: whether a new row's id is the one this backend just handed out. */
extern bool outbox_take_handed_out_id(const pg_uuid_t *id);

#endif							/* OUTBOX_ROUTE_H */
