"""The base classes of system integrations (``taskbadger.init(systems=[...])``): ``System``, and
``QueueIntegration``, the rules every queue integration shares (which tasks are tracked, monitors,
recorded arguments, heartbeats)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .._runtime import short
from ..exceptions import ConfigurationError
from ..models import HEARTBEAT_RANGE, MAX_SECONDS, is_heartbeat_interval, is_whole_seconds, monitor_id

log = logging.getLogger("taskbadger")


class System:
    """A system integration. ``identifier`` names it in the configuration (``Config.system()``)."""

    identifier: str = ""

    def on_init(self, config: Any) -> None:
        """Called by ``taskbadger.init()`` once the configuration is in place."""


def pattern_error(pattern: str) -> re.error | None:
    """Why ``pattern`` is not a valid regular expression, or None."""
    try:
        re.compile(pattern)
    except re.error as err:
        return err
    return None


def full_match(pattern: str, task_name: str) -> bool:
    """The one matching rule of task names: the exact name, or a regular expression matching all of it."""
    return pattern == task_name or (pattern_error(pattern) is None and re.fullmatch(pattern, task_name) is not None)


def _compile(patterns: Iterable[str] | None, what: str) -> list[re.Pattern[str]] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        patterns = [patterns]
    compiled = []
    for pattern in patterns:
        err = pattern_error(pattern)
        if err is not None:
            raise ConfigurationError(f"{what} pattern {pattern!r} is not a valid regular expression: {err}")
        compiled.append(re.compile(pattern))
    return compiled


def _checked_monitors(monitors: Mapping[str, str] | None) -> dict[str, str]:
    """Task name or pattern -> canonical monitor id; ConfigurationError naming the first entry that is
    not one. An entry whose value is None means "no monitor" (an id read from the environment, left unset)."""
    checked = {}
    for pattern, monitor in (monitors or {}).items():
        if monitor is None:
            continue
        canonical = monitor_id(monitor)
        if not isinstance(pattern, str) or canonical is None:
            raise ConfigurationError(
                f"monitors entry {short(pattern)} -> {short(monitor)}: the key must be a task name or pattern and the "
                "value a monitor id (a UUID); copy the id from the monitor's page in Task Badger.")
        checked[pattern] = canonical
    return checked


def _check_heartbeat(heartbeat_interval: Any, stale_timeout: Any) -> None:
    if heartbeat_interval is not None and not is_heartbeat_interval(heartbeat_interval):
        raise ConfigurationError(f"heartbeat_interval must be {HEARTBEAT_RANGE}, got {short(heartbeat_interval)}")
    if stale_timeout is not None and not is_whole_seconds(stale_timeout):
        raise ConfigurationError(f"stale_timeout must be a whole number of seconds from 1 to {MAX_SECONDS}, got "
                                 f"{short(stale_timeout)}")


class QueueIntegration(System):
    """Track a queue's tasks by name: the rules every queue integration shares.

    Arguments:
        auto_track_tasks: track every task whose name passes ``includes``/``excludes`` (the queue's own
            tasks, named with ``internal_prefix``, never are).
        includes, excludes: task names or regular expressions, matched against the whole name.
            Excludes win.
        record_task_args: store each task's args and kwargs in its ``data``.
        heartbeat_interval: seconds between automatic pings of running tasks.
        stale_timeout: seconds without an update before Task Badger marks a running task stale;
            defaults to twice ``heartbeat_interval``.
        monitors: task name or regular expression -> monitor id, for tasks that do not set one themselves.

    Raises ConfigurationError for a value that cannot be used (a monitor id that is not a UUID, a
    pattern that is not a regular expression, a negative interval): half a configuration is not applied.
    """

    #: Names of the queue's own tasks, never tracked by name.
    internal_prefix: str | None = None
    #: Where the user sets ``monitors`` (for messages): the Django app sets ``TASKBADGER['MONITORS']``.
    monitors_setting: str | None = None

    def __init__(
        self,
        auto_track_tasks: bool = True,
        includes: Iterable[str] | None = None,
        excludes: Iterable[str] | None = None,
        record_task_args: bool = False,
        heartbeat_interval: float | None = None,
        stale_timeout: int | None = None,
        monitors: Mapping[str, str] | None = None,
    ) -> None:
        _check_heartbeat(heartbeat_interval, stale_timeout)
        self.auto_track_tasks = auto_track_tasks
        self.includes = includes
        self.excludes = excludes
        self.record_task_args = record_task_args
        self.heartbeat_interval = heartbeat_interval
        self.stale_timeout = stale_timeout
        self.monitors = _checked_monitors(monitors)
        self._includes = _compile(includes, "includes")
        self._excludes = _compile(excludes, "excludes")
        # Every entry in its order, those left unset (None: "no monitor") too: such an entry means no monitor for
        # the tasks it names, rather than letting a broader pattern further on give them one.
        declared: dict[str, str | None] = {
            pattern: self.monitors.get(pattern) for pattern, monitor in (monitors or {}).items()
            if pattern in self.monitors or (isinstance(pattern, str) and monitor is None)}
        self._declared = declared
        self._monitors = list(zip(_compile(list(declared), "monitors") or [], declared.values(), strict=True))

    def track_task(self, task_name: str) -> bool:
        """Whether auto-tracking applies to ``task_name``."""
        if not self.auto_track_tasks or (self.internal_prefix and task_name.startswith(self.internal_prefix)):
            return False
        return self.matches(task_name)

    def matches(self, task_name: str) -> bool:
        if self._excludes and any(p.fullmatch(task_name) for p in self._excludes):
            return False
        if self._includes is not None:
            return any(p.fullmatch(task_name) for p in self._includes)
        return True

    def monitor_for(self, task_name: str) -> str | None:
        """The monitor id configured for ``task_name``: an exact name wins over a pattern, and patterns are tried in
        their order; an entry left unset (None) gives no monitor."""
        if task_name in self._declared:
            return self._declared[task_name]
        for pattern, monitor in self._monitors:
            if pattern.fullmatch(task_name):
                return monitor
        return None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(auto_track_tasks={self.auto_track_tasks!r}, includes={self.includes!r}, "
                f"excludes={self.excludes!r})")
