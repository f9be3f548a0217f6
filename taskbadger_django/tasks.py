"""``track_task``: per-task Task Badger options of a ``django.tasks`` task (Django 6's framework or the
``django_tasks`` backport). Applied above ``@task``::

    @track_task(value_max=100, monitor_id="…", tags={"team": "billing"})
    @task(queue_name="billing")
    def nightly_invoices(customer_ids): ...

    @track_task(enabled=False)      # never tracked, whatever TASKBADGER["DJANGO_TASKS"] says
    @task
    def ping(): ...

``enabled=True`` tracks the task even when ``AUTO_TRACK`` is False or the rules exclude it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from taskbadger.django_tasks import options

T = TypeVar("T")


def track_task(*, name: str | None = None, value_max: int | None = None, monitor_id: str | None = None,
               tags: Mapping[str, str] | None = None, data: Mapping[str, Any] | None = None,
               enabled: bool | None = None, record_task_args: bool | None = None,
               heartbeat_interval: float | None = None, stale_timeout: int | None = None,
               max_runtime: int | None = None) -> Callable[[T], T]:
    """Record the task's options (checked now: TypeError for a bad value) and return the task unchanged."""
    checked = options.checked({"name": name, "value_max": value_max, "monitor_id": monitor_id, "tags": tags,
                               "data": data, "enabled": enabled, "record_task_args": record_task_args,
                               "heartbeat_interval": heartbeat_interval, "stale_timeout": stale_timeout,
                               "max_runtime": max_runtime})

    def decorate(task: T) -> T:
        if not hasattr(task, "enqueue") or not hasattr(task, "func"):
            raise TypeError("track_task() is applied above @task: @track_task(...) then @task(...) then def")
        options.register(task, checked)
        return task

    return decorate


def task_id_for_result(result: Any) -> str | None:
    """The Task Badger id of a ``django.tasks`` ``TaskResult`` (the one ``.enqueue()`` returned, or one from
    ``get_result(id)``): known in the process that enqueued it, and elsewhere while the task has not
    succeeded yet (its entry in the app's table); None when it is not tracked or no longer known."""
    from taskbadger.django_tasks.events import task_id_of

    result_id = getattr(result, "id", None)
    return task_id_of(result_id) if isinstance(result_id, str) else None
