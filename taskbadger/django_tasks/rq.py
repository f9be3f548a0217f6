"""The RQ worker class for ``django.tasks`` on RQ (``django_tasks_rq``): RQ's fork-based ``Worker``, which also ends
the Task Badger task of a job that its work horse did not report.

An RQ worker forks a work horse per job; the horse sends ``task_started`` and, from the job's callbacks,
``task_finished``. A horse that dies before its callbacks ran (SIGKILL, the kernel's OOM killer, RQ killing it at
the job's timeout + 60 s, a crash) or that is stopped on request (RQ's stop-job command) sends nothing: the
worker's main process fails the job without any signal or callback, and its task stayed ``processing`` for ever.
This class ends it there too (``events.on_lost``): ``error`` for a killed horse, ``cancelled`` for a stopped job.
What RQ does with the job is unchanged, and tracking never gets in its way (guarded). It also stops at once on a warm
shutdown, where RQ's own worker with redis-py 8.2 often waits a minute (``Worker.unsubscribe``).

Use it from the settings (``django_rq`` reads them: ``manage.py rqworker``)::

    RQ = {"WORKER_CLASS": "taskbadger.django_tasks.rq.Worker"}

or ``manage.py rqworker --worker-class taskbadger.django_tasks.rq.Worker``. A worker class of your own subclasses
this one. Only a process that names this module imports it (and ``rq``).
"""

from __future__ import annotations

import inspect
import logging
import os
import signal
from typing import Any

from rq.worker import Worker as RQWorker

from ..models import StatusEnum
from . import events

log = logging.getLogger("taskbadger")

__all__ = ["Worker"]

#: Why a stopped job's task ends ``cancelled`` (its ``data["rq_stopped"]``).
STOPPED = "stopped on request (RQ's stop-job command): its work horse was killed"


class Worker(RQWorker):
    """RQ's ``Worker`` (a work horse forked per job), whose main process also ends the Task Badger task of a job
    that its work horse did not report: ``error`` (``WorkHorseLost``) when the horse was killed or crashed,
    ``cancelled`` when the job was stopped with RQ's stop-job command; unless the task has a final state already.
    RQ's own handling (its failed job, a ``work_horse_killed_handler``) is unchanged."""

    def handle_work_horse_killed(self, job: Any, retpid: Any, ret_val: Any, rusage: Any) -> None:
        """RQ: the horse ended without recording the job's outcome, and the job is failed next."""
        try:
            super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        finally:
            job_lost(job, StatusEnum.ERROR, killed_reason(ret_val))

    def handle_job_failure(self, job: Any, queue: Any, *args: Any, **kwargs: Any) -> None:
        """RQ: fail the job (in the horse for a job that raised, in the main process for a killed horse or a job
        stopped on request). RQ marks a stopped job by its id (``_stopped_job_id``, rq 2.x and 3.x), which its
        handling clears: read before."""
        stopped = job.id == getattr(self, "_stopped_job_id", None)
        try:
            super().handle_job_failure(job, queue, *args, **kwargs)
        finally:
            if stopped:
                job_lost(job, StatusEnum.CANCELLED, STOPPED)

    def unsubscribe(self) -> None:
        """RQ: leave the worker's command channel as it stops. RQ sends UNSUBSCRIBE, then asks its pub/sub thread to
        stop; redis-py 8.2's ``stop()`` waits for the thread. When the reply woke the thread before it was asked (a
        race, lost about half the time), it waited 60 s for the next message: the warm shutdown took a minute,
        longer than many deploys wait before a SIGKILL. Asked first, the thread ends on that reply."""
        try:
            thread = getattr(self, "pubsub_thread", None)
            if thread is not None:
                ask_to_stop(thread)
        except Exception:
            log.exception("Task Badger: internal error while the RQ worker stops; RQ's shutdown is not affected",
                          extra={"taskbadger_internal_error": True})
        super().unsubscribe()


def ask_to_stop(thread: Any) -> None:
    """Ask redis-py's pub/sub thread to end at its next message, without waiting for it (redis-py 8.2's ``stop()``
    waits unless given a timeout; earlier ones never wait and take no argument)."""
    if "timeout" in inspect.signature(thread.stop).parameters:
        thread.stop(timeout=0)
    else:
        thread.stop()


def killed_reason(ret_val: Any) -> str:
    """What happened to the work horse, from its wait status (``os.wait4``)."""
    if isinstance(ret_val, int) and os.WIFSIGNALED(ret_val):
        number = os.WTERMSIG(ret_val)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        how = f"was killed by {name}"
        if number == signal.SIGKILL:
            how += " (kill -9, the kernel's OOM killer, or RQ at the job's timeout + 60 s)"
    elif isinstance(ret_val, int) and os.WIFEXITED(ret_val):
        how = f"exited with status {os.WEXITSTATUS(ret_val)}"
    else:
        how = "ended"
    return f"the RQ work horse running the job {how} before the job's outcome was recorded; RQ failed the job"


def job_lost(job: Any, status: StatusEnum, reason: str) -> None:
    """End the task of ``job`` (``events.on_lost``). Guarded: RQ's handling of its job goes on whatever tracking
    does."""
    try:
        meta = getattr(job, "meta", None)
        if not isinstance(meta, dict) or "backend_name" not in meta:
            return  # not a django.tasks job (django_tasks_rq records its backend's name in the job's meta)
        events.on_lost(str(job.id), str(getattr(job, "func_name", "") or ""), status, reason)
    except Exception:
        log.exception("Task Badger: internal error with RQ job %s, which its work horse did not report; RQ's "
                      "handling of it is not affected", getattr(job, "id", "?"),
                      extra={"taskbadger_internal_error": True})
