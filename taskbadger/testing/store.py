"""The stand-in API's tasks: in memory, with the real service's semantics.

Server-assigned ids, DRF-style validation errors, the ``start_time``/``end_time`` rules, cursor
pagination, one level of ``parent`` nesting, and the monitor a task was created under.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import copy
import logging
import random
import string
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, urlencode

from .actions import Actions
from .actions import clean_list as clean_actions
from .validation import TERMINAL, clean

logger = logging.getLogger("taskbadger.testing")

MONITOR_HEADER = "X-TASKBADGER-MONITOR"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_ID_ALPHABET = string.ascii_letters + string.digits


def _now() -> datetime:
    return datetime.now(timezone.utc)


def format_datetime(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with microseconds and ``Z``, like the real service."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _duration_string(duration: timedelta) -> str:
    """Django's ``duration_string`` (what DRF's DurationField returns), e.g. ``00:00:01.500000``."""
    days, seconds, microseconds = duration.days, duration.seconds, duration.microseconds
    text = f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    if days:
        text = f"{days} {text}"
    if microseconds:
        text += f".{microseconds:06d}"
    return text


def _new_id() -> str:
    # Unique, not secret: `random` is seeded from the system once (and again in a forked child), where
    # secrets.choice made one system call per character, 26 for every create the stand-in answered.
    return "".join(random.choices(_ID_ALPHABET, k=26))


@dataclass
class StoredTask:
    id: str
    seq: int
    name: str
    created: datetime
    updated: datetime
    queue: str = ""
    external_id: str = ""
    status: str = "pending"
    value: int | None = None
    value_max: int = 100
    data: Any = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    max_runtime: int | None = None
    stale_timeout: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    parent: str | None = None
    # Server-side only, never in API responses.
    monitor_id: str | None = None
    unknown_fields: dict[str, Any] = field(default_factory=dict)


Response = tuple[int, Any, dict[str, str]]


@dataclass
class Listing:
    """What the dashboard lists: rows in display order (each top-level task followed by its children,
    oldest first), whether more matching tasks exist beyond them, and how many tasks the store holds."""

    rows: list[dict[str, Any]]
    more: bool
    total: int


def _error(status: int, detail: str, **headers: str) -> Response:
    return status, {"detail": detail}, headers


class Store:
    """Tasks of one project, guarded by one lock."""

    def __init__(self, organization: str, project: str, base_url: Callable[[], str]) -> None:
        self.organization = organization
        self.project = project
        self._base_url = base_url
        self.lock = threading.RLock()
        self.tasks: dict[str, StoredTask] = {}  # insertion order == creation order
        self.children: dict[str, list[StoredTask]] = {}  # parent id -> its children, oldest first
        self.issued: set[str] = set()  # every id this server ever created, kept across clear()
        self.actions = Actions()
        self._seq = 0
        #: the project's monitors; None: every well-formed monitor id is one (see ``TaskBadgerServer.add_monitor``)
        self.monitors: set[str] | None = None
        #: monitors of another project, which the service may answer 403 for (``TaskBadgerServer.foreign_monitor``)
        self.foreign_monitors: set[str] = set()

    def clear(self) -> None:
        with self.lock:
            self.tasks.clear()
            self.children.clear()
            self.monitors = None
            self.foreign_monitors.clear()
            self.actions.clear()

    def represent(self, task: StoredTask, *, with_data: bool = True) -> dict[str, Any]:
        """The task as the API answers it (``data`` None unless ``with_data``: copying it costs)."""
        if task.value is None or task.value_max == 0:
            percent = None
        else:
            percent = 100 * task.value // task.value_max
        base = self._base_url()
        return {
            "id": task.id,
            "organization": self.organization,
            "project": self.project,
            "name": task.name,
            "queue": task.queue,
            "external_id": task.external_id,
            "status": task.status,
            "value": task.value,
            "value_max": task.value_max,
            "value_percent": percent,
            "data": copy.deepcopy(task.data) if with_data else None,
            "created": format_datetime(task.created),
            "updated": format_datetime(task.updated),
            "start_time": format_datetime(task.start_time),
            "end_time": format_datetime(task.end_time),
            "time_to_start": (
                _duration_string(task.start_time - task.created) if task.start_time else None
            ),
            "max_runtime": task.max_runtime,
            "stale_timeout": task.stale_timeout,
            "url": f"{base}/a/{self.organization}/tasks/{task.id}/",
            "public_url": f"{base}/public/tasks/{task.id}/",
            "tags": dict(task.tags),
            "parent": task.parent,
        }

    def internal(self, task: StoredTask) -> dict[str, Any]:
        """The response representation plus the server-side attributes."""
        data = self.represent(task)
        data["monitor_id"] = task.monitor_id
        data["unknown_fields"] = copy.deepcopy(task.unknown_fields)
        return data

    def newest(self, limit: int, status: str | None = None, name: str | None = None) -> Listing:
        """The dashboard's list: the newest top-level tasks that match (``status`` equal, ``name`` a
        case-insensitive part of the task's name) or have a child that matches, each followed by its
        matching children, oldest first; at most ``limit`` rows, without ``data``.

        It walks the tasks newest first and stops once ``limit`` rows are found (and one more match,
        for ``more``): unfiltered it touches about ``limit`` tasks, and it copies only the rows it
        returns. A filter that matches few tasks looks at every task once, without copying any.
        """
        needle = name.lower() if name else None

        def matches(task: StoredTask) -> bool:
            return (status is None or task.status == status) and (needle is None or needle in task.name.lower())

        rows: list[dict[str, Any]] = []
        children = self.children
        with self.lock:
            for task in reversed(self.tasks.values()):  # the loop every poll runs: kept lean
                if task.parent is not None:
                    continue  # listed under its parent
                kids = children.get(task.id)
                matched = [kid for kid in kids if matches(kid)] if kids else ()
                if not matched and not (
                    (status is None or task.status == status) and (needle is None or needle in task.name.lower())
                ):
                    continue
                for shown in (task, *matched):
                    if len(rows) >= limit:
                        return Listing(rows, True, len(self.tasks))
                    rows.append(self._row(shown))
            return Listing(rows, False, len(self.tasks))

    def _row(self, task: StoredTask) -> dict[str, Any]:
        """A task as the dashboard lists it: the API representation without ``data`` (the list does
        not show it; the task's page does), plus ``monitor_id``."""
        row = self.represent(task, with_data=False)
        del row["data"]
        row["monitor_id"] = task.monitor_id
        return row

    # -- operations (each returns a Response) ---------------------------------------------------
    def create(self, body: dict[str, Any], monitor: str | None) -> tuple[Response, str | None]:
        body, actions = self._take_actions(body)
        cleaned, errors, unknown = clean(body, require_name=True)
        if actions[1]:
            errors["actions"] = actions[1]
        if monitor is not None:
            try:
                monitor = str(uuid.UUID(monitor))
            except ValueError:
                errors[MONITOR_HEADER] = [f'"{monitor}" is not a valid UUID.']
        with self.lock:
            self._check_parent(None, cleaned, errors)
            if errors:
                return (400, errors, {}), None
            if monitor in self.foreign_monitors:
                return _error(403, "You do not have permission to perform this action."), None
            if monitor is not None and self.monitors is not None and monitor not in self.monitors:
                # The contract is silent; the service looks the monitor up among the project's: one it does not
                # hold (a typo, deleted, another project's) is not found, and no task is created.
                return _error(404, "Not found."), None
            now = _now()
            self._seq += 1
            task = StoredTask(id=_new_id(), seq=self._seq, name=cleaned["name"], created=now, updated=now)
            task.monitor_id = monitor
            self._apply(task, cleaned, unknown, now, old_status="pending")
            self.tasks[task.id] = task
            if task.parent is not None:
                self.children.setdefault(task.parent, []).append(task)
            self.issued.add(task.id)
            for action in actions[0]:
                self.actions.add(task.id, action)
            logger.debug("created task %s %r (%s)", task.id, task.name, task.status)
            return (201, self.represent(task), {}), task.id

    def get(self, task_id: str) -> Response:
        with self.lock:
            task = self.tasks.get(task_id)
            if task is None:
                return _error(404, "Not found.")
            return 200, self.represent(task), {}

    def update(self, task_id: str, body: dict[str, Any], *, partial: bool) -> Response:
        body, actions = self._take_actions(body)
        cleaned, errors, unknown = clean(body, require_name=not partial)
        if actions[1]:
            errors["actions"] = actions[1]
        with self.lock:
            task = self.tasks.get(task_id)
            if task is None:
                return _error(404, "Not found.")
            self._check_parent(task, cleaned, errors)
            if errors:
                return 400, errors, {}
            parent = task.parent
            self._apply(task, cleaned, unknown, _now(), old_status=task.status)
            if task.parent is not None and parent is None:  # set once, never changed (_check_parent)
                bisect.insort(self.children.setdefault(task.parent, []), task, key=lambda t: t.seq)
            for action in actions[0]:
                self.actions.add(task.id, action)
            return 200, self.represent(task), {}

    @staticmethod
    def _take_actions(body: dict[str, Any]) -> tuple[dict[str, Any], tuple[list[dict[str, Any]], Any]]:
        """The body without ``actions``, and its actions (cleaned, errors): tasks take them on create
        and update, as the service does for the official SDK."""
        if "actions" not in body:
            return body, ([], None)
        rest = {k: v for k, v in body.items() if k != "actions"}
        return rest, clean_actions(body["actions"])

    def task_actions(self, task_id: str, action_id: str | None, method: str, body: Any) -> Response:
        """The action endpoints of one task."""
        with self.lock:
            if task_id not in self.tasks:
                return _error(404, "Not found.")
            if action_id is None:
                return self.actions.list(task_id) if method == "GET" else self.actions.create(task_id, body)
            if method == "GET":
                return self.actions.get(task_id, action_id)
            if method == "DELETE":
                return self.actions.cancel(task_id, action_id)
            return self.actions.update(task_id, action_id, body, partial=method == "PATCH")

    def cancel(self, task_id: str) -> Response:
        with self.lock:
            task = self.tasks.get(task_id)
            if task is None:
                return _error(404, "Not found.")
            self._apply(task, {"status": "cancelled"}, {}, _now(), old_status=task.status)
            return 204, None, {}

    def list_tasks(self, query: dict[str, str], url: str) -> Response:
        page_size = DEFAULT_PAGE_SIZE
        if query.get("page_size", "").isdigit() and int(query["page_size"]) > 0:
            page_size = min(int(query["page_size"]), MAX_PAGE_SIZE)
        cursor = None
        if query.get("cursor"):
            try:
                decoded = dict(parse_qsl(base64.b64decode(query["cursor"], validate=True).decode("ascii")))
                cursor = (decoded.get("r") == "1", int(decoded["p"]))
            except (binascii.Error, UnicodeDecodeError, ValueError, KeyError):
                return _error(404, "Invalid cursor")
        with self.lock:
            items = [t for t in reversed(self.tasks.values())]  # newest first
            if "parent" in query:
                items = [t for t in items if t.parent == query["parent"]]
            if cursor is None:
                page = items[:page_size]
            elif cursor[0]:  # backwards: the page_size tasks just newer than the position
                page = [t for t in items if t.seq > cursor[1]][-page_size:]
            else:
                page = [t for t in items if t.seq < cursor[1]][:page_size]
            results = [self.represent(t) for t in page]
            has_next = bool(page) and any(t.seq < page[-1].seq for t in items)
            has_previous = bool(page) and any(t.seq > page[0].seq for t in items)

        def link(position: str) -> str:
            params = [(k, v) for k, v in query.items() if k != "cursor"]
            params.append(("cursor", base64.b64encode(position.encode()).decode()))
            return f"{url}?{urlencode(params)}"

        return 200, {
            "next": link(f"p={page[-1].seq}") if has_next else None,
            "previous": link(f"r=1&p={page[0].seq}") if has_previous else None,
            "results": results,
        }, {}

    # -- internals ------------------------------------------------------------------------------
    def _check_parent(self, task: StoredTask | None, cleaned: dict[str, Any], errors: dict[str, list]) -> None:
        if "parent" not in cleaned or "parent" in errors:
            return
        parent_id = cleaned["parent"]
        message = None
        if task is not None and task.parent is not None and parent_id != task.parent:
            message = "The parent of a task cannot be changed once set."
        elif parent_id is None or (task is not None and parent_id == task.parent):
            return
        elif task is not None and parent_id == task.id:
            message = "A task cannot be its own parent."
        elif parent_id not in self.tasks:
            message = f'Invalid pk "{parent_id}" - object does not exist.'
        elif self.tasks[parent_id].parent is not None:
            message = "Tasks nest one level deep: the parent task has a parent itself."
        elif task is not None and self.children.get(task.id):
            message = "Tasks nest one level deep: this task has child tasks."
        if message:
            errors["parent"] = [message]

    @staticmethod
    def _apply(task: StoredTask, cleaned: dict, unknown: dict, now: datetime, *, old_status: str) -> None:
        for key, value in cleaned.items():
            if key == "tags":
                task.tags.update(value)
            else:
                setattr(task, key, value)
        task.unknown_fields.update(unknown)
        left_pending = old_status == "pending" and task.status != "pending"
        if "start_time" not in cleaned and task.start_time is None and left_pending:
            task.start_time = now
        if "end_time" not in cleaned and task.end_time is None and task.status in TERMINAL:
            task.end_time = now
        task.updated = now


