"""The per-task options every integration accepts (Celery's ``taskbadger_*`` arguments, ``django.tasks``'
``track_task(...)``, a queue's job options): their names, what a valid value is, and the recording of a
job's arguments.

Every option is checked once, where it enters, and becomes a typed, JSON-safe value. ``validate`` reports
an unknown option or an invalid value once (per task and option) and drops it; ``check_option`` says
whether one value is valid, for callers that refuse instead (a decorator in code, a system check).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from .._runtime import log_once, short
from ..actions import action_dicts
from ..exceptions import TaskbadgerException
from ..models import (
    HEARTBEAT_RANGE,
    MAX_NAME_LENGTH,
    MAX_SECONDS,
    MAX_TAG_LENGTH,
    MIN_TAG_LENGTH,
    is_heartbeat_interval,
    is_json,
    is_tag_map,
    is_task_id,
    jsonable,
    monitor_id,
)

log = logging.getLogger("taskbadger")


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
    if v and is_tag_map(v):
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
    if is_heartbeat_interval(v):
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


_SECONDS = _int(1, MAX_SECONDS)

#: option -> (check returning the value to use, description of what is expected).
OPTIONS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "name": (_name, f"a non-empty string of at most {MAX_NAME_LENGTH} characters"),
    "queue": (_name, f"a non-empty string of at most {MAX_NAME_LENGTH} characters"),
    "value": (_int(0, 2**63 - 1), "an integer >= 0"),
    "value_max": (_int(0, 2**63 - 1), "an integer >= 0"),
    "data": (_data, "a dict"),
    "tags": (_tags, f"a dict of strings to strings of {MIN_TAG_LENGTH} to {MAX_TAG_LENGTH} characters"),
    "monitor_id": (_monitor, "a monitor id (a UUID)"),
    "max_runtime": (_SECONDS, "an integer number of seconds >= 1"),
    "stale_timeout": (_SECONDS, "an integer number of seconds >= 1"),
    "record_task_args": (_bool, "True or False"),
    "heartbeat_interval": (_heartbeat, HEARTBEAT_RANGE),
    "parent": (_parent, "a Task Badger task id or None"),
    "track": (_bool, "True or False"),
    "actions": (_actions, "a list of taskbadger.Action (deprecated: prefer project-level actions)"),
}


#: Unknown options reported one by one per ``validate`` call; the rest are counted in one line.
MAX_UNKNOWN_REPORTED = 10


def report_once(task_name: str, option: str, message: str, prefix: str = "") -> None:
    log_once(f"option:{task_name[:200]}:{option[:100]}", logging.WARNING, "Task Badger option %s%s on task %s: %s",
             prefix, short(option, 60)[1:-1], short(task_name), message)


def check_option(option: str, value: Any) -> tuple[bool, Any]:
    """(valid?, the value to use) for one option."""
    spec = OPTIONS.get(option)
    if spec is None:
        return False, None
    try:
        return True, spec[0](value)
    except (_Invalid, TypeError):
        return False, None


def validate(task_name: str, options: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The valid options, each as the typed, JSON-safe value to use; report (once) and drop the others.
    ``prefix`` is how the integration spells an option (``taskbadger_`` for Celery), for the report.

    ``data`` that JSON cannot encode (sets, dates, objects) is converted the way recorded task
    arguments are: those values become their repr, with a warning."""
    valid: dict[str, Any] = {}
    unknown = 0
    for key, value in options.items():
        if key == "external_id":
            report_once(task_name, key, "not an option: a job's external_id is its own id (Celery's task id...), by "
                                        "which its task is found again; put your id in data; ignored", prefix)
            continue
        if not isinstance(key, str) or key not in OPTIONS:
            unknown += 1
            if unknown <= MAX_UNKNOWN_REPORTED:
                known = ", ".join(prefix + k for k in OPTIONS)
                report_once(task_name, str(key), f"unknown option, ignored (known options: {known})", prefix)
            elif unknown == MAX_UNKNOWN_REPORTED + 1:
                # options written by another producer (a message header): thousands of keys logged a line each
                extra = sum(1 for k in options if not isinstance(k, str) or k not in OPTIONS) - MAX_UNKNOWN_REPORTED
                log_once(f"options-unknown:{task_name[:200]}", logging.WARNING, "Task Badger: %d more unknown options "
                         "on task %s were ignored without a line each", extra, short(task_name))
            continue
        ok, checked = check_option(key, value)
        if not ok:
            report_once(task_name, key, f"expected {OPTIONS[key][1]}, got {short(value, 80)}; ignored", prefix)
        else:
            if key == "data" and not is_json(value):
                report_once(task_name, key, "values JSON cannot encode (sets, dates, objects) were stored as "
                                            "their repr; convert them to strings, numbers, lists or dicts", prefix)
            valid[key] = checked
    return valid


# -- recording a job's arguments ------------------------------------------------------------------------

#: Longest JSON text stored for one task's recorded arguments (args and kwargs together).
MAX_RECORDED_ARGS_CHARS = 4096


def recorded_args(args: Any, kwargs: Any, keys: tuple[str, str],
                  as_json: Callable[[Any], Any] = jsonable) -> dict[str, Any]:
    """``{keys[0]: [...args], keys[1]: {...kwargs}}``, JSON-safe (``as_json`` makes a value so, the way its
    queue encodes it); when the JSON is longer than ``MAX_RECORDED_ARGS_CHARS`` each is replaced by its
    truncated JSON text, and ``<keys[0]>_truncated`` is set."""
    args = list(args) if isinstance(args, (list, tuple)) else ([] if args is None else [args])
    kwargs = dict(kwargs) if isinstance(kwargs, Mapping) else {}
    data = {keys[0]: as_json(args), keys[1]: as_json(kwargs)}
    text = json.dumps(data)
    if len(text) <= MAX_RECORDED_ARGS_CHARS:
        return data
    half = MAX_RECORDED_ARGS_CHARS // 2
    return {
        keys[0]: _truncate(json.dumps(data[keys[0]]), half),
        keys[1]: _truncate(json.dumps(data[keys[1]]), half),
        f"{keys[0]}_truncated": True,
    }


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 12] + "…(truncated)"
