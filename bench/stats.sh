#!/usr/bin/env bash
# bench/stats.sh -- what outbox.stats costs with many processed messages
# kept, and what the backlog counter (outbox.max_backlog) costs the save path.
#
#   sudo bash bench/stats.sh          # 6,000,000 processed messages kept
#   sudo bash bench/stats.sh quick    # 600,000 (a few minutes)
#   sudo SAVE_ONLY=1 bash bench/stats.sh   # only part 2 (e.g. against an older library)
#
# Part 1, outbox.stats:
#   1. a throw-away cluster (Unix socket only, the worker paused) gets
#      PROCESSED processed messages (200-byte payloads, 10 topics, 1,000
#      keys) with INSERT ... SELECT, then VACUUM ANALYZE;
#   2. it times SELECT * FROM outbox.stats and outbox.destination_stats with
#      pgbench (one client, latency average over 10 s), with no unfinished
#      message, then with 10,000 pending and 100 failed ones; beside them,
#      the 0.2.0 definition of the view (a count over the whole table), a
#      few runs;
#   3. the buffers each touches (EXPLAIN (ANALYZE, BUFFERS));
#   4. the case a drain leaves behind: 100,000 messages published by the
#      worker leave dead entries in the pending index until VACUUM, timed
#      before and after it (autovacuum off for that table meanwhile).
# Part 2, the save path:
#   pgbench, 8 clients, one message per transaction, SECS seconds a run,
#   RUNS rounds: outbox.save() against a plain INSERT into a table with the
#   same columns and indexes (bench.plain_messages, as bench/run.sh), with
#   outbox.max_backlog = 0 and with it set (1,000,000,000: every save checks
#   the counter, the worker counts every 5 s), the worker paused, the
#   tables emptied before each run.  The ratio save/INSERT of each round,
#   median over the rounds.
# Prints a Markdown report (bench/RESULTS-stats.md is written from it).
#
# Environment: PG_CONFIG, PROCESSED (6000000), SECS (10), RUNS (3),
# SAVE_ONLY (skip part 1), STATS_ONLY (skip part 2).  Run as root: the
# cluster runs as "postgres".
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/pg.sh
. "$here/pg.sh"
find_outbox_install bench/stats.sh

PROCESSED=${PROCESSED:-6000000}
SECS=${SECS:-10}
RUNS=${RUNS:-3}
if [[ ${1:-} == quick ]]; then
    PROCESSED=600000
    SECS=5
fi
[[ $(id -u) -eq 0 ]] || { echo "bench/stats.sh: run as root (the cluster runs as postgres)" >&2; exit 1; }

bench_work stats
trap 'stop_bench_cluster; rm -rf -- "$work"' EXIT

start_bench_cluster outbox "max_wal_size = 8GB
checkpoint_timeout = 30min
synchronous_commit = off
shared_buffers = 1GB
max_connections = 40"

payload='{"order_id": 1234567, "customer_id": "customer-42", "status": "created", "currency": "EUR", "total": 129.95, "items": [{"sku": "SKU-1001", "qty": 2}, {"sku": "SKU-2002", "qty": 1}], "note": "leave it at the door"}'
headers='{"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "content-type": "application/json"}'

# latency_ms SQL SECONDS: pgbench's average latency (ms) of SQL, one client.
latency_ms() {
    local script=$work/q.sql
    printf '%s;\n' "$1" >"$script"
    chown postgres "$script"
    as_pg "$bindir/pgbench" -n -h "$work/sock" -p 5432 -c 1 -T "$2" -f "$script" postgres 2>&1 |
        sed -n 's/^latency average = \([0-9.]*\) ms$/\1/p'
}

# buffers SQL: shared buffers (hit + read) of EXPLAIN (ANALYZE, BUFFERS) SQL.
buffers() {
    psql_pg -c "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) $1" |
        python3 -c 'import json,sys; p=json.load(sys.stdin)[0]["Plan"]; print(p["Shared Hit Blocks"] + p["Shared Read Blocks"])'
}

report=()
say() { report+=("$1"); echo "$1" >&2; }

if [[ -z ${SAVE_ONLY:-} ]]; then
    echo "bench/stats.sh: loading $PROCESSED processed messages" >&2
    chunk=1000000
    for (( done_rows = 0; done_rows < PROCESSED; done_rows += chunk )); do
        n=$(( PROCESSED - done_rows < chunk ? PROCESSED - done_rows : chunk ))
        psql_pg -c "INSERT INTO outbox.messages (topic, key, payload, headers, status, processed_at)
                    SELECT 'bench.t' || (i % 10), 'customer-' || (i % 1000), convert_to('$payload', 'UTF8'),
                           '$headers', 'processed', now()
                    FROM generate_series(1, $n) i"
    done
    psql_pg -c "VACUUM ANALYZE outbox.messages"
    # The 0.2.0 definition, for comparison.
    psql_pg -c "CREATE VIEW public.stats_0_2 AS SELECT topic,
                  count(*) FILTER (WHERE status = 'pending') AS pending,
                  count(*) FILTER (WHERE status = 'processing') AS processing,
                  count(*) FILTER (WHERE status = 'processed') AS processed,
                  count(*) FILTER (WHERE status = 'failed') AS failed,
                  now() - min(created_at) FILTER (WHERE status = 'pending') AS oldest_pending_age
                FROM outbox.messages GROUP BY topic"
    pages=$(psql_pg -c "SELECT relpages FROM pg_class WHERE oid = 'outbox.messages'::regclass")
    size=$(psql_pg -c "SELECT pg_size_pretty(pg_total_relation_size('outbox.messages'))")

    say "### outbox.stats with $(printf "%'d" "$PROCESSED") processed messages kept ($size, $pages heap pages)"
    say ""
    say "| unfinished messages | query | latency (ms, average) | buffers |"
    say "| --- | --- | --- | --- |"
    for backlog in 0 10000; do
        if [[ $backlog -gt 0 ]]; then
            psql_pg -c "INSERT INTO outbox.messages (topic, key, payload, headers)
                        SELECT 'bench.t' || (i % 10), 'customer-' || (i % 1000), convert_to('$payload', 'UTF8'), '$headers'
                        FROM generate_series(1, $backlog) i" \
                    -c "INSERT INTO outbox.messages (topic, payload, status, last_error)
                        SELECT 'bench.failed', '\\x00', 'failed', 'HTTP 500' FROM generate_series(1, 100)" \
                    -c "ANALYZE outbox.messages"
            label="$backlog pending, 100 failed"
        else
            label="none"
        fi
        for q in "SELECT * FROM outbox.stats" "SELECT * FROM outbox.destination_stats"; do
            say "| $label | \`$q\` | $(latency_ms "$q" "$SECS") | $(buffers "$q") |"
        done
        q="SELECT * FROM public.stats_0_2"
        say "| $label | \`$q\` (0.2.0's view) | $(latency_ms "$q" 3) | $(buffers "$q") |"
    done

    # Dead index entries after a drain, before and after VACUUM.
    psql_pg -c "DELETE FROM outbox.messages WHERE status <> 'processed'" \
            -c "ALTER TABLE outbox.messages SET (autovacuum_enabled = off)" \
            -c "VACUUM outbox.messages" \
            -c "INSERT INTO outbox.messages (topic, key, payload, headers)
                SELECT 'bench.drained', 'customer-' || (i % 1000), convert_to('$payload', 'UTF8'), '$headers'
                FROM generate_series(1, 100000) i"
    set_enabled on
    while [[ $(psql_pg -c "SELECT count(*) FROM outbox.messages WHERE status = 'pending'") != 0 ]]; do
        sleep 0.5
    done
    set_enabled off
    q="SELECT * FROM outbox.stats"
    say "| none, just after the worker published 100,000 (their dead entries still in the pending index) | \`$q\` | $(latency_ms "$q" "$SECS") | $(buffers "$q") |"
    psql_pg -c "VACUUM outbox.messages" -c "ALTER TABLE outbox.messages RESET (autovacuum_enabled)"
    say "| none, after VACUUM | \`$q\` | $(latency_ms "$q" "$SECS") | $(buffers "$q") |"
    say ""
fi

if [[ -z ${STATS_ONLY:-} ]]; then
    psql_pg -c "TRUNCATE outbox.messages" -c "CREATE SCHEMA IF NOT EXISTS bench" \
            -c "CREATE TABLE IF NOT EXISTS bench.plain_messages
                  (LIKE outbox.messages INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)" \
            -c "CREATE SEQUENCE IF NOT EXISTS bench.id_seq" \
            -c "ALTER TABLE bench.plain_messages
                  ALTER COLUMN id SET DEFAULT lpad(to_hex(nextval('bench.id_seq')), 32, '0')::uuid"
    printf '\\set k random(1, 1000)\nINSERT INTO bench.plain_messages (topic, key, payload, headers) VALUES (%s, %s, convert_to(%s, %s), %s);\n' \
        "'bench.save'" "'customer-' || :k" "'$payload'" "'UTF8'" "'$headers'" >"$work/plain.sql"
    printf '\\set k random(1, 1000)\nSELECT outbox.save(%s, %s::jsonb, %s, %s::jsonb);\n' \
        "'bench.save'" "'$payload'" "'customer-' || :k" "'{\"trace_id\": \"4bf92f3577b34da6a3ce929d0e0e4736\"}'" >"$work/save.sql"
    chown postgres "$work/plain.sql" "$work/save.sql"
    have_limit=$(psql_pg -c "SELECT count(*) FROM pg_settings WHERE name = 'outbox.max_backlog'")

    # tps SCRIPT: transactions per second of 8 clients for SECS seconds.
    tps() {
        psql_pg -c "TRUNCATE outbox.messages, bench.plain_messages" -c "CHECKPOINT"
        as_pg "$bindir/pgbench" -n -h "$work/sock" -p 5432 -c 8 -j 2 -T "$SECS" -f "$1" postgres 2>&1 |
            sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
    }

    say "### The save path: outbox.save() against a plain INSERT, 8 clients, ${SECS} s a run, $RUNS rounds"
    say ""
    say "| outbox.max_backlog | plain INSERT (tps, each round) | outbox.save() (tps, each round) | ratio, median |"
    say "| --- | --- | --- | --- |"
    limits=(0)
    [[ $have_limit == 1 ]] && limits+=(1000000000)
    for limit in "${limits[@]}"; do
        if [[ $have_limit == 1 ]]; then
            psql_pg -c "ALTER SYSTEM SET outbox.max_backlog = $limit" -c "SELECT pg_reload_conf()" >/dev/null
            sleep 6   # the worker counts the backlog within its 5-second maintenance interval
        fi
        plain_runs=() save_runs=() ratios=()
        for (( r = 0; r < RUNS; r++ )); do
            if (( r % 2 == 0 )); then
                p=$(tps "$work/plain.sql"); s=$(tps "$work/save.sql")
            else
                s=$(tps "$work/save.sql"); p=$(tps "$work/plain.sql")
            fi
            plain_runs+=("$p"); save_runs+=("$s")
            ratios+=("$(python3 -c "print('%.3f' % ($s / $p))")")
            echo "bench/stats.sh: max_backlog $limit round $((r + 1)): plain $p, save $s" >&2
        done
        ratio=$(printf '%s\n' "${ratios[@]}" | median)
        label=$limit
        [[ $have_limit == 1 ]] || label="(this library has no backlog counter)"
        say "| $label | $(printf '%.0f ' "${plain_runs[@]}") | $(printf '%.0f ' "${save_runs[@]}") | ${ratio}x |"
    done
    say ""
fi

printf '%s\n' "${report[@]}"
