"""The official SDK's ``taskbadger.mug`` module path, for code that imports from it: ``Badger``, ``Session``
and ``Scope``, the same objects as ``taskbadger``'s."""

from .compat import Badger, Session
from .scope import Scope

__all__ = ["Badger", "Scope", "Session"]
