/*-------------------------------------------------------------------------
 *
 * launcher.h
 *		The launcher: one relay worker per database of outbox.databases.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_LAUNCHER_H
#define OUTBOX_LAUNCHER_H

#include "fmgr.h"

extern void outbox_register_launcher(void);
extern PGDLLEXPORT void outbox_launcher_main(Datum main_arg);

#endif							/* OUTBOX_LAUNCHER_H */
