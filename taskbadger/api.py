"""The task endpoints as plain functions: create, get, update, list, cancel (and safe variants)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import config as _config
from . import models, transport
from ._runtime import short
from .exceptions import CreateSkipped, InvalidData, MissingConfiguration
from .models import StatusEnum, TaskModel, format_datetime
from .scope import _state as _scope_state
from .task import Task

log = logging.getLogger("taskbadger")

_UPDATABLE = (
    "name", "status", "value", "value_max", "data", "max_runtime", "stale_timeout", "tags", "queue",
    "external_id", "parent", "start_time", "end_time",
)


def clean_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Drop None values, coerce the status, serialise datetimes, and check ``data`` is JSON."""
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
    except (TypeError, ValueError) as err:
        raise InvalidData(
            f"{what} cannot be encoded as JSON ({err}); convert such values (dates, sets, objects) "
            "to strings, numbers, lists or dicts first"
        ) from err


def build_create_body(name: str, fields: Mapping[str, Any]) -> dict[str, Any] | None:
    """Merge scope and global tags, apply ``before_create``. None means: do not create."""
    config = _config.get_config()
    scope = _scope_state()
    body: dict[str, Any] = {"name": name, **{k: v for k, v in fields.items() if v is not None}}
    data = body.get("data")
    if scope.context:
        if data is None:
            body["data"] = dict(scope.context)
        elif isinstance(data, Mapping):
            body["data"] = {**scope.context, **data}
    tags = {**(config.tags if config else {}), **scope.tags, **(body.get("tags") or {})}
    if tags:
        body["tags"] = tags
    if config and config.before_create:
        body = config.before_create(body)
        if body is None:
            return None
    return clean_fields(body)


def create_task(
    name: str,
    status: StatusEnum | str = StatusEnum.PENDING,
    value: int | None = None,
    value_max: int | None = None,
    data: Any = None,
    max_runtime: int | None = None,
    stale_timeout: int | None = None,
    actions: list[Any] | None = None,
    monitor_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    queue: str | None = None,
    external_id: str | None = None,
    parent: str | None = None,
    start_time: Any = None,
    end_time: Any = None,
) -> Task:
    """Create a task and return it.

    Raises:
        CreateSkipped: ``before_create`` returned None.
        InvalidData: a value cannot be sent (e.g. ``data`` JSON cannot encode).
        ValueError: an unknown status.
        TaskbadgerException subclasses: the API refused or could not be reached.
    """
    fields = dict(
        status=StatusEnum.coerce(status), value=value, value_max=value_max, data=data,
        max_runtime=max_runtime, stale_timeout=stale_timeout, tags=tags, queue=queue,
        external_id=external_id, parent=parent, start_time=start_time, end_time=end_time,
    )
    if actions:
        fields["actions"] = [a.to_dict() if hasattr(a, "to_dict") else a for a in actions]
    return send_create(name, fields, monitor_id)


def send_create(name: str, fields: Mapping[str, Any], monitor_id: str | None = None, fast: bool = False) -> Task:
    """Create with already-collected fields (scope, global tags and ``before_create`` applied here).
    ``fast``: on a lean pooled connection (the Celery publish path)."""
    body = build_create_body(name, fields)
    if body is None:
        raise CreateSkipped(f"before_create returned None: task {short(name)} was not created")
    headers = None
    if monitor_id:
        canonical = models.monitor_id(monitor_id)
        if canonical is None:
            raise InvalidData(f"monitor_id {short(monitor_id)} is not a monitor id (a UUID): copy it from the "
                              "monitor's page in Task Badger")
        headers = {transport.MONITOR_HEADER: canonical}
    payload = transport.request("POST", json_body=body, headers=headers, fast=fast)
    return Task(TaskModel.from_dict(payload))


def send_updates(updates: list[tuple[str, Mapping[str, Any]]]) -> list[Exception | None]:
    """PATCH several tasks as one batch, without reading the answers back (the dispatcher's path).
    Returns, per update, None or the error it met."""
    calls: list[tuple[str, str, Any]] = []
    errors: dict[int, Exception] = {}
    for i, (task_id, fields) in enumerate(updates):
        try:
            calls.append(("PATCH", task_path(task_id), clean_fields(fields)))
        except (InvalidData, ValueError) as err:
            errors[i] = err
    sent = iter(transport.send_many(calls)) if calls else iter(())
    return [errors[i] if i in errors else next(sent) for i in range(len(updates))]


def task_path(task_id: str) -> str:
    """``<id>/`` for a valid task id; InvalidData for anything else (it would land in a URL)."""
    if not models.is_task_id(task_id):
        raise InvalidData(f"{short(task_id)} is not a Task Badger task id (letters, digits, - and _)")
    return f"{task_id}/"


def get_task(task_id: str) -> Task:
    """Fetch a task by id."""
    return Task(TaskModel.from_dict(transport.request("GET", task_path(task_id))))


def update_task(task_id: str, **fields: Any) -> Task:
    """Send the given fields (None values are left out) and return the updated task.

    Fields: name, status, value, value_max, data, max_runtime, stale_timeout, tags, queue,
    external_id, parent, start_time, end_time (``actions`` too, for compatibility).
    """
    unknown = set(fields) - set(_UPDATABLE) - {"actions"}
    if unknown:
        raise TypeError(f"update_task() got unknown field(s): {', '.join(sorted(unknown))}")
    body = clean_fields(fields)
    return Task(TaskModel.from_dict(transport.request("PATCH", task_path(task_id), json_body=body)))


def cancel_task(task_id: str) -> None:
    """Cancel a task (HTTP DELETE): its status becomes ``cancelled``."""
    transport.request("DELETE", task_path(task_id))


class TaskList:
    """One page of tasks. Iterate it, ``len()`` it, or follow ``next_page()`` / ``iter_all()``."""

    def __init__(self, payload: dict[str, Any], page_size: int | None = None, parent: str | None = None) -> None:
        self.results: list[Task] = [Task(TaskModel.from_dict(item)) for item in payload.get("results", [])]
        self.next: str | None = payload.get("next")
        self.previous: str | None = payload.get("previous")
        self._page_size = page_size
        self._parent = parent

    def __iter__(self) -> Iterator[Task]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> Task:
        return self.results[index]

    def __repr__(self) -> str:
        return f"<TaskList {len(self)} tasks, next={self.next_cursor!r}>"

    @property
    def next_cursor(self) -> str | None:
        return _cursor(self.next)

    @property
    def previous_cursor(self) -> str | None:
        return _cursor(self.previous)

    def next_page(self) -> TaskList | None:
        cursor = self.next_cursor
        if cursor is None:
            return None
        return list_tasks(page_size=self._page_size, cursor=cursor, parent=self._parent)

    def iter_all(self) -> Iterator[Task]:
        """Every task on this page and the pages after it, fetched as needed."""
        page: TaskList | None = self
        while page is not None:
            yield from page.results
            page = page.next_page()


def _cursor(url: str | None) -> str | None:
    if not url:
        return None
    values = parse_qs(urlsplit(url).query).get("cursor")
    return values[0] if values else None


def list_tasks(page_size: int | None = None, cursor: str | None = None, parent: str | None = None) -> TaskList:
    """One page of tasks, newest first; ``parent`` keeps only that task's children."""
    params = {"page_size": page_size, "cursor": cursor, "parent": parent}
    return TaskList(transport.request("GET", params=params), page_size=page_size, parent=parent)


def iter_tasks(page_size: int | None = None, parent: str | None = None) -> Iterator[Task]:
    """Every task, walking the pages for you."""
    return list_tasks(page_size=page_size, parent=parent).iter_all()


# -- safe variants: never raise ------------------------------------------------------------------

_warned_unconfigured = False


def _unconfigured() -> bool:
    global _warned_unconfigured
    if _config.is_configured():
        return False
    if not _warned_unconfigured:
        _warned_unconfigured = True
        log.warning("Task Badger is not configured, so tasks are not tracked: %s", MissingConfiguration(["token"]))
    return True


def create_task_safe(name: str, **kwargs: Any) -> Task | None:
    """Like ``create_task``, but log a warning and return None instead of raising."""
    if _unconfigured():
        return None
    try:
        return create_task(name, **kwargs)
    except CreateSkipped:
        log.debug("before_create skipped task %s", short(name))
    except Exception as err:
        log.warning("Task Badger: could not create task %s: %s", short(name), err)
    return None


def update_task_safe(task_id: str, **kwargs: Any) -> Task | None:
    """Like ``update_task``, but log a warning and return None instead of raising."""
    if _unconfigured():
        return None
    try:
        return update_task(task_id, **kwargs)
    except Exception as err:
        log.warning("Task Badger: could not update task %s: %s", short(task_id), err)
    return None
