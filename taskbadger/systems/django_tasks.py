"""``DjangoTasksSystemIntegration``: track ``django.tasks`` tasks (Django 6's framework, or the
``django_tasks`` backport) by name. The Django app builds it from ``TASKBADGER["DJANGO_TASKS"]``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .base import QueueIntegration

__all__ = ["DjangoTasksSystemIntegration"]


class DjangoTasksSystemIntegration(QueueIntegration):
    """Track ``django.tasks`` tasks by name (``module.function``); the arguments are
    ``QueueIntegration``'s, with ``auto_track_tasks`` on by default, plus ``channel``: how the Task
    Badger id travels from the process that enqueues to the worker (``taskbadger.django_tasks.channel``;
    the Django app gives its database table). Without one, a worker in another process creates the task
    when it starts it. A task decorated with ``taskbadger_django.track_task`` follows its own options."""

    identifier = "django_tasks"

    def __init__(self, auto_track_tasks: bool = True, includes: Iterable[str] | None = None,
                 excludes: Iterable[str] | None = None, record_task_args: bool = False,
                 heartbeat_interval: float | None = None, stale_timeout: int | None = None,
                 monitors: Mapping[str, str] | None = None, channel: Any = None) -> None:
        super().__init__(auto_track_tasks, includes, excludes, record_task_args, heartbeat_interval, stale_timeout,
                         monitors)
        self.channel = channel

    def on_init(self, config: Any) -> None:
        from ..django_tasks.receivers import connect

        connect()  # idempotent
