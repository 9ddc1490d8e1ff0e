# outbox: a transactional outbox relay for PostgreSQL, built with PGXS.

EXTENSION = outbox
MODULE_big = outbox
OBJS = \
	src/outbox.o \
	src/shmem.o \
	src/save.o \
	src/route.o \
	src/store.o \
	src/store_api.o \
	src/delivery.o \
	src/destination.o \
	src/worker.o \
	src/launcher.o \
	src/publisher.o \
	src/publishers/builtin.o \
	src/publishers/cloudevents.o \
	src/publishers/envelope.o \
	src/publishers/notify.o \
	src/publishers/http.o \
	src/publishers/function.o
# Every version's full script and every update script: adding a version
# is adding its two files (sql/outbox--NEW.sql, sql/outbox--OLD--NEW.sql)
# and changing default_version in outbox.control.
DATA = $(wildcard sql/outbox--*.sql)
PGFILEDESC = "outbox - transactional outbox relay"
EXTRA_CLEAN = .pg-build

# The public header for third-party publishers.
HEADERS_outbox = src/outbox_publisher.h

# make installcheck: the suites through PGXS, as contrib modules run theirs,
# against an installed and running server (see README, "make installcheck").
#   REGRESS     the pgTAP tests (test/sql/pgtap.sql runs every test/pgtap/ file)
#   ISOLATION   the isolation specs (test/specs, expected output in test/expected)
#   TAP_TESTS   the Perl TAP tests (test/t), with their own throw-away clusters
REGRESS = pgtap
REGRESS_OPTS = --inputdir=test --load-extension=pgtap --load-extension=outbox
ISOLATION = $(basename $(notdir $(wildcard test/specs/*.spec)))
ISOLATION_OPTS = --inputdir=test --load-extension=outbox
TAP_TESTS = 1
# What the TAP tests build and load (the example publisher, the brokers'
# helpers), built before installcheck runs.
REGRESS_PREP = test-helpers

PG_CONFIG ?= $(shell test -x /usr/lib/postgresql/15/bin/pg_config && \
	echo /usr/lib/postgresql/15/bin/pg_config || echo pg_config)
# The extension's version, from outbox.control (the one place it is set).
OUTBOX_VERSION := $(shell sed -n "s/^default_version *= *'\(.*\)'/\1/p" $(dir $(lastword $(MAKEFILE_LIST)))outbox.control)
PG_CPPFLAGS = -I$(srcdir)/src -DOUTBOX_VERSION='"$(OUTBOX_VERSION)"'
# -Wextra, less unused-parameter: PostgreSQL's own headers and callback
# signatures have unused parameters by design.
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter
# libcurl, for the http publisher.
SHLIB_LINK += -lcurl

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies: every object is rebuilt when one of
# the project's headers changes.
$(OBJS): $(wildcard src/*.h src/publishers/*.h)

# Compiled again when PG_CONFIG names another installation (pg-build.mk).
include pg-build.mk

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

.PHONY: test test-installed demo install-for-tests clean-test-modules

# Install into the server's directories, through sudo when they are not ours.
install-for-tests: all
	@if [ -w "$(pkglibdir)" ] && [ -w "$(datadir)/extension" ]; then \
		$(MAKE) install; \
	else \
		echo "installing with sudo into $(pkglibdir)"; sudo $(MAKE) install; \
	fi

# The whole test suite: pgTAP, isolation and Perl TAP (see test/run.sh);
# SUITES=pgtap (or isolation, tap) runs one.  It first installs the Debian
# packages the suites need, as make demo does (scripts/packages.sh: with
# apt-get as root, else it prints the sudo apt-get line and stops), then
# builds in a new make, which sees what was just installed.
test:
	@bash scripts/packages.sh ensure test
	@$(MAKE) --no-print-directory test-installed

# The suites, once the packages are there.
test-installed: install-for-tests test-helpers
	PG_CONFIG=$(PG_CONFIG) bash test/run.sh $(or $(SUITES),all)

# The TAP tests of installcheck are test/t/*.pl (PROVE_TESTS="t/..." picks
# some, relative to test/ as for make test), with test/t's helper modules;
# they run as an unprivileged user (PostgreSQL refuses root).
installcheck: override PROVE_TESTS := $(addprefix test/,$(or $(PROVE_TESTS),t/*.pl))
installcheck: PG_PROVE_FLAGS += -I $(srcdir)/test/t
installcheck: export OUTBOX_SRCDIR := $(CURDIR)
installcheck: export PG_CONFIG := $(PG_CONFIG)

# The modules the tests load: the example publisher (test/modules/outbox_flaky)
# and test-only functions (test/modules/outbox_testing).
.PHONY: test-helpers
test-helpers:
	$(MAKE) -C test/modules/outbox_flaky PG_CONFIG=$(PG_CONFIG) clean all
	$(MAKE) -C test/modules/outbox_testing PG_CONFIG=$(PG_CONFIG) clean all
	$(MAKE) -C test/brokers BROKERS="$(BROKERS)"

clean: clean-test-modules
clean-test-modules:
	$(MAKE) -C test/modules/outbox_flaky PG_CONFIG=$(PG_CONFIG) clean
	$(MAKE) -C test/modules/outbox_testing PG_CONFIG=$(PG_CONFIG) clean
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
