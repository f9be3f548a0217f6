"""Lean keep-alive HTTP connections, pooled per process, for the delivery hot paths.

Every tracked Celery task costs one create at publish and (usually) one PATCH in the worker. Through
``requests`` each costs ~440 µs of CPU (environment proxy lookups, hooks, adapters) — about as much
as running a no-op task — while a kept-alive connection with the minimal HTTP/1.1 exchange below
costs ~25 µs (``http.client``: ~85 µs; measured with the stand-in API on this project's machine).
So those two calls go through this module; the public synchronous API keeps the process-wide
``requests.Session`` of ``taskbadger.transport``.

It keeps what matters from requests: TLS verification with the same CA bundle (``REQUESTS_CA_BUNDLE``
/ ``CURL_CA_BUNDLE``, else certifi's), connect and read timeouts, keep-alive with a check for
connections the server closed while idle, and the same error types. When a proxy applies to the
API host (``HTTPS_PROXY`` …) it is not used at all: the caller falls back to requests.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
import time
from functools import lru_cache
from urllib.parse import urlsplit

from .exceptions import ConnectError, ReadTimeout, TransportError


@lru_cache(maxsize=8)
def usable_for(host: str) -> bool:
    """False when a proxy from the environment applies to ``host`` (requests handles proxies)."""
    from requests.utils import get_environ_proxies

    return not get_environ_proxies(host)


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    cafile = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if not cafile:
        import certifi

        cafile = certifi.where()
    return ssl.create_default_context(cafile=cafile)


class HttpError(OSError):
    """The server's answer was not valid HTTP/1.1 (or the connection ended mid-answer)."""


class ClosedBeforeAnswer(HttpError):
    """The server closed the connection before sending any byte of its answer."""


class Connection:
    """One kept-alive HTTP/1.1 connection: each request is sent as bytes formatted here, each answer
    is parsed here (Content-Length, chunked, or read-to-close bodies). ``http.client`` spends most of
    its CPU building headers and parsing answers with the ``email`` package.

    The socket is non-blocking and waits happen here, with ``poll``: a socket with a timeout makes
    every send and receive two system calls (a poll, then the call), and in a worker each system call
    hands the GIL back to the task's thread and then has to win it again."""

    def __init__(self, scheme: str, host: str, port: int | None, timeout: tuple[float, float]) -> None:
        self.scheme, self.host, self.timeout = scheme, host, timeout
        self.port = port or (443 if scheme == "https" else 80)
        self.sock: socket.socket | None = None
        self._buffer = b""
        self._eof = False  # the server closed its side

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout[0])
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.scheme == "https":
                sock = _tls_context().wrap_socket(sock, server_hostname=self.host)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.sock, self._buffer, self._eof = sock, b"", False

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock, self._buffer, self._eof = None, b"", False

    def _wait(self, events: int) -> None:
        assert self.sock is not None
        if not _wait_for(self.sock, events, self.timeout[1]):
            raise TimeoutError("timed out")

    def send(self, data: bytes) -> None:
        assert self.sock is not None
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view):]
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                self._wait(_WRITABLE)

    def receive_some(self) -> bool:
        """One non-blocking read into the buffer; False when nothing had arrived."""
        assert self.sock is not None
        try:
            chunk = self.sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        if not chunk:
            self._eof = True
            return True
        self._buffer += chunk
        # TLS can hold decrypted bytes that poll() cannot see: take them now.
        while isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            self._buffer += self.sock.recv(65536)
        return True

    def take_answer(self, method: str) -> Result | None:
        """The answer, once the buffer holds all of it; None while more bytes are needed."""
        parsed = parse_answer(self._buffer, method, self._eof)
        if parsed is None:
            if self._eof:
                if self._buffer:
                    raise HttpError("the server closed the connection in the middle of its answer")
                raise ClosedBeforeAnswer("the server closed the connection before answering")
            return None
        (status, headers, body), self._buffer = parsed
        # Bytes after the answer were never asked for (we send one request at a time): a confused
        # server or proxy, or a smuggled request. They must not answer our next request: close.
        if self._buffer or self._eof or headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def read_response(self, method: str) -> Result:
        while True:
            answer = self.take_answer(method)
            if answer is not None:
                return answer
            if not self.receive_some():
                self._wait(_READABLE)


def parse_answer(buffer: bytes, method: str, eof: bool = False) -> tuple[Result, bytes] | None:
    """The first complete answer in ``buffer`` (Content-Length, chunked, or a body that ends when the
    server closes, i.e. at ``eof``) and the bytes after it; None when more bytes are needed."""
    pos = 0
    while True:  # interim 1xx answers come before the real one
        end = buffer.find(b"\r\n\r\n", pos)
        if end < 0:
            if len(buffer) - pos > 65536:
                raise HttpError("answer headers too long")
            return None
        status_line, *lines = buffer[pos:end].decode("latin-1").split("\r\n")
        pos = end + 4
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise HttpError(f"not an HTTP answer: {status_line[:80]!r}")
        status = int(parts[1])
        if status != 100:
            break
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if parts[0] == "HTTP/1.0" and "keep-alive" not in headers.get("connection", "").lower():
        headers["connection"] = "close"
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return (status, headers, b""), buffer[pos:]
    if "chunked" in headers.get("transfer-encoding", "").lower():
        pieces = []
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(buffer[pos:line_end].split(b";")[0], 16)
            pos = line_end + 2
            if size == 0:
                break
            if len(buffer) < pos + size + 2:
                return None
            pieces.append(buffer[pos:pos + size])
            pos += size + 2
        while True:  # trailer lines, up to an empty one
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                return None
            empty, pos = line_end == pos, line_end + 2
            if empty:
                return (status, headers, b"".join(pieces)), buffer[pos:]
    if "content-length" in headers:
        size = int(headers["content-length"])
        if len(buffer) < pos + size:
            return None
        return (status, headers, buffer[pos:pos + size]), buffer[pos + size:]
    if not eof:
        return None
    headers["connection"] = "close"  # the body ended when the server closed the connection
    return (status, headers, buffer[pos:]), b""


# Idle kept-alive connections, shared by every thread of the process (most recently used last).
# Connections per thread would need no lock, but a thread or greenlet that lives for one request or
# one task (Django's runserver, gunicorn's gevent workers, Celery's gevent and eventlet pools) would
# then open a new connection, and over HTTPS a new TLS session, for every create it sends.
_idle: list[Connection] = []
_idle_key: tuple | None = None  # (scheme, host, port, timeout) of the idle connections
_idle_lock = threading.Lock()
#: Most idle connections kept: a batch of the dispatcher takes one per update (2 sender threads x 32),
#: publishing threads one each. More are closed when they come back.
MAX_IDLE = 80


@lru_cache(maxsize=8)
def _pool_key(host: str, timeout: tuple[float, float]) -> tuple:
    parts = urlsplit(host)
    return parts.scheme, parts.hostname or "", parts.port, timeout


def _checkout(host: str, timeout: tuple[float, float], count: int) -> list[Connection]:
    """``count`` connections to ``host`` for the caller alone: idle ones first, new ones for the rest.
    Give them back with ``_checkin``."""
    global _idle, _idle_key
    key = _pool_key(host, timeout)
    stale: list[Connection] = []
    with _idle_lock:
        if _idle_key != key:  # configured for another host or timeout
            stale, _idle, _idle_key = _idle, [], key
        taken = _idle[-count:] if count else []
        del _idle[len(_idle) - len(taken):]
    for old in stale:
        old.close()
    _close_unusable(taken)
    scheme, hostname, port, _ = key
    taken.extend(Connection(scheme, hostname, port, timeout) for _ in range(count - len(taken)))
    return taken


def _checkin(host: str, timeout: tuple[float, float], conns: list[Connection]) -> None:
    """Give back connections from ``_checkout``: open ones become idle, up to ``MAX_IDLE``."""
    key = _pool_key(host, timeout)
    surplus: list[Connection] = []
    with _idle_lock:
        for conn in conns:
            if conn.sock is None:
                continue
            if _idle_key == key and len(_idle) < MAX_IDLE:
                _idle.append(conn)
            else:
                surplus.append(conn)
    for conn in surplus:
        conn.close()


def close_idle() -> None:
    """Close every idle connection of this process (the next request connects again)."""
    global _idle, _idle_key
    with _idle_lock:
        idle, _idle, _idle_key = _idle, [], None
    for conn in idle:
        conn.close()


def _after_fork_in_child() -> None:
    # The idle sockets are the parent's (and the lock may have been copied held): start empty.
    global _idle, _idle_key, _idle_lock
    _idle, _idle_key, _idle_lock = [], None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_READABLE = getattr(select, "POLLIN", 1)
_WRITABLE = getattr(select, "POLLOUT", 4)


def _wait_for(sock: socket.socket, events: int, timeout: float | None) -> bool:
    """Wait until ``sock`` is readable or writable (``events``); False after ``timeout`` seconds."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, events | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))
    want = [sock]  # Windows: no poll
    readable, writable, failed = select.select(want if events & _READABLE else [],
                                               want if events & _WRITABLE else [], want, timeout)
    return bool(readable or writable or failed)


def _close_unusable(conns: list[Connection]) -> None:
    """Close the idle connections that have something to read: the server closed them (EOF), or sent
    bytes nobody asked for. An idle keep-alive socket has nothing to read. One ``poll`` for them all."""
    idle = [conn for conn in conns if conn.sock is not None]
    if not idle:
        return
    if not hasattr(select, "poll"):
        for conn in idle:
            if _wait_for(conn.sock, _READABLE, 0):  # type: ignore[arg-type]
                conn.close()
        return
    poller = select.poll()
    by_fd = {}
    for conn in idle:
        assert conn.sock is not None
        by_fd[conn.sock.fileno()] = conn
        poller.register(conn.sock, _READABLE | select.POLLERR | select.POLLHUP)
    try:
        ready = poller.poll(0)
    except OSError:
        ready = [(fd, 0) for fd in by_fd]
    for fd, _ in ready:
        by_fd[fd].close()


Call = tuple[str, str, "bytes | None", dict[str, str]]  # method, target (path and query), body, headers
Result = tuple[int, dict[str, str], bytes]


def request(host: str, timeout: tuple[float, float], method: str, target: str, body: bytes | None,
            headers: dict[str, str]) -> Result:
    """Send one request on this thread's connection to ``host``; return (status, headers, body).
    Answer headers are keyed in lower case."""
    result = request_many(host, timeout, [(method, target, body, headers)])[0]
    if isinstance(result, Exception):
        raise result
    return result


@lru_cache(maxsize=8)
def _host_line(host: str) -> str:
    return f"Host: {urlsplit(host).netloc}"


class Wire(bytes):
    """Bytes of a request: they hold the Authorization header, so they never print themselves (frames of
    this module show up on debug pages and in crash reports when something goes wrong mid-request)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<{len(self)} bytes of an HTTP request>"


def _header_block(host: str, headers: dict[str, str]) -> Wire:
    # once per publish and per batch: the host is parsed once per process, not on each call
    return Wire(("\r\n".join([_host_line(host), *(f"{name}: {value}" for name, value in headers.items())])
                 + "\r\n").encode("latin-1"))


def _encode(method: str, target: str, body: bytes | None, header_block: bytes) -> Wire:
    return Wire(b"%s %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (
        method.encode(), target.encode("latin-1"), header_block, len(body) if body else 0, body or b""))


def request_many(host: str, timeout: tuple[float, float], calls: list[Call]) -> list[Result | Exception]:
    """Send every call, each on its own kept-alive connection, then read the answers.

    One wait covers the whole batch (one ``poll`` over all its connections): with a slow API the
    waits are most of the cost of a request (a thread wake-up, kernel time, and in a worker a GIL
    hand-off each), so a busy dispatcher sends its queue this way.
    Returns, per call, (status, headers, body) or the exception that call met.
    """
    conns = _checkout(host, timeout, len(calls))
    try:
        results = _exchange(host, timeout, calls, conns)
    except BaseException:  # interrupted (a killed greenlet, an internal error): an answer may be unread
        for conn in conns:
            conn.close()
        raise
    _checkin(host, timeout, conns)
    return results


def _exchange(host: str, timeout: tuple[float, float], calls: list[Call],
              conns: list[Connection]) -> list[Result | Exception]:
    results: list[Result | Exception | None] = [None] * len(calls)
    sent: list[tuple[int, Connection, bool]] = []
    blocks: dict[int, bytes] = {}  # the calls of a batch share their headers: format them once
    for i, (call, conn) in enumerate(zip(calls, conns, strict=True)):
        reused = conn.sock is not None
        block = blocks.get(id(call[3]))
        if block is None:
            block = blocks[id(call[3])] = _header_block(host, call[3])
        failure = _send(host, timeout, conn, call, block)
        if failure is not None and reused and _may_resend(call, failure):
            reused, failure = False, _send(host, timeout, conn, call, block)
        if failure is None:
            sent.append((i, conn, reused))
        else:
            results[i] = failure
    answers = _receive_all(host, timeout, [(i, conn) for i, conn, _ in sent], calls)
    for i, conn, reused in sent:
        results[i] = answers[i]
        if reused and _may_resend(calls[i], answers[i]):
            failure = _send(host, timeout, conn, calls[i], blocks[id(calls[i][3])])
            results[i] = failure or _receive(host, timeout, conn, calls[i][0])
    return results  # type: ignore[return-value]


#: How long a batch's reader waits after the first answers for the others to arrive.
GATHER = 0.002


def _receive_all(host: str, timeout: tuple[float, float], sent: list[tuple[int, Connection]],
                 calls: list[Call]) -> dict[int, Result | TransportError]:
    """Read the answer on every connection of a batch (call index -> answer), with one ``poll`` for
    all of them and one read per connection that it says is ready."""
    if len(sent) <= 1 or not hasattr(select, "poll"):
        return {i: _receive(host, timeout, conn, calls[i][0]) for i, conn in sent}
    answers: dict[int, Result | TransportError] = {}
    waiting: dict[int, tuple[int, Connection]] = {}
    poller = select.poll()
    for i, conn in sent:
        assert conn.sock is not None
        waiting[conn.sock.fileno()] = (i, conn)
        poller.register(conn.sock, _READABLE | select.POLLERR | select.POLLHUP)
    deadline = time.monotonic() + timeout[1]
    first = True
    while waiting:
        remaining = deadline - time.monotonic()
        if not first and remaining > GATHER:
            # The server answers a batch one connection at a time over a millisecond or two: a
            # short sleep lets the rest arrive, and one wake-up reads them all (every wake-up of
            # this thread costs the task's thread a GIL hand-off).
            time.sleep(GATHER)
            remaining -= GATHER
        first = False
        ready = poller.poll(max(1, int(remaining * 1000))) if remaining > 0 else []
        if not ready:
            break
        for fd, _ in ready:
            i, conn = waiting[fd]
            try:
                answer = conn.take_answer(calls[i][0]) if conn.receive_some() else None
            except (OSError, ValueError) as err:
                conn.close()
                answer = _failure(host, timeout, err)
            if answer is not None:
                del waiting[fd]
                poller.unregister(fd)
                answers[i] = answer
    for i, conn in waiting.values():
        conn.close()
        answers[i] = _failure(host, timeout, TimeoutError("timed out"))
    return answers


def _send(host: str, timeout: tuple[float, float], conn: Connection, call: Call,
          header_block: bytes) -> TransportError | None:
    method, target, body, _ = call
    if conn.sock is None:
        try:
            conn.connect()
        except OSError as err:  # refused, unreachable, connect timeout, TLS
            conn.close()
            failure = ConnectError(f"Could not connect to {host}: {err}")
            failure.__cause__ = _scrub(err)
            return failure
    try:
        conn.send(_encode(method, target, body, header_block))
    except OSError as err:
        conn.close()
        return _failure(host, timeout, err)
    return None


def _receive(host: str, timeout: tuple[float, float], conn: Connection, method: str) -> Result | TransportError:
    try:
        return conn.read_response(method)
    except (OSError, ValueError) as err:
        conn.close()
        return _failure(host, timeout, err)


def _may_resend(call: Call, outcome: object) -> bool:
    """A kept-alive connection that the server reset or closed before any byte of an answer is most
    often one it closed while idle, just as we used it. An idempotent request is sent again once, on
    a new connection. A create (POST) is not: the server may have taken it, and a duplicate task is
    worse than a task the publisher could not track."""
    cause = getattr(outcome, "__cause__", None)
    return (call[0] != "POST" and isinstance(outcome, TransportError)
            and isinstance(cause, (ConnectionResetError, BrokenPipeError, ClosedBeforeAnswer)))


def _failure(host: str, timeout: tuple[float, float], err: Exception) -> TransportError:
    if isinstance(err, TimeoutError):
        failure: TransportError = ReadTimeout(f"{host} did not answer within {timeout[1]} s")
    else:
        failure = TransportError(f"Connection to {host} failed: {err!r}")
    failure.__cause__ = _scrub(err)
    return failure


def _scrub(err: BaseException) -> BaseException:
    """The error without its traceback: its frames hold the request's bytes (see ``Wire``)."""
    err.__traceback__ = None
    err.__context__ = None
    return err
