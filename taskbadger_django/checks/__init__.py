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
taskbadger.E010    Error    a Celery task (or a beat entry) has a ``taskbadger_*`` option with an invalid value
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
taskbadger.W011    Warning  a ``DJANGO_TASKS``/``PROCRASTINATE`` ``INCLUDES``/``EXCLUDES`` entry matches no task
taskbadger.E016    Error    unknown key in ``TASKBADGER["PROCRASTINATE"]``
taskbadger.E017    Error    ``procrastinate.contrib.django`` is installed but Procrastinate is older than 3.9
taskbadger.E018    Error    env ``TASKBADGER_HTTP_TIMEOUT``/``_PUBLISH_BUDGET``/``_SPOOL_DIR`` is refused by init()
taskbadger.W012    Warning  ``TASKBADGER["PROCRASTINATE"]`` is set but ``procrastinate.contrib.django`` is not installed
taskbadger.W013    Warning  ``taskbadger_django`` comes before ``procrastinate.contrib.django``: jobs are not tracked
taskbadger.W014    Warning  ``taskbadger.init()`` ran before Django started: the ``TASKBADGER`` setting is not applied
taskbadger.W015    Warning  a setting whose name looks like a misspelled ``TASKBADGER`` (``TASK_BADGER``)
taskbadger.W016    Warning  a setting named for a ``TASKBADGER`` key (``TASKBADGER_API_KEY``): it belongs in the dict
taskbadger.W017    Warning  ``HOST`` has a path: the API's URLs are made from the host (``/api/...``)
taskbadger.W018    Warning  a ``TASKS`` backend is RQ's but ``RQ["WORKER_CLASS"]`` is not Task Badger's worker class
taskbadger.W019    Warning  a task with a monitor is not tracked (Celery: no ``base=Task``, not auto-tracked;
                           django.tasks, Procrastinate: ``AUTO_TRACK``/``INCLUDES``/``EXCLUDES`` leave it out)
taskbadger.W020    Warning  a queue's ``STALE_TIMEOUT`` is not longer than its ``HEARTBEAT_INTERVAL``
taskbadger.I001    Info     a ``beat_schedule`` entry runs a task that has no monitor id
=================  =======  ==========================================================================
"""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.core.checks import CheckMessage

from .celery_tasks import BROKER_PACKAGES, check_broker, check_celery_tasks
from .common import DOCS
from .progress import check_progress
from .queues import (
    check_django_tasks,
    check_django_tasks_rq,
    check_procrastinate,
    django_tasks_found,
    names_a_django_task,
)
from .settings import check_settings

__all__ = ["BROKER_PACKAGES", "DOCS", "TAG", "check_broker", "check_celery_tasks", "check_django_tasks",
           "check_django_tasks_rq", "check_procrastinate", "check_progress", "check_settings", "check_taskbadger",
           "django_tasks_found", "names_a_django_task", "register"]

TAG = "taskbadger"


def register() -> None:
    """Register the checks (idempotent: Django keeps registered checks in a set)."""
    checks.register(check_taskbadger, TAG)


def check_taskbadger(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every Task Badger check, settings first, in a stable order."""
    return (check_settings(app_configs, **kwargs) + check_progress(app_configs, **kwargs)
            + check_broker(app_configs, **kwargs) + check_celery_tasks(app_configs, **kwargs)
            + check_django_tasks(app_configs, **kwargs) + check_django_tasks_rq(app_configs, **kwargs)
            + check_procrastinate(app_configs, **kwargs))
