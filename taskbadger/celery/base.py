"""Celery integration: the ``Task`` base class and the signal handlers that track tasks.

    from taskbadger.celery import Task

    @app.task(bind=True, base=Task)
    def export(self, rows):
        tb = self.taskbadger_task          # None when not tracked
        ...

Lifecycle: the publishing process creates a ``pending`` task before the message is published and
puts its id (plus what the worker needs) in the message headers; the worker marks it ``processing``
when the task starts and ``success``/``error``/``cancelled`` when it ends. Worker-side updates go
through the per-process dispatcher (``taskbadger.delivery``) and never block the task.

The handlers are thin: they turn Celery events into task operations (``tracking.*``) and every one
of them catches and logs its own errors, so tracking can never break the user's task.
"""

from __future__ import annotations

import contextvars
import functools
import logging
from collections.abc import Callable
from typing import Any

import celery
from celery import signals

from . import celery_headers, delivery, tracking
from .api import get_task
from .celery_options import KWARGS_KEY, TRACK_KEY, pop_options
from .task import Task as TaskbadgerTask

log = logging.getLogger("taskbadger")

# Set by ``Task.apply_async`` while it publishes: the publish handler drops the created task here
# so that ``apply_async`` can put its id on the result without a result backend.
_publish_slot: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "taskbadger_publish_slot", default=None
)


def guard(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Never let an error in tracking escape into Celery or the user's task: log it instead."""

    @functools.wraps(handler)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except Exception:
            log.exception("Task Badger: internal error in %s; the Celery task is not affected", handler.__name__,
                          extra={"taskbadger_internal_error": True})
            return None

    return guarded


class Task(celery.Task):
    """A Celery task that tracks itself in Task Badger.

    ``taskbadger_<option>=`` arguments on the decorator or on ``apply_async`` (or a
    ``taskbadger_kwargs`` dict) customise the tracked task: name, value, value_max, data, tags,
    monitor_id, max_runtime, stale_timeout, record_task_args, heartbeat_interval, parent, track.
    ``apply_async`` wins over the decorator. ``taskbadger_track=False`` opts one call out.

    Not tracked: ``.apply()``, calling the task directly, and ``task_always_eager``.
    """

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        call_options = {}
        if kwargs:
            kwargs = dict(kwargs)  # never mutate the caller's dict
            call_options.update(pop_options(kwargs))
        call_options.update(pop_options(options))
        if call_options:
            headers = dict(options.get("headers") or {})
            if "track" in call_options:
                headers[TRACK_KEY] = call_options.pop("track")
            headers[KWARGS_KEY] = {**(headers.get(KWARGS_KEY) or {}), **call_options}
            options["headers"] = headers
        slot: dict[str, Any] = {}
        token = _publish_slot.set(slot)
        try:
            result = super().apply_async(args, kwargs, **options)
        except BaseException as exc:
            for created in slot.values():  # created, but its message never left: it will never run
                _guarded_publish_failed(created, exc)
            raise
        finally:
            _publish_slot.reset(token)
        _attach_to_result(result, slot.get(getattr(result, "id", None)))
        return result

    def apply(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        # Synchronous runs are not tracked, but their taskbadger_* options must not reach the function.
        if kwargs:
            kwargs = dict(kwargs)
            pop_options(kwargs)
        pop_options(options)
        result = super().apply(args, kwargs, **options)
        _attach_to_result(result, None)
        return result

    def retry(self, args: Any = None, kwargs: Any = None, exc: BaseException | None = None, *a: Any,
              **options: Any) -> Any:
        tracking.note_retry_exception(self.request, exc)
        return super().retry(args, kwargs, exc, *a, **options)

    @property
    def taskbadger_task(self) -> TaskbadgerTask | None:
        """The Task Badger task of the running call (no network round trip), or None."""
        return tracking.current_task(self.request)

    @property
    def taskbadger_task_id(self) -> str | None:
        return tracking.task_id_of(self.request)


def _guarded_publish_failed(created: TaskbadgerTask, exc: BaseException) -> None:
    try:
        tracking.publish_failed(created, f"{type(exc).__name__}: {exc}")
    except Exception:
        log.exception("Task Badger: internal error while cancelling an unpublished task",
                      extra={"taskbadger_internal_error": True})


def _attach_to_result(result: Any, tb_task: TaskbadgerTask | None) -> None:
    task_id = tb_task.id if tb_task is not None else None
    try:
        result.taskbadger_task_id = task_id
        result.get_taskbadger_task = (lambda: get_task(task_id)) if task_id else (lambda: None)
    except AttributeError:  # a result class with __slots__: the ids are still in the headers
        pass


# -- signal handlers: connected once, on import --------------------------------------------------


@guard
def on_before_publish(sender: str | None = None, body: Any = None, headers: dict | None = None,
                      routing_key: str | None = None, declare: Any = None, **_: Any) -> None:
    # Protocol 2 keeps the task's fields in the message headers; protocol 1 in the body. Custom
    # headers (ours included) travel in the message headers with both, so that is where we write.
    if not isinstance(headers, dict) or sender is None:
        return
    celery_id = _celery_id(headers, body)
    try:
        created = tracking.on_publish(sender, headers, celery_id, body, routing_key, declare)
    except Exception:
        celery_headers.strip(headers)  # nothing unchecked of ours may stay on the message
        raise
    if created is None or celery_id is None:
        return
    slot = _publish_slot.get()
    if slot is not None:
        slot[celery_id] = created  # the base class's apply_async sees a failed publish itself
    else:
        tracking.confirmations().expect(celery_id, created)


def _celery_id(headers: dict, body: Any) -> str | None:
    fields = headers if "task" in headers else body  # protocol 2 : protocol 1
    celery_id = fields.get("id") if isinstance(fields, dict) else None
    return celery_id if isinstance(celery_id, str) else None


@guard
def on_after_publish(sender: str | None = None, body: Any = None, headers: dict | None = None, **_: Any) -> None:
    if isinstance(headers, dict):
        tracking.confirmations().confirm(_celery_id(headers, body))


@guard
def on_prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    task = task or sender
    if task is not None:
        tracking.on_start(task, task.request)


@guard
def on_postrun(sender: Any = None, task: Any = None, state: str | None = None, retval: Any = None,
               **_: Any) -> None:
    task = task or sender
    if task is not None:
        tracking.on_end(task, task.request, state, retval)


@guard
def on_failure(sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
               einfo: Any = None, **_: Any) -> None:
    tracking.on_failure(sender, task_id, exception, einfo)


@guard
def on_revoked(sender: Any = None, request: Any = None, terminated: bool = False, expired: bool = False,
               **_: Any) -> None:
    tracking.on_revoked(request, terminated=terminated, expired=expired)


@guard
def on_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    tracking.on_received(request)


@guard
def on_process_shutdown(**_: Any) -> None:
    delivery.flush()


_CONNECTIONS = (
    (signals.before_task_publish, on_before_publish),
    (signals.after_task_publish, on_after_publish),
    (signals.task_prerun, on_prerun),
    (signals.task_postrun, on_postrun),
    (signals.task_failure, on_failure),
    (signals.task_revoked, on_revoked),
    (signals.task_received, on_received),
    (signals.worker_process_shutdown, on_process_shutdown),
    (signals.worker_shutdown, on_process_shutdown),
)

for _signal, _handler in _CONNECTIONS:
    _signal.connect(_handler, weak=False, dispatch_uid=f"taskbadger.{_handler.__name__}")

__all__ = ["Task"]
