"""System integrations: ``taskbadger.init(systems=[CelerySystemIntegration()])``.

``CelerySystemIntegration`` and ``ProcrastinateSystemIntegration`` are imported on first access, so that
``import taskbadger.systems`` imports neither Celery nor Procrastinate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import System

if TYPE_CHECKING:
    from .celery import CelerySystemIntegration
    from .procrastinate import ProcrastinateSystemIntegration


def __getattr__(name: str) -> Any:
    if name == "CelerySystemIntegration":
        from .celery import CelerySystemIntegration

        return CelerySystemIntegration
    if name == "ProcrastinateSystemIntegration":
        from .procrastinate import ProcrastinateSystemIntegration

        return ProcrastinateSystemIntegration
    raise AttributeError(name)


__all__ = ["CelerySystemIntegration", "ProcrastinateSystemIntegration", "System"]
