"""``manage.py taskbadger check`` and ``manage.py taskbadger list [--limit N]``."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from typing import Any, TypeVar

from django.core.management.base import BaseCommand, CommandError, CommandParser

import taskbadger
from taskbadger.config import Config
from taskbadger.exceptions import (
    NotFound,
    TaskbadgerException,
    TransportError,
    Unauthorized,
    UnexpectedStatus,
)

from ... import conf

T = TypeVar("T")


def _age(created: dt.datetime | None, now: dt.datetime) -> str:
    if created is None:
        return "-"
    seconds = max(0, int((now - created).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _progress(task: Any) -> str:
    if task.value_percent is not None:
        return f"{task.value_percent}%"
    if task.value is not None:
        return f"{task.value}/{task.value_max}" if task.value_max else str(task.value)
    return "-"


def _status(task: Any) -> str:
    status = task.status
    return getattr(status, "value", status)


class Command(BaseCommand):
    help = "Check the Task Badger configuration against the API, or list recent tasks."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="{check,list}")
        actions.add_parser("check", help="Authenticate against the API and show the configuration.")
        listing = actions.add_parser("list", help="Show the most recent tasks.")
        listing.add_argument("--limit", type=int, default=20, help="How many tasks to show (default 20).")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        config = self._config()
        if action == "check":
            self._check(config)
        else:
            limit = options["limit"]
            if limit < 1:
                raise CommandError("--limit must be at least 1.")
            self._list(config, limit)

    def _config(self) -> Config:
        config = taskbadger.get_config()
        if config is None:
            reason = conf.unconfigured_reason() or "taskbadger.init() has not run in this process"
            raise CommandError(f"Task Badger is not configured: {reason}.")
        return config

    def _call(self, config: Config, func: Callable[[], T]) -> T:
        """Call the API; turn its failures into a CommandError that says what to do (never the key)."""
        where = f"{config.host} (organization {config.organization_slug!r}, project {config.project_slug!r})"
        try:
            return func()
        except Unauthorized as err:
            raise CommandError(
                f"Task Badger refused the API key (HTTP {err.status_code}: {err.message}) at {config.host}. "
                "Check TASKBADGER['API_KEY'] / TASKBADGER_API_KEY: copy the project key again from the "
                "project settings page."
            ) from None
        except NotFound:
            raise CommandError(
                f"Task Badger has no project at {where} (HTTP 404): check the key, or ORGANIZATION_SLUG and "
                "PROJECT_SLUG for a legacy key."
            ) from None
        except TransportError as err:
            raise CommandError(
                f"Could not reach Task Badger at {config.host}: {err}. Check TASKBADGER['HOST'] and the network."
            ) from None
        except UnexpectedStatus as err:
            raise CommandError(f"Task Badger at {config.host} answered HTTP {err.status_code}: {err.message}") \
                from None
        except TaskbadgerException as err:
            raise CommandError(f"Task Badger at {config.host}: {err}") from None

    def _check(self, config: Config) -> None:
        self._call(config, lambda: taskbadger.list_tasks(page_size=1))
        stats = taskbadger.stats()
        counters = " ".join(f"{key}={value}" for key, value in stats.items())
        system = config.system("celery")
        write = self.stdout.write
        write(self.style.SUCCESS("Task Badger: the API accepted the key."))
        write(f"organization: {config.organization_slug}")
        write(f"project:      {config.project_slug}")
        write(f"host:         {config.host}")
        if system is not None:
            monitors = getattr(system, "monitors", {})
            write(f"celery:       auto_track={system.auto_track_tasks} monitors={len(monitors)}")
        write(f"delivery:     {counters}")

    def _list(self, config: Config, limit: int) -> None:
        page_size = min(limit, 100)
        tasks = self._call(config, lambda: list(itertools.islice(taskbadger.iter_tasks(page_size=page_size), limit)))
        if not tasks:
            self.stdout.write("No tasks.")
            return
        now = dt.datetime.now(dt.timezone.utc)
        rows = [("STATUS", "PROGRESS", "NAME", "AGE")]
        rows += [(_status(t), _progress(t), t.name, _age(t.created, now)) for t in tasks]
        widths = [max(len(str(row[i])) for row in rows) for i in range(3)]
        for row in rows:
            cells = [str(cell).ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
            self.stdout.write("  ".join([*cells, str(row[3])]))
