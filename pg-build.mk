# pg-build.mk -- included (after PGXS) by Makefile and src/publishers/*.mk
# (kafka, nats, amqp, redis): objects compiled against one PostgreSQL
# installation are never linked into a build for another.  .pg-build names
# the installation the objects were compiled for; when PG_CONFIG names
# another one, the file changes, and everything that depends on it is
# compiled again, so make test PG_CONFIG=/other/pg_config needs no make
# clean first.

PG_BUILD_ID := $(shell $(PG_CONFIG) --version 2>/dev/null) $(shell $(PG_CONFIG) --includedir-server 2>/dev/null)

.pg-build: outbox-pg-build-check
	@echo '$(PG_BUILD_ID)' | cmp -s - $@ || echo '$(PG_BUILD_ID)' >$@

$(OBJS) $(OBJS:.o=.bc): .pg-build

.PHONY: outbox-pg-build-check
outbox-pg-build-check:
