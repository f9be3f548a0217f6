"""The one map from an HTTP outcome to our exceptions: an answer's status, or a failure to get one.

None of them carries the key, and none carries a traceback of the HTTP stack below it: those frames
hold the request's bytes in local variables, and debug pages and crash reporters print the frames of
chained exceptions too (``scrub``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from ..exceptions import (
    BadAnswer,
    ConnectError,
    NotFound,
    RateLimited,
    ReadTimeout,
    ServerError,
    TransportError,
    Unauthorized,
    UnexpectedStatus,
    ValidationError,
)


class BadAnswerError(OSError):
    """The server's bytes are not a usable HTTP answer (the transports raise it; ``failure`` maps it)."""


#: What a transport returns for one request: (status, headers with lower-case names, body). The pooled transport
#: keeps only the headers the client reads (``Retry-After``, and the framing ones of an answer it had to check),
#: and none of a whole 2xx answer on a kept-alive connection (``connection._Quick``).
Answer = tuple[int, Mapping[str, str], bytes]


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"{text} is too large for a JSON number")
    return number


#: JSON as the standard has it: Python's ``json`` also takes ``NaN`` and ``Infinity``, and reads ``1e999`` as an
#: infinity. An answer holding them is not the API's (a confused proxy): taken as it is, such a value would go
#: on into what we write (the progress view's own JSON, which browsers refuse), so it is refused here.
_DECODER = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)


def loads(content: bytes | str) -> Any:
    """The JSON value of ``content``; ValueError when it is not standard JSON."""
    text = (content.decode("utf-8") if isinstance(content, bytes) else content).strip(" \t\n\r")
    if text.startswith("\ufeff"):  # a byte order mark, which a proxy may add: readers may ignore it
        text = text[1:].lstrip(" \t\n\r")
    try:
        value, end = _DECODER.raw_decode(text)
    except RecursionError:  # nested deeper than Python's parser goes: not an answer of the API's either
        raise ValueError("JSON nested too deeply") from None
    if end != len(text):
        raise ValueError("extra data after the JSON value")
    return value


#: What a 401 and a 403 say when the API gives no message, and what to do about each.
_KEY_REFUSED = {
    401: ("the API key was refused", "Check the API key (TASKBADGER_API_KEY, init(token=...) or "
          "TASKBADGER['API_KEY']): copy the project key from the project's settings page in Task Badger."),
    403: ("the API key may not do this", "The API key was taken but may not do this: check that it is a key of this "
          "project (TASKBADGER_API_KEY, init(token=...) or TASKBADGER['API_KEY']), copied from the project's settings "
          "page in Task Badger."),
}


def decode(status: int, headers: Mapping[str, str], content: bytes, parse: bool = True) -> Any:
    """The JSON body of a 2xx answer (None for 204, or when ``parse`` is False); an exception otherwise."""
    if 200 <= status < 300:
        if not parse or status == 204 or not content:
            return None
        try:
            return loads(content)
        except ValueError:
            raise BadAnswer(f"Task Badger API answered {status} with a body that is not JSON "
                            f"({_describe(repr(content[:60]))})") from None
    message, errors = _error_message(content)
    if status == 400:
        raise ValidationError(status, content, message, errors=errors)
    if status in _KEY_REFUSED:
        default, hint = _KEY_REFUSED[status]
        refused = Unauthorized(status, content, message or default)
        refused.args = (f"{refused.args[0].rstrip('.')}. {hint}",)
        raise refused
    if status == 404:
        raise NotFound(status, content, message)
    if status == 429:
        raise RateLimited(status, content, message, retry_after=_retry_after(headers.get("retry-after")))
    if status >= 500:
        raise ServerError(status, content, message)
    raise UnexpectedStatus(status, content, message)


def failure(host: str, err: BaseException, connected: bool = True, budget: float | None = None) -> TransportError:
    """Our exception for a request that got no usable answer, ``err`` scrubbed as its cause.
    ``connected``: whether the connection had been established (only a failure before it means the
    request certainly never reached the server). ``budget``: the call's deadline in seconds, named
    when it ran out."""
    if not connected:
        result: TransportError = ConnectError(f"Could not connect to {host}: {_describe(err)}")
    elif isinstance(err, TimeoutError):
        within = f" within {budget:g} s" if budget is not None else " in time"
        result = ReadTimeout(f"{host} did not answer{within}")
    elif isinstance(err, BadAnswerError):
        result = BadAnswer(f"{host} answered with something that is not an answer to our request: {_describe(err)}")
    else:
        result = TransportError(f"Connection to {host} failed: {_describe(err)}")
    result.__cause__ = scrub(err)
    return result


def scrub(err: BaseException) -> BaseException:
    """Drop the tracebacks of ``err`` and of the exceptions chained to it; their messages stay."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
    return err


def _describe(err: object) -> str:
    text = str(err) or repr(err)
    return text if len(text) <= 300 else text[:297] + "..."


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare enough to fall back to our own backoff


def _error_message(content: bytes) -> tuple[str, dict[str, list[str]]]:
    text = content.decode("utf-8", "replace")
    try:
        body = loads(text)
    except ValueError:
        return text[:500], {}
    if isinstance(body, dict):
        if "detail" in body and len(body) == 1:
            return str(body["detail"])[:500], {}
        errors = {str(k): [str(m) for m in (v if isinstance(v, list) else [v])] for k, v in body.items()}
        return "; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items())[:1000], errors
    return str(body)[:500], {}
