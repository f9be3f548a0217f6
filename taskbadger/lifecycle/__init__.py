"""What happens to a Task Badger task when a job is enqueued, starts, reports progress, ends, fails, is
retried or runs again: one piece of code that every integration calls (Celery, ``django.tasks``,
Procrastinate, ``@track``). It holds nothing about any queue: an adapter translates its queue's events
into these calls, and carries ``Meta`` from the process that enqueues to the worker its own way.

Publishing side
    ``create_fields`` (the create body: name, ``external_id`` = the job's id, queue, options, the
    integration's rules, recorded arguments, parent), then ``enqueue`` (the inline create, within the
    publish budget, through the breaker: ``inline.create_inline``; the jobs of one publish share one budget:
    ``SharedBudget``); ``created_meta`` is what to carry.
    A job whose enqueue failed after its task was created: ``publish_failed``.

Worker side
    ``Run``: one tracked run. ``start`` (``processing``, ``start_time`` on the first attempt, the stale
    timeout, then ``enter``: the running task for nesting and ``current_task()``, context providers,
    heartbeat). A job its publisher could not track is created by the worker: ``create_at_start`` (which
    takes up a create whose answer was lost, ``inline.find``). Then one outcome: ``succeed`` (the
    finished-progress rule), ``fail`` (the exception's type, message and traceback, the context providers'
    context), ``cancel``, or ``back_to_pending`` (a retry, a requeue: the same task runs again and goes
    back to ``processing`` when it starts); and ``leave``. A run whose task may exist but could not be
    looked up ends with ``settle``. Events that know only the task id (a worker's main process): ``close``.

Every update goes to the per-process queue (``delivery.sender.submit``): nothing here waits for the API
except the creates, which must be inline (the job's body may ask for its task). A final update is merged
with a queued ``processing`` (a fast job costs one PATCH).
"""

from __future__ import annotations

import contextvars
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .. import context_providers
from .._runtime import log_once, log_throttled, short
from ..config import get_config
from ..context_providers import error_context
from ..delivery import merge, sender
from ..delivery.heartbeat import get_heartbeat
from ..delivery.queue import hand_over as hand_over_queued
from ..inline import Created, SharedBudget, create_inline, fetch, find, settle_later
from ..models import (
    EXCEPTION_KEYS,
    MAX_EXTERNAL_ID_LENGTH,
    TERMINAL_STATUSES,
    StatusEnum,
    TaskModel,
    completed_progress,
    exception_data,
    fitted_name,
)
from ..scope import enter_task, exit_task, parent_for_new_task, parent_for_next_task
from ..task import Task
from .body import RunTask
from .carried import Meta, carried_fields, parse_meta
from .options import OPTIONS, check_option, recorded_args, validate

log = logging.getLogger("taskbadger")

__all__ = ["OPTIONS", "AtStart", "Meta", "Rules", "Run", "SharedBudget", "back_to_pending", "cancel", "carried_fields",
           "carried_options", "check_option", "close", "create_at_start", "create_fields", "created_meta",
           "current_run", "current_task", "enqueue", "enter", "fail", "heartbeat_options", "leave", "now", "parse_meta",
           "publish_failed", "recorded_args", "retried", "retry", "settle", "start", "succeed", "untracked_options",
           "validate"]

#: A task's stale timeout defaults to this many heartbeat intervals.
STALE_TIMEOUT_FACTOR = 2
#: The most of a job's time limit that creating its task when it starts may take (``create_at_start``): the rest is
#: the margin between the job's start as its worker counts it and as this process sees it.
TIME_LIMIT_SHARE = 0.5

#: Each status's text, read once (``StatusEnum.X.value`` is a property written in Python: two frames per read).
_VALUE: dict[StatusEnum, str] = {status: status.value for status in StatusEnum}
_PROCESSING = StatusEnum.PROCESSING.value


#: (whole second, its ISO 8601 text up to the seconds) of the last ``now()``: a worker stamps two times per
#: task, most within the same second as the one before.
_second: tuple[int, str] = (-1, "")


def now() -> str:
    """This instant in UTC, ISO 8601 with microseconds (``2026-12-06T02:47:37.123456+00:00``): what
    ``datetime.now(timezone.utc).isoformat()`` gives (with ``.000000`` where it leaves them out), at 40 % of
    its cost (callgrind: 6k instructions per call against 15k; a worker stamps two per task)."""
    global _second
    micros = time.time_ns() // 1000
    whole, fraction = divmod(micros, 1_000_000)
    second = _second  # one read: another thread may replace it meanwhile, never half of it
    if second[0] != whole:
        second = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{second[1]}.{fraction:06d}+00:00"


class Rules(Protocol):
    """An integration's rules (``CelerySystemIntegration``, the ``django.tasks`` settings…)."""

    record_task_args: bool
    heartbeat_interval: float | None
    stale_timeout: int | None

    def monitor_for(self, task_name: str) -> str | None: ...


# -- publishing side ---------------------------------------------------------------------------------------


def create_fields(name: str, options: Mapping[str, Any], rules: Rules | None, external_id: Any, queue: str | None,
                  recorded: Callable[[], dict[str, Any]] | None = None, extra_data: Mapping[str, Any] | None = None,
                  display_name: str | None = None, inherit_parent: bool = True) -> dict[str, Any]:
    """The create body of a job's task (``name`` and ``monitor_id`` included). ``name`` is the job's task
    name (the rules apply to it), ``display_name`` the name shown when it differs; ``options`` are checked
    options (``validate``); ``recorded()`` gives the job's arguments as data, asked only when they are to
    be recorded; ``inherit_parent``: False when the job follows the running task rather than being its
    child (a Celery chain's next link): it is then the running task's sibling."""
    fields: dict[str, Any] = {
        "name": options.get("name", fitted_name(display_name or name)),
        "status": StatusEnum.PENDING,
        "external_id": _fitted_external_id(name, external_id),
        "queue": options.get("queue") or (fitted_name(queue) if isinstance(queue, str) else None),
    }
    for key in ("value", "value_max", "tags", "max_runtime", "actions"):
        if key in options:
            fields[key] = options[key]
    data = dict(options.get("data") or {})
    if extra_data:
        data.update(extra_data)
    if recorded is not None and options.get("record_task_args", rules.record_task_args if rules is not None else False):
        data.update(recorded())
    if data:
        fields["data"] = data
    if "parent" in options:
        fields["parent"] = options["parent"]  # explicit, None included
    else:
        parent = parent_for_new_task() if inherit_parent else parent_for_next_task()
        if inherit_parent or parent is not None:
            fields["parent"] = parent
    monitor = options.get("monitor_id") or (rules.monitor_for(name) if rules is not None else None)
    if monitor:
        fields["monitor_id"] = monitor
    return fields


#: What a job that goes out untracked carries to its worker (``untracked_options``): only what its worker cannot
#: know itself.
UNTRACKED_OPTIONS = ("parent",)


def untracked_options(fields: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """The options a job whose create failed at enqueue (``fields`` from ``create_fields``) carries to its worker,
    which creates its task when it starts (``create_at_start``), where the task that enqueued it is not running:
    the parent resolved here, unless ``options`` name one (the worker has them itself). Empty when there is none:
    a job enqueued outside any task carries nothing."""
    parent = fields.get("parent")
    return {"parent": parent} if parent is not None and "parent" not in options else {}


def carried_options(raw: Any, task_name: str) -> dict[str, Any]:
    """The checked options a job carried from the process that enqueued it untracked (``untracked_options``),
    whoever wrote them: only those listed, each valid (what is not is reported once and dropped)."""
    if not isinstance(raw, Mapping):
        return {}
    return validate(task_name, {key: raw[key] for key in UNTRACKED_OPTIONS if key in raw})


def _fitted_external_id(name: str, external_id: Any) -> str | None:
    """The job's id as the task's ``external_id``, or None. An id longer than the API takes (a Celery
    ``task_id=`` of 300 characters) is left out, not shortened: the API would refuse the whole create (the job
    would run untracked), and a shortened id is not the job's: looking the task up by it (``inline.find``, a
    user searching for the id) matches exactly, and two long ids with the same start would find each other's
    task. The task is tracked without it, and the user is told once per task name."""
    if not isinstance(external_id, str):
        return None
    if len(external_id) > MAX_EXTERNAL_ID_LENGTH:
        log_once(f"external-id-too-long:{name[:200]}", logging.WARNING,
                 "Task Badger: task %s was given an id of %d characters, longer than the %d Task Badger takes as "
                 "its external_id: it is tracked without one, so it cannot be found by that id in Task Badger, nor "
                 "taken up by its worker if the answer to its create is lost (a second task is then made). "
                 "Give it an id of at most %d characters (e.g. apply_async(task_id=...) with a shorter id, or a "
                 "hash of the long one) to keep it.", short(name), len(external_id), MAX_EXTERNAL_ID_LENGTH,
                 MAX_EXTERNAL_ID_LENGTH)
        return None
    return external_id


def heartbeat_options(options: Mapping[str, Any], rules: Rules | None,
                      name: str = "") -> tuple[float | None, int | None]:
    """(seconds between pings, stale_timeout) for a job: its options, else the integration's; the stale
    timeout defaults to twice the heartbeat interval. A stale timeout that is not longer than the interval is
    kept (the user chose it) but logged once: Task Badger would mark the job stale between two pings."""
    interval = options.get("heartbeat_interval", rules.heartbeat_interval if rules is not None else None)
    stale = options.get("stale_timeout", rules.stale_timeout if rules is not None else None)
    if stale is None and interval:
        stale = max(1, math.ceil(interval * STALE_TIMEOUT_FACTOR))
    elif stale is not None and interval and stale <= interval:
        log_once(f"stale-before-heartbeat:{name}:{interval}:{stale}", logging.WARNING,
                 "Task Badger: %s has a stale_timeout of %s s, not longer than its heartbeat interval of %s s, so "
                 "Task Badger marks it stale between two heartbeats while it runs. Leave stale_timeout unset (it "
                 "is then twice the interval) or make it at least %s s.",
                 f"task {short(name)}" if name else "a task", stale, interval,
                 math.ceil(interval * STALE_TIMEOUT_FACTOR))
    return interval, stale


def enqueue(fields: Mapping[str, Any], where: str = "publish", budget: SharedBudget | None = None,
            within: float | None = None) -> Created:
    """The inline create of a job's task (``fields`` from ``create_fields``), within the publish budget,
    through the breaker; never raises. ``where``: "publish" (the job is being enqueued) or "start" (a
    worker creates a job's task its publisher could not). ``budget``: the one budget of a publish of several
    jobs (``SharedBudget``); not tried (``Created(None)``) when this create does not fit in what is left.
    ``within``: seconds, when the job can wait less than the publish budget (see ``create_at_start``)."""
    fields = dict(fields)
    name = fields.pop("name")
    return create_inline(name, fields, fields.pop("monitor_id", None), where=where, budget=budget, within=within)


def created_meta(task: Task | Mapping[str, Any], heartbeat_interval: float | None = None,
                 stale_timeout: int | None = None) -> Meta:
    """What to carry to the worker about a created task."""
    return Meta(carried_fields(task.to_dict() if isinstance(task, Task) else task), heartbeat_interval, stale_timeout)


def abandon_maybe_created(external_id: str, reason: str) -> None:
    """A job goes out untracked although the API may have carried its create out (the answer was lost, and the
    look-up by ``external_id`` could not be made in time), and nothing else will know that task (a provisional
    ``external_id``, not one its worker looks up): once the API answers, close it ``cancelled``, with
    ``data["abandoned"]``, if it is there and has no final state. Else it stays ``pending`` for ever."""
    settle_later(external_id, {"status": StatusEnum.CANCELLED.value, "end_time": now(),
                               merge.MERGE_DATA: {"abandoned": reason}})


def publish_failed(task: Task, reason: str) -> None:
    """The task was created but its job was never enqueued (the broker refused it): it will never run.
    End it ``cancelled``, with ``data["publish_error"]``."""
    sender.submit(task.id, {"status": StatusEnum.CANCELLED.value, "end_time": now(),
                            "data": merge.with_data(task.data, {"publish_error": reason})}, final=True)
    log_throttled(f"publish-failed:{task.name[:200]}", 60.0, logging.WARNING,
                  "Task Badger: the message of task %s was not published (%s); the task is cancelled",
                  short(task.name), short(reason, 200))


# -- worker side: one tracked run ---------------------------------------------------------------------------


class Run:
    """One tracked run of a job, from its start to its end. The ``taskbadger.Task`` is built from what was
    carried only when something asks for it (most job bodies never do)."""

    __slots__ = ("external_id", "meta", "id", "_task", "_status", "_tokens", "finished", "heartbeat",
                 "progress_unknown")

    def __init__(self, external_id: str | None, meta: Meta) -> None:
        self.external_id = external_id
        self.meta = meta
        self.id: str = meta.task["id"]  # the task's id (``meta.id``), read on every event of the run
        self._task: RunTask | None = None
        self._status: StatusEnum | str = meta.task.get("status") or StatusEnum.PENDING
        self._tokens: tuple[Any, Any, Any] | None = None  # scope, current run, context providers (while entered)
        self.finished = False
        self.heartbeat: int | None = None  # this run's start of the heartbeat (``Heartbeat.start``)
        self.progress_unknown = False  # an earlier attempt may have reported progress this run was not told of

    @classmethod
    def of_task(cls, task: Task, external_id: str | None = None) -> Run:
        """A run of a task created just now, whose ``taskbadger.Task`` we hold (``@track``)."""
        run = cls(external_id, created_meta(task))
        run._task = RunTask(task._task)
        run._status = task.status
        return run

    @property
    def task(self) -> RunTask:
        """The job's task as its body sees it: its updates never fail the job (``body.RunTask``)."""
        if self._task is None:
            self._task = RunTask(TaskModel.from_dict(self.meta.task))
            self._task._task.status = self._status
            if not self.data_known or self.progress_unknown:
                self._task._fetch = self._fetch  # read only when the body needs a field that was not carried
        self._task.data_known = self.data_known
        return self._task

    def parent(self) -> str | None:
        """The task's parent when it was not carried (``parent_omitted``), asked when a task is created under the run:
        tasks nest one level deep, so a task created in a child is the child's sibling, and the API refuses it as the
        child's child. Read with the task's other fields (``RunTask._fetched``), once; None while the API cannot
        answer (the new task is then made this one's child, as if it had no parent)."""
        task = self.task
        if task._fetch is not None:
            task._fetched()
        if task._fetch is not None:
            return None
        self.meta.task.update(parent=task._task.parent, parent_omitted=False)
        return task._task.parent

    def _fetch(self) -> TaskModel | None:
        model = fetch(self.id)  # within the publish budget, not while the API is failing (asked again later)
        if model is not None:
            self.meta.task["data_omitted"] = False
        return model

    # What the run holds, read from the body's object's fields (``RunTask``'s attributes read the API for a field
    # that was not carried: the run's own bookkeeping never does).

    @property
    def data(self) -> Any:
        return self._task._task.data if self._task is not None else self.meta.task.get("data")

    @data.setter
    def data(self, value: Any) -> None:
        self.meta.task["data"] = value
        if self._task is not None:
            self._task._task.data = value

    @property
    def value(self) -> Any:
        return self._task._task.value if self._task is not None else self.meta.task.get("value")

    @property
    def value_max(self) -> Any:
        return self._task._task.value_max if self._task is not None else self.meta.task.get("value_max")

    def meta_for_next_attempt(self, resend: Mapping[str, Any] | None = None) -> Meta:
        """What to carry to the job's next attempt (a retry): the progress its body reported included, so that
        the attempt that succeeds ends complete (the finished-progress rule needs ``value_max``); ``resend``: the
        fields of this attempt's retry that could not be sent (``back_to_pending``), for the next one to send."""
        task = dict(self.meta.task)
        for key, value in (("value", self.value), ("value_max", self.value_max)):
            if isinstance(value, int) and not isinstance(value, bool):
                task[key] = value
        if all(isinstance(task.get(key), int) for key in ("value", "value_max")):
            task.pop("progress_omitted", None)  # this run learnt the task's progress: it is carried, not omitted
        return Meta(task, self.meta.heartbeat_interval, self.meta.stale_timeout, dict(resend) if resend else None)

    @property
    def data_known(self) -> bool:
        """False when the data was too large to carry and has not been fetched."""
        return not (self.meta.task.get("data_omitted") and self.data is None)

    def set_status(self, status: StatusEnum) -> None:
        self._status = status
        if self._task is not None:
            self._task._task.status = status

    def is_finished(self) -> bool:
        status = self._task.status if self._task is not None else self._status
        return status in TERMINAL_STATUSES

    def current_task(self) -> Task:
        """The run's ``taskbadger.Task`` for the job's body, built from what was carried: no request to the API.
        Fields that were not carried (a Procrastinate job carries only its task's id; data too large to carry) are
        read once when the body reads one (``RunTask._fetched``); until then the body's merges into the task's data
        are made when they are sent (``RunTask.data_known``)."""
        return self.task


_current: contextvars.ContextVar[Run | None] = contextvars.ContextVar("taskbadger_current_run", default=None)


def current_run() -> Run | None:
    """The tracked run executing in this context (thread, greenlet, coroutine), if any."""
    return _current.get()


def current_task() -> Task | None:
    """The running task's ``taskbadger.Task``, or None when no tracked task runs here.

    Inside a tracked Celery task, ``django.tasks`` task, Procrastinate job or ``@track`` call, this is its
    Task Badger task, built without a request to the API; elsewhere (or when the run is untracked) None::

        tb = taskbadger.current_task()
        if tb:
            tb.update(value=i, value_max=total)
    """
    run = _current.get()
    return run.current_task() if run is not None else None


def start(run: Run, first_attempt: bool = True, progress_carried: bool = False, after_error: bool = False,
          extra: Mapping[str, Any] | None = None, run_again: bool = False) -> None:
    """The job starts: ``processing`` (with ``start_time`` on its first attempt; a run again keeps its
    first start), its stale timeout (only once running: a queued job never goes stale); then ``enter``.
    ``progress_carried``: a later attempt was given the progress the earlier ones reported (Celery's retry
    message carries it); else its success completes the progress the task has when it is sent. ``after_error``:
    the attempt before this one ended the task in ``error``, whose exception leaves the task's data now.
    ``extra``: merged into the task's data with the start (what an earlier attempt may not have recorded).
    ``run_again``: the queue gives the same attempt again (a message redelivered after its worker was lost): its
    ``start_time`` is sent only if the task has none (the run before may have been lost before it started), and its
    success completes the progress the task has then, unless ``progress_carried``."""
    fields: dict[str, Any] = {"status": _PROCESSING}
    if first_attempt:
        fields["start_time"] = now()
        if run_again:
            fields[merge.KEEP_START] = True
    if run.meta.stale_timeout:
        fields["stale_timeout"] = run.meta.stale_timeout
    if after_error:
        fields[merge.DROP_DATA] = list(EXCEPTION_KEYS)
        known = run.data
        if run.data_known and isinstance(known, Mapping) and any(key in known for key in EXCEPTION_KEYS):
            # the task was read (taken up by its worker): later updates that send its whole data leave them out too
            run.data = {key: value for key, value in known.items() if key not in EXCEPTION_KEYS}
    if extra:
        fields.update(data_fields(run, extra))
    if run.meta.resend:  # the attempt before could not record its retry: this one does, before its own outcome
        fields = merge.queued(run.meta.resend, fields)
    sender.submit(run.id, fields)
    run.set_status(StatusEnum.PROCESSING)
    run.finished = False
    run.progress_unknown = (not first_attempt or run_again) and not progress_carried
    if run.progress_unknown:
        _forget_carried_progress(run)
    enter(run)


def _forget_carried_progress(run: Run) -> None:
    """The progress carried to this run is its publisher's (a Celery message sent again by the worker's main process
    after its pool child was lost, or delivered again), while an earlier attempt may have reported more, which Task
    Badger shows. The body's ``value``/``value_max`` showed the publisher's (0 of 10 where Task Badger showed 1 of 2),
    and the run's success completed that (10, sent onto a task at 1 of 2). They are left unknown instead: the body's
    object reads them from the API when the body asks for them (``RunTask._fetched``: one GET, only then), and a
    success completes the progress the task has when it is sent (``merge.COMPLETE_PROGRESS``)."""
    for key in ("value", "value_max"):
        run.meta.task.pop(key, None)
        if run._task is not None:
            setattr(run._task._task, key, None)
    if run._task is not None and run._task._fetch is None:
        run._task._fetch = run._fetch


def enter(run: Run) -> None:
    """The run's body executes here from now on: tasks created meanwhile are its children,
    ``current_task()`` is its task, the context providers take their snapshots, its heartbeat starts."""
    if run._tokens is not None:
        return
    parent = run.parent if run.meta.task.get("parent_omitted") else run.meta.task.get("parent")
    run._tokens = (enter_task(run.id, parent), _current.set(run), context_providers.start())
    if run.meta.heartbeat_interval:
        run.heartbeat = get_heartbeat().start(run.id, run.meta.heartbeat_interval)


def _end_body_updates(run: Run) -> None:
    """The run's outcome is being recorded: from now on, the body's object (a thread the job started that
    outlived it) no longer changes the task (``body.RunTask``)."""
    if isinstance(run._task, RunTask):
        run._task._ended = True


def leave(run: Run) -> None:
    """The run's body is over (whatever its outcome): undo ``enter``, in the same context. Idempotent."""
    if run.heartbeat is not None:
        get_heartbeat().stop(run.id, run.heartbeat)
        run.heartbeat = None
    if run._task is not None:
        _end_body_updates(run)
    tokens, run._tokens = run._tokens, None
    if tokens is None:
        return
    scope_token, current_token, snapshots = tokens
    try:
        exit_task(scope_token)
        _current.reset(current_token)
    finally:
        if snapshots is not None:
            context_providers.stop(snapshots)


def data_fields(run: Run, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The update fields that add ``extra`` to the run's data (see ``merge.data_fields``)."""
    fields = merge.data_fields(run.data, extra, known_is_current=run.data_known)
    if "data" in fields:
        run.data = fields["data"]
    return fields


def _final(run: Run, status: StatusEnum, extra: Mapping[str, Any] | None = None) -> bool:
    """Queue the run's final update, unless it already has a final state (set in the body: never
    overwritten). Returns whether it was queued."""
    if run.finished or run.is_finished():
        return False
    if run._task is not None:
        _end_body_updates(run)
    fields: dict[str, Any] = {"status": _VALUE[status], "end_time": now()}
    if status is StatusEnum.SUCCESS:
        value, value_max = run.value, run.value_max
        if isinstance(value, int):
            fields.update(completed_progress(value, value_max))
        known = isinstance(value, int) and isinstance(value_max, int)
        # read at send time: what an earlier attempt reported, or the value_max of a task whose fields were not
        # carried (a Procrastinate job's: fetched only by a body's current_task(), never on an event loop)
        if (run.progress_unknown and not known) or (isinstance(value, int) and not known and not run.data_known):
            fields[merge.COMPLETE_PROGRESS] = True
    if extra:
        fields.update(data_fields(run, extra))
    sender.submit(run.id, fields, final=True)
    run.finished = True
    run.set_status(status)
    return True


def succeed(run: Run, extra: Mapping[str, Any] | None = None) -> bool:
    """The job returned: ``success`` (a job that reported progress ends complete), with ``extra`` merged into
    its data."""
    return _final(run, StatusEnum.SUCCESS, extra)


def failure_data(exc: Any, formatted: str | None = None) -> dict[str, Any]:
    """What a failure records in ``data``: the exception's type, message and traceback (``formatted``, when
    the queue has the text), and the context providers' context."""
    if not isinstance(exc, BaseException):
        exc = RuntimeError(str(exc))
    return {**exception_data(exc, formatted), **error_context(exc)}


def fail(run: Run, exc: Any, formatted: str | None = None, extra: Mapping[str, Any] | None = None) -> bool:
    """The job raised ``exc``: ``error``, with ``failure_data`` (and ``extra``) merged into the task's data."""
    return _final(run, StatusEnum.ERROR, {**failure_data(exc, formatted), **(extra or {})})


def cancel(run: Run, extra: Mapping[str, Any] | None = None) -> bool:
    """The job will not complete (ignored, rejected, aborted): ``cancelled``."""
    return _final(run, StatusEnum.CANCELLED, extra)


def back_to_pending(run: Run, extra: Mapping[str, Any] | None = None, wait: bool = False,
                    hand_over: bool = False) -> dict[str, Any] | None:
    """The job will run again (a retry, a requeue): back to ``pending``, with ``extra`` (the attempt, the
    exception that caused it) merged into its data. Its next start makes it ``processing`` again. ``wait``: send
    it now (within the publish budget), before the job is given back to its queue, so that it reaches the API
    before the next attempt, which may start in another process and end first; queued if it cannot be sent
    now, then sent only while the task has no final state. ``hand_over`` (with ``wait``): when it cannot be sent
    now, nothing of the task's is left queued here (a queued update of this attempt could still land after the
    next attempt's final state, even one sent only while the task has none: that is read, then written): its
    fields are returned (without the status), for the next attempt to send with its start (Celery's
    ``Meta.resend``), in the process whose final state comes after them, or for the caller to leave out what
    the next attempt records itself (Procrastinate). None when it was sent (or queued)."""
    fields: dict[str, Any] = {"status": StatusEnum.PENDING.value}
    if run.meta.stale_timeout:
        # applied only while the job runs (``start`` sets it again): waiting for its next attempt (a retry's
        # countdown, its backoff) it is queued, no heartbeat comes, and Task Badger marked it stale meanwhile
        fields[merge.SEND_NULL] = ["stale_timeout"]
    if extra:
        fields.update(data_fields(run, extra))
    run.set_status(StatusEnum.PENDING)
    if not wait:
        sender.submit(run.id, fields)
        return None
    if run.task.send_now(fields):
        return None
    if hand_over:
        # what this attempt had queued (its start, progress), given back by the failed send, goes with it
        carried = merge.queued(hand_over_queued(run.id), fields)
        carried.pop("status", None)
        carried.pop(merge.SEND_NULL, None)  # sent late, it would take the next attempt's stale timeout away
        return carried
    log.warning("Task Badger: could not record the retry of task %s now; it is queued", short(run.id))
    sender.submit(run.id, {**fields, merge.UNLESS_FINAL: True})
    return None


@dataclass(frozen=True)
class AtStart:
    """What ``create_at_start`` came to: what to run the job with (None: untracked), and whether its
    outcome is to be recorded later on a task that may exist (``settle``)."""

    meta: Meta | None
    settle: bool = False


def create_at_start(external_id: str | None, options: Mapping[str, Any], rules: Rules | None,
                    make_fields: Callable[[], dict[str, Any]], maybe_created: bool = False,
                    open_only: bool = False, same_name: bool = False, ended_too: bool = False,
                    time_limit: float | None = None) -> AtStart:
    """A worker starts a job its publisher did not track (not configured there, or the API was failing then):
    track it now. If the publisher's create may have been carried out without an answer (``maybe_created``),
    take that task up when it is still ``pending``; if the API cannot be asked now, the run goes on untracked
    and its outcome is recorded once the API answers (``AtStart.settle``). Else create it ``processing``, with
    ``make_fields()`` (``create_fields``). ``open_only``: take up any task of the job without a final state, not
    only a ``pending`` one (a retry of a job whose worker created its task: its ``pending`` may still be queued).
    ``same_name``: take up only a task with the name ``make_fields()`` gives (a job id that other databases
    also use: Procrastinate's count up from 1 in each), unless ``before_create`` may have renamed it.
    ``ended_too``: take up the job's task whatever its status (a job put back in its queue by hand after it
    failed: its first attempts' task ended ``error``, and this run continues it). ``time_limit``: the job's earliest
    time limit in seconds, counted from its start, if it has one: what is asked of the API here then takes at most
    ``TIME_LIMIT_SHARE`` of it (less than the publish budget when the limit is short), so that the limit strikes in
    the job's body, at its time, not in these requests (Celery's soft limit is one signal: spent there, it was
    lost)."""
    ends = time.monotonic() + time_limit * TIME_LIMIT_SHARE if time_limit else None

    def within() -> float | None:  # what is left of that share, for each request in turn
        return None if ends is None else ends - time.monotonic()

    heartbeat, stale = heartbeat_options(options, rules)
    fields = None
    if maybe_created and external_id:
        fields = make_fields() if same_name else None
        config = get_config()
        renamed = config is not None and config.before_create is not None
        found = find(external_id, open_only=open_only,
                     name=fields["name"] if fields is not None and not renamed else None, ended_too=ended_too,
                     within=within())
        if found.task is not None:
            return AtStart(created_meta(found.task, heartbeat, stale))
        if not found.asked:
            return AtStart(None, settle=True)
    fields = fields if fields is not None else make_fields()
    fields.update(status=StatusEnum.PROCESSING, start_time=now())
    if stale:
        fields["stale_timeout"] = stale
    created = enqueue(fields, "start", within=within())
    if created.task is None and created.maybe_created and external_id:
        # carried out perhaps (the answer was cut, a 5xx), and not found in time: the task may exist, processing,
        # with nobody to end it; the run's outcome is recorded on it once the API answers (``settle``)
        return AtStart(None, settle=True)
    task = created.task
    return AtStart(created_meta(task, heartbeat, None) if task is not None else None)


def settle(external_id: str, status: StatusEnum, exc: Any = None, start_time: str | None = None) -> None:
    """A run whose task may exist but could not be looked up when it started has ended with ``status``:
    record it on the task once the API answers (``inline.settle_later``). ``start_time``: the one the run's create
    sent, when other runs may share ``external_id`` at the same time: only the task that has it is the run's."""
    fields: dict[str, Any] = {"status": status.value, "end_time": now()}
    if start_time is not None:
        fields["start_time"] = start_time
    if status is StatusEnum.ERROR:
        fields[merge.MERGE_DATA] = exception_data(exc if isinstance(exc, BaseException) else RuntimeError(str(exc)))
    settle_later(external_id, fields)


def close(task_id: str, status: StatusEnum, data: Mapping[str, Any] | None = None, *, known_data: Any = None,
          data_known: bool = False, unless_final: bool = False, only_if_pending: bool = False) -> None:
    """End a task known only by its id (a worker's main process: a lost child, a revoke, a time limit).
    ``data`` is merged into the task's data: into ``known_data`` when ``data_known``, else at send time.
    ``unless_final``: only if Task Badger has no final state for it yet; ``only_if_pending``: only if it is
    still ``pending`` (no worker has taken it up). Nothing in a process that does not track."""
    if get_config() is None:
        return  # a worker without the settings its publisher had: its tasks run untracked, and it says so once
    fields: dict[str, Any] = {"status": status.value}
    if unless_final:
        fields[merge.UNLESS_FINAL] = True
    else:
        fields["end_time"] = now()
    if only_if_pending:
        fields[merge.ONLY_IF_PENDING] = True
    if data:
        fields.update(merge.data_fields(known_data, data, data_known))
    sender.submit(task_id, fields, final=True)


def retry(run: Run, attempt: int, exc: BaseException | None = None, wait: bool = False,
          hand_over: bool = False) -> dict[str, Any] | None:
    """The job will be tried again (its ``attempt``-th retry): back to ``pending``, with ``data["retries"]``
    and the exception that caused it (``data["last_exception"]``). ``wait``: send it now, from the job's
    body, so that it reaches the API before the next attempt can start elsewhere (queued if it cannot, or with
    ``hand_over`` returned for the next attempt to send: see ``back_to_pending``)."""
    return back_to_pending(run, _retry_data(attempt, exc), wait, hand_over)


def _retry_data(attempt: int, exc: BaseException | None) -> dict[str, Any]:
    extra: dict[str, Any] = {"retries": attempt}
    if exc is not None:
        extra["last_exception"] = exception_data(exc)["exception"]
    return extra


def retried(task_id: str, attempt: int, exc: BaseException | None = None) -> None:
    """A job known only by its task's id will be tried again (a worker's main process retries a job whose pool
    child was lost): back to ``pending``, as ``retry``, unless Task Badger has a final state for it already (its
    next attempt may have ended). Its stale timeout is taken off until that attempt starts (no heartbeat comes
    meanwhile). Nothing in a process that does not track."""
    if get_config() is None:
        return
    fields: dict[str, Any] = {"status": StatusEnum.PENDING.value, merge.SEND_NULL: ["stale_timeout"],
                              merge.UNLESS_FINAL: True}
    fields.update(merge.data_fields(None, _retry_data(attempt, exc), False))
    sender.submit(task_id, fields)
