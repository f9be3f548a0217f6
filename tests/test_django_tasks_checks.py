"""The django.tasks settings and checks: TASKBADGER["DJANGO_TASKS"] resolved and applied (E014, E015,
W010, W011, and E003/E007 for its values), MONITORS entries naming django.tasks tasks, track_task."""

from __future__ import annotations

import base64
import sys
import types

import pytest
from django.core.checks import run_checks
from django.test import override_settings

import taskbadger
from taskbadger_django import checks as tb_checks
from taskbadger_django import conf, track_task

from .django_tasks_project import tasks  # noqa: F401  (its tasks are found through track_task)

# test_django_checks' autouse fixtures: fresh settings state, and a Celery app of our own (no task modules)
from .test_django_checks import _fresh_conf, app  # noqa: F401

KEY = base64.b64encode(b"acme/demo/s3cret").decode()
VALID = {"API_KEY": KEY, "HOST": "https://taskbadger.net"}
MONITOR = "0b0b5c86-4a43-4c3c-9a53-7d3e6f1c2a11"


def run(**tb):
    with override_settings(TASKBADGER={**VALID, **tb}):
        return [m for m in run_checks(tags=[tb_checks.TAG]) if m.id not in ("taskbadger.I001",)]


def ids(messages):
    return sorted(m.id for m in messages)


def test_defaults_track_every_task_and_apply():
    with override_settings(TASKBADGER=VALID):
        system = taskbadger.config.get_config().system("django_tasks")
    assert system.auto_track_tasks is True and system.record_task_args is False
    assert system.channel is not None  # the database channel of the app
    assert ids(run()) == []


def test_settings_reach_the_integration():
    with override_settings(TASKBADGER={**VALID, "DJANGO_TASKS": {"AUTO_TRACK": False, "HEARTBEAT_INTERVAL": 5,
                                                                   "RECORD_TASK_ARGS": True}}):
        system = taskbadger.config.get_config().system("django_tasks")
    assert (system.auto_track_tasks, system.heartbeat_interval, system.record_task_args) == (False, 5, True)


def test_unknown_key_is_e014_with_a_suggestion_and_nothing_is_applied():
    messages = run(DJANGO_TASKS={"AUTO_TRAK": True})
    assert ids(messages) == ["taskbadger.E014"]
    assert "AUTO_TRACK" in messages[0].hint
    with override_settings(TASKBADGER={**VALID, "DJANGO_TASKS": {"AUTO_TRAK": True}}):
        assert taskbadger.config.get_config() is None


def test_bad_values_are_e003_and_bad_patterns_e007():
    assert ids(run(DJANGO_TASKS={"AUTO_TRACK": "yes", "STALE_TIMEOUT": -1})) == ["taskbadger.E003"] * 2
    assert ids(run(DJANGO_TASKS={"INCLUDES": ["tests.("]})) == ["taskbadger.E007"]


def test_e015_without_a_tasks_framework(monkeypatch):
    monkeypatch.setattr(conf, "django_tasks_available", lambda: False)
    assert ids(run(DJANGO_TASKS={"AUTO_TRACK": True})) == ["taskbadger.E015"]


def test_w011_a_pattern_that_matches_no_task():
    messages = run(DJANGO_TASKS={"EXCLUDES": ["tests.django_tasks_project.tasks.custon"]})
    assert ids(messages) == ["taskbadger.W011"]
    assert "tests.django_tasks_project.tasks.custom" in messages[0].hint
    assert ids(run(DJANGO_TASKS={"EXCLUDES": [r"tests\.django_tasks_project\.tasks\.cu.*"]})) == []


def test_w010_when_a_tasks_module_cannot_be_imported(monkeypatch):
    from django.apps import apps

    config = types.SimpleNamespace(name="tests.broken_tasks_app")
    monkeypatch.setattr(apps, "get_app_configs", lambda: [config])
    broken = types.ModuleType("tests.broken_tasks_app")
    broken.__path__ = []  # a package whose tasks module raises on import
    monkeypatch.setitem(sys.modules, "tests.broken_tasks_app", broken)
    monkeypatch.setitem(sys.modules, "tests.broken_tasks_app.tasks", None)  # import raises ImportError
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "tests.broken_tasks_app.tasks" else real(name, *a))
    assert "taskbadger.W010" in ids(run(DJANGO_TASKS={"AUTO_TRACK": True}))


def test_a_monitor_for_a_django_tasks_task_is_no_w003():
    assert ids(run(MONITORS={"tests.django_tasks_project.tasks.custom": MONITOR})) == []
    assert ids(run(MONITORS={"tests.django_tasks_project.tasks.nope": MONITOR})) == ["taskbadger.W003"]


def test_a_task_outside_the_tasks_modules_named_by_its_module_path_is_no_warning(monkeypatch):
    """The README puts a django.tasks task in billing/jobs.py: a MONITORS or INCLUDES entry naming it gave
    W003 and W011 (the checks looked only in the apps' tasks modules), though the entry applies."""
    monkeypatch.delitem(sys.modules, "tests.django_tasks_project.jobs", raising=False)  # imported by nothing
    name = "tests.django_tasks_project.jobs.nightly_report"
    monitored = "tests.django_tasks_project.tasks.monitored_by_option"  # has a monitor: W019 unless included
    assert ids(run(MONITORS={name: MONITOR}, DJANGO_TASKS={"INCLUDES": [name, monitored]})) == []
    assert ids(run(MONITORS={name[:-1]: MONITOR}, DJANGO_TASKS={"INCLUDES": [name[:-1], monitored]})) == [
        "taskbadger.W003", "taskbadger.W011"]
    assert ids(run(MONITORS={"tests.django_tasks_project.nope.nightly_report": MONITOR})) == ["taskbadger.W003"]


def test_w019_a_monitored_task_that_is_never_tracked():
    """A MONITORS entry for a django.tasks task that DJANGO_TASKS keeps from being tracked (EXCLUDES, AUTO_TRACK
    False, INCLUDES, track_task(enabled=False)): db_worker runs it, no task is ever created, and its monitor reports
    every run as missed; the check names the task, the rule that leaves it out, and how to track it."""
    path = "tests.django_tasks_project.tasks."
    messages = run(MONITORS={path + "custom": MONITOR, path + "opted_out": MONITOR, path + "add": MONITOR},
                   DJANGO_TASKS={"EXCLUDES": [r".*\.custom"]})
    assert [(m.id, m.obj) for m in messages] == [("taskbadger.W019", path + "custom"),
                                                 ("taskbadger.W019", path + "opted_out")]
    assert "django.tasks task" in messages[1].msg and "track_task(enabled=False)" in messages[1].msg
    assert r"matches TASKBADGER['DJANGO_TASKS']['EXCLUDES'] entry '.*\\.custom'" in messages[0].msg
    assert "reports every run as missed" in messages[0].msg and "@track_task(enabled=True)" in messages[0].hint
    # AUTO_TRACK False: a pattern's tasks and a task's own monitor (track_task(monitor_id=...)) alike
    messages = run(MONITORS={path + "add": MONITOR}, DJANGO_TASKS={"AUTO_TRACK": False})
    assert [m.obj for m in messages] == [path + "add", path + "monitored_by_option"]
    assert "TASKBADGER['DJANGO_TASKS']['AUTO_TRACK'] is False" in messages[0].msg
    [message] = run(MONITORS={path + "add": MONITOR}, DJANGO_TASKS={"INCLUDES": [path + "monitored_by_option"]})
    assert message.obj == path + "add" and "matches no TASKBADGER['DJANGO_TASKS']['INCLUDES'] entry" in message.msg
    # tracked, or no monitor (left unset, even under a broader pattern further on): nothing to say
    assert ids(run(MONITORS={path + "add": MONITOR, path + "custom": MONITOR})) == []
    assert ids(run(MONITORS={path + "opted_out": None,
                             r"tests\.django_tasks_project\.tasks\.(custom|opted_out)": MONITOR})) == []


def test_track_task_refuses_bad_options_where_they_are_written():
    with pytest.raises(TypeError, match="monitor_id"):
        track_task(monitor_id="not-a-uuid")
    with pytest.raises(TypeError, match="above @task"):
        track_task(value_max=3)(lambda: None)


@pytest.mark.parametrize(("key", "value"), [("HEARTBEAT_INTERVAL", 0), ("HEARTBEAT_INTERVAL", 90000),
                                            ("STALE_TIMEOUT", 0), ("STALE_TIMEOUT", 2.5)])
def test_a_number_out_of_range_is_named_not_taken_for_a_wrong_type(key, value):
    """``"HEARTBEAT_INTERVAL": 0`` was "must be a positive number of seconds, at most 86400 (a day), got int.": an
    int is a number, so the message read as a type error. It shows the number."""
    [message] = [m for m in run(DJANGO_TASKS={key: value}) if m.id == "taskbadger.E003"]
    assert message.msg.endswith(f", got {value!r}."), message.msg


# -- W018: django.tasks on RQ without Task Badger's worker class ---------------------------------------------------

RQ_TASKS = {"default": {"BACKEND": "django_tasks_rq.RQBackend", "QUEUES": ["default"]}}
RQ_LINE = 'RQ = {"WORKER_CLASS": "taskbadger.django_tasks.rq.Worker"}'


def run_rq(rq=None, backends=RQ_TASKS, **tb):
    """The checks with ``TASKS`` and ``RQ`` as given (no ``RQ`` setting when ``rq`` is None)."""
    with override_settings(TASKS=backends, RQ_QUEUES={"default": {"URL": "redis://127.0.0.1:6379/12"}}):
        if rq is None:
            with override_settings():
                from django.conf import settings

                del settings.RQ
                return run(**tb)
        with override_settings(RQ=rq):
            return run(**tb)


def test_w018_an_rq_backend_without_our_worker_class_says_what_is_lost_and_the_line_to_add():
    """A killed work horse's or a stopped job's task stays processing with RQ's own worker class: the user who
    did not name ours is told what they lose and the exact setting."""
    (message,) = run_rq()
    assert message.id == "taskbadger.W018"
    assert "stays 'processing'" in message.msg and "killed" in message.msg and "stop-job" in message.msg
    assert RQ_LINE in message.hint
    (message,) = run_rq({"WORKER_CLASS": "rq.worker.Worker"})  # another worker class: make it a subclass of ours
    assert message.id == "taskbadger.W018"
    assert "rq.worker.Worker a subclass of taskbadger.django_tasks.rq.Worker" in message.hint
    assert ids(run_rq({"DEFAULT_RESULT_TTL": 60})) == ["taskbadger.W018"]  # an RQ setting without the key
    from rq.worker import SimpleWorker

    assert ids(run_rq({"WORKER_CLASS": SimpleWorker})) == ["taskbadger.W018"]  # a class, not a path


def test_w018_is_silent_with_our_worker_class_or_a_subclass_of_it():
    from taskbadger.django_tasks.rq import Worker

    from .django_tasks_project.rq_workers import OwnWorker

    assert ids(run_rq({"WORKER_CLASS": "taskbadger.django_tasks.rq.Worker"})) == []
    assert ids(run_rq({"WORKER_CLASS": Worker})) == []
    assert ids(run_rq({"WORKER_CLASS": OwnWorker})) == []
    assert ids(run_rq({"WORKER_CLASS": "tests.django_tasks_project.rq_workers.OwnWorker"})) == []


def test_w018_is_silent_without_an_rq_backend_or_with_tracking_off():
    assert ids(run_rq(backends={"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}})) == []
    assert ids(run_rq(backends={})) == []
    with override_settings(TASKBADGER={**VALID, "ENABLED": False}, TASKS=RQ_TASKS):
        assert "taskbadger.W018" not in ids(run_checks(tags=[tb_checks.TAG]))
