"""Real Celery worker processes for the integration tests.

A worker is started with ``python -m celery -A tests.celery_project.app worker`` (or another test app), on its own
queue, with the stand-in API's URL and key in its environment. Readiness is a file the worker writes from
its ``worker_ready`` signal; stopping is a warm shutdown (SIGTERM) with a deadline.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parent.parent
INTERNAL_ERROR = "Task Badger: internal error"


def broker_url(kind: str) -> str:
    if kind == "filesystem":
        return "filesystem://localhost/"  # with a host: kombu warns about none on every connection
    if kind == "redis":
        return "redis://127.0.0.1:6379/7"
    if kind == "rabbitmq":
        return "amqp://guest:guest@127.0.0.1:5672//"
    raise ValueError(f"unknown broker {kind!r}: use filesystem, redis or rabbitmq")


class Worker:
    def __init__(self, server, pool: str = "prefork", concurrency: int = 2, extra_env: dict | None = None,
                 extra_args: list[str] | None = None, name: str | None = None, queue: str | None = None,
                 app: str = "tests.celery_project.app") -> None:
        self.server = server
        self.app = app
        self.pool = pool
        self.concurrency = concurrency
        self.queue = queue or f"q-{pool}-{uuid.uuid4().hex[:8]}"
        self.name = name or f"{pool}-{uuid.uuid4().hex[:6]}@localhost"
        self.extra_env = extra_env or {}
        self.extra_args = extra_args or []
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="tbworker-"))
        self.ready_file = self.dir / "ready"
        self.log_path = self.dir / "worker.log"
        self.process: subprocess.Popen | None = None
        self._checked_upto = 0
        self._stop_requested = False

    def start(self, timeout: float = 60.0) -> Worker:
        env = {
            **os.environ,
            "TASKBADGER_HOST": self.server.url,
            "TASKBADGER_API_KEY": self.server.api_key,
            "TB_READY_FILE": str(self.ready_file),
            "PYTHONPATH": str(ROOT),
            **self.extra_env,
        }
        cmd = [sys.executable, "-m", "celery", "-A", self.app, "worker", "-P", self.pool,
               "-c", str(self.concurrency), "-n", self.name, "-Q", self.queue, "--loglevel=INFO",
               "--without-gossip", "--without-mingle", *self.extra_args]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"worker not ready after {timeout} s:\n{self.log()}")
            time.sleep(0.05)  # polling for the readiness file, under a deadline
        return self

    def send(self, task, *args, **options):
        return task.apply_async(args, queue=self.queue, **options)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def new_internal_errors(self) -> str:
        text = self.log()
        new, self._checked_upto = text[self._checked_upto:], len(text)
        return "\n".join(line for line in new.splitlines() if INTERNAL_ERROR in line)

    def request_stop(self) -> None:
        """Start a warm shutdown (SIGTERM: finish running tasks, flush), once, without waiting for it."""
        if self.process is not None and self.process.poll() is None and not self._stop_requested:
            self.process.send_signal(signal.SIGTERM)
            self._stop_requested = True

    #: Longer than billiard's own wait: a prefork child whose task ended as the warm shutdown began waits up to 30 s
    #: for the main process to take its result (``Worker._ensure_messages_consumed``, 300 x 0.1 s; billiard 4.3), and
    #: the main process, joining its children, no longer takes results. Seen in a CI run (RabbitMQ leg) and
    #: reproduced with py-spy: the child in that wait, the main process in ``Pool.join``. Celery's, not ours.
    STOP_TIMEOUT = 45.0

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        if self.process is None or self.process.poll() is not None:
            if self.process is not None:
                self._log.close()
            return self.process.returncode if self.process else None
        self.request_stop()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"worker did not stop within {timeout} s:\n{self.log()[-3000:]}")
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
