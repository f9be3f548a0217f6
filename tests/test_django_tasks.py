"""django.tasks tasks tracked end to end, per backend, with real processes: the web process's side
(``manage.py djt enqueue``) and a real worker (``manage.py db_worker`` on SQLite and on PostgreSQL,
``manage.py rqworker`` on Redis db 10), against the stand-in API over HTTP.

What a user relies on: ``enqueue()`` makes one ``pending`` task (name = module path, external_id = the
TaskResult id, queue, tags, monitor, recorded arguments); the worker makes it ``processing`` then
``success`` or ``error`` with the exception; ``taskbadger.current_task()`` is that task in the body; a run
again of the same TaskResult is the same task; opted-out and excluded tasks create nothing; a worker
tracks a task its publisher could not. The TaskResult is what it would be untracked.
"""

from __future__ import annotations

import pytest

from .djt import Project
from .services import postgres_database, postgres_url, require

NAME = "tests.django_tasks_project.tasks."
#: The RQ backend runs the same tests from test_django_tasks_rq.py: a module of its own, so that the test run's
#: parallel workers (one module each) take it beside the database backends'.
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="module", params=BACKENDS)
def project(request, taskbadger_server_session):
    yield from backend_project(request.param, taskbadger_server_session)


def backend_project(backend, taskbadger_server_session):
    if backend == "postgresql":
        with postgres_database("taskbadger_djt") as database:
            yield from _project(taskbadger_server_session, "db", postgres_url(database))
        return
    if backend == "rq":
        require("redis")
        yield from _project(taskbadger_server_session, "rq")
        return
    yield from _project(taskbadger_server_session, "db")


def _project(server, backend, database_url=None):
    project = Project(server, backend, database_url).migrate()
    try:
        yield project
    finally:
        project.stop()


@pytest.fixture
def worker(project):
    """The module's worker, started on first use (a test may enqueue before any worker runs)."""
    if not project.workers:
        project.start_worker()
    return project


def by_external_id(server, result_id):
    return [t for t in server.tasks.values() if t["external_id"] == result_id]


def wait_final(server, result_id, status, timeout=30.0):
    def found():
        tasks = by_external_id(server, result_id)
        return tasks if tasks and tasks[0]["status"] == status else None

    try:
        tasks = server.wait_for(found, timeout=timeout)
    except AssertionError:
        raise AssertionError(f"task of {result_id} not {status}: {by_external_id(server, result_id)}") from None
    assert len(tasks) == 1, (f"{len(tasks)} tasks for {result_id}: {tasks}\n" + "\n".join(
        f"{r.method} {r.path} {r.json} -> {r.status}" for r in server.requests if r.method != "GET")[-6000:])
    return tasks


def wait_result(project, result_id, status, timeout=30.0):
    result = project.result(result_id, until=status, timeout=timeout)  # polled in one process (a Django start each)
    assert result["status"] == status, (result, project.log()[-3000:])
    return result


def test_enqueue_creates_one_pending_task_then_the_worker_ends_it(project, taskbadger_server):
    (enqueued,) = project.enqueue("add", 2, 3)
    if not project.workers:  # nothing runs it yet: it is pending, with what the issue lists
        (task,) = by_external_id(taskbadger_server, enqueued["id"])
        assert task["status"] == "pending"
    project.start_worker() if not project.workers else None
    (task,) = wait_final(taskbadger_server, enqueued["id"], "success")
    assert task["name"] == NAME + "add"
    assert task["queue"] == project.queue
    assert task["tags"] == {"environment": "test"}
    assert task["monitor_id"] == "0b0b5c86-4a43-4c3c-9a53-7d3e6f1c2a12"
    assert task["data"] == {"args": [2, 3], "kwargs": {}}  # RECORD_TASK_ARGS
    assert task["start_time"] and task["end_time"] and task["start_time"] <= task["end_time"]
    result = wait_result(project, enqueued["id"], "SUCCESSFUL")
    assert result["return_value"] == 5 and result["errors"] == []
    creates = [r for r in taskbadger_server.requests if r.method == "POST"]
    assert len(creates) == 1, "one task per TaskResult"


def test_a_task_that_raises_ends_in_error_with_its_exception(worker, taskbadger_server):
    (enqueued,) = worker.enqueue("boom", "the invoice is missing")
    (task,) = wait_final(taskbadger_server, enqueued["id"], "error")
    assert task["data"]["exception_type"] == "ValueError"
    assert "the invoice is missing" in task["data"]["exception"]
    assert "Traceback" in task["data"]["exception"]
    assert task["end_time"]
    result = wait_result(worker, enqueued["id"], "FAILED")
    assert result["errors"] == ["builtins.ValueError"]


def test_current_task_in_the_body_is_the_tracked_task(worker, taskbadger_server):
    (enqueued,) = worker.enqueue("progress", 5)
    (task,) = wait_final(taskbadger_server, enqueued["id"], "success")
    result = wait_result(worker, enqueued["id"], "SUCCESSFUL")
    assert result["return_value"] == {"task_id": task["id"]}
    assert (task["value"], task["value_max"]) == (5, 5)  # progress reported, then complete


def test_a_run_again_of_the_same_result_is_the_same_task(worker, taskbadger_server):
    (enqueued,) = worker.enqueue("fails_first")
    (task,) = wait_final(taskbadger_server, enqueued["id"], "error")
    first_start = task["start_time"]
    assert (task["value"], task["value_max"]) == (1, 4)
    wait_result(worker, enqueued["id"], "FAILED")
    worker.rerun(enqueued["id"])
    (task,) = wait_final(taskbadger_server, enqueued["id"], "success")
    assert task["start_time"] == first_start  # the first start is kept
    assert (task["value"], task["value_max"]) == (4, 4)  # the first attempt's progress, completed
    assert "exception" not in task["data"] and "exception_type" not in task["data"]  # nor its error
    assert task["data"]["args"] == []  # what the task's data held before stays
    result = wait_result(worker, enqueued["id"], "SUCCESSFUL")
    assert len(result["worker_ids"]) == 2
    if worker.backend == "db":  # django-tasks-rq 0.12 reports the first attempt's return value (None) here
        assert result["return_value"] == 2
    assert len([r for r in taskbadger_server.requests if r.method == "POST"]) == 1


@pytest.mark.parametrize("task_name", ["opted_out", "untracked_by_rule"])
def test_opted_out_and_excluded_tasks_create_nothing(worker, taskbadger_server, task_name):
    (enqueued,) = worker.enqueue(task_name)
    result = wait_result(worker, enqueued["id"], "SUCCESSFUL")
    assert result["return_value"] == "ran"
    assert by_external_id(taskbadger_server, enqueued["id"]) == []


def test_track_task_options(worker, taskbadger_server):
    (enqueued,) = worker.enqueue("custom")
    (task,) = wait_final(taskbadger_server, enqueued["id"], "success")
    assert task["name"] == "Custom invoice run"
    assert task["value_max"] == 10
    assert task["tags"]["team"] == "billing"
    assert task["data"]["kind"] == "nightly"
    assert wait_result(worker, enqueued["id"], "SUCCESSFUL")["return_value"] == "Custom invoice run"


def test_the_worker_tracks_a_task_its_publisher_did_not(worker, taskbadger_server):
    (enqueued,) = worker.enqueue("add", 1, 1, TASKBADGER_API_KEY="")  # a web process without a key
    (task,) = wait_final(taskbadger_server, enqueued["id"], "success")
    assert task["name"] == NAME + "add" and task["start_time"]
    assert wait_result(worker, enqueued["id"], "SUCCESSFUL")["return_value"] == 2
    assert len([r for r in taskbadger_server.requests if r.method == "POST"]) == 1


def test_an_enqueue_rolled_back_with_its_transaction_is_cancelled_not_left_pending(worker, taskbadger_server):
    """Enqueued inside ``transaction.atomic()`` that rolls back: the database backend's row goes with the
    transaction, so the task never runs. Its Task Badger task, created at the enqueue, stayed ``pending``
    for ever; it ends ``cancelled`` and says why. (RQ's job is in Redis whatever the transaction does.)"""
    if worker.backend != "db":
        pytest.skip("only the database backend's enqueue rolls back with the transaction")
    (enqueued,) = worker.enqueue("add", 2, 3, rollback=True)
    (task,) = wait_final(taskbadger_server, enqueued["id"], "cancelled")
    assert task["data"]["publish_error"] == "the transaction that enqueued it was rolled back"
    (kept,) = worker.enqueue("add", 4, 5)  # one that commits runs as before
    wait_final(taskbadger_server, kept["id"], "success")
    # committed, but an on_commit hook before ours raised, so Django dropped ours uncalled: not a rollback
    (committed,) = worker.enqueue("add", 6, 7, failing_hook=True)
    (task,) = wait_final(taskbadger_server, committed["id"], "success")
    assert "publish_error" not in (task["data"] or {})
    assert not [r for r in taskbadger_server.requests if r.method == "PATCH" and r.path.endswith(f"/{task['id']}/")
                and (r.json or {}).get("status") == "cancelled"]


def test_a_task_due_after_a_month_runs_as_the_task_its_enqueue_created(worker, taskbadger_server):
    """``run_after`` a month ahead (a reminder in six weeks): the task waits ``pending``, and when it is due the
    worker runs it as that task. The entry of a task that had not run was purged after 30 days as if the task
    never would: the worker created a second task for the TaskResult, and the first stayed ``pending`` for ever
    (the one the page that enqueued it shows)."""
    if worker.backend != "db" or not worker.env["DATABASE_URL"].startswith("sqlite"):
        pytest.skip("the database backend's run_after, on SQLite (the purge is ORM code: one database is enough)")
    (deferred,) = worker.enqueue("add", 1, 2, run_after_days=32)
    (task,) = by_external_id(taskbadger_server, deferred["id"])
    assert task["status"] == "pending"
    worker.age(deferred["id"], 31)  # a month passes
    worker.enqueue("add", 3, 4)  # a process that enqueues purges the entries of tasks too old to have run
    assert wait_result(worker, deferred["id"], "READY")
    worker.age(deferred["id"], 1)  # the job is due now
    assert wait_result(worker, deferred["id"], "SUCCESSFUL")["return_value"] == 3
    taskbadger_server.wait_for(
        lambda: [t for t in by_external_id(taskbadger_server, deferred["id"]) if t["status"] == "success"] or None,
        timeout=30)
    assert [(t["id"], t["status"]) for t in by_external_id(taskbadger_server, deferred["id"])] == [
        (task["id"], "success")]


@pytest.mark.parametrize("hold", [False, True], ids=["worker-after", "worker-during"])
def test_an_rq_job_enqueued_in_a_transaction_that_rolls_back_runs_as_the_task_its_enqueue_created(
        worker, taskbadger_server, hold):
    """RQ's job is in Redis whatever the transaction does (a view under ``ATOMIC_REQUESTS`` that enqueues then
    raises): it runs. Its task was closed ``cancelled`` ("rolled back") and, the entry gone with the
    transaction, the worker created a second task for the job, which ended ``success``. One task, the one the
    enqueue created, that ends ``success``: whether the worker starts after the rollback, or while the
    transaction is still open (it waits on the entry's lock)."""
    if worker.backend != "rq":
        pytest.skip("the database backend's job rolls back with the transaction")
    (enqueued,) = worker.enqueue("add", 2, 3, rollback=True, hold_until_started=hold)
    assert wait_result(worker, enqueued["id"], "SUCCESSFUL")["return_value"] == 5
    # one create: at the enqueue (pending), or by the worker (processing) when it started the job before the
    # enqueue's task_enqueued receiver claimed it (RQ sends the signal after the job is in Redis: a CI run saw it)
    (created,) = [r for r in taskbadger_server.requests if r.method == "POST"]
    taskbadger_server.wait_for(
        lambda: [t for t in by_external_id(taskbadger_server, enqueued["id"]) if t["status"] == "success"] or None,
        timeout=30)
    (task,) = by_external_id(taskbadger_server, enqueued["id"])
    assert (task["status"], task["external_id"]) == ("success", enqueued["id"]) and task["start_time"]
    assert created.json["status"] in ("pending", "processing") and "publish_error" not in (task["data"] or {})
    assert len([r for r in taskbadger_server.requests if r.method == "POST"]) == 1
