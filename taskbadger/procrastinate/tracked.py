"""Which Procrastinate jobs are tracked, with what options, and what a job carries from the process that
deferred it to its worker (the task id in its kwargs). Shared by both sides: ``defer`` and ``worker``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import lifecycle
from .._runtime import log_once, short
from ..config import get_config, unconfigured_reason, why_unconfigured
from ..models import is_task_id

if TYPE_CHECKING:
    from procrastinate import jobs

log = logging.getLogger("taskbadger")

#: The job kwarg that carries the Task Badger task id from the process that defers to the worker (the
#: official SDK's name: jobs deferred by either SDK are understood by a worker running the other).
TB_TASK_ID_KWARG = "__taskbadger_task_id__"
#: Where ``track()`` keeps a task's checked options.
OPTIONS_ATTR = "_taskbadger_options"
#: The options ``track()`` accepts (the official SDK's).
TRACK_OPTIONS = ("name", "value_max", "tags", "data", "record_task_args", "heartbeat_interval", "stale_timeout")
#: Procrastinate's own tasks: never tracked by name.
BUILTIN_PREFIXES = ("builtin:", "procrastinate.")
WHERE = f"job kwarg {TB_TASK_ID_KWARG}"


def internal_error(what: str) -> None:
    log.exception("Task Badger: internal error while %s", what, extra={"taskbadger_internal_error": True})


def procrastinate_system() -> Any:
    config = get_config()
    return config.system("procrastinate") if config else None


def _task_options(app: Any, task_name: str) -> dict[str, Any] | None:
    task = getattr(app, "tasks", {}).get(task_name)
    options = getattr(task, OPTIONS_ATTR, None)
    return options if isinstance(options, dict) else None


def say_untracked(app: Any, task_name: str, where: str, carried: Any = None) -> None:
    """A job is deferred (``where`` "this process") or run ("this worker") where the SDK is not configured: when
    the code asks for its task to be tracked (``@track``) or its publisher tracked it (``carried``: the task id the
    job carries), say once per process why it goes untracked and what to do. (With ``@track`` alone, only when
    nobody said why yet: the Django app logs its own reason.)"""
    if carried is not None:
        log_once("procrastinate:run-unconfigured", logging.WARNING,
                 "Task Badger: this worker runs job %s, which its publisher tracks (Task Badger task %s), untracked: "
                 "%s. Such tasks stay pending in Task Badger; give the worker the same Task Badger settings as the "
                 "process that defers them.", short(task_name), short(carried),
                 why_unconfigured(where, "Procrastinate"))
    elif _task_options(app, task_name) is not None and unconfigured_reason() is None:
        verb = "deferred" if where == "this process" else "run"
        log_once(f"procrastinate:{verb}-unconfigured", logging.WARNING, "Task Badger: %s (@track) was %s untracked: %s",
                 short(task_name), verb, why_unconfigured(where, "Procrastinate"))


def tracking_of(app: Any, task_name: str) -> dict[str, Any] | None:
    """The options to track a job of ``task_name`` with, or None when it is not tracked: ``@track``'s, or the
    system integration's rules (never Procrastinate's own tasks)."""
    options = _task_options(app, task_name)
    if options is not None:
        return options
    if task_name.startswith(BUILTIN_PREFIXES):
        return None
    system = procrastinate_system()
    if system is not None and system.track_task(task_name):
        return {}
    return None


def _recorded(task_kwargs: Any) -> Callable[[], dict[str, Any]]:
    def recorded() -> dict[str, Any]:
        data = lifecycle.recorded_args((), task_kwargs, ("procrastinate_task_args", "procrastinate_task_kwargs"))
        data.pop("procrastinate_task_args", None)
        return data

    return recorded


def job_fields(job: jobs.Job, options: dict[str, Any], external_id: str | None) -> dict[str, Any]:
    kwargs = {k: v for k, v in (job.task_kwargs or {}).items() if k != TB_TASK_ID_KWARG}
    return lifecycle.create_fields(
        job.task_name, options, procrastinate_system(), external_id, job.queue, _recorded(kwargs)
    )


NOTHING: Any = object()


class _Fetched:
    """What the jobs this process fetched carried in ``TB_TASK_ID_KWARG``, by job id, until their middleware (or
    their end) takes it. Bounded: a worker without the middleware never takes it before the job ends."""

    LIMIT = 10_000

    def __init__(self) -> None:
        self._carried: dict[Any, Any] = {}

    def put(self, job_id: Any, raw: Any) -> None:
        if len(self._carried) >= self.LIMIT:
            self._carried.pop(next(iter(self._carried)), None)
        self._carried[job_id] = raw

    def take(self, job_id: Any) -> Any:
        return self._carried.pop(job_id, NOTHING)


fetched = _Fetched()


def carried_task_id(job: jobs.Job) -> str | None:
    """The valid task id a job read back from the database carries, if any. Its kwargs are a dict, or their
    JSON text when they were read through Django's connection (``procrastinate.contrib.django``: Django's
    PostgreSQL backend leaves ``jsonb`` unparsed)."""
    kwargs: Any = job.task_kwargs
    if isinstance(kwargs, str | bytes):
        try:
            kwargs = json.loads(kwargs)
        except ValueError:
            return None
    raw = kwargs.get(TB_TASK_ID_KWARG) if isinstance(kwargs, dict) else None
    return raw if isinstance(raw, str) and is_task_id(raw) else None
