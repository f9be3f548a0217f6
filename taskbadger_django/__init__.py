"""Task Badger for Django: add ``"taskbadger_django"`` to ``INSTALLED_APPS`` and a ``TASKBADGER`` dict
to ``settings.py``; every process that sets Django up (web, ``celery worker``, ``celery beat``) is then
configured from it. See the README's Django quick start and docs/django.md.

``from taskbadger_django import Task`` is ``taskbadger.celery.Task``, the Celery base class, imported
lazily so that importing this package does not import Celery. ``progress_url(request, task)`` is the URL a
page polls for a task's progress (``{% taskbadger_progress %}`` uses it; see docs/progress.md), and
``task_id_for(task)`` the Task Badger id of an id, a ``taskbadger.Task`` or a Celery result.
``track_task(...)`` sets a ``django.tasks`` task's options (docs/django-tasks.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskbadger.celery import Task as Task

    from .progress import progress_url as progress_url
    from .progress import task_id_for as task_id_for
    from .tasks import track_task as track_task

__all__ = ["Task", "progress_url", "task_id_for", "track_task"]


def __getattr__(name: str) -> Any:
    if name == "Task":
        try:
            from taskbadger.celery import Task
        except ImportError as err:
            raise ImportError(
                f'taskbadger_django.Task needs Celery: pip install "django-taskbadger[celery]" ({err})') from err
        return Task
    if name == "track_task":
        from .tasks import track_task

        return track_task
    if name in ("progress_url", "task_id_for"):
        from . import progress

        return getattr(progress, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
