"""The tests of test_django_tasks.py on the RQ backend (``manage.py rqworker`` on Redis db 10): the same tests, in
a module of their own so that the test run's parallel workers (one module each) run them beside the database
backends'."""

from __future__ import annotations

import pytest

from . import test_django_tasks as base
from .djt import Project
from .services import require
from .test_django_tasks import *  # noqa: F403  (the tests, and the fixtures they use)
from .test_django_tasks import wait_final, wait_result


@pytest.fixture(scope="module", params=["rq"])
def project(request, taskbadger_server_session):
    yield from base.backend_project(request.param, taskbadger_server_session)


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
