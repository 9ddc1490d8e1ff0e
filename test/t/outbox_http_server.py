#!/usr/bin/env python3
"""A scriptable webhook receiver for the outbox http publisher's tests.

Listens on 127.0.0.1 (HTTP/1.1, keep-alive, one thread per connection) and
records every webhook request.  Tests drive it over HTTP:

  POST /_control/plan   {"topic": T, "steps": [STEP, ...], "random_fail": P}
        How to answer messages of topic T ("*" for any other topic).  The
        n-th attempt of a message (counted per Outbox-Id) gets step n, the
        last step repeating; STEP is {"status": 200, "body": "",
        "delay_ms": 0, "headers": {}}.  With random_fail P, a 2xx step is
        answered 500 with probability P instead.
  POST /_control/reset  forget requests, plans and statistics
  GET  /_control/requests  every request so far (JSON list)
  GET  /_control/stats  {"max_inflight": N, "connections": N, "inflight": N}

Each request record: id, topic, key, path, method, headers (lower-cased
names), body_b64, attempt, status, start, end (Unix time, float), conn
("ip:port" of the client side of the connection), error (when the answer
could not be written, e.g. the client timed out).

Usage: outbox_http_server.py PORT PORT_FILE [CERT KEY]   (PORT 0 picks a
free port.  Once listening it writes "PORT CONTROL_PORT" to PORT_FILE.
With a certificate and key, PORT serves HTTPS and the control endpoints
are also served over plain HTTP on CONTROL_PORT; else both are PORT.)
"""

import base64
import json
import os
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
state = {}


def reset_state():
    state.clear()
    state.update(plans={}, records=[], attempts={}, inflight=0,
                 max_inflight=0, connections=set())


reset_state()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def setup(self):
        super().setup()
        with lock:
            state["connections"].add("%s:%d" % self.client_address)

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def answer(self, status, body=b"", headers=None):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def control(self, body):
        path = self.path
        if path == "/_control/plan":
            plan = json.loads(body)
            with lock:
                state["plans"][plan["topic"]] = plan
            self.answer(200, "{}")
        elif path == "/_control/reset":
            with lock:
                reset_state()
            self.answer(200, "{}")
        elif path == "/_control/requests":
            with lock:
                out = json.dumps(state["records"])
            self.answer(200, out, {"Content-Type": "application/json"})
        elif path == "/_control/stats":
            with lock:
                out = json.dumps({"max_inflight": state["max_inflight"],
                                  "inflight": state["inflight"],
                                  "connections": len(state["connections"])})
            self.answer(200, out, {"Content-Type": "application/json"})
        else:
            self.answer(404, "no such control")

    def do_GET(self):
        if self.path.startswith("/_control/"):
            self.control(b"")
        else:
            self.answer(405, "POST webhooks here")

    def do_POST(self):
        body = self.read_body()
        if self.path.startswith("/_control/"):
            self.control(body)
            return
        start = time.time()
        msg_id = self.headers.get("Outbox-Id", "")
        topic = self.headers.get("Outbox-Topic", "")
        headers = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = headers[name] + ", " + value if name in headers else value
        with lock:
            attempt = state["attempts"].get(msg_id, 0)
            state["attempts"][msg_id] = attempt + 1
            plan = state["plans"].get(topic) or state["plans"].get("*") or {}
            state["inflight"] += 1
            state["max_inflight"] = max(state["max_inflight"], state["inflight"])
        steps = plan.get("steps") or [{"status": 200}]
        step = steps[min(attempt, len(steps) - 1)]
        status = step.get("status", 200)
        if 200 <= status < 300 and random.random() < plan.get("random_fail", 0):
            status = 500
        record = {
            "id": msg_id, "topic": topic, "key": self.headers.get("Outbox-Key"),
            "path": self.path, "method": self.command, "headers": headers,
            "body_b64": base64.b64encode(body).decode(), "attempt": attempt,
            "status": status, "start": start,
            "conn": "%s:%d" % self.client_address,
        }
        try:
            if step.get("delay_ms"):
                time.sleep(step["delay_ms"] / 1000.0)
            self.answer(status, step.get("body", ""), step.get("headers"))
        except OSError as e:
            record["error"] = str(e)
            self.close_connection = True
        finally:
            record["end"] = time.time()
            with lock:
                state["inflight"] -= 1
                state["records"].append(record)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def exit_with_parent():
    """Exit when the test that started us is gone, even if it died."""
    parent = os.getppid()
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


def main():
    threading.Thread(target=exit_with_parent, daemon=True).start()
    port = int(sys.argv[1])
    server = Server(("127.0.0.1", port), Handler)
    control_port = server.server_address[1]
    if len(sys.argv) > 4:
        # HTTPS for webhooks; the control endpoints stay on plain HTTP, on
        # a second port, for clients without TLS support.
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[3], sys.argv[4])
        server.socket = context.wrap_socket(server.socket, server_side=True)
        control = Server(("127.0.0.1", 0), Handler)
        control_port = control.server_address[1]
        threading.Thread(target=control.serve_forever, daemon=True).start()
    with open(sys.argv[2] + ".tmp", "w") as f:
        f.write("%d %d" % (server.server_address[1], control_port))
    os.rename(sys.argv[2] + ".tmp", sys.argv[2])
    server.serve_forever()


if __name__ == "__main__":
    main()
