"""Worker-side events: what each Celery event means for the Task Badger task.

A task starts (``processing``), ends (``success``, ``error``, ``cancelled``, back to ``pending`` for a
retry or a requeue), is revoked or expires, or loses its pool child. Every update goes to the queue of
pending updates (``delivery``): nothing here waits for the API, except the create for a task its
publisher could not track, which must be inline because the task's body may ask for it.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import context_providers
from ..config import get_config
from ..context_providers import error_context
from ..delivery import merge, sender
from ..delivery.heartbeat import get_heartbeat
from ..inline import find, settle_later
from ..models import StatusEnum, completed_progress, exception_data
from ..scope import enter_task, exit_task
from .fields import (
    checked_decorator_options,
    create_fields,
    create_now,
    heartbeat_options,
    now,
    successor_names,
    uses_base_class,
)
from .headers import Incoming, Meta, header_fields, read_incoming, read_task_id
from .publish import data_fields, retry_fields
from .state import SETTLE_ATTR, TRACKING_ATTR, Tracking, received, tracking_of

log = logging.getLogger("taskbadger")

#: When a pool child dies, this many of the worker's most recent successes are checked: a task that
#: finished just before the kill may have had its final update still queued in the dead child.
RECENT_SUCCESSES = 64


def on_start(celery_task: Any, request: Any) -> None:
    if getattr(request, "is_eager", False):
        return  # .apply() and task_always_eager are not tracked
    incoming = read_incoming(request, getattr(celery_task, "name", None) or "")
    meta = incoming.meta or _create_at_start(celery_task, request, incoming)
    if meta is None:
        return
    tracking = Tracking(request.id, meta)
    tracking.successors = successor_names(request)
    setattr(request, TRACKING_ATTR, tracking)
    fields: dict[str, Any] = {"status": StatusEnum.PROCESSING.value}
    if not getattr(request, "retries", 0):
        fields["start_time"] = now()
    if meta.stale_timeout:
        fields["stale_timeout"] = meta.stale_timeout  # only once running: queued tasks never go stale
    sender.submit(tracking.id, fields)
    tracking.set_status(StatusEnum.PROCESSING)
    tracking.token = enter_task(tracking.id, meta.task.get("parent"))
    tracking.snapshots = context_providers.start()
    if meta.heartbeat_interval:
        get_heartbeat().start(tracking.id, meta.heartbeat_interval)
        tracking.heartbeat = True


def _create_at_start(celery_task: Any, request: Any, incoming: Incoming) -> Meta | None:
    """Track a task whose publisher did not (not configured there, or the API was failing then)."""
    # Runs for every task the publisher did not track, tracked here or not: cheapest refusals first.
    config = get_config()
    if config is None:
        return None
    system = config.system("celery")
    base_class = uses_base_class(celery_task)
    if system is None and not base_class:
        return None
    name = getattr(celery_task, "name", "") or ""
    if name.startswith("celery.") or incoming.track is False:
        return None
    if not (incoming.maybe_created or base_class or incoming.track is True
            or (system is not None and system.track_task(name))):
        return None
    options = {**checked_decorator_options(celery_task, name), **incoming.options}
    options.pop("track", None)
    if incoming.maybe_created:  # the publisher's create may have been carried out: take it up if so
        found = find(request.id)
        if found.task is not None:
            return Meta(header_fields(found.task.to_dict()), *heartbeat_options(options, system))
        if not found.asked:  # the API is failing now: record the outcome on it once it answers again
            setattr(request, SETTLE_ATTR, True)
            return None
    fields = create_fields(name, options, system, request.id, request.args, request.kwargs,
                           (getattr(request, "delivery_info", None) or {}).get("routing_key"))
    fields.update(status=StatusEnum.PROCESSING, start_time=now())
    heartbeat, stale = heartbeat_options(options, system)
    if stale:
        fields["stale_timeout"] = stale
    task = create_now(fields, "start").task
    if task is None:
        return None
    return Meta(header_fields(task.to_dict()), heartbeat, None)


def on_end(celery_task: Any, request: Any, state: str | None, retval: Any) -> None:
    tracking = tracking_of(request)
    if tracking is None:
        if getattr(request, SETTLE_ATTR, False):
            _settle(request, state, retval)
        return
    if tracking.token is not None:
        exit_task(tracking.token)
        tracking.token = None
    try:
        _end(tracking, request, state, retval)
    finally:
        context_providers.stop(tracking.snapshots)
        tracking.snapshots = None


def _end(tracking: Tracking, request: Any, state: str | None, retval: Any) -> None:
    if tracking.heartbeat:
        get_heartbeat().stop(tracking.id)
    received().forget(request.id)
    if tracking.finished or tracking.is_finished():
        return  # already final, e.g. set in the task body: never overwrite it
    if state == "SUCCESS":
        _finish(tracking, StatusEnum.SUCCESS)
    elif state == "FAILURE":  # normally already handled by on_failure, which has the traceback
        _finish(tracking, StatusEnum.ERROR, data=_error_data(tracking, retval, None, request))
    elif state == "RETRY" and not tracking.retry_recorded:
        sender.submit(tracking.id, retry_fields(tracking, request, getattr(retval, "exc", None)))
    elif state == "IGNORED":
        _finish(tracking, StatusEnum.CANCELLED)
    elif state == "REJECTED":
        if getattr(retval, "requeue", False):
            sender.submit(tracking.id, {"status": StatusEnum.PENDING.value})  # it will run again
        else:
            _finish(tracking, StatusEnum.CANCELLED)


def _settle(request: Any, state: str | None, retval: Any) -> None:
    """A run whose task may exist but could not be looked up when it started has ended: its outcome is
    recorded on the task once the API answers (``inline.settle_later``)."""
    statuses = {"SUCCESS": StatusEnum.SUCCESS, "FAILURE": StatusEnum.ERROR, "IGNORED": StatusEnum.CANCELLED,
                "REJECTED": StatusEnum.CANCELLED}
    status = statuses.get(state or "")
    if status is None:
        return  # a retry: the next attempt looks for it again
    fields: dict[str, Any] = {"status": status.value, "end_time": now()}
    if status is StatusEnum.ERROR:
        exc = retval if isinstance(retval, BaseException) else RuntimeError(str(retval))
        fields[merge.MERGE_DATA] = exception_data(exc)
    settle_later(request.id, fields)


def on_failure(celery_task: Any, task_id: str | None, exception: BaseException | None, einfo: Any) -> None:
    from celery.exceptions import Ignore, Reject

    if isinstance(exception, (Ignore, Reject)):
        return  # not errors: the worker's postrun records them
    request = getattr(celery_task, "request", None)
    tracking = tracking_of(request)
    if tracking is not None and tracking.celery_id == task_id:
        if not tracking.finished and not tracking.is_finished():
            _finish(tracking, StatusEnum.ERROR, data=_error_data(tracking, exception, einfo, request))
        return
    # The worker's main process reports hard time limits and lost pool children.
    if _lost_its_child(exception):
        close_recent_successes()
    name = getattr(celery_task, "name", None) or ""
    meta = read_incoming(request, name).meta if request is not None and getattr(request, "id", None) == task_id \
        else None
    task_id_tb = meta.id if meta is not None else received().forget(task_id)
    if task_id_tb is None:
        return
    received().forget(task_id)
    extra = exception_data(exception, _failure_text(exception, einfo, request)) if exception else {}
    known = meta is not None and not meta.task.get("data_omitted")
    fields: dict[str, Any] = {"status": StatusEnum.ERROR.value, "end_time": now(),
                              **merge.data_fields(meta.task.get("data") if meta else None, extra, known)}
    sender.submit(task_id_tb, fields, final=True)


def on_revoked(request: Any, terminated: bool, expired: bool) -> None:
    celery_id = getattr(request, "id", None)
    task_id = read_task_id(request) or received().forget(celery_id)
    if task_id is None:
        return
    received().forget(celery_id)
    reason = "expired" if expired else ("terminated" if terminated else "revoked")
    sender.submit(task_id, {"status": StatusEnum.CANCELLED.value, "end_time": now(),
                            merge.MERGE_DATA: {"celery_revoked": reason}}, final=True)


def on_received(request: Any) -> None:
    """The main process received a message: remember the tracked ones."""
    task_id = read_task_id(request)
    if task_id is not None:
        received().remember(request.id, task_id)


def _finish(tracking: Tracking, status: StatusEnum, data: dict[str, Any] | None = None) -> None:
    fields: dict[str, Any] = {"status": status.value, "end_time": now()}
    if status is StatusEnum.SUCCESS:
        fields.update(completed_progress(tracking.value, tracking.value_max))
    if data is not None:
        fields.update(data)
    sender.submit(tracking.id, fields, final=True)
    tracking.finished = True
    tracking.set_status(status)


def _error_data(tracking: Tracking, exc: Any, einfo: Any, request: Any) -> dict[str, Any]:
    if not isinstance(exc, BaseException):
        exc = RuntimeError(str(exc))
    extra: dict[str, Any] = {**exception_data(exc, _failure_text(exc, einfo, request)), **error_context(exc)}
    retries = getattr(request, "retries", 0) or 0
    if retries:
        extra["retries"] = retries
    return data_fields(tracking, extra)


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


def _lost_its_child(exception: BaseException | None) -> bool:
    from billiard.exceptions import WorkerLostError
    from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

    return isinstance(exception, (WorkerLostError, TimeLimitExceeded)) and not isinstance(
        exception, SoftTimeLimitExceeded)


def close_recent_successes() -> None:
    """A pool child died (killed, or a hard time limit). The worker's main process knows which tasks
    succeeded; a final update still queued in the dead child is lost with it. Close the tracked ones
    among the recent successes that Task Badger does not know as finished (the sender fetches each
    first and never overwrites a final state)."""
    from celery.worker import state

    try:
        recent = list(state.successful_requests)[-RECENT_SUCCESSES:]
    except RuntimeError:  # changed while we read it: the next lost child looks again
        return
    found = received().forget_all(recent)
    for _, task_id in found:
        sender.submit(task_id, {"status": StatusEnum.SUCCESS.value, merge.UNLESS_FINAL: True}, final=True)
    if found:
        log.info("Task Badger: a worker child died; %d recent success(es) it may not have reported are being "
                 "checked", len(found))
