"""The progress bars' settings and wiring (E012, E013, W008, W009)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core import checks
from django.core.checks import CheckMessage

from taskbadger.config import import_string

from .. import conf

PROGRESS_DOCS = "See docs/progress.md."


def _progress_urls_included() -> bool:
    """Whether ``taskbadger_django.urls`` is in the URLconf: the project shows progress bars."""
    from django.urls import NoReverseMatch, reverse

    from ..progress import URL_NAME

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
