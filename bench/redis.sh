#!/usr/bin/env bash
# bench/redis.sh -- how fast the redis publisher drains a backlog into a
# Redis stream (AOF on, appendfsync everysec), beside the notify publisher
# draining the same backlog on the same machine in the same run.
#
#   sudo bash bench/redis.sh            # 200,000 messages, 3 runs each
#   sudo bash bench/redis.sh quick      # 20,000 messages, 1 run each (smoke)
#
# What it does:
#   1. starts a throw-away redis-server as "postgres" on a free loopback
#      port (data in a temp dir, appendonly yes, appendfsync everysec, a
#      password for the default user);
#   2. starts a throw-away cluster (Unix socket only) with
#      shared_preload_libraries = 'outbox, outbox_redis', outbox.publisher =
#      'redis', stream 'bench:{topic}' and outbox.enabled = off;
#   3. per run: saves the backlog with INSERT ... SELECT (100-byte JSON
#      payloads, 1000 keys), switches the worker on and times the drain:
#      messages/s = messages / (last processed_at - switch-on); checks that
#      the stream got exactly one entry per message; then empties both;
#   4. the same with outbox.publisher = 'notify' (no listener) as baseline;
#   5. what Redis takes from redis-benchmark on this machine: plain XADDs
#      of a 100-byte field, pipelined 1000 deep (no script, no database);
#   6. prints a Markdown report (median of the runs) for bench/RESULTS-redis.md.
#
# Environment: PG_CONFIG, MESSAGES (200000), RUNS (3), BATCH_SIZE (outbox.
# batch_size, default 1000).  Needs redis-server (and redis-benchmark, from
# redis-tools), the outbox and outbox_redis libraries installed (make
# install with libhiredis-dev).  Run as root: the cluster and Redis run as
# "postgres".
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/pg.sh
. "$here/pg.sh"
find_outbox_install bench/redis.sh

MESSAGES=${MESSAGES:-200000}
RUNS=${RUNS:-3}
if [[ ${1:-} == quick ]]; then
    MESSAGES=20000
    RUNS=1
fi
BATCH_SIZE=${BATCH_SIZE:-1000}

[[ -f $pkglibdir/outbox_redis.so ]] ||
    { echo "bench/redis.sh: outbox_redis is not installed in $pkglibdir (make install with libhiredis-dev)" >&2; exit 1; }
redis_server=$(command -v redis-server || true)
[[ -n $redis_server ]] || { echo "bench/redis.sh: redis-server not found (apt-get install redis-server)" >&2; exit 1; }
redis_cli=$(command -v redis-cli || true)
redis_benchmark=$(command -v redis-benchmark || true)
[[ -n $redis_cli && -n $redis_benchmark ]] ||
    { echo "bench/redis.sh: redis-cli and redis-benchmark not found (apt-get install redis-tools)" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "bench/redis.sh: run as root (the cluster runs as postgres)" >&2; exit 1; }

bench_work redis
rdir=$work/redis
mkdir "$rdir"
redis_pid=

cleanup() {
    stop_bench_cluster
    if [[ -n $redis_pid ]]; then
        kill "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    rm -rf -- "$work"
}
trap cleanup EXIT

# ------------------------------------------------------------------ redis-server
port=$(free_port)
password=bench-$RANDOM$RANDOM
cat >"$rdir/redis.conf" <<CONF
bind 127.0.0.1
port $port
dir $rdir
daemonize no
protected-mode no
logfile $rdir/redis.log
save ""
appendonly yes
appendfsync everysec
requirepass $password
CONF
chown -R postgres: "$rdir"
runuser -u postgres -- "$redis_server" "$rdir/redis.conf" </dev/null >/dev/null 2>&1 &
redis_pid=$!
rcli() { REDISCLI_AUTH=$password "$redis_cli" -p "$port" --no-auth-warning "$@"; }
for _ in $(seq 100); do
    [[ $(rcli PING 2>/dev/null) == PONG ]] && break
    sleep 0.1
done
[[ $(rcli PING 2>/dev/null) == PONG ]] || { echo "bench/redis.sh: redis-server did not start" >&2; exit 1; }
redis_version=$("$redis_server" --version | sed 's/.* v=\([^ ]*\).*/\1/')

# ------------------------------------------------------------------ cluster
start_bench_cluster 'outbox, outbox_redis' "outbox.publisher = 'redis'
outbox.redis_url = 'redis://127.0.0.1:$port'
outbox.redis_password = '$password'
outbox.redis_stream = 'bench:{topic}'
outbox.batch_size = $BATCH_SIZE"

# run PUBLISHER: one timed drain; prints "rate cpu_us_per_message seconds late"
run() {
    local publisher=$1 seconds wpid cpu0 cpu1 processed stored late=0
    psql_pg -c "ALTER SYSTEM SET outbox.publisher = '$publisher'" -c "SELECT pg_reload_conf()" >/dev/null
    save_backlog "$MESSAGES"
    wpid=$(worker_pid)
    cpu0=$(cpu_seconds "$wpid")
    seconds=$(drain_seconds)
    cpu1=$(cpu_seconds "$wpid")
    set_enabled off
    processed=$(psql_pg -c "SELECT count(*) FROM outbox.messages WHERE status = 'processed' AND retries = 0")
    [[ $processed == "$MESSAGES" ]] ||
        { echo "bench/redis.sh: only $processed of $MESSAGES processed at the first attempt" >&2; exit 1; }
    if [[ $publisher == redis ]]; then
        stored=$(rcli XLEN bench:orders)
        [[ $stored == "$MESSAGES" ]] ||
            { echo "bench/redis.sh: the stream holds $stored entries, not $MESSAGES" >&2; exit 1; }
        late=$(rcli ZCARD bench:orders:outbox-late)
        rcli DEL bench:orders bench:orders:outbox-late >/dev/null
    fi
    python3 -c "print(round($MESSAGES / $seconds), round(($cpu1 - $cpu0) / $MESSAGES * 1e6, 1), round($seconds, 2), $late)"
}

# ceiling: redis-benchmark's pipelined XADDs; prints "requests/s"
ceiling() {
    local out
    out=$(REDISCLI_AUTH=$password "$redis_benchmark" -p "$port" -a "$password" -n "$MESSAGES" -P 1000 -c 1 -q \
          XADD benchceiling '*' payload "$bench_body" 2>/dev/null | tr '\r' '\n' | grep 'requests per second' | tail -1)
    rcli DEL benchceiling >/dev/null
    awk '{ for (i = 1; i <= NF; i++) if ($(i + 1) == "requests") { print int($i); exit } }' <<<"$out"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
redis_lines=()
notify_lines=()
ceiling_lines=()
for (( r = 1; r <= RUNS; r++ )); do
    redis_lines+=("$(run redis)")
    notify_lines+=("$(run notify)")
    ceiling_lines+=("$(ceiling)")
    echo "run $r: redis ${redis_lines[-1]}, notify ${notify_lines[-1]} (msg/s, worker µs/msg, s, late), redis-benchmark XADD ${ceiling_lines[-1]}/s" >&2
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
redis_rate=$(printf '%s\n' "${redis_lines[@]}" | awk '{ print $1 }' | median)
notify_rate=$(printf '%s\n' "${notify_lines[@]}" | awk '{ print $1 }' | median)
redis_us=$(printf '%s\n' "${redis_lines[@]}" | awk '{ print $2 }' | median)
notify_us=$(printf '%s\n' "${notify_lines[@]}" | awk '{ print $2 }' | median)
ceiling_rate=$(printf '%s\n' "${ceiling_lines[@]}" | median)
pct() { python3 -c "print(round(100 * $1 / $2))"; }
stop_bench_cluster fast

cat <<EOF
## Redis publisher: messages/s into a Redis stream

$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')),
$("$pg_config_bin" --version), Redis $redis_version, hiredis $(pkg-config --modversion hiredis 2>/dev/null || echo '?').
Load average before / after: $load_before / $load_after.

$MESSAGES messages (100-byte JSON payloads, 1000 keys) saved with INSERT ... SELECT while
\`outbox.enabled = off\`, then timed from switching it on to the last \`processed_at\`;
\`outbox.batch_size = $BATCH_SIZE\`, every other setting at its default. One redis-server on
loopback (\`appendonly yes\`, \`appendfsync everysec\`, a password); each message added by the
publisher's script (EVALSHA: XADD with the id derived from the message id) to the stream
\`bench:orders\`, deleted after each run. Median of $RUNS run(s), redis and notify alternating.

| publisher | messages/s (median) | worker CPU per message | runs (msg/s, µs/msg, s, late entries) |
| --- | ---: | ---: | --- |
| redis (stream, EVALSHA + XADD per message, pipelined) | **$redis_rate** | $redis_us µs | $(printf '%s; ' "${redis_lines[@]}") |
| notify (baseline, same backlog) | $notify_rate | $notify_us µs | $(printf '%s; ' "${notify_lines[@]}") |
| redis-benchmark: plain XADD, 100-byte field, pipelined 1000 deep (no database) | $ceiling_rate | | $(printf '%s; ' "${ceiling_lines[@]}") |

The redis publisher reached $(pct "$redis_rate" "$notify_rate")% of notify's rate. Checks: every run processed all
$MESSAGES messages at the first attempt, and the stream held exactly $MESSAGES entries after each
redis run.

Reproduce: \`sudo bash bench/redis.sh\` (\`quick\` for a smoke run; MESSAGES, RUNS, BATCH_SIZE to
vary).
EOF
