"""The worker side: a worker middleware maps each job's run to the lifecycle (see the package's docstring)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from procrastinate import exceptions as pexc

from .. import lifecycle
from .._runtime import log_once, short
from ..config import is_configured
from ..delivery import merge, sender
from ..lifecycle import Meta, Run
from ..models import StatusEnum
from .tracked import (
    NOTHING,
    TB_TASK_ID_KWARG,
    WHERE,
    fetched,
    internal_error,
    job_fields,
    procrastinate_system,
    say_untracked,
    tracking_of,
)

if TYPE_CHECKING:
    from procrastinate import job_context, jobs

log = logging.getLogger("taskbadger")


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
                "parent_omitted": True,  # read if the job creates a task: it nests under this one's parent, if any
            }
        },
        job.task_name,
        WHERE,
    )
    if meta is not None:
        meta.heartbeat_interval, meta.stale_timeout = lifecycle.heartbeat_options(
            options or {}, procrastinate_system(), job.task_name)
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
            lambda: job_fields(job, options, external_id),
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
    # a warning only when something is lost (a pool of many coroutines may find the breaker's calls all in flight
    # while the API is healthy: the next attempt records the retry, and nothing is wrong)
    log.log(logging.WARNING if lost else logging.INFO,
            "Task Badger: could not record the retry of task %s now; its next attempt records it when it starts "
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
        raw = fetched.take(context.job.id)  # taken out of the kwargs when the job was fetched
        kwargs = context.job.task_kwargs
        if isinstance(kwargs, dict) and TB_TASK_ID_KWARG in kwargs:  # fetched by another job manager
            raw = kwargs.pop(TB_TASK_ID_KWARG)  # the task function never receives it
        elif raw is NOTHING:
            raw = None
        if is_configured():
            attempt, cancelled = await _attempt(context)
            run = await _begin(context, raw, attempt)
        else:
            say_untracked(context.app, context.job.task_name, "this worker", raw)
    except _StartInterrupted as interrupted:  # cancelled before the body ran: its outcome is the job's
        await _ended_before_the_body(interrupted.run, context, interrupted.cancellation, interrupted.attempt)
        raise interrupted.cancellation from None
    except Exception:
        internal_error(f"starting the task of job {getattr(context.job, 'id', None)}")
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
            internal_error("recording the outcome of a job")
        raise
    else:
        try:
            # after retries, the attempts it took (its retries recorded the count up to then)
            lifecycle.succeed(run, {"attempts": attempt.number} if attempt.number > 1 else None)
        except Exception:
            internal_error("recording the success of a job")
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
        internal_error("recording the outcome of a job")


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
            internal_error("recording the outcome of a job")
