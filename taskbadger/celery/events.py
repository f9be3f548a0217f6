"""Worker-side events: what each Celery event means for the Task Badger task.

A task starts (``processing``), ends (``success``, ``error``, ``cancelled``, back to ``pending`` for a
retry or a requeue, ``success`` when it replaced itself), is revoked or expires, or loses its pool child.
Every update goes to the queue of pending updates (``delivery``): nothing here waits for the API, except
the create for a task its publisher could not track, which must be inline because the task's body may
ask for it.
"""

from __future__ import annotations

import atexit
import logging
import math
import sys
from collections.abc import Mapping
from typing import Any

from .. import lifecycle
from .._runtime import log_once, short
from ..config import get_config, why_unconfigured
from ..delivery import merge, sender
from ..models import StatusEnum, exception_data
from .fields import checked_decorator_options, create_fields, successor_names, uses_base_class
from .headers import Incoming, Meta, read_incoming, read_message_meta, read_task_id
from .publish import retry_number
from .state import SETTLE_ATTR, TRACKING_ATTR, Tracking, received, tracking_of

log = logging.getLogger("taskbadger")

#: When a pool child dies, this many of the worker's most recent successes are checked: a task that
#: finished just before the kill may have had its final update still queued in the dead child.
RECENT_SUCCESSES = 64
#: In the data of a task that replaced itself (``self.replace(sig)``): it ends ``success``, the tasks of ``sig``
#: are tracked as tasks published from its body.
REPLACED_KEY = "celery_replaced"


def on_start(celery_task: Any, request: Any) -> None:
    if getattr(request, "is_eager", False):
        return  # .apply() and task_always_eager are not tracked
    if get_config() is None:
        # Not configured in this worker (no key, settings with errors, ENABLED False), whatever the publisher
        # was: the task runs untracked, and ``self.taskbadger_task`` is None, so that the body's
        # ``if tb: tb.update(...)`` never calls an API this process cannot reach.
        return
    incoming = read_incoming(request, getattr(celery_task, "name", None) or "")
    meta = incoming.meta or _create_at_start(celery_task, request, incoming)
    if meta is None:
        return
    tracking = Tracking(request.id, meta)
    tracking.successors = successor_names(request)
    setattr(request, TRACKING_ATTR, tracking)
    redelivered = _redelivered(request)
    # a message delivered again, or sent again by the worker's main process (``progress_omitted``), carries what its
    # publisher wrote, not the progress the lost run reported
    lifecycle.start(tracking, first_attempt=not getattr(request, "retries", 0),
                    progress_carried=not redelivered and not meta.task.get("progress_omitted"), run_again=redelivered)


def _redelivered(request: Any) -> bool:
    """Whether the broker delivers this message again (``acks_late``: its worker was lost or shut down cold while
    it ran, or before it started): the same task runs again and keeps its first start."""
    delivery_info = getattr(request, "delivery_info", None)
    return isinstance(delivery_info, dict) and delivery_info.get("redelivered") is True


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
    queue = (getattr(request, "delivery_info", None) or {}).get("routing_key")
    # Delivered again (``acks_late``: its worker was lost, or shut down cold), it was created by the run that was
    # lost, which nobody ended: that task is taken up (two tasks for one message, the first processing for good)
    redelivered = _redelivered(request)
    started = lifecycle.create_at_start(
        request.id, options, system,
        lambda: create_fields(name, options, system, request.id, request.args, request.kwargs, queue),
        maybe_created=incoming.maybe_created or redelivered, open_only=redelivered,
        time_limit=_earliest_time_limit(celery_task, request))
    if started.settle:  # the API is failing now: record the outcome on it once it answers again
        setattr(request, SETTLE_ATTR, True)
    return started.meta


def _earliest_time_limit(celery_task: Any, request: Any) -> float | None:
    """The earliest time limit (soft or hard, seconds from its start) the worker applies to this run, resolved as
    Celery's worker resolves each: the message's (``apply_async(soft_time_limit=...)``), else the task's, else the
    app's setting. None when it has none (a value that is not a positive number is none: Celery's to refuse)."""
    given = getattr(request, "timelimit", None)
    hard, soft = given if isinstance(given, (list, tuple)) and len(given) == 2 else (None, None)
    conf = getattr(getattr(celery_task, "app", None), "conf", None)
    worker_hard, worker_soft = _worker_limits
    limits = [_first_limit(soft, getattr(celery_task, "soft_time_limit", None), worker_soft,
                           _setting(conf, "task_soft_time_limit")),
              _first_limit(hard, getattr(celery_task, "time_limit", None), worker_hard,
                           _setting(conf, "task_time_limit"))]
    return min((limit for limit in limits if limit is not None), default=None)


#: The worker's own (hard, soft) time limits, its pool's defaults (``celery worker --time-limit/--soft-time-limit``,
#: else the app's settings), noted when it starts (``note_worker``); pool children inherit them.
_worker_limits: tuple[Any, Any] = (None, None)


def note_worker(worker: Any) -> None:
    """The worker is starting: note its time limits (see ``_earliest_time_limit``)."""
    global _worker_limits
    _worker_limits = (getattr(worker, "time_limit", None), getattr(worker, "soft_time_limit", None))


def _first_limit(*candidates: Any) -> float | None:
    for limit in candidates:
        if isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit > 0:
            # an int too large for a float (a message's ``timelimit`` from any producer: JSON has no bound) is a limit
            # that never strikes, not an error that left the task untracked
            return float(limit) if limit < _FLOAT_MAX else math.inf
    return None


_FLOAT_MAX = sys.float_info.max


def _setting(conf: Any, key: str) -> Any:
    try:
        return conf.get(key) if conf is not None else None
    except Exception:  # a configuration object we cannot read: as if it set no limit
        return None


def on_end(celery_task: Any, celery_id: str | None, state: str | None, retval: Any) -> None:
    """The task's body is over (``task_postrun``). Its run is the lifecycle's current run when it is tracked (set at
    its start, in this context): found there without reading Celery's ``task.request`` (a thread-local stack, read
    through two proxies), which only the rarer outcomes need."""
    run = lifecycle.current_run()
    tracking = run if type(run) is Tracking and celery_id is not None and run.external_id == celery_id else None
    if tracking is None:
        # not tracked, or not entered here (the run of a task the body applied eagerly is its caller's)
        request = getattr(celery_task, "request", None)
        tracking = tracking_of(request)
        if tracking is None:
            if getattr(request, SETTLE_ATTR, False):
                _settle(request, state, retval)
            return
    try:
        _end(tracking, celery_task, state, retval)
    finally:
        lifecycle.leave(tracking)


def _end(tracking: Tracking, celery_task: Any, state: str | None, retval: Any) -> None:
    if state is None:
        # The body was interrupted by an exception Celery lets through (the gevent pool's hard time limit is a
        # gevent.Timeout raised in the task's greenlet): no outcome yet. The worker reports it next (task_failure
        # for TimeLimitExceeded), knowing the task only by its Celery id: keep it in the map of received tasks.
        return
    received().forget(tracking.celery_id)
    if tracking.finished or tracking.is_finished():
        return  # already final, e.g. set in the task body: never overwrite it
    if state == "SUCCESS" and tracking.retry_recorded:
        return  # ``self.retry(throw=False)`` and the body returned: its next attempt is published, and ends the task
    if state == "SUCCESS":
        lifecycle.succeed(tracking)
    elif state == "FAILURE":  # normally already handled by on_failure, which has the traceback
        _fail(tracking, retval, None, celery_task.request)
    elif state == "RETRY" and not tracking.retry_recorded:
        lifecycle.retry(tracking, retry_number(celery_task.request), getattr(retval, "exc", None))
    elif state == "REJECTED" and getattr(retval, "requeue", False) and getattr(celery_task, "acks_late", False):
        _requeued(tracking)  # it will run again (a message acknowledged on receipt cannot)
    elif state == "IGNORED" and tracking.replaced:  # self.replace(): its work goes on in the replacement
        lifecycle.succeed(tracking, {REPLACED_KEY: True})
    elif state in ("IGNORED", "REJECTED"):
        lifecycle.cancel(tracking)


def _requeued(tracking: Tracking) -> None:
    """``Reject(requeue=True)`` with ``acks_late``: back to ``pending``, sent now, before Celery gives the message
    back to its queue (after this signal): the next attempt may run at once in another worker, and a ``pending``
    queued here reached the API after its final state (the task stayed pending for good). If it cannot be sent
    now, the status is left out (the message goes back as it came: nothing travels with it); what else this
    attempt had queued (its start) is sent only while the task has no final state."""
    left = lifecycle.back_to_pending(tracking, wait=True, hand_over=True)
    if left is None:
        return
    log.warning("Task Badger: could not record the requeue of task %s now; it shows its next attempt when that "
                "starts", short(tracking.id))
    if left:
        sender.submit(tracking.id, {**left, merge.UNLESS_FINAL: True})


#: Celery's final states -> the task's (a retry is not one: the next attempt looks for the task again).
_SETTLED = {"SUCCESS": StatusEnum.SUCCESS, "FAILURE": StatusEnum.ERROR, "IGNORED": StatusEnum.CANCELLED,
            "REJECTED": StatusEnum.CANCELLED}


def _settle(request: Any, state: str | None, retval: Any) -> None:
    """A run whose task may exist but could not be looked up when it started has ended: its outcome is
    recorded on the task once the API answers (``lifecycle.settle``)."""
    status = _SETTLED.get(state or "")
    if status is not None:
        lifecycle.settle(request.id, status, retval)


def on_failure(celery_task: Any, task_id: str | None, exception: BaseException | None, einfo: Any) -> None:
    from celery.exceptions import Ignore, Reject

    if isinstance(exception, (Ignore, Reject)):
        return  # not errors: the worker's postrun records them
    request = getattr(celery_task, "request", None)
    tracking = tracking_of(request)
    if tracking is not None and tracking.celery_id == task_id:
        _fail(tracking, exception, einfo, request)
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
    lifecycle.close(task_id_tb, StatusEnum.ERROR, extra, known_data=meta.task.get("data") if meta else None,
                    data_known=meta is not None and not meta.task.get("data_omitted"))


def on_revoked(request: Any, terminated: bool, expired: bool) -> None:
    celery_id = getattr(request, "id", None)
    task_id = read_task_id(request) or received().forget(celery_id)
    if task_id is None:
        return
    received().forget(celery_id)
    reason = "expired" if expired else ("terminated" if terminated else "revoked")
    lifecycle.close(task_id, StatusEnum.CANCELLED, {"celery_revoked": reason})


def on_unknown(message_headers: Any, name: Any, exc: BaseException | None) -> None:
    """The worker received a message for a task it has no such name for (a typo, a worker running older
    code): Celery discards it and records ``NotRegistered``. Its task ends ``error``, as Celery's result."""
    name = name if isinstance(name, str) else ""
    meta = read_message_meta(message_headers, name)
    if meta is None:
        return
    from celery.exceptions import NotRegistered

    text = (f"celery.exceptions.NotRegistered: no task named {short(name, 200)} is registered in the worker "
            "that received it (a typo in the name, or a worker running older code); Celery discarded the message")
    lifecycle.close(meta.id, StatusEnum.ERROR, exception_data(NotRegistered(name), text),
                    known_data=meta.task.get("data"), data_known=not meta.task.get("data_omitted"))


def on_rejected(message_headers: Any, exc: BaseException | None) -> None:
    """The worker received a message it cannot run and discarded it: a serializer it does not accept
    (``apply_async(serializer="pickle")`` to a worker that accepts JSON only), a body that does not decode. Celery logs
    it, and the task never runs: its task ends ``error`` with the reason (it stayed ``pending`` for ever)."""
    name = message_headers.get("task") if isinstance(message_headers, Mapping) else None
    meta = read_message_meta(message_headers, name if isinstance(name, str) else "")
    if meta is None:
        return
    reason = f"{type(exc).__name__}: {exc}" if exc is not None else "it is not a Celery task message"
    error = exc if exc is not None else RuntimeError(reason)
    text = f"{short(reason, 500)}\nthe worker that received the message discarded it without running the task"
    lifecycle.close(meta.id, StatusEnum.ERROR, exception_data(error, text), known_data=meta.task.get("data"),
                    data_known=not meta.task.get("data_omitted"))


#: Tasks Celery cancelled while the worker shuts down (their ids), closed as the process exits.
_interrupted: list[str] = []


def on_cancelled(request: Any) -> None:
    """Celery cancelled a running task: a cold shutdown (SIGQUIT, a second Ctrl-C) terminates the tasks still
    running, and marks them for a retry that never comes (their messages were acknowledged on receipt; a task with
    ``acks_late`` is redelivered and not announced). Without this their tasks stayed ``processing`` for ever.
    Runs in Celery's signal handler: it only notes the task; it ends ``error`` as the main process exits
    (unless its own final state came first)."""
    task_id = read_task_id(request)
    if task_id is None:
        return
    if not _interrupted:
        atexit.register(_close_interrupted)  # before the flush at exit (the last registered runs first)
    _interrupted.append(task_id)


def _close_interrupted() -> None:
    from billiard.exceptions import WorkerLostError

    task_ids, _interrupted[:] = list(_interrupted), []
    exc = WorkerLostError("the worker was shut down cold while the task ran (SIGQUIT, or Ctrl-C twice): Celery "
                          "cancelled it and will not run it again")
    for task_id in task_ids:
        lifecycle.close(task_id, StatusEnum.ERROR, exception_data(exc, f"WorkerLostError: {exc}"), unless_final=True)
    log.info("Task Badger: %d task(s) cancelled by a cold shutdown end in error", len(task_ids))


def on_retried_by_worker(request: Any, reason: Any) -> None:
    """The worker's main process retried a task whose pool child was lost (``retry_on_worker_lost``): it publishes
    the next attempt itself, in ``default_retry_delay`` seconds, and announces the retry. Its task showed
    ``processing`` meanwhile (three minutes by default), with nothing saying it was retried; it is ``pending``
    now, with ``data["retries"]`` and the lost child as ``data["last_exception"]``. A
    retry from a task's body (it has its run here) was recorded when its message was published."""
    if tracking_of(request) is not None:
        return
    task_id = read_task_id(request)
    if task_id is None:
        return
    exc = getattr(reason, "exc", None)
    lifecycle.retried(task_id, retry_number(request), exc if isinstance(exc, BaseException) else None)


def on_received(request: Any) -> None:
    """The main process received a message: remember the tracked ones."""
    task_id = read_task_id(request)
    if task_id is not None:
        received().remember(request.id, task_id)
        if get_config() is None:
            log_once("received-unconfigured", logging.WARNING,
                     "Task Badger: this worker received task %s, which its publisher tracks (Task Badger task %s), "
                     "but it does not track tasks itself: %s. Such tasks stay pending in Task Badger; give the worker "
                     "the same Task Badger settings as the process that publishes them.",
                     short(getattr(request, "name", None) or "?"), task_id, why_unconfigured("this worker"))


def _fail(tracking: Tracking, exc: Any, einfo: Any, request: Any) -> None:
    retries = getattr(request, "retries", 0) or 0
    exc = exc if isinstance(exc, BaseException) else RuntimeError(str(exc))
    lifecycle.fail(tracking, exc, _failure_text(exc, einfo, request), {"retries": retries} if retries else None)


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
        lifecycle.close(task_id, StatusEnum.SUCCESS, unless_final=True)
    if found:
        log.info("Task Badger: a worker child died; %d recent success(es) it may not have reported are being "
                 "checked", len(found))
