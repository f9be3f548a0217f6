"""django.tasks in a project with two databases (``default`` and ``jobs``), the database backend's job table or
Task Badger's own table put on ``jobs`` by a router, with a real ``manage.py db_worker``: SQLite for ``default``,
PostgreSQL for ``jobs``.

What a user relies on (docs/django-tasks.md): an enqueue inside a transaction that rolls back and takes the job
with it ends ``cancelled`` (never ``pending`` for ever) and nothing runs; an enqueue whose job is committed ends as
its job does, as one task, whichever database's transaction the enqueue was in.
"""

from __future__ import annotations

import pytest

from .djt import Project
from .services import postgres_database, postgres_url
from .test_django_tasks import by_external_id, wait_final, wait_result

ROLLED_BACK = "the transaction that enqueued it was rolled back"


# (Both tables on one alias behaves as one database: the single-database tests of test_django_tasks.py cover it.)
@pytest.fixture(scope="module", ids=["jobs-table-on-jobs", "our-table-on-jobs"],
                params=["django_tasks_database", "taskbadger_django"])
def project(request, taskbadger_server_session):
    with postgres_database("taskbadger_djt2") as database:
        project = Project(taskbadger_server_session, "db", DJT_JOBS_DATABASE_URL=postgres_url(database),
                          DJT_ON_JOBS=request.param).migrate()
        project.on_jobs = request.param.split(",")
        try:
            project.start_worker()
            yield project
        finally:
            project.stop()


def job_alias(project):
    """The alias of the database backend's job table."""
    return "jobs" if "django_tasks_database" in project.on_jobs else "default"


def creates(server):
    return [r for r in server.requests if r.method == "POST"]


@pytest.mark.parametrize("using", ["default", "jobs"])
def test_a_committed_enqueue_ends_as_its_job_as_one_task(project, taskbadger_server, using):
    (enqueued,) = project.enqueue("add", 2, 3, hold=0.5, using=using)  # inside a transaction that commits
    (task,) = wait_final(taskbadger_server, enqueued["id"], "success")
    assert "publish_error" not in (task["data"] or {})
    assert wait_result(project, enqueued["id"], "SUCCESSFUL")["return_value"] == 5
    assert len(creates(taskbadger_server)) == 1


@pytest.mark.parametrize("hold", [False, True], ids=["worker-after", "worker-during"])
@pytest.mark.parametrize("using", ["default", "jobs"])
def test_an_enqueue_rolled_back_ends_cancelled_if_its_job_went_with_it_else_as_its_job(
        project, taskbadger_server, using, hold):
    """The transaction on ``using`` rolls back. When the job table is on that database, the job goes with it: the
    task ends ``cancelled`` (it stayed ``pending`` for ever when Task Badger's table was on the other database).
    When the job table is on the other one, the job was committed and runs: one task, ``success`` (it was closed
    ``cancelled`` and the worker created a second task when Task Badger's table was on ``using``), whether the
    worker starts the job after the rollback or while the transaction is still open (``hold``)."""
    gone = job_alias(project) == using
    if gone and hold:
        pytest.skip("a job that goes with the transaction is not seen by a worker before its end")
    (enqueued,) = project.enqueue("add", 2, 3, rollback=True, using=using, hold_until_started=hold)
    if gone:
        (task,) = wait_final(taskbadger_server, enqueued["id"], "cancelled")
        assert task["data"]["publish_error"] == ROLLED_BACK
        (later,) = project.enqueue("add", 1, 1)  # the worker runs a later job: the rolled-back one was not there
        wait_final(taskbadger_server, later["id"], "success")
        assert by_external_id(taskbadger_server, enqueued["id"])[0]["status"] == "cancelled"
    else:
        (task,) = wait_final(taskbadger_server, enqueued["id"], "success")
        assert "publish_error" not in (task["data"] or {})
        assert wait_result(project, enqueued["id"], "SUCCESSFUL")["return_value"] == 5
        assert len(creates(taskbadger_server)) == 1


@pytest.fixture(scope="module")
def replica_project(taskbadger_server_session):
    """Everything on SQLite ``default``, but the router reads Task Badger's table from a PostgreSQL ``replica`` that
    has not caught up (nothing is written to it): Django's primary/replica router, with replication lag."""
    with postgres_database("taskbadger_djt2r") as database:
        project = Project(taskbadger_server_session, "db", DJT_REPLICA_DATABASE_URL=postgres_url(database),
                          DJT_READ_FROM_REPLICA="taskbadger_django").migrate()
        try:
            project.start_worker()
            yield project
        finally:
            project.stop()


@pytest.mark.parametrize("in_transaction", [False, True], ids=["autocommit", "atomic"])
def test_reads_of_the_entries_are_not_sent_to_a_replica_that_lags(replica_project, taskbadger_server, in_transaction):
    """The worker read the entry from the router's database for reads: a replica that lags showed none, so the worker
    created a second task for the job, and the enqueue's stayed ``pending`` for ever."""
    (enqueued,) = replica_project.enqueue("add", 2, 3, hold=0.2 if in_transaction else 0.0)
    (task,) = wait_final(taskbadger_server, enqueued["id"], "success")
    assert wait_result(replica_project, enqueued["id"], "SUCCESSFUL")["return_value"] == 5
    assert len(creates(taskbadger_server)) == 1
