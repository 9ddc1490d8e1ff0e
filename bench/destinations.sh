#!/usr/bin/env bash
# bench/destinations.sh -- what destinations cost and how well they are
# isolated, all in one throw-away cluster, ratios taken in the same run.
#
#   sudo bash bench/destinations.sh          # 200,000 messages, 3 runs each
#   sudo bash bench/destinations.sh quick    # 20,000 messages, 1 run each
#
# Scenarios:
#   1. save: pgbench, 8 clients, one message per transaction, for SECONDS
#      seconds each, round-robin: a plain INSERT into a table of the same
#      shape; outbox.save() with no destination; outbox.save() of a topic
#      that three destinations subscribe to.  The ratio to the plain INSERT
#      is the figure (issue 13: >= 0.85x with three destinations).
#   2. drain: a backlog of MESSAGES saved while the workers are off, then
#      switched on: (a) the default destination (notify) alone; (b) three
#      notify destinations subscribed to the backlog's topic.  A
#      destination's time is until its position passed the last message
#      (outbox.destination_progress); the default destination's until the
#      last processed_at.  Each of the three against (a) is the figure
#      (>= 50%).
#   3. isolation: a notify destination draining MESSAGES alone, then beside
#      an http destination whose endpoint accepts connections and never
#      answers (timeout 5 s).  The notify destination's rate beside it
#      against alone is the figure (>= 90%).
# synchronous_commit is off, so the save figures show the CPU cost of saving
# (routing included), not the disk's flush rate.  Prints a Markdown report
# for bench/RESULTS-destinations.md.
#
# Environment: PG_CONFIG, MESSAGES (200000), RUNS (3), SECONDS (10),
# BATCH_SIZE (outbox.batch_size, default 100).  Run as root: the cluster
# runs as "postgres".
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/pg.sh
. "$here/pg.sh"
find_outbox_install bench/destinations.sh

MESSAGES=${MESSAGES:-200000}
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS:-10}
if [[ ${1:-} == quick ]]; then
    MESSAGES=20000
    RUNS=1
    SECONDS_PER_RUN=3
fi
BATCH_SIZE=${BATCH_SIZE:-100}
[[ $(id -u) -eq 0 ]] || { echo "bench/destinations.sh: run as root (the cluster runs as postgres)" >&2; exit 1; }

bench_work destinations
hung_pid=

cleanup() {
    stop_bench_cluster
    if [[ -n $hung_pid ]]; then
        kill "$hung_pid" 2>/dev/null || true
        wait "$hung_pid" 2>/dev/null || true
    fi
    rm -rf -- "$work"
}
trap cleanup EXIT

# An endpoint that accepts connections and reads, and never answers.
hung_port=$(free_port)
python3 - "$hung_port" <<'PY' &
import socket, sys, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(512)
def hold(conn):
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass
while True:
    conn, _ = srv.accept()
    threading.Thread(target=hold, args=(conn,), daemon=True).start()
PY
hung_pid=$!

start_bench_cluster 'outbox' "outbox.batch_size = $BATCH_SIZE
max_worker_processes = 16
max_connections = 40
synchronous_commit = off"
psql_pg -c "CREATE TABLE bench_plain (LIKE outbox.messages INCLUDING DEFAULTS INCLUDING INDEXES)" \
        -c "ALTER TABLE bench_plain ALTER COLUMN id SET DEFAULT gen_random_uuid()"
machine_load() { cut -d' ' -f1-3 /proc/loadavg; }
load_start=$(machine_load)

# ------------------------------------------------------------------ helpers
reset_destinations() {
    set_enabled off
    psql_pg -c "SELECT outbox.drop_destination(name, force => true) FROM outbox.destinations" >/dev/null
    psql_pg -c "TRUNCATE outbox.messages, outbox.delivery, outbox.destination_progress, bench_plain"
}

# pgbench_tps SCRIPT: transactions per second of SCRIPT, 8 clients.
pgbench_tps() {
    printf '%s\n' "$1" >"$work/script.sql"
    chown postgres: "$work/script.sql"
    as_pg "$bindir/pgbench" -n -h "$work/sock" -p 5432 -c 8 -j 2 -M prepared \
        -T "$SECONDS_PER_RUN" -f "$work/script.sql" postgres 2>/dev/null |
        awk '/^tps = / { printf "%d\n", $3 }'
}

# The seconds from switch-on until every named destination's position is
# past the last message, one line "name seconds" each.
destination_drain() {
    local t0 last names left
    last=$(psql_pg -c "SELECT id FROM outbox.messages ORDER BY id DESC LIMIT 1")
    names=$(psql_pg -c "SELECT string_agg(quote_literal(name), ',') FROM outbox.destinations")
    t0=$(psql_pg -c "ALTER SYSTEM SET outbox.enabled = on" -c "SELECT pg_reload_conf()" \
                 -c "SELECT clock_timestamp()" | tail -n 1)
    while :; do
        left=$(psql_pg -c "SELECT count(*) FROM outbox.destination d WHERE d.name IN ($names)
                           AND outbox.destination_position(d.id) < '$last'")
        [[ $left == 0 ]] && break
        sleep 0.2
    done
    psql_pg -F ' ' -c "SELECT d.name, extract(epoch FROM (SELECT min(p.at) FROM outbox.destination_progress p
                               WHERE p.destination_id = d.id AND p.upto >= '$last') - '$t0'::timestamptz)
                       FROM outbox.destination d WHERE d.name IN ($names) ORDER BY d.name"
}

backlog() {
    psql_pg -c "INSERT INTO outbox.messages (topic, payload, key)
                SELECT '$1', convert_to('$bench_body', 'UTF8'), 'customer-' || (i % 1000)
                FROM generate_series(1, $MESSAGES) i" -c 'VACUUM ANALYZE outbox.messages'
}

rate() { awk -v n="$MESSAGES" -v s="$1" 'BEGIN { printf "%d", n / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# ------------------------------------------------------------------ 1. save
echo "== save (${SECONDS_PER_RUN} s per run, $RUNS runs)" >&2
reset_destinations
psql_pg -c "SELECT outbox.create_destination(d, 'notify', '{\"channel\": \"bench\"}'),
                   outbox.subscribe(d, 'fanout.*')
            FROM unnest(ARRAY['d1', 'd2', 'd3']) d" >/dev/null
plain_runs=() save_runs=() fan_runs=()
for r in $(seq "$RUNS"); do
    plain_runs+=("$(pgbench_tps "INSERT INTO bench_plain (topic, payload, key) VALUES ('orders.created', convert_to('$bench_body', 'UTF8'), 'k' || (random() * 1000)::int);")")
    save_runs+=("$(pgbench_tps "SELECT outbox.save('orders.created', '$bench_body'::jsonb, 'k' || (random() * 1000)::int);")")
    fan_runs+=("$(pgbench_tps "SELECT outbox.save('fanout.created', '$bench_body'::jsonb, 'k' || (random() * 1000)::int);")")
    psql_pg -c "TRUNCATE outbox.messages, bench_plain"
    echo "   run $r: plain ${plain_runs[-1]}, save ${save_runs[-1]}, save to 3 destinations ${fan_runs[-1]} tps" >&2
done
plain=$(printf '%s\n' "${plain_runs[@]}" | median)
save=$(printf '%s\n' "${save_runs[@]}" | median)
fan=$(printf '%s\n' "${fan_runs[@]}" | median)

# ------------------------------------------------------------------ 2. drain
echo "== drain ($MESSAGES messages, $RUNS runs)" >&2
one_runs=() three_runs=()
for r in $(seq "$RUNS"); do
    reset_destinations
    backlog orders.created
    one=$(drain_seconds)
    one_runs+=("$(rate "$one")")
    reset_destinations
    psql_pg -c "SELECT outbox.create_destination(d, 'notify', '{\"channel\": \"bench\"}'),
                       outbox.subscribe(d, 'fanout.*')
                FROM unnest(ARRAY['d1', 'd2', 'd3']) d" >/dev/null
    backlog fanout.created
    slowest=0
    while read -r name secs; do
        three_runs+=("$(rate "$secs")")
        slowest=$(awk -v a="$slowest" -v b="$secs" 'BEGIN { print (b > a ? b : a) }')
    done < <(destination_drain)
    echo "   run $r: default alone $(rate "$one") msg/s; three destinations: ${three_runs[*]: -3} msg/s each" >&2
done
one_rate=$(printf '%s\n' "${one_runs[@]}" | median)
three_rate=$(printf '%s\n' "${three_runs[@]}" | median)
three_min=$(printf '%s\n' "${three_runs[@]}" | sort -n | head -n 1)

# ------------------------------------------------------------------ 3. isolation
echo "== isolation ($MESSAGES messages, $RUNS runs)" >&2
alone_runs=() beside_runs=()
for r in $(seq "$RUNS"); do
    reset_destinations
    psql_pg -c "SELECT outbox.create_destination('fast', 'notify', '{\"channel\": \"bench\"}'),
                       outbox.subscribe('fast', 'iso.*')" >/dev/null
    backlog iso.created
    alone_runs+=("$(rate "$(destination_drain | awk '{ print $2 }')")")
    reset_destinations
    psql_pg -c "SELECT outbox.create_destination('fast', 'notify', '{\"channel\": \"bench\"}'),
                       outbox.subscribe('fast', 'iso.*'),
                       outbox.create_destination('hung', 'http',
                         '{\"url\": \"http://127.0.0.1:$hung_port/{topic}\", \"timeout\": \"5s\"}'),
                       outbox.subscribe('hung', 'iso.*')" >/dev/null
    backlog iso.created
    # time only "fast": "hung" never gets past its first batches
    last=$(psql_pg -c "SELECT id FROM outbox.messages ORDER BY id DESC LIMIT 1")
    t0=$(psql_pg -c "ALTER SYSTEM SET outbox.enabled = on" -c "SELECT pg_reload_conf()" \
                 -c "SELECT clock_timestamp()" | tail -n 1)
    until [[ $(psql_pg -c "SELECT outbox.destination_position(id) >= '$last' FROM outbox.destination WHERE name = 'fast'") == t ]]; do
        sleep 0.2
    done
    secs=$(psql_pg -c "SELECT extract(epoch FROM (SELECT min(p.at) FROM outbox.destination_progress p
                       JOIN outbox.destination d ON d.id = p.destination_id
                       WHERE d.name = 'fast' AND p.upto >= '$last') - '$t0'::timestamptz)")
    beside_runs+=("$(rate "$secs")")
    echo "   run $r: fast alone ${alone_runs[-1]} msg/s, beside a hung endpoint ${beside_runs[-1]} msg/s" >&2
done
alone=$(printf '%s\n' "${alone_runs[@]}" | median)
beside=$(printf '%s\n' "${beside_runs[@]}" | median)
load_end=$(machine_load)

# ------------------------------------------------------------------ report
cat <<EOF
## Destinations ($(date -u '+%Y-%m-%d %H:%M UTC'))

\`sudo bash bench/destinations.sh${1:+ $1}\`: one throw-away cluster, $MESSAGES messages per drain
(100-byte JSON, 1000 keys), outbox.batch_size = $BATCH_SIZE, $RUNS run(s) per figure (median),
8 pgbench clients for ${SECONDS_PER_RUN} s per save run; load average at start / end:
$load_start / $load_end.

| scenario | figure | ratio | target |
| --- | ---: | ---: | --- |
| save, plain INSERT into a table of the same shape | $plain tps | 1.00x | |
| \`outbox.save()\`, default destination | $save tps | $(ratio "$save" "$plain")x | no regression |
| \`outbox.save()\` of a topic three destinations subscribe to | $fan tps | $(ratio "$fan" "$plain")x | >= 0.85x |
| drain, the default destination (notify) alone | $one_rate msg/s | 1.00x | |
| drain, each of three notify destinations of one topic (median; slowest $three_min) | $three_rate msg/s | $(ratio "$three_rate" "$one_rate")x | >= 0.50x |
| a notify destination draining alone | $alone msg/s | 1.00x | |
| the same beside an http destination that hangs until its 5 s timeout | $beside msg/s | $(ratio "$beside" "$alone")x | >= 0.90x |
EOF
