"""The base class of system integrations (``taskbadger.init(systems=[...])``)."""

from __future__ import annotations

from typing import Any


class System:
    """A system integration. ``identifier`` names it in the configuration (``Config.system()``)."""

    identifier: str = ""

    def on_init(self, config: Any) -> None:
        """Called by ``taskbadger.init()`` once the configuration is in place."""
