"""Pool children recycled after every task (``--max-tasks-per-child=1``) while the API is up, down, or down
and then back: how long the tasks take, and whether every final state reaches Task Badger.

    python benchmarks/recycle.py [--tasks 40] [--broker redis|filesystem]

A real prefork worker (2 children) runs no-op tracked tasks; each child ends after one task, so each one
must hand over its final update: to the API while it answers, to the local spool while it does not. With
the API down the tasks were created while it was up (``pending``), then the API refuses connections.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--broker", default="redis", choices=["redis", "filesystem"])
    args = parser.parse_args()

    from tests.workers import broker_url

    os.environ["TB_BROKER_URL"] = broker_url(args.broker)
    if args.broker == "filesystem":
        folder = tempfile.mkdtemp(prefix="tbbroker-")
        os.makedirs(folder + "-control")
        os.environ["TB_BROKER_DIR"] = folder
    os.environ.setdefault("TB_RESULTS_DIR", tempfile.mkdtemp(prefix="tbresults-"))

    import taskbadger
    from taskbadger.testing import TaskBadgerServer
    from tests.celery_project import app as tasks
    from tests.workers import Worker

    print(f"{args.tasks} no-op tracked tasks, prefork 2 with --max-tasks-per-child=1, broker {args.broker}\n")
    print("| API | tasks done in | final states in Task Badger |")
    print("|---|---|---|")
    with TaskBadgerServer() as server:
        for mode in ("up", "down", "down, then up"):
            server.reset()
            spool = tempfile.mkdtemp(prefix="tbspool-")
            taskbadger.init(token=server.api_key, host=server.url, spool_dir=spool)
            worker = Worker(server, pool="prefork", concurrency=2, extra_args=["--max-tasks-per-child=1"],
                            extra_env={"TASKBADGER_SPOOL_DIR": spool}).start()
            try:
                results = [worker.send(tasks.add, i, i) for i in range(args.tasks)]
                ids = {r.taskbadger_task_id for r in results}
                if mode != "up":
                    server.refuse()
                started = time.monotonic()
                server.wait_for(lambda w=worker: w.log().count("succeeded in") >= args.tasks, timeout=600)
                took = time.monotonic() - started
                if mode != "down":
                    server.accept()
                    server.wait_for(lambda ids=ids: sum(1 for t in server.tasks.values() if t["id"] in ids
                                                        and t["status"] == "success") == args.tasks, timeout=120)
                final = sum(1 for t in server.tasks.values() if t["id"] in ids and t["status"] == "success")
                print(f"| {mode} | {took:.1f} s | {final} of {args.tasks} |", flush=True)
            finally:
                server.accept()
                worker.stop(60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
