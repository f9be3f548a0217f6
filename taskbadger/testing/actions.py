"""The stand-in API's per-task actions: the ``actions`` of task bodies, and the action endpoints
(list, create, get, update, partial update, cancel) of ``openapi.yaml``."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

Response = tuple[int, Any, dict[str, str]]

_LIMITS = {"trigger": 255, "integration": 50}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _text(value: Any) -> str:
    return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


@dataclass
class StoredAction:
    id: int
    task: str
    trigger: str
    integration: str
    config: Any = None
    status: str = "active"
    created: datetime = field(default_factory=_now)
    updated: datetime = field(default_factory=_now)

    def represent(self) -> dict[str, Any]:
        return {"id": self.id, "task": self.task, "trigger": self.trigger, "integration": self.integration,
                "status": self.status, "config": self.config if self.config is not None else {},
                "created": _text(self.created), "updated": _text(self.updated)}


def clean(body: Any, *, partial: bool) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """An ActionRequest (or PatchedActionRequest) body: (cleaned fields, DRF-style errors)."""
    if not isinstance(body, dict):
        return {}, {"non_field_errors": [f"Invalid data. Expected a dictionary, but got {type(body).__name__}."]}
    cleaned: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for key, limit in _LIMITS.items():
        if key not in body:
            if not partial:
                errors[key] = ["This field is required."]
            continue
        value = body[key]
        if value is None:
            errors[key] = ["This field may not be null."]
        elif not isinstance(value, str):
            errors[key] = ["Not a valid string."]
        elif not value.strip():
            errors[key] = ["This field may not be blank."]
        elif len(value) > limit:
            errors[key] = [f"Ensure this field has no more than {limit} characters."]
        else:
            cleaned[key] = value
    if "config" in body:
        cleaned["config"] = body["config"]
    return cleaned, errors


def clean_list(value: Any) -> tuple[list[dict[str, Any]], Any]:
    """The ``actions`` of a task body: (cleaned actions, errors or None)."""
    if not isinstance(value, list):
        return [], [f'Expected a list of items but got type "{type(value).__name__}".']
    results = [clean(item, partial=False) for item in value]
    if any(errors for _, errors in results):
        return [], [errors for _, errors in results]
    return [cleaned for cleaned, _ in results], None


class Actions:
    """Every task's actions (the store's lock guards them)."""

    def __init__(self) -> None:
        self.by_task: dict[str, dict[int, StoredAction]] = {}
        self._ids = itertools.count(1)

    def clear(self) -> None:
        self.by_task.clear()

    def add(self, task_id: str, cleaned: dict[str, Any]) -> StoredAction:
        action = StoredAction(id=next(self._ids), task=task_id, **cleaned)
        self.by_task.setdefault(task_id, {})[action.id] = action
        return action

    def list(self, task_id: str) -> Response:
        return 200, [a.represent() for a in self.by_task.get(task_id, {}).values()], {}

    def create(self, task_id: str, body: Any) -> Response:
        cleaned, errors = clean(body, partial=False)
        if errors:
            return 400, errors, {}
        return 201, self.add(task_id, cleaned).represent(), {}

    def _find(self, task_id: str, action_id: str) -> StoredAction | None:
        return self.by_task.get(task_id, {}).get(int(action_id)) if action_id.isdigit() else None

    def get(self, task_id: str, action_id: str) -> Response:
        action = self._find(task_id, action_id)
        return (200, action.represent(), {}) if action else (404, {"detail": "Not found."}, {})

    def update(self, task_id: str, action_id: str, body: Any, *, partial: bool) -> Response:
        action = self._find(task_id, action_id)
        if action is None:
            return 404, {"detail": "Not found."}, {}
        cleaned, errors = clean(body, partial=partial)
        if errors:
            return 400, errors, {}
        for key, value in cleaned.items():
            setattr(action, key, value)
        action.updated = _now()
        return 200, action.represent(), {}

    def cancel(self, task_id: str, action_id: str) -> Response:
        action = self._find(task_id, action_id)
        if action is None:
            return 404, {"detail": "Not found."}, {}
        action.status = "cancelled"
        action.updated = _now()
        return 204, None, {}
