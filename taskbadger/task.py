"""``taskbadger.Task``: one task in Task Badger, with methods that update it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from .errors import exception_data
from .models import TERMINAL_STATUSES, StatusEnum, TaskModel

# Set by the worker-side dispatcher (``taskbadger.delivery``) while it runs in this process: returns
# the fields still queued for a task and removes them, so that a synchronous update from the task
# body is sent after them (merged into the same request) and order is kept.
claim_queued: Callable[[str], dict[str, Any]] | None = None
unclaim_queued: Callable[[str, dict[str, Any]], None] | None = None


class DefaultMergeStrategy:
    """Merge new ``data`` into the task's existing data; keys in ``append_keys`` are appended to."""

    def __init__(self, append_keys: list[str] | None = None) -> None:
        self.append_keys = append_keys or []

    def merge(self, existing: Any, new: Mapping[str, Any]) -> dict[str, Any]:
        merged = dict(existing) if isinstance(existing, Mapping) else {}
        for key, value in new.items():
            if key in self.append_keys and value:
                merged[key] = merged[key] + value if key in merged else value
            elif key not in self.append_keys:
                merged[key] = value
        return merged


class Task:
    """A Task Badger task. Field values (``task.status``, ``task.value``…) are attributes.

    Create one with ``Task.create(name, ...)`` or fetch one with ``Task.get(id)``.
    """

    def __init__(self, task: TaskModel | Mapping[str, Any]) -> None:
        self._task = task if isinstance(task, TaskModel) else TaskModel.from_dict(dict(task))
        self._last_sent: float | None = time.monotonic()

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, **kwargs: Any) -> Task:
        """Create a task in Task Badger (see ``taskbadger.create_task`` for the fields)."""
        from .api import create_task

        return create_task(name, **kwargs)

    @classmethod
    def get(cls, task_id: str) -> Task:
        from .api import get_task

        return get_task(task_id)

    # -- field access -----------------------------------------------------------------------------

    def __getattr__(self, item: str) -> Any:
        if item.startswith("_"):
            # copy and pickle probe dunders on a bare instance: never recurse into _task
            raise AttributeError(item)
        return getattr(self._task, item)

    @property
    def tags(self) -> dict[str, str]:
        return dict(self._task.tags or {})

    @property
    def is_finished(self) -> bool:
        return self._task.status in TERMINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return self._task.to_dict()

    def __repr__(self) -> str:
        return f"<Task {self._task.id} {self._task.name!r} {self._task.status}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other._task == self._task

    __hash__ = None  # type: ignore[assignment]  # mutable

    # -- updates -----------------------------------------------------------------------------------

    def update(
        self,
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
        data_merge_strategy: Any = None,
        **extra: Any,
    ) -> None:
        """Send the given fields (None means 'leave unchanged') and refresh this object.

        ``data`` replaces the task's data unless ``data_merge_strategy`` is ``"default"`` or an
        object with a ``merge(existing, new)`` method.
        """
        from .api import update_task

        if data is not None and data_merge_strategy is not None:
            if hasattr(data_merge_strategy, "merge"):
                data = data_merge_strategy.merge(self._task.data, data)
            elif data_merge_strategy == "default":
                data = DefaultMergeStrategy().merge(self._task.data, data)
            else:
                raise ValueError(f"Unknown data_merge_strategy {data_merge_strategy!r}: use 'default' or an object "
                                 "with a merge(existing, new) method")
        fields = dict(
            name=name, status=status, value=value, value_max=value_max, data=data, max_runtime=max_runtime,
            stale_timeout=stale_timeout, tags=tags, queue=queue, external_id=external_id, parent=parent, **extra,
        )
        if actions:
            fields["actions"] = [a.to_dict() if hasattr(a, "to_dict") else a for a in actions]
        fields = {k: v for k, v in fields.items() if v is not None}
        queued = claim_queued(self._task.id) if claim_queued is not None else {}
        try:
            updated = update_task(self._task.id, **{**queued, **fields})
        except Exception:
            if queued and unclaim_queued is not None:
                unclaim_queued(self._task.id, queued)  # not lost: the dispatcher sends them later
            raise
        self._task = updated._task
        self._last_sent = time.monotonic()

    def safe_update(self, **kwargs: Any) -> bool:
        """Like ``update`` but logs a warning instead of raising. Returns whether it was sent."""
        import logging

        try:
            self.update(**kwargs)
            return True
        except Exception as err:
            logging.getLogger("taskbadger").warning("Task Badger: could not update task %r: %s", self._task.id, err)
            return False

    def update_status(self, status: StatusEnum | str) -> None:
        self.update(status=status)

    def pre_processing(self, value: int | None = None, data: Any = None) -> None:
        self.update(status=StatusEnum.PRE_PROCESSING, value=value, data=data)

    def starting(self) -> None:
        self.processing(value=0)

    def processing(self, value: int | None = None, data: Any = None) -> None:
        self.update(status=StatusEnum.PROCESSING, value=value, data=data)

    def post_processing(self, value: int | None = None, data: Any = None) -> None:
        self.update(status=StatusEnum.POST_PROCESSING, value=value, data=data)

    def success(self, value: int | None = None, data: Any = None) -> None:
        self.update(status=StatusEnum.SUCCESS, value=value, data=data)

    def error(self, value: int | None = None, data: Any = None, exception: BaseException | None = None) -> None:
        """Mark the task failed. With ``exception``, its type, message and traceback go into
        ``data["exception"]``; the task's existing data is kept."""
        if exception is not None or data is not None:
            merged = dict(self._task.data) if isinstance(self._task.data, Mapping) else {}
            merged.update(data or {})
            if exception is not None:
                merged.update(exception_data(exception))
            data = merged
        self.update(status=StatusEnum.ERROR, value=value, data=data)

    def canceled(self) -> None:
        self.update(status=StatusEnum.CANCELLED)

    cancelled = canceled

    def tag(self, tags: Mapping[str, str]) -> None:
        """Add tags (existing tags are kept)."""
        self.update(tags=tags)

    def set_value_max(self, value_max: int) -> None:
        self.update(value_max=value_max)

    def increment_value(self, amount: int) -> None:
        self.update(value=(self._task.value or 0) + amount)

    def update_value(self, value: int, value_step: int | None = None, rate_limit: float | None = None) -> bool:
        """Set progress, but only when it moved by ``value_step`` or ``rate_limit`` seconds passed
        since the last update (either is enough). Returns whether an update was sent."""
        due = not value_step and not rate_limit
        if value_step and (self._task.value is None or value - self._task.value >= value_step):
            due = True
        if rate_limit and self._seconds_since_update() >= rate_limit:
            due = True
        if due:
            self.update(value=value)
        return due

    def ping(self, rate_limit: float | None = None) -> bool:
        """Tell Task Badger the task is alive (keeps a ``stale_timeout`` from firing).
        With ``rate_limit``, only if that many seconds passed since the last update."""
        if rate_limit and self._seconds_since_update() < rate_limit:
            return False
        self.update()
        return True

    def _seconds_since_update(self) -> float:
        if self._last_sent is None:
            return float("inf")
        return time.monotonic() - self._last_sent

    def __getstate__(self) -> dict[str, Any]:
        # monotonic clocks mean nothing in another process
        return {"_task": self._task, "_last_sent": None}
