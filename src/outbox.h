/*-------------------------------------------------------------------------
 *
 * outbox.h
 *		The outbox settings and limits, shared by every file of the
 *		extension.  outbox.c defines the settings; everything else reads
 *		them.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_H
#define OUTBOX_H

/* Most databases one server relays for (entries of outbox.databases). */
#define OUTBOX_MAX_DATABASES 32

/* Most destinations with a worker of their own, over all databases. */
#define OUTBOX_MAX_DESTINATION_WORKERS 64

/* Longest topic, in bytes. */
#define OUTBOX_MAX_TOPIC_LEN 255

/* Longest key, in bytes. */
#define OUTBOX_MAX_KEY_LEN 1024

/* Values of outbox.ordering. */
typedef enum OutboxOrdering
{
	OUTBOX_ORDERING_KEY,
	OUTBOX_ORDERING_NONE
} OutboxOrdering;

/* Settings (outbox.c); README.md documents each one with its default. */
extern char *outbox_databases;
extern char *outbox_role;
extern char *outbox_publisher_name;
extern int	outbox_poll_interval;
extern int	outbox_batch_size;
extern int	outbox_batch_max_bytes;
extern int	outbox_max_retries;
extern int	outbox_retry_backoff;
extern int	outbox_retry_backoff_max;
extern int	outbox_processing_timeout;
extern int	outbox_retention;
extern int	outbox_ordering;
extern bool outbox_enabled;
extern int	outbox_destination_disable_after;
extern int	outbox_max_backlog;

#endif							/* OUTBOX_H */
