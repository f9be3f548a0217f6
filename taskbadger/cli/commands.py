"""The commands themselves, as plain functions: one command layer behind two entry points.

The ``taskbadger`` console script (``app``) and ``manage.py taskbadger`` both call these. Each function
takes the streams it writes to, expects the SDK to be configured already (from the CLI's settings, or
from Django's), and returns the process exit code: 0 done, 1 the API or the configuration failed, 2 a
value given was unusable. None of them raises for an API failure or prints a traceback.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import taskbadger
from taskbadger._runtime import short
from taskbadger.actions import DEPRECATION, Action, EmailIntegration, Integration, WebhookIntegration
from taskbadger.config import Config, without_userinfo
from taskbadger.exceptions import (
    ConfigurationError,
    NotFound,
    TaskbadgerException,
    TransportError,
    Unauthorized,
    UnexpectedStatus,
    ValidationError,
)

from . import render
from .settings import Settings, SettingsError, TagError, file_mode_warning
from .settings import fitted_tags as settings_fitted_tags

OK, FAILED, USAGE = 0, 1, 2
#: The most tasks one list request asks for; longer lists walk the pages.
PAGE_SIZE = 100
#: The most tasks one ``list`` prints (a thousand pages); the next page's token lets a caller go on.
MAX_LIST_LIMIT = 100_000


class UsageError(ValueError):
    """A value given on the command line cannot be used (exit code 2)."""


# -- parsing what users type ------------------------------------------------------------------------

def parse_pairs(pairs: Sequence[str] | None, what: str) -> dict[str, str]:
    """``["k=v", ...]`` into a dict, split on the first ``=``."""
    result: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} must be 'name=value', got {pair!r}")
        result[key] = value
    return result


def fitted_tags(tags: Mapping[str, Any], what: str) -> dict[str, str]:
    """``tags`` as the API takes them (``settings.fitted_tags``: a long value shortened); a value too short to be one
    is a UsageError saying so."""
    try:
        return settings_fitted_tags(tags, what)
    except TagError as err:
        raise UsageError(str(err)) from None


def parse_json_object(text: str | None, what: str) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as err:
        raise UsageError(f"{what} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def parse_action(action: Sequence[str] | None) -> Action | None:
    """``(trigger, integration, config)`` into an Action; the config is ``k:v,k2:v2`` and the
    integration's type is the part of its id before ``:`` (``email`` or ``webhook:<id>``)."""
    if not action:
        return None
    trigger, integration_id, config_text = action
    kind = integration_id.split(":", 1)[0]
    config: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in config_text.split(","))):
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise UsageError(f"action config must be 'key:value,key2:value2', got {config_text!r}")
        config[key] = value
    classes: dict[str, type[Integration]] = {"email": EmailIntegration, "webhook": WebhookIntegration}
    if kind not in classes:
        raise UsageError(f"Unknown integration type: {kind!r} (expected 'email' or 'webhook:<id>')")
    try:
        integration = classes[kind](id=integration_id, **config)  # type: ignore[call-arg]
    except TypeError:
        expected = "to:<address>" if kind == "email" else "nothing (use '')"
        raise UsageError(f"the {kind} integration's config takes {expected}, got {config_text!r}") from None
    except TaskbadgerException as err:
        raise UsageError(str(err)) from None
    return Action(trigger, integration)


def status_value(status: str | None) -> str | None:
    if status is None:
        return None
    try:
        return taskbadger.StatusEnum.coerce(status).value
    except ValueError as err:
        raise UsageError(str(err)) from None


# -- failures, said plainly ---------------------------------------------------------------------------

def describe_error(err: BaseException, config: Config | None = None) -> str:
    """One line that says what went wrong and what to do; never the key."""
    host = config.host if config else "Task Badger"
    if isinstance(err, Unauthorized):
        return (f"Task Badger refused the API key (HTTP {err.status_code}) at {host}: check TASKBADGER_API_KEY "
                "or run `taskbadger configure`")
    if isinstance(err, NotFound):
        return f"not found at {host} (HTTP 404): check the task id, the organization and the project"
    if isinstance(err, ValidationError):
        fields = "; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in err.errors.items())
        return f"Task Badger rejected the request (HTTP 400): {fields or err.message}"
    if isinstance(err, UnexpectedStatus):
        return f"Task Badger at {host} answered HTTP {err.status_code}: {err.message}"
    if isinstance(err, TransportError):
        return f"could not reach Task Badger: {err}"
    if isinstance(err, (TaskbadgerException, ConfigurationError, SettingsError, ValueError)):
        return str(err)
    return f"{type(err).__name__}: {err}"


def _fail(err: TextIO, message: str, code: int = FAILED) -> int:
    err.write(f"Error: {message}\n")
    return code


def _streams(out: TextIO | None, err: TextIO | None) -> tuple[TextIO, TextIO]:
    return out or sys.stdout, err or sys.stderr


def _config(err: TextIO) -> Config | None:
    config = taskbadger.get_config()
    if config is None:
        _fail(err, "Task Badger is not configured: set TASKBADGER_API_KEY or run `taskbadger configure`")
    return config


# -- the commands -------------------------------------------------------------------------------------

def get_task(task_id: str, fmt: str = "pretty", out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print one task."""
    out, err = _streams(out, err)
    config = _config(err)
    if config is None:
        return FAILED
    try:
        task = taskbadger.get_task(task_id)
    except NotFound:
        return _fail(err, f"no task {task_id!r} in {config.organization_slug}/{config.project_slug}")
    except Exception as error:
        return _fail(err, describe_error(error, config))
    out.write(render.render_task(task, fmt))
    return OK


def list_tasks(fmt: str | None = None, limit: int = 100, start_token: str | None = None, out: TextIO | None = None,
               is_terminal: bool | None = None, err: TextIO | None = None) -> int:
    """Print up to ``limit`` tasks, newest first, walking the pages from ``start_token``.

    ``fmt`` None means ``pretty`` on a terminal and ``csv`` otherwise. The CSV stays pure CSV: the token
    of the next page goes to ``err``."""
    out, err = _streams(out, err)
    if is_terminal is None:
        is_terminal = bool(getattr(out, "isatty", lambda: False)())
    fmt = fmt or ("pretty" if is_terminal else "csv")
    if not 1 <= limit <= MAX_LIST_LIMIT:
        return _fail(err, f"--limit must be from 1 to {MAX_LIST_LIMIT}", USAGE)
    config = _config(err)
    if config is None:
        return FAILED
    if start_token is not None and not (start_token.isascii() and start_token.isprintable()):
        # a token the API issues is printable ASCII: one with bytes that are not UTF-8 could not even be put in the
        # request ("'utf-8' codec can't encode character '\\udcff'"), nor one with a line break sent as it is
        return _fail(err, _not_a_page(start_token, config), USAGE)
    tasks: list[Any] = []
    next_token = start_token
    try:
        while len(tasks) < limit:
            page = taskbadger.list_tasks(page_size=min(PAGE_SIZE, limit - len(tasks)), cursor=next_token)
            tasks.extend(itertools.islice(page, limit - len(tasks)))
            next_token = page.next_cursor
            if not next_token or not len(page):
                break
    except NotFound as error:
        if start_token is not None and next_token == start_token and "cursor" in str(error.message).lower():
            # the API answers 404 to a cursor it cannot read ("Invalid cursor"): the token, not a task, is wrong
            return _fail(err, _not_a_page(start_token, config), USAGE)
        return _fail(err, describe_error(error, config))
    except Exception as error:
        return _fail(err, describe_error(error, config))
    title = f"Project: {config.project_slug}, Organization: {config.organization_slug}"
    out.write(render.render_list(tasks, fmt, next_token=next_token, title=title, is_terminal=is_terminal))
    if next_token and fmt == "csv":
        err.write(render.next_page_hint(next_token))
    return OK


def _not_a_page(start_token: str, config: Any) -> str:
    return (f"--start-token {short(start_token, 80)} is not a page of the task list of {config.organization_slug}/"
            f"{config.project_slug}: copy the token an earlier list printed as 'Next page', whole, or leave "
            "--start-token out to start from the newest")


def create_task(name: str, *, status: str | None = "processing", value_max: int | None = 100,
                queue: str | None = None, metadata: Sequence[str] | None = None, metadata_json: str | None = None,
                tags: Sequence[str] | None = None, tags_json: str | None = None, monitor_id: str | None = None,
                action: Sequence[str] | None = None, quiet: bool = False, out: TextIO | None = None,
                err: TextIO | None = None) -> int:
    """Create a task. Tags from the configuration (the config file's ``[tags]``) are added."""
    out, err = _streams(out, err)
    prepared = _prepare(status, metadata, metadata_json, tags, tags_json, action, err)
    if isinstance(prepared, int):
        return prepared
    fields, config = prepared
    try:
        task = taskbadger.create_task(name, status=fields["status"] or "processing", value_max=value_max,
                                      data=fields["data"], tags=fields["tags"], queue=queue, monitor_id=monitor_id,
                                      actions=fields["actions"])
    except Exception as error:
        return _fail(err, f"could not create the task: {describe_error(error, config)}")
    out.write(f"{task.id}\n" if quiet else f"Task created: {task.public_url or task.id}\n")
    return OK


def update_task(task_id: str, *, name: str | None = None, status: str | None = None, value: int | None = None,
                value_max: int | None = None, queue: str | None = None, metadata: Sequence[str] | None = None,
                metadata_json: str | None = None, tags: Sequence[str] | None = None, tags_json: str | None = None,
                action: Sequence[str] | None = None, quiet: bool = False, out: TextIO | None = None,
                err: TextIO | None = None) -> int:
    """Update a task, sending only what is given (the official CLI also set the status to processing).
    ``--metadata`` replaces the task's data, as in the official CLI."""
    out, err = _streams(out, err)
    prepared = _prepare(status, metadata, metadata_json, tags, tags_json, action, err)
    if isinstance(prepared, int):
        return prepared
    fields, config = prepared
    try:
        task = taskbadger.update_task(task_id, name=name, status=fields["status"], value=value, value_max=value_max,
                                      data=fields["data"], tags=fields["tags"], queue=queue,
                                      actions=fields["actions"])
    except NotFound:
        return _fail(err, f"no task {task_id!r} in {config.organization_slug}/{config.project_slug}")
    except Exception as error:
        return _fail(err, f"could not update the task: {describe_error(error, config)}")
    if not quiet:
        out.write(f"Task updated: {task.public_url or task.id}\n")
    return OK


def _prepare(status: str | None, metadata: Sequence[str] | None, metadata_json: str | None,
             tags: Sequence[str] | None, tags_json: str | None, action: Sequence[str] | None,
             err: TextIO) -> tuple[dict[str, Any], Config] | int:
    """The fields given on the command line and the configuration, or the exit code when either is unusable."""
    try:
        fields = _fields(status, metadata, metadata_json, tags, tags_json, action, err)
    except UsageError as error:
        return _fail(err, str(error), USAGE)
    config = _config(err)
    return FAILED if config is None else (fields, config)


def _fields(status: str | None, metadata: Sequence[str] | None, metadata_json: str | None,
            tags: Sequence[str] | None, tags_json: str | None, action: Sequence[str] | None,
            err: TextIO) -> dict[str, Any]:
    data = {**parse_pairs(metadata, "--metadata"), **parse_json_object(metadata_json, "--metadata-json")}
    tag_values = {**fitted_tags(parse_pairs(tags, "--tag"), "--tag"),
                  **fitted_tags(parse_json_object(tags_json, "--tags-json"), "--tags-json")}
    parsed_action = parse_action(action)
    if parsed_action is not None:
        err.write(f"Warning: {DEPRECATION}\n")
    return {"status": status_value(status), "data": data or None,
            "tags": tag_values or None,
            "actions": [parsed_action] if parsed_action else None}


def show_info(settings: Settings, out: TextIO | None = None) -> int:
    """Show each setting and where it came from. The key is described, never shown."""
    out = out or sys.stdout
    exists = settings.path.exists()
    rows = [("Config file", str(settings.path), "found" if exists else "not found")]
    for label, value in (("Organization", settings.org), ("Project", settings.project)):
        rows.append((label, value.value or "-", value.source))
    rows.append(("API key", settings.describe_key(), settings.token.source))
    rows.append(("Host", without_userinfo(settings.host.value or "-"), settings.host.source))
    rows.append(("HTTP timeout", settings.timeout.value or "-", settings.timeout.source))
    tags = ", ".join(f"{k}={v}" for k, v in sorted(settings.tags.items()))
    rows.append(("Tags", tags or "-", "config file" if tags else "not set"))
    width = max(len(label) for label, _, _ in rows) + 1
    # the values shown as a terminal shows them (``render.shown``): a config file's tag holding an escape sequence
    # cleared the screen or rewrote the lines around it
    lines = [f"{label + ':':<{width}} {render.shown(value)}  ({source})" for label, value, source in rows]
    notes = list(filter(None, [settings.file_error, settings.key_error,
                               file_mode_warning(settings.path) if exists else None]))
    notes += [f"the project key's organization and project are used, not the {item}" for item in settings.overridden]
    problem = settings.problem()
    if problem and problem not in notes:
        notes.append(problem)
    lines += [f"Note: {render.shown(note)}" for note in notes]
    out.write("\n".join(lines) + "\n")
    return OK

