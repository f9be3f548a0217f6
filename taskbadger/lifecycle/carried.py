"""What travels from the process that enqueues a job to the worker that runs it: the created task's
fields (so the worker builds ``current_task()`` without a GET) and how to run it (heartbeat, stale
timeout). Celery carries it in a message header, ``django.tasks`` in a table, another queue in its job.

Whoever wrote it (any producer, any process sharing the database), it is checked here once when it is
read: what is invalid is dropped with one warning naming where it came from and the task, and the job
runs (tracked without that value, or untracked).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._runtime import log_throttled, short
from ..delivery import merge
from ..models import (
    HEARTBEAT_RANGE,
    MAX_NAME_LENGTH,
    STATUS_VALUES,
    is_count,
    is_heartbeat_interval,
    is_task_id,
    is_time_text,
    is_whole_seconds,
    jsonable,
)

log = logging.getLogger("taskbadger")

#: ``data`` larger than this (as JSON) is not carried; the worker fetches it if the job's body asks for it.
MAX_CARRIED_DATA_CHARS = 8192
#: Most a retry's ``resend`` fields may hold (JSON characters): the data of a task its body filled, with the retry's
#: count and exception, fits; a message written by another producer is not taken up to any size.
MAX_RESEND_CHARS = 65536


def _text(limit: int) -> Any:
    return lambda v: v if isinstance(v, str) and len(v) <= limit else _invalid()


def _count(v: Any) -> int:
    return v if is_count(v) else _invalid()


def _invalid() -> Any:
    raise ValueError


#: carried task field -> check returning the value to keep (raises ValueError when invalid)
_TASK_FIELDS: dict[str, Any] = {
    "id": lambda v: v if is_task_id(v) else _invalid(),
    "name": _text(MAX_NAME_LENGTH * 4),
    "status": lambda v: v if isinstance(v, str) and v in STATUS_VALUES else _invalid(),
    "value": lambda v: None if v is None else _count(v),
    "value_max": _count,
    "data": lambda v: jsonable(v),
    "tags": lambda v: dict(v) if (type(v) is dict or isinstance(v, Mapping)) and (not v or all(
        isinstance(k, str) and isinstance(x, str) for k, x in v.items())) else _invalid(),
    "parent": lambda v: v if v is None or is_task_id(v) else _invalid(),
    "queue": _text(1000),
    "external_id": _text(1000),
    "public_url": _text(2000),
    "data_omitted": lambda v: v if isinstance(v, bool) else _invalid(),
    # the task's parent was not carried (a Procrastinate job carries only its task's id): read when it is needed
    "parent_omitted": lambda v: v if isinstance(v, bool) else _invalid(),
    # the progress carried is the task's as this was written, not what the job's attempts reported since (a message
    # sent again by the worker's main process after its pool child was lost): its next attempt does not know it
    "progress_omitted": lambda v: v if isinstance(v, bool) else _invalid(),
}


@dataclass
class Meta:
    """What is carried about a created task: its fields (``id`` always valid), and the heartbeat and
    stale timeout to apply once it runs."""

    task: dict[str, Any]
    heartbeat_interval: float | None = None
    stale_timeout: int | None = None
    #: The update an earlier attempt could not send when it was retried (its data, its start): the next attempt
    #: sends it with its own start, so that it can never reach the API after that attempt's final state.
    resend: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return self.task["id"]

    def to_dict(self) -> dict[str, Any]:
        carried = {"task": self.task, "heartbeat_interval": self.heartbeat_interval,
                   "stale_timeout": self.stale_timeout}
        if self.resend:
            carried["resend"] = self.resend
        return carried


def _warn(task_name: str, where: str, problem: str) -> None:
    log_throttled(f"carried:{task_name[:200]}:{where[:200]}", 60.0, logging.WARNING,
                  "Task Badger: %s on task %s %s; ignored", where, short(task_name), problem)


def parse_meta(raw: Any, task_name: str, where: str) -> Meta | None:
    """The checked ``{"task": {...}, "heartbeat_interval": s, "stale_timeout": s}``, or None (with a warning)
    when it is unusable. ``where`` names where it was read, for the warning (``message header
    taskbadger_task``)."""
    if raw is None:
        return None
    task = raw.get("task") if type(raw) is dict or isinstance(raw, Mapping) else None
    if type(task) is not dict and not isinstance(task, Mapping):
        _warn(task_name, where, f"is not of the form {{'task': {{'id': ...}}}} ({short(raw, 60)})")
        return None
    if not is_task_id(task.get("id")):
        _warn(task_name, where, f"has no valid task id ({short(task.get('id'), 60)})")
        return None
    fields: dict[str, Any] = {}
    for key, value in task.items():
        if key == "id":
            fields[key] = value  # checked above
            continue
        check = _TASK_FIELDS.get(key)
        if check is None:
            continue  # a field this version does not use
        try:
            fields[key] = check(value)
        except (ValueError, TypeError):
            _warn(task_name, f"{where}.task.{short(key, 40)}", f"has an invalid value {short(value, 60)}")
    if fields.get("data") is not None and len(json.dumps(fields["data"])) > MAX_CARRIED_DATA_CHARS:
        # more than a publisher of ours carries (another producer's): not written back from here; the body
        # fetches the task's data if it asks for it, and keys added at the end are merged into it when sent
        del fields["data"]
        fields["data_omitted"] = True
        _warn(task_name, f"{where}.task.data", f"is larger than {MAX_CARRIED_DATA_CHARS} characters")
    heartbeat = raw.get("heartbeat_interval")
    if heartbeat is not None and not is_heartbeat_interval(heartbeat):
        _warn(task_name, f"{where}.heartbeat_interval", f"is not {HEARTBEAT_RANGE} ({short(heartbeat, 60)})")
        heartbeat = None
    stale = raw.get("stale_timeout")
    if stale is not None and not is_whole_seconds(stale):
        _warn(task_name, f"{where}.stale_timeout", f"is not a whole number of seconds ({short(stale, 60)})")
        stale = None
    resend = raw.get("resend")
    return Meta(fields, float(heartbeat) if heartbeat is not None else None, stale,
                _resend(resend, task_name, where) if resend is not None else None)


def _mapping(v: Any) -> dict[str, Any]:
    return dict(jsonable(v)) if isinstance(v, Mapping) else _invalid()


#: the fields of an earlier attempt's update that its next attempt may send (``Meta.resend``) -> their check
_RESEND_FIELDS: dict[str, Any] = {
    "data": _mapping,
    "merge_data": _mapping,
    "value": _count,
    "value_max": _count,
    "start_time": lambda v: v if is_time_text(v) else _invalid(),
    merge.KEEP_START: lambda v: v if v is True else _invalid(),
    "stale_timeout": lambda v: v if is_whole_seconds(v) else _invalid(),
}


def _resend(raw: Any, task_name: str, where: str) -> dict[str, Any] | None:
    """The checked ``resend`` fields (``Meta.resend``): only those listed, each valid; None when there are none."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        _warn(task_name, f"{where}.resend", f"is not a dict ({short(raw, 60)})")
        return None
    fields: dict[str, Any] = {}
    for key, value in raw.items():
        check = _RESEND_FIELDS.get(key)
        if check is None:
            continue  # a field this version does not send again
        try:
            fields[key] = check(value)
        except (ValueError, TypeError):
            _warn(task_name, f"{where}.resend.{short(key, 40)}", f"has an invalid value {short(value, 60)}")
    if fields and len(json.dumps(fields, default=str)) > MAX_RESEND_CHARS:
        _warn(task_name, f"{where}.resend", f"is larger than {MAX_RESEND_CHARS} characters")
        return None
    return fields or None


def carried_fields(task_fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a created task that are carried to the worker (``data`` only while small)."""
    keep = ("id", "name", "status", "value", "value_max", "tags", "parent", "queue", "external_id", "public_url")
    fields = {k: task_fields[k] for k in keep if task_fields.get(k) is not None}
    data = task_fields.get("data")
    if data is not None:
        if len(json.dumps(data, default=str)) <= MAX_CARRIED_DATA_CHARS:
            fields["data"] = data
        else:
            fields["data_omitted"] = True
    return fields
