"""Names the official SDK has that this one keeps for code written against it."""

from __future__ import annotations

from contextlib import ContextDecorator
from typing import TYPE_CHECKING, Any

from .config import Config, get_config
from .http import session
from .scope import Scope, current_scope

if TYPE_CHECKING:
    import requests


class Session(ContextDecorator):
    """The official SDK's ``Session``. This SDK always reuses one keep-alive connection pool per
    process, so a ``Session`` costs nothing and changes nothing; it yields the underlying
    ``requests.Session``."""

    def __enter__(self) -> requests.Session:
        return session()

    def __exit__(self, *exc_info: Any) -> None:
        return None


class _BadgerType(type):
    @property
    def current(cls) -> Badger:
        return cls()


class Badger(metaclass=_BadgerType):
    """The official SDK's ``Badger``: ``Badger.current.settings`` is the configuration (``organization_slug``,
    ``project_slug``, ``token``, ``base_url``…), or None before ``taskbadger.init()``. The configuration is
    process-wide here, so every thread's ``Badger.current`` sees the same settings."""

    @property
    def settings(self) -> Config | None:
        return get_config()

    def scope(self) -> Scope:
        """The current scope: the official SDK's ``current_scope()`` is ``Badger.current.scope()``."""
        return current_scope()

    @classmethod
    def is_configured(cls) -> bool:
        return get_config() is not None
