/*-------------------------------------------------------------------------
 *
 * builtin.h
 *		The publishers built into outbox.so, and what they share.  They see
 *		the rest of the extension only through outbox_publisher.h, exactly as
 *		a plug-in library does.
 *
 * Copyright (c) 2026, the outbox developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef OUTBOX_BUILTIN_H
#define OUTBOX_BUILTIN_H

#include "outbox_publisher.h"

/* builtin.c: define every built-in publisher's settings and register it. */
extern void outbox_register_builtin_publishers(void);

/* Each built-in publisher's own start (its settings, its registration). */
extern void outbox_register_notify_publisher(void);
extern void outbox_register_http_publisher(void);
extern void outbox_register_function_publisher(void);

/* cloudevents.c: outbox.cloudevents_source, shared by every publisher. */
extern void outbox_register_cloudevents_settings(void);

/* envelope.c: a whole message as one JSON text; bytes as base64 text. */
extern char *outbox_message_envelope(const OutboxMessage *message);
extern char *outbox_message_id_envelope(const OutboxMessage *message);
extern char *outbox_base64_text(const char *data, int len);

#endif							/* OUTBOX_BUILTIN_H */
