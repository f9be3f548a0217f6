"""The publish-side breaker: skip creates while the API cannot take them, and not for longer.

The create at publish must happen inline (the task's id travels in the message), so a dead API would
make every ``.delay()`` wait for a timeout. The worker's fallback create, when a task starts that the
publisher could not track, goes through the same breaker (one per process).
"""

from __future__ import annotations

import logging
import threading
import time

from .._runtime import PerProcess
from ..exceptions import RateLimited

log = logging.getLogger("taskbadger")


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


_breaker: PerProcess[Breaker] = PerProcess(Breaker)


def publish_breaker() -> Breaker:
    """This process's breaker (a forked child starts with a closed one)."""
    return _breaker.get()
