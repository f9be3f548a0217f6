"""Every request the SDK sends: built in ``request``, sent by a ``Transport`` before one ``Deadline``
(``deadline``), decoded in ``errors``.

Two transports share that code:

* ``PooledTransport`` (``pooled``): every request, at a small fraction of the CPU per request of
  ``requests``, in batches for the senders, with a deadline for the whole exchange and bounded answers;
* ``RequestsTransport`` (``requests_backend``): every request when a proxy from the environment applies
  to the API host (``HTTPS_PROXY`` …), with the same deadlines and bounds.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from ..config import Config
from ..exceptions import TaskbadgerException, TransportError
from .deadline import Deadline
from .errors import Answer, decode
from .pooled import LateAnswer, PooledTransport
from .request import MONITOR_HEADER, NOT_PARSED, USER_AGENT, Credential, JsonExpectation, Request, build_request

if TYPE_CHECKING:
    import requests

__all__ = ["MONITOR_HEADER", "NOT_PARSED", "USER_AGENT", "Answer", "Credential", "Deadline", "JsonExpectation",
           "LateAnswer", "Request", "Transport", "build_request", "decode", "parsed", "send", "send_many", "session",
           "transport_for"]


class Transport(Protocol):
    def exchange(self, config: Config, request: Request, deadline: Deadline | None = None,
                 late_answer: LateAnswer | None = None) -> Answer:
        """Send one request; its whole answer before ``deadline``, or TransportError when none came."""
        ...

    def exchange_many(self, config: Config, requests: Sequence[Request], deadline: Deadline | None = None,
                      late_answer: LateAnswer | None = None) -> list[Answer | TransportError]:
        """Send several requests together; per request, its answer or the TransportError it met."""
        ...


_pooled_transport = PooledTransport()


def transport_for(config: Config) -> Transport:
    """The pooled transport, unless a proxy from the environment applies to the API host."""
    if _proxied(config.host):
        from . import requests_backend

        return requests_backend.transport
    return _pooled_transport


def session() -> requests.Session:
    """The ``requests`` session of the requests transport (made on first use)."""
    from . import requests_backend

    return requests_backend.session()


# `requests` is imported only where a proxy may apply: it is two fifths of the time `import taskbadger` takes
# (65 of 150 ms), which every worker, web process and `taskbadger run` would pay for nothing.
@lru_cache(maxsize=8)
def _proxied(host: str) -> bool:
    if sys.platform.startswith("linux") and not any(name.lower().endswith("_proxy") for name in os.environ):
        return False  # on Linux, proxies come only from the environment (macOS and Windows have system settings)
    from requests.utils import get_environ_proxies

    return bool(get_environ_proxies(host))


def send(config: Config, request: Request, deadline: Deadline | None = None,
         late_answer: LateAnswer | None = None) -> Any:
    """Send ``request`` and return the answer's JSON (None for 204). ``deadline``: the whole exchange's
    (``config``'s call deadline when None).

    Raises TransportError subclasses when no usable answer came, UnexpectedStatus subclasses on an error
    status.
    """
    return parsed(request, transport_for(config).exchange(config, request, deadline, late_answer))


def parsed(request: Request, answer: Answer) -> Any:
    """``decode(answer)``, reusing the JSON the request's expectation parsed already (a body parsed once)."""
    status, headers, body = answer
    if 200 <= status < 300 and isinstance(request.expect, JsonExpectation):
        payload = request.expect.payload_of(body)
        if payload is not NOT_PARSED:
            return payload
    return decode(status, headers, body)


def send_many(config: Config, requests: Sequence[Request], deadline: Deadline | None = None) -> list[Any]:
    """Send ``requests`` together; per request, its decoded JSON answer (None for 204), or the error it met
    (an ``Exception`` instance)."""
    results: list[Any] = []
    for request, answer in zip(requests, transport_for(config).exchange_many(config, requests, deadline),
                               strict=True):
        if isinstance(answer, TransportError):
            results.append(answer)
            continue
        try:
            results.append(parsed(request, answer))
        except TaskbadgerException as err:
            results.append(err)
    return results
