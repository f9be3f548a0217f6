"""What each Celery event means for the Task Badger task.

The signal handlers in ``taskbadger.celery`` call these functions; these decide what to create or
update and hand worker-side updates to the dispatcher (``taskbadger.delivery``). Nothing here
talks HTTP except the create at publish time, which must be inline because its id travels in the
message. The message headers are read and written by ``taskbadger.celery_headers``, which checks
everything a message carries.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from typing import Any

from . import config as _config
from . import delivery
from ._runtime import log_throttled, short
from ._threads import start_daemon_thread
from .api import send_create
from .celery_headers import (
    MAYBE_CREATED_KEY,
    Incoming,
    Meta,
    check_outgoing,
    header_fields,
    read_incoming,
    read_task_id,
    write_meta,
)
from .celery_options import KWARGS_KEY, decorator_options, recorded_args, validate
from .errors import exception_data
from .exceptions import CreateSkipped, RateLimited, ServerError, TransportError
from .heartbeat import get_heartbeat
from .models import MAX_NAME_LENGTH, TERMINAL_STATUSES, StatusEnum, TaskModel
from .scope import enter_task, exit_task, parent_for_new_task
from .task import Task as TaskbadgerTask

log = logging.getLogger("taskbadger")

TRACKING_ATTR = "taskbadger_tracking"  # set on the Celery request while a tracked task runs
CANVAS_TASKS = {"celery.map": "map", "celery.starmap": "starmap", "celery.chunks": "chunks"}
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
    Our headers on it are checked first and written back in their checked form, whatever happens next.
    """
    incoming = check_outgoing(message, name)
    running = _running_tracking()
    if running is not None and running.celery_id == celery_id:
        write_meta(message, running.meta)  # task.retry(): same Celery id, same Task Badger task
        if not running.retry_recorded:
            _record_retry(running)
        return None
    if incoming.meta is not None:
        return None  # already tracked (a re-publish of the same message)
    # The options stay on a message that is not tracked here: the worker honours them if it ends up
    # tracking the task itself (publisher not configured, or the API unreachable at publish time).
    if incoming.track is False or not _config.is_configured():
        return None

    args, kwargs = _message_args(body)
    tracked_name, canvas_data = name, None
    if name in CANVAS_TASKS:
        inner = kwargs.get("task") if isinstance(kwargs, dict) else None
        inner_name = inner.get("task") if isinstance(inner, dict) else getattr(inner, "name", None)
        tracked_name = inner_name if isinstance(inner_name, str) and inner_name else name
        items = kwargs.get("it") if isinstance(kwargs, dict) else None
        canvas_data = {"canvas": CANVAS_TASKS[name], "items": len(items) if hasattr(items, "__len__") else None}
    elif name.startswith("celery."):
        return None

    celery_task = _registered_task(tracked_name)
    system = _celery_system()
    if not (incoming.track is True or _uses_base_class(celery_task)
            or (system is not None and system.track_task(tracked_name))):
        return None
    if not delivery.publish_breaker.allow():
        return None

    options = {**_checked_decorator_options(celery_task, tracked_name), **incoming.options}
    options.pop("track", None)
    fields = _create_fields(tracked_name, options, system, celery_id, args, kwargs, routing_key, declare, canvas_data)
    heartbeat, stale_timeout = _heartbeat_options(options, system)
    task, maybe_created = _create(fields)
    if task is None:
        if maybe_created:
            message[MAYBE_CREATED_KEY] = True
        return None
    message.pop(KWARGS_KEY, None)  # resolved into the created task
    write_meta(message, Meta(header_fields(task.to_dict()), heartbeat, stale_timeout))
    return task


def _checked_decorator_options(celery_task: Any, task_name: str) -> dict[str, Any]:
    """The decorator's options, checked once per task class."""
    if celery_task is None:
        return {}
    cls = type(celery_task)
    checked = cls.__dict__.get("_taskbadger_checked_options")
    if checked is None:
        checked = validate(task_name, decorator_options(celery_task))
        try:
            cls._taskbadger_checked_options = checked
        except (AttributeError, TypeError):
            pass
    return checked


def _create_fields(name: str, options: dict[str, Any], system: Any, celery_id: str | None, args: Any,
                   kwargs: Any, routing_key: str | None, declare: Any, canvas_data: dict | None) -> dict[str, Any]:
    """The create body for a task: ``options`` are already checked (``celery_options.validate``)."""
    fields: dict[str, Any] = {
        "name": options.get("name", name if len(name) <= MAX_NAME_LENGTH else name[:MAX_NAME_LENGTH - 1] + "…"),
        "status": StatusEnum.PENDING,
        "external_id": celery_id if isinstance(celery_id, str) else None,
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
        log_throttled(f"publish:{name[:200]}", 60.0, logging.WARNING, "Task Badger: task %s published untracked: %s",
                      short(name), err)
        certainly_not = isinstance(err, RateLimited) or (isinstance(err, ServerError) and err.status_code == 503) or (
            isinstance(err, TransportError) and not err.reached_server)
        return None, not certainly_not
    except Exception as err:
        log_throttled(f"create:{name[:200]}:{type(err).__name__}", 60.0, logging.WARNING,
                      "Task Badger: task %s published untracked: %s", short(name), err)
        return None, False
    delivery.publish_breaker.success()
    return task, False


def _heartbeat_options(options: dict[str, Any], system: Any) -> tuple[float | None, int | None]:
    interval = options.get("heartbeat_interval", system.heartbeat_interval if system is not None else None)
    stale = options.get("stale_timeout", system.stale_timeout if system is not None else None)
    if stale is None and interval:
        stale = max(1, math.ceil(interval * STALE_TIMEOUT_FACTOR))
    return interval, stale


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

    def __init__(self, celery_id: str, meta: Meta) -> None:
        self.celery_id = celery_id
        self.meta = meta
        self._task: TaskbadgerTask | None = None
        self._status: StatusEnum | str = meta.task.get("status") or StatusEnum.PENDING
        self.token: Any = None
        self.finished = False
        self.heartbeat = False
        self.retry_exc: BaseException | None = None
        self.retry_recorded = False
        self.successors: frozenset[str] = frozenset()

    @property
    def id(self) -> str:
        return self.meta.id

    @property
    def task(self) -> TaskbadgerTask:
        if self._task is None:
            self._task = TaskbadgerTask(TaskModel.from_dict(self.meta.task))
            self._task._task.status = self._status
        return self._task

    @property
    def data(self) -> Any:
        return self._task.data if self._task is not None else self.meta.task.get("data")

    @data.setter
    def data(self, value: Any) -> None:
        self.meta.task["data"] = value
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


def note_retry_exception(request: Any, exc: BaseException | None) -> None:
    tracking = getattr(request, TRACKING_ATTR, None)
    if tracking is not None and exc is not None:
        tracking.retry_exc = exc


def task_id_of(request: Any) -> str | None:
    tracking = getattr(request, TRACKING_ATTR, None)
    return tracking.id if tracking is not None else None


def current_task(request: Any) -> TaskbadgerTask | None:
    tracking = getattr(request, TRACKING_ATTR, None)
    if tracking is None:
        return None
    if tracking.meta.task.get("data_omitted") and tracking.task.data is None:
        try:  # data was too large for the headers: fetch it once, on explicit request
            tracking.task._task = type(tracking.task).get(tracking.id)._task
            tracking.meta.task["data_omitted"] = False
        except Exception as err:
            log.warning("Task Badger: could not fetch task %s: %s", short(tracking.id), err)
    return tracking.task


def on_start(celery_task: Any, request: Any) -> None:
    if getattr(request, "is_eager", False):
        return  # .apply() and task_always_eager are not tracked
    name = getattr(celery_task, "name", None) or ""
    incoming = read_incoming(request, name)
    meta = incoming.meta or _create_at_start(celery_task, request, incoming)
    if meta is None:
        return
    tracking = Tracking(request.id, meta)
    tracking.successors = _successor_names(request)
    setattr(request, TRACKING_ATTR, tracking)
    fields: dict[str, Any] = {"status": StatusEnum.PROCESSING.value}
    if not getattr(request, "retries", 0):
        fields["start_time"] = _now()
    if meta.stale_timeout:
        fields["stale_timeout"] = meta.stale_timeout  # only once running: queued tasks never go stale
    delivery.submit(tracking.id, fields)
    tracking.set_status(StatusEnum.PROCESSING)
    tracking.token = enter_task(tracking.id, meta.task.get("parent"))
    if meta.heartbeat_interval:
        get_heartbeat().start(tracking.id, meta.heartbeat_interval)
        tracking.heartbeat = True


def _create_at_start(celery_task: Any, request: Any, incoming: Incoming) -> Meta | None:
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
    if name.startswith("celery.") or incoming.track is False or incoming.maybe_created:
        return None
    if not (base_class or incoming.track is True or (system is not None and system.track_task(name))):
        return None
    if not delivery.publish_breaker.allow():
        return None
    options = {**_checked_decorator_options(celery_task, name), **incoming.options}
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
    return Meta(header_fields(task.to_dict()), heartbeat, None)


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
    if _lost_its_child(exception):
        close_recent_successes()
    name = getattr(celery_task, "name", None) or ""
    meta = read_incoming(request, name).meta if request is not None and getattr(request, "id", None) == task_id \
        else None
    tb_id = meta.id if meta is not None else _forget_received(task_id)
    if tb_id is None:
        return
    _forget_received(task_id)
    data = exception_data(exception, _failure_text(exception, einfo, request)) if exception else {}
    fields: dict[str, Any] = {"status": StatusEnum.ERROR.value, "end_time": _now()}
    base = meta.task.get("data") if meta is not None else None
    if meta is not None and not meta.task.get("data_omitted") and isinstance(base, (dict, type(None))):
        fields["data"] = {**(base or {}), **data}  # PATCH replaces data: keep what the task had
    else:
        fields["merge_data"] = data  # data unknown here: the dispatcher merges into the current data
    delivery.submit(tb_id, fields, final=True)


def on_revoked(request: Any, terminated: bool, expired: bool) -> None:
    celery_id = getattr(request, "id", None)
    tb_id = read_task_id(request) or _forget_received(celery_id)
    if tb_id is None:
        return
    _forget_received(celery_id)
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
        log.warning("Task Badger: could not record the retry of task %s now (%s); it is queued", short(tracking.id),
                    err)
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
    if tracking.meta.task.get("data_omitted") and current is None:
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
#: When a pool child dies, this many of the worker's most recent successes are checked: a task that
#: finished just before the kill may have had its final update still queued in the dead child.
RECENT_SUCCESSES = 64


def _after_fork_in_child() -> None:
    # Billiard forks replacement pool children from its supervisor thread: the lock may be copied
    # held by the main thread (on_received), which would hang the child in on_end forever.
    global _received_lock
    _received_lock = threading.Lock()
    _received.clear()  # the parent's bookkeeping, not the child's


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def on_received(request: Any) -> None:
    tb_id = read_task_id(request)
    if tb_id is None:
        return
    with _received_lock:
        _received[request.id] = tb_id
        while len(_received) > MAX_RECEIVED:
            _received.popitem(last=False)


def _forget_received(celery_id: str | None) -> str | None:
    if celery_id is None:
        return None
    with _received_lock:
        return _received.pop(celery_id, None)


def _lost_its_child(exception: BaseException | None) -> bool:
    from billiard.exceptions import WorkerLostError
    from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

    return isinstance(exception, (WorkerLostError, TimeLimitExceeded)) and not isinstance(
        exception, SoftTimeLimitExceeded)


def close_recent_successes() -> None:
    """A pool child died (killed, or a hard time limit). The worker's main process knows which tasks
    succeeded; a final update still queued in the dead child is lost with it. Close the tracked ones
    among the recent successes that Task Badger does not know as finished (the dispatcher fetches each
    first and never overwrites a final state)."""
    from celery.worker import state

    try:
        recent = list(state.successful_requests)[-RECENT_SUCCESSES:]
    except RuntimeError:  # changed while we read it: the next lost child looks again
        return
    with _received_lock:
        found = [(celery_id, _received.pop(celery_id)) for celery_id in recent if celery_id in _received]
    for _, tb_id in found:
        delivery.submit(tb_id, {"status": StatusEnum.SUCCESS.value, delivery.UNLESS_FINAL: True}, final=True)
    if found:
        log.info("Task Badger: a worker child died; %d recent success(es) it may not have reported are being "
                 "checked", len(found))


# -- publish side: tasks whose message never left ---------------------------------------------------

#: How long a task created at publish waits for Celery's ``after_task_publish`` before it is taken for a
#: message that was never published (broker down) and cancelled. Only for publishes outside the base
#: class's ``apply_async``, which sees the failure itself.
CONFIRM_WINDOW = 60.0


def publish_failed(task: TaskbadgerTask, reason: str) -> None:
    """The task was created but its message was not published: it will never run. End it."""
    data = task.data if isinstance(task.data, dict) else {}
    delivery.submit(task.id, {"status": StatusEnum.CANCELLED.value, "end_time": _now(),
                              "data": {**data, "publish_error": reason}}, final=True)
    log_throttled(f"publish-failed:{task.name[:200]}", 60.0, logging.WARNING,
                  "Task Badger: the message of task %s was not published (%s); the task is cancelled",
                  short(task.name), short(reason, 200))


class Confirmations:
    """Created tasks waiting for their message to be confirmed published, per process."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: OrderedDict[str, tuple[TaskbadgerTask, float]] = OrderedDict()
        self._thread: threading.Thread | None = None
        self.pid = os.getpid()

    def expect(self, celery_id: str, task: TaskbadgerTask) -> None:
        with self._cond:
            self._waiting[celery_id] = (task, time.monotonic() + CONFIRM_WINDOW)
            if self._thread is None:
                self._thread = start_daemon_thread(self._run, "taskbadger-publish-confirmations")
            self._cond.notify()

    def confirm(self, celery_id: Any) -> None:
        if self._waiting:  # read without the lock: most publishes have nothing waiting
            with self._cond:
                self._waiting.pop(celery_id, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting:
                    self._cond.wait()
                _, (task, deadline) = next(iter(self._waiting.items()))
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                self._waiting.popitem(last=False)
            try:
                publish_failed(task, f"the message was not published within {CONFIRM_WINDOW:g} s")
            except Exception:
                log.exception("Task Badger: internal error while closing task %s", short(task.id))


_confirmations: Confirmations | None = None
_confirmations_lock = threading.Lock()


def confirmations() -> Confirmations:
    global _confirmations
    current = _confirmations
    if current is not None and current.pid == os.getpid():
        return current
    with _confirmations_lock:
        if _confirmations is None or _confirmations.pid != os.getpid():
            _confirmations = Confirmations()
        return _confirmations


def _forget_confirmations_after_fork() -> None:
    global _confirmations, _confirmations_lock
    _confirmations, _confirmations_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_confirmations_after_fork)
