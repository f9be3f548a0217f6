"""pytest plugin (entry point ``pytest11: taskbadger``): fixtures backed by the stand-in server."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest

from .server import TaskBadgerServer


@pytest.fixture(scope="session")
def taskbadger_server_session() -> Iterator[TaskBadgerServer]:
    """One stand-in Task Badger server for the whole test session."""
    server = TaskBadgerServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def taskbadger_server(taskbadger_server_session: TaskBadgerServer) -> Iterator[TaskBadgerServer]:
    """The session server, reset, with the SDK pointed at it for the duration of the test; then the SDK's
    configuration is the one it had before (the project's, for the tests that follow)."""
    import taskbadger  # imported lazily: the plugin loads before the code under test

    config = getattr(taskbadger, "config", None) or importlib.import_module("taskbadger.config")
    server = taskbadger_server_session
    server.reset()
    previous = config.get_config()
    scope = importlib.import_module("taskbadger.scope").scope_state()
    previous_tags = dict(scope.tags)  # init() sets the scope's tags (to none here)
    taskbadger.init(token=server.api_key, host=server.url)
    try:
        yield server
    finally:
        # What the test queued goes to the stand-in now (its faults cleared), not later to the host of the
        # configuration restored, with its key.
        server.clear_faults()
        importlib.import_module("taskbadger.delivery.sender").flush(5.0)
        config.set_config(previous)
        scope.tags = previous_tags  # the tags the project set in its scope are its own again
        server.reset()
