"""What a failed task records about its exception: ``data["exception"]``."""

from __future__ import annotations

import traceback

#: Longest traceback text stored on a task. The tail (where the error is) is kept.
MAX_TRACEBACK_CHARS = 8000


def exception_text(exc: BaseException, formatted: str | None = None) -> str:
    """Type, message and traceback of ``exc`` as one string, truncated from the top if long."""
    if formatted is None:
        formatted = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    text = formatted
    text = text.rstrip()
    if len(text) > MAX_TRACEBACK_CHARS:
        text = "…(truncated)\n" + text[-MAX_TRACEBACK_CHARS:]
    return text


def exception_data(exc: BaseException, formatted: str | None = None) -> dict[str, str]:
    """The ``data`` keys recorded for a failure: ``exception`` (full text) and ``exception_type``."""
    return {
        "exception": exception_text(exc, formatted),
        "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins."),
    }
