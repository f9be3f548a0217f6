"""The test project: the one-command demo, and celery beat publishing a monitored task."""

import os
import re
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
    env = project_env()
    # A `shutdown` for the demo's worker left in the broker by an interrupted run must not stop the next one.
    subprocess.run([sys.executable, "-c", STALE_SHUTDOWN], cwd=ROOT, env=env, check=True, timeout=60,
                   stdin=subprocess.DEVNULL)
    run = subprocess.run([sys.executable, "manage.py", "demo"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    lines = out.splitlines()
    assert lines[0].endswith("Task Badger demo, on the stand-in API (no TASKBADGER_API_KEY set: nothing leaves "
                             "this machine)")
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/ ", lines[1])
    assert run.stderr == ""  # no contradicting "no API key" line, no second announcement of the URL
    assert re.search(r"\] progress page: http://127\.0\.0\.1:\d+/demo/  \(open it now", out)
    assert re.search(r"import_contacts +\[#+\.*\] \d+%", out)  # live progress
    # The live line for the failure carries its exception; which states the 0.3 s polls saw before it (pending,
    # processing, or none when the first poll came late) depends on the machine's load.
    declined = r"\] charge_card +(?:(?:pending|processing) → )?error  \(ValueError: card declined for 19\.99 EUR\)"
    assert re.search(declined, out), out
    for line in ("charge_card           error", "ValueError: card declined", "succeeded after 2 retries",
                 "  └ index_shard       success", "export_archive        cancelled", "nightly_report        success",
                 "import_contacts       success    100%", "all 11 tasks finished: 1 cancelled, 1 error, 9 success",
                 "send_receipt          success"):
        assert line in out, out
    stopping = next(i for i, line in enumerate(lines) if "stopping the worker and beat" in line)
    assert lines[stopping + 1].endswith("] stopped")
    assert "demo-worker.log" in out and "--keep-open" in lines[-1]


STALE_SHUTDOWN = """
import os, socket, django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
django.setup()
from testproject.celery import app
with app.connection_for_write() as connection:
    app.control.mailbox(connection).get_queue(f"demo@{socket.gethostname()}")(connection.default_channel).declare()
app.control.shutdown(destination=[f"demo@{socket.gethostname()}"])
"""


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


def test_a_monitor_in_settings_the_api_does_not_know_still_tracks_beats_tasks(taskbadger_server_session):
    """A monitor deleted in Task Badger (or mistyped, or another project's): beat's tasks are tracked without it,
    run by the worker to the end, and beat says once which setting to fix (every task was untracked)."""
    server = taskbadger_server_session
    server.reset()
    server.add_monitor()  # the project's only monitor: not the one in settings
    env = project_env(TASKBADGER_API_KEY=server.api_key, TASKBADGER_HOST=server.url, DEMO_BEAT_INTERVAL="0.5")
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "testproject", "worker", "-P", "solo",
                               "--without-gossip", "--without-mingle", "--loglevel=INFO"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "testproject", "beat", "--max-interval", "1",
                             "--loglevel=INFO"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        # polls the stand-in under a deadline: beat sends the task every 0.5 s
        server.wait_for(lambda: len([t for t in server.tasks_named("demo.tasks.nightly_report")
                                     if t["status"] == "success"]) >= 2, timeout=60)
    finally:
        beat.terminate()
        worker.terminate()
        output = beat.communicate(timeout=20)[0].decode(errors="replace")
        worker.communicate(timeout=30)
    from testproject.settings import TASKBADGER

    monitor = TASKBADGER["MONITORS"]["demo.tasks.nightly_report"]
    assert all(t["monitor_id"] is None for t in server.tasks_named("demo.tasks.nightly_report")), output
    # one record (printed by the project's console handler and by celery's, whose lines say "WARNING/")
    warnings = [line for line in output.splitlines() if "is not one of project" in line and "WARNING/" in line]
    assert len(warnings) == 1, output
    assert monitor in warnings[0] and "Fix the monitor id in TASKBADGER['MONITORS']" in warnings[0]
