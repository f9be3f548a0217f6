"""The one settings resolver of ``taskbadger_django``.

Every setting is decided here, with one precedence, highest first:

1. an explicit argument in code: ``configure(api_key=..., tags=...)`` (lower-case setting names);
2. the ``TASKBADGER`` dict in ``settings.py``;
3. the ``TASKBADGER_*`` environment variable (``TASKBADGER_API_KEY``, ``TASKBADGER_HOST``,
   ``TASKBADGER_ORG``, ``TASKBADGER_PROJECT``), read with django-environ;
4. the default in ``DEFAULTS``.

A value of ``None`` counts as "not set" at every level. The resolved settings are cached and the
cache is dropped when ``TASKBADGER`` changes (``override_settings`` sends ``setting_changed``),
and the SDK configuration follows: entering an override applies it, leaving it restores the
configuration that was active before.

``configure()`` turns the settings into one ``taskbadger.init()`` call. It never does network I/O and
never raises for bad settings: tasks then run untracked, the problem is logged once, and the system
checks (``manage.py check``) say how to fix it.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import logging
import os
import threading
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from taskbadger import config as sdk_config
from taskbadger._runtime import ForkSafeLock
from taskbadger.config import DEFAULT_HOST, Config
from taskbadger.exceptions import ConfigurationError

log = logging.getLogger("taskbadger.django")

SETTING_NAME = "TASKBADGER"

#: Defaults of ``TASKBADGER["CELERY"]``.
CELERY_DEFAULTS: dict[str, Any] = {
    "AUTO_TRACK": False,          # track every task (not only base=Task ones) that passes INCLUDES/EXCLUDES
    "INCLUDES": None,             # task names or regexes (matched in full) to auto-track; None: all
    "EXCLUDES": None,             # task names or regexes never auto-tracked (they win over INCLUDES)
    "RECORD_TASK_ARGS": False,    # store each task's args and kwargs in its data
    "HEARTBEAT_INTERVAL": None,   # seconds between automatic pings of running tasks
    "STALE_TIMEOUT": None,        # seconds without an update before the task is marked stale
}

#: Defaults of ``TASKBADGER``.
DEFAULTS: dict[str, Any] = {
    "API_KEY": None,              # project key; falls back to TASKBADGER_API_KEY
    "HOST": DEFAULT_HOST,         # falls back to TASKBADGER_HOST first
    "ORGANIZATION_SLUG": None,    # legacy keys only; falls back to TASKBADGER_ORG
    "PROJECT_SLUG": None,         # legacy keys only; falls back to TASKBADGER_PROJECT
    "ENABLED": True,              # False: nothing is sent, tasks run untracked
    "TAGS": {},                   # added to every task
    "BEFORE_CREATE": None,        # callable or dotted path; gets the task fields, returns them or None
    "TIMEOUT": None,              # seconds or (connect, read); None: the SDK default (2, 5)
    "MONITORS": {},               # task name or regex (matched in full) -> monitor id
    "CELERY": CELERY_DEFAULTS,
}

#: Settings that fall back to an environment variable.
ENV_VARS: dict[str, str] = {
    "API_KEY": "TASKBADGER_API_KEY",
    "HOST": "TASKBADGER_HOST",
    "ORGANIZATION_SLUG": "TASKBADGER_ORG",
    "PROJECT_SLUG": "TASKBADGER_PROJECT",
}

ARGUMENT, SETTINGS, ENVIRONMENT, DEFAULT = "argument", "settings", "environment", "default"


def celery_available() -> bool:
    """Whether Celery can be imported (without importing it)."""
    return importlib.util.find_spec("celery") is not None


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The valid name a typo most likely meant, or None."""
    choices = list(choices)
    if not isinstance(name, str):
        return None
    if name.upper() in choices:
        return name.upper()
    matches = difflib.get_close_matches(name.upper(), choices, n=1, cutoff=0.6)
    return matches[0] if matches else None


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
        self.overrides: dict[str, Any] = {str(k).upper(): v for k, v in (overrides or {}).items()}
        unknown = set(self.overrides) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown Task Badger setting(s): {', '.join(sorted(unknown))}")
        self._cache: dict[str, tuple[Any, str]] = {}

    def resolve(self, name: str) -> tuple[Any, str]:
        """``(value, source)`` for a top-level setting; source is argument/settings/environment/default."""
        if name not in DEFAULTS:
            raise AttributeError(f"unknown Task Badger setting {name!r}")
        if name not in self._cache:
            self._cache[name] = self._resolve(name)
        return self._cache[name]

    def _resolve(self, name: str) -> tuple[Any, str]:
        if self.overrides.get(name) is not None:
            value, source = self.overrides[name], ARGUMENT
        elif self.user.get(name) is not None:
            value, source = self.user[name], SETTINGS
        elif name in ENV_VARS and _read_env(ENV_VARS[name]) is not None:
            value, source = _read_env(ENV_VARS[name]), ENVIRONMENT
        else:
            value, source = DEFAULTS[name], DEFAULT
        if name == "CELERY":
            given = value if isinstance(value, Mapping) else {}
            value = {**CELERY_DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
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
        given = self.user.get("CELERY")
        return [k for k in given if k not in CELERY_DEFAULTS] if isinstance(given, Mapping) else []

    def signature(self) -> str:
        """Equal for equal settings (used to make ``configure()`` idempotent). A digest: it covers the key."""
        text = repr([(name, self.resolve(name)[0]) for name in sorted(DEFAULTS)])
        return hashlib.sha256(text.encode()).hexdigest()

    def init_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``taskbadger.init()``.

        Raises ConfigurationError for values of the wrong type; the SDK validates the rest.
        """
        def expect(label: str, value: Any, types: type | tuple[type, ...], what: str) -> Any:
            if value is not None and not isinstance(value, types):
                raise ConfigurationError(f"{label} must be {what}, got {type(value).__name__}.")
            return value

        if not isinstance(self.raw, (Mapping, type(None))):
            raise ConfigurationError(f"the {SETTING_NAME} setting must be a dict, got {type(self.raw).__name__}.")
        for name in ("API_KEY", "HOST", "ORGANIZATION_SLUG", "PROJECT_SLUG"):
            expect(f"TASKBADGER[{name!r}]", getattr(self, name), str, "a string")
        expect("TASKBADGER['ENABLED']", self.ENABLED, bool, "True or False")
        monitors = expect("TASKBADGER['MONITORS']", self.MONITORS, Mapping,
                          "a dict of task name or pattern to monitor id")
        expect("TASKBADGER['CELERY']", self.user.get("CELERY"), Mapping, "a dict")
        celery = self.CELERY
        for name in ("AUTO_TRACK", "RECORD_TASK_ARGS"):
            expect(f"TASKBADGER['CELERY'][{name!r}]", celery[name], bool, "True or False")

        kwargs: dict[str, Any] = {
            "token": self.API_KEY,
            "host": self.HOST,
            "organization_slug": self.ORGANIZATION_SLUG,
            "project_slug": self.PROJECT_SLUG,
            "tags": self.TAGS,
            "before_create": self.BEFORE_CREATE,
            "timeout": self.TIMEOUT,
            "systems": [],
        }
        if celery_available():
            from taskbadger.systems.celery import CelerySystemIntegration

            # Always present, so that MONITORS also apply to tasks using the Task base class.
            kwargs["systems"].append(CelerySystemIntegration(
                auto_track_tasks=celery["AUTO_TRACK"],
                includes=celery["INCLUDES"],
                excludes=celery["EXCLUDES"],
                record_task_args=celery["RECORD_TASK_ARGS"],
                heartbeat_interval=celery["HEARTBEAT_INTERVAL"],
                stale_timeout=celery["STALE_TIMEOUT"],
                monitors=monitors,
            ))
        return kwargs

    def __repr__(self) -> str:  # the key is a secret
        return f"<TaskBadgerSettings host={self.resolve('HOST')[0]!r} enabled={self.resolve('ENABLED')[0]!r}>"


# -- the cached settings object, reloaded on setting_changed ---------------------------------------

_settings: TaskBadgerSettings | None = None
_lock = ForkSafeLock(threading.RLock)  # Celery forks pool children


def get_settings() -> TaskBadgerSettings:
    """The resolved settings of this process (cached until ``TASKBADGER`` changes)."""
    global _settings
    current = _settings
    if current is None:
        with _lock:
            if _settings is None:
                _settings = TaskBadgerSettings()
            current = _settings
    return current


def reload_settings() -> None:
    """Forget the cached settings (the next access reads ``settings.TASKBADGER`` again)."""
    global _settings
    with _lock:
        _settings = None


# -- configuring the SDK ---------------------------------------------------------------------------

_overrides: dict[str, Any] = {}
_applied: Config | None = None          # the SDK config this module set last
_applied_signature: str | None = None
_restore_stack: list[tuple[Config | None, Config | None, str | None]] = []
_logged: set[str] = set()


def _log_once(level: int, message: str, *args: Any) -> None:
    key = message % args if args else message
    with _lock:
        if key in _logged:
            return
        _logged.add(key)
    log.log(level, message, *args)


def unconfigured_reason(settings: TaskBadgerSettings | None = None) -> str | None:
    """Why the settings give no SDK configuration, or None when they give one."""
    settings = settings or get_settings()
    try:
        enabled = settings.ENABLED
        if enabled is False:
            return "TASKBADGER['ENABLED'] is False"
        if not settings.API_KEY:
            return "no API key: set TASKBADGER['API_KEY'] or the TASKBADGER_API_KEY environment variable"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # legacy keys: the checks say so
            sdk_config.build_config(**settings.init_kwargs())
    except Exception as err:  # bad settings must never stop Django from starting
        return f"the TASKBADGER settings are invalid: {err} Run `manage.py check` for details."
    return None


def configure(**overrides: Any) -> Config | None:
    """Configure the SDK from the settings (no network I/O). Returns the config, or None when tasks
    run untracked (disabled, no key, or invalid settings, each logged once per process).

    ``overrides`` are explicit values that win over the settings (``api_key=``, ``tags=``, ``enabled=``,
    any ``TASKBADGER`` key in lower case); they are remembered for later reloads.
    Calling it again with the same settings changes nothing.
    """
    global _overrides, _applied, _applied_signature
    with _lock:
        if overrides:
            _overrides = dict(overrides)
        settings = TaskBadgerSettings(overrides=_overrides) if _overrides else get_settings()
        signature = settings.signature()
        if _applied is not None and _applied_signature == signature and sdk_config.get_config() is _applied:
            return _applied
        for key in settings.unknown_keys:
            suggestion = closest(key, DEFAULTS)
            _log_once(logging.WARNING, "Task Badger: unknown key %r in TASKBADGER is ignored%s.", key,
                      f" (did you mean {suggestion!r}?)" if suggestion else "")
        config = None
        if settings.ENABLED is False:
            log.debug("Task Badger is disabled (TASKBADGER['ENABLED'] is False): nothing is sent.")
        elif not settings.API_KEY:
            _log_once(logging.INFO, "Task Badger: no API key (TASKBADGER['API_KEY'] or TASKBADGER_API_KEY), "
                      "so tasks run untracked.")
        else:
            try:
                config = sdk_config.init(**settings.init_kwargs())
            except Exception as err:  # bad settings must never stop Django from starting
                _log_once(logging.ERROR, "Task Badger is not configured, tasks run untracked: %s "
                          "Run `manage.py check` for details.", err)
        if config is None:
            sdk_config.reset()
        _applied, _applied_signature = config, signature
        return config


def configure_at_startup() -> Config | None:
    """``AppConfig.ready()``: configure from settings, unless code already called ``taskbadger.init()``
    (explicit arguments in code win)."""
    current = sdk_config.get_config()
    if current is not None and current is not _applied:
        log.info("Task Badger was configured by taskbadger.init() before Django started; "
                 "the TASKBADGER setting is not applied.")
        return current
    return configure()


def on_setting_changed(*, setting: str, enter: bool | None = None, **kwargs: Any) -> None:
    """``setting_changed`` receiver: entering an override of ``TASKBADGER`` applies it; leaving it
    restores the SDK configuration that was active before."""
    global _applied, _applied_signature
    if setting != SETTING_NAME:
        return
    reload_settings()
    with _lock:
        if enter is False and _restore_stack:
            previous, _applied, _applied_signature = _restore_stack.pop()
            sdk_config.set_config(previous)
            return
        if enter:
            _restore_stack.append((sdk_config.get_config(), _applied, _applied_signature))
        configure()


def reset_state() -> None:
    """Forget the cached settings, the remembered overrides, what ``configure()`` applied and what it
    logged. For tests; the SDK configuration itself is left alone."""
    global _overrides, _applied, _applied_signature
    reload_settings()
    with _lock:
        _overrides, _applied, _applied_signature = {}, None, None
        _restore_stack.clear()
        _logged.clear()
