"""Celery integration: the ``Task`` base class and the signal receivers that track tasks.

    from taskbadger.celery import Task

    @app.task(bind=True, base=Task)
    def export(self, rows): ...

Lifecycle: the publishing process creates a ``pending`` task before the message is published and
puts its id (plus what the worker needs) in the message headers; the worker marks it ``processing``
when the task starts and ``success``/``error``/``cancelled`` when it ends. Worker-side updates go
through the per-process queue of pending updates (``taskbadger.delivery``) and never block the task.

What happens to the Task Badger task is ``taskbadger.lifecycle``'s, shared with every integration; this
package holds only what is Celery's. Modules, from the top: ``signals`` (receivers, connected here once),
``base`` (the ``Task`` class), ``events`` (worker-side: Celery event -> lifecycle call), ``publish``
(publish-side events), ``fields`` (the Celery side of the create body: canvas names, workflow successors),
``state`` (the run kept on the request, and main-process bookkeeping), ``headers`` (the message protocol)
and ``options`` (``taskbadger_*`` options).

Importing this package connects the receivers (``signals.connect()``, idempotent).
"""

from .base import Task
from .signals import connect
from .state import task_id_of_result

connect()

__all__ = ["Task", "connect", "task_id_of_result"]
