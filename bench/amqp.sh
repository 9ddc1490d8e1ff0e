#!/usr/bin/env bash
# bench/amqp.sh -- how fast the amqp publisher drains a backlog into a
# durable RabbitMQ queue (persistent messages, publisher confirms), beside
# the notify publisher draining the same backlog on the same machine in the
# same run.
#
#   sudo bash bench/amqp.sh            # 200,000 messages, 3 runs each
#   sudo bash bench/amqp.sh quick      # 20,000 messages, 1 run each (smoke)
#
# What it does:
#   1. starts a throw-away RabbitMQ node as "postgres" (its own node name,
#      loopback port, Erlang distribution port, epmd, HOME and data under a
#      temp dir), declares the durable queue "bench" bound to amq.topic with
#      "bench.#";
#   2. starts a throw-away cluster (Unix socket only) with
#      shared_preload_libraries = 'outbox, outbox_amqp', outbox.publisher =
#      'amqp', routing key 'bench.{topic}' and outbox.enabled = off;
#   3. per run: saves the backlog with INSERT ... SELECT (100-byte JSON
#      payloads, 1000 keys), switches the worker on and times the drain:
#      messages/s = messages / (last processed_at - switch-on); checks that
#      the queue got exactly one copy of each; then empties both;
#   4. the same with outbox.publisher = 'notify' (no listener) as baseline;
#   5. what the broker takes from a bare librabbitmq client on this machine:
#      test/brokers/amqp_tool publishes the same number of messages of the
#      same shape (body, properties, headers) with the same confirm window;
#   6. prints a Markdown report (median of the runs) for bench/RESULTS-amqp.md.
#
# Environment: PG_CONFIG, MESSAGES (200000), RUNS (3), BATCH_SIZE (outbox.
# batch_size, default 1000), MAX_PENDING (outbox.amqp_max_pending, 256).
# Needs rabbitmq-server, the outbox and outbox_amqp libraries installed
# (make install with librabbitmq-dev) and test/brokers/amqp_tool (built if
# missing).  Run as root: the cluster and the broker run as "postgres".
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/pg.sh
. "$here/pg.sh"
find_outbox_install bench/amqp.sh

MESSAGES=${MESSAGES:-200000}
RUNS=${RUNS:-3}
if [[ ${1:-} == quick ]]; then
    MESSAGES=20000
    RUNS=1
fi
BATCH_SIZE=${BATCH_SIZE:-1000}
MAX_PENDING=${MAX_PENDING:-256}

[[ -f $pkglibdir/outbox_amqp.so ]] ||
    { echo "bench/amqp.sh: outbox_amqp is not installed in $pkglibdir (make install with librabbitmq-dev)" >&2; exit 1; }
rabbitmq_server=/usr/lib/rabbitmq/bin/rabbitmq-server
[[ -x $rabbitmq_server ]] || { echo "bench/amqp.sh: rabbitmq-server not found (apt-get install rabbitmq-server)" >&2; exit 1; }
epmd=$(command -v epmd || true)
[[ -n $epmd ]] || { echo "bench/amqp.sh: epmd not found (it comes with rabbitmq-server's Erlang)" >&2; exit 1; }
amqp_tool=$here/../test/brokers/amqp_tool
[[ -x $amqp_tool ]] || make -s -C "$here/../test/brokers" BROKERS=amqp amqp_tool >/dev/null
[[ $(id -u) -eq 0 ]] || { echo "bench/amqp.sh: run as root (the cluster runs as postgres)" >&2; exit 1; }

bench_work amqp
mq=$work/rabbitmq
mkdir -p "$mq/home"
mq_pid=
epmd_pid=

cleanup() {
    stop_bench_cluster
    if [[ -n $mq_pid ]]; then
        kill "$mq_pid" 2>/dev/null || true
        wait "$mq_pid" 2>/dev/null || true
    fi
    if [[ -n $epmd_pid ]]; then
        kill "$epmd_pid" 2>/dev/null || true
        wait "$epmd_pid" 2>/dev/null || true
    fi
    rm -rf -- "$work"
}
trap cleanup EXIT

# ------------------------------------------------------------------ rabbitmq
port=$(free_port)
dist_port=$(free_port)
epmd_port=$(free_port)
password=bench-$RANDOM$RANDOM
cat >"$mq/rabbitmq.conf" <<CONF
listeners.tcp.1 = 127.0.0.1:$port
default_user = bench
default_pass = $password
log.console = false
vm_memory_high_watermark.absolute = 2GB
disk_free_limit.absolute = 50MB
CONF
echo '[].' >"$mq/enabled_plugins"
: >"$mq/rabbitmq-env.conf"
head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z' >"$mq/home/.erlang.cookie"
chmod 0400 "$mq/home/.erlang.cookie"
chown -R postgres: "$mq"
mq_env=(HOME="$mq/home" RABBITMQ_NODENAME="outbox_bench_$$@localhost" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
        RABBITMQ_NODE_PORT="$port" RABBITMQ_DIST_PORT="$dist_port" RABBITMQ_CONFIG_FILE="$mq/rabbitmq.conf"
        RABBITMQ_ADVANCED_CONFIG_FILE="$mq/advanced.config" RABBITMQ_CONF_ENV_FILE="$mq/rabbitmq-env.conf"
        RABBITMQ_ENABLED_PLUGINS_FILE="$mq/enabled_plugins" RABBITMQ_MNESIA_BASE="$mq/mnesia"
        RABBITMQ_LOG_BASE="$mq/log" RABBITMQ_PID_FILE="$mq/beam.pid" RABBITMQ_PLUGINS_EXPAND_DIR="$mq/plugins-expand"
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
        ERL_EPMD_PORT="$epmd_port" ERL_EPMD_ADDRESS=127.0.0.1)
runuser -u postgres -- "$epmd" -address 127.0.0.1 -port "$epmd_port" >"$mq/epmd.log" 2>&1 &
epmd_pid=$!
(cd "$mq" && exec runuser -u postgres -- env "${mq_env[@]}" "$rabbitmq_server") </dev/null >"$mq/server.log" 2>&1 &
mq_pid=$!
admin=amqp://bench:$password@127.0.0.1:$port/%2f
"$amqp_tool" "$admin" wait-ready 120 ||
    { echo "bench/amqp.sh: rabbitmq-server did not start; see $mq/server.log" >&2; tail -20 "$mq/server.log" >&2; exit 1; }
"$amqp_tool" "$admin" declare-queue bench
"$amqp_tool" "$admin" bind bench amq.topic 'bench.#'
mq_version=$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo '?')

# ------------------------------------------------------------------ cluster
start_bench_cluster 'outbox, outbox_amqp' "outbox.publisher = 'amqp'
outbox.amqp_url = 'amqp://127.0.0.1:$port'
outbox.amqp_username = 'bench'
outbox.amqp_password = '$password'
outbox.amqp_routing_key = 'bench.{topic}'
outbox.amqp_max_pending = $MAX_PENDING
outbox.batch_size = $BATCH_SIZE"

# run PUBLISHER: one timed drain; prints "rate cpu_us_per_message seconds"
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
        { echo "bench/amqp.sh: only $processed of $MESSAGES processed at the first attempt" >&2; exit 1; }
    if [[ $publisher == amqp ]]; then
        stored=$("$amqp_tool" "$admin" count bench)
        [[ $stored == "$MESSAGES" ]] ||
            { echo "bench/amqp.sh: the queue holds $stored messages, not $MESSAGES" >&2; exit 1; }
        "$amqp_tool" "$admin" purge bench
    fi
    python3 -c "print(round($MESSAGES / $seconds), round(($cpu1 - $cpu0) / $MESSAGES * 1e6, 1), round($seconds, 2))"
}

# bare: the same messages from a bare librabbitmq client; prints "rate"
bare() {
    local rate
    rate=$("$amqp_tool" "$admin" publish amq.topic bench.orders "$MESSAGES" "$MAX_PENDING")
    "$amqp_tool" "$admin" purge bench
    echo "$rate"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
amqp_lines=()
notify_lines=()
bare_lines=()
for (( r = 1; r <= RUNS; r++ )); do
    amqp_lines+=("$(run amqp)")
    notify_lines+=("$(run notify)")
    bare_lines+=("$(bare)")
    echo "run $r: amqp ${amqp_lines[-1]}, notify ${notify_lines[-1]} (msg/s, worker µs/msg, s), bare client ${bare_lines[-1]} msg/s" >&2
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
amqp_rate=$(printf '%s\n' "${amqp_lines[@]}" | awk '{ print $1 }' | median)
notify_rate=$(printf '%s\n' "${notify_lines[@]}" | awk '{ print $1 }' | median)
amqp_us=$(printf '%s\n' "${amqp_lines[@]}" | awk '{ print $2 }' | median)
notify_us=$(printf '%s\n' "${notify_lines[@]}" | awk '{ print $2 }' | median)
bare_rate=$(printf '%s\n' "${bare_lines[@]}" | median)
pct() { python3 -c "print(round(100 * $1 / $2))"; }
stop_bench_cluster fast

cat <<EOF
## AMQP publisher: messages/s into RabbitMQ

$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')),
$("$pg_config_bin" --version), RabbitMQ $mq_version (Erlang $(dpkg-query -W -f='${Version}' erlang-base 2>/dev/null || echo '?')),
librabbitmq $(pkg-config --modversion librabbitmq 2>/dev/null || echo '?').
Load average before / after: $load_before / $load_after.

$MESSAGES messages (100-byte JSON payloads, 1000 keys) saved with INSERT ... SELECT while
\`outbox.enabled = off\`, then timed from switching it on to the last \`processed_at\`;
\`outbox.batch_size = $BATCH_SIZE\`, \`outbox.amqp_max_pending = $MAX_PENDING\`, every other
setting at its default. One RabbitMQ node on loopback; messages published persistent and
mandatory to amq.topic (routing key \`bench.orders\`), confirmed by publisher confirms, into
the durable classic queue \`bench\` (bound with \`bench.#\`), purged after each run. Median of
$RUNS run(s), amqp and notify alternating.

| publisher | messages/s (median) | worker CPU per message | runs (msg/s, µs/msg, s) |
| --- | ---: | ---: | --- |
| amqp (RabbitMQ, persistent, publisher confirms) | **$amqp_rate** | $amqp_us µs | $(printf '%s; ' "${amqp_lines[@]}") |
| notify (baseline, same backlog) | $notify_rate | $notify_us µs | $(printf '%s; ' "${notify_lines[@]}") |
| bare librabbitmq client, same messages and confirm window (no database) | $bare_rate | | $(printf '%s; ' "${bare_lines[@]}") |

The amqp publisher reached $(pct "$amqp_rate" "$notify_rate")% of notify's rate and $(pct "$amqp_rate" "$bare_rate")% of what the
broker took from a bare client in the same run.

Checks: every run processed all $MESSAGES messages at the first attempt, and the queue held
exactly $MESSAGES messages after each amqp run.

Reproduce: \`sudo bash bench/amqp.sh\` (\`quick\` for a smoke run; MESSAGES, RUNS, BATCH_SIZE,
MAX_PENDING to vary).
EOF
