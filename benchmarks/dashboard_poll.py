"""What the stand-in API's dashboard costs with a full store, and what it does to API requests.

    python benchmarks/dashboard_poll.py [--tasks 80000] [--creates 200]

The stand-in runs in its own process, filled with ``--tasks`` tasks (one in ten a child of a recent
task; every status; through the store's own ``create``, as an API create would). This process then
measures, over HTTP on loopback, with one kept-alive connection per role:

- one dashboard poll (``/_dashboard/tasks``, unfiltered and filtered) and one task-page poll;
- the latency of a create and of a PATCH with an empty store and with the full store;
- the latency of creates due every 20 ms while a dashboard page polls (one poll, then 0.5 s, as the
  page does), counted from when each was due: the stand-in serves every connection on one event-loop
  thread, so a create waits behind a poll.

Prints a table of milliseconds (median, p95, max).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

STATUSES = ("pending", "processing", "success", "error", "cancelled", "stale")
NAMES = ("billing.charge_card", "reports.nightly", "search.index_shard", "mail.send_welcome", "sync.inventory")


def serve(tasks: int) -> None:
    """The stand-in with ``tasks`` tasks: prints its URL, key and a task id, then serves until stdin closes."""
    import taskbadger.testing
    from taskbadger.testing import TaskBadgerServer

    server = TaskBadgerServer().start()
    store = server.app.store
    parents: list[str] = []
    some_id = ""
    for i in range(tasks):
        body: dict = {"name": f"{NAMES[i % len(NAMES)]} {i}", "status": STATUSES[i % len(STATUSES)],
                      "value": i % 101, "tags": {"env": "bench"}}
        if i % 10 == 9 and parents:
            body["parent"] = parents[-1]
        (status, _payload, _headers), task_id = store.create(body, None)
        assert status == 201 and task_id
        if "parent" not in body:
            parents.append(task_id)
        some_id = task_id
    print(server.url, server.api_key, some_id or "-", taskbadger.testing.__file__, flush=True)
    sys.stdin.read()
    server.stop()


class Client:
    def __init__(self, url: str, key: str) -> None:
        host, port = url.split("//")[1].rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        org, project, secret = base64.b64decode(key).decode().split("/")
        self.api = f"/api/{org}/{project}/tasks/"
        self.auth = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[float, int, bytes]:
        start = time.perf_counter()
        data = None if body is None else json.dumps(body)
        self.conn.request(method, path, body=data, headers=self.auth)
        response = self.conn.getresponse()
        payload = response.read()
        return (time.perf_counter() - start) * 1000, response.status, payload

    def create(self, name: str, **fields: object) -> tuple[float, str]:
        ms, status, payload = self.call("POST", self.api, {"name": name, **fields})
        assert status == 201, (status, payload)
        return ms, json.loads(payload)["id"]

    def patch(self, task_id: str, **fields: object) -> float:
        ms, status, payload = self.call("PATCH", f"{self.api}{task_id}/", fields)
        assert status == 200, (status, payload)
        return ms


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"{statistics.median(ordered):9.2f} {p95:9.2f} {ordered[-1]:9.2f}"


def start_server(tasks: int) -> tuple[subprocess.Popen, str, str, str]:
    process = subprocess.Popen([sys.executable, __file__, "--serve", str(tasks)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    url, key, some_id, module = process.stdout.readline().split()
    print(f"# stand-in with {tasks} tasks at {url} ({module})", flush=True)
    return process, url, key, some_id


def measure(rows: list[tuple[str, str]], label: str, repeat: int, call: Callable[[int], float]) -> None:
    call(-1)  # warm: connection and first use
    samples = [call(i) for i in range(repeat)]
    rows.append((label, summary(samples)))
    print(f"{label:<58} {rows[-1][1]}", flush=True)


def run(tasks: int, creates: int, rows: list[tuple[str, str]]) -> None:
    """Every measurement against one stand-in holding ``tasks`` tasks."""
    process, url, key, some_id = start_server(tasks)
    try:
        client = Client(url, key)
        _, task_id = client.create("bench patch target")
        parent_ids = [client.create(f"bench parent {i}")[1] for i in range(creates + 1)]
        measure(rows, f"create, {tasks} tasks, no poll", creates, lambda i: client.create("bench")[0])
        measure(rows, f"PATCH value, {tasks} tasks, no poll", creates, lambda i: client.patch(task_id, value=i % 100))
        measure(rows, f"PATCH parent onto a new task, {tasks} tasks", creates,
                lambda i: client.patch(client.create("bench child")[1], parent=parent_ids[i + 1]))
        if not tasks:
            return
        for query in ("", "?status=error", "?name=no+such+task", "?status=stale&name=inventory"):
            measure(rows, f"dashboard poll /_dashboard/tasks{query}", 10,
                    lambda i, q=query: client.call("GET", f"/_dashboard/tasks{q}")[0])
        measure(rows, "task page poll /_dashboard/tasks/<id>", 10,
                lambda i: client.call("GET", f"/_dashboard/tasks/{some_id}")[0])
        stop = threading.Event()
        polls: list[float] = []

        def page() -> None:
            poller = Client(url, key)
            while not stop.is_set():
                polls.append(poller.call("GET", "/_dashboard/tasks")[0])
                stop.wait(0.5)

        thread = threading.Thread(target=page, daemon=True)
        thread.start()
        try:
            # Open loop: a create is due every 20 ms; its latency counts from when it was due, so
            # the creates that queue behind one slow poll all count (not only the first).
            client.create("bench")
            first = time.perf_counter() + 0.02
            waits = []
            for i in range(creates):
                due = first + i * 0.02
                time.sleep(max(0.0, due - time.perf_counter()))
                client.create("bench")
                waits.append((time.perf_counter() - due) * 1000)
            label = f"create every 20 ms, {tasks} tasks, while a page polls"
            rows.append((label, summary(waits)))
            print(f"{label:<58} {rows[-1][1]}", flush=True)
        finally:
            stop.set()
            thread.join()
        print(f"# polls meanwhile: {len(polls)}, median {statistics.median(polls):.1f} ms")
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=80_000)
    parser.add_argument("--creates", type=int, default=200)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return 0
    rows: list[tuple[str, str]] = []
    print(f"{'ms':<58} {'median':>9} {'p95':>9} {'max':>9}")
    for tasks in (0, args.tasks):
        run(tasks, args.creates, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
