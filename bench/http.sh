#!/usr/bin/env bash
# bench/http.sh -- how fast the http publisher delivers to a local nginx,
# beside wrk against the same nginx with the same number of connections.
#
#   sudo bash bench/http.sh            # prints a Markdown section for RESULTS.md
#
# What it does, in one run:
#   1. starts nginx on a free loopback port (answers 200 to every POST,
#      keep-alive, no access log; stub_status counts requests);
#   2. runs wrk with as many connections as outbox.http_max_concurrency
#      (POST of the same body the messages carry);
#   3. starts a throw-away cluster (Unix socket only) with outbox.publisher
#      = 'http' and every other outbox setting at its default, saves
#      $MESSAGES messages with outbox.enabled = off, turns it on and times
#      the drain: messages/s = messages / (last processed_at - switch-on);
#   4. checks that nginx received a request per message and nothing failed;
#   5. checks the descriptor bound: the server started under "ulimit -n
#      1024" with outbox.batch_size = 10000 and http_max_concurrency = 1000
#      drains $FD_MESSAGES messages with no descriptor error, and the
#      worker's open descriptors stay below the limit.
#
# Environment: PG_CONFIG (default PostgreSQL 15's), MESSAGES (100000),
# FD_MESSAGES (20000), WRK_SECONDS (10), CONNECTIONS (32, the default of
# outbox.http_max_concurrency), EXTRA_CONF (postgresql.conf lines added
# to the timed cluster, for experiments; the report then is not "at
# default settings").  Needs nginx, wrk and the installed outbox
# extension (make install).  Run as root: the cluster runs as "postgres".
set -euo pipefail

MESSAGES=${MESSAGES:-100000}
FD_MESSAGES=${FD_MESSAGES:-20000}
WRK_SECONDS=${WRK_SECONDS:-10}
CONNECTIONS=${CONNECTIONS:-32}

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/pg.sh
. "$here/pg.sh"
find_outbox_install bench/http.sh
for tool in nginx wrk python3; do
    command -v "$tool" >/dev/null ||
        { echo "bench/http.sh: $tool not found (apt-get install nginx wrk python3)" >&2; exit 1; }
done
[[ $(id -u) -eq 0 ]] || { echo "bench/http.sh: run as root (the cluster runs as postgres)" >&2; exit 1; }

bench_work http
mkdir "$work/nginx"
nginx_pid=

cleanup() {
    stop_bench_cluster
    if [[ -n $nginx_pid ]]; then
        kill "$nginx_pid" 2>/dev/null || true
        wait "$nginx_pid" 2>/dev/null || true
    fi
    rm -rf -- "$work"
}
trap cleanup EXIT

# ------------------------------------------------------------------ nginx
port=$(free_port)
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes auto;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    server {
        listen 127.0.0.1:$port;
        location = /nginx_status { stub_status; }
        location / { return 200 "ok\n"; }
    }
}
EOF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
nginx_pid=$!
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/nginx_status" && break
    sleep 0.05
done
nginx_requests() {
    curl -s "http://127.0.0.1:$port/nginx_status" | awk 'NR == 3 { print $3 }'
}

# The body every message (and every wrk request) carries: 100 bytes of JSON.
body=$bench_body

# ------------------------------------------------------------------ wrk
cat >"$work/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
EOF
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

wrk -t2 -c"$CONNECTIONS" -d"${WRK_SECONDS}s" -s "$work/post.lua" \
    "http://127.0.0.1:$port/hook/orders" >"$work/wrk.out" &
wrk_pid=$!
wrk_cpu=0
while kill -0 "$wrk_pid" 2>/dev/null; do
    c=$(cpu_seconds "$wrk_pid" 2>/dev/null || echo "$wrk_cpu")
    wrk_cpu=$c
    sleep 0.2
done
wait "$wrk_pid"
wrk_out=$(cat "$work/wrk.out")
wrk_rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$wrk_out")
wrk_total=$(awk '/requests in/ { print $1 }' <<<"$wrk_out")

# ------------------------------------------------------------------ cluster
# start_cluster CONF [NOFILE]: the throw-away cluster, publishing over HTTP
# to nginx, with the extra lines CONF.
start_cluster() {
    start_bench_cluster outbox "outbox.publisher = 'http'
outbox.http_url = 'http://127.0.0.1:$port/hook/{topic}'
$1" "${2:-}"
}

start_cluster "${EXTRA_CONF:-}"
save_backlog "$MESSAGES"
requests_before=$(nginx_requests)
wpid=$(worker_pid)
cpu_before=$(cpu_seconds "$wpid")
seconds=$(drain_seconds)
cpu_after=$(cpu_seconds "$wpid")
requests_after=$(nginx_requests)
processed=$(psql_pg -c "SELECT count(*) FROM outbox.messages WHERE status = 'processed'")
not_ok=$(psql_pg -c "SELECT count(*) FROM outbox.messages WHERE status <> 'processed' OR retries > 0")
# minus the stub_status request that read the second figure
received=$(( requests_after - requests_before - 1 ))
rate=$(python3 -c "print(round($MESSAGES / $seconds))")
ratio=$(python3 -c "print(f'{$MESSAGES / $seconds / $wrk_rps * 100:.0f}')")
worker_us=$(python3 -c "print(round(($cpu_after - $cpu_before) / $MESSAGES * 1e6, 1))")
worker_cpu_share=$(python3 -c "print(round(($cpu_after - $cpu_before) / $seconds * 100))")
wrk_us=$(python3 -c "print(round($wrk_cpu / $wrk_total * 1e6, 1))")
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
stop_bench_cluster fast

# ------------------------------------------------------------------ descriptor bound
start_cluster "outbox.batch_size = 10000
outbox.http_max_concurrency = 1000" 1024
save_backlog "$FD_MESSAGES"
wpid=$(worker_pid)
limit=$(awk '/Max open files/ { print $4 }' "/proc/$wpid/limits")
set_enabled on
max_fds=0
while :; do
    n=$(ls "/proc/$wpid/fd" 2>/dev/null | wc -l)
    (( n > max_fds )) && max_fds=$n
    left=$(psql_pg -c "SELECT count(*) FROM outbox.messages WHERE status IN ('pending', 'processing')")
    [[ $left == 0 ]] && break
    sleep 0.05
done
fd_processed=$(psql_pg -c "SELECT count(*) FROM outbox.messages WHERE status = 'processed' AND retries = 0")
fd_errors=$(grep -ciE 'out of file descriptors|too many open files|could not (open|create)' "$work/server.log" || true)
cap_line=$(grep -o 'outbox http publisher: [0-9]* requests in flight at most instead of [0-9]*' "$work/server.log" | head -n 1 || true)
cap_note=
[[ -n $cap_line ]] && cap_note="The publisher logged: \`$cap_line\`."

# ------------------------------------------------------------------ report
cat <<EOF
## HTTP publisher: messages/s to a local nginx

$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')),
$("$pg_config_bin" --version), $(nginx -v 2>&1 | cut -d' ' -f3), $(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2),
libcurl $(curl-config --version 2>/dev/null | cut -d' ' -f2 || echo '?').
Load average before / after: $load_before / $load_after (other jobs share this machine: the
figures are a floor, not a ceiling).

nginx answers \`200 ok\` to every POST (\`return 200\`, keep-alive, no access log), on loopback.
Both clients send the same 100-byte JSON body with $CONNECTIONS connections: wrk with
\`-t2 -c$CONNECTIONS -d${WRK_SECONDS}s\`, the outbox worker with \`outbox.http_max_concurrency = $CONNECTIONS\`
(the default). All other outbox settings at their defaults (\`batch_size = 100\`,
\`ordering = key\`); $MESSAGES messages over 1000 keys saved while \`outbox.enabled = off\`, then
timed from switching it on to the last \`processed_at\`.

| client | requests/s | |
| --- | ---: | --- |
| wrk ($CONNECTIONS connections) | $(printf '%.0f' "$wrk_rps") | upper bound: nginx alone |
| outbox http publisher ($CONNECTIONS connections) | **$rate** | $MESSAGES messages in ${seconds} s, **${ratio}% of wrk** |

Checks: $processed of $MESSAGES processed, $not_ok failed or retried; nginx counted $received
requests for them.

CPU per request, which depends less on what else runs: the relay worker used ${worker_us} µs of CPU
per message (claim, request, mark; it was on a CPU ${worker_cpu_share}% of the drain), wrk ${wrk_us} µs per
request (wrk's two threads together).

Descriptor bound: server started under \`ulimit -n $limit\` with \`outbox.batch_size = 10000\` and
\`outbox.http_max_concurrency = 1000\`: $fd_processed of $FD_MESSAGES messages processed at the
first attempt, $fd_errors descriptor errors in the log, at most $max_fds descriptors open in the
worker. $cap_note

Reproduce: \`sudo bash bench/http.sh\` (MESSAGES, CONNECTIONS, WRK_SECONDS to vary).
EOF
