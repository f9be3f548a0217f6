"""System integrations: ``taskbadger.init(systems=[CelerySystemIntegration()])``.

``CelerySystemIntegration`` is imported on first access so that ``import taskbadger.systems``
does not import Celery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .celery import CelerySystemIntegration


class System:
    """Base class of system integrations. ``identifier`` names the system in the config."""

    identifier: str = ""

    def on_init(self, config: Any) -> None:
        """Called by ``taskbadger.init()`` once the configuration is in place."""


def __getattr__(name: str) -> Any:
    if name == "CelerySystemIntegration":
        from .celery import CelerySystemIntegration

        return CelerySystemIntegration
    raise AttributeError(name)


__all__ = ["System", "CelerySystemIntegration"]
