"""Context that rides along with task creation: scope data/tags and the running task.

Both live in ``contextvars`` so that threads and asyncio tasks each see their own, and nested
``with`` blocks restore what was there before on exit. As in the official SDK, the main thread's scope
is the process's: a thread starts with a copy of it as it is when the thread first uses a scope, so
tags set in the main thread (``init(tags=...)``, ``current_scope().tag(...)`` outside a ``with``
block) reach tasks created in threads started later.
"""

from __future__ import annotations

import contextvars
import copy
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ._runtime import log_throttled
from .models import MAX_TAG_LENGTH, MIN_TAG_LENGTH, tag_map_problem

#: At most one warning per tag name this often about scope tags the API would refuse.
TAG_WARN_INTERVAL = 300.0


class _ScopeState:
    __slots__ = ("context", "tags", "deferred")

    def __init__(self, context: dict[str, Any] | None = None, tags: dict[str, str] | None = None,
                 deferred: dict[str, Callable[[], Any]] | None = None) -> None:
        self.context = context if context is not None else {}
        self.tags = tags if tags is not None else {}
        #: data whose value is computed only when a task is created (``Scope.defer``)
        self.deferred = deferred if deferred is not None else {}

    def data(self) -> dict[str, Any]:
        """The scope's data for a task created now: the deferred values computed (one that raises or gives None is
        left out), then the values set."""
        if not self.deferred:
            return self.context
        computed = {}
        for key, compute in self.deferred.items():
            if key in self.context:
                continue
            try:
                value = compute()
            except Exception as err:
                log_throttled(f"scope-deferred:{key!r}"[:200], TAG_WARN_INTERVAL, logging.WARNING,
                              "Task Badger: scope data %r could not be computed (%s: %s): tasks are created without it",
                              key, type(err).__name__, err)
                continue
            if value is not None:
                computed[key] = value
        return {**computed, **self.context}


_scope_state: contextvars.ContextVar[_ScopeState] = contextvars.ContextVar("taskbadger_scope")
_main = _ScopeState()  # the main thread's scope outside any ``with`` block: new threads start from it


def scope_state() -> _ScopeState:
    try:
        return _scope_state.get()
    except LookupError:
        if threading.current_thread() is threading.main_thread():
            state = _main
        else:
            state = _ScopeState(copy.deepcopy(_main.context), dict(_main.tags), dict(_main.deferred))
        _scope_state.set(state)
        return state


class Scope:
    """Data and tags merged into every task created while it is current.

    ``with taskbadger.current_scope() as scope:`` starts a nested scope (a copy of the enclosing
    one); leaving the block restores the enclosing scope. Values given to ``create_task`` win.
    """

    def __init__(self) -> None:
        self._tokens: list[contextvars.Token[_ScopeState]] = []

    @property
    def context(self) -> dict[str, Any]:
        return scope_state().context

    @property
    def tags(self) -> dict[str, str]:
        return scope_state().tags

    def __enter__(self) -> Scope:
        outer = scope_state()
        inner = _ScopeState(copy.deepcopy(outer.context), dict(outer.tags), dict(outer.deferred))
        self._tokens.append(_scope_state.set(inner))
        return self

    def __exit__(self, *exc_info: Any) -> None:
        _scope_state.reset(self._tokens.pop())

    def __setitem__(self, key: str, value: Any) -> None:
        self.context[key] = value

    def __getitem__(self, key: str) -> Any:
        return self.context[key]

    def update(self, data: dict[str, Any]) -> None:
        self.context.update(data)

    def defer(self, key: str, compute: Callable[[], Any]) -> None:
        """Give tasks created in this scope ``key`` in their data, computed by ``compute()`` only when one is created
        (not at all when none is): a value that costs something to get (a request's user, which loads the session).
        A value set with ``scope[key]`` wins; one that is None, or whose ``compute`` raises, is left out."""
        scope_state().deferred[key] = compute

    def tag(self, tags: dict[str, str]) -> None:
        """Add ``tags`` to every task created in this scope. A tag the API would refuse (not a string of
        ``MIN_TAG_LENGTH`` to ``MAX_TAG_LENGTH`` characters: a user id ``"7"``) is left out with a warning: sent, it
        would make the API refuse the whole create, and the task would run untracked."""
        if not isinstance(tags, Mapping):
            log_throttled("scope-tags", TAG_WARN_INTERVAL, logging.WARNING, "Task Badger: scope.tag() takes a dict "
                          "of tag names to strings, not %s; nothing was tagged", type(tags).__name__)
            return
        for name, value in tags.items():
            problem = tag_map_problem({name: value})
            if problem is None:
                self.tags[name] = value
            else:
                log_throttled(f"scope-tag:{name!r}", TAG_WARN_INTERVAL, logging.WARNING,
                              "Task Badger: scope tag left out (%s): the API takes tags of %d to %d characters; "
                              "tasks are created without it", problem, MIN_TAG_LENGTH, MAX_TAG_LENGTH)

    def clear(self) -> None:
        """Forget this scope's data and tags."""
        state = scope_state()
        state.context.clear()
        state.tags.clear()
        state.deferred.clear()


def current_scope() -> Scope:
    """The scope of the current thread / context."""
    return Scope()


# -- the tracked task running in this context (for parent/child nesting) --------------------------

# (id of the running task, id of its parent or None)
_running: contextvars.ContextVar[tuple[str, str | None | Callable[[], str | None]] | None] = contextvars.ContextVar(
    "taskbadger_running_task", default=None
)


def enter_task(task_id: str, parent: str | None | Callable[[], str | None] = None) -> contextvars.Token:
    """Mark ``task_id`` as running here; tasks created meanwhile become its children. ``parent``: its own parent, or
    what gives it when it was not carried to this process (asked only when a task is created here)."""
    return _running.set((task_id, parent))


def exit_task(token: contextvars.Token) -> None:
    _running.reset(token)


def parent_for_new_task() -> str | None:
    """The parent a task created right now should get.

    Tasks nest one level deep, so a task created inside a child becomes the child's sibling.
    """
    running = _running.get()
    if running is None:
        return None
    task_id, parent = running
    return _resolved(parent) or task_id


def parent_for_next_task() -> str | None:
    """The parent of a task that follows the running one in a workflow (a chain's next link, a chord's body,
    a callback): the running task's own parent, so that a workflow started inside a task is its children."""
    running = _running.get()
    return _resolved(running[1]) if running is not None else None


def _resolved(parent: Any) -> str | None:
    return parent() if callable(parent) else parent
