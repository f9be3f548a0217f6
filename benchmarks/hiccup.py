"""How long tracking stays off after a short API hiccup, at publish.

    python benchmarks/hiccup.py [--fault-seconds 2] [--run-seconds 8] [--interval 0.01]

For each fault (429 with Retry-After, 503, dropped connections, refused connections) the stand-in API
misbehaves for ``--fault-seconds`` on creates, then recovers; meanwhile a publisher calls ``.delay()``
on a tracked task every ``--interval`` seconds (the messages go to an in-memory broker: only the
publish side is measured). Prints, per fault: tasks published, tasks untracked while the API failed,
tasks untracked after it recovered, and how long after recovery the first task was tracked again.
"""

from __future__ import annotations

import argparse
import threading
import time

import kombu
from celery import Celery

import taskbadger
from taskbadger.celery import Task
from taskbadger.delivery.breaker import publish_breaker
from taskbadger.testing import TaskBadgerServer

app = Celery("hiccup", broker="memory://", set_as_current=True)


@app.task(base=Task, name="hiccup.noop")
def noop() -> None:
    return None


def run(server: TaskBadgerServer, fault: str, fault_seconds: float, run_seconds: float, interval: float) -> str:
    server.reset()
    publish_breaker().reset()
    taskbadger.init(token=server.api_key, host=server.url, timeout=(1, 1))
    producer = kombu.Producer(kombu.Connection("memory://"))
    noop.apply_async(producer=producer)  # warm up: connection and Celery's first-publish set-up
    if fault == "429":
        server.fail(429, retry_after=2, method="POST")
    elif fault == "503":
        server.fail(503, method="POST")
    elif fault == "drop":
        server.drop(method="POST")
    else:
        server.refuse()
    recovered_at = time.monotonic() + fault_seconds
    threading.Timer(fault_seconds, server.clear_faults).start()
    rows = []
    end = time.monotonic() + run_seconds
    while time.monotonic() < end:
        result = noop.apply_async(producer=producer)
        rows.append((time.monotonic() - recovered_at, result.taskbadger_task_id is not None))
        time.sleep(interval)
    during = sum(1 for after, tracked in rows if after <= 0 and not tracked)
    after = sum(1 for t, tracked in rows if t > 0 and not tracked)
    first = next((t for t, tracked in rows if t > 0 and tracked), None)
    back = f"{first:.2f} s" if first is not None else "never (in this run)"
    return (f"| {fault} | {len(rows)} | {during} | {after} | {back} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fault-seconds", type=float, default=2.0)
    parser.add_argument("--run-seconds", type=float, default=8.0)
    parser.add_argument("--interval", type=float, default=0.01)
    args = parser.parse_args()
    print(f"API fails creates for {args.fault_seconds:g} s, then recovers; a .delay() every "
          f"{args.interval * 1000:g} ms for {args.run_seconds:g} s.\n")
    print("| fault | published | untracked while failing | untracked after recovery | tracked again after |")
    print("|---|---|---|---|---|")
    with TaskBadgerServer() as server:
        for fault in ("429", "503", "drop", "refused"):
            print(run(server, fault, args.fault_seconds, args.run_seconds, args.interval), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
