"""The Django app: registers the system checks and configures the SDK from settings."""

from __future__ import annotations

from django.apps import AppConfig
from django.core.signals import setting_changed


class TaskBadgerConfig(AppConfig):
    name = "taskbadger_django"
    verbose_name = "Task Badger"

    def ready(self) -> None:
        """Runs in every process that sets Django up (web, ``celery worker``, ``celery beat``).

        Idempotent and without network I/O: register the checks, follow ``override_settings``,
        configure the SDK from ``settings.TASKBADGER``.
        """
        from . import checks, conf

        checks.register()
        setting_changed.connect(conf.on_setting_changed, dispatch_uid="taskbadger_django.conf.on_setting_changed")
        conf.configure_at_startup()
