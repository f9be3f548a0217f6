"""The publishing side: every defer of an app goes through its job manager, ``TrackingJobManager`` (see the
package's docstring). It also cancels the task of a job cancelled before it starts, and takes our kwarg out of
the jobs its worker fetches."""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from procrastinate import exceptions as pexc
from procrastinate import manager

from .. import lifecycle
from .._runtime import PerProcess, RecentIds, log_once
from ..config import is_configured
from ..delivery import sender
from ..models import StatusEnum, exception_data, is_task_id
from ..task import Task as TaskbadgerTask
from .tracked import (
    NOTHING,
    TB_TASK_ID_KWARG,
    carried_task_id,
    fetched,
    internal_error,
    job_fields,
    procrastinate_system,
    say_untracked,
    tracking_of,
)

if TYPE_CHECKING:
    from procrastinate import jobs

log = logging.getLogger("taskbadger")

#: How a deferred job's task's external_id starts until the job's id replaces it.
PROVISIONAL = "deferring-"
#: Why a task made by a create whose answer was lost is closed (``lifecycle.abandon_maybe_created``).
ABANDONED = ("Task Badger's answer to this create could not be read, so the job was deferred without it; the job, "
             "when it runs, is tracked as another task")


def _prepare(app: Any, jobs_: list[jobs.Job]) -> tuple[list[jobs.Job], list[TaskbadgerTask | None]]:
    """The jobs to insert (tracked ones carry their task's id) and the task created for each (or None).
    Never raises: a job whose tracking fails is inserted untracked (its worker may track it). The creates of a
    batch share one publish budget (``lifecycle.SharedBudget``): a batch of 50 jobs waited 50 budgets."""
    out, created = [], []
    budget = lifecycle.SharedBudget()
    for job in jobs_:
        task = None
        try:
            options = tracking_of(app, job.task_name) if is_configured() else None
            if options is not None and TB_TASK_ID_KWARG not in (job.task_kwargs or {}):
                # The job's id is known only once it is inserted, after this create: until then its task is told by
                # a provisional external_id, replaced by the job's id right after the insert (``_deferred``). A
                # create carried out whose answer could not be read (a 2xx that is not JSON, a reset mid-answer) is
                # then found by it and used (``inline``); with nothing to tell it by, it stayed pending for ever.
                fields = {**job_fields(job, options, None), "external_id": f"{PROVISIONAL}{uuid.uuid4().hex}"}
                made = lifecycle.enqueue(fields, "publish", budget)
                task = made.task
                if task is None and made.maybe_created:
                    # not found in time either: the job goes out untracked (its worker tracks it), and the task
                    # the API may hold is closed once the API answers
                    lifecycle.abandon_maybe_created(fields["external_id"], ABANDONED)
                if task is not None:
                    job = job.evolve(task_kwargs={**job.task_kwargs, TB_TASK_ID_KWARG: task.id})
        except Exception:
            internal_error(f"tracking a deferred job of {job.task_name!r}")
        out.append(job)
        created.append(task)
    budget.report("batch_defer()")  # only a batch has creates after the first
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
            internal_error("watching the transaction that deferred a job")


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
                internal_error("recording a job id")
            job = job.evolve(task_kwargs=original.task_kwargs)
        result.append(job)
    return result


def _not_deferred(created: list[TaskbadgerTask | None], exc: BaseException) -> None:
    for task in created:
        if task is not None:
            try:
                lifecycle.publish_failed(task, f"{type(exc).__name__}: {exc}")
            except Exception:
                internal_error("cancelling the task of a job that was not deferred")


class TrackingJobManager(manager.JobManager):
    """The app's job manager, tracking the jobs it defers and cancels (see the module's docstring)."""

    def __init__(self, connector: Any, app: Any) -> None:
        super().__init__(connector)
        self.app = app

    def _tracks(self, jobs_: list[jobs.Job]) -> bool:
        if not is_configured():
            try:
                for job in jobs_:
                    say_untracked(self.app, job.task_name, "this process")
            except Exception:
                internal_error("saying why a deferred job is untracked")
            return False
        return any(tracking_of(self.app, job.task_name) is not None for job in jobs_)

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
        fetched.put(job.id, task_kwargs[TB_TASK_ID_KWARG])
        return job.evolve(task_kwargs={k: v for k, v in task_kwargs.items() if k != TB_TASK_ID_KWARG})

    async def finish_job(self, job: jobs.Job, status: Any, *args: Any, **kwargs: Any) -> None:
        carried = fetched.take(job.id)  # still here: no middleware of ours took it
        # A job whose task this worker does not know fails before any worker middleware runs (Procrastinate
        # raises TaskNotFound first): its task, created when it was deferred, would stay pending for ever.
        if job.task_name not in self.app.tasks and is_configured():
            _failed_unknown(job, carried)
        elif carried is not NOTHING and is_configured():
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
            internal_error("looking up a job being cancelled")
            return None
        if len(found) != 1 or found[0].status != "todo":
            return None
        return carried_task_id(found[0])


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
        internal_error("cancelling the task of a cancelled job")


def _failed_unknown(job: jobs.Job, carried: Any) -> None:
    raw = carried_task_id(job) if carried is NOTHING else (
        carried if isinstance(carried, str) and is_task_id(carried) else None)
    if raw is None:
        return  # deferred untracked: nothing was created
    try:
        problem = pexc.TaskNotFound(f"no task named {job.task_name!r} in the worker that took job {job.id} (a typo, "
                                    "or a task removed while its jobs were queued)")
        lifecycle.close(raw, StatusEnum.ERROR, exception_data(problem))
    except Exception:
        internal_error("recording the failure of a job whose task is unknown")
