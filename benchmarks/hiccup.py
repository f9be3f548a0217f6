"""How long tracking stays off after a short API hiccup, at publish.

    python benchmarks/hiccup.py [--fault-seconds 2] [--run-seconds 8] [--interval 0.01] [--sdk-defaults]
                                [--faults hang,slow headers]

For each fault (429 with Retry-After, 503, dropped connections, refused connections, a hang, headers
trickled one line a second) the stand-in API misbehaves for ``--fault-seconds`` on creates, then
recovers; meanwhile a publisher calls ``.delay()`` on a tracked task every ``--interval`` seconds (the
messages go to an in-memory broker: only the publish side is measured). Prints, per fault: tasks
published, tasks untracked while the API failed, tasks untracked after it recovered, how long after
recovery the first task was tracked again, how many publishes waited (took more than 50 ms) and the
longest one.
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


def run(server: TaskBadgerServer, fault: str, fault_seconds: float, run_seconds: float, interval: float,
        sdk_defaults: bool) -> str:
    server.reset()
    publish_breaker().reset()
    if sdk_defaults:  # the timeouts a user gets without configuring any
        taskbadger.init(token=server.api_key, host=server.url)
    else:
        taskbadger.init(token=server.api_key, host=server.url, timeout=(1, 1))
    producer = kombu.Producer(kombu.Connection("memory://"))
    noop.apply_async(producer=producer)  # warm up: connection and Celery's first-publish set-up
    if fault == "429":
        server.fail(429, retry_after=2, method="POST")
    elif fault == "503":
        server.fail(503, method="POST")
    elif fault == "drop":
        server.drop(method="POST")
    elif fault == "hang":
        server.hang(method="POST")
    elif fault == "slow headers":
        server.misbehave("slow_headers", method="POST", seconds=1.0)
    else:
        server.refuse()
    recovered_at = time.monotonic() + fault_seconds
    threading.Timer(fault_seconds, server.clear_faults).start()
    rows = []
    end = time.monotonic() + run_seconds
    waits = []
    while time.monotonic() < end:
        started = time.monotonic()
        result = noop.apply_async(producer=producer)
        waits.append(time.monotonic() - started)
        rows.append((time.monotonic() - recovered_at, result.taskbadger_task_id is not None))
        time.sleep(interval)
    during = sum(1 for after, tracked in rows if after <= 0 and not tracked)
    after = sum(1 for t, tracked in rows if t > 0 and not tracked)
    first = next((t for t, tracked in rows if t > 0 and tracked), None)
    back = f"{first:.2f} s" if first is not None else "never (in this run)"
    waited = sum(1 for w in waits if w > 0.05)
    return (f"| {fault} | {len(rows)} | {during} | {after} | {back} | {waited} | {max(waits) * 1000:.0f} ms |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fault-seconds", type=float, default=2.0)
    parser.add_argument("--run-seconds", type=float, default=8.0)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--sdk-defaults", action="store_true", help="the SDK's default timeouts, not (1, 1)")
    parser.add_argument("--faults", default="429,503,drop,refused,hang,slow headers",
                        help="comma-separated: 429, 503, drop, refused, hang, slow headers")
    args = parser.parse_args()
    print(f"API fails creates for {args.fault_seconds:g} s, then recovers; a .delay() every "
          f"{args.interval * 1000:g} ms for {args.run_seconds:g} s.\n")
    print("| fault | published | untracked while failing | untracked after recovery | tracked again after | "
          "publishes that waited | longest publish |")
    print("|---|---|---|---|---|---|---|")
    with TaskBadgerServer() as server:
        for fault in args.faults.split(","):
            print(run(server, fault.strip(), args.fault_seconds, args.run_seconds, args.interval, args.sdk_defaults),
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
