"""django.tasks: a child enqueued from a tracked task's body while the API failed its create keeps its parent when its
worker creates its task. A module of its own, with workers of its own: in the fault matrix's module, the workers
carried the earlier tests' state (updates of the tasks of earlier stores, answered 404), and the child's success was
not seen in time in CI."""

from __future__ import annotations

import pytest

from .djt import faults_project_fixture
from .test_django_tasks import by_external_id, wait_result

BUDGET = 0.5  # the publish budget (and each call's connect and read timeout) the processes run with
project = faults_project_fixture(BUDGET)  # as the fault matrix's, with workers of this module's own


@pytest.mark.parametrize("fault", ["503", "dropped"])
def test_a_child_whose_create_failed_at_enqueue_is_created_by_its_worker_under_its_parent(project, taskbadger_server,
                                                                                          tmp_path, fault):
    """A tracked task's body enqueues a child while the API refuses that create (a 503), or drops it and then refuses
    the look-up for it (its answer lost: maybe created): the child goes out untracked, and its worker creates its task
    when it starts (after looking it up, when maybe created). It was created without a parent (the worker runs no task
    that could be it, and the channel kept no entry for a job whose create failed): a page listing the parent's
    children missed it. The parent now stays in the child's entry."""
    gate = tmp_path / "go"
    (parent,) = project.enqueue("enqueue_child_when", str(gate))
    parent_task = taskbadger_server.wait_for(lambda: next(
        (t for t in by_external_id(taskbadger_server, parent["id"]) if t["status"] == "processing"), None), timeout=30)
    # the child's create at enqueue (the parent's is done)
    if fault == "503":
        taskbadger_server.fail(503, times=1, method="POST")
    else:
        taskbadger_server.drop(times=1, method="POST")
        taskbadger_server.fail(503, times=1, method="GET")  # the enqueue's look-up by external_id
    gate.write_text("go")
    child_id = wait_result(project, parent["id"], "SUCCESSFUL", timeout=45)["return_value"]
    wait_result(project, child_id, "SUCCESSFUL", timeout=45)
    child = taskbadger_server.wait_for(lambda: next(
        (t for t in by_external_id(taskbadger_server, child_id) if t["status"] == "success"), None), timeout=30)
    creates = [r for r in taskbadger_server.requests if r.method == "POST" and r.json.get("external_id") == child_id]
    assert {c.json["status"] for c in creates} == {"pending", "processing"}  # refused at enqueue, made by the worker
    if fault == "dropped":  # maybe created: looked up at the enqueue (refused), then by its worker (not found)
        look_ups = [r.status for r in taskbadger_server.requests if r.method == "GET" and r.task_id is None]
        assert look_ups == [503, 200], look_ups
    assert child["parent"] == parent_task["id"]
