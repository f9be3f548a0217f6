"""The tests' django.tasks tasks."""

from __future__ import annotations

import importlib.util
import os
import time
from typing import Any

import taskbadger
from taskbadger_django import track_task

if importlib.util.find_spec("django.tasks") is not None:
    from django.tasks import task
else:
    from django_tasks import task


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def boom(message: str) -> None:
    raise ValueError(message)


@task
def progress(total: int) -> dict[str, Any]:
    """Reports progress through ``taskbadger.current_task()``; returns its id (None when untracked)."""
    tb = taskbadger.current_task()
    for i in range(total):
        if tb:
            tb.update(value=i, value_max=total)
    return {"task_id": tb.id if tb else None}


@task
def progress_loop(steps: int) -> dict[str, Any]:
    """The docs' progress loop; returns how long the body took and what ``tb`` showed at its end."""
    started = time.monotonic()
    tb = taskbadger.current_task()
    for i in range(1, steps + 1):
        if tb:  # None when the run is not tracked (as the docs' loop checks)
            tb.update(value=i, value_max=steps)
    return {"took": time.monotonic() - started, "shown": tb.value if tb else "untracked"}


@task(takes_context=True)
def fails_first(context: Any) -> int:
    """Reports 1 of 4 and fails on its first attempt; a run again of the same TaskResult succeeds, reporting
    nothing."""
    if context.attempt <= 1:
        tb = taskbadger.current_task()
        if tb:
            tb.update(value=1, value_max=4)
        raise RuntimeError("first attempt fails")
    return context.attempt


@track_task(enabled=False)
@task
def opted_out() -> str:
    return "ran"


@task
def untracked_by_rule() -> str:
    return "ran"


@track_task(name="Custom invoice run", value_max=10, tags={"team": "billing"}, data={"kind": "nightly"})
@task
def custom() -> str:
    tb = taskbadger.current_task()
    return tb.name if tb else ""


@task
def updates_data(steps: int) -> int:
    """Sends ``steps`` updates of its task's data from its body, one after another (each a request: RQ's job timeout
    strikes during one when the API is slow)."""
    tb = taskbadger.current_task()
    for i in range(steps):
        tb.update(data={"step": i})
    return steps


@task
def sleepy(seconds: float, pid_file: str = "") -> float:
    """Sleeps (a long job: a killed work horse, a job stopped, a worker shut down mid-task); writes the pid of the
    process that runs it to ``pid_file`` first, when given."""
    if pid_file:
        with open(pid_file + ".tmp", "w") as out:
            out.write(str(os.getpid()))
        os.replace(pid_file + ".tmp", pid_file)
    time.sleep(seconds)
    return seconds


#: The monitor ``monitored_by_option`` names in its own option (``track_task(monitor_id=...)``).
OPTION_MONITOR = "0b0b5c86-4a43-4c3c-9a53-7d3e6f1c2a13"


@track_task(monitor_id=OPTION_MONITOR)
@task
def monitored_by_option(a: int, b: int) -> int:
    return a + b


@task
def enqueue_child_when(gate: str) -> str:
    """Waits (30 s at most) for the file ``gate`` to exist, then enqueues ``add(1, 2)`` from its body, on the project's
    queue (``DJT_QUEUE``: the one its worker takes); returns the child's TaskResult id."""
    from django.conf import settings

    deadline = time.monotonic() + 30
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    return add.using(queue_name=settings.DJT_QUEUE).enqueue(1, 2).id
