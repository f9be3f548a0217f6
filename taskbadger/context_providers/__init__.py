"""Error context from other systems, recorded on a task when it fails.

    import taskbadger
    from taskbadger.context_providers.sentry import SentryContextProvider

    taskbadger.init(context_providers=[SentryContextProvider(organization_slug="acme")])

A provider has an ``identifier`` (the key of ``data`` its result goes under), takes a ``snapshot()``
when a tracked task starts (``@track``, the Celery integration), and ``capture_error_context(exception,
snapshot)`` when the task fails; a result that is empty adds nothing. A provider that raises is logged
and skipped: it never fails the task.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from .._runtime import short
from ..config import get_config

log = logging.getLogger("taskbadger")

_snapshots: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "taskbadger_context_snapshots", default=None)


class ContextProvider:
    """The base class of context providers."""

    identifier: str | None = None

    def snapshot(self) -> Any:
        """Taken when a tracked task starts; handed back to ``capture_error_context``."""
        return None

    def capture_error_context(self, exception: BaseException, snapshot: Any = None) -> dict[str, Any] | None:
        raise NotImplementedError


def _providers() -> list[Any]:
    config = get_config()
    return list(config.context_providers) if config is not None else []


def start() -> contextvars.Token | None:
    """A tracked task starts here: take every provider's snapshot. Returns a token for ``stop``."""
    config = get_config()
    providers = config.context_providers if config is not None else None
    if not providers:  # nearly always: no list copied, no call
        return None
    snapshots = {}
    for provider in providers:
        try:
            snapshots[provider.identifier] = provider.snapshot()
        except Exception:
            log.warning("Task Badger: context provider %s failed to take a snapshot", short(provider.identifier),
                        exc_info=True)
    return _snapshots.set(snapshots)


def stop(token: contextvars.Token | None) -> None:
    if token is not None:
        _snapshots.reset(token)


def error_context(exception: BaseException) -> dict[str, Any]:
    """``{identifier: context}`` of every provider that has something to say about ``exception``."""
    providers = _providers()
    if not providers:
        return {}
    snapshots = _snapshots.get() or {}
    found: dict[str, Any] = {}
    for provider in providers:
        try:
            context = provider.capture_error_context(exception, snapshots.get(provider.identifier))
        except Exception:
            log.warning("Task Badger: context provider %s failed; its context is left out",
                        short(provider.identifier), exc_info=True)
            continue
        if context and provider.identifier:
            found[str(provider.identifier)] = context
    return found


__all__ = ["ContextProvider", "error_context", "start", "stop"]
