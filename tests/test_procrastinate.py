"""Procrastinate jobs tracked end to end: the process that defers them (this one) on a fresh PostgreSQL
database, a real ``procrastinate worker`` process running them, the stand-in API over real HTTP.

Every outcome a user relies on: pending while queued (name, queue, ``external_id`` = the job id), success,
error with the exception and ``data["attempts"]``, a ``RetryStrategy`` retry (one task, back to pending,
ending success without the old exception or error after the last attempt), cancelled before it starts,
aborted (sync and async), periodic jobs with their monitor, Procrastinate's own tasks never tracked,
includes/excludes, tasks registered after the integration, ``@track`` options, ``current_task()``, the
heartbeat, and jobs deferred by the official SDK (the task id kwarg, never passed to the function).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import time
import uuid

import procrastinate
import pytest
from procrastinate.testing import InMemoryConnector

import taskbadger
from taskbadger.procrastinate import TB_TASK_ID_KWARG, TrackingJobManager, current_task, install, track
from taskbadger.systems.procrastinate import ProcrastinateSystemIntegration

from .conftest import _live_workers
from .procrastinate_project import app as tasks
from .procrastinate_workers import ProcrastinateWorker
from .services import postgres_database, postgres_url

pytestmark = pytest.mark.integration

FINAL = ("success", "error", "cancelled")


@pytest.fixture(scope="module")
def dsn():
    with postgres_database("tb_procrastinate") as name:
        url = postgres_url(name)
        with tasks.app.replace_connector(procrastinate.PsycopgConnector(conninfo=url)) as app, app.open():
            app.schema_manager.apply_schema()
        yield url


@pytest.fixture(scope="module")
def app(dsn):
    """The test project's app, on this module's database, open in this process."""
    with tasks.app.replace_connector(procrastinate.PsycopgConnector(conninfo=dsn)) as app, app.open():
        yield app


def start(server, dsn, **kwargs) -> ProcrastinateWorker:
    worker = ProcrastinateWorker(server, dsn, **kwargs).start()
    _live_workers.append(worker)
    return worker


def stop(worker: ProcrastinateWorker) -> None:
    try:
        worker.stop()
    finally:
        if worker in _live_workers:
            _live_workers.remove(worker)


@pytest.fixture(scope="module")
def worker(taskbadger_server_session, dsn):
    started = start(taskbadger_server_session, dsn)
    yield started
    stop(started)


@pytest.fixture
def api(taskbadger_server, app):
    taskbadger.init(
        token=taskbadger_server.api_key,
        host=taskbadger_server.url,
        systems=[ProcrastinateSystemIntegration(app, excludes=[r"skipped\..*"])],
    )
    return taskbadger_server


def job_of(app, job_id: int):
    (job,) = app.job_manager.list_jobs(id=job_id)
    return job


def wait_job(app, job_id: int, statuses=("succeeded", "failed", "cancelled", "aborted"), timeout: float = 20.0):
    """The job once Procrastinate has it in one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        job = job_of(app, job_id)
        if job.status in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job.status} after {timeout} s")
        time.sleep(0.05)  # polling the database, under a deadline


def task_of_job(server, job_id: int, statuses=FINAL, timeout: float = 20.0) -> dict:
    """The Task Badger task whose external_id is the job's id, once in one of ``statuses``."""

    def find():
        for task in server.tasks.values():
            if task["external_id"] == str(job_id) and task["status"] in statuses:
                return task
        return None

    try:
        return server.wait_for(find, timeout=timeout)
    except AssertionError:
        raise AssertionError(
            f"no task for job {job_id} in {statuses}: "
            f"{[(t['name'], t['external_id'], t['status']) for t in server.tasks.values()]}"
        ) from None


def tasks_for(server, job_id: int) -> list[dict]:
    return [t for t in server.tasks.values() if t["external_id"] == str(job_id)]


# -- publishing ------------------------------------------------------------------------------------------


def test_a_deferred_job_is_pending_with_its_job_id(api, app):
    """Nothing serves this queue: the task stays pending, named after the task, in the job's queue."""
    queue = f"unserved-{uuid.uuid4().hex[:6]}"
    job_id = tasks.echo.configure(queue=queue).defer(value="x")
    task = task_of_job(api, job_id, statuses=("pending",))
    assert (task["name"], task["queue"]) == ("echo", queue)
    assert job_of(app, job_id).task_kwargs == {"value": "x", TB_TASK_ID_KWARG: task["id"]}  # as the official SDK
    assert isinstance(app.job_manager, TrackingJobManager)


def test_the_process_that_deferred_a_job_knows_its_task_id_for_a_progress_bar(api, app):
    """docs/progress.md: `defer()` returns the job id; the page that shows the bar needs its Task Badger id."""
    from taskbadger.procrastinate import task_id_of_job

    job_id = tasks.echo.configure(queue=f"unserved-{uuid.uuid4().hex[:6]}").defer(value="x")
    task = task_of_job(api, job_id, statuses=("pending",))
    assert task_id_of_job(job_id) == task["id"]
    assert task_id_of_job(job_id + 10_000) is None


def test_a_job_that_cannot_be_inserted_raises_as_untracked_and_its_task_is_cancelled(api, app):
    queue = f"unserved-{uuid.uuid4().hex[:6]}"
    lock = f"lock-{uuid.uuid4().hex[:6]}"
    tasks.echo.configure(queue=queue, queueing_lock=lock).defer(value="first")
    with pytest.raises(procrastinate.exceptions.AlreadyEnqueued):
        tasks.echo.configure(queue=queue, queueing_lock=lock).defer(value="second")
    cancelled = api.wait_for(
        lambda: next((t for t in api.tasks.values() if t["queue"] == queue and t["status"] == "cancelled"), None)
    )
    assert "AlreadyEnqueued" in cancelled["data"]["publish_error"]
    assert [t["status"] for t in api.tasks.values() if t["queue"] == queue].count("pending") == 1


@pytest.mark.parametrize(
    "how", ["defer", "defer_async", "configure_defer", "configure_defer_async", "app_configure_task"]
)
def test_every_way_to_defer_is_tracked_to_success(api, app, dsn, worker, how):
    """Each job runs with only its own kwargs (``kwargs_seen`` fails otherwise) and ends ``success``."""
    task, q = tasks.kwargs_seen, worker.queue
    task.queue = q  # plain defer() uses the task's queue

    if how == "defer":
        job_ids = [task.defer(value=1)]
    elif how == "defer_async":
        job_ids = [asyncio.run(_defer_async(app, dsn, lambda: task.defer_async(value=1)))]
    elif how == "configure_defer":
        job_ids = [task.configure(queue=q, priority=3).defer(value=1)]
    elif how == "configure_defer_async":
        job_ids = [asyncio.run(_defer_async(app, dsn, lambda: task.configure(queue=q, lock="l").defer_async(value=1)))]
    else:
        job_ids = [app.configure_task("kwargs_seen", queue=q).defer(value=1)]
    for job_id in job_ids:
        assert wait_job(app, job_id).status == "succeeded"
        tb = task_of_job(api, job_id)
        assert tb["status"] == "success" and tb["name"] == "kwargs_seen"
        assert len(tasks_for(api, job_id)) == 1


async def _defer_async(app, dsn, defer):
    """Defer from an event loop of our own: an async pool is opened on it."""
    with app.replace_connector(procrastinate.PsycopgConnector(conninfo=dsn)):
        async with app.open_async():
            return await defer()


@pytest.mark.parametrize("asynchronous", [False, True])
def test_batch_defer_tracks_every_job(api, app, dsn, worker, asynchronous):
    q = worker.queue
    if asynchronous:
        job_ids = asyncio.run(
            _defer_async(
                app,
                dsn,
                lambda: tasks.kwargs_seen.configure(queue=q).batch_defer_async(
                    {"value": 1}, {"value": 2}, {"value": 3}
                ),
            )
        )
    else:
        job_ids = tasks.kwargs_seen.configure(queue=q).batch_defer({"value": 1}, {"value": 2}, {"value": 3})
    assert len(job_ids) == 3
    for job_id in job_ids:
        assert wait_job(app, job_id).status == "succeeded"
        assert task_of_job(api, job_id)["status"] == "success"


# -- outcomes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", [tasks.echo, tasks.aecho], ids=["sync", "async"])
def test_success(api, app, worker, task):
    job_id = task.configure(queue=worker.queue).defer(value="v")
    assert wait_job(app, job_id).status == "succeeded"
    tb = task_of_job(api, job_id)
    assert tb["status"] == "success" and tb["start_time"] and tb["end_time"]


def test_error_records_the_exception_and_the_attempts(api, app, worker):
    job_id = tasks.boom.configure(queue=worker.queue).defer(message="broken on purpose")
    assert wait_job(app, job_id).status == "failed"
    tb = task_of_job(api, job_id)
    assert tb["status"] == "error"
    assert tb["data"]["exception_type"] == "ValueError"
    assert "broken on purpose" in tb["data"]["exception"]
    assert tb["data"]["attempts"] == 1


def test_a_retried_job_is_one_task_that_ends_success_without_the_old_exception(api, app, worker, tmp_path):
    job_id = tasks.flaky_later.configure(queue=worker.queue).defer(path=str(tmp_path / "count"), fail_times=1)
    assert wait_job(app, job_id).status == "succeeded"
    tb = task_of_job(api, job_id)
    assert tb["status"] == "success"
    assert "exception" not in (tb["data"] or {})
    assert len(tasks_for(api, job_id)) == 1
    statuses = [
        r.json.get("status")
        for r in api.requests
        if r.task_id == tb["id"] and r.method == "PATCH" and isinstance(r.json, dict)
    ]
    assert "pending" in statuses  # went back to pending between the attempts (a fast attempt's
    # processing is merged into its outcome); it took two attempts (the retry had recorded 1)
    assert tb["data"]["attempts"] == 2


def test_retries_that_run_in_another_worker_end_success(api, app, dsn, worker, tmp_path):
    """Two workers on one queue: the failing attempt's 'pending' was queued in its worker while the next attempt
    ran in the other one and ended first, and the task stayed pending for good (21 of 40 in a hunt)."""
    other = start(api, dsn, queue=worker.queue)
    try:
        job_ids = [tasks.flaky.configure(queue=worker.queue).defer(path=str(tmp_path / f"count-{i}"), fail_times=1)
                   for i in range(16)]
        assert [wait_job(app, job_id).status for job_id in job_ids] == ["succeeded"] * 16
        assert [task_of_job(api, job_id)["status"] for job_id in job_ids] == ["success"] * 16
    finally:
        stop(other)


def test_retries_while_the_api_is_slow_end_in_their_final_state_across_two_workers(api, app, dsn, tmp_path):
    """Two workers on one queue, and an API slower than the publish budget: a retry's 'pending' that could not be
    sent at once was queued in its worker, to be sent only while the task had no final state, but that is read,
    then written: the other worker's final state came in between, and the task stayed pending for good, with an
    earlier attempt's count (7 to 9 of 30 in a hunt). The next attempt now records the count with its start."""
    workers = [start(api, dsn)]
    try:
        workers.append(start(api, dsn, queue=workers[0].queue))
        api.set_latency(1.5, method="PATCH")  # every update outlasts the publish budget (1 s)
        api.set_latency(0.2, method="GET")  # a conditional update reads the task first: the window widens
        fail_times = [1, 2, 10] * 10  # flaky retries 3 times: 10 failures end in error after 4 attempts
        job_ids = [tasks.flaky.configure(queue=workers[0].queue).defer(path=str(tmp_path / f"count-{i}"),
                                                                         fail_times=n)
                   for i, n in enumerate(fail_times)]
        task_ids = [job_of(app, job_id).task_kwargs[TB_TASK_ID_KWARG] for job_id in job_ids]
        statuses = [wait_job(app, job_id, timeout=90).status for job_id in job_ids]  # polled under a deadline
        # polled under a deadline: every task reaches a final state (a late 'pending' may still undo it)
        with contextlib.suppress(AssertionError):  # the tasks that did not are named below
            api.wait_for(lambda: all(api.get_task(task_id)["status"] in FINAL for task_id in task_ids), timeout=30)
    finally:
        for worker in workers:
            stop(worker)  # a graceful stop sends what each worker still had queued
    assert statuses == ["succeeded" if n < 4 else "failed" for n in fail_times]
    ended = [(api.get_task(task_id)["status"], (api.get_task(task_id)["data"] or {}).get("attempts"))
             for task_id in task_ids]
    expected = [("success", n + 1) if n < 4 else ("error", 4) for n in fail_times]
    wrong = [(job_id, got) for job_id, got, want in zip(job_ids, ended, expected, strict=True) if got != want]
    assert not wrong, f"{len(wrong)} of {len(job_ids)} tasks did not end in their final state: {wrong}"


def test_an_immediate_retry_is_one_task_that_ends_success(api, app, worker, tmp_path):
    job_id = tasks.flaky.configure(queue=worker.queue).defer(path=str(tmp_path / "count"), fail_times=1)
    assert wait_job(app, job_id).status == "succeeded"
    tb = task_of_job(api, job_id)
    assert tb["status"] == "success" and "exception" not in (tb["data"] or {})
    assert len(tasks_for(api, job_id)) == 1


def test_a_retried_job_ends_success_with_the_progress_an_earlier_attempt_reported_completed(api, app, worker,
                                                                                           tmp_path):
    job_id = tasks.flaky_progress.configure(queue=worker.queue).defer(path=str(tmp_path / "count"))
    assert wait_job(app, job_id).status == "succeeded"
    tb = task_of_job(api, job_id)
    assert tb["status"] == "success"
    assert (tb["value"], tb["value_max"]) == (4, 4)  # 1 of 4 reported by the first attempt, then complete


def test_a_worker_whose_own_middleware_list_leaves_ours_out_still_runs_the_job(api, app, dsn, tmp_path):
    """``worker_middleware=[...]`` replaces the default list that holds ours: the task id kwarg reached the task
    function, which failed with TypeError. The job runs (untracked), and the worker says what to add."""
    worker = start(api, dsn, extra_env={"TB_PRO_OWN_MIDDLEWARE": "1"})
    try:
        job_id = tasks.echo.configure(queue=worker.queue).defer(value="v")
        assert wait_job(app, job_id).status == "succeeded", worker.log()[-3000:]
        api.wait_for(lambda: "put taskbadger.procrastinate.middleware first" in worker.log(), timeout=10)
    finally:
        stop(worker)


def test_a_job_failing_its_last_attempt_ends_error_with_the_attempts(api, app, worker, tmp_path):
    job_id = tasks.flaky.configure(queue=worker.queue).defer(path=str(tmp_path / "count"), fail_times=10)
    assert wait_job(app, job_id).status == "failed"
    tb = task_of_job(api, job_id)
    assert tb["status"] == "error"
    assert tb["data"]["attempts"] == 4  # RetryStrategy(max_attempts=3): the first attempt and 3 retries
    assert "attempt 4 failed" in tb["data"]["exception"]
    assert len(tasks_for(api, job_id)) == 1


def test_a_failed_job_retried_by_hand_ends_success_without_the_old_exception(api, app, worker, tmp_path):
    """Procrastinate's Django admin (Retry) and shell (``retry``) put a failed job back in its queue
    (``retry_job_by_id``): the run that succeeded ended its task ``success`` with the exception of the attempt
    that had failed still in its data."""
    taskbadger_server = api
    job_id = tasks.flaky.configure(queue=worker.queue).defer(path=str(tmp_path / "count"), fail_times=4)
    assert wait_job(app, job_id).status == "failed"
    failed = task_of_job(taskbadger_server, job_id)
    assert failed["status"] == "error" and "attempt 4 failed" in failed["data"]["exception"]
    app.job_manager.retry_job_by_id(job_id, retry_at=datetime.datetime.now(datetime.timezone.utc))
    assert wait_job(app, job_id, statuses=("succeeded", "failed")).status == "succeeded"
    tb = task_of_job(taskbadger_server, job_id, statuses=("success",))
    assert not {"exception", "exception_type"} & set(tb["data"] or {}), tb["data"]
    assert [t["id"] for t in tasks_for(taskbadger_server, job_id)] == [failed["id"]]
    # its fifth run (Procrastinate's own count says 6: the retry by hand adds one to the failed run's count)
    assert tb["data"]["attempts"] == 5


def retried_by_hand(app, job_id: int) -> None:
    app.job_manager.retry_job_by_id(job_id, retry_at=datetime.datetime.now(datetime.timezone.utc))


@pytest.mark.parametrize("tracked_by", ["deferring process", "worker"])
def test_a_failed_job_retried_by_hand_counts_its_runs(taskbadger_server, app, worker, tracked_by):
    """A job that failed (one run), retried by hand twice, failing each time: three runs. Procrastinate's
    ``attempts`` counts a retry by hand twice (the failed run, then the retry out of ``failed``), and the task said
    3 after the second run and 5 after the third."""
    if tracked_by == "deferring process":
        taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url,
                        systems=[ProcrastinateSystemIntegration(app)])
    job_id = tasks.boom.configure(queue=worker.queue).defer(message="still broken")
    assert wait_job(app, job_id).status == "failed"
    task_of_job(taskbadger_server, job_id)  # its error reached the API
    for _ in range(2):
        # Retried once Procrastinate has it failed: its error reaches the API before the worker writes that, and a
        # job retried while still 'doing' is then finished 'failed' over the retry, which never runs.
        assert wait_job(app, job_id).status == "failed"
        sent = len(taskbadger_server.requests)
        retried_by_hand(app, job_id)
        # polled under a deadline: the next run's error was sent
        taskbadger_server.wait_for(lambda sent=sent: any(
            r.method == "PATCH" and isinstance(r.json, dict) and r.json.get("status") == "error"
            for r in taskbadger_server.requests[sent:]) or None, timeout=60)  # a loaded CI run took over 20 s
    tb = task_of_job(taskbadger_server, job_id)
    assert (tb["status"], tb["data"]["attempts"]) == ("error", 3), tb["data"]
    assert len(tasks_for(taskbadger_server, job_id)) == 1, tasks_for(taskbadger_server, job_id)


def test_a_failed_job_its_worker_tracks_retried_by_hand_is_one_task(taskbadger_server, app, worker, tmp_path):
    """Deferred by a process without tracking (this one, not configured): the worker created the task at the first
    run, which ended ``error``; the run after a retry by hand created a second task (its lookup took up only a
    task still open), and the first stayed ``error`` for a job that succeeded."""
    job_id = tasks.flaky.configure(queue=worker.queue).defer(path=str(tmp_path / "count"), fail_times=4)
    assert wait_job(app, job_id).status == "failed"
    failed = task_of_job(taskbadger_server, job_id)  # its error reached the API
    retried_by_hand(app, job_id)
    assert wait_job(app, job_id, statuses=("succeeded", "failed")).status == "succeeded"
    tb = task_of_job(taskbadger_server, job_id, statuses=("success",))
    assert [t["id"] for t in tasks_for(taskbadger_server, job_id)] == [failed["id"]], tasks_for(taskbadger_server,
                                                                                               job_id)
    assert not {"exception", "exception_type"} & set(tb["data"] or {}), tb["data"]
    assert tb["data"]["attempts"] == 5


@pytest.mark.parametrize("fail_times", [1, 10])
def test_a_retried_job_its_worker_tracks_is_one_task(taskbadger_server, app, worker, tmp_path, fail_times):
    """Deferred by a process without tracking (this one, not configured): the worker creates the task at the
    first attempt and takes it up at each retry."""
    job_id = tasks.flaky.configure(queue=worker.queue).defer(path=str(tmp_path / "count"), fail_times=fail_times)
    job = wait_job(app, job_id)
    assert job.status == ("succeeded" if fail_times == 1 else "failed")
    tb = task_of_job(taskbadger_server, job_id)
    assert tb["status"] == ("success" if fail_times == 1 else "error")
    assert len(tasks_for(taskbadger_server, job_id)) == 1, tasks_for(taskbadger_server, job_id)
    if fail_times == 10:
        assert tb["data"]["attempts"] == 4


def test_a_retry_takes_up_its_task_when_before_create_renames_it(taskbadger_server):
    """The retry's lookup matches the name it would create the task with; a ``before_create`` hook may have
    renamed it, so then the job id alone is matched (as before the names were compared)."""
    from taskbadger import lifecycle

    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url,
                    before_create=lambda body: {**body, "name": "[prod] " + body["name"]})

    def attempt(number: int) -> lifecycle.AtStart:
        return lifecycle.create_at_start("42", {}, None, lambda: lifecycle.create_fields("app.tasks.sync", {}, None,
                                                                                         "42", "default"),
                                         number > 1, True, True)

    first = attempt(1)
    lifecycle.back_to_pending(lifecycle.Run("42", first.meta))
    assert taskbadger.flush(10)
    second = attempt(2)
    assert second.meta is not None and second.meta.id == first.meta.id
    assert [t["name"] for t in taskbadger_server.tasks.values()] == ["[prod] app.tasks.sync"]


def test_a_job_whose_task_the_worker_does_not_know_ends_error(api, app, worker):
    """A typo in a task name, or a task removed in a deploy while its jobs were queued: Procrastinate fails the
    job before any worker middleware runs, and its task, created when it was deferred, stayed pending."""
    job_id = app.configure_task("reports.removed_in_the_last_deploy", queue=worker.queue).defer(month=11)
    assert wait_job(app, job_id).status == "failed"
    task = task_of_job(api, job_id)
    assert task["status"] == "error" and task["name"] == "reports.removed_in_the_last_deploy"
    assert task["data"]["exception_type"].endswith("TaskNotFound")
    assert "no task named 'reports.removed_in_the_last_deploy'" in task["data"]["exception"]


def test_a_retry_never_takes_up_another_databases_job_with_the_same_id(taskbadger_server, app, worker, tmp_path):
    """Job ids count up from 1 in each database: another app sharing the Task Badger project has its own
    job of this id. A retry looks its first attempt's task up by the job id; it took up the other job's
    ``pending`` task (which then said ``success`` for a job that never ran) and left its own ``pending``."""
    job_id = tasks.flaky_later.configure(queue=worker.queue).defer(path=str(tmp_path / "count"), fail_times=1)
    own = task_of_job(taskbadger_server, job_id, statuses=("pending",))  # the first attempt failed: back to pending
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url)
    other = taskbadger.create_task("billing.invoice", external_id=str(job_id))  # the other database's job
    assert wait_job(app, job_id).status == "succeeded"
    assert task_of_job(taskbadger_server, job_id)["id"] == own["id"]  # its own task, taken up, ends success
    assert taskbadger.get_task(other.id).status == "pending"  # the other job's, untouched


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_job_cancelled_before_it_starts_is_cancelled(api, app, dsn, worker, asynchronous):
    job_id = tasks.echo.configure(queue=worker.queue, schedule_in={"hours": 1}).defer(value="never")
    assert task_of_job(api, job_id, statuses=("pending",))
    if asynchronous:
        assert asyncio.run(_defer_async(app, dsn, lambda: app.job_manager.cancel_job_by_id_async(job_id)))
    else:
        assert app.job_manager.cancel_job_by_id(job_id)
    assert job_of(app, job_id).status == "cancelled"
    assert task_of_job(api, job_id)["status"] == "cancelled"


@pytest.mark.parametrize("task", [tasks.sync_abortable, tasks.async_abortable], ids=["sync", "async"])
def test_an_aborted_job_is_cancelled(api, app, worker, task, tmp_path):
    started = tmp_path / "started"
    job_id = task.configure(queue=worker.queue).defer(path=str(started))
    api.wait_for(lambda: started.exists() or None, timeout=20)
    assert app.job_manager.cancel_job_by_id(job_id, abort=True)
    assert wait_job(app, job_id).status == "aborted"
    tb = task_of_job(api, job_id)
    assert tb["status"] == "cancelled"
    assert tb["data"]["abort_reason"] == "user_request"


def test_a_job_aborted_while_its_worker_creates_its_task_is_cancelled(taskbadger_server, app, dsn, tmp_path):
    """Deferred by a process without tracking: its worker creates the task as the job starts. An async job aborted
    while that create waited for the API (here a slow one) was cancelled inside the middleware, before it knew the
    task; the create went on in its thread and the task stayed ``processing`` for ever (the job: ``aborted``)."""
    worker = start(taskbadger_server, dsn, extra_env={"TASKBADGER_PUBLISH_BUDGET": "5"})
    try:
        taskbadger_server.set_latency(1.5, method="POST")  # the worker's create (within its budget)
        job_id = tasks.async_abortable.configure(queue=worker.queue).defer(path=str(tmp_path / "started"))
        wait_job(app, job_id, statuses=("doing",))
        assert app.job_manager.cancel_job_by_id(job_id, abort=True)
        assert wait_job(app, job_id).status == "aborted"
        assert not (tmp_path / "started").exists()  # aborted before its body ran
        tb = task_of_job(taskbadger_server, job_id, timeout=10)
    finally:
        stop(worker)
    assert tb["status"] == "cancelled" and tb["data"]["abort_reason"] == "user_request"
    assert tb["end_time"] and len(tasks_for(taskbadger_server, job_id)) == 1


# -- which tasks ------------------------------------------------------------------------------------------


def test_builtin_tasks_are_never_tracked(api, app, worker):
    job_id = app.configure_task("builtin:procrastinate.builtin_tasks.remove_old_jobs", queue=worker.queue).defer(
        max_hours=1000
    )
    assert wait_job(app, job_id).status == "succeeded"
    assert tasks_for(api, job_id) == []
    assert all(not t["name"].startswith(("builtin:", "procrastinate.")) for t in api.tasks.values())


def test_excluded_tasks_are_not_tracked(api, app, worker):
    job_id = tasks.skipped_cleanup.configure(queue=worker.queue).defer()
    assert wait_job(app, job_id).status == "succeeded"
    assert tasks_for(api, job_id) == []


def test_includes_and_excludes_match_whole_names_and_excludes_win(app):
    system = ProcrastinateSystemIntegration(app, includes=[r"bp:.*", "echo"], excludes=[r"bp:l.*"])
    assert system.track_task("echo") and not system.track_task("echo2")  # fullmatch, not search
    assert not system.track_task("bp:later")  # excludes win
    assert system.track_task("bp:other")
    assert not system.track_task("builtin:procrastinate.builtin_tasks.remove_old_jobs")
    assert not system.track_task("procrastinate.builtin_tasks.remove_old_jobs")


def test_a_task_registered_after_the_integration_is_tracked(api, app, worker):
    assert "bp:later" in app.tasks
    job_id = app.tasks["bp:later"].configure(queue=worker.queue).defer(value="late")
    assert wait_job(app, job_id).status == "succeeded"
    assert task_of_job(api, job_id)["name"] == "bp:later"


def test_track_options_and_recorded_kwargs(api, app, worker):
    job_id = tasks.manual.configure(queue=worker.queue).defer(value="m")
    assert wait_job(app, job_id).status == "succeeded"
    tb = task_of_job(api, job_id)
    assert (tb["name"], tb["value_max"], tb["tags"]) == ("manual report", 10, {"env": "test"})
    assert tb["data"]["k"] == "v"
    assert tb["data"]["procrastinate_task_kwargs"] == {"value": "m"}  # the official SDK's key


def test_track_refuses_unknown_and_invalid_options():
    with pytest.raises(TypeError):
        track(colour="red")
    with pytest.raises(ValueError):
        track(value_max=-1)


@pytest.mark.parametrize("bare", [True, False], ids=["@track", "@track(...)"])
def test_track_below_app_task_is_an_error_saying_where_it_goes(bare):
    """Below ``@app.task``, ``track`` got the plain function: its options were set where nothing reads them, and
    the task was silently untracked (``AUTO_TRACK`` off) or tracked without them."""
    own = procrastinate.App(connector=InMemoryConnector())
    with pytest.raises(TypeError, match=r"above @app\.task"):
        @own.task(name="wrong_order")
        @(track if bare else track(name="wrong order"))
        def wrong_order() -> None:
            return None
    assert getattr(own.tasks.get("wrong_order"), "_taskbadger_options", None) is None


def _run_in_memory(app) -> None:
    """Every job queued on ``app`` (an ``InMemoryConnector``), run by a worker in this process."""
    app.run_worker(wait=False, install_signal_handlers=False, listen_notify=False)


def _taskbadger_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "taskbadger"]


def test_a_track_task_deferred_and_run_without_init_says_once_to_call_it(monkeypatch, caplog):
    """The key exported, ``taskbadger.init()`` never called (docs/procrastinate.md's first example left it out):
    the jobs went untracked, ``current_task()`` None in the body, and neither the process that deferred them nor
    the worker said a word."""
    monkeypatch.setenv("TASKBADGER_API_KEY", "a-key")
    own = procrastinate.App(connector=InMemoryConnector())
    seen = []

    @track
    @own.task(name="not_initialised")
    def not_initialised() -> None:
        seen.append(current_task())

    caplog.set_level(logging.WARNING, logger="taskbadger")
    with own.open():
        not_initialised.defer()
        not_initialised.defer()
        _run_in_memory(own)
    assert seen == [None, None]
    how = ("TASKBADGER_API_KEY is set, but nothing called taskbadger.init() in {} (call it where the Procrastinate "
           "app is made, or add taskbadger_django to INSTALLED_APPS)")
    assert _taskbadger_lines(caplog) == [
        "Task Badger: 'not_initialised' (@track) was deferred untracked: " + how.format("this process"),
        "Task Badger: 'not_initialised' (@track) was run untracked: " + how.format("this worker"),
    ]


def test_a_worker_without_init_running_a_job_its_publisher_tracked_says_its_task_stays_pending(caplog):
    own = procrastinate.App(connector=InMemoryConnector())
    install(own)
    kwargs_seen = []

    @own.task(name="published_tracked")
    def published_tracked(**kwargs) -> None:
        kwargs_seen.append(kwargs)

    caplog.set_level(logging.WARNING, logger="taskbadger")
    with own.open():
        published_tracked.defer(**{TB_TASK_ID_KWARG: "dJPiJlp59t4rdu4cIp0gS10ahZ"})  # as a tracking publisher does
        _run_in_memory(own)
    assert kwargs_seen == [{}]
    (line,) = _taskbadger_lines(caplog)
    assert line.startswith("Task Badger: this worker runs job 'published_tracked', which its publisher tracks (Task "
                           "Badger task 'dJPiJlp59t4rdu4cIp0gS10ahZ'), untracked: Task Badger is not configured"), line
    assert "Such tasks stay pending in Task Badger" in line


def test_current_task_in_the_body(api, app, worker):
    job_id = tasks.progress.configure(queue=worker.queue).defer(total=7)
    assert wait_job(app, job_id).status == "succeeded"  # the body asserts current_task() is its task
    tb = task_of_job(api, job_id)
    assert (tb["value"], tb["value_max"], tb["data"]["seen"]) == (7, 7, "yes")


def test_current_task_in_a_sync_body_makes_no_request_and_merges_into_the_tasks_data(api, app, worker, tmp_path):
    """The job carries only its task's id: ``current_task()`` fetched the task (a GET on the job's critical path, 0.8 s
    at 0.8 s of latency) although nothing in the body needed its fields. A merge into the task's data is made against
    the data the task has (from ``@track(data=...)``) when it is sent."""
    api.set_latency(0.4, method="GET")
    out = tmp_path / "body.json"
    job_id = tasks.sync_progress.configure(queue=worker.queue).defer(path=str(out))
    assert wait_job(app, job_id).status == "succeeded"
    body = json.loads(out.read_text())
    assert body["asked"] < 0.4 and body["progressed"] < 0.4, body  # waited for no GET
    tb = task_of_job(api, job_id)
    progress = next(r for r in api.requests if r.task_id == tb["id"] and r.method == "PATCH"
                    and isinstance(r.json, dict) and r.json.get("value") == 1)
    assert not [r for r in api.requests if r.task_id == tb["id"] and r.method == "GET"
                and r.timestamp < progress.timestamp]
    assert body["data"] == {"origin": "deferred", "seen": "sync"}
    assert (tb["status"], tb["data"], tb["value"], tb["value_max"]) == (
        "success", {"origin": "deferred", "seen": "sync"}, 2, 2)


def test_a_job_deferred_from_a_child_job_nests_under_the_root(taskbadger_server, app, worker):
    """Tasks nest one level deep: a job deferred from the body of a job that was itself deferred from a tracked job
    is the root's child too. The job carries only its task's id, so the child's run did not know its own parent: the
    grandchild's create named the child, the API refused it (400), and its worker created it with no parent. (Deferred
    from a process that does not track: the worker tracks all three, and nothing here depends on this process's
    delivery.)"""
    api = taskbadger_server
    root_id = tasks.nested.configure(queue=worker.queue).defer(levels=2, queue=worker.queue)

    def three_ended():  # polls the stand-in under a deadline
        found = [t for t in api.tasks.values() if t["name"] == "nested" and t["queue"] == worker.queue]
        return found if len(found) == 3 and all(t["status"] == "success" for t in found) else None

    root, child, grandchild = sorted(api.wait_for(three_ended, timeout=30), key=lambda t: int(t["external_id"]))
    assert root["external_id"] == str(root_id) and root["parent"] is None
    assert (child["parent"], grandchild["parent"]) == (root["id"], root["id"])
    assert not [r for r in api.requests if r.status == 400], [(r.method, r.path) for r in api.requests
                                                               if r.status == 400]


def test_heartbeat_pings_while_the_job_runs(api, app, worker):
    job_id = tasks.slow.configure(queue=worker.queue).defer(seconds=2)
    assert wait_job(app, job_id).status == "succeeded"
    tb = task_of_job(api, job_id)
    patches = [r for r in api.requests if r.task_id == tb["id"] and r.method == "PATCH"]
    final = [r for r in patches if isinstance(r.json, dict) and r.json.get("status") == "success"]
    during = [r for r in patches if r.timestamp < final[0].timestamp]
    # pings every 0.2 s for 2 s (queued pings of one task may merge on a loaded machine: at least a few)
    assert len(during) >= 3, [r.json for r in patches]
    assert tb["stale_timeout"] == 1  # twice the interval, rounded up


# -- mixed deployments ----------------------------------------------------------------------------------


def test_a_job_deferred_by_the_official_sdk_is_understood(api, app, worker):
    """The official SDK defers with ``__taskbadger_task_id__`` = the id of the task it created pending."""
    created = taskbadger.Task.create("deferred elsewhere", status="pending")
    job_id = tasks.kwargs_seen.configure(queue=worker.queue).defer(value=1, **{TB_TASK_ID_KWARG: created.id})
    assert wait_job(app, job_id).status == "succeeded"  # the function never received the kwarg
    assert api.get_task(created.id)["status"] == "success" or api.wait_for(
        lambda: api.get_task(created.id)["status"] == "success" or None
    )
    assert job_of(app, job_id).task_kwargs[TB_TASK_ID_KWARG] == created.id


def test_a_bad_task_id_in_the_kwargs_never_breaks_the_job(api, app, worker):
    job_id = tasks.kwargs_seen.configure(queue=worker.queue).defer(value=1, **{TB_TASK_ID_KWARG: {"x": "y"}})
    assert wait_job(app, job_id).status == "succeeded"
    assert task_of_job(api, job_id)["status"] == "success"  # tracked by the worker, with a task of its own


# -- periodic jobs ------------------------------------------------------------------------------------------


def test_periodic_jobs_carry_their_monitor(taskbadger_server, dsn, app):
    monitor = str(uuid.uuid4())
    queue = f"periodic-{uuid.uuid4().hex[:6]}"
    worker = start(
        taskbadger_server,
        dsn,
        queue=queue,
        extra_env={"TB_PRO_PERIODIC": "1", "TB_PRO_QUEUE": queue, "TB_PRO_MONITORS": json.dumps({"tick": monitor})},
    )
    try:
        task = taskbadger_server.wait_for(
            lambda: next(
                (t for t in taskbadger_server.tasks.values() if t["name"] == "tick" and t["status"] == "success"), None
            ),
            timeout=20,
        )
    finally:
        stop(worker)
    assert task["monitor_id"] == monitor
    assert task["queue"] == queue and task["external_id"]
