"""System checks for Task Badger (``manage.py check``; they also run before ``runserver``/``migrate``).

Every message has a stable id and a hint that says how to fix it. The API key never appears in a
message or a hint.

=================  =======  ==========================================================================
id                 level    problem
=================  =======  ==========================================================================
taskbadger.E001    Error    unknown key in ``TASKBADGER`` (a typo; the closest valid key is suggested)
taskbadger.E002    Error    unknown key in ``TASKBADGER["CELERY"]``
taskbadger.E003    Error    a setting has a value of the wrong type
taskbadger.E004    Error    the API key is malformed or not a key, or a legacy key lacks valid ``*_SLUG`` settings
taskbadger.E005    Error    ``HOST`` is not an http(s) URL
taskbadger.E006    Error    a ``MONITORS`` monitor id is not a UUID
taskbadger.E007    Error    a ``MONITORS``/``INCLUDES``/``EXCLUDES`` pattern is not a valid regular expression
taskbadger.E008    Error    ``BEFORE_CREATE`` cannot be imported or is not callable
taskbadger.E009    Error    a Celery task has an unknown ``taskbadger_*`` option
taskbadger.E010    Error    a Celery task has a ``taskbadger_*`` option with an invalid value
taskbadger.E011    Error    unknown key in ``TASKBADGER["PROGRESS"]``
taskbadger.E012    Error    ``PROGRESS["AUTHORIZE"]`` cannot be imported or is not callable
taskbadger.E013    Error    ``PROGRESS["CACHE"]`` is not an alias in ``CACHES``
taskbadger.W001    Warning  no API key, so tasks run untracked (silent when ``ENABLED`` is False)
taskbadger.W002    Warning  ``HOST`` uses plain HTTP to a host other than loopback
taskbadger.W003    Warning  a ``MONITORS`` entry matches no registered Celery task
taskbadger.W004    Warning  a legacy API key (deprecated: use a project key)
taskbadger.W005    Warning  ``ORGANIZATION_SLUG``/``PROJECT_SLUG`` are ignored: the project key carries them
taskbadger.W006    Warning  the Celery task modules could not be imported, so tasks were not checked
taskbadger.W007    Warning  ``CELERY_BROKER_URL``'s transport needs a package that is not installed
taskbadger.W008    Warning  the progress URLs are included but ``SessionMiddleware`` is not installed
taskbadger.W009    Warning  the progress URLs are included and their cache is a ``DummyCache``
taskbadger.E014    Error    unknown key in ``TASKBADGER["DJANGO_TASKS"]``
taskbadger.E015    Error    ``TASKBADGER["DJANGO_TASKS"]`` is set but no tasks framework is installed
taskbadger.W010    Warning  the installed apps' ``tasks`` modules could not be imported (django.tasks not checked)
taskbadger.W011    Warning  a ``DJANGO_TASKS`` ``INCLUDES``/``EXCLUDES`` entry matches no django.tasks task
taskbadger.E016    Error    unknown key in ``TASKBADGER["PROCRASTINATE"]``
taskbadger.E017    Error    ``procrastinate.contrib.django`` is installed but Procrastinate is older than 3.9
taskbadger.W012    Warning  ``TASKBADGER["PROCRASTINATE"]`` is set but ``procrastinate.contrib.django`` is not installed
taskbadger.W013    Warning  ``taskbadger_django`` comes before ``procrastinate.contrib.django``: jobs are not tracked
taskbadger.W014    Warning  ``taskbadger.init()`` ran before Django started: the ``TASKBADGER`` setting is not applied
taskbadger.W015    Warning  a setting whose name looks like a misspelled ``TASKBADGER`` (``TASK_BADGER``)
taskbadger.W016    Warning  a setting named for a ``TASKBADGER`` key (``TASKBADGER_API_KEY``): it belongs in the dict
taskbadger.W017    Warning  ``HOST`` has a path: the API's URLs are made from the host (``/api/...``)
taskbadger.W018    Warning  a ``TASKS`` backend is RQ's but ``RQ["WORKER_CLASS"]`` is not Task Badger's worker class
taskbadger.I001    Info     a ``beat_schedule`` entry runs a task that has no monitor id
=================  =======  ==========================================================================
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from django.core import checks
from django.core.checks import CheckMessage

from taskbadger.config import NOT_A_KEY, import_string, is_loopback, key_kind, parse_project_key, validate_host
from taskbadger.exceptions import ConfigurationError
from taskbadger.models import is_slug, monitor_id

from . import conf, schema

TAG = "taskbadger"
DOCS = "See docs/django.md (settings and checks)."


def register() -> None:
    """Register the checks (idempotent: Django keeps registered checks in a set)."""
    checks.register(check_taskbadger, TAG)


def check_taskbadger(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every Task Badger check, settings first, in a stable order."""
    return (check_settings(app_configs, **kwargs) + check_progress(app_configs, **kwargs)
            + check_broker(app_configs, **kwargs) + check_celery_tasks(app_configs, **kwargs)
            + check_django_tasks(app_configs, **kwargs) + check_django_tasks_rq(app_configs, **kwargs)
            + check_procrastinate(app_configs, **kwargs))


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


def _type_errors(values: Mapping[str, Any], table: Mapping[str, schema.Setting], where: str) -> list[CheckMessage]:
    return [checks.Error(problem.message, hint=f"For example: {problem.setting.example}. {DOCS}", obj=problem.label,
                         id="taskbadger.E003")
            for problem in schema.type_problems(values, table, where)]


def _unknown(keys: list[str], valid: Mapping[str, Any], where: str, check_id: str) -> list[CheckMessage]:
    messages = []
    for key in keys:
        suggestion = conf.closest(key, valid)
        hint = (f"Did you mean {suggestion!r}? " if suggestion else "") + f"Valid keys: {', '.join(valid)}."
        messages.append(checks.Error(f"Unknown key {key!r} in {where}.", hint=hint, obj=where, id=check_id))
    return messages


def _patterns(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []


def _pattern_error(pattern: str) -> Exception | None:
    from taskbadger.systems.celery import pattern_error  # no Celery import: it only compiles patterns

    return pattern_error(pattern)


# -- settings ----------------------------------------------------------------------------------------


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
    messages += _unknown(settings.unknown_keys, conf.DEFAULTS, "TASKBADGER", "taskbadger.E001")
    messages += _type_errors(settings.user, schema.TOP, "TASKBADGER")
    user_celery = settings.user.get("CELERY")
    if isinstance(user_celery, Mapping):
        messages += _unknown(settings.unknown_celery_keys, conf.CELERY_DEFAULTS, "TASKBADGER['CELERY']",
                             "taskbadger.E002")
        messages += _type_errors(user_celery, schema.CELERY, "TASKBADGER['CELERY']")
    user_pro = settings.user.get("PROCRASTINATE")
    if isinstance(user_pro, Mapping):
        messages += _unknown(settings.unknown_nested_keys("PROCRASTINATE"), conf.PROCRASTINATE_DEFAULTS,
                             "TASKBADGER['PROCRASTINATE']", "taskbadger.E016")
        messages += _type_errors(user_pro, schema.PROCRASTINATE, "TASKBADGER['PROCRASTINATE']")
    bad_types = {m.obj for m in messages if m.id == "taskbadger.E003"}

    messages += _check_key(settings, bad_types)
    messages += _check_host(settings, bad_types)
    if "TASKBADGER['MONITORS']" not in bad_types:
        messages += _check_monitors(settings.MONITORS)
    user_tasks = settings.user.get("DJANGO_TASKS")
    if isinstance(user_tasks, Mapping):
        messages += _unknown(settings.unknown_nested_keys("DJANGO_TASKS"), conf.DJANGO_TASKS_DEFAULTS,
                             "TASKBADGER['DJANGO_TASKS']", "taskbadger.E014")
        messages += _type_errors(user_tasks, schema.DJANGO_TASKS, "TASKBADGER['DJANGO_TASKS']")
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
            for pattern in _patterns(user_section.get(name)):
                err = _pattern_error(pattern) if isinstance(pattern, str) else None
                if err is not None:
                    obj = f"TASKBADGER[{section!r}][{name!r}]"
                    messages.append(checks.Error(
                        f"{obj} pattern {pattern!r} is not a valid regular expression: {err}.",
                        hint="Fix the pattern; it is matched against the whole task name.", obj=obj,
                        id="taskbadger.E007"))
    if "TASKBADGER['BEFORE_CREATE']" not in bad_types:
        messages += _check_before_create(settings.BEFORE_CREATE)
    user_progress = settings.user.get("PROGRESS")
    if isinstance(user_progress, Mapping):
        messages += _unknown(settings.unknown_nested_keys("PROGRESS"), conf.PROGRESS_DEFAULTS,
                             "TASKBADGER['PROGRESS']", "taskbadger.E011")
        messages += _type_errors(user_progress, schema.PROGRESS, "TASKBADGER['PROGRESS']")
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


def _check_monitors(monitors: Mapping[str, Any]) -> list[CheckMessage]:
    messages = []
    obj = "TASKBADGER['MONITORS']"
    for pattern, monitor in monitors.items():
        if isinstance(pattern, str) and monitor is None:
            continue  # no monitor for this task (e.g. an id from the environment, unset in development)
        if not isinstance(pattern, str) or not isinstance(monitor, str):
            messages.append(checks.Error(
                f"{obj} must map task names or patterns (strings) to monitor ids (strings); "
                f"got {type(pattern).__name__} -> {type(monitor).__name__}.",
                hint='For example: {"billing.tasks.nightly_invoices": "<monitor uuid>"}.', obj=obj,
                id="taskbadger.E003"))
            continue
        if monitor_id(monitor) is None:
            spaced = monitor != monitor.strip() and monitor_id(monitor.strip()) is not None
            messages.append(checks.Error(
                f"{obj}[{pattern!r}] is {monitor!r}, which is not a monitor id (a UUID)"
                + (": it has whitespace around it." if spaced else "."),
                hint="Remove the whitespace around it (a value read from a file or the environment often ends with "
                     "a newline)." if spaced else "Copy the monitor id from the monitor's page in Task Badger.",
                obj=obj, id="taskbadger.E006"))
        err = _pattern_error(pattern)
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


# -- progress bars ----------------------------------------------------------------------------------------

PROGRESS_DOCS = "See docs/progress.md."


def _progress_urls_included() -> bool:
    """Whether ``taskbadger_django.urls`` is in the URLconf: the project shows progress bars."""
    from django.urls import NoReverseMatch, reverse

    from .progress import URL_NAME

    try:
        reverse(URL_NAME, args=["token"])
    except NoReverseMatch:
        return False
    except Exception:  # a URLconf that cannot be imported: Django's own checks report it
        return False
    return True


def check_progress(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The progress bars' settings that need more than a type check (E012, E013), and their wiring
    (W008, W009), which is only checked when ``taskbadger_django.urls`` is included."""
    from django.conf import settings as django_settings

    settings = conf.TaskBadgerSettings()
    user_progress = settings.user.get("PROGRESS") if isinstance(settings.raw, Mapping) else None
    if not isinstance(user_progress, (Mapping, type(None))):
        return []  # E003
    user_progress = user_progress or {}
    messages: list[CheckMessage] = []
    authorize = user_progress.get("AUTHORIZE")
    obj = "TASKBADGER['PROGRESS']['AUTHORIZE']"
    if isinstance(authorize, str):
        try:
            func = import_string(authorize)
        except Exception as err:
            messages.append(checks.Error(
                f"{obj} {authorize!r} cannot be imported: {err}",
                hint="Give the dotted path of a function (request, task_id) -> bool; until then every progress "
                     f"request is refused. {PROGRESS_DOCS}", obj=obj, id="taskbadger.E012"))
        else:
            if not callable(func):
                messages.append(checks.Error(
                    f"{obj} {authorize!r} is not callable.",
                    hint=f"Point it to a function (request, task_id) -> bool. {PROGRESS_DOCS}", obj=obj,
                    id="taskbadger.E012"))
    alias = user_progress.get("CACHE")
    caches_setting = getattr(django_settings, "CACHES", {}) or {}
    if isinstance(alias, str) and alias not in caches_setting:
        messages.append(checks.Error(
            f"TASKBADGER['PROGRESS']['CACHE'] is {alias!r}, which is not an alias in CACHES.",
            hint=f"Use one of: {', '.join(map(repr, caches_setting)) or 'none defined'}. {PROGRESS_DOCS}",
            obj="TASKBADGER['PROGRESS']['CACHE']", id="taskbadger.E013"))
        alias = None
    if not _progress_urls_included():
        return messages
    middleware = list(getattr(django_settings, "MIDDLEWARE", None) or [])
    if not any(m.endswith("SessionMiddleware") for m in middleware if isinstance(m, str)):
        messages.append(checks.Warning(
            "Task Badger progress bars are set up (taskbadger_django.urls is included) but "
            "SessionMiddleware is not installed: anonymous visitors get no progress (their bar says it is "
            "not available).",
            hint="Add 'django.contrib.sessions.middleware.SessionMiddleware' to MIDDLEWARE, or show progress "
                 f"to authenticated users only. {PROGRESS_DOCS}", obj="MIDDLEWARE", id="taskbadger.W008"))
    alias = alias if isinstance(alias, str) else conf.PROGRESS_DEFAULTS["CACHE"]
    backend = (caches_setting.get(alias) or {}).get("BACKEND", "")
    if isinstance(backend, str) and backend.endswith("DummyCache"):
        messages.append(checks.Warning(
            f"The cache of Task Badger progress bars ({alias!r}) is a DummyCache: every poll of every viewer "
            "reads Task Badger, instead of one read per task per poll interval.",
            hint="Use LocMemCache (one read per process) or a cache the processes share (Redis, Memcached), "
                 f"or set TASKBADGER['PROGRESS']['CACHE'] to such an alias. {PROGRESS_DOCS}",
            obj="TASKBADGER['PROGRESS']['CACHE']", id="taskbadger.W009"))
    return messages


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
            return [checks.Warning(
                f"The Celery task modules of app {app.main!r} could not be imported, so Task Badger did not check "
                f"the tasks: {type(err).__name__}: {err}",
                hint="Fix the import error (try `celery -A <project> inspect registered`).", obj="celery",
                id="taskbadger.W006")]
        monitors = settings.MONITORS if isinstance(settings.MONITORS, Mapping) else {}
        messages = _check_task_options(tasks)
        # a MONITORS entry may name a django.tasks task or a Procrastinate task (periodic jobs) as well
        other_tasks = {name: None for name in django_tasks_found()[0]}
        pro_app = conf.procrastinate_app()
        other_tasks.update({name: task for name, task in (pro_app.tasks if pro_app is not None else {}).items()
                            if not name.startswith(("builtin:", "procrastinate."))})
        kinds = ["Celery task"] + (["django.tasks task"] if conf.django_tasks_available() else []) + (
            ["Procrastinate task"] if pro_app is not None else [])
        messages += _check_monitor_targets(monitors, {**other_tasks, **tasks}, _no_project_app(app), kinds)
        if settings.ENABLED is not False:
            messages += _check_beat(app, monitors, tasks)
        return messages


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
    """Whether ``app`` is Celery's own default app: no Celery app of the project was made in this process (its
    module is not imported by the project package's ``__init__.py``, as Celery's Django guide has it)."""
    from celery import _state

    return getattr(_state, "default_app", None) is app


#: What to say when the tasks were looked up in Celery's default app.
NO_PROJECT_APP = ("No Celery app of this project is loaded in this process, so its tasks are not registered: "
                  "import it in the project package's __init__.py (from .celery import app as celery_app), as "
                  "Celery's Django guide does. Without it, .delay() also publishes on Celery's default app.")


def _check_monitor_targets(monitors: Mapping[str, Any], tasks: Mapping[str, Any],
                           no_project_app: bool = False, kinds: list[str] | None = None) -> list[CheckMessage]:
    from taskbadger.systems.celery import full_match

    messages = []
    for pattern in monitors:
        if not isinstance(pattern, str) or _pattern_error(pattern) is not None:
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
    usable = {p: m for p, m in monitors.items() if isinstance(p, str) and _pattern_error(p) is None}
    valid = {p: m for p, m in usable.items() if monitor_id(m) is not None}
    if any(full_match(p, task_name) for p in usable if p not in valid):
        return True  # declared: left unset on purpose (None), or not an id (E006 says so)
    return CelerySystemIntegration(monitors=valid).monitor_for(task_name)


def _check_beat(app: Any, monitors: Mapping[str, Any], tasks: Mapping[str, Any]) -> list[CheckMessage]:
    schedule = app.conf.beat_schedule or {}
    messages = []
    for entry, spec in schedule.items():
        task_name = spec.get("task") if isinstance(spec, Mapping) else None
        if isinstance(task_name, str) and not task_name.startswith("celery.") and \
                not _monitor_for(task_name, monitors, tasks):
            messages.append(checks.Info(
                f"Celery beat runs {task_name!r} (entry {entry!r}) with no Task Badger monitor.",
                hint=f"Create a monitor in Task Badger and add {task_name!r}: '<monitor id>' to "
                     "TASKBADGER['MONITORS'] so that a missed or failed run raises an alert.",
                obj="CELERY_BEAT_SCHEDULE", id="taskbadger.I001"))
    return messages


# -- Procrastinate -------------------------------------------------------------------------------------

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
    return []


# -- django.tasks tasks --------------------------------------------------------------------------------


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
    user_tasks = settings.user.get("DJANGO_TASKS") if isinstance(settings.raw, Mapping) else None
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
    if not isinstance(user_tasks, Mapping):
        return messages
    from taskbadger.systems.base import full_match

    for key in ("INCLUDES", "EXCLUDES"):
        for pattern in _patterns(user_tasks.get(key)):
            if not isinstance(pattern, str) or _pattern_error(pattern) is not None:
                continue  # E003 / E007
            if not any(full_match(pattern, name) for name in names) and not names_a_django_task(pattern):
                suggestion = conf.closest(pattern, names, upper=False)
                messages.append(checks.Warning(
                    f"TASKBADGER['DJANGO_TASKS'][{key!r}] entry {pattern!r} matches no django.tasks task.",
                    hint=(f"Did you mean {suggestion!r}? " if suggestion else "")
                    + "Use the task's module path (module.function) or a regular expression that matches all of it; "
                    "tasks are found in the installed apps' tasks modules.",
                    obj=f"TASKBADGER['DJANGO_TASKS'][{key!r}]", id="taskbadger.W011"))
    return messages
