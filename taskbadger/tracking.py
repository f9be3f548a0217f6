"""What each Celery event means for the Task Badger task.

The signal handlers in ``taskbadger.celery`` call these functions; these decide what to create or
update and hand worker-side updates to the dispatcher (``taskbadger.delivery``). Nothing here
talks HTTP except the create at publish time, which must be inline because its id travels in the
message.

Message headers written at publish time:

* ``taskbadger_task_id``: the Task Badger id (for anyone reading the headers).
* ``taskbadger_task``: ``{"task": {...created fields...}, "heartbeat_interval": s, "stale_timeout": s}``
  so the worker builds ``self.taskbadger_task`` without a GET, and knows what to do when it runs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from typing import Any

from . import config as _config
from . import delivery
from .api import send_create
from .celery_options import KWARGS_KEY, TRACK_KEY, decorator_options, recorded_args, validate
from .errors import exception_data
from .exceptions import CreateSkipped, RateLimited, ServerError, TransportError
from .heartbeat import get_heartbeat
from .models import TERMINAL_STATUSES, StatusEnum, TaskModel
from .scope import enter_task, exit_task, parent_for_new_task
from .task import Task as TaskbadgerTask

log = logging.getLogger("taskbadger")

META_KEY = "taskbadger_task"
ID_KEY = "taskbadger_task_id"
# Set when the create at publish may have reached the API without an answer (read timeout, 5xx):
# the worker must not create the task again, or it could exist twice.
MAYBE_CREATED_KEY = "taskbadger_maybe_created"
TRACKING_ATTR = "taskbadger_tracking"  # set on the Celery request while a tracked task runs
CANVAS_TASKS = {"celery.map": "map", "celery.starmap": "starmap", "celery.chunks": "chunks"}
#: ``data`` larger than this (as JSON) is not copied into the headers; the worker fetches it if needed.
MAX_HEADER_DATA_CHARS = 8192
STALE_TIMEOUT_FACTOR = 2


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _celery_system() -> Any:
    config = _config.get_config()
    return config.system("celery") if config else None


# -- publish -------------------------------------------------------------------------------------


def on_publish(name: str, message: dict[str, Any], celery_id: str | None, body: Any, routing_key: str | None,
               declare: Any) -> TaskbadgerTask | None:
    """Create the task (status pending) before the message goes out; return it, or None.

    ``message`` is the message headers dict, where custom headers travel (ours are written there).
    """
    # Both headers stay on a message that is not tracked here: the worker honours them if it ends up
    # tracking the task itself (publisher not configured, or the API unreachable at publish time).
    header_options = message.get(KWARGS_KEY) or {}
    track = message.get(TRACK_KEY)
    running = _running_tracking()
    if running is not None and running.celery_id == celery_id:
        _write_meta(message, running.meta)  # task.retry(): same Celery id, same Task Badger task
        if not running.retry_recorded:
            _record_retry(running)
        return None
    if META_KEY in message:
        return None  # already tracked (a re-publish of the same message)
    if track is False or not _config.is_configured():
        return None

    args, kwargs = _message_args(body)
    tracked_name, canvas_data = name, None
    if name in CANVAS_TASKS:
        inner = (kwargs or {}).get("task")
        tracked_name = (inner.get("task") if isinstance(inner, dict) else getattr(inner, "name", None)) or name
        items = (kwargs or {}).get("it") or []
        canvas_data = {"canvas": CANVAS_TASKS[name], "items": len(items) if hasattr(items, "__len__") else None}
    elif name.startswith("celery."):
        return None

    celery_task = _registered_task(tracked_name)
    system = _celery_system()
    if not (track is True or _uses_base_class(celery_task) or (system is not None and system.track_task(tracked_name))):
        return None
    if not delivery.publish_breaker.allow():
        return None

    options = {**decorator_options(celery_task)} if celery_task is not None else {}
    options.update(header_options)
    options = validate(tracked_name, options)
    options.pop("track", None)

    fields = _create_fields(tracked_name, options, system, celery_id, args, kwargs, routing_key, declare, canvas_data)
    heartbeat, stale_timeout = _heartbeat_options(options, system)
    task, maybe_created = _create(fields)
    if task is None:
        if maybe_created:
            message[MAYBE_CREATED_KEY] = True
        return None
    meta = {"task": _header_fields(task), "heartbeat_interval": heartbeat, "stale_timeout": stale_timeout}
    message.pop(KWARGS_KEY, None)  # resolved into the created task
    _write_meta(message, meta)
    return task


def _create_fields(name: str, options: dict[str, Any], system: Any, celery_id: str | None, args: Any,
                   kwargs: Any, routing_key: str | None, declare: Any, canvas_data: dict | None) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": options.get("name", name),
        "status": StatusEnum.PENDING,
        "external_id": celery_id,
        "queue": _queue_name(declare, routing_key),
    }
    for key in ("value", "value_max", "tags", "max_runtime"):
        if key in options:
            fields[key] = options[key]
    data = dict(options.get("data") or {})
    if canvas_data:
        data.update(canvas_data)
    record = options.get("record_task_args", system.record_task_args if system is not None else False)
    if record:
        data.update(recorded_args(args, kwargs))
    if data:
        fields["data"] = data
    if "parent" in options:
        fields["parent"] = options["parent"]  # explicit, None included
    elif not _is_workflow_successor(name):
        fields["parent"] = parent_for_new_task()
    monitor = options.get("monitor_id") or (system.monitor_for(name) if system is not None else None)
    if monitor:
        fields["monitor_id"] = monitor
    return fields


def _create(fields: dict[str, Any]) -> tuple[TaskbadgerTask | None, bool]:
    """Create inline, never retried. Returns the task, and whether a failed create may
    nevertheless have created it (then nobody may try again: no duplicate tasks)."""
    name = fields.pop("name")
    monitor_id = fields.pop("monitor_id", None)
    try:
        task = send_create(name, fields, monitor_id, fast=True)
    except CreateSkipped:
        return None, False
    except (TransportError, ServerError, RateLimited) as err:
        delivery.publish_breaker.failure(err)
        _log_throttled("publish", "Task Badger: task %r published untracked: %s", name, err)
        certainly_not = isinstance(err, RateLimited) or (isinstance(err, ServerError) and err.status_code == 503) or (
            isinstance(err, TransportError) and not err.reached_server)
        return None, not certainly_not
    except Exception as err:
        _log_throttled(f"create:{name}:{type(err).__name__}",
                       "Task Badger: task %r published untracked: %s", name, err)
        return None, False
    delivery.publish_breaker.success()
    return task, False


def _heartbeat_options(options: dict[str, Any], system: Any) -> tuple[float | None, int | None]:
    interval = options.get("heartbeat_interval", system.heartbeat_interval if system is not None else None)
    stale = options.get("stale_timeout", system.stale_timeout if system is not None else None)
    if stale is None and interval:
        stale = max(1, math.ceil(interval * STALE_TIMEOUT_FACTOR))
    return interval, stale


def _header_fields(task: TaskbadgerTask) -> dict[str, Any]:
    keep = ("id", "name", "status", "value", "value_max", "tags", "parent", "queue", "external_id", "public_url")
    fields = {k: v for k, v in task.to_dict().items() if k in keep and v is not None}
    data = task.data
    if data is not None:
        if len(json.dumps(data, default=str)) <= MAX_HEADER_DATA_CHARS:
            fields["data"] = data
        else:
            fields["data_omitted"] = True
    return fields


def _write_meta(message: dict[str, Any], meta: dict[str, Any]) -> None:
    message[META_KEY] = meta
    message[ID_KEY] = meta["task"]["id"]
    nested = message.get("headers")
    if isinstance(nested, dict):  # some protocol paths read custom headers from here (e.g. retries)
        nested[META_KEY] = meta
        nested[ID_KEY] = meta["task"]["id"]


def _message_args(body: Any) -> tuple[Any, Any]:
    if isinstance(body, dict):  # protocol 1
        return body.get("args"), body.get("kwargs")
    if isinstance(body, (list, tuple)) and len(body) >= 2:  # protocol 2: (args, kwargs, embed)
        return body[0], body[1]
    return (), {}


def _queue_name(declare: Any, routing_key: str | None) -> str | None:
    for queue in declare or ():
        name = getattr(queue, "name", None)
        if name:
            return name
    return routing_key or None


def _registered_task(name: str) -> Any:
    import celery

    return celery.current_app.tasks.get(name)


_base_class: type | None = None


def _uses_base_class(celery_task: Any) -> bool:
    global _base_class
    if _base_class is None:  # taskbadger.celery imports this module: look it up on first use
        from .celery import Task

        _base_class = Task
    return isinstance(celery_task, _base_class)


def _successor_names(request: Any) -> frozenset[str]:
    """Names of the tasks Celery will publish after this one returns: its chain's next link and
    its ``link`` callbacks."""
    names = set()
    for signature in list(getattr(request, "chain", None) or []) + list(getattr(request, "callbacks", None) or []):
        name = signature.get("task") if isinstance(signature, dict) else getattr(signature, "task", None)
        if name:
            names.add(name)
    return frozenset(names)


def _is_workflow_successor(name: str) -> bool:
    """A chain's next task and ``link`` callbacks are published by the worker after the body
    returned: they follow the running task, they are not its children. The names are taken when the
    task starts, because some Celery versions pop the next link off ``request.chain`` before
    publishing it."""
    running = _running_tracking()
    return running is not None and name in running.successors


# -- worker: start and end -------------------------------------------------------------------------


class Tracking:
    """State of one tracked run, kept on the Celery request. The ``taskbadger.Task`` is built from
    the header fields only when something asks for it (most task bodies never do)."""

    __slots__ = ("celery_id", "meta", "_task", "_status", "token", "finished", "heartbeat", "retry_exc",
                 "retry_recorded", "successors")

    def __init__(self, celery_id: str, meta: dict[str, Any]) -> None:
        self.celery_id = celery_id
        self.meta = meta
        self._task: TaskbadgerTask | None = None
        self._status: StatusEnum | str = meta["task"].get("status") or StatusEnum.PENDING
        self.token: Any = None
        self.finished = False
        self.heartbeat = False
        self.retry_exc: BaseException | None = None
        self.retry_recorded = False
        self.successors: frozenset[str] = frozenset()

    @property
    def id(self) -> str:
        return self.meta["task"]["id"]

    @property
    def task(self) -> TaskbadgerTask:
        if self._task is None:
            self._task = TaskbadgerTask(TaskModel.from_dict(self.meta["task"]))
            self._task._task.status = self._status
        return self._task

    @property
    def data(self) -> Any:
        return self._task.data if self._task is not None else self.meta["task"].get("data")

    @data.setter
    def data(self, value: Any) -> None:
        self.meta["task"]["data"] = value
        if self._task is not None:
            self._task._task.data = value

    def set_status(self, status: StatusEnum) -> None:
        self._status = status
        if self._task is not None:
            self._task._task.status = status

    def is_finished(self) -> bool:
        status = self._task.status if self._task is not None else self._status
        return status in TERMINAL_STATUSES


def _running_tracking() -> Tracking | None:
    import celery

    request = getattr(celery.current_task, "request", None)
    return getattr(request, TRACKING_ATTR, None) if request is not None else None


def meta_of(request: Any) -> dict[str, Any] | None:
    """The Task Badger meta a Celery request (worker Context or main-process Request) carries."""
    if request is None:
        return None
    source = getattr(request, "request_dict", None)
    if isinstance(source, dict):
        meta = source.get(META_KEY)
        nested = source.get("headers") if meta is None else None
    else:
        meta = getattr(request, META_KEY, None)
        nested = getattr(request, "headers", None) if meta is None else None
    if isinstance(nested, dict):
        meta = nested.get(META_KEY)
    return meta if isinstance(meta, dict) and isinstance(meta.get("task"), dict) else None


def note_retry_exception(request: Any, exc: BaseException | None) -> None:
    tracking = getattr(request, TRACKING_ATTR, None)
    if tracking is not None and exc is not None:
        tracking.retry_exc = exc


def task_id_of(request: Any) -> str | None:
    tracking = getattr(request, TRACKING_ATTR, None)
    if tracking is not None:
        return tracking.id
    meta = meta_of(request)
    return meta["task"].get("id") if meta else None


def current_task(request: Any) -> TaskbadgerTask | None:
    tracking = getattr(request, TRACKING_ATTR, None)
    if tracking is None:
        return None
    if tracking.meta["task"].get("data_omitted") and tracking.task.data is None:
        try:  # data was too large for the headers: fetch it once, on explicit request
            tracking.task._task = type(tracking.task).get(tracking.id)._task
            tracking.meta["task"]["data_omitted"] = False
        except Exception as err:
            log.warning("Task Badger: could not fetch task %r: %s", tracking.id, err)
    return tracking.task


def on_start(celery_task: Any, request: Any) -> None:
    if getattr(request, "is_eager", False):
        return  # .apply() and task_always_eager are not tracked
    meta = meta_of(request) or _create_at_start(celery_task, request)
    if meta is None:
        return
    tracking = Tracking(request.id, meta)
    tracking.successors = _successor_names(request)
    setattr(request, TRACKING_ATTR, tracking)
    fields: dict[str, Any] = {"status": StatusEnum.PROCESSING.value}
    if not getattr(request, "retries", 0):
        fields["start_time"] = _now()
    if meta.get("stale_timeout"):
        fields["stale_timeout"] = meta["stale_timeout"]  # only once running: queued tasks never go stale
    delivery.submit(tracking.id, fields)
    tracking.set_status(StatusEnum.PROCESSING)
    tracking.token = enter_task(tracking.id, meta["task"].get("parent"))
    interval = meta.get("heartbeat_interval")
    if interval:
        get_heartbeat().start(tracking.id, interval)
        tracking.heartbeat = True


def _create_at_start(celery_task: Any, request: Any) -> dict[str, Any] | None:
    """Track a task whose publisher did not (not configured there, or the API was down then)."""
    # Runs for every task the publisher did not track, tracked here or not: cheapest refusals first.
    config = _config.get_config()
    if config is None:
        return None
    system = config.system("celery")
    base_class = _uses_base_class(celery_task)
    if system is None and not base_class:
        return None
    name = getattr(celery_task, "name", "") or ""
    if (name.startswith("celery.") or getattr(request, TRACK_KEY, None) is False
            or getattr(request, MAYBE_CREATED_KEY, False)):
        return None
    if not (base_class or (system is not None and system.track_task(name))):
        return None
    if not delivery.publish_breaker.allow():
        return None
    options = validate(name, {**decorator_options(celery_task), **(getattr(request, KWARGS_KEY, None) or {})})
    options.pop("track", None)
    fields = _create_fields(name, options, system, request.id, request.args, request.kwargs,
                            (getattr(request, "delivery_info", None) or {}).get("routing_key"), None, None)
    fields.update(status=StatusEnum.PROCESSING, start_time=_now())
    heartbeat, stale = _heartbeat_options(options, system)
    if stale:
        fields["stale_timeout"] = stale
    task, _ = _create(fields)
    if task is None:
        return None
    return {"task": _header_fields(task), "heartbeat_interval": heartbeat, "stale_timeout": None}


def on_end(celery_task: Any, request: Any, state: str | None, retval: Any) -> None:
    tracking: Tracking | None = getattr(request, TRACKING_ATTR, None)
    if tracking is None:
        return
    if tracking.token is not None:
        exit_task(tracking.token)
        tracking.token = None
    if tracking.heartbeat:
        get_heartbeat().stop(tracking.id)
    _forget_received(request.id)
    if tracking.finished or tracking.is_finished():
        return  # already final, e.g. set in the task body: never overwrite it
    if state == "SUCCESS":
        _finish(tracking, StatusEnum.SUCCESS)
    elif state == "FAILURE":  # normally already handled by on_failure, which has the traceback
        _finish(tracking, StatusEnum.ERROR, data=_error_data(tracking, retval, None, request))
    elif state == "RETRY" and not tracking.retry_recorded:
        delivery.submit(tracking.id, _retry_fields(tracking, request, getattr(retval, "exc", None)))
    elif state == "IGNORED":
        _finish(tracking, StatusEnum.CANCELLED)
    elif state == "REJECTED":
        if getattr(retval, "requeue", False):
            delivery.submit(tracking.id, {"status": StatusEnum.PENDING.value})  # it will run again
        else:
            _finish(tracking, StatusEnum.CANCELLED)


def on_failure(celery_task: Any, task_id: str | None, exception: BaseException | None, einfo: Any) -> None:
    from celery.exceptions import Ignore, Reject

    if isinstance(exception, (Ignore, Reject)):
        return  # not errors: the worker's postrun records them
    request = getattr(celery_task, "request", None)
    tracking: Tracking | None = getattr(request, TRACKING_ATTR, None)
    if tracking is not None and tracking.celery_id == task_id:
        if not tracking.finished and not tracking.is_finished():
            _finish(tracking, StatusEnum.ERROR, data=_error_data(tracking, exception, einfo, request))
        return
    # The worker's main process reports hard time limits and lost worker children.
    meta = meta_of(request) if request is not None and getattr(request, "id", None) == task_id else None
    tb_id = meta["task"]["id"] if meta else _forget_received(task_id)
    if tb_id is None:
        return
    data = exception_data(exception, _failure_text(exception, einfo, request)) if exception else {}
    fields: dict[str, Any] = {"status": StatusEnum.ERROR.value, "end_time": _now()}
    base = meta["task"].get("data") if meta is not None else None
    if meta is not None and not meta["task"].get("data_omitted") and isinstance(base, (dict, type(None))):
        fields["data"] = {**(base or {}), **data}  # PATCH replaces data: keep what the task had
    else:
        fields["merge_data"] = data  # data unknown here: the dispatcher merges into the current data
    delivery.submit(tb_id, fields, final=True)


def on_revoked(request: Any, terminated: bool, expired: bool) -> None:
    meta = meta_of(request)
    tb_id = meta["task"]["id"] if meta else _forget_received(getattr(request, "id", None))
    if tb_id is None:
        return
    _forget_received(getattr(request, "id", None))
    reason = "expired" if expired else ("terminated" if terminated else "revoked")
    delivery.submit(tb_id, {"status": StatusEnum.CANCELLED.value, "end_time": _now(),
                            "merge_data": {"celery_revoked": reason}}, final=True)


def _retry_fields(tracking: Tracking, request: Any, exc: BaseException | None) -> dict[str, Any]:
    data: dict[str, Any] = {"retries": (getattr(request, "retries", 0) or 0) + 1}
    if exc is not None:
        data["last_exception"] = exception_data(exc)["exception"]
    return {"status": StatusEnum.PENDING.value, **_with_data(tracking, data)}


def _record_retry(tracking: Tracking) -> None:
    """Back to pending, sent synchronously *before* the retry message is published: the next attempt
    may start at once in another worker process, whose updates must come after this one."""
    import sys

    import celery

    request = celery.current_task.request
    exc = tracking.retry_exc or sys.exc_info()[1]
    fields = _retry_fields(tracking, request, exc)
    tracking.retry_recorded = True
    try:
        tracking.task.update(**fields)
    except Exception as err:
        log.warning("Task Badger: could not record the retry of task %r now (%s); it is queued", tracking.id, err)
        delivery.submit(tracking.id, fields)


def _finish(tracking: Tracking, status: StatusEnum, data: dict[str, Any] | None = None) -> None:
    fields: dict[str, Any] = {"status": status.value, "end_time": _now()}
    if data is not None:
        fields.update(data)
    delivery.submit(tracking.id, fields, final=True)
    tracking.finished = True
    tracking.set_status(status)


def _with_data(tracking: Tracking, extra: dict[str, Any]) -> dict[str, Any]:
    """PATCH replaces ``data``: merge with the data we know, or let the dispatcher fetch it first."""
    current = tracking.data
    if tracking.meta["task"].get("data_omitted") and current is None:
        return {"merge_data": extra}
    if current is not None and not isinstance(current, dict):
        return {"merge_data": extra}
    merged = {**(current or {}), **extra}
    tracking.data = merged
    return {"data": merged}


def _error_data(tracking: Tracking, exc: Any, einfo: Any, request: Any) -> dict[str, Any]:
    if not isinstance(exc, BaseException):
        exc = RuntimeError(str(exc))
    extra = exception_data(exc, _failure_text(exc, einfo, request))
    retries = getattr(request, "retries", 0) or 0
    if retries:
        extra["retries"] = retries
    return _with_data(tracking, extra)


def _failure_text(exc: BaseException | None, einfo: Any, request: Any) -> str | None:
    """Celery's traceback text, with time limits spelled out."""
    from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

    text = getattr(einfo, "traceback", None)
    if isinstance(exc, TimeLimitExceeded) and not isinstance(exc, SoftTimeLimitExceeded):
        limit = exc.args[0] if exc.args else getattr(request, "time_limit", None)
        return f"TimeLimitExceeded: hard time limit ({limit} s) exceeded; the worker killed the task\n{text or ''}"
    if isinstance(exc, SoftTimeLimitExceeded):
        limit = getattr(request, "soft_time_limit", None) or (getattr(request, "timelimit", None) or (None, None))[1]
        return f"SoftTimeLimitExceeded: soft time limit ({limit} s) exceeded\n{text or ''}"
    return text


# -- worker main process: remember which messages are tracked -------------------------------------

#: celery id -> Task Badger id for tracked messages this worker received, for the events that only
#: carry the celery id (hard time limits). Bounded: the oldest entries go first.
_received: OrderedDict[str, str] = OrderedDict()
_received_lock = threading.Lock()
MAX_RECEIVED = 10_000


def _after_fork_in_child() -> None:
    # Billiard forks replacement pool children from its supervisor thread: the lock may be copied
    # held by the main thread (on_received), which would hang the child in on_end forever.
    global _received_lock
    _received_lock = threading.Lock()
    _received.clear()  # the parent's bookkeeping, not the child's


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def on_received(request: Any) -> None:
    meta = meta_of(request)
    if meta is None:
        return
    with _received_lock:
        _received[request.id] = meta["task"]["id"]
        while len(_received) > MAX_RECEIVED:
            _received.popitem(last=False)


def _forget_received(celery_id: str | None) -> str | None:
    if celery_id is None:
        return None
    with _received_lock:
        return _received.pop(celery_id, None)


def flush(timeout: float = 10.0) -> bool:
    return delivery.flush(timeout)


_throttle: dict[str, float] = {}


def _log_throttled(key: str, message: str, *args: Any) -> None:
    now = time.monotonic()
    if now - _throttle.get(key, -1e9) >= 60:
        _throttle[key] = now
        log.warning(message, *args)
