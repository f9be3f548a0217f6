"""Typed models of what the API sends and receives, and the checks that say what a valid value is.

Values that come from outside (options, settings, message headers written by any producer) are
checked here once, where they enter, so that nothing raw reaches a message or the wire.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import re
import traceback
import uuid
from collections.abc import Mapping
from typing import Any

#: What the API issues as task ids (26 letters and digits today); a little wider for the future, but
#: never a character that could change a request line or a URL path.
_TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Organization and project slugs: they become URL path segments.
_SLUG = re.compile(r"[A-Za-z0-9_-]{1,100}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: The API's limit on a task name (and on a queue's).
MAX_NAME_LENGTH = 255
#: The API's limit on a task's external_id (the openapi contract's maxLength).
MAX_EXTERNAL_ID_LENGTH = 255
#: The API's limits on a tag's value, in characters.
MIN_TAG_LENGTH, MAX_TAG_LENGTH = 2, 255
#: The API's largest number of seconds (``stale_timeout``, ``max_runtime``: 32-bit integers).
MAX_SECONDS = 2_147_483_647
#: The longest heartbeat interval: a day (a task pinged less often is better watched with ``stale_timeout``).
MAX_HEARTBEAT_INTERVAL = 86_400.0
#: The shortest: a stale timeout is whole seconds, so closer pings tell the API nothing more, and an interval of
#: 1e-9 (from a setting, an option, or a message another producer wrote) kept a thread pinging without a pause.
MIN_HEARTBEAT_INTERVAL = 0.1
#: How the heartbeat interval's range reads in an error message.
HEARTBEAT_RANGE = f"a number of seconds from {MIN_HEARTBEAT_INTERVAL:g} to {MAX_HEARTBEAT_INTERVAL:g} (a day)"


def fitted_name(text: str) -> str:
    """``text`` cut to what the API takes for a name or a queue (``MAX_NAME_LENGTH``), marked with "…": a
    job's module path, a queue's own name or a name given on a command line may be longer, and the API would
    refuse the create (the job would run untracked)."""
    return text if len(text) <= MAX_NAME_LENGTH else text[:MAX_NAME_LENGTH - 1] + "…"


def given_data(data: Any) -> Any:
    """``data`` as an update takes it: empty (``{}``, ``None``) means "leave the task's data unchanged", as in
    the official SDK (``update(data=extra or {})`` must not wipe it)."""
    return None if not data and not isinstance(data, (int, float)) else data


def is_task_id(value: Any) -> bool:
    """True for a string shaped like an id the API issues (safe in a URL path): what ``_TASK_ID`` matches, checked
    without the regular expression (a third of its cost; a worker checks two per task)."""
    if not isinstance(value, str) or not 0 < len(value) <= 64 or not value.isascii():
        return False
    if value.isalnum():  # ASCII letters and digits only
        return True
    rest = value.replace("-", "").replace("_", "")
    return not rest or rest.isalnum()


def is_slug(value: Any) -> bool:
    return isinstance(value, str) and _SLUG.fullmatch(value) is not None


def monitor_id(value: Any) -> str | None:
    """The canonical form of a monitor id (a UUID), or None when ``value`` is not one."""
    if not isinstance(value, str) or len(value) > 64 or not value.isascii() or "_" in value \
            or any(ch.isspace() for ch in value):
        # uuid.UUID reads the digits with int(), which takes spaces, underscores and non-ASCII digits: an id cut short
        # by one character and followed by a newline became another id, sent as it was
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def is_heartbeat_interval(value: Any) -> bool:
    """Seconds between a running task's pings, from ``MIN_HEARTBEAT_INTERVAL`` to ``MAX_HEARTBEAT_INTERVAL``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and MIN_HEARTBEAT_INTERVAL <= value <= MAX_HEARTBEAT_INTERVAL


def is_count(value: Any) -> bool:
    """A whole number the API stores in a 64-bit field (``value``, ``value_max``), not a bool."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2**63 - 1


def is_whole_seconds(value: Any) -> bool:
    """A whole number of seconds the API takes (``stale_timeout``, ``max_runtime``): 1 to ``MAX_SECONDS``."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SECONDS


def is_tag_map(value: Any) -> bool:
    """Tags the API takes: a dict of non-empty names to values of ``MIN_TAG_LENGTH`` to ``MAX_TAG_LENGTH``
    characters."""
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and k and isinstance(v, str) and MIN_TAG_LENGTH <= len(v) <= MAX_TAG_LENGTH
        for k, v in value.items())


def tag_map_problem(value: Any) -> str | None:
    """What keeps ``value`` from being tags the API takes, naming the first bad entry; None when it is fine."""
    if not isinstance(value, Mapping):
        return f"got {type(value).__name__}"
    for name, text in value.items():
        if not isinstance(name, str) or not name:
            return f"the name {name!r} is not a non-empty string"
        if not isinstance(text, str):
            return f"{name!r} is {type(text).__name__} {_shown(text)}"
        if not MIN_TAG_LENGTH <= len(text) <= MAX_TAG_LENGTH:
            return f"{name!r} is {_shown(text)}, {len(text)} characters"
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def has_control_characters(value: str) -> bool:
    return _CONTROL.search(value) is not None


#: What a store of UTF-8 text cannot keep: a surrogate code point on its own, which is what Python makes of bytes
#: that are not UTF-8 (``surrogateescape``: a command line argument, an environment variable, a file name from
#: ``os.listdir``), and NUL, which binary output holds (``pg_dump -Fc``, ``find -print0``). JSON carries them as
#: escapes (``\udcff``, ``\u0000``), and PostgreSQL, for one, refuses both in text and in ``jsonb``.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(value: Any, depth: int = 0) -> Any:
    """``value`` (JSON's types) with each lone surrogate and NUL in its strings, keys too, replaced by U+FFFD, the
    replacement character (as ``bytes.decode(errors="replace")`` shows a byte that is not UTF-8)."""
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if depth > 100:
        return value
    if isinstance(value, Mapping):
        return {storable(k, depth + 1): storable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(v, depth + 1) for v in value]
    return value


#: In JSON text that escapes every non-ASCII character (``ensure_ascii``): an escaped backslash (skipped whole, so that
#: the text "\\ud800" is left alone), a surrogate pair (a character beyond the BMP: kept), or a lone surrogate or NUL.
_UNSTORABLE_ESCAPE = re.compile(r"\\\\|\\ud[89ab][0-9a-f]{2}\\ud[c-f][0-9a-f]{2}|\\u(?:d[89a-f][0-9a-f]{2}|0000)")


def storable_json(text: str) -> str:
    """JSON text as ``json.dumps`` writes it (``ensure_ascii``) with each lone surrogate and NUL escape replaced by
    U+FFFD's: for what ``storable`` leaves as it is, values nested deeper than it goes."""
    return _UNSTORABLE_ESCAPE.sub(
        lambda m: m.group() if m.group().startswith("\\\\") or len(m.group()) == 12 else "\\ufffd", text)


def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` if JSON can encode it, else a structure where what it cannot encode is a repr
    (sets, dates, objects); dict keys become strings, NaN and infinities their repr."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth > 20:
        return safe_repr(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v, depth + 1) for v in value]
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else safe_repr(k): jsonable(v, depth + 1) for k, v in value.items()}
    return safe_repr(value)


def is_json(value: Any) -> bool:
    """True when JSON encodes ``value`` exactly (no NaN, no infinities)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


class StatusEnum(str, enum.Enum):
    """Task status. A plain string with the same value is accepted wherever a status is."""

    PENDING = "pending"
    PRE_PROCESSING = "pre_processing"
    PROCESSING = "processing"
    POST_PROCESSING = "post_processing"
    SUCCESS = "success"
    ERROR = "error"
    CANCELLED = "cancelled"
    STALE = "stale"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def coerce(cls, value: StatusEnum | str) -> StatusEnum:
        """The enum member for ``value``; a clear ValueError naming the valid statuses otherwise."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(member.value for member in cls)
            raise ValueError(f"Unknown task status {value!r}; expected one of: {valid}") from None


TERMINAL_STATUSES = frozenset({StatusEnum.SUCCESS, StatusEnum.ERROR, StatusEnum.CANCELLED, StatusEnum.STALE})
#: Every status's text, as it travels (a value read from outside is one of these, or not a status).
STATUS_VALUES = frozenset(s.value for s in StatusEnum)

_DATETIME_FIELDS = ("created", "updated", "start_time", "end_time")


def parse_datetime(value: Any) -> dt.datetime | None:
    """An aware datetime from the API's ISO 8601 text; None for anything else (a display field is
    never worth failing for)."""
    if value is None or isinstance(value, dt.datetime):
        return value
    if not isinstance(value, str):
        return None
    text = value[:-1] + "+00:00" if value.endswith("Z") else value  # 'Z' only from Python 3.11
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        pass
    # Python 3.10 takes only 3 or 6 digits of a second's fraction (3.11 takes any): the microseconds, written out
    micro = _FRACTION.sub(lambda m: "." + (m.group(1) + "00000")[:6], text, count=1)
    try:
        return dt.datetime.fromisoformat(micro) if micro != text else None
    except ValueError:
        return None


_FRACTION = re.compile(r"\.(\d{1,9})(?=[+-]|$)")


def is_time_text(value: Any) -> bool:
    """True for a time as an update sends it (``start_time``, ``end_time``): ISO 8601 text of at most 64 characters
    that ``parse_datetime`` reads, with at least a date, hours and minutes (the API's "YYYY-MM-DDThh:mm[:ss[.uuuuuu]]
    [+HH:MM|-HH:MM|Z]"). A time read from outside (a message another producer wrote, a spool file) that is not one
    made the API refuse the whole update it rode in, its final status with it: Python reads a date alone, or an hour
    without its minutes, as a time, and the API does not."""
    return (isinstance(value, str) and len(value) <= 64 and value.isascii() and _TIME_TEXT.match(value) is not None
            and parse_datetime(value) is not None)


_TIME_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


class _Null:
    """JSON ``null`` in an update's body (``NULL``): ``None`` means a field left out of a PATCH everywhere else."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "null"


#: A field sent as JSON ``null`` (``delivery.merge.SEND_NULL``): a value the task had is taken off.
NULL = _Null()


def format_datetime(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.isoformat()


@dataclasses.dataclass
class TaskModel:
    """A task as the API returns it: every field of the spec, plus ``parent``."""

    id: str
    name: str = ""
    organization: str | None = None
    project: str | None = None
    status: StatusEnum | str = StatusEnum.PENDING
    value: int | None = None
    value_max: int | None = None
    value_percent: int | None = None
    data: Any = None
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    queue: str | None = None
    external_id: str | None = None
    parent: str | None = None
    created: dt.datetime | None = None
    updated: dt.datetime | None = None
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    time_to_start: str | None = None
    max_runtime: int | None = None
    stale_timeout: int | None = None
    url: str | None = None
    public_url: str | None = None
    #: fields the API sent that this version of the SDK does not know
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> TaskModel:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in payload.items() if k in known}
        for name in _DATETIME_FIELDS:
            if name in values:
                values[name] = parse_datetime(values[name])
        status = values.get("status")
        if status is not None:
            try:
                values["status"] = StatusEnum(status)
            except ValueError:
                pass  # a status newer than this SDK: keep the string rather than fail
        if values.get("tags") is None:
            values["tags"] = {}
        return cls(**values, extra={k: v for k, v in payload.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            if field.name == "extra":
                continue
            value = getattr(self, field.name)
            if isinstance(value, dt.datetime):
                value = format_datetime(value)
            elif isinstance(value, StatusEnum):
                value = value.value
            result[field.name] = value
        result.update(self.extra)
        return result


# -- what a failed task records ---------------------------------------------------------------------

#: Longest traceback text stored on a task. The tail (where the error is) is kept.
MAX_TRACEBACK_CHARS = 8000


def exception_text(exc: BaseException, formatted: str | None = None) -> str:
    """Type, message and traceback of ``exc`` as one string, cut from the top if long."""
    if formatted is None:
        formatted = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    text = formatted.rstrip()
    if len(text) > MAX_TRACEBACK_CHARS:
        text = "…(truncated)\n" + text[-MAX_TRACEBACK_CHARS:]
    return text


#: The ``data`` keys ``exception_data`` records.
EXCEPTION_KEYS = ("exception", "exception_type")


def exception_data(exc: BaseException, formatted: str | None = None) -> dict[str, str]:
    """The ``data`` keys recorded for a failure: ``exception`` (full text) and ``exception_type``."""
    return {
        "exception": exception_text(exc, formatted),
        "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins."),
    }


def completed_progress(value: Any, value_max: Any) -> dict[str, int]:
    """The rule for a task the integration marks successful by itself: if it reported progress
    (``value`` is set), it ends complete, ``value = value_max``; a task that never reported progress
    keeps no value, and shows no percentage."""
    if isinstance(value, int) and isinstance(value_max, int) and 0 <= value < value_max:
        return {"value": value_max}
    return {}


# -- what a retried task records -------------------------------------------------------------------------

#: The ``data`` keys that count a job's earlier attempts once it is retried: ``retries`` (Celery's retries, written
#: by ``lifecycle.retry``/``lifecycle.retried``), ``attempts`` (Procrastinate's, written by its worker).
RETRY_COUNT_KEYS = ("retries", "attempts")


def waits_for_retry(status: Any, data: Any) -> bool:
    """Whether a task is waiting for its next attempt: ``pending`` again after one that ran (a retry's countdown,
    its backoff), which the integrations record with a count of the earlier attempts in ``data``."""
    if status != StatusEnum.PENDING.value or not isinstance(data, dict):
        return False
    return any(is_count(data.get(key)) and data[key] > 0 for key in RETRY_COUNT_KEYS)
