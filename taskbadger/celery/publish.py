"""Publish-side events: a message about to be published becomes a ``pending`` task (or stays untracked),
a retry sends the task back to ``pending``, a replacement (``self.replace``) is noted on the run it replaces,
and a task whose message never left is cancelled (``lifecycle.publish_failed``).
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sized
from typing import Any

from .. import lifecycle
from .._runtime import PerProcess, log_once, log_throttled, short, start_daemon_thread
from ..config import get_config, is_configured, unconfigured_reason, why_unconfigured
from ..inline import Created
from ..lifecycle import publish_failed
from ..task import Task as TaskbadgerTask
from .fields import (
    celery_system,
    checked_decorator_options,
    create_fields,
    publishing_app,
    registered_task,
    uses_base_class,
)
from .headers import KWARGS_KEY, MAYBE_CREATED_KEY, check_outgoing, write_meta
from .result_backend import tell_left_to_worker, tell_result_backend
from .state import Tracking, left_to_worker, running_tracking

log = logging.getLogger("taskbadger")

CANVAS_TASKS = {"celery.map": "map", "celery.starmap": "starmap", "celery.chunks": "chunks"}
#: How long a task created at publish waits for Celery's ``after_task_publish`` before it is taken for a
#: message that was never published (broker down) and cancelled. Only for publishes outside the base
#: class's ``apply_async``, which sees the failure itself.
CONFIRM_WINDOW = 60.0


def on_publish(name: str, message: dict[str, Any], celery_id: str | None, body: Any, routing_key: str | None,
               declare: Any, reply_to: Any = None) -> TaskbadgerTask | None:
    """Create the task (status pending) before the message goes out; return it, or None.

    ``message`` is the message headers dict, where custom headers travel (ours are written there).
    Our headers on it are checked first and written back in their checked form, whatever happens next.
    ``reply_to`` is the message's property, which tells the app publishing it (``publishing_app``).
    """
    incoming = check_outgoing(message, name)
    running = running_tracking()
    if running is not None and _replaces_running_task(message, body):
        running.replaced = True  # and the replacement is tracked as any task published from the body
    elif running is not None and running.celery_id == celery_id:
        # task.retry(): same Celery id, same task. Its retry is recorded first (its data then travels with the
        # next attempt), and what could not be sent of it goes with the next attempt too (``retry_resend``)
        if not running.retry_recorded:
            record_retry(running)
        write_meta(message, running.meta_for_next_attempt(running.retry_resend))
        return None
    if incoming.meta is not None:
        # Already tracked: the same message sent again from outside its running attempt (the worker's main process
        # retries a task whose pool child was lost, ``retry_on_worker_lost``). What it carries is the task as its
        # publisher wrote it, not the progress its lost attempt reported: its next attempt is told so, and ends
        # complete as a retry from the body does (``lifecycle.start``'s ``progress_carried``), not at that progress.
        if not incoming.meta.task.get("progress_omitted"):
            incoming.meta.task["progress_omitted"] = True
            write_meta(message, incoming.meta)
        return None
    # The options stay on a message that is not tracked here: the worker honours them if it ends up
    # tracking the task itself (publisher not configured, or the API unreachable at publish time).
    if incoming.track is False:
        return None
    if not is_configured():
        if unconfigured_reason() is None and uses_base_class(registered_task(name, publishing_app(reply_to))):
            # nobody said why yet (the Django app logs its own reason): a task the code asks to track goes out
            # untracked, and the bar on the page that published it would say "not available" with no hint
            log_once("publish:unconfigured", logging.WARNING, "Task Badger: %s was published untracked: %s",
                     short(name), why_unconfigured("this process"))
        return None

    args, kwargs = _message_args(body)
    tracked_name, display_name, canvas_data = name, None, None
    if name in CANVAS_TASKS:
        inner = kwargs.get("task") if isinstance(kwargs, dict) else None
        inner_name = inner.get("task") if isinstance(inner, dict) else getattr(inner, "name", None)
        tracked_name = inner_name if isinstance(inner_name, str) and inner_name else name
        items = kwargs.get("it") if isinstance(kwargs, dict) else None
        count = len(items) if isinstance(items, Sized) else None
        # The official SDK's name and keys (dashboards and name filters use them), and ours.
        display_name = f"{tracked_name} ({CANVAS_TASKS[name]} {count})"
        canvas_data = {"canvas_type": name, "item_count": count, "canvas": CANVAS_TASKS[name], "items": count}
    elif name.startswith("celery."):
        return None

    app = publishing_app(reply_to)
    celery_task = registered_task(tracked_name, app)
    system = celery_system()
    if not (incoming.track is True or uses_base_class(celery_task)
            or (system is not None and system.track_task(tracked_name))):
        return None
    options = {**checked_decorator_options(celery_task, tracked_name), **incoming.options}
    options.pop("track", None)
    fields = create_fields(tracked_name, options, system, celery_id, args, kwargs,
                           _queue_name(declare, routing_key, app), canvas_data, display_name)
    heartbeat, stale_timeout = lifecycle.heartbeat_options(options, system, tracked_name)
    created = _create(fields, message, body, tracked_name)
    task = created.task
    if task is None:
        if created.maybe_created:
            message[MAYBE_CREATED_KEY] = True
        if celery_id is not None:  # its worker creates (or takes up) its task at start: a page can follow it
            left_to_worker().remember(celery_id, tracked_name)
            if not _ignores_result(message, celery_task):  # and a page drawn in another process too
                tell_left_to_worker(app, celery_id)
        carried = lifecycle.untracked_options(fields, options)
        if carried:
            # Its worker creates (or looks up) its task when it starts, where the task that published it is not
            # running: its parent travels with the options left on the message, as one given explicitly.
            message[KWARGS_KEY] = {**incoming.options, **carried}
        return None
    message.pop(KWARGS_KEY, None)  # resolved into the created task
    write_meta(message, lifecycle.created_meta(task, heartbeat, stale_timeout))
    if celery_id is not None and not _ignores_result(message, celery_task):
        tell_result_backend(app, celery_id, task.id)
    return task


# -- the tasks of a group share one publish budget ---------------------------------------------------------

#: Two tasks of one group are taken for one publish (``group.apply_async()``, a chord's header) when the second's
#: create starts within this many seconds of the first's end, in the same thread, with a later ``group_index`` and the
#: same ``parent_id``: Celery publishes them one after another.
GROUP_GAP = 0.25


class _GroupPublish:
    """The group being published in this context, and the budget its creates share (``lifecycle.SharedBudget``).
    ``parent``: the Celery id of the task publishing it (the message's ``parent_id``), None outside a task."""

    __slots__ = ("budget", "ended", "group_id", "index", "parent")

    def __init__(self, group_id: str, index: int, parent: Any) -> None:
        self.group_id, self.index, self.parent = group_id, index, parent
        self.budget = lifecycle.SharedBudget()
        self.ended = time.monotonic()


_group_publish: contextvars.ContextVar[_GroupPublish | None] = contextvars.ContextVar(
    "taskbadger_celery_group_publish", default=None)


def _create(fields: dict[str, Any], message: dict[str, Any], body: Any, name: str) -> Created:
    """The inline create of a task being published; the tasks of a group share one publish budget, as a
    Procrastinate ``batch_defer()``'s jobs do: each had a budget of its own, and a group of 20 tasks waited 20 of
    them while the API answered slowly. The tasks whose create does not fit go out untracked (one warning), and
    the worker that runs each one creates its task when it starts."""
    group = _group_of(message, body)
    if group is None:
        return lifecycle.enqueue(fields, "publish")
    skipped = group.budget.skipped
    try:
        created = lifecycle.enqueue(fields, "publish", group.budget)
    finally:
        group.ended = time.monotonic()
    if group.budget.skipped > skipped:
        config = get_config()
        log_throttled(f"group-budget:{name[:200]}", 60.0, logging.WARNING,
                      "Task Badger: tasks of a Celery group of %s were published untracked from its task %d on: "
                      "their creates did not fit in the publish budget (%.3g s) the group's tasks share, with the %d "
                      "before them (a large group, or an API that answers slowly); the worker that runs each one "
                      "creates its task when it starts", short(name), group.index + 1,
                      config.publish_budget if config else 0.0, group.budget.tried)
    return created


def _group_of(message: dict[str, Any], body: Any) -> _GroupPublish | None:
    """The group publish this message is part of (protocol 2: its ``group`` and ``group_index`` headers, or those
    of the chain it starts), or None."""
    fields = message if "task" in message else body
    group_id = fields.get("group") if isinstance(fields, dict) else None
    index = fields.get("group_index") if isinstance(fields, dict) else None
    # The task publishing it: a group's later chain links and its tasks' link callbacks are published by the worker
    # as each task of the group ends, each by the task it follows. Two such links of one group, published in one
    # thread within the gap (a solo worker, a prefork child running the group's fast tasks back to back) were taken
    # for one publish, and the second had only what the first's create left of its budget (nothing, with an API
    # answering in 0.6 s: it went out untracked). The messages of one publish all name the same parent.
    parent = fields.get("parent_id") if isinstance(fields, dict) else None
    if group_id is None and index is None:
        group_id, index = _chain_group(body)
    if not isinstance(group_id, str) or not group_id or not isinstance(index, int) or isinstance(index, bool):
        return None
    current = _group_publish.get()
    if (current is not None and current.group_id == group_id and index > current.index and current.parent == parent
            and time.monotonic() - current.ended < GROUP_GAP):
        current.index = index
        return current
    current = _GroupPublish(group_id, index, parent)
    _group_publish.set(current)
    return current


def _chain_group(body: Any) -> tuple[Any, Any]:
    """The group a chain belongs to, from the message of its first link: ``group(chain(a, b), ...)`` gives the
    group's id and index only to each chain's last link, which the first link's message carries (protocol 2: its
    body's ``chain``, the links still to run, last one first). (None, None) for a message that starts no chain."""
    embed = body[2] if isinstance(body, (list, tuple)) and len(body) >= 3 else None
    links = embed.get("chain") if isinstance(embed, dict) else None
    last = links[0] if isinstance(links, list) and links else None
    options = last.get("options") if isinstance(last, dict) else None
    if not isinstance(options, dict):
        return None, None
    return options.get("group_id"), options.get("group_index")


def _ignores_result(message: dict[str, Any], celery_task: Any) -> bool:
    """The task's ``ignore_result``, as ``apply_async`` resolved it into the message (else the task's)."""
    ignore = message.get("ignore_result")
    return ignore if isinstance(ignore, bool) else getattr(celery_task, "ignore_result", None) is True


def _message_args(body: Any) -> tuple[Any, Any]:
    if isinstance(body, dict):  # protocol 1
        return body.get("args"), body.get("kwargs")
    if isinstance(body, (list, tuple)) and len(body) >= 2:  # protocol 2: (args, kwargs, embed)
        return body[0], body[1]
    return (), {}


#: The delay RabbitMQ's native delayed delivery (Celery 5.5+, quorum queues) puts before the routing key of a
#: countdown/ETA task's queue: 28 bits, "0.0.….1.0.", as kombu's ``calculate_routing_key`` writes it.
_DELAY_BITS = re.compile(r"(?:[01]\.){28}")


def _queue_name(declare: Any, routing_key: str | None, app: Any) -> str | None:
    for queue in declare or ():
        name = getattr(queue, "name", None)
        if name:
            return name
    delay = _DELAY_BITS.match(routing_key or "")
    if delay and routing_key:
        # through the delay queues (no queue declared): the message reaches the queue with the key after the bits
        routing_key = routing_key[delay.end():]
        return _queue_routed_by(routing_key, app) or routing_key or None
    return routing_key or None


def _queue_routed_by(routing_key: str, app: Any) -> str | None:
    """The name of the queue ``app`` configures whose routing key this is, if one is."""
    try:
        queues = list(app.amqp.queues.values())
    except Exception:
        return None
    for queue in queues:
        if getattr(queue, "routing_key", None) == routing_key and isinstance(getattr(queue, "name", None), str):
            return queue.name
    return None


# -- retries and replacements ----------------------------------------------------------------------


def _replaces_running_task(message: dict[str, Any], body: Any) -> bool:
    """Whether this message is (part of) the replacement of the running task: ``self.replace(sig)`` publishes
    ``sig`` with the running task's ``replaced_task_nesting`` + 1 (a retry keeps it), the one task that takes
    over its Celery id included (Celery 5.3+; protocol 2 carries it)."""
    import celery

    fields = message if "task" in message else body  # protocol 2 : protocol 1
    nesting = fields.get("replaced_task_nesting") if isinstance(fields, dict) else None
    running = getattr(getattr(celery.current_task, "request", None), "replaced_task_nesting", None) or 0
    numbers = all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in (nesting, running))
    return numbers and nesting > running  # type: ignore[operator]  # Celery adds 1 to whatever it was given


def record_retry(tracking: Tracking) -> None:
    """``task.retry()`` in the body is publishing the next attempt: back to ``pending`` now (see
    ``lifecycle.retry``)."""
    import celery

    tracking.retry_recorded = True
    # Sent now, before the message of the next attempt is published: that attempt may run at once in another
    # worker. If it cannot be sent now, it is not queued here (it could reach the API after that attempt's final
    # state, and the task stayed pending for good): the next attempt sends it when it starts.
    tracking.retry_resend = lifecycle.retry(tracking, retry_number(celery.current_task.request),
                                            tracking.retry_exc or sys.exc_info()[1], wait=True, hand_over=True)
    if tracking.retry_resend is not None:  # nothing is lost: an info line (the breaker says when the API fails)
        log.info("Task Badger: could not record the retry of task %s now; its next attempt records it when it starts",
                 short(tracking.id))


def retry_number(request: Any) -> int:
    """The attempt the retry being published is (1 for the first retry)."""
    return (getattr(request, "retries", 0) or 0) + 1


# -- tasks whose message never left -----------------------------------------------------------------


class Confirmations:
    """Created tasks waiting for their message to be confirmed published (``after_task_publish``)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: OrderedDict[str, tuple[TaskbadgerTask, float]] = OrderedDict()
        self._thread: threading.Thread | None = None

    def expect(self, celery_id: str, task: TaskbadgerTask) -> None:
        with self._cond:
            self._waiting[celery_id] = (task, time.monotonic() + CONFIRM_WINDOW)
            if self._thread is None:  # None also when no thread could start: tried again at the next expect()
                self._thread = start_daemon_thread(self._run, "taskbadger-publish-confirmations")
            self._cond.notify()

    def confirm(self, celery_id: Any) -> None:
        if self._waiting:  # read without the lock: most publishes have nothing waiting
            with self._cond:
                self._waiting.pop(celery_id, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting:
                    self._cond.wait()
                _, (task, deadline) = next(iter(self._waiting.items()))
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                self._waiting.popitem(last=False)
            try:
                publish_failed(task, f"the message was not published within {CONFIRM_WINDOW:g} s")
            except Exception:
                log.exception("Task Badger: internal error while closing task %s", short(task.id))


_confirmations: PerProcess[Confirmations] = PerProcess(Confirmations)


def confirmations() -> Confirmations:
    return _confirmations.get()
