"""Procrastinate under Django: ``procrastinate.contrib.django`` in INSTALLED_APPS and ``TASKBADGER`` in
settings are all it takes. Jobs are deferred by ``manage.py shell`` and run by ``manage.py procrastinate
worker`` (real processes, a fresh PostgreSQL database migrated by ``manage.py migrate``); the settings'
checks run in this process (``override_settings``) and in ``manage.py check``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from django.test import override_settings

from taskbadger_django import checks as tb_checks

from .conftest import _live_workers
from .procrastinate_workers import ProcrastinateWorker
from .services import postgres_database, postgres_url
from .workers import ROOT

SETTINGS = "tests.procrastinate_django.settings"


def manage(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


@pytest.fixture(scope="module")
def django_env(taskbadger_server_session):
    with postgres_database("tb_pro_django") as name:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": SETTINGS,
            "TB_DJANGO_PG_NAME": name,
            "TASKBADGER_API_KEY": taskbadger_server_session.api_key,
            "TASKBADGER_HOST": taskbadger_server_session.url,
            "PYTHONPATH": str(ROOT),
            "TB_DJANGO_MONITOR": str(uuid.uuid4()),
        }
        manage(env, "migrate", "--verbosity", "0")
        yield env, postgres_url(name)


@pytest.mark.integration
def test_manage_py_procrastinate_worker_tracks_jobs_from_settings_alone(taskbadger_server, django_env):
    env, dsn = django_env
    queue = f"dj-{uuid.uuid4().hex[:6]}"
    defer = (
        f"from tests.procrastinate_django import tasks as t; q={queue!r}; "
        "print(t.echo.configure(queue=q).defer(value='hello')); "
        "print(t.skipped.configure(queue=q).defer()); "
        "print(t.skip_but_tracked.configure(queue=q).defer())"
    )
    out = manage(env, "shell", "-c", defer)
    echo_id, skipped_id, by_hand_id = out.stdout.split()[-3:]  # after the shell's banner
    assert taskbadger_server.wait_for(
        lambda: (
            any(t["external_id"] == echo_id and t["status"] == "pending" for t in taskbadger_server.tasks.values())
            or None
        )
    )
    worker = ProcrastinateWorker(taskbadger_server, dsn, extra_env=env, django=True, queue=queue).start()
    _live_workers.append(worker)
    try:

        def final(job_id):
            return next(
                (
                    t
                    for t in taskbadger_server.tasks.values()
                    if t["external_id"] == job_id and t["status"] in ("success", "error")
                ),
                None,
            )

        echo = taskbadger_server.wait_for(lambda: final(echo_id), timeout=30)
        by_hand = taskbadger_server.wait_for(lambda: final(by_hand_id), timeout=30)
        done = manage(
            env,
            "shell",
            "-c",
            "from procrastinate.contrib.django.models import ProcrastinateJob as J; "
            f"print(J.objects.get(id={skipped_id}).status)",
        )
    finally:
        worker.stop()
        _live_workers.remove(worker)
    assert echo["status"] == "success" and echo["name"] == "dj.echo"  # AUTO_TRACK defaults to True
    assert echo["monitor_id"] == env["TB_DJANGO_MONITOR"]  # MONITORS applies
    assert echo["data"]["procrastinate_task_kwargs"] == {"value": "hello"}  # RECORD_TASK_ARGS
    assert by_hand["status"] == "success" and by_hand["name"] == "dj tracked by hand"  # @track wins over EXCLUDES
    assert done.stdout.split()[-1] == "succeeded"  # the excluded job ran (its body asserts it was untracked)
    assert not [t for t in taskbadger_server.tasks.values() if t["external_id"] == skipped_id]


@pytest.mark.integration
def test_a_job_cancelled_through_djangos_connection_is_cancelled_with_its_task(taskbadger_server, django_env):
    """Jobs read back through Django's connection carry their kwargs as JSON text (Django's backend leaves
    jsonb unparsed): the cancel raised AttributeError, and the job stayed queued."""
    env, _ = django_env
    cancel = (
        "from procrastinate.contrib.django import app; from tests.procrastinate_django import tasks as t; "
        "job = t.echo.configure(queue='dj-never-worked', schedule_in={'hours': 1}).defer(value='x'); "
        "print(job, app.job_manager.cancel_job_by_id(job)); "
        "from procrastinate.contrib.django.models import ProcrastinateJob as J; print(J.objects.get(id=job).status)"
    )
    job_id, cancelled, status = manage(env, "shell", "-c", cancel).stdout.split()[-3:]
    assert (cancelled, status) == ("True", "cancelled")
    task = taskbadger_server.wait_for(lambda: next(
        (t for t in taskbadger_server.tasks.values() if t["external_id"] == job_id and t["status"] == "cancelled"),
        None), timeout=20)
    assert task["data"]["procrastinate_status"] == "cancelled"


ROLLED_BACK = """
from django.db import transaction
from tests.procrastinate_django import tasks as t
try:
    with transaction.atomic():
        print(t.echo.configure(queue="dj-never-worked").defer(value="rolled back"))
        raise RuntimeError("the view failed after the defer")
except RuntimeError:
    pass
with transaction.atomic():
    print(t.echo.configure(queue="dj-never-worked").defer(value="committed"))
"""


@pytest.mark.integration
def test_a_job_deferred_in_a_transaction_that_rolls_back_has_its_task_cancelled(taskbadger_server, django_env):
    """Its row went with the transaction: it never runs, and its task would stay pending for ever."""
    env, _ = django_env
    rolled_back, committed = manage(env, "shell", "-c", ROLLED_BACK).stdout.split()[-2:]

    def task_of(job_id, status):
        return next((t for t in taskbadger_server.tasks.values()
                     if t["external_id"] == job_id and t["status"] == status), None)

    task = taskbadger_server.wait_for(lambda: task_of(rolled_back, "cancelled"), timeout=20)
    assert task["data"]["publish_error"] == "the transaction that deferred it was rolled back"
    assert task_of(committed, "pending")  # the shell flushed everything at exit: the committed one is untouched


@pytest.mark.integration
def test_w013_when_taskbadger_django_comes_first(django_env):
    env, _ = django_env
    out = manage({**env, "TB_DJANGO_TB_FIRST": "1"}, "check", check=False)
    assert "taskbadger.W013" in out.stderr + out.stdout
    good = manage(env, "check", check=False)
    assert "taskbadger.W013" not in good.stderr + good.stdout
    assert "taskbadger.W003" not in good.stderr + good.stdout  # MONITORS names a Procrastinate task


@pytest.mark.integration
def test_w003_for_a_procrastinate_task_names_procrastinate_and_suggests_the_task(django_env):
    """A typo in a MONITORS entry of a project that runs Procrastinate and no Celery: the warning says which
    tasks it looked in and suggests the Procrastinate task, rather than telling the user to add a Celery app."""
    env, _ = django_env
    out = manage({**env, "TB_DJANGO_MONITOR_TASK": "dj.ecoh"}, "check", check=False)
    text = out.stderr + out.stdout
    assert "taskbadger.W003" in text, text
    assert "Procrastinate task" in text and "Did you mean 'dj.echo'?" in text, text
    assert "No Celery app of this project" not in text, text


@pytest.mark.integration
def test_w019_a_monitored_procrastinate_task_that_is_never_tracked(django_env):
    r"""A MONITORS entry for a job that TASKBADGER['PROCRASTINATE'] keeps from being tracked (here its EXCLUDES,
    r"dj\.skip.*"): the worker runs it (a periodic job every time it is due), no task is ever created, and its
    monitor reports every run as missed. The check names the task and the entry that leaves it out; a task tracked
    by @track whatever the rules (dj.skip_but_tracked) is fine."""
    env, _ = django_env
    out = manage({**env, "TB_DJANGO_MONITOR_TASK": r"dj\.skip.*"}, "check", check=False)
    text = out.stderr + out.stdout
    [line] = [line for line in text.splitlines() if "taskbadger.W019" in line]
    assert "Procrastinate task 'dj.skipped'" in line and r"EXCLUDES'] entry 'dj\\.skip.*'" in line, text
    assert "@track (from taskbadger.procrastinate import track)" in text, text
    good = manage(env, "check", check=False)  # dj.echo, tracked
    assert "taskbadger.W019" not in good.stderr + good.stdout


@pytest.mark.integration
def test_w011_a_procrastinate_pattern_that_matches_no_task(django_env):
    """An EXCLUDES (or INCLUDES) entry with a typo matches none of the app's tasks: the job it meant is tracked after
    all (or, in INCLUDES, no job is), and manage.py check said nothing, as it does for DJANGO_TASKS (W011)."""
    env, _ = django_env
    out = manage({**env, "TB_DJANGO_EXCLUDES": json.dumps([r"dj\.ecoh"])}, "check", check=False)
    text = out.stderr + out.stdout
    [line] = [line for line in text.splitlines() if "taskbadger.W011" in line]
    assert "TASKBADGER['PROCRASTINATE']['EXCLUDES'] entry 'dj\\\\.ecoh' matches no Procrastinate task" in line, text
    assert "Did you mean 'dj.echo'?" in text, text
    good = manage(env, "check", check=False)  # dj\.skip.* matches dj.skipped
    assert "taskbadger.W011" not in good.stderr + good.stdout


def _ids(messages) -> list[str]:
    return [m.id for m in messages if m.id != "taskbadger.W001"]  # W001: these settings have no key


def test_e016_unknown_key_in_procrastinate():
    with override_settings(TASKBADGER={"PROCRASTINATE": {"AUTO_TRAK": True}}):
        messages = tb_checks.check_settings()
    assert _ids(messages) == ["taskbadger.E016"]
    assert "AUTO_TRACK" in messages[0].hint


def test_procrastinate_patterns_and_types_are_checked():
    with override_settings(TASKBADGER={"PROCRASTINATE": {"EXCLUDES": ["(unclosed"], "AUTO_TRACK": "yes"}}):
        assert sorted(_ids(tb_checks.check_settings())) == ["taskbadger.E003", "taskbadger.E007"]


def test_w012_procrastinate_settings_without_its_django_app():
    with override_settings(TASKBADGER={"PROCRASTINATE": {"AUTO_TRACK": False}}):
        assert _ids(tb_checks.check_procrastinate()) == ["taskbadger.W012"]
    with override_settings(TASKBADGER={}):
        assert tb_checks.check_procrastinate() == []


def test_e017_procrastinate_too_old(monkeypatch):
    from importlib import metadata

    monkeypatch.setattr(metadata, "version", lambda name: "3.8.1" if name == "procrastinate" else "0")
    with override_settings(
        INSTALLED_APPS=["django.contrib.contenttypes", "procrastinate.contrib.django", "taskbadger_django"]
    ):
        assert _ids(tb_checks.check_procrastinate()) == ["taskbadger.E017"]
