# shellcheck shell=bash
# bench/pg.sh -- sourced by the bench scripts: find PostgreSQL and check
# that the outbox extension is installed into it.
#
#   find_outbox_install NAME
# sets pg_config_bin, bindir, sharedir and pkglibdir (PG_CONFIG, else
# PostgreSQL 15's pg_config, else the one in PATH), and exits with a message
# prefixed by NAME when the extension is not installed there.
# shellcheck disable=SC2034  # the variables are for the sourcing script
find_outbox_install() {
    local name=$1
    if [[ -n ${PG_CONFIG:-} ]]; then
        pg_config_bin=$PG_CONFIG
    elif [[ -x /usr/lib/postgresql/15/bin/pg_config ]]; then
        pg_config_bin=/usr/lib/postgresql/15/bin/pg_config
    else
        pg_config_bin=$(command -v pg_config)
    fi
    bindir=$("$pg_config_bin" --bindir)
    sharedir=$("$pg_config_bin" --sharedir)
    pkglibdir=$("$pg_config_bin" --pkglibdir)
    if [[ ! -f $sharedir/extension/outbox.control || ! -f $pkglibdir/outbox.so ]]; then
        echo "$name: the outbox extension is not installed; run 'make install' first" >&2
        exit 1
    fi
}

# ---------------------------------------------------------------- throw-away clusters
# The helpers below serve bench/http.sh, nats.sh and kafka.sh: a cluster on
# a Unix socket in a scratch directory, run by the "postgres" user (the
# scripts run as root), with a backlog saved while the worker is off and a
# timed drain.  Call find_outbox_install first.

# bench_work NAME: make the scratch directory $work (and $work/sock), owned
# by postgres.
bench_work() {
    work=$(mktemp -d "/tmp/outbox-bench-$1.XXXXXX")
    chmod 0755 "$work"
    mkdir "$work/sock"
    chown postgres: "$work" "$work/sock"
    pg_data=
}

as_pg() { runuser -u postgres -- "$@"; }
psql_pg() { as_pg "$bindir/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$work/sock" -p 5432 -d postgres "$@"; }

# start_bench_cluster LIBRARIES CONF [NOFILE]: initdb $work/data, with
# shared_preload_libraries = LIBRARIES, the outbox off, and the lines CONF;
# start it (under "ulimit -n NOFILE" when given) and create the extension.
start_bench_cluster() {
    pg_data=$work/data
    rm -rf -- "$pg_data"
    as_pg "$bindir/initdb" -D "$pg_data" -A trust -E UTF8 --locale=C --no-sync >/dev/null
    cat >>"$pg_data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$work/sock'
port = 5432
shared_buffers = 256MB
max_wal_size = 4GB
shared_preload_libraries = '$1'
outbox.databases = 'postgres'
outbox.enabled = off
$2
CONF
    if [[ -n ${3:-} ]]; then
        as_pg bash -c "ulimit -n $3 && exec '$bindir/pg_ctl' -D '$pg_data' -l '$work/server.log' -w start" >/dev/null
    else
        as_pg "$bindir/pg_ctl" -D "$pg_data" -l "$work/server.log" -w start >/dev/null
    fi
    psql_pg -c 'CREATE EXTENSION outbox'
}

# stop_bench_cluster [MODE]: stop the cluster if it runs (default immediate,
# for cleanup traps).
stop_bench_cluster() {
    if [[ -n ${pg_data:-} && -f $pg_data/postmaster.pid ]]; then
        as_pg "$bindir/pg_ctl" -D "$pg_data" -m "${1:-immediate}" -w stop >/dev/null 2>&1 || true
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# CPU seconds (user + system) process $1 has used so far.
cpu_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"
}

# The median of the numbers on stdin, one per line.
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# The payload of every message: 100 bytes of JSON.
bench_body='{"order_id": 123456, "customer": "c-0042", "amount": 19.99, "currency": "EUR", "items": [1, 2, 3]}'

# save_backlog N: empty the outbox, then save N messages (the body above,
# 1000 keys) with INSERT ... SELECT; run while the worker is off.
save_backlog() {
    psql_pg -c "TRUNCATE outbox.messages" \
            -c "INSERT INTO outbox.messages (topic, payload, key)
                SELECT 'orders', convert_to('$bench_body', 'UTF8'), 'customer-' || (i % 1000)
                FROM generate_series(1, $1) i" \
            -c 'VACUUM ANALYZE outbox.messages'
}

# set_enabled on|off: outbox.enabled, applied by a reload.
set_enabled() {
    psql_pg -c "ALTER SYSTEM SET outbox.enabled = $1" -c "SELECT pg_reload_conf()" >/dev/null
}

# drain_seconds: switch the worker on and wait until nothing is pending or
# processing; prints the seconds from switch-on to the last processed_at.
drain_seconds() {
    local t0 left
    t0=$(psql_pg -c "ALTER SYSTEM SET outbox.enabled = on" -c "SELECT pg_reload_conf()" \
                 -c "SELECT clock_timestamp()" | tail -n 1)
    while :; do
        left=$(psql_pg -c "SELECT count(*) FROM outbox.messages WHERE status IN ('pending', 'processing')")
        [[ $left == 0 ]] && break
        sleep 0.2
    done
    psql_pg -c "SELECT extract(epoch FROM max(processed_at) - '$t0'::timestamptz) FROM outbox.messages"
}

# The relay worker's pid, waiting up to 10 s for it.
worker_pid() {
    local pid=
    for _ in $(seq 100); do
        pid=$(psql_pg -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'outbox worker'")
        [[ -n $pid ]] && break
        sleep 0.1
    done
    echo "$pid"
}
