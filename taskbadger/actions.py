"""Per-task actions: notify an integration when a task reaches a trigger (deprecated, still public).

    from taskbadger import Action, EmailIntegration, WebhookIntegration

    Task.create("export", actions=[Action("success,error", EmailIntegration(to="ops@example.com"))])

Task Badger now prefers project-level actions; like the official SDK, every use of per-task actions
raises a ``DeprecationWarning`` (constructing the objects does not).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .exceptions import TaskbadgerException

DEPRECATION = ("Per-task actions are deprecated in favor of project-level actions and will be removed in a "
               "future release. See https://docs.taskbadger.net/actions/.")


class Integration:
    """Where an action sends its notification; ``id`` starts with the integration's ``type``."""

    type: ClassVar[str] = ""
    id: str

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.startswith(self.type):
            raise TaskbadgerException(f"Expected integration ID {self.id!r} to start with {self.type!r}")

    def request_config(self) -> dict[str, Any]:
        return {}


@dataclass
class EmailIntegration(Integration):
    """Send an email: ``EmailIntegration(to="ops@example.com")``."""

    type: ClassVar[str] = "email"
    to: str
    id: str = "email"

    def request_config(self) -> dict[str, Any]:
        return {"to": self.to}


@dataclass
class WebhookIntegration(Integration):
    """Call a webhook configured in Task Badger: ``WebhookIntegration(id="webhook:<id>")``."""

    type: ClassVar[str] = "webhook"
    id: str


@dataclass
class Action:
    """Notify ``integration`` when the task matches ``trigger`` (e.g. ``"success,error"``, ``"*/10%"``)."""

    trigger: str
    integration: Integration

    def to_dict(self) -> dict[str, Any]:
        return {"trigger": self.trigger, "integration": self.integration.id,
                "config": self.integration.request_config()}


def action_dicts(actions: Iterable[Any] | None, stacklevel: int = 2) -> list[dict[str, Any]] | None:
    """The wire form of ``actions`` (``Action`` objects, or dicts already in that form), with the
    deprecation warning the official SDK gives (``stacklevel`` as for ``warnings.warn``, counted from the
    caller of this function); None when there are none."""
    if not actions:
        return None
    warnings.warn(DEPRECATION, DeprecationWarning, stacklevel=stacklevel + 1)
    result = []
    for action in actions:
        if isinstance(action, Action):
            result.append(action.to_dict())
        elif isinstance(action, Mapping) and isinstance(action.get("trigger"), str) \
                and isinstance(action.get("integration"), str):
            result.append({"trigger": action["trigger"], "integration": action["integration"],
                           "config": dict(action.get("config") or {})})
        else:
            raise TaskbadgerException(f"Not an action: {action!r}; use taskbadger.Action(trigger, integration)")
    return result
