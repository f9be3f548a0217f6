"""Delivery of updates off the caller's critical path, and the publish-side breaker.

``Dispatcher``: worker-side updates (processing, heartbeat, success/error) are handed to a per-process
background dispatcher instead of being sent inline. It

* never blocks the caller (except under backpressure, see ``MAX_PENDING_TASKS``);
* keeps per-task order: at most one request per task is in flight, later fields wait behind it;
* merges queued updates for the same task, so a fast task's processing + success is one PATCH
  carrying the real ``start_time`` and ``end_time``;
* retries connection errors, 429 (honouring ``Retry-After``) and 5xx with exponential backoff and
  jitter for up to ``RETRY_HORIZON`` seconds; anything finally dropped is counted and logged;
* is restarted in each forked child and flushed when the process shuts down.

``Breaker``: the create at publish time must happen inline (the id travels in the message), so when
the API is unreachable a breaker stops every ``.delay()`` from waiting for a timeout: after
``failure_threshold`` consecutive failures tracking is skipped for ``cooldown`` seconds.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from . import config as _config
from . import task as _task_module
from ._runtime import short
from ._threads import start_daemon_thread
from .exceptions import RateLimited, ServerError, TransportError, UnexpectedStatus
from .models import TERMINAL_STATUSES

log = logging.getLogger("taskbadger")

#: Most tasks with updates waiting in one process. Each entry is a small dict of fields, so the cap
#: bounds memory to a few MB. Past it, a non-final update is dropped; a final one takes the place of
#: a task that only has non-final updates waiting, else, while the API answers (the queue drains), it
#: waits up to ``BACKPRESSURE_TIMEOUT`` for room; while the API is failing it is dropped at once,
#: since waiting would only slow the worker down. Every drop is counted and logged.
MAX_PENDING_TASKS = 10_000
BACKPRESSURE_TIMEOUT = 5.0
#: At most one log line per this many seconds about dropped final updates (they are all counted).
DROP_LOG_INTERVAL = 10.0
#: How long an update keeps being retried through API faults before it is dropped.
RETRY_HORIZON = 15 * 60.0
BACKOFF_BASE = 0.25
BACKOFF_CAP = 10.0
#: One sender thread per process, and a second only while a backlog builds. Every system call a
#: sender makes (a send and a receive per update, a poll per batch) hands the GIL to it and back, and
#: the task's thread waits each time: fewer threads with bigger batches wake it less. Measured on a
#: solo worker with no-op tasks at 10 ms API latency: 4 x 16 with a 10 ms window made 3.9 context
#: switches per update in the senders and 5.1 per task in the task's thread (4.0 untracked); 2 x 32
#: with 20 ms makes 1.8-2.1 and 4.7, and ran ~3 % more tasks per second.
SENDER_THREADS = 2
#: Most updates one sender thread sends before reading the answers (on as many connections).
BATCH_SIZE = 32
#: Non-final updates (processing, heartbeats) wait this long before they are sent, so that a task
#: finishing within it is recorded with one PATCH (its processing merged into the final update).
LINGER = 0.05
#: Final updates wait at most this long, so that under load one wake-up of a sender thread sends a
#: whole batch instead of each task's update waking it (every wake-up costs the task's thread too).
FINAL_WINDOW = 0.02


def merge_fields(older: dict[str, Any], newer: dict[str, Any]) -> dict[str, Any]:
    """Combine two queued PATCH bodies for one task: newer values win; tags accumulate
    (the API merges tags too); the earliest ``start_time`` is kept."""
    merged = {**older, **newer}
    if "tags" in older and "tags" in newer:
        merged["tags"] = {**older["tags"], **newer["tags"]}
    if "start_time" in older:
        merged["start_time"] = older["start_time"]
    if "merge_data" in older and "merge_data" in newer:
        merged["merge_data"] = {**older["merge_data"], **newer["merge_data"]}
    if UNLESS_FINAL not in newer:
        merged.pop(UNLESS_FINAL, None)  # an unconditional update makes the whole request unconditional
    return merged


#: A field that makes an update conditional: it is sent only if the task has no final state yet
#: (the worker's main process uses it to close tasks whose own final update died with a child).
UNLESS_FINAL = "_taskbadger_unless_final"


def resolve_merge_data(task_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
    """The PATCH body to send for queued ``fields``, or None when there is nothing to send.

    ``merge_data`` asks for keys to be merged into the task's data (PATCH replaces ``data``): merge
    into the ``data`` being sent, or into the task's current data, fetched first. ``UNLESS_FINAL``
    fetches the task and sends nothing if it already ended."""
    from .api import get_task

    fields = dict(fields)
    unless_final = fields.pop(UNLESS_FINAL, False)
    extra = fields.pop("merge_data", None)
    if not unless_final and extra is None:
        return fields
    current = get_task(task_id) if unless_final or fields.get("data") is None else None
    if unless_final and current is not None and current.status in TERMINAL_STATUSES:
        return None
    if extra is not None:
        base = fields.get("data") if current is None else current.data
        fields["data"] = {**(base if isinstance(base, dict) else {}), **extra}
    return fields


@dataclass
class _Entry:
    fields: dict[str, Any]
    ready_at: float = 0.0  # not sent before this (monotonic); 0 = at once
    final: bool = False  # holds a final state (success, error, cancelled)
    first_queued: float = field(default_factory=time.monotonic)
    attempts: int = 0


class Dispatcher:
    def __init__(self, max_pending: int = MAX_PENDING_TASKS, threads: int = SENDER_THREADS,
                 retry_horizon: float = RETRY_HORIZON, linger: float = LINGER, batch_size: int = BATCH_SIZE) -> None:
        self.max_pending = max_pending
        self.linger = linger
        self.batch_size = batch_size
        self._waiting: dict[int, float] = {}  # waiting sender thread -> when it wakes by itself
        self.thread_count = threads
        self.retry_horizon = retry_horizon
        self._cond = threading.Condition()
        self._pending: OrderedDict[str, _Entry] = OrderedDict()
        self._progress_queued = 0  # bumped whenever a non-final entry is queued
        self._progress_scanned = -1  # value of _progress_queued at the last scan that found none
        self._inflight: set[str] = set()
        self._resume_at = 0.0  # global pause after API-level failures (outage, 5xx, 429)
        self._failures = 0
        self._threads: list[threading.Thread] = []
        self._pid = os.getpid()
        self.counters = {"submitted": 0, "sent": 0, "merged": 0, "retried": 0, "dropped": 0, "failed": 0}
        self._last_drop_log = {True: -1e9, False: -1e9}  # final?, when a drop of that kind was last logged

    # -- public -------------------------------------------------------------------------------

    def submit(self, task_id: str, fields: dict[str, Any], final: bool = False) -> bool:
        """Queue ``fields`` for ``task_id``. Returns False if the update had to be dropped."""
        with self._cond:
            self._ensure_started()
            self.counters["submitted"] += 1
            now = time.monotonic()
            ready_at = now + (FINAL_WINDOW if final else self.linger)
            if self._merge_into_queued(task_id, fields, ready_at, final):
                self.counters["merged"] += 1
                return True
            if self._held() >= self.max_pending and not self._make_room(final):
                self._drop(task_id, "the queue is full (the API is down or too slow)", final)
                return False
            if self._merge_into_queued(task_id, fields, ready_at, final):  # queued while we waited
                return True
            self._put(task_id, _Entry(dict(fields), ready_at, final))
            self._wake_if_needed(ready_at)
            return True

    def _put(self, task_id: str, entry: _Entry, front: bool = False) -> None:
        # called with the lock held; every entry enters the queue here
        self._pending[task_id] = entry
        if front:
            self._pending.move_to_end(task_id, last=False)
        if not entry.final:
            self._progress_queued += 1

    def _merge_into_queued(self, task_id: str, fields: dict[str, Any], ready_at: float, final: bool) -> bool:
        # called with the lock held
        entry = self._pending.get(task_id)
        if entry is None:
            return False
        entry.fields = merge_fields(entry.fields, fields)
        entry.ready_at = min(entry.ready_at, ready_at)
        entry.final = entry.final or final
        self._wake_if_needed(entry.ready_at)
        return True

    def _make_room(self, final: bool) -> bool:
        """Called with the lock held and the queue full: True once there is room for ``final``."""
        if not final:
            return False  # progress is worth less than the final states already queued
        if self._progress_scanned != self._progress_queued:  # skip the scan when it cannot find one
            for task_id, entry in self._pending.items():
                if not entry.final and task_id not in self._inflight:
                    del self._pending[task_id]  # its final update comes later and says more
                    self._drop(task_id, "the queue is full: a final update took its place", final=False)
                    return True
            self._progress_scanned = self._progress_queued
        if self._failures:
            return False  # the API is failing: the queue will not drain soon, do not hold the task up
        return self._cond.wait_for(lambda: self._held() < self.max_pending, timeout=BACKPRESSURE_TIMEOUT)

    def _wake_if_needed(self, ready_at: float) -> None:
        # Called with the lock held. Notify only when no waiting sender wakes by itself in time: under
        # load the senders then wake once per window and take a whole batch, not once per update.
        waiting = self._waiting
        if waiting and min(waiting.values()) > ready_at:
            for ident in waiting:
                waiting[ident] = min(waiting[ident], ready_at)
            self._cond.notify()

    def claim(self, task_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """Take the fields queued for ``task_id`` so a synchronous update can send them first.

        Waits (up to ``timeout``) for a request already in flight for that task, so order is kept.
        """
        with self._cond:
            self._cond.wait_for(lambda: task_id not in self._inflight, timeout=timeout)
            entry = self._pending.pop(task_id, None)
            self._cond.notify_all()
            return entry.fields if entry else {}

    def unclaim(self, task_id: str, fields: dict[str, Any]) -> None:
        """Give back claimed fields whose synchronous send failed."""
        if fields:
            with self._cond:
                entry = self._pending.get(task_id)
                final = fields.get("status") in TERMINAL_STATUSES  # a str Enum: "success" matches
                if entry is None:
                    self._put(task_id, _Entry(dict(fields), final=final), front=True)
                else:
                    entry.fields = merge_fields(fields, entry.fields)
                    entry.final = entry.final or final
                self._cond.notify()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued has been sent (or dropped). False if time ran out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if os.getpid() != self._pid:
                return True
            if self._pending:
                self._ensure_started()
                # A flush at shutdown must not sit out a backoff pause or a linger: send now.
                self._resume_at = min(self._resume_at, time.monotonic())
                for entry in self._pending.values():
                    entry.ready_at = 0.0
                self._cond.notify_all()
            while self._pending or self._inflight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("Task Badger: %d task update(s) not delivered before shutdown",
                                len(self._pending) + len(self._inflight))
                    return False
                self._cond.wait(min(remaining, 0.1))
            return True

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {**self.counters, "queued": len(self._pending), "in_flight": len(self._inflight)}

    # -- internals ---------------------------------------------------------------------------

    def _held(self) -> int:
        # called with the lock held: every task with an update queued or in flight
        return len(self._pending) + len(self._inflight)

    def _ensure_started(self) -> None:
        # Called with the lock held, on every submit: a sender thread takes itself off the list when
        # it ends (it only ends on an error outside its loop's guard), so no per-call liveness check.
        if not self._threads:
            self._add_thread()

    def _add_thread(self) -> None:
        # called with the lock held
        self._threads.append(start_daemon_thread(self._run, f"taskbadger-dispatcher-{len(self._threads)}"))

    def _next(self, now: float, take: bool = True) -> tuple[str, _Entry] | float | None:
        """Called with the lock held: the oldest ready task with no request in flight (taken out of
        the queue unless ``take`` is False), or the time the next one becomes ready (None if nothing
        is waiting)."""
        soonest = None
        for task_id, entry in self._pending.items():
            if task_id in self._inflight:
                continue
            if entry.ready_at <= now:
                if take:
                    del self._pending[task_id]
                return task_id, entry
            soonest = entry.ready_at if soonest is None else min(soonest, entry.ready_at)
        return soonest

    def _take_batch(self) -> list[tuple[str, _Entry]]:
        """Called with the lock held: wait for ready work, then take up to ``batch_size`` tasks."""
        while True:
            now = time.monotonic()
            pause = self._resume_at - now
            item = self._next(now) if pause <= 0 else None
            if isinstance(item, tuple):
                break
            if item is not None:
                pause = item - now
            me = threading.get_ident()
            self._waiting[me] = now + pause if pause > 0 else float("inf")
            self._cond.wait(pause if pause > 0 else None)
            self._waiting.pop(me, None)
        batch = [item]
        while len(batch) < self.batch_size:
            more = self._next(now)
            if not isinstance(more, tuple):
                break
            batch.append(more)
        for task_id, _ in batch:
            self._inflight.add(task_id)
        if (len(batch) == self.batch_size and len(self._threads) < self.thread_count
                and isinstance(self._next(now, take=False), tuple)):
            self._add_thread()  # a backlog: one more thread sends while this one waits for answers
        return batch

    def _run(self) -> None:
        try:
            while True:
                self._run_once()
        finally:
            with self._cond:
                self._threads = [t for t in self._threads if t is not threading.current_thread()]

    def _run_once(self) -> None:
        with self._cond:
            batch = self._take_batch()
        try:
            outcomes = self._send(batch)
        except Exception:  # never let the sender thread die
            log.exception("Task Badger: internal error while sending %d update(s)", len(batch))
            outcomes = ["dropped"] * len(batch)
            self.counters["failed"] += len(batch)
        with self._cond:
            for (task_id, entry), outcome in zip(batch, outcomes, strict=True):
                self._inflight.discard(task_id)
                if outcome == "retry":
                    existing = self._pending.pop(task_id, None)
                    if existing is not None:
                        entry.fields = merge_fields(entry.fields, existing.fields)
                        entry.final = entry.final or existing.final
                    entry.ready_at = 0.0
                    self._put(task_id, entry, front=True)  # keep its place at the front
            self._cond.notify_all()

    def _send(self, batch: list[tuple[str, _Entry]]) -> list[str]:
        """Send a batch of updates (one per task); return each one's outcome: sent, retry, dropped."""
        from .api import send_updates

        outcomes: list[str | None] = [None] * len(batch)
        ready: list[tuple[int, str, dict[str, Any]]] = []
        for i, (task_id, entry) in enumerate(batch):
            entry.attempts += 1
            try:
                body = resolve_merge_data(task_id, entry.fields)
            except Exception as err:
                outcomes[i] = self._outcome(task_id, entry, err)
                continue
            if body is None:
                outcomes[i] = self._outcome(task_id, entry, None)  # nothing left to say
            else:
                ready.append((i, task_id, body))
        errors = send_updates([(task_id, fields) for _, task_id, fields in ready]) if ready else []
        for (i, task_id, _), err in zip(ready, errors, strict=True):
            outcomes[i] = self._outcome(task_id, batch[i][1], err)
        return outcomes  # type: ignore[return-value]

    def _outcome(self, task_id: str, entry: _Entry, err: Exception | None) -> str:
        if err is None:
            with self._cond:
                self.counters["sent"] += 1
                self._failures = 0
            return "sent"
        if isinstance(err, (TransportError, RateLimited, ServerError)):
            return self._transient(task_id, entry, err)
        with self._cond:
            self.counters["dropped"] += 1
        if isinstance(err, UnexpectedStatus):
            log.warning("Task Badger refused an update for task %s (%s); it is dropped", short(task_id), err)
        else:
            log.warning("Task Badger: update for task %s cannot be sent (%s); it is dropped", short(task_id), err)
        return "dropped"

    def _transient(self, task_id: str, entry: _Entry, err: Exception) -> str:
        if time.monotonic() - entry.first_queued > self.retry_horizon:
            self._drop(task_id, f"it could not be delivered for {self.retry_horizon:.0f} s ({err})",
                       final=True, locked=False)
            return "dropped"
        with self._cond:
            if self._resume_at <= time.monotonic():  # one escalation per round, not per update in a batch
                self._failures += 1
            self.counters["retried"] += 1
            delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(self._failures - 1, 10))
            delay *= random.uniform(0.5, 1.0)
            retry_after = getattr(err, "retry_after", None)
            if retry_after is not None:
                delay = max(delay, retry_after)
            self._resume_at = max(self._resume_at, time.monotonic() + delay)
            if self._failures == 1:
                log.warning("Task Badger API unavailable (%s); updates are queued and retried", err)
        return "retry"

    def _drop(self, task_id: str, reason: str, final: bool, locked: bool = True) -> None:
        if not locked:
            with self._cond:
                self._drop(task_id, reason, final)
            return
        self.counters["dropped"] += 1
        now = time.monotonic()
        # A lost final state is worth an error line, but an outage can drop hundreds a second:
        # one line per 10 s (60 s for progress), each with the running count.
        if now - self._last_drop_log[final] >= (DROP_LOG_INTERVAL if final else 6 * DROP_LOG_INTERVAL):
            self._last_drop_log[final] = now
            log.error("Task Badger: an update for task %s was dropped because %s (%d dropped so far)",
                      short(task_id), reason, self.counters["dropped"])


# -- the process's dispatcher ----------------------------------------------------------------------

_dispatcher: Dispatcher | None = None
_dispatcher_lock = threading.Lock()


def get_dispatcher() -> Dispatcher:
    """This process's dispatcher (a new one in each forked child)."""
    global _dispatcher
    dispatcher = _dispatcher
    if dispatcher is not None and dispatcher._pid == os.getpid():
        return dispatcher
    with _dispatcher_lock:
        if _dispatcher is None or _dispatcher._pid != os.getpid():
            _dispatcher = Dispatcher()
            _task_module.claim_queued = _claim_for_sync_update
            _task_module.unclaim_queued = _unclaim
        return _dispatcher


def _claim_for_sync_update(task_id: str) -> dict[str, Any]:
    dispatcher = _dispatcher
    if dispatcher is None or dispatcher._pid != os.getpid():
        return {}
    claimed = dispatcher.claim(task_id)
    return (resolve_merge_data(task_id, claimed) or {}) if claimed else claimed


def _unclaim(task_id: str, fields: dict[str, Any]) -> None:
    if _dispatcher is not None:
        _dispatcher.unclaim(task_id, fields)


def _after_fork_in_child() -> None:
    # The parent's threads do not exist here and its queue is the parent's job to send.
    global _dispatcher, _dispatcher_lock
    _dispatcher, _dispatcher_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def submit(task_id: str, fields: dict[str, Any], final: bool = False) -> bool:
    return get_dispatcher().submit(task_id, fields, final=final)


def flush(timeout: float = 10.0) -> bool:
    """Send everything this process has queued; False if ``timeout`` ran out first."""
    dispatcher = _dispatcher
    if dispatcher is None or dispatcher._pid != os.getpid() or not _config.is_configured():
        return True
    return dispatcher.flush(timeout)


def stats() -> dict[str, Any]:
    """Delivery counters of this process: sent, merged, retried, dropped, queued, in flight,
    plus the publish-side breaker's state."""
    dispatcher = _dispatcher
    result: dict[str, Any] = (
        dispatcher.stats() if dispatcher is not None and dispatcher._pid == os.getpid()
        else {"submitted": 0, "sent": 0, "merged": 0, "retried": 0, "dropped": 0, "failed": 0,
              "queued": 0, "in_flight": 0}
    )
    result["breaker"] = publish_breaker.state()
    return result


atexit.register(flush, 5.0)


# -- publish side ------------------------------------------------------------------------------------


class Breaker:
    """Skip creates while the API cannot take them, without switching tracking off for long.

    * A connection error, a timeout or a 5xx counts as a failure. After ``failure_threshold`` in a row
      the breaker opens: calls are skipped (tasks publish untracked) for a cool-down, then one call
      tries again. The cool-down is half of how long the API has been failing so far, between
      ``min_cooldown`` and ``max_cooldown``: after a blip of two seconds the next try comes within a
      second of recovery; a long outage is tried every ``max_cooldown`` seconds.
    * A 429 is the API asking us to slow down, not an outage: calls are skipped for its
      ``Retry-After`` (1 s without one, at most ``max_defer``), then go ahead as before.
    * Any success closes it. Failures that follow a long quiet spell (nothing was tried) start a new
      count: what the breaker knew about the API is stale by then.
    """

    def __init__(self, failure_threshold: int = 3, min_cooldown: float = 0.25, max_cooldown: float = 30.0,
                 max_defer: float = 30.0) -> None:
        self.failure_threshold = failure_threshold
        self.min_cooldown = min_cooldown
        self.max_cooldown = max_cooldown
        self.max_defer = max_defer
        self._lock = threading.Lock()
        self._failures = 0
        self._failing_since = 0.0
        self._last_failure = 0.0
        self._cooldown = min_cooldown
        self._open_until = 0.0
        self._deferred_until = 0.0
        self._skipped = 0
        self._trial_running = False

    def allow(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if now < self._deferred_until:
                self._skipped += 1
                return False
            if self._failures < self.failure_threshold:
                return True
            if now >= self._open_until and not self._trial_running:
                self._trial_running = True  # half-open: let one call find out
                return True
            self._skipped += 1
            return False

    def success(self) -> None:
        with self._lock:
            if self._failures >= self.failure_threshold or self._skipped:
                log.warning("Task Badger API answering again: tracking resumed (%d publishes were not tracked)",
                            self._skipped)
            self._failures, self._skipped, self._trial_running = 0, 0, False

    def failure(self, err: Exception) -> None:
        with self._lock:
            now = time.monotonic()
            self._trial_running = False
            if isinstance(err, RateLimited):
                retry_after = err.retry_after if err.retry_after is not None else 1.0
                pause = min(self.max_defer, max(0.0, retry_after))
                if now + pause > self._deferred_until:
                    if self._deferred_until <= now:
                        log.warning("Task Badger API asked to slow down (429): tasks are published untracked for "
                                    "the next %.1f s", pause)
                    self._deferred_until = now + pause
                return
            if self._failures and now - self._last_failure > max(4 * self._cooldown, 5.0):
                self._failures = 0  # nothing tried for a while: what we knew is stale, start counting again
            if self._failures == 0:
                self._failing_since = now
            self._last_failure = now
            self._failures += 1
            if self._failures >= self.failure_threshold:
                cooldown = min(self.max_cooldown, max(self.min_cooldown, (now - self._failing_since) / 2))
                self._cooldown = cooldown
                if self._failures == self.failure_threshold:
                    log.warning("Task Badger API failing (%s): tasks are published untracked for the next %.1f s, "
                                "then one call tries again; while it keeps failing, tries come further apart "
                                "(%.0f s at most)", err, cooldown, self.max_cooldown)
                self._open_until = now + cooldown

    def state(self) -> str:
        with self._lock:
            now = time.monotonic()
            if now < self._deferred_until:
                return "deferred"
            if self._failures < self.failure_threshold:
                return "closed"
            return "open" if now < self._open_until else "half-open"

    def reset(self) -> None:
        with self._lock:
            self._failures, self._open_until, self._deferred_until = 0, 0.0, 0.0
            self._skipped, self._trial_running = 0, False


publish_breaker = Breaker()


def _reset_breaker_after_fork() -> None:
    publish_breaker._lock = threading.Lock()
    publish_breaker._trial_running = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_breaker_after_fork)
