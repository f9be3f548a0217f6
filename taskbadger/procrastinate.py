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
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import procrastinate
from procrastinate import exceptions as pexc
from procrastinate import manager

from . import lifecycle
from ._runtime import PerProcess, RecentIds, log_once, short
from .config import get_config, is_configured
from .delivery import merge, sender
from .lifecycle import Meta, Run
from .models import StatusEnum, exception_data, is_task_id
from .task import Task as TaskbadgerTask

if TYPE_CHECKING:
    from procrastinate import job_context, jobs

log = logging.getLogger("taskbadger")

__all__ = ["TB_TASK_ID_KWARG", "TrackingJobManager", "current_task", "install", "middleware", "task_id_of_job", "track"]

#: The job kwarg that carries the Task Badger task id from the process that defers to the worker (the
#: official SDK's name: jobs deferred by either SDK are understood by a worker running the other).
TB_TASK_ID_KWARG = "__taskbadger_task_id__"
#: Where ``track()`` keeps a task's checked options.
OPTIONS_ATTR = "_taskbadger_options"
#: The options ``track()`` accepts (the official SDK's).
TRACK_OPTIONS = ("name", "value_max", "tags", "data", "record_task_args", "heartbeat_interval", "stale_timeout")
#: Procrastinate's own tasks: never tracked by name.
BUILTIN_PREFIXES = ("builtin:", "procrastinate.")
_WHERE = f"job kwarg {TB_TASK_ID_KWARG}"

T = TypeVar("T")


def _internal_error(what: str) -> None:
    log.exception("Task Badger: internal error while %s", what, extra={"taskbadger_internal_error": True})


def procrastinate_system() -> Any:
    config = get_config()
    return config.system("procrastinate") if config else None


def current_task() -> TaskbadgerTask | None:
    """The Task Badger task of the Procrastinate job running here, or None (also ``taskbadger.current_task()``)."""
    return lifecycle.current_task()


# -- which jobs are tracked ------------------------------------------------------------------------------


def _task_options(app: Any, task_name: str) -> dict[str, Any] | None:
    task = getattr(app, "tasks", {}).get(task_name)
    options = getattr(task, OPTIONS_ATTR, None)
    return options if isinstance(options, dict) else None


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


def _fields(job: jobs.Job, options: dict[str, Any], external_id: str | None) -> dict[str, Any]:
    kwargs = {k: v for k, v in (job.task_kwargs or {}).items() if k != TB_TASK_ID_KWARG}
    return lifecycle.create_fields(
        job.task_name, options, procrastinate_system(), external_id, job.queue, _recorded(kwargs)
    )


# -- publishing side -------------------------------------------------------------------------------------


def _prepare(app: Any, jobs_: list[jobs.Job]) -> tuple[list[jobs.Job], list[TaskbadgerTask | None]]:
    """The jobs to insert (tracked ones carry their task's id) and the task created for each (or None).
    Never raises: a job whose tracking fails is inserted untracked (its worker may track it)."""
    out, created = [], []
    for job in jobs_:
        task = None
        try:
            options = tracking_of(app, job.task_name) if is_configured() else None
            if options is not None and TB_TASK_ID_KWARG not in (job.task_kwargs or {}):
                task = lifecycle.enqueue(_fields(job, options, None), "publish").task
                if task is not None:
                    job = job.evolve(task_kwargs={**job.task_kwargs, TB_TASK_ID_KWARG: task.id})
        except Exception:
            _internal_error(f"tracking a deferred job of {job.task_name!r}")
        out.append(job)
        created.append(task)
    return out, created


def _watch_rollback(app: Any, inserted: list[jobs.Job], created: list[TaskbadgerTask | None]) -> None:
    """Jobs inserted inside a transaction that may roll back (deferred through Django's connection in an
    ``atomic()`` block): if it does, they never run, and their tasks are closed ``cancelled`` (if still
    ``pending``). The integration's ``if_rolled_back`` (set by ``taskbadger_django``) knows the transaction."""
    system = procrastinate_system()
    watch = getattr(system, "if_rolled_back", None)
    if watch is None or getattr(system, "app", None) is not app:  # it knows that app's connection only
        return
    for job, task in zip(inserted, created, strict=True):
        if task is None or job.id is None:
            continue
        try:
            watch(job.id, functools.partial(
                lifecycle.close, task.id, StatusEnum.CANCELLED,
                {"publish_error": "the transaction that deferred it was rolled back"},
                known_data=task.data, data_known=True, only_if_pending=True))
        except Exception:
            _internal_error("watching the transaction that deferred a job")


#: Most deferred jobs remembered for ``task_id_of_job``: a view renders the job it just deferred.
MAX_DEFERRED = 1_000
_deferred_ids: PerProcess[RecentIds] = PerProcess(lambda: RecentIds(MAX_DEFERRED))


def task_id_of_job(job_id: int) -> str | None:
    """The Task Badger id of the job ``job_id`` (what ``defer()`` returned), known in the process that deferred
    it (its last 1,000 jobs); None when it was deferred untracked or elsewhere. Pass it to
    ``{% taskbadger_progress %}``."""
    return _deferred_ids.get().get(job_id)


def _deferred(
    inserted: list[jobs.Job], created: list[TaskbadgerTask | None], originals: list[jobs.Job]
) -> list[jobs.Job]:
    """After the insert: queue each task's ``external_id`` (the job id); return the jobs as the caller
    deferred them (without our kwarg)."""
    result = []
    for job, task, original in zip(inserted, created, originals, strict=True):
        if task is not None:
            if job.id is not None:
                _deferred_ids.get().remember(job.id, task.id)
            try:
                sender.submit(task.id, {"external_id": str(job.id)})
            except Exception:
                _internal_error("recording a job id")
            job = job.evolve(task_kwargs=original.task_kwargs)
        result.append(job)
    return result


def _not_deferred(created: list[TaskbadgerTask | None], exc: BaseException) -> None:
    for task in created:
        if task is not None:
            try:
                lifecycle.publish_failed(task, f"{type(exc).__name__}: {exc}")
            except Exception:
                _internal_error("cancelling the task of a job that was not deferred")


class TrackingJobManager(manager.JobManager):
    """The app's job manager, tracking the jobs it defers and cancels (see the module's docstring)."""

    def __init__(self, connector: Any, app: Any) -> None:
        super().__init__(connector)
        self.app = app

    def _tracks(self, jobs_: list[jobs.Job]) -> bool:
        return is_configured() and any(tracking_of(self.app, job.task_name) is not None for job in jobs_)

    # Arguments are passed on as given: their names differ between Procrastinate versions (``connection``).

    async def batch_defer_jobs_async(self, jobs: list[jobs.Job], *args: Any, **kwargs: Any) -> list[jobs.Job]:
        if not self._tracks(jobs):
            return await super().batch_defer_jobs_async(jobs, *args, **kwargs)
        # the creates wait for the API (within the publish budget): not on the caller's event loop
        prepared, created = await asyncio.to_thread(_prepare, self.app, jobs)
        try:
            inserted = await super().batch_defer_jobs_async(prepared, *args, **kwargs)
        except BaseException as exc:
            _not_deferred(created, exc)
            raise
        return _deferred(inserted, created, jobs)

    def batch_defer_jobs(self, jobs: list[jobs.Job], *args: Any, **kwargs: Any) -> list[jobs.Job]:
        if not self._tracks(jobs):
            return super().batch_defer_jobs(jobs, *args, **kwargs)
        prepared, created = _prepare(self.app, jobs)
        try:
            inserted = super().batch_defer_jobs(prepared, *args, **kwargs)
        except BaseException as exc:
            _not_deferred(created, exc)
            raise
        if not args and kwargs.get("connection") is None:  # on the connector's connection: maybe the caller's
            _watch_rollback(self.app, inserted, created)               # transaction (Django's)
        return _deferred(inserted, created, jobs)

    # -- a job cancelled before it starts: its task is cancelled (an aborted one is the worker's) ----------

    def cancel_job_by_id(self, job_id: int, *args: Any, **kwargs: Any) -> bool:
        task_id = self._queued_task_id(lambda: list(self.list_jobs(id=job_id)))
        cancelled = super().cancel_job_by_id(job_id, *args, **kwargs)
        _cancelled_before_start(task_id, cancelled)
        return cancelled

    async def cancel_job_by_id_async(self, job_id: int, *args: Any, **kwargs: Any) -> bool:
        found: list[jobs.Job] | Exception = []
        if is_configured():
            try:
                found = list(await self.list_jobs_async(id=job_id))
            except Exception as err:
                found = err
        task_id = self._queued_task_id(lambda: _raise_or(found))
        cancelled = await super().cancel_job_by_id_async(job_id, *args, **kwargs)
        _cancelled_before_start(task_id, cancelled)
        return cancelled

    async def fetch_job(self, *args: Any, **kwargs: Any) -> jobs.Job | None:
        # The task id leaves the job's kwargs here, before any middleware: the task function never receives it,
        # even in a worker whose own ``worker_middleware=[...]`` replaced the default list that holds ours.
        job = await super().fetch_job(*args, **kwargs)
        task_kwargs = getattr(job, "task_kwargs", None)
        if job is None or not isinstance(task_kwargs, dict) or TB_TASK_ID_KWARG not in task_kwargs:
            return job
        _fetched.put(job.id, task_kwargs[TB_TASK_ID_KWARG])
        return job.evolve(task_kwargs={k: v for k, v in task_kwargs.items() if k != TB_TASK_ID_KWARG})

    async def finish_job(self, job: jobs.Job, status: Any, *args: Any, **kwargs: Any) -> None:
        carried = _fetched.take(job.id)  # still here: no middleware of ours took it
        # A job whose task this worker does not know fails before any worker middleware runs (Procrastinate
        # raises TaskNotFound first): its task, created when it was deferred, would stay pending for ever.
        if job.task_name not in self.app.tasks and is_configured():
            _failed_unknown(job, carried)
        elif carried is not _NOTHING and is_configured():
            log_once("procrastinate-no-middleware", logging.WARNING,
                     "Task Badger: job %s ran without taskbadger.procrastinate.middleware (a worker_middleware=[...] "
                     "argument replaces the default list that has it), so its task is not tracked: put "
                     "taskbadger.procrastinate.middleware first in that list.", job.id)
        await super().finish_job(job, status, *args, **kwargs)

    @staticmethod
    def _queued_task_id(find: Callable[[], list[jobs.Job]]) -> str | None:
        """The task id a job still waiting in its queue carries (a started one is ended by its worker)."""
        if not is_configured():
            return None
        try:
            found = find()
        except Exception:
            _internal_error("looking up a job being cancelled")
            return None
        if len(found) != 1 or found[0].status != "todo":
            return None
        return _carried_task_id(found[0])


def _raise_or(found: list[jobs.Job] | Exception) -> list[jobs.Job]:
    if isinstance(found, Exception):
        raise found
    return found


def _cancelled_before_start(task_id: str | None, cancelled: bool) -> None:
    if task_id is None or not cancelled:
        return
    try:
        lifecycle.close(task_id, StatusEnum.CANCELLED, {"procrastinate_status": "cancelled"}, unless_final=True)
    except Exception:
        _internal_error("cancelling the task of a cancelled job")


_NOTHING: Any = object()


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
        return self._carried.pop(job_id, _NOTHING)


_fetched = _Fetched()


def _carried_task_id(job: jobs.Job) -> str | None:
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


def _failed_unknown(job: jobs.Job, carried: Any) -> None:
    raw = _carried_task_id(job) if carried is _NOTHING else (
        carried if isinstance(carried, str) and is_task_id(carried) else None)
    if raw is None:
        return  # deferred untracked: nothing was created
    try:
        problem = pexc.TaskNotFound(f"no task named {job.task_name!r} in the worker that took job {job.id} (a typo, "
                                    "or a task removed while its jobs were queued)")
        lifecycle.close(raw, StatusEnum.ERROR, exception_data(problem))
    except Exception:
        _internal_error("recording the failure of a job whose task is unknown")


# -- worker side ------------------------------------------------------------------------------------------


def _carried_meta(job: jobs.Job, raw: Any, options: dict[str, Any] | None) -> Meta | None:
    """The run's ``Meta`` from the task id the job carries (checked here, whoever wrote it)."""
    name = (options or {}).get("name") or job.task_name
    meta = lifecycle.parse_meta(
        {
            "task": {
                "id": raw,
                "name": name,
                "status": "pending",
                "queue": job.queue,
                "external_id": str(job.id),
                "data_omitted": True,
            }
        },
        job.task_name,
        _WHERE,
    )
    if meta is not None:
        meta.heartbeat_interval, meta.stale_timeout = lifecycle.heartbeat_options(options or {}, procrastinate_system())
    return meta


#: How many times a job was put back in its queue out of ``failed`` (``retry_job_by_id``: the Django admin's Retry,
#: the shell's ``retry``): Procrastinate records each as a ``retried`` event (``procrastinate_events``).
_RETRIED_BY_HAND = "SELECT count(*) AS retried FROM procrastinate_events WHERE job_id = %(job_id)s AND type = 'retried'"


class _Attempt:
    """Which run of its job this is: ``number`` (1 for the first), and whether the job was put back in its queue
    by hand after it had failed (``by_hand``)."""

    __slots__ = ("number", "by_hand")

    def __init__(self, number: int, by_hand: bool) -> None:
        self.number = number
        self.by_hand = by_hand


async def _attempt(context: job_context.JobContext) -> tuple[_Attempt, asyncio.CancelledError | None]:
    """This run's attempt. Procrastinate's ``job.attempts`` (the runs before this one) counts a retry by hand twice:
    its failed run when it ended (``procrastinate_finish_job_v1``), then the retry out of ``failed``
    (``procrastinate_retry_job_v2``); a retry its ``RetryStrategy`` decided, once. The retries by hand are read
    from its events: one query, for a job that ran before only. When they cannot be read, ``job.attempts``.
    A cancellation (an abort) while the query runs is returned, to be raised once the run is known."""
    job = context.job
    attempts = job.attempts if isinstance(job.attempts, int) and job.attempts > 0 else 0
    if not attempts:
        return _Attempt(1, False), None
    cancelled: asyncio.CancelledError | None = None
    query = asyncio.ensure_future(context.app.connector.execute_query_one_async(query=_RETRIED_BY_HAND, job_id=job.id))
    try:
        try:
            row = await asyncio.shield(query)
        except asyncio.CancelledError as exc:
            cancelled = exc
            await asyncio.wait({query})
            row = query.result()
        by_hand = min(int(row["retried"]), attempts)
    except asyncio.CancelledError as exc:  # cancelled again while it runs
        query.cancel()
        return _Attempt(attempts + 1, False), cancelled or exc
    except Exception as err:
        log_once("procrastinate-retried-events", logging.WARNING,
                 "Task Badger: could not read the events of job %s (%s): the attempt count recorded on the tasks of "
                 "jobs retried by hand may be too high", job.id, short(str(err), 200))
        return _Attempt(attempts + 1, False), cancelled
    return _Attempt(attempts - by_hand + 1, by_hand > 0), cancelled


class _StartInterrupted(Exception):
    """The job was cancelled while its worker created its task: the run (or the job id to settle), and the
    cancellation to raise once the outcome is recorded."""

    def __init__(self, run: Run | str | None, cancellation: asyncio.CancelledError, attempt: _Attempt) -> None:
        super().__init__("cancelled while its task was created")
        self.run = run
        self.cancellation = cancellation
        self.attempt = attempt


async def _begin(context: job_context.JobContext, raw: Any, attempt: _Attempt) -> Run | str | None:
    """The job's tracked run, started (``processing``); or the job's id when its outcome is to be settled
    later (its task may exist but the API cannot be asked now); or None when it runs untracked."""
    job = context.job
    options = tracking_of(context.app, job.task_name)
    meta = _carried_meta(job, raw, options) if raw is not None else None
    if meta is None:
        if options is None:
            return None
        # A job its publisher did not track: created now. A retry of such a job takes up the task its
        # first attempt created (found by the job id, still open; or ended, after a retry by hand out of
        # ``failed``), so that it stays one task.
        external_id = str(job.id)
        creating = asyncio.ensure_future(asyncio.to_thread(
            lifecycle.create_at_start,
            external_id,
            options,
            procrastinate_system(),
            lambda: _fields(job, options, external_id),
            job.attempts > 0,  # a retry: its first attempt's task may exist
            True,  # pending, or still processing here when its pending is queued behind
            True,  # of this job's name: job ids count up from 1 in each database sharing the project
            attempt.by_hand,  # put back in its queue by hand after it failed: its task ended error, continued here
        ))
        try:
            at = await asyncio.shield(creating)
        except asyncio.CancelledError as exc:
            # Aborted (or the worker shutting down) while the create waits for the API: it goes on in its thread,
            # within the publish budget. Its task is ended with the job's outcome, or it stays processing for ever.
            await asyncio.wait({creating})
            ended: Run | str | None = None
            if creating.exception() is not None:  # ours: logged, and the cancellation goes on all the same
                log.error("Task Badger: internal error while starting the task of job %s", job.id,
                          exc_info=creating.exception(), extra={"taskbadger_internal_error": True})
            else:
                at = creating.result()
                ended = Run(external_id, at.meta) if at.meta is not None else external_id if at.settle else None
                if isinstance(ended, Run) and job.attempts == 0:
                    ended.set_status(StatusEnum.PROCESSING)  # created processing
            raise _StartInterrupted(ended, exc, attempt) from exc
        if at.meta is None:
            return external_id if at.settle else None
        run = Run(external_id, at.meta)
        if job.attempts > 0:  # a retry, its task taken up (or created): back to processing
            lifecycle.start(run, first_attempt=False, after_error=True, extra=_attempts_so_far(attempt))
        else:  # created processing, with its start_time
            run.set_status(StatusEnum.PROCESSING)
            lifecycle.enter(run)
        return run
    run = Run(str(job.id), meta)
    # A later attempt may follow one that ended the task in ``error``: a failed job put back in its queue by hand
    # (``retry_job_by_id``: the Django admin's Retry, the shell's ``retry``). That exception leaves the task's data,
    # or the run that succeeds shows it. (A retry the worker decided kept none: nothing to drop. The drop is
    # resolved against the task on the server: one GET when this attempt's 'processing' is sent on its own; none
    # when it merges with the attempt's success, which reads the task anyway to complete its progress.)
    lifecycle.start(run, first_attempt=job.attempts == 0, after_error=job.attempts > 0,
                    extra=_attempts_so_far(attempt))
    return run


def _attempts_so_far(attempt: _Attempt) -> dict[str, Any] | None:
    """What a later attempt records with its start: ``data["attempts"]`` of the attempts before it, which the
    one before may not have recorded (``_back_to_pending``). The same value when it did: nothing changes."""
    return {"attempts": attempt.number - 1} if attempt.number > 1 else None


def _retried_or_aborted(context: job_context.JobContext, exc: BaseException) -> tuple[bool, bool, Any]:
    """(will the worker retry the job, was it aborted, the abort reason), as the worker decides them."""
    job = context.job
    aborted = isinstance(exc, (pexc.JobAborted, asyncio.CancelledError))
    reason = context.abort_reason() if hasattr(context, "abort_reason") else None
    shutdown = getattr(reason, "value", None) == "shutdown"
    task = context.app.tasks.get(job.task_name)
    retry = None
    if task is not None and (not aborted or shutdown):
        retry = task.get_retry_exception(exception=exc, job=job)
    return retry is not None, aborted, reason


async def _outcome(run: Run, context: job_context.JobContext, exc: BaseException, attempt: _Attempt) -> None:
    """The job raised ``exc`` (or was cancelled): what the worker will do with it, for its task."""
    retried, aborted, reason = _retried_or_aborted(context, exc)
    attempts = attempt.number
    if retried:
        # Sent before the worker gives the job back to its queue: the next attempt may run in another worker and
        # end before a queued 'pending' went out, which then left the task pending for good. Off the event loop
        # (it waits for the API, within the publish budget); shielded, so that a second cancellation of the job
        # leaves its thread to send it all the same.
        await asyncio.shield(asyncio.to_thread(_back_to_pending, run, attempts))
    elif aborted:
        lifecycle.cancel(run, {"attempts": attempts, "abort_reason": getattr(reason, "value", None) or "aborted"})
    else:
        lifecycle.fail(run, exc, extra={"attempts": attempts})


#: What a failed attempt had queued for its task that may still go out after the job went back to its queue: these
#: cannot undo a later attempt's outcome (only the first attempt sets ``start_time``; a finished task never goes
#: stale). Its status, data and progress could, and are not sent.
_LATE_SAFE = ("start_time", "stale_timeout")


def _back_to_pending(run: Run, attempts: int) -> None:
    """The job will be retried: ``pending`` with ``data["attempts"]``, sent now (within the publish budget). If
    it cannot be, nothing of it is queued: a queued update (even one sent only while the task has no final state:
    that is read, then written) could reach the API after the next attempt's outcome, recorded by another worker,
    and leave the task pending for good, or with this attempt's count. The job row cannot carry it to the next
    attempt (as Celery's retry message does): the task shows ``processing`` until that attempt starts, which
    records ``data["attempts"]`` with its start (``_attempts_so_far``)."""
    left = lifecycle.back_to_pending(run, {"attempts": attempts}, wait=True, hand_over=True)
    if left is None:
        return
    late_safe = {key: left[key] for key in _LATE_SAFE if key in left}
    if late_safe:
        sender.submit(run.id, late_safe)
    # what is left out besides its status and data["attempts"] (the next attempt drops the same keys again)
    lost = sorted(key for key in left if key not in late_safe and key not in ("data", merge.MERGE_DATA,
                                                                              merge.DROP_DATA))
    merged = left.get(merge.MERGE_DATA)  # keys the body added to the task's data (when its data was not known)
    lost += sorted(f"data[{short(key, 40)}]" for key in (merged if isinstance(merged, Mapping) else ())
                   if key != "attempts")
    log.warning("Task Badger: could not record the retry of task %s now; its next attempt records it when it starts "
                "(until then the task may show processing)%s", short(run.id),
                f"; not recorded, as it could come after that attempt's outcome: {', '.join(lost)}" if lost else "")


def _settle(external_id: str, context: job_context.JobContext, exc: BaseException | None) -> None:
    """The outcome of a run that went untracked because the API could not be asked when it started."""
    if exc is None:
        lifecycle.settle(external_id, StatusEnum.SUCCESS)
        return
    retried, aborted, _ = _retried_or_aborted(context, exc)
    if not retried:
        lifecycle.settle(external_id, StatusEnum.CANCELLED if aborted else StatusEnum.ERROR, None if aborted else exc)


async def middleware(call_next: Callable[[], Any], context: job_context.JobContext, worker: Any) -> Any:
    """The worker middleware (``worker_middleware=[taskbadger.procrastinate.middleware]``; ``install`` adds it
    to the app's ``worker_defaults``). Never lets a tracking error reach the job."""
    raw = None
    run: Run | str | None = None
    attempt = _Attempt(1, False)
    cancelled: asyncio.CancelledError | None = None  # while the attempt was read: raised once the run is known
    try:
        raw = _fetched.take(context.job.id)  # taken out of the kwargs when the job was fetched
        kwargs = context.job.task_kwargs
        if isinstance(kwargs, dict) and TB_TASK_ID_KWARG in kwargs:  # fetched by another job manager
            raw = kwargs.pop(TB_TASK_ID_KWARG)  # the task function never receives it
        elif raw is _NOTHING:
            raw = None
        if is_configured():
            attempt, cancelled = await _attempt(context)
            run = await _begin(context, raw, attempt)
    except _StartInterrupted as interrupted:  # cancelled before the body ran: its outcome is the job's
        await _ended_before_the_body(interrupted.run, context, interrupted.cancellation, interrupted.attempt)
        raise interrupted.cancellation from None
    except Exception:
        _internal_error(f"starting the task of job {getattr(context.job, 'id', None)}")
    if run is None:
        if cancelled is not None:
            raise cancelled
        return await call_next()
    if isinstance(run, str):
        return await _settled(call_next, context, run, cancelled)
    try:
        if cancelled is not None:
            raise cancelled
        result = await call_next()
    except BaseException as exc:
        try:
            await _outcome(run, context, exc, attempt)
        except asyncio.CancelledError:
            pass  # cancelled again while a retry's update is sent: its thread goes on; the job's outcome stands
        except Exception:
            _internal_error("recording the outcome of a job")
        raise
    else:
        try:
            # after retries, the attempts it took (its retries recorded the count up to then)
            lifecycle.succeed(run, {"attempts": attempt.number} if attempt.number > 1 else None)
        except Exception:
            _internal_error("recording the success of a job")
        return result
    finally:
        lifecycle.leave(run)


async def _ended_before_the_body(run: Run | str | None, context: job_context.JobContext,
                                 exc: asyncio.CancelledError, attempt: _Attempt) -> None:
    """The outcome of a job cancelled before its body ran, as for one cancelled in its body."""
    try:
        if isinstance(run, Run):
            await _outcome(run, context, exc, attempt)
        elif isinstance(run, str):
            _settle(run, context, exc)
    except asyncio.CancelledError:
        pass  # cancelled again: the job's outcome stands
    except Exception:
        _internal_error("recording the outcome of a job")


async def _settled(call_next: Callable[[], Any], context: job_context.JobContext, external_id: str,
                   cancelled: asyncio.CancelledError | None = None) -> Any:
    outcome: BaseException | None = None
    try:
        if cancelled is not None:
            raise cancelled
        return await call_next()
    except BaseException as exc:
        outcome = exc
        raise
    finally:
        try:
            _settle(external_id, context, outcome)
        except Exception:
            _internal_error("recording the outcome of a job")


# -- hooking an app -----------------------------------------------------------------------------------------


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
    tags=, data=, record_task_args=, heartbeat_interval=, stale_timeout=)``."""
    options = _checked_track_options(opts)

    def wrap(task: T) -> T:
        setattr(task, OPTIONS_ATTR, {**(getattr(task, OPTIONS_ATTR, None) or {}), **options})
        install(getattr(task, "blueprint", None))
        return task

    if original_task is None:
        return wrap
    return wrap(original_task)
