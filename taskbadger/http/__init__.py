"""Every request the SDK sends: built in ``request``, sent by a ``Transport``, decoded in ``errors``.

Two transports share that code:

* ``RequestsTransport`` (``requests_backend``): the public synchronous API, and everything when a
  proxy applies to the API host;
* ``PooledTransport`` (``pooled``): the hot paths, the create at publish and the worker's updates,
  at a small fraction of the CPU per request, and in batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Protocol

from requests.utils import get_environ_proxies

from ..config import Config
from ..exceptions import TaskbadgerException, TransportError
from .errors import Answer, decode
from .pooled import PooledTransport
from .request import MONITOR_HEADER, USER_AGENT, Credential, Request, build_request
from .requests_backend import RequestsTransport, session

__all__ = ["MONITOR_HEADER", "USER_AGENT", "Answer", "Credential", "Request", "Transport", "build_request",
           "decode", "default_transport", "hot_path_transport", "send", "send_many", "session"]


class Transport(Protocol):
    def exchange(self, config: Config, request: Request) -> Answer:
        """Send one request; its answer, or TransportError when none came."""
        ...

    def exchange_many(self, config: Config, requests: Sequence[Request]) -> list[Answer | TransportError]:
        """Send several requests together; per request, its answer or the TransportError it met."""
        ...


_requests_transport = RequestsTransport()
_pooled_transport = PooledTransport()


def default_transport() -> Transport:
    return _requests_transport


def hot_path_transport(config: Config) -> Transport:
    """The pooled transport, unless a proxy from the environment applies to the API host."""
    return _requests_transport if _proxied(config.host) else _pooled_transport


@lru_cache(maxsize=8)
def _proxied(host: str) -> bool:
    return bool(get_environ_proxies(host))


def send(config: Config, request: Request, transport: Transport | None = None, parse: bool = True) -> Any:
    """Send ``request`` and return the answer's JSON (None for 204, or when ``parse`` is False).

    Raises TransportError subclasses when no answer came, UnexpectedStatus subclasses on an error status.
    """
    return decode(*(transport or default_transport()).exchange(config, request), parse=parse)


def send_many(config: Config, requests: Sequence[Request], transport: Transport) -> list[Exception | None]:
    """Send ``requests`` together without reading their bodies; per request, None or the error it met."""
    results: list[Exception | None] = []
    for answer in transport.exchange_many(config, requests):
        if isinstance(answer, TransportError):
            results.append(answer)
            continue
        try:
            decode(*answer, parse=False)
            results.append(None)
        except TaskbadgerException as err:
            results.append(err)
    return results
