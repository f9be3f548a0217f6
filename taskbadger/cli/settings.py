"""The CLI's settings: the config file, and where each value comes from.

Precedence, for every value: command-line option, then ``TASKBADGER_*`` environment variable, then the
config file, then the default. A project key carries its organization and project, so when the key is
one, those two come from the key whatever else says otherwise (the API would refuse anything else).

The config file is ``$XDG_CONFIG_HOME/taskbadger/config`` (``~/.config/taskbadger/config`` by default),
TOML, laid out as the official CLI lays it out::

    [defaults]
    org = "acme"
    project = "demo"

    [auth]
    token = "..."
    host = "https://taskbadger.net"

    [tags]
    env = "prod"

It holds the API key, so it is written with mode 0600, atomically (a reader never sees half a file),
and keeps every section and key it does not manage.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import taskbadger
from taskbadger._runtime import make_private_dirs
from taskbadger.config import DEFAULT_HOST, DEFAULT_TIMEOUT, Config, key_kind, parse_project_key, validate_host
from taskbadger.exceptions import ConfigurationError
from taskbadger.models import MAX_TAG_LENGTH, MIN_TAG_LENGTH, is_slug

# Where a value came from, as ``info`` shows it.
OPTION, ENVIRONMENT, CONFIG_FILE, DEFAULT = "option", "environment", "config file", "default"
PROJECT_KEY = "project key"
INSTALL_HINT = 'pip install "django-taskbadger[cli]"'


class SettingsError(Exception):
    """The settings cannot be used; the message says what to do."""


class TagError(ValueError):
    """A tag's value the API cannot take, wherever it was given (``fitted_tags``)."""


def fitted_tags(tags: Mapping[str, Any], what: str) -> dict[str, str]:
    """``tags`` as the API takes them: a value longer than it takes is shortened, ending in "…", as a name is (the
    task is still tracked); a value too short to be one (none or one character) is a TagError saying so, naming
    ``what`` gave it (``--tag``, the config file's ``[tags]``)."""
    result: dict[str, str] = {}
    for name, value in tags.items():
        text = str(value)
        if len(text) < MIN_TAG_LENGTH:
            raise TagError(f"{what} {name}={text!r}: a tag's value takes {MIN_TAG_LENGTH} to {MAX_TAG_LENGTH} "
                           "characters (Task Badger refuses shorter ones)")
        result[str(name)] = text if len(text) <= MAX_TAG_LENGTH else text[:MAX_TAG_LENGTH - 1] + "…"
    return result


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where the config file lives: ``$XDG_CONFIG_HOME/taskbadger/config``, else ``~/.config/...``
    (``%APPDATA%`` on Windows, where there is no XDG convention)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or (env.get("APPDATA") if sys.platform == "win32" else None)
    root = Path(base) if base else Path(env.get("HOME") or Path.home()) / ".config"
    return root / "taskbadger" / "config"


def _toml_loads(text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the backport, from the cli extra
        try:
            import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]
        except ModuleNotFoundError:
            raise SettingsError(f"reading the config file needs the 'tomli' package: {INSTALL_HINT}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SettingsError(f"the config file is not valid TOML ({err})") from None


def read_file(path: Path) -> dict[str, Any]:
    """The config file's contents ({} when there is none). SettingsError when it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError as err:
        # the codec's own words ("'utf-8' codec can't decode byte 0xe9 in position 21") say neither which file
        # nor what to do; the line, not the byte (the file holds the API key)
        line = err.object[:err.start].count(b"\n") + 1
        raise SettingsError(f"the config file {path} is not UTF-8 text (line {line}): save it as UTF-8, the "
                            "encoding TOML files use") from None
    except OSError as err:
        raise SettingsError(f"cannot read the config file {path}: {err}") from None
    try:
        return _toml_loads(text)
    except SettingsError as err:
        raise SettingsError(f"{err}: {path}") from None


def section(document: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = document.get(name)
    return dict(value) if isinstance(value, Mapping) else {}


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def write_file(path: Path, document: Mapping[str, Any]) -> None:
    """Write the config file: mode 0600 from the first byte, replaced atomically."""
    try:
        import tomli_w
    except ModuleNotFoundError:
        raise SettingsError(f"writing the config file needs the 'tomli-w' package: {INSTALL_HINT}") from None
    payload = tomli_w.dumps(dict(document)).encode("utf-8")
    make_private_dirs(path.parent)
    # mkstemp creates the file 0600, so the key is never readable by others, not even for an instant.
    fd, temporary = tempfile.mkstemp(prefix=".config-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def updated_document(document: Mapping[str, Any], *, token: str | None = None, org: str | None = None,
                     project: str | None = None, host: str | None = None,
                     tags: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``document`` with the given values set (None leaves a value as it was); everything else kept."""
    result = {key: (dict(value) if isinstance(value, Mapping) else value) for key, value in document.items()}
    for table, key, value in (("auth", "token", token), ("auth", "host", host),
                              ("defaults", "org", org), ("defaults", "project", project)):
        if value is not None:
            if not isinstance(result.get(table), dict):
                result[table] = {}
            result[table][key] = value
    if tags:
        existing = result.get("tags")
        result["tags"] = {**(existing if isinstance(existing, dict) else {}), **tags}
    return result


@dataclass(frozen=True)
class Value:
    """One setting and where it came from (``option``, ``environment``, ``config file``, ...)."""

    value: str | None
    source: str


def _first(*candidates: tuple[Any, str]) -> Value:
    for value, source in candidates:
        text = _text(value)
        if text is not None:
            return Value(text, source)
    return Value(None, "not set")


@dataclass
class Settings:
    """Every value the CLI uses, resolved, with its source. Build it with ``resolve()``."""

    path: Path
    org: Value
    project: Value
    #: never in the repr: a Settings is a local of every command's frames, which debug pages and crash reporters
    #: show with ``repr``
    token: Value = field(repr=False)
    host: Value
    timeout: Value
    tags: dict[str, str] = field(default_factory=dict)
    #: why the config file was not used, if it could not be
    file_error: str | None = None
    #: why the config file's ``[tags]`` cannot be used (a value too short for the API)
    tags_error: str | None = None
    #: organization/project parts of a project key; None for a legacy key or no key
    key_parts: tuple[str, str] | None = None
    #: why the key cannot be used (a damaged key)
    key_error: str | None = None
    #: options or variables the project key overrode
    overridden: list[str] = field(default_factory=list)
    #: of those, the command-line options (``-o/--org 'x'``): said on every command that uses them (``ignored``)
    ignored_options: list[str] = field(default_factory=list)

    def ignored(self) -> str | None:
        """The warning for ``-o``/``-p`` given with a project key, which carries its own (the API would refuse any
        other); None when there is nothing to say."""
        if not self.ignored_options or not self.key_parts:
            return None
        verb = "is" if len(self.ignored_options) == 1 else "are"
        return (f"{' and '.join(self.ignored_options)} {verb} ignored: the API key is a project key, for "
                f"{self.key_parts[0]}/{self.key_parts[1]}, which sets the organization and the project; to use "
                "another project, use that project's key")

    def describe_key(self) -> str:
        """What ``info`` shows for the key: never the key itself."""
        if self.token.value is None:
            return "not set"
        if self.key_error:
            return "set, but malformed"
        if self.key_parts:
            return f"set (project key for {self.key_parts[0]}/{self.key_parts[1]})"
        return f"set (legacy key {self.token.value[:4]}…)"

    def problem(self) -> str | None:
        """Why the SDK cannot be configured from these settings, or None."""
        if self.file_error:
            return self.file_error
        if self.tags_error:
            return self.tags_error
        if self.token.value is None:
            return "no API key: set TASKBADGER_API_KEY or run `taskbadger configure`"
        if self.key_error:
            return self.key_error
        missing = [name for name, value in (("organization", self.org), ("project", self.project)) if not value.value]
        if len(missing) == 2 and key_kind(self.token.value) == "unknown":
            return ("the API key does not look like a Task Badger API key: copy the project key from the project "
                    "settings page in Task Badger (a legacy key would also need -o/--org and -p/--project)")
        if missing:
            needed = " and ".join(("an " if name == "organization" else "a ") + name for name in missing)
            return (f"the API key is a legacy key, which needs {needed}: pass -o/-p, set "
                    "TASKBADGER_ORG/TASKBADGER_PROJECT or run `taskbadger configure`")
        for name, value in (("organization", self.org), ("project", self.project)):
            if not is_slug(value.value):
                return f"the {name} {value.value!r} ({value.source}) is not a slug (letters, digits, - and _)"
        if self.host.value:
            try:
                validate_host(self.host.value)
            except ConfigurationError as err:
                return f"{str(err).rstrip('.')} ({self.host.source})"
        return None

    def configure_sdk(self) -> Config:
        """``taskbadger.init()`` from these settings; SettingsError saying what to fix otherwise."""
        problem = self.problem()
        if problem:
            raise SettingsError(problem)
        try:  # the timeout has one source, TASKBADGER_HTTP_TIMEOUT, which init() reads itself
            return taskbadger.init(organization_slug=self.org.value, project_slug=self.project.value,
                                   token=self.token.value, tags=self.tags or None, host=self.host.value)
        except (ConfigurationError, ValueError) as err:
            raise SettingsError(str(err)) from None


def resolve(org: str | None = None, project: str | None = None, environ: Mapping[str, str] | None = None,
            path: Path | None = None) -> Settings:
    """Resolve every setting from the options given, the environment and the config file. Never raises:
    what is wrong is recorded on the result (``problem()``)."""
    env = os.environ if environ is None else environ
    path = path or config_path(env)
    file_error = None
    try:
        document = read_file(path)
    except SettingsError as err:
        document, file_error = {}, str(err)
    defaults, auth = section(document, "defaults"), section(document, "auth")

    settings = Settings(
        path=path,
        org=_first((org, OPTION), (env.get("TASKBADGER_ORG"), ENVIRONMENT), (defaults.get("org"), CONFIG_FILE)),
        project=_first((project, OPTION), (env.get("TASKBADGER_PROJECT"), ENVIRONMENT),
                       (defaults.get("project"), CONFIG_FILE)),
        token=_first((env.get("TASKBADGER_API_KEY"), ENVIRONMENT), (auth.get("token"), CONFIG_FILE)),
        host=_first((env.get("TASKBADGER_HOST"), ENVIRONMENT), (auth.get("host"), CONFIG_FILE),
                    (DEFAULT_HOST, DEFAULT)),
        timeout=_timeout(env),
        file_error=file_error,
    )
    try:  # as the API takes them, as a --tag value is: a long one shortened, a short one said (with the file's path)
        settings.tags = fitted_tags(section(document, "tags"), f"the config file {path}, [tags]")
    except TagError as err:
        settings.tags_error = str(err)
    if settings.token.value:
        try:
            parts = parse_project_key(settings.token.value)
        except ConfigurationError as err:
            settings.key_error = str(err)
            parts = None
        if parts:
            settings.key_parts = (parts[0], parts[1])
            origin = f"{PROJECT_KEY}, {settings.token.source}"
            for name, flag, given, from_key in (("organization", "-o/--org", settings.org, parts[0]),
                                                ("project", "-p/--project", settings.project, parts[1])):
                if given.value and given.value != from_key:
                    settings.overridden.append(f"{name} {given.value!r} ({given.source})")
                    if given.source == OPTION:
                        settings.ignored_options.append(f"{flag} {given.value!r}")
            settings.org, settings.project = Value(parts[0], origin), Value(parts[1], origin)
    return settings


def _timeout(env: Mapping[str, str]) -> Value:
    text = (env.get("TASKBADGER_HTTP_TIMEOUT") or "").strip()
    if text:
        return Value(f"{text} s", ENVIRONMENT)
    return Value(f"{DEFAULT_TIMEOUT[0]:g} s to connect, {DEFAULT_TIMEOUT[1]:g} s to answer", DEFAULT)


def file_mode_warning(path: Path) -> str | None:
    """A warning when the config file (which may hold the key) is readable by other users."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return None
    if sys.platform != "win32" and mode & 0o077:
        return f"mode {mode:04o}: others can read it; run: chmod 600 {path}"
    return None
