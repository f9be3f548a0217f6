"""The inline-create breaker: skip creates while the API cannot take them, and not for longer.

The create at publish must happen inline (the task's id travels in the message), so a dead or hung API
would make every ``.delay()`` wait for its budget. The worker's create of a task its publisher could
not track, and ``@track``'s, go through the same breaker (one per process).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .. import endpoints
from .._runtime import PerProcess, start_daemon_thread
from ..config import get_config
from ..exceptions import MissingConfiguration, RateLimited
from ..http import Deadline

log = logging.getLogger("taskbadger")

#: A call in flight for longer than this many times the usual duration of a successful one makes the
#: API suspect: other calls skip rather than join it.
SUSPECT_FACTOR = 4.0
#: Bounds on that "longer than usual", in seconds (the upper one before any call has succeeded).
MIN_SUSPECT_AFTER = 0.1
MAX_SUSPECT_AFTER = 0.5
#: Weight of the newest successful call in the running average of their durations.
EWMA_WEIGHT = 0.2
#: The most of what is left of its deadline that a call waits for a place among the calls in flight (``begin``):
#: the rest is for its own request.
PLACE_SHARE = 0.5

Probe = Callable[[], None]


class Breaker:
    """Skip calls while the API cannot take them, without switching tracking off for long.

    * A failure (a connection error, a missed deadline, a 5xx, an answer that cannot be read) counts
      from when its call started. After ``failure_threshold`` in a row the breaker opens: calls are
      skipped (tasks publish untracked, within a millisecond) for a cool-down. The cool-down is half of
      how long the API has been failing so far, between ``min_cooldown`` and ``max_cooldown``: after a
      blip of two seconds the API is tried again within a second of recovery; a long outage is tried
      every ``max_cooldown`` seconds.
    * While open, no user's call finds out whether the API is back: ``probe`` does, from a thread of
      the breaker's (a cheap read). Once it answers, one call at a time goes through until one
      succeeds, which closes the breaker; a failure reopens it.
    * At most ``max_in_flight`` calls at once, and none while a call in flight is taking much longer
      than calls usually take (``SUSPECT_FACTOR``): the calls already waiting find out, the others skip.
      So a hang costs a process at most ``max_in_flight`` waiting calls, and one thread at most
      ``failure_threshold`` in a row. A call that finds the places taken while the calls in flight are not
      suspect waits for a free one (``begin``'s ``deadline``: at most ``PLACE_SHARE`` of what is left of it), and
      skips once they turn suspect: many threads or greenlets of one process (a worker's threads, gevent or
      eventlet pool, a threaded web server) calling a healthy API at the same moment each get their turn within a
      few of its round trips, and no longer skip (a create skipped is a task not tracked).
    * A 429 is the API asking us to slow down, not an outage: calls are skipped for its
      ``Retry-After`` (1 s without one, at most ``max_defer``), then go ahead as before.
    * Failures after a quiet spell (nothing tried for a while) start a new count: what the breaker
      knew about the API is stale by then.
    """

    def __init__(self, failure_threshold: int = 3, min_cooldown: float = 0.25, max_cooldown: float = 30.0,
                 max_defer: float = 30.0, max_in_flight: int = 4, probe: Probe | None = None) -> None:
        self.failure_threshold = failure_threshold
        self.min_cooldown = min_cooldown
        self.max_cooldown = max_cooldown
        self.max_defer = max_defer
        self.max_in_flight = max_in_flight
        self.probe = probe
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified when calls may go ahead again
        self._failures = 0
        self._failing_since = 0.0
        self._last_failure = 0.0
        self._cooldown = min_cooldown
        self._open_until = 0.0
        self._deferred_until = 0.0
        self._skipped = 0
        #: creates skipped while the breaker was closed: every place taken by calls that were slow to answer
        self._skipped_busy = 0
        self._trial = False  # open, but the API answered a probe: one call at a time may go
        #: calls that ended in an error (not a 429), ever: a call waiting for a place skips when one fails meanwhile
        self._errors = 0
        self._in_flight: dict[int, float] = {}  # call -> when it started
        self._next_call = 0
        self._usual: float | None = None  # running average of successful calls' durations
        self._prober: threading.Thread | None = None

    # -- the calls --------------------------------------------------------------------------------

    def begin(self, max_in_flight: int | None = None, *, creates: bool = True,
              deadline: Deadline | None = None) -> int | None:
        """A call may go ahead: its handle for ``end()``. None: skip it (tracking is off for it).
        ``max_in_flight``: a caller whose wait blocks nobody else (a coroutine's create, made in a thread
        of its own) may allow more calls at once than ``self.max_in_flight``. ``creates``: whether the call
        creates a task; a skipped create is a task not tracked, counted for the line that says when tracking
        resumes (a skipped update or lookup is queued or settled later, not lost). ``deadline``: the call's; while
        every place is taken by calls that are not suspect, it waits for one, at most ``PLACE_SHARE`` of what is
        left (the rest is the call's own); without one it skips at once."""
        limit = max_in_flight or self.max_in_flight
        with self._lock:
            now = time.monotonic()
            until = now + (deadline.remaining() * PLACE_SHARE if deadline is not None else 0.0)
            errors = self._errors
            while now >= self._deferred_until:
                if self._admits(now, limit):
                    self._next_call += 1
                    self._in_flight[self._next_call] = now
                    return self._next_call
                pause = self._place_due(now, limit, until)
                if pause is None:
                    break
                self._changed.wait(pause)  # notified when a call ends
                now = time.monotonic()
                if self._errors != errors:
                    # a call in flight failed: the place it freed is not for a call that waited on a failing API (a
                    # hang's first round would take a fifth create, and more as each times out); skip, as the calls
                    # that arrive now while those in flight are suspect do
                    break
            if creates:
                if self._failures < self.failure_threshold and now >= self._deferred_until:
                    self._skipped_busy += 1
                else:
                    self._skipped += 1
            return None

    def end(self, call: int, err: Exception | None = None) -> None:
        """The call ended: ``err`` is None when the API answered it, else what went wrong."""
        with self._lock:
            started = self._in_flight.pop(call, None)
            if started is None:
                return
            self._changed.notify_all()  # a place is free (calls waiting for one see what this one came to)
            now = time.monotonic()
            if err is None:
                self._succeeded(now - started)
            elif isinstance(err, RateLimited):
                self._defer(now, err)
            else:
                self._errors += 1
                self._failed(started, now, err)

    def abandon(self, call: int) -> None:
        """The call was interrupted on our side (a time limit raised into the job by a signal handler, a greenlet's
        timeout, Ctrl-C): it says nothing of the API, and it no longer holds a place among the calls in flight
        (left there, it would look hung, and every later call in this process would skip)."""
        with self._lock:
            if self._in_flight.pop(call, None) is not None:
                self._changed.notify_all()

    def _place_due(self, now: float, max_in_flight: int, until: float) -> float | None:
        """Seconds to wait for a place among the calls in flight, or None when waiting cannot help: the breaker
        is open, the time to wait is over, or the calls in flight are suspect (waiting ends when they would turn
        so: a call that ends before notifies the waiting ones)."""
        if self._failures >= self.failure_threshold or now >= until or len(self._in_flight) < max_in_flight:
            return None
        suspect_at = min(self._in_flight.values()) + self._suspect_after()
        if now >= suspect_at:
            return None
        return min(until, suspect_at) - now + 0.001  # a little past: at the wake-up, it is due

    def _admits(self, now: float, max_in_flight: int) -> bool:
        if self._failures >= self.failure_threshold:
            if self._trial and not self._in_flight:
                return True
            if not self._start_prober() and not self._trial and now >= self._open_until and not self._in_flight:
                return True  # nobody probes for us (no probe, or no thread for it): one call finds out
            return False
        return len(self._in_flight) < max_in_flight and not self._suspect_in_flight(now)

    def _suspect_after(self) -> float:
        if self._usual is None:
            return MAX_SUSPECT_AFTER
        return min(MAX_SUSPECT_AFTER, max(MIN_SUSPECT_AFTER, SUSPECT_FACTOR * self._usual))

    def _succeeded(self, duration: float) -> None:
        self._usual = duration if self._usual is None else (1 - EWMA_WEIGHT) * self._usual + EWMA_WEIGHT * duration
        if self._failures >= self.failure_threshold or self._skipped:
            log.warning("Task Badger API answering again: tracking resumed (%d new tasks were not tracked)",
                        self._skipped)
        if self._skipped_busy:
            # The API never failed: it answered slowly while many threads or greenlets of this process called it.
            log.warning("Task Badger: %d new task(s) were not tracked: the API was answering slowly, and the calls of "
                        "this process already waiting for it took every place (%d) for longer than those could "
                        "wait", self._skipped_busy, self.max_in_flight)
        self._failures, self._skipped, self._skipped_busy, self._trial = 0, 0, 0, False
        self._changed.notify_all()

    def _defer(self, now: float, err: RateLimited) -> None:
        retry_after = err.retry_after if err.retry_after is not None else 1.0
        pause = min(self.max_defer, max(0.0, retry_after))
        if now + pause > self._deferred_until:
            if self._deferred_until <= now:
                log.warning("Task Badger API asked to slow down (429): new tasks are not tracked for "
                            "the next %.1f s", pause)
            self._deferred_until = now + pause
        if self._failures >= self.failure_threshold:
            self._trial = True  # it answered: it is up

    def _failed(self, started: float, now: float, err: Exception) -> None:
        was_open = self._failures >= self.failure_threshold
        if self._failures and started - self._last_failure > max(4 * self._cooldown, 5.0):
            # Nothing tried for a while: what we knew is stale, so the failing is counted from this call. A trial
            # call (open, and a probe found the API answering) still reopens the breaker when it fails: the probe
            # is fresh news, and this failure says the API answers reads but not our calls.
            self._failures = self.failure_threshold - 1 if was_open else 0
            self._failing_since = started
        if self._failures == 0:
            self._failing_since = started
        self._last_failure = now
        self._failures += 1
        self._trial = False
        if self._failures >= self.failure_threshold:
            self._cooldown = min(self.max_cooldown, max(self.min_cooldown, (now - self._failing_since) / 2))
            if not was_open:
                log.warning("Task Badger API failing (%s): new tasks are not tracked; it is tried again in "
                            "%.1f s, then further apart while it keeps failing (%.0f s at most)", err,
                            self._cooldown, self.max_cooldown)
            self._open_until = now + self._cooldown
            self._start_prober()

    # -- the probe ----------------------------------------------------------------------------------

    def _start_prober(self) -> bool:
        """Whether a probe runs (started now if none did). With the lock held. False without a probe, or when
        no thread could start (Python 3.12+ at interpreter shutdown: the flush at exit or a user's atexit handler
        met a failing API)."""
        if self.probe is not None and (self._prober is None or not self._prober.is_alive()):
            self._prober = start_daemon_thread(self._probe_until_up, "taskbadger-breaker-probe")
        return self._prober is not None

    def _probe_until_up(self) -> None:
        while True:
            with self._lock:
                if self._failures < self.failure_threshold or self._trial:
                    self._prober = None
                    return
                wait = self._open_until - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, 1.0))  # the cool-down; re-read it: a trial call may have reopened it
                continue
            assert self.probe is not None
            try:
                self.probe()
            except MissingConfiguration:
                self.reset()  # tracking was switched off: nothing left to protect
                return
            except RateLimited as err:
                with self._lock:
                    self._defer(time.monotonic(), err)
                continue
            except Exception:
                with self._lock:
                    now = time.monotonic()
                    self._cooldown = min(self.max_cooldown, max(self.min_cooldown, (now - self._failing_since) / 2))
                    self._open_until = now + self._cooldown
                continue
            with self._lock:
                self._trial = True
                self._changed.notify_all()

    def wait_until_up(self, timeout: float) -> bool:
        """Wait (up to ``timeout``) until calls may go ahead (closed, or a probe found the API up, and no 429's
        ``Retry-After`` still running: a caller that looped on it while deferred spun a CPU for the whole pause), and
        no call in flight is suspect (``begin`` skips at once while one is: a caller that looped on it while hung
        calls held the places spun a CPU until their deadlines, about one publish budget)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                now = time.monotonic()
                opened = self._failures >= self.failure_threshold and not self._trial
                deferred = now < self._deferred_until
                if not opened and not deferred and not self._suspect_in_flight(now):
                    return True
                remaining = deadline - now
                if remaining <= 0:
                    return False
                # the end of a deferral notifies nobody: wake up at it; a suspect call stays so until it ends, which
                # notifies (``end``, ``abandon``)
                self._changed.wait(min(remaining, self._deferred_until - now) if deferred and not opened
                                   else remaining)

    def _suspect_in_flight(self, now: float) -> bool:
        """Whether a call in flight has taken much longer than calls usually take (with the lock held)."""
        return bool(self._in_flight) and now - min(self._in_flight.values()) > self._suspect_after()

    # -- what others see ----------------------------------------------------------------------------

    def state(self) -> str:
        """"closed", "open", "half-open" (a call may find out whether the API is back) or "deferred" (a 429)."""
        with self._lock:
            now = time.monotonic()
            if now < self._deferred_until:
                return "deferred"
            if self._failures < self.failure_threshold:
                return "closed"
            if self._trial or (self._prober is None and now >= self._open_until):  # nobody probes: a call finds out
                return "half-open"
            return "open"

    def reset(self) -> None:
        with self._lock:
            self._failures, self._open_until, self._deferred_until = 0, 0.0, 0.0
            self._skipped, self._skipped_busy, self._trial = 0, 0, False
            self._in_flight.clear()
            self._usual = None
            self._changed.notify_all()


def _probe() -> None:
    """A cheap authenticated read within the publish budget: does the API answer at all?"""
    config = get_config()
    if config is None:
        raise MissingConfiguration(["token"])
    endpoints.probe(Deadline(config.publish_budget, config.timeout[0]))


_breaker: PerProcess[Breaker] = PerProcess(lambda: Breaker(probe=_probe))


def publish_breaker() -> Breaker:
    """This process's breaker (a forked child starts with a closed one)."""
    return _breaker.get()
