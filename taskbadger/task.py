"""``taskbadger.Task``: one task in Task Badger, with methods that update it, and task creation.

A synchronous update first claims what this process still has queued for the task
(``delivery.queue``) and sends it in the same request, so order is kept.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from . import endpoints
from ._runtime import log_once, log_throttled, short
from .actions import action_dicts
from .config import get_config
from .context_providers import error_context
from .delivery import merge
from .delivery import queue as pending
from .delivery.merge import DefaultMergeStrategy
from .exceptions import CreateSkipped, InvalidData, ReadTimeout
from .http import Deadline, LateAnswer
from .models import (
    TERMINAL_STATUSES,
    StatusEnum,
    TaskModel,
    exception_data,
    fitted_name,
    given_data,
    has_control_characters,
    is_count,
    is_json,
    is_tag_map,
    is_whole_seconds,
    jsonable,
    safe_repr,
    tag_map_problem,
)
from .scope import scope_state

log = logging.getLogger("taskbadger")

__all__ = ["DefaultMergeStrategy", "Task", "create", "create_body"]


def create_body(name: str, fields: Mapping[str, Any]) -> dict[str, Any] | None:
    """The create body: scope data and tags, the configured tags, ``before_create`` applied.
    None means: do not create."""
    config = get_config()
    scope = scope_state()
    body: dict[str, Any] = {"name": name, **{k: v for k, v in fields.items() if v is not None}}
    data = body.get("data")
    if scope.context or scope.deferred:
        context = _scope_data(scope.data())
        if data is None:
            body["data"] = context
        elif isinstance(data, Mapping):
            body["data"] = {**context, **data}
    tags = {**(config.tags if config else {}), **scope.tags, **(body.get("tags") or {})}
    if tags:
        body["tags"] = tags
    if config and config.before_create:
        given = dict(body)  # the hook may change ``body`` itself: what it changed is checked
        changed = config.before_create(body)
        return _hook_fields(name, given, changed) if changed else None  # {} skips too, as in the official SDK
    return body


def _scope_data(context: Mapping[str, Any]) -> dict[str, Any]:
    """The scope's data as JSON can send it. A value JSON cannot encode (a ``uuid.UUID`` request id, a date) is sent
    as its repr, with a warning: set in a scope, it would make every create in it fail (``create_task`` raised
    InvalidData about data its caller never gave; ``@track`` and ``.delay()`` ran untracked)."""
    if is_json(context):
        return dict(context)
    odd = sorted(short(key, 60) for key, value in context.items() if not is_json(value))
    log_throttled(f"scope-data:{','.join(odd)[:200]}", 300.0, logging.WARNING, "Task Badger: scope data %s cannot be "
                  "encoded as JSON: each is stored as its repr; set strings, numbers, lists or dicts in the scope "
                  "(scope[key] = str(value))", ", ".join(odd) or "(a key that is not text)")
    return jsonable(dict(context))


def _is_status(value: Any) -> bool:
    try:
        StatusEnum.coerce(value)
    except ValueError:
        return False
    return True


#: A field ``before_create`` may set -> (whether the API takes the value, what it takes).
_HOOK_CHECKS: dict[str, tuple[Any, str]] = {
    "value": (is_count, "a whole number of 0 or more"),
    "value_max": (is_count, "a whole number of 0 or more"),
    "stale_timeout": (is_whole_seconds, "a whole number of seconds of 1 or more"),
    "max_runtime": (is_whole_seconds, "a whole number of seconds of 1 or more"),
    "status": (_is_status, "a status: " + ", ".join(s.value for s in StatusEnum)),
}


def _hook_fields(name: str, given: Mapping[str, Any], returned: Any) -> dict[str, Any]:
    """What ``before_create`` returned, as fields the API takes. The hook is the user's code, so each field it set
    is checked here: what the API would refuse is left out (for a name, the task's own is kept; in data, what JSON
    cannot encode is sent as text), said once per field, naming the hook, and the task is still created. Before,
    the create was refused with a 400 that named the field (``value``, which the caller gave right) but not the
    hook. Nothing else the hook removed comes back: it may remove what must not leave the process."""
    if not isinstance(returned, Mapping):
        raise InvalidData(f"before_create returned {type(returned).__name__}; it must return the task's fields (a "
                          "dict), or None to skip the task")
    fields = dict(returned)
    for key, value in returned.items():
        if value is None or (key in given and given[key] is value):
            continue  # unset, or not the hook's
        if key == "name":
            if isinstance(value, str) and value.strip() and not has_control_characters(value):
                fields[key] = fitted_name(value)
                continue
            why, fields[key] = "which is not a name (a non-empty text without control characters): the task's own " \
                "name is used", name
        elif key == "data":
            if is_json(value):
                continue
            why, fields[key] = "which JSON cannot encode: what it cannot is sent as text", jsonable(value)
        elif key == "tags":
            problem = tag_map_problem(value)
            if problem is None:
                continue
            kept = {k: v for k, v in value.items() if is_tag_map({k: v})} if isinstance(value, Mapping) else {}
            why = f"which the API refuses ({problem}; it takes names to texts of 2 to 255 characters): " + (
                "the other tags are sent" if kept else "no tags are sent")
            fields[key] = kept or None
        elif key in _HOOK_CHECKS and not _HOOK_CHECKS[key][0](value):
            why = f"which the API refuses (it takes {_HOOK_CHECKS[key][1]}): the field is left out"
            del fields[key]
        else:
            continue
        log_once(f"before-create:{key}", logging.ERROR, "Task Badger: before_create set %s to %s, %s. Fix the hook "
                 "(TASKBADGER['BEFORE_CREATE'] or init(before_create=...)).", key, short(value, 80), why)
    if not fields.get("name"):
        fields["name"] = name  # required: the API refuses a task without one
    return fields


def create(name: str, fields: Mapping[str, Any], monitor_id: str | None = None, deadline: Deadline | None = None,
           late_answer: LateAnswer | None = None) -> Task:
    """Create a task from already-collected fields (``create_body`` applied here), before ``deadline``
    (the configured call deadline when None).

    Raises CreateSkipped when ``before_create`` says not to create it."""
    return Task(endpoints.create(create_body_or_skip(name, fields), monitor_id, deadline, late_answer))


def create_body_or_skip(name: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """``create_body``, or CreateSkipped when ``before_create`` says not to create the task."""
    body = create_body(name, fields)
    if body is None:
        raise CreateSkipped(f"before_create returned nothing: task {short(name)} was not created")
    return body


#: Fields ``Task.update`` takes besides its parameters: the lifecycle's (not the official SDK's API).
_INTERNAL_FIELDS = frozenset({"start_time", "end_time", "merge_data"})


class Task:
    """A Task Badger task. Field values (``task.status``, ``task.value``…) are attributes.

    Create one with ``Task.create(name, ...)`` or fetch one with ``Task.get(id)``.
    """

    def __init__(self, task: TaskModel | Mapping[str, Any]) -> None:
        self._task = task if isinstance(task, TaskModel) else TaskModel.from_dict(dict(task))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # ``@app.task(base=taskbadger.Task)`` (a slip for ``taskbadger.celery.Task``): Celery builds the task's
        # class on this one, and it failed at the first use with "missing 1 required positional argument".
        if cls.__dict__.get("_decorated") is True and "run" in cls.__dict__:
            raise TypeError(f"taskbadger.Task is a Task Badger task, not a Celery task class: write "
                            f"@app.task(base=taskbadger.celery.Task) for {cls.__dict__.get('name') or cls.__name__}")
        super().__init_subclass__(**kwargs)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
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
        """Create a task in Task Badger and return it. The positional order is the official SDK's.

        Raises:
            CreateSkipped: ``before_create`` returned None.
            InvalidData: a value cannot be sent (e.g. ``data`` JSON cannot encode).
            ValueError: an unknown status.
            TaskbadgerException subclasses: the API refused or could not be reached.
        """
        fields = dict(
            status=StatusEnum.coerce(status), value=value, value_max=value_max, data=data,
            max_runtime=max_runtime, stale_timeout=stale_timeout, tags=tags, queue=queue,
            external_id=external_id, parent=parent, start_time=start_time, end_time=end_time,
            actions=action_dicts(actions, stacklevel=2),
        )
        return create(name, fields, monitor_id)

    @classmethod
    def get(cls, task_id: str) -> Task:
        return cls(endpoints.get(task_id))

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
        object with a ``merge(existing, new)`` method; empty ``data`` leaves it unchanged, as in the official
        SDK (``update(data=extra or {})`` must not wipe it). An unknown keyword is a TypeError.
        """
        unknown = set(extra) - _INTERNAL_FIELDS
        if unknown:
            raise TypeError(f"update() got an unexpected keyword argument {sorted(unknown)[0]!r}")
        data = given_data(data)
        if data is not None and data_merge_strategy is not None:
            if hasattr(data_merge_strategy, "merge"):
                data = data_merge_strategy.merge(self._task.data, data)
            elif data_merge_strategy == "default":
                data = DefaultMergeStrategy().merge(self._task.data, data)
            else:
                raise InvalidData(f"Unknown data_merge_strategy {data_merge_strategy!r}: use 'default' or an object "
                                 "with a merge(existing, new) method")
        fields = dict(
            name=name, status=status, value=value, value_max=value_max, data=data, max_runtime=max_runtime,
            stale_timeout=stale_timeout, tags=tags, queue=queue, external_id=external_id, parent=parent, **extra,
        )
        if actions:
            fields["actions"] = action_dicts(actions, stacklevel=2)
        self._send({k: v for k, v in fields.items() if v is not None})

    def _send(self, fields: dict[str, Any], deadline: Deadline | None = None) -> None:
        """PATCH ``fields`` (with what this process still has queued for the task, sent first) before
        ``deadline`` (the configured call deadline when None), and refresh this object from the answer."""
        task_id = self._task.id
        config = get_config()
        # One deadline for the whole call, set now: the wait for the senders' request in flight for this task
        # (sent first, to keep the order) is part of it, not on top of it.
        if deadline is None and config is not None:
            deadline = Deadline.for_call(config.timeout)
        queued = pending.claim(task_id, deadline.remaining() if deadline is not None else 0.0)
        if config is not None and deadline is not None and deadline.expired():
            pending.unclaim(task_id, queued)  # still in flight: sending now could overtake it
            raise ReadTimeout(f"{config.host} did not answer within {deadline.seconds:g} s: the update sent before "
                              f"for task {short(task_id)} is still waiting for its answer, so this one was not sent")
        try:
            # Fields that say "as the task is now" (merge into its data, drop keys, only if...), queued or given
            # here, are read against the task on the server: this object holds what was carried, which may not say
            # it. None of them is an API field: they never go out as they are.
            combined = merge.queued(queued, fields) if queued else fields
            on_server = merge.reads_current(combined)
            current = (lambda: endpoints.get(task_id, deadline)) if on_server else (lambda: self._task)
            body = merge.resolve(combined, current)
            self._task = endpoints.update(task_id, body or {}, deadline)
        except Exception:
            pending.unclaim(task_id, queued)  # not lost: the senders send them later
            raise

    def safe_update(self, **kwargs: Any) -> bool:
        """Like ``update`` but logs a warning instead of raising. Returns whether it was sent."""
        try:
            self.update(**kwargs)
            return True
        except Exception as err:
            log.warning("Task Badger: could not update task %s: %s", short(self._task.id), err)
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

    def error(self, value: int | None = None, data: Any = None, exception: BaseException | str | None = None) -> None:
        """Mark the task failed. With ``exception``, its type, message and traceback go into
        ``data["exception"]`` (a string, as the official SDK's) and ``data["exception_type"]``, and each
        context provider's context under its identifier; keys in ``data`` win; the task's existing data
        is kept. An ``exception`` that is not an exception (a message: ``exception=str(err)``) is recorded as
        ``data["exception"]``, its text, as the official SDK records any."""
        if exception is None and data is None:
            self.update(status=StatusEnum.ERROR, value=value)
            return
        if exception is None:
            failure: dict[str, Any] = {}
        elif isinstance(exception, BaseException):
            failure = {**exception_data(exception), **error_context(exception)}
        else:
            try:
                text = str(exception)
            except Exception:
                text = safe_repr(exception)
            failure = {"exception": text}
        # merged into the task's data as update(data_merge_strategy="default") does (a running job's task whose data
        # was not carried merges it at send time: ``lifecycle.body.RunTask``)
        self.update(status=StatusEnum.ERROR, value=value, data={**failure, **(data or {})},
                    data_merge_strategy="default")

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
        """Set progress, but only when it moved by ``value_step`` since the value Task Badger has (a
        value of 0 or none counts as unset), or ``rate_limit`` seconds passed since the task was last
        updated (Task Badger's ``updated``); either is enough, and neither means always. Returns whether
        an update was sent."""
        due = not value_step and not rate_limit
        if value_step and (not self._task.value or value - self._task.value >= value_step):
            due = True
        if rate_limit and self._seconds_since_update() >= rate_limit:
            due = True
        if due:
            self.update(value=value)
        return due

    def ping(self, rate_limit: float | None = None) -> bool:
        """Tell Task Badger the task is alive (keeps a ``stale_timeout`` from firing). With
        ``rate_limit``, only if that many seconds passed since the task was last updated (Task Badger's
        ``updated``). Returns whether it was sent."""
        if rate_limit and self._seconds_since_update() < rate_limit:
            return False
        self.update()
        return True

    def add_actions(self, actions: list[Any]) -> None:
        """Add per-task actions (deprecated: prefer project-level actions)."""
        self.update(actions=actions)

    def _seconds_since_update(self) -> float:
        updated = self._task.updated
        if updated is None:
            return float("inf")
        now = dt.datetime.now(dt.timezone.utc) if updated.tzinfo else dt.datetime.now()
        return (now - updated).total_seconds()


