#!/usr/bin/env bash
# bench/nats.sh -- how fast the nats publisher drains a backlog into a
# single-node JetStream stream (file storage), beside the notify publisher
# draining the same backlog on the same machine in the same run.
#
#   sudo bash bench/nats.sh            # 200,000 messages, 3 runs each
#   sudo bash bench/nats.sh quick      # 20,000 messages, 1 run each (smoke)
#
# What it does:
#   1. starts nats-server -js on a free loopback port (store in a temp dir)
#      and creates the stream BENCH (subjects bench.>, file storage, 1 replica);
#   2. starts a throw-away cluster (Unix socket only) with
#      shared_preload_libraries = 'outbox, outbox_nats', outbox.publisher =
#      'nats' and outbox.enabled = off;
#   3. per run: saves the backlog with INSERT ... SELECT (100-byte JSON
#      payloads, 1000 keys), switches the worker on and times the drain:
#      messages/s = messages / (last processed_at - switch-on); checks that
#      the stream got exactly one copy of each; then empties both;
#   4. the same with outbox.publisher = 'notify' (no listener) as baseline;
#   5. prints a Markdown report (median of the runs) for bench/RESULTS-nats.md.
#
# Environment: PG_CONFIG, MESSAGES (200000), RUNS (3), BATCH_SIZE (outbox.
# batch_size, default 1000), MAX_PENDING (outbox.nats_max_pending, 256).
# Needs nats-server, the outbox and outbox_nats libraries installed (make
# install with libnats-dev) and test/brokers/nats_js (built if missing).
# Run as root: the cluster runs as "postgres".
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/pg.sh
. "$here/pg.sh"
find_outbox_install bench/nats.sh

MESSAGES=${MESSAGES:-200000}
RUNS=${RUNS:-3}
if [[ ${1:-} == quick ]]; then
    MESSAGES=20000
    RUNS=1
fi
BATCH_SIZE=${BATCH_SIZE:-1000}
MAX_PENDING=${MAX_PENDING:-256}

[[ -f $pkglibdir/outbox_nats.so ]] ||
    { echo "bench/nats.sh: outbox_nats is not installed in $pkglibdir (make install with libnats-dev)" >&2; exit 1; }
nats_server=$(command -v nats-server || true)
[[ -z $nats_server && -x /usr/sbin/nats-server ]] && nats_server=/usr/sbin/nats-server
[[ -n $nats_server ]] || { echo "bench/nats.sh: nats-server not found (apt-get install nats-server)" >&2; exit 1; }
nats_js=$here/../test/brokers/nats_js
[[ -x $nats_js ]] || make -s -C "$here/../test/brokers" BROKERS=nats nats_js >/dev/null
[[ $(id -u) -eq 0 ]] || { echo "bench/nats.sh: run as root (the cluster runs as postgres)" >&2; exit 1; }

bench_work nats
mkdir "$work/nats"
nats_pid=

cleanup() {
    stop_bench_cluster
    if [[ -n $nats_pid ]]; then
        kill "$nats_pid" 2>/dev/null || true
        wait "$nats_pid" 2>/dev/null || true
    fi
    rm -rf -- "$work"
}
trap cleanup EXIT

# ------------------------------------------------------------------ nats-server
port=$(free_port)
"$nats_server" -js -a 127.0.0.1 -p "$port" -sd "$work/nats/store" >"$work/nats/server.log" 2>&1 &
nats_pid=$!
url=nats://127.0.0.1:$port
"$nats_js" "$url" wait-ready 30
"$nats_js" "$url" add-stream BENCH 'bench.>' 1

# ------------------------------------------------------------------ cluster
start_bench_cluster 'outbox, outbox_nats' "outbox.publisher = 'nats'
outbox.nats_url = '$url'
outbox.nats_subject = 'bench.{topic}'
outbox.nats_max_pending = $MAX_PENDING
outbox.batch_size = $BATCH_SIZE"

# run PUBLISHER: one timed drain; prints "rate cpu_us_per_message"
run() {
    local publisher=$1 seconds wpid cpu0 cpu1 processed stored
    psql_pg -c "ALTER SYSTEM SET outbox.publisher = '$publisher'" -c "SELECT pg_reload_conf()" >/dev/null
    save_backlog "$MESSAGES"
    wpid=$(worker_pid)
    cpu0=$(cpu_seconds "$wpid")
    seconds=$(drain_seconds)
    cpu1=$(cpu_seconds "$wpid")
    set_enabled off
    processed=$(psql_pg -c "SELECT count(*) FROM outbox.messages WHERE status = 'processed' AND retries = 0")
    [[ $processed == "$MESSAGES" ]] ||
        { echo "bench/nats.sh: only $processed of $MESSAGES processed at the first attempt" >&2; exit 1; }
    if [[ $publisher == nats ]]; then
        stored=$("$nats_js" "$url" info BENCH)
        [[ $stored == "$MESSAGES" ]] ||
            { echo "bench/nats.sh: the stream holds $stored messages, not $MESSAGES" >&2; exit 1; }
        "$nats_js" "$url" delete-stream BENCH
        "$nats_js" "$url" add-stream BENCH 'bench.>' 1
    fi
    python3 -c "print(round($MESSAGES / $seconds), round(($cpu1 - $cpu0) / $MESSAGES * 1e6, 1), round($seconds, 2))"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
nats_lines=()
notify_lines=()
for (( r = 1; r <= RUNS; r++ )); do
    nats_lines+=("$(run nats)")
    notify_lines+=("$(run notify)")
    echo "run $r: nats ${nats_lines[-1]}, notify ${notify_lines[-1]} (msg/s, worker µs/msg, s)" >&2
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
nats_rate=$(printf '%s\n' "${nats_lines[@]}" | awk '{ print $1 }' | median)
notify_rate=$(printf '%s\n' "${notify_lines[@]}" | awk '{ print $1 }' | median)
nats_us=$(printf '%s\n' "${nats_lines[@]}" | awk '{ print $2 }' | median)
notify_us=$(printf '%s\n' "${notify_lines[@]}" | awk '{ print $2 }' | median)
stop_bench_cluster fast

cat <<EOF
## NATS publisher: messages/s into JetStream

$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')),
$("$pg_config_bin" --version), nats-server $("$nats_server" --version | awk '{ print $2 }'),
libnats $(pkg-config --modversion libnats 2>/dev/null || echo '?').
Load average before / after: $load_before / $load_after.

$MESSAGES messages (100-byte JSON payloads, 1000 keys) saved with INSERT ... SELECT while
\`outbox.enabled = off\`, then timed from switching it on to the last \`processed_at\`;
\`outbox.batch_size = $BATCH_SIZE\`, \`outbox.nats_max_pending = $MAX_PENDING\`, every other
setting at its default. One nats-server (\`-js\`, file storage) on loopback; stream BENCH
(\`bench.>\`, 1 replica, file storage), recreated before each run. Median of $RUNS run(s),
nats and notify alternating.

| publisher | messages/s (median) | worker CPU per message | runs (msg/s, µs/msg, s) |
| --- | ---: | ---: | --- |
| nats (JetStream, PubAck per message) | **$nats_rate** | $nats_us µs | $(printf '%s; ' "${nats_lines[@]}") |
| notify (baseline, same backlog) | $notify_rate | $notify_us µs | $(printf '%s; ' "${notify_lines[@]}") |

Checks: every run processed all $MESSAGES messages at the first attempt, and the stream held
exactly $MESSAGES messages after each nats run.

Reproduce: \`sudo bash bench/nats.sh\` (\`quick\` for a smoke run; MESSAGES, RUNS, BATCH_SIZE,
MAX_PENDING to vary).
EOF
