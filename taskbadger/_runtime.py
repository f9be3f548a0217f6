"""Per-process helpers: bounded text for log lines, and log lines that repeat at most once a while.

Every log line that carries a value from outside (a task name, an option, an id) passes it through
``short()``: a 10,000-character task name must not make every warning 10 KB long.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ._forksafe import renew_after_fork

log = logging.getLogger("taskbadger")

#: Longest piece of outside text quoted in one log line.
MAX_LOGGED_CHARS = 120


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
_throttle_lock = threading.Lock()
renew_after_fork(globals(), "_throttle_lock")


def log_throttled(key: str, interval: float, level: int, message: str, *args: Any) -> bool:
    """Log ``message`` unless a line with the same ``key`` was logged less than ``interval`` seconds
    ago. Returns whether it was logged."""
    now = time.monotonic()
    with _throttle_lock:
        if now - _last_logged.get(key, -1e9) < interval:
            return False
        if len(_last_logged) > 10_000:  # keys carry task names: keep the table bounded
            _last_logged.clear()
        _last_logged[key] = now
    log.log(level, message, *args)
    return True
