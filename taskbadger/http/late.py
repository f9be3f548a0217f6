"""Answers that arrive after their call gave up: read in the background, handed to whoever asked.

A create abandoned at its deadline may still be carried out by the API. Its caller has gone on (the
task was published untracked), but the answer, when it comes, names a task that nobody will ever
close. The caller can ask for that answer (``late_answer=``): the connection then goes to this
process's late-answer reader instead of being closed, and the reader calls back with the answer if it
arrives within ``HORIZON`` seconds. The connection is closed afterwards, never reused.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable

from .._runtime import PerProcess, start_daemon_thread
from .connection import READABLE, Connection
from .errors import Answer

log = logging.getLogger("taskbadger")
Expect = Callable[[Answer], bool] | None

#: How long an abandoned answer is waited for.
HORIZON = 60.0
#: Most connections waited on at once; more are closed at once (their answers are lost).
MAX_WAITING = 64
#: The reader wakes at least this often to drop connections past their horizon.
TICK = 1.0


class LateReader:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # fd -> (connection, callback, expect, horizon)
        self._waiting: dict[int, tuple[Connection, Callable[[Answer], None], Expect, float]] = {}
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = _pipe()

    def adopt(self, conn: Connection, callback: Callable[[Answer], None], expect: Expect = None) -> None:
        """Wait in the background for the rest of ``conn``'s answer, then call ``callback`` with it
        (answers that ``expect`` says were meant for other requests are skipped)."""
        if conn.sock is None:
            return
        with self._lock:
            if len(self._waiting) >= MAX_WAITING:
                conn.close()
                return
            if self._thread is None:
                self._thread = start_daemon_thread(self._run, "taskbadger-late-answers")
                if self._thread is None:  # the interpreter is shutting down (3.12+: an atexit handler): nobody
                    conn.close()  # would be left to hear the answer anyway
                    return
            self._waiting[conn.sock.fileno()] = (conn, callback, expect, time.monotonic() + HORIZON)
        _poke(self._wake_w)

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def _run(self) -> None:
        while True:
            with self._lock:
                entries = dict(self._waiting)
            now = time.monotonic()
            for fd, (conn, _, _, horizon) in list(entries.items()):
                if horizon <= now:
                    self._forget(fd)
                    conn.close()
                    del entries[fd]
            ready = _poll([*entries, self._wake_r], TICK)
            for fd in ready:
                if fd == self._wake_r:
                    _drain(self._wake_r)
                    continue
                conn, callback, expect, _ = entries[fd]
                try:
                    answer = conn.receive_some()
                    while answer is not None and expect is not None and not expect(answer):
                        answer = conn.receive_some()
                except OSError:
                    answer = None
                    conn.close()
                if answer is None and conn.sock is not None:
                    continue  # more to come
                self._forget(fd)
                conn.close()
                if answer is not None:
                    try:
                        callback(answer)
                    except Exception:
                        log.exception("Task Badger: internal error while handling a late answer",
                                      extra={"taskbadger_internal_error": True})

    def _forget(self, fd: int) -> None:
        with self._lock:
            self._waiting.pop(fd, None)


def _pipe() -> tuple[int, int]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w


def _poke(fd: int) -> None:
    try:
        os.write(fd, b"x")
    except (BlockingIOError, OSError):
        pass  # already poked


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, OSError):
        pass


def _poll(fds: list[int], timeout: float) -> list[int]:
    if hasattr(select, "poll"):
        poller = select.poll()
        for fd in fds:
            poller.register(fd, READABLE | select.POLLERR | select.POLLHUP)
        return [fd for fd, _ in poller.poll(int(timeout * 1000))]
    readable, _, failed = select.select(fds, [], fds, timeout)
    return list({*readable, *failed})


_reader: PerProcess[LateReader] = PerProcess(LateReader)


def reader() -> LateReader:
    """This process's reader (a forked child makes its own)."""
    return _reader.get()
