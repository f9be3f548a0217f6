"""The ``Task`` base class: a Celery task that tracks itself.

    from taskbadger.celery import Task

    @app.task(bind=True, base=Task)
    def export(self, rows):
        tb = self.taskbadger_task          # None when not tracked
        ...
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import celery

from ..task import Task as TaskbadgerTask
from .fields import BASE_CLASS_MARK
from .headers import parse_options
from .options import KWARGS_KEY, TRACK_KEY, pop_options
from .publish import publish_failed
from .state import PublishSlot, current_task, note_retry_exception, publish_slot, task_id_of

log = logging.getLogger("taskbadger")


class Task(celery.Task):
    """A Celery task that tracks itself in Task Badger.

    ``taskbadger_<option>=`` arguments on the decorator or on ``apply_async`` (or a
    ``taskbadger_kwargs`` dict) customise the tracked task: name, value, value_max, data, tags,
    monitor_id, max_runtime, stale_timeout, record_task_args, heartbeat_interval, parent, track.
    ``apply_async`` wins over the decorator. ``taskbadger_track=False`` opts one call out.

    Not tracked: ``.apply()``, calling the task directly, and ``task_always_eager``.
    """

    def apply_async(self, args: Any = None, kwargs: Any = None, *rest: Any, **options: Any) -> Any:
        # ``rest``: Celery's own positional parameters after ``kwargs`` (task_id, producer, link, link_error,
        # shadow), passed on as given. The options travel in a header, raw: the publish handler checks them (it
        # checks every producer's headers) and writes back only their checked form.
        call_options = {}
        if kwargs and isinstance(kwargs, Mapping):  # anything else is Celery's to refuse, with its own message
            kwargs = dict(kwargs)  # never mutate the caller's dict
            call_options.update(pop_options(kwargs))
        call_options.update(pop_options(options))
        if call_options:
            headers = dict(options.get("headers") or {})
            if "track" in call_options:
                headers[TRACK_KEY] = call_options.pop("track")
            given = headers.get(KWARGS_KEY)
            if not isinstance(given, Mapping):  # not options at all: warned about and dropped, as on any message
                given = parse_options(given, self.name)
            headers[KWARGS_KEY] = {**given, **call_options}
            options["headers"] = headers
        slot = PublishSlot(self.app)
        token = publish_slot.set(slot)
        try:
            result = super().apply_async(args, kwargs, *rest, **options)
        except BaseException as exc:
            for created in slot.values():  # created, but its message never left: it will never run
                _publish_failed(created, exc)
            raise
        finally:
            publish_slot.reset(token)
        _attach_to_result(result, slot.get(str(getattr(result, "id", ""))))
        return result

    def apply(self, args: Any = None, kwargs: Any = None, *rest: Any, **options: Any) -> Any:
        # Synchronous runs are not tracked, but their taskbadger_* options must not reach the function.
        if kwargs:
            kwargs = dict(kwargs)
            pop_options(kwargs)
        pop_options(options)
        result = super().apply(args, kwargs, *rest, **options)
        _attach_to_result(result, None)
        return result

    def retry(self, args: Any = None, kwargs: Any = None, exc: BaseException | None = None, *a: Any,
              **options: Any) -> Any:
        note_retry_exception(self.request, exc)
        return super().retry(args, kwargs, exc, *a, **options)

    @property
    def taskbadger_task(self) -> TaskbadgerTask | None:
        """The Task Badger task of the running call (no network round trip), or None."""
        return current_task(self.request)

    @property
    def taskbadger_task_id(self) -> str | None:
        return task_id_of(self.request)


setattr(Task, BASE_CLASS_MARK, True)


def _publish_failed(created: TaskbadgerTask, exc: BaseException) -> None:
    try:
        publish_failed(created, f"{type(exc).__name__}: {exc}")
    except Exception:
        log.exception("Task Badger: internal error while cancelling an unpublished task",
                      extra={"taskbadger_internal_error": True})


def _attach_to_result(result: Any, tb_task: TaskbadgerTask | None) -> None:
    task_id = tb_task.id if tb_task is not None else None
    try:
        result.taskbadger_task_id = task_id
        result.get_taskbadger_task = (lambda: TaskbadgerTask.get(task_id)) if task_id else (lambda: None)
    except AttributeError:  # a result class with __slots__: the ids are still in the headers
        pass
