"""``manage.py taskbadger check`` and ``manage.py taskbadger list [--limit N]``."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from django.core.management.base import BaseCommand, CommandError, CommandParser

import taskbadger
from taskbadger import spooling
from taskbadger.config import Config
from taskbadger.delivery.sender import delivery_line
from taskbadger.exceptions import (
    NotFound,
    TaskbadgerException,
    TransportError,
    Unauthorized,
    UnexpectedStatus,
)

from ... import conf

T = TypeVar("T")


class Command(BaseCommand):
    help = "Check the Task Badger configuration against the API, or list recent tasks."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="{check,list}")
        actions.add_parser("check", help="Authenticate against the API and show the configuration.")
        listing = actions.add_parser("list", help="Show the most recent tasks (as `taskbadger list` does).")
        listing.add_argument("-f", "--format", choices=("pretty", "json", "csv"), default=None,
                             help="Output format (default: pretty on a terminal, csv otherwise).")
        listing.add_argument("--limit", type=int, default=100, help="How many tasks to show (default 100).")
        listing.add_argument("--start-token", default=None, help="Start from this page token.")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        config = self._config()
        if action == "check":
            self._check(config)
        else:
            self._list(options)

    def _config(self) -> Config:
        config = taskbadger.get_config()
        if config is None:
            reason = conf.unconfigured_reason() or "taskbadger.init() has not run in this process"
            raise CommandError(f"Task Badger is not configured: {reason.rstrip('.')}.")
        return config

    def _call(self, config: Config, func: Callable[[], T]) -> T:
        """Call the API; turn its failures into a CommandError that says what to do (never the key)."""
        where = f"{config.host} (organization {config.organization_slug!r}, project {config.project_slug!r})"
        path = urlsplit(config.host).path.strip("/")
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
                "PROJECT_SLUG for a legacy key" + (f"; and TASKBADGER['HOST'], whose path ({path}) comes before "
                                                  "the API's own /api/..." if path else "") + "."
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
        spooling.deliver_spooled()  # the API answers: deliver what ended processes left behind
        delivered = taskbadger.flush(10.0)
        stats = taskbadger.stats()
        system = config.system("celery")
        write = self.stdout.write
        write(self.style.SUCCESS("Task Badger: the API accepted the key."))
        write(f"organization: {config.organization_slug}")
        write(f"project:      {config.project_slug}")
        write(f"host:         {config.host}")
        if system is not None:
            monitors = getattr(system, "monitors", {})
            write(f"celery:       auto_track={system.auto_track_tasks} monitors={len(monitors)}")
        if config.spool_dir is None:
            write("spool:        off (TASKBADGER['SPOOL_DIR'] is False): updates a process cannot deliver before "
                  "it ends are lost")
        else:
            taken = stats["unspooled"]
            now = f" ({taken} taken from it by this process, {'all' if delivered else 'not all'} delivered)" \
                if taken else ""
            write(f"spool:        {config.spool_dir}: {stats['spool']} update(s) waiting{now}")
        write(f"breaker:      {stats['breaker']}")
        write(f"delivery:     this process (manage.py): {delivery_line(stats)}")
        write("              each worker process logs its own line at INFO, at most once a minute and only when its "
              "counters changed")

    def _list(self, options: dict[str, Any]) -> None:
        """The ``taskbadger list`` command itself (one command layer, two entry points)."""
        from taskbadger.cli import commands

        err = io.StringIO()
        code = commands.list_tasks(options["format"], options["limit"], options["start_token"], out=self.stdout,
                                   is_terminal=self.stdout.isatty(), err=err)
        if code != commands.OK:
            raise CommandError(err.getvalue().strip().removeprefix("Error: "))
        if err.getvalue():
            self.stderr.write(err.getvalue().rstrip("\n"))
