#!/usr/bin/env python3
"""bench/bench.py -- the outbox benchmark suite.

Run it through bench/run.sh (make bench, make bench-quick), which installs
the packages it needs and then calls:

    python3 bench/bench.py --mode full|quick|smoke --out FILE [--work DIR]

It starts a throw-away PostgreSQL 15 cluster (Unix socket in a temporary
directory, no TCP) with the outbox extension preloaded, runs every scenario
with outbox, its peers and its baselines side by side in that one cluster,
and writes a Markdown report to FILE.

Scenarios (see issue 4 and bench/NOTES.md):
  1. save cost     pgbench, 8 clients: outbox.save() vs a plain INSERT into a
                   table with the same columns and indexes vs pgq.insert_event;
                   and the batch path (100 messages per transaction)
  2. drain rate    a backlog drained by the worker (notify publisher), ordering
                   'none' and 'key', batch sizes 100 and 1000, vs a PL/pgSQL
                   claim-and-mark loop and a PgQ consumer
  3. latency       commit-to-notification at steady rates, vs a relay that
                   polls every second
  4. keeping up    savers at full speed while the worker drains
  5. HTTP          bench/http.sh (nginx + wrk), reported in bench/RESULTS-http.md
  +  profile       pg_stat_statements, EXPLAIN (ANALYZE, BUFFERS) of the claim,
                   perf of the worker

Every figure is the median of the runs made (the runs are listed beside it);
ratios are the median of the per-run ratios to the baseline run in the same
round.  Nothing here fails on a time figure: the script fails only when a
scenario cannot run (an error, a message lost, a drain that never ends).
"""

import argparse
import datetime
import hashlib
import json
import multiprocessing
import os
import platform
import random
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

import psycopg2

HERE = os.path.dirname(os.path.abspath(__file__))

# A ~200-byte JSON payload, a key out of 1,000 and one header, as in the issue.
# (No colon directly before a letter or digit: pgbench would take it for a
# variable.)
PAYLOAD = ('{"order_id": 1234567, "customer_id": "customer-42", "status": "created", '
           '"currency": "EUR", "total": 129.95, "items": [{"sku": "SKU-1001", "qty": 2}, '
           '{"sku": "SKU-2002", "qty": 1}], "note": "leave it at the door"}')
TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736'
HEADERS = '{"trace_id": "%s"}' % TRACE_ID
# What outbox.save() stores for HEADERS with a jsonb payload; the plain and
# batch INSERTs store the same.
HEADERS_CT = '{"trace_id": "%s", "content-type": "application/json"}' % TRACE_ID
N_KEYS = 1000

MODES = {
    # reps: runs per figure; secs: seconds per pgbench run (save cost);
    # drain_n: backlog of scenario 2; small_n: the default-settings backlog
    # row; lat_*: latency; keepup_secs: scenario 4; profile_n: profile backlog
    'full': dict(reps=3, save_secs=20, drain_n=1_000_000, drain_reps=3, small_n=100_000,
                 lat_rates=[100, 200, 1000], lat_secs=30, keepup_secs=60, keepup_clients=8, retention=10,
                 warm_n=100_000,
                 wait_purge=True, profile_n=100_000, perf_secs=10,
                 cold_n=2_000, cold_wait=60, catchup_wait=300, perf=True),
    'quick': dict(reps=3, save_secs=5, drain_n=200_000, drain_reps=3, small_n=100_000,
                  lat_rates=[100, 200, 1000], lat_secs=10, keepup_secs=20, keepup_clients=8, retention=10,
                  warm_n=100_000,
                  wait_purge=True, profile_n=100_000, perf_secs=5,
                  cold_n=2_000, cold_wait=30, catchup_wait=120, perf=True),
    'smoke': dict(reps=1, save_secs=1, save_tx=50, drain_n=2_000, drain_reps=1, small_n=1_000,
                  lat_rates=[200], lat_secs=1, keepup_secs=1, keepup_clients=2, keepup_tx=500, retention=1,
                  warm_n=2_000,
                  wait_purge=False, profile_n=2_000, perf_secs=1,
                  cold_n=500, cold_wait=10, catchup_wait=60, perf=False),
}

# Cluster settings, written down in the report.  Checkpoints are spread out
# so that they do not land in the middle of short runs; everything else is
# PostgreSQL's default, except synchronous_commit, which the issue asks for.
CLUSTER_SETTINGS = [
    ('shared_preload_libraries', 'outbox'),
    ('outbox.databases', 'bench'),
    ('max_connections', '40'),
    ('shared_buffers', '1GB'),
    ('work_mem', '16MB'),
    ('maintenance_work_mem', '256MB'),
    ('synchronous_commit', 'off'),
    ('max_wal_size', '8GB'),
    ('min_wal_size', '1GB'),
    ('checkpoint_timeout', '30min'),
]

# The outbox settings a run starts from (PostgreSQL's defaults but for the
# ones the scenarios change, which are listed with each scenario).
OUTBOX_DEFAULTS = {
    'outbox.enabled': 'on',
    'outbox.batch_size': '100',
    'outbox.ordering': 'key',
    'outbox.retention': '604800',
    'outbox.poll_interval': '1000',
}


def log(msg):
    print('[%s] %s' % (time.strftime('%H:%M:%S'), msg), flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- cluster

class Cluster:
    """A throw-away cluster in a temporary directory, Unix socket only."""

    def __init__(self, bindir, work, run_as):
        self.bindir = bindir
        self.work = work
        self.data = os.path.join(work, 'data')
        self.sock = work
        self.logfile = os.path.join(work, 'postgres.log')
        self.port = random.randint(20000, 60000)
        self.run_as = run_as
        self.started = False
        self.settings = dict(OUTBOX_DEFAULTS)
        self.checkpoints = True
        self.worker_role = None
        self._admin = None

    def _cmd(self, args):
        if self.run_as:
            return ['runuser', '-u', self.run_as, '--'] + args
        return args

    def bin(self, name):
        return os.path.join(self.bindir, name)

    def initdb(self):
        subprocess.run(self._cmd([self.bin('initdb'), '-D', self.data, '-U', 'postgres',
                                  '--auth=trust', '-E', 'UTF8', '--no-locale']),
                       check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(self.data, 'postgresql.conf'), 'a') as f:
            f.write('\n# outbox benchmark\n')
            if self.worker_role:
                f.write("outbox.role = '%s'\n" % self.worker_role)
            f.write("listen_addresses = ''\n")
            f.write('port = %d\n' % self.port)
            f.write("unix_socket_directories = '%s'\n" % self.sock)
            for name, value in CLUSTER_SETTINGS:
                f.write("%s = '%s'\n" % (name, value))

    def start(self):
        subprocess.run(self._cmd([self.bin('pg_ctl'), '-D', self.data, '-l', self.logfile,
                                  '-w', '-t', '120', 'start']),
                       check=True, stdout=subprocess.DEVNULL)
        self.started = True

    def stop(self):
        if self._admin is not None:
            try:
                self._admin.close()
            except Exception:
                pass
            self._admin = None
        if not self.started:
            return
        r = subprocess.run(self._cmd([self.bin('pg_ctl'), '-D', self.data, '-m', 'fast',
                                      '-w', '-t', '120', 'stop']),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if r.returncode != 0:
            subprocess.run(self._cmd([self.bin('pg_ctl'), '-D', self.data, '-m', 'immediate',
                                      '-w', '-t', '60', 'stop']),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.started = False

    def restart(self):
        self.stop()
        self.start()

    def dsn(self, dbname='bench'):
        return dict(host=self.sock, port=self.port, user='postgres', dbname=dbname)

    def connect(self, dbname='bench', autocommit=True):
        conn = psycopg2.connect(**self.dsn(dbname))
        conn.autocommit = autocommit
        return conn

    @property
    def admin(self):
        if self._admin is None or self._admin.closed:
            self._admin = self.connect()
        return self._admin

    def q(self, sql, params=None):
        """Run one statement on the admin connection; return its rows."""
        with self.admin.cursor() as cur:
            cur.execute(sql, params)
            if cur.description is None:
                return None
            return cur.fetchall()

    def q1(self, sql, params=None):
        rows = self.q(sql, params)
        return rows[0][0] if rows else None

    def set(self, settle=0.25, **changes):
        """Change reloadable settings (outbox_x_y -> outbox.x_y) and reload.
        The workers apply a reload at their next loop, within milliseconds;
        settle waits a good deal longer than that."""
        todo = {}
        for k, v in changes.items():
            name = k.replace('__', '.')
            if self.settings.get(name) != str(v):
                todo[name] = str(v)
        if not todo:
            return
        for name, value in todo.items():
            self.q('ALTER SYSTEM SET %s = %%s' % name, (value,))
        self.q('SELECT pg_reload_conf()')
        self.settings.update(todo)
        if settle:
            time.sleep(settle)

    def checkpoint(self):
        """A CHECKPOINT before a measurement, so that none lands in it
        (skipped in smoke runs, where nothing is measured)."""
        if self.checkpoints:
            self.q('CHECKPOINT')

    def worker_pid(self):
        return self.q1("SELECT pid FROM pg_stat_activity "
                       "WHERE backend_type = 'outbox worker' AND datname = 'bench' "
                       "AND usename = %s", (self.worker_role or 'postgres',))

    def wait_worker(self, timeout=60):
        deadline = time.monotonic() + timeout
        nudged = 0.0
        while time.monotonic() < deadline:
            pid = self.worker_pid()
            if pid:
                return pid
            if time.monotonic() - nudged > 2:
                # A commit that saves a message asks the launcher for a worker.
                self.q("SELECT outbox.save('bench.nudge', '{}'::jsonb)")
                nudged = time.monotonic()
            time.sleep(0.1)
        raise BenchError('the outbox worker for database "bench" did not start; see %s'
                         % self.logfile)

    def pgbench(self, script, secs, clients=8, threads=2, transactions=None):
        """Run pgbench for secs seconds (or transactions per client);
        return (transactions per second, transactions)."""
        length = ['-t', str(transactions)] if transactions else ['-T', str(secs)]
        cmd = [self.bin('pgbench'), '-n', '-h', self.sock, '-p', str(self.port),
               '-U', 'postgres', '-c', str(clients), '-j', str(min(threads, clients))] + length + [
               '-M', 'prepared', '-f', script, 'bench']
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError('pgbench failed (%s):\n%s\n%s' % (script, r.stdout, r.stderr))
        m = re.search(r'tps = ([0-9.]+) \(without initial connection time\)', r.stdout)
        n = re.search(r'number of transactions actually processed: (\d+)', r.stdout)
        f = re.search(r'number of failed transactions: (\d+)', r.stdout)
        if not m or not n:
            raise BenchError('cannot read pgbench output:\n' + r.stdout)
        if f and int(f.group(1)) > 0:
            raise BenchError('pgbench transactions failed:\n' + r.stdout + r.stderr)
        return float(m.group(1)), int(n.group(1))


def wait_until(what, check, timeout, interval=0.05):
    """Poll check() until it returns a true value; return it, or raise."""
    deadline = time.monotonic() + timeout
    while True:
        v = check()
        if v:
            return v
        if time.monotonic() > deadline:
            raise BenchError('timed out after %.0f s waiting for %s' % (timeout, what))
        time.sleep(interval)


# ---------------------------------------------------------------- helpers

def fill_sql(table, topic, lo, hi, processed=False):
    """INSERT ... SELECT of messages lo..hi: ~200-byte JSON payloads, random
    keys out of N_KEYS, one header (plus content-type, as save() adds)."""
    return (
        "INSERT INTO %s (topic, key, payload, headers%s) "
        "SELECT '%s', 'customer-' || (random() * %d)::int, "
        "convert_to(format('{\"order_id\": %%s, \"customer_id\": \"customer-%%s\", "
        "\"status\": \"created\", \"currency\": \"EUR\", \"total\": 129.95, "
        "\"items\": [{\"sku\": \"SKU-1001\", \"qty\": 2}, {\"sku\": \"SKU-2002\", \"qty\": 1}], "
        "\"note\": \"leave it at the door\"}', g, g %% %d), 'UTF8'), "
        "'%s'::jsonb%s FROM generate_series(%d, %d) g"
        % (table, ', status, processed_at' if processed else '', topic, N_KEYS - 1, N_KEYS,
           HEADERS_CT, ", 'processed', now()" if processed else '', lo, hi))


def fill(cluster, table, n, topic='bench.drain', chunk=50_000, processed=False):
    for lo in range(1, n + 1, chunk):
        cluster.q(fill_sql(table, topic, lo, min(n, lo + chunk - 1), processed))


def warm_table(cluster, n):
    """outbox.messages as on a server that has been running for a while: n
    processed messages, and statistics.  (With the short retention of the
    keep-up scenario, the purge deletes them, oldest first, as it would on
    such a server.)"""
    cluster.q('TRUNCATE outbox.messages')
    fill(cluster, 'outbox.messages', n, topic='bench.old', processed=True)
    cluster.q('VACUUM ANALYZE outbox.messages')


def cold_table(cluster):
    """outbox.messages as after CREATE EXTENSION (or TRUNCATE): empty, and
    vacuumed, so the planner knows it is empty."""
    cluster.q('TRUNCATE outbox.messages')
    cluster.q('VACUUM ANALYZE outbox.messages')


def unfinished(cluster, table='outbox.messages'):
    return cluster.q1("SELECT (SELECT count(*) FROM %s WHERE status = 'pending') + "
                      "(SELECT count(*) FROM %s WHERE status = 'processing')" % (table, table))


def wait_notify(conn, timeout):
    """Wait for one notification on conn; return its arrival time."""
    deadline = time.monotonic() + timeout
    while True:
        conn.poll()
        if conn.notifies:
            t = time.monotonic()
            conn.notifies.clear()
            return t
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        select.select([conn], [], [], min(left, 0.5))


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(-(-p * len(sorted_values) // 100)) - 1))
    return sorted_values[k]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def rotate(items, k):
    k %= len(items)
    return items[k:] + items[:k]


def write_script(work, name, body):
    path = os.path.join(work, name)
    with open(path, 'w') as f:
        f.write(body)
    return path


def pgq_recreate(cluster, queue):
    if cluster.q1('SELECT count(*) FROM pgq.queue WHERE queue_name = %s', (queue,)):
        cluster.q('SELECT pgq.drop_queue(%s, true)', (queue,))
    cluster.q('SELECT pgq.create_queue(%s)', (queue,))


# ---------------------------------------------------------------- scenario 1

def save_scripts(work):
    k = '\\set k random(1, %d)\n' % N_KEYS
    one = {
        'plain': k + ("INSERT INTO bench.plain_messages (topic, key, payload, headers) "
                      "VALUES ('bench.save', 'customer-' || :k, convert_to('%s', 'UTF8'), '%s');\n"
                      % (PAYLOAD, HEADERS_CT)),
        'save': k + ("SELECT outbox.save('bench.save', '%s'::jsonb, 'customer-' || :k, '%s'::jsonb);\n"
                     % (PAYLOAD, HEADERS)),
        'pgq': k + ("SELECT pgq.insert_event('bench_save', 'bench.save', '%s', "
                    "'customer-' || :k, '%s', NULL, NULL);\n" % (PAYLOAD, HEADERS)),
    }
    batch_from = "FROM generate_series(1, 100) g;\n"
    many = {
        'b_plain': k + ("INSERT INTO bench.plain_messages (topic, key, payload, headers) "
                        "SELECT 'bench.save', 'customer-' || ((:k + g) %% %d), "
                        "convert_to('%s', 'UTF8'), '%s' " % (N_KEYS, PAYLOAD, HEADERS_CT)) + batch_from,
        'b_insert': k + ("INSERT INTO outbox.messages (topic, key, payload, headers) "
                         "SELECT 'bench.save', 'customer-' || ((:k + g) %% %d), "
                         "convert_to('%s', 'UTF8'), '%s' " % (N_KEYS, PAYLOAD, HEADERS_CT)) + batch_from,
        'b_save': k + ("SELECT outbox.save('bench.save', '%s'::jsonb, 'customer-' || ((:k + g) %% %d), "
                       "'%s'::jsonb) " % (PAYLOAD, N_KEYS, HEADERS)) + batch_from,
        'b_pgq': k + ("SELECT pgq.insert_event('bench_save', 'bench.save', '%s', "
                      "'customer-' || ((:k + g) %% %d), '%s', NULL, NULL) "
                      % (PAYLOAD, N_KEYS, HEADERS)) + batch_from,
    }
    scripts = {}
    for name, body in list(one.items()) + list(many.items()):
        scripts[name] = write_script(work, 'pgbench-%s.sql' % name, body)
    scripts['save_live'] = scripts['save']
    return scripts


SAVE_VARIANTS = [
    # key, group, label, worker publishing during the run
    ('plain', 'single', 'plain INSERT into a table with the same columns and indexes', False),
    ('save', 'single', '`outbox.save()`, worker paused', False),
    ('save_live', 'single', '`outbox.save()`, worker publishing meanwhile', True),
    ('pgq', 'single', '`pgq.insert_event()`', False),
    ('b_plain', 'batch', 'INSERT…SELECT of 100 into the same-shape table', False),
    ('b_insert', 'batch', 'INSERT…SELECT of 100 into `outbox.messages`, worker paused', False),
    ('b_save', 'batch', '`SELECT outbox.save(…) FROM generate_series(1, 100)`, worker paused', False),
    ('b_pgq', 'batch', '`SELECT pgq.insert_event(…) FROM generate_series(1, 100)`', False),
]


def scenario_save(cluster, cfg, work):
    scripts = save_scripts(work)
    runs = {v[0]: [] for v in SAVE_VARIANTS}
    for rep in range(cfg['reps']):
        for key, group, label, live in rotate(SAVE_VARIANTS, rep * 3):
            cluster.set(outbox__enabled='on' if live else 'off')
            cluster.q('TRUNCATE outbox.messages, bench.plain_messages')
            pgq_recreate(cluster, 'bench_save')
            cluster.checkpoint()
            tps, n = cluster.pgbench(scripts[key], cfg['save_secs'], transactions=cfg.get('save_tx'))
            runs[key].append(tps)
            log('  save %-9s run %d: %.0f tps' % (key, rep + 1, tps))
    cluster.q('TRUNCATE outbox.messages, bench.plain_messages')
    pgq_recreate(cluster, 'bench_save')
    result = []
    for key, group, label, live in SAVE_VARIANTS:
        base = 'plain' if group == 'single' else 'b_plain'
        ratios = [a / b for a, b in zip(runs[key], runs[base])]
        per_tx = 1 if group == 'single' else 100
        result.append(dict(key=key, group=group, label=label, runs=runs[key],
                           tps=med(runs[key]), msgs=med(runs[key]) * per_tx,
                           ratio=med(ratios)))
    return dict(variants=result, secs=cfg['save_secs'], reps=cfg['reps'])


# ---------------------------------------------------------------- scenario 2

def drain_outbox(cluster, n, batch, ordering):
    """Time the worker draining an n-message backlog; messages per second."""
    cluster.set(outbox__enabled='off', outbox__batch_size=batch, outbox__ordering=ordering)
    cluster.q('TRUNCATE outbox.messages')
    fill(cluster, 'outbox.messages', n)
    # A keyless marker with the largest id: the single worker claims in id
    # order, so when its notification arrives every message before it has
    # been published and marked.
    cluster.q("SELECT outbox.save('bench.done', '{}'::jsonb)")
    cluster.q('VACUUM ANALYZE outbox.messages')
    cluster.checkpoint()
    if unfinished(cluster) != n + 1:
        raise BenchError('the backlog was touched while the worker was paused')
    listener = cluster.connect()
    listener.cursor().execute('LISTEN "bench.done"')
    t0 = time.monotonic()
    cluster.set(settle=0, outbox__enabled='on')
    t1 = wait_notify(listener, timeout=max(120, n / 500))
    listener.close()
    if t1 is None:
        raise BenchError('the worker did not drain %d messages in time' % n)
    left = unfinished(cluster)
    if left:
        # Should not happen; if it does, time the drain by polling instead.
        wait_until('the backlog to drain', lambda: unfinished(cluster) == 0, 600)
        t1 = time.monotonic()
    failed = cluster.q1("SELECT count(*) FROM outbox.messages WHERE status = 'failed'")
    if failed:
        raise BenchError('%d messages failed during the drain' % failed)
    return (n + 1) / (t1 - t0)


def drain_plpgsql(cluster, n, batch):
    cluster.set(outbox__enabled='off')
    cluster.q('TRUNCATE outbox.messages, bench.relay_messages')
    fill(cluster, 'bench.relay_messages', n)
    cluster.q('VACUUM ANALYZE bench.relay_messages')
    cluster.checkpoint()
    conn = cluster.connect()
    t0 = time.monotonic()
    with conn.cursor() as cur:
        cur.execute('CALL bench.plpgsql_relay(%s, NULL)', (batch,))
        relayed = cur.fetchone()[0]
    t1 = time.monotonic()
    conn.close()
    if relayed != n or unfinished(cluster, 'bench.relay_messages'):
        raise BenchError('the PL/pgSQL relay sent %s of %d messages' % (relayed, n))
    return n / (t1 - t0)


def drain_pgq(cluster, n, batch):
    cluster.set(outbox__enabled='off')
    cluster.q('TRUNCATE outbox.messages')
    queue = 'bench_drain'
    pgq_recreate(cluster, queue)
    cluster.q("SELECT pgq.set_queue_config(%s, 'ticker_max_count', %s)", (queue, str(batch)))
    cluster.q("SELECT pgq.set_queue_config(%s, 'ticker_max_lag', '1 hour')", (queue,))
    cluster.q("SELECT pgq.set_queue_config(%s, 'ticker_idle_period', '1 hour')", (queue,))
    cluster.q("SELECT pgq.register_consumer(%s, 'bench')", (queue,))
    cluster.q('CALL bench.pgq_fill(%s, %s, %s)', (queue, n, batch))
    cluster.q('ANALYZE pgq.event_template')
    table = cluster.q1('SELECT pgq.current_event_table(%s)', (queue,))
    cluster.q('VACUUM ANALYZE %s' % table)
    cluster.checkpoint()
    conn = cluster.connect()
    t0 = time.monotonic()
    with conn.cursor() as cur:
        cur.execute("CALL bench.pgq_consume(%s, 'bench', NULL)", (queue,))
        consumed = cur.fetchone()[0]
    t1 = time.monotonic()
    conn.close()
    if consumed != n:
        raise BenchError('the PgQ consumer got %s of %d events' % (consumed, n))
    cluster.q('SELECT pgq.drop_queue(%s, true)', (queue,))
    return n / (t1 - t0)


def scenario_drain(cluster, cfg):
    n = cfg['drain_n']
    configs = []
    for batch in (100, 1000):
        configs += [('outbox', 'none', batch, n), ('outbox', 'key', batch, n),
                    ('plpgsql', None, batch, n), ('pgq', None, batch, n)]
    configs.append(('outbox', 'key', 100, cfg['small_n']))
    runs = {c: [] for c in configs}
    for rep in range(cfg['drain_reps']):
        for c in rotate(configs, rep * 2):
            relay, ordering, batch, size = c
            if relay == 'outbox':
                rate = drain_outbox(cluster, size, batch, ordering)
            elif relay == 'plpgsql':
                rate = drain_plpgsql(cluster, size, batch)
            else:
                rate = drain_pgq(cluster, size, batch)
            runs[c].append(rate)
            log('  drain %-7s %-4s batch %4d n %7d run %d: %.0f msg/s'
                % (relay, ordering or '-', batch, size, rep + 1, rate))
    cluster.set(outbox__enabled='on', outbox__batch_size=100, outbox__ordering='key')
    cluster.q('TRUNCATE outbox.messages, bench.relay_messages')
    cluster.q('VACUUM outbox.messages')
    rows = []
    for c in configs:
        relay, ordering, batch, size = c
        base = runs[('plpgsql', None, batch, n)] if size == n else []
        ratios = [a / b for a, b in zip(runs[c], base)]
        rows.append(dict(relay=relay, ordering=ordering, batch=batch, n=size, runs=runs[c],
                         rate=med(runs[c]), ratio=med(ratios) if ratios else None))
    return dict(rows=rows, n=n, reps=cfg['drain_reps'])


# ---------------------------------------------------------------- scenario 3

def _latency_listener(dsn, channel, ready, stop, out_path):
    conn = psycopg2.connect(**dsn)
    conn.autocommit = True
    conn.cursor().execute('LISTEN "%s"' % channel)
    ready.set()
    got = []
    while True:
        r, _, _ = select.select([conn], [], [], 0.05)
        if r:
            t = time.monotonic_ns()
            conn.poll()
            while conn.notifies:
                got.append((t, conn.notifies.pop(0).payload))
        elif stop.is_set():
            break
    conn.close()
    arrivals = {}
    for t, payload in got:
        arrivals.setdefault(json.loads(payload)['id'], t)
    with open(out_path, 'w') as f:
        json.dump(arrivals, f)


def _latency_saver(dsn, rate, secs, out_path):
    conn = psycopg2.connect(**dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("PREPARE bench_save(text, text) AS "
                "SELECT outbox.save('bench.latency', $1::jsonb, $2, '%s'::jsonb)" % HEADERS)
    n = max(1, int(rate * secs))
    step = 1e9 / rate
    start = time.monotonic_ns() + 20_000_000
    commits = {}
    for i in range(n):
        target = start + int(i * step)
        now = time.monotonic_ns()
        if target > now:
            time.sleep((target - now) / 1e9)
        # One statement in autocommit: it returns once its transaction has
        # committed.
        cur.execute('EXECUTE bench_save(%s, %s)', (PAYLOAD, 'customer-%d' % (i % N_KEYS)))
        mid = cur.fetchone()[0]
        commits[mid] = time.monotonic_ns()
    elapsed = (time.monotonic_ns() - start) / 1e9
    conn.close()
    with open(out_path, 'w') as f:
        json.dump(dict(commits=commits, elapsed=elapsed), f)


def _poll_relay(dsn, run_for):
    conn = psycopg2.connect(**dsn)
    conn.autocommit = True
    conn.cursor().execute('CALL bench.poll_relay(%s, 1.0, NULL)', (run_for,))
    conn.close()


def latency_run(cluster, work, rate, secs, polling, warm_n):
    ctx = multiprocessing.get_context('fork')
    cluster.set(outbox__enabled='off' if polling else 'on',
                outbox__batch_size=100, outbox__ordering='key')
    warm_table(cluster, warm_n)
    cluster.checkpoint()
    dsn = cluster.dsn()
    arrivals_path = os.path.join(work, 'lat-arrivals.json')
    commits_path = os.path.join(work, 'lat-commits.json')
    ready, stop = ctx.Event(), ctx.Event()
    listener = ctx.Process(target=_latency_listener,
                           args=(dsn, 'bench.latency', ready, stop, arrivals_path))
    listener.start()
    if not ready.wait(30):
        raise BenchError('the latency listener did not start')
    relay = None
    grace = 1.0
    if polling:
        grace = 2.5
        relay = ctx.Process(target=_poll_relay, args=(dsn, secs + grace + 0.5))
        relay.start()
    saver = ctx.Process(target=_latency_saver, args=(dsn, rate, secs, commits_path))
    saver.start()
    saver.join()
    if saver.exitcode != 0:
        raise BenchError('the latency saver failed')
    # Wait for the last notifications (or give up after the grace period).
    deadline = time.monotonic() + grace + 5
    while time.monotonic() < deadline:
        if unfinished(cluster) == 0:
            break
        time.sleep(0.05)
    time.sleep(0.2)
    stop.set()
    listener.join(60)
    if relay is not None:
        relay.join(60)
    with open(commits_path) as f:
        saved = json.load(f)
    with open(arrivals_path) as f:
        arrivals = json.load(f)
    lat = sorted((arrivals[i] - t) / 1e6 for i, t in saved['commits'].items() if i in arrivals)
    missing = len(saved['commits']) - len(lat)
    return dict(rate=rate, secs=secs, polling=polling, n=len(saved['commits']),
                achieved=len(saved['commits']) / saved['elapsed'], missing=missing,
                p50=percentile(lat, 50), p99=percentile(lat, 99), max=lat[-1] if lat else None)


def scenario_latency(cluster, cfg, work):
    rows = []
    for rate in cfg['lat_rates']:
        for polling in (False, True):
            r = latency_run(cluster, work, rate, cfg['lat_secs'], polling, cfg['warm_n'])
            log('  latency %s %4d/s: p50 %.2f ms p99 %.2f ms max %.2f ms (%d msgs, %d missing)'
                % ('poll-1s' if polling else 'outbox ', rate, r['p50'] or -1, r['p99'] or -1,
                   r['max'] or -1, r['n'], r['missing']))
            if r['missing'] and not polling:
                raise BenchError('%d messages were not notified' % r['missing'])
            rows.append(r)
    cluster.set(outbox__enabled='on')
    cluster.q('TRUNCATE outbox.messages')
    return dict(rows=rows, secs=cfg['lat_secs'])


# ---------------------------------------------------------------- scenario 4

def keepup_run(cluster, cfg, work, start):
    scripts = save_scripts(work)
    secs = cfg['keepup_secs']
    cluster.set(outbox__enabled='on', outbox__batch_size=100, outbox__ordering='key',
                outbox__retention=OUTBOX_DEFAULTS['outbox.retention'])
    if start == 'cold':
        cold_table(cluster)
    else:
        warm_table(cluster, cfg['warm_n'])
    cluster.checkpoint()
    size_sql = "SELECT pg_total_relation_size('outbox.messages')"
    size_before = cluster.q1(size_sql)
    rows_before = cluster.q1('SELECT count(*) FROM outbox.messages')
    analyzed_sql = ("SELECT autoanalyze_count + autovacuum_count FROM pg_stat_user_tables "
                    "WHERE relid = 'outbox.messages'::regclass")
    analyzed_before = cluster.q1(analyzed_sql)
    cluster.set(settle=0, outbox__retention=cfg['retention'])
    listener = cluster.connect()
    listener.cursor().execute('LISTEN "bench.done"')

    t_start = time.monotonic()
    tps, saved = cluster.pgbench(scripts['save'], secs, clients=cfg['keepup_clients'],
                                 transactions=cfg.get('keepup_tx'))
    t_stop = time.monotonic()
    secs = t_stop - t_start
    # A keyless marker saved right after the savers: the single worker
    # claims in id order, so its notification says the backlog is gone,
    # without polling a big table while the worker drains it.
    cluster.q("SELECT outbox.save('bench.done', '{}'::jsonb)")
    t_arrived = wait_notify(listener, cfg['catchup_wait'])
    listener.close()
    left = unfinished(cluster)
    if t_arrived is not None and left:
        # Should not happen; if it does, poll until the backlog is gone.
        try:
            wait_until('the backlog to drain', lambda: unfinished(cluster) == 0,
                       cfg['catchup_wait'], 0.5)
            t_arrived, left = time.monotonic(), 0
        except BenchError:
            t_arrived = None
    catch_up = None if t_arrived is None else t_arrived - t_stop
    # The backlog when the savers stopped: what was saved before then and
    # published after (processed_at is the worker's clock; t_stop ours).
    stop_age = time.monotonic() - t_stop
    backlog_at_stop = cluster.q1(
        "SELECT count(*) FROM outbox.messages WHERE topic = 'bench.save' AND "
        "(status <> 'processed' OR processed_at > now() - %s * interval '1 second')", (stop_age,))
    size_at_stop = cluster.q1(size_sql)
    rows_at_stop = cluster.q1('SELECT count(*) FROM outbox.messages')
    result = dict(start=start, secs=secs, tps=tps, saved=saved, clients=cfg['keepup_clients'],
                  autovacuumed=cluster.q1(analyzed_sql) - analyzed_before,
                  backlog_at_stop=backlog_at_stop,
                  catch_up=catch_up,
                  left=left, catchup_wait=cfg['catchup_wait'],
                  size_before=size_before, rows_before=rows_before,
                  size_at_stop=size_at_stop, rows_at_stop=rows_at_stop,
                  size_after=None, rows_after=None, after_secs=None, size_after_vacuum=None,
                  retention=cfg['retention'])
    if cfg['wait_purge'] and catch_up is not None:
        # Wait for the retention purge (every 5 s) to delete everything the
        # savers wrote.
        t0 = time.monotonic()
        try:
            wait_until('the retention purge', lambda: cluster.q1(
                "SELECT count(*) = 0 FROM outbox.messages WHERE topic = 'bench.save'"),
                cfg['retention'] + 120, 0.5)
        except BenchError:
            pass
        result['after_secs'] = time.monotonic() - t0
        result['rows_after'] = cluster.q1('SELECT count(*) FROM outbox.messages')
        result['size_after'] = cluster.q1(size_sql)
        cluster.q('VACUUM outbox.messages')
        result['size_after_vacuum'] = cluster.q1(size_sql)
    if catch_up is None:
        cluster.set(outbox__enabled='off')
        cluster.q('TRUNCATE outbox.messages')
        cluster.set(outbox__enabled='on')
    cluster.set(outbox__retention=OUTBOX_DEFAULTS['outbox.retention'])
    log('  keep-up (%s table): %.0f saves/s, backlog at stop %d, drained %s after stop'
        % (start, tps, backlog_at_stop, fmt_catchup(result)))
    return result


def scenario_keepup(cluster, cfg, work):
    runs = [keepup_run(cluster, cfg, work, start) for start in ('warm', 'cold')]
    cluster.q('TRUNCATE outbox.messages')
    return dict(runs=runs)


# ---------------------------------------------------------------- profile

def perf_available():
    return shutil.which('perf') is not None


def perf_start(work, name, pid=None, enabled=True):
    if not enabled or not perf_available():
        return None
    out = os.path.join(work, name + '.perf.data')
    cmd = ['perf', 'record', '-q', '-F', '499', '-o', out]
    cmd += ['-p', str(pid)] if pid else ['-a']
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    if p.poll() is not None:
        return None
    return (p, out)


def perf_stop(handle, comm=None, limit=30):
    if handle is None:
        return None
    p, out = handle
    p.send_signal(signal.SIGINT)
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    cmd = ['perf', 'report', '-i', out, '--stdio', '--sort', 'dso,symbol', '--percent-limit', '0.7']
    if comm:
        cmd += ['--comm', comm, '--percentage', 'relative']
    r = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in r.stdout.splitlines() if l.strip() and not l.startswith('#')]
    try:
        os.unlink(out)
    except OSError:
        pass
    return '\n'.join(lines[:limit]) if lines else None


def pgss_top(cluster, limit=12):
    return cluster.q(
        "SELECT calls, round(total_exec_time::numeric, 1), round(mean_exec_time::numeric, 3), rows, "
        "shared_blks_hit + shared_blks_read, regexp_replace(left(query, 160), '\\s+', ' ', 'g') "
        "FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'bench') "
        "ORDER BY total_exec_time DESC LIMIT %s", (limit,))


def http_figures():
    """The HTTP publisher's figure from bench/RESULTS-http.md (written by
    bench/http.sh): rate, ratio to wrk and date, or None."""
    try:
        with open(os.path.join(HERE, 'RESULTS-http.md')) as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(r'\| outbox http publisher \([^)]*\) \| \*\*(\d+)\*\* \|[^|]*\*\*(\d+)% of wrk\*\*', text)
    when = re.search(r'^(\d{4}-\d\d-\d\d \d\d:\d\d UTC)', text, re.M)
    if not m:
        return None
    return {'rate': int(m.group(1)), 'ratio': m.group(2), 'when': when.group(1) if when else '?'}


def statement_kind(query):
    """Name a statement of the worker by its text."""
    q = ' '.join(query.split())
    if 'SKIP LOCKED' in q:
        return 'claim: lock'
    if 'm.ctid, m.id, m.key' in q:
        return 'claim: scan'
    if "status = 'processing' AND m.key" in q:
        return 'claim: keys of external claims'
    if "SET status = 'processed'" in q:
        return 'mark processed'
    if 'DELETE FROM outbox.messages' in q:
        return 'purge'
    if 'min(next_attempt_at)' in q:
        return 'next due'
    if "claimed_at <" in q:
        return 'recover'
    return q[:50]


class PlanCapture:
    """Plans of the worker's statements as it runs them, with actual rows
    and buffers: auto_explain (log_min_duration = 0, log_analyze, nested
    statements) is switched on by a reload for a while, and the entries the
    worker wrote to the server log in that time are read back."""

    def __init__(self, cluster, pid):
        self.cluster = cluster
        self.pid = pid
        self.offset = None

    def start(self):
        self.offset = os.path.getsize(self.cluster.logfile)
        self.cluster.set(settle=0.1, auto_explain__log_min_duration=0)

    def stop(self):
        self.cluster.set(settle=0.3, auto_explain__log_min_duration=-1)
        with open(self.cluster.logfile, errors='replace') as f:
            f.seek(self.offset)
            lines = f.read().split('\n')
        entries = []
        i = 0
        while i < len(lines):
            m = re.search(r'\[(\d+)\] LOG:  duration: ([0-9.]+) ms  plan:$', lines[i])
            i += 1
            if not m:
                continue
            body = []
            while i < len(lines) and lines[i].startswith('\t'):
                body.append(lines[i][1:])
                i += 1
            if int(m.group(1)) != self.pid or not body or not body[0].startswith('Query Text: '):
                continue
            entries.append(dict(ms=float(m.group(2)), kind=statement_kind(body[0][12:]),
                                plan='\n'.join(body[1:])))
        return summarize_plans(entries)


def summarize_plans(entries):
    """Per kind of statement: how many, median and largest duration, and the
    plan of the execution at the median."""
    kinds = {}
    for e in entries:
        kinds.setdefault(e['kind'], []).append(e)
    out = []
    for kind, es in sorted(kinds.items(), key=lambda kv: -sum(e['ms'] for e in kv[1])):
        es.sort(key=lambda e: e['ms'])
        mid = es[(len(es) - 1) // 2]
        out.append(dict(kind=kind, n=len(es), median=mid['ms'], max=es[-1]['ms'],
                        plan=mid['plan']))
    return out


def save_nudges(cluster, n):
    """Save n messages one per transaction, a little apart, so that the
    worker runs its statements (and plans them) n times."""
    for _ in range(n):
        cluster.q("SELECT outbox.save('bench.nudge', '{}'::jsonb)")
        time.sleep(0.03)


def scenario_profile(cluster, cfg, work):
    """Restart with pg_stat_statements and auto_explain, then look at the
    worker's statements as it runs them, and at where the worker and the
    savers spend their time."""
    res = {}
    n = cfg['profile_n']
    cluster.q('ALTER SYSTEM SET shared_preload_libraries = outbox, pg_stat_statements, auto_explain')
    # (ALTER SYSTEM refuses settings of libraries that are not loaded yet.)
    with open(os.path.join(cluster.data, 'postgresql.conf'), 'a') as f:
        f.write("pg_stat_statements.track = 'all'\n"
                "auto_explain.log_min_duration = -1\n"
                "auto_explain.log_analyze = on\n"
                "auto_explain.log_buffers = on\n"
                "auto_explain.log_timing = off\n"
                "auto_explain.log_nested_statements = on\n")
    cluster.settings['auto_explain.log_min_duration'] = '-1'
    cluster.restart()
    cluster.q('CREATE EXTENSION IF NOT EXISTS pg_stat_statements')
    pid = cluster.wait_worker()
    try:
        log('  profile phase %s' % '1.')
        # 1. Cold: the worker plans its statements while the table is empty
        # (a new install, or after TRUNCATE; autovacuum has seen it empty),
        # then a backlog arrives; no ANALYZE until autovacuum gets to it.
        cluster.set(outbox__enabled='on', outbox__batch_size=100, outbox__ordering='key')
        cold_table(cluster)
        save_nudges(cluster, 12)
        wait_until('the nudges to be published', lambda: unfinished(cluster) == 0, 60)
        cluster.set(outbox__enabled='off')
        cold_n = cfg['cold_n']
        fill(cluster, 'outbox.messages', cold_n)
        cap = PlanCapture(cluster, pid)
        cap.start()
        t0 = time.monotonic()
        cluster.set(settle=0, outbox__enabled='on')
        try:
            wait_until('the cold drain', lambda: unfinished(cluster) == 0, cfg['cold_wait'], 0.2)
            res['cold_rate'] = cold_n / (time.monotonic() - t0)
        except BenchError:
            res['cold_rate'] = None
        res['cold_left'] = unfinished(cluster)
        res['cold_n'] = cold_n
        res['plans_cold'] = cap.stop()
        cluster.set(outbox__enabled='off')

        log('  profile phase %s' % '2.')
        # 2. An analyzed backlog of n messages: plans at the start of the
        # drain and once half of it is processed (before autovacuum has
        # cleaned up behind the worker, if it has not yet); perf of the
        # worker and pg_stat_statements over the whole drain.
        cluster.q('TRUNCATE outbox.messages')
        fill(cluster, 'outbox.messages', n)
        cluster.q("SELECT outbox.save('bench.done', '{}'::jsonb)")
        cluster.q('VACUUM ANALYZE outbox.messages')
        cluster.q('SELECT pg_stat_statements_reset()')
        handle = perf_start(work, 'worker', pid, cfg['perf'])
        listener = cluster.connect()
        listener.cursor().execute('LISTEN "bench.done"')
        cap = PlanCapture(cluster, pid)
        cap.start()
        t0 = time.monotonic()
        cluster.set(settle=0, outbox__enabled='on')
        time.sleep(0.3)
        res['plans_start'] = cap.stop()
        wait_until('half of the backlog to be processed',
                   lambda: cluster.q1("SELECT count(*) FROM outbox.messages WHERE status = 'pending'")
                   <= n // 2, max(120, n / 200), 0.5)
        cap.start()
        time.sleep(0.3)
        res['plans_half'] = cap.stop()
        t1 = wait_notify(listener, timeout=max(120, n / 200))
        listener.close()
        res['perf_worker'] = perf_stop(handle)
        res['drain_rate'] = (n + 1) / (t1 - t0) if t1 else None
        res['pgss_drain'] = pgss_top(cluster)

        log('  profile phase %s' % '3.')
        # 3. Savers at full speed on a warm table, with the short retention
        # of the keep-up scenario: the worker's plans in the last second of
        # the savers, and pg_stat_statements over the whole run (claims,
        # marks, and the retention purge that shares the worker's loop).
        scripts = save_scripts(work)
        warm_table(cluster, cfg['warm_n'])
        cluster.q('SELECT pg_stat_statements_reset()')
        cluster.set(outbox__retention=cfg['retention'])
        secs = min(cfg['keepup_secs'], 20)
        result = {}

        def savers():
            result['tps'] = cluster.pgbench(scripts['save'], secs, clients=cfg['keepup_clients'],
                                            transactions=cfg.get('keepup_tx'))[0]
        th = threading.Thread(target=savers)
        th.start()
        time.sleep(max(0.5, secs - 1.5))
        cap = PlanCapture(cluster, pid)
        cap.start()
        time.sleep(0.5)
        res['plans_keepup'] = cap.stop()
        th.join()
        res['keepup_backlog'] = unfinished(cluster)
        res['keepup_secs'] = secs
        wait_until('the backlog to drain', lambda: unfinished(cluster) == 0, 900, 0.2)
        res['pgss_keepup'] = pgss_top(cluster, 8)
        cluster.set(outbox__retention=OUTBOX_DEFAULTS['outbox.retention'])
        secs = cfg['perf_secs']

        log('  profile phase %s' % '4.')
        # 4. outbox.save() and the plain INSERT: perf of all postgres
        # processes, worker paused.
        cluster.set(outbox__enabled='off')
        cluster.q('TRUNCATE outbox.messages')
        cluster.q('SELECT pg_stat_statements_reset()')
        handle = perf_start(work, 'save', None, cfg['perf'])
        tps, _ = cluster.pgbench(scripts['save'], secs, transactions=cfg.get('save_tx'))
        res['perf_save'] = perf_stop(handle, comm='postgres')
        res['pgss_save'] = pgss_top(cluster, 6)
        res['save_tps'] = tps
        cluster.q('TRUNCATE outbox.messages, bench.plain_messages')
        cluster.q('SELECT pg_stat_statements_reset()')
        handle = perf_start(work, 'plain', None, cfg['perf'])
        tps, _ = cluster.pgbench(scripts['plain'], secs, transactions=cfg.get('save_tx'))
        res['perf_plain'] = perf_stop(handle, comm='postgres')
        res['pgss_plain'] = pgss_top(cluster, 3)
        res['plain_tps'] = tps
    finally:
        cluster.set(outbox__enabled='on', auto_explain__log_min_duration=-1)
        cluster.q('TRUNCATE outbox.messages, bench.plain_messages')
    res['perf'] = cfg['perf'] and perf_available()
    return res


# ---------------------------------------------------------------- report

def fmt_int(v):
    return '—' if v is None else '{:,.0f}'.format(v)


def fmt_ratio(v):
    return '—' if v is None else '%.2fx' % v


def fmt_ms(v):
    if v is None:
        return '—'
    return '%.2f' % v if v < 100 else '{:,.0f}'.format(v)


def fmt_runs(values):
    return ', '.join('{:,.0f}'.format(v) for v in values)


def fmt_catchup(k):
    if k['catch_up'] is None:
        return '> %d s (%s messages still pending)' % (k['catchup_wait'], fmt_int(k['left']))
    return '%.2f s' % k['catch_up']


def fmt_bytes(v):
    if v is None:
        return '—'
    return '%.1f MB' % (v / 1e6)


def machine_info():
    info = {}
    try:
        with open('/proc/cpuinfo') as f:
            models = [l.split(':', 1)[1].strip() for l in f if l.startswith('model name')]
        info['cpu'] = models[0] if models else platform.processor()
    except OSError:
        info['cpu'] = platform.processor()
    info['cores'] = os.cpu_count()
    try:
        with open('/proc/meminfo') as f:
            kb = int(next(l for l in f if l.startswith('MemTotal')).split()[1])
        info['memory'] = '%.1f GiB' % (kb / 1024 / 1024)
    except (OSError, StopIteration):
        info['memory'] = '?'
    info['kernel'] = platform.release()
    info['os'] = platform.platform()
    return info


def loadavg():
    try:
        return os.getloadavg()
    except OSError:
        return None


def library_digest(bindir):
    """Short digest and time of the installed outbox.so: the server loads
    it at start, so a `make install` during a run (other work on this
    machine) is noticed and reported."""
    try:
        pkglibdir = subprocess.run([os.path.join(bindir, 'pg_config'), '--pkglibdir'],
                                   capture_output=True, text=True, check=True).stdout.strip()
        path = os.path.join(pkglibdir, 'outbox.so')
        with open(path, 'rb') as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:12]
        mtime = time.strftime('%H:%M:%S', time.localtime(os.path.getmtime(path)))
        return '%s (installed %s)' % (digest, mtime)
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def git_revision():
    try:
        rev = subprocess.run(['git', '-C', HERE, 'rev-parse', '--short', 'HEAD'],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(['git', '-C', HERE, 'status', '--porcelain', '--', '../src', '../sql'],
                               capture_output=True, text=True).stdout.strip()
        return rev + (' (with uncommitted changes to src/ or sql/)' if dirty else '')
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def met(ok):
    return '**met**' if ok else '**missed**'


def report(out, mode, cfg, meta, results):
    L = []
    w = L.append
    save, drain, lat, keep, prof = (results.get(k) for k in
                                    ('save', 'drain', 'latency', 'keepup', 'profile'))
    w('# outbox benchmark results')
    w('')
    w('Generated by %s on %s, in %s. '
      % ({'full': '`make bench` (`bench/run.sh full`)', 'quick': '`make bench-quick` (`bench/run.sh quick`)',
          'smoke': '`bench/run.sh smoke`'}[mode], meta['date'], meta['duration']) +
      'Every figure is the median of the runs listed beside it; a ratio is the median of the '
      'per-round ratios to the baseline measured in the same round, in the same cluster. '
      'Absolute numbers move from run to run on this kind of machine (shared, 2 cores); '
      'ratios much less. Sections *Profiling* and *Notes* at the end say what was looked at '
      'and why the figures are what they are.')
    w('')
    if mode == 'smoke':
        w('> **Smoke run**: every scenario at a tiny scale to check that the scripts work; '
          'the figures mean nothing.')
        w('')
    w('## Machine and settings')
    w('')
    m = meta['machine']
    w('| | |')
    w('| --- | --- |')
    w('| CPU | %s, %s cores |' % (m['cpu'], m['cores']))
    w('| memory | %s |' % m['memory'])
    w('| kernel | %s |' % m['kernel'])
    w('| PostgreSQL | %s |' % meta['pg_version'])
    w('| outbox | %s (git %s; outbox.so %s) |' % (meta['outbox_version'], meta['git'], meta.get('library', '?')))
    w('| PgQ | %s |' % meta['pgq_version'])
    w('| load average at start / end | %s / %s |' % (meta['load_start'], meta['load_end']))
    w('')
    w('Cluster settings (everything else is PostgreSQL\'s default; the cluster is made by '
      '`initdb --no-locale -E UTF8` and reached over a Unix socket):')
    w('')
    w('| setting | value |')
    w('| --- | --- |')
    for name, value in meta['settings']:
        w('| `%s` | `%s` |' % (name, value))
    w('')
    if meta.get('library_changed'):
        w('> **Warning**: the installed outbox.so changed during the run (%s); the scenarios '
          'before the profile ran with the first one, the profile (after a restart) with the '
          'second.' % meta['library_changed'])
        w('')
    if meta.get('worker_settings'):
        w('> **Experiment**: the relay worker ran as a role of its own with `%s` '
          '(`ALTER ROLE … SET`), to measure what that change would gain.' % meta['worker_settings'])
        w('')
    w('Payload: a %d-byte JSON object, a key out of %d, one header (`trace_id`; '
      '`outbox.save()` adds `content-type`). Scale: %s.'
      % (len(PAYLOAD), N_KEYS, meta['scale']))
    w('')

    # ---- targets
    w('## Targets')
    w('')
    w('| target | measured | |')
    w('| --- | --- | --- |')
    if save:
        v = {x['key']: x for x in save['variants']}
        r = v['save']['ratio']
        w('| 1. `outbox.save` ≥ 0.9x plain INSERT tps | %s (%s vs %s tps) | %s |'
          % (fmt_ratio(r), fmt_int(v['save']['tps']), fmt_int(v['plain']['tps']), met(r >= 0.9)))
    if drain:
        for ordering, goal in (('none', 1.5), ('key', 1.0)):
            rs = [x for x in drain['rows'] if x['relay'] == 'outbox' and x['ordering'] == ordering
                  and x['n'] == drain['n']]
            txt = ', '.join('batch %d: %s' % (x['batch'], fmt_ratio(x['ratio'])) for x in rs)
            ok = all(x['ratio'] is not None and x['ratio'] >= goal for x in rs)
            w('| 2. drain, ordering `%s` ≥ %.1fx the PL/pgSQL claim-and-mark loop | %s | %s |'
              % (ordering, goal, txt, met(ok)))
    if lat:
        r = [x for x in lat['rows'] if x['rate'] == 1000 and not x['polling']]
        if r:
            r = r[0]
            w('| 3. latency at 1,000 msg/s: p50 < 2 ms, p99 < 10 ms | p50 %s ms, p99 %s ms | %s |'
              % (fmt_ms(r['p50']), fmt_ms(r['p99']), met(r['p50'] < 2 and r['p99'] < 10)))
    if keep:
        for k in keep['runs']:
            w('| 4. backlog back to zero within 5 s of the savers stopping (%s table) | '
              '%s (backlog at stop: %s) | %s |'
              % (k['start'], fmt_catchup(k), fmt_int(k['backlog_at_stop']),
                 met(k['catch_up'] is not None and k['catch_up'] <= 5)))
    http = http_figures()
    if http:
        w('| 5. HTTP publisher vs `wrk` (own script, `bench/http.sh`) | %s msg/s, %s%% of wrk (%s); see '
          '[RESULTS-http.md](RESULTS-http.md) | goal of 10,000/s (issue 3) **%s** |'
          % (fmt_int(http['rate']), http['ratio'], http['when'], 'met' if http['rate'] >= 10000 else 'missed'))
    else:
        w('| 5. HTTP publisher vs `wrk` (own script, `bench/http.sh`) | not measured: no RESULTS-http.md | |')
    w('')

    # ---- scenario 1
    if save:
        w('## 1. Save cost')
        w('')
        w('pgbench, 8 clients, 2 threads, `-M prepared`, %d s per run, %d run(s) per figure, '
          'one transaction per line below (a single message, or 100). Before each run the tables '
          'are emptied and a CHECKPOINT taken; the variants run round-robin, so drift hits them '
          'alike. "worker paused" is `outbox.enabled = off`: the save path alone, as for the '
          'baseline; "worker publishing" has the worker draining meanwhile, on the same 2 cores.'
          % (save['secs'], save['reps']))
        w('')
        w('| path | transactions/s | messages/s | vs plain INSERT | runs (tps) |')
        w('| --- | ---: | ---: | ---: | --- |')
        for x in save['variants']:
            w('| %s | %s | %s | %s | %s |' % (x['label'], fmt_int(x['tps']), fmt_int(x['msgs']),
                                             fmt_ratio(x['ratio']), fmt_runs(x['runs'])))
        w('')
        w('Batch rows are compared with the batch plain INSERT.')
        w('')

    # ---- scenario 2
    if drain:
        w('## 2. Drain rate')
        w('')
        w('A backlog of %s messages (random keys out of %d) is written while the worker is '
          'paused, then `outbox.enabled` is switched on and the time runs until the notification '
          'of a marker message saved last arrives (the worker claims in id order). Publisher: '
          '`notify` (nobody listens to the channel). Baselines, on a table with the same '
          'columns and indexes, with the worker paused: the PL/pgSQL procedure '
          '`bench.plpgsql_relay` (claim with `UPDATE … WHERE id IN (SELECT … ORDER BY id LIMIT n '
          'FOR UPDATE SKIP LOCKED)`, `pg_notify` with the same JSON envelope, mark processed, '
          'COMMIT, repeat), and a PgQ consumer (`next_batch`, `get_batch_events`, `pg_notify` '
          'each, `finish_batch`, COMMIT) whose queue was ticked every *batch* events while it '
          'was filled. %d run(s) per figure; ratios are to the PL/pgSQL loop at the same batch size.'
          % (fmt_int(drain['n']), N_KEYS, drain['reps']))
        w('')
        w('| relay | ordering | batch | backlog | messages/s | vs PL/pgSQL loop | runs |')
        w('| --- | --- | ---: | ---: | ---: | ---: | --- |')
        names = {'outbox': 'outbox worker', 'plpgsql': 'PL/pgSQL claim-and-mark loop',
                 'pgq': 'PgQ consumer'}
        for x in drain['rows']:
            w('| %s | %s | %d | %s | %s | %s | %s |'
              % (names[x['relay']], x['ordering'] or '—', x['batch'], fmt_int(x['n']),
                 fmt_int(x['rate']), fmt_ratio(x['ratio']), fmt_runs(x['runs'])))
        w('')
        w('The last row is the default configuration (`ordering = key`, `batch_size = 100`) '
          'on a %s-message backlog.' % fmt_int(drain['rows'][-1]['n']))
        w('')

    # ---- scenario 3
    if lat:
        w('## 3. Latency')
        w('')
        w('One process LISTENs and stamps each notification on arrival; another saves with '
          '`outbox.save()` in autocommit at a steady rate for %d s and stamps each message right '
          'after its COMMIT returns; both use CLOCK_MONOTONIC, matched by the envelope\'s `id`. '
          'Worker settings: defaults (`batch_size = 100`, `ordering = key`). "poll every 1 s": '
          'worker paused, and `bench.poll_relay` loops `fetch_pending` + `pg_notify` + '
          '`mark_processed` until nothing is due, then sleeps 1 s (the usual library default).'
          % lat['secs'])
        w('')
        w('| relay | rate (msg/s) | achieved | messages | p50 (ms) | p99 (ms) | max (ms) | not received |')
        w('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
        for x in lat['rows']:
            w('| %s | %s | %s | %s | %s | %s | %s | %d |'
              % ('poll every 1 s' if x['polling'] else 'outbox worker', fmt_int(x['rate']),
                 fmt_int(x['achieved']), fmt_int(x['n']), fmt_ms(x['p50']), fmt_ms(x['p99']),
                 fmt_ms(x['max']), x['missing']))
        w('')

    # ---- scenario 4
    if keep:
        runs = keep['runs']
        k0 = runs[0]
        w('## 4. Keeping up')
        w('')
        w('pgbench with %d clients saving with `outbox.save()` at full speed for %.0f s while the '
          'worker drains (defaults; `outbox.retention = %d s` from the start of the savers), then '
          'the time until nothing is pending or processing. Two starting points: *warm*, a table '
          'holding %s processed messages, vacuumed and analyzed, as on a server that has been '
          'running; *cold*, an empty table (a new install, or after TRUNCATE), so that the '
          'worker plans its statements for an empty table. Sizes are '
          '`pg_total_relation_size(\'outbox.messages\')`.'
          % (k0['clients'], k0['secs'], k0['retention'], fmt_int(cfg['warm_n'])))
        w('')
        w('| | ' + ' | '.join('%s table' % k['start'] for k in runs) + ' |')
        w('| --- |' + ' ---: |' * len(runs))

        def row(label, f):
            w('| %s | %s |' % (label, ' | '.join(f(k) for k in runs)))
        row('saves/s (messages saved)', lambda k: '%s (%s)' % (fmt_int(k['tps']), fmt_int(k['saved'])))
        row('published/s while saving', lambda k: fmt_int((k['saved'] - k['backlog_at_stop']) / k['secs']))
        row('backlog when the savers stopped', lambda k: fmt_int(k['backlog_at_stop']))
        row('**time from the savers stopping to an empty backlog**', lambda k: '**%s**' % fmt_catchup(k))
        row('autovacuum/autoanalyze passes on the table by then', lambda k: str(k.get('autovacuumed', '?')))
        row('table size (rows) before', lambda k: '%s (%s)' % (fmt_bytes(k['size_before']), fmt_int(k['rows_before'])))
        row('table size (rows) once the backlog was drained',
            lambda k: '%s (%s)' % (fmt_bytes(k['size_at_stop']), fmt_int(k['rows_at_stop'])))
        if any(k.get('size_after') is not None for k in runs):
            row('table size (rows) once the retention purge deleted the saved messages',
                lambda k: '—' if k['size_after'] is None else '%s (%s), %.0f s later'
                % (fmt_bytes(k['size_after']), fmt_int(k['rows_after']), k['after_secs']))
            row('… after a manual VACUUM', lambda k: fmt_bytes(k['size_after_vacuum']))
        else:
            row('table size after the retention purge', lambda k: 'not measured in this mode')
        w('')

    # ---- scenario 5
    w('## 5. HTTP publisher')
    w('')
    w('Measured by its own script, `sudo bash bench/http.sh` (nginx answering 200 on loopback, `wrk`')
    w('with the same 32 connections in the same run); its report is [RESULTS-http.md](RESULTS-http.md).')
    if http:
        w('Its last report (%s): %s messages/s, %s%% of wrk; the 10,000/s goal is %s.'
          % (http['when'], fmt_int(http['rate']), http['ratio'],
             'met' if http['rate'] >= 10000 else 'missed'))
    w('')

    # ---- profiling
    if prof:
        w('## Profiling (measured by this run)')
        w('')
        w('After the scenarios the cluster is restarted with `pg_stat_statements` '
          '(`track = all`, so statements run by the worker through SPI are counted) and '
          '`auto_explain`. perf: %s.'
          % ('sampling at 499 Hz' if prof['perf'] else 'not available on this machine'))
        w('')
        w('### The worker\'s statements as it runs them')
        w('')
        w('auto_explain (`log_analyze`, `log_buffers`, no timing) switched on for a moment; per '
          'statement: executions seen, median and largest time, and the plan of the median one. '
          'Times include auto_explain\'s own overhead.')
        w('')
        phases = [
            ('plans_cold', 'cold: statements planned on an empty table, then a backlog of %s '
             'messages with no ANALYZE since (drained at %s msg/s%s)'
             % (fmt_int(prof.get('cold_n')), fmt_int(prof.get('cold_rate')),
                '' if not prof.get('cold_left') else
                '; %s still pending after %d s' % (fmt_int(prof['cold_left']), cfg['cold_wait']))),
            ('plans_start', 'analyzed %s-message backlog, start of the drain' % fmt_int(cfg['profile_n'])),
            ('plans_half', 'same drain, half of the backlog processed'),
            ('plans_keepup', 'savers at full speed (%d clients, %s s) on a warm table; backlog when '
             'they stopped: %s' % (cfg['keepup_clients'], prof.get('keepup_secs'),
                                   fmt_int(prof.get('keepup_backlog')))),
        ]
        w('| phase | statement | executions | median ms | max ms |')
        w('| --- | --- | ---: | ---: | ---: |')
        for key, title in phases:
            for x in prof.get(key) or []:
                w('| %s | %s | %d | %.2f | %.2f |' % (key[6:], x['kind'], x['n'], x['median'], x['max']))
        w('')
        blocks = []
        for key, title in phases:
            for x in prof.get(key) or []:
                if x['kind'] in ('claim: scan', 'claim: lock', 'mark processed'):
                    blocks.append(('%s — %s, median of %d' % (title, x['kind'], x['n']), x['plan']))
        blocks += [
            ('perf of the worker while it drains (ordering key, batch 100; drain rate %s msg/s '
             'with pg_stat_statements and perf attached)' % fmt_int(prof.get('drain_rate')),
             prof.get('perf_worker')),
            ('perf of all postgres processes during `outbox.save()` under pgbench (%s tps, worker '
             'paused, with pg_stat_statements and perf)' % fmt_int(prof.get('save_tps')),
             prof.get('perf_save')),
            ('… and during the plain INSERT (%s tps)' % fmt_int(prof.get('plain_tps')),
             prof.get('perf_plain')),
        ]
        for title, text in blocks:
            if not text:
                continue
            w('<details><summary>%s</summary>' % title)
            w('')
            w('```')
            w(text)
            w('```')
            w('</details>')
            w('')
        for title, rows in (('pg_stat_statements during the drain', prof.get('pgss_drain')),
                            ('pg_stat_statements during %s s of savers at full speed on a warm table, '
                             'retention %d s (until the backlog was drained)'
                             % (prof.get('keepup_secs'), cfg['retention']), prof.get('pgss_keepup')),
                            ('pg_stat_statements during `outbox.save()`', prof.get('pgss_save')),
                            ('pg_stat_statements during the plain INSERT', prof.get('pgss_plain'))):
            if not rows:
                continue
            w('<details><summary>%s</summary>' % title)
            w('')
            w('| calls | total ms | mean ms | rows | buffers | statement |')
            w('| ---: | ---: | ---: | ---: | ---: | --- |')
            for calls, total, mean, nrows, bufs, query in rows:
                w('| %s | %s | %s | %s | %s | `%s` |' % (fmt_int(calls), total, mean,
                                                       fmt_int(nrows), fmt_int(bufs),
                                                       query.replace('|', '\\|').replace('`', "'")))
            w('')
            w('</details>')
            w('')

    # ---- notes
    notes = os.path.join(HERE, 'NOTES.md')
    if os.path.exists(notes):
        with open(notes) as f:
            text = f.read().strip()
        w(text)
        w('')
    with open(out, 'w') as f:
        f.write('\n'.join(L))


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--mode', choices=sorted(MODES), default='quick')
    ap.add_argument('--out', required=True, help='Markdown report to write')
    ap.add_argument('--work', help='scratch directory (default: a new one in /tmp)')
    ap.add_argument('--bindir', default='/usr/lib/postgresql/15/bin')
    ap.add_argument('--run-as', default=None,
                    help='OS user to run the server as (default: postgres when root)')
    ap.add_argument('--only', default='save,drain,latency,keepup,profile',
                    help='comma-separated scenarios to run')
    ap.add_argument('--report-from', metavar='JSON',
                    help='only write the report again from the results.json of a run '
                         '(e.g. after editing bench/NOTES.md)')
    ap.add_argument('--worker-settings', default='',
                    help='experiment: run the relay worker as a role of its own with these '
                         'settings (e.g. "enable_seqscan=off,enable_sort=off"), to measure '
                         'what a change to the worker\'s session would gain before making it')
    args = ap.parse_args()

    cfg = MODES[args.mode]
    if args.report_from:
        with open(args.report_from) as f:
            saved = json.load(f)
        report(args.out, saved.get('mode', args.mode), MODES[saved.get('mode', args.mode)],
               saved['meta'], saved['results'])
        log('report written to %s' % args.out)
        return
    only = set(args.only.split(','))
    run_as = args.run_as
    if run_as is None and os.geteuid() == 0:
        run_as = 'postgres'
    work = args.work
    own_work = work is None
    if own_work:
        work = subprocess.run(['mktemp', '-d', '/tmp/outbox-bench.XXXXXX'],
                              capture_output=True, text=True, check=True).stdout.strip()
    if run_as:
        shutil.chown(work, user=run_as)
    os.chmod(work, 0o755)

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)

    cluster = Cluster(args.bindir, work, run_as)
    cluster.checkpoints = args.mode != 'smoke'
    worker_settings = [kv.split('=', 1) for kv in args.worker_settings.split(',') if kv.strip()]
    cluster.worker_role = 'outbox_bench_worker' if worker_settings else None
    started = time.monotonic()
    meta = dict(date=datetime.datetime.now().strftime('%Y-%m-%d %H:%M %Z').strip(),
                machine=machine_info(), load_start=loadavg())
    results = {}
    try:
        log('cluster in %s (port %d)' % (work, cluster.port))
        meta['library'] = library_digest(args.bindir)
        cluster.initdb()
        cluster.start()
        log('cluster started')
        pg = cluster.connect('postgres')
        if worker_settings:
            # Before the database exists, so the worker never starts without it.
            pg.cursor().execute('CREATE ROLE %s SUPERUSER LOGIN' % cluster.worker_role)
            for name, value in worker_settings:
                pg.cursor().execute('ALTER ROLE %s SET %s = %%s' % (cluster.worker_role, name.strip()),
                                    (value.strip(),))
        pg.cursor().execute('CREATE DATABASE bench')
        pg.close()
        cluster.q('CREATE EXTENSION outbox')
        cluster.q('CREATE EXTENSION pgq')
        with open(os.path.join(HERE, 'sql', 'setup.sql')) as f:
            cluster.q(f.read())
        cluster.wait_worker()
        log('cluster ready')
        meta['pg_version'] = cluster.q1('SELECT version()')
        meta['outbox_version'] = cluster.q1(
            "SELECT extversion FROM pg_extension WHERE extname = 'outbox'")
        meta['pgq_version'] = cluster.q1("SELECT extversion FROM pg_extension WHERE extname = 'pgq'")
        meta['git'] = git_revision()
        names = [n for n, _ in CLUSTER_SETTINGS] + ['jit', 'autovacuum', 'fsync', 'wal_level',
                                                     'checkpoint_completion_target']
        meta['settings'] = cluster.q(
            "SELECT name, setting || coalesce(' ' || unit, '') FROM pg_settings "
            "WHERE name = ANY(%s) OR name LIKE 'outbox.%%' ORDER BY name", (names,))
        meta['worker_settings'] = args.worker_settings
        meta['scale'] = ('save %d s × %d runs; drain %s messages × %d runs; latency %d s per rate; '
                         'keep-up %d s' % (cfg['save_secs'], cfg['reps'], fmt_int(cfg['drain_n']),
                                           cfg['drain_reps'], cfg['lat_secs'], cfg['keepup_secs']))
        cluster.q('TRUNCATE outbox.messages')

        if 'save' in only:
            log('scenario 1: save cost')
            results['save'] = scenario_save(cluster, cfg, work)
        if 'drain' in only:
            log('scenario 2: drain rate')
            results['drain'] = scenario_drain(cluster, cfg)
        if 'latency' in only:
            log('scenario 3: latency')
            results['latency'] = scenario_latency(cluster, cfg, work)
        if 'keepup' in only:
            log('scenario 4: keeping up')
            results['keepup'] = scenario_keepup(cluster, cfg, work)
        if 'profile' in only:
            log('profiling')
            results['profile'] = scenario_profile(cluster, cfg, work)
    except BaseException:
        log('FAILED; server log: %s' % cluster.logfile)
        try:
            meta.setdefault('load_end', None)
            meta.setdefault('duration', 'failed run')
            for k in ('pg_version', 'outbox_version', 'pgq_version', 'git', 'scale'):
                meta.setdefault(k, '?')
            meta.setdefault('settings', [])
            report(args.out + '.partial', args.mode, cfg, meta, results)
            log('partial report: %s.partial' % args.out)
        except Exception as e:
            log('no partial report: %s' % e)
        try:
            with open(cluster.logfile) as f:
                tail = f.readlines()[-30:]
            sys.stderr.write(''.join(tail))
        except OSError:
            pass
        cluster.stop()
        raise
    cluster.stop()
    meta['load_end'] = loadavg()
    if library_digest(args.bindir) != meta['library']:
        meta['library_changed'] = 'now %s' % library_digest(args.bindir)
    secs = time.monotonic() - started
    meta['duration'] = '%d min %02d s' % (secs // 60, secs % 60)
    for k in ('load_start', 'load_end'):
        meta[k] = ' '.join('%.2f' % x for x in meta[k]) if meta[k] else '?'
    with open(os.path.join(work, 'results.json'), 'w') as f:
        json.dump(dict(mode=args.mode, meta=meta, results=results), f, indent=1, default=str)
    report(args.out, args.mode, cfg, meta, results)
    log('report written to %s (%s)' % (args.out, meta['duration']))
    if own_work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    try:
        main()
    except (BenchError, subprocess.CalledProcessError, psycopg2.Error) as e:
        log('error: %s' % e)
        sys.exit(1)
    except KeyboardInterrupt:
        log('interrupted')
        sys.exit(130)
