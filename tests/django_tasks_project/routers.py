"""A project with a second database, ``jobs`` (``DJT_JOBS_DATABASE_URL``), and a router that puts tables on it
(``DJT_ON_JOBS``: comma-separated app labels, e.g. ``django_tasks_database`` for the database backend's job table,
``taskbadger_django`` for Task Badger's own table). With a third database, ``replica`` (``DJT_REPLICA_DATABASE_URL``),
the reads of the apps in ``DJT_READ_FROM_REPLICA`` go there: a replica that has not caught up yet (nothing writes to
it but ``migrate``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings


def _alias(model: Any) -> str:
    return "jobs" if model._meta.app_label in settings.DJT_ON_JOBS else "default"


class JobsRouter:
    def db_for_read(self, model: Any, **hints: Any) -> str:
        if model._meta.app_label in settings.DJT_READ_FROM_REPLICA:
            return "replica"
        return _alias(model)

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return _alias(model)

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        return None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        if db == "replica":
            return app_label in settings.DJT_READ_FROM_REPLICA
        return db == ("jobs" if app_label in settings.DJT_ON_JOBS else "default")
