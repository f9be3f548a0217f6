"""The public functions of the task endpoints: create, get, update, list, cancel, and safe variants."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from . import endpoints
from ._runtime import log_once, short
from .actions import action_dicts
from .config import is_configured
from .exceptions import CreateSkipped, MissingConfiguration
from .models import StatusEnum, given_data
from .task import Task, create

log = logging.getLogger("taskbadger")

def create_task(
    name: str,
    status: StatusEnum | str = StatusEnum.PENDING,
    value: int | None = None,
    value_max: int | None = None,
    data: Any = None,
    max_runtime: int | None = None,
    stale_timeout: int | None = None,
    actions: list[Any] | None = None,
    monitor_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    queue: str | None = None,
    external_id: str | None = None,
    parent: str | None = None,
    *,
    start_time: Any = None,
    end_time: Any = None,
) -> Task:
    """Create a task and return it (see ``Task.create``). The positional order is the official SDK's."""
    fields = dict(
        status=StatusEnum.coerce(status), value=value, value_max=value_max, data=data, max_runtime=max_runtime,
        stale_timeout=stale_timeout, tags=tags, queue=queue, external_id=external_id, parent=parent,
        start_time=start_time, end_time=end_time, actions=action_dicts(actions, stacklevel=2),
    )
    return create(name, fields, monitor_id)


def get_task(task_id: str) -> Task:
    """Fetch a task by id."""
    return Task.get(task_id)


def update_task(
    task_id: str,
    name: str | None = None,
    status: StatusEnum | str | None = None,
    value: int | None = None,
    value_max: int | None = None,
    data: Any = None,
    max_runtime: int | None = None,
    stale_timeout: int | None = None,
    actions: list[Any] | None = None,
    tags: Mapping[str, str] | None = None,
    queue: str | None = None,
    external_id: str | None = None,
    parent: str | None = None,
    *,
    start_time: Any = None,
    end_time: Any = None,
) -> Task:
    """Send the given fields (None values are left out) and return the updated task. The positional
    order is the official SDK's; as there, empty ``data`` is left out (it does not wipe the task's data)."""
    data = given_data(data)
    fields = dict(
        name=name, status=status, value=value, value_max=value_max, data=data, max_runtime=max_runtime,
        stale_timeout=stale_timeout, tags=tags, queue=queue, external_id=external_id, parent=parent,
        start_time=start_time, end_time=end_time, actions=action_dicts(actions, stacklevel=2),
    )
    return Task(endpoints.update(task_id, fields))


def cancel_task(task_id: str) -> None:
    """Cancel a task (HTTP DELETE): its status becomes ``cancelled``."""
    endpoints.cancel(task_id)


class TaskList:
    """One page of tasks. Iterate it, ``len()`` it, or follow ``next_page()`` / ``iter_all()``.

    ``results``, ``next``, ``previous`` (the pages' URLs) and ``next_cursor``; the official SDK's
    spellings work too: ``next_`` and ``to_dict()``.
    """

    def __init__(self, page: endpoints.Page, page_size: int | None = None, parent: str | None = None) -> None:
        self.results: list[Task] = [Task(model) for model in page.results]
        self.next: str | None = page.next
        self.previous: str | None = page.previous
        self._page_size = page_size
        self._parent = parent

    def __iter__(self) -> Iterator[Task]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> Task:
        return self.results[index]

    def __repr__(self) -> str:
        return f"<TaskList {len(self)} tasks, next={self.next_cursor!r}>"

    @property
    def next_(self) -> str | None:
        return self.next

    def to_dict(self) -> dict[str, Any]:
        return {"results": [task.to_dict() for task in self.results], "next": self.next, "previous": self.previous}

    @property
    def next_cursor(self) -> str | None:
        return endpoints.cursor_of(self.next)

    @property
    def previous_cursor(self) -> str | None:
        return endpoints.cursor_of(self.previous)

    def next_page(self) -> TaskList | None:
        cursor = self.next_cursor
        if cursor is None:
            return None
        return list_tasks(page_size=self._page_size, cursor=cursor, parent=self._parent)

    def iter_all(self) -> Iterator[Task]:
        """Every task on this page and the pages after it, fetched as needed."""
        page: TaskList | None = self
        while page is not None:
            yield from page.results
            page = page.next_page()


def list_tasks(page_size: int | None = None, cursor: str | None = None, parent: str | None = None) -> TaskList:
    """One page of tasks, newest first; ``parent`` keeps only that task's children."""
    return TaskList(endpoints.list_page(page_size, cursor, parent), page_size=page_size, parent=parent)


def iter_tasks(page_size: int | None = None, parent: str | None = None) -> Iterator[Task]:
    """Every task, walking the pages for you."""
    return list_tasks(page_size=page_size, parent=parent).iter_all()


# -- safe variants: never raise ------------------------------------------------------------------

def _unconfigured() -> bool:
    if is_configured():
        return False
    log_once("safe:unconfigured", logging.WARNING, "Task Badger is not configured, so tasks are not tracked: %s",
             MissingConfiguration(["token"]))
    return True


def create_task_safe(name: str, **kwargs: Any) -> Task | None:
    """Like ``create_task``, but log a warning and return None instead of raising."""
    if _unconfigured():
        return None
    try:
        return create_task(name, **kwargs)
    except CreateSkipped:
        log.debug("before_create skipped task %s", short(name))
    except Exception as err:
        log.warning("Task Badger: could not create task %s: %s", short(name), err)
    return None


def update_task_safe(task_id: str, **kwargs: Any) -> Task | None:
    """Like ``update_task``, but log a warning and return None instead of raising."""
    if _unconfigured():
        return None
    try:
        return update_task(task_id, **kwargs)
    except Exception as err:
        log.warning("Task Badger: could not update task %s: %s", short(task_id), err)
    return None
