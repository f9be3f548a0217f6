"""The promise with django.tasks: with the API refused, hung or answering 500, ``enqueue()`` returns within
the publish budget, the task runs on a real worker and its TaskResult is exactly what it would be
untracked (status, return value, errors). Database backend on SQLite, and RQ on Redis db 10."""

from __future__ import annotations

import json
import os

import pytest

from .djt import faults_project_fixture
from .services import api_fault
from .test_django_tasks import by_external_id, wait_result

BUDGET = 0.5  # the publish budget (and each call's connect and read timeout) the processes run with
#: What a loaded, shared machine may add to the budget before enqueue() returns (the SQLite writes included).
SLACK = 0.4
MODES = ["refused", "hang", "500", "slow", "429", "not_json"]


project = faults_project_fixture(BUDGET)


def report(mode, backend, longest):
    path = os.environ.get("TASKBADGER_MATRIX_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"entry": f"django.tasks enqueue ({backend})", "mode": mode,
                                  "longest": round(longest, 3), "what": "ran untracked, TaskResult unchanged"}) + "\n")


@pytest.mark.parametrize("mode", MODES)
def test_a_failing_api_never_holds_up_enqueue_or_changes_the_result(project, taskbadger_server, mode):
    api_fault(taskbadger_server, mode)
    try:
        enqueued = project.enqueue("add", 20, 22, count=3)
        failing = project.enqueue("boom", "no invoice")
        longest = max(e["seconds"] for e in enqueued + failing)
        report(mode, project.backend, longest)
        assert longest <= BUDGET + SLACK, [e["seconds"] for e in enqueued + failing]
        for item in enqueued:
            result = wait_result(project, item["id"], "SUCCESSFUL", timeout=45)
            assert result["return_value"] == 42 and result["errors"] == []
        result = wait_result(project, failing[0]["id"], "FAILED", timeout=45)
        assert result["errors"] == ["builtins.ValueError"]
    finally:
        taskbadger_server.clear_faults()
        taskbadger_server.accept()


@pytest.mark.parametrize("mode", ["hang", "503", "404"])
def test_progress_from_a_tasks_body_never_fails_or_holds_up_the_task(project, taskbadger_server, mode):
    """``tb.update()`` in a loop while the API misbehaves with updates: the TaskResult is SUCCESSFUL, the
    body held up by a few budgets at most; once the API behaves, the task ends ``success`` with its progress.
    (The body's updates take the same path on every backend: the database backend's worker is enough.)"""
    if project.backend != "db":
        pytest.skip("the body's updates are the same on every backend")
    if mode == "hang":
        taskbadger_server.hang(method="PATCH")
    else:
        taskbadger_server.fail(int(mode), method="PATCH")
    try:
        # The run must be tracked from its start: this test is about the body's updates. So the enqueue's create has 3 s
        # (a loaded CI machine made it miss 0.5 s), and the job is due only once that create has answered and its
        # entry says so: the worker waits its own budget and a second for an entry still being created (1.5 s here;
        # a CI run's enqueue took longer, and the worker ran the job untracked, to be settled at its end).
        (item,) = project.enqueue("progress_loop", 12, run_after_days=1, DJT_PUBLISH_BUDGET="3")
        assert [t["status"] for t in by_external_id(taskbadger_server, item["id"])] == ["pending"]
        project.age(item["id"], 1)  # due now
        result = wait_result(project, item["id"], "SUCCESSFUL", timeout=45)
        # a refused update is not shown, unless queued without asking (the worker's breaker open from an earlier mode)
        assert result["return_value"]["shown"] in ((None, 12) if mode == "404" else (12,)) and result["errors"] == []
        assert result["return_value"]["took"] <= 3 * BUDGET + SLACK, result["return_value"]
    finally:
        taskbadger_server.clear_faults()
    if mode != "404":
        taskbadger_server.wait_for(lambda: next((t for t in taskbadger_server.tasks.values()
                                                 if t["external_id"] == item["id"] and t["status"] == "success"
                                                 and t["value"] == 12), None), timeout=30)
