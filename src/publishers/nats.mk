# outbox_nats: the "nats" publisher (NATS JetStream, libnats), a plug-in
# library built against outbox's public publisher API.  Run from the top
# directory through the main Makefile (make, make install); it needs
# libnats-dev.

MODULE_big = outbox_nats
OBJS = src/publishers/nats.o
PGFILEDESC = "outbox_nats - NATS JetStream publisher for outbox"

PG_CONFIG ?= $(shell test -x /usr/lib/postgresql/15/bin/pg_config && \
	echo /usr/lib/postgresql/15/bin/pg_config || echo pg_config)
PG_CPPFLAGS = -I$(CURDIR)/src $(shell pkg-config --cflags libnats 2>/dev/null)
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter
SHLIB_LINK += $(or $(shell pkg-config --libs libnats 2>/dev/null),-lnats)

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies.
$(OBJS): src/outbox_publisher.h

# Compiled again when PG_CONFIG names another installation (pg-build.mk).
include pg-build.mk
