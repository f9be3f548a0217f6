"""Celery with django-celery-results (``CELERY_RESULT_BACKEND = "django-db"``), as Django teams run it: ``.delay()``
inside the request's transaction (``ATOMIC_REQUESTS``, ``transaction.atomic()``), a real worker on the same
database (SQLite and PostgreSQL), the web process's side a real process too.

What a user relies on: the worker runs and stores the task's state while the request's transaction is still open,
as it does without Task Badger (it waited on the uncommitted ``PENDING`` row we wrote in that transaction, for as
long as the request ran, and on SQLite ended the task ``FAILURE``, "database is locked"); ``AsyncResult.get()``
gives the result; the ``TaskResult`` row (the Django admin's) ends with the task's state and result, not our id;
the Celery id still leads to the Task Badger task from another process once the transaction has committed; a
rolled back transaction, or a message the broker refused, leaves no row, as Celery alone; one write per publish.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import uuid

import pytest

from .conftest import start_worker, stop_worker
from .services import postgres_database, postgres_url
from .test_testproject import project_env
from .workers import INTERNAL_ERROR, ROOT

pytestmark = pytest.mark.integration

SETTINGS = "tests.celery_django_project.settings"
APP = "tests.celery_django_project.app"


def is_insert(query: str) -> bool:
    """Whether ``query`` writes a PENDING row (``INSERT ... ON CONFLICT DO NOTHING``, SQLite's ``INSERT OR IGNORE``)."""
    return query.startswith("INSERT") and '"django_celery_results_taskresult"' in query


def statements(queries: list[str]) -> list[str]:
    """The queries other than a transaction's ``BEGIN`` and ``COMMIT``."""
    return [q for q in queries if q not in ("BEGIN", "COMMIT")]


class Project:
    def __init__(self, server, database_url: str) -> None:
        self.server = server
        self.env = project_env(DJANGO_SETTINGS_MODULE=SETTINGS, DATABASE_URL=database_url,
                               TASKBADGER_HOST=server.url, TASKBADGER_API_KEY=server.api_key)

    def run(self, *args: str, timeout: float = 90.0) -> str:
        done = subprocess.run([sys.executable, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}"
        assert INTERNAL_ERROR not in done.stderr, done.stderr
        return done.stdout

    def publish(self, scenario: str, arg: str) -> dict:
        return json.loads(self.run("-m", "tests.celery_django_project.publish", scenario, arg).splitlines()[-1])

    def worker(self, **env: str):
        return start_worker(self.server, pool="prefork", concurrency=1, app=APP,
                            extra_env={k: v for k, v in {**self.env, **env}.items() if k.startswith(
                                ("DJANGO_", "DATABASE_", "TESTPROJECT_", "TB_"))})


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def project(request, taskbadger_server_session):
    if request.param == "postgresql":
        with postgres_database("taskbadger_dcr") as database:
            yield _migrated(taskbadger_server_session, postgres_url(database))
    else:
        yield _migrated(taskbadger_server_session, f"sqlite:///{tempfile.mkdtemp(prefix='tbdcr-')}/db.sqlite3")


def _migrated(server, database_url: str) -> Project:
    project = Project(server, database_url)
    project.run("manage.py", "migrate", "-v0")
    return project


@pytest.mark.parametrize("track_started", [False, True], ids=["", "track_started"])
def test_the_worker_stores_the_result_while_the_publishing_transaction_is_open(project, taskbadger_server,
                                                                                track_started):
    worker = project.worker(TB_TRACK_STARTED="1" if track_started else "0")
    try:
        seen = project.publish("in_transaction", worker.queue)
    finally:
        stop_worker(worker)
    # The worker did not wait for the request: its SUCCESS was there for others while the transaction was open
    # (it waited on our uncommitted row until the commit; on SQLite it could end FAILURE, "database is locked").
    assert seen["seen_while_open"] == ["SUCCESS", "5"], worker.log()[-3000:]
    assert seen["get"] == 5
    # The row the admin shows ends with the task's state and result; the commit's write did not hide it.
    assert seen["row"] == ["SUCCESS", "5"]
    # Nothing written in the user's transaction; one statement at its commit, which finds the worker's row.
    assert seen["publish_queries"] == []
    assert [q for q in statements(seen["commit_queries"]) if is_insert(q)] == statements(seen["commit_queries"])
    assert len(statements(seen["commit_queries"])) == 1
    task = taskbadger_server.wait_for_task(name="djangodb.add", status="success")
    assert task["id"] == seen["tb_id"] and task["external_id"] == seen["celery_id"]


def test_the_worker_stores_the_result_while_a_manual_transaction_is_open(project, taskbadger_server):
    """With autocommit off (``transaction.set_autocommit(False)``, no ``atomic()``), the PENDING row was written in
    the user's open transaction (there is no ``on_commit`` there): the worker waited on it until the commit (on
    SQLite: "database is locked"), as it did in ``atomic()`` before. Celery alone writes nothing at publish: nor do
    we, there."""
    worker = project.worker()
    try:
        seen = project.publish("autocommit_off", worker.queue)
    finally:
        stop_worker(worker)
    assert seen["seen_while_open"] == ["SUCCESS", "5"], worker.log()[-3000:]
    assert seen["publish_queries"] == []
    assert (seen["get"], seen["row"]) == (5, ["SUCCESS", "5"])
    assert taskbadger_server.wait_for_task(name="djangodb.add", status="success")


def test_a_publish_in_an_async_view_says_why_the_id_is_not_stored_and_what_to_do(project, taskbadger_server):
    """``.delay()`` in an async view: Django refuses a query on the event loop, and the publish logged "could not
    store the task id in the result backend: SynchronousOnlyOperation('You cannot call this from an async context -
    use a thread or sync_to_async.')", which reads as a fault in the user's code, every minute. Celery alone writes
    nothing at publish: nothing is attempted, and one line says what it means and how to have the id stored."""
    seen = project.publish("on_event_loop", f"q-nobody-{uuid.uuid4().hex[:8]}")
    assert seen["tb_id"] and seen["row"] is None
    [said] = seen["said"]
    assert "published on an event loop" in said and "sync_to_async(task.delay)" in said
    assert "SynchronousOnlyOperation" not in said


def test_the_celery_id_leads_to_the_task_from_another_process_once_committed(project, taskbadger_server):
    queue = f"q-nobody-{uuid.uuid4().hex[:8]}"  # no worker takes it: the rows stay as the publisher left them
    seen = project.publish("not_run", queue)
    assert seen["row_while_open"] is None  # (nobody else sees an uncommitted row)
    celery_id, tb_id, row = seen["committed"]
    assert tb_id and row[0] == "PENDING" and json.loads(row[1]) == {"taskbadger_task_id": tb_id}
    assert project.publish("lookup", celery_id) == {"tb_id": tb_id}
    # A rolled back transaction leaves no row, as Celery alone (its message went out all the same).
    celery_id, tb_id, row = seen["rolled_back"]
    assert tb_id and row is None
    assert project.publish("lookup", celery_id) == {"tb_id": None}
    # In autocommit, the row is written before the message leaves, in one statement.
    celery_id, tb_id, row = seen["autocommit"]
    assert tb_id and row[0] == "PENDING" and json.loads(row[1]) == {"taskbadger_task_id": tb_id}
    [statement] = statements(seen["autocommit_queries"])
    assert is_insert(statement)
    assert project.publish("lookup", celery_id) == {"tb_id": tb_id}


def test_a_task_its_worker_creates_is_marked_at_the_commit_never_over_the_workers_state(project, taskbadger_server):
    """Task Badger fails the create at publish: the task goes out tracked, its worker creates its Task Badger task.
    What tells another process so (``{"taskbadger_created_by_worker": true}``, its PENDING state) is written as the id
    of a task created at publish is: nothing in the user's transaction (the worker stored its SUCCESS while it was
    open), one INSERT at the commit that does not hide the worker's row, none for a rolled back transaction."""
    worker = project.worker()
    try:
        taskbadger_server.fail(500, times=1, method="POST")
        seen = project.publish("in_transaction", worker.queue)
    finally:
        stop_worker(worker)
    assert seen["tb_id"] is None  # left to its worker
    assert seen["seen_while_open"] == ["SUCCESS", "5"], worker.log()[-3000:]
    assert (seen["get"], seen["row"]) == (5, ["SUCCESS", "5"])
    assert seen["publish_queries"] == []
    assert [q for q in statements(seen["commit_queries"]) if is_insert(q)] == statements(seen["commit_queries"])
    assert len(statements(seen["commit_queries"])) == 1
    task = taskbadger_server.wait_for_task(name="djangodb.add", status="success")
    assert task["external_id"] == seen["celery_id"]

    taskbadger_server.fail(500, method="POST")  # every create at publish fails
    seen = project.publish("not_run", f"q-nobody-{uuid.uuid4().hex[:8]}")
    assert seen["row_while_open"] is None
    for case in ("committed", "autocommit"):
        celery_id, tb_id, row = seen[case]
        assert tb_id is None and row[0] == "PENDING"
        assert json.loads(row[1]) == {"taskbadger_created_by_worker": True}
        assert project.publish("follow", celery_id) == {"follow": [None, celery_id]}  # followed by its Celery id
    celery_id, tb_id, row = seen["rolled_back"]
    assert tb_id is None and row is None
    assert project.publish("follow", celery_id) == {"follow": [None, None]}


def test_a_message_the_broker_refused_leaves_no_row(project, taskbadger_server):
    """The publish raised and the Task Badger task is cancelled: a PENDING row holding our id, of a Celery id
    nobody was given, stayed in the admin (until the results expire). Celery alone writes none."""
    seen = project.publish("refused", "-")
    assert seen["raised"] is not None
    assert seen["rows"] == []
    assert taskbadger_server.wait_for_task(name="djangodb.add", status="cancelled")
