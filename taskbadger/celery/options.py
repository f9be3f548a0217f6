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
from collections.abc import Mapping, MutableMapping
from typing import Any

from kombu.utils import json as kombu_json

from ..lifecycle import options as lifecycle_options
from ..lifecycle.options import MAX_RECORDED_ARGS_CHARS, OPTIONS, check_option
from ..models import jsonable, safe_repr

log = logging.getLogger("taskbadger")

PREFIX = "taskbadger_"
KWARGS_KEY = "taskbadger_kwargs"
TRACK_KEY = "taskbadger_track"

__all__ = ["KWARGS_KEY", "MAX_RECORDED_ARGS_CHARS", "OPTIONS", "PREFIX", "TRACK_KEY", "check_option",
           "decorator_options", "pop_options", "recorded_args", "report_once", "validate"]


def report_once(task_name: str, option: str, message: str) -> None:
    lifecycle_options.report_once(task_name, option, message, PREFIX)


def validate(task_name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The valid options (see ``lifecycle.options.validate``), reported with their ``taskbadger_`` prefix."""
    return lifecycle_options.validate(task_name, options, PREFIX)


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

RECORDED_KEYS = ("celery_task_args", "celery_task_kwargs")


def recorded_args(args: Any, kwargs: Any) -> dict[str, Any]:
    """``{"celery_task_args": [...], "celery_task_kwargs": {...}}``, JSON-safe as kombu encodes them; see
    ``lifecycle.options.recorded_args``."""
    return lifecycle_options.recorded_args(args, kwargs, RECORDED_KEYS, _as_kombu_json)


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
