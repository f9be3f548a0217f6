"""The Celery app the integration tests run in real worker processes.

Configured from the environment the test fixture sets: TB_BROKER_URL, TASKBADGER_* (the stand-in
API), TB_READY_FILE (touched when the worker is ready), TB_AUTO_TRACK (system integration rules).
"""

import json
import os
import pathlib
import signal
import time

from celery import Celery, chain, chord, group, shared_task
from celery.exceptions import Ignore, Reject
from celery.signals import worker_ready

import taskbadger
from taskbadger.celery import Task
from taskbadger.context_providers import ContextProvider
from taskbadger.systems.celery import CelerySystemIntegration

app = Celery("tbtests")
app.conf.update(
    broker_url=os.environ.get("TB_BROKER_URL", "memory://"),
    broker_transport_options=(
        {"data_folder_in": os.environ["TB_BROKER_DIR"], "data_folder_out": os.environ["TB_BROKER_DIR"],
         "control_folder": os.environ["TB_BROKER_DIR"] + "-control", "polling_interval": 0.05}
        if os.environ.get("TB_BROKER_URL", "").startswith("filesystem") else {}
    ),
    task_always_eager=False,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    task_create_missing_queues=True,
    result_backend=os.environ.get("TB_RESULT_BACKEND"),  # none unless a test's worker needs one (chords)
    # Celery waits this long (10 s by default) for a result a killed pool child may have sent before it reports the
    # child's task lost (WorkerLostError). The tests that kill children waited it out each time (a fifth of the
    # outcome module's time); what tracking does with the loss does not depend on how long Celery waits.
    worker_lost_wait=2.0,
)
if os.environ.get("TB_BROKER_URL", "").startswith("filesystem"):
    app.conf.broker_transport = "taskbadger.testing.broker:FilesystemTransport"  # kombu issue 1551

class Snapshotting(ContextProvider):
    """A context provider for the tests: its snapshot names the process, its context the exception."""

    identifier = "test_context"

    def snapshot(self):
        return f"taken in {os.getpid()}"

    def capture_error_context(self, exception, snapshot=None):
        return {"snapshot": snapshot, "exception": type(exception).__name__}


if os.environ.get("TB_BEAT_SCHEDULE"):  # JSON: entry -> {"task", "schedule" (seconds), "args", "options"}
    app.conf.beat_schedule = json.loads(os.environ["TB_BEAT_SCHEDULE"])
if os.environ.get("TASKBADGER_API_KEY"):
    taskbadger.init(systems=[CelerySystemIntegration(
        monitors=json.loads(os.environ.get("TB_MONITORS") or "{}"),
        auto_track_tasks=os.environ.get("TB_AUTO_TRACK") == "1",
        includes=[r"tests\.celery_project\.app\.plain_.*"],
    )], context_providers=[Snapshotting()] if os.environ.get("TB_CONTEXT_PROVIDER") == "1" else None)


@worker_ready.connect
def _ready(**_):
    path = os.environ.get("TB_READY_FILE")
    if path:
        pathlib.Path(path).write_text(str(os.getpid()))


@app.task(base=Task)
def add(x, y):
    return x + y


@app.task(base=Task, shared=False)
def add_here(x, y):
    """``add``, registered in this app only (``shared=False``): another app has no copy of it."""
    return x + y


@app.task(bind=True, base=Task)
def progress(self, steps):
    tb = self.taskbadger_task
    for i in range(1, steps + 1):
        tb.update(value=i, value_max=steps)
    return steps


@app.task(bind=True, base=Task)
def update_data(self, steps):
    """Updates its task's data ``steps`` times from its body, one request each."""
    tb = self.taskbadger_task
    for i in range(steps):
        tb.update(data={"step": i})
    return steps


@app.task(base=Task)
def fail(message):
    raise ValueError(message)


@app.task(bind=True, base=Task)
def finish_in_body(self, value):
    self.taskbadger_task.success(value=value)


@app.task(bind=True, base=Task)
def report_access(self, marker):
    """Records what the body sees, so tests can check access without a result backend."""
    tb = self.taskbadger_task
    if tb is not None:
        tb.update(data={"seen_id": self.taskbadger_task_id, "marker": marker, "name": tb.name})


@app.task(bind=True, base=Task)
def report_current(self, marker):
    """Records what ``taskbadger.current_task()`` gives the body (the same task as ``self.taskbadger_task``)."""
    import taskbadger

    tb = taskbadger.current_task()
    if tb is not None:
        tb.update(data={"current_id": tb.id, "same_as_self": tb is self.taskbadger_task, "marker": marker})


@app.task(bind=True, base=Task, max_retries=3)
def flaky(self, failures):
    if self.request.retries < failures:
        raise self.retry(exc=ConnectionError(f"attempt {self.request.retries} failed"), countdown=0)
    return "ok"


@app.task(base=Task)
def ignore_me():
    raise Ignore()


@app.task(base=Task)
def reject_me():
    raise Reject("not for us", requeue=False)


@app.task(base=Task)  # acks_late False (the default): the message was acknowledged on receipt
def reject_requeue_without_acks_late():
    raise Reject("again, please", requeue=True)


@app.task(bind=True, base=Task)
def progress_then_retry(self):
    if self.request.retries < 1:
        self.taskbadger_task.update(value=50, value_max=100)
        raise self.retry(exc=RuntimeError("again"), countdown=0)
    return "done"


@app.task(base=Task)
def sleep_for(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)  # the task's own work: a long-running task for revoke and time limits
    return seconds


@app.task(base=Task)
def kill_worker_child():
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(base=Task)
def no_taskbadger_kwargs(*args, **kwargs):
    leaked = [k for k in kwargs if k.startswith("taskbadger")]
    if leaked:
        raise AssertionError(f"options reached the task function: {leaked}")


@app.task(base=Task, taskbadger_name="decorated name", taskbadger_value_max=50,
          taskbadger_tags={"source": "decorator"}, taskbadger_kwargs={"name": "dict name", "value": 5})
def decorated():
    return None


def _same_queue(request):
    # each test worker consumes its own queue: publish children where this task came from
    return (request.delivery_info or {}).get("routing_key")


@app.task(bind=True, base=Task)
def spawn_children(self, count):
    queue = _same_queue(self.request)
    for i in range(count):
        add.apply_async((i, i), queue=queue)
    add.apply_async((0, 0), queue=queue, taskbadger_parent=None)


@app.task(bind=True, base=Task)
def spawn_grandchild(self):
    add.apply_async((1, 1), queue=_same_queue(self.request))


@app.task(bind=True, base=Task)
def spawn_nested(self):
    spawn_grandchild.apply_async(queue=_same_queue(self.request))


@app.task(bind=True, base=Task)
def spawn_chain(self):
    """Publishes a chain of two tasks: both are its children (the second is published by the first's worker)."""
    queue = _same_queue(self.request)
    chain(add.s(1, 1).set(queue=queue), add.s(10).set(queue=queue)).apply_async()


@shared_task(bind=True)
def start_chord(self):
    """Untracked: publishes a chord of two ``add`` with a ``record_me`` body (a chord needs a result backend,
    which this worker has and the tests' process does not)."""
    queue = _same_queue(self.request)
    chord([add.s(1, 1).set(queue=queue), add.s(2, 2).set(queue=queue)])(record_me.s().set(queue=queue))


@shared_task(bind=True)
def start_failing_chord(self):
    """Untracked: publishes a chord whose second header task fails, with an old-style errback on its body (the
    header task that fails publishes it, in the worker that has the result backend)."""
    queue = _same_queue(self.request)
    body = record_me.s().set(queue=queue).on_error(on_error.si("chord failed").set(queue=queue))
    chord([add.s(1, 1).set(queue=queue), fail.si("header broke").set(queue=queue)])(body)


@app.task(bind=True, base=Task)
def replace_with(self, shape):
    """Replaces itself (``self.replace``) with one task, a chain or a group, on this worker's queue."""
    queue = _same_queue(self.request)
    if shape == "task":
        sig = add.s(2, 3).set(queue=queue)
    elif shape == "chain":
        sig = chain(add.s(1, 1).set(queue=queue), add.s(10).set(queue=queue))
    else:
        sig = group(add.s(1, 1).set(queue=queue), add.s(2, 2).set(queue=queue))
    return self.replace(sig)


@app.task(base=Task)
def on_error(failed_id):
    """An old-style errback (``link_error``): Celery publishes it with the failed task's id."""
    return failed_id


@app.task(base=Task)
def record_me(*args, **kwargs):
    return None


@shared_task
def plain_add(x, y):
    return x + y


@shared_task
def plain_other(x):
    return x


@shared_task
def untracked_plain(x):
    return x


@app.task(bind=True, base=Task)
def echo(self, value):
    """Returns its argument after reading its own Task Badger task; the result is written to
    TB_RESULTS_DIR/<celery id>, so tests can check it without a result backend."""
    seen = self.taskbadger_task
    folder = os.environ.get("TB_RESULTS_DIR")
    if folder:
        result = {"value": value, "tracked": seen is not None}
        path = pathlib.Path(folder) / self.request.id
        path.with_suffix(".partial").write_text(json.dumps(result))
        path.with_suffix(".partial").replace(path)
    return value


#: The fields of the body's task ``report_carried`` reports (all carried in the message: no request reads them).
CARRIED_FIELDS = ("id", "name", "status", "value", "value_max", "tags", "queue", "external_id", "public_url", "parent")


@app.task(bind=True, base=Task)
def report_carried(self):
    """Writes what the body's ``self.taskbadger_task`` holds, as ``echo`` writes its result."""
    tb = self.taskbadger_task
    result = {"tracked": tb is not None, **({field: getattr(tb, field) for field in CARRIED_FIELDS} if tb else {})}
    path = pathlib.Path(os.environ["TB_RESULTS_DIR"]) / self.request.id
    path.with_suffix(".partial").write_text(json.dumps(result))
    path.with_suffix(".partial").replace(path)


@app.task(bind=True, base=Task)
def report_progress(self, value):
    """The README's task body (``if tb: tb.update(...)``), then like ``echo``."""
    tb = self.taskbadger_task
    if tb:
        tb.update(value=1, value_max=2)
    folder = os.environ.get("TB_RESULTS_DIR")
    if folder:
        path = pathlib.Path(folder) / self.request.id
        path.with_suffix(".partial").write_text(json.dumps({"value": value, "tracked": tb is not None}))
        path.with_suffix(".partial").replace(path)
    return value


@app.task(bind=True, base=Task)
def progress_loop(self, steps, after=None):
    """The docs' progress loop (``tb.update(value=i, value_max=steps)``), then like ``echo``, with how long the
    body took and what the body's ``tb`` showed at its end. ``after``: a file the loop waits for first (a test
    changes how the API answers meanwhile)."""
    deadline = time.monotonic() + 30
    while after is not None and not os.path.exists(after) and time.monotonic() < deadline:
        time.sleep(0.01)  # polling for the test's go-ahead, under a deadline
    started = time.monotonic()
    tb = self.taskbadger_task
    for i in range(1, steps + 1):
        tb.update(value=i, value_max=steps)
    took = time.monotonic() - started
    folder = os.environ.get("TB_RESULTS_DIR")
    if folder:
        result = {"value": steps, "tracked": tb is not None, "took": took, "shown": tb.value}
        path = pathlib.Path(folder) / self.request.id
        path.with_suffix(".partial").write_text(json.dumps(result))
        path.with_suffix(".partial").replace(path)
    return steps


@app.task(bind=True, base=Task)
def update_after_the_end(self, status):
    """Reports progress, then returns, leaving a thread that updates the task (value 57, and ``status`` when
    given) once the body's ``tb`` shows the run's end; the thread writes what ``tb`` showed then to
    TB_RESULTS_DIR/<celery id> after its update."""
    import threading

    tb = self.taskbadger_task
    tb.update(value=10, value_max=100)
    path = pathlib.Path(os.environ["TB_RESULTS_DIR"]) / self.request.id

    def later():
        deadline = time.monotonic() + 30
        while not tb.is_finished and time.monotonic() < deadline:
            time.sleep(0.005)  # the job's own thread, polling for the end of its job under a deadline
        tb.update(value=57, **({"status": status} if status else {}))
        path.with_suffix(".partial").write_text(json.dumps({"status": tb.status, "value": tb.value}))
        path.with_suffix(".partial").replace(path)

    threading.Thread(target=later).start()
    return "done"


@app.task(bind=True, base=Task)
def clock(self, value):
    """Like ``echo``, and says when its body started (``time.time()``)."""
    started = time.time()
    folder = os.environ.get("TB_RESULTS_DIR")
    if folder:
        result = {"value": value, "tracked": self.taskbadger_task is not None, "started": started}
        path = pathlib.Path(folder) / self.request.id
        path.with_suffix(".partial").write_text(json.dumps(result))
        path.with_suffix(".partial").replace(path)
    return value


@app.task(base=Task)
def beat_tick():
    return "tick"


@shared_task
def plain_fail(message):
    raise ValueError(message)


@app.task(bind=True, base=Task, max_retries=3, autoretry_for=(ConnectionError,), retry_kwargs={"countdown": 0})
def auto_flaky(self, failures):
    if self.request.retries < failures:
        raise ConnectionError(f"attempt {self.request.retries} failed")
    return "ok"


@app.task(bind=True, base=Task, max_retries=3, acks_late=True)
def late_flaky(self, failures):
    if self.request.retries < failures:
        raise self.retry(exc=ConnectionError(f"attempt {self.request.retries} failed"), countdown=0)
    return "ok"


@app.task(base=Task, acks_late=True)
def reject_requeue_until(path, failures):
    """Reject (requeue) the first ``failures`` deliveries, counted in the file at ``path``."""
    counter = pathlib.Path(path)
    seen = int(counter.read_text() or 0) if counter.exists() else 0
    counter.write_text(str(seen + 1))
    if seen < failures:
        raise Reject("again, please", requeue=True)
    return "ok"


@app.task(base=Task, acks_late=True)
def late_until_redelivered(path):
    """``acks_late``: its first delivery runs until its worker is stopped (60 s at most); a delivery again returns
    at once. Deliveries are counted in the file at ``path``."""
    counter = pathlib.Path(path)
    seen = int(counter.read_text() or 0) if counter.exists() else 0
    counter.write_text(str(seen + 1))
    deadline = time.monotonic() + (60 if seen == 0 else 0)
    while time.monotonic() < deadline:
        time.sleep(0.05)  # the task's own work, until its worker is shut down cold
    return seen


@app.task(bind=True, base=Task, max_retries=1, taskbadger_heartbeat_interval=0.5)
def retry_overlapping(self, path, seconds):
    """Retried at once; its first attempt ends only once the next has started (a ``finally`` after ``self.retry()``,
    cleaning up), which then runs ``seconds`` (in the same process in the threads and green pools)."""
    started = pathlib.Path(path)
    if self.request.retries < 1:
        try:
            raise self.retry(exc=ConnectionError("first attempt failed"), countdown=0)
        finally:
            deadline = time.monotonic() + 30
            while not started.exists() and time.monotonic() < deadline:
                time.sleep(0.05)  # the first attempt's clean-up, until the next attempt runs
    started.write_text("started")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)  # the next attempt's work
    return "ok"


@app.task(bind=True, base=Task)
def work_until_soft_limit(self, path, seconds):
    """Works ``seconds``, unless its soft time limit interrupts it first: then writes how long its body ran (and
    whether it was tracked) to the file at ``path``, and lets the exception end it."""
    from celery.exceptions import SoftTimeLimitExceeded

    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            time.sleep(0.02)
    except SoftTimeLimitExceeded:
        pathlib.Path(path).write_text(json.dumps({"ran": time.monotonic() - started,
                                                  "tracked": self.taskbadger_task is not None}))
        raise
    return "not interrupted"


@app.task(bind=True, base=Task, max_retries=3)
def retry_after(self, seconds):
    """Retried once (countdown 0), ``seconds`` into its first attempt."""
    if self.request.retries < 1:
        time.sleep(seconds)
        raise self.retry(exc=ConnectionError("first attempt failed"), countdown=0)
    return "ok"


@app.task(bind=True, base=Task, max_retries=1, taskbadger_heartbeat_interval=0.5)
def retry_later(self, countdown):
    """Reports progress (its stale timeout is on its task by then), then is retried ``countdown`` seconds later; it
    has a heartbeat, so a stale timeout while it runs."""
    if self.request.retries < 1:
        self.taskbadger_task.update(value=1, value_max=2)
        raise self.retry(exc=ConnectionError("first attempt failed"), countdown=countdown)
    return "ok"


@app.task(bind=True, base=Task, retry_on_worker_lost=True, max_retries=1, default_retry_delay=3,
          taskbadger_heartbeat_interval=0.5)
def lost_then_retried(self):
    """Its first attempt reports progress, then its pool child dies (SIGKILL): the worker retries it
    (``retry_on_worker_lost``) 3 s later, and that attempt returns."""
    if self.request.retries < 1:
        self.taskbadger_task.update(value=1, value_max=2)
        os.kill(os.getpid(), signal.SIGKILL)
    return "ok"


@app.task(bind=True, base=Task, retry_on_worker_lost=True, max_retries=1, default_retry_delay=1)
def lost_then_reads_progress(self, path):
    """Its first attempt reports progress (1 of 2), then its pool child dies (SIGKILL): the worker retries it
    (``retry_on_worker_lost``) 1 s later, and that attempt writes the progress its ``self.taskbadger_task`` shows
    to the file at ``path``, then returns."""
    if self.request.retries < 1:
        self.taskbadger_task.update(value=1, value_max=2)
        os.kill(os.getpid(), signal.SIGKILL)
    tb = self.taskbadger_task
    pathlib.Path(path).write_text(json.dumps({"value": tb.value, "value_max": tb.value_max}))
    return "ok"


@app.task(bind=True, base=Task, acks_late=True, reject_on_worker_lost=True)
def late_lost_once(self, path):
    """``acks_late`` and ``reject_on_worker_lost``: its first delivery reports progress, then its pool child dies
    (SIGKILL) and Celery puts the message back in its queue; a delivery again returns. Deliveries are counted in the
    file at ``path``."""
    counter = pathlib.Path(path)
    seen = int(counter.read_text() or 0) if counter.exists() else 0
    counter.write_text(str(seen + 1))
    if seen == 0:
        self.taskbadger_task.update(value=1, value_max=2)
        os.kill(os.getpid(), signal.SIGKILL)
    return seen


@shared_task(bind=True)
def untracked_publishes_tracked(self):
    """Untracked: publishes a tracked ``add`` to this worker's queue, then returns."""
    add.apply_async((1, 1), queue=_same_queue(self.request))
    return "parent done"


@app.task(bind=True, base=Task, max_retries=1)
def retry_without_raising(self):
    """Its first attempt publishes its retry (2 s later) with ``throw=False`` and returns; the next one reports
    progress and returns."""
    if self.request.retries < 1:
        self.retry(countdown=2, throw=False)
        return "retrying"
    self.taskbadger_task.update(value=1, value_max=2)
    return "ok"


@app.task(bind=True, base=Task, max_retries=1)
def concurrent_work(self, n, steps, mode, pause):
    """One of many tasks running at once (threads, greenlets): reports its own progress ``steps`` times, ``pause``
    seconds apart (the pool switches to the others meanwhile), checking each time that ``self.taskbadger_task`` and
    ``taskbadger.current_task()`` are this run's task; publishes a child with ``mode`` "child". Ends as ``mode``
    says: "ok" returns, "fail" raises, "retry" is retried once (its next attempt returns). What it saw is in its
    task's data (``seen``: its own Celery id and the ids of every task object it was given)."""
    import taskbadger

    tb = self.taskbadger_task
    seen = set()
    for i in range(1, steps + 1):
        current = taskbadger.current_task()
        seen.update({self.taskbadger_task.id, current.id if current is not None else None,
                     self.taskbadger_task_id})
        tb.update(value=i, value_max=steps + n, data={"n": n, "celery_id": self.request.id, "seen": sorted(
            str(s) for s in seen)}, data_merge_strategy="default")
        time.sleep(pause)
    if mode == "child":
        add.apply_async((n, n), queue=_same_queue(self.request))
    if mode == "fail":
        raise ValueError(f"task {n} failed")
    if mode == "retry" and self.request.retries < 1:
        raise self.retry(exc=ConnectionError(f"task {n} retried"), countdown=0)
    return n


@app.task(bind=True, base=Task)
def publish_child_when(self, path, report=False):
    """Waits until the file at ``path`` exists (60 s at most), then (with ``report``, after reporting progress)
    publishes a tracked ``add`` to this worker's queue: many of these running at once (threads, greenlets) report and
    publish their children at the same moment."""
    gate = pathlib.Path(path)
    deadline = time.monotonic() + 60
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # the task's own wait, for the test's signal, under a deadline
    if report:
        self.taskbadger_task.update(value=1, value_max=2)
    add.apply_async((1, 1), queue=_same_queue(self.request))
    return "published"


@app.task(bind=True, base=Task)
def apply_eagerly_then_report(self):
    """Runs ``add`` in its own body (``apply()``: eagerly, with the task signals sent), then reports progress: the
    eager run's end must not end this run (nor take it out of ``current_task()``)."""
    eager = add.apply((2, 3))
    current = taskbadger.current_task()
    self.taskbadger_task.update(value=1, value_max=2, data={
        "eager_result": eager.result, "current": current.id if current is not None else None})
    return "done"
