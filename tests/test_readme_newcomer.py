"""A newcomer follows the README's Django section from `django-admin startproject`: the code blocks are
taken from the README itself, so the README cannot drift from what works."""

import csv
import io
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from .workers import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def redis_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
        return True
    except OSError:
        return False


def readme_files() -> dict[str, tuple[str, str]]:
    """{path: (mode, code)} for each code block labelled with a file path: in the README's Django quick start,
    and in docs/testing.md (the quick start project's tests)."""
    text = (ROOT / "README.md").read_text()
    quick_start = text[text.index("\n## Django quick start"):text.index("\n## Settings")]
    found = {}
    pattern = r"^(At the end of )?`([\w/.]+\.py)`:\n\n```python\n(.*?)```"
    for section in (quick_start, (ROOT / "docs" / "testing.md").read_text()):
        for match in re.finditer(pattern, section, re.S | re.M):
            found[match.group(2)] = ("append" if match.group(1) else "write", match.group(3))
    return found


class Worker:
    """``celery -A mysite worker -P solo -l info`` as the README runs it; its output read as it comes."""

    def __init__(self, cwd: Path, env: dict) -> None:
        self.cwd, self.env, self.lines = cwd, env, []
        self._queue: queue.Queue = queue.Queue()

    def __enter__(self) -> "Worker":
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "mysite", "worker", "-P", "solo", "-l", "info"], cwd=self.cwd,
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            errors="replace")
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self.process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for_line(self, text: str, timeout: float = 45) -> str:
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if text in line:
                return line
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"the worker printed no line with {text!r}:\n{self.log}")

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        while True:  # what it printed until it stopped
            line = self._queue.get(timeout=30)
            if line is None:
                break
            self.lines.append(line)


def test_readme_django_section_gives_a_tracked_task(taskbadger_server_session, tmp_path):
    if not redis_up():
        pytest.skip("the README's walk-through uses Redis as the broker; it is not running")
    server = taskbadger_server_session
    server.reset()
    files = readme_files()
    assert set(files) == {"mysite/celery.py", "mysite/__init__.py", "mysite/settings.py", "billing/tasks.py",
                          "billing/tests.py"}
    monitor = str(uuid.uuid4())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKBADGER_", "CELERY_", "DJANGO_"))}
    env.update(TASKBADGER_API_KEY=server.api_key, TASKBADGER_HOST=server.url,
               CELERY_BROKER_URL="redis://127.0.0.1:6379/8", NIGHTLY_INVOICES_MONITOR=monitor)

    def run(*args, **kwargs):
        return subprocess.run([sys.executable, *args], cwd=kwargs.pop("cwd", tmp_path / "mysite"), env=env,
                              capture_output=True, text=True, timeout=60, check=True, stdin=subprocess.DEVNULL)

    import redis

    redis.Redis(host="127.0.0.1", port=6379, db=8).flushdb()  # no message left from an earlier run
    run("-m", "django", "startproject", "mysite", cwd=tmp_path)
    run("manage.py", "startapp", "billing")
    for path, (mode, code) in files.items():
        target = tmp_path / "mysite" / path
        with open(target, "a" if mode == "append" else "w") as fh:
            fh.write("\n" + code)

    check = run("manage.py", "check")
    assert "taskbadger." not in check.stdout + check.stderr
    # docs/testing.md: the project's own test, as the page says to run it (a broker that needs no worker)
    tests = subprocess.run([sys.executable, "manage.py", "test", "billing"], cwd=tmp_path / "mysite",
                           env={**env, "CELERY_BROKER_URL": "memory://"}, capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
    assert tests.returncode == 0 and "Ran 1 test" in tests.stderr, tests.stderr
    run("manage.py", "shell", "-c",
        "from billing.tasks import nightly_invoices; nightly_invoices.delay(list(range(250)))")
    [created] = server.tasks.values()
    assert (created["name"], created["status"], created["monitor_id"]) == (
        "billing.tasks.nightly_invoices", "pending", monitor)

    # The README's worker command, with Django's and Celery's default logging (a fresh project configures none).
    with Worker(tmp_path / "mysite", env) as worker:
        task = server.wait_for_task(name="billing.tasks.nightly_invoices", status="success", timeout=45)
        worker.wait_for_line("ready.")
    assert task["value"] == task["value_max"] == 250, worker.log  # it reported progress: it ends complete
    # "its first lines say where it tracks": before Celery's "ready." line
    start = f"Task Badger: tracking tasks using taskbadger.celery.Task in acme/demo at {server.url}"
    assert start in worker.log.split("ready.")[0], worker.log
    listing = run("manage.py", "taskbadger", "list")
    # In a pipe the README's `taskbadger list` prints CSV (a table on a terminal): name, status and percent.
    [row] = [r for r in csv.DictReader(io.StringIO(listing.stdout)) if r["Name"] == "billing.tasks.nightly_invoices"]
    assert (row["Status"], row["Percent"]) == ("success", "100")

    # Bad settings, as the README says: `check` names them, Django still starts, tasks run untracked, and one
    # line says so where the newcomer looks (the shell's stderr, the worker's start lines), default logging.
    with open(tmp_path / "mysite" / "mysite" / "settings.py", "a") as fh:
        fh.write('\nTASKBADGER["TAG"] = {"environment": "development"}\n'
                 'TASKBADGER["MONITORS"]["billing.tasks.nightly_invoices"] = "nightly-invoices"\n')
    check = subprocess.run([sys.executable, "manage.py", "check"], cwd=tmp_path / "mysite", env=env,
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert check.returncode == 1 and "taskbadger.E001" in check.stderr and "taskbadger.E006" in check.stderr
    published = run("manage.py", "shell", "-c",
                    "from billing.tasks import nightly_invoices; nightly_invoices.delay([1])")
    refused = ("Task Badger: tasks run untracked: the TASKBADGER setting has errors, so it is not applied: unknown "
               "key 'TAG' in TASKBADGER (did you mean 'TAGS'?); monitors entry 'billing.tasks.nightly_invoices' -> "
               "'nightly-invoices'")
    assert published.stderr.startswith(refused) and published.stderr.count("\n") == 1, published.stderr
    assert len(server.tasks) == 1  # nothing new was tracked
    with Worker(tmp_path / "mysite", env) as worker:
        line = worker.wait_for_line("Task Badger: not tracking tasks in this worker")
        worker.wait_for_line("ready.")
    assert "the TASKBADGER setting has errors, so it is not applied: unknown key 'TAG'" in line
    assert "Run `manage.py check` for how to fix each." in line
