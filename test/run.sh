#!/usr/bin/env bash
# test/run.sh -- run the outbox test suites against throw-away PostgreSQL
# instances.
#
#   bash test/run.sh SUITE...      SUITE = pgtap | isolation | tap | all
#
# Suites:
#   pgtap      test/pgtap/*.sql through pg_prove, against a private cluster
#              (database outbox_test, with pgtap and outbox created in it).
#   isolation  test/specs/*.spec through pg_isolation_regress with a temporary
#              instance; expected output in test/expected/<spec>.out.
#   tap        test/t/*.pl through prove, using PostgreSQL::Test::Cluster
#              from PGXS; helper modules may live in test/t/ (e.g. OutboxTest.pm).
#
# The extension must already be installed (make install).  PostgreSQL does not
# run as root, so when started as root this script copies test/ to a scratch
# directory owned by the "postgres" OS user and re-runs itself as that user.
#
# Environment:
#   PG_CONFIG           pg_config to use (default: PostgreSQL 15's, then PATH)
#   PROVE_FLAGS         extra flags for prove (tap suite), e.g. "-v"
#   PROVE_TESTS         tap tests to run, relative to test/ (default t/*.pl)
#   PGTAP_PROVE_FLAGS   extra flags for pg_prove (pgtap suite), e.g. "-v"
#   PGTAP_TESTS         pgTAP files to run, relative to test/ (default pgtap/*.sql)
#   ISOLATION_TESTS     spec names to run (default: every test/specs/*.spec)
#   PG_TEST_NOCLEAN     if set, keep all scratch directories and data dirs
#   OUTBOX_SUITE_TIMEOUT  when CI is set, seconds after which a suite's test
#                       runner is killed (default 1200; 0 = no limit)
#   OUTBOX_REQUIRE_BROKERS  if set, the broker publishers' TAP tests (110_kafka,
#                       120/121_nats, 122_publisher_lifecycle, 130-133_amqp,
#                       140-144_redis) fail instead of
#                       skipping when a plug-in (outbox_kafka, outbox_nats,
#                       outbox_amqp, outbox_redis), its test helper or its server
#                       (nats-server, rabbitmq-server, redis-server) is missing;
#                       so do 105_cloudevents_http without node and npm (or
#                       when npm cannot install the CloudEvents SDK) and
#                       160_prometheus without prometheus-postgres-exporter;
#                       and so do 170_patroni (patroni, etcd-server) and
#                       171_pgbouncer (pgbouncer), as under OUTBOX_REQUIRE_HA
#   OUTBOX_REQUIRE_HA   if set, 170_patroni fails instead of skipping when
#                       patroni, patronictl or etcd is missing, and
#                       171_pgbouncer when pgbouncer is (Debian's packages:
#                       scripts/packages.sh installs them with the test group;
#                       the tests start their own, never the services)
#   PG_TEST_TIMEOUT_DEFAULT, PG_TEST_EXTRA   passed on to the TAP framework
#
# Output ends with a line "N passed, N failed" counting suites.  The exit
# status is 0 when every requested suite passed, 1 when one failed, 2 on a
# usage or setup error.

set -euo pipefail

prog=test/run.sh
testdir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 2
}

usage() {
    cat >&2 <<EOF
usage: bash $prog SUITE...
  SUITE is one of: pgtap, isolation, tap, all (= pgtap isolation tap)
EOF
    exit 2
}

# ---------------------------------------------------------------- arguments

(( $# > 0 )) || usage
suites=()
add_suite() {
    local s
    for s in ${suites[@]+"${suites[@]}"}; do
        [[ $s == "$1" ]] && return 0
    done
    suites+=("$1")
}
for arg in "$@"; do
    case $arg in
        pgtap|isolation|tap) add_suite "$arg" ;;
        all) add_suite pgtap; add_suite isolation; add_suite tap ;;
        -h|--help) usage ;;
        *) printf '%s: unknown suite "%s"\n' "$prog" "$arg" >&2; usage ;;
    esac
done

# ---------------------------------------------------------------- pg_config

if [[ -n ${PG_CONFIG:-} ]]; then
    pg_config_bin=$(command -v -- "$PG_CONFIG" || true)
    [[ -n $pg_config_bin && -x $pg_config_bin ]] ||
        die "PG_CONFIG=$PG_CONFIG is not an executable pg_config"
elif [[ -x /usr/lib/postgresql/15/bin/pg_config ]]; then
    pg_config_bin=/usr/lib/postgresql/15/bin/pg_config
elif pg_config_bin=$(command -v pg_config); then
    :
else
    die "pg_config not found: install postgresql-server-dev-15 or set PG_CONFIG"
fi
export PG_CONFIG=$pg_config_bin

bindir=$("$pg_config_bin" --bindir)
sharedir=$("$pg_config_bin" --sharedir)
pkglibdir=$("$pg_config_bin" --pkglibdir)
pgxs_test=$pkglibdir/pgxs/src/test
export PATH="$bindir:$PATH"

[[ -f $sharedir/extension/outbox.control ]] ||
    die "the outbox extension is not installed ($sharedir/extension/outbox.control is missing); run 'make install' (as root or with sudo) first"
[[ -f $pkglibdir/outbox.so ]] ||
    die "the outbox extension is not installed ($pkglibdir/outbox.so is missing); run 'make install' (as root or with sudo) first"

# ---------------------------------------------------------------- root: re-run as postgres

if [[ $(id -u) -eq 0 && -z ${OUTBOX_TEST_CHILD:-} ]]; then
    id postgres >/dev/null 2>&1 ||
        die "running as root, but there is no 'postgres' OS user to run the tests as (PostgreSQL refuses to run as root); install postgresql-15 or run as an unprivileged user"
    command -v runuser >/dev/null || die "runuser not found (util-linux)"

    workdir=$(mktemp -d /tmp/outbox-test.XXXXXX)
    cp -R -- "$testdir" "$workdir/test"
    mkdir "$workdir/out" "$workdir/tmp"
    chown -R postgres: "$workdir"
    chmod 0755 "$workdir"
    echo "running as root: tests run as OS user 'postgres' in $workdir"

    rc=0
    # runuser keeps the environment (PG_CONFIG, PROVE_FLAGS, PG_TEST_NOCLEAN,
    # ...); PATH is reset to directories the postgres user can search.
    (cd "$workdir" && runuser -u postgres -- env \
        PATH="$bindir:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin" \
        HOME="$workdir/tmp" TMPDIR="$workdir/tmp" \
        OUTBOX_TEST_CHILD=1 OUTBOX_TEST_OUTDIR="$workdir/out" \
        OUTBOX_SRCDIR="$(dirname "$testdir")" \
        bash "$workdir/test/run.sh" "$@") || rc=$?

    # The child has already said where its output is when it is kept; print
    # nothing after its closing "N passed, N failed" line.
    if [[ $rc -eq 0 && -z ${PG_TEST_NOCLEAN:-} ]]; then
        rm -rf -- "$workdir"
    fi
    exit "$rc"
fi

# ---------------------------------------------------------------- environment for the suites

# Work in an environment that does not point at some other server.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGSERVICE PGSERVICEFILE \
      PGPASSWORD PGPASSFILE PGOPTIONS PGSSLMODE PGDATA PGAPPNAME PG_COLOR
# Without a locale initdb would pick SQL_ASCII; the C.UTF-8 locale is always
# present with glibc.
if [[ -z ${LANG:-} || $LANG == C || $LANG == POSIX ]]; then
    export LANG=C.UTF-8
fi
unset LC_ALL
export OUTBOX_SRCDIR=${OUTBOX_SRCDIR:-$(dirname "$testdir")}
export OUTBOX_TEST_DIR=$testdir

if [[ -n ${OUTBOX_TEST_OUTDIR:-} ]]; then
    outdir=$OUTBOX_TEST_OUTDIR
    own_outdir=
else
    outdir=$(mktemp -d "${TMPDIR:-/tmp}/outbox-test.XXXXXX")
    own_outdir=1
fi

hr() { printf '%s\n' "======================================================================"; }

# port_in_use PORT: true if something listens on PORT (TCP) or has a
# PostgreSQL socket for it in the usual socket directories.
port_in_use() {
    local p=$1 hex
    [[ -e /tmp/.s.PGSQL.$p || -e /var/run/postgresql/.s.PGSQL.$p ]] && return 0
    if command -v ss >/dev/null 2>&1; then
        [[ -n $(ss -Htln "sport = :$p" 2>/dev/null) ]] && return 0
        return 1
    fi
    hex=$(printf '%04X' "$p")
    awk -v h=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == h { f = 1 }
                      END { exit !f }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# pick_port: print a port in 20000-40000 that nothing seems to use.
pick_port() {
    local port i
    for (( i = 0; i < 500; i++ )); do
        port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 20001 ))
        if ! port_in_use "$port"; then
            echo "$port"
            return 0
        fi
    done
    echo "no free port found in 20000-40000" >&2
    return 1
}

# tail_file FILE [N]: print the last N (default 50) lines of FILE with a heading.
tail_file() {
    local f=$1 n=${2:-50}
    [[ -s $f ]] || return 0
    echo "----- last $n lines of $f -----"
    tail -n "$n" -- "$f"
    echo "----- end of $f -----"
}

# run_limited CMD...: run CMD; under CI (CI set) kill it and everything it
# started after OUTBOX_SUITE_TIMEOUT seconds (default 1200, 0 = no limit), so a
# hung test fails with its logs instead of eating the whole CI budget.
run_limited() {
    local limit=${OUTBOX_SUITE_TIMEOUT:-1200} rc=0
    if [[ -n ${CI:-} && $limit != 0 ]] && command -v timeout >/dev/null; then
        timeout -k 30 "$limit" "$@" || rc=$?
        if (( rc == 124 || rc == 137 )); then
            echo "*** $1 did not finish within ${limit}s (OUTBOX_SUITE_TIMEOUT): killed"
        fi
        return "$rc"
    fi
    "$@"
}

# stop_leftover_servers DIR: stop every server whose data directory is under
# DIR and still has a postmaster.pid (left behind by a killed or crashed test
# runner: pg_regress temp instances, TAP nodes).
stop_leftover_servers() {
    local pidfile data
    [[ -d $1 ]] || return 0
    while IFS= read -r pidfile; do
        data=${pidfile%/postmaster.pid}
        echo "stopping leftover server in $data"
        pg_ctl -D "$data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    done < <(find "$1" -name postmaster.pid -type f 2>/dev/null)
}

# ---------------------------------------------------------------- pgtap

pgtap_cleanup() {
    local data=$outdir/pgtap/data
    if [[ -f $data/postmaster.pid ]]; then
        pg_ctl -D "$data" -m fast -w -t 60 stop >/dev/null 2>&1 ||
            pg_ctl -D "$data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
    if [[ -n ${pgtap_sock:-} ]]; then
        rm -rf -- "$pgtap_sock"
    fi
    if [[ -z ${PG_TEST_NOCLEAN:-} ]]; then
        rm -rf -- "$data"
    fi
}

suite_pgtap() {
    local base=$outdir/pgtap files=() pflags=() port f
    if [[ -n ${PGTAP_TESTS:-} ]]; then
        read -ra files <<<"$PGTAP_TESTS"
    else
        files=(pgtap/*.sql)
    fi
    if (( ${#files[@]} == 0 )); then
        echo "no pgTAP tests in test/pgtap/ yet: nothing to run"
        : >"$outdir/pgtap.no-tests"
        return 0
    fi
    for f in "${files[@]}"; do
        [[ -f $f ]] || { echo "pgTAP test file not found: test/$f"; return 1; }
    done
    command -v pg_prove >/dev/null ||
        { echo "pg_prove not found: apt-get install libtap-parser-sourcehandler-pgtap-perl"; return 1; }
    [[ -f $sharedir/extension/pgtap.control ]] ||
        { echo "pgTAP is not installed: apt-get install postgresql-15-pgtap"; return 1; }

    trap pgtap_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    mkdir -p "$base"
    pgtap_sock=$(mktemp -d /tmp/outbox-sock.XXXXXX)
    port=$(pick_port)

    echo "initdb $base/data"
    initdb -D "$base/data" -A trust -E UTF8 --locale=C --no-sync \
        >"$base/initdb.log" 2>&1 || { cat "$base/initdb.log"; return 1; }
    cat >>"$base/data/postgresql.conf" <<EOF

# added by test/run.sh
listen_addresses = ''
unix_socket_directories = '$pgtap_sock'
port = $port
shared_preload_libraries = 'outbox'
# the relay worker runs in "postgres", so it leaves outbox_test's rows alone
outbox.databases = 'postgres'
fsync = off
log_line_prefix = '%m [%p] %q%a '
EOF
    echo "starting server on socket $pgtap_sock, port $port (log: $base/server.log)"
    pg_ctl -D "$base/data" -l "$base/server.log" -w -t 60 start >/dev/null

    export PGHOST=$pgtap_sock PGPORT=$port PGDATABASE=outbox_test
    psql -X -q -v ON_ERROR_STOP=1 -d postgres -c 'CREATE DATABASE outbox_test'
    psql -X -q -v ON_ERROR_STOP=1 -d outbox_test \
        -c 'CREATE EXTENSION pgtap' -c 'CREATE EXTENSION outbox'

    read -ra pflags <<<"${PGTAP_PROVE_FLAGS:-}"
    run_limited pg_prove --timer ${pflags[@]+"${pflags[@]}"} \
        -h "$pgtap_sock" -p "$port" -d outbox_test "${files[@]}"
}

failed_pgtap() {
    tail_file "$outdir/pgtap/server.log" 50
}

# ---------------------------------------------------------------- isolation

suite_isolation() {
    local base=$outdir/isolation specs=() f name port missing=()
    local pir=$pgxs_test/isolation/pg_isolation_regress
    if [[ -n ${ISOLATION_TESTS:-} ]]; then
        read -ra specs <<<"$ISOLATION_TESTS"
    else
        for f in specs/*.spec; do
            name=${f##*/}
            specs+=("${name%.spec}")
        done
    fi
    if (( ${#specs[@]} == 0 )); then
        echo "no isolation specs in test/specs/ yet: nothing to run"
        : >"$outdir/isolation.no-tests"
        return 0
    fi
    for name in "${specs[@]}"; do
        [[ -f specs/$name.spec ]] || { echo "isolation spec not found: test/specs/$name.spec"; return 1; }
        [[ -f expected/$name.out ]] || missing+=("$name")
    done
    if (( ${#missing[@]} )); then
        echo "warning: no expected output for: ${missing[*]} (test/expected/<spec>.out);"
        echo "         these fail; the actual output is kept in the results directory"
    fi
    [[ -x $pir ]] || { echo "$pir not found: apt-get install postgresql-server-dev-15"; return 1; }

    mkdir -p "$base"
    cat >"$base/temp.conf" <<EOF
shared_preload_libraries = 'outbox'
# the relay worker runs in "postgres", not in the test database
outbox.databases = 'postgres'
EOF
    port=$(pick_port)
    trap 'exit 130' INT
    trap 'exit 143' TERM
    run_limited "$pir" \
        --bindir="$bindir" \
        --temp-instance="$base/instance" \
        --temp-config="$base/temp.conf" \
        --port="$port" \
        --encoding=UTF8 --no-locale \
        --inputdir="$testdir" \
        --outputdir="$base" \
        --load-extension=outbox \
        "${specs[@]}"
}

failed_isolation() {
    local base=$outdir/isolation f name
    echo
    if [[ -s $base/regression.diffs ]]; then
        echo "----- $base/regression.diffs (first 400 lines) -----"
        head -n 400 -- "$base/regression.diffs"
        echo "----- end of regression.diffs -----"
    fi
    # A spec without expected output: show what it produced.
    for f in "$base"/results/*.out; do
        [[ -f $f ]] || continue
        name=${f##*/}
        if [[ ! -f $testdir/expected/$name ]]; then
            echo "----- output of spec ${name%.out} (no test/expected/$name yet) -----"
            head -n 400 -- "$f"
            echo "----- end of ${name%.out} output -----"
        fi
    done
    tail_file "$base/log/postmaster.log" 50
    if [[ -d $base/results ]]; then
        echo "actual outputs: $base/results/ (copy one to test/expected/ to accept it)"
    fi
}

# ---------------------------------------------------------------- tap

suite_tap() {
    local base=$outdir/tap files=() pflags=() f
    if [[ -n ${PROVE_TESTS:-} ]]; then
        read -ra files <<<"$PROVE_TESTS"
    else
        files=(t/*.pl)
    fi
    if (( ${#files[@]} == 0 )); then
        echo "no TAP tests in test/t/ yet: nothing to run"
        : >"$outdir/tap.no-tests"
        return 0
    fi
    for f in "${files[@]}"; do
        [[ -f $f ]] || { echo "TAP test not found: test/$f"; return 1; }
    done
    command -v prove >/dev/null || { echo "prove not found (perl)"; return 1; }
    perl -MIPC::Run -e 1 2>/dev/null ||
        { echo "Perl module IPC::Run is missing: apt-get install libipc-run-perl"; return 1; }
    [[ -f $pgxs_test/perl/PostgreSQL/Test/Cluster.pm ]] ||
        { echo "$pgxs_test/perl/PostgreSQL/Test/Cluster.pm not found: apt-get install postgresql-server-dev-15"; return 1; }

    mkdir -p "$base"
    # What PGXS's prove_installcheck sets up: TESTDIR (output goes to
    # $TESTDIR/tmp_check), PATH with the server binaries first, PG_REGRESS
    # (Cluster->init uses it for --config-auth).  From PostgreSQL 17 on the
    # framework takes its directories from TESTDATADIR and TESTLOGDIR instead
    # (else tmp_check and log in the current directory); they name the same
    # ones.
    export TESTDIR=$base
    export TESTDATADIR=$base/tmp_check TESTLOGDIR=$base/tmp_check/log
    export PG_REGRESS=$pgxs_test/regress/pg_regress
    trap 'exit 130' INT
    trap 'exit 143' TERM
    read -ra pflags <<<"${PROVE_FLAGS:-}"
    # the state file tells failed_tap which tests failed
    run_limited prove --timer --statefile="$base/prove.state" --state=save \
        ${pflags[@]+"${pflags[@]}"} \
        -I "$pgxs_test/perl" -I "$testdir/t" "${files[@]}"
}

failed_tap() {
    local logdir=$outdir/tap/tmp_check/log state=$outdir/tap/prove.state
    local failed_tests=() t name f
    if [[ -s $state ]]; then
        # prove's YAML state: "  t/x.pl:" opens a test, "    last_result: N"
        # is its number of failures.
        mapfile -t failed_tests < <(awk '
            /^  [^ ].*:$/ { name = substr($0, 3, length($0) - 3) }
            /^    last_result: / && $2 + 0 > 0 { print name }' "$state")
    fi
    if (( ${#failed_tests[@]} == 0 )); then
        # no state (prove itself failed?): show every log
        for f in "$logdir"/*; do
            [[ -f $f ]] && tail_file "$f" 50
        done
        return 0
    fi
    for t in "${failed_tests[@]}"; do
        name=${t##*/}
        name=${name%.*}
        echo
        echo "===== logs of failed TAP test $t ====="
        tail_file "$logdir/regress_log_$name" 80
        for f in "$logdir/${name}"_*.log; do
            [[ -f $f ]] && tail_file "$f" 50
        done
    done
    return 0
}

# ---------------------------------------------------------------- main

trap 'exit 130' INT
trap 'exit 143' TERM

echo "outbox tests: suites: ${suites[*]}"
echo "pg_config: $pg_config_bin ($("$pg_config_bin" --version)); running as $(id -un)"
echo "tests: $testdir; scratch: $outdir"

passed=0
failed=0
report=()
for suite in "${suites[@]}"; do
    echo
    hr
    echo "== suite: $suite"
    hr
    start=$SECONDS
    set +e
    (
        set -e
        cd "$testdir"
        shopt -s nullglob
        "suite_$suite"
    )
    rc=$?
    set -e
    stop_leftover_servers "$outdir/$suite"
    secs=$(( SECONDS - start ))
    if (( rc == 0 )); then
        passed=$(( passed + 1 ))
        echo "== suite $suite: PASSED (${secs}s)"
        if [[ -e $outdir/$suite.no-tests ]]; then
            report+=("  $suite: passed (no tests yet)")
        else
            report+=("  $suite: passed (${secs}s)")
        fi
    else
        failed=$(( failed + 1 ))
        failed_"$suite" || true
        echo "== suite $suite: FAILED (exit $rc, ${secs}s)"
        report+=("  $suite: FAILED (${secs}s)")
    fi
done

echo
hr
echo "summary:"
printf '%s\n' "${report[@]}"
if (( failed == 0 )) && [[ -z ${PG_TEST_NOCLEAN:-} ]]; then
    if [[ -n $own_outdir ]]; then
        rm -rf -- "$outdir"
    fi
else
    echo "test output kept in $outdir"
fi
echo "$passed passed, $failed failed"
(( failed == 0 ))
