"""What tracking costs a ``django.tasks`` ``enqueue()`` on the database backend: tracked ÷ untracked, in one run,
on SQLite and on PostgreSQL, against the stand-in API on loopback (no injected latency: the figure is our
own cost, the create's round trip included), and what the id channel's two queries cost alone.

    python benchmarks/django_tasks_enqueue.py [--count 300]

Each figure is one process doing ``--count`` enqueues of the test project's ``add`` task after a warm-up
(``manage.py djt bench``; no worker runs, so the queue only grows). Untracked = the same project without an
API key. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from taskbadger.testing.server import TaskBadgerServer  # noqa: E402
from tests.services import port_open, postgres_database, postgres_url  # noqa: E402


def manage(env: dict[str, str], *args: str) -> dict:
    out = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {}


def measure(database_url: str, server: TaskBadgerServer, count: int) -> dict[str, float]:
    var = tempfile.mkdtemp(prefix="tbbench-djt-")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.django_tasks_project.settings", "PYTHONPATH": str(ROOT),
           "TESTPROJECT_VAR_DIR": var, "DATABASE_URL": database_url, "DJT_BACKEND": "db",
           "TASKBADGER_HOST": server.url, "TASKBADGER_API_KEY": server.api_key, "TASKBADGER_LOG_LEVEL": "WARNING"}
    manage(env, "migrate", "-v", "0")
    figures = {}
    for mode, key in (("untracked", ""), ("tracked", server.api_key)):
        run_env = {**env, "TASKBADGER_API_KEY": key}
        manage(run_env, "djt", "bench", "add", "[1, 2]", "--count", "20")  # warm-up: files, caches
        figures[mode] = manage(run_env, "djt", "bench", "add", "[1, 2]", "--count", str(count))["seconds"] / count
    channel = manage(env, "djt", "channel", "bench", "--count", str(count))
    figures["channel"] = channel["seconds"] / count
    figures["channel_worker"] = channel["worker_seconds"] / count
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300)
    count = parser.parse_args().count
    server = TaskBadgerServer().start()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(("SQLite", measure(f"sqlite:///{tmp}/bench.sqlite3", server, count)))
        if port_open(5432):
            with postgres_database("taskbadger_bench") as name:
                rows.append(("PostgreSQL", measure(postgres_url(name), server, count)))
    finally:
        server.stop()
    print(f"enqueue() of a django.tasks task, database backend, {count} per figure, stand-in API on loopback\n")
    print("| database | untracked | tracked | tracked ÷ untracked | id channel (enqueue side: claim + write) "
          "| id channel (worker side: read + delete) |")
    print("|---|---|---|---|---|---|")
    for name, f in rows:
        print(f"| {name} | {f['untracked'] * 1e3:.2f} ms | {f['tracked'] * 1e3:.2f} ms | "
              f"{f['tracked'] / f['untracked']:.2f} | {f['channel'] * 1e3:.2f} ms | "
              f"{f['channel_worker'] * 1e3:.2f} ms |")


if __name__ == "__main__":
    main()
