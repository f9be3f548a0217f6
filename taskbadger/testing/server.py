"""A stand-in Task Badger API server for tests: real HTTP on loopback, in memory, with fault injection.

It implements the task endpoints of ``openapi.yaml`` (beside this file) with the real service's
semantics (``store``), records every request, and can be told to be slow, to fail, to drop or hang
requests, or to refuse connections altogether (``faults``). One event-loop thread serves every
connection (``http11``); connections are kept alive; every response leaves in a single socket write
with ``TCP_NODELAY``, so a keep-alive client never waits for a delayed ACK.

This module is the facade: lifecycle, faults, and what a test inspects.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from ..config import is_loopback
from . import faults as _faults
from . import http11
from .app import App, Headers, RecordedRequest
from .faults import Fault, Methods

__all__ = ["Headers", "RecordedRequest", "TaskBadgerServer"]

logger = logging.getLogger("taskbadger.testing")
T = TypeVar("T")


class TaskBadgerServer:
    """A stand-in Task Badger API on loopback. Use as a context manager or ``start()``/``stop()``.

    ``api_key`` is a project key (base64 of ``org/project/key``), the form the SDK accepts as its
    token; the SDK then sends ``Authorization: Bearer <key>``, which is what this server checks.

    ``host`` is a loopback address (``127.0.0.1``, ``::1``, ``localhost``): its dashboard has no
    authentication. Any other address (``0.0.0.0``, a LAN address) raises ValueError unless
    ``allow_remote=True``, which logs a warning: then anyone who reaches the port reads every task.
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
        allow_remote: bool = False,
    ) -> None:
        self.host = check_bind_address(host, allow_remote)
        self.port = port
        self.organization = organization
        self.project = project
        self.key = key
        #: the application behind the HTTP layer: request log, tasks, faults, connections
        self.app = App(organization, project, key, lambda: self.url, latency, max_requests_logged, allow_remote)
        self._url_host = _url_host(host)  # until bound: then the address the socket has
        self._state_lock = threading.Lock()
        self._loop: http11.EventLoop | None = None
        self._listening = False
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> TaskBadgerServer:
        """Bind, listen and serve in a background thread. Returns once the socket is listening."""
        self.app.stopping.clear()
        self._started = True
        self.accept()
        logger.info("Task Badger test server listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop listening, close every connection and release hung requests. Idempotent."""
        self.app.stopping.set()
        self._started = False
        self.app.faults.release_all()
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
            sock = http11.listening_socket(self.host, self.port)
            self.port = sock.getsockname()[1]
            self._url_host = _url_host(sock.getsockname()[0])
            if self._loop is None:
                self._loop = http11.EventLoop(self.app, name=f"taskbadger-testing-{self.port}")
            self._loop.listen(sock)
            self._listening = True

    @property
    def listening(self) -> bool:
        return self._listening

    @property
    def url(self) -> str:
        """``http://<address>:<port>``, the address the socket is bound to (a wildcard one gives
        loopback): a URL that works on this machine whatever ``localhost`` resolves to."""
        if not self.port:
            raise RuntimeError("the server has not been started")
        return f"http://{self._url_host}:{self.port}"

    @property
    def api_key(self) -> str:
        """Project key: standard base64 of ``organization/project/key``."""
        return base64.b64encode(f"{self.organization}/{self.project}/{self.key}".encode()).decode()

    def reset(self) -> None:
        """Forget tasks, the request log, faults and the connection counter."""
        self.clear_faults()
        self.app.reset()

    # -- faults ---------------------------------------------------------------------------------
    def set_latency(self, seconds: float, times: int | None = None, method: Methods = None) -> None:
        """Delay responses by ``seconds``. Without times/method this is the base latency of every
        response; with them it is an extra delay for the matching requests only."""
        if times is None and method is None:
            self.app.faults.set_latency(seconds)
        else:
            self.app.faults.add(_faults.make_fault(_faults.LATENCY, times=times, method=method, seconds=seconds))

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
        self.app.faults.add(
            _faults.make_fault(
                _faults.FAIL, times=times, method=method, status=status, retry_after=retry_after,
                detail=detail,
            )
        )

    def drop(self, times: int | None = None, method: Methods = None) -> None:
        """Read matching requests, then close the connection without answering."""
        self.app.faults.add(_faults.make_fault(_faults.DROP, times=times, method=method))

    def hang(self, times: int | None = None, method: Methods = None) -> None:
        """Read matching requests and never answer (until ``clear_faults()``/``stop()``, which close
        the connection without answering)."""
        self.app.faults.add(_faults.make_fault(_faults.HANG, times=times, method=method))

    def misbehave(self, mode: str, times: int | None = None, method: Methods = None, seconds: float | None = None,
                  size: int | None = None) -> None:
        """Answer matching requests the way a misbehaving API or proxy does, after carrying them out
        (a create creates the task): ``mode`` is one of ``faults.MISBEHAVIOURS``:

        * ``slow_headers``: one header line every ``seconds`` (1 by default), 50 of them, then the answer;
        * ``slow_body``: the body one byte every ``seconds`` (1 by default);
        * ``endless_headers``: header lines without end, as fast as the client reads;
        * ``huge_body``: a JSON body padded to ``size`` bytes (40 MB by default);
        * ``extra_answer``: the answer, then ``seconds`` (0.05 by default) later a copy nobody asked for;
        * ``not_json``: the answer's status with a body that is not JSON;
        * ``reset``: half of the answer, then a connection reset.

        ``hang()``, ``drop()`` and ``refuse()`` cover an API that does not answer at all.
        """
        if mode not in _faults.MISBEHAVIOURS:
            raise ValueError(f"unknown mode {mode!r}: one of {', '.join(_faults.MISBEHAVIOURS)}")
        default_seconds = 0.05 if mode == "extra_answer" else 1.0
        self.app.faults.add(_faults.make_fault(
            mode, times=times, method=method, seconds=default_seconds if seconds is None else seconds,
            size=40 * 1024 * 1024 if size is None else size))

    def clear_faults(self) -> None:
        """Remove all faults, restore the initial latency, release hung requests, and listen again
        if ``refuse()`` was called."""
        self.app.faults.clear()
        if self._started:
            self.accept()

    @property
    def faults(self) -> list[Fault]:
        return self.app.faults.active

    # -- inspection -----------------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        return self.app.requests

    @property
    def tasks(self) -> dict[str, dict[str, Any]]:
        """Copies of all tasks (id → API representation plus ``monitor_id``/``unknown_fields``)."""
        return self.app.store_tasks()

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        return self.app.store_task(task_id)

    def issued(self, task_id: str) -> bool:
        """Whether this server ever created ``task_id`` (also before the last ``reset()``)."""
        with self.app.store.lock:
            return task_id in self.app.store.issued

    def add_monitor(self, monitor_id: str | None = None) -> str:
        """Give the project a monitor (a new id unless ``monitor_id``) and return its id. Until the first one,
        every well-formed monitor id is accepted; from then on, as the service does, a create under a monitor the
        project does not hold (a typo, a deleted monitor, another project's) is refused: 404, no task.
        ``reset()`` forgets the monitors."""
        canonical = str(uuid.UUID(monitor_id)) if monitor_id is not None else str(uuid.uuid4())
        with self.app.store.lock:
            if self.app.store.monitors is None:
                self.app.store.monitors = set()
            self.app.store.monitors.add(canonical)
        return canonical

    def foreign_monitor(self, monitor_id: str | None = None) -> str:
        """Make a monitor of another project (a new id unless ``monitor_id``) and return its id: a create under it is
        refused with 403, as the service may answer it (the contract is silent), and no task is made.
        ``reset()`` forgets it."""
        canonical = str(uuid.UUID(monitor_id)) if monitor_id is not None else str(uuid.uuid4())
        with self.app.store.lock:
            self.app.store.foreign_monitors.add(canonical)
        return canonical

    def tasks_named(self, name: str) -> list[dict[str, Any]]:
        """Tasks called ``name``, oldest first."""
        return [t for t in self.tasks.values() if t["name"] == name]

    @property
    def connections_opened(self) -> int:
        """TCP connections accepted since the last ``reset()``."""
        return self.app.connections_opened

    def wait_for(self, predicate: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.01) -> T:
        """Call ``predicate`` until it returns something truthy and return that; AssertionError
        after ``timeout`` seconds. Wakes up early whenever the server records something."""
        return self.app.wait(predicate, timeout, interval)

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


def check_bind_address(host: str, allow_remote: bool) -> str:
    """``host`` if the server may listen there: loopback, or anything with ``allow_remote`` (then with a
    warning). ValueError otherwise, saying how to opt in."""
    if is_loopback(host):
        return host
    if not allow_remote:
        raise ValueError(
            f"refusing to listen on {host!r}: the stand-in API's dashboard has no authentication, so it "
            "listens on loopback only (127.0.0.1, ::1 or localhost). To let other machines reach it anyway: "
            "TaskBadgerServer(..., allow_remote=True), or python -m taskbadger.testing --allow-remote."
        )
    logger.warning(
        "the stand-in API will listen on %r: anyone who can reach its port can read every task on its "
        "dashboard (no authentication) and use its API with its key", host or "0.0.0.0",
    )
    return host


def _url_host(address: str) -> str:
    """The host part of a URL for a server bound to ``address``: a wildcard address gives loopback of
    its family, an IPv6 address is bracketed."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address or "127.0.0.1"
    if ip.is_unspecified:
        ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
    return f"[{ip}]" if ip.version == 6 else str(ip)
