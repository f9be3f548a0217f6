"""HTTP transport: one keep-alive ``requests.Session`` per process.

A new TCP+TLS connection per call is what makes naive tracking slow, so every call in a process
shares one session (and its connection pool). After ``fork`` the child drops the parent's session:
sockets inherited from the parent must never be written by two processes.

Errors are mapped to the exceptions in ``taskbadger.exceptions``; none of them carries the key.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
from requests.adapters import HTTPAdapter

from . import config as _config
from . import fastpath
from .exceptions import (
    ConnectError,
    InvalidData,
    NotFound,
    RateLimited,
    ReadTimeout,
    ServerError,
    TaskbadgerException,
    TransportError,
    Unauthorized,
    UnexpectedStatus,
    ValidationError,
)
from .models import has_control_characters
from .version import __version__

log = logging.getLogger("taskbadger")

USER_AGENT = f"taskbadger-python/{__version__} (python {platform.python_version()}; requests {requests.__version__})"
MONITOR_HEADER = "X-TASKBADGER-MONITOR"
_FAST_HEADERS = {"User-Agent": USER_AGENT, "Accept": "application/json"}
#: Paths below the tasks URL: nothing but id segments, so no byte from a caller changes the request line.
_PATH = re.compile(r"(?:[A-Za-z0-9_-]{1,64}/)*")


class Credential(str):
    """The ``Authorization`` header value. It masks itself wherever it is printed: Django's debug page
    (``DEBUG = True``) shows every frame's local variables with ``repr``, and Django applies
    ``sensitive_variables`` only when ``DEBUG`` is False, so a plain string in a local would show the key
    there. The value sent on the wire is the string itself."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'Bearer ***'"

    def __reduce__(self) -> Any:  # never pickled with the key in it
        return (str, ("Bearer ***",))


def authorization(config: _config.Config) -> Credential:
    return Credential("Bearer " + config.token)


def check_request(path: str, headers: Mapping[str, str] | None) -> None:
    """Refuse, before anything is sent, a path or header value that could change the request's shape."""
    if not _PATH.fullmatch(path):
        raise InvalidData(f"{path[:80]!r} is not a Task Badger task path: task ids are letters, digits, - and _")
    for name, value in (headers or {}).items():
        if not isinstance(value, str) or has_control_characters(value) or has_control_characters(name):
            raise InvalidData(f"the value of header {name[:40]!r} contains control characters; it was not sent")


def scrub(err: BaseException) -> BaseException:
    """Drop the tracebacks of ``err`` and the exceptions chained to it. Frames of the HTTP stack hold the
    request's bytes (the key among them) in local variables, and debug pages and crash reporters print
    the frames of chained exceptions too. The messages stay."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
    return err

_session: requests.Session | None = None
_session_pid: int | None = None
_lock = threading.Lock()


def _new_session() -> requests.Session:
    session = requests.Session()
    # Worker pools run many threads; give each a pooled connection instead of churning sockets.
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
    # Proxies and .netrc from the environment still apply; TLS verification stays on.
    return session


def get_session() -> requests.Session:
    """This process's session, created on first use and again after a fork."""
    global _session, _session_pid
    pid = os.getpid()
    session = _session
    if session is not None and _session_pid == pid:
        return session
    with _lock:
        if _session is None or _session_pid != pid:
            _session, _session_pid = _new_session(), pid
        return _session


def _forget_session_after_fork() -> None:
    # The child must not reuse (or close) sockets that belong to the parent: just drop them.
    global _session, _session_pid, _lock
    _session, _session_pid, _lock = None, None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_session_after_fork)


def close() -> None:
    """Close this process's connections (a new session is made on next use)."""
    global _session
    with _lock:
        session, _session = _session, None
    if session is not None and _session_pid == os.getpid():
        session.close()


def _require_config(config: _config.Config | None) -> _config.Config:
    config = config or _config.get_config()
    if config is None:
        from .exceptions import MissingConfiguration

        raise MissingConfiguration(["token"])
    return config


def request(
    method: str,
    path: str = "",
    *,
    json_body: Any = None,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    config: _config.Config | None = None,
    timeout: tuple[float, float] | None = None,
    fast: bool = False,
    parse: bool = True,
) -> Any:
    """Send one request to ``{tasks_url}{path}`` and return the decoded JSON (None for 204, or
    when ``parse`` is False).

    ``fast``: use this thread's lean keep-alive connection (``taskbadger.fastpath``) instead of the
    requests session; for the delivery hot paths. Falls back to requests when a proxy applies.

    Raises TransportError subclasses when no answer came, UnexpectedStatus subclasses on an
    error status.
    """
    config = _require_config(config)
    check_request(path, headers)
    url = config.tasks_url + path
    timeout = timeout or config.timeout
    send_headers = {"Authorization": authorization(config)}
    if headers:
        send_headers.update(headers)
    data = None
    if json_body is not None:
        send_headers["Content-Type"] = "application/json"
        data = json.dumps(json_body, separators=(",", ":")).encode()
    query = {k: v for k, v in (params or {}).items() if v is not None}
    if fast and fastpath.usable_for(config.host):
        target = urlsplit(url).path + (f"?{urlencode(query)}" if query else "")
        status, response_headers, content = fastpath.request(
            config.host, timeout, method, target, data, {**_FAST_HEADERS, **send_headers})
        return _decode(status, response_headers, content, parse)
    try:
        response = get_session().request(method, url, data=data, params=query, headers=send_headers,
                                         timeout=timeout)
    except requests.exceptions.RequestException as err:
        raise _transport_error(config.host, timeout, err) from scrub(err)
    return _decode(response.status_code, response.headers, response.content, parse)


def _transport_error(host: str, timeout: tuple[float, float], err: requests.exceptions.RequestException
                     ) -> TransportError:
    if isinstance(err, requests.exceptions.ConnectTimeout):
        return ConnectError(f"Could not connect to {host} in time: {_describe(err)}")
    if isinstance(err, requests.exceptions.ReadTimeout):
        return ReadTimeout(f"{host} did not answer within {timeout[1]} s")
    if isinstance(err, requests.exceptions.ConnectionError) and _is_connect_failure(err):
        return ConnectError(f"Could not connect to {host}: {_describe(err)}")
    if isinstance(err, requests.exceptions.ConnectionError):
        return TransportError(f"Connection to {host} failed: {_describe(err)}")
    return TransportError(f"Request to {host} failed: {_describe(err)}")


def send_many(calls: list[tuple[str, str, Any]], config: _config.Config | None = None) -> list[Exception | None]:
    """Send ``(method, path, json_body)`` calls without reading the answers back, as one batch on
    this thread's lean connections (``taskbadger.fastpath``). Returns, per call, None or the error."""
    config = _require_config(config)
    results: list[Exception | None] = []
    if not fastpath.usable_for(config.host):
        for method, path, body in calls:
            try:
                request(method, path, json_body=body, config=config, parse=False)
                results.append(None)
            except TaskbadgerException as err:
                results.append(err)
        return results
    base = urlsplit(config.tasks_url).path
    headers = {**_FAST_HEADERS, "Authorization": authorization(config), "Content-Type": "application/json"}
    results_at: dict[int, Exception] = {}
    wire: list[fastpath.Call] = []
    for i, (method, path, body) in enumerate(calls):
        try:
            check_request(path, None)
        except InvalidData as err:
            results_at[i] = err
            continue
        wire.append((method, base + path, json.dumps(body, separators=(",", ":")).encode(), headers))
    answers = iter(fastpath.request_many(config.host, config.timeout, wire) if wire else ())
    raw = [results_at[i] if i in results_at else next(answers) for i in range(len(calls))]
    for answer in raw:
        if isinstance(answer, Exception):
            results.append(answer)
            continue
        try:
            _decode(*answer, parse=False)
            results.append(None)
        except TaskbadgerException as err:
            results.append(err)
    return results


def _is_connect_failure(err: requests.exceptions.ConnectionError) -> bool:
    """True when the connection was never established (so the request never left)."""
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    inner = err.args[0] if err.args else None
    if isinstance(inner, MaxRetryError):  # requests wraps urllib3's error
        inner = inner.reason
    return isinstance(inner, NewConnectionError)


def _describe(err: Exception) -> str:
    # requests' messages name the URL (no credentials in it) and the low-level reason.
    text = str(err)
    return text if len(text) <= 300 else text[:297] + "..."


def _decode(status: int, headers: Mapping[str, str], content: bytes, parse: bool = True) -> Any:
    if 200 <= status < 300:
        if not parse or status == 204 or not content:
            return None
        try:
            return json.loads(content)
        except ValueError as err:
            raise TaskbadgerException(f"Task Badger API answered {status} with a body that is not JSON") from err
    message, errors = _error_message(content)
    if status == 400:
        raise ValidationError(status, content, message, errors=errors)
    if status in (401, 403):
        raise Unauthorized(status, content, message or "the API key was refused")
    if status == 404:
        raise NotFound(status, content, message)
    if status == 429:
        raise RateLimited(status, content, message, retry_after=_retry_after(headers.get("retry-after")))
    if status >= 500:
        raise ServerError(status, content, message)
    raise UnexpectedStatus(status, content, message)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare enough to fall back to our own backoff


def _error_message(content: bytes) -> tuple[str, dict[str, list[str]]]:
    text = content.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        return text[:500], {}
    if isinstance(body, dict):
        if "detail" in body and len(body) == 1:
            return str(body["detail"]), {}
        errors = {str(k): [str(m) for m in (v if isinstance(v, list) else [v])] for k, v in body.items()}
        return "; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()), errors
    return str(body)[:500], {}
