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
extern const char *outbox_publisher_problem(const char *publisher, uint64 *generation);

/* The log hook that keeps secrets out of the server log (module start). */
extern void outbox_publisher_install_log_hook(void);

/* Destinations' options (worker.c, destination.c). */
extern bool outbox_publisher_set_destination(const OutboxPublisher *publisher,
											 const char *name, Jsonb *options);
extern void outbox_check_destination_options(const OutboxPublisher *publisher,
											 Jsonb *options);
extern bool outbox_option_is_secret(const OutboxPublisher *publisher, const char *name,
									JsonbValue *value);
extern char *outbox_secret_option_names(const OutboxPublisher *publisher);

#endif							/* OUTBOX_REGISTRY_H */
