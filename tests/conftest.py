import logging
import os
import tempfile

import pytest

import taskbadger
from taskbadger import api, config, delivery

from .workers import Worker, broker_url

# The broker the integration tests use: filesystem (embedded, no service), redis or rabbitmq.
BROKER = os.environ.get("TASKBADGER_TEST_BROKER", "filesystem")
os.environ["TB_BROKER_URL"] = broker_url(BROKER)
if BROKER == "filesystem" and "TB_BROKER_DIR" not in os.environ:
    _broker_dir = tempfile.mkdtemp(prefix="tbbroker-")
    os.makedirs(_broker_dir + "-control", exist_ok=True)
    os.environ["TB_BROKER_DIR"] = _broker_dir


@pytest.fixture(autouse=True)
def _isolated_taskbadger(monkeypatch):
    """Each test starts unconfigured, with no TASKBADGER_* variables from the environment."""
    for name in ("TASKBADGER_API_KEY", "TASKBADGER_HOST", "TASKBADGER_ORG", "TASKBADGER_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    config.reset()
    delivery.publish_breaker.reset()
    monkeypatch.setattr(api, "_warned_unconfigured", False)
    with taskbadger.current_scope() as scope:
        scope.clear()
        yield
    config.reset()


@pytest.fixture(autouse=True)
def _no_internal_errors(caplog):
    """A handler that caught its own error logged it: that is a bug, fail the test."""
    yield
    internal = [r for r in caplog.records if getattr(r, "taskbadger_internal_error", False)]
    assert not internal, f"internal errors logged: {[r.getMessage() for r in internal]}"
    for worker in _live_workers:
        errors = worker.new_internal_errors()
        assert not errors, f"worker {worker.name} logged internal errors:\n{errors}"


@pytest.fixture
def tb_log(caplog):
    caplog.set_level(logging.DEBUG, logger="taskbadger")
    return caplog


_live_workers: list[Worker] = []


def start_worker(server, **kwargs) -> Worker:
    worker = Worker(server, **kwargs).start()
    _live_workers.append(worker)
    return worker


def stop_worker(worker: Worker) -> None:
    try:
        worker.stop()
    finally:
        if worker in _live_workers:
            _live_workers.remove(worker)


@pytest.fixture(scope="session")
def celery_app():
    from .celery_project.app import app

    return app


def _session_worker(server, request, **kwargs):
    worker = start_worker(server, **kwargs)
    request.addfinalizer(lambda: stop_worker(worker))
    return worker


@pytest.fixture(scope="session")
def prefork_worker(taskbadger_server_session, celery_app, request):
    return _session_worker(taskbadger_server_session, request, pool="prefork", concurrency=2)


@pytest.fixture(scope="session")
def threads_worker(taskbadger_server_session, celery_app, request):
    return _session_worker(taskbadger_server_session, request, pool="threads", concurrency=4)


@pytest.fixture(scope="session")
def solo_worker(taskbadger_server_session, celery_app, request):
    return _session_worker(taskbadger_server_session, request, pool="solo", concurrency=1)


@pytest.fixture(scope="session")
def gevent_worker(taskbadger_server_session, celery_app, request):
    return _session_worker(taskbadger_server_session, request, pool="gevent", concurrency=10)


@pytest.fixture(scope="session")
def eventlet_worker(taskbadger_server_session, celery_app, request):
    return _session_worker(taskbadger_server_session, request, pool="eventlet", concurrency=10)


#: Every pool Celery ships: in the green pools our sender threads and locks are greenlets and
#: cooperative locks, and each task runs in a greenlet of its own.
POOLS = ["prefork", "threads", "solo", "gevent", "eventlet"]


@pytest.fixture(params=POOLS)
def any_worker(request):
    return request.getfixturevalue(f"{request.param}_worker")
