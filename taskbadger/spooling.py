"""What a process does with undelivered updates when it ends, and how the next one picks them up.

* ``shutdown(timeout)`` runs when a process ends: a worker process shutting down or recycled
  (``--max-tasks-per-child``), a warm shutdown, ``taskbadger run`` finishing, any script at exit. With a
  healthy API it flushes as before; while the API is failing it does not wait at all (the queue already
  knows: its last request failed, the breaker is open, or a request has been waiting longer than
  ``STUCK``), and whatever is still held is written to the spool (``delivery.spool``) in a few
  milliseconds. Runs still waiting for their task to be found (``inline.settle_later``) go with them.
* Every process that calls ``taskbadger.init()`` takes what the spool holds for its API, at once and
  then every ``SCAN_INTERVAL`` seconds (or in ``shutdown()`` if it ends before its first look; not at
  interpreter exit), and queues it as its own (``unspooled`` in the counters): the senders deliver it,
  retry it, and spool it again if this process ends before the API answers.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import inline
from ._runtime import PerProcess, start_daemon_thread
from .config import Config, get_config, when_configured
from .delivery import breaker, merge, sender
from .delivery.queue import pending_updates
from .delivery.sender import FINAL_HORIZON, RETRY_HORIZON
from .delivery.spool import Claim, Entry, Spool, api_key_of, entries_from

log = logging.getLogger("taskbadger")

#: A request waiting this long for its answer at shutdown means the API is not answering now.
STUCK = 1.0
#: Seconds between two looks at the spool in a process that uses the SDK.
SCAN_INTERVAL = 10.0


def api_failing() -> bool:
    """Whether this process knows, now, that the API is not answering."""
    queue = pending_updates()
    with queue.cond:
        if queue.failing or queue.stuck_for() > STUCK:
            return True
    return breaker.publish_breaker().state() in ("open", "half-open")


def shutdown(timeout: float = 10.0, give_up: Callable[[], bool] | None = None, *, take_spool: bool = True) -> None:
    """The process is ending: deliver what it holds within ``timeout``, or, when the API is failing, time
    runs out or ``give_up()`` says so (a signal), spool it. ``take_spool``: a process that has not looked
    at the spool yet takes its share now (``look_once``). Never raises."""
    try:
        _shutdown(timeout, give_up, take_spool)
    except Exception:
        log.exception("Task Badger: internal error while flushing at shutdown",
                      extra={"taskbadger_internal_error": True})


def _shutdown(timeout: float, give_up: Callable[[], bool] | None, take_spool: bool) -> None:
    started = time.monotonic()
    config = get_config()
    drainer = _drainer.current()
    if drainer is not None:
        if take_spool and config is not None and config.spool_dir is not None:
            drainer.look_once(config)
        drainer.close()  # an ending process takes nothing more from the spool
    if config is not None and inline.waiting_to_settle() and not api_failing():
        # Runs waiting for their task (a create interrupted by this very shutdown: celery beat's SIGTERM): the API
        # answers, so they are settled now rather than left to the next process on this machine, which may never
        # come (a container replaced), and which nobody asks for when the spool is off.
        inline.settle_now(lambda: api_failing() or time.monotonic() - started >= timeout
                          or (give_up is not None and give_up()))
    current = sender.current_sender()
    held = current is not None and current.queue.busy()
    if config is None or (not held and not inline.waiting_to_settle()):
        _release_delivered()
        return
    why = "the API is not answering" if api_failing() else "their tasks could not be found in time"
    if held and not api_failing():
        left = max(0.0, timeout - (time.monotonic() - started))
        if sender.flush(left, give_up=lambda: api_failing() or (give_up is not None and give_up())):
            held = False
        elif api_failing():
            # it became so during the flush (a request in flight for over ``STUCK`` seconds): said as such, not as
            # the reason read before the flush began
            why = "the API is not answering"
        else:
            why = f"the API did not take them within {timeout:g} s"
    # What this process took from the spool is settled here, and nowhere else from now on: once the queue is
    # emptied for the spool, another thread's release_delivered() would take it all for delivered.
    claims = drainer.take_claims() if drainer is not None else []
    entries: list[Entry] = []
    if held and current is not None:
        with current.queue.cond:
            taken = current.queue.take_all()
        entries += entries_from(taken)
    entries += [Entry(fields, external_id=external_id, final=True, since=since)
                for external_id, fields, since in inline.unsettled()]
    if not entries:
        _release(claims)
        return
    if config.spool_dir is None:
        log.error("Task Badger: %d update(s) could not be delivered before this process ended, and the spool is "
                  "off: they are lost", len(entries))
        _count_lost(current, entries)
        return
    written, _ = Spool(config.spool_dir).write(api_key_of(config), entries)
    if not written:
        # What this process had taken from the spool goes back there as it was; only its own updates are lost.
        for claim, _ in claims:
            Spool.unclaim(claim)
        taken_back = {task_id for _, held_ids in claims for task_id in held_ids}
        _count_lost(current, [e for e in entries if e.task_id not in taken_back and e.external_id not in taken_back])
        return
    log.warning("Task Badger: %d update(s) not delivered before this process ended are spooled in %s (after "
                "%.2f s: %s); the next process that uses Task Badger on this machine delivers them", written,
                config.spool_dir, time.monotonic() - started, why)
    _release(claims)  # what this process had taken from the spool was just spooled again


def _count_lost(current: sender.Sender | None, entries: list[Entry]) -> None:
    lost = len([e for e in entries if e.task_id is not None])
    if current is not None and lost:
        with current.queue.cond:
            current.queue.note_spool_write_failed(lost)


def _release_delivered() -> None:
    drainer = _drainer.current()
    if drainer is not None:
        drainer.release_delivered()


def _release(claims: list[tuple[Claim, set[str]]]) -> None:
    for claim, _ in claims:
        Spool.release(claim)


def stats() -> dict[str, Any]:
    """``taskbadger.stats()``: this process's delivery counters, the breaker's state, and ``spool``: the
    updates waiting in the spool for this API (this process's and others')."""
    result = sender.stats()
    drainer = _drainer.current()
    # Besides the counters of what this process submitted: spooled entries given up when read (too old, not
    # entries) and runs whose task was never found.
    result["given_up"] = (drainer.given_up if drainer is not None else 0) + inline.settle_dropped()
    config = get_config()
    _release_delivered()  # what this process took from the spool and delivered is not waiting any more
    result["spool"] = Spool(config.spool_dir).waiting(api_key_of(config)) if config and config.spool_dir else 0
    return result


def deliver_spooled() -> int:
    """Take what the spool holds for this process's API now and queue it (also done in the background
    after ``init()``). Returns how many updates were taken."""
    config = get_config()
    if config is None or config.spool_dir is None:
        return 0
    return _drainer.get().scan(config)


class _Drainer:
    """This process's look at the spool: claims files for its API, queues their updates, and deletes
    each file once its updates have left the queue."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # One whole scan at a time (claim, then queue): a caller that asks for the spool now
        # (``deliver_spooled``, then a flush) must find queued what a scan already under way took.
        self._scanning = threading.Lock()
        # file, what it holds that is still in this process: task ids queued, external ids being settled
        self._claims: list[tuple[Claim, set[str]]] = []
        self.given_up = 0  # entries dropped when read: too old, or not entries
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = False
        self._looked = False  # whether this process has taken its share of the spool yet

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def start(self) -> None:
        """Look at the spool now and every ``SCAN_INTERVAL`` (again, after a ``close()``: a new ``init()``)."""
        with self._lock:
            self._closed, self._looked = False, False
            if self._thread is None:  # None also when no thread could start: tried again at the next start()
                self._thread = start_daemon_thread(self._run, "taskbadger-spool")
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(SCAN_INTERVAL)
            self._wake.clear()
            config = get_config()
            if config is None or config.spool_dir is None:
                continue
            try:
                self.keep_claims()  # first: a scan that fails must not leave its claims to be taken over
                self.scan(config)
                self.release_delivered()
            except Exception:
                log.exception("Task Badger: internal error while delivering the spool",
                              extra={"taskbadger_internal_error": True})

    def look_once(self, config: Config) -> None:
        """Take what the spool holds now unless this process already looked: one that ends before its
        spool thread ran (``taskbadger run -- true`` on a busy machine) still delivers what an earlier
        process spooled, within its own shutdown budget. A scan under way is waited for: what it claimed
        must be queued before the shutdown flush looks at the queue."""
        with self._scanning:
            if not self._looked:
                self._scan(config)

    def scan(self, config: Config) -> int:
        with self._scanning:
            return self._scan(config)

    def _scan(self, config: Config) -> int:
        with self._lock:
            if self._closed:
                return 0
            self._looked = True
            queue = pending_updates()
            # Up to half the queue: the rest is for the updates of this process's own tasks, which must never
            # wait for room. What is left in the spool is taken at a later look, as the queue drains.
            room = queue.max_pending // 2 - queue.held()
            claims, dropped = Spool(config.spool_dir).claim(  # type: ignore[arg-type]
                api_key_of(config), RETRY_HORIZON, limit=room, final_horizon=FINAL_HORIZON)
        if dropped:
            with self._lock:
                self.given_up += dropped
        taken = 0
        for claim in claims:
            held: set[str] = set()
            for entry in claim.entries:
                if entry.task_id is not None:
                    _queue_from_spool(entry)
                    held.add(entry.task_id)
                elif entry.external_id is not None:
                    inline.settle_later(entry.external_id, entry.fields, entry.since, horizon=FINAL_HORIZON)
                    held.add(entry.external_id)
                taken += 1
            with self._lock:
                self._claims.append((claim, held))
        if taken:
            log.info("Task Badger: %d update(s) taken from the spool %s", taken, config.spool_dir)
        return taken

    def release_delivered(self) -> None:
        """Delete the claimed files none of whose updates is still queued, in flight or being settled."""
        current = sender.current_sender()
        with self._lock:
            keep = []
            for claim, held in self._claims:
                if any((current is not None and current.queue.holds(key)) or inline.settling(key) for key in held):
                    keep.append((claim, held))
                else:
                    Spool.release(claim)
            self._claims = keep

    def keep_claims(self) -> None:
        """Touch the files this process holds: a live holder's claim is never taken for abandoned (``STALE_CLAIM``
        counts from its holder's last touch; other processes would take it, and queue and spool again, copies)."""
        with self._lock:
            paths = [claim.path for claim, _ in self._claims]
        for path in paths:
            Spool.keep(path)

    def take_claims(self) -> list[tuple[Claim, set[str]]]:
        """Every claimed file and what it holds, taken out: the ending process settles them itself."""
        with self._lock:
            claims, self._claims = self._claims, []
        return claims


def _queue_from_spool(entry: Entry) -> None:
    queue = pending_updates()
    # Queued as of when it was (``submit_older``): what this process queued since for the task is newer. A spooled
    # progress update may come from a process killed while its task was ended by another (the worker's main
    # process closes a task whose pool child hit a hard time limit or was terminated): it must not undo that.
    # A spooled final state may be older than the task's: run again meanwhile (retried by hand, redelivered), it
    # may have ended since, and that outcome stands.
    fields = {**entry.fields, merge.UNLESS_ENDED_LATER: True} if entry.final else \
        {**entry.fields, merge.UNLESS_FINAL: True}
    sender.ensure_started()
    with queue.cond:
        queue.submit_older(entry.task_id, fields, entry.final,  # type: ignore[arg-type]
                           time.time() - entry.since, FINAL_HORIZON if entry.final else 0.0)
        queue.counters["unspooled"] += 1


_drainer: PerProcess[_Drainer] = PerProcess(_Drainer)


def _on_configured(config: Config) -> None:
    if config.spool_dir is not None:
        _drainer.get().start()


when_configured(_on_configured)
# At interpreter exit Python 3.12+ starts no thread: senders that never started cannot deliver what the
# spool holds then, so that is left for the next process.
atexit.register(shutdown, 5.0, take_spool=False)


class _Forked:
    """What ``multiprocessing`` keeps a weak reference to for our after-fork hook."""


_FORKED = _Forked()


def _in_a_forked_child() -> None:
    """A process forked by ``multiprocessing`` (a ``Process``, a ``Pool``'s or a ``ProcessPoolExecutor``'s
    worker) leaves through ``os._exit``: no atexit, so what its ``@track`` calls queued would be lost (their
    tasks left ``processing``). It runs ``multiprocessing``'s finalizers first: deliver or spool there. The
    finalizer is added by a ``multiprocessing`` after-fork hook, since the child clears the finalizers it
    inherited after this runs. (Celery's and RQ's children have their own hooks: ``worker_process_shutdown``,
    the work horse's flush.)"""
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util.register_after_fork(_FORKED, _finalize_at_exit)


def _finalize_at_exit(_: object) -> None:
    util = sys.modules["multiprocessing.util"]
    util.Finalize(None, shutdown, args=(5.0,), kwargs={"take_spool": False}, exitpriority=10)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_in_a_forked_child)
