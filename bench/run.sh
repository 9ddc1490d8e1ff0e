#!/usr/bin/env bash
# bench/run.sh -- run the outbox benchmark suite.
#
#   bash bench/run.sh full    # make bench: the issue's scales, writes bench/RESULTS.md
#   bash bench/run.sh quick   # make bench-quick: a few minutes, writes bench/RESULTS.md
#   bash bench/run.sh smoke   # every scenario at a tiny scale, in well under a
#                             # minute, to keep the scripts from rotting; writes
#                             # $BENCH_OUT (default /tmp/outbox-bench-smoke.md),
#                             # never bench/RESULTS.md
#
# Installs the Debian packages it needs (as root), checks that the outbox
# extension is installed (make install), then runs bench/bench.py, which
# starts its own throw-away cluster (Unix socket in a temporary directory,
# server run as the "postgres" OS user when we are root), runs the scenarios
# and writes the report.  Nothing here fails on a time figure.
#
# Environment: PG_CONFIG (default PostgreSQL 15's), BENCH_OUT (report path),
# BENCH_ONLY (comma-separated scenarios: save,drain,latency,keepup,profile),
# BENCH_WORKER_SETTINGS (an experiment: settings for the relay worker's
# session, e.g. "enable_seqscan=off,enable_sort=off", applied through a role
# of its own; use it with BENCH_OUT so bench/RESULTS.md is left alone).
set -euo pipefail

mode=${1:-quick}
case $mode in
    full|quick|smoke) ;;
    *) echo "usage: $0 full|quick|smoke" >&2; exit 2 ;;
esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

is_root() { [[ $(id -u) -eq 0 ]]; }

# ------------------------------------------------------------------ packages
# The packages come from the one list in scripts/packages.sh (group bench).
# linux-perf is for the profile section only; it is skipped when missing.
# shellcheck source=scripts/packages.sh
source "$here/../scripts/packages.sh"
outbox_ensure_packages bench >/dev/null || exit 1
optional=(linux-perf)
installed() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed$'; }
if command -v dpkg-query >/dev/null 2>&1 && is_root && [[ $mode != smoke ]]; then
    for p in "${optional[@]}"; do
        installed "$p" && continue
        echo "bench: installing $p (optional)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            -o Dpkg::Use-Pty=0 "$p" >/dev/null 2>&1 || echo "bench: $p not installed; no perf profile"
    done
fi

# shellcheck source=bench/pg.sh
source "$here/pg.sh"
find_outbox_install bench
if [[ ! -f $sharedir/extension/pgq.control ]]; then
    echo "bench: PgQ is not installed for $("$pg_config_bin" --version) (postgresql-15-pgq3)" >&2
    exit 1
fi

# ------------------------------------------------------------------ run
work=$(mktemp -d /tmp/outbox-bench.XXXXXX)
chmod 755 "$work"
run_as=()
if is_root; then
    id postgres >/dev/null 2>&1 || { echo "bench: no 'postgres' OS user" >&2; exit 1; }
    chown postgres "$work"
    run_as=(--run-as postgres)
fi

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$?
    set +e
    if [[ -f $work/RESULTS.md.partial ]]; then
        cp "$work/RESULTS.md.partial" /tmp/outbox-bench-partial.md &&
            echo "bench: partial report: /tmp/outbox-bench-partial.md" >&2
    fi
    if [[ -f $work/data/postmaster.pid ]]; then
        if is_root; then
            runuser -u postgres -- "$bindir/pg_ctl" -D "$work/data" -m immediate -w stop >/dev/null 2>&1
        else
            "$bindir/pg_ctl" -D "$work/data" -m immediate -w stop >/dev/null 2>&1
        fi
    fi
    rm -rf -- "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ $mode == smoke ]]; then
    out=${BENCH_OUT:-/tmp/outbox-bench-smoke.md}
else
    out=${BENCH_OUT:-$here/RESULTS.md}
fi
tmp_out=$work/RESULTS.md

args=(--mode "$mode" --work "$work" --out "$tmp_out" --bindir "$bindir" "${run_as[@]}")
if [[ -n ${BENCH_ONLY:-} ]]; then
    args+=(--only "$BENCH_ONLY")
fi
if [[ -n ${BENCH_WORKER_SETTINGS:-} ]]; then
    args+=(--worker-settings "$BENCH_WORKER_SETTINGS")
fi
# Debian's interpreter, which python3-psycopg2 is installed for (a python3
# earlier in PATH, from pyenv or a virtualenv, may not have it).
python=/usr/bin/python3
[[ -x $python ]] || python=python3
"$python" "$here/bench.py" "${args[@]}"
cp "$tmp_out" "$out"
# The raw figures, to write the report again after editing bench/NOTES.md:
#   python3 bench/bench.py --report-from /tmp/outbox-bench-last.json --out bench/RESULTS.md
cp "$work/results.json" /tmp/outbox-bench-last.json
echo "bench: $mode run done; report: $out"
