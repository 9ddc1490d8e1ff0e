# outbox_amqp: the "amqp" publisher (RabbitMQ, AMQP 0-9-1, librabbitmq), a
# plug-in library built against outbox's public publisher API.  Run from the
# top directory through the main Makefile (make, make install); it needs
# librabbitmq-dev (and OpenSSL's headers, for the system's CA store).

MODULE_big = outbox_amqp
OBJS = src/publishers/amqp.o
PGFILEDESC = "outbox_amqp - RabbitMQ (AMQP 0-9-1) publisher for outbox"

PG_CONFIG ?= $(shell test -x /usr/lib/postgresql/15/bin/pg_config && \
	echo /usr/lib/postgresql/15/bin/pg_config || echo pg_config)
PG_CPPFLAGS = -I$(CURDIR)/src $(shell pkg-config --cflags librabbitmq openssl 2>/dev/null)
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter
SHLIB_LINK += $(or $(shell pkg-config --libs librabbitmq 2>/dev/null),-lrabbitmq) \
	$(or $(shell pkg-config --libs openssl 2>/dev/null),-lssl -lcrypto) -lpthread

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies.
$(OBJS): src/outbox_publisher.h

# Compiled again when PG_CONFIG names another installation (pg-build.mk).
include pg-build.mk
