"""Per-process state: singletons made afresh after ``fork``, background threads, bounded log lines.

Celery's prefork pool forks its children from a supervisor thread. A child inherits the parent's
objects as they were at that instant: its sockets (which two processes must never share), its
queues (the parent's to send), and its locks, possibly held by a parent thread that does not exist
in the child. So every piece of per-process state lives in a ``PerProcess`` or a ``ForkSafeLock``,
and one hook, registered once, resets them all in a forked child. A process forked without Python's fork
hooks (uWSGI's workers by default: ``fork(2)`` after the app is loaded, no ``PyOS_AfterFork_Child``) is
noticed the first time it uses any of them, and reset then.
"""

from __future__ import annotations

import logging
import mmap
import os
import pathlib
import signal
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("taskbadger")

# Everything reset in a forked child. Weak: a test's short-lived object does not stay here forever.
_after_fork: weakref.WeakSet[Any] = weakref.WeakSet()
#: The process the per-process state belongs to.
_pid = os.getpid()


def _fork_marker() -> mmap.mmap | None:
    """A byte that reads 1 in this process and 0 in any process forked from it, with Python's fork hooks or
    without: the kernel hands a child a zeroed copy of a page marked ``MADV_WIPEONFORK`` (Linux 4.14 and later;
    elsewhere None). Reading it is no system call, where ``getpid`` is one: the check runs several times per task,
    and a system call there cost a worker's receivers 13 % of their time (``benchmarks/overhead.py``)."""
    # Python's mmap module does not name the advice; Linux gives it the same number on every architecture we know.
    wipe = getattr(mmap, "MADV_WIPEONFORK", 18 if sys.platform == "linux" else None)
    if wipe is None:
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        page.madvise(wipe)
    except (OSError, ValueError):  # an older kernel refuses the advice (EINVAL)
        return None
    page[0] = 1
    return page


_marker = _fork_marker()


def _same_process() -> None:
    """Reset the per-process state if this process was forked without Python's fork hooks running."""
    marker = _marker
    if marker is not None and marker[0]:
        return
    if os.getpid() != _pid:
        _reset_after_fork()
    elif marker is not None:
        marker[0] = 1


class PerProcess(Generic[T]):
    """A value that belongs to one process: made on first use, made again in a forked child."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._value: T | None = None
        self._lock = threading.Lock()
        _after_fork.add(self)

    def get(self) -> T:
        _same_process()
        value = self._value
        if value is not None:
            return value
        with self._lock:
            if self._value is None:
                self._value = self._factory()
            return self._value

    def current(self) -> T | None:
        """The value, if this process made one (never makes one)."""
        _same_process()
        return self._value

    def replace(self, value: T | None) -> None:
        _same_process()
        with self._lock:
            self._value = value

    def _forget(self) -> None:
        self._value, self._lock = None, threading.Lock()


class ForkSafeLock:
    """A lock (``threading.Lock`` or ``RLock``) that a forked child gets afresh, never copied held."""

    def __init__(self, factory: Callable[[], Any] = threading.Lock) -> None:
        self._factory = factory
        self._lock = factory()
        _after_fork.add(self)

    def __enter__(self) -> bool:
        _same_process()
        return self._lock.__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        self._lock.__exit__(*exc_info)

    def _forget(self) -> None:
        self._lock = self._factory()


class RecentIds:
    """The Task Badger ids of the most recent ``limit`` jobs a process saw (a queue's id -> task id), the oldest
    forgotten first: for the events and the pages that know a job only by its queue's id. Thread-safe."""

    def __init__(self, limit: int) -> None:
        self._ids: OrderedDict[Any, str] = OrderedDict()
        self._lock = ForkSafeLock()
        self._limit = limit

    def remember(self, job_id: Any, task_id: str) -> None:
        # the ForkSafeLock's own ``with`` without its two frames: a worker remembers and forgets once per task
        _same_process()
        with self._lock._lock:
            self._ids[job_id] = task_id
            self._ids.move_to_end(job_id)
            while len(self._ids) > self._limit:
                self._ids.popitem(last=False)

    def get(self, job_id: Any) -> str | None:
        if not isinstance(job_id, (str, int)) or isinstance(job_id, bool):
            return None
        with self._lock:
            return self._ids.get(job_id)

    def forget(self, job_id: Any) -> str | None:
        if job_id is None or not self._ids:  # a pool child's map stays empty: its main process remembers
            return None
        _same_process()
        with self._lock._lock:
            return self._ids.pop(job_id, None)

    def forget_all(self, job_ids: list[Any]) -> list[tuple[Any, str]]:
        """(job id, task id) of those among ``job_ids`` still remembered, forgotten now."""
        with self._lock:
            return [(job_id, self._ids.pop(job_id)) for job_id in job_ids if job_id in self._ids]


def _reset_after_fork() -> None:
    global _pid
    _pid = os.getpid()
    if _marker is not None:
        _marker[0] = 1
    for item in list(_after_fork):
        item._forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


# -- background threads -----------------------------------------------------------------------------
#
# A signal sent to a process goes to any thread that does not block it. Billiard's pool child blocks
# SIGTERM in its main thread while it writes its last message to the queue it shares with every other
# child, under a lock only a live process can release; a thread of ours taking that SIGTERM would let
# the child die holding the lock and stall every other child. So our threads start with every
# asynchronous signal blocked (a new thread inherits the mask of the thread that starts it: no window).
# Python runs signal handlers in the main thread whichever thread the kernel picks: nothing else changes.

# Signals the kernel sends to the thread that caused them: blocking those would not stop them and
# would hide a fault in our own thread.
_SYNCHRONOUS = {getattr(signal, name) for name in ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP",
                                                   "SIGABRT", "SIGSYS") if hasattr(signal, name)}


def start_daemon_thread(target: Callable[[], object], name: str) -> threading.Thread | None:
    """Start a daemon thread that never receives the process's asynchronous signals.

    None when no thread could start, and the caller says what happens instead: Python 3.12+ refuses new
    threads once the interpreter is shutting down, in every thread (the atexit handlers run then: ours
    flushes, and a user's may run tracked code), and a process may be out of threads. Raising would put
    our bookkeeping's failure into the user's code."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    masks = hasattr(signal, "pthread_sigmask")  # Windows: no per-thread masks
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - _SYNCHRONOUS) if masks else None
    try:
        thread.start()
    except RuntimeError:  # "can't create new thread at interpreter shutdown", "can't start new thread"
        return None
    finally:
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return thread


# -- log lines --------------------------------------------------------------------------------------

#: Longest piece of outside text quoted in one log line: a 10,000-character task name must not make
#: every warning 10 KB long.
MAX_LOGGED_CHARS = 120


def make_private_dirs(directory: str | os.PathLike[str]) -> None:
    """``mkdir -p`` where each directory made is 0700, as the XDG base directory rule asks: plain ``mkdir -p`` makes
    the ones above with the umask's mode (0777 under umask 0), and another user could then swap what lies below
    them (the spool, the CLI's config file with its API key). Directories already there are left as they are."""
    path = pathlib.Path(directory)
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)  # the umask can only take bits away
        except FileExistsError:
            pass  # made by another process meanwhile: whoever uses it checks it


def short(value: Any, limit: int = MAX_LOGGED_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with a note of how long it was."""
    try:
        text = repr(value)
    except Exception:
        text = f"<unrepresentable {type(value).__name__}>"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…({len(text)} chars)"


_last_logged: dict[str, float] = {}
_last_logged_lock = ForkSafeLock()


def log_throttled(key: str, interval: float, level: int, message: str, *args: Any) -> bool:
    """Log ``message`` unless a line with the same ``key`` was logged less than ``interval`` seconds
    ago (``interval=float("inf")``: once per process). Returns whether it was logged."""
    now = time.monotonic()
    key = key[:300]
    with _last_logged_lock:
        last = _last_logged.get(key)
        if last is not None and now - last < interval:
            return False
        if len(_last_logged) > 10_000:  # keys carry names from outside: keep the table bounded
            _last_logged.clear()
        _last_logged[key] = now
    log.log(level, message, *args)
    return True


def log_once(key: str, level: int, message: str, *args: Any) -> bool:
    return log_throttled(key, float("inf"), level, message, *args)


def forget_logged() -> None:
    """Forget which lines were logged, so once-per-process lines are logged again (for tests)."""
    with _last_logged_lock:
        _last_logged.clear()


def on_an_event_loop() -> bool:
    """Whether this code runs on an event loop (a coroutine's body): a blocking wait here stalls the loop."""
    asyncio = sys.modules.get("asyncio")  # not imported here: a sixth of `import taskbadger`'s time
    if asyncio is None:
        return False  # no event loop runs in a process that never imported asyncio
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def raised_by_signal_handler(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from, came out of a signal handler installed in this
    process: a queue's time limit, raised into the job wherever the job is (RQ's ``JobTimeoutException`` on
    SIGALRM, Celery's ``SoftTimeLimitExceeded``), maybe in the middle of a request of ours. It is the job's to
    see: tracking re-raises it where it catches its own errors."""
    handlers: set[Any] | None = None
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            if handlers is None:
                handlers = _signal_handler_codes()
                if not handlers:
                    return False
            if tb.tb_frame.f_code in handlers:
                return True
            tb = tb.tb_next
        current = current.__cause__ or current.__context__
    return False


def _signal_handler_codes() -> set[Any]:
    """The code objects of the Python signal handlers installed now."""
    codes = set()
    for signum in signal.valid_signals():
        try:
            handler = signal.getsignal(signum)
        except (ValueError, OSError):
            continue
        code = getattr(getattr(handler, "__func__", handler), "__code__", None)
        if code is not None:
            codes.add(code)
    return codes
