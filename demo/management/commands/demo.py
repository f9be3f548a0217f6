"""`manage.py demo`: run the demo tasks on a real Celery worker and beat, and show what Task Badger records.

Without TASKBADGER_API_KEY it starts the stand-in Task Badger API (``taskbadger.testing``) and its live
dashboard first, so it needs no service and no key; with a key it tracks against that Task Badger
project. The broker is whatever CELERY_BROKER_URL says (by default the embedded one, on local files).
It also serves the demo's progress page (``demo/views.py``): the bars of its tasks, as a user would see
them (``{% taskbadger_progress %}``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

import taskbadger
from taskbadger_django import conf

FINAL = {"success", "error", "cancelled"}
SHORT = "demo.tasks."
# demo task -> the status it must end with
EXPECTED = {
    "send_welcome_email": "success",
    "import_contacts": "success",
    "charge_card": "error",
    "sync_inventory": "success",
    "rebuild_search_index": "success",
    "index_shard": "success",
    "export_archive": "cancelled",
    "nightly_report": "success",
    "send_receipt": "success",
}
SHARDS = 3
WORKER_NAME = "demo"
#: the tasks the demo publishes (6 Celery, 1 django.tasks), the shards rebuild_search_index publishes, and one
#: run of beat's
WATCHED = 7 + SHARDS + 1


class Command(BaseCommand):
    help = "Run the demo tasks on a real Celery worker (and beat) and show what Task Badger records."
    requires_system_checks: list = []  # no key is expected here: the demo brings its own API

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the tasks")
        parser.add_argument("--keep-open", action="store_true",
                            help="keep the stand-in API and its dashboard up after the run, until Ctrl-C")

    def handle(self, *args: Any, **options: Any) -> None:
        self.started = time.monotonic()
        self.tty = self.stdout.isatty()
        self.worker_node = f"{WORKER_NAME}@{socket.gethostname()}"  # what Celery makes of "-n demo@%h"
        server = self._api()
        web, page = self._web()
        from testproject.celery import app

        app.control.purge()  # a fresh start on the demo's broker
        with app.connection_for_write() as connection:  # and in the worker's mailbox: a stale `shutdown`
            connection.default_channel.queue_purge(f"{self.worker_node}.celery.pidbox")  # would stop it at once
        env = {**os.environ, "DEMO_BEAT_INTERVAL": "2", "PYTHONUNBUFFERED": "1"}
        if server is not None:
            env.update(TASKBADGER_API_KEY=server.api_key, TASKBADGER_HOST=server.url)
        processes: list[tuple[str, subprocess.Popen]] = []
        try:
            processes.append(self._start("worker", ["worker", "-P", "prefork", "-c", "2", "-n", f"{WORKER_NAME}@%h",
                                                    "--without-gossip", "--without-mingle"], env))
            processes.append(self._start("beat", ["beat", "--max-interval", "1"], env))
            self._wait_for_worker(app, processes[0])
            self._say(f"worker and beat are up; watching {WATCHED} tasks: 7 published now (one a django.tasks "
                      f"task), {SHARDS} that one of them publishes, and one that beat publishes")
            ids = self._publish(app)
            self._say(f"progress page: {page}  (open it now: the tasks' progress bars, as your users would see them)")
            rows = self._watch(ids, options["timeout"])
        finally:
            self._stop(processes)
        self._print_table(rows)
        missing = [name for name, status in EXPECTED.items()
                   if not any(r["name"] == SHORT + name and r["status"] == status for r in rows)]
        self._epilogue(server, options["keep_open"])
        if server is not None:
            if options["keep_open"]:
                self._keep_open(server, page)
            server.stop()
        web.shutdown()
        web.server_close()
        if missing:
            raise CommandError(f"these demo tasks did not end as expected: {', '.join(missing)}")

    # -- set-up ----------------------------------------------------------------------------------

    def _api(self) -> Any:
        if os.environ.get("TASKBADGER_API_KEY") or (getattr(settings, "TASKBADGER", {}) or {}).get("API_KEY"):
            if conf.configure() is None:
                raise CommandError("TASKBADGER_API_KEY is set but Task Badger is not configured: "
                                   "run `manage.py check` for details.")
            self._say(f"Task Badger demo: tracking against your project at {taskbadger.get_config().host}")
            return None
        from taskbadger.testing import TaskBadgerServer

        server = TaskBadgerServer().start()
        conf.configure(api_key=server.api_key, host=server.url)
        self._say("Task Badger demo, on the stand-in API (no TASKBADGER_API_KEY set: nothing leaves this machine)")
        self._say(f"dashboard: {server.url}/  (open it now to watch the tasks live)")
        return server

    def _web(self) -> tuple[Any, str]:
        """Serve the test project (its progress page and the bars' script) on a free port, in a thread."""
        from django.contrib.staticfiles.handlers import StaticFilesHandler
        from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
        from django.core.wsgi import get_wsgi_application

        class QuietHandler(WSGIRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # the demo tells its own story on stdout
                pass

        httpd = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler)
        httpd.daemon_threads = True
        httpd.set_app(StaticFilesHandler(get_wsgi_application()))
        threading.Thread(target=httpd.serve_forever, name="demo-web", daemon=True).start()
        return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/demo/"

    def _log_dir(self) -> Path:
        log_dir = Path(settings.VAR_DIR)
        log_dir.mkdir(exist_ok=True)
        return log_dir

    def _start(self, name: str, celery_args: list[str], env: dict[str, str]) -> tuple[str, subprocess.Popen]:
        log = open(self._log_dir() / f"demo-{name}.log", "wb")
        cmd = [sys.executable, "-m", "celery", "-A", "testproject", *celery_args, "--loglevel=INFO"]
        process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=settings.BASE_DIR)
        return name, process

    def _wait_for_worker(self, app: Any, worker: tuple[str, subprocess.Popen], timeout: float = 30.0) -> None:
        self._say("starting a Celery worker and celery beat…")
        deadline = time.monotonic() + timeout
        while not app.control.ping(timeout=0.5):
            if worker[1].poll() is not None or time.monotonic() > deadline:
                raise CommandError("the Celery worker did not start: see demo-worker.log in the var directory")

    def _stop(self, processes: list[tuple[str, subprocess.Popen]]) -> None:
        running = [(name, p) for name, p in processes if p.poll() is None]
        if not running:
            return
        self._say("stopping the worker and beat (a warm shutdown: running tasks finish, updates are flushed)…")
        # The worker hears a `shutdown` control message at once; SIGTERM is only noticed between two polls
        # of the broker, which added 3-4 s here. Beat stops on SIGTERM. Both at once: their shutdowns overlap.
        from testproject.celery import app

        for name, process in running:
            if name == "worker":
                app.control.shutdown(destination=[self.worker_node])
            else:
                process.send_signal(signal.SIGTERM)
        for _, process in running:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:  # the control message did not reach it: the signal then
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
        self._say("stopped")

    # -- the demo ---------------------------------------------------------------------------------

    def _publish(self, app: Any) -> dict[str, str]:
        from demo import tasks

        results = {
            "send_welcome_email": tasks.send_welcome_email.delay(42),
            "import_contacts": tasks.import_contacts.delay(200),
            "charge_card": tasks.charge_card.delay(1999),
            "sync_inventory": tasks.sync_inventory.delay(),
            "rebuild_search_index": tasks.rebuild_search_index.delay(SHARDS),
            "export_archive": tasks.export_archive.delay(60),
        }
        ids = {name: r.taskbadger_task_id for name, r in results.items()}
        from taskbadger_django import task_id_for

        ids["send_receipt"] = task_id_for(tasks.send_receipt.enqueue(7))  # django.tasks
        untracked = [name for name, task_id in ids.items() if not task_id]
        if untracked:
            raise CommandError(f"these tasks were published untracked: {', '.join(untracked)} "
                               "(is the Task Badger API reachable?)")
        from demo import views

        views.TASKS[:] = [("Importing 200 contacts", ids["import_contacts"]),
                          ("Charging a card", ids["charge_card"]),
                          ("Syncing the inventory (it retries twice)", ids["sync_inventory"]),
                          ("Writing an archive (the demo revokes it)", ids["export_archive"])]
        self._export = (app, results["export_archive"], ids["export_archive"])
        return ids

    def _watch(self, ids: dict[str, str], timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        shown_percent = -1
        revoked = False
        while True:
            rows = self._collect(ids)
            for row in rows:
                key = row["id"]
                if seen.get(key) != row["status"]:
                    before = seen.get(key)
                    seen[key] = row["status"]
                    change = f"{before} → {row['status']}" if before else row["status"]
                    extra = f"  ({row['note']})" if row["status"] in FINAL and row["note"] else ""
                    self._say(f"{row['name'].removeprefix(SHORT):<22} {change}{extra}")
                if row["name"] == SHORT + "import_contacts" and row["percent"] is not None \
                        and row["percent"] >= shown_percent + 20 and row["status"] not in FINAL:
                    shown_percent = row["percent"]
                    self._say(f"{'import_contacts':<22} {_bar(row['percent'])}")
            app, result, export_id = self._export
            if not revoked and seen.get(export_id) == "processing":
                self._say(f"{'export_archive':<22} is running: revoking it (terminate=True)")
                app.control.revoke(result.id, terminate=True)
                revoked = True
            finished = [r for r in rows if r["status"] in FINAL]
            if len(finished) >= WATCHED:
                self._say(f"all {WATCHED} tasks finished: {self._counts(rows)}")
                return rows
            if time.monotonic() > deadline:
                self._say(f"timed out: {len(finished)} of {WATCHED} tasks finished ({self._counts(rows)})")
                return rows
            time.sleep(0.3)  # the next look at the API

    def _collect(self, ids: dict[str, str]) -> list[dict[str, Any]]:
        rows = []
        for task_id in ids.values():
            task = taskbadger.get_task(task_id)
            rows.append(_row(task, depth=0))
            if task.name == SHORT + "rebuild_search_index":
                rows.extend(_row(child, depth=1) for child in taskbadger.iter_tasks(parent=task_id))
        # beat publishes nightly_report every 2 s here: show its first run of this demo
        beat_runs = [task for task in taskbadger.list_tasks(page_size=50) if task.name == SHORT + "nightly_report"
                     and task.created and task.created.timestamp() >= time.time() - (time.monotonic() - self.started)]
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
        headers = ("task", "status", "progress", "ran for", "what happened")
        table = [headers] + [(("  └ " if r["depth"] else "") + r["name"].removeprefix(SHORT), r["status"],
                              r["progress"], r["duration"], r["note"]) for r in rows]
        widths = [max(len(str(row[i])) for row in table) for i in range(len(headers))]
        self.stdout.write("")
        for i, row in enumerate(table):
            cells = (str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
            self.stdout.write("  ".join(cells).rstrip())
            if i == 0:
                self.stdout.write("  ".join("-" * width for width in widths))
        self.stdout.write("")

    def _epilogue(self, server: Any, keep_open: bool) -> None:
        logs = self._log_dir()
        self._say(f"demo finished in {time.monotonic() - self.started:.1f} s")
        self.stdout.write(f"Logs: {logs / 'demo-worker.log'}, {logs / 'demo-beat.log'}")
        self.stdout.write("Next: the tasks are in demo/tasks.py; the Django walkthrough is in the README "
                          "(\"Django quick start\");\n      `python -m taskbadger.testing` starts the stand-in API "
                          "on its own.")
        if server is not None and not keep_open:
            self.stdout.write("Run `python manage.py demo --keep-open` to look around the dashboard after the run.")

    def _keep_open(self, server: Any, page: str) -> None:
        stop = threading.Event()
        previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
        self.stdout.write(f"The stand-in API and its dashboard stay up at {server.url}/, the progress page at "
                          f"{page} — press Ctrl-C to stop.")
        self.stdout.flush()
        try:
            while not stop.wait(0.5):
                pass
        finally:
            signal.signal(signal.SIGINT, previous)

    def _say(self, message: str) -> None:
        self.stdout.write(f"[{time.monotonic() - self.started:5.1f}s] {message}")
        self.stdout.flush()


def _bar(percent: int, width: int = 20) -> str:
    filled = width * percent // 100
    return f"[{'#' * filled}{'.' * (width - filled)}] {percent}%"


def _row(task: Any, depth: int) -> dict[str, Any]:
    data = task.data if isinstance(task.data, dict) else {}
    duration = ""
    if task.start_time and task.end_time:
        duration = f"{(task.end_time - task.start_time).total_seconds():.2f} s"
    percent = task.value_percent if task.value is not None else None
    progress = f"{percent}%" if percent is not None else ""
    note = ""
    if "exception" in data:
        note = data["exception"].strip().splitlines()[-1]
    elif data.get("retries"):
        note = f"succeeded after {data['retries']} retries"
    elif data.get("celery_revoked"):
        note = f"revoked ({data['celery_revoked']})"
    elif task.name == SHORT + "nightly_report":
        note = "published by celery beat; its monitor comes from settings"
    elif task.name == SHORT + "index_shard":
        note = "a child of rebuild_search_index"
    return {"id": task.id, "name": task.name, "status": str(task.status), "progress": progress, "percent": percent,
            "duration": duration, "note": note, "depth": depth}
