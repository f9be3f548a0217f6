"""The tests of test_django_tasks.py on the RQ backend (``manage.py rqworker`` on Redis db 10): the same tests, in
a module of their own so that the test run's parallel workers (one module each) run them beside the database
backends'."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest

from . import test_django_tasks as base
from .djt import Project
from .services import postgres_database, postgres_url, require
from .test_django_tasks import *  # noqa: F403  (the tests, and the fixtures they use)
from .test_django_tasks import by_external_id, wait_final, wait_result


@pytest.fixture(scope="module", params=["rq"])
def project(request, taskbadger_server_session):
    yield from base.backend_project(request.param, taskbadger_server_session)


# -- a job enqueued in a transaction that stays open -----------------------------------------------------------------


@pytest.fixture(params=["postgresql", "sqlite"])
def held_project(request, project, taskbadger_server_session):
    """On PostgreSQL, a project of its own with its worker; on SQLite, the module's."""
    if request.param == "sqlite":
        yield project
        return
    require("redis")
    with contextlib.ExitStack() as stack:
        url = postgres_url(stack.enter_context(postgres_database("taskbadger_djtrq")))
        project = Project(taskbadger_server_session, "rq", url).migrate()
        stack.callback(project.stop)
        project.start_worker()
        yield project


def test_a_job_enqueued_in_a_transaction_that_stays_open_runs_meanwhile_as_its_task(held_project, taskbadger_server):
    """A view enqueues inside ``transaction.atomic()`` and goes on working: RQ's job is in Redis and its worker starts
    it at once. The worker's claim of the entry (an INSERT of the row the open transaction wrote) waited on that
    transaction's lock until it ended (PostgreSQL: the job and every job behind it held for the whole transaction;
    SQLite: its busy timeout, and a warning to run ``migrate``). It waits at most the publisher's budget, then takes up
    the task the enqueue created: the job finishes while the transaction is still open, as one task, which ends
    ``success``; the transaction then commits."""
    enqueued, hold = held_project.enqueue("add", 2, 3, hold_until_finished=True)  # commits after the hold
    assert hold["hold"] == "finished", (hold, held_project.log()[-3000:])  # not the hold's deadline (30 s)
    assert wait_result(held_project, enqueued["id"], "SUCCESSFUL")["return_value"] == 5
    (task,) = wait_final(taskbadger_server, enqueued["id"], "success")
    assert task["start_time"] and "publish_error" not in (task["data"] or {})
    assert len([r for r in taskbadger_server.requests if r.method == "POST"]) == 1  # the enqueue's, taken up
    assert "manage.py migrate" not in held_project.log()
    (after,) = held_project.enqueue("add", 1, 1)  # the entry committed with the transaction: tracking goes on
    wait_final(taskbadger_server, after["id"], "success")


# -- RQ's own ways for a job to end without its work horse reporting it --------------------------------------------
# (the project's settings name taskbadger.django_tasks.rq.Worker in RQ["WORKER_CLASS"], as docs/django-tasks.md says)

REDIS_URL = os.environ.get("DJT_REDIS_URL", "redis://127.0.0.1:6379/10")  # the settings' default (db 10)


@pytest.fixture
def rq_project(taskbadger_server_session):
    """A project of its own with its own queue: these tests kill work horses and stop workers."""
    require("redis")
    project = Project(taskbadger_server_session, "rq").migrate()
    try:
        yield project
    finally:
        project.stop()


def _running(project, server, pid_file):
    """Once the job's work horse runs the body (its pid) and its task is ``processing``: the horse's pid."""
    deadline = time.monotonic() + 30
    while not pid_file.exists():
        assert time.monotonic() < deadline, project.log()[-3000:]
        time.sleep(0.05)  # polling for the file the task's body writes, under the deadline above
    server.wait_for(lambda: [t for t in server.tasks.values() if t["status"] == "processing"] or None, timeout=30)
    return int(pid_file.read_text())


def test_a_work_horse_killed_by_sigkill_ends_its_task_in_error(rq_project, taskbadger_server):
    """The kernel's OOM killer (or ``kill -9``, or RQ itself at the job's timeout + 60 s) kills the work horse: RQ's
    main process fails the job without any callback or signal, and its task stayed ``processing`` for ever."""
    rq_project.start_worker()
    pid_file = rq_project.dir / "horse.pid"
    (enqueued,) = rq_project.enqueue("sleepy", 120, str(pid_file))
    os.kill(_running(rq_project, taskbadger_server, pid_file), signal.SIGKILL)
    result = wait_result(rq_project, enqueued["id"], "FAILED")
    assert result["errors"] == ["builtins.Exception"]  # RQ's record: "Work-horse terminated unexpectedly"
    (task,) = wait_final(taskbadger_server, enqueued["id"], "error")
    assert task["end_time"]
    assert task["data"]["exception_type"] == "taskbadger.django_tasks.events.WorkHorseLost"
    assert "killed by SIGKILL" in task["data"]["exception"]
    assert task["data"]["args"] == [120, str(pid_file)]  # what its data held stays
    (after,) = rq_project.enqueue("add", 1, 2)  # the worker goes on, and so does tracking
    wait_final(taskbadger_server, after["id"], "success")


def test_a_job_stopped_on_request_ends_its_task_cancelled(rq_project, taskbadger_server):
    """RQ's stop-job command kills the work horse and marks the job stopped: its task stayed ``processing``."""
    import redis
    from rq.command import send_stop_job_command

    rq_project.start_worker()
    pid_file = rq_project.dir / "horse.pid"
    (enqueued,) = rq_project.enqueue("sleepy", 120, str(pid_file))
    _running(rq_project, taskbadger_server, pid_file)
    send_stop_job_command(redis.Redis.from_url(REDIS_URL), enqueued["id"])
    wait_result(rq_project, enqueued["id"], "FAILED")  # django-tasks-rq shows a stopped job as FAILED
    (task,) = wait_final(taskbadger_server, enqueued["id"], "cancelled")
    assert "stop-job" in task["data"]["rq_stopped"] and task["end_time"]


def test_a_job_abandoned_by_a_cold_shutdown_ends_in_error_when_rq_fails_it(rq_project, taskbadger_server):
    """Two SIGTERMs (a cold shutdown) kill the work horse mid-task and the worker exits: RQ leaves the job in its
    started jobs until a worker cleans them up (once the horse's heartbeat has expired) and fails it, running its
    failure callback in that worker's main process. The task stayed ``processing`` for ever; it ends ``error``."""
    import redis
    from rq.registry import StartedJobRegistry

    worker = rq_project.start_worker()
    pid_file = rq_project.dir / "horse.pid"
    (enqueued,) = rq_project.enqueue("sleepy", 120, str(pid_file))
    _running(rq_project, taskbadger_server, pid_file)
    worker.send_signal(signal.SIGTERM)
    first = time.monotonic()
    deadline = time.monotonic() + 30
    while "warm shut down requested" not in rq_project.log():
        assert time.monotonic() < deadline, rq_project.log()[-3000:]
        time.sleep(0.05)  # polling the worker's log for its warm shutdown, under the deadline above
    # RQ ignores a second signal within 1 s of the first (a pool's duplicate): the second comes after that second
    time.sleep(max(0.0, first + 1.2 - time.monotonic()))
    worker.send_signal(signal.SIGTERM)
    # (RQ's own worker with redis-py 8.2 sometimes took ~60 s to leave its pub/sub channel as it exits; ours does not:
    # test_a_warm_shutdown_ends_the_worker_at_once)
    assert worker.wait(90) == 0 and "cold shut down" in rq_project.log()
    assert wait_result(rq_project, enqueued["id"], "RUNNING")  # RQ's record: still started
    (task,) = by_external_id(taskbadger_server, enqueued["id"])
    assert task["status"] == "processing"
    # the horse's heartbeat expires (90 s): its job's entry in the started jobs is due for clean-up now
    connection = redis.Redis.from_url(REDIS_URL)
    registry = StartedJobRegistry(rq_project.queue, connection=connection)
    for member in connection.zrange(registry.key, 0, -1):
        connection.zadd(registry.key, {member: 1})
    rq_project.start_worker()  # a worker cleans its queues' registries when it starts
    result = wait_result(rq_project, enqueued["id"], "FAILED")
    assert result["errors"] == ["rq.exceptions.AbandonedJobError"]
    (task,) = wait_final(taskbadger_server, enqueued["id"], "error")
    assert task["data"]["exception_type"] == "taskbadger.django_tasks.events.WorkHorseLost"
    assert "abandoned" in task["data"]["exception"] and task["end_time"]


def test_the_job_timeout_strikes_even_during_an_update_from_the_body(taskbadger_server_session, taskbadger_server):
    """RQ stops a job at its timeout by raising ``JobTimeoutException`` from a SIGALRM handler, wherever the job is:
    during ``tb.update()`` with a slow API, tracking caught it as one of its own errors ("an update ... was not
    taken and is dropped; the job goes on"). The job ran on, past its timeout, and ended SUCCESSFUL. It fails with
    ``JobTimeoutException``, as it would untracked, and its task ends ``error`` with it."""
    require("redis")
    project = Project(taskbadger_server_session, "rq", DJT_RQ_TIMEOUT="2").migrate()
    try:
        project.start_worker()
        taskbadger_server.set_latency(0.4, method="PATCH")  # the body's updates take 0.4 s each: 15 take 6 s
        (enqueued,) = project.enqueue("updates_data", 15)
        result = wait_result(project, enqueued["id"], "FAILED")
        assert result["errors"] == ["rq.timeouts.JobTimeoutException"]
        (task,) = wait_final(taskbadger_server, enqueued["id"], "error")
        assert task["data"]["exception_type"] == "rq.timeouts.JobTimeoutException"
        assert "was not taken and is dropped" not in project.log()
    finally:
        taskbadger_server.clear_faults()
        project.stop()


def test_a_job_of_a_backend_task_badger_does_not_know_runs_as_its_enqueues_task_after_a_rollback(
        taskbadger_server_session):
    """A third party's backend keeps its jobs in a broker, apart from the database (here Redis, through RQ's backend
    used by one of its own): a view that enqueues then raises leaves the job, which runs. Any backend the integration
    did not know was watched as if its job rolled back with the transaction: the enqueue's task was closed
    `cancelled` ("rolled back"), and the worker, finding no entry, made a second task for the job, which ended
    `success`."""
    require("redis")
    server = taskbadger_server_session
    project = Project(server, "broker").migrate()
    try:
        (enqueued,) = project.enqueue("add", 2, 3, rollback=True)
        project.start_worker()
        assert wait_result(project, enqueued["id"], "SUCCESSFUL")["return_value"] == 5
        server.wait_for(lambda: [t for t in by_external_id(server, enqueued["id"]) if t["status"] == "success"] or None,
                        timeout=30)
        (task,) = by_external_id(server, enqueued["id"])
        assert "publish_error" not in (task["data"] or {}) and task["start_time"]
    finally:
        project.stop()
