"""The ``taskbadger`` console script: typer wiring only. What each command does is in ``commands``
(get, create, update, list, info), ``run`` and ``settings``; this module turns options into calls.

The commands, options and exit codes are the official CLI's (2.6.0). ``--action`` is a single
``Optional[tuple]`` rather than upstream's ``(None, None, None)`` default, which newer typer releases
reject on every call.
"""

from __future__ import annotations

import enum
import os
import sys
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from taskbadger import spooling
from taskbadger.config import validate_host
from taskbadger.exceptions import ConfigurationError
from taskbadger.models import StatusEnum, is_slug
from taskbadger.version import __version__

from . import commands, process, settings
from .run import run_command

DOCS_URL = "https://docs.taskbadger.net"

app = typer.Typer(name="taskbadger", help="Task Badger CLI", no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})


class Format(str, enum.Enum):
    pretty = "pretty"
    json = "json"
    csv = "csv"


class Status(str, enum.Enum):
    """The statuses a task can be given (``taskbadger.StatusEnum``), as the official CLI lists them."""

    cancelled = StatusEnum.CANCELLED.value
    error = StatusEnum.ERROR.value
    pending = StatusEnum.PENDING.value
    post_processing = StatusEnum.POST_PROCESSING.value
    pre_processing = StatusEnum.PRE_PROCESSING.value
    processing = StatusEnum.PROCESSING.value
    stale = StatusEnum.STALE.value
    success = StatusEnum.SUCCESS.value


@dataclass
class State:
    org: str | None = None
    project: str | None = None


def _state(ctx: typer.Context) -> State:
    return ctx.obj if isinstance(ctx.obj, State) else State()


def _value(choice: object) -> str | None:
    return None if choice is None else str(getattr(choice, "value", choice))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"Task Badger CLI Version: {__version__}")
        raise typer.Exit()


#: Seconds a command other than ``run`` gives, at its end, to what it took from the spool.
SPOOL_HANDOVER_BUDGET = 5.0


def _exit(code: int) -> None:
    # A command that configured the SDK took what the spool holds (an earlier run's outcome, the API down
    # then): deliver it now, or spool it again. Left to the interpreter's exit, a command quicker than its
    # look at the spool (``get``) left the file claimed, its outcome undelivered, the task processing.
    spooling.shutdown(SPOOL_HANDOVER_BUDGET)
    if code:
        raise typer.Exit(code)


def _settings(state: State) -> settings.Settings:
    """The settings from the options, environment and config file; a warning line when -o/-p are ignored (a project
    key carries its own): the user asked for another project, and would otherwise not know they did not get it."""
    resolved = settings.resolve(state.org, state.project)
    ignored = resolved.ignored()
    if ignored:
        typer.echo(f"Warning: {ignored}", err=True)
    return resolved


def _configure_or_exit(ctx: typer.Context) -> None:
    """Configure the SDK from the options, environment and config file, or exit 1 saying why."""
    state = _state(ctx)
    try:
        _settings(state).configure_sdk()
    except settings.SettingsError as err:
        typer.echo(f"Error: Task Badger is not configured: {err}", err=True)
        raise typer.Exit(1) from None


Org = Annotated[str | None, typer.Option(
    "--org", "-o", metavar="TASKBADGER_ORG",
    help="Organization slug, for a legacy API key: overrides the environment and the config file. A project key "
         "carries its own: this is then ignored, with a warning.")]
Project = Annotated[str | None, typer.Option(
    "--project", "-p", metavar="TASKBADGER_PROJECT",
    help="Project slug, for a legacy API key: overrides the environment and the config file. A project key "
         "carries its own: this is then ignored, with a warning.")]
MonitorId = Annotated[str | None, typer.Option("--monitor-id", help="Associate this task with a monitor.")]
ActionOption = Annotated[tuple[str, str, str] | None, typer.Option(
    "--action", "-a", metavar="TRIGGER INTEGRATION CONFIG",
    help="[Deprecated] Action definition e.g. 'success,error email to:me@email.com'")]
Tags = Annotated[list[str] | None, typer.Option(
    "--tag", metavar="NAME=VALUE",
    help="Tags: 'name=value' pair to associate with the task. Can be specified multiple times.")]
TagsJson = Annotated[str | None, typer.Option(
    "--tags-json", metavar="JSON", help="Tags to associate with the task. Must be valid JSON mapping name -> value.")]
Metadata = Annotated[list[str] | None, typer.Option(
    "--metadata", metavar="KEY=VALUE",
    help="Metadata 'key=value' pair to associate with the task. Can be specified multiple times.")]
MetadataJson = Annotated[str | None, typer.Option(
    "--metadata-json", metavar="JSON", help="Metadata to associate with the task. Must be valid JSON.")]
Queue = Annotated[str | None, typer.Option("--queue", help="The name of the queue the task is from.")]


@app.callback()
def main_options(
    ctx: typer.Context,
    org: Org = None,
    project: Project = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show CLI Version")] = False,
) -> None:
    """Task Badger CLI"""
    ctx.obj = State(org, project)


class _RunCommand(TyperCommand):
    """``run``, whose most common slip is a command option without ``--`` before the command."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        args = self._command_marked(ctx, args)
        try:
            return super().parse_args(ctx, args)
        except Exception as err:  # the click Typer runs on (its own copy in recent releases): NoSuchOption
            name = getattr(err, "option_name", None)
            if type(err).__name__ == "NoSuchOption" and isinstance(name, str) and "--" not in args:
                err.message = (f"No such option: {name}. If it is an option of the command to run, put -- before "  # type: ignore[attr-defined]
                               f"the command: taskbadger run NAME -- COMMAND {name} ...")
            raise

    def _command_marked(self, ctx: Any, args: list[str]) -> list[str]:
        """``args`` with ``--`` before the command's first word (the word after NAME), when it has none: what follows
        that word is the command's own, never an option of ours. ``taskbadger run "disk report" df -h`` (a crontab
        line written for the official CLI) printed our help and exited 0: df never ran, and cron saw success."""
        values: dict[str, int] = {}  # our options -> how many words each takes after it
        for param in self.get_params(ctx):
            if getattr(param, "param_type_name", None) == "option":
                taken = 0 if getattr(param, "is_flag", False) or getattr(param, "count", False) else param.nargs
                values.update(dict.fromkeys([*param.opts, *param.secondary_opts], taken))
        positionals, index = 0, 0
        while index < len(args):
            word = args[index]
            if word == "--":
                return args
            if word.startswith("-") and word != "-":
                long = word.startswith("--")
                name = word.split("=", 1)[0] if long else word[:2]
                if name not in values:
                    return args  # not ours, before the command: click says so (``parse_args``)
                attached = ("=" in word) if long else len(word) > 2
                index += 1 + max(0, values[name] - attached)
                continue
            positionals += 1
            if positionals == 2:  # NAME, then the command
                return [*args[:index], "--", *args[index:]]
            index += 1
        return args


@app.command(cls=_RunCommand, context_settings={"help_option_names": ["-h", "--help"]})
def run(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The task name")],
    command: Annotated[list[str] | None, typer.Argument(
        metavar="-- COMMAND [ARGS]...", help="The command to run and its arguments, after '--' (without it, "
        "every word from the command's first on is the command's, options too).")] = None,
    monitor_id: MonitorId = None,
    update_frequency: Annotated[int, typer.Option(
        "--update-frequency", metavar="SECONDS", min=5, max=300, help="Seconds between updates.")] = 5,
    action: ActionOption = None,
    tag: Tags = None,
    capture_output: Annotated[bool, typer.Option(
        "--capture-output/--no-capture-output", help="Capture stdout and stderr (their tail is kept on the task; "
        "they still reach the terminal).")] = False,
) -> None:
    """Execute a command using the CLI and create a Task to track its outcome.

    This command makes it easy to track a process's outcome using Task Badger.

    It will create a Task prior to executing your command and will update
    the Task status when you command exits. The command's exit status is
    returned, whatever happens to Task Badger.

    Example:

        taskbadger run 'my task' -- ./my-script.sh arg -v
    """
    if not command:
        typer.echo("Error: no command given: taskbadger run NAME -- COMMAND [ARGS]...", err=True)
        raise typer.Exit(2)
    try:
        tags = commands.fitted_tags(commands.parse_pairs(tag, "--tag"), "--tag")
        parsed_action = commands.parse_action(action)
    except commands.UsageError as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(2) from None
    if parsed_action is not None:
        typer.echo(f"Warning: {commands.DEPRECATION}", err=True)
    state = _state(ctx)
    code = run_command(name, command, configure=lambda: _settings(state).configure_sdk(),
                       update_frequency=update_frequency, monitor_id=monitor_id, tags=tags, action=parsed_action,
                       capture_output=capture_output)
    if code.killed_by is not None and code.killed_by in process.RERAISED:
        raise process.DieOfSignal(code.killed_by, int(code))  # ``main`` does, once our output is flushed
    raise typer.Exit(code)


@app.command()
def get(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(metavar="TASK_ID", help="The ID of the task.")],
    output_format: Annotated[Format, typer.Option("--format", "-f", help="Output format")] = Format.pretty,
) -> None:
    """Get a task."""
    _configure_or_exit(ctx)
    _exit(commands.get_task(task_id, output_format.value))


@app.command()
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The task name.")],
    monitor_id: MonitorId = None,
    action: ActionOption = None,
    status: Annotated[Status, typer.Option("--status", help="The initial status of the task.")] = Status.processing,
    value_max: Annotated[int, typer.Option("--value-max", help="The maximum value for the task.")] = 100,
    queue: Queue = None,
    metadata: Metadata = None,
    metadata_json: MetadataJson = None,
    tag: Tags = None,
    tags_json: TagsJson = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Minimal output. Only the Task ID.")] = False,
) -> None:
    """Create a task."""
    _configure_or_exit(ctx)
    _exit(commands.create_task(name, status=_value(status), value_max=value_max, queue=queue, metadata=metadata,
                               metadata_json=metadata_json, tags=tag, tags_json=tags_json, monitor_id=monitor_id,
                               action=action, quiet=quiet))


@app.command()
def update(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(metavar="TASK_ID", help="The ID of the task to update.")],
    name: Annotated[str | None, typer.Option("--name", help="Update the name of the task.")] = None,
    action: ActionOption = None,
    status: Annotated[Status | None, typer.Option(
        "--status", help="The status of the task (unchanged when not given).")] = None,
    value: Annotated[int | None, typer.Option("--value", help="The current task value (progress).")] = None,
    value_max: Annotated[int | None, typer.Option("--value-max", help="The maximum value for the task.")] = None,
    queue: Queue = None,
    metadata: Metadata = None,
    metadata_json: MetadataJson = None,
    tag: Tags = None,
    tags_json: TagsJson = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No output.")] = False,
) -> None:
    """Update a task: only what is given is sent."""
    _configure_or_exit(ctx)
    _exit(commands.update_task(task_id, name=name, status=_value(status), value=value, value_max=value_max,
                               queue=queue, metadata=metadata, metadata_json=metadata_json, tags=tag,
                               tags_json=tags_json, action=action, quiet=quiet))


@app.command("list")
def list_command(
    ctx: typer.Context,
    output_format: Annotated[Format | None, typer.Option(
        "--format", "-f", help="Output format [default: pretty on a terminal, csv otherwise]")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=commands.MAX_LIST_LIMIT,
                                       help="Limit the number of results.")] = 100,
    start_token: Annotated[str | None, typer.Option(
        "--start-token", help="Continue where an earlier list stopped: the token it printed as 'Next page'.")] = None,
) -> None:
    """List tasks."""
    _configure_or_exit(ctx)
    _exit(commands.list_tasks(_value(output_format), limit, start_token, sys.stdout, sys.stdout.isatty()))


@app.command()
def configure(
    ctx: typer.Context,
    key: Annotated[str | None, typer.Option(
        "--key", metavar="KEY",
        help="The API key: '-' reads it from stdin (echo \"$KEY\" | taskbadger configure --key -). Without "
             "options, configure prompts for it, hidden. Avoid the key itself here: a command line shows in "
             "the process list (ps) to every user of the machine, and in your shell's history. Or store "
             "nothing: TASKBADGER_API_KEY in the environment is read by every command.")] = None,
    org: Annotated[str | None, typer.Option("--org", metavar="ORG", help="Organization slug.")] = None,
    project: Annotated[str | None, typer.Option("--project", metavar="PROJECT", help="Project slug.")] = None,
    host: Annotated[str | None, typer.Option("--host", metavar="URL", help="The API's base URL.")] = None,
    tag: Tags = None,
) -> None:
    """Update CLI configuration."""
    state = _state(ctx)
    org, project = org or state.org, project or state.project
    path = settings.config_path()
    try:
        document = settings.read_file(path)
        tags = commands.fitted_tags(commands.parse_pairs(tag, "--tag"), "--tag")
    except (settings.SettingsError, commands.UsageError) as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(1 if isinstance(err, settings.SettingsError) else 2) from None
    current = {**settings.section(document, "defaults"), **settings.section(document, "auth")}
    if all(value is None for value in (key, org, project, host)) and not tags:
        if not sys.stdin.isatty():
            typer.echo("Error: configure prompts on a terminal; otherwise pass --key, --org, --project or --host.",
                       err=True)
            raise typer.Exit(2)
        key, org, project = _prompt(current)
    elif key == "-":
        key = sys.stdin.readline().strip()
    elif key:
        typer.echo("Warning: a key given on the command line shows in the process list and your shell's history; "
                   "next time let configure prompt for it, or use --key - to read it from stdin.", err=True)
    try:
        parts = settings.parse_project_key(key) if key else None
        for label, slug in (("organization", org), ("project", project)):
            if slug is not None and not is_slug(slug):
                raise ConfigurationError(f"the {label} must be a slug (letters, digits, - and _), got {slug!r}")
        host = validate_host(host) if host else None
        settings.write_file(path, settings.updated_document(document, token=key, org=org, project=project, host=host,
                                                            tags=tags))
    except (ConfigurationError, settings.SettingsError, OSError) as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(2 if isinstance(err, ConfigurationError) else 1) from None
    if key and not parts and not ((org or current.get("org")) and (project or current.get("project"))):
        typer.echo("Note: a legacy key also needs an organization and a project (--org, --project).", err=True)
    typer.echo(f"Config written to {path}")


def _prompt(current: dict[str, str]) -> tuple[str | None, str | None, str | None]:
    # The key is typed hidden and never shown as the prompt's default.
    hint = " (leave empty to keep the current key)" if current.get("token") else ""
    key = typer.prompt(f"API Key{hint}", default="", show_default=False, hide_input=True).strip() or None
    token = key or current.get("token")
    try:
        parts = settings.parse_project_key(token) if token else None
    except ConfigurationError as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(2) from None
    if parts:
        green = "NO_COLOR" not in os.environ
        org_text = typer.style(parts[0], fg=typer.colors.GREEN) if green else parts[0]
        project_text = typer.style(parts[1], fg=typer.colors.GREEN) if green else parts[1]
        typer.echo(f"Project key detected — organization: {org_text}, project: {project_text}")
        return key, None, None
    org = typer.prompt("Organization slug", default=current.get("org") or "").strip() or None
    project = typer.prompt("Project slug", default=current.get("project") or "").strip() or None
    return key, org, project


@app.command()
def docs() -> None:
    """Open Task Badger docs in a browser."""
    typer.echo(DOCS_URL)
    typer.launch(DOCS_URL)


@app.command()
def info(ctx: typer.Context) -> None:
    """Show CLI configuration: each value and where it comes from (the key is never shown)."""
    state = _state(ctx)
    _exit(commands.show_info(settings.resolve(state.org, state.project)))
