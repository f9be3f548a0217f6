"""The Procrastinate app the integration tests run in real ``procrastinate worker`` processes.

The worker is configured from the environment the test sets: ``TB_PROCRASTINATE_DSN`` (its database),
``TASKBADGER_*`` (the stand-in API), ``TB_PRO_AUTO_TRACK``, ``TB_PRO_MONITORS`` (JSON: task name -> monitor
id), ``TB_PRO_EXCLUDES`` (JSON list). The test process uses the same app with its own connector
(``app.replace_connector``) and its own ``taskbadger.init``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import procrastinate

import taskbadger
from taskbadger.procrastinate import current_task, track
from taskbadger.systems.procrastinate import ProcrastinateSystemIntegration

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=os.environ.get("TB_PROCRASTINATE_DSN", "")))
blueprint = procrastinate.Blueprint()


@app.task(name="echo")
def echo(value: str) -> str:
    return value


@app.task(name="aecho")
async def aecho(value: str) -> str:
    await asyncio.sleep(0)
    return value


@app.task(name="boom")
def boom(message: str) -> None:
    raise ValueError(message)


@app.task(name="kwargs_seen")
def kwargs_seen(**kwargs: object) -> None:
    """Fails if it receives anything but ``value``: the task id kwarg must never reach the function."""
    if set(kwargs) != {"value"}:
        raise AssertionError(f"unexpected kwargs {sorted(kwargs)}")


def _fail_first(path: str, fail_times: int) -> str:
    count = int(open(path).read() or 0) if os.path.exists(path) else 0
    with open(path, "w") as f:
        f.write(str(count + 1))
    if count < fail_times:
        raise RuntimeError(f"attempt {count + 1} failed")
    return "ok"


@app.task(name="flaky_later", retry=procrastinate.RetryStrategy(max_attempts=2, wait=1))
def flaky_later(path: str, fail_times: int) -> str:
    """As ``flaky``, retried a second later: long enough for the ``pending`` between attempts to be sent
    on its own (an immediate retry merges it away with the next attempt's updates, which is right)."""
    return _fail_first(path, fail_times)


@app.task(name="flaky_progress", retry=procrastinate.RetryStrategy(max_attempts=1, wait=0))
def flaky_progress(path: str) -> str:
    """Reports 1 of 4 and fails on its first attempt; its retry succeeds, reporting nothing."""
    if not os.path.exists(path):  # the first attempt
        tb = current_task()
        assert tb is not None
        tb.update(value=1, value_max=4)
    return _fail_first(path, 1)


@app.task(name="flaky", retry=procrastinate.RetryStrategy(max_attempts=3, wait=0))
def flaky(path: str, fail_times: int) -> str:
    """Fails ``fail_times`` times (counted in the file at ``path``), then succeeds."""
    return _fail_first(path, fail_times)


@app.task(name="sync_abortable", pass_context=True)
def sync_abortable(context: procrastinate.JobContext, path: str) -> None:
    open(path, "w").close()  # started
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if context.should_abort():
            raise procrastinate.exceptions.JobAborted()
        time.sleep(0.05)


@app.task(name="async_abortable")
async def async_abortable(path: str) -> None:
    open(path, "w").close()  # started
    await asyncio.sleep(30)


@track(heartbeat_interval=0.2)
@app.task(name="slow")
async def slow(seconds: float) -> None:
    await asyncio.sleep(seconds)


@app.task(name="progress")
def progress(total: int) -> None:
    tb = current_task()
    assert tb is not None and tb is taskbadger.current_task()
    tb.update(value=total, value_max=total, data={"seen": "yes"})


@track(data={"origin": "deferred"})
@app.task(name="sync_progress")
def sync_progress(path: str) -> None:
    """``current_task()`` and a progress update, timed (the job carries only its task's id: neither needs the task's
    other fields), then a merge into the task's data; writes the times and the data ``tb`` shows to ``path``."""
    started = time.monotonic()
    tb = current_task()
    asked = time.monotonic() - started
    tb.update(value=1, value_max=2)
    progressed = time.monotonic() - started - asked
    tb.update(data={"seen": "sync"}, data_merge_strategy="default")
    with open(path, "w") as out:
        json.dump({"asked": asked, "progressed": progressed, "data": tb.data}, out)


@app.task(name="progress_loop")
def progress_loop(path: str, steps: int) -> None:
    """The docs' progress loop; writes how long the body took and what ``tb`` showed at its end to ``path``."""
    started = time.monotonic()
    tb = current_task()
    for i in range(1, steps + 1):
        tb.update(value=i, value_max=steps)
    with open(path, "w") as out:
        json.dump({"took": time.monotonic() - started, "shown": tb.value}, out)


async def _appears(path: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


@track(data={"origin": "deferred"})
@app.task(name="async_progress")
async def async_progress(path: str, after: str) -> None:
    """An async body, once ``loop_watch`` runs beside it: ``current_task()`` and a progress update that merges
    into the task's data, timed (neither may wait on the worker's event loop)."""
    await _appears(after)
    started = time.monotonic()
    tb = current_task()
    asked = time.monotonic() - started
    if tb is not None:
        tb.update(value=1, value_max=2, data={"seen": "async"}, data_merge_strategy="default")
    with open(path, "w") as out:
        json.dump({"asked": asked, "tracked": tb is not None, "took": time.monotonic() - started}, out)


@app.task(name="loop_watch")
async def loop_watch(started: str, until: str) -> float:
    """Runs on the worker's event loop until ``until`` exists; writes ``started`` first, then the longest the
    loop kept it waiting (in ``until`` + ".watch")."""
    open(started, "w").close()
    worst, deadline = 0.0, time.monotonic() + 30
    while not os.path.exists(until) and time.monotonic() < deadline:
        before = time.monotonic()
        await asyncio.sleep(0.01)
        worst = max(worst, time.monotonic() - before)
    with open(until + ".watch", "w") as out:
        json.dump({"worst": worst}, out)
    return worst


@app.task(name="nested")
def nested(levels: int, queue: str) -> int:
    """Defers itself ``levels`` more times, each job from the body of the one before: a child, a grandchild..."""
    if levels > 0:
        nested.configure(queue=queue).defer(levels=levels - 1, queue=queue)
    return levels


@track(name="manual report", value_max=10, tags={"env": "test"}, data={"k": "v"}, record_task_args=True)
@app.task(name="manual")
def manual(value: str) -> str:
    return value


@app.task(name="skipped.cleanup")
def skipped_cleanup() -> None:
    return None


@app.task(name="tick")
def tick(timestamp: int) -> int:
    return timestamp


if os.environ.get("TB_PRO_PERIODIC") == "1":
    app.periodic(cron="* * * * * *", periodic_id="every-second", queue=os.environ["TB_PRO_QUEUE"])(tick)


@blueprint.task(name="later")
def later(value: str) -> str:
    return value


if os.environ.get("TB_PRO_WORKER") == "1" and os.environ.get("TASKBADGER_API_KEY"):
    taskbadger.init(
        systems=[
            ProcrastinateSystemIntegration(
                app,
                auto_track_tasks=os.environ.get("TB_PRO_AUTO_TRACK", "1") == "1",
                excludes=json.loads(os.environ.get("TB_PRO_EXCLUDES", '["skipped\\\\..*"]')),
                monitors=json.loads(os.environ.get("TB_PRO_MONITORS", "{}")),
            )
        ]
    )

# registered after the integration: tracked all the same
app.add_tasks_from(blueprint, namespace="bp")


async def users_own_middleware(call_next, context, worker):
    return await call_next()


if os.environ.get("TB_PRO_OWN_MIDDLEWARE") == "1":  # as `run_worker(worker_middleware=[...])`: the default list goes
    app.worker_defaults = {**(app.worker_defaults or {}), "worker_middleware": [users_own_middleware]}
