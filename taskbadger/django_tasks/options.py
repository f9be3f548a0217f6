"""Per-task options of ``django.tasks`` tasks: ``taskbadger_django.track_task(...)`` records them here,
keyed by the task's module path (a ``django.tasks`` ``Task`` is a frozen dataclass: nothing can be set
on it, and ``Task.using()`` makes a copy with the same function)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..lifecycle import OPTIONS, check_option

#: module path -> checked options ("track": False opts the task out; True tracks it whatever the rules)
_registry: dict[str, dict[str, Any]] = {}

#: The options ``track_task`` takes (``enabled`` is the ``track`` option).
TRACK_TASK_OPTIONS = ("name", "value_max", "monitor_id", "tags", "data", "enabled", "record_task_args",
                      "heartbeat_interval", "stale_timeout", "max_runtime")


def module_path(task: Any) -> str:
    path = getattr(task, "module_path", None)
    if isinstance(path, str):
        return path
    func = getattr(task, "func", task)
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', getattr(func, '__name__', '?'))}"


def checked(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options as the lifecycle takes them; TypeError naming the first unknown option or bad value
    (a decorator in code refuses at import time, rather than tracking half of what was asked)."""
    result: dict[str, Any] = {}
    for key, value in options.items():
        option = "track" if key == "enabled" else key
        if key not in TRACK_TASK_OPTIONS:
            raise TypeError(f"track_task() got an unknown option {key!r} (known: {', '.join(TRACK_TASK_OPTIONS)})")
        if value is None:
            continue
        ok, checked_value = check_option(option, value)
        if not ok:
            raise TypeError(f"track_task({key}=...) must be {OPTIONS[option][1]}, got {value!r}")
        result[option] = checked_value
    return result


def register(task: Any, options: Mapping[str, Any]) -> None:
    _registry[module_path(task)] = dict(options)


def options_for(path: str) -> dict[str, Any]:
    return _registry.get(path, {})


def registered() -> dict[str, dict[str, Any]]:
    return dict(_registry)
