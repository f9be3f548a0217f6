"""The stand-in API's validation of task bodies: DRF's rules and messages, field by field."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ..models import parse_datetime

STATUSES = (
    "pending", "pre_processing", "processing", "post_processing", "success", "error", "cancelled", "stale",
)
TERMINAL = frozenset({"success", "error", "cancelled"})
#: Fields of a task in API responses, in the order the real service sends them (plus ``parent``).
TASK_FIELDS = (
    "id", "organization", "project", "name", "queue", "external_id", "status", "value", "value_max",
    "value_percent", "data", "created", "updated", "start_time", "end_time", "time_to_start",
    "max_runtime", "stale_timeout", "url", "public_url", "tags", "parent",
)
WRITABLE = frozenset({
    "name", "queue", "external_id", "status", "value", "value_max", "data", "start_time", "end_time",
    "max_runtime", "stale_timeout", "tags", "parent",
})
READ_ONLY = frozenset(TASK_FIELDS) - WRITABLE

class _Invalid(Exception):
    def __init__(self, *messages: str) -> None:
        super().__init__(*messages)
        self.messages = list(messages)


def _string(value: Any, *, blank: bool = True, max_length: int = 255) -> str:
    if value is None:
        raise _Invalid("This field may not be null.")
    if not isinstance(value, str):
        raise _Invalid("Not a valid string.")
    if not blank and not value.strip():
        raise _Invalid("This field may not be blank.")
    if len(value) > max_length:
        raise _Invalid(f"Ensure this field has no more than {max_length} characters.")
    return value


def _integer(value: Any, *, minimum: int, maximum: int, nullable: bool) -> int | None:
    if value is None:
        if nullable:
            return None
        raise _Invalid("This field may not be null.")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid("A valid integer is required.")
    if value < minimum:
        raise _Invalid(f"Ensure this value is greater than or equal to {minimum}.")
    if value > maximum:
        raise _Invalid(f"Ensure this value is less than or equal to {maximum}.")
    return value


def _status(value: Any) -> str:
    if value is None:
        raise _Invalid("This field may not be null.")
    if not isinstance(value, str) or value not in STATUSES:
        raise _Invalid(f'"{value}" is not a valid choice.')
    return value


def _datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    message = (
        "Datetime has wrong format. Use one of these formats instead: "
        "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
    )
    if not isinstance(value, str) or len(value) < 16:
        raise _Invalid(message)
    # the SDK's own reader: it takes any digits of a second's fraction on every Python (3.10's fromisoformat, 3 or 6)
    parsed = parse_datetime(value[:-1] + "+00:00" if value[-1] in "Zz" else value)
    if parsed is None:
        raise _Invalid(message)
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed


def _tags(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        kind = "null" if value is None else type(value).__name__
        raise _Invalid(f'Expected a dictionary of items but got type "{kind}".')
    errors = []
    for key, tag in value.items():
        if not isinstance(tag, str):
            errors.append(f'Tag "{key}": Not a valid string.')
        elif not 2 <= len(tag) <= 255:
            bound = "at least 2" if len(tag) < 2 else "no more than 255"
            errors.append(f'Tag "{key}": Ensure this field has {bound} characters.')
    if errors:
        raise _Invalid(*errors)
    return dict(value)


def _parent(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _Invalid(f"Incorrect type. Expected pk value, received {type(value).__name__}.")
    return value


_BIG = 9223372036854775807
_INT = 2147483647
_VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "name": lambda v: _string(v, blank=False),
    "queue": _string,
    "external_id": _string,
    "status": _status,
    "value": lambda v: _integer(v, minimum=0, maximum=_BIG, nullable=True),
    "value_max": lambda v: _integer(v, minimum=0, maximum=_BIG, nullable=False),
    "data": lambda v: v,
    "start_time": _datetime,
    "end_time": _datetime,
    "max_runtime": lambda v: _integer(v, minimum=1, maximum=_INT, nullable=True),
    "stale_timeout": lambda v: _integer(v, minimum=1, maximum=_INT, nullable=True),
    "tags": _tags,
    "parent": _parent,
}


def clean(body: dict[str, Any], *, require_name: bool) -> tuple[dict[str, Any], dict[str, list], dict]:
    """Validate a request body: returns (cleaned writable fields, errors, unknown fields)."""
    cleaned: dict[str, Any] = {}
    errors: dict[str, list] = {}
    unknown = {k: v for k, v in body.items() if k not in WRITABLE and k not in READ_ONLY}
    if require_name and "name" not in body:
        errors["name"] = ["This field is required."]
    for key, validate in _VALIDATORS.items():
        if key in body:
            try:
                cleaned[key] = validate(body[key])
            except _Invalid as err:
                errors[key] = err.messages
    return cleaned, errors, unknown
