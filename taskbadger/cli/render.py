"""How tasks are shown: ``pretty`` (for people), ``json`` and ``csv`` (for programs).

Every function returns text; the caller writes it in one piece. ``manage.py taskbadger`` and the
``taskbadger`` console script both print through here, so they print the same thing.

The pretty list is a rich table when rich is installed (it is in the ``cli`` extra), and an aligned
plain-text table otherwise: a Django project that never installed the extra still gets a table.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import shlex
import shutil
from collections.abc import Iterable, Sequence
from typing import Any

from taskbadger.models import TERMINAL_STATUSES

FORMATS = ("pretty", "json", "csv")
CSV_HEADER = ("Task ID", "Created", "Name", "Status", "Percent", "Value", "Value Max", "Duration (s)")
_STATUS_STYLES = {
    "success": "green", "error": "bold red", "cancelled": "magenta", "stale": "red",
    "processing": "yellow", "pre_processing": "yellow", "post_processing": "yellow", "pending": "dim",
}


#: What a terminal acts on rather than shows: C0 and C1 control characters (escape sequences that move the
#: cursor, clear the screen or set the window title; carriage returns that overwrite a line) and the
#: bidirectional overrides that show text in another order than it is. Tabs stay.
_UNSHOWABLE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def shown(value: Any) -> str:
    """``value`` as text a terminal shows as it is: whoever can name a task (any producer, a name built
    from user input) must not be able to rewrite the lines around it. Each character a terminal would
    act on is written as its escape (``\\x1b``, ``\\n``, ``\\u202e``). For the pretty views only: ``json``
    escapes them itself, and ``csv`` keeps the data as it is for programs."""
    return _UNSHOWABLE.sub(_escape, str(value))


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in "\n\r":
        return "\\n" if char == "\n" else "\\r"
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def status_text(task: Any) -> str:
    status = task.status
    return str(getattr(status, "value", status))


def duration(task: Any, now: dt.datetime | None = None) -> float | None:
    """Seconds the task has run: start to end, or start to now while it runs; None before it starts."""
    start = task.start_time or task.created
    if start is None:
        return None
    end = task.end_time
    if end is None:
        finished = status_text(task) in {s.value for s in TERMINAL_STATUSES}
        end = task.updated if finished else (now or dt.datetime.now(dt.timezone.utc))
    if end is None:
        return None
    if (start.tzinfo is None) != (end.tzinfo is None):  # never compare naive with aware
        return None
    return max(0.0, (end - start).total_seconds())


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"


def progress(task: Any) -> str:
    if task.value_percent is not None:
        return f"{task.value_percent}%"
    if task.value is not None:
        return f"{task.value}/{task.value_max}" if task.value_max else str(task.value)
    return "-"


def _created(task: Any, local: bool = False) -> str:
    created = task.created
    if created is None:
        return ""
    if local:
        return created.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return created.isoformat()


def _csv_row(task: Any, now: dt.datetime) -> list[Any]:
    seconds = duration(task, now)
    return [task.id, _created(task), task.name, status_text(task), _blank(task.value_percent), _blank(task.value),
            _blank(task.value_max), "" if seconds is None else f"{seconds:.1f}"]


def _blank(value: Any) -> Any:
    return "" if value is None else value


def _csv(rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows(rows)
    return buffer.getvalue()


def task_json(task: Any) -> Any:
    return task.to_dict()


#: Lines of each captured stream (and of a traceback) the pretty view shows; ``-f json`` has all of it.
TAIL_LINES = 10


def next_page_hint(token: str) -> str:
    """The line that says how to get the next page, the same on a terminal and in a pipe: the option and
    the token as a shell word (quoted only when the shell needs it), ready to paste after ``list``."""
    return f"Next page: --start-token {shlex.quote(token)}\n"


def _tail(text: str, limit: int = TAIL_LINES) -> tuple[list[str], int]:
    lines = text.rstrip("\n").splitlines()
    return lines[-limit:], max(0, len(lines) - limit)


def outcome_lines(data: Any) -> list[str]:
    """Why a run ended as it did, from the ``data`` keys the integrations write: the return code and signal
    (``taskbadger run``), the error (a command that could not start; a Celery exception's last line), the
    last lines of a traceback and of the captured stdout and stderr."""
    if not isinstance(data, dict):
        return []
    lines = []
    for key, label in (("return_code", "Return code"), ("signal", "Signal"), ("forwarded_signal", "Forwarded signal"),
                       ("exception_type", "Exception type"), ("error", "Error")):
        if data.get(key) not in (None, ""):
            lines.append(f"{label}: {shown(data[key])}")
    exception = data.get("exception")
    if isinstance(exception, str) and exception.strip():
        tail, earlier = _tail(exception)
        if "error" not in data:
            lines.append(f"Error: {shown(tail[-1].strip())}")
        lines.append(f"Traceback (last {len(tail)} of {len(tail) + earlier} lines):" if earlier else "Traceback:")
        lines += [f"  {shown(line)}" for line in tail]
    for stream in ("stdout", "stderr"):
        text = data.get(stream)
        if not isinstance(text, str) or not text:
            continue
        tail, earlier = _tail(text)
        notes = [f"last {len(tail)} of {len(tail) + earlier} kept lines"] if earlier else []
        cut = data.get(f"{stream}_truncated_chars")
        if isinstance(cut, int) and cut > 0:
            notes.append(f"{cut:,} earlier characters not kept")
        lines.append(f"Output ({', '.join([stream, *notes])}):")
        lines += [f"  {shown(line)}" for line in tail]
    return lines


def render_task(task: Any, fmt: str, now: dt.datetime | None = None) -> str:
    """One task: ``pretty`` is ``Label: value`` lines, the first five as the official CLI prints them, then
    how the run ended (return code, error, the tail of its output) when the task recorded it."""
    now = now or dt.datetime.now(dt.timezone.utc)
    if fmt == "json":
        return json.dumps(task_json(task), indent=2) + "\n"
    if fmt == "csv":
        return _csv([CSV_HEADER, _csv_row(task, now)])
    percent = "-" if task.value_percent is None else f"{task.value_percent}%"
    lines = [f"Task ID: {shown(task.id)}", f"Created: {_created(task)}", f"Name: {shown(task.name)}",
             f"Status: {shown(status_text(task))}", f"Percent: {percent}"]
    if task.value is not None:
        lines.append(f"Value: {task.value}" + (f"/{task.value_max}" if task.value_max is not None else ""))
    lines.append(f"Duration: {format_duration(duration(task, now))}")
    tags = task.tags
    if tags:
        lines.append("Tags: " + ", ".join(f"{shown(k)}={shown(v)}" for k, v in sorted(tags.items())))
    if task.public_url:
        lines.append(f"URL: {shown(task.public_url)}")
    outcome = outcome_lines(task.data)
    if outcome:
        lines += outcome + ["All data: -f json"]
    return "\n".join(lines) + "\n"


def render_list(tasks: Sequence[Any], fmt: str, *, next_token: str | None, title: str, is_terminal: bool,
                now: dt.datetime | None = None) -> str:
    """A list of tasks. ``csv`` is pure CSV (the next-page token is the caller's to show elsewhere);
    ``json`` is ``{"next_token", "results"}`` as the official CLI prints it."""
    now = now or dt.datetime.now(dt.timezone.utc)
    if fmt == "json":
        return json.dumps({"next_token": next_token, "results": [task_json(t) for t in tasks]}, indent=2) + "\n"
    if fmt == "csv":
        return _csv([CSV_HEADER, *(_csv_row(task, now) for task in tasks)])
    rows = [(shown(task.id), shown(task.name), shown(status_text(task)), shown(progress(task)),
             format_duration(duration(task, now)), _created(task, local=True)) for task in tasks]
    text = _rich_table(rows, title, is_terminal)
    if text is None:
        text = _plain_table(rows, title)
    if next_token:
        text += next_page_hint(next_token)
    return text


_COLUMNS = ("Task ID", "Name", "Status", "Progress", "Duration", "Created")
#: Characters each column takes in the pretty list (content, padding and border); the name gets the rest,
#: at least ``_MIN_NAME``.
_WIDTHS = {"Task ID": 29, "Name": 4, "Status": 13, "Progress": 11, "Duration": 11, "Created": 22}
_MIN_NAME = 12


def _plain_table(rows: Sequence[Sequence[str]], title: str) -> str:
    if not rows:
        return f"{title}\nNo tasks.\n"
    table = [_COLUMNS, *rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(_COLUMNS))]
    lines = [title] + ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                       for row in table]
    return "\n".join(lines) + "\n"


def _rich_table(rows: Sequence[Sequence[str]], title: str, is_terminal: bool) -> str | None:
    try:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        return None
    width = shutil.get_terminal_size(fallback=(120, 24)).columns
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=is_terminal, color_system="auto" if is_terminal else None,
                      width=max(width, 40), highlight=False, emoji=False, markup=False, legacy_windows=False)
    if not rows:
        console.print(Text(title))
        console.print(Text("No tasks."))
        return buffer.getvalue()
    table = Table(title=title, title_justify="left")
    # Rich squeezes the name to nothing when the other columns fill the width, so a narrow terminal goes
    # without the last columns (creation time, then duration, progress and status: ``get`` shows them).
    columns: tuple[str, ...] = _COLUMNS
    while len(columns) > 2 and sum(_WIDTHS[c] for c in columns) + _MIN_NAME > console.width:
        columns = columns[:-1]
    for name in columns:
        # A long task name folds onto more lines rather than losing its end (the part that tells tasks apart);
        # a task id is never cut (it is what ``get`` takes).
        table.add_column(name, no_wrap=name != "Name", overflow="fold" if name == "Name" else "ellipsis",
                         justify="right" if name in ("Progress", "Duration") else "left",
                         min_width=len(max((row[0] for row in rows), key=len)) if name == "Task ID" else None)
    for task_id, name, status, prog, took, created in rows:
        # Text, never markup: a task called "[red]x" is shown as it is.
        cells = [Text(task_id), Text(name), Text(status, style=_STATUS_STYLES.get(status, "")), Text(prog),
                 Text(took), Text(created)]
        table.add_row(*cells[:len(columns)])
    console.print(table)
    return buffer.getvalue()

