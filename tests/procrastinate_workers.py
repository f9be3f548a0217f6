"""Real ``procrastinate worker`` processes (and ``manage.py procrastinate worker``) for the integration tests.

A worker runs ``tests.procrastinate_project.app`` (or the Django test project) on a database of its own
(``tests.services.postgres_database``), with the stand-in API's URL and key in its environment. Ready when
it has logged that it started; stopped by SIGTERM (Procrastinate's graceful shutdown) under a deadline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from .workers import ROOT, Worker

APP = "tests.procrastinate_project.app.app"
READY = "Starting worker"


class ProcrastinateWorker(Worker):
    def __init__(
        self,
        server,
        dsn: str,
        extra_env: dict | None = None,
        django: bool = False,
        queue: str | None = None,
        concurrency: int = 4,
        verbosity: int = 1,
    ) -> None:
        super().__init__(
            server,
            pool="procrastinate",
            concurrency=concurrency,
            extra_env=extra_env,
            queue=queue or f"q-{uuid.uuid4().hex[:8]}",
        )
        self.dsn = dsn
        self.django = django
        self.verbosity = verbosity  # procrastinate's -v: 1 is INFO, 2 DEBUG (without Django)

    def start(self, timeout: float = 60.0) -> ProcrastinateWorker:
        env = {
            **os.environ,
            "TASKBADGER_HOST": self.server.url,
            "TASKBADGER_API_KEY": self.server.api_key,
            "TB_PROCRASTINATE_DSN": self.dsn,
            "TB_PRO_WORKER": "1",
            "PYTHONPATH": str(ROOT),
            **self.extra_env,
        }
        worker_args = [
            "worker",
            "--queues",
            self.queue,
            "--concurrency",
            str(self.concurrency),
            "--fetch-job-polling-interval",
            "0.2",
            "--abort-job-polling-interval",
            "0.2",
        ]
        if self.django:
            cmd = [sys.executable, "manage.py", "procrastinate", *worker_args]  # logging: Django's LOGGING
        else:
            cmd = [sys.executable, "-m", "procrastinate", "--app", APP, "-" + "v" * self.verbosity, *worker_args]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while READY not in self.log():
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"worker not ready after {timeout} s:\n{self.log()}")
            time.sleep(0.05)  # polling its log for the start line, under a deadline
        return self
