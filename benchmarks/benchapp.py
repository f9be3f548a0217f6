"""The Celery app the benchmark runs, in both SDKs' virtualenvs (this project's and the official one).

Configured from the environment (``benchmarks/run.py`` sets it for every worker and publisher):

* ``BENCH_BROKER``   broker URL (also used as the result backend: the official SDK's ``.delay()``
  reads ``result.info`` and fails with Celery's ``DisabledBackend``; results are ignored anyway)
* ``BENCH_QUEUE``    the queue ``.delay()`` publishes to and the worker consumes
* ``BENCH_MODE``     ``untracked`` (plain ``celery.Task``) or ``tracked`` (``taskbadger.celery.Task``)
* ``BENCH_API_URL``, ``BENCH_API_KEY``  the stand-in Task Badger API (tracked mode)
* ``BENCH_TIMEOUT``  optional API timeout in seconds, ``"1,1"`` = (connect, read); SDK default if unset
* ``BENCH_READY_FILE``  written with the worker's pid once it is ready
* ``BENCH_VARIANT``  tracked workers only: part of our work cut out or moved (``variants.py``)
* ``BENCH_NO_RESULT_BACKEND``  set: no result backend; ``BENCH_KEEP_RESULTS`` set: tasks keep their results
  (with both, run.py measures what ours' publish-time result hint costs a task that keeps results)

Each task RPUSHes ``time.time()`` to the Redis list named by its first argument, the same constant
cost in every mode, so throughput is measured from the tasks themselves without a result backend.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time
from typing import Any

import celery
import redis
from celery import Celery
from celery.signals import worker_ready

MODE = os.environ.get("BENCH_MODE", "untracked")
BROKER = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/9")
SDK = "none"

app = Celery("benchapp")
app.conf.update(
    broker_url=BROKER,
    result_backend=None if os.environ.get("BENCH_NO_RESULT_BACKEND") else BROKER,
    task_ignore_result=not os.environ.get("BENCH_KEEP_RESULTS"),
    task_default_queue=os.environ.get("BENCH_QUEUE", "bench"),
    task_create_missing_queues=True,
    task_always_eager=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

Base: Any = celery.Task
if MODE == "tracked":
    import taskbadger
    import taskbadger.celery

    Base = taskbadger.celery.Task
    raw_timeout = os.environ.get("BENCH_TIMEOUT")
    if hasattr(taskbadger, "delivery"):  # this project
        SDK = "ours"
        timeout: Any = None
        if raw_timeout:
            parts = [float(p) for p in raw_timeout.split(",")]
            timeout = (parts[0], parts[1]) if len(parts) == 2 else parts[0]
        taskbadger.init(host=os.environ["BENCH_API_URL"], token=os.environ["BENCH_API_KEY"], timeout=timeout)
        if os.environ.get("BENCH_VARIANT") and "worker" in sys.argv:  # benchmarks/locate.py: see variants.py
            import variants

            variants.apply(os.environ["BENCH_VARIANT"])
    else:  # the official SDK: its init() takes no host
        import taskbadger.sdk

        SDK = "official"
        taskbadger.sdk._init(host=os.environ["BENCH_API_URL"], token=os.environ["BENCH_API_KEY"],
                             timeout=float(raw_timeout.split(",")[-1]) if raw_timeout else None)

_redis: redis.Redis | None = None
_redis_pid = 0


def _results() -> redis.Redis:
    global _redis, _redis_pid
    if _redis is None or _redis_pid != os.getpid():
        _redis, _redis_pid = redis.Redis.from_url(BROKER), os.getpid()
    return _redis


@app.task(base=Base, name="bench.noop")
def noop(key: str) -> None:
    _results().rpush(key, repr(time.time()))


@app.task(base=Base, name="bench.sleep")
def sleep(key: str, seconds: float) -> None:
    time.sleep(seconds)
    _results().rpush(key, repr(time.time()))


@worker_ready.connect
def _ready(**_: Any) -> None:
    path = os.environ.get("BENCH_READY_FILE")
    if path:
        pathlib.Path(path).write_text(str(os.getpid()))
