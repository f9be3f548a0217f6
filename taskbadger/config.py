"""Configuration: ``taskbadger.init()`` builds one immutable ``Config`` for the whole process.

The config is a module global rather than thread- or context-local: a worker pool thread or the
heartbeat thread must see what ``init()`` set in the main thread.

Precedence for every setting: explicit argument, then ``TASKBADGER_*`` environment variable, then
the default. (The Django app puts its ``TASKBADGER`` setting between the two.)
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import importlib
import ipaddress
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from ._runtime import ForkSafeLock, short
from .exceptions import ConfigurationError, MissingConfiguration
from .models import MAX_TAG_LENGTH, MIN_TAG_LENGTH, is_slug, is_tag_map, tag_map_problem
from .scope import scope_state

log = logging.getLogger("taskbadger")

DEFAULT_HOST = "https://taskbadger.net"
#: (connect, read) seconds. An ordinary call (the public API, each batch of the senders) must be over
#: within connect + read seconds, connecting within connect (``taskbadger.http.deadline``).
DEFAULT_TIMEOUT: tuple[float, float] = (2.0, 5.0)
#: The most either part of a timeout may be: a call a task's body or a sender waits on for longer is a
#: mistake (and infinity, or a number too large for the system's clocks, cannot be a deadline at all).
MAX_TIMEOUT = 600.0
#: Less than this is no timeout a request can meet, even on loopback: every call would fail.
MIN_TIMEOUT = 0.01
#: Seconds an inline create may take in all (at publish, in a worker for a task its publisher could not
#: track, ``@track``): a web request waits for it. A healthy API answers a create in tens of milliseconds
#: on a kept-alive connection, and a new TLS connection costs two more round trips; a second leaves room
#: for both across an ocean, and a slow API costs a request no more than that.
DEFAULT_PUBLISH_BUDGET = 1.0
#: The most a publish budget may be: past this, a web request waits for tracking longer than users wait.
MAX_PUBLISH_BUDGET = 30.0

BeforeCreate = Callable[[dict], dict | None]
Timeout = float | int | tuple[float, float]


class Secret(str):
    """The API key, or text that holds it: a ``str`` wherever it is used (sent as it is), masked wherever it is
    printed with ``repr``. Django's debug page (``DEBUG = True``), ``traceback``'s ``capture_locals`` and crash
    reporters show every frame's local variables, and the attributes of objects, with ``repr``: a key kept in a
    plain string by the code that reads it (``init()`` and what it calls) is shown there whenever that code
    raises (a typo in ``tags``, a bad host)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"


class SecretBytes(bytes):
    """A key given as bytes (read from a file or a secret store), masked in a ``repr`` as ``Secret`` is."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "b'***'"


def secret(value: Any) -> Any:
    """``value`` masked in a ``repr`` when it is text or bytes (a key); anything else as it is."""
    if isinstance(value, str) and not isinstance(value, Secret):
        return Secret(value)
    if isinstance(value, bytes | bytearray) and not isinstance(value, SecretBytes):
        return SecretBytes(value)
    return value


class _Environment(Mapping[str, str]):
    """``os.environ`` for reading, shown without its contents: ``TASKBADGER_API_KEY`` is among them, and a local
    variable holding ``os.environ`` itself shows every variable on a debug page or in a crash report."""

    def __getitem__(self, name: str) -> str:
        return os.environ[name]

    def __iter__(self) -> Any:
        return iter(os.environ)

    def __len__(self) -> int:
        return len(os.environ)

    def __repr__(self) -> str:
        return "<os.environ>"


ENVIRON: Mapping[str, str] = _Environment()


class Integration(Protocol):
    """What ``init(systems=[...])`` takes (``taskbadger.systems.System`` and its subclasses)."""

    identifier: str

    def on_init(self, config: Config) -> None: ...


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything the SDK needs to talk to the API. Built by ``init()``; never mutated."""

    host: str
    organization_slug: str
    project_slug: str
    token: str = dataclasses.field(repr=False)
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    systems: Mapping[str, Integration] = dataclasses.field(default_factory=dict)
    before_create: BeforeCreate | None = None
    timeout: tuple[float, float] = DEFAULT_TIMEOUT
    #: error context from other systems (``taskbadger.context_providers``)
    context_providers: tuple[Any, ...] = ()
    #: seconds an inline create may take in all (the create at publish, the worker's, ``@track``'s)
    publish_budget: float = DEFAULT_PUBLISH_BUDGET
    #: where a process leaves what it could not deliver before it ended (None: nowhere, dropped)
    spool_dir: str | None = None

    def __post_init__(self) -> None:
        # ``Config`` is public and ``dataclasses.replace`` makes one from another without ``init()``: what goes into
        # every request line and header (the key, the host, the slugs in the path) is checked here too, so that a
        # control character never reaches the wire (a CR LF in the key would add a header to every request).
        token = self.token
        if not isinstance(token, str) or not token or not token.isascii() \
                or any(ch.isspace() or not ch.isprintable() for ch in token):
            raise ConfigurationError("The Task Badger API key (Config.token) must be non-empty ASCII text without "
                                     "whitespace or control characters.")
        validate_host(self.host)
        for name in ("organization_slug", "project_slug"):
            value = getattr(self, name)
            if not is_slug(value):
                raise ConfigurationError(f"{name} must be a slug (letters, digits, - and _), got {value!r}.")

    def __repr__(self) -> str:  # the token is a secret: never in a repr
        return (
            f"Config(host={self.host!r}, organization_slug={self.organization_slug!r}, "
            f"project_slug={self.project_slug!r}, token='***')"
        )

    __str__ = __repr__

    @property
    def base_url(self) -> str:
        """The official SDK's name for ``host``."""
        return self.host

    @property
    def tasks_url(self) -> str:
        return f"{self.host}/api/{self.organization_slug}/{self.project_slug}/tasks/"

    def system(self, identifier: str) -> Any:
        return self.systems.get(identifier)


_config: Config | None = None  # process-wide on purpose: a forked child keeps its parent's
_unconfigured_reason: str | None = None  # why there is no configuration, when whoever decided said so
_lock = ForkSafeLock()
#: Called with the new configuration after each ``init()`` (the spool's delivery starts there).
_listeners: list[Callable[[Config], None]] = []


def when_configured(listener: Callable[[Config], None]) -> None:
    """Call ``listener(config)`` after every successful ``init()`` in this process."""
    if listener not in _listeners:
        _listeners.append(listener)


def get_config() -> Config | None:
    """The process-wide configuration, or None when ``init()`` has not succeeded."""
    return _config


def unconfigured_reason() -> str | None:
    """Why tasks run untracked in this process, as a sentence, when the code that left the SDK
    unconfigured said why (the Django app does); None when configured or when nobody said."""
    return None if _config is not None else _unconfigured_reason


def why_unconfigured(where: str, app: str = "Celery") -> str:
    """Why tasks run untracked in ``where`` ("this worker", "this process"), as a sentence that says what to do
    (``app``: the queue whose app the call to ``taskbadger.init()`` goes beside)."""
    reason = unconfigured_reason()
    if reason is not None:
        return reason
    if os.environ.get("TASKBADGER_API_KEY"):
        return (f"TASKBADGER_API_KEY is set, but nothing called taskbadger.init() in {where} (call it where the "
                f"{app} app is made, or add taskbadger_django to INSTALLED_APPS)")
    return ("Task Badger is not configured (set TASKBADGER_API_KEY, or the TASKBADGER setting with the Django app, "
            "or call taskbadger.init())")


def is_configured() -> bool:
    return _config is not None


def set_config(config: Config | None, reason: str | None = None) -> Config | None:
    """Replace the configuration (None disables tracking, ``reason`` says why). Returns the previous one."""
    global _config, _unconfigured_reason
    with _lock:
        previous, _config = _config, config
        _unconfigured_reason = reason if config is None else None
    return previous


def reset(reason: str | None = None) -> None:
    """Forget the configuration: the SDK goes back to 'not configured' (``reason``: why, for the
    worker's start line)."""
    set_config(None, reason)


#: The shape of the legacy (per-user) keys Task Badger issued: a prefix, a dot and a secret, letters and
#: digits (``XYZ.ABC`` in the official documentation). Used only to word a message: with the
#: organization and project given, any key that is not a project key is sent as a legacy key.
_LEGACY_KEY = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")

#: What to say about a key that is neither a project key nor shaped like a legacy key.
NOT_A_KEY = ("This does not look like a Task Badger API key: copy the project key from the project settings "
             "page in Task Badger (it carries the organization and project).")


def key_kind(token: str) -> str:
    """``"project"`` (base64 of ``org/project/key``), ``"legacy"`` (shaped like a legacy key) or
    ``"unknown"`` (neither: a typo, a placeholder, another service's key). Raises ConfigurationError
    for a key that is clearly damaged, as ``parse_project_key`` does."""
    token = secret(token)
    if parse_project_key(token) is not None:
        return "project"
    return "legacy" if _LEGACY_KEY.fullmatch(token) else "unknown"


def parse_project_key(token: str) -> tuple[str, str, str] | None:
    """Split a project key (base64 of ``org/project/key``) into its parts.

    Returns None for a legacy key (anything that is not base64 of something containing '/').
    Raises ConfigurationError for a key that is clearly damaged. The key's secret part is a ``Secret``, and so
    is every local variable that holds it here: it raises, and its frame shows on debug pages.
    """
    token = secret(token)
    if token and token != token.strip() and parse_project_key(secret(token.strip())) is not None:
        raise ConfigurationError(
            "The Task Badger API key has whitespace around it (a key read from a file or a vault often ends "
            "with a newline): strip it where it is read, e.g. open(path).read().strip()."
        )
    if not token or not token.isascii() or any(ch.isspace() or not ch.isprintable() for ch in token):
        raise ConfigurationError(
            "The Task Badger API key contains whitespace, control or non-ASCII characters; "
            "copy it again from the project settings page."
        )
    try:
        decoded = secret(base64.b64decode(token, validate=True).decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if "/" not in decoded:
        return None
    parts = [part if i < 2 else secret(part) for i, part in enumerate(decoded.split("/"))]
    if len(parts) != 3 or not is_slug(parts[0]) or not is_slug(parts[1]) or not parts[2] or not parts[2].isascii() \
            or any(ch.isspace() or not ch.isprintable() for ch in parts[2]):
        raise ConfigurationError(
            "The Task Badger API key is malformed: a project key encodes 'organization/project/key'. "
            "Copy it again from the project settings page."
        )
    return parts[0], parts[1], parts[2]


def without_userinfo(host: str) -> str:
    """``host`` with whatever comes before an ``@`` (``user:password@``) masked, for showing it, whether or not
    the URL has a scheme (``admin:s3cret@host``, ``https:/user:pw@host``)."""
    if "@" not in host:
        return host
    head, _, rest = host.rpartition("@")
    scheme = head.split("//", 1)[0] + "//" if "//" in head else ""
    return f"{scheme}***@{rest}"


def validate_host(host: str) -> str:
    """Return the host without a trailing slash, or raise ConfigurationError."""
    clean = isinstance(host, str) and host.strip().isascii() and not any(
        ch.isspace() or not ch.isprintable() for ch in host.strip())
    parts = urlsplit(host.strip()) if clean else None
    if isinstance(host, str) and "@" in host:
        # shown wherever the host is (``taskbadger info``, every error message), and sent as the Host header
        raise ConfigurationError(
            f"Task Badger host must not hold a user or password, got {without_userinfo(host)!r}: the API key "
            "is the only credential (TASKBADGER_API_KEY, or token=).")
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"Task Badger host must be a URL such as {DEFAULT_HOST!r}, got {host!r}."
        )
    if "?" in host or "#" in host:  # even an empty one: the path after it would be dropped from every request
        raise ConfigurationError(f"Task Badger host must not have a query or fragment ('?' or '#'), got {host!r}.")
    try:
        parts.port  # noqa: B018  (raises for a port that is not a number from 0 to 65535)
    except ValueError:
        raise ConfigurationError(f"Task Badger host has an invalid port (a number from 1 to 65535), got {host!r}.") \
            from None
    if parts.port == 0:
        raise ConfigurationError(f"Task Badger host has an invalid port (a number from 1 to 65535), got {host!r}.")
    return host.strip().rstrip("/")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IP address, without brackets) names this machine only:
    ``localhost`` (and its subdomains, which resolve to loopback) or an address in 127.0.0.0/8 or ::1."""
    host = host.lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalize_timeout(timeout: Any) -> tuple[float, float]:
    """Accept seconds, (connect, read) seconds, or an object with ``connect`` and ``read`` attributes
    (``httpx.Timeout``; a part that is None takes the default); return (connect, read)."""
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        pair: tuple[Any, Any] = (timeout, timeout)
    elif isinstance(timeout, (tuple, list)) and len(timeout) == 2:
        pair = (timeout[0], timeout[1])
    elif hasattr(timeout, "connect") and hasattr(timeout, "read"):
        pair = (DEFAULT_TIMEOUT[0] if timeout.connect is None else timeout.connect,
                DEFAULT_TIMEOUT[1] if timeout.read is None else timeout.read)
    else:
        raise ConfigurationError(f"timeout must be seconds or a (connect, read) pair, got {timeout!r}.")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and MIN_TIMEOUT <= v <= MAX_TIMEOUT
               for v in pair):
        raise ConfigurationError(f"timeout values must be numbers of seconds from {MIN_TIMEOUT:g} to {MAX_TIMEOUT:g}, "
                                 f"got {timeout!r}.")
    return float(pair[0]), float(pair[1])


#: Values of ``TASKBADGER_SPOOL_DIR`` that turn the spool off.
_OFF = frozenset({"off", "none", "false", "0", "no"})


def default_spool_dir() -> str:
    """Per user: ``$XDG_STATE_HOME/taskbadger/spool`` (``~/.local/state/…``); under the temporary
    directory when the home directory cannot be written (a container's read-only home)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    probe = state
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if probe and os.access(probe, os.W_OK):
        return os.path.join(state, "taskbadger", "spool")
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return os.path.join(tempfile.gettempdir(), f"taskbadger-{user}", "spool")


def resolve_spool_dir(spool_dir: Any) -> str | None:
    """``spool_dir``: a directory; ``False`` turns the spool off; None means ``TASKBADGER_SPOOL_DIR``
    (``off`` turns it off), then the per-user default."""
    if spool_dir is False:
        return None
    if spool_dir is None:
        env = os.environ.get("TASKBADGER_SPOOL_DIR", "").strip()
        if not env:
            return default_spool_dir()
        if env.lower() in _OFF:
            return None
        spool_dir = env
    if isinstance(spool_dir, (str, os.PathLike)) and os.fspath(spool_dir).strip():
        text = os.fspath(spool_dir)
        if any(not ch.isprintable() for ch in text):
            raise ConfigurationError(f"spool_dir must be a directory path, got {spool_dir!r}.")
        return os.path.abspath(os.path.expanduser(text))
    raise ConfigurationError(f"spool_dir must be a directory path, or False to turn the spool off, got {spool_dir!r}.")


def normalize_publish_budget(budget: Any) -> float:
    """Seconds, more than 0 and at most ``MAX_PUBLISH_BUDGET``."""
    if isinstance(budget, str):
        try:
            budget = float(budget.strip())
        except ValueError:
            raise ConfigurationError(f"publish_budget must be a number of seconds, got {budget!r}.") from None
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not 0 < budget <= MAX_PUBLISH_BUDGET:
        raise ConfigurationError(f"publish_budget must be seconds, more than 0 and at most {MAX_PUBLISH_BUDGET:g}, "
                                 f"got {budget!r}.")
    return float(budget)


def import_string(path: str) -> Any:
    """Import ``package.module.attribute`` and return the attribute."""
    module_path, _, attr = path.rpartition(".")
    if not module_path:
        raise ImportError(f"{path!r} is not a dotted path")
    module = importlib.import_module(module_path)
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ImportError(f"module {module_path!r} has no attribute {attr!r}") from err


def resolve_before_create(before_create: BeforeCreate | str | None) -> BeforeCreate | None:
    if before_create is None or callable(before_create):
        return before_create
    if isinstance(before_create, str):
        try:
            func = import_string(before_create)
        except ImportError as err:
            raise ConfigurationError(f"before_create {before_create!r} cannot be imported: {err}") from err
        if not callable(func):
            raise ConfigurationError(f"before_create {before_create!r} is not callable.")
        return func
    raise ConfigurationError(f"before_create must be a callable or a dotted path, got {before_create!r}.")


def timeout_from_environment() -> Timeout | None:
    """``TASKBADGER_HTTP_TIMEOUT`` (seconds), read as the official SDK reads it; None when unset."""
    text = os.environ.get("TASKBADGER_HTTP_TIMEOUT", "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigurationError(f"TASKBADGER_HTTP_TIMEOUT must be a number, got {text!r}") from None


def environment_problems() -> dict[str, str]:
    """The ``TASKBADGER_*`` variables for timing and the spool that ``init()`` falls back to (when not given) and
    would refuse: name -> why. ``manage.py check`` reports them (the ERROR line of a process that refused one
    sends its reader there)."""
    checks: dict[str, Callable[[], Any]] = {
        "TASKBADGER_HTTP_TIMEOUT": lambda: normalize_timeout(_first_set(timeout_from_environment(), DEFAULT_TIMEOUT)),
        "TASKBADGER_PUBLISH_BUDGET": lambda: normalize_publish_budget(
            os.environ.get("TASKBADGER_PUBLISH_BUDGET") or DEFAULT_PUBLISH_BUDGET),
        "TASKBADGER_SPOOL_DIR": lambda: resolve_spool_dir(None),
    }
    problems = {}
    for name, check in checks.items():
        try:
            check()
        except ConfigurationError as err:
            problems[name] = str(err).rstrip(". ")
    return problems


def build_config(
    token: str | None = None,
    organization_slug: str | None = None,
    project_slug: str | None = None,
    host: str | None = None,
    tags: Mapping[str, str] | None = None,
    systems: Iterable[Integration] | None = None,
    before_create: BeforeCreate | str | None = None,
    timeout: Timeout | None = None,
    context_providers: Iterable[Any] | None = None,
    publish_budget: float | None = None,
    spool_dir: str | os.PathLike[str] | bool | None = None,
) -> Config:
    """Resolve arguments and environment into a validated Config (no I/O, no global change). The key is a
    ``Secret`` from its first line on (this frame shows on debug pages when it raises)."""
    env = ENVIRON
    # The TASKBADGER_* variable a value came from, when it did: a value refused is said to come from there (a
    # search of the code that calls init() finds nothing).
    token_from = None if token else "TASKBADGER_API_KEY"
    host_from = None if host else "TASKBADGER_HOST"
    slugs_from = {"organization_slug": None if organization_slug else "TASKBADGER_ORG",
                  "project_slug": None if project_slug else "TASKBADGER_PROJECT"}
    token = secret(token or _set_in(env, "TASKBADGER_API_KEY"))
    if isinstance(token, bytes | bytearray):  # read from a file or a secret store: the official SDK takes it
        try:
            token = secret(bytes(token).decode("ascii"))
        except UnicodeDecodeError:
            raise ConfigurationError("the API key is not ASCII text: it is base64") from None
    if token is not None and not isinstance(token, str):
        raise ConfigurationError(f"the API key must be a string, got {type(token).__name__}")
    host = host or _set_in(env, "TASKBADGER_HOST") or DEFAULT_HOST
    organization_slug = organization_slug or _set_in(env, "TASKBADGER_ORG")
    project_slug = project_slug or _set_in(env, "TASKBADGER_PROJECT")

    if not token:
        raise MissingConfiguration(["token"])
    key: str = token
    parsed = _from_variable(token_from, lambda: parse_project_key(key))
    if parsed:
        organization_slug, project_slug, token = parsed
    else:
        # The official SDK's words: users' warning filters match them.
        missing = [name for name, value in (("organization_slug", organization_slug),
                                            ("project_slug", project_slug)) if not value]
        if len(missing) == 2 and key_kind(token) == "unknown":
            # Neither a project key nor a legacy one, and no organization or project given to use it as one:
            # a typo or a placeholder, not a legacy key.
            _from_variable(token_from, lambda: _raise(ConfigurationError(NOT_A_KEY)))
        # The official SDK's words: users' warning filters match them.
        warnings.warn("Legacy API keys are deprecated. Please switch to a project API key.", DeprecationWarning,
                      stacklevel=3)
        if missing:
            raise MissingConfiguration(missing)
        for name, value in (("organization_slug", organization_slug), ("project_slug", project_slug)):
            if not is_slug(value):
                _from_variable(slugs_from[name], lambda: _raise(ConfigurationError(
                    f"{name} must be a slug (letters, digits, - and _), got {value!r}.")))  # noqa: B023

    if tags is not None and not is_tag_map(tags):
        raise ConfigurationError(f"tags must be a dict of names to strings of {MIN_TAG_LENGTH} to {MAX_TAG_LENGTH} "
                                 f"characters (the API refuses a task with other tags), {tag_map_problem(tags)}.")
    system_map = {}
    for system in _listed("systems", systems, "[CelerySystemIntegration()]"):
        identifier = getattr(system, "identifier", None)
        if not identifier:
            raise ConfigurationError(f"{system!r} is not a Task Badger system integration.")
        system_map[identifier] = system

    given_host: str = host
    host = _from_variable(host_from, lambda: validate_host(given_host))
    timeout_from = "TASKBADGER_HTTP_TIMEOUT" if timeout is None else None
    timeouts: tuple[float, float] = _from_variable(timeout_from, lambda: normalize_timeout(
        _first_set(timeout, timeout_from_environment(), DEFAULT_TIMEOUT)))
    budget_from = "TASKBADGER_PUBLISH_BUDGET" if publish_budget is None else None
    publish_budget = _from_variable(budget_from, lambda: normalize_publish_budget(
        _first_set(publish_budget, _set_in(env, "TASKBADGER_PUBLISH_BUDGET"), DEFAULT_PUBLISH_BUDGET)))
    spool_from = "TASKBADGER_SPOOL_DIR" if spool_dir is None else None
    spool: str | None = _from_variable(spool_from, lambda: resolve_spool_dir(spool_dir))

    return Config(
        host=host,
        organization_slug=str(organization_slug),
        project_slug=str(project_slug),
        token=token,
        tags=dict(tags or {}),
        systems=system_map,
        before_create=resolve_before_create(before_create),
        timeout=timeouts,
        context_providers=_check_providers(context_providers),
        publish_budget=publish_budget,
        spool_dir=spool,
    )


def _listed(name: str, values: Any, example: str) -> list[Any]:
    """``values`` (an iterable, or None) as a list; ConfigurationError for one integration not in a list."""
    if values is None:
        return []
    try:
        return list(values)
    except TypeError:
        raise ConfigurationError(f"{name} must be a list, e.g. {name}={example}, got {short(values, 80)}.") from None


def _set_in(env: Mapping[str, str], variable: str) -> str | None:
    """The value of ``variable``, or None when it is unset or blank (``TASKBADGER_HOST=`` in a compose file, a
    template that left it empty): blank counts as not set, as in the Django app's settings."""
    value = env.get(variable)
    return value if value and value.strip() else None


def _raise(err: Exception) -> Any:
    raise err


def _from_variable(variable: str | None, check: Callable[[], Any]) -> Any:
    """``check()``; a ConfigurationError it raises about a value read from the environment variable ``variable`` (None:
    the value was given as an argument) says so, unless it names the variable already."""
    try:
        return check()
    except ConfigurationError as err:
        if variable is None or isinstance(err, MissingConfiguration) or variable in str(err) \
                or not (os.environ.get(variable) or "").strip():
            raise
        raise ConfigurationError(f"{str(err).rstrip('.')} (from the environment variable {variable}).") from None


def _first_set(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _check_providers(providers: Iterable[Any] | None) -> tuple[Any, ...]:
    checked = tuple(_listed("context_providers", providers, "[SentryContextProvider()]"))
    for provider in checked:
        if not getattr(provider, "identifier", None) or not callable(getattr(provider, "capture_error_context", None)):
            raise ConfigurationError(f"{provider!r} is not a context provider: give it an identifier and a "
                                     "capture_error_context(exception, snapshot) method (see "
                                     "taskbadger.context_providers.ContextProvider).")
    return checked


def init(
    organization_slug: str | None = None,
    project_slug: str | None = None,
    token: str | None = None,
    systems: Iterable[Integration] | None = None,
    tags: Mapping[str, str] | None = None,
    before_create: BeforeCreate | str | None = None,
    context_providers: Iterable[Any] | None = None,
    timeout: Timeout | None = None,
    *,
    host: str | None = None,
    publish_budget: float | None = None,
    spool_dir: str | os.PathLike[str] | bool | None = None,
) -> Config:
    """Configure Task Badger for this process (every thread sees it).

    The positional order is the official SDK's; ``host`` (ours) is keyword-only.

    Arguments:
        organization_slug, project_slug: only for legacy keys; project keys carry both.
        token: the API key; defaults to ``TASKBADGER_API_KEY``.
        systems: integrations, e.g. ``[CelerySystemIntegration()]``.
        tags: added to every task created in this process; also the current scope's tags.
        before_create: a callable (or dotted path to one) that receives the task fields before
            each create and returns them, changed or not, or None to skip creating the task.
        context_providers: error context from other systems, e.g. ``[SentryContextProvider()]``.
        timeout: seconds, a (connect, read) pair, or an object with ``connect``/``read`` (``httpx.Timeout``);
            defaults to ``TASKBADGER_HTTP_TIMEOUT``, then (2, 5). Each call must be over within
            connect + read seconds in all, connecting within connect.
        host: the API's base URL; defaults to ``TASKBADGER_HOST``, then the hosted service.
        publish_budget: seconds a create made inline may take in all: at publish (``.delay()``), in a
            worker for a task its publisher could not track, and ``@track``'s. Defaults to
            ``TASKBADGER_PUBLISH_BUDGET``, then 1. A create that misses it is given up: the task is
            published untracked and the worker creates it when it starts.
        spool_dir: where a process that ends while the API is failing leaves the updates it could not
            deliver, for the next process on this machine to deliver; ``False`` turns it off. Defaults
            to ``TASKBADGER_SPOOL_DIR`` (``off`` turns it off), then ``~/.local/state/taskbadger/spool``.

    Raises:
        MissingConfiguration: naming each missing setting.
        ConfigurationError: a malformed key, host, timeout, publish budget, tags, before_create or context
            provider.
    """
    token = secret(token)  # before anything can raise: this frame shows on debug pages too
    config = build_config(token, organization_slug, project_slug, host, tags, systems, before_create, timeout,
                          context_providers, publish_budget, spool_dir)
    set_config(config)
    for listener in list(_listeners):
        listener(config)
    scope_state().tags = dict(config.tags)  # as the official SDK: init(tags=...) sets the scope's tags
    for system in config.systems.values():
        on_init = getattr(system, "on_init", None)
        if on_init:
            on_init(config)
    return config
