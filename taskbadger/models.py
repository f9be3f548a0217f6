"""Typed models of what the API sends and receives."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from typing import Any


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

_DATETIME_FIELDS = ("created", "updated", "start_time", "end_time")


def parse_datetime(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    text = str(value)
    if text.endswith("Z"):  # fromisoformat() accepts 'Z' only from Python 3.11
        text = text[:-1] + "+00:00"
    return dt.datetime.fromisoformat(text)


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
