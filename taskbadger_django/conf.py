"""The one settings resolver of ``taskbadger_django``.

Every setting is decided here, with one precedence, highest first:

1. an explicit argument in code: ``configure(api_key=..., tags=...)`` (lower-case setting names);
2. the ``TASKBADGER`` dict in ``settings.py``;
3. the ``TASKBADGER_*`` environment variable (``TASKBADGER_API_KEY``, ``TASKBADGER_HOST``,
   ``TASKBADGER_ORG``, ``TASKBADGER_PROJECT``), read with django-environ;
4. the default in ``DEFAULTS``.

A value of ``None`` counts as "not set" at every level, and so does a blank string for a setting with an
environment variable. The resolved settings are cached and the
cache is dropped when ``TASKBADGER`` changes (``override_settings`` sends ``setting_changed``),
and the SDK configuration follows: entering an override applies it, leaving it restores the
configuration that was active before.

``configure()`` turns the settings into one ``taskbadger.init()`` call. It never does network I/O and
never raises for bad settings. Settings with an error (what ``manage.py check`` reports as a
``taskbadger.E…`` settings error: an unknown key, a value of the wrong type, a malformed key, host,
monitor id or pattern, a ``BEFORE_CREATE`` that cannot be imported) are not applied at all, not even
in part: tasks run untracked, one ERROR line per process names every problem, and the checks say how
to fix each.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from taskbadger import config as sdk_config
from taskbadger._runtime import ForkSafeLock
from taskbadger.config import Config
from taskbadger.exceptions import ConfigurationError, MissingConfiguration
from taskbadger.scope import scope_state
from taskbadger.systems.base import QueueIntegration

from . import schema

log = logging.getLogger("taskbadger.django")

SETTING_NAME = "TASKBADGER"

#: Defaults of ``TASKBADGER["CELERY"]``, ``TASKBADGER["PROGRESS"]`` and ``TASKBADGER`` (from the one table, ``schema``).
CELERY_DEFAULTS: dict[str, Any] = {name: setting.default for name, setting in schema.CELERY.items()}
PROGRESS_DEFAULTS: dict[str, Any] = {name: setting.default for name, setting in schema.PROGRESS.items()}
DJANGO_TASKS_DEFAULTS: dict[str, Any] = {name: setting.default for name, setting in schema.DJANGO_TASKS.items()}
PROCRASTINATE_DEFAULTS: dict[str, Any] = {name: setting.default for name, setting in schema.PROCRASTINATE.items()}
#: The nested dicts: each is merged key by key over its defaults.
NESTED: dict[str, dict[str, Any]] = {"CELERY": CELERY_DEFAULTS, "PROGRESS": PROGRESS_DEFAULTS,
                                     "DJANGO_TASKS": DJANGO_TASKS_DEFAULTS, "PROCRASTINATE": PROCRASTINATE_DEFAULTS}
#: The nested dicts of queue integrations, whose unknown keys are errors (E001, E014, E016).
QUEUES: dict[str, dict[str, Any]] = {"CELERY": CELERY_DEFAULTS, "DJANGO_TASKS": DJANGO_TASKS_DEFAULTS,
                                     "PROCRASTINATE": PROCRASTINATE_DEFAULTS}
DEFAULTS: dict[str, Any] = {name: setting.default for name, setting in schema.TOP.items()}
#: Settings that fall back to an environment variable.
ENV_VARS: dict[str, str] = {name: setting.env for name, setting in schema.TOP.items() if setting.env}

ARGUMENT, SETTINGS, ENVIRONMENT, DEFAULT = "argument", "settings", "environment", "default"
_SLUGS = {"organization_slug": "ORGANIZATION_SLUG", "project_slug": "PROJECT_SLUG"}


def celery_available() -> bool:
    """Whether Celery can be imported (without importing it)."""
    return importlib.util.find_spec("celery") is not None


def django_tasks_available() -> bool:
    """Whether Django's tasks framework (6.0+) or the ``django_tasks`` backport can be imported."""
    try:
        return any(importlib.util.find_spec(name) is not None for name in ("django.tasks", "django_tasks"))
    except (ImportError, ValueError):
        return False


#: The Django app of Procrastinate, whose jobs ``TASKBADGER["PROCRASTINATE"]`` tracks.
PROCRASTINATE_APP = "procrastinate.contrib.django"


def procrastinate_rollbacks(app: Any) -> Callable[[int, Callable[[], None]], None] | None:
    """For an app deferring through Django's connection (``DjangoConnector``, in the user's ``atomic()`` blocks):
    ``if_rolled_back(job_id, callback)``, which calls ``callback()`` when the job's row was rolled back."""
    from procrastinate.contrib.django.django_connector import DjangoConnector

    connector = getattr(app, "connector", None)
    if not isinstance(connector, DjangoConnector):
        return None
    alias = connector.alias

    def if_rolled_back(job_id: int, callback: Callable[[], None]) -> None:
        from .transactions import if_rolled_back as watch

        watch(alias, [("procrastinate_jobs", "id", job_id)], callback)

    return if_rolled_back


def procrastinate_app() -> Any:
    """Procrastinate's Django app (a ``procrastinate.App``) when ``procrastinate.contrib.django`` is installed
    and ready, else None (not installed, or listed after ``taskbadger_django``: check W013)."""
    from django.apps import apps

    if not apps.apps_ready or not apps.is_installed(PROCRASTINATE_APP):
        return None
    import procrastinate
    from procrastinate.contrib.django import procrastinate_app as module

    current = module.current_app
    return current if isinstance(current, procrastinate.App) else None


def closest(name: Any, choices: Iterable[str], upper: bool = True) -> str | None:
    """The valid name a typo most likely meant, or None (``upper``: compare in upper case, as
    setting names are)."""
    choices = list(choices)
    if not isinstance(name, str):
        return None
    wanted = name.upper() if upper else name
    if wanted in choices:
        return wanted
    matches = difflib.get_close_matches(wanted, choices, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _masked(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Explicit values by upper-case setting name, the API key masked wherever it is shown with ``repr`` (a debug
    page's locals, a crash report: ``config.Secret``)."""
    upper = {str(name).upper(): value for name, value in overrides.items()}
    if "API_KEY" in upper:
        upper["API_KEY"] = sdk_config.secret(upper["API_KEY"])
    return upper


def _given(name: str, value: Any) -> bool:
    """Whether a level sets ``name``: None never does, nor a blank string for a setting with an environment variable
    (``"API_KEY": os.environ.get("MY_KEY", "")`` must not hide an exported ``TASKBADGER_API_KEY``, as an empty
    ``token=`` does not in ``taskbadger.init()``)."""
    if value is None:
        return False
    return not (name in ENV_VARS and isinstance(value, str) and not value.strip())


def _read_env(name: str) -> str | None:
    try:
        import environ
    except ImportError:  # django-environ is optional here: plain os.environ does the same job
        value = os.environ.get(name)
    else:
        value = environ.Env().str(name, default=None)
    return value or None


def _user_settings() -> Any:
    from django.conf import settings

    return getattr(settings, SETTING_NAME, None)


class TaskBadgerSettings:
    """The resolved Task Badger settings: ``settings.API_KEY``, ``settings.CELERY["AUTO_TRACK"]``…

    Arguments:
        user_settings: the ``TASKBADGER`` dict; read from ``django.conf.settings`` when omitted.
        overrides: explicit values (``{"api_key": ...}``, names in any case); they win over everything.
    """

    def __init__(self, user_settings: Any = None, overrides: Mapping[str, Any] | None = None,
                 *, read_django_settings: bool = True) -> None:
        if user_settings is None and read_django_settings:
            user_settings = _user_settings()
        #: the raw setting, whatever its type (the checks report a wrong one)
        self.raw: Any = user_settings
        self.user: dict[str, Any] = dict(user_settings) if isinstance(user_settings, Mapping) else {}
        self.overrides: dict[str, Any] = _masked(overrides or {})
        self._cache: dict[str, tuple[Any, str]] = {}  # before anything can raise: a traceback's locals show self
        unknown = sorted(set(self.overrides) - set(DEFAULTS))
        if unknown:
            hints = [f"{name.lower()} (did you mean {close.lower()}?)" if (close := closest(name, DEFAULTS)) else
                     name.lower() for name in unknown]
            raise TypeError(f"unknown Task Badger setting(s): {', '.join(hints)}; the names are TASKBADGER's keys in "
                            "lower case (api_key=, tags=, enabled=...)")

    def resolve(self, name: str) -> tuple[Any, str]:
        """``(value, source)`` for a top-level setting; source is argument/settings/environment/default."""
        if name not in DEFAULTS:
            raise AttributeError(f"unknown Task Badger setting {name!r}")
        if name not in self._cache:
            self._cache[name] = self._resolve(name)
        return self._cache[name]

    def _resolve(self, name: str) -> tuple[Any, str]:
        if _given(name, self.overrides.get(name)):
            value, source = self.overrides[name], ARGUMENT
        elif _given(name, self.user.get(name)):
            value, source = self.user[name], SETTINGS
        elif name in ENV_VARS and _read_env(ENV_VARS[name]) is not None:
            value, source = _read_env(ENV_VARS[name]), ENVIRONMENT
        else:
            value, source = DEFAULTS[name], DEFAULT
        if name in NESTED:
            given = value if isinstance(value, Mapping) else {}
            value = {**NESTED[name], **{k: v for k, v in given.items() if v is not None}}
        elif isinstance(value, dict):
            value = dict(value)  # never hand out the defaults themselves
        return value, source

    def source(self, name: str) -> str:
        return self.resolve(name)[1]

    def __getattr__(self, name: str) -> Any:
        if name.isupper():
            return self.resolve(name)[0]
        raise AttributeError(name)

    @property
    def unknown_keys(self) -> list[str]:
        return [k for k in self.user if k not in DEFAULTS]

    @property
    def unknown_celery_keys(self) -> list[str]:
        return self.unknown_nested_keys("CELERY")

    def unknown_nested_keys(self, name: str) -> list[str]:
        """Keys of the nested dict ``TASKBADGER[name]`` (``CELERY``, ``PROGRESS``) that it does not have."""
        given = self.user.get(name)
        return [k for k in given if k not in NESTED[name]] if isinstance(given, Mapping) else []

    def signature(self) -> str:
        """Equal for equal settings (used to make ``configure()`` idempotent). A digest: it covers the key."""
        text = repr([(name, self.resolve(name)[0]) for name in sorted(DEFAULTS)])
        return hashlib.sha256(text.encode()).hexdigest()

    def init_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``taskbadger.init()``.

        Raises ConfigurationError for values of the wrong type; the SDK validates the rest.
        """
        if not isinstance(self.raw, (Mapping, type(None))):
            raise ConfigurationError(f"the {SETTING_NAME} setting must be a dict, got {type(self.raw).__name__}.")
        resolved = {name: self.resolve(name)[0] for name in schema.TOP}
        problems = schema.type_problems({**resolved, **{name: self.user.get(name) for name in QUEUES}}, schema.TOP,
                                        SETTING_NAME)
        problems += schema.type_problems(self.CELERY, schema.CELERY, f"{SETTING_NAME}['CELERY']")
        problems += schema.type_problems(self.DJANGO_TASKS, schema.DJANGO_TASKS, f"{SETTING_NAME}['DJANGO_TASKS']")
        problems += schema.type_problems(self.PROCRASTINATE, schema.PROCRASTINATE, f"{SETTING_NAME}['PROCRASTINATE']")
        if problems:
            raise ConfigurationError(problems[0].message)
        celery = self.CELERY
        monitors = self.MONITORS

        kwargs: dict[str, Any] = {
            "token": self.API_KEY,
            "host": self.HOST,
            "organization_slug": self.ORGANIZATION_SLUG,
            "project_slug": self.PROJECT_SLUG,
            "tags": self.TAGS,
            "before_create": self.BEFORE_CREATE,
            "timeout": self.TIMEOUT,
            "publish_budget": self.PUBLISH_BUDGET,
            "spool_dir": self.SPOOL_DIR,
            "systems": [],
        }
        # Built (and so checked: monitor ids, patterns, intervals) even without Celery, so that the same
        # settings are refused with Celery installed or not; imports no Celery until a worker connects it.
        from taskbadger.systems.celery import CelerySystemIntegration

        system = CelerySystemIntegration(**queue_rules(celery), monitors=monitors)
        if celery_available():
            kwargs["systems"].append(system)  # always present, so that MONITORS also apply to base=Task tasks
        from taskbadger.systems.django_tasks import DjangoTasksSystemIntegration

        django_tasks = DjangoTasksSystemIntegration(**queue_rules(self.DJANGO_TASKS), monitors=monitors,
                                                    channel=database_channel())
        if django_tasks_available():
            kwargs["systems"].append(django_tasks)
        rules = {**queue_rules(self.PROCRASTINATE), "monitors": monitors}
        system.monitors_setting = django_tasks.monitors_setting = f"{SETTING_NAME}['MONITORS']"  # for messages
        QueueIntegration(**rules)  # checked (patterns, intervals) whether Procrastinate is installed or not
        app = procrastinate_app()
        if app is not None:  # always present: @track tasks and MONITORS apply with AUTO_TRACK False too
            from taskbadger.systems.procrastinate import ProcrastinateSystemIntegration

            procrastinate = ProcrastinateSystemIntegration(app, **rules, if_rolled_back=procrastinate_rollbacks(app))
            procrastinate.monitors_setting = system.monitors_setting
            kwargs["systems"].append(procrastinate)
        return kwargs

    def problems(self) -> list[str]:
        """Every error that keeps these settings from being applied, one phrase each (no key: the caller
        decides). The same cases the system checks report as ``taskbadger.E001``–``E008``."""
        found = []
        for key in self.unknown_keys:
            suggestion = closest(key, DEFAULTS)
            found.append(f"unknown key {key!r} in {SETTING_NAME}" + (f" (did you mean {suggestion!r}?)" if suggestion
                                                                       else ""))
        for name, defaults in QUEUES.items():
            for key in self.unknown_nested_keys(name):
                suggestion = closest(key, defaults)
                found.append(f"unknown key {key!r} in {SETTING_NAME}[{name!r}]"
                             + (f" (did you mean {suggestion!r}?)" if suggestion else ""))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # legacy keys: the checks say so (W004)
                kwargs = self.init_kwargs()
                if kwargs["token"]:
                    sdk_config.build_config(**kwargs)
        except MissingConfiguration as err:
            names = " and ".join(f"{SETTING_NAME}[{_SLUGS[name]!r}]" for name in err.missing if name in _SLUGS)
            found.append(f"the API key is a legacy key, which needs {names or err}")
        except Exception as err:  # a ConfigurationError, or whatever a BEFORE_CREATE module raises on import
            text = str(err) if isinstance(err, ConfigurationError) else f"{type(err).__name__}: {err}"
            found.append(text.rstrip(". "))
        return found

    def __repr__(self) -> str:  # the key is a secret
        return f"<TaskBadgerSettings host={self.resolve('HOST')[0]!r} enabled={self.resolve('ENABLED')[0]!r}>"


def queue_rules(section: Mapping[str, Any]) -> dict[str, Any]:
    """A queue integration's arguments from its nested dict (``CELERY``, ``DJANGO_TASKS``, ``PROCRASTINATE``)."""
    return {"auto_track_tasks": section["AUTO_TRACK"], "includes": section["INCLUDES"],
            "excludes": section["EXCLUDES"], "record_task_args": section["RECORD_TASK_ARGS"],
            "heartbeat_interval": section["HEARTBEAT_INTERVAL"], "stale_timeout": section["STALE_TIMEOUT"]}


_channel: Any = None


def database_channel() -> Any:
    """This process's channel of ``django.tasks`` task ids through the database (``carried``)."""
    global _channel
    if _channel is None:
        from .carried import DatabaseChannel

        _channel = DatabaseChannel()
    return _channel


# -- this process's state: the cached settings, and what configure() applied ----------------------------


@dataclass
class _State:
    settings: TaskBadgerSettings | None = None  # cached until TASKBADGER changes
    overrides: dict[str, Any] = field(default_factory=dict)  # from configure(**overrides), kept for reloads
    applied: Config | None = None  # the SDK config configure() set last
    applied_signature: str | None = None
    #: per override entered: the SDK configuration, what configure() had applied, and the scope's tags before it
    restore_stack: list[tuple[Config | None, Config | None, str | None, dict[str, str]]] = field(default_factory=list)
    logged: set[str] = field(default_factory=set)
    init_before_django: bool = False  # taskbadger.init() was called before Django started: settings not applied


_state = _State()
_lock = ForkSafeLock(threading.RLock)  # Celery forks pool children


def get_settings() -> TaskBadgerSettings:
    """The resolved settings of this process (cached until ``TASKBADGER`` changes)."""
    current = _state.settings
    if current is None:
        with _lock:
            if _state.settings is None:
                _state.settings = TaskBadgerSettings()
            current = _state.settings
    return current


def reload_settings() -> None:
    """Forget the cached settings (the next access reads ``settings.TASKBADGER`` again)."""
    with _lock:
        _state.settings = None


# -- configuring the SDK ---------------------------------------------------------------------------


def _log_once(level: int, message: str, *args: Any) -> None:
    key = message % args if args else message
    with _lock:
        if key in _state.logged:
            return
        _state.logged.add(key)
    log.log(level, message, *args)


NO_KEY = "no API key: set TASKBADGER['API_KEY'] or the TASKBADGER_API_KEY environment variable"
DISABLED = "TASKBADGER['ENABLED'] is False"


def refusal(problems: list[str]) -> str:
    """The one sentence that says why settings with errors were not applied."""
    return (f"the {SETTING_NAME} setting has errors, so it is not applied: " + "; ".join(problems)
            + ". Run `manage.py check` for how to fix each.")


def unconfigured_reason(settings: TaskBadgerSettings | None = None) -> str | None:
    """Why the settings give no SDK configuration, or None when they give one."""
    settings = settings or get_settings()
    if settings.ENABLED is False:
        return DISABLED  # nothing is sent whatever else is set; `manage.py check` still reports errors
    problems = settings.problems()
    if not settings.API_KEY and not problems:
        return NO_KEY
    return refusal(problems) if problems else None


def configure(**overrides: Any) -> Config | None:
    """Configure the SDK from the settings (no network I/O). Returns the config, or None when tasks
    run untracked: disabled, no key, or settings with errors (each logged once per process; with errors
    nothing of the settings is applied).

    ``overrides`` are explicit values that win over the settings (``api_key=``, ``tags=``, ``enabled=``,
    any ``TASKBADGER`` key in lower case); they are remembered for later reloads.
    Calling it again with the same settings changes nothing.
    """
    overrides = _masked(overrides)  # this frame's locals show on a debug page when a bad name raises below
    with _lock:
        if overrides:
            settings = TaskBadgerSettings(overrides=overrides)  # raises for a name that is no setting, remembering none
            _state.overrides = overrides
        else:
            settings = TaskBadgerSettings(overrides=_state.overrides) if _state.overrides else get_settings()
        signature = settings.signature()
        if _state.applied is not None and _state.applied_signature == signature \
                and sdk_config.get_config() is _state.applied:
            return _state.applied
        config, reason = None, unconfigured_reason(settings)
        if reason == DISABLED:
            log.debug("Task Badger is disabled (TASKBADGER['ENABLED'] is False): nothing is sent.")
        elif reason == NO_KEY:
            _log_once(logging.INFO, "Task Badger: no API key (TASKBADGER['API_KEY'] or TASKBADGER_API_KEY), "
                      "so tasks run untracked.")
        elif reason is not None:
            _log_once(logging.ERROR, "Task Badger: tasks run untracked: %s", reason)
        else:
            try:
                config = sdk_config.init(**settings.init_kwargs())
            except Exception as err:  # checked above; never let a surprise stop Django from starting
                reason = refusal([str(err).rstrip(". ")])
                _log_once(logging.ERROR, "Task Badger: tasks run untracked: %s", reason)
        if config is None:
            sdk_config.reset(reason)
        _state.applied, _state.applied_signature = config, signature
        return config


def configure_at_startup() -> Config | None:
    """``AppConfig.ready()``: configure from settings, unless code already called ``taskbadger.init()``
    (explicit arguments in code win)."""
    current = sdk_config.get_config()
    if current is not None and current is not _state.applied:
        _state.init_before_django = True
        log.log(logging.WARNING if _user_settings() else logging.INFO,
                "Task Badger was configured by taskbadger.init() before Django started; the TASKBADGER setting is "
                "not applied.")
        return current
    return configure()


def init_before_django() -> bool:
    """Whether code called ``taskbadger.init()`` before Django started, so the settings were not applied."""
    return _state.init_before_django


def on_setting_changed(*, setting: str, enter: bool | None = None, **kwargs: Any) -> None:
    """``setting_changed`` receiver: entering an override of ``TASKBADGER`` applies it; leaving it
    restores the SDK configuration that was active before."""
    if setting != SETTING_NAME:
        return
    reload_settings()
    with _lock:
        if enter is False and _state.restore_stack:
            previous, _state.applied, _state.applied_signature, tags = _state.restore_stack.pop()
            sdk_config.set_config(previous)
            scope_state().tags = tags  # init(tags=...) set the scope's tags too: the override's stayed on every task
            return
        if enter:
            _state.restore_stack.append((sdk_config.get_config(), _state.applied, _state.applied_signature,
                                         dict(scope_state().tags)))
        configure()


def reset_state() -> None:
    """Forget the cached settings, the remembered overrides, what ``configure()`` applied and what it
    logged. For tests; the SDK configuration itself is left alone."""
    global _state
    with _lock:
        _state = _State()
