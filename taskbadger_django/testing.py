"""Assert, in your Django tests, which tasks your code tracked.

With Django's test classes::

    from django.test import TestCase
    from taskbadger_django.testing import TaskBadgerTestCaseMixin

    class InvoiceTests(TaskBadgerTestCaseMixin, TestCase):
        def test_nightly_invoices_is_tracked(self):
            nightly_invoices.delay([1, 2, 3])
            task = self.assertTaskTracked("billing.tasks.nightly_invoices", status="pending")
            self.assertEqual(task["monitor_id"], "…")

The mixin starts a stand-in Task Badger API (``taskbadger.testing.TaskBadgerServer``, real HTTP on
127.0.0.1) once per class, and for each test points the SDK at it, with the rest of your ``TASKBADGER``
settings (tags, monitors, Celery rules, ``BEFORE_CREATE``) applied, then restores the previous
configuration. If you override ``setUp``, call ``super().setUp()``.

With pytest (pytest-django), use ``use_server`` with the ``taskbadger_server`` fixture that the
``taskbadger`` package installs::

    def test_nightly_invoices_is_tracked(taskbadger_server):
        with use_server(taskbadger_server):
            nightly_invoices.delay([1, 2, 3])
        assert taskbadger_server.tasks_named("billing.tasks.nightly_invoices")

Celery only tracks tasks that are published (``.delay()``/``.apply_async()``), not eager runs: in tests,
a ``memory://`` broker without a worker gives you the ``pending`` task the publish creates.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any, ClassVar

from taskbadger import config as sdk_config
from taskbadger.config import Config
from taskbadger.delivery import sender
from taskbadger.delivery.breaker import publish_breaker
from taskbadger.exceptions import ConfigurationError
from taskbadger.scope import scope_state
from taskbadger.testing import TaskBadgerServer

from . import conf

__all__ = ["TaskBadgerServer", "TaskBadgerTestCaseMixin", "use_server"]


@contextlib.contextmanager
def use_server(server: TaskBadgerServer, **overrides: Any) -> Iterator[Config]:
    """Point the SDK at ``server`` for the block, with the project's ``TASKBADGER`` settings (and
    ``overrides``, lower-case setting names) applied, tracking enabled; restore afterwards."""
    previous = sdk_config.get_config()
    settings = conf.TaskBadgerSettings(overrides={"enabled": True, **overrides, "api_key": server.api_key,
                                                  "host": server.url})
    problems = settings.problems()
    if problems:  # as at start-up: settings with errors are not applied in part
        given = ", ".join(sorted(overrides))
        raise ConfigurationError(conf.refusal(problems) + (
            f" The values given to use_server() or taskbadger_overrides ({given}) are among these settings: "
            "`manage.py check` does not see them." if given else ""))
    publish_breaker().reset()
    scope = scope_state()
    previous_tags = dict(scope.tags)  # init() sets the scope's tags to the configuration's
    config = sdk_config.init(**settings.init_kwargs())
    try:
        yield config
    finally:
        sender.flush(5.0)
        sdk_config.set_config(previous)
        scope.tags = previous_tags  # the tags of this block's settings do not follow the tests after it


def _eager_note() -> str:
    """Why nothing may have been tracked: Celery runs tasks eagerly (``CELERY_TASK_ALWAYS_EAGER``)."""
    celery = sys.modules.get("celery")
    app = getattr(celery, "current_app", None) if celery is not None else None
    try:
        eager = bool(app is not None and app.conf.task_always_eager)
    except Exception:
        return ""
    return ("; Celery's task_always_eager is on (CELERY_TASK_ALWAYS_EAGER), and eager runs are not tracked: "
            "publish to a memory:// broker instead" if eager else "")


class TaskBadgerTestCaseMixin:
    """For ``SimpleTestCase``/``TestCase`` (put it first): a stand-in Task Badger API per class, the
    SDK pointed at it per test, and assertions on what was tracked."""

    #: the stand-in server of this class: ``.tasks``, ``.requests``, ``.fail(503)``, ``.wait_for_task()``…
    taskbadger_server: ClassVar[TaskBadgerServer]
    #: extra settings for every test of the class, e.g. ``{"tags": {"env": "test"}}``
    taskbadger_overrides: ClassVar[dict[str, Any]] = {}

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()  # type: ignore[misc]
        cls.taskbadger_server = TaskBadgerServer().start()
        cls.addClassCleanup(cls.taskbadger_server.stop)  # type: ignore[attr-defined]

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.taskbadger_server.reset()
        self._taskbadger_stack = contextlib.ExitStack()
        self._taskbadger_stack.enter_context(use_server(self.taskbadger_server, **self.taskbadger_overrides))
        self.addCleanup(self._taskbadger_stack.close)  # type: ignore[attr-defined]

    @property
    def taskbadger_tasks(self) -> list[dict[str, Any]]:
        """Every task tracked so far in this test, oldest first."""
        sender.flush(5.0)
        return list(self.taskbadger_server.tasks.values())

    def assertTaskTracked(self, name: str, status: str | None = None, timeout: float = 2.0) -> dict[str, Any]:  # noqa: N802
        """Assert a task called ``name`` (and in ``status``, if given) was tracked; return the newest
        such task (a dict in the API's shape, plus ``monitor_id``). Waits up to ``timeout`` seconds
        for updates a worker sends in the background."""
        sender.flush(timeout)

        def find() -> dict[str, Any] | None:
            for task in reversed(self.taskbadger_server.tasks_named(name)):
                if status is None or task["status"] == status:
                    return task
            return None

        try:
            return self.taskbadger_server.wait_for(find, timeout=timeout)
        except AssertionError:
            tracked = [(t["name"], t["status"]) for t in self.taskbadger_server.tasks.values()]
            wanted = repr(name) + (f" with status {status!r}" if status else "")
            raise self.failureException(  # type: ignore[attr-defined]
                f"No task {wanted} was tracked; tracked tasks (name, status): {tracked or 'none'}{_eager_note()}"
            ) from None

    def assertTaskNotTracked(self, name: str) -> None:  # noqa: N802
        """Assert no task called ``name`` was tracked (so far)."""
        sender.flush(5.0)
        found = self.taskbadger_server.tasks_named(name)
        if found:
            raise self.failureException(  # type: ignore[attr-defined]
                f"Task {name!r} was tracked {len(found)} time(s): {[t['status'] for t in found]}"
            )
