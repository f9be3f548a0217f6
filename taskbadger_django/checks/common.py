"""What the checks share: the docs pointer, and the messages for unknown keys, wrong types and patterns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core import checks
from django.core.checks import CheckMessage

from .. import conf, schema

DOCS = "See docs/django.md (settings and checks)."


def type_errors(values: Mapping[str, Any], table: Mapping[str, schema.Setting], where: str) -> list[CheckMessage]:
    return [checks.Error(problem.message, hint=f"For example: {problem.setting.example}. {DOCS}", obj=problem.label,
                         id="taskbadger.E003")
            for problem in schema.type_problems(values, table, where)]


def unknown_keys(keys: list[str], valid: Mapping[str, Any], where: str, check_id: str) -> list[CheckMessage]:
    messages = []
    for key in keys:
        suggestion = conf.closest(key, valid)
        hint = (f"Did you mean {suggestion!r}? " if suggestion else "") + f"Valid keys: {', '.join(valid)}."
        messages.append(checks.Error(f"Unknown key {key!r} in {where}.", hint=hint, obj=where, id=check_id))
    return messages


def patterns(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []


def pattern_error(pattern: str) -> Exception | None:
    from taskbadger.systems.celery import pattern_error as compile_error  # no Celery import: it only compiles

    return compile_error(pattern)


def configured_monitor(task_name: str, monitors: Mapping[Any, Any]) -> str | None:
    """The monitor id ``MONITORS`` gives ``task_name``, as the integrations read it (an exact name first, then the
    patterns in their order; an entry left unset, None, gives none); an entry that is not an id (E006) counts as
    unset: such settings are not applied at all."""
    from taskbadger.models import monitor_id
    from taskbadger.systems.base import QueueIntegration

    entries: dict[str, Any] = {p: monitor_id(m) for p, m in monitors.items()
                               if isinstance(p, str) and pattern_error(p) is None}
    return QueueIntegration(monitors=entries).monitor_for(task_name)
