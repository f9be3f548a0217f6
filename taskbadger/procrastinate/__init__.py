"""Procrastinate integration: a job's Task Badger task, on the shared lifecycle (``taskbadger.lifecycle``).

The official SDK's names and meaning (``track``, ``current_task``, the job kwarg ``__taskbadger_task_id__``),
hooked in through Procrastinate's own extension points where it has them:

Publishing side
    Every defer of an app goes through its job manager (``task.defer``/``defer_async``, ``configure().defer``,
    ``batch_defer``/``batch_defer_async``, ``app.configure_task(name).defer``). ``install(app)`` gives the app a
    ``TrackingJobManager`` (a ``JobManager`` subclass, on the same connector): before the jobs are inserted it
    creates each tracked job's task (``pending``) and adds its id to the job's kwargs as
    ``__taskbadger_task_id__``, the way the official SDK does (a worker running either SDK understands it);
    once the insert gave the job ids, ``external_id`` = the job id is queued. Cancelling a job that has not
    started (``cancel_job_by_id``) ends its task ``cancelled``.

Worker side
    A worker middleware (``worker_middleware``, Procrastinate >= 3.9), added to the app's ``worker_defaults``:
    it removes ``__taskbadger_task_id__`` from the job's kwargs before the task function is called (always,
    tracked or not), and maps the job's outcome to the lifecycle: ``processing``; ``success``; ``error`` with
    the exception and ``data["attempts"]``; back to ``pending`` when the task's ``RetryStrategy`` retries it;
    ``cancelled`` when it is aborted. A job deferred without a task (a periodic job, a publisher that was not
    configured, the API failing at defer time) is created by the worker when it starts, if its task is tracked.

The modules: ``tracked`` (which jobs are tracked, what a job carries), ``defer`` (the publishing side), ``worker``
(the worker side); this one hooks an app (``install``, ``track``).
"""

from __future__ import annotations

import sys
from typing import Any, TypeVar

import procrastinate
from procrastinate import tasks as ptasks

from .. import lifecycle
from ..task import Task as TaskbadgerTask
from .defer import TrackingJobManager, task_id_of_job
from .tracked import OPTIONS_ATTR, TB_TASK_ID_KWARG, TRACK_OPTIONS
from .worker import middleware

__all__ = ["TB_TASK_ID_KWARG", "TrackingJobManager", "current_task", "install", "middleware", "task_id_of_job", "track"]

T = TypeVar("T")


def current_task() -> TaskbadgerTask | None:
    """The Task Badger task of the Procrastinate job running here, or None (also ``taskbadger.current_task()``)."""
    return lifecycle.current_task()


def install(app: Any) -> bool:
    """Make ``app`` track its jobs: its job manager and its workers' middleware. Idempotent. False (with a
    warning) when ``app`` is not a Procrastinate ``App`` yet (a blueprint, Django's app before it is ready)."""
    django_app = sys.modules.get("procrastinate.contrib.django.procrastinate_app")
    if django_app is not None and isinstance(app, django_app.ProxyApp):
        app = django_app.current_app  # Django's ``procrastinate.contrib.django.app``: the app behind it
    if not isinstance(app, procrastinate.App):
        return False
    if not isinstance(app.job_manager, TrackingJobManager):
        app.job_manager = TrackingJobManager(app.job_manager.connector, app)
    defaults: dict[str, Any] = dict(app.worker_defaults or {})
    middlewares: list[Any] = list(defaults.get("worker_middleware") or [])
    if middleware not in middlewares:
        defaults["worker_middleware"] = [middleware, *middlewares]  # outermost: sees every outcome
        app.worker_defaults = defaults  # type: ignore[assignment]  # procrastinate's WorkerOptions
    return True


def _checked_track_options(opts: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(opts) - set(TRACK_OPTIONS))
    if unknown:
        raise TypeError(f"track() got unexpected keyword arguments: {unknown} (known: {', '.join(TRACK_OPTIONS)})")
    checked = {}
    for key, value in opts.items():
        if value is None:
            continue  # the official SDK's "not set"
        ok, value = lifecycle.check_option(key, value)
        if not ok:
            raise ValueError(f"track({key}=...): expected {lifecycle.OPTIONS[key][1]}")
        checked[key] = value
    return checked


def track(original_task: T | None = None, **opts: Any) -> Any:
    """Track a Procrastinate task (applied above ``@app.task``): ``@track`` or ``@track(name=, value_max=,
    tags=, data=, record_task_args=, heartbeat_interval=, stale_timeout=)``. Anything but a Procrastinate task (the
    plain function, when it is written below ``@app.task``) is a TypeError."""
    options = _checked_track_options(opts)

    def wrap(task: T) -> T:
        if not isinstance(task, ptasks.Task):
            # below @app.task it gets the plain function, which Procrastinate then wraps: the options would be
            # set where nothing reads them, and the task silently tracked without them (or not at all)
            raise TypeError("track() is applied above @app.task: @track(...) then @app.task(...) then def "
                            f"(it got {type(task).__module__}.{type(task).__qualname__})")
        setattr(task, OPTIONS_ATTR, {**(getattr(task, OPTIONS_ATTR, None) or {}), **options})
        install(getattr(task, "blueprint", None))
        return task

    if original_task is None:
        return wrap
    return wrap(original_task)
