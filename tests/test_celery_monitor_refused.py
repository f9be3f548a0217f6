"""A monitor id the API does not know (mistyped, deleted in Task Badger, another project's): celery beat's
check-ins are still tracked, created without the monitor, and the user is told once which setting to fix."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid

import pytest

from .conftest import start_worker, stop_worker
from .workers import ROOT

pytestmark = pytest.mark.integration
REFUSED_TASK = "tests.celery_project.app.add"
KNOWN_TASK = "tests.celery_project.app.beat_tick"
WARNING = "is not one of project acme/demo's monitors"


def start_beat(server, schedule, monitors, folder):
    env = {**os.environ, "TASKBADGER_HOST": server.url, "TASKBADGER_API_KEY": server.api_key, "PYTHONPATH": str(ROOT),
           "TB_BEAT_SCHEDULE": json.dumps(schedule), "TB_MONITORS": json.dumps(monitors)}
    log = open(os.path.join(folder, "beat.log"), "ab")
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "tests.celery_project.app", "beat",
                             "--loglevel=INFO", "--max-interval", "1", "-s", os.path.join(folder, "schedule")],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL), log


def test_beat_tasks_under_an_unknown_monitor_are_tracked_without_it_with_one_warning(taskbadger_server):
    known = taskbadger_server.add_monitor()  # from now on the stand-in refuses creates under any other monitor
    unknown = str(uuid.uuid4())  # a typo, or a monitor deleted in Task Badger
    monitors = {REFUSED_TASK: unknown, KNOWN_TASK: known}
    # The worker has the same rules as beat (one settings module in a project): it would create the task itself
    # if beat could not, under the same refused monitor.
    worker = start_worker(taskbadger_server, pool="prefork", concurrency=2,
                          extra_env={"TB_MONITORS": json.dumps(monitors)})
    folder = tempfile.mkdtemp(prefix="tbbeat-")
    schedule = {"refused": {"task": REFUSED_TASK, "schedule": 0.5, "args": [1, 2], "options": {"queue": worker.queue}},
                "known": {"task": KNOWN_TASK, "schedule": 0.5, "options": {"queue": worker.queue}}}
    beat, log = start_beat(taskbadger_server, schedule, monitors, folder)

    def done(name):
        return [t for t in taskbadger_server.tasks_named(name) if t["status"] == "success"]

    try:
        # polls the stand-in under a deadline: beat sends each entry every 0.5 s
        taskbadger_server.wait_for(lambda: len(done(REFUSED_TASK)) >= 3 and len(done(KNOWN_TASK)) >= 3, timeout=60)
    finally:
        beat.send_signal(signal.SIGTERM)
        beat.wait(20)
        log.close()
        stop_worker(worker)
    output = open(os.path.join(folder, "beat.log"), errors="replace").read()
    assert all(t["monitor_id"] is None for t in taskbadger_server.tasks_named(REFUSED_TASK)), output
    assert all(t["monitor_id"] == known for t in taskbadger_server.tasks_named(KNOWN_TASK)), output
    # One refused create in all (beat's first): then beat leaves that monitor out, and the worker never creates.
    refused = [r for r in taskbadger_server.requests if r.method == "POST" and r.headers.get("X-TASKBADGER-MONITOR")
               == unknown]
    assert len(refused) == 1, output
    assert not [line for line in (output + worker.log()).splitlines() if "Task Badger:" in line and "untracked" in line]
    [line] = [line for line in output.splitlines() if WARNING in line and "WARNING/" in line]
    assert unknown in line and "Fix the monitor id in the monitors of CelerySystemIntegration" in line


def test_a_refused_monitor_option_is_left_out_after_one_refusal_and_the_warning_names_the_option(
        taskbadger_server, solo_worker, tb_log):
    from .celery_project import app as tasks

    taskbadger_server.add_monitor()
    unknown = str(uuid.uuid4())
    results = [solo_worker.send(tasks.add, i, 1, taskbadger_monitor_id=unknown) for i in range(3)]
    ids = [r.id for r in results]
    # polls the stand-in under a deadline: the worker runs them one after another
    taskbadger_server.wait_for(lambda: len([t for t in taskbadger_server.tasks.values()
                                            if t["external_id"] in ids and t["status"] == "success"]) == 3)
    posts = [r for r in taskbadger_server.requests if r.method == "POST"]
    assert [r.headers.get("X-TASKBADGER-MONITOR") for r in posts] == [unknown, None, None, None]
    [warning] = [r.getMessage() for r in tb_log.records if "is not one of project" in r.getMessage()]
    assert "Fix the monitor id in the task's monitor_id option" in warning


def test_a_create_refused_for_another_reason_does_not_blame_the_monitor(taskbadger_server, tb_log):
    import base64

    import taskbadger
    from taskbadger.inline import create_inline

    monitor = taskbadger_server.add_monitor()
    # a key for a project the API does not have: every create is refused (404), with or without the monitor
    taskbadger.init(token=base64.b64encode(b"acme/nope/test-key").decode(), host=taskbadger_server.url)
    for _ in range(2):
        assert create_inline("job", {"status": "pending"}, monitor).task is None
    posts = [r for r in taskbadger_server.requests if r.method == "POST"]
    assert [r.headers.get("X-TASKBADGER-MONITOR") for r in posts] == [monitor, None, monitor, None]
    messages = [r.getMessage() for r in tb_log.records]
    assert not [m for m in messages if "is not one of project" in m]
    assert [m for m in messages if "published untracked: Task Badger API answered 404" in m]


def test_a_monitor_of_another_project_answered_403_is_left_out(taskbadger_server, tb_log):
    """The service may answer 403 for another project's monitor (the contract lists no error answer for a create):
    only 404 and 400 were taken for a refused monitor, so every create under it was given up ("published
    untracked: ... 403") and every run of the monitored task went untracked, with no warning naming the monitor."""
    import taskbadger
    from taskbadger.inline import create_inline

    foreign = taskbadger_server.foreign_monitor()
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url)
    assert all(create_inline("job", {"status": "pending"}, foreign).task is not None for _ in range(3))
    posts = [r for r in taskbadger_server.requests if r.method == "POST"]
    assert [r.headers.get("X-TASKBADGER-MONITOR") for r in posts] == [foreign, None, None, None]
    [warning] = [r.getMessage() for r in tb_log.records if "is not one of project" in r.getMessage()]
    assert foreign in warning and "answered 403" in warning


def test_a_create_refused_403_with_or_without_the_monitor_does_not_blame_it(taskbadger_server, tb_log):
    import taskbadger
    from taskbadger.inline import create_inline

    monitor = taskbadger_server.add_monitor()
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url)
    taskbadger_server.fail(403, method="POST")  # a key that may not create tasks: the monitor is not the reason
    for _ in range(2):
        assert create_inline("job", {"status": "pending"}, monitor).task is None
    posts = [r for r in taskbadger_server.requests if r.method == "POST"]
    assert [r.headers.get("X-TASKBADGER-MONITOR") for r in posts] == [monitor, None, monitor, None]
    assert not [r for r in tb_log.records if "is not one of project" in r.getMessage()]


def test_a_refused_monitor_is_left_out_even_when_the_create_made_without_it_is_not_answered_in_time(
        taskbadger_server, tb_log):
    # A slow API: the refused create and the one made again without the monitor do not both fit in the publish
    # budget. The monitor was not left out, so every create was refused first and given up ("did not answer"):
    # every run untracked, and the warning that names the monitor never came.
    import taskbadger
    from taskbadger.inline import create_inline

    taskbadger_server.add_monitor()
    unknown = str(uuid.uuid4())
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, publish_budget=1.5)
    taskbadger_server.set_latency(1.0)
    create_inline("job", {"status": "pending"}, unknown)  # refused after 1 s; made again, given up at 1.5 s
    assert create_inline("job", {"status": "pending"}, unknown).task is not None  # one create, without it
    posts = [r for r in taskbadger_server.requests if r.method == "POST"]
    assert [r.headers.get("X-TASKBADGER-MONITOR") for r in posts] == [unknown, None, None]
    [warning] = [r.getMessage() for r in tb_log.records if "is not one of project" in r.getMessage()]
    assert unknown in warning
