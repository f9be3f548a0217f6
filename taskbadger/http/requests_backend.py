"""The ``requests`` transport: one keep-alive ``requests.Session`` per process, for proxies.

It serves every request when a proxy from the environment applies to the API host (``HTTPS_PROXY``
…): proxies, ``.netrc`` and the CA bundle settings of the environment apply as in any ``requests``
program. TLS verification stays on. A forked child makes its own session: sockets inherited from the
parent must never be written by two processes.

``requests`` times each socket operation, not the exchange: a server that trickles its answer keeps a
call going for ever. So the exchange runs in a thread of its own and the caller waits for it only until
its ``Deadline``; the thread ends when ``requests`` gives up (or the answer comes, which is then handed
to ``late_answer`` if the caller asked for it). At most ``MAX_STRAGGLERS`` such threads per process.
When no thread can start (Python 3.12+ refuses them while the interpreter shuts down, when the flush at
exit runs), the exchange runs in the caller's thread: a trickling proxy could then hold the exit past the
deadline, one timed socket operation at a time; refusing would lose the update.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import requests
from requests.adapters import HTTPAdapter

from .._runtime import PerProcess, start_daemon_thread
from ..config import Config
from ..exceptions import TransportError
from .connection import MAX_BODY_BYTES
from .deadline import Deadline
from .errors import Answer, BadAnswerError, failure
from .request import Request

#: Most exchanges running in their own threads at once in a process (each one a call that is
#: waiting, or that its caller gave up on while the API still trickles its answer).
MAX_STRAGGLERS = 16


def _new_session() -> requests.Session:
    session = requests.Session()
    # Worker pools run many threads; give each a pooled connection instead of churning sockets.
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


_session: PerProcess[requests.Session] = PerProcess(_new_session)
_slots: PerProcess[threading.BoundedSemaphore] = PerProcess(lambda: threading.BoundedSemaphore(MAX_STRAGGLERS))


def session() -> requests.Session:
    """This process's session (``taskbadger.Session()`` yields it)."""
    return _session.get()


class _Exchange:
    """One request in its own thread; the caller waits on ``done`` until its deadline."""

    def __init__(self, config: Config, request: Request, deadline: Deadline) -> None:
        self.config, self.request, self.deadline = config, request, deadline
        self.done = threading.Event()
        self.answer: Answer | None = None
        self.error: TransportError | None = None
        self.abandoned = False
        self.late_answer: Callable[[Answer], None] | None = None
        self.lock = threading.Lock()

    def run(self) -> None:
        try:
            self.answer = _exchange(self.config, self.request, self.deadline)
        except TransportError as err:
            self.error = err
        finally:
            _slots.get().release()
            with self.lock:
                self.done.set()
                late = self.late_answer if self.abandoned else None
        if late is not None and self.answer is not None:
            late(self.answer)


class RequestsTransport:
    def exchange(self, config: Config, request: Request, deadline: Deadline | None = None,
                 late_answer: Callable[[Answer], None] | None = None) -> Answer:
        deadline = deadline or Deadline.for_call(config.timeout)
        if not _slots.get().acquire(blocking=False):
            busy = OSError(f"{MAX_STRAGGLERS} calls are still waiting for the API")
            raise failure(config.host, busy, connected=False)
        call = _Exchange(config, request, deadline)
        if start_daemon_thread(call.run, "taskbadger-request") is None:
            # No thread: Python 3.12+ at interpreter shutdown (the flush at exit sends a short script's last
            # update then). The exchange runs here, each socket operation timed to the deadline.
            call.run()
        finished = call.done.wait(deadline.remaining())
        with call.lock:
            if not finished and not call.done.is_set():
                call.abandoned, call.late_answer = True, late_answer
                raise failure(config.host, TimeoutError("timed out"), budget=deadline.seconds)
        if call.error is not None:
            raise call.error
        assert call.answer is not None
        return call.answer

    def exchange_many(self, config: Config, requests_: Sequence[Request], deadline: Deadline | None = None,
                      late_answer: Callable[[Answer], None] | None = None) -> list[Answer | TransportError]:
        deadline = deadline or Deadline.for_call(config.timeout)
        answers: list[Answer | TransportError] = []
        for request in requests_:
            try:
                answers.append(self.exchange(config, request, deadline))
            except TransportError as err:
                answers.append(err)
        return answers


#: The one instance ``transport_for`` gives.
transport = RequestsTransport()


def _exchange(config: Config, request: Request, deadline: Deadline) -> Answer:
    left = max(0.001, deadline.remaining())
    timeout = (min(deadline.connect, left), left)
    try:
        response = session().request(request.method, request.url, data=request.body,
                                     headers=dict(request.headers), timeout=timeout, stream=True)
        try:
            body = response.raw.read(MAX_BODY_BYTES + 1, decode_content=True)
        finally:
            response.close()
    except requests.exceptions.RequestException as err:
        raise _failure(config.host, err, deadline)  # noqa: B904  (its cause is set, scrubbed)
    if len(body) > MAX_BODY_BYTES:
        raise failure(config.host, BadAnswerError(f"the answer's body is larger than {MAX_BODY_BYTES} bytes"))
    answer = response.status_code, _LowerCaseView(response.headers), body
    if request.expect is not None and not request.expect(answer):
        raise failure(config.host, BadAnswerError("the answer was meant for another request"))
    return answer


class _LowerCaseView(dict):
    """requests' headers are case-insensitive already; this only gives them lower-case names."""

    def __init__(self, headers: requests.structures.CaseInsensitiveDict) -> None:
        super().__init__((k.lower(), v) for k, v in headers.items())


def _failure(host: str, err: requests.exceptions.RequestException, deadline: Deadline) -> TransportError:
    connected = not (isinstance(err, requests.exceptions.ConnectTimeout) or _never_connected(err))
    cause: BaseException = TimeoutError(str(err)) if isinstance(err, requests.exceptions.ReadTimeout) else err
    result = failure(host, cause, connected=connected, budget=deadline.seconds)
    result.__suppress_context__ = True
    return result


def _never_connected(err: requests.exceptions.RequestException) -> bool:
    """True when the connection was never established (so the request never left)."""
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    if not isinstance(err, requests.exceptions.ConnectionError):
        return False
    inner = err.args[0] if err.args else None
    if isinstance(inner, MaxRetryError):  # requests wraps urllib3's error
        inner = inner.reason
    return isinstance(inner, NewConnectionError)
