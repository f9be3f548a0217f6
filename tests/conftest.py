import fnmatch
import logging
import os
import shutil
import tempfile

import pytest

import taskbadger
from taskbadger import config
from taskbadger._runtime import forget_logged
from taskbadger.delivery.breaker import publish_breaker

from .workers import Worker, broker_url

# Every temporary directory the tests and the processes they start make (the broker's, each test's spool, the
# workers', the projects') is made under one of this test process's own, removed when its session ends: a run
# used to leave some 1,500 of them in /tmp.
_TEST_TMP = tempfile.mkdtemp(prefix="tbtests-")
tempfile.tempdir = _TEST_TMP
os.environ["TMPDIR"] = _TEST_TMP

# The broker the integration tests use: filesystem (embedded, no service), redis or rabbitmq.
BROKER = os.environ.get("TASKBADGER_TEST_BROKER", "filesystem")
os.environ["TB_BROKER_URL"] = broker_url(BROKER)
os.environ.setdefault("TB_RESULTS_DIR", tempfile.mkdtemp(prefix="tbresults-"))
if BROKER == "filesystem" and "TB_BROKER_DIR" not in os.environ:
    _broker_dir = tempfile.mkdtemp(prefix="tbbroker-")
    os.makedirs(_broker_dir + "-control", exist_ok=True)
    os.environ["TB_BROKER_DIR"] = _broker_dir


@pytest.fixture(autouse=True)
def _isolated_taskbadger(monkeypatch):
    """Each test starts unconfigured, with no TASKBADGER_* variables from the environment but its own spool."""
    for name in ("TASKBADGER_API_KEY", "TASKBADGER_HOST", "TASKBADGER_ORG", "TASKBADGER_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    # What a process ends with during a test's outage is spooled in the test's own directory (the
    # processes it starts inherit it), never in the user's ~/.local/state, where another test or a later
    # run would pick it up.
    monkeypatch.setenv("TASKBADGER_SPOOL_DIR", tempfile.mkdtemp(prefix="tbspool-"))
    config.reset()
    publish_breaker().reset()
    forget_logged()  # lines logged once per process are logged again in each test
    taskbadger.current_scope().clear()  # the main thread's scope, which threads start from
    yield
    taskbadger.current_scope().clear()
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


def stop_worker(worker: Worker) -> int | None:
    """Warm shutdown; the worker's exit status."""
    try:
        return worker.stop()
    finally:
        if worker in _live_workers:
            _live_workers.remove(worker)


@pytest.fixture(scope="session")
def celery_app():
    from .celery_project.app import app

    return app


#: Every pool Celery ships, with the concurrency its shared worker runs at. In the green pools our
#: sender threads and locks are greenlets and cooperative locks, and each task runs in a greenlet.
POOLS = {"prefork": 2, "threads": 4, "solo": 1, "gevent": 10, "eventlet": 10}


def _session_worker_fixture(pool: str, concurrency: int):
    """``<pool>_worker``: one worker of that pool for the whole session, started on first use."""

    @pytest.fixture(scope="session", name=f"{pool}_worker")
    def worker(taskbadger_server_session, celery_app, request):
        started = start_worker(taskbadger_server_session, pool=pool, concurrency=concurrency)
        _session_workers.append(started)
        request.addfinalizer(lambda: _stop_session_worker(started))
        return started

    return worker


_session_workers: list[Worker] = []


def _stop_session_worker(worker: Worker) -> None:
    # A warm shutdown takes seconds (a worker notices SIGTERM between two polls of its broker): the first
    # of these finalizers starts every session worker's, so they stop together, not one after another.
    for other in _session_workers:
        other.request_stop()
    stop_worker(worker)


prefork_worker = _session_worker_fixture("prefork", POOLS["prefork"])
threads_worker = _session_worker_fixture("threads", POOLS["threads"])
solo_worker = _session_worker_fixture("solo", POOLS["solo"])
gevent_worker = _session_worker_fixture("gevent", POOLS["gevent"])
eventlet_worker = _session_worker_fixture("eventlet", POOLS["eventlet"])


@pytest.fixture(params=list(POOLS))
def any_worker(request):
    return request.getfixturevalue(f"{request.param}_worker")


@pytest.fixture(scope="session")
def backend_worker(taskbadger_server_session):
    """A prefork worker with a result backend (Redis, db 6): chords need one. Killed at the end (its warm
    shutdown takes seconds, for nothing a test reads)."""
    from .services import require

    require("redis")
    worker = start_worker(taskbadger_server_session, pool="prefork", concurrency=2,
                          extra_env={"TB_RESULT_BACKEND": "redis://127.0.0.1:6379/6"})
    yield worker
    worker.kill()
    _live_workers.remove(worker)


@pytest.fixture
def memory_app():
    """A Celery app on the in-memory broker, current for the test (publishing needs no worker)."""
    from celery import Celery
    from celery import _state as celery_state

    previous = celery_state._tls.current_app
    app = Celery("tests-memory", broker="memory://", set_as_current=False)
    app.conf.task_always_eager = False
    app.set_current()
    try:
        yield app
    finally:
        celery_state._set_current_app(previous)


#: Modules whose worker tests also run in CI's Python 3.12 / Django 6.1 leg (``-m "not integration or
#: version_matrix"``), beside every test that starts no worker: where Django 6's own django.tasks, the Django
#: app and the newer Python meet real workers. The Celery fault and outcome matrix runs on Python 3.11 only
#: (embedded broker, Redis, RabbitMQ): a second time on 3.12 took CI past 10 minutes.
VERSION_MATRIX_MODULES = ("test_celery_lifecycle.py", "test_testproject.py", "test_spool.py", "test_procrastinate*.py",
                          "test_progress_*.py")


def pytest_collection_modifyitems(items):
    for item in items:
        if any(fnmatch.fnmatch(item.path.name, pattern) for pattern in VERSION_MATRIX_MODULES):
            item.add_marker(pytest.mark.version_matrix)


def pytest_sessionfinish(session, exitstatus):
    # Senders are daemon threads that log their delivery line once a minute; after the session pytest
    # closes the captured streams that the test project's logging handlers write to, so a line logged
    # while the process ends would print "--- Logging error ---" noise. Nothing is asserted after this.
    logging.raiseExceptions = False


def pytest_unconfigure(config):
    shutil.rmtree(_TEST_TMP, ignore_errors=True)


#: Fields of ours that must never reach the API (``delivery.merge``'s markers, resolved at send time).
def _internal_field(name: str) -> bool:
    return name == "merge_data" or name.startswith("_taskbadger")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Every test that talks to the stand-in also checks that none of our internal fields reached it."""
    result = yield
    server = getattr(item, "funcargs", {}).get("taskbadger_server")
    if server is not None:
        leaked = {task_id: sorted(name for name in task.get("unknown_fields") or {} if _internal_field(name))
                  for task_id, task in server.tasks.items()}
        leaked = {task_id: names for task_id, names in leaked.items() if names}
        assert not leaked, f"internal fields sent to the API: {leaked}"
    return result
