#!/usr/bin/env bash
# bench/soak.sh -- a long soak of the outbox: savers at a steady high rate,
# the relay worker draining with retention on, for SOAK_SECONDS (default
# 600).  Not part of "make test".
#
#   bash bench/soak.sh                  # 10 minutes, report in /tmp/outbox-soak.md
#   SOAK_SECONDS=60 bash bench/soak.sh  # a quick look
#
# It starts a throw-away cluster (Unix socket in a temporary directory; the
# server runs as the "postgres" OS user when started as root) with
# outbox.retention set, and runs:
#  - savers: pgbench at a fixed rate (-R), each transaction saving 1-3
#    messages through outbox.save() or INSERT INTO outbox.messages, with a
#    ledger row per message in the same transaction, some rolled back; per
#    key a sequence number taken under a row lock, so that per key, commit
#    order is sequence order;
#  - a LISTENing client (Python, psycopg2) that records every notification;
#  - a sampler, every SOAK_SAMPLE seconds: backlog (pending), table and index
#    sizes, live/dead tuples and autovacuum runs, the worker's memory
#    (VmRSS and RssAnon from /proc).
# When the savers stop, the backlog must drain and the listener must have
# received every committed message (ledger), nothing rolled back, per key in
# sequence order.  The report (Markdown, SOAK_OUT) shows a per-minute table
# and verdicts: backlog bounded, sizes at a steady state, worker memory flat,
# nothing lost.  The exit status is 1 when a message was lost, a rolled-back
# one delivered, order broken or the drain did not finish; sizes and memory
# are reported, not judged by the exit status.
#
# Environment (defaults):
#   SOAK_SECONDS=600     how long the savers run
#   SOAK_RATE=400        saver transactions per second (about 2 messages each,
#                        a tenth rolled back)
#   SOAK_CLIENTS=4       pgbench clients
#   SOAK_KEYS=1000       distinct message keys
#   SOAK_ROLLBACK=10     percent of saver transactions rolled back
#   SOAK_RETENTION=60s   outbox.retention
#   SOAK_SAMPLE=10       seconds between samples
#   SOAK_OUT=/tmp/outbox-soak.md, SOAK_CSV=/tmp/outbox-soak.csv
#   SOAK_KEEP=1          keep the scratch directory (data, logs)
#   PG_CONFIG            pg_config of the server to use (default PostgreSQL 15's)
set -euo pipefail

seconds=${SOAK_SECONDS:-600}
rate=${SOAK_RATE:-400}
clients=${SOAK_CLIENTS:-4}
nkeys=${SOAK_KEYS:-1000}
rollback=${SOAK_ROLLBACK:-10}
retention=${SOAK_RETENTION:-60s}
sample=${SOAK_SAMPLE:-10}
out=${SOAK_OUT:-/tmp/outbox-soak.md}
csv=${SOAK_CSV:-/tmp/outbox-soak.csv}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source=bench/pg.sh
source "$here/pg.sh"
find_outbox_install soak
python=/usr/bin/python3
[[ -x $python ]] || python=python3
"$python" -c 'import psycopg2' 2>/dev/null ||
    { echo "soak: python3-psycopg2 is needed (apt-get install python3-psycopg2)" >&2; exit 1; }

work=$(mktemp -d /tmp/outbox-soak.XXXXXX)
chmod 755 "$work"
as_pg=()
if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || { echo "soak: no 'postgres' OS user" >&2; exit 1; }
    chown postgres "$work"
    as_pg=(runuser -u postgres --)
fi
data=$work/data
log=$work/server.log

pids=()
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$? p
    set +e
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null
    done
    wait 2>/dev/null
    if [[ -f $data/postmaster.pid ]]; then
        "${as_pg[@]}" "$bindir/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null 2>&1 ||
            "${as_pg[@]}" "$bindir/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1
    fi
    if [[ -n ${SOAK_KEEP:-} ]]; then
        echo "soak: scratch directory kept: $work"
    else
        rm -rf -- "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A port nobody uses (the socket lives in $work, but the port number is in
# its name and in the lock file).
port=
for _ in $(seq 1 100); do
    p=$(( 20000 + RANDOM % 20000 ))
    if [[ ! -e /tmp/.s.PGSQL.$p && ! -e /var/run/postgresql/.s.PGSQL.$p ]] &&
        ! (ss -Htln "sport = :$p" 2>/dev/null | grep -q .); then
        port=$p
        break
    fi
done
[[ -n $port ]] || { echo "soak: no free port" >&2; exit 1; }

echo "soak: scratch $work, port $port; ${seconds}s at ${rate} tx/s, ${clients} clients, retention ${retention}"
"${as_pg[@]}" "$bindir/initdb" -D "$data" -A trust -E UTF8 --locale=C.UTF-8 >"$work/initdb.log" 2>&1 ||
    { cat "$work/initdb.log"; exit 1; }
cat >>"$data/postgresql.conf" <<EOF

# added by bench/soak.sh
listen_addresses = ''
unix_socket_directories = '$work'
port = $port
max_connections = 50
shared_preload_libraries = 'outbox'
outbox.databases = 'postgres'
outbox.retention = '$retention'
log_line_prefix = '%m [%p] %q%a '
log_autovacuum_min_duration = 0
log_checkpoints = on
EOF
"${as_pg[@]}" "$bindir/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null

export PGHOST=$work PGPORT=$port PGUSER=postgres PGDATABASE=postgres
unset PGSERVICE PGOPTIONS PGAPPNAME
psql_q() { "$bindir/psql" -X -q -A -t -v ON_ERROR_STOP=1 "$@"; }

psql_q <<EOF
CREATE EXTENSION outbox;
CREATE SCHEMA soak;
CREATE TABLE soak.keys (k int PRIMARY KEY, seq bigint NOT NULL DEFAULT 0);
INSERT INTO soak.keys (k) SELECT generate_series(1, $nkeys);
CREATE SEQUENCE soak.tokens;
CREATE TABLE soak.ledger (token bigint PRIMARY KEY, k int NOT NULL, seq bigint NOT NULL);

-- p_n messages of keys p_k, p_k + 1, ... (ascending: savers never
-- deadlock), each with its ledger row; the key's row lock orders its savers.
CREATE FUNCTION soak.save_many(p_k int, p_n int) RETURNS void LANGUAGE plpgsql AS \$\$
DECLARE
	v_k int;
	v_seq bigint;
	v_token bigint;
	v_payload jsonb;
BEGIN
	FOR i IN 0 .. p_n - 1 LOOP
		v_k := least(p_k + i, $nkeys);
		UPDATE soak.keys SET seq = seq + 1 WHERE k = v_k RETURNING seq INTO v_seq;
		v_token := nextval('soak.tokens');
		v_payload := jsonb_build_object('t', v_token, 'k', v_k, 's', v_seq,
			'pad', repeat('x', 120));
		IF v_token % 3 = 0 THEN
			INSERT INTO outbox.messages (topic, key, payload)
			VALUES ('soak', 'k' || v_k, convert_to(v_payload::text, 'UTF8'));
		ELSE
			PERFORM outbox.save('soak', v_payload, 'k' || v_k);
		END IF;
		INSERT INTO soak.ledger VALUES (v_token, v_k, v_seq);
	END LOOP;
END
\$\$;
EOF

cat >"$work/savers.sql" <<'EOF'
\set k random(1, :nkeys)
\set n random(1, 3)
\set r random(1, 100)
BEGIN;
SELECT soak.save_many(:k, :n);
\if :r <= :rollback
ROLLBACK;
\else
COMMIT;
\endif
EOF

# ------------------------------------------------------------------ listener

cat >"$work/soak.py" <<'EOF'
"""The soak's listener (listen) and report (report)."""
import json
import os
import select
import sys
import time

import psycopg2
import psycopg2.extensions


def listen(workdir):
    conn = psycopg2.connect("")
    conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    cur = conn.cursor()
    cur.execute('LISTEN soak')
    seen = {}              # token -> times received
    last_seq = {}          # key -> last sequence number received
    order_violations = []
    bad = 0
    received = 0
    progress = os.path.join(workdir, 'listener.progress')
    with open(os.path.join(workdir, 'listener.ready'), 'w') as f:
        f.write('ready\n')
    next_progress = 0.0
    done = False
    while not done:
        if select.select([conn], [], [], 1.0)[0]:
            conn.poll()
            while conn.notifies:
                n = conn.notifies.pop(0)
                if n.payload == 'SOAK_END':
                    done = True
                    continue
                received += 1
                try:
                    p = json.loads(n.payload)['payload']
                    token, key, seq = int(p['t']), int(p['k']), int(p['s'])
                except (ValueError, KeyError, TypeError):
                    bad += 1
                    continue
                seen[token] = seen.get(token, 0) + 1
                if key in last_seq and seq <= last_seq[key]:
                    if len(order_violations) < 20:
                        order_violations.append([key, seq, last_seq[key]])
                    else:
                        order_violations.append(None)
                else:
                    last_seq[key] = seq
        now = time.time()
        if now >= next_progress:
            with open(progress + '.tmp', 'w') as f:
                f.write('%d\n' % received)
            os.replace(progress + '.tmp', progress)
            next_progress = now + 1.0

    cur.execute('SELECT token FROM soak.ledger')
    ledger = set(r[0] for r in cur.fetchall())
    cur.execute("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM soak.tokens")
    tokens_used = cur.fetchone()[0]
    lost = [t for t in ledger if t not in seen]
    foreign = [t for t in seen if t not in ledger]
    result = {
        'committed': len(ledger),
        'rolled_back': tokens_used - len(ledger),
        'received': received,
        'distinct': len(seen),
        'duplicated': sum(1 for c in seen.values() if c > 1),
        'lost': len(lost),
        'lost_sample': sorted(lost)[:10],
        'foreign': len(foreign),
        'foreign_sample': sorted(foreign)[:10],
        'bad_payloads': bad,
        'order_violations': len(order_violations),
        'order_sample': [v for v in order_violations if v][:10],
        'keys': len(last_seq),
    }
    with open(os.path.join(workdir, 'listener.json'), 'w') as f:
        json.dump(result, f)


def fmt_mb(b):
    return '%.1f' % (b / 1048576.0)


def report(csv_path, listener_json, meta_json, out_path):
    rows = []
    with open(csv_path) as f:
        header = f.readline().strip().split(',')
        for line in f:
            vals = line.strip().split(',')
            if len(vals) == len(header):
                rows.append({h: (float(v) if v not in ('', 'NA') else None)
                             for h, v in zip(header, vals)})
    res = json.load(open(listener_json)) if os.path.exists(listener_json) else None
    meta = json.load(open(meta_json))
    during = [r for r in rows if r['phase'] == 0]
    seconds = meta['seconds']

    def window(lo, hi):
        return [r for r in during if lo <= r['t'] < hi]

    def mx(rs, col):
        vals = [r[col] for r in rs if r[col] is not None]
        return max(vals) if vals else None

    lines = []
    w = lines.append
    w('## Soak: %d minutes at a steady rate, retention %s' % (round(seconds / 60), meta['retention']))
    w('')
    w('`bash bench/soak.sh` (SOAK_SECONDS=%d, SOAK_RATE=%d tx/s, %d clients, %d keys, %d%% rolled back, '
      'outbox.retention = %s, other settings default), %s, on %s.' % (
          seconds, meta['rate'], meta['clients'], meta['keys'], meta['rollback'],
          meta['retention'], meta['date'], meta['host']))
    w('')
    w('Savers: pgbench at a fixed rate; each transaction saves 1-3 messages (about 190 bytes of JSON) '
      'through `outbox.save()` or `INSERT INTO outbox.messages`, each with a ledger row in the same '
      'transaction. A LISTEN client (psycopg2) records every notification. Sampled every %d s.' % meta['sample'])
    w('')
    w('| minute | committed msg/s | backlog (pending) max | rows | table MB | indexes MB | total MB | dead rows (stats) | autovacuums | worker VmRSS MB | worker RssAnon MB |')
    w('|---|---|---|---|---|---|---|---|---|---|---|')
    prev_committed = 0.0
    prev_t = 0.0
    minutes = int((seconds + 59) // 60)
    for m in range(minutes):
        rs = window(m * 60, (m + 1) * 60)
        if not rs:
            continue
        last = rs[-1]
        rate = (last['committed'] - prev_committed) / max(last['t'] - prev_t, 1e-9)
        prev_committed, prev_t = last['committed'], last['t']
        rows_now = last['pending'] + last['processing'] + last['processed'] + last['failed']
        w('| %d | %.0f | %d | %d | %s | %s | %s | %d | %d | %s | %s |' % (
            m + 1, rate, mx(rs, 'pending'), rows_now, fmt_mb(mx(rs, 'table_bytes')),
            fmt_mb(mx(rs, 'index_bytes')), fmt_mb(mx(rs, 'total_bytes')),
            last['dead_tup'], last['autovacuums'],
            fmt_mb(last['rss_kb'] * 1024), fmt_mb(last['rss_anon_kb'] * 1024)))
    w('')

    verdicts = []
    ok = True
    # Backlog: bounded when the second half's peak is no more than the first
    # half's (after the first minute) plus a margin.
    first = window(60, seconds / 2)
    second = window(seconds / 2, seconds + 1)
    if first and second:
        b1, b2 = mx(first, 'pending'), mx(second, 'pending')
        bounded = b2 <= max(2 * b1, 1000)
        verdicts.append('Backlog: peak %d in the first half (after minute 1), %d in the second half, '
                        'mean %.0f: %s.' % (b1, b2,
                                            sum(r['pending'] for r in during) / len(during),
                                            'bounded' if bounded else 'GROWING'))
        for col, name in (('table_bytes', 'table'), ('index_bytes', 'indexes'), ('total_bytes', 'table + indexes + TOAST')):
            s1, s2 = mx(first, col), mx(second, col)
            growth = (s2 - s1) / s1 * 100 if s1 else 0.0
            verdicts.append('Size of %s: peak %s MB in the first half, %s MB in the second (%+.0f%%): %s.' % (
                name, fmt_mb(s1), fmt_mb(s2), growth,
                'steady' if growth <= 25 else 'STILL GROWING'))
        r1 = [r['rss_anon_kb'] for r in window(60, 120) if r['rss_anon_kb'] is not None]
        r2 = [r['rss_anon_kb'] for r in second if r['rss_anon_kb'] is not None]
        v1 = [r['rss_kb'] for r in window(60, 120) if r['rss_kb'] is not None]
        v2 = [r['rss_kb'] for r in second if r['rss_kb'] is not None]
        if r1 and r2:
            d = r2[-1] - r1[0]
            verdicts.append('Worker memory: RssAnon (private) %d kB at minute 2, %d kB at the end (%+d kB); '
                            'VmRSS %d kB -> %d kB (VmRSS also counts the shared buffers the worker has touched): %s.' % (
                                r1[0], r2[-1], d, v1[0], v2[-1], 'flat' if abs(d) <= 2048 else 'CHANGING'))
        pids = set(r['worker_pid'] for r in during if r['worker_pid'])
        verdicts.append('Worker processes seen: %d (%s).' % (len(pids), 'never restarted' if len(pids) == 1 else 'RESTARTED'))
    verdicts.append('Drain after the savers stopped: %s.' % meta['drain'])
    if res:
        lost_ok = res['lost'] == 0 and res['foreign'] == 0 and res['order_violations'] == 0 and res['bad_payloads'] == 0
        ok = ok and lost_ok and meta['drained']
        verdicts.append('Messages: %d committed (%d rolled back); the listener received %d notifications, %d distinct; '
                        'lost %d, rolled back but delivered %d, delivered twice %d, out of order per key %d, '
                        'unreadable %d: %s.' % (
                            res['committed'], res['rolled_back'], res['received'], res['distinct'],
                            res['lost'], res['foreign'], res['duplicated'], res['order_violations'],
                            res['bad_payloads'], 'nothing lost' if lost_ok else 'FAILED'))
    else:
        ok = False
        verdicts.append('Messages: the listener did not report (it did not receive the end marker).')
    for v in verdicts:
        w('- ' + v)
    w('')
    text = '\n'.join(lines)
    with open(out_path, 'w') as f:
        f.write(text)
    print(text)
    if res:
        print(json.dumps(res))
    return 0 if ok else 1


if __name__ == '__main__':
    if sys.argv[1] == 'listen':
        listen(sys.argv[2])
    else:
        sys.exit(report(*sys.argv[2:6]))
EOF

"$python" "$work/soak.py" listen "$work" >"$work/listener.log" 2>&1 &
listener_pid=$!
pids+=("$listener_pid")
for _ in $(seq 1 100); do
    [[ -f $work/listener.ready ]] && break
    sleep 0.1
done
[[ -f $work/listener.ready ]] || { echo "soak: the listener did not start" >&2; cat "$work/listener.log" >&2; exit 1; }

# ------------------------------------------------------------------ sampler

worker_pid() {
    psql_q -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'outbox worker'" 2>/dev/null || true
}

echo "t,phase,committed,pending,processing,processed,failed,table_bytes,index_bytes,total_bytes,live_tup,dead_tup,autovacuums,worker_pid,rss_kb,rss_anon_kb,received" >"$csv"
start=$(date +%s.%N)
# sample PHASE: one CSV row (phase 0 while the savers run, 1 while draining).
sample_row() {
    local phase=$1 t row wpid rss=NA anon=NA received=NA
    t=$(awk -v s="$start" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }')
    row=$(psql_q -F, -c "
SELECT (SELECT count(*) FROM soak.ledger),
       count(*) FILTER (WHERE status = 'pending'),
       count(*) FILTER (WHERE status = 'processing'),
       count(*) FILTER (WHERE status = 'processed'),
       count(*) FILTER (WHERE status = 'failed'),
       pg_relation_size('outbox.messages'),
       pg_indexes_size('outbox.messages'),
       pg_total_relation_size('outbox.messages'),
       (SELECT n_live_tup FROM pg_stat_user_tables WHERE relid = 'outbox.messages'::regclass),
       (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'outbox.messages'::regclass),
       (SELECT autovacuum_count FROM pg_stat_user_tables WHERE relid = 'outbox.messages'::regclass)
FROM outbox.messages" 2>/dev/null) || return 0
    wpid=$(worker_pid)
    if [[ -n $wpid && -r /proc/$wpid/status ]]; then
        rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$wpid/status")
        anon=$(awk '/^RssAnon:/ { print $2 }' "/proc/$wpid/status")
    fi
    [[ -f $work/listener.progress ]] && received=$(cat "$work/listener.progress")
    echo "$t,$phase,$row,${wpid:-0},${rss:-NA},${anon:-NA},$received" >>"$csv"
}

# ------------------------------------------------------------------ run

PGAPPNAME=soak_saver "$bindir/pgbench" -n -c "$clients" -j 2 -T "$seconds" -R "$rate" \
    -D nkeys="$nkeys" -D rollback="$rollback" -f "$work/savers.sql" >"$work/pgbench.log" 2>&1 &
pgbench_pid=$!
pids+=("$pgbench_pid")

sample_row 0
next=$(( $(date +%s) + sample ))
while kill -0 "$pgbench_pid" 2>/dev/null; do
    if (( $(date +%s) >= next )); then
        sample_row 0
        last=$(tail -n 1 "$csv")
        printf 'soak: t=%ss committed=%s pending=%s total=%sB worker RssAnon=%skB received=%s\n' \
            "$(cut -d, -f1 <<<"$last")" "$(cut -d, -f3 <<<"$last")" "$(cut -d, -f4 <<<"$last")" \
            "$(cut -d, -f10 <<<"$last")" "$(cut -d, -f16 <<<"$last")" "$(cut -d, -f17 <<<"$last")"
        next=$(( next + sample ))
    fi
    sleep 0.5
done
pgbench_rc=0
wait "$pgbench_pid" || pgbench_rc=$?
echo "soak: savers done (pgbench exit $pgbench_rc):"
grep -E 'processed|failed|tps|latency average' "$work/pgbench.log" | sed 's/^/  /' || true

# Drain: nothing pending or processing.
drained=false
drain_start=$(date +%s)
for _ in $(seq 1 600); do
    left=$(psql_q -c "SELECT count(*) FROM outbox.messages WHERE status IN ('pending', 'processing')")
    if [[ $left == 0 ]]; then
        drained=true
        break
    fi
    sleep 0.5
done
drain_secs=$(( $(date +%s) - drain_start ))
sample_row 1
if $drained; then
    drain="finished in ${drain_secs}s"
else
    drain="NOT finished after ${drain_secs}s ($left messages left)"
fi
echo "soak: drain $drain"

# The end marker: notifications arrive in commit order, so the listener has
# everything once it sees it.
psql_q -c "NOTIFY soak, 'SOAK_END'"
for _ in $(seq 1 600); do
    kill -0 "$listener_pid" 2>/dev/null || break
    sleep 0.5
done
failed_count=$(psql_q -c "SELECT count(*) FROM outbox.messages WHERE status = 'failed'")

cat >"$work/meta.json" <<EOF
{"seconds": $seconds, "rate": $rate, "clients": $clients, "keys": $nkeys,
 "rollback": $rollback, "retention": "$retention", "sample": $sample,
 "date": "$(date -u +%Y-%m-%d)", "host": "$(nproc) CPUs, $(awk '/MemTotal/ { printf "%.0f GB RAM", $2 / 1048576 }' /proc/meminfo), $("$bindir/postgres" --version)",
 "drain": "$drain", "drained": $drained, "failed": $failed_count}
EOF

rc=0
"$python" "$work/soak.py" report "$csv" "$work/listener.json" "$work/meta.json" "$out" || rc=$?
echo "soak: report written to $out (samples: $csv)"
if (( failed_count > 0 )); then
    echo "soak: $failed_count messages failed" >&2
    rc=1
fi
exit "$rc"
