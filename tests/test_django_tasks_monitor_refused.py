"""A monitor id the API does not know (mistyped, deleted in Task Badger, another project's) on django.tasks, with
real processes (``manage.py djt enqueue`` and ``manage.py db_worker``): every task is still tracked, without the
monitor, with one refused request and one warning per process naming the setting to fix, whether the monitor
comes from ``TASKBADGER['MONITORS']`` or from the task's ``track_task(monitor_id=...)`` option, and whether the
web process or the worker creates the task."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

import pytest

from .django_tasks_project.settings import TASKBADGER
from .django_tasks_project.tasks import OPTION_MONITOR
from .djt import Project
from .services import require
from .test_django_tasks import wait_final
from .workers import ROOT

pytestmark = pytest.mark.integration
NAME = "tests.django_tasks_project.tasks."
WARNING = "is not one of project acme/demo's monitors"


@pytest.fixture(params=["db", "rq"])
def project(request, taskbadger_server_session):
    if request.param == "rq":
        require("redis")
    # the web process and the worker share a spool directory (one machine's), this test's own
    project = Project(taskbadger_server_session, request.param, TASKBADGER_SPOOL_DIR=f"{tempfile.mkdtemp()}/spool")
    project.migrate()
    try:
        yield project
    finally:
        project.stop()


def enqueue(project, task, count, **env):
    """``djt enqueue`` in a process of its own: the results, and what it logged (stderr)."""
    done = subprocess.run([sys.executable, "manage.py", "djt", "enqueue", task, "[1, 2]", "--count", str(count)],
                          cwd=ROOT, env={**project.env, **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")], done.stderr


@pytest.mark.parametrize(("task", "monitor", "where"), [
    ("add", TASKBADGER["MONITORS"][NAME + "add"], "Fix the monitor id in TASKBADGER['MONITORS']"),
    ("monitored_by_option", OPTION_MONITOR, "Fix the monitor id in the task's monitor_id option"),
])
def test_tasks_under_a_monitor_the_api_does_not_know_are_tracked_without_it(project, taskbadger_server, task,
                                                                             monitor, where):
    taskbadger_server.add_monitor()  # the project's only monitor: from now on the stand-in refuses the others
    # a web process without a key: the worker creates the tasks (on RQ, each in a work horse forked for its job)
    unpublished, _ = enqueue(project, task, 3, TASKBADGER_API_KEY="")
    project.start_worker()
    tasks = [wait_final(taskbadger_server, r["id"], "success")[0] for r in unpublished]
    # then a web process creates them: it leaves the monitor out at once too
    published, stderr = enqueue(project, task, 3)
    tasks += [wait_final(taskbadger_server, r["id"], "success")[0] for r in published]
    project.stop()
    assert all(t["name"] == NAME + task and t["monitor_id"] is None for t in tasks), tasks
    # one refused create on the machine, the worker's first: then its processes leave the monitor out (RQ forks a
    # work horse per job: each was refused, and warned, once)
    refused = [r for r in taskbadger_server.requests if r.method == "POST" and r.headers.get("X-TASKBADGER-MONITOR")]
    assert [(r.status, r.headers["X-TASKBADGER-MONITOR"]) for r in refused] == [(404, monitor)], refused
    [warning] = [line for line in project.log().splitlines() if WARNING in line]  # the worker says it, once
    assert monitor in warning and where in warning, warning
    assert WARNING not in stderr, stderr[-4000:]
    assert "untracked" not in stderr + project.log()
