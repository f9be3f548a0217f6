"""The Task Badger API's task endpoints, one function each, returning models.

Bodies are cleaned here into the API's wire shape (statuses as strings, datetimes as ISO 8601, ``data``
that JSON can encode exactly), and ids and monitor ids checked, before anything is sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import http
from ._runtime import short
from .config import Config, get_config
from .exceptions import InvalidData, MissingConfiguration
from .models import StatusEnum, TaskModel, format_datetime, is_task_id, monitor_id


def current_config() -> Config:
    config = get_config()
    if config is None:
        raise MissingConfiguration(["token"])
    return config


def task_path(task_id: Any) -> str:
    """``<id>/`` for a valid task id; InvalidData for anything else (it would land in a URL)."""
    if not is_task_id(task_id):
        raise InvalidData(f"{short(task_id)} is not a Task Badger task id (letters, digits, - and _)")
    return f"{task_id}/"


def clean_body(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Drop None values, coerce the status, serialise datetimes, and check ``data`` and ``tags``."""
    body: dict[str, Any] = {}
    for key, value in fields.items():
        if value is None:
            continue
        if key == "status":
            value = StatusEnum.coerce(value).value
        elif key in ("start_time", "end_time") and hasattr(value, "isoformat"):
            value = format_datetime(value)
        elif key == "data":
            check_json(value, "data")
        elif key == "tags":
            if not isinstance(value, Mapping):
                raise InvalidData(f"tags must be a dict of str to str, got {type(value).__name__}")
            value = {str(k): str(v) for k, v in value.items()}
        body[key] = value
    return body


def check_json(value: Any, what: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as err:
        raise InvalidData(
            f"{what} cannot be encoded as JSON ({err}); convert such values (dates, sets, objects, NaN) "
            "to strings, numbers, lists or dicts first"
        ) from err


def create(body: Mapping[str, Any], monitor: str | None = None, transport: http.Transport | None = None
           ) -> TaskModel:
    """POST: create a task from a body (``name`` included), optionally under a monitor."""
    config = current_config()
    headers = None
    if monitor:
        canonical = monitor_id(monitor)
        if canonical is None:
            raise InvalidData(f"monitor_id {short(monitor)} is not a monitor id (a UUID): copy it from the "
                              "monitor's page in Task Badger")
        headers = {http.MONITOR_HEADER: canonical}
    request = http.build_request(config, "POST", json_body=clean_body(body), headers=headers)
    return TaskModel.from_dict(http.send(config, request, transport))


def get(task_id: str) -> TaskModel:
    config = current_config()
    return TaskModel.from_dict(http.send(config, http.build_request(config, "GET", task_path(task_id))))


def update(task_id: str, fields: Mapping[str, Any]) -> TaskModel:
    """PATCH: send the given fields (None values are left out)."""
    config = current_config()
    request = http.build_request(config, "PATCH", task_path(task_id), json_body=clean_body(fields))
    return TaskModel.from_dict(http.send(config, request))


def update_many(updates: list[tuple[str, Mapping[str, Any]]]) -> list[Exception | None]:
    """PATCH several tasks as one batch on the pooled transport, without reading the answers' bodies
    (the delivery senders' path). Returns, per update, None or the error it met."""
    config = current_config()
    errors: dict[int, Exception] = {}
    requests: list[http.Request] = []
    for i, (task_id, fields) in enumerate(updates):
        try:
            requests.append(http.build_request(config, "PATCH", task_path(task_id), json_body=clean_body(fields)))
        except (InvalidData, ValueError) as err:
            errors[i] = err
    sent = iter(http.send_many(config, requests, http.hot_path_transport(config)) if requests else ())
    return [errors[i] if i in errors else next(sent) for i in range(len(updates))]


def cancel(task_id: str) -> None:
    """DELETE: the task's status becomes ``cancelled``."""
    config = current_config()
    http.send(config, http.build_request(config, "DELETE", task_path(task_id)))


@dataclass
class Page:
    """One page of the task list."""

    results: list[TaskModel] = field(default_factory=list)
    next: str | None = None
    previous: str | None = None


def list_page(page_size: int | None = None, cursor: str | None = None, parent: str | None = None) -> Page:
    """GET the list: one page of tasks, newest first; ``parent`` keeps only that task's children."""
    config = current_config()
    params = {"page_size": page_size, "cursor": cursor, "parent": parent}
    payload = http.send(config, http.build_request(config, "GET", params=params))
    payload = payload if isinstance(payload, dict) else {}
    return Page([TaskModel.from_dict(item) for item in payload.get("results") or [] if isinstance(item, dict)],
                payload.get("next"), payload.get("previous"))
