"""One kept-alive HTTP/1.1 connection on a non-blocking socket, its answers parsed by httptools (llhttp).

A socket with a timeout makes every send and receive two system calls (a poll, then the call), and in
a worker each system call hands the GIL back to the task's thread: here the socket is non-blocking and
the waits happen with ``poll``, once per batch where possible (``pooled``).

Every wait is bounded by the call's ``Deadline`` (connect, TLS handshake, send, the whole answer), and
what an answer may hold is bounded as ``http.client`` bounds it: at most ``MAX_HEADERS`` header lines
and ``MAX_HEAD_BYTES`` before the body, at most ``MAX_BODY_BYTES`` of body (16 MB). Bytes
are kept in a list and joined once: reading an answer is linear in its size.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
from collections import deque
from functools import lru_cache, partial
from types import MappingProxyType

import httptools

from .deadline import Deadline
from .errors import Answer, BadAnswerError

READABLE = getattr(select, "POLLIN", 1)
WRITABLE = getattr(select, "POLLOUT", 4)
#: ``http.client``'s limit on header lines
MAX_HEADERS = 100
#: Most bytes received before an answer's headers are complete (status line and headers).
MAX_HEAD_BYTES = 64 * 1024
#: Largest answer body read: a bound on memory (the call's deadline bounds its time). Not below what users
#: legitimately get back: a task echoes the ``data`` it was sent (the official SDK reads any size), and a page
#: of ``list_tasks`` holds up to 100 of them. At 1 MB, a create with 1.1 MB of data was carried out by the API
#: and then reported as failed, and a page of 60 tasks with 20 KB each could not be read.
MAX_BODY_BYTES = 16 * 1024 * 1024
RECV_SIZE = 65536


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    cafile = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if not cafile:
        import certifi

        cafile = certifi.where()
    return ssl.create_default_context(cafile=cafile)


class ClosedBeforeAnswer(OSError):
    """The server closed the connection before sending any byte of its answer."""


class BadAnswer(BadAnswerError):
    """The server's answer was not valid HTTP/1.1, was larger than we read, or the connection ended
    in the middle of it."""


class Wire(bytes):
    """Bytes of a request: they hold the Authorization header, so they never print themselves (frames of
    this module show up on debug pages and in crash reports when something goes wrong mid-request)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<{len(self)} bytes of an HTTP request>"


class _TooLarge(Exception):
    """Raised inside a parser callback; httptools wraps it, ``_take`` reports ``_Answers.problem``."""


#: The answer headers anyone reads (the others are counted, not kept: decoding them costs per answer). Not
#: ``content-type``: nothing reads it (an answer's body is JSON or refused), and every answer has one.
KEPT_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"retry-after"})
#: Their first bytes, either case: the other headers (Date, Server, Vary, X-…) are skipped at the first byte.
#: A set of one-byte strings: ``name[:1] in b"cC…"`` first tries the name as a byte value, and raises and
#: clears a TypeError inside, for every header line (3.7 times slower than the set in a tight loop).
_KEPT_FIRST = frozenset(name[:1] for name in KEPT_HEADERS) | frozenset(name[:1].upper() for name in KEPT_HEADERS)


class _Answer:
    """One answer as it is parsed."""

    __slots__ = ("status", "headers", "lines", "chunks", "size", "head_done")

    def __init__(self) -> None:
        self.status = 0
        self.lines = 0  # header lines seen
        self.headers: dict[str, str] = {}  # the ones in KEPT_HEADERS, lower-case names
        self.chunks: list[bytes] = []
        self.size = 0  # body bytes so far
        self.head_done = False


#: Complete answers not yet taken, each with whether the connection stays open after it.
Ready = deque[tuple[Answer, bool]]


class _Answers:
    """httptools' callbacks for every answer on one connection, in the order they arrive, with every check.

    One parser per connection, not per request: bytes after an answer (an unrequested second answer, a
    confused proxy) are parsed as the next answer rather than lost, so a caller can tell that its
    connection carries answers nobody asked for, and skip one that is not its own."""

    __slots__ = ("parser", "current", "ready", "problem")

    def __init__(self, ready: Ready) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.current: _Answer | None = None  # being parsed
        self.ready = ready  # complete, not yet taken (the connection's)
        self.problem: str | None = None

    def on_message_begin(self) -> None:
        self.current = _Answer()

    def on_header(self, name: bytes, value: bytes) -> None:
        answer = self.current
        assert answer is not None
        answer.lines += 1
        if answer.lines > MAX_HEADERS:
            self.problem = f"the answer has more than {MAX_HEADERS} header lines"
            raise _TooLarge
        if name[:1] in _KEPT_FIRST:
            name = name.lower()
            if name in KEPT_HEADERS:
                answer.headers[name.decode("latin-1")] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        answer = self.current
        assert answer is not None
        answer.status = self.parser.get_status_code()
        answer.head_done = True
        length = answer.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            self.problem = f"the answer's body ({int(length)} bytes) is larger than {MAX_BODY_BYTES} bytes"
            raise _TooLarge

    def on_body(self, body: bytes) -> None:
        answer = self.current
        assert answer is not None
        answer.size += len(body)
        if answer.size > MAX_BODY_BYTES:
            self.problem = f"the answer's body is larger than {MAX_BODY_BYTES} bytes"
            raise _TooLarge
        answer.chunks.append(body)

    def on_message_complete(self) -> None:
        answer, self.current = self.current, None
        assert answer is not None
        if 100 <= answer.status < 200:
            return  # an interim answer (100 Continue): the real one follows
        # llhttp knows this only until the next message begins: read it now
        self.ready.append((_whole(answer), self.parser.should_keep_alive()))


def _whole(answer: _Answer) -> Answer:
    chunks = answer.chunks
    return answer.status, answer.headers, chunks[0] if len(chunks) == 1 else b"".join(chunks)


#: The headers of an answer read by ``_Quick``: a 2xx answer on a kept-alive connection, whose headers nobody reads.
_NO_HEADERS: MappingProxyType[str, str] = MappingProxyType({})


#: What llhttp raises for bytes that are not an answer we can read. An upgrade (``101 Switching Protocols``, a
#: confused proxy's) is not an ``HttpParserError``: it escaped the transport as an unknown error.
_NOT_AN_ANSWER = (httptools.HttpParserError, httptools.HttpParserUpgrade)


class _Unusual(Exception):
    """Raised inside ``_Quick``: the answer is not one it takes, ``_Answers`` parses the bytes again."""


class _Quick:
    """httptools' callbacks for the usual answers: whole 2xx answers on a kept-alive connection.

    With ``on_header`` set, httptools makes two bytes objects and a call per header line (about 3k
    instructions a line, whatever is called: a C method costs the same); without it, llhttp checks the head
    in C and calls nothing. The headers of such an answer are not needed (no ``Retry-After``, its
    framing is over), so this parser has none, and no Python call at the message's start or per body
    chunk either (C methods of its own lists). ``Connection._take`` gives it only bytes that start at an
    answer's first byte and hold at most ``MAX_HEAD_BYTES``; when they end inside an answer, hold another
    kind of answer (not 2xx, a closing one, an interim 100), more lines than ``MAX_HEADERS`` or anything
    llhttp refuses, they are parsed again from that first byte by ``_Answers``, with every check."""

    __slots__ = ("parser", "ready", "chunks", "began", "on_message_begin", "on_body")

    def __init__(self, ready: Ready) -> None:
        self.ready = ready
        self.chunks: list[bytes] = []  # the body so far
        self.began: list[None] = []  # non-empty while an answer is being parsed
        self.on_message_begin = partial(self.began.append, None)
        self.on_body = self.chunks.append
        self.parser = httptools.HttpResponseParser(self)

    def on_message_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if not 200 <= status < 300 or not parser.should_keep_alive():
            raise _Unusual
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.began.clear()
        self.ready.append(((status, _NO_HEADERS, body), True))


class Connection:
    """One kept-alive HTTP/1.1 connection."""

    def __init__(self, scheme: str, host: str, port: int | None) -> None:
        self.scheme, self.host = scheme, host
        self.port = port or (443 if scheme == "https" else 80)
        self.sock: socket.socket | None = None
        self._ready: Ready = deque()
        # At an answer's first byte the quick parser reads what comes; the full one, from the first byte
        # the quick one did not take, until the answers are back at a first byte of their own.
        self._quick: _Quick | None = None
        self._answers: _Answers | None = None
        self._head_bytes = 0  # bytes received since the last complete head: bounded by MAX_HEAD_BYTES
        self._received = 0  # bytes received since the request was sent
        self._reusable = True  # False once it carried something nobody asked for

    def connect(self, deadline: Deadline) -> None:
        """Connect (and shake hands for TLS) within ``deadline.connect`` and what is left of ``deadline``."""
        wait = min(deadline.connect, deadline.remaining())
        if wait <= 0:
            raise TimeoutError("no time left to connect")
        sock = socket.create_connection((self.host, self.port), timeout=wait)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            if self.scheme == "https":
                sock = _tls_context().wrap_socket(sock, server_hostname=self.host, do_handshake_on_connect=False)
                self.sock = sock
                self._handshake(deadline)
        except BaseException:
            sock.close()
            self.sock = None
            raise
        self.sock = sock
        self.fresh()

    def fresh(self) -> None:
        """Answers are read from the start of a new byte stream (a new connection)."""
        self._ready = deque()
        self._quick, self._answers, self._head_bytes, self._reusable = _Quick(self._ready), None, 0, True

    def _handshake(self, deadline: Deadline) -> None:
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                events = READABLE
            except ssl.SSLWantWriteError:
                events = WRITABLE
            if not wait_for(sock, events, deadline.remaining()):
                raise TimeoutError("TLS handshake timed out")

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    @property
    def reusable(self) -> bool:
        """Open, and nothing arrived on it that nobody asked for."""
        return self.sock is not None and self._reusable and not self._ready and not self._in_answer()

    def _in_answer(self) -> bool:
        """Bytes of an answer arrived, not all of it (the quick parser takes only whole answers)."""
        return self._quick is None and self._answers is not None and self._answers.current is not None

    def send(self, data: bytes, deadline: Deadline) -> None:
        sock = self.sock
        assert sock is not None
        self._received = 0
        try:  # most often the socket takes a request whole: no memoryview to make and slice
            sent = sock.send(data)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0
            if not wait_for(sock, WRITABLE, deadline.remaining()):
                raise TimeoutError("timed out") from None
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        while view:
            try:
                view = view[sock.send(view):]
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                if not wait_for(sock, WRITABLE, deadline.remaining()):
                    raise TimeoutError("timed out") from None

    def skip_answer(self) -> None:
        """The answer just read was not meant for our request: the connection will never be reused,
        and the next answer on it is read as ours."""
        self._reusable = False

    def receive_some(self) -> Answer | None:
        """The next answer on the connection once it is complete (one non-blocking read if it is not
        here yet), else None."""
        if self._ready:
            return self._next()
        if self.sock is None:
            return None
        try:
            chunk = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        if chunk and isinstance(self.sock, ssl.SSLSocket):
            # TLS can hold decrypted bytes that poll() cannot see; take them, within the limits
            parts = [chunk]
            while self.sock.pending() and sum(map(len, parts)) <= MAX_HEAD_BYTES + MAX_BODY_BYTES:
                parts.append(self.sock.recv(RECV_SIZE))
            chunk = b"".join(parts)
        return self._take(chunk)

    def _take(self, chunk: bytes) -> Answer | None:
        ready = self._ready
        if not chunk:  # the server closed its side
            self.close()
            if ready:
                return self._next()
            answer = None if self._answers is None or self._quick is not None else self._answers.current
            if answer is not None and answer.head_done and "content-length" not in answer.headers \
                    and "chunked" not in answer.headers.get("transfer-encoding", ""):
                self._answers.current = None  # type: ignore[union-attr]
                answer.headers["connection"] = "close"  # a body that ends when the connection does
                ready.append((_whole(answer), False))
                return self._next()
            if self._received:
                raise BadAnswer("the server closed the connection in the middle of its answer")
            raise ClosedBeforeAnswer("the server closed the connection before answering")
        self._received += len(chunk)
        quick = self._quick
        if quick is not None:
            if len(chunk) <= MAX_HEAD_BYTES:
                taken = len(ready)
                try:
                    quick.parser.feed_data(chunk)
                    whole = not quick.began and chunk.count(b"\n") <= MAX_HEADERS
                except _NOT_AN_ANSWER:
                    whole = False
                if whole:
                    return self._next() if ready else None
                while len(ready) > taken:  # parsed again below, with their headers
                    ready.pop()
            self._quick = self._answers = None
        answers = self._answers
        if answers is None:  # the bytes start at an answer's first byte: a parser of its own from there
            answers = self._answers = _Answers(ready)
        self._head_bytes += len(chunk)
        try:
            answers.parser.feed_data(chunk)
        except _NOT_AN_ANSWER as err:
            self.close()
            if answers.problem is not None:
                raise BadAnswer(answers.problem) from None
            if not ready:
                if isinstance(err, httptools.HttpParserUpgrade):
                    raise BadAnswer("the server switched the connection to another protocol (101 Switching "
                                    "Protocols): not an answer of the API") from None
                raise BadAnswer(f"not an HTTP answer: {err}") from None
            self._reusable = False  # garbage after a whole answer: take the answer, never reuse
        current = answers.current
        if current is None:  # between answers: the next one's first byte comes next
            self._head_bytes = 0
            if self.sock is not None and self._reusable:
                self._quick = _Quick(ready)
        elif current.head_done:
            self._head_bytes = 0
        elif self._head_bytes > MAX_HEAD_BYTES:
            self.close()
            raise BadAnswer(f"the answer's status line and headers are longer than {MAX_HEAD_BYTES} bytes")
        return self._next() if ready else None

    def _next(self) -> Answer:
        answer, keep_alive = self._ready.popleft()
        if not keep_alive:
            self.close()
        return answer

    def read_answer(self, deadline: Deadline) -> Answer:
        """The next whole answer, before ``deadline``; TimeoutError when it passes first."""
        while True:
            if self._ready:
                return self._next()
            if self.sock is None:
                raise BadAnswer("the server closed the connection in the middle of its answer")
            if not wait_for(self.sock, READABLE, deadline.remaining()):
                raise TimeoutError("timed out")
            answer = self.receive_some()
            if answer is not None:
                return answer

    def has_unread_bytes(self) -> bool:
        """Whether an idle connection has something to read: the server closed it, or sent bytes
        nobody asked for. Either way it must not carry another request."""
        return not self.reusable or wait_for(self.sock, READABLE, 0)  # type: ignore[arg-type]


def wait_for(sock: socket.socket, events: int, timeout: float | None) -> bool:
    """Wait until ``sock`` is readable or writable (``events``); False after ``timeout`` seconds."""
    if timeout is not None and timeout <= 0:
        timeout = 0
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, events | select.POLLERR | select.POLLHUP)
        # round up: a deadline 0.4 ms away must not become a 0 ms poll that spins
        return bool(poller.poll(None if timeout is None else (int(timeout * 1000) + (timeout > 0))))
    want = [sock]  # Windows: no poll
    readable, writable, failed = select.select(want if events & READABLE else [],
                                               want if events & WRITABLE else [], want, timeout)
    return bool(readable or writable or failed)
