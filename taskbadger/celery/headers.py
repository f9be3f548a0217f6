"""The message-header protocol between the publishing process and the worker, and its boundary.

Headers a publisher writes (any producer may write them, with any shape):

* ``taskbadger_task``: ``{"task": {...created fields...}, "heartbeat_interval": s, "stale_timeout": s}``,
  so the worker builds ``self.taskbadger_task`` without a GET and knows what to do when the task runs (a key
  whose absence means the same value to every reader is left out, ``compact_header``: a missing ``external_id``
  is the message's Celery id);
* ``taskbadger_task_id``: the Task Badger id, for anyone reading the headers;
* ``taskbadger_kwargs``: ``taskbadger_*`` options for a task the publisher did not track (validated);
* ``taskbadger_track``: True/False, forcing tracking on or off for one message;
* ``taskbadger_maybe_created``: the create at publish may have reached the API without an answer.

Every value read here is checked once and becomes a typed value; what is invalid is dropped with one
warning naming the header and the task, and the task runs (tracked without that value, or
untracked). Nothing read from a message goes back into a message or onto the wire unchecked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from .._runtime import log_throttled, short
from ..lifecycle import carried
from ..lifecycle.carried import Meta
from ..models import MAX_EXTERNAL_ID_LENGTH, StatusEnum, is_task_id
from .options import KWARGS_KEY, TRACK_KEY, pop_options, validate

META_KEY = "taskbadger_task"
ID_KEY = "taskbadger_task_id"
# Set when the create at publish may have reached the API without an answer (read timeout, 5xx):
# the worker must not create the task again, or it could exist twice.
MAYBE_CREATED_KEY = "taskbadger_maybe_created"
OUR_KEYS = (META_KEY, ID_KEY, KWARGS_KEY, TRACK_KEY, MAYBE_CREATED_KEY)
# Not a header: what the publisher stores in the result backend as the PENDING state of a task it published tracked
# without its Task Badger task (``{LEFT_KEY: True}``; its worker creates it: ``result_backend.tell_left_to_worker``),
# where a task created at publish has ``{ID_KEY: its id}``.
LEFT_KEY = "taskbadger_created_by_worker"

__all__ = ["Incoming", "Meta", "check_outgoing", "header_fields", "parse_meta", "read_incoming", "read_message_meta",
           "read_task_id", "strip", "write_meta"]


@dataclass
class Incoming:
    """Our headers on one message, checked."""

    meta: Meta | None = None
    options: dict[str, Any] = field(default_factory=dict)
    track: bool | None = None
    maybe_created: bool = False


def _warn(task_name: str, header: str, problem: str) -> None:
    log_throttled(f"header:{task_name[:200]}:{header}", 60.0, logging.WARNING,
                  "Task Badger: message header %s on task %s %s; ignored", header, short(task_name), problem)


def parse_meta(raw: Any, task_name: str) -> Meta | None:
    """The checked ``taskbadger_task`` header, or None (with a warning) when it is unusable."""
    return carried.parse_meta(raw, task_name, _WHERE)


_WHERE = f"message header {META_KEY}"


def parse_options(raw: Any, task_name: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        _warn(task_name, KWARGS_KEY, f"is not a dict ({short(raw, 60)})")
        return {}
    return validate(task_name, raw)


def parse_track(raw: Any, task_name: str) -> bool | None:
    if raw is None or isinstance(raw, bool):
        return raw
    _warn(task_name, TRACK_KEY, f"is not True or False ({short(raw, 60)})")
    return None


def _maybe_created(raw: Any) -> bool:
    return raw is True


def check_outgoing(message: MutableMapping[str, Any], task_name: str) -> Incoming:
    """Check our headers on a message about to be published, and write back only their checked
    form (kombu encodes whatever is left in the message). Returns what they say."""
    incoming = Incoming(
        meta=with_external_id(parse_meta(message.get(META_KEY), task_name), message.get("id")),
        options=parse_options(message.get(KWARGS_KEY), task_name),
        track=parse_track(message.get(TRACK_KEY), task_name),
        maybe_created=_maybe_created(message.get(MAYBE_CREATED_KEY)),
    )
    strip(message)
    if incoming.meta is not None:
        write_meta(message, incoming.meta)
    if incoming.options:
        message[KWARGS_KEY] = incoming.options
    if incoming.track is not None:
        message[TRACK_KEY] = incoming.track
    if incoming.maybe_created:
        message[MAYBE_CREATED_KEY] = True
    return incoming


def take_call_options(properties: MutableMapping[str, Any], message: MutableMapping[str, Any]) -> None:
    """``apply_async(taskbadger_<option>=...)`` on a task without the base class (whose ``apply_async`` takes them
    itself), or a beat entry's ``options``: Celery hands the options it does not know to the message's properties,
    where no one read them (a beat entry's monitor was lost). They become our headers, checked with the rest by
    ``check_outgoing``, and never go out as properties. Headers the call wrote itself win."""
    found = pop_options(properties)
    track = found.pop("track", None)
    if track is not None and message.get(TRACK_KEY) is None:
        message[TRACK_KEY] = track
    if not found:
        return
    given = message.get(KWARGS_KEY)
    if given is None:
        message[KWARGS_KEY] = found
    elif isinstance(given, Mapping):
        message[KWARGS_KEY] = {**found, **given}


def strip(message: MutableMapping[str, Any]) -> None:
    """Remove our headers from a message (when they could not be checked, none of them leaves)."""
    for key in OUR_KEYS:
        message.pop(key, None)
    nested = message.get("headers")
    if isinstance(nested, MutableMapping):
        for key in OUR_KEYS:
            nested.pop(key, None)


def write_meta(message: MutableMapping[str, Any], meta: Meta) -> None:
    header = compact_header(meta, message.get("id"))
    message[META_KEY] = header
    message[ID_KEY] = meta.id
    nested = message.get("headers")
    if isinstance(nested, MutableMapping):  # some protocol paths read custom headers from here (e.g. retries)
        nested[META_KEY] = header
        nested[ID_KEY] = meta.id


_PENDING = StatusEnum.PENDING.value


def compact_header(meta: Meta, celery_id: Any = None) -> dict[str, Any]:
    """The ``taskbadger_task`` header for ``meta`` on the message ``celery_id``, without what every reader (this
    version's and the earlier ones') takes for the same value when it is missing: a ``pending`` status (``Run`` reads a
    missing one as pending), empty tags (``TaskModel.from_dict``: ``{}``), a null heartbeat interval or stale timeout
    (``parse_meta``: None); and without the ``external_id`` that is the message's own Celery id, which this version's
    reader takes from the message (``with_external_id``; an earlier version's shows the body's ``tb.external_id`` as
    None until it reads the task). Celery and kombu decode the header for every task, and kombu's Redis transport
    writes the whole message again into its unacked hash: each byte costs every task (issue 25). The keys keep their
    names: workers of another version read these headers from the queues, and this one reads theirs."""
    task = meta.task
    if task.get("status") == _PENDING or task.get("tags") == {} or (
            celery_id is not None and task.get("external_id") == celery_id):
        task = {key: value for key, value in task.items()
                if not ((key == "status" and value == _PENDING) or (key == "tags" and value == {})
                        or (key == "external_id" and value == celery_id))}
    header: dict[str, Any] = {"task": task}
    if meta.heartbeat_interval is not None:
        header["heartbeat_interval"] = meta.heartbeat_interval
    if meta.stale_timeout is not None:
        header["stale_timeout"] = meta.stale_timeout
    if meta.resend:
        header["resend"] = meta.resend
    return header


def with_external_id(meta: Meta | None, celery_id: Any) -> Meta | None:
    """``meta`` read from the message ``celery_id``, its ``external_id`` the Celery id when the header has none: a
    publisher of ours leaves it out when it is that id (``compact_header``), and has none to carry only when the id
    is longer than the API takes (``lifecycle.create_fields``), so such an id is not taken for one."""
    if meta is not None and "external_id" not in meta.task and type(celery_id) is str \
            and 0 < len(celery_id) <= MAX_EXTERNAL_ID_LENGTH:
        meta.task["external_id"] = celery_id
    return meta


def _is_mapping(value: Any) -> bool:
    return type(value) is dict or isinstance(value, Mapping)  # a dict (nearly always) without the ABC's check


def read_incoming(request: Any, task_name: str) -> Incoming:
    """Our headers on a message a worker received (a worker Context or a main-process Request). Read where the
    message has them at the top, else in its nested 'headers' dict (some protocol paths keep custom headers only
    there); written out, without a call per header: a worker reads them for every task."""
    source = getattr(request, "request_dict", None)
    if source is not None and _is_mapping(source):
        get = source.get
        raw, options, track, maybe_created = get(META_KEY), get(KWARGS_KEY), get(TRACK_KEY), get(MAYBE_CREATED_KEY)
        nested, celery_id = get("headers"), get("id")
    else:
        raw, options = getattr(request, META_KEY, None), getattr(request, KWARGS_KEY, None)
        track, maybe_created = getattr(request, TRACK_KEY, None), getattr(request, MAYBE_CREATED_KEY, None)
        nested, celery_id = getattr(request, "headers", None), getattr(request, "id", None)
    if nested is not None and (raw is None or options is None or track is None or maybe_created is None) \
            and _is_mapping(nested):
        raw = nested.get(META_KEY) if raw is None else raw
        options = nested.get(KWARGS_KEY) if options is None else options
        track = nested.get(TRACK_KEY) if track is None else track
        maybe_created = nested.get(MAYBE_CREATED_KEY) if maybe_created is None else maybe_created
    meta = with_external_id(parse_meta(raw, task_name), celery_id) if raw is not None else None
    if options is None and track is None and maybe_created is None:  # a tracked message: only the meta
        return Incoming(meta)
    return Incoming(meta, parse_options(options, task_name), parse_track(track, task_name),
                    _maybe_created(maybe_created))


def read_task_id(request: Any) -> str | None:
    """Only the Task Badger id a message carries, if valid (the worker's main process needs no more, for every
    message it receives: ``_read`` for one key, written out)."""
    source = getattr(request, "request_dict", None)
    if source is not None and _is_mapping(source):
        raw = source.get(META_KEY)
        nested = source.get("headers") if raw is None else None
    else:
        raw = getattr(request, META_KEY, None)
        nested = getattr(request, "headers", None) if raw is None else None
    if nested is not None and _is_mapping(nested):
        raw = nested.get(META_KEY)
    return _task_id_in(raw)


def read_message_meta(message_headers: Any, task_name: str) -> Meta | None:
    """Our ``taskbadger_task`` header on a message no task will run (its task is not registered here)."""
    if not isinstance(message_headers, Mapping):
        return None
    raw = message_headers.get(META_KEY)
    nested = message_headers.get("headers")
    if raw is None and isinstance(nested, Mapping):
        raw = nested.get(META_KEY)
    return with_external_id(parse_meta(raw, task_name), message_headers.get("id")) if raw is not None else None


def _task_id_in(raw: Any) -> str | None:
    task = raw.get("task") if type(raw) is dict or (raw is not None and isinstance(raw, Mapping)) else None
    task_id = task.get("id") if type(task) is dict or (task is not None and isinstance(task, Mapping)) else None
    return task_id if is_task_id(task_id) else None


def header_fields(task_fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a created task that travel in the message (``data`` only while small)."""
    return carried.carried_fields(task_fields)
