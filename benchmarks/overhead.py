"""Our CPU per tracked Celery task in a worker, without Celery's own: the receivers and the senders.

    python benchmarks/overhead.py [--tasks 20000] [--latency 0.010] [--profile] [--fork-check getpid]

Drives the Celery signal receivers the way a solo worker's tracer does for a tracked no-op task
(``task_received``, ``task_prerun``, ``task_postrun`` with a request carrying the headers the publisher
wrote), with the stand-in API in its own process. It measures CPU time per task, not wall time, so the
figure does not depend on what else the machine runs:

* the task's thread: ``time.thread_time`` around the receivers;
* our threads: the senders' CPU clocks (``pthread_getcpuclockid``), after every final update was delivered.

``--profile`` also prints where the receivers' time goes (cProfile, the task's thread only).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import cProfile
import os
import pstats
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def start_api(latency: float) -> tuple[subprocess.Popen, str, str]:
    api = subprocess.Popen([sys.executable, "-m", "taskbadger.testing", "--latency", str(latency)],
                           stdout=subprocess.PIPE, text=True)
    url = key = ""
    assert api.stdout is not None
    for line in api.stdout:
        if line.startswith("export "):
            parts = dict(item.split("=", 1) for item in line.split()[1:])
            url, key = parts["TASKBADGER_HOST"], parts["TASKBADGER_API_KEY"]
            break
    return api, url, key


def our_threads_cpu() -> float:
    total = 0.0
    for thread in threading.enumerate():
        if thread.name.startswith("taskbadger-") and thread.ident is not None:
            try:
                total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
            except (OSError, AttributeError):
                continue
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--latency", type=float, default=0.010)
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="tasks per second, as a worker draining no-op tasks runs them (0: as fast as possible)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--fork-check", choices=("page", "getpid"), default="page",
                        help="how per-process state notices a fork: the wiped page (the default where Linux has it) "
                             "or a getpid system call per use (as before 1919ce9, and where there is no such page)")
    args = parser.parse_args()
    if args.fork_check == "getpid":
        from taskbadger import _runtime

        _runtime._marker = None

    api, url, key = start_api(args.latency)
    try:
        from celery import Celery

        import taskbadger
        from taskbadger.celery import Task
        from taskbadger.celery import signals as receivers
        from taskbadger.delivery import sender

        app = Celery("overhead", broker="memory://", set_as_current=True)

        @app.task(base=Task, name="overhead.noop")
        def noop() -> None:
            return None

        taskbadger.init(token=key, host=url)
        # the header a publisher writes for each tracked task: its tasks are created for real, up front
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            created = list(pool.map(lambda i: taskbadger.create_task("overhead.noop", external_id=f"c-{i}"),
                                    range(args.tasks + 200)))

        def one_task(i: int) -> None:
            celery_id = f"c-{i}"
            task = created[i]
            header = {"task": {"id": task.id, "name": task.name, "status": "pending", "tags": {},
                               "external_id": celery_id, "public_url": task.public_url},
                      "heartbeat_interval": None, "stale_timeout": None}
            headers = {"taskbadger_task": header, "taskbadger_task_id": task.id}
            request = {"id": celery_id, "task": "overhead.noop", "args": (), "kwargs": {}, "retries": 0,
                       "is_eager": False, "delivery_info": {"routing_key": "celery"}, "headers": headers, **headers}
            noop.push_request(**request)
            try:
                receivers.on_prerun(sender=noop, task_id=celery_id, task=noop, args=(), kwargs={})
                receivers.on_postrun(sender=noop, task_id=celery_id, task=noop, state="SUCCESS", retval=None)
            finally:
                noop.pop_request()

        for i in range(200):  # warm up: connections, caches, the sender's thread
            one_task(i)
        assert sender.flush(30)
        profile = cProfile.Profile() if args.profile else None
        threads_before = our_threads_cpu()
        started = time.thread_time()
        if profile:
            profile.enable()
        spent = 0.0
        pace = 1.0 / args.rate if args.rate else 0.0
        next_at = time.monotonic()
        for i in range(200, 200 + args.tasks):
            if pace:  # the tasks' own time, not measured: sleeping, as a worker waits on its broker
                next_at += pace
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            before = time.thread_time()
            one_task(i)
            spent += time.thread_time() - before
        if profile:
            profile.disable()
        receivers_cpu = spent if pace else time.thread_time() - started
        assert sender.flush(120), "the final updates were not delivered"
        threads_cpu = our_threads_cpu() - threads_before
        per = 1e6 / args.tasks
        stats = taskbadger.stats()
        print(f"{args.tasks} tracked tasks, API latency {args.latency * 1000:g} ms, sent {stats['sent']}, "
              f"merged {stats['merged']}")
        print(f"receivers (the task's thread): {receivers_cpu * per:.1f} µs per task")
        print(f"senders (our threads):         {threads_cpu * per:.1f} µs per task")
        print(f"ours in all:                   {(receivers_cpu + threads_cpu) * per:.1f} µs per task")
        if profile:
            pstats.Stats(profile).sort_stats("cumulative").print_stats("taskbadger", 45)
    finally:
        api.terminate()
        api.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
