#!/usr/bin/env python3
"""Savers for the high-availability test (test/t/170_patroni.pl).

Each of CLIENTS threads saves messages through outbox.save() in its own
transactions, over a connection to whichever member accepts writes (a libpq
connection string naming every member with target_session_attrs=read-write),
and writes down, after each COMMIT, what the server acknowledged:

  ack ID TOPIC KEY SEQ TIME PORT       the COMMIT returned: the message
                                       is durable
  unknown ID TOPIC KEY SEQ TIME PORT   the connection broke during COMMIT:
                                       the message may or may not have
                                       been committed

(TIME: Unix time of the answer, float; PORT: the server's port).  A transaction that failed before its
COMMIT was sent is rolled back and not written down.  Thread i owns the keys
c<i>k0 .. c<i>k<KEYS-1> and saves one message at a time per key, so for
each key commit order is SEQ order; SEQ increases by one per attempted
message of the key (gaps are messages rolled back).  Topics alternate
between the TOPICS given.  After a broken connection the thread reconnects
(retrying until one member accepts writes).  The savers stop when the file
STOPFILE exists; RECORD is then complete.

Usage: outbox_ha_saver.py CONNINFO RECORD STOPFILE CLIENTS KEYS PAUSE_MS TOPIC...
"""

import os
import random
import sys
import threading
import time

import psycopg2

conninfo, record, stopfile = sys.argv[1:4]
clients, nkeys, pause_ms = (int(a) for a in sys.argv[4:7])
topics = sys.argv[7:]

out = open(record, "a", buffering=1)
out_lock = threading.Lock()


def write(lines):
    with out_lock:
        out.write("".join(lines))
        out.flush()


def saver(client):
    seq = {}
    conn = None
    n = 0
    rng = random.Random(client)
    while not os.path.exists(stopfile):
        if conn is None:
            try:
                conn = psycopg2.connect(conninfo, connect_timeout=3,
                                        application_name="outbox_ha_saver")
            except psycopg2.Error:
                conn = None
                time.sleep(0.1)
                continue
        # one to three messages of distinct keys of this client
        port = conn.info.port
        keys = rng.sample(range(nkeys), rng.randint(1, min(3, nkeys)))
        msgs = []
        committing = False
        try:
            cur = conn.cursor()
            for k in keys:
                key = "c%dk%d" % (client, k)
                seq[key] = seq.get(key, 0) + 1
                topic = topics[n % len(topics)]
                n += 1
                payload = '{"k": "%s", "s": %d}' % (key, seq[key])
                cur.execute("SELECT outbox.save(%s, %s::jsonb, %s)",
                            (topic, payload, key))
                msgs.append((cur.fetchone()[0], topic, key, seq[key]))
            committing = True
            conn.commit()
            state = "ack"
        except psycopg2.Error:
            state = "unknown" if committing else None
            try:
                conn.close()
            except psycopg2.Error:
                pass
            conn = None
        if state:
            now = time.time()
            write(["%s %s %s %s %d %.6f %s\n" % (state, i, t, k, s, now, port)
                   for (i, t, k, s) in msgs])
        if pause_ms:
            time.sleep(pause_ms / 1000.0)
    if conn is not None:
        conn.close()


threads = [threading.Thread(target=saver, args=(c,)) for c in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
out.close()
