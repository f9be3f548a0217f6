"""Celery: the broker's transport (W007), the tasks' ``taskbadger_*`` options (E009, E010), ``MONITORS`` entries
that match no task (W003) or a task that is never tracked (W019), and beat entries without a monitor (I001)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from django.core import checks
from django.core.checks import CheckMessage

from taskbadger.models import monitor_id

from .. import conf
from .common import pattern_error
from .queues import django_tasks_found, names_a_django_task

#: broker URL scheme -> (the module its kombu transport needs, what installs it)
BROKER_PACKAGES: dict[str, tuple[str, str]] = {
    "redis": ("redis", 'pip install "django-taskbadger[redis]"  (or: pip install "celery[redis]")'),
    "rediss": ("redis", 'pip install "django-taskbadger[redis]"  (or: pip install "celery[redis]")'),
    "sentinel": ("redis", 'pip install "django-taskbadger[redis]"  (or: pip install "celery[redis]")'),
    "sqs": ("boto3", 'pip install "celery[sqs]"'),
    "mongodb": ("pymongo", 'pip install "celery[mongodb]"'),
    "zookeeper": ("kazoo", 'pip install "celery[zookeeper]"'),
    "consul": ("consul", 'pip install "celery[consul]"'),
    "azureservicebus": ("azure.servicebus", 'pip install "celery[azureservicebus]"'),
    "confluentkafka": ("confluent_kafka", 'pip install "celery[confluentkafka]"'),
}


def check_broker(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W007: the Celery broker's transport needs a package that is not installed (the worker would
    die at start with a long traceback about a missing module)."""
    from django.conf import settings

    url = getattr(settings, "CELERY_BROKER_URL", None)
    if not isinstance(url, str) or "://" not in url:
        return []
    scheme = url.split("://", 1)[0].split("+")[0].lower()
    needed = BROKER_PACKAGES.get(scheme)
    if needed is None or importlib.util.find_spec(needed[0].split(".")[0]) is not None:
        return []
    return [checks.Warning(
        f"CELERY_BROKER_URL uses the {scheme!r} transport, which needs the {needed[0]!r} package; it is not "
        "installed, so Celery workers cannot start.", hint=f"Install it: {needed[1]}", obj="CELERY_BROKER_URL",
        id="taskbadger.W007")]





_loading = threading.local()


@contextlib.contextmanager
def _not_reentrant() -> Iterator[bool]:
    # Celery's Django fixup runs the system checks while it imports the task modules, which is what
    # these checks trigger: the nested run skips the task checks instead of recursing.
    if getattr(_loading, "active", False):
        yield False
        return
    _loading.active = True
    try:
        yield True
    finally:
        _loading.active = False


def check_celery_tasks(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Check the registered Celery tasks against ``MONITORS``, the beat schedule and the ``taskbadger_*``
    options. Silent when Celery is not installed."""
    if not conf.celery_available():
        return []
    settings = conf.TaskBadgerSettings()
    if not isinstance(settings.raw, (Mapping, type(None))):
        return []
    with _not_reentrant() as first:
        if not first:
            return []
        from celery import current_app

        app = current_app._get_current_object()
        try:
            app.loader.import_default_modules()
            tasks = _tasks_of(app)
        except Exception as err:
            return [_not_imported(app, err)]
        messages: list[CheckMessage] = []
        # the tasks of the process's other apps too (a second app, tasks registered with shared=False on it)
        for other in _other_apps(app):
            try:
                tasks = {**_tasks_of(other), **tasks}  # a name in the current app is its task
            except Exception as err:
                messages.append(_not_imported(other, err))
        monitors = settings.MONITORS if isinstance(settings.MONITORS, Mapping) else {}
        messages += _check_task_options(tasks)
        # a MONITORS entry may name a django.tasks task or a Procrastinate task (periodic jobs) as well
        other_tasks = {name: None for name in django_tasks_found()[0]}
        pro_app = conf.procrastinate_app()
        other_tasks.update({name: task for name, task in (pro_app.tasks if pro_app is not None else {}).items()
                            if not name.startswith(("builtin:", "procrastinate."))})
        kinds = ["Celery task"] + (["django.tasks task"] if conf.django_tasks_available() else []) + (
            ["Procrastinate task"] if pro_app is not None else [])
        messages += _check_monitor_targets(monitors, {**other_tasks, **tasks}, _no_project_app(app), kinds)
        messages += _check_monitored_untracked(settings.CELERY, monitors, tasks, app.conf.beat_schedule or {})
        if settings.ENABLED is not False:
            messages += _check_beat(app, monitors, tasks)
        return messages


def _not_imported(app: Any, err: Exception) -> CheckMessage:
    return checks.Warning(
        f"The Celery task modules of app {app.main!r} could not be imported, so Task Badger did not check "
        f"the tasks: {type(err).__name__}: {err}",
        hint="Fix the import error (try `celery -A <project> inspect registered`).", obj="celery",
        id="taskbadger.W006")


def _tasks_of(app: Any) -> dict[str, Any]:
    """The tasks registered in ``app``, Celery's own (``celery.*``) left out."""
    return {name: task for name, task in app.tasks.items() if not name.startswith("celery.")}


def _other_apps(current: Any) -> list[Any]:
    """The process's Celery apps other than ``current`` whose tasks can be read: finalized ones, or ones that
    finalize on first use (reading ``tasks`` does so, as their first ``.delay()`` would); not one made with
    ``autofinalize=False`` and not yet finalized, which would raise."""
    from taskbadger.celery.fields import active_apps

    return [other for other in active_apps()
            if other is not current and (getattr(other, "finalized", False) or getattr(other, "autofinalize", True))]


def _check_task_options(tasks: Mapping[str, Any]) -> list[CheckMessage]:
    from taskbadger.celery.options import KWARGS_KEY, OPTIONS, PREFIX, check_option, decorator_options

    messages = []
    for name, task in sorted(tasks.items()):
        bundle = getattr(task, KWARGS_KEY, None)
        if bundle is not None and not isinstance(bundle, Mapping):
            messages.append(checks.Error(f"Task {name!r}: {KWARGS_KEY} must be a dict, got {type(bundle).__name__}.",
                                         hint=f'For example: {KWARGS_KEY}={{"value_max": 100}}.', obj=name,
                                         id="taskbadger.E010"))
        try:
            options = decorator_options(task)
        except Exception:
            continue
        for option, value in options.items():
            spec = OPTIONS.get(option)
            if spec is None:
                match = conf.closest(option, OPTIONS, upper=False)
                hint = (f"Did you mean {PREFIX}{match}? " if match else "") + "Known options: " + ", ".join(
                    PREFIX + o for o in OPTIONS) + "."
                messages.append(checks.Error(f"Task {name!r} has an unknown option {PREFIX}{option}.", hint=hint,
                                             obj=name, id="taskbadger.E009"))
            elif not check_option(option, value)[0]:
                messages.append(checks.Error(f"Task {name!r}: {PREFIX}{option} must be {spec[1]}, got {value!r}.",
                                             hint=f"Fix the {PREFIX}{option} argument of the task decorator.",
                                             obj=name, id="taskbadger.E010"))
    return messages


def _no_project_app(app: Any) -> bool:
    """Whether ``app`` is the app Celery makes when no app was made in this process (the project's module is not
    imported by the project package's ``__init__.py``, as Celery's Django guide has it): named ``default``, with no
    fixups. Not "Celery's default app": the Django fixup makes the project's app the default one in every project
    laid out as the guide says, and the hint was given there too."""
    return getattr(app, "main", None) == "default" and not getattr(app, "fixups", None)


#: What to say when the tasks were looked up in Celery's default app.
NO_PROJECT_APP = ("No Celery app of this project is loaded in this process, so its tasks are not registered: "
                  "import it in the project package's __init__.py (from .celery import app as celery_app), as "
                  "Celery's Django guide does. Without it, .delay() also publishes on Celery's default app.")


def _check_monitor_targets(monitors: Mapping[str, Any], tasks: Mapping[str, Any],
                           no_project_app: bool = False, kinds: list[str] | None = None) -> list[CheckMessage]:
    from taskbadger.systems.celery import full_match

    messages = []
    for pattern in monitors:
        if not isinstance(pattern, str) or pattern_error(pattern) is not None:
            continue  # reported as E003 / E007
        if not any(full_match(pattern, name) for name in tasks) and not names_a_django_task(pattern):
            suggestion = conf.closest(pattern, tasks, upper=False)
            names = kinds or ["Celery task"] + (["django.tasks task"] if conf.django_tasks_available() else [])
            messages.append(checks.Warning(
                f"TASKBADGER['MONITORS'] entry {pattern!r} matches no registered "
                + (", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]) + ".",
                # a close name (a django.tasks or Procrastinate task) is the likelier mistake than no Celery app
                hint=NO_PROJECT_APP if no_project_app and not suggestion else (
                    f"Did you mean {suggestion!r}? " if suggestion else "")
                + "Use the task's registered name (module.function unless name= is given) or a regular expression "
                "that matches the whole name.", obj="TASKBADGER['MONITORS']", id="taskbadger.W003"))
    return messages


def _check_monitored_untracked(celery: Any, monitors: Mapping[str, Any], tasks: Mapping[str, Any],
                               schedule: Any = None) -> list[CheckMessage]:
    """A Celery task with a monitor that is never tracked (no ``base=Task``, not auto-tracked, or
    ``taskbadger_track=False``): no run of it is created in Task Badger, so its monitor never hears from it."""
    from taskbadger.exceptions import ConfigurationError
    from taskbadger.systems.celery import CelerySystemIntegration

    if not isinstance(celery, Mapping):
        return []  # E003
    try:
        system = CelerySystemIntegration(**conf.queue_rules(celery))
    except (ConfigurationError, TypeError):
        return []  # E003 / E007 say what is wrong with CELERY
    # tasks whose beat entries track them (``"options": {"headers": {"taskbadger_track": True}}``)
    tracked_by_beat = {spec.get("task") for spec in (schedule or {}).values()
                       if isinstance(spec, Mapping) and _entry_options(spec).get("track") is True}
    messages = []
    for name, task in sorted(tasks.items()):
        if name in tracked_by_beat:
            continue
        monitor = _monitor_for(name, monitors, tasks)
        if not isinstance(monitor, str):
            continue  # no monitor, or one left unset on purpose
        why = _why_untracked(system, name, task)
        if why is None:
            continue
        messages.append(checks.Warning(
            f"Celery task {name!r} has a Task Badger monitor but is not tracked ({why}): its runs are never "
            "created in Task Badger, so the monitor never hears from it and reports every run as missed.",
            hint="Track it: @shared_task(base=Task) (from taskbadger_django import Task), or "
                 "TASKBADGER['CELERY']['AUTO_TRACK'] = True with INCLUDES/EXCLUDES that let it through; or remove "
                 "its monitor.",
            obj=name, id="taskbadger.W019"))
    messages += _check_beat_entries_untracked(system, monitors, tasks, schedule or {})
    return messages


def _check_beat_entries_untracked(system: Any, monitors: Mapping[str, Any], tasks: Mapping[str, Any],
                                  schedule: Mapping[str, Any]) -> list[CheckMessage]:
    """W019 for a beat entry whose own options give its runs a monitor, or opt them out of tracking while the task
    has one: the task's own rules (checked above) are not what decides for those runs."""
    messages = []
    for entry, spec in sorted(schedule.items()):
        name = spec.get("task") if isinstance(spec, Mapping) else None
        if not isinstance(name, str) or name not in tasks:
            continue  # not a task of this process: W003 and E010 speak of what can be known
        options = _entry_options(spec)
        own, track = options.get("monitor_id"), options.get("track")
        if own is None and track is not False:
            continue
        monitor = own if own is not None else _monitor_for(name, monitors, tasks)
        if not isinstance(monitor, str) or monitor_id(monitor) is None:
            continue  # no monitor, or one that is no id (E006, E010)
        why = _why_untracked(system, name, tasks[name], track)
        if why is None:
            continue
        messages.append(checks.Warning(
            f"Celery beat entry {entry!r} runs {name!r} with a Task Badger monitor, but those runs are not tracked "
            f"({why}): the monitor never hears from them and reports every run as missed.",
            hint="Track the task (@shared_task(base=Task), or AUTO_TRACK with INCLUDES that let it through), or "
                 "give the entry options={'headers': {'taskbadger_track': True}}; or remove the monitor.",
            obj="CELERY_BEAT_SCHEDULE", id="taskbadger.W019"))
    return messages


def _why_untracked(system: Any, name: str, task: Any, entry_track: Any = None) -> str | None:
    """Why the runs of ``task`` are not tracked, or None when they are: a beat entry's ``taskbadger_track`` decides
    for its runs, else the decorator's, else ``base=Task`` and the ``CELERY`` rules."""
    from taskbadger.celery.fields import uses_base_class
    from taskbadger.celery.options import decorator_options

    if entry_track is not None:
        track, whose = entry_track, "its options have"
    else:
        try:
            track = decorator_options(task).get("track")
        except Exception:
            track = None
        whose = "its decorator has"
    if track is True or (track is not False and (uses_base_class(task) or system.track_task(name))):
        return None
    if track is False:
        return f"{whose} taskbadger_track=False"
    return "it does not use base=Task and TASKBADGER['CELERY'] does not auto-track it"


def _monitor_for(task_name: str, monitors: Mapping[str, Any], tasks: Mapping[str, Any]) -> Any:
    """The monitor a task would be tracked with: its own option, else the integration's rule."""
    from taskbadger.celery.options import decorator_options
    from taskbadger.systems.celery import CelerySystemIntegration, full_match

    task = tasks.get(task_name)
    if task is not None:
        try:
            monitor = decorator_options(task).get("monitor_id")
        except Exception:
            monitor = None
        if monitor:
            return monitor
    usable = {p: m for p, m in monitors.items() if isinstance(p, str) and pattern_error(p) is None}
    valid = {p: m for p, m in usable.items() if monitor_id(m) is not None}
    if any(full_match(p, task_name) for p in usable if p not in valid):
        return True  # declared: left unset on purpose (None), or not an id (E006 says so)
    return CelerySystemIntegration(monitors=valid).monitor_for(task_name)


def _entry_options(spec: Any) -> dict[str, Any]:
    """The ``taskbadger_*`` options a beat entry gives its runs (``options``: the base class's arguments, or our
    headers, which any task takes), as ``apply_async`` reads them."""
    from taskbadger.celery.options import pop_options

    options = spec.get("options") if isinstance(spec, Mapping) else None
    if not isinstance(options, Mapping):
        return {}
    headers = options.get("headers")
    found = pop_options(dict(headers)) if isinstance(headers, Mapping) else {}
    found.update(pop_options(dict(options)))
    return found


def _check_beat(app: Any, monitors: Mapping[str, Any], tasks: Mapping[str, Any]) -> list[CheckMessage]:
    schedule = app.conf.beat_schedule or {}
    messages = []
    for entry, spec in schedule.items():
        task_name = spec.get("task") if isinstance(spec, Mapping) else None
        own = _entry_options(spec).get("monitor_id")
        if own is not None and monitor_id(own) is None:
            messages.append(checks.Error(
                f"Celery beat entry {entry!r}: its taskbadger monitor_id must be a monitor id (a UUID), got {own!r}; "
                "its runs are tracked without it.",
                hint="Copy the monitor id from the monitor's page in Task Badger.", obj="CELERY_BEAT_SCHEDULE",
                id="taskbadger.E010"))
            continue
        if isinstance(task_name, str) and not task_name.startswith("celery.") and \
                not own and not _monitor_for(task_name, monitors, tasks):
            messages.append(checks.Info(
                f"Celery beat runs {task_name!r} (entry {entry!r}) with no Task Badger monitor.",
                hint=f"Create a monitor in Task Badger and add {task_name!r}: '<monitor id>' to "
                     "TASKBADGER['MONITORS'] so that a missed or failed run raises an alert.",
                obj="CELERY_BEAT_SCHEDULE", id="taskbadger.I001"))
    return messages
