"""A stand-in Task Badger API server for tests: real HTTP on loopback, in memory, with fault injection.

It implements the task endpoints of ``openapi.yaml`` (beside this file) with the real service's
semantics (server-assigned ids, DRF-style validation errors, ``start_time``/``end_time`` rules,
cursor pagination, ``parent``), records every request, and can be told to be slow, to fail, to drop
or hang requests, or to refuse connections altogether.

Standard library only. One event-loop thread serves every connection (``_http``); connections are
kept alive; every response leaves in a single socket write with ``TCP_NODELAY`` set, so a keep-alive
client never waits for a delayed ACK.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hmac
import inspect
import json
import logging
import re
import secrets
import string
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

from . import _http
from . import faults as _faults
from ._http import Headers
from .faults import Fault, FaultSet, Methods

__all__ = ["TaskBadgerServer", "RecordedRequest", "Headers"]

logger = logging.getLogger("taskbadger.testing")

T = TypeVar("T")
MONITOR_HEADER = "X-TASKBADGER-MONITOR"
STATUSES = (
    "pending", "pre_processing", "processing", "post_processing", "success", "error", "cancelled", "stale",
)
TERMINAL = frozenset({"success", "error", "cancelled"})
#: Fields of a task in API responses, in the order the real service sends them (plus ``parent``).
TASK_FIELDS = (
    "id", "organization", "project", "name", "queue", "external_id", "status", "value", "value_max",
    "value_percent", "data", "created", "updated", "start_time", "end_time", "time_to_start",
    "max_runtime", "stale_timeout", "url", "public_url", "tags", "parent",
)
WRITABLE = frozenset({
    "name", "queue", "external_id", "status", "value", "value_max", "data", "start_time", "end_time",
    "max_runtime", "stale_timeout", "tags", "parent",
})
READ_ONLY = frozenset(TASK_FIELDS) - WRITABLE
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_ROUTE = re.compile(r"^/api/(?P<org>[^/]+)/(?P<project>[^/]+)/tasks/(?:(?P<id>[^/]+)/)?$")
_ID_ALPHABET = string.ascii_letters + string.digits


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
@dataclass
class RecordedRequest:
    """One request as the server saw it. ``status`` is None while pending, or if dropped/hung."""

    method: str
    path: str
    query: dict[str, str]
    headers: Headers
    json: Any
    body: bytes = field(repr=False)
    connection_id: int
    timestamp: float
    status: int | None = None
    task_id: str | None = None  # the task the request created or addressed, when there is one
    #: why the server could not parse the request (it answered 4xx/5xx and closed), else None
    malformed: str | None = None


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
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(26))


def _describe(predicate: Callable[[], Any]) -> str:
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)


# ---------------------------------------------------------------------------------------------
# Validation (DRF-style messages)
# ---------------------------------------------------------------------------------------------
class _Invalid(Exception):
    def __init__(self, *messages: str) -> None:
        super().__init__(*messages)
        self.messages = list(messages)


def _string(value: Any, *, blank: bool = True, max_length: int = 255) -> str:
    if value is None:
        raise _Invalid("This field may not be null.")
    if not isinstance(value, str):
        raise _Invalid("Not a valid string.")
    if not blank and not value.strip():
        raise _Invalid("This field may not be blank.")
    if len(value) > max_length:
        raise _Invalid(f"Ensure this field has no more than {max_length} characters.")
    return value


def _integer(value: Any, *, minimum: int, maximum: int, nullable: bool) -> int | None:
    if value is None:
        if nullable:
            return None
        raise _Invalid("This field may not be null.")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid("A valid integer is required.")
    if value < minimum:
        raise _Invalid(f"Ensure this value is greater than or equal to {minimum}.")
    if value > maximum:
        raise _Invalid(f"Ensure this value is less than or equal to {maximum}.")
    return value


def _status(value: Any) -> str:
    if value is None:
        raise _Invalid("This field may not be null.")
    if not isinstance(value, str) or value not in STATUSES:
        raise _Invalid(f'"{value}" is not a valid choice.')
    return value


def _datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    message = (
        "Datetime has wrong format. Use one of these formats instead: "
        "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
    )
    if not isinstance(value, str) or len(value) < 16:
        raise _Invalid(message)
    text = value[:-1] + "+00:00" if value[-1] in "Zz" else value
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise _Invalid(message)
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed


def _tags(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        kind = "null" if value is None else type(value).__name__
        raise _Invalid(f'Expected a dictionary of items but got type "{kind}".')
    errors = []
    for key, tag in value.items():
        if not isinstance(tag, str):
            errors.append(f'Tag "{key}": Not a valid string.')
        elif not 2 <= len(tag) <= 255:
            bound = "at least 2" if len(tag) < 2 else "no more than 255"
            errors.append(f'Tag "{key}": Ensure this field has {bound} characters.')
    if errors:
        raise _Invalid(*errors)
    return dict(value)


def _parent(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _Invalid(f"Incorrect type. Expected pk value, received {type(value).__name__}.")
    return value


_BIG = 9223372036854775807
_INT = 2147483647
_VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "name": lambda v: _string(v, blank=False),
    "queue": _string,
    "external_id": _string,
    "status": _status,
    "value": lambda v: _integer(v, minimum=0, maximum=_BIG, nullable=True),
    "value_max": lambda v: _integer(v, minimum=0, maximum=_BIG, nullable=False),
    "data": lambda v: v,
    "start_time": _datetime,
    "end_time": _datetime,
    "max_runtime": lambda v: _integer(v, minimum=1, maximum=_INT, nullable=True),
    "stale_timeout": lambda v: _integer(v, minimum=1, maximum=_INT, nullable=True),
    "tags": _tags,
    "parent": _parent,
}


def _clean(body: dict[str, Any], *, require_name: bool) -> tuple[dict[str, Any], dict[str, list], dict]:
    """Validate a request body: returns (cleaned writable fields, errors, unknown fields)."""
    cleaned: dict[str, Any] = {}
    errors: dict[str, list] = {}
    unknown = {k: v for k, v in body.items() if k not in WRITABLE and k not in READ_ONLY}
    if require_name and "name" not in body:
        errors["name"] = ["This field is required."]
    for key, validate in _VALIDATORS.items():
        if key in body:
            try:
                cleaned[key] = validate(body[key])
            except _Invalid as err:
                errors[key] = err.messages
    return cleaned, errors, unknown


# ---------------------------------------------------------------------------------------------
# The in-memory store
# ---------------------------------------------------------------------------------------------
@dataclass
class _Task:
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


def _error(status: int, detail: str, **headers: str) -> Response:
    return status, {"detail": detail}, headers


class _Store:
    """Tasks of one project, guarded by one lock."""

    def __init__(self, organization: str, project: str, base_url: Callable[[], str]) -> None:
        self.organization = organization
        self.project = project
        self._base_url = base_url
        self.lock = threading.RLock()
        self.tasks: dict[str, _Task] = {}  # insertion order == creation order
        self.issued: set[str] = set()  # every id this server ever created, kept across clear()
        self._seq = 0

    def clear(self) -> None:
        with self.lock:
            self.tasks.clear()

    def represent(self, task: _Task) -> dict[str, Any]:
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
            "data": copy.deepcopy(task.data),
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

    def internal(self, task: _Task) -> dict[str, Any]:
        """The response representation plus the server-side attributes."""
        data = self.represent(task)
        data["monitor_id"] = task.monitor_id
        data["unknown_fields"] = copy.deepcopy(task.unknown_fields)
        return data

    # -- operations (each returns a Response) ---------------------------------------------------
    def create(self, body: dict[str, Any], monitor: str | None) -> tuple[Response, str | None]:
        cleaned, errors, unknown = _clean(body, require_name=True)
        if monitor is not None:
            try:
                monitor = str(uuid.UUID(monitor))
            except ValueError:
                errors[MONITOR_HEADER] = [f'"{monitor}" is not a valid UUID.']
        with self.lock:
            self._check_parent(None, cleaned, errors)
            if errors:
                return (400, errors, {}), None
            now = _now()
            self._seq += 1
            task = _Task(id=_new_id(), seq=self._seq, name=cleaned["name"], created=now, updated=now)
            task.monitor_id = monitor
            self._apply(task, cleaned, unknown, now, old_status="pending")
            self.tasks[task.id] = task
            self.issued.add(task.id)
            logger.debug("created task %s %r (%s)", task.id, task.name, task.status)
            return (201, self.represent(task), {}), task.id

    def get(self, task_id: str) -> Response:
        with self.lock:
            task = self.tasks.get(task_id)
            if task is None:
                return _error(404, "Not found.")
            return 200, self.represent(task), {}

    def update(self, task_id: str, body: dict[str, Any], *, partial: bool) -> Response:
        cleaned, errors, unknown = _clean(body, require_name=not partial)
        with self.lock:
            task = self.tasks.get(task_id)
            if task is None:
                return _error(404, "Not found.")
            self._check_parent(task, cleaned, errors)
            if errors:
                return 400, errors, {}
            self._apply(task, cleaned, unknown, _now(), old_status=task.status)
            return 200, self.represent(task), {}

    def cancel(self, task_id: str) -> Response:
        with self.lock:
            task = self.tasks.get(task_id)
            if task is None:
                return _error(404, "Not found.")
            self._apply(task, {"status": "cancelled"}, {}, _now(), old_status=task.status)
            return 204, None, {}

    def list(self, query: dict[str, str], url: str) -> Response:
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
    def _check_parent(self, task: _Task | None, cleaned: dict[str, Any], errors: dict[str, list]) -> None:
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
        elif task is not None and any(t.parent == task.id for t in self.tasks.values()):
            message = "Tasks nest one level deep: this task has child tasks."
        if message:
            errors["parent"] = [message]

    @staticmethod
    def _apply(task: _Task, cleaned: dict, unknown: dict, now: datetime, *, old_status: str) -> None:
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


def _maybe_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# Public facade
# ---------------------------------------------------------------------------------------------
class TaskBadgerServer:
    """A stand-in Task Badger API on loopback. Use as a context manager or ``start()``/``stop()``.

    ``api_key`` is a project key (base64 of ``org/project/key``), the form the SDK accepts as its
    token; the SDK then sends ``Authorization: Bearer <key>``, which is what this server checks.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        organization: str = "acme",
        project: str = "demo",
        key: str = "test-key",
        latency: float = 0.0,
        max_requests_logged: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.organization = organization
        self.project = project
        self.key = key
        self._faults = FaultSet(latency)
        self._store = _Store(organization, project, lambda: self.url)
        self._log: deque[RecordedRequest] = deque(maxlen=max_requests_logged)
        self._changed = threading.Condition()
        self._state_lock = threading.Lock()
        self._loop: _http.EventLoop | None = None
        self._listening = False
        self._connections: dict[Any, int] = {}  # socket of each open connection -> its id
        self._connection_count = 0  # monotonically increasing connection ids
        self._connections_opened = 0  # since the last reset()
        self._stopping = threading.Event()
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> TaskBadgerServer:
        """Bind, listen and serve in a background thread. Returns once the socket is listening."""
        self._stopping.clear()
        self._started = True
        self.accept()
        logger.info("Task Badger test server listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop listening, close every connection and release hung requests. Idempotent."""
        self._stopping.set()
        self._started = False
        self._faults.release_all()
        with self._state_lock:
            loop, self._loop = self._loop, None
            self._listening = False
        if loop is not None:
            loop.stop()

    def __enter__(self) -> TaskBadgerServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def refuse(self) -> None:
        """Simulate an outage: close the listening socket and every open connection."""
        with self._state_lock:
            self._listening = False
            if self._loop is not None:
                self._loop.refuse()

    def accept(self) -> None:
        """Listen again (on the same port) after ``refuse()``. No-op if already listening."""
        with self._state_lock:
            if self._listening:
                return
            sock = _http.listening_socket(self.host, self.port)
            self.port = sock.getsockname()[1]
            if self._loop is None:
                self._loop = _http.EventLoop(self, name=f"taskbadger-testing-{self.port}")
            self._loop.listen(sock)
            self._listening = True

    @property
    def listening(self) -> bool:
        return self._listening

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the server has not been started")
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    @property
    def api_key(self) -> str:
        """Project key: standard base64 of ``organization/project/key``."""
        return base64.b64encode(f"{self.organization}/{self.project}/{self.key}".encode()).decode()

    def reset(self) -> None:
        """Forget tasks, the request log, faults and the connection counter."""
        self.clear_faults()
        self._store.clear()
        with self._changed:
            self._log.clear()
            self._connections_opened = 0

    # -- faults ---------------------------------------------------------------------------------
    def set_latency(self, seconds: float, times: int | None = None, method: Methods = None) -> None:
        """Delay responses by ``seconds``. Without times/method this is the base latency of every
        response; with them it is an extra delay for the matching requests only."""
        if times is None and method is None:
            self._faults.set_latency(seconds)
        else:
            self._faults.add(_faults.make_fault(_faults.LATENCY, times=times, method=method, seconds=seconds))

    def fail(
        self,
        status: int,
        times: int | None = None,
        method: Methods = None,
        retry_after: int | str | None = None,
        detail: str | None = None,
    ) -> None:
        """Answer matching requests with ``status`` and ``{"detail": ...}`` (and ``Retry-After``)."""
        if not 400 <= status <= 599:
            raise ValueError("fail() takes a 4xx or 5xx status code")
        self._faults.add(
            _faults.make_fault(
                _faults.FAIL, times=times, method=method, status=status, retry_after=retry_after,
                detail=detail,
            )
        )

    def drop(self, times: int | None = None, method: Methods = None) -> None:
        """Read matching requests, then close the connection without answering."""
        self._faults.add(_faults.make_fault(_faults.DROP, times=times, method=method))

    def hang(self, times: int | None = None, method: Methods = None) -> None:
        """Read matching requests and never answer (until ``clear_faults()``/``stop()``, which close
        the connection without answering)."""
        self._faults.add(_faults.make_fault(_faults.HANG, times=times, method=method))

    def clear_faults(self) -> None:
        """Remove all faults, restore the initial latency, release hung requests, and listen again
        if ``refuse()`` was called."""
        self._faults.clear()
        if self._started:
            self.accept()

    @property
    def faults(self) -> list[Fault]:
        return self._faults.active

    # -- inspection -----------------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._changed:
            return list(self._log)

    @property
    def tasks(self) -> dict[str, dict[str, Any]]:
        """Copies of all tasks (id → API representation plus ``monitor_id``/``unknown_fields``)."""
        with self._store.lock:
            return {task_id: self._store.internal(t) for task_id, t in self._store.tasks.items()}

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        with self._store.lock:
            task = self._store.tasks.get(task_id)
            return None if task is None else self._store.internal(task)

    def issued(self, task_id: str) -> bool:
        """Whether this server ever created ``task_id`` (also before the last ``reset()``)."""
        with self._store.lock:
            return task_id in self._store.issued

    def tasks_named(self, name: str) -> list[dict[str, Any]]:
        """Tasks called ``name``, oldest first."""
        return [t for t in self.tasks.values() if t["name"] == name]

    @property
    def connections_opened(self) -> int:
        """TCP connections accepted since the last ``reset()``."""
        with self._changed:
            return self._connections_opened

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01) -> T:
        """Call ``predicate`` until it returns something truthy and return that; AssertionError
        after ``timeout`` seconds. Wakes up early whenever the server records something."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                recent = "\n  ".join(
                    f"{r.method} {r.path} -> {r.status}" for r in self.requests[-10:]
                ) or "(none)"
                raise AssertionError(
                    f"timed out after {timeout}s waiting for: {_describe(predicate)}\n"
                    f"last value: {value!r}\nlast requests:\n  {recent}"
                )
            with self._changed:
                self._changed.wait(min(interval, remaining))

    def wait_for_task(
        self, name: str | None = None, status: str | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Wait until a task with this name and/or status exists; return the newest such task."""

        def find() -> dict[str, Any] | None:
            for task in reversed(list(self.tasks.values())):
                if (name is None or task["name"] == name) and (status is None or task["status"] == status):
                    return task
            return None

        try:
            return self.wait_for(find, timeout=timeout)
        except AssertionError:
            summary = [(t["name"], t["status"]) for t in self.tasks.values()]
            raise AssertionError(
                f"no task with name={name!r} status={status!r} after {timeout}s; tasks: {summary}"
            ) from None

    # -- internals used by the handler ----------------------------------------------------------
    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _new_request(self, method: str, target: str, headers: Headers, body: bytes,
                     connection_id: int) -> RecordedRequest:
        """Record a request as it arrives (before any latency or fault applies)."""
        split = urlsplit(target)
        record = RecordedRequest(
            method=method,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers=headers,
            json=_maybe_json(body),
            body=body,
            connection_id=connection_id,
            timestamp=time.time(),
        )
        self._record(record)
        return record

    def _malformed_request(self, head: bytes, status: int, reason: str, connection_id: int) -> None:
        """Record bytes that did not parse as a request: a client that sends them is broken (or being
        abused), and tests must be able to see it."""
        words = head.split(b"\r\n", 1)[0].decode("iso-8859-1").split(" ")
        self._record(RecordedRequest(
            method=words[0], path=words[1] if len(words) > 1 else "", query={}, headers=Headers(), json=None,
            body=head, connection_id=connection_id, timestamp=time.time(), status=status, malformed=reason,
        ))

    def _record(self, record: RecordedRequest) -> None:
        with self._changed:
            self._log.append(record)
            self._changed.notify_all()

    def _connection_opened(self, sock: Any) -> int:
        with self._changed:
            self._connection_count += 1
            self._connections_opened += 1
            self._connections[sock] = self._connection_count
            return self._connection_count

    def _connection_closed(self, sock: Any) -> None:
        with self._changed:
            self._connections.pop(sock, None)

    def _dispatch(self, request: RecordedRequest) -> Response:
        match = _ROUTE.match(request.path)
        if match is None:
            return _error(404, "Not found.")
        auth = request.headers.get("Authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(401, "Authentication credentials were not provided.", **{"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(token.strip().encode(), self.key.encode()):
            return _error(401, "Invalid token.", **{"WWW-Authenticate": "Bearer"})
        if (match["org"], match["project"]) != (self.organization, self.project):
            return _error(404, "Not found.")
        task_id, method = match["id"], request.method
        allowed = ("GET", "POST") if task_id is None else ("GET", "PUT", "PATCH", "DELETE")
        if method not in allowed:
            return _error(405, f'Method "{method}" not allowed.', Allow=", ".join(allowed))
        if method in ("GET", "DELETE"):
            request.task_id = task_id
            if task_id is None:
                host = request.headers.get("Host") or self.url.partition("//")[2]
                return self._store.list(request.query, f"http://{host}{request.path}")
            return self._store.get(task_id) if method == "GET" else self._store.cancel(task_id)
        body, problem = self._parse_body(request)
        if problem is not None:
            return problem
        if task_id is None:
            response, request.task_id = self._store.create(body, request.headers.get(MONITOR_HEADER))
            return response
        request.task_id = task_id
        return self._store.update(task_id, body, partial=method == "PATCH")

    @staticmethod
    def _parse_body(request: RecordedRequest) -> tuple[dict[str, Any], Response | None]:
        if not request.body:
            return {}, None
        content_type = request.headers.get("Content-Type", "application/json").split(";")[0].strip()
        if content_type != "application/json":
            return {}, _error(415, f'Unsupported media type "{content_type}" in request.')
        try:
            body = json.loads(request.body)
        except ValueError as err:
            return {}, _error(400, f"JSON parse error - {err}")
        if not isinstance(body, dict):
            kind = {list: "list", str: "str", int: "int", float: "float", bool: "bool"}.get(type(body), "null")
            return {}, (400, {"non_field_errors": [f"Invalid data. Expected a dictionary, but got {kind}."]}, {})
        return body, None
