"""`manage.py demo`: run the demo tasks on a real worker and print what Task Badger recorded.

With no TASKBADGER_API_KEY it starts the stand-in Task Badger API (taskbadger.testing) first, so it
needs no service and no key; with a key it tracks against that Task Badger project. The broker is
whatever CELERY_BROKER_URL says (by default the embedded one, on local files).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

import taskbadger
from taskbadger_django import conf

FINAL = {"success", "error", "cancelled"}


class Command(BaseCommand):
    help = "Run the demo tasks on a real Celery worker (and beat) and print what Task Badger recorded."
    requires_system_checks: list = []  # no key is expected here: the demo brings its own API

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the tasks")

    def handle(self, *args: Any, **options: Any) -> None:
        self.started = time.monotonic()
        server = self._api()
        from testproject.celery import app

        app.control.purge()  # a fresh start on the demo's broker
        env = {**os.environ, "DEMO_BEAT_INTERVAL": "2", "PYTHONUNBUFFERED": "1"}
        if server is not None:
            env.update(TASKBADGER_API_KEY=server.api_key, TASKBADGER_HOST=server.url)
        processes = []
        try:
            processes.append(self._start("worker", ["worker", "-P", "prefork", "-c", "2", "-n", "demo@%h",
                                                    "--without-gossip", "--without-mingle"], env))
            self._wait_for_worker(app, processes[0])
            processes.append(self._start("beat", ["beat", "--max-interval", "1"], env))
            self._say("worker and beat are up; publishing the demo tasks")
            expected = self._publish(app)
            rows = self._watch(expected, options["timeout"])
        finally:
            for name, process in reversed(processes):
                self._stop(name, process)
            if server is not None:
                server.stop()
        self._print_table(rows)
        missing = [name for name, status in _EXPECTED.items() if not any(
            r["name"] == name and r["status"] == status for r in rows)]
        if missing:
            raise CommandError(f"these demo tasks did not end as expected: {', '.join(missing)}")
        self._say(f"demo finished in {time.monotonic() - self.started:.1f} s")

    # -- set-up ----------------------------------------------------------------------------------

    def _api(self) -> Any:
        if os.environ.get("TASKBADGER_API_KEY") or (getattr(settings, "TASKBADGER", {}) or {}).get("API_KEY"):
            if conf.configure() is None:
                raise CommandError("TASKBADGER_API_KEY is set but Task Badger is not configured: "
                                   "run `manage.py check` for details.")
            self._say(f"tracking against {taskbadger.get_config().host}")
            return None
        from taskbadger.testing import TaskBadgerServer

        server = TaskBadgerServer().start()
        conf.configure(api_key=server.api_key, host=server.url)
        self._say(f"no TASKBADGER_API_KEY: started the stand-in Task Badger API at {server.url}")
        return server

    def _start(self, name: str, celery_args: list[str], env: dict[str, str]) -> tuple[str, subprocess.Popen]:
        log_dir = Path(settings.VAR_DIR)
        log_dir.mkdir(exist_ok=True)
        log = open(log_dir / f"demo-{name}.log", "wb")
        cmd = [sys.executable, "-m", "celery", "-A", "testproject", *celery_args, "--loglevel=INFO"]
        process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=settings.BASE_DIR)
        return name, process

    def _wait_for_worker(self, app: Any, worker: tuple[str, subprocess.Popen], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not app.control.ping(timeout=0.5):
            if worker[1].poll() is not None or time.monotonic() > deadline:
                raise CommandError("the Celery worker did not start: see demo-worker.log in the var directory")

    def _stop(self, name: str, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # warm shutdown: running tasks finish, updates are flushed
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    # -- the demo ---------------------------------------------------------------------------------

    def _publish(self, app: Any) -> dict[str, str]:
        from demo import tasks

        results = {
            "send_welcome_email": tasks.send_welcome_email.delay(42),
            "import_contacts": tasks.import_contacts.delay(200),
            "charge_card": tasks.charge_card.delay(1999),
            "sync_inventory": tasks.sync_inventory.delay(),
            "rebuild_search_index": tasks.rebuild_search_index.delay(3),
            "export_archive": tasks.export_archive.delay(60),
        }
        ids = {name: r.taskbadger_task_id for name, r in results.items()}
        untracked = [name for name, task_id in ids.items() if not task_id]
        if untracked:
            raise CommandError(f"these tasks were published untracked: {', '.join(untracked)} "
                               "(is the Task Badger API reachable?)")
        self._revoke_when_running(app, results["export_archive"], ids["export_archive"])
        return ids

    def _revoke_when_running(self, app: Any, result: Any, task_id: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while taskbadger.get_task(task_id).status != "processing":
            if time.monotonic() > deadline:
                raise CommandError("export_archive never started")
            time.sleep(0.2)  # polling the API for the task to start, under a deadline
        self._say("export_archive is running: revoking it (terminate=True)")
        app.control.revoke(result.id, terminate=True)

    def _watch(self, ids: dict[str, str], timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        last_line = ""
        while True:
            rows = self._collect(ids)
            finished = [r for r in rows if r["status"] in FINAL]
            beat = [r for r in rows if r["name"] == "demo.tasks.nightly_report"]
            line = f"  {len(finished)}/{len(rows)} tasks finished ({self._counts(rows)})"
            if line != last_line:
                self._say(line)
                last_line = line
            if len(finished) == len(rows) and len(rows) >= len(ids) + 3 and beat:
                return rows
            if time.monotonic() > deadline:
                self._say("timed out waiting for the demo tasks")
                return rows
            time.sleep(0.5)  # refresh the progress line

    def _collect(self, ids: dict[str, str]) -> list[dict[str, Any]]:
        rows = []
        for task_id in ids.values():
            task = taskbadger.get_task(task_id)
            rows.append(_row(task, depth=0))
            if task.name == "demo.tasks.rebuild_search_index":
                rows.extend(_row(child, depth=1) for child in taskbadger.iter_tasks(parent=task_id))
        # beat publishes nightly_report every 2 s here: show its first run
        since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=time.monotonic() - self.started + 5)
        beat_runs = [task for task in taskbadger.list_tasks(page_size=50)
                     if task.name == "demo.tasks.nightly_report" and task.created and task.created >= since]
        if beat_runs:
            rows.append(_row(min(beat_runs, key=lambda t: t.created), depth=0))
        return rows

    @staticmethod
    def _counts(rows: list[dict[str, Any]]) -> str:
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))

    def _print_table(self, rows: list[dict[str, Any]]) -> None:
        headers = ("name", "status", "progress", "duration", "error / note")
        table = [headers] + [(("  └ " if r["depth"] else "") + r["name"], r["status"], r["progress"], r["duration"],
                              r["note"]) for r in rows]
        widths = [max(len(str(row[i])) for row in table) for i in range(len(headers))]
        self.stdout.write("")
        for i, row in enumerate(table):
            cells = (str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
            self.stdout.write("  ".join(cells).rstrip())
            if i == 0:
                self.stdout.write("  ".join("-" * width for width in widths))
        self.stdout.write("")

    def _say(self, message: str) -> None:
        self.stdout.write(f"[{time.monotonic() - self.started:5.1f}s] {message}")
        self.stdout.flush()


# demo task -> the status it must end with
_EXPECTED = {
    "demo.tasks.send_welcome_email": "success",
    "demo.tasks.import_contacts": "success",
    "demo.tasks.charge_card": "error",
    "demo.tasks.sync_inventory": "success",
    "demo.tasks.rebuild_search_index": "success",
    "demo.tasks.index_shard": "success",
    "demo.tasks.export_archive": "cancelled",
    "demo.tasks.nightly_report": "success",
}


def _row(task: Any, depth: int) -> dict[str, Any]:
    data = task.data if isinstance(task.data, dict) else {}
    duration = ""
    if task.start_time and task.end_time:
        duration = f"{(task.end_time - task.start_time).total_seconds():.2f} s"
    progress = f"{task.value}/{task.value_max or 100}" if task.value is not None else ""
    note = ""
    if "exception" in data:
        note = data["exception"].strip().splitlines()[-1]
    elif data.get("retries"):
        note = f"succeeded after {data['retries']} retries"
    elif data.get("celery_revoked"):
        note = f"revoked ({data['celery_revoked']})"
    elif task.name == "demo.tasks.nightly_report":
        note = "published by celery beat; monitor from settings"
    return {"name": task.name, "status": str(task.status), "progress": progress, "duration": duration,
            "note": note, "depth": depth}
