"""A newcomer follows the README's Django section from `django-admin startproject`: the code blocks are
taken from the README itself, so the README cannot drift from what works."""

import csv
import io
import os
import re
import socket
import subprocess
import sys
import uuid

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
    """{path: (mode, code)} for each code block the Django section labels with a file path."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Django"):]
    found = {}
    pattern = r"^(At the end of )?`([\w/.]+\.py)`:\n\n```python\n(.*?)```"
    for match in re.finditer(pattern, section, re.S | re.M):
        found[match.group(2)] = ("append" if match.group(1) else "write", match.group(3))
    return found


def test_readme_django_section_gives_a_tracked_task(taskbadger_server_session, tmp_path):
    if not redis_up():
        pytest.skip("the README's walk-through uses Redis as the broker; it is not running")
    server = taskbadger_server_session
    server.reset()
    files = readme_files()
    assert set(files) == {"mysite/celery.py", "mysite/__init__.py", "mysite/settings.py", "billing/tasks.py"}
    monitor = str(uuid.uuid4())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKBADGER_", "CELERY_", "DJANGO_"))}
    env.update(TASKBADGER_API_KEY=server.api_key, TASKBADGER_HOST=server.url,
               CELERY_BROKER_URL="redis://127.0.0.1:6379/8", NIGHTLY_INVOICES_MONITOR=monitor)

    def run(*args, **kwargs):
        return subprocess.run([sys.executable, *args], cwd=kwargs.pop("cwd", tmp_path / "mysite"), env=env,
                              capture_output=True, text=True, timeout=60, check=True, stdin=subprocess.DEVNULL)

    run("-m", "django", "startproject", "mysite", cwd=tmp_path)
    run("manage.py", "startapp", "billing")
    for path, (mode, code) in files.items():
        target = tmp_path / "mysite" / path
        with open(target, "a" if mode == "append" else "w") as fh:
            fh.write("\n" + code)

    check = run("manage.py", "check")
    assert "taskbadger." not in check.stdout + check.stderr
    run("manage.py", "shell", "-c",
        "from billing.tasks import nightly_invoices; nightly_invoices.delay(list(range(250)))")
    [created] = server.tasks.values()
    assert (created["name"], created["status"], created["monitor_id"]) == (
        "billing.tasks.nightly_invoices", "pending", monitor)

    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "mysite", "worker", "-P", "solo", "-l", "info"],
                              cwd=tmp_path / "mysite", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
    try:
        task = server.wait_for_task(name="billing.tasks.nightly_invoices", status="success", timeout=45)
    finally:
        worker.terminate()
        log = worker.communicate(timeout=30)[0].decode(errors="replace")
    assert task["value"] == task["value_max"] == 250, log  # it reported progress: it ends complete
    listing = run("manage.py", "taskbadger", "list")
    # In a pipe the README's `taskbadger list` prints CSV (a table on a terminal): name, status and percent.
    [row] = [r for r in csv.DictReader(io.StringIO(listing.stdout)) if r["Name"] == "billing.tasks.nightly_invoices"]
    assert (row["Status"], row["Percent"]) == ("success", "100")
