"""The lifecycle of a tracked Celery task, with real workers, on every pool."""

import os
import pathlib

import pytest

from .celery_project import app as tasks
from .conftest import BROKER
from .foreign import wait_for_result

pytestmark = pytest.mark.integration


def test_delay_creates_pending_before_publish_and_worker_finishes_success(taskbadger_server, any_worker):
    result = any_worker.send(tasks.add, 2, 3)
    assert result.taskbadger_task_id  # known right after .delay(), no result backend needed
    create = [r for r in taskbadger_server.requests if r.method == "POST"]
    assert len(create) == 1 and create[0].json["status"] == "pending"
    assert create[0].json["name"] == "tests.celery_project.app.add"
    assert create[0].json["external_id"] == result.id
    assert create[0].json["queue"] == any_worker.queue
    task = taskbadger_server.wait_for_task(name="tests.celery_project.app.add", status="success")
    assert task["id"] == result.taskbadger_task_id
    assert task["start_time"] and task["end_time"] and task["start_time"] <= task["end_time"]
    assert result.get_taskbadger_task().status == "success"


def test_failure_records_type_message_and_traceback(taskbadger_server, any_worker):
    any_worker.send(tasks.fail, "the input was wrong")
    task = taskbadger_server.wait_for_task(name="tests.celery_project.app.fail", status="error")
    assert "ValueError: the input was wrong" in task["data"]["exception"]
    assert "Traceback" in task["data"]["exception"]
    assert task["data"]["exception_type"] == "ValueError"
    assert task["end_time"]


def test_progress_and_access_from_the_body(taskbadger_server, any_worker):
    result = any_worker.send(tasks.progress, 5)
    task = taskbadger_server.wait_for_task(name="tests.celery_project.app.progress", status="success")
    assert (task["value"], task["value_max"]) == (5, 5)
    patches = [r for r in taskbadger_server.requests if r.method == "PATCH"]
    values = [p.json.get("value") for p in patches if "value" in p.json]
    assert values[0] == 1 and values[-1] == 5 and values == sorted(values)  # in order; a fast loop's are merged
    assert task["id"] == result.taskbadger_task_id
    gets = [r for r in taskbadger_server.requests if r.method == "GET"]
    assert gets == []  # self.taskbadger_task is built from the message headers


def test_body_access_builds_task_without_lookup(taskbadger_server, any_worker):
    result = any_worker.send(tasks.report_access, "m1")
    task = taskbadger_server.wait_for(
        lambda: (t := taskbadger_server.get_task(result.taskbadger_task_id)) and t["status"] == "success" and t)
    assert task["data"] == {"seen_id": result.taskbadger_task_id, "marker": "m1",
                            "name": "tests.celery_project.app.report_access"}


def test_current_task_in_the_body_is_the_running_tasks(taskbadger_server, any_worker):
    result = any_worker.send(tasks.report_current, "m2")
    task = taskbadger_server.wait_for(
        lambda: (t := taskbadger_server.get_task(result.taskbadger_task_id)) and t["status"] == "success" and t)
    assert task["data"] == {"current_id": result.taskbadger_task_id, "same_as_self": True, "marker": "m2"}
    assert not [r for r in taskbadger_server.requests if r.method == "GET"]  # built from the headers


def test_terminal_state_set_in_body_is_not_overwritten(taskbadger_server, any_worker):
    result = any_worker.send(tasks.finish_in_body, 42)
    task = taskbadger_server.wait_for_task(name="tests.celery_project.app.finish_in_body", status="success")
    assert task["value"] == 42
    # the automatic final update was skipped: the last request for this task is the body's
    for_task = [r for r in taskbadger_server.requests if r.path.endswith(f"/{result.taskbadger_task_id}/")]
    assert for_task[-1].json.get("value") == 42


@pytest.mark.parametrize("protocol", [1, 2])
def test_both_message_protocols_carry_the_task(taskbadger_server, prefork_worker, celery_app, protocol):
    celery_app.conf.task_protocol = protocol
    try:
        result = prefork_worker.send(tasks.report_access, f"protocol {protocol}")
    finally:
        celery_app.conf.task_protocol = 2
    task = taskbadger_server.wait_for(
        lambda: (t := taskbadger_server.get_task(result.taskbadger_task_id)) and t["status"] == "success" and t)
    assert task["data"]["seen_id"] == result.taskbadger_task_id  # the worker found it in the headers
    assert not [r for r in taskbadger_server.requests if r.method == "GET"]


def test_the_worker_says_at_start_where_it_tracks(solo_worker, taskbadger_server_session):
    # One record, logged once Celery has set up logging: its handler formats it once ("INFO/MainProcess] …").
    # (The test project's LOGGING also gives the taskbadger logger a plain handler of its own, which prints
    # every taskbadger record a second time without the prefix.)
    lines = [line for line in solo_worker.log().splitlines() if "INFO/MainProcess] Task Badger: tracking" in line]
    assert len(lines) == 1, solo_worker.log()[-3000:]
    assert lines[0].endswith(f"tasks using taskbadger.celery.Task in acme/demo at {taskbadger_server_session.url}")


@pytest.mark.parametrize("status", [None, "processing"])
def test_an_update_after_the_end_does_not_change_the_outcome(taskbadger_server, prefork_worker, status):
    # A thread the body started updates the task after the run ended: the run's success and its progress stand.
    result = prefork_worker.send(tasks.update_after_the_end, status)
    path = pathlib.Path(os.environ["TB_RESULTS_DIR"]) / result.id
    taskbadger_server.wait_for(path.exists, timeout=30)  # the thread's update has returned
    task = taskbadger_server.wait_for(lambda: (t := taskbadger_server.get_task(result.taskbadger_task_id))
                                      and t["end_time"] and t)
    assert (task["status"], task["value"], task["value_max"]) == ("success", 100, 100)
    for_task = [r.json for r in taskbadger_server.requests if r.path.endswith(f"/{result.taskbadger_task_id}/")]
    assert not [body for body in for_task if body.get("value") == 57]


def test_progress_in_a_tight_loop_costs_a_bounded_number_of_requests(taskbadger_server, any_worker):
    # Each tb.update(value=i) was a request the body waited for: 3,000 steps were 3,000 PATCHes (~0.4 ms each on
    # loopback, a round trip each to the real API). Now the steps within a second of the last request are merged.
    result = any_worker.send(tasks.progress_loop, 3000)
    body = wait_for_result(result.id, timeout=60)
    assert body["shown"] == 3000
    task = taskbadger_server.wait_for_task(name="tests.celery_project.app.progress_loop", status="success")
    assert (task["value"], task["value_max"]) == (3000, 3000)
    patches = [r.json for r in taskbadger_server.requests if r.method == "PATCH"]
    assert len(patches) <= 10 + 20 * body["took"], (len(patches), body["took"])
    assert patches[-1]["status"] == "success"  # the final state comes last
    values = [p["value"] for p in patches if "value" in p]
    assert values == sorted(values) and values[-1] == 3000


@pytest.mark.skipif(BROKER == "rabbitmq", reason="AMQP carries a task id as a short string (255 bytes at most): "
                                                "Celery cannot publish a longer one there, tracked or not")
def test_a_task_id_too_long_for_external_id_is_tracked_without_it(taskbadger_server, solo_worker, tb_log):
    """The API takes an external_id of at most 255 characters and refuses the create otherwise: a longer Celery
    id is left out (not shortened: the task is looked up by its exact id), the task is tracked, the user told."""
    long_id = "x" * 300
    result = solo_worker.send(tasks.add, 2, 3, task_id=long_id)
    assert result.id == long_id and result.taskbadger_task_id
    [create] = [r for r in taskbadger_server.requests if r.method == "POST"]
    assert "external_id" not in create.json
    task = taskbadger_server.wait_for(
        lambda: (t := taskbadger_server.get_task(result.taskbadger_task_id)) and t["status"] == "success" and t)
    assert task["external_id"] == ""
    [warning] = [r.getMessage() for r in tb_log.records if "external_id" in r.getMessage()]
    assert "300 characters" in warning and "tracked without one" in warning and "at most 255" in warning
    assert "if the answer to its create is lost" in warning
