"""The ``django.tasks`` signal receivers: connected to Django's own ``django.tasks.signals`` and to the
backport's ``django_tasks.signals`` (the RQ backend sends the backport's), never filtered on ``sender``
(the backends send a class for some signals and an instance for others), and guarded: a receiver that
raises would make ``enqueue()`` raise, or fail the task before it runs.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

from .._runtime import raised_by_signal_handler
from . import events

log = logging.getLogger("taskbadger")

SIGNAL_MODULES = ("django.tasks.signals", "django_tasks.signals")


def guard(handler: Callable[[Any], None]) -> Callable[..., None]:
    # not functools.wraps: Django (with DEBUG) checks through __wrapped__ that a receiver takes **kwargs
    def receiver(sender: Any = None, task_result: Any = None, **_: Any) -> None:
        if task_result is None:
            return
        try:
            handler(task_result)
        except Exception as exc:
            if raised_by_signal_handler(exc):
                raise  # the job's time limit (RQ's JobTimeoutException) struck while tracking it: the job's
            log.exception("Task Badger: internal error in %s; the django.tasks task is not affected",
                          handler.__name__, extra={"taskbadger_internal_error": True})

    receiver.__name__ = receiver.__qualname__ = handler.__name__
    return receiver


on_enqueued = guard(events.on_enqueued)
on_started = guard(events.on_started)
on_finished = guard(events.on_finished)


def signal_modules() -> list[Any]:
    """The signal modules that can be imported here (Django 6's, the backport's, or both)."""
    found = []
    for name in SIGNAL_MODULES:
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            continue
        except Exception as err:  # e.g. the backport imported before Django is set up
            log.debug("Task Badger: %s not connected: %s", name, err)
    return found


def connect() -> None:
    """Connect the receivers to every signal module present (once: ``dispatch_uid``)."""
    events.connected_here()
    for module in signal_modules():
        for signal, receiver in ((module.task_enqueued, on_enqueued), (module.task_started, on_started),
                                 (module.task_finished, on_finished)):
            signal.connect(receiver, weak=False, dispatch_uid=f"taskbadger.django_tasks.{receiver.__name__}")
