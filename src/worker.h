/*-------------------------------------------------------------------------
 *
 * worker.h
 *		The relay worker of one database, started by the launcher with its
 *		slot number as argument.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_WORKER_H
#define OUTBOX_WORKER_H

#include "fmgr.h"

extern PGDLLEXPORT void outbox_worker_main(Datum main_arg);
extern PGDLLEXPORT void outbox_destination_worker_main(Datum main_arg);

#endif							/* OUTBOX_WORKER_H */
