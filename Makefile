# outbox: a transactional outbox relay for PostgreSQL, built with PGXS.

EXTENSION = outbox
MODULE_big = outbox
OBJS = \
	src/outbox.o \
	src/save.o \
	src/store.o \
	src/worker.o \
	src/launcher.o \
	src/publisher.o \
	src/publishers/envelope.o \
	src/publishers/notify.o
DATA = sql/outbox--0.1.0.sql
PGFILEDESC = "outbox - transactional outbox relay"

# The public header for third-party publishers.
HEADERS_outbox = src/outbox_publisher.h

PG_CONFIG ?= $(shell test -x /usr/lib/postgresql/15/bin/pg_config && \
	echo /usr/lib/postgresql/15/bin/pg_config || echo pg_config)
PG_CPPFLAGS = -I$(srcdir)/src
# -Wextra, less unused-parameter: PostgreSQL's own headers and callback
# signatures have unused parameters by design.
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

.PHONY: test demo install-for-tests

# Install into the server's directories, through sudo when they are not ours.
install-for-tests: all
	@if [ -w "$(pkglibdir)" ] && [ -w "$(datadir)/extension" ]; then \
		$(MAKE) install; \
	else \
		echo "installing with sudo into $(pkglibdir)"; sudo $(MAKE) install; \
	fi

# The whole test suite: pgTAP, isolation and Perl TAP (see test/run.sh);
# SUITES=pgtap (or isolation, tap) runs one.
test: install-for-tests
	PG_CONFIG=$(PG_CONFIG) bash test/run.sh $(or $(SUITES),all)

# A throw-away cluster showing messages flowing (see demo/demo.sh).
demo:
	PG_CONFIG=$(PG_CONFIG) bash demo/demo.sh
