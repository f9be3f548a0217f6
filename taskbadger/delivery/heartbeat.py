"""One background thread per process that pings running tasks every ``heartbeat_interval``.

Pings go through the queue of pending updates, so they never block the task and are merged away when
another update for the task is already waiting.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time

from .._runtime import PerProcess, short, start_daemon_thread
from . import sender

log = logging.getLogger("taskbadger")


class Heartbeat:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._intervals: dict[str, float] = {}
        self._due: list[tuple[float, str]] = []  # heap of (next ping, task id)
        self._thread: threading.Thread | None = None

    def start(self, task_id: str, interval: float) -> None:
        with self._cond:
            self._intervals[task_id] = interval
            heapq.heappush(self._due, (time.monotonic() + interval, task_id))
            if self._thread is None or not self._thread.is_alive():
                self._thread = start_daemon_thread(self._run, "taskbadger-heartbeat")
            self._cond.notify()

    def stop(self, task_id: str) -> None:
        with self._cond:
            self._intervals.pop(task_id, None)  # its heap entry is skipped when it comes up

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due or self._due[0][0] > time.monotonic():
                    timeout = self._due[0][0] - time.monotonic() if self._due else None
                    self._cond.wait(timeout)
                due_at, task_id = heapq.heappop(self._due)
                interval = self._intervals.get(task_id)
                if interval is None:
                    continue
                heapq.heappush(self._due, (max(due_at + interval, time.monotonic()), task_id))
            try:
                sender.submit(task_id, {})
            except Exception:
                log.exception("Task Badger: heartbeat for task %s failed", short(task_id))


_heartbeat: PerProcess[Heartbeat] = PerProcess(Heartbeat)


def get_heartbeat() -> Heartbeat:
    """This process's heartbeat (a forked child makes its own thread)."""
    return _heartbeat.get()
