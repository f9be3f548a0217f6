"""The ``TASKBADGER`` setting: its name, keys, types and values (E001-E008, E018, W001-W005, W014-W017, W020)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from django.core import checks
from django.core.checks import CheckMessage

from taskbadger.config import (
    NOT_A_KEY,
    environment_problems,
    import_string,
    is_loopback,
    key_kind,
    parse_project_key,
    validate_host,
)
from taskbadger.exceptions import ConfigurationError
from taskbadger.models import is_heartbeat_interval, is_slug, is_whole_seconds, monitor_id

from .. import conf, schema
from .common import DOCS, pattern_error, patterns, type_errors, unknown_keys


def _check_setting_name(settings: conf.TaskBadgerSettings) -> list[CheckMessage]:
    """W014: code called ``taskbadger.init()`` before Django started, so the setting is not applied; W016: a
    setting named for one of its keys (``TASKBADGER_API_KEY``); W015: no ``TASKBADGER`` setting, but one whose
    name is close to it (``TASK_BADGER``, ``TASKBADGERS``)."""
    if settings.raw is not None and conf.init_before_django():
        return [checks.Warning(
            "taskbadger.init() was called before Django started, so the TASKBADGER setting is not applied (its "
            "TAGS, MONITORS and integrations are not used).",
            hint="Remove the taskbadger.init() call (often in the module that makes the Celery app): the Django "
                 "app configures the SDK from TASKBADGER.", obj="TASKBADGER", id="taskbadger.W014")]
    from django.conf import settings as django_settings

    names = [name for name in dir(django_settings) if name.isupper() and name != conf.SETTING_NAME]
    prefix = conf.SETTING_NAME + "_"
    in_dict = settings.raw if isinstance(settings.raw, Mapping) else {}
    # ``TASKBADGER_API_KEY = env(...)`` then ``TASKBADGER = {"API_KEY": TASKBADGER_API_KEY}`` is fine: the dict has it
    stray = [name for name in names if name.startswith(prefix) and name[len(prefix):] in conf.DEFAULTS
             and name[len(prefix):] not in in_dict]
    messages: list[CheckMessage] = [checks.Warning(
        f"{name} is a Django setting of its own, which Task Badger does not read: its options live in the "
        f"TASKBADGER dict.", hint=f"Move it into the dict: TASKBADGER = {{{name[len(prefix):]!r}: ...}} (the "
        f"environment variables TASKBADGER_API_KEY and TASKBADGER_HOST are read, but not as settings).", obj=name,
        id="taskbadger.W016") for name in stray]
    if settings.raw is not None:
        return messages
    names = [name for name in names if name not in stray]
    close = difflib.get_close_matches("TASKBADGER", names, n=1, cutoff=0.8) or [
        name for name in names if name.replace("_", "") == "TASKBADGER"]
    if close:
        messages.append(checks.Warning(
            f"There is no TASKBADGER setting, but there is {close[0]}: Task Badger reads only TASKBADGER.",
            hint=f"Rename {close[0]} to TASKBADGER.", obj=close[0], id="taskbadger.W015"))
    return messages


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Check the ``TASKBADGER`` setting (and the ``TASKBADGER_*`` environment variables it falls back to)."""
    settings = conf.TaskBadgerSettings()
    return _check_setting_name(settings) + _check_values(settings)


def _check_values(settings: conf.TaskBadgerSettings) -> list[CheckMessage]:
    if not isinstance(settings.raw, (Mapping, type(None))):
        return [checks.Error(f"TASKBADGER must be a dict, got {type(settings.raw).__name__}.",
                             hint='For example: TASKBADGER = {"API_KEY": env.str("TASKBADGER_API_KEY", default=None)}. '
                                  + DOCS, obj="TASKBADGER", id="taskbadger.E003")]
    messages: list[CheckMessage] = []
    messages += unknown_keys(settings.unknown_keys, conf.DEFAULTS, "TASKBADGER", "taskbadger.E001")
    messages += type_errors(settings.user, schema.TOP, "TASKBADGER")
    user_celery = settings.user.get("CELERY")
    if isinstance(user_celery, Mapping):
        messages += unknown_keys(settings.unknown_celery_keys, conf.CELERY_DEFAULTS, "TASKBADGER['CELERY']",
                             "taskbadger.E002")
        messages += type_errors(user_celery, schema.CELERY, "TASKBADGER['CELERY']")
    user_pro = settings.user.get("PROCRASTINATE")
    if isinstance(user_pro, Mapping):
        messages += unknown_keys(settings.unknown_nested_keys("PROCRASTINATE"), conf.PROCRASTINATE_DEFAULTS,
                             "TASKBADGER['PROCRASTINATE']", "taskbadger.E016")
        messages += type_errors(user_pro, schema.PROCRASTINATE, "TASKBADGER['PROCRASTINATE']")
    bad_types = {m.obj for m in messages if m.id == "taskbadger.E003"}

    messages += _check_key(settings, bad_types)
    messages += _check_host(settings, bad_types)
    messages += _check_sdk_environment(settings)
    if "TASKBADGER['MONITORS']" not in bad_types:
        messages += _check_monitors(settings.MONITORS)
    user_tasks = settings.user.get("DJANGO_TASKS")
    if isinstance(user_tasks, Mapping):
        messages += unknown_keys(settings.unknown_nested_keys("DJANGO_TASKS"), conf.DJANGO_TASKS_DEFAULTS,
                             "TASKBADGER['DJANGO_TASKS']", "taskbadger.E014")
        messages += type_errors(user_tasks, schema.DJANGO_TASKS, "TASKBADGER['DJANGO_TASKS']")
        if not conf.django_tasks_available():
            messages.append(checks.Error(
                "TASKBADGER['DJANGO_TASKS'] is set, but neither django.tasks (Django 6.0+) nor the django_tasks "
                "backport is installed, so there are no tasks to track.",
                hint='pip install "django-taskbadger[django-tasks]" (on Django 5.2), or remove the key.',
                obj="TASKBADGER['DJANGO_TASKS']", id="taskbadger.E015"))
    for section, user_section in (("CELERY", user_celery), ("DJANGO_TASKS", user_tasks),
                                  ("PROCRASTINATE", user_pro)):
        if not isinstance(user_section, Mapping):
            continue
        for name in ("INCLUDES", "EXCLUDES"):
            for pattern in patterns(user_section.get(name)):
                err = pattern_error(pattern) if isinstance(pattern, str) else None
                if err is not None:
                    obj = f"TASKBADGER[{section!r}][{name!r}]"
                    messages.append(checks.Error(
                        f"{obj} pattern {pattern!r} is not a valid regular expression: {err}.",
                        hint="Fix the pattern; it is matched against the whole task name.", obj=obj,
                        id="taskbadger.E007"))
    messages += _check_stale_timeouts(settings.user)
    if "TASKBADGER['BEFORE_CREATE']" not in bad_types:
        messages += _check_before_create(settings.BEFORE_CREATE)
    user_progress = settings.user.get("PROGRESS")
    if isinstance(user_progress, Mapping):
        messages += unknown_keys(settings.unknown_nested_keys("PROGRESS"), conf.PROGRESS_DEFAULTS,
                             "TASKBADGER['PROGRESS']", "taskbadger.E011")
        messages += type_errors(user_progress, schema.PROGRESS, "TASKBADGER['PROGRESS']")
    return messages


def _check_stale_timeouts(user: Mapping[str, Any]) -> list[CheckMessage]:
    """W020: a queue's ``STALE_TIMEOUT`` is not longer than its ``HEARTBEAT_INTERVAL``: every long task it tracks is
    marked stale between two heartbeats while it runs (the API marks it; nothing in the worker fails)."""
    messages: list[CheckMessage] = []
    for section in conf.QUEUES:
        values = user.get(section)
        if not isinstance(values, Mapping):
            continue
        obj = f"TASKBADGER[{section!r}]"
        interval: Any = values.get("HEARTBEAT_INTERVAL")
        stale: Any = values.get("STALE_TIMEOUT")
        if is_heartbeat_interval(interval) and is_whole_seconds(stale) and stale <= interval:  # else E003 or fine
            messages.append(checks.Warning(
                f"{obj}['STALE_TIMEOUT'] ({stale} s) is not longer than its HEARTBEAT_INTERVAL ({interval} s): Task "
                f"Badger marks every running task stale between two heartbeats.",
                hint="Remove STALE_TIMEOUT (it is then twice HEARTBEAT_INTERVAL), or make it at least twice "
                     "HEARTBEAT_INTERVAL: a heartbeat can reach the API a little late.", obj=f"{obj}['STALE_TIMEOUT']",
                id="taskbadger.W020"))
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
        return [checks.Warning(
            "No Task Badger API key: tasks run untracked.",
            hint="Set TASKBADGER['API_KEY'] (e.g. env.str(\"TASKBADGER_API_KEY\", default=None)) or the "
                 "TASKBADGER_API_KEY environment variable, or set TASKBADGER['ENABLED'] = False to track nothing "
                 "on purpose.", obj="TASKBADGER['API_KEY']", id="taskbadger.W001")]
    where = _source(settings, "API_KEY")
    try:
        parsed = parse_project_key(key)
    except ConfigurationError as err:
        return [checks.Error(f"The Task Badger API key ({where}) is malformed.", hint=str(err), obj=where,
                             id="taskbadger.E004")]
    if parsed is None:
        missing = [name for name in ("ORGANIZATION_SLUG", "PROJECT_SLUG") if not getattr(settings, name)]
        if len(missing) == 2 and key_kind(key) == "unknown":
            # Neither a project key nor shaped like a legacy one, and nothing says it is meant as one: a typo.
            return [checks.Error(
                f"The Task Badger API key ({where}) does not look like a Task Badger API key.",
                hint=NOT_A_KEY + " A legacy key would also need TASKBADGER['ORGANIZATION_SLUG'] and "
                     "TASKBADGER['PROJECT_SLUG'].", obj=where, id="taskbadger.E004")]
        if missing:
            return [checks.Error(
                f"The Task Badger API key ({where}) is a legacy key, which needs {' and '.join(missing)}.",
                hint="Use a project key (it carries the organization and project; create one on the project settings "
                     "page), or set TASKBADGER['ORGANIZATION_SLUG'] and TASKBADGER['PROJECT_SLUG'].", obj=where,
                id="taskbadger.E004")]
        for name in ("ORGANIZATION_SLUG", "PROJECT_SLUG"):
            if not is_slug(getattr(settings, name)):
                obj = _source(settings, name)
                return [checks.Error(
                    f"{obj} is {getattr(settings, name)!r}, which is not a slug (letters, digits, - and _).",
                    hint="Copy the slug from Task Badger, or use a project key, which carries the organization and "
                         "project.", obj=obj, id="taskbadger.E004")]
        return [checks.Warning(
            f"The Task Badger API key ({where}) is a legacy key; legacy keys are deprecated.",
            hint="Create a project key on the project settings page: it carries the organization and project, so "
                 "ORGANIZATION_SLUG and PROJECT_SLUG are no longer needed.", obj=where, id="taskbadger.W004")]
    slugs = [name for name in ("ORGANIZATION_SLUG", "PROJECT_SLUG") if settings.user.get(name)]
    if slugs:
        return [checks.Warning(
            f"TASKBADGER {' and '.join(slugs)} ignored: the project key names the organization and project.",
            hint=f"Remove {' and '.join(slugs)} from TASKBADGER.", obj="TASKBADGER", id="taskbadger.W005")]
    return []


#: Settings that, left unset, ``init()`` takes from an environment variable of its own -> that variable.
_SDK_ENVIRONMENT = {"TIMEOUT": "TASKBADGER_HTTP_TIMEOUT", "PUBLISH_BUDGET": "TASKBADGER_PUBLISH_BUDGET",
                    "SPOOL_DIR": "TASKBADGER_SPOOL_DIR"}


def _check_sdk_environment(settings: conf.TaskBadgerSettings) -> list[CheckMessage]:
    """E018: such a variable with a value ``init()`` refuses, while the setting leaves it in charge: tasks run
    untracked, and the process's ERROR line sends its reader here."""
    problems = environment_problems()
    return [checks.Error(
        f"The environment variable {variable} is refused: {problems[variable]}.",
        hint=f"Fix or unset {variable} in this process's environment, or set TASKBADGER[{name!r}], which wins over "
             f"it. Until then tasks run untracked. {DOCS}", obj=variable, id="taskbadger.E018")
        for name, variable in _SDK_ENVIRONMENT.items() if variable in problems and settings.resolve(name)[0] is None]


def _check_host(settings: conf.TaskBadgerSettings, bad_types: set) -> list[CheckMessage]:
    if "TASKBADGER['HOST']" in bad_types:
        return []
    host = settings.HOST
    where = _source(settings, "HOST")
    try:
        validate_host(host)
    except ConfigurationError as err:
        return [checks.Error(f"{where} is not a valid Task Badger URL: {err}",
                             hint='Use the API\'s base URL, e.g. "https://taskbadger.net".', obj=where,
                             id="taskbadger.E005")]
    parts = urlsplit(host.strip())
    messages: list[CheckMessage] = []
    if parts.path.strip("/"):
        messages.append(checks.Warning(
            f"{where} has a path ({parts.path}): Task Badger's URLs are made from the host, starting with /api/, "
            f"so requests go to {parts.path.rstrip('/')}/api/... and are answered 404.",
            hint=f'Use the base URL, e.g. "{parts.scheme}://{parts.netloc}", unless a proxy serves the API under '
                 "that path.", obj=where, id="taskbadger.W017"))
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        messages.append(checks.Warning(
            f"{where} uses plain HTTP to {parts.hostname}: the API key would travel unencrypted.",
            hint="Use https://, or plain HTTP only to a loopback host (127.0.0.1, localhost) in development.",
            obj=where, id="taskbadger.W002"))
    return messages


#: A monitor id inside a longer value (the monitor page's address).
_UUID_IN = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


#: E006's hint for a blank monitor id: most often an environment variable not set in this environment.
_BLANK_MONITOR = ("For no monitor in this environment, give None, not an empty string (e.g. "
                  "os.environ.get(\"NIGHTLY_MONITOR\") or None); until then the settings are not applied and no task "
                  "is tracked. Otherwise copy the monitor id from the monitor's page in Task Badger.")


def _check_monitors(monitors: Mapping[str, Any]) -> list[CheckMessage]:
    messages = []
    obj = "TASKBADGER['MONITORS']"
    for pattern, monitor in monitors.items():
        if isinstance(pattern, str) and monitor is None:
            continue  # no monitor for this task (e.g. an id from the environment, unset in development)
        if not isinstance(pattern, str) or not isinstance(monitor, str):
            messages.append(checks.Error(
                f"{obj} must map task names or patterns (strings) to monitor ids (strings); "
                f"got {type(pattern).__name__} -> {type(monitor).__name__} in the entry {pattern!r}.",
                hint='For example: {"billing.tasks.nightly_invoices": "<monitor uuid>"}.', obj=obj,
                id="taskbadger.E003"))
            continue
        if monitor_id(monitor) is None:
            spaced = monitor != monitor.strip() and monitor_id(monitor.strip()) is not None
            inside = None if spaced else _UUID_IN.search(monitor)  # the monitor page's URL, pasted whole
            messages.append(checks.Error(
                f"{obj}[{pattern!r}] is {monitor!r}, which is not a monitor id (a UUID)"
                + (": it has whitespace around it." if spaced else "."),
                hint="Remove the whitespace around it (a value read from a file or the environment often ends with "
                     "a newline)." if spaced else f"Use the monitor id it contains: {inside.group(0)!r}." if inside
                else _BLANK_MONITOR if not monitor.strip() else "Copy the monitor id from the monitor's page in Task "
                "Badger.",
                obj=obj, id="taskbadger.E006"))
        err = pattern_error(pattern)
        if err is not None:
            messages.append(checks.Error(
                f"{obj} pattern {pattern!r} is not a valid regular expression: {err}.",
                hint="Use the exact task name, or a regular expression matched against the whole task name.",
                obj=obj, id="taskbadger.E007"))
    return messages


def _check_before_create(before_create: Any) -> list[CheckMessage]:
    if not isinstance(before_create, str):
        return []
    obj = "TASKBADGER['BEFORE_CREATE']"
    try:
        func = import_string(before_create)
    except Exception as err:  # an ImportError, or any error the imported module raises
        return [checks.Error(
            f"{obj} {before_create!r} cannot be imported: {err}",
            hint="Give the dotted path of a function that takes the task fields and returns them (or None to skip "
                 "the task), e.g. 'myproject.taskbadger.before_create'.", obj=obj, id="taskbadger.E008")]
    if not callable(func):
        return [checks.Error(f"{obj} {before_create!r} is not callable.",
                             hint="Point it to a function that takes the task fields and returns them (or None).",
                             obj=obj, id="taskbadger.E008")]
    return []
