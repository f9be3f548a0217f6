"""Contract 4 on django.tasks under a 401: a revoked key in ``TASKBADGER_API_KEY``, with real processes (``manage.py
djt enqueue``, ``manage.py db_worker`` and ``rqworker``). A module of its own: its projects start several Django
processes each, and test processes take whole modules (``--dist loadfile``), so it runs beside the fault matrix
(``test_django_tasks_faults``) instead of after it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .djt import Project
from .services import require, revoked_key
from .test_django_tasks import wait_result
from .test_django_tasks_faults import BUDGET
from .workers import ROOT


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["db", "rq"])
def test_a_key_the_api_refuses_is_said_never_shown(taskbadger_server, backend):
    """Contract 4 under a 401: a revoked key in ``TASKBADGER_API_KEY``. The web process's create and the worker's
    (the task went out untracked) are refused; each task runs to its own result, the processes say the key was refused
    and where to set it, and neither the key nor its secret is in anything they log (the worker's at DEBUG)."""
    if backend == "rq":
        require("redis")
    key, secret = revoked_key(taskbadger_server)
    project = Project(taskbadger_server, backend, DJT_PUBLISH_BUDGET=str(BUDGET), TASKBADGER_API_KEY=key,
                      TASKBADGER_LOG_LEVEL="DEBUG").migrate()
    project.start_worker()
    try:
        done = subprocess.run([sys.executable, "manage.py", "djt", "enqueue", "add", "[20, 22]", "--count", "2"],
                              cwd=ROOT, env=project.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-4000:]
        enqueued = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        for item in enqueued:
            assert wait_result(project, item["id"], "SUCCESSFUL", timeout=45)["return_value"] == 42
        refused = [r for r in taskbadger_server.requests if r.method == "POST"]
        # the web process's creates, then the worker's as each task starts: all refused, no task made
        assert len(refused) >= 2 and {r.status for r in refused} == {401}, refused
        assert not taskbadger_server.tasks
        # what the worker said when it met the refusal is in its log by now: it met it before the task ran
        said = done.stderr + project.log()
    finally:
        project.stop()
    assert "401" in done.stderr and "TASKBADGER_API_KEY" in done.stderr, done.stderr[-4000:]
    assert "401" in project.log() and "TASKBADGER_API_KEY" in project.log(), project.log()[-4000:]
    assert key not in said and secret not in said
