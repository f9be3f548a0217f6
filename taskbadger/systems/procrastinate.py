"""``ProcrastinateSystemIntegration``: track the jobs of a Procrastinate app (``taskbadger.procrastinate``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..exceptions import ConfigurationError
from .base import QueueIntegration

__all__ = ["ProcrastinateSystemIntegration"]


class ProcrastinateSystemIntegration(QueueIntegration):
    """Track the tasks of ``app`` (a ``procrastinate.App``) by name; the other arguments are
    ``QueueIntegration``'s. Procrastinate's own tasks (``builtin:…``, ``procrastinate.…``) are never tracked
    by name; a task decorated with ``taskbadger.procrastinate.track`` is tracked either way, with its options.

    Tasks registered on the app later (``app.add_tasks_from(blueprint)``, modules imported afterwards) are
    tracked too: the decision is taken when a job is deferred and when it starts, by task name.
    """

    identifier = "procrastinate"
    internal_prefix = "builtin:"

    def __init__(
        self,
        app: Any,
        auto_track_tasks: bool = True,
        includes: Iterable[str] | None = None,
        excludes: Iterable[str] | None = None,
        record_task_args: bool = False,
        heartbeat_interval: float | None = None,
        stale_timeout: int | None = None,
        monitors: Mapping[str, str] | None = None,
        *,
        if_rolled_back: Callable[[int, Callable[[], None]], None] | None = None,
    ) -> None:
        super().__init__(
            auto_track_tasks=auto_track_tasks,
            includes=includes,
            excludes=excludes,
            record_task_args=record_task_args,
            heartbeat_interval=heartbeat_interval,
            stale_timeout=stale_timeout,
            monitors=monitors,
        )
        from ..procrastinate import install

        self.app = app
        #: ``if_rolled_back(job_id, callback)``: call ``callback()`` if the transaction that inserted the job rolls
        #: back (``taskbadger_django`` gives it for Django's connection); None: nobody can tell.
        self.if_rolled_back = if_rolled_back
        if not install(app):
            raise ConfigurationError(f"ProcrastinateSystemIntegration(app=...) needs a procrastinate.App, got {app!r}")

    def track_task(self, task_name: str) -> bool:
        if task_name.startswith("procrastinate."):
            return False
        return super().track_task(task_name)
