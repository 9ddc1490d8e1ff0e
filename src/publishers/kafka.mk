# outbox_kafka: the "kafka" publisher (librdkafka), a plug-in library built
# against outbox's public publisher API.  Run from the top directory through
# the main Makefile (make, make install); it needs librdkafka-dev.

MODULE_big = outbox_kafka
OBJS = src/publishers/kafka.o
PGFILEDESC = "outbox_kafka - Kafka publisher for outbox"

PG_CONFIG ?= $(shell test -x /usr/lib/postgresql/15/bin/pg_config && \
	echo /usr/lib/postgresql/15/bin/pg_config || echo pg_config)
PG_CPPFLAGS = -I$(CURDIR)/src $(shell pkg-config --cflags rdkafka 2>/dev/null)
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter
SHLIB_LINK += $(or $(shell pkg-config --libs rdkafka 2>/dev/null),-lrdkafka)

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies.
$(OBJS): src/outbox_publisher.h

# Compiled again when PG_CONFIG names another installation (pg-build.mk).
include pg-build.mk
