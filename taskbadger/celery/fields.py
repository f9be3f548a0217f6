"""What a tracked Celery task is created with: the Celery side of ``lifecycle.create_fields`` (its options,
its rules, its arguments as kombu encodes them, canvas names, workflow successors).

Options reach here already checked (``options.validate``); the integration's rules come from the
configured ``CelerySystemIntegration`` (``celery_system()``).
"""

from __future__ import annotations

from typing import Any

from .. import lifecycle
from ..config import get_config
from .options import decorator_options, recorded_args, validate
from .state import publish_slot, running_tracking

#: Set on the ``taskbadger.celery.Task`` class: tasks that use it are tracked without any rule.
BASE_CLASS_MARK = "_taskbadger_tracks_itself"


def celery_system() -> Any:
    config = get_config()
    return config.system("celery") if config else None


def publishing_app(reply_to: Any) -> Any:
    """The Celery app whose message is being published in this thread. ``before_task_publish`` names only the task
    (its ``sender``), and the app current in the thread may be another one (a second app of the project, a
    library's own, one made current with ``app.set_current()``): its registry may not hold the task at all. The
    base class's ``apply_async`` gives its task's own app (a group's and a chain's tasks are published through it
    too); else the app whose ``thread_oid`` the message carries as its ``reply_to``, which ``app.send_task`` sets
    when its caller gives none (any task's ``apply_async``, ``send_task`` by name); else the current app."""
    import celery

    slot = publish_slot.get()
    if slot is not None and slot.app is not None:
        return slot.app
    current = celery.current_app._get_current_object()
    if isinstance(reply_to, str) and reply_to and current.thread_oid != reply_to:
        for app in active_apps():
            if getattr(app, "thread_oid", None) == reply_to:
                return app
    return current


def active_apps() -> list[Any]:
    """The Celery apps of this process (Celery's own list of them, which it keeps for its ``set_current``); empty
    when this Celery keeps none (callers fall back to the current app)."""
    from celery import _state

    try:
        return list(_state._get_active_apps())
    except (AttributeError, RuntimeError):  # not in this Celery; an app made in another thread meanwhile
        return []


def registered_task(name: str, app: Any) -> Any:
    """The task class ``app`` publishes as ``name`` (``publishing_app``), or None."""
    return app.tasks.get(name)


def uses_base_class(celery_task: Any) -> bool:
    return getattr(celery_task, BASE_CLASS_MARK, False) is True


def checked_decorator_options(celery_task: Any, task_name: str) -> dict[str, Any]:
    """The decorator's options, checked once per task class."""
    if celery_task is None:
        return {}
    cls = type(celery_task)
    checked = cls.__dict__.get("_taskbadger_checked_options")
    if checked is None:
        checked = validate(task_name, decorator_options(celery_task))
        try:
            cls._taskbadger_checked_options = checked
        except (AttributeError, TypeError):
            pass
    return checked


def create_fields(name: str, options: dict[str, Any], system: Any, celery_id: str | None, args: Any,
                  kwargs: Any, queue: str | None, canvas_data: dict | None = None,
                  display_name: str | None = None) -> dict[str, Any]:
    """The create body of a task (see ``lifecycle.create_fields``). ``name`` is the Celery task's (the
    integration's rules apply to it); ``display_name`` the task's name when it differs."""
    return lifecycle.create_fields(name, options, system, celery_id, queue, lambda: recorded_args(args, kwargs),
                                   canvas_data, display_name,
                                   inherit_parent=not _is_workflow_successor(name, celery_id))


_NONE: frozenset[str] = frozenset()


def successor_names(request: Any) -> frozenset[str]:
    """The tasks Celery will publish after this one ends: its chain's next link (a group or chord there: their
    tasks), its ``link`` callbacks and old-style ``link_error`` errbacks, and the body of the chord it is a header
    task of (the last one to finish publishes it; a header task that fails, the body's errbacks). By Celery id
    where Celery gave them one already (a chain's links, a chord's body), so that the same task published from
    the body is still its child; else by name."""
    chain, callbacks = getattr(request, "chain", None), getattr(request, "callbacks", None)
    errbacks, chord = getattr(request, "errbacks", None), getattr(request, "chord", None)
    if not chain and not callbacks and not errbacks and not chord:
        return _NONE
    names: set[str] = set()
    for signature in [*(chain or ()), *(callbacks or ()), *(errbacks or ()), chord, *_chord_errbacks(chord)]:
        _collect_names(signature, names, 0)
    return frozenset(names)


def _chord_errbacks(body: Any, depth: int = 0) -> list[Any]:
    """The ``link_error`` errbacks of a chord's body (of each task of a group body): Celery publishes them from
    the header task whose failure fails the chord."""
    if body is None or depth > 1:
        return []
    get = body.get if isinstance(body, dict) else lambda key, default=None: getattr(body, key, default)
    options, kwargs = get("options"), get("kwargs")
    found = list((options.get("link_error") if isinstance(options, dict) else None) or ())
    tasks = kwargs.get("tasks") if get("task") == "celery.group" and isinstance(kwargs, dict) else None
    for task in tasks if isinstance(tasks, (list, tuple)) else ():
        found.extend(_chord_errbacks(task, depth + 1))
    return found


#: How deep canvas signatures nested in one another are looked into (their message is bounded anyway).
_MAX_DEPTH = 8


def _collect_names(signature: Any, names: set[str], depth: int) -> None:
    """The Celery ids (else task names) of a signature, and of the tasks a group, chord or chain signature holds."""
    if signature is None or depth > _MAX_DEPTH:
        return
    get = signature.get if isinstance(signature, dict) else lambda key, default=None: getattr(
        signature, key, default)
    name, options = get("task"), get("options")
    celery_id = options.get("task_id") if isinstance(options, dict) else None
    if isinstance(celery_id, str) and celery_id:
        names.add(celery_id)
    elif isinstance(name, str) and name:
        names.add(name)
    kwargs = get("kwargs")
    if not isinstance(kwargs, dict) or not isinstance(name, str) or not name.startswith("celery."):
        return
    for key in ("tasks", "header"):  # celery.group / celery.chain, celery.chord
        inner = kwargs.get(key)
        if isinstance(inner, dict):  # a chord's header may be a group signature
            _collect_names(inner, names, depth + 1)
        elif isinstance(inner, (list, tuple)):
            for item in inner:
                _collect_names(item, names, depth + 1)
    _collect_names(kwargs.get("body"), names, depth + 1)


def _is_workflow_successor(name: str, celery_id: str | None) -> bool:
    """A chain's next task and ``link`` callbacks are published by the worker after the body
    returned: they follow the running task, they are not its children. The names are taken when the
    task starts, because some Celery versions pop the next link off ``request.chain`` before
    publishing it."""
    running = running_tracking()
    # once it replaced itself (``self.replace``), what it publishes is its replacement: its children
    return running is not None and (name in running.successors or celery_id in running.successors) \
        and not running.replaced
