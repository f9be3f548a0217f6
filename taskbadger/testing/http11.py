"""The stand-in server's HTTP/1.1 layer: one event-loop thread serves every connection.

A thread per connection would wake once per request and parse headers with the ``email`` package;
the stand-in then takes CPU that the worker under test does not get. Here one loop wakes once for
many requests, and delayed answers leave from timers.

It knows the application only through ``App``'s public methods: a request is recorded, a decision
taken (latency, failure, dropped or hung request), the request answered; every response leaves in
one write with ``TCP_NODELAY``, and connections are kept alive.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import json
import logging
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import httptools

from . import dashboard
from . import faults as _faults
from .app import Headers

if TYPE_CHECKING:
    from .app import App

logger = logging.getLogger("taskbadger.testing")

T = TypeVar("T")
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
MAX_LINE = 65536  # request line or header line, as http.server allows
MAX_HEADERS = 100
HANG_POLL = 0.05  # how often a hung request checks whether it was released
_PADDING = b"x" * (1 << 20)
#: Header lines a ``slow_headers`` answer trickles before its own (well within a client's limit of 100).
SLOW_HEADER_LINES = 50
SERVER_HEADER = f"TaskBadgerTestServer/1.0 Python/{sys.version.split()[0]}"


class BadRequest(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class Request:
    """One parsed request; ``keep_alive`` already applies the HTTP version's default."""

    __slots__ = ("method", "target", "headers", "body", "keep_alive")

    def __init__(self, method: str, target: str, headers: Headers, body: bytes, keep_alive: bool) -> None:
        self.method, self.target = method, target
        self.headers, self.body, self.keep_alive = headers, body, keep_alive


class EventLoop:
    """The loop thread of one server, from ``start()`` to ``stop()``; listening comes and goes."""

    def __init__(self, app: App, name: str) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.listener: socket.socket | None = None
        self.connections: set[Connection] = set()
        self._date = (0, "")
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            # A connection accepted just before the listener closed gets its transport on a later
            # turn of the loop: let those turns run, then close whatever is still open.
            pending = asyncio.all_tasks(self.loop)
            if pending:
                self.loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
            for connection in list(self.connections):
                connection.abort()
            self.loop.run_until_complete(asyncio.sleep(0))  # their connection_lost callbacks
            self.loop.close()

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the loop thread and return its result (state is only touched there)."""
        if threading.current_thread() is self.thread:
            return fn()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as err:
                done.set_exception(err)

        self.loop.call_soon_threadsafe(run)
        return done.result()

    def listen(self, sock: socket.socket) -> None:
        # Accepting here rather than with loop.create_server(): an asyncio Server closed while a
        # connection it had just accepted waits for its transport leaks that socket.
        sock.setblocking(False)

        def start() -> None:
            self.listener = sock
            self.loop.add_reader(sock.fileno(), self._accept, sock)

        self.call(start)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(32):  # a burst of connections: several per wake-up
            try:
                conn, _address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # e.g. out of file descriptors: the client sees a reset
                logger.debug("accept failed: %s", err)
                return
            self.loop.create_task(self.loop.connect_accepted_socket(lambda: Connection(self), conn))

    def refuse(self) -> None:
        """Close the listening socket (connections are refused from now on) and every connection."""

        def close() -> None:
            if self.listener is not None:
                self.loop.remove_reader(self.listener.fileno())
                self.listener.close()
                self.listener = None
            for connection in list(self.connections):
                connection.abort()

        self.call(close)

    def stop(self) -> None:
        self.refuse()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()

    def date(self) -> str:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, email.utils.formatdate(now, usegmt=True))
        return self._date[1]


class Connection(asyncio.Protocol):
    """One client connection: requests are answered in order, one at a time (like HTTP/1.1)."""

    def __init__(self, owner: EventLoop) -> None:
        self.owner = owner
        self.app = owner.app
        self.buffer = bytearray()
        self.parser = httptools.HttpRequestParser(self)
        self.ready: deque[Request] = deque()  # parsed requests waiting for their turn
        self.failed: BadRequest | None = None  # what did not parse: answered once the requests before it are
        self.head = b""  # the first bytes of the request being parsed, for the request log if it is malformed
        # the request being parsed
        self.url = b""
        self.items: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.busy = False  # a request is being delayed or hung: later ones wait
        self.closed = False
        self.timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.sock: Any = None
        self.connection_id = 0

    # -- asyncio callbacks ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.sock = transport.get_extra_info("socket")
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # not every Python sets it on accepted sockets
        self.connection_id = self.app.connection_opened(self.sock)
        self.owner.connections.add(self)
        if self.owner.listener is None:  # accepted just before refuse(): part of the outage too
            self.abort()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._serve_guarded()

    def _serve_guarded(self) -> None:
        try:
            self._serve()
        except Exception:
            logger.debug("error handling a request on connection %s", self.connection_id, exc_info=True)
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        self.owner.connections.discard(self)
        self.app.connection_closed(self.sock)

    def abort(self) -> None:
        """Close at once: the socket is shut down before this returns (the transport would only
        close it on the loop's next turn, and a client could still reuse it meanwhile)."""
        self.closed = True
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self.transport is not None:
            self.transport.abort()

    # -- requests: parsed by httptools (llhttp) as bytes arrive ------------------------------------
    def _serve(self) -> None:
        """Parse what arrived, then answer the complete requests in order, until one has to wait."""
        if self.buffer and self.failed is None:
            data, self.buffer = bytes(self.buffer), bytearray()
            self.head += data[:4096 - len(self.head)]
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserCallbackError as err:
                cause = err.__context__
                self.failed = cause if isinstance(cause, BadRequest) else BadRequest(400, f"Bad request ({err})")
            except httptools.HttpParserInvalidMethodError:
                self.failed = BadRequest(501, "Unsupported method")
            except httptools.HttpParserUpgrade:
                self.failed = BadRequest(400, "Protocol upgrades are not supported")
            except httptools.HttpParserError as err:
                self.failed = BadRequest(400, f"Bad request syntax ({err})")
        while not self.busy and not self.closed and self.ready:
            self._handle(self.ready.popleft())
        if not self.busy and not self.closed and not self.ready and self.failed is not None:
            bad = self.failed
            self.app.record_malformed(bytes(self.head), bad.status, bad.detail, self.connection_id)
            self._send(bad.status, {"detail": bad.detail}, {}, "GET", close=True)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url, self.items, self.body = b"", [], []

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_LINE:
            raise BadRequest(414, "Request-URI Too Long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.items) >= MAX_HEADERS:
            raise BadRequest(431, "Too many headers")
        if len(name) + len(value) > MAX_LINE:
            raise BadRequest(431, "Line too long")
        self.items.append((name.decode("iso-8859-1").strip(), value.decode("iso-8859-1").strip()))

    def on_headers_complete(self) -> None:
        version = self.parser.get_http_version()
        if version.startswith("2") or version.startswith("3"):
            raise BadRequest(505, f"Invalid HTTP version ({version})")
        method = self.parser.get_method().decode("ascii", "replace")
        if method not in METHODS:
            raise BadRequest(501, f"Unsupported method ({method!r})")
        headers = Headers(self.items)
        if "Transfer-Encoding" in headers:
            raise BadRequest(411, "Chunked request bodies are not supported; send Content-Length.")
        if headers.get("Expect", "").lower() == "100-continue" and version == "1.1":
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        target = self.url.decode("iso-8859-1")
        if target.startswith("//"):
            target = "/" + target.lstrip("/")
        method = self.parser.get_method().decode("ascii")
        self.ready.append(Request(method, target, Headers(self.items), b"".join(self.body),
                                  self.parser.should_keep_alive()))
        self.head = b""

    def _handle(self, request: Request) -> None:
        app = self.app
        page = dashboard.serve(app, request.method, request.target, request.headers)
        if page is not None:  # the local dashboard: not an API request, not recorded, no faults
            self._send_page(page, request.method, close=not request.keep_alive)
            return
        record = app.record_request(request.method, request.target, request.headers, request.body, self.connection_id)
        decision = app.decide(request.method)
        action = decision.action
        if action is not None and action.kind == _faults.DROP:
            logger.debug("dropping %s %s without an answer", request.method, request.target)
            self._close()
            return
        if action is not None and action.kind == _faults.HANG:
            logger.debug("hanging %s %s", request.method, request.target)
            self.busy = True
            self._hang(decision.release)
            return
        if action is not None and action.kind == _faults.FAIL:
            status, payload, headers = _faults.response(action)
        else:
            status, payload, headers = app.handle(record)
        misbehaviour = action if action is not None and action.kind in _faults.MISBEHAVIOURS else None

        def answer() -> None:
            self.timer = None
            app.answered(record, status)
            if misbehaviour is not None:
                self._misbehave(misbehaviour, status, payload, headers, request.method, not request.keep_alive)
            else:
                self._send(status, payload, headers, request.method, close=not request.keep_alive)

        if decision.latency > 0:
            self.busy = True
            self.timer = asyncio.get_running_loop().call_later(decision.latency, self._resume, answer)
        else:
            answer()

    def _resume(self, answer: Callable[[], None]) -> None:
        self.busy = False
        answer()
        self._serve_guarded()  # requests that arrived meanwhile

    def _hang(self, release: threading.Event) -> None:
        """Never answer; once released (clear_faults/stop), close the connection without answering."""
        if self.closed:
            return
        if release.is_set() or self.app.stopping.is_set():
            self._close()
            return
        self.timer = asyncio.get_running_loop().call_later(HANG_POLL, self._hang, release)

    def _send(self, status: int, payload: Any, headers: dict[str, str], method: str, close: bool) -> None:
        """Status line, headers and body in ONE write."""
        if self.closed:
            return
        self._write(self._answer(status, payload, headers, method, close))
        if close:
            self._close()

    def _answer(self, status: int, payload: Any, headers: dict[str, str], method: str, close: bool,
                body: bytes | None = None, content_type: str = "application/json") -> bytes:
        if body is None:
            body = b"" if status == 204 or payload is None else json.dumps(payload).encode()
        lines = [
            f"HTTP/1.1 {status} {phrase(status)}",
            f"Server: {SERVER_HEADER}",
            f"Date: {self.owner.date()}",
        ]
        if status != 204:
            lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if close:
            lines.append("Connection: close")
        if method == "HEAD":
            body = b""
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    # -- a misbehaving API (``TaskBadgerServer.misbehave``) -------------------------------------------

    def _misbehave(self, fault: _faults.Fault, status: int, payload: Any, headers: dict[str, str], method: str,
                   close: bool) -> None:
        if self.closed:
            return
        kind, loop = fault.kind, asyncio.get_running_loop()
        if kind == "not_json":
            self._write(self._answer(status, None, headers, method, close,
                                     body=b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                                     content_type="text/html"))
            if close:
                self._close()
        elif kind == "extra_answer":
            data = self._answer(status, payload, headers, method, close)
            self._write(data)
            if close:
                self._close()
            else:
                loop.call_later(fault.seconds, lambda: None if self.closed else self._write(data))
        elif kind == "reset":
            data = self._answer(status, payload, headers, method, close)
            self._write(data[:len(data) // 2])
            loop.call_soon(self._reset)
        else:
            self.busy = True  # later requests on this connection wait, as they would behind a slow answer
            loop.create_task(self._trickle(fault, self._answer(status, payload, headers, method, close), payload,
                                           status, headers, method, close))

    async def _trickle(self, fault: _faults.Fault, data: bytes, payload: Any, status: int, headers: dict[str, str],
                       method: str, close: bool) -> None:
        kind = fault.kind
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, _, rest = head.partition(b"\r\n")
        try:
            if kind == "slow_headers":
                self._write(status_line + b"\r\n")
                for n in range(SLOW_HEADER_LINES):
                    await self._pause(fault.seconds)
                    self._write(b"X-Slow-%d: %d\r\n" % (n, n))
                self._write(rest + b"\r\n\r\n" + body)
            elif kind == "slow_body":
                self._write(head + b"\r\n\r\n")
                for i in range(len(body)):
                    await self._pause(fault.seconds)
                    self._write(body[i:i + 1])
            elif kind == "endless_headers":
                self._write(status_line + b"\r\n")
                line = b"X-Endless: " + b"x" * 100 + b"\r\n"
                while not self.closed:
                    await self._drained()
                    self._write(line * 600)
            elif kind == "huge_body":
                await self._write_huge(payload, status, headers, method, close, fault.size)
        except ConnectionError:
            return
        if self.closed:
            return
        if close:
            self._close()
            return
        self.busy = False
        self._serve_guarded()

    async def _write_huge(self, payload: Any, status: int, headers: dict[str, str], method: str, close: bool,
                          size: int) -> None:
        """The answer's JSON with a ``padding`` member that makes the body ``size`` bytes, streamed in
        chunks of one shared buffer: a 40 MB answer costs the loop (and the client under test, which
        shares the GIL in-process) next to nothing to produce."""
        padded = dict(payload) if isinstance(payload, dict) else {"value": payload}
        padded["padding"] = ""
        prefix, suffix = json.dumps(padded).encode().rsplit(b'""', 1)
        prefix += b'"'
        suffix = b'"' + suffix
        fill = max(0, size - len(prefix) - len(suffix))
        head = self._answer(status, None, headers, method, close, body=b"")
        head = head.replace(b"Content-Length: 0", b"Content-Length: %d" % (len(prefix) + fill + len(suffix)), 1)
        self._write(head + prefix)
        while fill > 0:
            await self._drained()
            chunk = _PADDING if fill >= len(_PADDING) else _PADDING[:fill]
            self._write(chunk)
            fill -= len(chunk)
        self._write(suffix)

    async def _pause(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if self.closed or self.transport is None or self.transport.is_closing():
            raise ConnectionError("the client went away")

    async def _drained(self) -> None:
        """Wait until the transport has room for more; always yields to the loop, so that a client that
        went away is noticed (its connection_lost runs) before the next write."""
        await asyncio.sleep(0)
        while self.transport is not None and self.transport.get_write_buffer_size() > (1 << 20):
            if self.closed or self.transport.is_closing():
                raise ConnectionError("the client went away")
            await asyncio.sleep(0.005)
        if self.closed or self.transport is None or self.transport.is_closing():
            raise ConnectionError("the client went away")

    def _reset(self) -> None:
        """Close with a reset (RST), not an orderly shutdown."""
        if self.sock is not None:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _send_page(self, page: dashboard.Page, method: str, close: bool) -> None:
        status, body, content_type = page
        lines = [f"HTTP/1.1 {status} {phrase(status)}", f"Server: {SERVER_HEADER}", f"Date: {self.owner.date()}",
                 f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
                 *(f"{name}: {value}" for name, value in dashboard.HEADERS.items())]
        if close:
            lines.append("Connection: close")
        self._write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if method == "HEAD" else body))
        if close:
            self._close()

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def _close(self) -> None:
        """Close after what was written has left (a drop closes with nothing written)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def phrase(status: int) -> str:
    return _faults.phrase(status, "")


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound and listening in the caller's thread, so that a busy port raises there. An IPv6 address
    (``::1``) gets an IPv6 socket; a name (``localhost``) its IPv4 address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=128, reuse_port=False)
