"""The test project: the one-command demo, and celery beat publishing a monitored task."""

import os
import subprocess
import sys
import tempfile
import uuid

import pytest

from .workers import ROOT

pytestmark = pytest.mark.integration


def project_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKBADGER_", "CELERY_", "DJANGO_"))}
    env.update(TESTPROJECT_VAR_DIR=tempfile.mkdtemp(prefix="tbproject-"), PYTHONPATH=str(ROOT), **extra)
    return env


def test_the_demo_command_runs_green_with_no_service_and_no_key():
    run = subprocess.run([sys.executable, "manage.py", "demo"], cwd=ROOT, env=project_env(), capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "started the stand-in Task Badger API" in out
    for line in ("demo.tasks.charge_card           error", "ValueError: card declined",
                 "succeeded after 2 retries", "└ demo.tasks.index_shard       success",
                 "demo.tasks.export_archive        cancelled", "demo.tasks.nightly_report        success",
                 "demo.tasks.import_contacts       success    200/200"):
        assert line in out, out


def test_a_task_published_by_celery_beat_is_tracked_with_the_monitor_from_settings(taskbadger_server_session):
    server = taskbadger_server_session
    server.reset()
    env = project_env(TASKBADGER_API_KEY=server.api_key, TASKBADGER_HOST=server.url, DEMO_BEAT_INTERVAL="0.5")
    beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "testproject", "beat", "--max-interval", "1",
                             "--loglevel=INFO"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        task = server.wait_for_task(name="demo.tasks.nightly_report", timeout=30)
    finally:
        beat.terminate()
        output = beat.communicate(timeout=20)[0].decode(errors="replace")
    from testproject.settings import TASKBADGER

    monitor = TASKBADGER["MONITORS"]["demo.tasks.nightly_report"]
    assert uuid.UUID(monitor)
    assert task["monitor_id"] == monitor, output
    [post] = [r for r in server.requests if r.method == "POST"][:1]
    assert post.headers["X-TASKBADGER-MONITOR"] == monitor
    assert task["status"] == "pending"  # published, waiting for a worker
