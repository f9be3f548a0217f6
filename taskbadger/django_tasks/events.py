"""What each ``django.tasks`` signal means for the Task Badger task, on the shared lifecycle.

* ``task_enqueued`` (``on_enqueued``): a tracked task is claimed in the channel, created ``pending``
  (inline, within the publish budget) and its ``Meta`` written for the worker.
* ``task_started`` (``on_started``): the worker reads the entry (waiting for a publisher that is creating
  it right now), or claims and creates the task itself; then ``lifecycle.start`` (``processing``; a run
  again of the same ``TaskResult`` goes back to ``processing`` without a new start time).
* ``task_finished`` (``on_finished``): ``succeed`` or ``fail`` with the error the backend recorded, then
  ``leave``.

``ImmediateBackend`` runs the task in the process that enqueues it: its entries stay in this process.
``DummyBackend`` runs nothing: nothing is created.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from .. import lifecycle, spooling
from .._runtime import ForkSafeLock
from ..config import get_config
from ..models import StatusEnum, exception_data, is_task_id
from .channel import CREATED, CREATING, LEFT, MAYBE, Channel, Entry, LocalChannel
from .options import module_path, options_for

log = logging.getLogger("taskbadger")

#: How long an RQ work horse waits for its updates to be delivered before it exits (then spooled).
HORSE_FLUSH = 10.0
#: How long past the publish budget a worker waits for a publisher that is creating the task.
CLAIM_SLACK = 1.0
_local = LocalChannel()
#: TaskResult id -> Task Badger id of the tasks created in this process (the page that enqueued a task shows
#: its progress bar: ``taskbadger_django.task_id_for``), the most recent kept.
_created_here = LocalChannel(limit=1000)
_runs: dict[str, lifecycle.Run] = {}  # TaskResult id -> its tracked run in this process
_settle: set[str] = set()  # TaskResult ids whose outcome is settled later (``lifecycle.settle``)
_runs_lock = ForkSafeLock()


def _system() -> Any:
    config = get_config()
    return config.system("django_tasks") if config is not None else None


def _backend_kind(task_result: Any) -> str:
    """"immediate", "dummy", "rq", "database" (``django_tasks_db``) or "other", from the backend's class and its
    bases."""
    try:
        backend = task_result.task.get_backend()
    except Exception:
        return "other"
    names = {cls.__name__ for cls in type(backend).__mro__}
    for name, kind in (("ImmediateBackend", "immediate"), ("DummyBackend", "dummy"), ("RQBackend", "rq"),
                       ("DatabaseBackend", "database")):
        if name in names:
            return kind
    return "other"


#: The backends whose job rolls back with the user's transaction, as the channel's entry written in it does:
#: django-tasks-db's (a row). Any other (RQ's, whose job is in Redis at once; a third party's, which keeps its jobs
#: in a broker) is taken not to: its entry may go while its job runs.
_ENQUEUE_TRANSACTIONAL = frozenset({"database"})


#: The process that connected the receivers (an RQ worker's main process forks a work horse per job).
_connected_pid = os.getpid()


def connected_here() -> None:
    global _connected_pid
    _connected_pid = os.getpid()


def _channel(system: Any, kind: str) -> Channel:
    if kind == "immediate" or system is None or system.channel is None:
        return _local
    return system.channel


def _tracked(system: Any, name: str, options: dict[str, Any]) -> bool:
    track = options.get("track")
    if track is not None:
        return bool(track)
    return system is not None and system.track_task(name)


def _fields(task_result: Any, name: str, options: dict[str, Any], system: Any) -> dict[str, Any]:
    return lifecycle.create_fields(
        name, options, system, task_result.id, getattr(task_result.task, "queue_name", None),
        lambda: lifecycle.recorded_args(task_result.args, task_result.kwargs, ("args", "kwargs")))


def _options(name: str) -> dict[str, Any]:
    options = dict(options_for(name))
    options.pop("track", None)
    return options


# -- the process that enqueues -------------------------------------------------------------------------


def on_enqueued(task_result: Any) -> None:
    system = _system()
    if system is None:
        return
    kind = _backend_kind(task_result)
    name = module_path(task_result.task)
    if kind == "dummy" or not _tracked(system, name, options_for(name)):
        return
    channel = _channel(system, kind)
    if not channel.claim(task_result.id):
        return  # a worker started it first and tracks it
    options = _options(name)
    fields = _fields(task_result, name, options, system)
    created = lifecycle.enqueue(fields, "publish")
    if created.task is None:
        # Its worker creates its task (or looks it up) when it starts, where the task that enqueued it is not
        # running: what it needs from here (the parent) stays in the entry. Without one, a child enqueued while the
        # API failed was created with no parent.
        carried = lifecycle.untracked_options(fields, options)
        if created.maybe_created:
            channel.put(task_result.id, MAYBE, carried or None)
        elif carried:
            channel.put(task_result.id, LEFT, carried)  # certainly not created: the worker creates it
        else:
            channel.discard(task_result.id)  # certainly not created, nothing to carry: the worker may create it
        return
    heartbeat, stale = lifecycle.heartbeat_options(options, system, name)
    channel.put(task_result.id, CREATED, lifecycle.created_meta(created.task, heartbeat, stale).to_dict())
    _created_here.put(task_result.id, CREATED, created.task.id)
    # Enqueued inside a transaction that may yet roll back: the database backend's job goes with it and never
    # runs. Not RQ's, nor a broker's: its job is in Redis whatever the transaction does (only the entry goes; its
    # worker then finds this task by external_id, ``on_started``). Before, a backend of a kind not known here was
    # watched as the database's: its task was closed "rolled back" and its worker made a second one for the job.
    # The database backend's job may be on another database than the entry (a router): the transaction watched is
    # the job's (``database_job``).
    if_rolled_back = getattr(channel, "if_rolled_back", None) if kind in _ENQUEUE_TRANSACTIONAL else None
    if if_rolled_back is not None:
        task = created.task

        def cancel() -> None:
            lifecycle.close(
                task.id, StatusEnum.CANCELLED, {"publish_error": "the transaction that enqueued it was rolled back"},
                known_data=task.data, data_known=True, only_if_pending=True)

        if kind == "database":
            if_rolled_back(task_result.id, cancel, database_job=True)
        else:
            if_rolled_back(task_result.id, cancel)


# -- the worker ----------------------------------------------------------------------------------------


def on_started(task_result: Any) -> None:
    system = _system()
    if system is None:
        return
    kind = _backend_kind(task_result)
    if kind == "dummy":
        return
    name = module_path(task_result.task)
    channel = _channel(system, kind)
    entry = channel.get(task_result.id)
    if entry is None:
        if not _tracked(system, name, options_for(name)):
            return
        # No entry for an RQ job (or a broker's): its publisher's entry may have gone with a transaction that rolled
        # back while its job, in Redis, did not (or is not visible yet: SQLite's lock timed out). Its task, created at
        # the enqueue, is looked up by external_id before one is created (a request only when there is no entry).
        # Likewise for a database job on another database than the entry (a router): the entry's transaction may
        # have rolled back while the job's committed.
        look_up = (kind != "immediate" and kind not in _ENQUEUE_TRANSACTIONAL) or _apart_from_jobs(channel)
        claimed = _claim_at_start(channel, task_result.id)
        if claimed is None:
            # The transaction that enqueued it holds its entry, still open (a view that goes on working): the job is
            # not held until it ends. Its publisher's create has answered by now: its task is looked up and taken up.
            # The entry stays that transaction's (writing it would wait on it again).
            meta = _create_at_start(task_result, name, system, channel, maybe_created=False, look_up=True,
                                    held=True)
        elif claimed:
            meta = _create_at_start(task_result, name, system, channel, maybe_created=False, look_up=look_up)
        else:
            meta = _meta_of(task_result, name, system, channel, _wait(channel, task_result.id), look_up)
    else:
        meta = _meta_of(task_result, name, system, channel, entry)
    if meta is None:
        return
    run = lifecycle.Run(task_result.id, meta)
    with _runs_lock:
        _runs[task_result.id] = run
    # A run again of the same TaskResult follows an attempt that ended (in error, but for a lost worker): its
    # exception leaves the task's data, so that a run again that succeeds does not show it.
    again = len(getattr(task_result, "worker_ids", None) or ()) > 1
    lifecycle.start(run, first_attempt=not again, after_error=again)


def _apart_from_jobs(channel: Channel) -> bool:
    apart = getattr(channel, "apart_from_jobs", None)
    return bool(apart()) if apart is not None else False


def claim_wait() -> float:
    """How long a worker waits for a publisher that is creating the task: its create answers within its budget."""
    config = get_config()
    return (config.publish_budget if config else 0.0) + CLAIM_SLACK


def _claim_at_start(channel: Channel, result_id: str) -> bool | None:
    """The worker's claim; None when the entry is held by a transaction still open past ``claim_wait()`` (a channel
    with ``claim_waiting``), which its enqueue may keep open long after it created the task."""
    claim_waiting = getattr(channel, "claim_waiting", None)
    if claim_waiting is None:
        return channel.claim(result_id)
    claimed = claim_waiting(result_id, claim_wait())
    return None if claimed is None else bool(claimed)


def _wait(channel: Channel, result_id: str) -> Entry | None:
    """The entry once its creator has written the outcome of its create, or as it is at the deadline."""
    deadline = time.monotonic() + claim_wait()
    delay = 0.005
    while True:
        entry = channel.get(result_id)
        if entry is None or entry.state != CREATING or time.monotonic() >= deadline:
            return entry
        time.sleep(delay)  # another process is creating the task: its answer comes within its budget
        delay = min(delay * 2, 0.1)


def _meta_of(task_result: Any, name: str, system: Any, channel: Channel, entry: Entry | None,
             look_up: bool = False) -> lifecycle.Meta | None:
    if entry is not None and entry.state == CREATING:
        entry = _wait(channel, task_result.id)
    if entry is not None and entry.state == CREATED:
        return lifecycle.parse_meta(entry.meta, name, "django.tasks entry")
    if not _tracked(system, name, options_for(name)):
        return None
    left = entry is not None and entry.state == LEFT
    carried = lifecycle.carried_options(entry.meta, name) if entry is not None and entry.state in (LEFT, MAYBE) else {}
    # the creator's answer was lost (maybe created), or it is still creating at the deadline: look it up; its create
    # certainly failed (left): create it
    return _create_at_start(task_result, name, system, channel, maybe_created=entry is not None and not left,
                            look_up=look_up, carried=carried, left=left)


def _create_at_start(task_result: Any, name: str, system: Any, channel: Channel,
                     maybe_created: bool, look_up: bool = False, held: bool = False,
                     carried: dict[str, Any] | None = None, left: bool = False) -> lifecycle.Meta | None:
    """``carried``: the options the entry carried from the enqueue (``lifecycle.carried_options``); ``left``: the
    entry is the publisher's, who could not create the task (kept when this create fails too: a run again finds what
    it carries)."""
    options = {**_options(name), **(carried or {})}
    started = lifecycle.create_at_start(task_result.id, options, system,
                                        lambda: _fields(task_result, name, options, system),
                                        maybe_created=maybe_created or look_up)
    if started.settle:
        with _runs_lock:
            _settle.add(task_result.id)
    if started.meta is None:
        if not maybe_created and not held and not left:
            channel.discard(task_result.id)  # this worker's claim
        return None
    if not held:  # (a held entry is its transaction's: it commits with its publisher's task, or goes)
        channel.put(task_result.id, CREATED, started.meta.to_dict())  # a run again finds its task
    return started.meta


def on_finished(task_result: Any) -> None:
    with _runs_lock:
        run = _runs.pop(task_result.id, None)
        settle = task_result.id in _settle
        _settle.discard(task_result.id)
    failed = str(getattr(task_result, "status", "")) == "FAILED"
    if run is None:
        if settle:
            lifecycle.settle(task_result.id, StatusEnum.ERROR if failed else StatusEnum.SUCCESS,
                             _error_text(task_result) if failed else None)
        elif failed and _backend_kind(task_result) == "rq":
            # Not run here: RQ failed a job it found abandoned in its started jobs (its worker shut down cold, or
            # killed), in the process that cleaned them up (a worker's main process, a django_rq page).
            on_lost(task_result.id, module_path(task_result.task), StatusEnum.ERROR, ABANDONED)
        return
    try:
        if failed:
            class_path, text = _error(task_result)
            exc = sys.exc_info()[1]  # the backends send task_finished while they handle the exception
            # (the RQ backend before it has recorded the error: nothing recorded yet, take the exception)
            if exc is not None and (not _recorded(task_result) or _class_path(exc) == class_path):
                lifecycle.fail(run, exc, text or None)
            else:
                lifecycle.fail(run, _Failure(class_path, text), text or None, {"exception_type": class_path})
        else:
            lifecycle.succeed(run)
    finally:
        lifecycle.leave(run)
        kind = _backend_kind(task_result)
        _channel(_system(), kind).finished(task_result.id, failed)
        if kind == "rq" and os.getpid() != _connected_pid:
            # An RQ work horse leaves through os._exit as soon as the job's callbacks return: no atexit,
            # no background sender. Deliver its updates now (spooled if the API is failing).
            spooling.shutdown(HORSE_FLUSH)


#: Why RQ failed a job it found abandoned.
ABANDONED = ("RQ found the job abandoned in its started jobs (its worker was shut down cold, or killed, while it ran) "
             "and failed it")


class WorkHorseLost(Exception):
    """An RQ job ended without its work horse reporting its outcome (``on_lost``)."""


def on_lost(result_id: str, task_name: str, status: StatusEnum, reason: str) -> None:
    """An RQ job ended without its work horse reporting it: the horse was killed (SIGKILL, the kernel's OOM killer,
    RQ at the job's timeout + 60 s), crashed, or was stopped on request, or its worker was shut down cold and RQ
    failed the abandoned job later. Its task, left ``processing``, ends ``status`` (with ``reason``), unless it has
    a final state already. Runs where RQ notices it (the worker's main process: ``taskbadger.django_tasks.rq.Worker``,
    or the job's failure callback for an abandoned job), which knows the task from the channel's entry."""
    system = _system()
    if system is None:
        return
    channel = _channel(system, "rq")
    try:
        _lost(channel, result_id, task_name, status, reason)
    finally:
        release = getattr(channel, "release", None)
        if release is not None:
            release()  # the worker's main process forks the next work horse: not with this connection


def _lost(channel: Channel, result_id: str, task_name: str, status: StatusEnum, reason: str) -> None:
    entry = channel.get(result_id)
    if entry is None or entry.state != CREATED:
        return
    meta = lifecycle.parse_meta(entry.meta, task_name, "django.tasks entry")
    if meta is None:
        return
    if status is StatusEnum.ERROR:
        data = exception_data(WorkHorseLost(reason), f"{WorkHorseLost.__module__}.WorkHorseLost: {reason}")
    else:
        data = {"rq_stopped": reason}
    # the task's data is merged into when the update is sent (the body may have changed it in the horse)
    lifecycle.close(meta.id, status, data, unless_final=True)
    channel.finished(result_id, failed=True)
    log.info("Task Badger: RQ job %s ended without its work horse reporting it (%s): its task %s ends %s",
             result_id, reason, meta.id, status.value)


class _Failure(Exception):
    """The error a backend recorded (a class path and a traceback: the exception itself is gone)."""

    def __init__(self, class_path: str, text: str) -> None:
        super().__init__(_last_line(text) or class_path)
        self.class_path = class_path


def _error(task_result: Any) -> tuple[str, str]:
    errors = getattr(task_result, "errors", None) or []
    if not errors:
        return "Exception", ""
    last = errors[-1]
    return str(getattr(last, "exception_class_path", "Exception")), str(getattr(last, "traceback", ""))


def _recorded(task_result: Any) -> bool:
    return bool(getattr(task_result, "errors", None))


def _class_path(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def _error_text(task_result: Any) -> str:
    class_path, text = _error(task_result)
    return _last_line(text) or class_path


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def task_id_of(result_id: str) -> str | None:
    """The Task Badger id of a ``TaskResult``'s task: created in this process, or still in the channel (until
    the task succeeds); None when it is not tracked or no longer known here."""
    entry = _created_here.get(result_id)
    if entry is not None and is_task_id(entry.meta):
        return str(entry.meta)
    running = _runs.get(result_id)
    if running is not None:
        return running.id
    system = _system()
    channels = [_local] + ([system.channel] if system is not None and system.channel is not None else [])
    for channel in channels:
        entry = channel.get(result_id)
        if entry is not None and entry.state == CREATED and isinstance(entry.meta, dict):
            task = entry.meta.get("task")
            task_id = task.get("id") if isinstance(task, dict) else None
            if is_task_id(task_id):
                return str(task_id)
    return None
