"""System integrations: ``taskbadger.init(systems=[CelerySystemIntegration()])``.

``CelerySystemIntegration`` is imported on first access, so that ``import taskbadger.systems``
does not import Celery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import System

if TYPE_CHECKING:
    from .celery import CelerySystemIntegration


def __getattr__(name: str) -> Any:
    if name == "CelerySystemIntegration":
        from .celery import CelerySystemIntegration

        return CelerySystemIntegration
    raise AttributeError(name)


__all__ = ["CelerySystemIntegration", "System"]
