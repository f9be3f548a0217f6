"""celery beat stopped while it creates a monitored task's check-in: its SIGTERM handler raises SystemExit wherever
beat is, so the message is never published, and the task the API made must not stay ``pending`` for ever."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid

import pytest

from .workers import ROOT

pytestmark = pytest.mark.integration
TASK = "tests.celery_project.app.add"
MONITOR = "6f1c2a3e-0000-4000-8000-000000000001"


def start_beat(server, schedule, folder, **env):
    env = {**os.environ, "TASKBADGER_HOST": server.url, "TASKBADGER_API_KEY": server.api_key, "PYTHONPATH": str(ROOT),
           "TB_BEAT_SCHEDULE": json.dumps(schedule), "TB_MONITORS": json.dumps({TASK: MONITOR}), **env}
    with open(os.path.join(folder, "beat.log"), "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "celery", "-A", "tests.celery_project.app", "beat",
                                 "--max-interval", "1", "-s", os.path.join(folder, "schedule")], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop_beat_during_a_create(server, folder, **env):
    """beat's first create is made at once and answered 3 s later: SIGTERM while beat waits for the answer."""
    server.set_latency(3.0, method="POST", times=1)
    queue = f"q-never-{uuid.uuid4().hex[:8]}"  # no worker: nothing published there would run
    beat = start_beat(server, {"a": {"task": TASK, "schedule": 1.0, "args": [1, 2], "options": {"queue": queue}}},
                      folder, **env)
    try:
        server.wait_for(lambda: server.tasks, timeout=30)
    finally:
        beat.send_signal(signal.SIGTERM)  # while its create waits for the answer
        beat.wait(20)
    [task] = server.tasks.values()
    assert task["monitor_id"] == MONITOR
    return task


@pytest.mark.parametrize("spool", ["on", "off"])
def test_beat_stopped_during_a_create_cancels_the_task_before_it_exits_when_the_api_answers(taskbadger_server,
                                                                                           spool):
    """The API answers: beat looks the task up as it exits and cancels it there, with the spool on or off, rather
    than leaving it to the next process on this machine (a replaced container has none)."""
    folder = tempfile.mkdtemp(prefix="tbbeat-")
    env = {"TASKBADGER_SPOOL_DIR": "off"} if spool == "off" else {}
    task = stop_beat_during_a_create(taskbadger_server, folder, **env)
    assert task["status"] == "cancelled"
    assert task["data"]["publish_error"].startswith("SystemExit: interrupted")
    output = open(os.path.join(folder, "beat.log"), errors="replace").read()
    assert "could not be delivered" not in output and "spooled" not in output, output


def test_beat_stopped_during_a_create_leaves_no_task_pending_for_ever(taskbadger_server):
    folder = tempfile.mkdtemp(prefix="tbbeat-")
    taskbadger_server.hang(method="GET")  # beat cannot look the task up as it exits: it is spooled
    task = stop_beat_during_a_create(taskbadger_server, folder)
    assert task["status"] == "pending"
    taskbadger_server.clear_faults()
    # The next process of the project on this machine (beat again, with nothing due) takes up what was left.
    beat = start_beat(taskbadger_server, {}, folder)
    try:
        taskbadger_server.wait_for(lambda: taskbadger_server.get_task(task["id"])["status"] == "cancelled", timeout=20)
    finally:
        beat.terminate()
        beat.wait(20)
    assert taskbadger_server.get_task(task["id"])["data"]["publish_error"].startswith("SystemExit: interrupted")
