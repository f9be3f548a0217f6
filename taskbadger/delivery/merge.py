"""Every rule that merges task fields: queued updates into one request, and new keys into ``data``.

PATCH replaces a task's ``data`` as a whole, so whoever adds keys to it must send the whole merged
dict: merged into the data we know, or, when we do not know it, marked ``merge_data`` so that the
task's current data is fetched and merged right before the request goes out (``resolve``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from ..models import NULL, TERMINAL_STATUSES, StatusEnum, TaskModel, completed_progress, parse_datetime

#: Fields to merge into the task's current data before sending (not an API field).
MERGE_DATA = "merge_data"
#: Marks an update that must be sent only if the task has no final state yet (not an API field): the
#: worker's main process closes tasks whose own final update died with a pool child.
UNLESS_FINAL = "_taskbadger_unless_final"
#: Marks an update that must be sent only if the task is still ``pending`` (not an API field): the
#: closing of a task whose create was given up, unless a worker has taken it up meanwhile.
ONLY_IF_PENDING = "_taskbadger_only_if_pending"
#: Marks a ``success`` whose run does not know the progress an earlier attempt reported (not an API field):
#: the finished-progress rule (``models.completed_progress``) is applied to the task's current value at send
#: time, so that a job retried after reporting 5 of 10 does not end ``success`` at 50 %.
COMPLETE_PROGRESS = "_taskbadger_complete_progress"
#: Keys to remove from the task's current data at send time (not an API field): a run again of a job whose
#: earlier attempt ended in error takes that error's exception out of the task's data.
DROP_DATA = "_taskbadger_drop_data"
#: Marks a ``start_time`` to send only if the task has none yet (not an API field): a message redelivered after
#: its worker was lost runs the same task again, whose first start is kept.
KEEP_START = "_taskbadger_keep_start"
#: Marks a final update taken from the spool, to send only if the task has not ended later than its ``end_time``
#: (not an API field): while it waited in the spool, the task may have been run again (a job retried by hand, a
#: message redelivered) and have ended since; the older run's outcome must not replace the newer one's.
UNLESS_ENDED_LATER = "_taskbadger_unless_ended_later"
#: Fields to send as JSON ``null`` (not an API field), among ``NULLABLE``: a value the task had is taken off (a job
#: waiting for its next attempt has no stale timeout). ``None`` means "not set" in every other field.
SEND_NULL = "_taskbadger_send_null"
#: The fields ``SEND_NULL`` may name.
NULLABLE = frozenset({"stale_timeout"})


#: The markers ``resolve`` reads the task's current state for.
_READS_CURRENT = (MERGE_DATA, UNLESS_FINAL, ONLY_IF_PENDING, COMPLETE_PROGRESS, DROP_DATA, KEEP_START,
                  UNLESS_ENDED_LATER)


#: Every key of queued fields that is not an API field: fields without any are sent as they are.
_MARKERS = frozenset((*_READS_CURRENT, SEND_NULL))


#: The keys ``queued`` merges by a rule of their own, besides the start: fields with none of them merge as one dict.
_MERGED_WITH_CARE = _MARKERS | {"tags", MERGE_DATA}


def reads_current(fields: Mapping[str, Any]) -> bool:
    """Whether queued ``fields`` carry a marker resolved against the task's current state."""
    return any(marker in fields for marker in _READS_CURRENT)


def needs_current(fields: Mapping[str, Any]) -> bool:
    """Whether ``resolve`` reads the task's current state for queued ``fields`` (its ``fetch`` is called)."""
    if _MARKERS.isdisjoint(fields):  # a worker's update: no marker (one C call instead of seven lookups)
        return False
    return bool(fields.get(UNLESS_FINAL) or fields.get(ONLY_IF_PENDING) or fields.get(COMPLETE_PROGRESS) or (
        fields.get(KEEP_START) and "start_time" in fields) or (
        fields.get(UNLESS_ENDED_LATER) and "end_time" in fields) or (
        (fields.get(MERGE_DATA) is not None or fields.get(DROP_DATA)) and fields.get("data") is None))


def with_data(data: Any, extra: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` (a dict, or nothing) with the keys of ``extra`` added; newer keys win."""
    return {**(data if isinstance(data, Mapping) else {}), **extra}


def data_fields(known: Any, extra: Mapping[str, Any], known_is_current: bool = True) -> dict[str, Any]:
    """The update fields that add ``extra`` to a task's data: ``{"data": merged}`` when the task's data
    is known (a dict or None), else ``{"merge_data": extra}`` for the sender to merge at send time."""
    if known_is_current and (known is None or isinstance(known, Mapping)):
        return {"data": with_data(known, extra)}
    return {MERGE_DATA: dict(extra)}


def queued(older: Mapping[str, Any], newer: Mapping[str, Any]) -> dict[str, Any]:
    """Two queued PATCH bodies for one task as one: newer values win; tags and ``merge_data``
    accumulate (the API merges tags too); the earliest ``start_time`` is kept; an unconditional update
    makes the whole request unconditional; keys the newer one drops from the data leave the older one's."""
    if _MERGED_WITH_CARE.isdisjoint(older) and _MERGED_WITH_CARE.isdisjoint(newer):
        # a worker's start and end (nearly every merge): no marker, no tags, nothing but the start to keep; the
        # rules below would change nothing else (two C calls instead of about twenty lookups and pops)
        merged = {**older, **newer}
        if "start_time" in older:
            merged["start_time"] = older["start_time"]
        return merged
    if DROP_DATA in newer:  # the drop comes after what the older update adds under those keys
        older = _without_keys(older, newer[DROP_DATA])
    merged = {**older, **newer}
    if "tags" in older and "tags" in newer:
        merged["tags"] = {**older["tags"], **newer["tags"]}
    if "start_time" in older:
        merged["start_time"] = older["start_time"]
        merged.pop(KEEP_START, None)
        if older.get(KEEP_START):  # the start kept is the older one's, with its condition
            merged[KEEP_START] = True
    if MERGE_DATA in older and MERGE_DATA in newer:
        merged[MERGE_DATA] = {**older[MERGE_DATA], **newer[MERGE_DATA]}
    for condition in (UNLESS_FINAL, ONLY_IF_PENDING, UNLESS_ENDED_LATER):
        if condition not in newer:
            merged.pop(condition, None)
    if DROP_DATA in older and DROP_DATA in newer:
        merged[DROP_DATA] = sorted({*older[DROP_DATA], *newer[DROP_DATA]})
    elif "data" in newer and DROP_DATA not in newer:
        merged.pop(DROP_DATA, None)  # the newer update sends the whole data: nothing older is left to drop
    if COMPLETE_PROGRESS not in newer and "status" in newer:
        merged.pop(COMPLETE_PROGRESS, None)  # a newer state: the success it marked is no longer the last word
    nulls = {key for key in older.get(SEND_NULL, ()) if key not in newer} | set(newer.get(SEND_NULL, ()))
    for key in newer.get(SEND_NULL, ()):
        merged.pop(key, None)  # taken off after the older update set it
    if nulls:
        merged[SEND_NULL] = sorted(nulls)
    else:
        merged.pop(SEND_NULL, None)
    return merged


def _ended_later(current: TaskModel, end_time: Any) -> bool:
    """Whether the task, as it is now, ended later than ``end_time`` (an update's, as sent)."""
    ended, then = current.end_time, parse_datetime(end_time)
    if current.status not in TERMINAL_STATUSES or ended is None or then is None:
        return False
    if (ended.tzinfo is None) != (then.tzinfo is None):  # a naive time is UTC, as ``format_datetime`` writes it
        ended, then = (value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value
                       for value in (ended, then))
    return ended > then


def _without_keys(fields: Mapping[str, Any], keys: Any) -> Mapping[str, Any]:
    """``fields`` with ``keys`` taken out of the data it sets or merges."""
    trimmed = dict(fields)
    for name in ("data", MERGE_DATA):
        if isinstance(trimmed.get(name), Mapping):
            trimmed[name] = {key: value for key, value in trimmed[name].items() if key not in keys}
    return trimmed


def resolve(fields: Mapping[str, Any], fetch: Callable[[], TaskModel] | None) -> dict[str, Any] | None:
    """The PATCH body for queued ``fields``, or None when there is nothing to send. ``fetch`` returns the
    task's current state; it is called only when needed (``merge_data`` or keys to drop without ``data``, a
    conditional update, or progress to complete). Without it, a conditional update is sent as an
    unconditional one."""
    body = dict(fields)
    if _MARKERS.isdisjoint(body):  # a worker's update: nothing to resolve (one C call instead of seven pops)
        return body
    for key in body.pop(SEND_NULL, None) or ():
        if key in NULLABLE and key not in body:
            body[key] = NULL
    unless_final = body.pop(UNLESS_FINAL, False) and fetch is not None
    only_if_pending = body.pop(ONLY_IF_PENDING, False) and fetch is not None
    complete = body.pop(COMPLETE_PROGRESS, False) and fetch is not None
    extra = body.pop(MERGE_DATA, None)
    drop = body.pop(DROP_DATA, None)
    keep_start = body.pop(KEEP_START, False) and fetch is not None and "start_time" in body
    unless_later = body.pop(UNLESS_ENDED_LATER, False) and fetch is not None and "end_time" in body
    if not unless_final and not only_if_pending and not complete and extra is None and drop is None \
            and not keep_start and not unless_later:
        return body
    current = fetch() if fetch is not None and needs_current(fields) else None
    if unless_final and current is not None and current.status in TERMINAL_STATUSES:
        return None
    if unless_later and current is not None and _ended_later(current, body["end_time"]):
        return None
    if only_if_pending and current is not None and current.status != StatusEnum.PENDING:
        return None
    if keep_start and current is not None and current.start_time is not None:
        del body["start_time"]  # its first start is kept
    if complete and current is not None:
        body.update(completed_progress(body.get("value", current.value), body.get("value_max", current.value_max)))
    base = body.get("data")
    if base is None and current is not None:
        base = current.data
    if drop and isinstance(base, Mapping) and any(key in base for key in drop):
        body["data"] = base = {key: value for key, value in base.items() if key not in drop}
    if extra is not None:
        body["data"] = with_data(base, extra)
    return body


class DefaultMergeStrategy:
    """Merge new ``data`` into the task's existing data; keys in ``append_keys`` are appended to."""

    def __init__(self, append_keys: list[str] | None = None) -> None:
        self.append_keys = append_keys or []

    def merge(self, existing: Any, new: Mapping[str, Any]) -> dict[str, Any]:
        merged = dict(existing) if isinstance(existing, Mapping) else {}
        for key, value in new.items():
            if key in self.append_keys and value:
                merged[key] = merged[key] + value if key in merged else value
            elif key not in self.append_keys:
                merged[key] = value
        return merged
