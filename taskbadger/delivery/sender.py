"""The senders: background threads that deliver the queue of pending updates (``delivery.queue``).

* One thread per process, and a second only while a backlog builds: every system call a sender makes
  hands the GIL to it and back, and the task's thread waits each time, so fewer threads with bigger
  batches (``BATCH_SIZE``) slow the task less (figures in ``benchmarks/results.md``).
* A batch goes out on the pooled transport; connection errors, 429 (honouring ``Retry-After``) and
  5xx are retried with exponential backoff and jitter for up to ``RETRY_HORIZON`` (a final state: for
  ``FINAL_HORIZON``), then dropped with an error line; a refused update (4xx) is dropped with a warning.
  Everything is counted (``stats()``).
* ``flush()`` sends everything now. When a process ends (``taskbadger.spooling.shutdown``), what the
  API does not take in time is spooled instead. A forked child starts with no threads and an empty
  queue of its own.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .. import endpoints
from .._runtime import PerProcess, short, start_daemon_thread
from ..config import get_config, is_configured
from ..exceptions import RateLimited, ServerError, TransportError, UnexpectedStatus
from ..http import Deadline
from . import breaker, merge
from .queue import COUNTERS, Batch, Entry, PendingQueue, pending_updates

if TYPE_CHECKING:
    from ..models import TaskModel

log = logging.getLogger("taskbadger")

#: How long an update keeps being retried through API faults before it is dropped.
RETRY_HORIZON = 15 * 60.0
#: How long a final state is kept and retried, in this process's queue or in the spool: a late final state is
#: still the truth (without it the task stays ``processing``), and an API outage can outlast the retry horizon.
FINAL_HORIZON = 24 * 3600.0
BACKOFF_BASE = 0.25
BACKOFF_CAP = 10.0
#: The longest pause a ``Retry-After`` makes (an API asking for more, or for ``inf``, gets this, then is asked again).
RETRY_AFTER_CAP = 60.0
SENDER_THREADS = 2
#: Most updates one sender thread sends before reading the answers (on as many connections).
BATCH_SIZE = 32

SENT, RETRY, DROPPED = "sent", "retry", "dropped"
#: Each process with senders logs its counters at most this often, when they changed: in a worker the
#: counters live in each pool child, which no other process can ask.
STATS_LOG_INTERVAL = 60.0


class Sender:
    """The threads that send one queue."""

    def __init__(self, queue: PendingQueue, threads: int = SENDER_THREADS, batch_size: int = BATCH_SIZE,
                 retry_horizon: float = RETRY_HORIZON, final_horizon: float = FINAL_HORIZON) -> None:
        self.queue = queue
        self.thread_count = threads
        self.batch_size = batch_size
        self.retry_horizon = retry_horizon
        self.final_horizon = final_horizon
        self.threads: list[threading.Thread] = []
        self._failures = 0  # consecutive rounds of failed requests: the backoff's exponent
        self._stats_logged: tuple[float, dict[str, int]] = (time.monotonic(), {})
        #: the queue's counters as the last delivery line had them (compared whole, once per round)
        self._counters_logged: dict[str, int] = {}

    def submit(self, task_id: str, fields: dict[str, Any], final: bool = False, delay: float | None = None) -> bool:
        """Queue an update (see ``PendingQueue.submit``); starts the first thread on first use."""
        if not self.threads:
            with self.queue.cond:
                self._ensure_started()
        return self.queue.submit(task_id, fields, final, delay)

    def stats(self) -> dict[str, int]:
        return self.queue.stats()

    def flush(self, timeout: float = 10.0, give_up: Callable[[], bool] | None = None) -> bool:
        """Wait until everything queued has been sent (or dropped). False if time ran out, or if
        ``give_up()`` said there is no point waiting any longer (checked every 50 ms)."""
        deadline = time.monotonic() + timeout
        queue = self.queue
        with queue.cond:
            if queue.busy():
                queue.send_everything_now()
                if not self._ensure_started():
                    return self._flush_here(deadline, give_up)
            while queue.busy():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (give_up is not None and give_up()):
                    return False
                queue.cond.wait(min(remaining, 0.05))
            return True

    # -- threads ------------------------------------------------------------------------------------

    def _flush_here(self, deadline: float, give_up: Callable[[], bool] | None) -> bool:
        """``flush`` from the calling thread, called with the queue's lock held: no thread could be started (Python
        3.12+ refuses new threads in atexit handlers, where an ending process flushes; and nothing else will send)."""
        queue = self.queue
        while queue.busy():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (give_up is not None and give_up()):
                return False
            batch = queue.take_batch(self.batch_size, time.monotonic() + min(remaining, 0.05))
            if batch:
                queue.cond.release()
                try:
                    self._deliver(batch)
                finally:
                    queue.cond.acquire()
        return True

    def _ensure_started(self) -> bool:
        """Whether a thread sends (started now if none was). Called with the queue's lock held. A thread takes
        itself off the list when it ends (only on an error outside its loop's guard), so no liveness check on
        every submit."""
        return bool(self.threads) or self._add_thread()

    def _add_thread(self) -> bool:
        thread = start_daemon_thread(self._run, f"taskbadger-sender-{len(self.threads)}")
        if thread is None:  # the interpreter is shutting down (3.12+: an atexit handler): flush() sends instead
            return False
        self.threads.append(thread)
        return True

    def _run(self) -> None:
        try:
            while True:
                self._run_once()
        finally:
            with self.queue.cond:
                self.threads = [t for t in self.threads if t is not threading.current_thread()]

    def _run_once(self) -> None:
        queue = self.queue
        with queue.lock:
            batch = queue.take_batch(self.batch_size, self._next_stats_line())
            if len(batch) == self.batch_size and len(self.threads) < self.thread_count and queue.more_ready():
                self._add_thread()  # a backlog: one more thread sends while this one waits for answers
        if not batch:  # woke up to write the delivery line
            self._log_stats()
            return
        self._deliver(batch)

    def _deliver(self, batch: Batch) -> None:
        queue = self.queue
        try:
            outcomes = self._send(batch)
        except Exception:  # never let the sender thread die
            log.exception("Task Badger: internal error while sending %d update(s)", len(batch))
            outcomes = [DROPPED] * len(batch)
            with queue.cond:
                queue.settle([entry for _, entry in batch], "failed")
        with queue.lock:
            queue.finish(batch, list(map(RETRY.__eq__, outcomes)))
        self._log_stats()

    def _next_stats_line(self) -> float | None:
        """When the delivery line is due (with ``cond`` held): a minute after the last one, if the
        counters changed since; None when nothing changed (no need to wake up for it)."""
        if self.queue.counters == self._counters_logged:
            return None
        return self._stats_logged[0] + STATS_LOG_INTERVAL

    def _log_stats(self) -> None:
        last, counters = self._stats_logged
        now = time.monotonic()
        if now - last < STATS_LOG_INTERVAL:
            return
        current = self.queue.stats()
        if current != counters:
            log.info("Task Badger delivery (process %d): %s", os.getpid(), delivery_line(current))
        self._stats_logged = (now, current)
        self._counters_logged = {key: current[key] for key in COUNTERS}

    # -- one batch ----------------------------------------------------------------------------------

    def _send(self, batch: Batch) -> list[str]:
        """Send a batch of updates (one per task), all within one call deadline; each one's outcome:
        sent, retry or dropped."""
        config = get_config()
        if config is None:  # tracking was switched off (``taskbadger.config.reset()``): nobody to send them to
            for task_id, entry in batch:
                with self.queue.cond:
                    self.queue.drop(task_id, "Task Badger is no longer configured in this process", True, entry)
            return [DROPPED] * len(batch)
        deadline = Deadline.for_call(config.timeout)
        outcomes: list[str | None] = [None] * len(batch)
        ready: list[tuple[int, str, dict[str, Any]]] = []
        done: list[Entry] = []  # delivered (or nothing left to say): counted once, under one lock, for the batch
        # The tasks whose current state the updates are resolved against, read together (parallel connections, as
        # the PATCHes): one after another, a batch of reads at a slow API used up the deadline its PATCHes share,
        # and the batch was retried, read and timed out again, for ever.
        # (loops written out here, not comprehensions: a comprehension is a frame of its own, and this runs per batch)
        reads: list[str] = []
        for task_id, entry in batch:
            if merge.needs_current(entry.fields):
                reads.append(task_id)
        current = dict(zip(reads, endpoints.get_many(reads, deadline), strict=True)) if reads else {}
        updates: list[tuple[str, Mapping[str, Any]]] = []
        for i, (task_id, entry) in enumerate(batch):
            entry.attempts += 1
            try:
                # the task's state is read only for the updates that need it (``reads``): no ``fetch`` for the others
                body = merge.resolve(entry.fields,
                                     functools.partial(_read, current, task_id) if task_id in current else None)
            except Exception as problem:
                outcomes[i] = self._outcome(task_id, entry, problem)
                continue
            if body is None:
                outcomes[i] = SENT  # nothing left to say
                done.append(entry)
            else:
                ready.append((i, task_id, body))
                updates.append((task_id, body))
        errors = endpoints.update_many(updates, deadline) if updates else []
        for (i, task_id, _), err in zip(ready, errors, strict=True):
            if err is None:
                outcomes[i] = SENT
                done.append(batch[i][1])
            else:
                outcomes[i] = self._outcome(task_id, batch[i][1], err)
        if done:
            self._delivered(done)
        return outcomes  # type: ignore[return-value]

    def _delivered(self, entries: list[Entry]) -> None:
        queue = self.queue
        with queue.lock:
            queue.settle(entries, "sent")
            queue.failing, self._failures = False, 0

    def _outcome(self, task_id: str, entry: Entry, err: Exception | None) -> str:
        queue = self.queue
        if err is None:
            self._delivered([entry])
            return SENT
        if isinstance(err, (TransportError, RateLimited, ServerError)):
            return self._transient(task_id, entry, err)
        with queue.cond:
            queue.settle([entry], "dropped")
        if isinstance(err, UnexpectedStatus):
            log.warning("Task Badger refused an update for task %s (%s); it is dropped", short(task_id), err)
        else:
            log.warning("Task Badger: update for task %s cannot be sent (%s); it is dropped", short(task_id), err)
        return DROPPED

    def _transient(self, task_id: str, entry: Entry, err: Exception) -> str:
        queue = self.queue
        with queue.cond:
            horizon = entry.horizon or (self.final_horizon if entry.final else self.retry_horizon)
            if time.monotonic() - entry.first_queued > horizon:
                queue.drop(task_id, f"it could not be delivered for {horizon:.0f} s ({err})", True, entry)
                return DROPPED
            escalated = queue.paused_until <= time.monotonic()  # once per round, not per update of a batch
            if escalated:
                self._failures += 1
            queue.failing = True
            queue.counters["retried"] += 1
            delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(self._failures - 1, 10)) * random.uniform(0.5, 1.0)
            retry_after = getattr(err, "retry_after", None)
            if retry_after is not None:
                delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
            queue.paused_until = max(queue.paused_until, time.monotonic() + delay)
            if escalated and self._failures == 1:
                log.warning("Task Badger API unavailable (%s); updates are queued and retried", err)
        return RETRY


def _read(current: dict[str, TaskModel | Exception], task_id: str) -> TaskModel:
    """The task's state as the batch read it, or the error its read met."""
    found = current[task_id]
    if isinstance(found, Exception):
        raise found
    return found


_sender: PerProcess[Sender] = PerProcess(lambda: Sender(pending_updates()))


def submit(task_id: str, fields: dict[str, Any], final: bool = False, delay: float | None = None) -> bool:
    """Queue an update for this process's senders (not sent before ``delay`` seconds from now, when given). False
    if it had to be dropped (queue full)."""
    return _sender.get().submit(task_id, fields, final, delay)


def ensure_started() -> None:
    """Start this process's senders if they are not running, for an update queued other than by ``submit``."""
    current = _sender.get()
    with current.queue.cond:
        current._ensure_started()


def flush(timeout: float | None = 10.0, give_up: Callable[[], bool] | None = None) -> bool:
    """Wait until everything this process has queued for Task Badger has been sent (or dropped); False
    if ``timeout`` ran out first (None: the default, 10 s). Updates the senders send in the background (a tracked
    call's end, a worker's updates) are flushed when the process exits anyway."""
    if timeout is None:
        timeout = 10.0
    # checked whether or not something is queued: a wrong timeout failed only when there was (in production, not in
    # the tests), and NaN waited for ever
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"flush(timeout) takes seconds (a number), got {type(timeout).__name__}")
    if math.isnan(timeout):
        raise ValueError("flush(timeout) takes seconds, got NaN")
    sender = _sender.current()
    if sender is None or not is_configured():
        return True
    return sender.flush(timeout, give_up)


def delivery_line(stats: dict[str, int]) -> str:
    """The counters as one line that adds up: ``submitted`` = the sum of what became of each update."""
    ends = " + ".join(f"{key} {stats[key]}" for key in ("sent", "merged", "claimed", "dropped", "failed", "spooled",
                                                        "queued", "in_flight"))
    return (f"submitted {stats['submitted']} = {ends} (retried {stats['retried']}, from the spool "
            f"{stats['unspooled']})")


def current_sender() -> Sender | None:
    """This process's sender, if it has one (never makes one)."""
    return _sender.current()


def stats() -> dict[str, Any]:
    """Delivery counters of this process (see ``queue.COUNTERS``), queued and in flight, plus the
    publish-side breaker's state."""
    sender = _sender.current()
    result: dict[str, Any] = sender.queue.stats() if sender is not None else {
        **dict.fromkeys((*COUNTERS, "queued", "in_flight"), 0)}
    result["breaker"] = breaker.publish_breaker().state()
    return result
