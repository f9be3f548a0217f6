"""The running job's task as its body sees it (``current_task()``, ``self.taskbadger_task``, a ``@track``
call's task): a ``taskbadger.Task`` whose updates never fail the job.

The official SDK's ``Task.update`` raises when the API cannot take an update, and a job's body calls it
for its progress: an API that is down, hanging or answering errors would fail the user's job, or hold it
for a whole timeout at every update. Here an update from the body is checked as a job's options are (a
value the API would refuse is left out), then sent within the publish budget and through the publish
breaker (while the API is failing, no update waits for it); on an event loop (a coroutine's body) it is
queued for the senders at once, as a request would stall the loop's other coroutines. One that cannot be
sent now is queued for the senders (retried with backoff, spooled if the process ends) and shown on the
object (``tb.value``, ``tb.is_finished``), as the API will have it; one the API refuses anyway is dropped
and not shown, so the run's automatic final state still goes out. A warning says what happened each time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from .._runtime import log_throttled, on_an_event_loop, raised_by_signal_handler, short
from ..config import get_config
from ..delivery import sender
from ..delivery.breaker import publish_breaker
from ..exceptions import RateLimited, ServerError, TransportError
from ..http import Deadline
from ..models import MAX_NAME_LENGTH, TERMINAL_STATUSES, StatusEnum, TaskModel, is_json
from ..task import Task
from .options import OPTIONS, check_option

log = logging.getLogger("taskbadger")

#: At most one warning line per this many seconds per task: a body reports progress in a loop.
WARN_INTERVAL = 60.0

#: A progress update (``value``, ``value_max``) within this many seconds of the last one the object sent itself is
#: queued for the senders, merged with the ones after it, and shown on the object: a body that reports progress in a
#: tight loop waits for the API at most once per interval, and the API gets a bounded number of requests.
PROGRESS_INTERVAL = 1.0
_PROGRESS_FIELDS = frozenset({"value", "value_max"})


#: Why the breaker skipped an update, by its state.
_SKIPPED = {
    "open": "the Task Badger API is failing",
    "deferred": "the Task Badger API asked to slow down (429)",
    "closed": "the Task Badger API is answering slowly, and the calls of this process already waiting for it took "
              "every place",
}


class RunTask(Task):
    """``taskbadger.Task`` for a running job's body: ``update`` and every method built on it never raise
    an API or delivery error into the job, and never wait longer than the publish budget."""

    #: False while the task's data is not known here (not carried, and not fetched): a merge into it is then made
    #: against the task's data when the update is sent, not against nothing.
    data_known = True
    #: While the task's fields were not carried (a Procrastinate job carries only its task's id): reads them from the
    #: API (None when it cannot answer now). Called only when the body reads a field this object does not hold, or
    #: calls a method that needs one: ``current_task()`` and updates make no request to learn the task.
    _fetch: Callable[[], TaskModel | None] | None = None

    def __getattr__(self, item: str) -> Any:
        value = super().__getattr__(item)
        if value is None and self._fetch is not None and self._fetched():
            value = super().__getattr__(item)
        return value

    @property
    def tags(self) -> dict[str, str]:
        if self._task.tags is None and self._fetch is not None:
            self._fetched()
        return dict(self._task.tags or {})

    def _fetched(self) -> bool:
        """Fill in the fields this object does not hold from the API, once: within the publish budget, not while the
        API is failing (asked again at the next read), not on an event loop (a request would stall its other
        coroutines). What the body set meanwhile (progress shown while queued) is kept. Whether it was read."""
        fetch = self._fetch
        if fetch is None or on_an_event_loop():
            return False
        model = fetch()
        if model is None:
            return False
        self._fetch = None
        for name in model.__dataclass_fields__:
            if getattr(self._task, name) is None:
                setattr(self._task, name, getattr(model, name))
        self.data_known = True
        return True

    def update(self, *args: Any, **kwargs: Any) -> None:
        data = kwargs.get("data")
        strategy = kwargs.get("data_merge_strategy")
        if not self.data_known and hasattr(strategy, "merge") and data:
            self._fetched()  # a merge of the caller's own: only here, against the task's data
        if not self.data_known and strategy == "default" and isinstance(data, Mapping) and data:
            kwargs.update(data=None, data_merge_strategy=None, merge_data=dict(data))
        super().update(*args, **kwargs)

    def increment_value(self, amount: int) -> None:
        if self._task.value is None and self._fetch is not None:
            self._fetched()  # from the value the task has (an earlier attempt's progress), not from 0
        super().increment_value(amount)

    def update_value(self, value: int, value_step: int | None = None, rate_limit: float | None = None) -> bool:
        if value_step and self._task.value is None and self._fetch is not None:
            self._fetched()
        return super().update_value(value, value_step, rate_limit)

    #: The run is over (its final state is queued, or ``lifecycle.leave``): an update from the body's object (a
    #: thread the job started that outlived it) is dropped, as it would undo that outcome (``processing`` again
    #: for good, or the progress of a finished task).
    _ended = False
    #: When this object last sent an update itself (``time.monotonic()``).
    _sent_at = float("-inf")

    def _send(self, fields: dict[str, Any], deadline: Deadline | None = None) -> None:
        if self._ended:
            log_throttled(f"body-update-late:{self._task.id}", WARN_INTERVAL, logging.WARNING,
                          "Task Badger: an update of task %s came after its job ended and is dropped, as it would "
                          "change the job's recorded outcome (a thread the job started outlived it: join it before "
                          "the job returns)", short(self._task.id))
            return
        fields = self._checked(fields)
        config = get_config()
        if config is None:  # tracking was switched off in this process meanwhile: nobody to send it to
            return
        if fields and fields.keys() <= _PROGRESS_FIELDS and time.monotonic() - self._sent_at < PROGRESS_INTERVAL:
            self._to_senders(fields)  # progress in a loop: one request per interval, not one per call
            return
        if on_an_event_loop():
            # A coroutine's body (an async Procrastinate or django.tasks task, @track on async def): a request made
            # here would stall every other coroutine of the loop for its round trip. The senders send it (merged
            # with what follows, in order), as they do the run's own updates.
            self._to_senders(fields)
            return
        try:
            problem = self._try_now(fields, deadline or Deadline(config.publish_budget, config.timeout[0]))
        except BaseException:  # the job's time limit raised from a signal handler, a greenlet's timeout, Ctrl-C
            self._to_senders(fields)  # not sent: the senders send it, before the job's outcome
            raise
        if problem is not None:  # not taken now: the senders retry it
            self._queue(fields, problem)

    def send_now(self, fields: dict[str, Any]) -> bool:
        """Send ``fields`` (the run's own, checked) now, within the publish budget and through the breaker, and
        queue nothing when they cannot be: True when the API took them (or refused them: dropped, with a
        warning), False when they were not sent (what this process had queued for the task stays queued)."""
        config = get_config()
        if config is None:
            return True  # tracking was switched off in this process meanwhile: nobody to send them to
        return self._try_now(fields, Deadline(config.publish_budget, config.timeout[0])) is None

    def _try_now(self, fields: dict[str, Any], deadline: Deadline) -> Any:
        """Send ``fields`` now through the breaker: None when the API answered (a refusal is dropped, with a
        warning), else why they could not be sent now (nothing is queued here). A queue's time limit raised from a
        signal handler during the request (RQ's ``JobTimeoutException``) is raised: it is the job's."""
        breaker = publish_breaker()
        call = breaker.begin(creates=False, deadline=deadline)
        if call is None:
            return _SKIPPED.get(breaker.state(), _SKIPPED["open"])
        try:
            super()._send(fields, deadline)
        except (TransportError, ServerError, RateLimited) as err:
            if raised_by_signal_handler(err):
                breaker.abandon(call)
                raise  # the job's time limit struck during the request: the job's, as anywhere in its body
            breaker.end(call, err)
            return err
        except Exception as err:  # refused by the API (4xx), or fields that cannot be sent at all
            if raised_by_signal_handler(err):
                breaker.abandon(call)
                raise  # the job's time limit (RQ's JobTimeoutException...) struck during the request: the job's
            breaker.end(call)  # not shown either: the run's automatic final state must still go out
            log_throttled(f"body-update-dropped:{self._task.id}", WARN_INTERVAL, logging.WARNING,
                          "Task Badger: an update of task %s from the job's body was not taken and is dropped "
                          "(%s); the job goes on", short(self._task.id), err)
        except BaseException:
            breaker.abandon(call)  # interrupted on our side (a greenlet's timeout, Ctrl-C): see Breaker.abandon
            raise
        else:
            breaker.end(call)
            self._sent_at = time.monotonic()
            self._fetch = None  # the API's answer is the whole task: nothing left to read
        return None

    def _to_senders(self, fields: dict[str, Any]) -> None:
        """Queue the update for the senders, and show it on this object (the API will have it)."""
        sender.submit(self._task.id, fields, final=fields.get("status") in TERMINAL_STATUSES)
        self._show(fields)

    def _queue(self, fields: dict[str, Any], reason: Any) -> None:
        self._to_senders(fields)
        log_throttled(f"body-update-queued:{self._task.id}", WARN_INTERVAL, logging.WARNING,
                      "Task Badger: could not send an update of task %s from the job's body now (%s); it is "
                      "queued and retried, and the job goes on", short(self._task.id), reason)

    def _checked(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The fields the API takes, as the options of a job are checked (``options.check_option``); the others
        are left out with a warning. An update that cannot be sent now is queued, and the updates after it,
        the run's final state included, merge into it: one value the API refuses would lose them all."""
        checked: dict[str, Any] = {}
        for key, value in fields.items():
            ok, use = True, value
            if key == "status":
                try:
                    StatusEnum.coerce(value)
                except ValueError:
                    ok = False
            elif key in OPTIONS:
                if key == "data" and isinstance(value, Mapping) and not is_json(value):
                    log_throttled(f"body-update-repr:{self._task.id}", WARN_INTERVAL, logging.WARNING,
                                  "Task Badger: the data of an update of task %s from the job's body has values JSON "
                                  "cannot encode (sets, dates, decimals, objects): they were stored as their repr; "
                                  "convert them to strings, numbers, lists or dicts", short(self._task.id))
                ok, use = check_option(key, value)
            elif key in ("queue", "external_id"):
                ok = isinstance(value, str) and len(value) <= MAX_NAME_LENGTH
            if ok:
                checked[key] = use
            else:
                expected = f"; expected {OPTIONS[key][1]}" if key in OPTIONS else ""
                log_throttled(f"body-update-invalid:{self._task.id}:{key[:40]}", WARN_INTERVAL, logging.WARNING,
                              "Task Badger: an update of task %s from the job's body has an invalid %s (%s%s): it "
                              "is left out, and the job goes on", short(self._task.id), short(key, 40)[1:-1],
                              short(value, 80), expected)
        return checked

    def _show(self, fields: dict[str, Any]) -> None:
        """What the update says, on this object (the API's answer would have said it)."""
        model = self._task
        for key, value in fields.items():
            if key == "status":
                try:
                    value = StatusEnum.coerce(value)
                except ValueError:
                    continue
            elif key == "tags" and isinstance(value, dict):
                value = {**(model.tags or {}), **value}  # the API merges tags too
            if key in model.__dataclass_fields__:
                setattr(model, key, value)
