/*-------------------------------------------------------------------------
 *
 * publisher.h
 *		The publisher registry, as the worker and the save path see it.
 *		Publishers themselves see only outbox_publisher.h.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_REGISTRY_H
#define OUTBOX_REGISTRY_H

#include "outbox_publisher.h"

extern const OutboxPublisher *outbox_find_publisher(const char *name);
extern char *outbox_publisher_names(void);

/*
 * What happened while a publisher waited in OutboxPublisherWait(), for the
 * worker to act on between batches; each call clears what it reports.
 */
extern bool outbox_publisher_take_wakeup(void);
extern bool outbox_publisher_take_reload(void);

#endif							/* OUTBOX_REGISTRY_H */
