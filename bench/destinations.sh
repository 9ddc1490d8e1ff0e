#!/usr/bin/env bash
# bench/destinations.sh -- what destinations cost and how well they are
# isolated, all in one throw-away cluster, ratios taken in the same run.
#
#   sudo bash bench/destinations.sh          # 200,000 messages, 3 runs each
#   sudo bash bench/destinations.sh quick    # 20,000 messages, 1 run each
#
# Scenarios:
#   1. save: pgbench, 8 clients, one message per transaction, for SAVE_SECONDS
#      seconds each, round-robin: a plain INSERT into a table of the same
#      shape; outbox.save() with no destination; outbox.save() of a topic
#      that three destinations subscribe to; with the workers paused
#      (outbox.enabled = off: the save path alone, as bench/bench.py's save
#      figure), then the two saves again with the workers publishing
#      meanwhile on the same cores; each run on empty tables after a
#      checkpoint.  The paused ratio to the plain INSERT (the median of the
#      runs' ratios) is the figure (issue 13: >= 0.85x with three
#      destinations).
#   2. drain: a backlog of MESSAGES saved while the workers are off, then
#      switched on: (a) the default destination (notify) alone; (b) three
#      notify destinations subscribed to the backlog's topic.  A
#      destination's time runs from its first batch to the batch that took
#      its position past the last message (outbox.destination_progress); the
#      default destination's from the first processed_at to the last: the
#      rate of the MESSAGES - BATCH_SIZE messages after the first batch, so
#      that how soon a worker starts (a destination worker is started by
#      the launcher, the main worker waits on its latch) is not counted.
#      Each of the three against (a) is the figure (>= 50%).
#   3. isolation: a notify destination draining MESSAGES alone, beside a
#      paused http destination of the same topic, and beside one whose
#      endpoint accepts connections and never answers (timeout 5 s).  The
#      rate beside the hung one against beside the paused one (the same
#      work: see fast_rate) is the figure (>= 90%).
# synchronous_commit is off, so the save figures show the CPU cost of saving
# (routing included), not the disk's flush rate.  Prints a Markdown report
# for bench/RESULTS-destinations.md.
#
# Environment: PG_CONFIG, MESSAGES (200000), RUNS (3), SAVE_SECONDS (10),
# BATCH_SIZE (outbox.batch_size, default 100).  Run as root: the cluster
# runs as "postgres".
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/pg.sh
. "$here/pg.sh"
find_outbox_install bench/destinations.sh

MESSAGES=${MESSAGES:-200000}
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SAVE_SECONDS:-10}
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
# The baseline: a table of the same columns, defaults, CHECK constraints and
# indexes, with increasing ids from a sequence instead of outbox.next_id()
# (as bench/sql/setup.sql's): its primary key grows at its right edge, as
# outbox's UUIDv7 ids do, and no outbox code runs on its path.
psql_pg -c "CREATE SEQUENCE bench_plain_id" \
        -c "CREATE TABLE bench_plain (LIKE outbox.messages INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)" \
        -c "ALTER TABLE bench_plain ALTER COLUMN id SET DEFAULT lpad(to_hex(nextval('bench_plain_id')), 32, '0')::uuid"
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

# Switch the workers on, wait until every named destination's position is
# past the last message, and print one line "name seconds" each: from its
# first batch (not its starting position, written when it was created) to
# the batch that passed the last message.
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
                               WHERE p.destination_id = d.id AND p.upto >= '$last')
                             - (SELECT min(p.at) FROM outbox.destination_progress p WHERE p.destination_id = d.id
                                AND p.upto > (SELECT q.upto FROM outbox.destination_progress q
                                              WHERE q.destination_id = d.id ORDER BY q.upto LIMIT 1)))
                       FROM outbox.destination d WHERE d.name IN ($names) ORDER BY d.name"
}

backlog() {
    psql_pg -c "INSERT INTO outbox.messages (topic, payload, key)
                SELECT '$1', convert_to('$bench_body', 'UTF8'), 'customer-' || (i % 1000)
                FROM generate_series(1, $MESSAGES) i" -c 'VACUUM ANALYZE outbox.messages'
}

# The default destination's seconds from its first processed_at to its last.
default_drain() {
    drain_seconds >/dev/null
    psql_pg -c "SELECT extract(epoch FROM max(processed_at) - min(processed_at)) FROM outbox.messages"
}

# Messages per second after the first batch, given its seconds.
rate() { awk -v n="$((MESSAGES - BATCH_SIZE))" -v s="$1" 'BEGIN { printf "%d", n / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# ------------------------------------------------------------------ 1. save
echo "== save (${SECONDS_PER_RUN} s per run, $RUNS runs)" >&2
reset_destinations
psql_pg -c "SELECT outbox.create_destination(d, 'notify', '{\"channel\": \"bench\"}'),
                   outbox.subscribe(d, 'fanout.*')
            FROM unnest(ARRAY['d1', 'd2', 'd3']) d" >/dev/null
plain_sql="INSERT INTO bench_plain (topic, payload, key) VALUES ('orders.created', convert_to('$bench_body', 'UTF8'), 'k' || (random() * 1000)::int);"
save_default="SELECT outbox.save('orders.created', '$bench_body'::jsonb, 'k' || (random() * 1000)::int);"
save_fanout="SELECT outbox.save('fanout.created', '$bench_body'::jsonb, 'k' || (random() * 1000)::int);"
# save_run VARIANT: one run's tps, on empty tables after a checkpoint.
save_run() {
    psql_pg -c "TRUNCATE outbox.messages, outbox.delivery, bench_plain" -c CHECKPOINT >/dev/null
    case $1 in
        plain) set_enabled off; pgbench_tps "$plain_sql" ;;
        save) set_enabled off; pgbench_tps "$save_default" ;;
        fan) set_enabled off; pgbench_tps "$save_fanout" ;;
        save_live) set_enabled on; pgbench_tps "$save_default" ;;
        fan_live) set_enabled on; pgbench_tps "$save_fanout" ;;
    esac
}
variants=(plain save fan save_live fan_live)
declare -A tps
save_ratios=() fan_ratios=() save_live_ratios=() fan_live_ratios=() plain_runs=()
for r in $(seq "$RUNS"); do
    # round-robin: each run starts one variant later, so drift hits all alike
    for k in $(seq 0 $(( ${#variants[@]} - 1 ))); do
        v=${variants[$(( (k + r - 1) % ${#variants[@]} ))]}
        tps[$v]=$(save_run "$v")
    done
    set_enabled off
    plain_runs+=("${tps[plain]}")
    save_ratios+=("$(ratio "${tps[save]}" "${tps[plain]}")")
    fan_ratios+=("$(ratio "${tps[fan]}" "${tps[plain]}")")
    save_live_ratios+=("$(ratio "${tps[save_live]}" "${tps[plain]}")")
    fan_live_ratios+=("$(ratio "${tps[fan_live]}" "${tps[plain]}")")
    echo "   run $r: plain ${tps[plain]}, save ${tps[save]}, save to 3 destinations ${tps[fan]} tps;" \
         "workers publishing: save ${tps[save_live]}, to 3 destinations ${tps[fan_live]} tps" >&2
done
psql_pg -c "TRUNCATE outbox.messages, outbox.delivery, outbox.destination_progress, bench_plain" >/dev/null
plain=$(printf '%s\n' "${plain_runs[@]}" | median)
save_ratio=$(printf '%s\n' "${save_ratios[@]}" | median)
fan_ratio=$(printf '%s\n' "${fan_ratios[@]}" | median)
save_live_ratio=$(printf '%s\n' "${save_live_ratios[@]}" | median)
fan_live_ratio=$(printf '%s\n' "${fan_live_ratios[@]}" | median)

# ------------------------------------------------------------------ 2. drain
echo "== drain ($MESSAGES messages, $RUNS runs)" >&2
one_runs=() three_runs=()
for r in $(seq "$RUNS"); do
    reset_destinations
    backlog orders.created
    one=$(default_drain)
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
# fast_rate [OTHER]: messages per second of a notify destination "fast"
# draining MESSAGES alone, or beside a second destination "other" of the
# same topic, an http one whose endpoint hangs until its 5 s timeout:
# OTHER = paused (no worker) or hung (its worker waits on the endpoint).
# Beside another destination "fast" is never the last to pass a message
# and leaves setting its status to it, a write it does alone: the paused
# case is the baseline of the hung one, the same work but for the hung
# worker beside it.
fast_rate() {
    local last secs
    reset_destinations
    psql_pg -c "SELECT outbox.create_destination('fast', 'notify', '{\"channel\": \"bench\"}'),
                       outbox.subscribe('fast', 'iso.*')" >/dev/null
    if [[ -n ${1:-} ]]; then
        psql_pg -c "SELECT outbox.create_destination('other', 'http',
                             '{\"url\": \"http://127.0.0.1:$hung_port/{topic}\", \"timeout\": \"5s\"}'),
                           outbox.subscribe('other', 'iso.*')" >/dev/null
        [[ $1 == paused ]] && psql_pg -c "SELECT outbox.pause_destination('other')" >/dev/null
    fi
    backlog iso.created
    last=$(psql_pg -c "SELECT id FROM outbox.messages ORDER BY id DESC LIMIT 1")
    set_enabled on
    until [[ $(psql_pg -c "SELECT outbox.destination_position(id) >= '$last' FROM outbox.destination WHERE name = 'fast'") == t ]]; do
        sleep 0.2
    done
    # from its first batch (not its starting position, written when it was
    # created) to the batch that passed the last message
    secs=$(psql_pg -c "SELECT extract(epoch FROM min(p.at) FILTER (WHERE p.upto >= '$last')
                                               - min(p.at) FILTER (WHERE p.upto > s.start))
                       FROM outbox.destination_progress p JOIN outbox.destination d ON d.id = p.destination_id,
                            LATERAL (SELECT q.upto AS start FROM outbox.destination_progress q
                                     WHERE q.destination_id = d.id ORDER BY q.upto LIMIT 1) s
                       WHERE d.name = 'fast'")
    rate "$secs"
}

echo "== isolation ($MESSAGES messages, $RUNS runs)" >&2
alone_runs=() paused_runs=() beside_runs=()
for r in $(seq "$RUNS"); do
    alone_runs+=("$(fast_rate)")
    paused_runs+=("$(fast_rate paused)")
    beside_runs+=("$(fast_rate hung)")
    echo "   run $r: fast alone ${alone_runs[-1]} msg/s, beside a paused destination ${paused_runs[-1]} msg/s," \
         "beside a hung endpoint ${beside_runs[-1]} msg/s" >&2
done
paused=$(printf '%s\n' "${paused_runs[@]}" | median)
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
| save, plain INSERT into a table of the same shape (median tps) | $plain tps | 1.00x | |
| \`outbox.save()\`, default destination, workers paused | | ${save_ratio}x | no regression |
| \`outbox.save()\` of a topic three destinations subscribe to, workers paused | | ${fan_ratio}x | >= 0.85x |
| \`outbox.save()\`, default destination, its worker publishing meanwhile | | ${save_live_ratio}x | |
| \`outbox.save()\` to three destinations, their three workers publishing meanwhile | | ${fan_live_ratio}x | |
| drain, the default destination (notify) alone | $one_rate msg/s | 1.00x | |
| drain, each of three notify destinations of one topic (median; slowest $three_min) | $three_rate msg/s | $(ratio "$three_rate" "$one_rate")x | >= 0.50x |
| a notify destination draining alone (it also sets each message's status) | $alone msg/s | | |
| the same beside a paused http destination of the same topic (it leaves the status to that one) | $paused msg/s | 1.00x | |
| the same beside an http destination that hangs until its 5 s timeout | $beside msg/s | $(ratio "$beside" "$paused")x | >= 0.90x |
EOF
