"""Names the official SDK has that this one keeps for code written against it."""

from __future__ import annotations

from contextlib import ContextDecorator
from typing import Any

import requests

from .http import session


class Session(ContextDecorator):
    """The official SDK's ``Session``. This SDK always reuses one keep-alive connection pool per
    process, so a ``Session`` costs nothing and changes nothing; it yields the underlying
    ``requests.Session``."""

    def __enter__(self) -> requests.Session:
        return session()

    def __exit__(self, *exc_info: Any) -> None:
        return None
