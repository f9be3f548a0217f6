import logging

import pytest

import taskbadger
from taskbadger import api, config


@pytest.fixture(autouse=True)
def _isolated_taskbadger(monkeypatch):
    """Each test starts unconfigured, with no TASKBADGER_* variables from the environment."""
    for name in ("TASKBADGER_API_KEY", "TASKBADGER_HOST", "TASKBADGER_ORG", "TASKBADGER_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    config.reset()
    monkeypatch.setattr(api, "_warned_unconfigured", False)
    with taskbadger.current_scope() as scope:
        scope.clear()
        yield
    config.reset()


@pytest.fixture
def tb_log(caplog):
    caplog.set_level(logging.DEBUG, logger="taskbadger")
    return caplog
