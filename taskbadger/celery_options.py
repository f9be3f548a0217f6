"""The ``taskbadger_*`` options of the Celery integration: names, types, precedence, and argument recording.

Options come from four places, later ones winning: the decorator's ``taskbadger_kwargs`` dict, the
decorator's ``taskbadger_<name>`` arguments, ``apply_async``'s ``taskbadger_kwargs`` dict, and
``apply_async``'s ``taskbadger_<name>`` arguments (which may also arrive inside the task's kwargs,
e.g. ``task.delay(x, taskbadger_name=...)``). They never reach the task function. Tasks without the
base class take them from the ``taskbadger_kwargs`` message header.

An unknown option or a value of the wrong type is logged once (per task and option) and ignored:
the task is still published.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any

from ._forksafe import renew_after_fork

log = logging.getLogger("taskbadger")

PREFIX = "taskbadger_"
KWARGS_KEY = "taskbadger_kwargs"
TRACK_KEY = "taskbadger_track"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: option -> (check, description of the expected type)
OPTIONS: dict[str, tuple[Any, str]] = {
    "name": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "value": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "value_max": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "data": (lambda v: isinstance(v, Mapping), "a dict"),
    "tags": (lambda v: isinstance(v, Mapping) and all(isinstance(x, str) for x in v.values()), "a dict of strings"),
    "monitor_id": (lambda v: isinstance(v, str) and v != "", "a monitor id string"),
    "max_runtime": (lambda v: _is_int(v) and v >= 1, "an integer number of seconds >= 1"),
    "stale_timeout": (lambda v: _is_int(v) and v >= 1, "an integer number of seconds >= 1"),
    "record_task_args": (lambda v: isinstance(v, bool), "True or False"),
    "heartbeat_interval": (lambda v: _is_number(v) and v > 0, "a positive number of seconds"),
    "parent": (lambda v: v is None or (isinstance(v, str) and v != ""), "a task id or None"),
    "track": (lambda v: isinstance(v, bool), "True or False"),
}

_reported: set[tuple[str, str]] = set()
_reported_lock = threading.Lock()
renew_after_fork(globals(), "_reported_lock")


def report_once(task_name: str, option: str, message: str) -> None:
    key = (task_name, option)
    with _reported_lock:
        if key in _reported:
            return
        _reported.add(key)
    log.warning("Task Badger option %s%s on task %r: %s", PREFIX, option, task_name, message)


def validate(task_name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Keep the valid options; report (once) and drop the others."""
    valid: dict[str, Any] = {}
    for key, value in options.items():
        spec = OPTIONS.get(key)
        if spec is None:
            known = ", ".join(PREFIX + k for k in OPTIONS)
            report_once(task_name, key, f"unknown option, ignored (known options: {known})")
        elif not spec[0](value):
            report_once(task_name, key, f"expected {spec[1]}, got {value!r}; ignored")
        else:
            valid[key] = value
    return valid


def pop_options(source: MutableMapping[str, Any] | None) -> dict[str, Any]:
    """Remove ``taskbadger_kwargs`` and ``taskbadger_<name>`` entries from ``source`` and return
    them as one dict (individual arguments win over the dict)."""
    if not source:
        return {}
    found: dict[str, Any] = {}
    bundle = source.pop(KWARGS_KEY, None)
    if isinstance(bundle, Mapping):
        found.update(bundle)
    elif bundle is not None:
        found["kwargs"] = bundle  # reported as an unknown option 'kwargs' of the wrong shape
    for key in [k for k in source if isinstance(k, str) and k.startswith(PREFIX)]:
        found[key[len(PREFIX):]] = source.pop(key)
    return found


def decorator_options(task: Any) -> dict[str, Any]:
    """Options given to the task decorator (Celery stores unknown decorator arguments as class
    attributes)."""
    cls = type(task)
    cached = cls.__dict__.get("_taskbadger_decorator_options")
    if cached is not None:
        return cached
    found: dict[str, Any] = {}
    bundle = getattr(task, KWARGS_KEY, None)
    if isinstance(bundle, Mapping):
        found.update(bundle)
    for attr in dir(cls):
        if attr.startswith(PREFIX) and attr not in (KWARGS_KEY, "taskbadger_task", "taskbadger_task_id"):
            value = getattr(cls, attr, None)
            if not callable(value) and not isinstance(value, property):
                found[attr[len(PREFIX):]] = value
    try:
        cls._taskbadger_decorator_options = found  # computed once per task class
    except (AttributeError, TypeError):
        pass
    return found


# -- recording task arguments ----------------------------------------------------------------------

#: Longest JSON text stored for one task's recorded arguments (args and kwargs together).
MAX_RECORDED_ARGS_CHARS = 4096


def _jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` if JSON can encode it, else a structure where what it cannot encode is a repr."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else repr(value)
    if depth > 20:
        return repr(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    return _safe_repr(value)


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


def recorded_args(args: Any, kwargs: Any) -> dict[str, Any]:
    """``{"celery_task_args": [...], "celery_task_kwargs": {...}}``, JSON-safe; when the JSON is
    longer than ``MAX_RECORDED_ARGS_CHARS`` it is replaced by a truncated repr and a flag."""
    data = {"celery_task_args": _jsonable(list(args or ())), "celery_task_kwargs": _jsonable(dict(kwargs or {}))}
    text = json.dumps(data)
    if len(text) <= MAX_RECORDED_ARGS_CHARS:
        return data
    half = MAX_RECORDED_ARGS_CHARS // 2
    return {
        "celery_task_args": _truncate(json.dumps(data["celery_task_args"]), half),
        "celery_task_kwargs": _truncate(json.dumps(data["celery_task_kwargs"]), half),
        "celery_task_args_truncated": True,
    }


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 12] + "…(truncated)"
