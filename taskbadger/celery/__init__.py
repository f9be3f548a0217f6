"""Celery integration: the ``Task`` base class and the signal receivers that track tasks.

    from taskbadger.celery import Task

    @app.task(bind=True, base=Task)
    def export(self, rows): ...

Lifecycle: the publishing process creates a ``pending`` task before the message is published and
puts its id (plus what the worker needs) in the message headers; the worker marks it ``processing``
when the task starts and ``success``/``error``/``cancelled`` when it ends. Worker-side updates go
through the per-process queue of pending updates (``taskbadger.delivery``) and never block the task.

Modules, from the top: ``signals`` (receivers, connected here once), ``base`` (the ``Task`` class),
``events`` (worker-side: Celery event -> task operation), ``publish`` (publish-side events),
``fields`` (what a task is created with; the inline create), ``state`` (per-run and main-process
bookkeeping), ``headers`` (the message protocol) and ``options`` (``taskbadger_*`` options).

Importing this package connects the receivers (``signals.connect()``, idempotent).
"""

from .base import Task
from .signals import connect

connect()

__all__ = ["Task", "connect"]
