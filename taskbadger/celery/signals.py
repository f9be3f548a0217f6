"""The Celery signal receivers: thin and guarded, connected once by ``connect()``.

Each receiver turns a Celery signal into an event of ``publish`` or ``events``, and catches and logs
its own errors, so tracking can never break the user's task or the publish.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

from celery import signals

from .. import spooling
from ..config import get_config, why_unconfigured
from . import events, headers, publish, result_backend
from .headers import take_call_options
from .state import publish_slot, published

log = logging.getLogger("taskbadger")


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


def _internal_error(where: str) -> None:
    """What ``guard`` logs, for the receivers that run for every task and catch their errors themselves (no
    wrapper's frame and arguments repacked three times per task)."""
    log.exception("Task Badger: internal error in %s; the Celery task is not affected", where,
                  extra={"taskbadger_internal_error": True})


@guard
def on_before_publish(sender: str | None = None, body: Any = None, headers: dict | None = None,
                      routing_key: str | None = None, declare: Any = None, properties: dict | None = None,
                      **_: Any) -> None:
    # Protocol 2 keeps the task's fields in the message headers; protocol 1 in the body. Custom
    # headers (ours included) travel in the message headers with both, so that is where we write.
    if not isinstance(headers, dict) or sender is None:
        return
    if isinstance(properties, dict):
        take_call_options(properties, headers)
    celery_id = _celery_id(headers, body)
    try:
        created = publish.on_publish(sender, headers, celery_id, body, routing_key, declare,
                                     properties.get("reply_to") if isinstance(properties, dict) else None)
    except Exception:
        _strip(headers)  # nothing unchecked of ours may stay on the message
        raise
    if created is None or celery_id is None:
        return
    published().remember(celery_id, created.id)  # for task_id_of_result(AsyncResult(celery_id)) in this process
    slot = publish_slot.get()
    if slot is not None:
        slot[celery_id] = created  # the base class's apply_async sees a failed publish itself
    else:
        publish.confirmations().expect(celery_id, created)


def _strip(message: dict) -> None:
    headers.strip(message)


def _celery_id(message_headers: dict, body: Any) -> str | None:
    fields = message_headers if "task" in message_headers else body  # protocol 2 : protocol 1
    celery_id = fields.get("id") if isinstance(fields, dict) else None
    return celery_id if isinstance(celery_id, str) else None


@guard
def on_after_publish(sender: str | None = None, body: Any = None, headers: dict | None = None, **_: Any) -> None:
    if isinstance(headers, dict):
        celery_id = _celery_id(headers, body)
        publish.confirmations().confirm(celery_id)
        result_backend.message_sent(celery_id)


def on_prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    try:
        task = task or sender
        if task is not None:
            events.on_start(task, task.request)
    except Exception:
        _internal_error("on_prerun")


def on_postrun(sender: Any = None, task_id: str | None = None, task: Any = None, state: str | None = None,
               retval: Any = None, **_: Any) -> None:
    try:
        task = task or sender
        if task is not None:
            events.on_end(task, task_id, state, retval)
    except Exception:
        _internal_error("on_postrun")


@guard
def on_failure(sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
               einfo: Any = None, **_: Any) -> None:
    events.on_failure(sender, task_id, exception, einfo)


@guard
def on_revoked(sender: Any = None, request: Any = None, terminated: bool = False, expired: bool = False,
               **_: Any) -> None:
    events.on_revoked(request, terminated=terminated, expired=expired)


@guard
def on_unknown(sender: Any = None, message: Any = None, exc: BaseException | None = None, name: Any = None,
               **_: Any) -> None:
    events.on_unknown(getattr(message, "headers", None), name, exc)


@guard
def on_rejected(sender: Any = None, message: Any = None, exc: BaseException | None = None, **_: Any) -> None:
    events.on_rejected(getattr(message, "headers", None), exc)


def on_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    try:
        events.on_received(request)
    except Exception:
        _internal_error("on_received")


@guard
def on_retry(sender: Any = None, request: Any = None, reason: Any = None, einfo: Any = None, **_: Any) -> None:
    # A retry from a task's body (or its autoretry) comes with its reason and traceback, and is handled where the
    # retry is published, as is the worker's retry of a task whose pool child was lost (retry_on_worker_lost);
    # Celery's cancellation of a running task (a cold shutdown) sends it with neither.
    if request is None:
        return
    if reason is None and einfo is None:
        events.on_cancelled(request)
    else:
        events.on_retried_by_worker(request, reason)


@guard
def on_process_shutdown(**_: Any) -> None:
    """A pool child recycled or shutting down, or the worker's main process: deliver what is queued, or
    spool it at once while the API is failing (``taskbadger.spooling``)."""
    spooling.shutdown(10.0)


def _is_worker_program(worker: Any) -> bool:
    """Whether ``worker`` is the ``celery worker`` program, which sets up logging after ``worker_init``
    and then sends ``celeryd_after_setup`` (an embedded ``WorkController`` sends neither)."""
    program = sys.modules.get("celery.apps.worker")
    return program is not None and isinstance(worker, program.Worker)


@guard
def on_worker_init(sender: Any = None, **_: Any) -> None:
    events.note_worker(sender)
    # `celery worker` sends worker_init before it sets up logging: a line logged now reaches no handler
    # with Django's and Celery's default logging (only a project that configures the `taskbadger` logger
    # itself would see it). The program's line waits for celeryd_after_setup.
    if not _is_worker_program(sender):
        log_start_line()


@guard
def on_worker_after_setup(**_: Any) -> None:
    log_start_line()


def log_start_line() -> None:
    """One INFO line when a worker starts, once Celery's logging is in place, so that `celery worker -l info`
    shows it with default logging: tracking is on (where) or off (why)."""
    config = get_config()
    if config is None:
        log.info("Task Badger: not tracking tasks in this worker: %s", why_unconfigured("this worker"))
        return
    system = config.system("celery")
    auto = "auto-tracking by name, and " if system is not None and system.auto_track_tasks else ""
    log.info("Task Badger: tracking %stasks using taskbadger.celery.Task in %s/%s at %s", auto,
             config.organization_slug, config.project_slug, config.host)


_RECEIVERS = (
    (signals.before_task_publish, on_before_publish),
    (signals.after_task_publish, on_after_publish),
    (signals.task_prerun, on_prerun),
    (signals.task_postrun, on_postrun),
    (signals.task_failure, on_failure),
    (signals.task_revoked, on_revoked),
    (signals.task_received, on_received),
    (signals.task_unknown, on_unknown),
    (signals.task_rejected, on_rejected),
    (signals.worker_process_shutdown, on_process_shutdown),
    (signals.worker_shutdown, on_process_shutdown),
    (signals.task_retry, on_retry),
    (signals.worker_init, on_worker_init),
    (signals.celeryd_after_setup, on_worker_after_setup),
)


def connect() -> None:
    """Connect the receivers (once: ``dispatch_uid`` makes it idempotent)."""
    for signal, receiver in _RECEIVERS:
        signal.connect(receiver, weak=False, dispatch_uid=f"taskbadger.{receiver.__name__}")
