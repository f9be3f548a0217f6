"""examples/quickstart.py, run as a user would (no key: it starts its own stand-in API)."""

import os
import subprocess
import sys

from .workers import ROOT


def test_quickstart_shows_progress_only_for_tasks_that_reported_it():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBADGER_")}
    run = subprocess.run([sys.executable, "examples/quickstart.py"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    rows = {line[:32].strip(): line[32:].split(None, 2) for line in run.stdout.splitlines()[2:]}
    assert rows["quickstart: upload batch"] == ["success", "100%"]
    assert rows["quickstart: resize images"] == ["success", "-"]
    assert rows["quickstart: failing import"] == ["error", "-", "ValueError: row 7: 'price' is not a number"]
