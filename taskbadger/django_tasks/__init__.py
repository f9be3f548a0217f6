"""The ``django.tasks`` integration (Django 6's tasks framework and the ``django_tasks`` backport): a thin
adapter from its signals to ``taskbadger.lifecycle``. Configured by ``DjangoTasksSystemIntegration``
(``taskbadger.systems.django_tasks``), which the Django app builds from ``TASKBADGER["DJANGO_TASKS"]``.
See docs/django-tasks.md."""

from __future__ import annotations

from .channel import CREATED, CREATING, DONE, MAYBE, Channel, Entry, LocalChannel
from .options import TRACK_TASK_OPTIONS

__all__ = ["CREATED", "CREATING", "DONE", "MAYBE", "TRACK_TASK_OPTIONS", "Channel", "Entry", "LocalChannel"]
