"""``@track``: record a plain function call as a task."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar, overload

from . import context_providers
from ._runtime import short
from .api import create_task_safe
from .models import StatusEnum, completed_progress
from .scope import enter_task, exit_task, parent_for_new_task
from .task import Task

log = logging.getLogger("taskbadger")

F = TypeVar("F", bound=Callable[..., Any])


@overload
def track(func: F) -> F: ...
@overload
def track(
    func: None = None, *, name: str | None = None, monitor_id: str | None = None, max_runtime: int | None = None,
    **task_kwargs: Any,
) -> Callable[[F], F]: ...


def track(
    func: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    monitor_id: str | None = None,
    max_runtime: int | None = None,
    **task_kwargs: Any,
) -> Any:
    """Track each call of the decorated function as a task.

    Works bare (``@track``) or with options (``@track(name="nightly", monitor_id=...)``); extra
    keyword arguments go to ``create_task``. The task starts ``processing`` and ends ``success``, or
    ``error`` with the exception, which is re-raised. Calls made inside a tracked call (other
    ``@track`` functions, Celery tasks published from it) become its children.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(fn):
            raise TypeError(f"@track needs a function, got {fn!r}")
        task_name = name or f"{fn.__module__}.{fn.__qualname__}"

        def start() -> tuple[Task | None, Any]:
            options: dict[str, Any] = {"status": StatusEnum.PROCESSING, "max_runtime": max_runtime,
                                       "monitor_id": monitor_id, "parent": parent_for_new_task()}
            options.update(task_kwargs)  # an explicit parent= wins over the enclosing call
            task = create_task_safe(task_name, **options)
            if task is None:
                return None, None
            return task, (enter_task(task.id, task.parent), context_providers.start())

        def finish(task: Task | None, tokens: Any, exc: BaseException | None) -> None:
            if task is None:
                return
            running, snapshots = tokens
            exit_task(running)
            try:
                if exc is None:
                    task.success(**completed_progress(task.value, task.value_max))
                else:
                    task.error(exception=exc)  # with the context providers' context, from their snapshots
            except Exception as err:
                log.warning("Task Badger: could not record the end of %s: %s", short(task_name), err)
            finally:
                context_providers.stop(snapshots)

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                task, token = start()
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    finish(task, token, exc)
                    raise
                finish(task, token, None)
                return result

            return run_async

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            task, token = start()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                finish(task, token, exc)
                raise
            finish(task, token, None)
            return result

        return run

    return decorate if func is None else decorate(func)
