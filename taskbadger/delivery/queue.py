"""The per-process queue of pending updates: one entry per task, merged, claimed, bounded.

No threads and no HTTP here: the senders (``delivery.sender``) take batches from it, and
``taskbadger.Task.update`` claims what is queued for its task so that a synchronous update carries it
(one request, in order).

* Per-task order: at most one request per task is in flight; later fields wait behind it, and a
  claim waits for it.
* Updates for the same task merge (``merge.queued``): a fast task's processing + success is one
  request carrying the real ``start_time`` and ``end_time``. Non-final updates wait ``LINGER`` so
  that they can merge into a final one; final ones up to ``FINAL_WINDOW``, so that under load one
  wake-up of a sender takes a batch.
* Bounded: at most ``MAX_PENDING_TASKS`` tasks. Past that a non-final update is dropped; a final one
  takes the place of a task that only has non-final updates waiting, else, while the API answers (the
  queue drains), waits up to ``BACKPRESSURE_TIMEOUT`` for room, and while the API is failing it is
  dropped at once (waiting would only slow the worker down). Every drop is counted and logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .._runtime import PerProcess, short
from ..models import TERMINAL_STATUSES
from . import merge

log = logging.getLogger("taskbadger")

#: Each entry is a small dict of fields, so this bounds the queue to a few MB.
MAX_PENDING_TASKS = 10_000
BACKPRESSURE_TIMEOUT = 5.0
#: At most one error line per this many seconds about dropped final updates (six times that for
#: progress); every drop is counted.
DROP_LOG_INTERVAL = 10.0
LINGER = 0.05
FINAL_WINDOW = 0.02
#: What became of every update submitted (the counters add up: ``submitted`` = ``sent`` + ``merged`` +
#: ``claimed`` + ``dropped`` + ``failed`` + ``spooled`` + ``queued`` + ``in_flight``); ``retried`` counts
#: attempts that will be made again, ``unspooled`` the submitted updates that came from the spool.
COUNTERS = ("submitted", "sent", "merged", "claimed", "retried", "dropped", "failed", "spooled", "unspooled")


@dataclass
class Entry:
    fields: dict[str, Any]
    ready_at: float = 0.0  # not sent before this (monotonic); 0 = at once
    final: bool = False  # holds a final state (success, error, cancelled)
    first_queued: float = field(default_factory=time.monotonic)
    attempts: int = 0
    horizon: float = 0.0  # retried until this long after first_queued; 0: the sender's retry horizon
    #: in flight, and what became of it is counted already (sent or dropped; ``settle``) before its batch is
    #: finished: no longer counted as in flight, never counted twice, never spooled
    settled: bool = False
    #: taken from the spool while a newer update of its task was in flight (``submit_older``): if that one must be
    #: sent again, it is merged over this one, not under it
    older_than_in_flight: bool = False


Batch = list[tuple[str, Entry]]


class PendingQueue:
    def __init__(self, max_pending: int = MAX_PENDING_TASKS, linger: float = LINGER) -> None:
        self.max_pending = max_pending
        self.linger = linger
        #: the condition's lock, entered directly on the hot paths (``submit``, a sender's round): the same lock as
        #: ``with cond``, without the frames of ``Condition.__enter__``/``__exit__`` (``cond.wait`` and ``notify``
        #: work under it as under ``cond``)
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self._pending: OrderedDict[str, Entry] = OrderedDict()
        self._inflight: dict[str, tuple[Entry, float]] = {}  # task id -> (entry, when its batch was taken)
        #: tasks handed over to another process while an update of theirs was in flight (``hand_over``): that
        #: update, if it must be sent again, is sent only while the task has no final state
        self._handed_over: set[str] = set()
        #: progress updates in flight that a final update took the place of: not queued again when they return
        self._evicted: set[str] = set()
        self._waiting: dict[int, float] = {}  # waiting sender thread -> when it wakes by itself
        self._progress_queued = 0  # bumped whenever a non-final entry is queued
        self._progress_scanned = -1  # value of _progress_queued at the last scan that found none
        self.paused_until = 0.0  # no batch is taken before this (a backoff after API failures)
        self.failing = False  # the API failed the last request: drop rather than wait when full
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._last_drop_log = {True: -1e9, False: -1e9}  # final?, when a drop of that kind was last logged

    # -- producers ----------------------------------------------------------------------------------

    def submit(self, task_id: str, fields: dict[str, Any], final: bool = False, delay: float | None = None) -> bool:
        """Queue ``fields`` for ``task_id``, sent ``delay`` seconds from now at the earliest (by default the
        merge window of its kind; a flush sends it at once). Returns False if the update had to be dropped."""
        with self.lock:
            self.counters["submitted"] += 1
            ready_at = time.monotonic() + (delay if delay is not None else FINAL_WINDOW if final else self.linger)
            if self._merge_into_queued(task_id, fields, ready_at, final):
                self.counters["merged"] += 1
                return True
            if self.held() >= self.max_pending and not self._make_room(final):
                self.drop(task_id, "the queue is full (the API is down or too slow)", final)
                return False
            if self._merge_into_queued(task_id, fields, ready_at, final):  # queued while we waited
                self.counters["merged"] += 1
                return True
            self._put(task_id, Entry(dict(fields), ready_at, final))
            self._wake_if_needed(ready_at)
            return True

    def submit_older(self, task_id: str, fields: dict[str, Any], final: bool, age: float, horizon: float = 0.0) -> bool:
        """Queue an update first queued ``age`` seconds ago by another process (taken from the spool), retried
        until ``horizon`` after then (0: the sender's horizon). An update this process queued since is newer: it
        is merged over the older one, whose state never replaces it, whether it is queued or in flight."""
        with self.cond:
            since = time.monotonic() - max(0.0, age)
            entry = self._pending.get(task_id)
            if entry is not None and entry.first_queued > since:
                self.counters["submitted"] += 1
                self.counters["merged"] += 1
                entry.fields = merge.queued(fields, entry.fields)
                entry.final = entry.final or final
                self.backdate(task_id, age, horizon)
                return True
            queued = self.submit(task_id, fields, final)
            self.backdate(task_id, age, horizon)
            flying, queued_now = self._inflight.get(task_id), self._pending.get(task_id)
            if entry is None and queued_now is not None and flying is not None and flying[0].first_queued > since:
                queued_now.older_than_in_flight = True  # see ``finish``
            return queued

    def claim(self, task_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """Take the fields queued for ``task_id`` so a synchronous update can send them first. Waits
        (up to ``timeout``) for a request already in flight for that task, so order is kept."""
        with self.cond:
            self.cond.wait_for(lambda: task_id not in self._inflight, timeout=timeout)
            entry = self._pending.pop(task_id, None)
            if entry is not None:
                self.counters["claimed"] += 1
            self.cond.notify_all()
            return entry.fields if entry else {}

    def hand_over(self, task_id: str) -> dict[str, Any]:
        """Take the fields queued for ``task_id`` (another process sends them now: a retry's next attempt), without
        waiting for a request in flight for it: if that request fails and must be sent again, it is sent only
        while the task has no final state (sent as it was, it could land after the next attempt's final state,
        and the task would look running for good)."""
        with self.cond:
            entry = self._pending.pop(task_id, None)
            if entry is not None:
                self.counters["claimed"] += 1
            if task_id in self._inflight:
                self._handed_over.add(task_id)
            self.cond.notify_all()
            return entry.fields if entry else {}

    def unclaim(self, task_id: str, fields: dict[str, Any]) -> None:
        """Give back claimed fields whose synchronous send failed."""
        if not fields:
            return
        with self.cond:
            self.counters["claimed"] -= 1
            entry = self._pending.get(task_id)
            final = fields.get("status") in TERMINAL_STATUSES  # a str Enum: "success" matches
            if entry is None:
                self._put(task_id, Entry(dict(fields), final=final), front=True)
            else:
                entry.fields = merge.queued(fields, entry.fields)
                entry.final = entry.final or final
                self.counters["merged"] += 1
            self.cond.notify()

    # -- the senders' side (call with ``cond`` held) -----------------------------------------------------

    def held(self) -> int:
        """Every task with an update queued or in flight (not counting those given up for a final update)."""
        return len(self._pending) + len(self._inflight) - len(self._evicted)

    def busy(self) -> bool:
        return bool(self._pending or self._inflight)

    def take_batch(self, size: int, until: float | None = None) -> Batch:
        """Wait for ready work, then take up to ``size`` tasks (marked in flight). ``until`` (monotonic):
        return an empty batch if nothing is ready by then."""
        while True:
            now = time.monotonic()
            pause = self.paused_until - now
            item = self._next(now) if pause <= 0 else None
            if isinstance(item, tuple):
                break
            if until is not None and now >= until:
                return []
            if item is not None:
                pause = item - now
            if until is not None:
                pause = min(pause, until - now) if pause > 0 else until - now
            me = threading.get_ident()
            self._waiting[me] = now + pause if pause > 0 else float("inf")
            self.cond.wait(pause if pause > 0 else None)
            self._waiting.pop(me, None)
        batch = [item]
        # A sender that is awake anyway also takes the final updates still inside their window: they
        # were only waiting so that one wake-up takes many (nothing merges into a final state). Without
        # this, a busy worker's sender wakes once per task, and each wake-up takes the GIL from the tasks.
        early = now + FINAL_WINDOW
        if size > 1:
            # ``_next(now, final_ready_by=early)`` until the batch is full, in one pass over the queue: each call
            # started again from its front, past what it had skipped, with a frame per update taken
            inflight = self._inflight
            for task_id, entry in self._pending.items():
                if task_id not in inflight and (entry.ready_at <= now or (entry.final and entry.ready_at <= early)):
                    batch.append((task_id, entry))
                    if len(batch) >= size:
                        break
            pending = self._pending
            for task_id, _ in batch[1:]:
                del pending[task_id]
        taken = time.monotonic()
        for task_id, entry in batch:
            self._inflight[task_id] = (entry, taken)
        return batch

    def more_ready(self) -> bool:
        return isinstance(self._next(time.monotonic(), take=False), tuple)

    def finish(self, batch: Batch, retry: list[bool]) -> None:
        """A batch's requests are done: entries to retry go back to the front of the queue."""
        for (task_id, entry), again in zip(batch, retry, strict=True):
            held = self._inflight.get(task_id)
            if held is None or held[0] is not entry:
                continue  # spooled meanwhile (the process is ending): the spool has it
            del self._inflight[task_id]
            if task_id in self._handed_over:
                self._handed_over.discard(task_id)
                if again and not entry.final:
                    entry.fields = {**entry.fields, merge.UNLESS_FINAL: True}
            if task_id in self._evicted:
                self._evicted.discard(task_id)
                continue  # a final update took its place while it was in flight (counted as dropped then)
            if again:
                existing = self._pending.pop(task_id, None)
                if existing is not None:
                    # What was queued meanwhile is newer, but for an update taken from the spool that is older
                    entry.fields = merge.queued(existing.fields, entry.fields) if existing.older_than_in_flight \
                        else merge.queued(entry.fields, existing.fields)
                    entry.final = entry.final or existing.final
                    self.counters["merged"] += 1
                entry.ready_at = 0.0
                self._put(task_id, entry, front=True)
        self.cond.notify_all()

    def holds(self, task_id: str) -> bool:
        """Whether an update for ``task_id`` is queued or in flight."""
        return task_id in self._pending or task_id in self._inflight

    def backdate(self, task_id: str, age: float, horizon: float = 0.0) -> None:
        """The queued update for ``task_id`` was first queued ``age`` seconds ago (by the process that
        spooled it): its retry horizon (``horizon``, or the sender's) counts from then."""
        entry = self._pending.get(task_id)
        if entry is not None:
            entry.first_queued = min(entry.first_queued, time.monotonic() - max(0.0, age))
            entry.horizon = max(entry.horizon, horizon)

    def stuck_for(self) -> float:
        """How long the oldest request in flight has been waiting for its answer (0 when none is)."""
        if not self._inflight:
            return 0.0
        return time.monotonic() - min(taken for _, taken in self._inflight.values())

    def take_all(self) -> list[tuple[str, dict[str, Any], bool, float]]:
        """Everything held, taken out for the spool: (task id, fields, final, first queued as wall-clock
        time). Updates in flight are included: their answer may never come before the process ends (if
        it does, the spooled copy is sent again: a final state is the same truth again, and a progress update is
        sent from the spool only while the task has no final state)."""
        offset = time.time() - time.monotonic()
        flying = [(task_id, entry) for task_id, (entry, _) in self._inflight.items() if not entry.settled]
        for _, entry in flying:
            entry.settled = True  # counted as spooled: an answer that still comes in is not counted again
        taken = [(task_id, entry.fields, entry.final, entry.first_queued + offset) for task_id, entry in flying]
        taken += [(task_id, entry.fields, entry.final, entry.first_queued + offset)
                  for task_id, entry in self._pending.items()]
        self._inflight.clear()
        self._pending.clear()
        self._evicted.clear()
        self.counters["spooled"] += len(taken)
        self.cond.notify_all()
        return taken

    def send_everything_now(self) -> None:
        """A flush must not sit out a linger or a backoff pause."""
        self.paused_until = min(self.paused_until, time.monotonic())
        for entry in self._pending.values():
            entry.ready_at = 0.0
        self.cond.notify_all()

    def drop(self, task_id: str, reason: str, final: bool, entry: Entry | None = None) -> None:
        """An update is lost: counted and logged, at most one line per interval. ``entry``: the one in flight, counted
        here unless its outcome was counted already (``settle``)."""
        if entry is None:
            self.counters["dropped"] += 1
        elif not self.settle([entry], "dropped"):
            return
        now = time.monotonic()
        # A lost final state is worth an error line, but an outage can drop hundreds a second:
        # one line per interval, each with the running count.
        if now - self._last_drop_log[final] >= (DROP_LOG_INTERVAL if final else 6 * DROP_LOG_INTERVAL):
            self._last_drop_log[final] = now
            log.error("Task Badger: an update for task %s was dropped because %s (%d dropped so far)",
                      short(task_id), reason, self.counters["dropped"])

    def stats(self) -> dict[str, int]:
        with self.cond:
            in_flight = sum(not entry.settled for entry, _ in self._inflight.values())
            return {**self.counters, "queued": len(self._pending), "in_flight": in_flight}

    def settle(self, entries: list[Entry], counter: str) -> int:
        """Count what became of in-flight ``entries`` (``counter``: sent, dropped or failed), each once, in the
        same step that stops counting them as in flight, so that the counters always add up (``COUNTERS``).
        Returns how many were counted now (an entry given up while in flight was counted then)."""
        fresh = 0
        for entry in entries:
            if not entry.settled:
                entry.settled = True
                fresh += 1
        self.counters[counter] += fresh
        return fresh

    def note_spool_write_failed(self, count: int) -> None:
        """``count`` updates taken for the spool could not be written: they are lost, not spooled."""
        self.counters["spooled"] -= count
        self.counters["dropped"] += count

    # -- internals (``cond`` held) --------------------------------------------------------------------

    def _put(self, task_id: str, entry: Entry, front: bool = False) -> None:
        self._pending[task_id] = entry
        if front:
            self._pending.move_to_end(task_id, last=False)
        if not entry.final:
            self._progress_queued += 1

    def _merge_into_queued(self, task_id: str, fields: dict[str, Any], ready_at: float, final: bool) -> bool:
        entry = self._pending.get(task_id)
        if entry is None:
            return False
        entry.fields = merge.queued(entry.fields, fields)
        entry.older_than_in_flight = False  # it holds a newer update now
        entry.ready_at = min(entry.ready_at, ready_at)
        entry.final = entry.final or final
        self._wake_if_needed(entry.ready_at)
        return True

    def _make_room(self, final: bool) -> bool:
        """The queue is full: True once there is room for ``final``."""
        if not final:
            return False  # progress is worth less than the final states already queued
        if self._progress_scanned != self._progress_queued:  # skip the scan when it cannot find one
            for task_id, entry in self._pending.items():
                if not entry.final and task_id not in self._inflight:
                    del self._pending[task_id]  # its final update comes later and says more
                    self.drop(task_id, "the queue is full: a final update took its place", final=False)
                    return True
            self._progress_scanned = self._progress_queued
        # Every progress update may be in flight (an attempt during an outage): one of them is given up, and
        # not queued again when its request returns.
        for task_id, (entry, _) in self._inflight.items():
            if not entry.final and not entry.settled:  # not given up already, nor answered and counted
                self._evicted.add(task_id)
                self.drop(task_id, "the queue is full: a final update took its place", final=False, entry=entry)
                return True
        if self.failing:
            return False  # the queue will not drain soon: do not hold the task up
        return self.cond.wait_for(lambda: self.held() < self.max_pending, timeout=BACKPRESSURE_TIMEOUT)

    def _wake_if_needed(self, ready_at: float) -> None:
        # Notify only when no waiting sender wakes by itself in time: under load the senders then wake
        # once per window and take a whole batch, not once per update.
        waiting = self._waiting
        if waiting and min(waiting.values()) > ready_at:
            for ident in waiting:
                waiting[ident] = min(waiting[ident], ready_at)
            self.cond.notify()

    def _next(self, now: float, take: bool = True, final_ready_by: float = 0.0) -> tuple[str, Entry] | float | None:
        """The oldest ready task with no request in flight (taken out unless ``take`` is False), or
        when the next one becomes ready (None if nothing is waiting). ``final_ready_by``: a final update
        that becomes ready by then counts as ready now."""
        soonest = None
        for task_id, entry in self._pending.items():
            if task_id in self._inflight:
                continue
            if entry.ready_at <= now or (entry.final and entry.ready_at <= final_ready_by):
                if take:
                    del self._pending[task_id]
                return task_id, entry
            soonest = entry.ready_at if soonest is None else min(soonest, entry.ready_at)
        return soonest


_queue: PerProcess[PendingQueue] = PerProcess(PendingQueue)


def pending_updates() -> PendingQueue:
    """This process's queue (a new, empty one in a forked child: the parent's is the parent's to send)."""
    return _queue.get()


def claim(task_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The fields queued in this process for ``task_id``, taken out ({} when nothing is queued), after waiting
    up to ``timeout`` for a request in flight for it (``PendingQueue.claim``)."""
    queue = _queue.current()
    return queue.claim(task_id, timeout) if queue is not None else {}


def hand_over(task_id: str) -> dict[str, Any]:
    """The fields queued in this process for ``task_id``, taken out for another process to send
    (``PendingQueue.hand_over``)."""
    queue = _queue.current()
    return queue.hand_over(task_id) if queue is not None else {}


def unclaim(task_id: str, fields: dict[str, Any]) -> None:
    queue = _queue.current()
    if queue is not None:
        queue.unclaim(task_id, fields)
