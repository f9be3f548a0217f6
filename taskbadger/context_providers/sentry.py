"""Link a failed task to its Sentry event.

``SentryContextProvider`` adds ``data["sentry"] = {"event_id": ..., "url": ...}`` to a task that fails,
but only when Sentry recorded an event since the task started (``sentry_sdk.last_event_id()`` changed):
no link to an older, unrelated event. Without ``sentry-sdk`` installed it does nothing.
"""

from __future__ import annotations

from typing import Any

from . import ContextProvider


def _last_event_id() -> str | None:
    try:
        import sentry_sdk
    except ImportError:
        return None
    return sentry_sdk.last_event_id()


class SentryContextProvider(ContextProvider):
    identifier = "sentry"

    def __init__(self, organization_slug: str | None = None, base_url: str = "https://sentry.io") -> None:
        self.organization_slug = organization_slug
        self.base_url = base_url.rstrip("/")

    def snapshot(self) -> str | None:
        return _last_event_id()

    def capture_error_context(self, exception: BaseException, snapshot: Any = None) -> dict[str, Any] | None:
        event_id = _last_event_id()
        if not event_id or event_id == snapshot:
            return None
        context: dict[str, Any] = {"event_id": event_id}
        if self.organization_slug:
            context["url"] = f"{self.base_url}/organizations/{self.organization_slug}/issues/?query={event_id}"
        return context
