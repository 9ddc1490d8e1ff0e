/*-------------------------------------------------------------------------
 *
 * operations.h
 *		Operating an outbox: the workers' status, replay, requeueing dead
 *		letters with filters, and the count behind outbox.max_backlog.  See
 *		operations.c.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_OPERATIONS_H
#define OUTBOX_OPERATIONS_H

/* The main worker's count of the unfinished messages (worker.c). */
extern int64 outbox_count_unfinished(void);

#endif							/* OUTBOX_OPERATIONS_H */
