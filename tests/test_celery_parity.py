"""The Celery integration behaves as the official SDK's where code relies on it (real workers, real HTTP)."""

from __future__ import annotations

import datetime as dt
import decimal
import logging

import kombu
import pytest
import requests
from celery import Celery

import taskbadger
from taskbadger import Action, EmailIntegration
from taskbadger.celery import Task as BaseTask
from taskbadger.systems.celery import CelerySystemIntegration

from .celery_project import app as tasks
from .conftest import start_worker, stop_worker

pytestmark = pytest.mark.integration
NAME = "tests.celery_project.app."


def memory_producer():
    return kombu.Producer(kombu.Connection("memory://"))  # nothing consumes it: only the publish matters


def test_actions_in_taskbadger_kwargs(taskbadger_server, solo_worker):
    with pytest.warns(DeprecationWarning, match="^Per-task actions are deprecated"):
        result = solo_worker.send(tasks.add, 1, 1, taskbadger_kwargs={
            "actions": [Action("error", EmailIntegration(to="ops@x.io"))]})
    taskbadger_server.wait_for_task(name=NAME + "add", status="success")
    actions = requests.get(f"{taskbadger_server.url}/api/acme/demo/tasks/{result.taskbadger_task_id}/actions/",
                           headers={"Authorization": f"Bearer {taskbadger_server.key}"}, timeout=5).json()
    assert [(a["trigger"], a["integration"], a["config"]) for a in actions] == [("error", "email", {"to": "ops@x.io"})]


@pytest.fixture
def provider_worker(taskbadger_server_session):
    worker = start_worker(taskbadger_server_session, pool="prefork", concurrency=1,
                          extra_env={"TB_CONTEXT_PROVIDER": "1", "TB_AUTO_TRACK": "1"})
    yield worker
    stop_worker(worker)


@pytest.mark.parametrize("task", ["fail", "plain_fail"], ids=["base-class", "auto-tracked"])
def test_context_providers_see_the_snapshot_taken_when_the_task_started(taskbadger_server, provider_worker, task):
    provider_worker.send(getattr(tasks, task), "broken")
    failed = taskbadger_server.wait_for_task(name=NAME + task, status="error", timeout=20)
    context = failed["data"]["test_context"]
    assert context["exception"] == "ValueError" and context["snapshot"].startswith("taken in ")
    assert isinstance(failed["data"]["exception"], str) and "ValueError: broken" in failed["data"]["exception"]


class Money:
    def __init__(self, cents):
        self.cents = cents


kombu.utils.json.register_type(Money, "money", lambda m: m.cents, Money)


def test_recorded_arguments_keep_kombus_json_form(taskbadger_server):
    tasks.record_me.apply_async(
        (dt.datetime(2024, 1, 2, 3, 4, 5), decimal.Decimal("1.5"), Money(250), {1, 2}, float("nan")),
        producer=memory_producer(), taskbadger_record_task_args=True, serializer="pickle")  # pickle: sets travel
    [request] = [r for r in taskbadger_server.requests if r.method == "POST"]
    assert request.json["data"]["celery_task_args"] == [
        {"__type__": "datetime", "__value__": "2024-01-02T03:04:05"}, {"__type__": "decimal", "__value__": "1.5"},
        {"__type__": "money", "__value__": 250}, "{1, 2}", "nan"]  # what JSON cannot say, as its repr


@pytest.fixture
def app_with_backend():
    """An app with a result backend, current while the test runs (then the suite's app again)."""
    previous = tasks.app
    app = Celery("with-backend", broker="memory://", backend="cache+memory://")

    @app.task(base=BaseTask, name="backend.tracked", shared=False)
    def tracked():
        return None

    @app.task(name="backend.plain", shared=False)
    def plain():
        return None

    @app.task(base=BaseTask, name="backend.ignored", ignore_result=True, shared=False)
    def ignored():
        return None

    app.set_current()
    try:
        yield app, tracked, plain, ignored
    finally:
        previous.set_current()


def test_with_a_result_backend_the_celery_id_leads_to_the_task(taskbadger_server, app_with_backend):
    app, tracked, plain, ignored = app_with_backend
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url,
                    systems=[CelerySystemIntegration(includes=["backend.plain"])])
    for task in (tracked, plain):
        result = task.apply_async(producer=memory_producer())
        [tb_task] = [t for t in taskbadger_server.tasks.values() if t["external_id"] == result.id]
        assert app.AsyncResult(result.id).info == {"taskbadger_task_id": tb_task["id"]}
        assert app.AsyncResult(result.id).state == "PENDING"
    # A task that ignores its result gets nothing written to the backend, by its setting or per call.
    for result in (ignored.apply_async(producer=memory_producer()),
                   tracked.apply_async(producer=memory_producer(), ignore_result=True)):
        assert any(t["external_id"] == result.id for t in taskbadger_server.tasks.values())  # still tracked
        assert app.AsyncResult(result.id).info is None


def test_a_result_rebuilt_from_the_celery_id_leads_to_the_task_in_any_process(taskbadger_server, app_with_backend):
    """A view starts a task on a POST and redirects to a page that has only the Celery id: `AsyncResult(celery_id)`
    there has no `taskbadger_task_id`, and the progress tag said "not available" for a base=Task task, in the
    publishing process too, though the result backend held the id."""
    from taskbadger.celery import state, task_id_of_result

    app, tracked, plain, ignored = app_with_backend
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url,
                    systems=[CelerySystemIntegration(includes=["backend.plain"])])
    for task in (tracked, plain, ignored):
        result = task.apply_async(producer=memory_producer())
        [tb_task] = [t for t in taskbadger_server.tasks.values() if t["external_id"] == result.id]
        assert task_id_of_result(app.AsyncResult(result.id)) == tb_task["id"]  # this process remembers it
        state.published().forget(result.id)  # as another process (another web worker) sees it: the backend
        expected = None if task is ignored else tb_task["id"]  # (an ignored result writes nothing there)
        assert task_id_of_result(app.AsyncResult(result.id)) == expected
    app.backend.store_result(result.id, {"taskbadger_task_id": "../../x"}, "PENDING")  # a value written by anyone
    assert task_id_of_result(app.AsyncResult(result.id)) is None
    done = tracked.apply_async(producer=memory_producer())
    state.published().forget(done.id)
    app.backend.store_result(done.id, {"taskbadger_task_id": "a" * 26}, "SUCCESS")  # its own return value
    assert task_id_of_result(app.AsyncResult(done.id)) is None
    assert task_id_of_result(app.AsyncResult("never-published")) is None


def test_apply_async_and_apply_take_celerys_positional_arguments(taskbadger_server):
    """Celery's ``apply_async(args, kwargs, task_id, producer, link, link_error, shadow)`` and ``apply(args, kwargs,
    link, link_error, task_id, ...)`` take their options positionally too; the official base class passes them on."""
    result = tasks.add.apply_async((1, 2), {}, "positional-celery-id", memory_producer())
    assert result.id == "positional-celery-id"
    [created] = [t for t in taskbadger_server.tasks.values() if t["external_id"] == "positional-celery-id"]
    assert result.taskbadger_task_id == created["id"]
    eager = tasks.add.apply((2, 3), {}, None, None, "eager-celery-id")
    assert (eager.id, eager.get()) == ("eager-celery-id", 5)


def test_the_rpc_backend_is_not_told_the_task_id(taskbadger_server, tb_log):
    """``rpc://`` results are messages to the publisher's own reply queue: asked with no running task, it raised,
    and every publish of a web process logged a warning about the result backend."""
    app = Celery("rpc-publisher", broker="memory://", backend="rpc://")  # current while the test runs

    @app.task(base=BaseTask, name="rpc.tracked")
    def tracked():
        return None

    try:
        result = tracked.apply_async(producer=memory_producer())
    finally:
        tasks.app.set_current()
    assert any(t["external_id"] == result.id for t in taskbadger_server.tasks.values())
    assert not [r.getMessage() for r in tb_log.records if r.levelno >= logging.WARNING]


def test_with_the_rpc_backend_a_task_publishing_a_tracked_one_reports_only_its_own_states(taskbadger_server):
    """A task's worker publishes a tracked task: the PENDING state telling its Task Badger id went, with the rpc
    backend and no request, to the caller of the task running there, as that task's state (its caller saw it
    go back to PENDING, its ``info`` the child's Task Badger id)."""
    from .services import require

    require("redis")
    broker = "redis://127.0.0.1:6379/7"
    worker = start_worker(taskbadger_server, pool="prefork", concurrency=2,
                          extra_env={"TB_BROKER_URL": broker, "TB_RESULT_BACKEND": "rpc://"})
    try:
        client = Celery("rpc-client", broker=broker, backend="rpc://", set_as_current=False)
        result = client.send_task(NAME + "untracked_publishes_tracked", queue=worker.queue)
        seen = []
        assert result.get(timeout=30, on_message=seen.append) == "parent done"
        taskbadger_server.wait_for_task(name=NAME + "add", status="success")  # the child was tracked
        assert [(m["task_id"], m["status"]) for m in seen] == [(result.id, "SUCCESS")]
    finally:
        stop_worker(worker)
