"""Exceptions raised by the SDK.

Two families, kept apart so that no "fail safely" path can swallow a configuration mistake:

* ``ConfigurationError`` (and ``MissingConfiguration``): the SDK was set up wrongly. Raised by
  ``taskbadger.init()``; fix the settings.
* ``TaskbadgerException``: something went wrong talking to the API. HTTP errors carry the status
  and the server's message (never the API key); transport errors say whether the request
  certainly did not reach the server, which decides whether it may be retried.
"""

from __future__ import annotations

from typing import Any


class ConfigurationError(Exception):
    """Task Badger is configured wrongly. The message says which setting to fix."""


class MissingConfiguration(ConfigurationError):
    """A required setting is missing. ``missing`` lists the names of the missing settings."""

    # How a user supplies each setting, named in the message so it says what to do.
    _HOW = {
        "token": "pass token= to taskbadger.init() or set TASKBADGER_API_KEY",
        "organization_slug": "pass organization_slug= or set TASKBADGER_ORG, for legacy keys only",
        "project_slug": "pass project_slug= or set TASKBADGER_PROJECT, for legacy keys only",
        "host": "pass host= or set TASKBADGER_HOST",
    }

    def __init__(self, missing: list[str] | None = None, **values: Any) -> None:
        # `MissingConfiguration(token=None, host="...")` is accepted for compatibility with the
        # official SDK: every keyword whose value is None counts as missing.
        self.missing = list(missing or []) + [name for name, value in values.items() if value is None]
        super().__init__(str(self))

    #: What is missing when it is not a setting (set after construction: ``init()`` was never called).
    hint: str | None = None

    def __str__(self) -> str:
        if self.hint:
            return f"Missing Task Badger configuration: {self.hint}."
        parts = [f"{name} ({self._HOW.get(name, 'required')})" for name in self.missing]
        return "Missing Task Badger configuration: " + "; ".join(parts) + "."


class TaskbadgerException(Exception):
    """Base class of every error raised while talking to the Task Badger API."""


class CreateSkipped(TaskbadgerException):
    """``before_create`` returned None, which means: do not create this task."""


class InvalidData(TaskbadgerException, ValueError):
    """A field value cannot be sent (for example ``data`` that JSON cannot encode)."""


class TransportError(TaskbadgerException):
    """The request did not get an HTTP answer.

    ``reached_server`` is False only when the request certainly never reached the server
    (connection refused, connect timeout). Only then may a create be retried without risking a
    duplicate task.
    """

    reached_server: bool = True


class ConnectError(TransportError):
    """The connection could not be established: the request never reached the server."""

    reached_server = False


class ReadTimeout(TransportError):
    """The whole answer did not arrive before the call's deadline. The server may have processed the
    request."""


class BadAnswer(TransportError):
    """The API answered, but not with an answer to this request: not JSON, not a task, larger than
    any task, another request's answer (a confused server or proxy), or a connection that ended in the
    middle of it. The server may have processed the request."""


class UnexpectedStatus(TaskbadgerException):
    """The API answered with an error status.

    Attributes:
        status_code: the HTTP status.
        content: the raw response body.
        message: the server's message, decoded when it is JSON.
    """

    def __init__(self, status_code: int, content: bytes = b"", message: str | None = None) -> None:
        self.status_code = status_code
        self.content = content
        self.message = message if message is not None else content.decode("utf-8", "replace")[:500]
        super().__init__(f"Task Badger API answered {status_code}: {self.message}")


class ValidationError(UnexpectedStatus):
    """400: the API rejected a field. ``errors`` maps each field to its messages."""

    def __init__(self, status_code: int, content: bytes = b"", message: str | None = None,
                 errors: dict[str, list[str]] | None = None) -> None:
        self.errors = errors or {}
        super().__init__(status_code, content, message)


class Unauthorized(UnexpectedStatus):
    """401/403: the API key was refused. Check TASKBADGER_API_KEY (the key is never shown)."""


class NotFound(UnexpectedStatus):
    """404: no such task (or wrong organization / project)."""


class RateLimited(UnexpectedStatus):
    """429: too many requests. ``retry_after`` is the server's hint in seconds, if it gave one."""

    def __init__(self, status_code: int, content: bytes = b"", message: str | None = None,
                 retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(status_code, content, message)


class ServerError(UnexpectedStatus):
    """5xx: the service failed. Transient: worth retrying later."""
