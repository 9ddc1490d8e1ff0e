# outbox_redis: the "redis" publisher (Redis Streams, hiredis), a plug-in
# library built against outbox's public publisher API.  Run from the top
# directory through the main Makefile (make, make install); it needs
# libhiredis-dev.

MODULE_big = outbox_redis
OBJS = src/publishers/redis.o
PGFILEDESC = "outbox_redis - Redis Streams publisher for outbox"

PG_CONFIG ?= $(shell test -x /usr/lib/postgresql/15/bin/pg_config && \
	echo /usr/lib/postgresql/15/bin/pg_config || echo pg_config)
PG_CPPFLAGS = -I$(CURDIR)/src $(shell pkg-config --cflags hiredis 2>/dev/null)
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter
SHLIB_LINK += $(or $(shell pkg-config --libs hiredis 2>/dev/null),-lhiredis) -lpthread

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies.
$(OBJS): src/outbox_publisher.h

# Compiled again when PG_CONFIG names another installation (pg-build.mk).
include pg-build.mk
