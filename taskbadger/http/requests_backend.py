"""The ``requests`` transport: one keep-alive ``requests.Session`` per process.

It serves the public synchronous API (``taskbadger.create_task`` …, ``Task.update``), and every request
when a proxy from the environment applies to the API host (``HTTPS_PROXY`` …): proxies, ``.netrc``
and the CA bundle settings of the environment apply as in any ``requests`` program. TLS
verification stays on. A forked child makes its own session: sockets inherited from the parent must
never be written by two processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import requests
from requests.adapters import HTTPAdapter

from .._runtime import PerProcess
from ..config import Config
from ..exceptions import TransportError
from .errors import Answer, failure
from .request import Request


def _new_session() -> requests.Session:
    session = requests.Session()
    # Worker pools run many threads; give each a pooled connection instead of churning sockets.
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


_session: PerProcess[requests.Session] = PerProcess(_new_session)


def session() -> requests.Session:
    """This process's session (``taskbadger.Session()`` yields it)."""
    return _session.get()


class RequestsTransport:
    def exchange(self, config: Config, request: Request) -> Answer:
        timeout = config.timeout
        try:
            response = session().request(request.method, request.url, data=request.body,
                                         headers=dict(request.headers), timeout=timeout)
        except requests.exceptions.RequestException as err:
            raise _failure(config.host, timeout, err)  # noqa: B904  (its cause is set, scrubbed)
        return response.status_code, _LowerCaseView(response.headers), response.content

    def exchange_many(self, config: Config, requests_: Sequence[Request]) -> list[Answer | TransportError]:
        answers: list[Answer | TransportError] = []
        for request in requests_:
            try:
                answers.append(self.exchange(config, request))
            except TransportError as err:
                answers.append(err)
        return answers


class _LowerCaseView(dict):
    """requests' headers are case-insensitive already; this only gives them lower-case names."""

    def __init__(self, headers: requests.structures.CaseInsensitiveDict) -> None:
        super().__init__((k.lower(), v) for k, v in headers.items())


def _failure(host: str, timeout: tuple[float, float], err: requests.exceptions.RequestException) -> TransportError:
    connected = not (isinstance(err, requests.exceptions.ConnectTimeout) or _never_connected(err))
    cause: BaseException = TimeoutError(str(err)) if isinstance(err, requests.exceptions.ReadTimeout) else err
    result = failure(host, timeout, cause, connected=connected)
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
