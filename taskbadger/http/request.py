"""The one place a request is built: URL, request target, headers (the key among them) and body.

Everything that reaches a request line or a header is checked here, for both transports: the only path is
a task id (letters, digits, ``-`` and ``_``), checked here and nowhere else, and header values never hold a
control character.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import urlencode, urlsplit

from .._runtime import log_throttled, short
from ..config import Config
from ..exceptions import InvalidData
from ..models import has_control_characters, is_task_id, storable, storable_json
from ..version import __version__
from .errors import Answer, loads

USER_AGENT = f"taskbadger-python/{__version__} (python {platform.python_version()})"
MONITOR_HEADER = "X-TASKBADGER-MONITOR"
#: Request bodies: compact, and NaN or infinity refused (the API's JSON has neither). One encoder for every
#: request (it keeps no state between calls): ``json.dumps`` with options builds a new one per call.
_BODY_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
#: ``json``'s C encoder, called as ``JSONEncoder.encode`` calls it, without its two Python frames (a fifth of the
#: cost of encoding a worker's update: 20k instructions -> 16k); None where ``json`` has no C speedups.
_C_MAKE_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)


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


#: ``JsonExpectation.payload_of``: the answer's body was not parsed by the expectation.
NOT_PARSED: Any = object()


class JsonExpectation:
    """Tells whether an answer is meant for its request by its JSON (``accepts``), and keeps what it parsed,
    so the answer's body is parsed once, not once here and again by whoever reads it."""

    __slots__ = ("_body", "_payload")

    def __init__(self) -> None:
        self._body: bytes | None = None
        self._payload: Any = NOT_PARSED

    def __call__(self, answer: Answer) -> bool:
        status, _, body = answer
        if not 200 <= status < 300 or not body:
            return True
        try:
            payload = loads(body)
        except ValueError:
            return True  # not JSON at all: whoever reads the answer says so
        self._body, self._payload = body, payload
        return self.accepts(payload)

    def accepts(self, payload: Any) -> bool:
        return True

    def payload_of(self, body: bytes) -> Any:
        """The JSON of ``body`` if this expectation parsed that very body, else ``NOT_PARSED``."""
        return self._payload if body is self._body else NOT_PARSED


class Request(NamedTuple):
    """One request, checked and ready for either transport. A named tuple, not a frozen dataclass: as immutable,
    at two fifths of the cost to make (a frozen dataclass sets each field through ``object.__setattr__``; the senders
    make one per update)."""

    method: str
    url: str  # scheme://host[:port]/path?query, for the requests transport
    target: str  # /path?query, the request line's target, for the pooled transport
    headers: Mapping[str, str]
    body: bytes | None = None
    #: Tells whether an answer is meant for this request (False only for one that certainly is not: the
    #: answer to another request, sent by a confused server or proxy). None: any answer is.
    expect: Callable[[Answer], bool] | None = None


@lru_cache(maxsize=8)
def _base_headers(token: str, with_body: bool) -> Mapping[str, str]:
    # One dict per key and shape, shared by every request: the pooled transport formats a batch's
    # header block once when its requests share their headers.
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json", "Authorization": Credential("Bearer " + token)}
    if with_body:
        headers["Content-Type"] = "application/json"
    return headers


class _Tasks:
    """``build_request``'s default: the tasks URL itself, no task's. Not None, nor "": a caller's None or empty text
    given as a task id is refused, not sent to the list of tasks."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "TASKS"


#: The request is to the tasks URL (a create, a list), not to one task.
TASKS = _Tasks()


def build_request(config: Config, method: str, task_id: str | _Tasks = TASKS, *, json_body: Any = None,
                  params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
                  expect: Callable[[Answer], bool] | None = None) -> Request:
    """A request to ``{tasks_url}{task_id}/``, or to ``{tasks_url}`` without ``task_id``. Raises InvalidData, before
    anything is sent, for a task id or a header value that could change the request's shape. The task id is
    checked here only (the one place it enters a request line), for every caller and both transports."""
    global _urls
    if task_id is TASKS:
        path = ""
    elif is_task_id(task_id):
        path = f"{task_id}/"
    else:
        raise InvalidData(f"{short(task_id)} is not a Task Badger task id (letters, digits, - and _)")
    try:
        body = None if json_body is None else _encoded(json_body)
    except (TypeError, ValueError, RecursionError) as err:
        raise InvalidData(f"the task's fields cannot be encoded as JSON ({err}); convert such values in data "
                          "(dates, sets, objects, NaN) to strings, numbers, lists or dicts first") from None
    urls = _urls
    if urls[0] is not config:  # one read: another thread may replace it meanwhile, never half of it
        tasks_url = config.tasks_url
        urls = _urls = (config, tasks_url, urlsplit(tasks_url).path, _base_headers(config.token, False),
                        _base_headers(config.token, True))
    all_headers = urls[3] if body is None else urls[4]
    if headers:
        for name, value in headers.items():
            if not isinstance(value, str) or has_control_characters(value) or has_control_characters(name):
                raise InvalidData(f"the value of header {name[:40]!r} contains control characters; it was not sent")
        all_headers = {**all_headers, **headers}
    if params:
        query = {k: v for k, v in params.items() if v is not None}
        if query:
            try:
                path += f"?{urlencode(query)}"
            except UnicodeEncodeError:
                raise InvalidData(f"a query parameter ({', '.join(query)[:80]}) holds bytes that are not UTF-8 text; "
                                  "it was not sent") from None
    # (``Request.__new__`` is a Python function that makes this same tuple: a frame less, 1.5k instructions less)
    return _new_tuple(Request, (method, urls[1] + path, urls[2] + path, all_headers, body, expect))


_new_tuple = tuple.__new__


def _encoded(json_body: Any) -> bytes:
    """The body's JSON. Text the API cannot store (``models.storable``: a lone surrogate, which is what Python makes of
    bytes that are not UTF-8, from a command line, the environment or a file name; NUL, from binary output) is sent
    with U+FFFD in its place, with a warning: JSON carries it as an escape (``\\udcff``, ``\\u0000``) that a store of
    UTF-8 text refuses, and with it the whole create or update. Only a body whose escaped JSON holds ``\\ud`` or
    ``\\u0000`` (rare: a character beyond the BMP, an emoji, is escaped as a surrogate pair) is looked at."""
    text = _json_text(json_body)
    if "\\ud" in text or "\\u0000" in text:
        # storable() stops at 100 levels (its recursion would fail before the encoder's): what lies deeper is
        # repaired in the text, where a lone surrogate is told from a pair only by its neighbour
        repaired = storable_json(_json_text(storable(json_body)))
        if repaired != text:
            log_throttled("not-storable", 60.0, logging.WARNING,
                          "Task Badger: a task's fields hold bytes that are not UTF-8 text or NUL characters (a file "
                          "name, an argument or output read as bytes?); they are sent as U+FFFD. Decode such bytes "
                          "yourself to keep them")
            text = repaired
    return text.encode()


#: The last configuration's tasks URL, its path (the request target's start), and its base headers without and with a
#: body: ``Config.tasks_url`` formats it on every read (twice per request before), ``_base_headers`` hashes the key.
_urls: tuple[Config | None, str, str, Mapping[str, str], Mapping[str, str]] = (None, "", "", {}, {})


#: The request fields' names (the API's ``TaskRequest``, and ``parent``) as a JSON object writes them, with their colon.
_FIELD_KEYS = {name: f'"{name}":' for name in (
    "name", "queue", "external_id", "status", "value", "value_max", "data", "start_time", "end_time", "time_to_start",
    "max_runtime", "stale_timeout", "tags", "parent")}
#: ``json``'s own string writer (C where ``json`` has its speedups): the text the encoder writes for a string.
_ESCAPED = json.encoder.encode_basestring_ascii


def _json_text(value: Any) -> str:
    """``_BODY_ENCODER.encode(value)``: the same text, the same errors."""
    if value.__class__ is dict:
        # A body of the API's field names with text, whole-number or null values (a worker's update: its status,
        # start_time and end_time) is written here, each value by json's own string writer: the C encoder costs as
        # much to set up and walk a small dict as to write it (16k instructions for a worker's three fields; 7k here).
        # Any other key or value (data, tags, floats, booleans, subclasses) goes to the encoder whole.
        parts: list[str] = []
        for key, item in value.items():
            prefix = _FIELD_KEYS.get(key)
            if prefix is None:
                break
            kind = item.__class__
            if kind is str:
                parts.append(prefix + _ESCAPED(item))
            elif item is None:
                parts.append(prefix + "null")
            elif kind is int:
                parts.append(prefix + int.__repr__(item))
            else:
                break
        else:
            return "{" + ",".join(parts) + "}"
    if _C_MAKE_ENCODER is None:
        return _BODY_ENCODER.encode(value)
    # a new encoder per call, as ``JSONEncoder.iterencode`` makes one: its ``markers`` (the circular-reference
    # check) are left behind when encoding fails, and must not outlive the call
    return "".join(_C_MAKE_ENCODER({}, _BODY_ENCODER.default, json.encoder.encode_basestring_ascii, None, ":", ",",
                                   False, False, False)(value, 0))


def _c_encoder_agrees() -> bool:
    """Whether calling ``json``'s C encoder directly gives ``_BODY_ENCODER``'s text and refusals here. Its arguments
    are ``json``'s own business, not a public interface: on a Python that changes them, every body would fail to
    encode (and every update be dropped as invalid), so this is checked once, at import, and the C encoder is used
    only when it agrees."""
    sample = {"name": "é\u2028\"x\"\n", "value": 3, "f": 2.5, "data": {"list": [None, True, False, -1]}}
    try:
        if _json_text(sample) != _BODY_ENCODER.encode(sample):
            return False
        _json_text({"value": float("nan")})
    except ValueError:
        return True  # NaN refused, as the encoder refuses it
    except Exception:
        return False
    return False


if _C_MAKE_ENCODER is not None and not _c_encoder_agrees():
    _C_MAKE_ENCODER = None
