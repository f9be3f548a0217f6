"""A project's own RQ worker class: a subclass of Task Badger's, as docs/django-tasks.md says."""

from __future__ import annotations

from taskbadger.django_tasks.rq import Worker


class OwnWorker(Worker):
    """What a project that had a worker class of its own (its own logging, its own hooks) names instead."""
