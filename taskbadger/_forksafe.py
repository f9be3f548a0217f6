"""Module-level locks that survive ``fork`` from another thread.

Billiard forks prefork pool children from its supervisor thread. A lock another thread holds at that
moment is copied held into the child, where nobody will ever release it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any


def renew_after_fork(module_globals: dict[str, Any], name: str,
                     factory: Callable[[], Any] = threading.Lock) -> None:
    """Replace ``module_globals[name]`` with ``factory()`` in every forked child."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=lambda: module_globals.__setitem__(name, factory()))
