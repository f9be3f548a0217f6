"""The one table of the ``TASKBADGER`` setting: every key, its default, the environment variable it
falls back to, and what a valid value is.

The resolver (``conf``) takes defaults and fallbacks from here and refuses values of the wrong type
with the ``expected`` text; the system checks (``checks``) report the same values with the same text
and an example. Values are checked with the SDK's own validators (the key, the host, the timeout,
monitor ids, patterns), never with copies of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from taskbadger.config import (
    DEFAULT_HOST,
    MAX_PUBLISH_BUDGET,
    MAX_TIMEOUT,
    MIN_TIMEOUT,
    normalize_timeout,
    resolve_spool_dir,
)
from taskbadger.exceptions import ConfigurationError
from taskbadger.models import (
    HEARTBEAT_RANGE,
    MAX_SECONDS,
    MAX_TAG_LENGTH,
    MIN_TAG_LENGTH,
    is_heartbeat_interval,
    is_tag_map,
    is_whole_seconds,
    tag_map_problem,
)


@dataclass(frozen=True)
class Setting:
    default: Any
    accepts: Callable[[Any], bool]  # True for a value of the right type (None always means "not set")
    expected: str  # what the value should be, for messages
    example: str  # a line of settings.py that sets it well
    env: str | None = None  # the TASKBADGER_* variable it falls back to
    #: for a value it does not accept: what is wrong with it ("got <type>" when None)
    explain: Callable[[Any], str | None] | None = None


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v))


def _is_timeout(v: Any) -> bool:
    try:
        normalize_timeout(v)
    except ConfigurationError:
        return False
    return True


def _is_spool_dir(v: Any) -> bool:
    if v is False:
        return True
    try:
        resolve_spool_dir(v)
    except ConfigurationError:
        return False
    return True


def _is_positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


#: ``TASKBADGER["CELERY"]``
CELERY: dict[str, Setting] = {
    "AUTO_TRACK": Setting(False, _is_bool, "True or False", '"AUTO_TRACK": True'),
    "INCLUDES": Setting(None, _is_str_list, "a list of task names or patterns", '"INCLUDES": [r"billing\\..*"]'),
    "EXCLUDES": Setting(None, _is_str_list, "a list of task names or patterns", '"EXCLUDES": [r"celery\\..*"]'),
    "RECORD_TASK_ARGS": Setting(False, _is_bool, "True or False", '"RECORD_TASK_ARGS": False'),
    "HEARTBEAT_INTERVAL": Setting(None, is_heartbeat_interval, HEARTBEAT_RANGE, '"HEARTBEAT_INTERVAL": 30'),
    "STALE_TIMEOUT": Setting(None, is_whole_seconds, f"a whole number of seconds from 1 to {MAX_SECONDS}",
                             '"STALE_TIMEOUT": 120'),
}

#: ``TASKBADGER["DJANGO_TASKS"]``: Django's tasks framework (``django.tasks``, or the ``django_tasks`` backport);
#: tracked by default, the other keys as for Celery
DJANGO_TASKS: dict[str, Setting] = {
    **CELERY,
    "AUTO_TRACK": Setting(True, _is_bool, "True or False", '"AUTO_TRACK": True'),
    "EXCLUDES": Setting(None, _is_str_list, "a list of task names or patterns", '"EXCLUDES": [r".*\\.ping"]'),
}

#: ``TASKBADGER["PROCRASTINATE"]``: the jobs of ``procrastinate.contrib.django`` (tracked by default)
PROCRASTINATE: dict[str, Setting] = {
    **CELERY,
    "AUTO_TRACK": Setting(True, _is_bool, "True or False", '"AUTO_TRACK": True'),
    "EXCLUDES": Setting(None, _is_str_list, "a list of task names or patterns",
                        '"EXCLUDES": [r"myapp\\.cleanup\\..*"]'),
}


def _is_poll_interval(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and MIN_POLL_INTERVAL <= v <= MAX_POLL_INTERVAL


#: The poll interval's bounds, in seconds: faster than twice a second costs the API for nothing a
#: person can see; slower than every five minutes is not a progress bar any more.
MIN_POLL_INTERVAL, MAX_POLL_INTERVAL = 0.5, 300

#: ``TASKBADGER["PROGRESS"]``: the progress bar of ``{% taskbadger_progress %}`` (``progress``)
PROGRESS: dict[str, Setting] = {
    "TOKEN_MAX_AGE": Setting(6 * 3600, lambda v: _is_positive(v) and isinstance(v, int),
                             "a positive integer number of seconds", '"TOKEN_MAX_AGE": 6 * 3600'),
    "POLL_INTERVAL": Setting(1.0, _is_poll_interval,
                             f"a number of seconds from {MIN_POLL_INTERVAL} to {MAX_POLL_INTERVAL}",
                             '"POLL_INTERVAL": 1.0'),
    "AUTHORIZE": Setting(None, lambda v: callable(v) or isinstance(v, str), "a callable or a dotted path to one",
                         '"AUTHORIZE": "myproject.permissions.may_watch_task"'),
    "CACHE": Setting("default", _is_str, "the alias of a cache in CACHES", '"CACHE": "default"'),
}

#: ``TASKBADGER``
TOP: dict[str, Setting] = {
    "API_KEY": Setting(None, _is_str, "a string", '"API_KEY": env.str("TASKBADGER_API_KEY", default=None)',
                       env="TASKBADGER_API_KEY"),
    "HOST": Setting(DEFAULT_HOST, _is_str, "a string", f'"HOST": "{DEFAULT_HOST}"', env="TASKBADGER_HOST"),
    "ORGANIZATION_SLUG": Setting(None, _is_str, "a string", '"ORGANIZATION_SLUG": "my-org"', env="TASKBADGER_ORG"),
    "PROJECT_SLUG": Setting(None, _is_str, "a string", '"PROJECT_SLUG": "my-project"', env="TASKBADGER_PROJECT"),
    "ENABLED": Setting(True, _is_bool, "True or False", '"ENABLED": env.bool("TASKBADGER_ENABLED", True)'),
    "TAGS": Setting({}, is_tag_map, f"a dict of names to strings of {MIN_TAG_LENGTH} to {MAX_TAG_LENGTH} characters",
                    '"TAGS": {"environment": "production"}', explain=tag_map_problem),
    "BEFORE_CREATE": Setting(None, lambda v: callable(v) or isinstance(v, str), "a callable or a dotted path to one",
                             '"BEFORE_CREATE": "myproject.taskbadger.before_create"'),
    "TIMEOUT": Setting(None, _is_timeout, f"a number of seconds or a (connect, read) pair, each from {MIN_TIMEOUT:g} "
                       f"to {MAX_TIMEOUT:g}",
                       '"TIMEOUT": (2, 5)'),
    "SPOOL_DIR": Setting(None, _is_spool_dir, "a directory path (no control characters), or False to turn the "
                         "spool off",
                         '"SPOOL_DIR": BASE_DIR / "var" / "taskbadger-spool"'),
    "PUBLISH_BUDGET": Setting(None, lambda v: _is_positive(v) and v <= MAX_PUBLISH_BUDGET,
                              f"a positive number of seconds, at most {MAX_PUBLISH_BUDGET:g}", '"PUBLISH_BUDGET": 1.0'),
    "MONITORS": Setting({}, lambda v: isinstance(v, Mapping), "a dict of task name or pattern to monitor id",
                        '"MONITORS": {"billing.tasks.nightly_invoices": "<monitor uuid>"}'),
    "CELERY": Setting({name: s.default for name, s in CELERY.items()}, lambda v: isinstance(v, Mapping), "a dict",
                      '"CELERY": {"AUTO_TRACK": True}'),
    "DJANGO_TASKS": Setting({name: s.default for name, s in DJANGO_TASKS.items()}, lambda v: isinstance(v, Mapping),
                            "a dict", '"DJANGO_TASKS": {"AUTO_TRACK": True}'),
    "PROCRASTINATE": Setting({name: s.default for name, s in PROCRASTINATE.items()}, lambda v: isinstance(v, Mapping),
                             "a dict", '"PROCRASTINATE": {"EXCLUDES": [r"myapp\\.cleanup\\..*"]}'),
    "PROGRESS": Setting({name: s.default for name, s in PROGRESS.items()}, lambda v: isinstance(v, Mapping), "a dict",
                        '"PROGRESS": {"POLL_INTERVAL": 1.0}'),
}


@dataclass(frozen=True)
class Problem:
    label: str  # e.g. TASKBADGER['CELERY']['AUTO_TRACK']
    setting: Setting
    value: Any

    @property
    def message(self) -> str:
        detail = self.setting.explain(self.value) if self.setting.explain is not None else None
        return f"{self.label} must be {self.setting.expected}, {detail or f'got {_shown(self.value, self.setting)}'}."


def _shown(value: Any, setting: Setting) -> str:
    """A value's type, or the value itself when it is a number where the setting takes numbers: out of range, not
    of the wrong type (other values, a key among them, are never shown)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and _takes_numbers(setting):
        return repr(value)
    return type(value).__name__


def _takes_numbers(setting: Setting) -> bool:
    try:
        return bool(setting.accepts(1) or setting.accepts(1.0))
    except Exception:
        return False


def type_problems(values: Mapping[str, Any], table: Mapping[str, Setting], where: str) -> list[Problem]:
    """Every value of the wrong type in ``values`` (None is "not set"); ``where`` names the dict."""
    return [Problem(f"{where}[{key!r}]", setting, values[key]) for key, setting in table.items()
            if values.get(key) is not None and not setting.accepts(values[key])]
