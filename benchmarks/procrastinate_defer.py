"""Cost of ``defer()`` with Procrastinate tracking: the time of one ``task.defer()`` on an app tracked by
``ProcrastinateSystemIntegration`` (the create at publish against the stand-in API on loopback, the insert,
the queued ``external_id``) divided by the same ``defer()`` on an app without the integration. One run;
a fresh PostgreSQL database on 127.0.0.1:5432.

    python benchmarks/procrastinate_defer.py [--count 500] [--warmup 30] [--latency-ms 0]

Prints the median and mean of each, and the ratios, as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import procrastinate  # noqa: E402

import taskbadger  # noqa: E402
from taskbadger.delivery import sender  # noqa: E402
from taskbadger.systems.procrastinate import ProcrastinateSystemIntegration  # noqa: E402
from taskbadger.testing.server import TaskBadgerServer  # noqa: E402
from tests.services import postgres_database, postgres_url  # noqa: E402


def make_app(dsn: str) -> procrastinate.App:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="bench.noop", queue="bench")
    def noop(i: int) -> None:
        return None

    return app


def timed_defers(app: procrastinate.App, count: int, warmup: int) -> list[float]:
    task = app.tasks["bench.noop"]
    for i in range(warmup):
        task.defer(i=i)
    durations = []
    clock = time.perf_counter
    for i in range(count):
        start = clock()
        task.defer(i=i)
        durations.append(clock() - start)
    return durations


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the stand-in API's answer latency")
    args = parser.parse_args()
    server = TaskBadgerServer().start()
    server.set_latency(args.latency_ms / 1000)
    try:
        with postgres_database("tb_bench_pro") as name:
            dsn = postgres_url(name)
            plain, tracked = make_app(dsn), make_app(dsn)
            with plain.open():
                plain.schema_manager.apply_schema()
                untracked = timed_defers(plain, args.count, args.warmup)
            taskbadger.init(token=server.api_key, host=server.url, systems=[ProcrastinateSystemIntegration(tracked)])
            with tracked.open():
                requests_before = len(server.requests)
                with_tracking = timed_defers(tracked, args.count, args.warmup)
                sender.flush(10)
                creates = sum(r.method == "POST" for r in server.requests[requests_before:])
    finally:
        server.stop()
    med_u, med_t = statistics.median(untracked), statistics.median(with_tracking)
    mean_u, mean_t = statistics.fmean(untracked), statistics.fmean(with_tracking)
    print(
        json.dumps(
            {
                "procrastinate": procrastinate.__version__ if hasattr(procrastinate, "__version__") else None,
                "count": args.count,
                "latency_ms": args.latency_ms,
                "untracked_ms": {"median": round(med_u * 1000, 3), "mean": round(mean_u * 1000, 3)},
                "tracked_ms": {"median": round(med_t * 1000, 3), "mean": round(mean_t * 1000, 3)},
                "ratio_median": round(med_t / med_u, 2),
                "ratio_mean": round(mean_t / mean_u, 2),
                "creates": creates,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
