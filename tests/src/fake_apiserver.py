"""A stand-in for the Kubernetes API server, for limiter's Kubernetes-mode tests.

It speaks the list and watch JSON of the API for Pods and Services (core/v1),
ConnectionLimitPolicies (limiter.dev/v1alpha1) and Gateways (gateway.networking.k8s.io/v1),
cluster-wide, with `labelSelector` as `KEY` (the label exists) or `KEY=VALUE`: a list answers with the objects and the current
resourceVersion; a watch (`?watch=true&resourceVersion=RV`) streams every change after RV as
one JSON event per line (ADDED, MODIFIED, DELETED), then waits for more. A watch from a
resourceVersion older than the last compaction gets an ERROR event with a 410 Gone Status, as
the real server answers once its history is gone, which forces the client to list again.
Events (events.k8s.io/v1) posted by the agent are kept.

The test drives it through stdin, one JSON command per line, each answered by one line on
stdout starting with "ok":
  {"apply": KIND, "object": {...}}      add or replace (ADDED / MODIFIED); KIND is one of
                                        pods, policies, gateways, services
  {"delete": KIND, "namespace": N, "name": M}
  {"compact": true}        forget the history: the next watch resumption gets 410 Gone
  {"drop_watches": true}   close every open watch connection (a dropped watch)
  {"events": true}         print the Events received, as one JSON list
  {"requests": true}       print the paths of the requests served so far, as one JSON list
"""

import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

LOCK = threading.Condition()
STATE = {
    "rv": 1,
    "compacted": 1,
    "generation": 0,  # bumped to drop every open watch
    "objects": {"pods": {}, "policies": {}, "gateways": {}, "services": {}},
    "history": {"pods": [], "policies": [], "gateways": [], "services": []},
    "events": [],
    "requests": [],
}

PATHS = {
    "/api/v1/pods": ("pods", "PodList", "v1"),
    "/apis/limiter.dev/v1alpha1/connectionlimitpolicies": (
        "policies",
        "ConnectionLimitPolicyList",
        "limiter.dev/v1alpha1",
    ),
    "/apis/gateway.networking.k8s.io/v1/gateways": (
        "gateways",
        "GatewayList",
        "gateway.networking.k8s.io/v1",
    ),
    "/api/v1/services": ("services", "ServiceList", "v1"),
}


def selected(obj, selector):
    """Whether obj's labels match a labelSelector of `KEY` or `KEY=VALUE` terms, comma-separated."""
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if key not in labels or (value and labels[key] != value):
            return False
    return True


def next_rv():
    STATE["rv"] += 1
    return str(STATE["rv"])


def record(kind, event_type, obj):
    rv = next_rv()
    obj = json.loads(json.dumps(obj))
    obj["metadata"]["resourceVersion"] = rv
    STATE["history"][kind].append((int(rv), event_type, obj))
    LOCK.notify_all()
    return obj


def apply(kind, obj):
    meta = obj.setdefault("metadata", {})
    key = (meta.get("namespace", ""), meta["name"])
    existing = STATE["objects"][kind].get(key)
    meta.setdefault("uid", existing["metadata"]["uid"] if existing else str(uuid.uuid4()))
    meta.setdefault(
        "creationTimestamp",
        existing["metadata"]["creationTimestamp"]
        if existing
        else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    stored = record(kind, "MODIFIED" if existing else "ADDED", obj)
    STATE["objects"][kind][key] = stored


def delete(kind, namespace, name):
    obj = STATE["objects"][kind].pop((namespace, name), None)
    if obj is not None:
        record(kind, "DELETED", obj)


def status(code, reason, message):
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        with LOCK:
            STATE["requests"].append(self.path)
        if url.path not in PATHS:
            return self.send_json(404, status(404, "NotFound", f"{url.path} not found"))
        kind, list_kind, api_version = PATHS[url.path]
        selector = query.get("labelSelector", [""])[0]
        if query.get("watch", ["false"])[0] in ("true", "1"):
            since = int(query.get("resourceVersion", ["0"])[0] or 0)
            return self.watch(kind, since, selector)
        with LOCK:
            items = [o for o in STATE["objects"][kind].values() if selected(o, selector)]
            rv = str(STATE["rv"])
        self.send_json(
            200,
            {
                "kind": list_kind,
                "apiVersion": api_version,
                "metadata": {"resourceVersion": rv},
                "items": items,
            },
        )

    def watch(self, kind, since, selector):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(obj):
            data = (json.dumps(obj) + "\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        try:
            with LOCK:
                generation = STATE["generation"]
                if since < STATE["compacted"]:
                    gone = status(410, "Expired", f"too old resource version: {since}")
                    pending = [{"type": "ERROR", "object": gone}]
                    last = None
                else:
                    pending, last = [], since
            deadline = time.time() + 300
            while True:
                for event in pending:
                    chunk(event)
                if last is None:
                    break
                with LOCK:
                    while True:
                        if STATE["generation"] != generation or time.time() > deadline:
                            pending = None
                            break
                        newer = [(rv, t, o) for (rv, t, o) in STATE["history"][kind] if rv > last]
                        if newer:
                            last = max(rv for (rv, _, _) in newer)
                        pending = [
                            {"type": t, "object": o} for (_, t, o) in newer if selected(o, selector)
                        ]
                        if pending:
                            break
                        LOCK.wait(0.5)
                if pending is None:
                    break
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        with LOCK:
            STATE["requests"].append("POST " + self.path)
            if "/events" in self.path:
                body.setdefault("metadata", {}).setdefault("name", str(uuid.uuid4()))
                STATE["events"].append(body)
                return self.send_json(201, body)
        self.send_json(404, status(404, "NotFound", f"{self.path} not found"))

    def do_PATCH(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        with LOCK:
            STATE["requests"].append("PATCH " + self.path)
            if "/events" in self.path:
                return self.send_json(200, body)
        self.send_json(404, status(404, "NotFound", f"{self.path} not found"))


def commands():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        command = json.loads(line)
        with LOCK:
            if "apply" in command:
                apply(command["apply"], command["object"])
            elif "delete" in command:
                delete(command["delete"], command["namespace"], command["name"])
            elif "compact" in command:
                STATE["compacted"] = STATE["rv"] + 1
                STATE["generation"] += 1
                LOCK.notify_all()
            elif "drop_watches" in command:
                STATE["generation"] += 1
                LOCK.notify_all()
            elif "events" in command:
                print("ok " + json.dumps(STATE["events"]), flush=True)
                continue
            elif "requests" in command:
                print("ok " + json.dumps(STATE["requests"]), flush=True)
                continue
        print("ok", flush=True)
    # stdin closed: the test is over.
    sys.exit(0)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"listening {server.server_address[1]}", flush=True)
    commands()


if __name__ == "__main__":
    main()
