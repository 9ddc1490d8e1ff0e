#!/usr/bin/env bash
# test/valgrind/run.sh -- run the Perl TAP tests with every server process
# under valgrind memcheck (make valgrind-test).
#
#   bash test/valgrind/run.sh
#
# How it works:
#   1. Makes a private, relocated copy of the PostgreSQL installation
#      (usr/lib/postgresql, usr/share/postgresql, usr/include/postgresql
#      under $OUTBOX_VG_ROOT).  PostgreSQL finds its share and lib
#      directories relative to its binaries, so the copy's pg_config,
#      initdb and postgres use the copy's directories.
#   2. Installs the extension into the copy (make install PG_CONFIG=copy).
#   3. Renames the copy's postgres to postgres.real and puts a wrapper in
#      its place that runs the server under valgrind.  initdb's and
#      pg_ctl's helper invocations (postgres -V, --boot, --single, -C) run
#      without valgrind.  The postmaster forks without exec, and valgrind
#      follows forks, so every backend, the launcher and the relay workers
#      are checked too; each process writes its own log (%p.log).
#   4. Runs test/run.sh tap with PG_CONFIG pointing at the copy, generous
#      timeouts, and jit = off (through TEMP_CONFIG).
#   5. Scans the logs (test/valgrind/summarize.pl): an error with a frame in
#      the extension (outbox.so or its sources) fails this script; errors
#      only inside PostgreSQL are listed but do not.
#
# Environment:
#   PROVE_TESTS         TAP tests to run, relative to test/ (default: the
#                       subset below, about 5 minutes; "t/*.pl" runs all of
#                       them in about 20 minutes, and 003_crash and
#                       060_kill_worker then fail on their time limits)
#   OUTBOX_VG_ROOT      where the copy and the logs go (default /tmp/outbox-vg)
#   OUTBOX_VG_TRACK_ORIGINS  yes (default) or no: --track-origins, slower but
#                       says where uninitialised values come from
#   OUTBOX_VG_STRICT    if set, failing TAP tests also fail this script
#                       (by default they are reported: some tests have time
#                       limits that a server under valgrind may not meet)
#   PG_CONFIG           the installation to copy (default: PostgreSQL 15's)
#
# Exit status: 0 when valgrind found nothing in the extension's code, 1 when
# it did (or, with OUTBOX_VG_STRICT, a test failed), 2 on a setup error.

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
srcdir=$(cd "$here/../.." && pwd)
root=${OUTBOX_VG_ROOT:-/tmp/outbox-vg}
# 003_crash and 060_kill_worker are left out: they drain 20,000-message
# backlogs and run pgbench under fixed time limits that a server under
# valgrind cannot meet (they fail on time, not on memory errors).
default_tests="t/001_notify.pl t/002_batch_drain.pl t/004_reload.pl t/006_shutdown.pl t/050_bad_settings.pl t/051_bad_input_worker.pl t/052_security.pl"
tests=${PROVE_TESTS:-$default_tests}
track_origins=${OUTBOX_VG_TRACK_ORIGINS:-yes}

die() {
    printf 'test/valgrind/run.sh: error: %s\n' "$*" >&2
    exit 2
}

command -v valgrind >/dev/null ||
    die "valgrind is not installed (apt-get install valgrind)"

if [[ -n ${PG_CONFIG:-} ]]; then
    sys_pg_config=$PG_CONFIG
elif [[ -x /usr/lib/postgresql/15/bin/pg_config ]]; then
    sys_pg_config=/usr/lib/postgresql/15/bin/pg_config
else
    sys_pg_config=$(command -v pg_config) || die "pg_config not found"
fi
sys_bindir=$("$sys_pg_config" --bindir)
sys_sharedir=$("$sys_pg_config" --sharedir)
sys_incdir=$("$sys_pg_config" --includedir)

# The installation's top directories: /usr/lib/postgresql from
# /usr/lib/postgresql/15/bin, and so on.
inst_lib=$(dirname "$(dirname "$sys_bindir")")      # /usr/lib/postgresql
inst_share=$(dirname "$sys_sharedir")               # /usr/share/postgresql
[[ $inst_lib == /* && $inst_share == /* && $sys_incdir == /* ]] ||
    die "unexpected installation layout"

# ---------------------------------------------------------------- 1. the copy

echo "== copying the PostgreSQL installation into $root"
if [[ -d $root ]]; then
    # Only ever remove a directory this script made.
    [[ -f $root/.outbox-vg ]] || die "$root exists and was not made by this script; set OUTBOX_VG_ROOT"
    rm -rf -- "$root"
fi
mkdir -p "$root"
: >"$root/.outbox-vg"
for d in "$inst_lib" "$inst_share" "$sys_incdir"; do
    mkdir -p "$root$(dirname "$d")"
    cp -a -- "$d" "$root$(dirname "$d")/"
done

pg_config=$root$sys_bindir/pg_config
bindir=$("$pg_config" --bindir)
[[ $bindir == "$root"/* && $("$pg_config" --sharedir) == "$root"/* &&
   $("$pg_config" --pkglibdir) == "$root"/* ]] ||
    die "the copy's pg_config reports directories outside $root: $bindir"

# ---------------------------------------------------------------- 2. the extension

echo "== installing the extension into the copy"
make -C "$srcdir" --no-print-directory -s install PG_CONFIG="$pg_config" >/dev/null

# ---------------------------------------------------------------- 3. the wrapper

logdir=$root/logs
mkdir -p "$logdir"
supp=$root/postgres.supp
cp -- "$here/postgres.supp" "$supp"
mv -- "$bindir/postgres" "$bindir/postgres.real"
cat >"$bindir/postgres" <<EOF
#!/bin/sh
# Made by test/valgrind/run.sh: the server under valgrind memcheck.
real="$bindir/postgres.real"
case "\${1:-}" in
    -V|--version|--boot|--single|-C|--describe-config|--check)
        exec "\$real" "\$@" ;;
esac
exec valgrind --quiet --tool=memcheck --trace-children=no \\
    --track-origins=$track_origins --read-var-info=no --num-callers=40 \\
    --leak-check=no --fullpath-after= --gen-suppressions=all \\
    --suppressions="$supp" \\
    --error-markers=VALGRINDERROR-BEGIN,VALGRINDERROR-END \\
    --log-file="$logdir/%p.log" \\
    "\$real" "\$@"
EOF
chmod 0755 "$bindir/postgres"
"$bindir/postgres" -V >/dev/null || die "the wrapped postgres does not run"

mkdir -p "$root/perl"
cp -- "$here/OutboxValgrind.pm" "$root/perl/"

# What every test cluster gets (PostgreSQL::Test::Cluster appends TEMP_CONFIG).
cat >"$root/temp.conf" <<'EOF'
# added by test/valgrind/run.sh
jit = off
EOF

if [[ $(id -u) -eq 0 ]]; then
    # test/run.sh runs the tests as "postgres"; it must write the logs.
    chown -R postgres: "$logdir"
    chmod 0755 "$root"
fi

# ---------------------------------------------------------------- 4. the tests

echo "== running TAP tests under valgrind: $tests"
echo "   (valgrind logs: $logdir)"
start=$SECONDS
test_rc=0
PG_CONFIG=$pg_config \
PROVE_TESTS=$tests \
TEMP_CONFIG=$root/temp.conf \
PG_TEST_TIMEOUT_DEFAULT=900 \
OUTBOX_TEST_TIMEOUT=600 \
PERL5OPT="-I$root/perl -MOutboxValgrind" \
    bash "$srcdir/test/run.sh" tap || test_rc=$?
echo "== tests finished in $(( SECONDS - start ))s (test/run.sh exit $test_rc)"

# ---------------------------------------------------------------- 5. the verdict

scan_rc=0
perl "$here/summarize.pl" "$srcdir" "$logdir" || scan_rc=$?
if (( scan_rc == 1 )); then
    echo "valgrind-test: FAILED: valgrind found errors in the extension's code (see above)"
    exit 1
elif (( scan_rc != 0 )); then
    die "could not scan the valgrind logs"
fi
if (( test_rc != 0 )); then
    if [[ -n ${OUTBOX_VG_STRICT:-} ]]; then
        echo "valgrind-test: FAILED: TAP tests failed under valgrind"
        exit 1
    fi
    echo "valgrind-test: note: TAP tests failed under valgrind (slowness can do that; OUTBOX_VG_STRICT=1 makes this fatal)"
fi
echo "valgrind-test: PASSED: no valgrind error in the extension's code"
