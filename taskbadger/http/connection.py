"""One kept-alive HTTP/1.1 connection on a non-blocking socket, its answers parsed by httptools (llhttp).

A socket with a timeout makes every send and receive two system calls (a poll, then the call), and in
a worker each system call hands the GIL back to the task's thread: here the socket is non-blocking and
the waits happen with ``poll``, once per batch where possible (``pooled``).
"""

from __future__ import annotations

import os
import select
import socket
import ssl
from functools import lru_cache

import httptools

from .errors import Answer

READABLE = getattr(select, "POLLIN", 1)
WRITABLE = getattr(select, "POLLOUT", 4)


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    cafile = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if not cafile:
        import certifi

        cafile = certifi.where()
    return ssl.create_default_context(cafile=cafile)


class ClosedBeforeAnswer(OSError):
    """The server closed the connection before sending any byte of its answer."""


class BadAnswer(OSError):
    """The server's answer was not valid HTTP/1.1, or the connection ended in the middle of it."""


class Wire(bytes):
    """Bytes of a request: they hold the Authorization header, so they never print themselves (frames of
    this module show up on debug pages and in crash reports when something goes wrong mid-request)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<{len(self)} bytes of an HTTP request>"


class _Answer:
    """httptools' callbacks for one answer."""

    __slots__ = ("headers", "body", "complete", "started", "extra", "keep_alive", "parser")

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body = b""
        self.complete = False
        self.started = False
        self.extra = False  # bytes after the answer
        self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True
        self.started = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.body += body

    def on_message_complete(self) -> None:
        if self.parser is not None and 100 <= self.parser.get_status_code() < 200 and not self.complete:
            self.headers, self.body = {}, b""  # an interim answer: the real one follows
            return
        self.complete = True
        # llhttp knows this only until the next message begins: read it now
        self.keep_alive = self.parser is not None and self.parser.should_keep_alive()


def _new_parser() -> tuple[_Answer, httptools.HttpResponseParser]:
    answer = _Answer()
    answer.parser = httptools.HttpResponseParser(answer)
    return answer, answer.parser


class Connection:
    """One kept-alive HTTP/1.1 connection."""

    def __init__(self, scheme: str, host: str, port: int | None, timeout: tuple[float, float]) -> None:
        self.scheme, self.host, self.timeout = scheme, host, timeout
        self.port = port or (443 if scheme == "https" else 80)
        self.sock: socket.socket | None = None
        self._answer, self._parser = _new_parser()
        self._received = False

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
        self.sock = sock

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def send(self, data: bytes) -> None:
        assert self.sock is not None
        self._answer, self._parser = _new_parser()
        self._received = False
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view):]
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                if not wait_for(self.sock, WRITABLE, self.timeout[1]):
                    raise TimeoutError("timed out") from None

    def receive_some(self) -> Answer | None:
        """One non-blocking read; the answer once it is complete, else None."""
        assert self.sock is not None
        try:
            chunk = self.sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        while chunk and isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            chunk += self.sock.recv(65536)  # TLS can hold decrypted bytes that poll() cannot see
        return self._take(chunk)

    def _take(self, chunk: bytes) -> Answer | None:
        answer, parser = self._answer, self._parser
        if not chunk:  # the server closed its side
            self.close()
            if answer.complete:
                return self._done()
            if answer.started and parser.get_status_code() and "content-length" not in answer.headers \
                    and "chunked" not in answer.headers.get("transfer-encoding", ""):
                answer.complete = True  # a body that ends when the connection does
                answer.headers["connection"] = "close"
                return self._done()
            if self._received:
                raise BadAnswer("the server closed the connection in the middle of its answer")
            raise ClosedBeforeAnswer("the server closed the connection before answering")
        self._received = True
        try:
            parser.feed_data(chunk)
        except httptools.HttpParserError as err:
            if not answer.complete:  # garbage after a whole answer only makes us close below
                raise BadAnswer(f"not an HTTP answer: {err}") from None
            answer.extra = True
        return self._done() if answer.complete else None

    def _done(self) -> Answer:
        answer, parser = self._answer, self._parser
        # Bytes after the answer were never asked for (one request at a time): a confused server or
        # proxy, or a smuggled request. They must not answer our next request: close.
        if answer.extra or self.sock is None or not answer.keep_alive:
            self.close()
        return parser.get_status_code(), answer.headers, answer.body

    def read_answer(self) -> Answer:
        while True:
            assert self.sock is not None
            if not wait_for(self.sock, READABLE, self.timeout[1]):
                raise TimeoutError("timed out")
            answer = self.receive_some()
            if answer is not None:
                return answer


def wait_for(sock: socket.socket, events: int, timeout: float | None) -> bool:
    """Wait until ``sock`` is readable or writable (``events``); False after ``timeout`` seconds."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, events | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))
    want = [sock]  # Windows: no poll
    readable, writable, failed = select.select(want if events & READABLE else [],
                                               want if events & WRITABLE else [], want, timeout)
    return bool(readable or writable or failed)
