"""Worker-side bookkeeping: the state of a tracked run, and what the worker's main process remembers.

* ``Tracking``: one tracked run (a ``lifecycle.Run``), kept on the Celery request while the task runs
  (``TRACKING_ATTR``).
* The main process's map of tracked messages it received (Celery id -> Task Badger id), for the
  events that carry only the Celery id (hard time limits, lost children, revokes); and the publishing
  process's map of the tasks it tracked without the base class (auto-tracked by name), whose results
  carry no ``taskbadger_task_id``.
* ``publish_slot``: where the publish handler leaves the task it created for ``Task.apply_async``, and finds the
  app publishing it.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from .._runtime import PerProcess, RecentIds
from ..lifecycle import Meta, Run
from ..models import is_task_id
from ..task import Task as TaskbadgerTask
from .headers import ID_KEY, LEFT_KEY

log = logging.getLogger("taskbadger")

TRACKING_ATTR = "taskbadger_tracking"  # set on the Celery request while a tracked task runs
#: Set on the Celery request of a run whose task may exist but could not be looked up when it started.
SETTLE_ATTR = "taskbadger_settle"

class PublishSlot(dict[str, TaskbadgerTask]):
    """Set by ``Task.apply_async`` while it publishes: the publish handler leaves the created task here (by Celery
    id) so that ``apply_async`` can put its id on the result without a result backend, and cancel it if the broker
    refuses the message. ``app`` is the publishing task's own app, which ``before_task_publish`` does not name."""

    __slots__ = ("app",)

    def __init__(self, app: Any) -> None:
        super().__init__()
        self.app = app


publish_slot: contextvars.ContextVar[PublishSlot | None] = contextvars.ContextVar("taskbadger_publish_slot",
                                                                                  default=None)


class Tracking(Run):
    """One tracked run of a Celery task (``lifecycle.Run``), kept on the Celery request, with what only
    Celery has: the retry being published from the body, whether the body published its replacement
    (``self.replace``), and the names of the tasks that follow it."""

    __slots__ = ("replaced", "retry_exc", "retry_recorded", "retry_resend", "successors")

    def __init__(self, celery_id: str, meta: Meta) -> None:
        super().__init__(celery_id, meta)
        self.retry_exc: BaseException | None = None
        self.retry_recorded = False
        #: what of the recorded retry could not be sent: its next attempt sends it (``Meta.resend``)
        self.retry_resend: dict[str, Any] | None = None
        self.replaced = False
        self.successors: frozenset[str] = frozenset()

    @property
    def celery_id(self) -> str | None:
        return self.external_id


def tracking_of(request: Any) -> Tracking | None:
    return getattr(request, TRACKING_ATTR, None) if request is not None else None


def running_tracking() -> Tracking | None:
    """The tracked run of the Celery task executing in this thread, if any."""
    import celery

    return tracking_of(getattr(celery.current_task, "request", None))


def current_task(request: Any) -> TaskbadgerTask | None:
    """``self.taskbadger_task``: the run's task, its data fetched once if it was too large for the headers."""
    tracking = tracking_of(request)
    return tracking.current_task() if tracking is not None else None


def task_id_of(request: Any) -> str | None:
    tracking = tracking_of(request)
    return tracking.id if tracking is not None else None


def note_retry_exception(request: Any, exc: BaseException | None) -> None:
    tracking = tracking_of(request)
    if tracking is not None and exc is not None:
        tracking.retry_exc = exc


# -- the worker's main process: which messages are tracked --------------------------------------------

#: Most messages remembered; the oldest go first.
MAX_RECEIVED = 10_000


def _received_map() -> RecentIds:
    """Celery id -> Task Badger id for the tracked messages this worker received."""
    return RecentIds(MAX_RECEIVED)


_received: PerProcess[RecentIds] = PerProcess(_received_map)


def received() -> RecentIds:
    """This process's map (a forked pool child starts with an empty one: the parent's is the parent's)."""
    return _received.get()


#: Most auto-tracked publishes remembered: a view renders the result it just published.
MAX_PUBLISHED = 1_000
_published: PerProcess[RecentIds] = PerProcess(lambda: RecentIds(MAX_PUBLISHED))


def published() -> RecentIds:
    """This process's map of the tasks it tracked at publish without the base class (``task_id_of_result``)."""
    return _published.get()


_left_to_worker: PerProcess[RecentIds] = PerProcess(lambda: RecentIds(MAX_PUBLISHED))


def left_to_worker() -> RecentIds:
    """This process's map (Celery id -> task name) of the tracked tasks it published without creating them: their
    create did not fit in the publish budget (a group's shared one), or the API failed. The worker that runs each
    one creates its task when it starts, with the Celery id as its ``external_id``; until then a page can follow it
    by that id only (``follow_result``)."""
    return _left_to_worker.get()


def task_id_of_result(result: Any) -> str | None:
    """The Task Badger id of a Celery ``AsyncResult``: its ``taskbadger_task_id`` (the base class sets it), else
    the task this process created when it published that message, else what the publisher left in the result
    backend (``{"taskbadger_task_id": ...}`` while the task is ``PENDING`` there: until Celery stores a state of its
    own, its end, its start under ``task_track_started``, or a retry's ``RETRY``). So ``AsyncResult(celery_id)``,
    rebuilt on the page a POST redirected to, finds it in any process until then. None when nothing says it is
    tracked."""
    return follow_result(result)[0]


_UNSET: Any = object()


def follow_result(result: Any) -> tuple[str | None, str | None]:
    """How a page follows the task of a Celery ``AsyncResult`` (one read of the result backend at most): ``(its Task
    Badger id, None)`` when it has one (``task_id_of_result``); ``(None, its Celery id)`` when it was published tracked
    but its worker creates its task when it starts (its create failed at publish: ``left_to_worker`` in this process;
    elsewhere the publisher's ``{"taskbadger_created_by_worker": true}``, while the task is ``PENDING`` in the result
    backend), to be followed by that id, its ``external_id``; ``(None, None)`` when nothing says it is tracked."""
    given = getattr(result, "taskbadger_task_id", _UNSET)
    if isinstance(given, str):
        return given, None
    celery_id = getattr(result, "id", None)
    if not isinstance(celery_id, str):
        return None, None
    task_id = published().get(celery_id)
    if task_id is not None:
        return task_id, None
    if left_to_worker().get(celery_id) is not None:
        return None, celery_id
    if given is None:  # the base class's result, published by this process: what it knows is all there is
        return None, None
    stored = _stored_pending(result, celery_id)
    task_id = stored.get(ID_KEY)
    if is_task_id(task_id):
        return task_id, None
    return None, celery_id if stored.get(LEFT_KEY) is True else None


def _stored_pending(result: Any, celery_id: str) -> dict[str, Any]:
    """What the publisher left in the result backend as the ``PENDING`` state of ``celery_id``; empty when it left
    nothing, or once the worker stored a state of its own."""
    try:
        meta = result.backend.get_task_meta(celery_id)  # one read; a disabled backend raises
    except Exception:
        return {}
    stored = meta.get("result") if isinstance(meta, dict) and meta.get("status") == "PENDING" else None
    return stored if isinstance(stored, dict) else {}
