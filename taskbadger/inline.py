"""Creates made inline, on someone's critical path: at publish (``.delay()``), by a worker for a task
its publisher could not track, and by ``@track``.

* One deadline for the whole create: the publish budget (``Config.publish_budget``), through this
  process's breaker (``delivery.breaker``), which skips creates at once while the API is failing or
  hanging. Never retried here.
* A create whose answer is lost although the API may have carried it out (a missed deadline, a 5xx, an
  answer that cannot be read, a connection lost mid-answer) is *ambiguous*. With time left in the
  budget and an ``external_id`` to tell the task by (a ``@track`` call's create sends one of its own when its
  decorator gives none), the task is looked up among the newest ones
  (``endpoints.find_recent``) and used if it is there. Otherwise the caller is told (``maybe_created``):
  the Celery publisher marks the message, and the worker looks again when the task starts (``find``),
  taking the task up if it is still ``pending``, creating it otherwise.
* A create given up at its deadline may be carried out later. Its late answer is read in the
  background (``taskbadger.http.late``), and the task it names is closed as ``cancelled`` with
  ``data["abandoned"]`` saying why, unless a worker has taken it up meanwhile (after ``LATE_CLOSE_GRACE``, for a
  publish: so that a worker taking it up now is seen): no task stays ``pending`` for ever because its creator
  stopped waiting. The create of a run that has started (a worker's, a ``@track`` call's) is not closed: the run's
  outcome is recorded on it (at once if the run has ended, else when it ends: ``settle_later``).
* A create refused because of its monitor is made again at once without it, within the same budget, and the
  monitor is left out of later creates for a while (``taskbadger.monitors``): the task is tracked, without the
  monitor, and one warning says which setting to fix.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import endpoints, http, monitors
from ._runtime import PerProcess, log_throttled, raised_by_signal_handler, short, start_daemon_thread
from .config import Config, get_config
from .delivery import merge, sender
from .delivery.breaker import publish_breaker
from .delivery.sender import RETRY_HORIZON
from .delivery.spool import CREATE_TASK
from .exceptions import (
    CreateSkipped,
    RateLimited,
    ServerError,
    TaskbadgerException,
    TransportError,
    UnexpectedStatus,
)
from .models import TERMINAL_STATUSES, StatusEnum, TaskModel, format_datetime
from .task import Task, create_body_or_skip

log = logging.getLogger("taskbadger")

#: What the log line says happened, per caller (``where``).
_UNTRACKED = {
    "publish": "task %s published untracked: %s",
    "start": "could not create task %s when the worker started it, so it runs untracked: %s",
    "call": "%s runs untracked: %s",
}
#: A lookup is worth starting only with at least this share of the budget left.
_LOOKUP_SHARE = 0.2


@dataclass(frozen=True)
class Created:
    """What an inline create came to."""

    task: Task | None
    #: The API may hold the task although we have no answer to show for it: whoever comes next must
    #: look for it (``find``) before creating it again, or it could exist twice.
    maybe_created: bool = False


class SharedBudget:
    """One publish budget for the creates of one publish of several jobs (``batch_defer()``): that publish waits at
    most its budget, as one job's does, not one budget per job. A create starts only while the time left is longer
    than the longest one of the batch took so far: one that started later would most likely be given up at the
    deadline, leaving the API a task nobody tracks. The creates that do not fit are not made (``skipped``): those
    jobs go untracked at publish, as one whose create missed its budget does, and their workers create their tasks
    when they start."""

    def __init__(self) -> None:
        self._deadline: http.Deadline | None = None  # set by the first create: the budget starts with the publish
        self._longest = 0.0
        self.tried = 0
        self.skipped = 0

    def next_deadline(self, config: Config) -> http.Deadline | None:
        """The deadline of the batch's next create, or None when it does not fit in what is left."""
        if self._deadline is None:
            self._deadline = http.Deadline(config.publish_budget, config.timeout[0])
        elif self._deadline.remaining() <= self._longest or self._deadline.expired():
            self.skipped += 1
            return None
        self.tried += 1
        return self._deadline

    def took(self, seconds: float) -> None:
        self._longest = max(self._longest, seconds)

    def report(self, what: str) -> None:
        """One warning (throttled) when some creates did not fit: ``what`` names the publish (``batch_defer()``)."""
        if self.skipped and self._deadline is not None:
            log_throttled(f"shared-budget:{what[:100]}", 60.0, logging.WARNING,
                          "Task Badger: %d of the %d jobs of a %s were published untracked: their creates did not fit "
                          "in the publish budget (%.3g s) with the %d before them (the API answers slowly); the "
                          "worker that runs each one creates its task when it starts", self.skipped,
                          self.skipped + self.tried, what, self._deadline.seconds, self.tried)


def create_inline(name: str, fields: Mapping[str, Any], monitor_id: str | None = None,
                  where: str = "publish", max_in_flight: int | None = None,
                  budget: SharedBudget | None = None, within: float | None = None,
                  one_of_many: bool = False) -> Created:
    """Create now, within the publish budget, through the breaker; never raises. ``max_in_flight``: see
    ``Breaker.begin``. ``budget``: the budget this create shares with others of the same publish (not tried
    when it does not fit in what is left of it). ``within``: seconds, when the caller can wait less than the publish
    budget (without ``budget``). ``one_of_many``: the ``external_id`` in ``fields`` may be shared by other runs at the
    same time (``@track(external_id=...)``): the task of a create whose answer was lost is told by the ``start_time``
    in ``fields`` too (see ``settle_later``)."""
    config = get_config()
    if config is None:
        return Created(None)
    started = fields.get("start_time") if one_of_many else None
    started = started if isinstance(started, str) else None
    if budget is None:
        return _create_within(config, name, fields, monitor_id, where, max_in_flight, _deadline(config, within),
                              started)
    deadline = budget.next_deadline(config)
    if deadline is None:
        return Created(None)  # not tried: certainly not created
    began = time.monotonic()
    try:
        return _create_within(config, name, fields, monitor_id, where, max_in_flight, deadline, started)
    finally:
        budget.took(time.monotonic() - began)


def _create_within(config: Config, name: str, fields: Mapping[str, Any], monitor_id: str | None, where: str,
                   max_in_flight: int | None, deadline: http.Deadline, started: str | None) -> Created:
    breaker = publish_breaker()
    call = breaker.begin(max_in_flight, deadline=deadline)
    if call is None:
        return Created(None)  # skipped: certainly not created
    try:
        task = _create(config, name, fields, monitor_id, deadline,
                       _close_when_answered(config, name, where, fields.get("external_id"), started))
    except CreateSkipped:
        breaker.end(call)  # before_create said no: nothing was asked of the API
        return Created(None)
    except (TransportError, ServerError, RateLimited) as err:
        if raised_by_signal_handler(err):
            _interrupted(call, fields, err, started)
            raise
        breaker.end(call, err)
        if not _maybe_created(err):
            _log_untracked(name, where, err)
            return Created(None)
        found = _look_up(name, fields, where, deadline, started)
        if found is not None:
            return Created(found)
        _log_untracked(name, where, err)
        return Created(None, maybe_created=True)
    except Exception as err:  # our side (data JSON cannot encode…): the API was not asked
        if raised_by_signal_handler(err):
            _interrupted(call, fields, err, started)
            raise
        breaker.end(call)
        log_throttled(f"create:{name[:200]}:{type(err).__name__}", 60.0, logging.WARNING,
                      "Task Badger: " + _UNTRACKED.get(where, _UNTRACKED["call"]), short(name), err)
        return Created(None)
    except BaseException as exc:
        _interrupted(call, fields, exc, started)
        raise
    breaker.end(call)
    return Created(task)


def _interrupted(call: int, fields: Mapping[str, Any], exc: BaseException, started: str | None) -> None:
    """A create interrupted while the API may be carrying it out (celery beat's SIGTERM handler raises SystemExit
    wherever beat is; Ctrl-C; a job's time limit raised by a signal handler, which the job must see): the caller will
    not publish the job. Its task is cancelled if the API made it, once it can be found (from the spool if this
    process ends first), or it would stay pending for ever."""
    publish_breaker().abandon(call)
    external_id = fields.get("external_id")
    if isinstance(external_id, str) and external_id:
        reason = f"{type(exc).__name__}: interrupted while its task was created; the job was not published"
        settle_later(external_id, {"status": StatusEnum.CANCELLED.value,
                                   "end_time": format_datetime(dt.datetime.now(dt.timezone.utc)),
                                   merge.MERGE_DATA: {"publish_error": reason},
                                   **({"start_time": started} if started is not None else {})})


def _create(config: Config, name: str, fields: Mapping[str, Any], monitor_id: str | None, deadline: http.Deadline,
            late_answer: http.LateAnswer) -> Task:
    """``task.create``, with a monitor the API refuses left out (see the module's docstring)."""
    return create_from_body(config, name, create_body_or_skip(name, fields), monitor_id, deadline, late_answer)


def create_from_body(config: Config, name: str, body: Mapping[str, Any], monitor_id: str | None,
                     deadline: http.Deadline, late_answer: http.LateAnswer | None) -> Task:
    """Create the task ``body`` describes (``create_body`` already applied), under ``monitor_id`` unless the API
    refuses it (see the module's docstring), before ``deadline``; no breaker, no retries: the caller's. The one
    path for every create from a ready body: the spool's creates and the command line's run."""
    monitor = monitor_id if monitor_id and not monitors.refused(config, monitor_id) else None
    try:
        return Task(endpoints.create(body, monitor, deadline, late_answer))
    except UnexpectedStatus as err:
        if monitor is None or not monitors.may_be_refused(err):
            raise
        refusal = err
    # Refused, so certainly not created: made again without the monitor. Refused again, the monitor was not the
    # reason (a wrong project, a field): that error is the one reported, and the monitor is not blamed. Not
    # answered in time (a slow API: two creates do not fit in the budget), nothing says it was not the monitor:
    # left out from now on all the same, or every create would be refused first and given up.
    try:
        task = Task(endpoints.create(body, None, deadline, late_answer))
    except UnexpectedStatus as err:
        if not monitors.may_be_refused(err):
            monitors.refuse(config, monitor, name, refusal)  # answered otherwise (a 5xx): as not answered in time
        raise
    except Exception:
        monitors.refuse(config, monitor, name, refusal)
        raise
    monitors.refuse(config, monitor, name, refusal)
    return task


def find(external_id: str, open_only: bool = False, name: str | None = None, ended_too: bool = False,
         within: float | None = None, settling: bool = False, start_time: str | None = None) -> Found:
    """The task a create that may have been carried out made, if it is still ``pending`` (nobody took it
    up, nobody closed it): looked up by ``external_id`` within the publish budget, through the breaker.
    ``Found.asked`` is False when the lookup was skipped or failed (the API is failing): ``settle_later``
    then records the run's outcome on the task once the API answers again. ``open_only``: any task with
    no final state yet (a run that was created ``processing``), not only a ``pending`` one. ``name``: only a
    task of that name (for ids that repeat across databases). ``ended_too``: whatever its status (a job put back
    in its queue by hand after it failed: its task ended ``error``). ``within``: seconds, when the caller can wait
    less than the publish budget. ``settling``: a lookup of the settler's (see ``_read``'s ``closes``). ``start_time``:
    only a task that has it (an ``external_id`` that runs at the same time share: see ``settle_later``)."""
    read = _read(lambda deadline: endpoints.find_recent(external_id, deadline, name, start_time=start_time), within,
                 closes=not settling)
    model = read.model
    usable = model is not None and (ended_too or (model.status not in TERMINAL_STATUSES if open_only else
                                                  model.status == StatusEnum.PENDING))
    return Found(Task(model) if usable and model is not None else None, asked=read.answered)


def fetch(task_id: str) -> TaskModel | None:
    """The task's fields as the API has them, within the publish budget, through the breaker (a job's body
    waits for it): None when the API is failing or did not answer in time (asked again at the next call)."""
    read = _read(lambda deadline: endpoints.get(task_id, deadline))
    if read.error is not None:
        log.warning("Task Badger: could not fetch task %s%s: %s", short(task_id), "" if read.answered else " now",
                    read.error)
    return read.model


@dataclass(frozen=True)
class _Read:
    """What an inline read came to. ``answered``: the API answered (``model``, or a refusal in ``error``), or
    tracking is off; False when it was skipped (the breaker) or failed (``error``): worth asking again later."""

    model: TaskModel | None
    answered: bool
    error: TaskbadgerException | None = None


def _deadline(config: Config, within: float | None) -> http.Deadline:
    """The deadline of an inline call: the publish budget, or ``within`` seconds when that is shorter."""
    seconds = config.publish_budget if within is None else max(0.0, min(config.publish_budget, within))
    return http.Deadline(seconds, config.timeout[0])


def _read(request: Callable[[http.Deadline], TaskModel | None], within: float | None = None,
          closes: bool = True) -> _Read:
    """``request``, made now within the publish budget through the breaker (a job's body, or a worker's start,
    waits for it); never raises, except what interrupts it (see ``Breaker.abandon``). ``closes``: whether its answer
    counts as the API's recovery for the creates; not the settler's lookups, which follow creates that failed: an API
    whose creates hang while it answers reads would otherwise never open the breaker, and every ``@track`` call (each
    ends with a lookup of its task) would wait its whole budget."""
    config = get_config()
    if config is None:
        return _Read(None, answered=True)
    breaker = publish_breaker()
    deadline = _deadline(config, within)
    call = breaker.begin(creates=False, deadline=deadline)
    if call is None:
        return _Read(None, answered=False)
    # an answer that does not close the breaker says nothing of the creates: the failures counted so far stand
    answered: Callable[[int], None] = breaker.end if closes else breaker.abandon
    try:
        model = request(deadline)
    except (TransportError, ServerError, RateLimited) as err:
        if raised_by_signal_handler(err):
            breaker.abandon(call)
            raise  # a time limit struck the job during the request: the job's
        breaker.end(call, err)
        return _Read(None, answered=False, error=err)
    except TaskbadgerException as err:  # refused (4xx): the API answered
        answered(call)
        return _Read(None, answered=True, error=err)
    except BaseException:
        breaker.abandon(call)  # interrupted on our side (see Breaker.abandon)
        raise
    answered(call)
    return _Read(model, answered=True)


@dataclass(frozen=True)
class Found:
    task: Task | None
    asked: bool


def settle_later(external_id: str, fields: Mapping[str, Any], since: float | None = None,
                 horizon: float = RETRY_HORIZON) -> None:
    """A run that may have a task (its create was ambiguous, and the lookup could not be made when it
    started) has ended with ``fields`` (its final state): once the API answers again, find the task
    by ``external_id`` and, if it is still ``pending``, record them on it. Otherwise it would stay
    ``pending`` for ever. Given up ``horizon`` seconds after ``since`` (now, by default).

    A ``start_time`` in ``fields`` is the one the run's create sent: only a task that has it is the run's. So a run
    whose ``external_id`` other runs share at the same time (``@track(external_id="nightly-report")``) tells its own
    task from theirs (else its outcome landed on the newest, maybe another's, and its own task stayed open); and
    several such runs wait here at once, each for its own task. It survives the spool, as the other fields do."""
    _settler.get().add(external_id, dict(fields), since, horizon)


def settle_dropped() -> int:
    """Runs whose outcome was dropped because their task could not be looked up in time (or too many waited)."""
    settler = _settler.current()
    return settler.dropped if settler is not None else 0


def settling(external_id: str) -> bool:
    """Whether a run ``external_id`` is still waiting for its task to be found."""
    settler = _settler.current()
    return settler is not None and settler.holds(external_id)


def waiting_to_settle() -> bool:
    settler = _settler.current()
    return settler is not None and settler.busy()


def settle_now(give_up: Callable[[], bool]) -> None:
    """The process is ending while the API answers: look up now the runs waiting for their task, and queue the
    outcome of those found (the caller flushes it). A run whose task is not found, or not looked up before
    ``give_up()``, stays waiting (for the spool): its create may still be under way at the API."""
    settler = _settler.current()
    if settler is not None:
        settler.settle_now(give_up)


def unsettled() -> list[tuple[str, dict[str, Any], float]]:
    """Take every run still waiting for its task (for the spool, when the process ends): (external id,
    fields, since as wall-clock time)."""
    settler = _settler.current()
    return settler.take_all() if settler is not None else []


#: A run waiting for its task: its ``external_id``, and the ``start_time`` its create sent when that id alone does not
#: tell its task (see ``settle_later``), else None.
_RunKey = tuple[str, str | None]


def _run_key(external_id: str, fields: Mapping[str, Any]) -> _RunKey:
    started = fields.get("start_time")
    return external_id, started if isinstance(started, str) else None


class _Settler:
    """Runs waiting for their task to be found (``settle_later``), tried in the background with backoff
    until the retry horizon; at most ``MAX_SETTLING`` at once (more are dropped, counted and logged)."""

    MAX_SETTLING = 1000

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: dict[_RunKey, tuple[dict[str, Any], float, float]] = {}  # run -> (fields, since, horizon)
        #: runs looked up and not found (their create not carried out yet, perhaps): run -> fields, for a late answer
        #: to their create (``late_answer``)
        self._unfound: dict[_RunKey, dict[str, Any]] = {}
        self._thread: threading.Thread | None = None
        self._one_at_a_time = threading.Lock()
        self.dropped = 0

    def add(self, external_id: str, fields: dict[str, Any], since: float | None = None,
            horizon: float = RETRY_HORIZON) -> None:
        """``since``: when the run ended (wall clock), for a run taken back from the spool."""
        started = time.monotonic() if since is None else time.monotonic() - max(0.0, time.time() - since)
        with self._cond:
            if len(self._waiting) >= self.MAX_SETTLING:
                self.dropped += 1
                log_throttled("settle:full", 60.0, logging.ERROR, "Task Badger: %d run(s) whose task could not be "
                              "found were dropped: too many waiting for the API", self.dropped)
                return
            self._waiting[_run_key(external_id, fields)] = (fields, started, horizon)
            if self._thread is None:
                # None when the interpreter is shutting down (3.12+: an atexit handler): the run stays here, for
                # the flush at exit to settle or spool
                self._thread = start_daemon_thread(self._run, "taskbadger-settle")
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting:
                    self._cond.wait()
                batch = list(self._waiting.items())
            for run, (fields, since, horizon) in batch:
                if time.monotonic() - since > horizon:
                    with self._cond:
                        self._waiting.pop(run, None)
                        self.dropped += 1
                    log_throttled("settle:horizon", 60.0, logging.ERROR, "Task Badger: the outcome of run %s was "
                                  "dropped: its task could not be looked up for %.0f s (%d dropped so far)",
                                  short(run[0]), horizon, self.dropped)
                    continue
                settled = self._settle(run, fields)
                if settled is None:  # the API is failing: wait until it answers again
                    publish_breaker().wait_until_up(SETTLE_WAIT)
                    break
                if not settled:
                    self._not_found(run, fields)
                    self._forget(run)

    def _settle(self, run: _RunKey, fields: dict[str, Any]) -> bool | None:
        """Look up the task of ``run``; if found, record the run's outcome on it and stop waiting for it.
        True: found (or created, see ``CREATE_TASK``; or settled meanwhile); False: the API holds no open task for it
        (yet); None: the API was not asked (failing)."""
        # One at a time: the background thread and an ending process's ``settle_now`` may both take a run, and two
        # lookups made before either create lands would create its task twice.
        with self._one_at_a_time:
            with self._cond:
                if run not in self._waiting:
                    return True  # settled by the other caller meanwhile
            return self._settle_held(run, fields)

    def _settle_held(self, run: _RunKey, fields: dict[str, Any]) -> bool | None:
        external_id, started = run
        create = fields.get(CREATE_TASK)
        # A run that can be created: any task of its id is its own (one ended meanwhile too), or it would be made twice.
        found = find(external_id, open_only=True, ended_too=create is not None, settling=True, start_time=started)
        if not found.asked:
            return None
        if found.task is None:
            if create is None:
                return False
            created = _create_spooled(external_id, create)
            if created is None:
                return None  # the lookup comes first again next time: this create may have been carried out
            if not created:
                with self._cond:
                    self.dropped += 1
            self._forget(run)
            return True
        _record(found.task.id, fields)
        self._forget(run)
        return True

    def late_answer(self, external_id: str, started: str | None, task_id: str) -> bool:
        """The create of run ``external_id`` (which sent ``started`` as its ``start_time``, when that tells its task:
        see ``settle_later``) was answered late with ``task_id``: if the run has ended (its outcome waits here, or was
        looked up before the create was carried out), record its outcome on that task."""
        run = (external_id, started)
        with self._cond:
            waiting = self._waiting.pop(run, None)
            fields = waiting[0] if waiting is not None else self._unfound.pop(run, None)
        if fields is None:
            return False
        _record(task_id, fields)
        return True

    def _not_found(self, run: _RunKey, fields: dict[str, Any]) -> None:
        with self._cond:
            if len(self._unfound) >= self.MAX_SETTLING:
                self._unfound.pop(next(iter(self._unfound)))
            self._unfound[run] = fields

    def settle_now(self, give_up: Callable[[], bool]) -> None:
        with self._cond:
            batch = list(self._waiting.items())
        for run, (fields, _, _) in batch:
            if give_up() or self._settle(run, fields) is None:
                return  # a run not found stays waiting (for the spool): its create may still be under way

    def busy(self) -> bool:
        with self._cond:
            return bool(self._waiting)

    def holds(self, external_id: str) -> bool:
        with self._cond:
            return any(run[0] == external_id for run in self._waiting)

    def take_all(self) -> list[tuple[str, dict[str, Any], float]]:
        offset = time.time() - time.monotonic()
        with self._cond:
            taken = [(run[0], fields, since + offset) for run, (fields, since, _) in self._waiting.items()]
            self._waiting.clear()
            return taken

    def _forget(self, run: _RunKey) -> None:
        with self._cond:
            self._waiting.pop(run, None)


def _record(task_id: str, fields: dict[str, Any]) -> None:
    """Queue a run's outcome, found late, on its task: never over a final state (a late answer may have closed it)."""
    fields = {key: value for key, value in fields.items() if key != CREATE_TASK}
    sender.submit(task_id, {**fields, merge.UNLESS_FINAL: True}, final=True)


def _create_spooled(external_id: str, create: Mapping[str, Any]) -> bool | None:
    """Create the task of a run that ended with no task (its create failed during an outage, in a process gone since),
    from the body that process spooled (its final state set), within the publish budget through the breaker. True:
    created; False: refused for good (said, and dropped); None: the API is failing (tried again later)."""
    config = get_config()
    body = create["body"]
    if config is None:
        return None
    breaker = publish_breaker()
    deadline = http.Deadline(config.publish_budget, config.timeout[0])
    call = breaker.begin(creates=False, deadline=deadline)  # skipped while the API fails: tried again, not lost
    if call is None:
        return None
    try:
        create_from_body(config, body["name"], body, create.get("monitor_id"), deadline, None)
    except (TransportError, ServerError, RateLimited) as err:
        breaker.end(call, err)
        return None
    except TaskbadgerException as err:
        breaker.end(call)
        log.error("Task Badger: the outcome of run %s (task %s) was dropped: Task Badger refused to create its task: "
                  "%s", short(external_id), short(body["name"]), err)
        return False
    except BaseException:
        breaker.abandon(call)
        raise
    breaker.end(call)
    log.info("Task Badger: task %s, whose create failed when it ran, was created with its outcome",
             short(body["name"]))
    return True


#: Most seconds between tries of runs waiting for their task while the API is failing (a try is made
#: as soon as the breaker lets calls through again).
SETTLE_WAIT = 30.0
_settler: PerProcess[_Settler] = PerProcess(_Settler)


def _look_up(name: str, fields: Mapping[str, Any], where: str, deadline: http.Deadline,
             started: str | None) -> Task | None:
    """After an ambiguous create: the task, if the API holds it and the budget leaves time to ask, told by its
    ``external_id`` (a ``@track`` call's is one of its own, unless its decorator gives one), and by the ``start_time``
    the create sent (``started``) when other runs may share that id at the same time. A ``@track`` call's task
    has not ended: one found ended is an earlier call's, of a decorator that gives a fixed ``external_id``."""
    if deadline.remaining() < _LOOKUP_SHARE * deadline.seconds:
        return None
    external_id = fields.get("external_id")
    if not isinstance(external_id, str) or not external_id:
        return None
    try:
        model = endpoints.find_recent(external_id, deadline, start_time=started)
    except TaskbadgerException:
        return None
    if model is None or (where == "call" and model.status in TERMINAL_STATUSES):
        return None
    return Task(model)


def _maybe_created(err: Exception) -> bool:
    """Whether the API may hold the task although the create failed, with no id to show for it."""
    if isinstance(err, RateLimited) or (isinstance(err, ServerError) and err.status_code == 503):
        return False  # refused before any work
    if isinstance(err, TransportError):
        return err.reached_server  # a missed deadline, a BadAnswer, a connection lost mid-answer: maybe
    return True  # another 5xx: maybe


def _log_untracked(name: str, where: str, err: Exception) -> None:
    log_throttled(f"{where}:{name[:200]}", 60.0, logging.WARNING,
                  "Task Badger: " + _UNTRACKED.get(where, _UNTRACKED["call"]), short(name), err)


#: How long after a publish's late answer the task it names is closed if still ``pending``: time for a worker that
#: took it up meanwhile to be seen (its first update sent) before the read that decides.
LATE_CLOSE_GRACE = 30.0


def _close_when_answered(config: Config, name: str, where: str, external_id: Any = None,
                         started: str | None = None) -> http.LateAnswer:
    """The callback for a create's late answer: close the task it names. A task created at publish is
    closed only if it is still ``pending``: a worker may have found it and taken it up. One made for a run that
    has started (a worker's, a ``@track`` call's), with an ``external_id``, is the run's: it records its outcome on it
    (``create_at_start`` and ``@track`` settle it). Another (a run's create without an ``external_id``, which
    ``before_create`` took out) is nobody else's to take up: the run went on untracked. ``started``: the
    ``start_time`` that tells the run's task when other runs share its ``external_id`` (``create_inline``)."""

    def close(answer: http.Answer) -> None:
        try:
            task = endpoints.task_answer(config, http.decode(*answer))
        except Exception:
            return  # an error status, or not a task: nothing was created that we could close
        if where in ("start", "call") and isinstance(external_id, str) and external_id:
            # Made for a run that has started (a worker's, a ``@track`` call's): the run records its outcome on it
            # (``settle``, or the lookup made after the create was given up found it); its outcome is recorded now if
            # it has ended. Closing it would show a call that succeeded as cancelled, and cancel its monitor's
            # check-in.
            settler = _settler.get()
            if not settler.late_answer(external_id, started, task.id):
                log_throttled(f"late:{name[:200]}", 60.0, logging.INFO,
                              "Task Badger: task %s was created after its create was given up; its run records its "
                              "outcome on it", short(name))
            return
        reason = (f"Task Badger answered this create after the {config.publish_budget:g} s its caller could "
                  "wait; the caller went on without it" + (" (the run, if it happens, is tracked as another task)"
                                                          if where == "publish" else ", and the run untracked"))
        fields: dict[str, Any] = {"status": StatusEnum.CANCELLED.value,
                                  "end_time": format_datetime(dt.datetime.now(dt.timezone.utc)),
                                  "data": merge.with_data(task.data, {"abandoned": reason})}
        if where == "publish":
            fields[merge.ONLY_IF_PENDING] = True
        else:
            # The run it was made for may have ended meanwhile, and its outcome been recorded on it (``settle``: the
            # worker looks the task up when the run ends): that is the last word, not this closing.
            fields[merge.UNLESS_FINAL] = True
        # Not at once for a publish: its worker may be taking the task up right now (it looks it up when it starts),
        # and a "still pending?" read made before its first update lands would cancel a task that is running.
        sender.submit(task.id, fields, final=True, delay=LATE_CLOSE_GRACE if where == "publish" else None)
        log_throttled(f"late:{name[:200]}", 60.0, logging.INFO,
                      "Task Badger: task %s was created after its create was given up; it is closed as cancelled "
                      "unless a worker took it up", short(name))

    return close
