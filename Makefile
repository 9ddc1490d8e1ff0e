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
	src/publishers/notify.o \
	src/publishers/http.o \
	src/publishers/function.o
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
# libcurl, for the http publisher.
SHLIB_LINK += -lcurl

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies: every object is rebuilt when a header
# it includes changes (the shared-memory layout is in outbox.h).
$(OBJS): src/outbox.h src/outbox_publisher.h

# ---------------------------------------------------------------- broker publishers

# The broker publishers are plug-in libraries of their own (outbox_kafka,
# outbox_nats, outbox_amqp, outbox_redis; see src/publishers/<name>.mk), so
# that the core never links a broker client.  Each is built when its client
# library is installed (librdkafka-dev, libnats-dev, librabbitmq-dev,
# libhiredis-dev); BROKERS="kafka nats" or BROKERS= overrides the choice.
BROKERS ?= $(strip \
	$(if $(shell pkg-config --exists rdkafka 2>/dev/null && echo y),kafka) \
	$(if $(shell pkg-config --exists libnats 2>/dev/null && echo y),nats) \
	$(if $(shell pkg-config --exists librabbitmq 2>/dev/null && echo y),amqp) \
	$(if $(shell pkg-config --exists hiredis 2>/dev/null && echo y),redis))

.PHONY: brokers install-brokers clean-brokers
all: brokers
install: install-brokers
clean: clean-brokers

brokers:
	@for b in $(BROKERS); do \
		$(MAKE) -f src/publishers/$$b.mk PG_CONFIG=$(PG_CONFIG) all || exit 1; \
	done
install-brokers: brokers
	@for b in $(BROKERS); do \
		$(MAKE) -f src/publishers/$$b.mk PG_CONFIG=$(PG_CONFIG) install || exit 1; \
	done
clean-brokers:
	@for b in kafka nats amqp redis; do \
		$(MAKE) -f src/publishers/$$b.mk PG_CONFIG=$(PG_CONFIG) clean || exit 1; \
	done

.PHONY: test demo install-for-tests clean-test-modules

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
	$(MAKE) -C test/modules/outbox_flaky PG_CONFIG=$(PG_CONFIG)
	$(MAKE) -C test/brokers BROKERS="$(BROKERS)"
	PG_CONFIG=$(PG_CONFIG) bash test/run.sh $(or $(SUITES),all)

# The example publisher the tests load (test/modules/outbox_flaky).
clean: clean-test-modules
clean-test-modules:
	$(MAKE) -C test/modules/outbox_flaky PG_CONFIG=$(PG_CONFIG) clean
	$(MAKE) -C test/brokers clean

# A throw-away cluster showing messages flowing (see demo/demo.sh).
demo:
	PG_CONFIG=$(PG_CONFIG) bash demo/demo.sh

# ---------------------------------------------------------------- checks outside make test

.PHONY: valgrind-test lint

# The Perl TAP tests with every server process under valgrind memcheck, in a
# private copy of the PostgreSQL installation (see test/valgrind/run.sh);
# fails when an error has a frame in the extension.  PROVE_TESTS="t/..."
# picks the tests (default: a subset that takes a few minutes).
valgrind-test: all
	PG_CONFIG=$(PG_CONFIG) bash test/valgrind/run.sh

# Static analysis of the C sources with cppcheck and clang-tidy; fails on any
# finding in the project's code (PostgreSQL's headers are not reported).
# Disabled, because they fight PostgreSQL idioms:
#  cppcheck shadowFunction: utils/fmgrprotos.h declares a C function for
#    every SQL built-in (now, lower, ...), so a local named "now" "shadows" it;
#  bugprone-easily-swappable-parameters: every fmgr/SPI-style signature;
#  bugprone-reserved-identifier: _PG_init is the name PostgreSQL calls;
#  bugprone-implicit-widening-of-multiplication-result: fires on
#    ALLOCSET_DEFAULT_SIZES and the other int-constant size macros;
#  clang-analyzer-security.insecureAPI.DeprecatedOrUnsafeBufferHandling:
#    flags every memcpy/memset/snprintf and wants C11 Annex K functions.
LINT_SRCS = $(sort $(wildcard src/*.c src/publishers/*.c))
LINT_FLAGS = $(filter -I% -D%,$(CPPFLAGS))
# The one configuration cppcheck analyses (given -D, it checks no other):
# without a compiler and platform, s_lock.h stops at its #error, and
# "information" is enabled so that such a preprocessor error is reported
# instead of the file being skipped silently.
CPPCHECK_CONFIG = -D__GNUC__=12 -D__x86_64__ -D__linux__
CLANG_TIDY_CHECKS = -*,clang-analyzer-*,bugprone-*,-bugprone-easily-swappable-parameters,-bugprone-reserved-identifier,-bugprone-implicit-widening-of-multiplication-result,-clang-analyzer-security.insecureAPI.DeprecatedOrUnsafeBufferHandling
lint:
	@command -v cppcheck >/dev/null && command -v clang-tidy >/dev/null || \
		{ echo "lint needs cppcheck and clang-tidy: apt-get install cppcheck clang-tidy"; exit 2; }
	@rc=0; \
	echo "== cppcheck"; \
	cppcheck --quiet --error-exitcode=1 --inline-suppr --language=c \
		--enable=warning,style,performance,portability,information \
		--suppress=missingInclude --suppress=missingIncludeSystem \
		--suppress=unmatchedSuppression --suppress=shadowFunction \
		--suppress='*:$(includedir_server)/*' \
		$(LINT_FLAGS) $(CPPCHECK_CONFIG) $(LINT_SRCS) || rc=1; \
	echo "== clang-tidy"; \
	err=$$(mktemp); \
	clang-tidy --quiet --checks='$(CLANG_TIDY_CHECKS)' --warnings-as-errors='*' \
		--header-filter='.*/src/outbox[a-z_]*\.h$$' \
		$(LINT_SRCS) -- $(LINT_FLAGS) 2>"$$err" || rc=1; \
	grep -v '^[0-9]* warnings\{0,1\} generated\.$$' "$$err" >&2; rm -f "$$err"; \
	if [ $$rc -ne 0 ]; then echo "lint: FAILED (findings above)"; else echo "lint: no findings"; fi; \
	exit $$rc

# ---------------------------------------------------------------- benchmarks

.PHONY: bench bench-quick

# The benchmark suite (see bench/run.sh); writes bench/RESULTS.md.
bench: install-for-tests
	PG_CONFIG=$(PG_CONFIG) bash bench/run.sh full

# The same at smaller scale: a few minutes.
bench-quick: install-for-tests
	PG_CONFIG=$(PG_CONFIG) bash bench/run.sh quick
