#!/usr/bin/env bash
# demo/demo.sh -- a short tour of outbox (run it with `make demo`).
#
# Builds and installs the extension, starts a throw-away PostgreSQL 15
# cluster in a temporary directory (Unix socket only, nothing else on the
# machine is touched), and shows the transactional outbox at work:
#
#   * a listener waits on the NOTIFY channel "orders.created";
#   * transaction 1 inserts an order and saves an event with outbox.save(),
#     then COMMITs: the relay worker publishes the event to the listener;
#   * transaction 2 does the same and ROLLs BACK: nothing is published;
#   * outbox.stats shows what the worker did.
#
# Run it as an ordinary user (sudo is used for `make install` when the
# PostgreSQL directories are not writable) or as root (the cluster then runs
# as the "postgres" OS user, since PostgreSQL refuses to run as root).
#
# Environment: PG_CONFIG (default PostgreSQL 15's), DEMO_TIMEOUT (seconds to
# wait for the notification, default 30), DEMO_NO_BUILD=1 (skip make install,
# use the extension already installed), DEMO_LISTENER=psql (listen with psql
# even when python3-psycopg2 is installed).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
channel=orders.created
timeout=${DEMO_TIMEOUT:-30}
nsteps=7
stepno=0

step() {
    stepno=$(( stepno + 1 ))
    printf '\n== [%d/%d] %s\n' "$stepno" "$nsteps" "$*"
}
note() { printf '   %s\n' "$*"; }
indent() { sed "s/^/${1:-   }/"; }
# show SQL...: run it and print the result table indented, without blank lines
show() { psql_ -P footer=off "$@" | sed -e '/^$/d' -e 's/^/   | /'; }
die() {
    printf 'demo: error: %s\n' "$*" >&2
    exit 1
}
is_root() { [[ $(id -u) -eq 0 ]]; }

# ------------------------------------------------------------------ packages
step "checking packages"
# The packages come from the one list in scripts/packages.sh (group demo).
# shellcheck source=scripts/packages.sh
source "$repo/scripts/packages.sh"
outbox_ensure_packages demo 2>&1 | indent || exit 1

if [[ -n ${PG_CONFIG:-} ]]; then
    pg_config_bin=$(command -v -- "$PG_CONFIG") || die "PG_CONFIG=$PG_CONFIG not found"
elif [[ -x /usr/lib/postgresql/15/bin/pg_config ]]; then
    pg_config_bin=/usr/lib/postgresql/15/bin/pg_config
else
    pg_config_bin=$(command -v pg_config) || die "pg_config not found (postgresql-server-dev-15)"
fi
bindir=$("$pg_config_bin" --bindir)
sharedir=$("$pg_config_bin" --sharedir)
pkglibdir=$("$pg_config_bin" --pkglibdir)
export PATH="$bindir:$PATH"

# ------------------------------------------------------------------ scratch dir and cleanup
work=$(mktemp -d /tmp/outbox-demo.XXXXXX)
listener_pid=
pg_started=

if is_root; then
    id postgres >/dev/null 2>&1 || die "no 'postgres' OS user to run the cluster as"
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$?
    set +e
    : >"$work/listener.stop" 2>/dev/null
    if [[ -n $listener_pid ]] && kill -0 "$listener_pid" 2>/dev/null; then
        kill "$listener_pid" 2>/dev/null
        wait "$listener_pid" 2>/dev/null
    fi
    if [[ -n $pg_started && -f $work/data/postmaster.pid ]]; then
        as_pg "$bindir/pg_ctl" -D "$work/data" -m fast -w -t 30 stop >/dev/null 2>&1 ||
            as_pg "$bindir/pg_ctl" -D "$work/data" -m immediate -w -t 30 stop >/dev/null 2>&1
    fi
    rm -rf -- "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ build + install
step "building and installing outbox"
buildlog=$work/build.log
build_ok=1
if [[ -n ${DEMO_NO_BUILD:-} ]]; then
    note "DEMO_NO_BUILD is set: using the extension already installed"
elif is_root || { [[ -w $sharedir/extension && -w $pkglibdir ]]; }; then
    make -C "$repo" PG_CONFIG="$pg_config_bin" install >"$buildlog" 2>&1 || build_ok=
else
    command -v sudo >/dev/null 2>&1 ||
        die "installing into $sharedir needs root: run this demo as root or install sudo"
    if make -C "$repo" PG_CONFIG="$pg_config_bin" >"$buildlog" 2>&1; then
        note "installing into $sharedir and $pkglibdir with sudo"
        # shellcheck disable=SC2024  # the log belongs to the user, not root
        sudo make -C "$repo" PG_CONFIG="$pg_config_bin" install >>"$buildlog" 2>&1 || build_ok=
    else
        build_ok=
    fi
fi
if [[ -z $build_ok ]]; then
    tail -n 40 "$buildlog" >&2
    die "build or install failed (last 40 lines of the make output above)"
fi
[[ -f $sharedir/extension/outbox.control && -f $pkglibdir/outbox.so ]] ||
    die "outbox is not installed in $sharedir/extension (make install)"
note "outbox $(sed -n "s/^default_version *= *'\(.*\)'/\1/p" "$sharedir/extension/outbox.control") in $pkglibdir/outbox.so"

# ------------------------------------------------------------------ cluster
step "starting a throw-away cluster"

port_in_use() {
    local p=$1
    [[ -e /tmp/.s.PGSQL.$p || -e /var/run/postgresql/.s.PGSQL.$p ]] && return 0
    if command -v ss >/dev/null 2>&1; then
        [[ -n $(ss -Htln "sport = :$p" 2>/dev/null) ]]
        return
    fi
    awk -v h=":$(printf '%04X' "$p")" \
        '$4 == "0A" && substr($2, length($2) - 4) == h { f = 1 } END { exit !f }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
port=
for (( i = 0; i < 500; i++ )); do
    candidate=$(( 20000 + (RANDOM * 32768 + RANDOM) % 20001 ))
    if ! port_in_use "$candidate"; then
        port=$candidate
        break
    fi
done
[[ -n $port ]] || die "no free port found in 20000-40000"

if is_root; then
    chown postgres: "$work"
fi
as_pg "$bindir/initdb" -D "$work/data" -A trust -U postgres -E UTF8 --locale=C --no-sync \
    >"$work/initdb.log" 2>&1 || { cat "$work/initdb.log" >&2; die "initdb failed"; }
cat >>"$work/data/postgresql.conf" <<EOF

# outbox demo
listen_addresses = ''
unix_socket_directories = '$work'
port = $port
shared_preload_libraries = 'outbox'
outbox.databases = 'demo'
fsync = off
EOF
pg_started=1
as_pg "$bindir/pg_ctl" -D "$work/data" -l "$work/server.log" -w -t 60 start >/dev/null ||
    { tail -n 30 "$work/server.log" >&2; die "the server did not start"; }

unset PGHOSTADDR PGSERVICE PGPASSWORD PGOPTIONS PGSSLMODE
export PGHOST=$work PGPORT=$port PGUSER=postgres PGDATABASE=demo
psql_() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }

psql_ -d postgres -c 'CREATE DATABASE demo'
psql_ <<'SQL'
CREATE EXTENSION outbox;
CREATE TABLE orders (
    id         int PRIMARY KEY,
    customer   text NOT NULL,
    amount     numeric(10,2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
SQL
note "$("$bindir/postgres" --version) on socket $work, port $port"
note "database demo: CREATE EXTENSION outbox; CREATE TABLE orders (...)"

# ------------------------------------------------------------------ listener
step "starting a listener on channel \"$channel\""

find_python() {
    local c
    for c in /usr/bin/python3 python3; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import psycopg2' >/dev/null 2>&1; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

listener_out=$work/listener.out
ready=$work/listener.ready
if [[ ${DEMO_LISTENER:-} != psql ]] && python=$(find_python); then
    listener_kind=python
    cat >"$work/listen.py" <<'PY'
import json
import select
import sys
import time

import psycopg2

channel, ready_path, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
drain = 1.5  # after the first notification, wait this long for any other

conn = psycopg2.connect("")  # PGHOST, PGPORT, PGUSER, PGDATABASE
conn.autocommit = True
conn.cursor().execute('LISTEN "%s"' % channel.replace('"', '""'))
open(ready_path, "w").close()

got = 0
end = time.monotonic() + timeout
while True:
    left = end - time.monotonic()
    if left <= 0:
        break
    if not select.select([conn], [], [], min(left, 0.5))[0]:
        continue
    conn.poll()
    while conn.notifies:
        n = conn.notifies.pop(0)
        got += 1
        print('notification %d on channel "%s" (sent by backend pid %d), payload:'
              % (got, n.channel, n.pid))
        try:
            print(json.dumps(json.loads(n.payload), indent=2))
        except ValueError:
            print(n.payload)
        if got == 1:
            end = time.monotonic() + drain
sys.exit(0 if got else 3)
PY
    PYTHONUNBUFFERED=1 "$python" "$work/listen.py" "$channel" "$ready" "$timeout" \
        >"$listener_out" 2>&1 &
    listener_pid=$!
else
    listener_kind=psql
    # psql prints "Asynchronous notification ..." after each statement it
    # runs, so feed it a cheap statement every 0.2 s until a notification
    # arrived (plus a short drain), the time is up, or we are told to stop.
    # shellcheck disable=SC2094  # we poll the file psql is writing, on purpose
    psql_listener() {
        local end=$(( SECONDS + timeout )) drain_end=
        {
            printf 'LISTEN "%s";\n' "$channel"
            printf '\\! touch %s\n' "$ready"
            while (( SECONDS < end )) && [[ ! -e $work/listener.stop ]]; do
                echo 'SELECT 1 \g /dev/null'
                if [[ -z $drain_end ]] && grep -q '^Asynchronous notification' "$listener_out"; then
                    drain_end=$(( SECONDS + 2 ))
                    end=$drain_end
                fi
                sleep 0.2
            done
        } | psql -X -q -t -A >"$listener_out" 2>&1
    }
    psql_listener &
    listener_pid=$!
fi

# wait until the listener has run LISTEN
for (( i = 0; i < 100; i++ )); do
    [[ -e $ready ]] && break
    kill -0 "$listener_pid" 2>/dev/null || break
    sleep 0.1
done
[[ -e $ready ]] || { cat "$listener_out" >&2; die "the listener did not start"; }
note "listening ($listener_kind client)"

# ------------------------------------------------------------------ transactions
step "two transactions: one commits, one rolls back"

tx1=$(cat <<'SQL'
BEGIN;
INSERT INTO orders (id, customer, amount) VALUES (42, 'customer-7', 99.90);
SELECT outbox.save('orders.created',
                   jsonb_build_object('order_id', 42, 'amount', 99.90),
                   key     => 'customer-7',
                   headers => '{"trace_id":"abc"}') AS message_id;
COMMIT;
SQL
)
tx2=$(cat <<'SQL'
BEGIN;
INSERT INTO orders (id, customer, amount) VALUES (43, 'customer-9', 10.00);
SELECT outbox.save('orders.created',
                   jsonb_build_object('order_id', 43, 'amount', 10.00),
                   key => 'customer-9') AS message_id;
ROLLBACK;
SQL
)

echo
echo "-- transaction 1 (COMMIT)"
indent <<<"$tx1"
show <<<"$tx1"
echo
echo "-- transaction 2 (ROLLBACK)"
indent <<<"$tx2"
show <<<"$tx2"

# ------------------------------------------------------------------ results
step "what the listener received"
wait "$listener_pid" || true   # it exits by itself, see above
listener_pid=

demo_rc=0
if [[ $listener_kind == python ]]; then
    indent <"$listener_out"
    n=$(grep -c '^notification ' "$listener_out" || true)
else
    n=0
    while IFS= read -r line; do
        n=$(( n + 1 ))
        payload=$(sed -E 's/^Asynchronous notification "[^"]*" with payload "(.*)" received from server process with PID [0-9]+\.$/\1/' <<<"$line")
        echo "   notification $n on channel \"$channel\", payload:"
        if command -v python3 >/dev/null 2>&1 && python3 -m json.tool <<<"$payload" >/dev/null 2>&1; then
            python3 -m json.tool --indent 2 <<<"$payload" | indent
        else
            echo "   $payload"
        fi
    done < <(grep '^Asynchronous notification' "$listener_out" || true)
fi
if (( n == 0 )); then
    demo_rc=1
    echo "   no notification arrived within ${timeout}s; last lines of the server log:"
    tail -n 20 "$work/server.log" | indent '   | '
elif (( n > 1 )); then
    demo_rc=1
    echo "   expected exactly one notification, got $n"
else
    note "(order 43 was rolled back, so its event was never published)"
fi

echo
echo "-- SELECT * FROM orders;"
show -c 'SELECT * FROM orders ORDER BY id'

step "SELECT * FROM outbox.stats"
show -c 'SELECT * FROM outbox.stats'

echo
if (( demo_rc )); then
    echo "demo FAILED: the committed event was not delivered"
else
    echo "demo finished: stopping the cluster and removing $work"
fi
exit "$demo_rc"
