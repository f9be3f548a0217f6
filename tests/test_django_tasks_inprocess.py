"""django.tasks backends that run in the process that enqueues (ImmediateBackend) or run nothing
(DummyBackend), the receivers' guard, and the claim that keeps one Task Badger task per TaskResult
when a worker starts a task before its publisher's ``task_enqueued`` receiver has run (the RQ backend
sends that signal after the job is in Redis)."""

from __future__ import annotations

import importlib.util
import logging
import threading
import types

import pytest
from django.test import override_settings

import taskbadger
from taskbadger.django_tasks import CREATED, LocalChannel, events
from taskbadger.django_tasks.receivers import connect
from taskbadger.systems.django_tasks import DjangoTasksSystemIntegration

from .django_tasks_project import tasks

PREFIX = "django.tasks" if importlib.util.find_spec("django.tasks") else "django_tasks"
IMMEDIATE = {"default": {"BACKEND": f"{PREFIX}.backends.immediate.ImmediateBackend"}}
DUMMY = {"default": {"BACKEND": f"{PREFIX}.backends.dummy.DummyBackend"}}
NAME = "tests.django_tasks_project.tasks."


@pytest.fixture
def server(taskbadger_server):
    system = DjangoTasksSystemIntegration(excludes=[r".*\.untracked_by_rule"])
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, systems=[system])
    connect()
    return taskbadger_server


def posts(server):
    return [r for r in server.requests if r.method == "POST"]


@override_settings(TASKS=IMMEDIATE)
def test_immediate_backend_tracks_the_task_in_process(server):
    result = tasks.progress.enqueue(3)
    assert str(result.status) == "SUCCESSFUL"
    task = server.wait_for_task(NAME + "progress", status="success")
    assert result.return_value == {"task_id": task["id"]}
    assert task["external_id"] == result.id and task["queue"] == "default"
    assert (task["value"], task["value_max"]) == (3, 3)
    assert len(posts(server)) == 1


@override_settings(TASKS=IMMEDIATE)
def test_immediate_backend_records_the_error(server):
    result = tasks.boom.enqueue("no invoice")
    assert str(result.status) == "FAILED"
    task = server.wait_for_task(NAME + "boom", status="error")
    assert task["data"]["exception_type"] == "ValueError"
    assert "no invoice" in task["data"]["exception"]


@override_settings(TASKS=IMMEDIATE)
def test_immediate_backend_opted_out_and_excluded(server):
    assert tasks.opted_out.enqueue().return_value == "ran"
    assert tasks.untracked_by_rule.enqueue().return_value == "ran"
    assert server.tasks == {}


@override_settings(TASKS=DUMMY)
def test_dummy_backend_runs_nothing_so_nothing_is_created(server):
    result = tasks.add.enqueue(1, 2)
    assert str(result.status) == "READY"
    assert server.tasks == {} and server.requests == []


@override_settings(TASKS=IMMEDIATE)
def test_a_failing_channel_never_reaches_enqueue_or_the_task(server, caplog, monkeypatch):
    class Broken(LocalChannel):
        def claim(self, result_id):
            raise RuntimeError("the channel is broken")

        def get(self, result_id):
            raise RuntimeError("the channel is broken")

    monkeypatch.setattr(events, "_local", Broken())
    result = tasks.add.enqueue(2, 2)
    assert str(result.status) == "SUCCESSFUL" and result.return_value == 4
    errors = [r for r in caplog.records if getattr(r, "taskbadger_internal_error", False)]
    assert len(errors) == 2 and "not affected" in errors[0].getMessage()
    caplog.clear()  # logged on purpose here


def test_not_configured_nothing_happens(taskbadger_server):
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url)  # no django.tasks system
    connect()
    with override_settings(TASKS=IMMEDIATE):
        assert tasks.add.enqueue(1, 1).return_value == 2
    assert taskbadger_server.requests == []


# -- the claim: a worker that starts first ------------------------------------------------------------


def _result(result_id):
    backend = type("DatabaseBackend", (), {})()
    task = types.SimpleNamespace(module_path=NAME + "add", queue_name="default", get_backend=lambda: backend)
    return types.SimpleNamespace(id=result_id, task=task, args=[1, 2], kwargs={}, worker_ids=["w1"],
                                 status="SUCCESSFUL", errors=[])


def test_a_worker_that_starts_while_the_publisher_creates_waits_for_its_task(server):
    channel = LocalChannel()
    taskbadger.init(token=server.api_key, host=server.url,
                    systems=[DjangoTasksSystemIntegration(channel=channel)])
    result = _result("r-1")
    assert channel.claim("r-1")  # the publisher claimed it and is creating it
    worker = threading.Thread(target=lambda: (events.on_started(result), events.on_finished(result)))
    worker.start()
    created = taskbadger.create_task(NAME + "add", external_id="r-1")  # the publisher's create
    channel.put("r-1", CREATED, taskbadger.lifecycle.created_meta(created).to_dict())
    worker.join(10)
    task = server.wait_for_task(NAME + "add", status="success")
    assert task["id"] == created.id and len(posts(server)) == 1


def test_a_worker_that_starts_before_the_publisher_creates_the_task_itself(server):
    channel = LocalChannel()
    taskbadger.init(token=server.api_key, host=server.url,
                    systems=[DjangoTasksSystemIntegration(channel=channel)])
    result = _result("r-2")
    events.on_started(result)  # before task_enqueued: the worker claims it
    events.on_enqueued(result)  # the publisher's receiver then finds the claim and creates nothing
    events.on_finished(result)
    task = server.wait_for_task(NAME + "add", status="success")
    assert task["external_id"] == "r-2" and len(posts(server)) == 1


def test_an_entry_written_by_anyone_is_checked_where_it_is_read(server, caplog):
    channel = LocalChannel()
    taskbadger.init(token=server.api_key, host=server.url,
                    systems=[DjangoTasksSystemIntegration(channel=channel)])
    channel.put("r-3", CREATED, {"task": {"id": "'; DROP TABLE", "name": 7}, "heartbeat_interval": -1})
    result = _result("r-3")
    events.on_started(result)
    events.on_finished(result)
    assert server.requests == []  # nothing raw reached the wire: the run went untracked
    assert any("has no valid task id" in r.getMessage() for r in caplog.records)


@override_settings(TASKS=IMMEDIATE)
def test_the_progress_tag_takes_a_task_result(server):
    from taskbadger_django import task_id_for

    result = tasks.add.enqueue(1, 2)
    task = server.wait_for_task(NAME + "add", status="success")
    assert task_id_for(result) == task["id"]
    assert task_id_for(tasks.opted_out.enqueue()) is None


@override_settings(TASKS=IMMEDIATE)
def test_heartbeat_settings_give_the_running_task_its_stale_timeout(taskbadger_server):
    system = DjangoTasksSystemIntegration(heartbeat_interval=30, record_task_args=True)
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, systems=[system])
    connect()
    tasks.add.enqueue(3, 4)
    task = taskbadger_server.wait_for_task(NAME + "add", status="success")
    assert task["stale_timeout"] == 60  # twice the heartbeat interval, set once it runs
    assert task["data"] == {"args": [3, 4], "kwargs": {}}


@override_settings(TASKS=IMMEDIATE)
def test_a_stale_timeout_within_the_heartbeat_interval_is_kept_and_logged_once(taskbadger_server, caplog):
    """Task Badger would mark the running task stale between two heartbeats: the user chose the value, so it is
    kept, but said once, naming the task (before, nothing said it)."""
    system = DjangoTasksSystemIntegration(heartbeat_interval=30, stale_timeout=20)
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, systems=[system])
    connect()
    with caplog.at_level(logging.WARNING, logger="taskbadger"):
        tasks.add.enqueue(3, 4)
        tasks.add.enqueue(5, 6)
    task = taskbadger_server.wait_for_task(NAME + "add", status="success")
    assert task["stale_timeout"] == 20
    [line] = [r.getMessage() for r in caplog.records if "stale_timeout" in r.getMessage()]
    assert f"task '{NAME}add' has a stale_timeout of 20 s, not longer than its heartbeat interval of 30 s" in line
    assert "at least 60 s" in line


@override_settings(TASKS=IMMEDIATE)
def test_a_long_heartbeat_keeps_nothing_of_the_tasks_that_ended(taskbadger_server):
    # Fast tasks with a long heartbeat (here ten minutes; a day at most): the process kept a scheduled ping for
    # every task it had run within the last interval, 400 here, a worker's memory growing with its task count.
    from taskbadger.delivery.heartbeat import get_heartbeat

    system = DjangoTasksSystemIntegration(heartbeat_interval=600)
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, systems=[system])
    connect()
    for i in range(400):
        assert str(tasks.add.enqueue(i, 1).status) == "SUCCESSFUL"
    assert len(get_heartbeat()._due) <= 100  # nothing is running now
    taskbadger_server.wait_for_task(NAME + "add", status="success")


def test_a_queue_name_longer_than_the_api_takes_is_shortened_not_untracked(server):
    # The API takes queue names of up to 255 characters: the create was refused (400) and the task ran untracked.
    queue = "reports-" + "q" * 300
    with override_settings(TASKS={"default": {**IMMEDIATE["default"], "QUEUES": [queue]}}):
        result = tasks.progress.using(queue_name=queue).enqueue(2)
    assert str(result.status) == "SUCCESSFUL"
    task = server.wait_for_task(NAME + "progress", status="success")
    assert task["queue"] == queue[:254] + "…" and len(task["queue"]) == 255
