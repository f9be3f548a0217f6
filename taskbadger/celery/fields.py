"""What a tracked Celery task is created with, and the one inline create (at publish, or when the
worker creates a task its publisher could not).

Options reach here already checked (``options.validate``); the integration's rules come from the
configured ``CelerySystemIntegration`` (``celery_system()``).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from ..config import get_config
from ..inline import Created, create_inline
from ..models import MAX_NAME_LENGTH, StatusEnum
from ..scope import parent_for_new_task
from .options import decorator_options, recorded_args, validate
from .state import running_tracking

#: Set on the ``taskbadger.celery.Task`` class: tasks that use it are tracked without any rule.
BASE_CLASS_MARK = "_taskbadger_tracks_itself"
STALE_TIMEOUT_FACTOR = 2


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def celery_system() -> Any:
    config = get_config()
    return config.system("celery") if config else None


def registered_task(name: str) -> Any:
    import celery

    return celery.current_app.tasks.get(name)


def uses_base_class(celery_task: Any) -> bool:
    return getattr(celery_task, BASE_CLASS_MARK, False) is True


def checked_decorator_options(celery_task: Any, task_name: str) -> dict[str, Any]:
    """The decorator's options, checked once per task class."""
    if celery_task is None:
        return {}
    cls = type(celery_task)
    checked = cls.__dict__.get("_taskbadger_checked_options")
    if checked is None:
        checked = validate(task_name, decorator_options(celery_task))
        try:
            cls._taskbadger_checked_options = checked
        except (AttributeError, TypeError):
            pass
    return checked


def create_fields(name: str, options: dict[str, Any], system: Any, celery_id: str | None, args: Any,
                  kwargs: Any, queue: str | None, canvas_data: dict | None = None,
                  display_name: str | None = None) -> dict[str, Any]:
    """The create body of a task (``name`` and ``monitor_id`` included). ``name`` is the Celery task's
    (the integration's rules apply to it); ``display_name`` the task's name when it differs."""
    shown = display_name or name
    fields: dict[str, Any] = {
        "name": options.get("name", shown if len(shown) <= MAX_NAME_LENGTH else shown[:MAX_NAME_LENGTH - 1] + "…"),
        "status": StatusEnum.PENDING,
        "external_id": celery_id if isinstance(celery_id, str) else None,
        "queue": queue,
    }
    for key in ("value", "value_max", "tags", "max_runtime", "actions"):
        if key in options:
            fields[key] = options[key]
    data = dict(options.get("data") or {})
    if canvas_data:
        data.update(canvas_data)
    if options.get("record_task_args", system.record_task_args if system is not None else False):
        data.update(recorded_args(args, kwargs))
    if data:
        fields["data"] = data
    if "parent" in options:
        fields["parent"] = options["parent"]  # explicit, None included
    elif not _is_workflow_successor(name):
        fields["parent"] = parent_for_new_task()
    monitor = options.get("monitor_id") or (system.monitor_for(name) if system is not None else None)
    if monitor:
        fields["monitor_id"] = monitor
    return fields


def heartbeat_options(options: dict[str, Any], system: Any) -> tuple[float | None, int | None]:
    """(seconds between pings, stale_timeout) for a task: its options, else the integration's; the
    stale timeout defaults to twice the heartbeat interval."""
    interval = options.get("heartbeat_interval", system.heartbeat_interval if system is not None else None)
    stale = options.get("stale_timeout", system.stale_timeout if system is not None else None)
    if stale is None and interval:
        stale = max(1, math.ceil(interval * STALE_TIMEOUT_FACTOR))
    return interval, stale


def create_now(fields: dict[str, Any], where: str) -> Created:
    """The inline create of a Celery task (``fields`` from ``create_fields``): ``where`` is "publish" or
    "start" (see ``taskbadger.delivery.inline``)."""
    fields = dict(fields)
    name = fields.pop("name")
    return create_inline(name, fields, fields.pop("monitor_id", None), where=where)


def successor_names(request: Any) -> frozenset[str]:
    """Names of the tasks Celery will publish after this one returns: its chain's next link and
    its ``link`` callbacks."""
    names = set()
    for signature in list(getattr(request, "chain", None) or []) + list(getattr(request, "callbacks", None) or []):
        name = signature.get("task") if isinstance(signature, dict) else getattr(signature, "task", None)
        if name:
            names.add(name)
    return frozenset(names)


def _is_workflow_successor(name: str) -> bool:
    """A chain's next task and ``link`` callbacks are published by the worker after the body
    returned: they follow the running task, they are not its children. The names are taken when the
    task starts, because some Celery versions pop the next link off ``request.chain`` before
    publishing it."""
    running = running_tracking()
    return running is not None and name in running.successors
