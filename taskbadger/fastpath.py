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
    conn: http.client.HTTPConnection | None = None
    key: tuple | None = None
    pid: int = 0


_local = _PerThread()


def _connection(host: str, timeout: tuple[float, float]) -> http.client.HTTPConnection:
    parts = urlsplit(host)
    key = (parts.scheme, parts.hostname, parts.port, timeout)
    conn = _local.conn
    if conn is not None and (_local.pid != os.getpid() or _local.key != key):
        if _local.pid == os.getpid():
            conn.close()
        conn = None  # after a fork the socket is the parent's: leave it alone
    if conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
        conn.close()  # the server closed it while idle: connect again, quietly
    if conn is None:
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout[0],
                                               context=_tls_context())
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout[0])
        _local.conn, _local.key, _local.pid = conn, key, os.getpid()
    return conn


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)  # an idle keep-alive socket is readable only at EOF (or on garbage)


def request(host: str, timeout: tuple[float, float], method: str, target: str, body: bytes | None,
            headers: dict[str, str]) -> tuple[int, http.client.HTTPMessage, bytes]:
    """Send one request (``target``: path and query) on this thread's connection to ``host``;
    return (status, headers, body)."""
    conn = _connection(host, timeout)
    if conn.sock is None:
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as err:  # refused, unreachable, connect timeout, TLS
            conn.close()
            raise ConnectError(f"Could not connect to {host}: {err}") from err
    try:
        conn.sock.settimeout(timeout[1])
        conn.request(method, target, body=body, headers=headers)
        response = conn.getresponse()
        content = response.read()
    except TimeoutError as err:
        conn.close()
        raise ReadTimeout(f"{host} did not answer within {timeout[1]} s") from err
    except (OSError, http.client.HTTPException) as err:
        conn.close()
        raise TransportError(f"Connection to {host} failed: {err!r}") from err
    if response.will_close:
        conn.close()
    return response.status, response.headers, content
