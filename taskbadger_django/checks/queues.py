"""The other queues: Procrastinate (W012, W013, E017), django.tasks on RQ (W018), django.tasks' tasks modules
(W010), patterns that match no task (W011, both queues), and their tasks with a monitor that are never tracked
(W019)."""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django.core import checks
from django.core.checks import CheckMessage

from taskbadger.config import import_string

from .. import conf
from .common import configured_monitor, pattern_error, patterns

#: The first Procrastinate with worker middleware, which the integration needs.
PROCRASTINATE_MIN = (3, 9)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


#: The RQ worker class that ends the tasks of jobs whose work horse was killed or stopped (docs/django-tasks.md).
RQ_WORKER_CLASS = "taskbadger.django_tasks.rq.Worker"


def check_django_tasks_rq(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W018: a ``TASKS`` backend is ``django_tasks_rq``'s and ``RQ["WORKER_CLASS"]`` (``django_rq``'s setting, which
    ``manage.py rqworker`` reads) is not ``taskbadger.django_tasks.rq.Worker`` or a subclass of it: the task of a job
    whose work horse is killed, or that is stopped on request, stays ``processing`` for ever."""
    from django.conf import settings as django_settings

    if conf.TaskBadgerSettings().ENABLED is False:
        return []
    tasks = getattr(django_settings, "TASKS", None)
    if not isinstance(tasks, Mapping):
        return []
    aliases = [alias for alias, backend in tasks.items()
               if isinstance(backend, Mapping) and _is_rq_backend(backend.get("BACKEND"))]
    if not aliases:
        return []
    rq_setting = getattr(django_settings, "RQ", None)
    worker_class = rq_setting.get("WORKER_CLASS") if isinstance(rq_setting, Mapping) else None
    if _is_our_rq_worker(worker_class):
        return []
    if worker_class is None:
        fix = (f'Add RQ = {{"WORKER_CLASS": "{RQ_WORKER_CLASS}"}} to your settings (or "WORKER_CLASS": '
               f'"{RQ_WORKER_CLASS}" to your RQ setting).')
    else:
        name = worker_class if isinstance(worker_class, str) else f"{worker_class.__module__}.{worker_class.__name__}"
        fix = (f'Make your worker class {name} a subclass of {RQ_WORKER_CLASS}, or set RQ["WORKER_CLASS"] = '
               f'"{RQ_WORKER_CLASS}".')
    return [checks.Warning(
        f"TASKS[{aliases[0]!r}] is django_tasks_rq's RQ backend, but RQ['WORKER_CLASS'] is not Task Badger's RQ "
        f"worker class: the Task Badger task of a job whose work horse is killed (SIGKILL, the kernel's OOM killer, "
        f"RQ at the job's timeout + 60 s) or that is stopped with RQ's stop-job command stays 'processing' for ever.",
        hint=f"{fix} A worker started with rqworker --worker-class {RQ_WORKER_CLASS} has it too (silence this check "
             f"with SILENCED_SYSTEM_CHECKS = ['taskbadger.W018'] then). See docs/django-tasks.md.",
        obj="RQ['WORKER_CLASS']", id="taskbadger.W018")]


def _is_rq_backend(backend: Any) -> bool:
    """Whether a ``TASKS`` ``BACKEND`` is ``django_tasks_rq``'s ``RQBackend`` or a subclass of it."""
    if not isinstance(backend, str):
        return False
    if backend.startswith("django_tasks_rq."):
        return True
    try:
        from django_tasks_rq import RQBackend

        cls = import_string(backend)
        return isinstance(cls, type) and issubclass(cls, RQBackend)
    except Exception:  # no django_tasks_rq, or a backend that cannot be imported (Django reports that itself)
        return False


def _is_our_rq_worker(worker_class: Any) -> bool:
    """Whether ``RQ["WORKER_CLASS"]`` (a class or its dotted path) is ours or a subclass of ours; also when it cannot
    be told (it cannot be imported: ``rqworker`` fails on it anyway)."""
    if worker_class is None:
        return False
    if worker_class == RQ_WORKER_CLASS:
        return True
    try:
        from taskbadger.django_tasks.rq import Worker

        cls = import_string(worker_class) if isinstance(worker_class, str) else worker_class
    except Exception:
        return True
    return isinstance(cls, type) and issubclass(cls, Worker)


def check_procrastinate(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W012: ``TASKBADGER["PROCRASTINATE"]`` without ``procrastinate.contrib.django``; E017: a Procrastinate
    without worker middleware; W013: ``taskbadger_django`` ready before Procrastinate's app exists."""
    from django.apps import apps

    settings = conf.TaskBadgerSettings()
    installed = apps.is_installed(conf.PROCRASTINATE_APP)
    if not installed:
        if settings.user.get("PROCRASTINATE") is not None:
            return [checks.Warning(
                "TASKBADGER['PROCRASTINATE'] is set but 'procrastinate.contrib.django' is not in INSTALLED_APPS, "
                "so it applies to nothing.",
                hint="Add 'procrastinate.contrib.django' to INSTALLED_APPS (before 'taskbadger_django'), or remove "
                     "the setting. A Procrastinate app outside Django: taskbadger.init(systems=["
                     "ProcrastinateSystemIntegration(app)]). See docs/procrastinate.md.",
                obj="TASKBADGER['PROCRASTINATE']", id="taskbadger.W012")]
        return []
    from importlib.metadata import version

    found = version("procrastinate")
    if _version(found) < PROCRASTINATE_MIN:
        return [checks.Error(
            f"Procrastinate {found} is installed; tracking its jobs needs 3.9 or later (worker middleware).",
            hint='pip install "django-taskbadger[procrastinate]"  (or: pip install "procrastinate>=3.9"). '
                 "See docs/procrastinate.md.", obj=conf.PROCRASTINATE_APP, id="taskbadger.E017")]
    order = [config.name for config in apps.get_app_configs()]
    if order.index("taskbadger_django") < order.index(conf.PROCRASTINATE_APP):
        return [checks.Warning(
            "'taskbadger_django' is listed before 'procrastinate.contrib.django' in INSTALLED_APPS: Procrastinate's "
            "app does not exist yet when Task Badger is configured, so its jobs are not tracked.",
            hint="Move 'taskbadger_django' after 'procrastinate.contrib.django' in INSTALLED_APPS. "
                 "See docs/procrastinate.md.", obj="INSTALLED_APPS", id="taskbadger.W013")]
    app = conf.procrastinate_app()
    if app is None:
        return []
    from taskbadger.procrastinate.tracked import BUILTIN_PREFIXES, OPTIONS_ATTR

    tasks = {name: task for name, task in app.tasks.items() if not name.startswith(BUILTIN_PREFIXES)}
    # a task decorated with taskbadger.procrastinate.track is tracked whatever the rules (it takes no monitor)
    return monitored_untracked("PROCRASTINATE", "Procrastinate task", tasks,
                               lambda name: {"track": True} if getattr(tasks[name], OPTIONS_ATTR, None) is not None
                               else {},
                               "decorate it with @track (from taskbadger.procrastinate import track)") + (
        # matched against every task of the app: an entry for Procrastinate's own (never tracked) is no typo
        unmatched_patterns("PROCRASTINATE", "Procrastinate task", app.tasks, "Use the task's name as Procrastinate "
                           "registers it (@app.task(name=...), else module.function) or a regular expression that "
                           "matches all of it; tasks are found in Procrastinate's app (the installed apps' tasks "
                           "modules)."))






def django_tasks_found() -> tuple[set[str], list[str]]:
    """The module paths of the ``django.tasks`` tasks in the installed apps' ``tasks`` modules (imported,
    as a worker would) and of those given ``track_task`` options; and the modules that failed to import."""
    if not conf.django_tasks_available():
        return set(), []
    import importlib

    from django.apps import apps

    from taskbadger.django_tasks.options import registered

    task_classes = _task_classes()
    names, failed = set(registered()), []
    for config in apps.get_app_configs():
        module_name = f"{config.name}.tasks"
        try:
            if importlib.util.find_spec(module_name) is None:
                continue
            module = importlib.import_module(module_name)
        except Exception as err:
            failed.append(f"{module_name} ({type(err).__name__}: {err})")
            continue
        for value in vars(module).values():
            if task_classes and isinstance(value, task_classes):
                names.add(str(getattr(value, "module_path", "")))
    return names, failed


def _task_classes() -> tuple[type, ...]:
    """The ``Task`` classes of the tasks frameworks installed (Django's, the backport)."""
    classes = []
    for module_name in ("django.tasks.base", "django_tasks.base"):
        try:
            classes.append(importlib.import_module(module_name).Task)
        except Exception:
            continue
    return tuple(classes)


#: A task's module path: what a pattern is when it names one task rather than matching several.
_MODULE_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def names_a_django_task(pattern: str) -> bool:
    """Whether ``pattern`` is the module path of a ``django.tasks`` task in a module other than an app's
    ``tasks`` (``billing.jobs.nightly_report``): importing that module finds it, as a worker's import would."""
    task_classes = _task_classes()
    if not task_classes or _MODULE_PATH.fullmatch(pattern) is None:
        return False
    module_name, _, attribute = pattern.rpartition(".")
    try:
        if importlib.util.find_spec(module_name) is None:
            return False
        value = getattr(importlib.import_module(module_name), attribute, None)
    except Exception:  # not a module, or one that fails to import: the warning stands
        return False
    return isinstance(value, task_classes) and str(getattr(value, "module_path", "")) == pattern


def check_django_tasks(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W010: the apps' ``tasks`` modules could not be imported; W011: a ``DJANGO_TASKS`` ``INCLUDES`` or
    ``EXCLUDES`` entry matches none of the ``django.tasks`` tasks found (a typo tracks everything, or nothing)."""
    settings = conf.TaskBadgerSettings()
    if not conf.django_tasks_available():
        return []
    names, failed = django_tasks_found()
    messages: list[CheckMessage] = []
    if failed:
        messages.append(checks.Warning(
            f"The tasks modules of these apps could not be imported, so Task Badger did not check their django.tasks "
            f"tasks: {'; '.join(failed)}", hint="Fix the import error (a worker would fail on it too).",
            obj="django.tasks", id="taskbadger.W010"))
        return messages
    from taskbadger.django_tasks.options import options_for

    monitors = settings.MONITORS if isinstance(settings.raw, (Mapping, type(None))) else None
    outside = {p for p in monitors if isinstance(p, str) and names_a_django_task(p)} if isinstance(
        monitors, Mapping) else set()  # a task outside the apps' tasks modules, named by its module path
    messages += monitored_untracked("DJANGO_TASKS", "django.tasks task", names | outside, options_for,
                                    "decorate it with @track_task(enabled=True) (from taskbadger_django import "
                                    "track_task)")
    return messages + unmatched_patterns(
        "DJANGO_TASKS", "django.tasks task", names, "Use the task's module path (module.function) or a regular "
        "expression that matches all of it; tasks are found in the installed apps' tasks modules.",
        names_a_django_task)


def unmatched_patterns(queue: str, kind: str, names: Iterable[str], hint: str,
                       found_elsewhere: Callable[[str], bool] = lambda pattern: False) -> list[CheckMessage]:
    """W011: an ``INCLUDES`` or ``EXCLUDES`` entry of ``TASKBADGER[queue]`` that matches none of the task names found
    (``names``), nor names a task ``found_elsewhere``: a typo tracks everything, or nothing, and nothing said so."""
    from taskbadger.systems.base import full_match

    settings = conf.TaskBadgerSettings()
    section = settings.user.get(queue) if isinstance(settings.raw, Mapping) else None
    if not isinstance(section, Mapping):
        return []
    names = set(names)
    messages: list[CheckMessage] = []
    for key in ("INCLUDES", "EXCLUDES"):
        for pattern in patterns(section.get(key)):
            if not isinstance(pattern, str) or pattern_error(pattern) is not None:
                continue  # E003 / E007
            if not any(full_match(pattern, name) for name in names) and not found_elsewhere(pattern):
                suggestion = conf.closest(pattern, names, upper=False)
                messages.append(checks.Warning(
                    f"TASKBADGER[{queue!r}][{key!r}] entry {pattern!r} matches no {kind}.",
                    hint=(f"Did you mean {suggestion!r}? " if suggestion else "") + hint,
                    obj=f"TASKBADGER[{queue!r}][{key!r}]", id="taskbadger.W011"))
    return messages


def monitored_untracked(queue: str, kind: str, names: Iterable[str], options_of: Callable[[str], Mapping[str, Any]],
                        opt_in: str) -> list[CheckMessage]:
    """W019: a task of ``TASKBADGER[queue]`` with a monitor (``MONITORS``, or its own ``monitor_id`` option) that is
    never tracked (``AUTO_TRACK`` False, ``EXCLUDES``, ``INCLUDES``, or its own ``track`` option False): no run of it
    is created in Task Badger, so its monitor never hears from it and reports every run as missed (a periodic job's
    too). ``options_of(name)``: the task's own options (``track``, ``monitor_id``); ``opt_in``: how to track it."""
    from taskbadger.exceptions import ConfigurationError
    from taskbadger.systems.base import QueueIntegration, full_match

    settings = conf.TaskBadgerSettings()
    if not isinstance(settings.raw, (Mapping, type(None))):
        return []
    section, monitors = settings.user.get(queue), settings.MONITORS
    if not isinstance(section, (Mapping, type(None))) or not isinstance(monitors, Mapping):
        return []  # E003
    try:
        rules = QueueIntegration(**conf.queue_rules(getattr(settings, queue)))
    except (ConfigurationError, TypeError, re.error):
        return []  # E003 / E007 say what is wrong with the section
    where = f"TASKBADGER[{queue!r}]"
    messages = []
    for name in sorted(names):
        options = options_of(name)
        monitor = options.get("monitor_id") or configured_monitor(name, monitors)
        if not monitor:
            continue  # no monitor, or one left unset on purpose (None), or not an id (E006)
        track = options.get("track")
        if track is True or (track is None and rules.track_task(name)):
            continue
        excluded = next((p for p in patterns(rules.excludes) if full_match(p, name)), None)
        why = ("its own option turns tracking off (track_task(enabled=False))" if track is False
               else f"{where}['AUTO_TRACK'] is False" if not rules.auto_track_tasks
               else f"it matches {where}['EXCLUDES'] entry {excluded!r}" if excluded is not None
               else f"it matches no {where}['INCLUDES'] entry")
        messages.append(checks.Warning(
            f"{kind} {name!r} has a Task Badger monitor but is not "
            f"tracked ({why}): its runs are never created in Task Badger, so the monitor never hears from it and "
            "reports every run as missed.",
            hint=f"Track it: change {where} so that it lets the task through, or {opt_in}; or remove its monitor.",
            obj=name, id="taskbadger.W019"))
    return messages
