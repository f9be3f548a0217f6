"""``CelerySystemIntegration``: track Celery tasks without the ``taskbadger.celery.Task`` base class."""

from __future__ import annotations

from typing import Any

from .base import QueueIntegration, full_match, pattern_error

__all__ = ["CelerySystemIntegration", "full_match", "pattern_error"]


class CelerySystemIntegration(QueueIntegration):
    """Track Celery tasks by name; the arguments are ``QueueIntegration``'s.

    Celery's own ``celery.*`` tasks are never tracked by name. Tasks using the ``taskbadger.celery.Task``
    base class are tracked either way unless a call opts out with ``taskbadger_track=False``, and a task's
    ``taskbadger_monitor_id`` wins over ``monitors``.
    """

    identifier = "celery"
    internal_prefix = "celery."

    def on_init(self, config: Any) -> None:
        from ..celery.signals import connect

        connect()  # idempotent
