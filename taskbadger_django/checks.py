"""System checks for Task Badger (``manage.py check``; they also run before ``runserver``/``migrate``).

Every message has a stable id and a hint that says how to fix it. The API key never appears in a
message or a hint.

=================  =======  ==========================================================================
id                 level    problem
=================  =======  ==========================================================================
taskbadger.E001    Error    unknown key in ``TASKBADGER`` (a typo; the closest valid key is suggested)
taskbadger.E002    Error    unknown key in ``TASKBADGER["CELERY"]``
taskbadger.E003    Error    a setting has a value of the wrong type
taskbadger.E004    Error    the API key is malformed (or a legacy key lacks ``ORGANIZATION_SLUG``/``PROJECT_SLUG``)
taskbadger.E005    Error    ``HOST`` is not an http(s) URL
taskbadger.E006    Error    a ``MONITORS`` monitor id is not a UUID
taskbadger.E007    Error    a ``MONITORS``/``INCLUDES``/``EXCLUDES`` pattern is not a valid regular expression
taskbadger.E008    Error    ``BEFORE_CREATE`` cannot be imported or is not callable
taskbadger.E009    Error    a Celery task has an unknown ``taskbadger_*`` option
taskbadger.E010    Error    a Celery task has a ``taskbadger_*`` option with an invalid value
taskbadger.W001    Warning  no API key, so tasks run untracked (silent when ``ENABLED`` is False)
taskbadger.W002    Warning  ``HOST`` uses plain HTTP to a host other than loopback
taskbadger.W003    Warning  a ``MONITORS`` entry matches no registered Celery task
taskbadger.W004    Warning  a legacy API key (deprecated: use a project key)
taskbadger.W005    Warning  ``ORGANIZATION_SLUG``/``PROJECT_SLUG`` are ignored: the project key carries them
taskbadger.W006    Warning  the Celery task modules could not be imported, so tasks were not checked
taskbadger.I001    Info     a ``beat_schedule`` entry runs a task that has no monitor id
=================  =======  ==========================================================================
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from django.core import checks
from django.core.checks import CheckMessage

from taskbadger.config import import_string, normalize_timeout, parse_project_key, validate_host
from taskbadger.exceptions import ConfigurationError

from . import conf

TAG = "taskbadger"
DOCS = "See the Django section of the README."


def _error(id_: int, msg: str, hint: str, obj: Any) -> CheckMessage:
    return checks.Error(msg, hint=hint, obj=obj, id=f"taskbadger.E{id_:03d}")


def _warning(id_: int, msg: str, hint: str, obj: Any) -> CheckMessage:
    return checks.Warning(msg, hint=hint, obj=obj, id=f"taskbadger.W{id_:03d}")


def _info(id_: int, msg: str, hint: str, obj: Any) -> CheckMessage:
    return checks.Info(msg, hint=hint, obj=obj, id=f"taskbadger.I{id_:03d}")


def register() -> None:
    """Register the checks (idempotent: Django keeps registered checks in a set)."""
    checks.register(check_taskbadger, TAG)


def check_taskbadger(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every Task Badger check, settings first, in a stable order."""
    return check_settings(app_configs, **kwargs) + check_celery_tasks(app_configs, **kwargs)


# -- value types -------------------------------------------------------------------------------------


def _is_str_list(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v))


def _is_timeout(v: Any) -> bool:
    try:
        normalize_timeout(v)
    except ConfigurationError:
        return False
    return True


def _is_positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


#: key -> (accepts the value, what it should be, an example)
TYPES: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "API_KEY": (lambda v: isinstance(v, str), "a string", '"API_KEY": env.str("TASKBADGER_API_KEY", default=None)'),
    "HOST": (lambda v: isinstance(v, str), "a string", '"HOST": "https://taskbadger.net"'),
    "ORGANIZATION_SLUG": (lambda v: isinstance(v, str), "a string", '"ORGANIZATION_SLUG": "my-org"'),
    "PROJECT_SLUG": (lambda v: isinstance(v, str), "a string", '"PROJECT_SLUG": "my-project"'),
    "ENABLED": (lambda v: isinstance(v, bool), "True or False", '"ENABLED": env.bool("TASKBADGER_ENABLED", True)'),
    "TAGS": (lambda v: isinstance(v, Mapping) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()),
             "a dict of strings to strings", '"TAGS": {"environment": "production"}'),
    "BEFORE_CREATE": (lambda v: callable(v) or isinstance(v, str), "a callable or a dotted path to one",
                      '"BEFORE_CREATE": "myproject.taskbadger.before_create"'),
    "TIMEOUT": (_is_timeout, "a positive number of seconds or a (connect, read) pair", '"TIMEOUT": (2, 5)'),
    "MONITORS": (lambda v: isinstance(v, Mapping), "a dict of task name or pattern to monitor id",
                 '"MONITORS": {"billing.tasks.nightly_invoices": "<monitor uuid>"}'),
    "CELERY": (lambda v: isinstance(v, Mapping), "a dict", '"CELERY": {"AUTO_TRACK": True}'),
}
CELERY_TYPES: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "AUTO_TRACK": (lambda v: isinstance(v, bool), "True or False", '"AUTO_TRACK": True'),
    "INCLUDES": (_is_str_list, "a list of task names or patterns", '"INCLUDES": [r"billing\\..*"]'),
    "EXCLUDES": (_is_str_list, "a list of task names or patterns", '"EXCLUDES": [r"celery\\..*"]'),
    "RECORD_TASK_ARGS": (lambda v: isinstance(v, bool), "True or False", '"RECORD_TASK_ARGS": False'),
    "HEARTBEAT_INTERVAL": (_is_positive, "a positive number of seconds", '"HEARTBEAT_INTERVAL": 30'),
    "STALE_TIMEOUT": (lambda v: _is_positive(v) and isinstance(v, int), "a positive integer number of seconds",
                      '"STALE_TIMEOUT": 120'),
}


def _type_errors(values: Mapping[str, Any], types: Mapping[str, tuple], label: Callable[[str], str]) -> list:
    errors = []
    for key, (accepts, what, example) in types.items():
        value = values.get(key)
        if value is not None and not accepts(value):
            errors.append(_error(3, f"{label(key)} must be {what}, got {type(value).__name__}.",
                                 f"For example: {example}. {DOCS}", label(key)))
    return errors


def _unknown(keys: list[str], valid: Mapping[str, Any], id_: int, where: str) -> list[CheckMessage]:
    messages = []
    for key in keys:
        suggestion = conf.closest(key, valid)
        hint = (f"Did you mean {suggestion!r}? " if suggestion else "") + f"Valid keys: {', '.join(valid)}."
        messages.append(_error(id_, f"Unknown key {key!r} in {where}.", hint, where))
    return messages


def _patterns(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []


def _compiles(pattern: str) -> re.error | None:
    try:
        re.compile(pattern)
    except re.error as err:
        return err
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- settings ----------------------------------------------------------------------------------------


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Check the ``TASKBADGER`` setting (and the ``TASKBADGER_*`` environment variables it falls back to)."""
    settings = conf.TaskBadgerSettings()
    if not isinstance(settings.raw, (Mapping, type(None))):
        return [_error(3, f"TASKBADGER must be a dict, got {type(settings.raw).__name__}.",
                       'For example: TASKBADGER = {"API_KEY": env.str("TASKBADGER_API_KEY", default=None)}. '
                       + DOCS, "TASKBADGER")]
    messages: list[CheckMessage] = []
    messages += _unknown(settings.unknown_keys, conf.DEFAULTS, 1, "TASKBADGER")
    messages += _type_errors(settings.user, TYPES, lambda k: f"TASKBADGER[{k!r}]")
    user_celery = settings.user.get("CELERY")
    if isinstance(user_celery, Mapping):
        messages += _unknown(settings.unknown_celery_keys, conf.CELERY_DEFAULTS, 2, "TASKBADGER['CELERY']")
        messages += _type_errors(user_celery, CELERY_TYPES, lambda k: f"TASKBADGER['CELERY'][{k!r}]")
    bad_types = {m.obj for m in messages if m.id == "taskbadger.E003"}

    messages += _check_key(settings, bad_types)
    messages += _check_host(settings, bad_types)
    if "TASKBADGER['MONITORS']" not in bad_types:
        messages += _check_monitors(settings.MONITORS)
    if isinstance(user_celery, Mapping):
        for name in ("INCLUDES", "EXCLUDES"):
            for pattern in _patterns(user_celery.get(name)):
                err = _compiles(pattern) if isinstance(pattern, str) else None
                if err is not None:
                    obj = f"TASKBADGER['CELERY'][{name!r}]"
                    messages.append(_error(7, f"{obj} pattern {pattern!r} is not a valid regular expression: {err}.",
                                           "Fix the pattern; it is matched against the whole task name.", obj))
    if "TASKBADGER['BEFORE_CREATE']" not in bad_types:
        messages += _check_before_create(settings.BEFORE_CREATE)
    return messages


def _source(settings: conf.TaskBadgerSettings, name: str) -> str:
    source = settings.source(name)
    return conf.ENV_VARS[name] if source == conf.ENVIRONMENT else f"TASKBADGER[{name!r}]"


def _check_key(settings: conf.TaskBadgerSettings, bad_types: set) -> list[CheckMessage]:
    if "TASKBADGER['API_KEY']" in bad_types:
        return []
    key = settings.API_KEY
    if not key:
        if settings.ENABLED is False:
            return []
        return [_warning(
            1, "No Task Badger API key: tasks run untracked.",
            "Set TASKBADGER['API_KEY'] (e.g. env.str(\"TASKBADGER_API_KEY\", default=None)) or the "
            "TASKBADGER_API_KEY environment variable, or set TASKBADGER['ENABLED'] = False to track nothing "
            "on purpose.", "TASKBADGER['API_KEY']")]
    where = _source(settings, "API_KEY")
    try:
        parsed = parse_project_key(key)
    except ConfigurationError as err:
        return [_error(4, f"The Task Badger API key ({where}) is malformed.", str(err), where)]
    if parsed is None:
        missing = [name for name in ("ORGANIZATION_SLUG", "PROJECT_SLUG") if not getattr(settings, name)]
        if missing:
            return [_error(
                4, f"The Task Badger API key ({where}) is a legacy key, which needs {' and '.join(missing)}.",
                "Use a project key (it carries the organization and project; create one on the project settings "
                "page), or set TASKBADGER['ORGANIZATION_SLUG'] and TASKBADGER['PROJECT_SLUG'].", where)]
        return [_warning(4, f"The Task Badger API key ({where}) is a legacy key; legacy keys are deprecated.",
                         "Create a project key on the project settings page: it carries the organization and "
                         "project, so ORGANIZATION_SLUG and PROJECT_SLUG are no longer needed.", where)]
    slugs = [name for name in ("ORGANIZATION_SLUG", "PROJECT_SLUG") if settings.user.get(name)]
    if slugs:
        return [_warning(5, f"TASKBADGER {' and '.join(slugs)} ignored: the project key names the organization "
                            "and project.",
                         f"Remove {' and '.join(slugs)} from TASKBADGER.", "TASKBADGER")]
    return []


def _check_host(settings: conf.TaskBadgerSettings, bad_types: set) -> list[CheckMessage]:
    if "TASKBADGER['HOST']" in bad_types:
        return []
    host = settings.HOST
    where = _source(settings, "HOST")
    try:
        validate_host(host)
    except ConfigurationError as err:
        return [_error(5, f"{where} is not a valid Task Badger URL: {err}",
                       'Use the API\'s base URL, e.g. "https://taskbadger.net".', where)]
    parts = urlsplit(host.strip())
    if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
        return [_warning(2, f"{where} uses plain HTTP to {parts.hostname}: the API key would travel unencrypted.",
                         "Use https://, or plain HTTP only to a loopback host (127.0.0.1, localhost) in development.",
                         where)]
    return []


def _check_monitors(monitors: Mapping[str, Any]) -> list[CheckMessage]:
    messages = []
    obj = "TASKBADGER['MONITORS']"
    for pattern, monitor in monitors.items():
        if not isinstance(pattern, str) or not isinstance(monitor, str):
            messages.append(_error(3, f"{obj} must map task names or patterns (strings) to monitor ids (strings); "
                                      f"got {type(pattern).__name__} -> {type(monitor).__name__}.",
                                   'For example: {"billing.tasks.nightly_invoices": "<monitor uuid>"}.', obj))
            continue
        try:
            uuid.UUID(monitor)
        except ValueError:
            messages.append(_error(6, f"{obj}[{pattern!r}] is {monitor!r}, which is not a monitor id (a UUID).",
                                   "Copy the monitor id from the monitor's page in Task Badger.", obj))
        err = _compiles(pattern)
        if err is not None:
            messages.append(_error(7, f"{obj} pattern {pattern!r} is not a valid regular expression: {err}.",
                                   "Use the exact task name, or a regular expression matched against the whole "
                                   "task name.", obj))
    return messages


def _check_before_create(before_create: Any) -> list[CheckMessage]:
    if not isinstance(before_create, str):
        return []
    obj = "TASKBADGER['BEFORE_CREATE']"
    try:
        func = import_string(before_create)
    except Exception as err:  # an ImportError, or any error the imported module raises
        return [_error(8, f"{obj} {before_create!r} cannot be imported: {err}",
                       "Give the dotted path of a function that takes the task fields and returns them (or None "
                       "to skip the task), e.g. 'myproject.taskbadger.before_create'.", obj)]
    if not callable(func):
        return [_error(8, f"{obj} {before_create!r} is not callable.",
                       "Point it to a function that takes the task fields and returns them (or None).", obj)]
    return []


# -- Celery tasks --------------------------------------------------------------------------------------

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
            tasks = {name: task for name, task in app.tasks.items() if not name.startswith("celery.")}
        except Exception as err:
            return [_warning(6, f"The Celery task modules of app {app.main!r} could not be imported, so "
                                f"Task Badger did not check the tasks: {type(err).__name__}: {err}",
                             "Fix the import error (try `celery -A <project> inspect registered`).", "celery")]
        monitors = settings.MONITORS if isinstance(settings.MONITORS, Mapping) else {}
        messages = _check_task_options(tasks)
        messages += _check_monitor_targets(monitors, tasks)
        if settings.ENABLED is not False:
            messages += _check_beat(app, monitors, tasks)
        return messages


def _check_task_options(tasks: Mapping[str, Any]) -> list[CheckMessage]:
    from taskbadger.celery.options import KWARGS_KEY, OPTIONS, PREFIX, check_option, decorator_options

    messages = []
    for name, task in sorted(tasks.items()):
        bundle = getattr(task, KWARGS_KEY, None)
        if bundle is not None and not isinstance(bundle, Mapping):
            messages.append(_error(10, f"Task {name!r}: {KWARGS_KEY} must be a dict, got {type(bundle).__name__}.",
                                   f'For example: {KWARGS_KEY}={{"value_max": 100}}.', name))
        try:
            options = decorator_options(task)
        except Exception:
            continue
        for option, value in options.items():
            spec = OPTIONS.get(option)
            if spec is None:
                match = difflib.get_close_matches(str(option), OPTIONS, n=1, cutoff=0.6)
                hint = (f"Did you mean {PREFIX}{match[0]}? " if match else "") + "Known options: " + ", ".join(
                    PREFIX + o for o in OPTIONS) + "."
                messages.append(_error(9, f"Task {name!r} has an unknown option {PREFIX}{option}.", hint, name))
            elif not check_option(option, value)[0]:
                messages.append(_error(10, f"Task {name!r}: {PREFIX}{option} must be {spec[1]}, got {value!r}.",
                                       f"Fix the {PREFIX}{option} argument of the task decorator.", name))
    return messages


def _matching_tasks(pattern: str, tasks: Mapping[str, Any]) -> bool:
    if pattern in tasks:
        return True
    try:
        compiled = re.compile(pattern)
    except re.error:
        return True  # reported as E007
    return any(compiled.fullmatch(name) for name in tasks)


def _check_monitor_targets(monitors: Mapping[str, Any], tasks: Mapping[str, Any]) -> list[CheckMessage]:
    messages = []
    for pattern in monitors:
        if isinstance(pattern, str) and not _matching_tasks(pattern, tasks):
            suggestion = difflib.get_close_matches(pattern, tasks, n=1, cutoff=0.6)
            messages.append(_warning(
                3, f"TASKBADGER['MONITORS'] entry {pattern!r} matches no registered Celery task.",
                (f"Did you mean {suggestion[0]!r}? " if suggestion else "")
                + "Use the task's registered name (module.function unless name= is given) or a regular expression "
                "that matches the whole name.", "TASKBADGER['MONITORS']"))
    return messages


def _monitor_for(task_name: str, monitors: Mapping[str, Any], tasks: Mapping[str, Any]) -> Any:
    from taskbadger.celery.options import decorator_options

    task = tasks.get(task_name)
    if task is not None:
        try:
            monitor = decorator_options(task).get("monitor_id")
        except Exception:
            monitor = None
        if monitor:
            return monitor
    if task_name in monitors:
        return monitors[task_name]
    for pattern, monitor in monitors.items():
        if isinstance(pattern, str) and _compiles(pattern) is None and re.fullmatch(pattern, task_name):
            return monitor
    return None


def _check_beat(app: Any, monitors: Mapping[str, Any], tasks: Mapping[str, Any]) -> list[CheckMessage]:
    schedule = app.conf.beat_schedule or {}
    messages = []
    for entry, spec in schedule.items():
        task_name = spec.get("task") if isinstance(spec, Mapping) else None
        if isinstance(task_name, str) and not task_name.startswith("celery.") and \
                not _monitor_for(task_name, monitors, tasks):
            messages.append(_info(
                1, f"Celery beat runs {task_name!r} (entry {entry!r}) with no Task Badger monitor.",
                f"Create a monitor in Task Badger and add {task_name!r}: '<monitor id>' to TASKBADGER['MONITORS'] "
                "so that a missed or failed run raises an alert.", "CELERY_BEAT_SCHEDULE"))
    return messages
