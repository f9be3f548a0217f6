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

#: Scheduled pings of stopped tasks kept beyond twice the running tasks' before they are swept out.
COMPACT_SLACK = 64


class Heartbeat:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._intervals: dict[str, tuple[float, int]] = {}  # running task id -> (interval, its start's number)
        self._due: list[tuple[float, int, str]] = []  # heap of (next ping, start's number, task id)
        self._starts = 0
        self._thread: threading.Thread | None = None

    def start(self, task_id: str, interval: float) -> int:
        """Ping ``task_id`` every ``interval`` seconds until ``stop``: this start's number, for ``stop``."""
        with self._cond:
            self._starts += 1
            self._intervals[task_id] = (interval, self._starts)
            heapq.heappush(self._due, (time.monotonic() + interval, self._starts, task_id))
            if self._thread is None or not self._thread.is_alive():
                # None when no thread can start (3.12+: the interpreter shutting down): no pings, tried again at
                # the next start
                self._thread = start_daemon_thread(self._run, "taskbadger-heartbeat")
            self._cond.notify()
            return self._starts

    def stop(self, task_id: str, start: int | None = None) -> None:
        """Stop pinging ``task_id``; with ``start`` (what ``start`` returned), only if that start is still the
        task's: another run of the task started since in this process (a retry's next attempt, run in another
        thread or greenlet before this one ended) keeps its pings."""
        with self._cond:
            running = self._intervals.get(task_id)
            if running is not None and (start is None or running[1] == start):
                del self._intervals[task_id]  # its heap entry is skipped when it comes up
            if len(self._due) > 2 * len(self._intervals) + COMPACT_SLACK:
                # Entries of stopped tasks stay until their next ping was due, up to a whole interval (a day at
                # most): a worker running fast tasks with a long heartbeat held one per task it ran in that time.
                self._due = [entry for entry in self._due if self._live(entry)]
                heapq.heapify(self._due)

    def _live(self, entry: tuple[float, int, str]) -> bool:
        running = self._intervals.get(entry[2])
        return running is not None and running[1] == entry[1]

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due or self._due[0][0] > time.monotonic():
                    timeout = self._due[0][0] - time.monotonic() if self._due else None
                    self._cond.wait(timeout)
                entry = heapq.heappop(self._due)
                if not self._live(entry):
                    continue  # stopped, or started again (a retry in this process): that start has its own
                due_at, start, task_id = entry
                interval = self._intervals[task_id][0]
                heapq.heappush(self._due, (max(due_at + interval, time.monotonic()), start, task_id))
            try:
                sender.submit(task_id, {})
            except Exception:
                log.exception("Task Badger: heartbeat for task %s failed", short(task_id))


_heartbeat: PerProcess[Heartbeat] = PerProcess(Heartbeat)


def get_heartbeat() -> Heartbeat:
    """This process's heartbeat (a forked child makes its own thread)."""
    return _heartbeat.get()
