"""The django.tasks test project, run as real processes: ``manage.py migrate``, the web process's side
(``manage.py djt``: enqueue, read a result, run one again) and the workers (``manage.py db_worker``,
``manage.py rqworker``), all with ``tests.django_tasks_project.settings`` on one database.

Each enqueue is a process of its own (a web process's tracking state starts fresh: the fault tests' breaker must
not carry over from one mode to the next). What only reads or writes the backend's storage (a result, a job made
older or run again) goes to one long-lived ``manage.py djt serve`` per project: a Django start costs about a
second of CPU, and a test module polls results dozens of times."""

from __future__ import annotations

import json
import os
import pathlib
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import pytest

from .workers import INTERNAL_ERROR, ROOT

SETTINGS = "tests.django_tasks_project.settings"

#: This test process's migrated SQLite database: a project on SQLite alone starts from a copy of it instead of its
#: own ``migrate`` (two seconds of CPU each; most RQ tests make a project of their own). The schema does not depend
#: on the backend or the settings a project varies.
_migrated: pathlib.Path | None = None


class Project:
    def __init__(self, server: Any, backend: str, database_url: str | None = None, **env: str) -> None:
        self.server = server
        self.backend = backend
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="tbdjt-"))
        self.queue = f"q-{uuid.uuid4().hex[:8]}" if backend in ("rq", "broker") else "default"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": SETTINGS,
            "PYTHONPATH": str(ROOT),
            "TESTPROJECT_VAR_DIR": str(self.dir),
            "DATABASE_URL": database_url or f"sqlite:///{self.dir / 'db.sqlite3'}",
            "DJT_BACKEND": backend,
            "DJT_QUEUE": self.queue,
            "TASKBADGER_HOST": server.url,
            "TASKBADGER_API_KEY": server.api_key,
            "TASKBADGER_LOG_LEVEL": "INFO",
            **env,
        }
        self.workers: list[subprocess.Popen] = []
        self.logs: list[pathlib.Path] = []
        self._helper: subprocess.Popen | None = None

    def manage(self, *args: str, timeout: float = 60.0, **env: str) -> str:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**self.env, **env},
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"manage.py {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")
        assert INTERNAL_ERROR not in done.stderr, done.stderr
        return done.stdout

    def served(self, *args: str, timeout: float = 60.0) -> str:
        """``manage.py djt ARGS`` run by the project's ``djt serve`` process (started on first use)."""
        if self._helper is None or self._helper.poll() is not None:
            log = self.dir / "djt-serve.log"
            self.logs.append(log)
            with open(log, "ab") as err:
                self._helper = subprocess.Popen([sys.executable, "manage.py", "djt", "serve", "-"], cwd=ROOT,
                                                env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                stderr=err, text=True, bufsize=1)
        helper = self._helper
        assert helper.stdin is not None and helper.stdout is not None
        helper.stdin.write(json.dumps(args) + "\n")
        helper.stdin.flush()
        deadline = time.monotonic() + timeout
        while not select.select([helper.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
            if time.monotonic() >= deadline:
                helper.kill()  # its answer would be read as the next command's
                raise AssertionError(f"djt serve: no answer to {args} within {timeout} s:\n{self.log()[-4000:]}")
        line = helper.stdout.readline()
        if not line:
            raise AssertionError(f"djt serve exited {helper.wait()}:\n{self.log()[-4000:]}")
        answer = json.loads(line)
        if "error" in answer:
            raise AssertionError(f"manage.py djt {' '.join(args)} failed:\n{answer['error']}")
        return str(answer["out"])

    def migrate(self) -> Project:
        database = self.dir / "db.sqlite3"
        if self.env["DATABASE_URL"] == f"sqlite:///{database}" and not any(
                name in self.env for name in ("DJT_JOBS_DATABASE_URL", "DJT_REPLICA_DATABASE_URL")):
            shutil.copyfile(_migrated_sqlite(self), database)
            return self
        self.manage("migrate", "--noinput", "-v", "0")
        if self.env.get("DJT_JOBS_DATABASE_URL"):  # the second database (tests.django_tasks_project.routers)
            self.manage("migrate", "--noinput", "-v", "0", "--database", "jobs")
        if self.env.get("DJT_REPLICA_DATABASE_URL"):
            self.manage("migrate", "--noinput", "-v", "0", "--database", "replica")
        return self

    def enqueue(self, task: str, *args: Any, count: int = 1, rollback: bool = False, failing_hook: bool = False,
                run_after_days: float | None = None, hold_until_started: bool = False, using: str | None = None,
                hold: float = 0.0, hold_until_finished: bool = False, **env: str) -> list[dict[str, Any]]:
        """``using``: the alias of the transaction (with ``rollback``, ``hold_until_started`` or ``hold``);
        ``hold``: seconds the transaction stays open after the enqueue; ``hold_until_finished``: until the job has
        finished (30 s at most), and the last line says how the hold ended (``{"hold": "finished" or "deadline"}``)."""
        out = self.manage("djt", "enqueue", task, json.dumps(list(args)), "--count", str(count),
                          *(["--rollback"] if rollback else []), *(["--failing-hook"] if failing_hook else []),
                          *(["--using", using] if using else []), *(["--hold", str(hold)] if hold else []),
                          *(["--run-after-days", str(run_after_days)] if run_after_days is not None else []),
                          *(["--hold-until-started"] if hold_until_started else []),
                          *(["--hold-until-finished"] if hold_until_finished else []), **env)
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def result(self, result_id: str, until: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """The TaskResult as the backend reports it; with ``until``, once it has that status (or at ``timeout``)."""
        wait = ["--until", until, "--timeout", str(timeout)] if until else []
        return json.loads(self.served("result", result_id, *wait, timeout=timeout + 60).strip().splitlines()[-1])

    def age(self, result_id: str, days: float) -> None:
        """``days`` pass for a task not due yet: its entry and its job's run_after are that much earlier."""
        self.served("age", result_id, str(days))

    def rerun(self, result_id: str) -> None:
        self.served("rerun", result_id)

    def start_worker(self, **env: str) -> subprocess.Popen:
        if self.backend == "db":
            cmd = ["db_worker", "--queue-name", self.queue, "--interval", "0.05", "--no-startup-delay"]
        elif self.backend == "broker":  # its jobs run in the worker's process (no work horse to flush)
            cmd = ["rqworker", "--worker-class", "rq.worker.SimpleWorker", "--job-class", "django_tasks_rq.Job",
                   self.queue]
        else:
            cmd = ["rqworker", "--job-class", "django_tasks_rq.Job", self.queue]
        log = self.dir / f"worker-{len(self.workers)}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            process = subprocess.Popen([sys.executable, "manage.py", *cmd], cwd=ROOT, env={**self.env, **env},
                                       stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        self.workers.append(process)
        return process

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def stop(self) -> None:
        if self._helper is not None:
            self._helper.stdin.close()  # type: ignore[union-attr]  (its loop ends at end of input)
            try:
                self._helper.wait(20)
            except subprocess.TimeoutExpired:
                self._helper.kill()
                self._helper.wait(10)
            self._helper = None
        for process in self.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.workers:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the worker and its work horses
                process.wait(10)
        self.workers.clear()
        assert INTERNAL_ERROR not in self.log(), self.log()[-4000:]


def _migrated_sqlite(project: Project) -> pathlib.Path:
    global _migrated
    if _migrated is None:
        template = pathlib.Path(tempfile.mkdtemp(prefix="tbdjt-migrated-")) / "db.sqlite3"
        project.manage("migrate", "--noinput", "-v", "0", DATABASE_URL=f"sqlite:///{template}")
        assert not template.with_name("db.sqlite3-wal").exists()  # all of it in the file (rollback journal mode)
        _migrated = template
    return _migrated


def faults_project_fixture(budget: float) -> Any:
    """``project``: a module's own project with a started worker, on SQLite (``db_worker``) and on RQ, its processes
    run with a publish budget of ``budget`` seconds; the stand-in's faults are cleared after the module."""
    from .services import require

    @pytest.fixture(scope="module", params=["sqlite", "rq"], name="project")
    def project(request: Any, taskbadger_server_session: Any) -> Any:
        if request.param == "rq":
            require("redis")
        made = Project(taskbadger_server_session, "db" if request.param == "sqlite" else "rq",
                       DJT_PUBLISH_BUDGET=str(budget)).migrate()
        made.start_worker()
        try:
            yield made
        finally:
            taskbadger_server_session.clear_faults()
            taskbadger_server_session.accept()
            made.stop()

    return project
