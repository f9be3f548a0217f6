"""The ``taskbadger_*`` options of the Celery integration: names, types, precedence, and argument recording.

Options come from four places, later ones winning: the decorator's ``taskbadger_kwargs`` dict, the
decorator's ``taskbadger_<name>`` arguments, ``apply_async``'s ``taskbadger_kwargs`` dict, and
``apply_async``'s ``taskbadger_<name>`` arguments (which may also arrive inside the task's kwargs,
e.g. ``task.delay(x, taskbadger_name=...)``). They never reach the task function. Tasks without the
base class take them from the ``taskbadger_kwargs`` message header.

Every option is checked once, where it enters, and becomes a typed, JSON-safe value; an unknown option
or an invalid value is logged once (per task and option) and ignored: the task is still published.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, MutableMapping
from typing import Any

from kombu.utils import json as kombu_json

from .._runtime import log_once, short
from ..actions import action_dicts
from ..exceptions import TaskbadgerException
from ..models import MAX_NAME_LENGTH, is_json, is_task_id, jsonable, monitor_id, safe_repr

log = logging.getLogger("taskbadger")

PREFIX = "taskbadger_"
KWARGS_KEY = "taskbadger_kwargs"
TRACK_KEY = "taskbadger_track"


class _Invalid(ValueError):
    pass


def _int(low: int, high: int) -> Any:
    def check(v: Any) -> int:
        if isinstance(v, int) and not isinstance(v, bool) and low <= v <= high:
            return v
        raise _Invalid
    return check


def _name(v: Any) -> str:
    if isinstance(v, str) and v.strip() and len(v) <= MAX_NAME_LENGTH:
        return v
    raise _Invalid


def _data(v: Any) -> dict[str, Any]:
    if not isinstance(v, Mapping):
        raise _Invalid
    return jsonable(dict(v))


def _tags(v: Any) -> dict[str, str]:
    if isinstance(v, Mapping) and v and all(isinstance(k, str) and k and isinstance(x, str) and 2 <= len(x) <= 255
                                           for k, x in v.items()):
        return dict(v)
    raise _Invalid


def _monitor(v: Any) -> str:
    canonical = monitor_id(v)
    if canonical is None:
        raise _Invalid
    return canonical


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise _Invalid


def _heartbeat(v: Any) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < v <= 86_400:
        return v
    raise _Invalid


def _parent(v: Any) -> str | None:
    if v is None or is_task_id(v):
        return v
    raise _Invalid


def _actions(v: Any) -> list[dict[str, Any]]:
    if not isinstance(v, (list, tuple)) or not v:
        raise _Invalid
    try:
        checked = action_dicts(v, stacklevel=4)
    except TaskbadgerException:
        raise _Invalid from None
    return jsonable(checked)


_SECONDS = _int(1, 2_147_483_647)

#: option -> (check returning the value to use, description of what is expected). Every option given
#: to the decorator, ``apply_async``, the task's kwargs or a message header goes through this table.
OPTIONS: dict[str, tuple[Any, str]] = {
    "name": (_name, f"a non-empty string of at most {MAX_NAME_LENGTH} characters"),
    "value": (_int(0, 2**63 - 1), "an integer >= 0"),
    "value_max": (_int(0, 2**63 - 1), "an integer >= 0"),
    "data": (_data, "a dict"),
    "tags": (_tags, "a dict of strings to strings of 2 to 255 characters"),
    "monitor_id": (_monitor, "a monitor id (a UUID)"),
    "max_runtime": (_SECONDS, "an integer number of seconds >= 1"),
    "stale_timeout": (_SECONDS, "an integer number of seconds >= 1"),
    "record_task_args": (_bool, "True or False"),
    "heartbeat_interval": (_heartbeat, "a positive number of seconds (at most a day)"),
    "parent": (_parent, "a Task Badger task id or None"),
    "track": (_bool, "True or False"),
    "actions": (_actions, "a list of taskbadger.Action (deprecated: prefer project-level actions)"),
}

def report_once(task_name: str, option: str, message: str) -> None:
    log_once(f"option:{task_name[:200]}:{option[:100]}", logging.WARNING, "Task Badger option %s%s on task %s: %s",
             PREFIX, short(option, 60)[1:-1], short(task_name), message)


def check_option(option: str, value: Any) -> tuple[bool, Any]:
    """(valid?, the value to use) for one option."""
    spec = OPTIONS.get(option)
    if spec is None:
        return False, None
    try:
        return True, spec[0](value)
    except (_Invalid, TypeError):
        return False, None


def validate(task_name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The valid options, each as the typed, JSON-safe value to use; report (once) and drop the others.

    ``data`` that JSON cannot encode (sets, dates, objects) is converted the way recorded task
    arguments are: those values become their repr, with a warning."""
    valid: dict[str, Any] = {}
    for key, value in options.items():
        if not isinstance(key, str) or key not in OPTIONS:
            known = ", ".join(PREFIX + k for k in OPTIONS)
            report_once(task_name, str(key), f"unknown option, ignored (known options: {known})")
            continue
        ok, checked = check_option(key, value)
        if not ok:
            report_once(task_name, key, f"expected {OPTIONS[key][1]}, got {short(value, 80)}; ignored")
        else:
            if key == "data" and not is_json(value):
                report_once(task_name, key, "values JSON cannot encode (sets, dates, objects) were stored as "
                                            "their repr; convert them to strings, numbers, lists or dicts")
            valid[key] = checked
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


def recorded_args(args: Any, kwargs: Any) -> dict[str, Any]:
    """``{"celery_task_args": [...], "celery_task_kwargs": {...}}``, JSON-safe; when the JSON is
    longer than ``MAX_RECORDED_ARGS_CHARS`` it is replaced by a truncated repr and a flag."""
    args = list(args) if isinstance(args, (list, tuple)) else ([] if args is None else [args])
    kwargs = dict(kwargs) if isinstance(kwargs, Mapping) else {}
    data = {"celery_task_args": _as_kombu_json(args), "celery_task_kwargs": _as_kombu_json(kwargs)}
    text = json.dumps(data)
    if len(text) <= MAX_RECORDED_ARGS_CHARS:
        return data
    half = MAX_RECORDED_ARGS_CHARS // 2
    return {
        "celery_task_args": _truncate(json.dumps(data["celery_task_args"]), half),
        "celery_task_kwargs": _truncate(json.dumps(data["celery_task_kwargs"]), half),
        "celery_task_args_truncated": True,
    }


class _Encoder(kombu_json.JSONEncoder):
    """kombu's JSON: types registered with ``kombu.utils.json.register_type`` (datetime, Decimal, UUID,
    bytes… and the user's own) in their tagged form ``{"__type__": ..., "__value__": ...}``, as they travel
    in the message; anything else JSON cannot encode becomes its repr."""

    def default(self, o: Any) -> Any:
        try:
            return super().default(o)
        except TypeError:
            return safe_repr(o)


def _as_kombu_json(value: Any) -> Any:
    try:
        return jsonable(json.loads(kombu_json.dumps(value, cls=_Encoder)))  # NaN and infinities too
    except (TypeError, ValueError, RecursionError):
        return jsonable(value)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 12] + "…(truncated)"
