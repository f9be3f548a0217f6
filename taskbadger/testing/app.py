"""The stand-in API's application: routes, authentication, the request log, faults and connections.

The HTTP layer (``http11``) talks to it through the methods of ``App`` alone: a request arrives
(``record_request``), what to do with it is decided (``decide``: latency, a fault), it is answered
(``handle``), and the test that waits on the server is woken (``notify``).
"""

from __future__ import annotations

import hmac
import inspect
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from .faults import Decision, FaultSet
from .store import MONITOR_HEADER, Response, Store, _error

T = TypeVar("T")
_ROUTE = re.compile(r"^/api/(?P<org>[^/]+)/(?P<project>[^/]+)/tasks/(?:(?P<id>[^/]+)/"
                    r"(?:(?P<actions>actions)/(?:(?P<action>[^/]+)/)?)?)?$")


class Headers(dict):
    """A dict of request headers with case-insensitive lookup (keys are stored lower-cased)."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__((k.lower(), v) for k, v in items)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


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


class App:
    """One project's API: ``organization``/``project`` answer to the key ``key``. ``allow_remote``: the
    server may listen beyond loopback, and its dashboard answers to any IP address (``dashboard``)."""

    def __init__(self, organization: str, project: str, key: str, base_url: Callable[[], str], latency: float,
                 max_requests_logged: int | None, allow_remote: bool = False) -> None:
        self.organization, self.project, self.key = organization, project, key
        self.base_url = base_url
        self.allow_remote = allow_remote
        self.faults = FaultSet(latency)
        self.store = Store(organization, project, base_url)
        self.stopping = threading.Event()
        self._log: deque[RecordedRequest] = deque(maxlen=max_requests_logged)
        self._changed = threading.Condition()
        self._connections: dict[Any, int] = {}  # socket of each open connection -> its id
        self._connection_count = 0  # monotonically increasing connection ids
        self._connections_opened = 0  # since the last reset()

    # -- what the HTTP layer calls ------------------------------------------------------------------

    def connection_opened(self, sock: Any) -> int:
        """A client connected: its connection id."""
        with self._changed:
            self._connection_count += 1
            self._connections_opened += 1
            self._connections[sock] = self._connection_count
            return self._connection_count

    def connection_closed(self, sock: Any) -> None:
        with self._changed:
            self._connections.pop(sock, None)

    def record_request(self, method: str, target: str, headers: Headers, body: bytes,
                       connection_id: int) -> RecordedRequest:
        """Record a request as it arrives (before any latency or fault applies)."""
        split = urlsplit(target)
        record = RecordedRequest(
            method=method, path=split.path, query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers=headers, json=_maybe_json(body), body=body, connection_id=connection_id, timestamp=time.time(),
        )
        self._record(record)
        return record

    def record_malformed(self, head: bytes, status: int, reason: str, connection_id: int) -> None:
        """Record bytes that did not parse as a request: a client that sends them is broken (or being
        abused), and tests must be able to see it."""
        words = head.split(b"\r\n", 1)[0].decode("iso-8859-1").split(" ")
        self._record(RecordedRequest(
            method=words[0], path=words[1] if len(words) > 1 else "", query={}, headers=Headers(), json=None,
            body=head, connection_id=connection_id, timestamp=time.time(), status=status, malformed=reason,
        ))

    def decide(self, method: str) -> Decision:
        """Latency and fault for a request that just arrived (consumes the faults that apply)."""
        return self.faults.decide(method)

    def handle(self, request: RecordedRequest) -> Response:
        """The answer to a request: (status, JSON body or None, extra headers)."""
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
        if match["actions"]:
            return self._actions(request, task_id, match["action"])
        allowed = ("GET", "POST") if task_id is None else ("GET", "PUT", "PATCH", "DELETE")
        if method not in allowed:
            return _error(405, f'Method "{method}" not allowed.', Allow=", ".join(allowed))
        if method in ("GET", "DELETE"):
            request.task_id = task_id
            if task_id is None:
                host = request.headers.get("Host") or self.base_url().partition("//")[2]
                return self.store.list_tasks(request.query, f"http://{host}{request.path}")
            return self.store.get(task_id) if method == "GET" else self.store.cancel(task_id)
        body, problem = _parse_body(request)
        if problem is not None:
            return problem
        if task_id is None:
            response, request.task_id = self.store.create(body, request.headers.get(MONITOR_HEADER))
            return response
        request.task_id = task_id
        return self.store.update(task_id, body, partial=method == "PATCH")

    def _actions(self, request: RecordedRequest, task_id: str, action_id: str | None) -> Response:
        allowed = ("GET", "POST") if action_id is None else ("GET", "PUT", "PATCH", "DELETE")
        if request.method not in allowed:
            return _error(405, f'Method "{request.method}" not allowed.', Allow=", ".join(allowed))
        request.task_id = task_id
        body: Any = None
        if request.method in ("POST", "PUT", "PATCH"):
            body, problem = _parse_body(request)
            if problem is not None:
                return problem
        return self.store.task_actions(task_id, action_id, request.method, body)

    def answered(self, request: RecordedRequest, status: int) -> None:
        request.status = status
        self.notify()

    def notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # -- what the facade (and the dashboard) shows --------------------------------------------------

    def store_tasks(self) -> dict[str, dict[str, Any]]:
        """Copies of all tasks, oldest first (id -> API representation plus ``monitor_id``/``unknown_fields``)."""
        with self.store.lock:
            return {task_id: self.store.internal(t) for task_id, t in self.store.tasks.items()}

    def store_task(self, task_id: str) -> dict[str, Any] | None:
        """A copy of one task (as in ``store_tasks``), or None."""
        with self.store.lock:
            task = self.store.tasks.get(task_id)
            return None if task is None else self.store.internal(task)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._changed:
            return list(self._log)

    @property
    def open_sockets(self) -> list[Any]:
        """The sockets of the connections open now."""
        with self._changed:
            return list(self._connections)

    @property
    def connections_opened(self) -> int:
        with self._changed:
            return self._connections_opened

    def reset(self) -> None:
        self.faults.clear()
        self.store.clear()
        with self._changed:
            self._log.clear()
            self._connections_opened = 0

    def wait(self, predicate: Callable[[], T | None], timeout: float, interval: float) -> T:
        """Call ``predicate`` until it returns something truthy and return that; AssertionError
        after ``timeout`` seconds. Wakes up early whenever a request is recorded or answered."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                recent = "\n  ".join(f"{r.method} {r.path} -> {r.status}" for r in self.requests[-10:]) or "(none)"
                raise AssertionError(
                    f"timed out after {timeout}s waiting for: {_describe(predicate)}\n"
                    f"last value: {value!r}\nlast requests:\n  {recent}"
                )
            with self._changed:
                self._changed.wait(min(interval, remaining))

    def _record(self, record: RecordedRequest) -> None:
        with self._changed:
            self._log.append(record)
            self._changed.notify_all()


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


def _maybe_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _describe(predicate: Callable[[], Any]) -> str:
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)
