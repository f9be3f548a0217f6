"""The pooled keep-alive transport: every request, unless a proxy applies to the API host.

Each tracked Celery task costs a create at publish and (usually) one PATCH in the worker, so these two
requests must cost little CPU: ``requests`` spends most of a request's CPU on proxy lookups, hooks
and adapters, ``http.client`` on header handling (figures in ``benchmarks/results.md``). Here a
request is one formatted write on a kept-alive, non-blocking socket, and answers are parsed by
``httptools`` (llhttp). A batch of updates goes out on as many connections at once and its answers
are read after one ``poll`` over all of them: with a slow API the waits are most of a request's
cost, and in a worker every wake-up of a sender thread costs the task's thread a GIL hand-off.

Every exchange has one ``Deadline`` (connect, send, the whole answer); answers are bounded
(``connection``). A connection is reused only when it has nothing unread: a server that sends bytes
nobody asked for loses the connection, so that they cannot pass for the answer to a later request.

What it keeps from requests: TLS verification with the same CA bundle (``REQUESTS_CA_BUNDLE`` /
``CURL_CA_BUNDLE``, else certifi's), and the same errors. When a proxy applies to the API host,
``taskbadger.http`` uses the requests transport instead.

Idle connections are pooled per process (a new pool in a forked child) and shared by its threads and
greenlets: a thread or greenlet per web request or per task (``runserver``, gevent workers, Celery's
gevent and eventlet pools) reuses them instead of opening one, and a TLS session, per create.
"""

from __future__ import annotations

import atexit
import select
import threading
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from urllib.parse import urlsplit

from .._runtime import PerProcess
from ..config import Config
from ..exceptions import TransportError
from . import late
from .connection import READABLE, ClosedBeforeAnswer, Connection, Wire
from .deadline import Deadline
from .errors import Answer, BadAnswerError, failure
from .request import Request

#: Most idle connections kept: a batch takes one per update (2 sender threads x 32), publishing
#: threads one each. More are closed when they come back.
MAX_IDLE = 80
#: How long a batch's reader waits after the first answers for the others to arrive: the server
#: answers a batch one connection at a time over a millisecond or two, and one wake-up reads them all.
GATHER = 0.002
#: Most answers skipped on one connection as meant for other requests before the exchange fails.
MAX_SKIPPED = 2

#: Called with the answer that arrives after its call's deadline (see ``late``).
LateAnswer = Callable[[Answer], None]


class _Pool:
    """Idle connections of one process, shared by its threads (most recently used last)."""

    def __init__(self) -> None:
        self.idle: list[Connection] = []
        self.key: tuple | None = None  # (scheme, host, port) of the idle connections
        self.lock = threading.Lock()


_pool: PerProcess[_Pool] = PerProcess(_Pool)


@lru_cache(maxsize=8)
def _pool_key(host: str) -> tuple:
    parts = urlsplit(host)
    return parts.scheme, parts.hostname or "", parts.port


def _checkout(host: str, count: int) -> list[Connection]:
    """``count`` connections for the caller alone: idle ones first, new ones for the rest."""
    pool, key = _pool.get(), _pool_key(host)
    stale: list[Connection] = []
    with pool.lock:
        if pool.key != key:  # configured for another host
            stale, pool.idle, pool.key = pool.idle, [], key
        taken = pool.idle[-count:] if count else []
        del pool.idle[len(pool.idle) - len(taken):]
    for old in stale:
        old.close()
    if taken:
        _close_unusable(taken)
    if len(taken) < count:
        scheme, hostname, port = key
        taken.extend(Connection(scheme, hostname, port) for _ in range(count - len(taken)))
    return taken


def _checkin(host: str, conns: list[Connection]) -> None:
    pool, key = _pool.get(), _pool_key(host)
    surplus: list[Connection] = []
    with pool.lock:
        for conn in conns:
            if conn.sock is None:
                continue
            if conn.reusable and pool.key == key and len(pool.idle) < MAX_IDLE:
                pool.idle.append(conn)
            else:
                surplus.append(conn)
    for conn in surplus:
        conn.close()


def idle_connections() -> int:
    """How many idle connections this process keeps for reuse."""
    pool = _pool.get()
    with pool.lock:
        return len(pool.idle)


def close_idle() -> None:
    """Close every idle connection of this process (the next request connects again)."""
    pool = _pool.get()
    with pool.lock:
        idle, pool.idle, pool.key = pool.idle, [], None
    for conn in idle:
        conn.close()


# A process ends with its idle connections closed: left to the garbage collector they print a ResourceWarning
# into the user's own output (python -X dev, test runners). Registered on import, before the flush at exit
# (``taskbadger.spooling``), so it runs after it: atexit calls the last registered first.
atexit.register(close_idle)


def _close_unusable(conns: list[Connection]) -> None:
    """Close the idle connections that have something to read: the server closed them (EOF) or sent
    bytes nobody asked for (an idle keep-alive socket has nothing to read). One ``poll`` for them all."""
    idle: dict[int, Connection] = {}
    for conn in conns:  # not a comprehension: a frame of its own, per batch
        if conn.sock is not None:
            idle[conn.sock.fileno()] = conn
    if not idle:
        return
    if not hasattr(select, "poll"):
        for conn in idle.values():
            if conn.has_unread_bytes():
                conn.close()
        return
    poller = select.poll()
    for fd in idle:
        poller.register(fd, READABLE | select.POLLERR | select.POLLHUP)
    try:
        ready = poller.poll(0)
    except OSError:
        ready = [(fd, 0) for fd in idle]
    for fd, _ in ready:
        idle[fd].close()


@lru_cache(maxsize=8)
def _host_line(host: str) -> str:
    return f"Host: {urlsplit(host).netloc}"


def _header_block(host: str, request: Request) -> Wire:
    return Wire(("\r\n".join([_host_line(host), *(f"{name}: {value}" for name, value in request.headers.items())])
                 + "\r\n").encode("latin-1"))


#: Header blocks formatted for earlier batches: (host, the headers dict itself, its block), by the dict's id. Requests
#: share one headers dict per key and shape (``request._base_headers``), so a sender's batches reuse one block
#: instead of formatting it again per batch; the dict is held here, so its id is not reused while it is cached.
_blocks: dict[int, tuple[str, object, Wire]] = {}
#: Most blocks kept (requests with headers of their own, a create under a monitor, make new dicts).
MAX_BLOCKS = 16


def _block_for(host: str, request: Request) -> Wire:
    headers = request.headers
    cached = _blocks.get(id(headers))
    if cached is not None and cached[1] is headers and cached[0] == host:
        return cached[2]
    block = _header_block(host, request)
    if len(_blocks) >= MAX_BLOCKS:
        _blocks.clear()
    _blocks[id(headers)] = (host, headers, block)
    return block


def _encode(request: Request, header_block: bytes) -> Wire:
    body = request.body or b""
    return Wire(b"%s %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (
        request.method.encode(), request.target.encode("latin-1"), header_block, len(body), body))


class PooledTransport:
    def exchange(self, config: Config, request: Request, deadline: Deadline | None = None,
                 late_answer: LateAnswer | None = None) -> Answer:
        """One request, its whole answer before ``deadline`` (``config``'s call deadline when None).
        ``late_answer``: when the deadline passes after the request was sent, the connection is left to
        the late-answer reader, which calls it with the answer if one comes (see ``late``)."""
        [answer] = self.exchange_many(config, [request], deadline, late_answer)
        if isinstance(answer, TransportError):
            raise answer
        return answer

    def exchange_many(self, config: Config, requests: Sequence[Request], deadline: Deadline | None = None,
                      late_answer: LateAnswer | None = None) -> list[Answer | TransportError]:
        """Send every request, each on its own kept-alive connection, then read the answers, all
        before one ``deadline``."""
        deadline = deadline or Deadline.for_call(config.timeout)
        conns = _checkout(config.host, len(requests))
        try:
            answers = _Batch(config.host, requests, conns, deadline, late_answer).run()
        except BaseException:  # interrupted (a killed greenlet, an internal error): an answer may be unread
            for conn in conns:
                conn.close()
            raise
        _checkin(config.host, conns)
        return answers


class _Batch:
    def __init__(self, host: str, requests: Sequence[Request], conns: list[Connection], deadline: Deadline,
                 late_answer: LateAnswer | None) -> None:
        self.host, self.deadline, self.late_answer = host, deadline, late_answer
        self.requests, self.conns = requests, conns
        self.blocks: dict[int, Wire] = {}  # requests of a batch share their headers: format them once
        self.skipped: dict[int, int] = {}  # request -> answers skipped on its connection (not its own)

    def run(self) -> list[Answer | TransportError]:
        results: list[Answer | TransportError | None] = [None] * len(self.requests)
        sent: list[tuple[int, bool]] = []  # (index, sent on a reused connection)
        indexes: list[int] = []
        for i, conn in enumerate(self.conns):
            reused = conn.sock is not None
            failure_ = self._send(i)
            if failure_ is not None and reused and _may_resend(self.requests[i], failure_):
                reused, failure_ = False, self._send(i)
            if failure_ is None:
                sent.append((i, reused))
                indexes.append(i)
            else:
                results[i] = failure_
        self.deadline = self.deadline.sent()
        answers = self._receive_all(indexes)
        for i, reused in sent:
            answer = results[i] = answers[i]
            # (an answer is not a failure, most often: no call to ask _may_resend)
            if reused and isinstance(answer, TransportError) and _may_resend(self.requests[i], answer) \
                    and not self.deadline.expired():
                results[i] = self._send(i) or self._receive(i)
        return results  # type: ignore[return-value]

    def _failure(self, err: BaseException, connected: bool = True) -> TransportError:
        return failure(self.host, err, connected=connected, budget=self.deadline.seconds)

    def _send(self, i: int) -> TransportError | None:
        conn, request = self.conns[i], self.requests[i]
        block = self.blocks.get(id(request.headers))
        if block is None:
            block = self.blocks[id(request.headers)] = _block_for(self.host, request)
        if conn.sock is None:
            try:
                conn.connect(self.deadline)
            except OSError as err:  # refused, unreachable, connect timeout, TLS
                conn.close()
                return self._failure(err, connected=False)
        try:
            conn.send(_encode(request, block), self.deadline)
        except OSError as err:
            conn.close()
            return self._failure(err)
        return None

    def _receive(self, i: int) -> Answer | TransportError:
        conn = self.conns[i]
        try:
            while True:
                answer = conn.read_answer(self.deadline)
                if self._ours(i, answer):
                    return answer
        except TimeoutError as err:
            self._leave_late(i)
            return self._failure(err)
        except OSError as err:
            conn.close()
            return self._failure(err)

    def _ours(self, i: int, answer: Answer) -> bool:
        """Whether ``answer`` is request ``i``'s. One that is not (a confused server or proxy answered
        something nobody asked for) is skipped: the next answer on the connection is read as ours, and
        the connection is never reused. After ``MAX_SKIPPED`` the exchange fails."""
        expect = self.requests[i].expect
        if expect is None or expect(answer):
            return True
        conn = self.conns[i]
        conn.skip_answer()
        self.skipped[i] = self.skipped.get(i, 0) + 1
        if self.skipped[i] > MAX_SKIPPED:
            conn.close()
            raise BadAnswerError(f"{self.skipped[i]} answers in a row were meant for other requests")
        return False

    def _leave_late(self, i: int) -> None:
        """The deadline passed with the answer still coming: give the connection to the late-answer
        reader when the caller wants the answer anyway, else close it (it must never be reused)."""
        conn = self.conns[i]
        if self.late_answer is not None and conn.sock is not None:
            late.reader().adopt(conn, self.late_answer, self.requests[i].expect)
            self.conns[i] = Connection(conn.scheme, conn.host, conn.port)  # not checked back in
        else:
            conn.close()

    def _receive_all(self, indexes: list[int]) -> dict[int, Answer | TransportError]:
        """The answer on every connection of a batch, with one ``poll`` for all of them."""
        answers: dict[int, Answer | TransportError] = {}
        if len(indexes) <= 1 or not hasattr(select, "poll"):
            for i in indexes:  # not a comprehension: a frame of its own, per batch
                answers[i] = self._receive(i)
            return answers
        waiting: dict[int, int] = {}  # fd -> index
        poller = select.poll()
        for i in indexes:
            sock = self.conns[i].sock
            assert sock is not None
            waiting[sock.fileno()] = i
            poller.register(sock, READABLE | select.POLLERR | select.POLLHUP)
        first = True
        while waiting:
            remaining = self.deadline.remaining()
            if not first and remaining > GATHER:
                time.sleep(GATHER)  # let the rest of the batch's answers arrive: one wake-up for them all
                remaining = self.deadline.remaining()
            first = False
            ready = poller.poll(int(remaining * 1000) + 1) if remaining > 0 else []
            if not ready:
                break
            for fd, _ in ready:
                i = waiting[fd]
                conn = self.conns[i]
                answer: Answer | TransportError | None
                try:
                    got = conn.receive_some()
                    while got is not None and not self._ours(i, got):
                        got = conn.receive_some()
                    answer = got
                except OSError as err:
                    conn.close()
                    answer = self._failure(err)
                if answer is not None or conn.sock is None:
                    del waiting[fd]
                    poller.unregister(fd)
                    answers[i] = answer if answer is not None else self._failure(
                        BadAnswerError("the server closed the connection before answering"))
        for i in waiting.values():
            self._leave_late(i)
            answers[i] = self._failure(TimeoutError("timed out"))
        return answers


def _may_resend(request: Request, outcome: object) -> bool:
    """A kept-alive connection that the server reset or closed before any byte of an answer is most
    often one it closed while idle, just as we used it. An idempotent request is sent again once, on
    a new connection. A create (POST) is not: the server may have taken it, and a duplicate task is
    worse than a task the publisher could not track."""
    cause = getattr(outcome, "__cause__", None)
    return (request.method != "POST" and isinstance(outcome, TransportError)
            and isinstance(cause, (ConnectionResetError, BrokenPipeError, ClosedBeforeAnswer)))
