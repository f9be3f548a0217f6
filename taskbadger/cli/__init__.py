"""The ``taskbadger`` command line (console script ``taskbadger.cli:main``; extra ``django-taskbadger[cli]``).

typer and rich are imported here only, when the command line runs: ``import taskbadger`` never
imports them. ``taskbadger.cli.commands`` (used by ``manage.py taskbadger`` too) needs neither.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["main"]

_MISSING = """The Task Badger CLI requires the '{name}' package, which is not installed.
Install the CLI extras with:

    pip install "django-taskbadger[cli]"
"""


def main() -> None:
    """Run the console script; exit with its status."""
    _stand_in_for_closed_streams()
    try:
        import rich  # noqa: F401
        import typer  # noqa: F401
    except ImportError as err:
        sys.stderr.write(_MISSING.format(name=(err.name or "typer").split(".")[0]))
        sys.exit(1)
    # The SDK logs to the "taskbadger" logger; unconfigured, Python would print its warnings raw. What the
    # command line has to say, it prints itself; of the SDK's lines, only the errors reach stderr: updates
    # lost (an earlier run's spooled outcome dropped, a spool that cannot be written), which a crontab's
    # mail must show.
    logger = logging.getLogger("taskbadger")
    if not logger.handlers:
        logger.addHandler(_ErrorLines())
    from .app import app
    from .process import DieOfSignal, die_of

    signum: int | None = None
    try:
        app(prog_name="taskbadger")
        code: int | str | None = 0
    except SystemExit as exit_:
        code = exit_.code
    except DieOfSignal as death:  # ``run``: the command died of a signal we must die of as well
        code, signum = death.code, death.signum
    except KeyboardInterrupt:
        code = 130
    except Exception as err:  # a bug of ours: one line, never a traceback
        sys.stderr.write(f"taskbadger: internal error: {type(err).__name__}: {err}\n")
        code = 1
    _flush_stdout()
    if signum is not None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        die_of(signum)
    sys.exit(code)


def _stand_in_for_closed_streams() -> None:
    """Started with stdout or stderr closed (``taskbadger run ... >&-``, a daemon's closed descriptors),
    Python gives ``sys.stdout``/``sys.stderr`` as None, and every write or flush of ours would fail, before
    the command starts. What we would have written goes to the null device instead. The descriptor
    opened for it is not inherited: the command still starts with that descriptor closed, as given."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            try:
                setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # kept open: for the process's life
            except OSError:
                pass


class _ErrorLines(logging.Handler):
    """The SDK's ERROR lines on stderr, one line each, in the command line's words: never a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage().removeprefix("Task Badger: ").splitlines()[0]
            sys.stderr.write(f"taskbadger: {message}\n")
        except Exception:
            pass  # a line about tracking is never worth failing the command


def _flush_stdout() -> None:
    """Flush stdout; when its reader went away (``taskbadger list | head``), say nothing about it."""
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError, OSError):
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
