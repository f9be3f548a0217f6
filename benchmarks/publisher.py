"""Publish benchmark tasks and time each ``.delay()``; run by ``benchmarks/run.py`` in the venv of the
SDK being measured (configured by ``benchapp`` from the environment).

    python publisher.py '{"count": 300, "warmup": 20, "key": "results:x", "task": "noop", "repeats": 3}'

Prints one JSON object: ``durations`` (seconds, one list per repeat, warm-up calls excluded),
``warmup_durations``, ``celery_ids`` (when ``ids`` is true), ``failed`` (calls that raised), ``sdk`` and ``mode``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import benchapp


def main(argv: list[str]) -> int:
    spec: dict[str, Any] = json.loads(argv[1]) if len(argv) > 1 else {}
    count = int(spec.get("count", 100))
    warmup = int(spec.get("warmup", 0))
    repeats = int(spec.get("repeats", 1))
    key = str(spec.get("key", "bench:results"))
    want_ids = bool(spec.get("ids", False))
    logging.basicConfig(level=logging.ERROR)  # the SDKs' warnings under faults are expected noise here
    task = benchapp.sleep if spec.get("task") == "sleep" else benchapp.noop
    args: tuple[Any, ...] = (key, float(spec.get("seconds", 0.3))) if task is benchapp.sleep else (key,)

    # One untimed publish first, in every mode alike: a process's first publish pays ~17 ms of Celery's
    # own set-up (transport import, broker connection), which is no SDK's overhead. The task name is
    # registered nowhere, so no SDK tracks it; it goes to a queue of its own that nothing consumes
    # (``run.py`` deletes it with the run's other keys).
    benchapp.app.send_task("bench.prime", queue=f"{key}:prime")

    ids: list[str] = []
    failed = 0
    clock = time.perf_counter

    def one(batch: list[float]) -> None:
        nonlocal failed
        start = clock()
        try:
            result = task.delay(*args)
        except Exception as err:  # counted: a publish that fails is what the benchmark looks for
            failed += 1
            print(f"publish failed: {err!r}", file=sys.stderr)
            result = None
        batch.append(clock() - start)
        if want_ids and result is not None:
            ids.append(result.id)

    warmup_durations: list[float] = []
    for _ in range(warmup):
        one(warmup_durations)
    durations: list[list[float]] = []
    for _ in range(repeats):
        batch: list[float] = []
        for _ in range(count):
            one(batch)
        durations.append(batch)
    json.dump({"sdk": benchapp.SDK, "mode": benchapp.MODE, "durations": durations,
               "warmup_durations": warmup_durations, "celery_ids": ids, "failed": failed}, sys.stdout)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
