"""A lean keep-alive HTTP connection per thread, for the delivery hot paths.

Every tracked Celery task costs one create at publish and (usually) one PATCH in the worker. Through
``requests`` each costs ~440 µs of CPU (environment proxy lookups, hooks, adapters) — about as much
as running a no-op task — while a kept-alive ``http.client`` connection costs ~60 µs (measured with
the stand-in API on this project's machine). So those two calls go through this module; the public
synchronous API keeps the process-wide ``requests.Session`` of ``taskbadger.transport``.

It keeps what matters from requests: TLS verification with the same CA bundle (``REQUESTS_CA_BUNDLE``
/ ``CURL_CA_BUNDLE``, else certifi's), connect and read timeouts, keep-alive with a check for
connections the server closed while idle, and the same error types. When a proxy applies to the
API host (``HTTPS_PROXY`` …) it is not used at all: the caller falls back to requests.
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import ssl
import threading
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


class _PerThread(threading.local):
    conns: list[http.client.HTTPConnection] | None = None
    key: tuple | None = None
    pid: int = 0


_local = _PerThread()


def _connection(host: str, timeout: tuple[float, float], slot: int = 0) -> http.client.HTTPConnection:
    """This thread's connection number ``slot`` to ``host`` (a thread sending a batch uses several)."""
    parts = urlsplit(host)
    key = (parts.scheme, parts.hostname, parts.port, timeout)
    if _local.conns is None or _local.pid != os.getpid() or _local.key != key:
        if _local.conns is not None and _local.pid == os.getpid():
            for old in _local.conns:
                old.close()
        # after a fork the sockets are the parent's: leave them alone
        _local.conns, _local.key, _local.pid = [], key, os.getpid()
    conns = _local.conns
    while len(conns) <= slot:
        if parts.scheme == "https":
            conns.append(http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout[0],
                                                     context=_tls_context()))
        else:
            conns.append(http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout[0]))
    conn = conns[slot]
    if conn.sock is not None and _closed_by_peer(conn.sock):
        conn.close()  # the server closed it while idle: connect again, quietly
    return conn


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)  # an idle keep-alive socket is readable only at EOF (or on garbage)


Call = tuple[str, str, "bytes | None", dict[str, str]]  # method, target (path and query), body, headers
Result = tuple[int, http.client.HTTPMessage, bytes]


def request(host: str, timeout: tuple[float, float], method: str, target: str, body: bytes | None,
            headers: dict[str, str]) -> Result:
    """Send one request on this thread's connection to ``host``; return (status, headers, body)."""
    result = request_many(host, timeout, [(method, target, body, headers)])[0]
    if isinstance(result, Exception):
        raise result
    return result


def request_many(host: str, timeout: tuple[float, float], calls: list[Call]) -> list[Result | Exception]:
    """Send every call, each on its own kept-alive connection, then read the answers.

    One blocking wait covers the whole batch: with a slow API that is most of the cost of a request
    (a thread wake-up and kernel time), so a busy dispatcher sends its queue this way.
    Returns, per call, (status, headers, body) or the exception that call met.
    """
    results: list[Result | Exception | None] = [None] * len(calls)
    sent: list[tuple[int, http.client.HTTPConnection]] = []
    for i, (method, target, body, headers) in enumerate(calls):
        conn = _connection(host, timeout, slot=i)
        if conn.sock is None:
            try:
                conn.connect()
            except (OSError, http.client.HTTPException) as err:  # refused, unreachable, connect timeout, TLS
                conn.close()
                results[i] = ConnectError(f"Could not connect to {host}: {err}")
                results[i].__cause__ = err
                continue
        try:
            conn.sock.settimeout(timeout[1])
            conn.request(method, target, body=body, headers=headers)
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            results[i] = _failure(host, timeout, err)
            continue
        sent.append((i, conn))
    for i, conn in sent:
        try:
            response = conn.getresponse()
            results[i] = (response.status, response.headers, response.read())
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            results[i] = _failure(host, timeout, err)
            continue
        if response.will_close:
            conn.close()
    return results  # type: ignore[return-value]


def _failure(host: str, timeout: tuple[float, float], err: Exception) -> TransportError:
    if isinstance(err, TimeoutError):
        failure: TransportError = ReadTimeout(f"{host} did not answer within {timeout[1]} s")
    else:
        failure = TransportError(f"Connection to {host} failed: {err!r}")
    failure.__cause__ = err
    return failure
