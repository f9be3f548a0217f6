"""Code written for the official SDK (2.6.0) runs unchanged: each test is a migrating user's call,
against the stand-in API over real HTTP."""

from __future__ import annotations

import base64
import datetime as dt
import threading
import types
import uuid
import warnings

import pytest
import requests

import taskbadger
from taskbadger import Action, EmailIntegration, StatusEnum, Task, WebhookIntegration
from taskbadger.context_providers import ContextProvider
from taskbadger.context_providers.sentry import SentryContextProvider

MONITOR = str(uuid.uuid4())


def posts(server):
    return [r for r in server.requests if r.method == "POST"]


def patches(server):
    return [r for r in server.requests if r.method == "PATCH"]


# -- positional arguments ------------------------------------------------------------------------------


def test_task_create_takes_the_official_positional_order(taskbadger_server):
    task = Task.create("x", StatusEnum.PROCESSING, 5, 10)
    assert (task.status, task.value, task.value_max) == (StatusEnum.PROCESSING, 5, 10)
    taskbadger.create_task("y", "pending", 1, 10, {"a": 1}, 60, 30, None, MONITOR, {"team": "core"}, "q", "ext", None)
    [_, request] = posts(taskbadger_server)
    assert request.json == {"name": "y", "status": "pending", "value": 1, "value_max": 10, "data": {"a": 1},
                            "max_runtime": 60, "stale_timeout": 30, "tags": {"team": "core"}, "queue": "q",
                            "external_id": "ext"}
    assert request.headers["X-TASKBADGER-MONITOR"] == MONITOR


def test_update_task_takes_the_official_positional_order(taskbadger_server):
    task = taskbadger.create_task("z")
    updated = taskbadger.update_task(task.id, "renamed", "success", 10, 10, {"d": 1}, 60, 30, None, {"k": "vv"},
                                     "q2", "ext2", None)
    assert (updated.name, updated.status, updated.value, updated.data) == ("renamed", "success", 10, {"d": 1})
    assert (updated.queue, updated.external_id, updated.tags) == ("q2", "ext2", {"k": "vv"})


def test_init_takes_the_official_positional_order_and_host_only_by_keyword(taskbadger_server, monkeypatch):
    monkeypatch.setenv("TASKBADGER_HOST", taskbadger_server.url)
    with pytest.warns(DeprecationWarning, match=r"^Legacy API keys are deprecated\. Please switch to a project API "
                                                r"key\.$"):
        config = taskbadger.init("acme", "demo", taskbadger_server.key, None, {"env": "prod"}, None, None, 3)
    assert (config.organization_slug, config.project_slug, config.timeout) == ("acme", "demo", (3.0, 3.0))
    assert taskbadger.create_task("legacy key").tags == {"env": "prod"}
    with pytest.raises(TypeError):
        taskbadger.init("acme", "demo", taskbadger_server.key, None, None, None, None, 3, "https://elsewhere")


# -- context providers ----------------------------------------------------------------------------------


@pytest.fixture
def sentry_events():
    """The real sentry-sdk, keeping its events in memory (no network)."""
    sentry_sdk = pytest.importorskip("sentry_sdk")
    from sentry_sdk.transport import Transport

    events = []

    class Memory(Transport):
        def capture_envelope(self, envelope):
            events.append(envelope)

    sentry_sdk.init(dsn="http://key@127.0.0.1:9/1", transport=Memory, default_integrations=False)
    yield events
    sentry_sdk.get_client().close()
    sentry_sdk.init()  # no DSN: disabled again


def test_a_failed_task_links_to_the_sentry_event_raised_while_it_ran(taskbadger_server, sentry_events):
    import sentry_sdk

    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url,
                    context_providers=[SentryContextProvider(organization_slug="acme")])

    @taskbadger.track
    def reported():
        sentry_sdk.capture_exception(ValueError("boom"))
        raise ValueError("boom")

    @taskbadger.track
    def not_reported():
        raise KeyError("quiet")

    with pytest.raises(ValueError):
        reported()
    with pytest.raises(KeyError):
        not_reported()
    event_id = sentry_sdk.last_event_id()
    assert taskbadger.flush(5)  # a tracked call's end is sent in the background
    first, second = taskbadger_server.tasks.values()
    assert first["status"] == "error" and isinstance(first["data"]["exception"], str)
    assert first["data"]["sentry"] == {
        "event_id": event_id, "url": f"https://sentry.io/organizations/acme/issues/?query={event_id}"}
    assert "sentry" not in second["data"]  # no stale link to the first task's event


def test_task_error_consults_the_providers_and_a_failing_provider_is_skipped(taskbadger_server, tb_log):
    class Tenant(ContextProvider):
        identifier = "tenant"

        def capture_error_context(self, exception, snapshot=None):
            return {"id": 7, "error": type(exception).__name__}

    class Broken(ContextProvider):
        identifier = "broken"

        def capture_error_context(self, exception, snapshot=None):
            raise RuntimeError("provider bug")

    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url,
                    context_providers=[Broken(), Tenant()])
    task = taskbadger.create_task("with context", data={"kept": True})
    task.error(exception=ZeroDivisionError("x"))
    data = taskbadger_server.get_task(task.id)["data"]
    assert data["tenant"] == {"id": 7, "error": "ZeroDivisionError"} and data["kept"] is True
    assert "ZeroDivisionError: x" in data["exception"] and "broken" not in data
    assert any("context provider 'broken' failed" in r.getMessage() for r in tb_log.records)


def test_the_sentry_provider_does_nothing_without_sentry_sdk(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sentry_sdk", None)  # as if not installed
    provider = SentryContextProvider()
    assert provider.snapshot() is None and provider.capture_error_context(ValueError(), None) is None


# -- actions ----------------------------------------------------------------------------------------


def _actions_of(server, task_id):
    response = requests.get(f"{server.url}/api/acme/demo/tasks/{task_id}/actions/",
                            headers={"Authorization": f"Bearer {server.key}"}, timeout=5)
    return [(a["trigger"], a["integration"], a["config"]) for a in response.json()]


def test_per_task_actions_work_and_warn_as_upstream(taskbadger_server):
    deprecated = r"^Per-task actions are deprecated in favor of project-level actions"
    with pytest.warns(DeprecationWarning, match=deprecated):
        task = taskbadger.create_task("notify", actions=[Action("success,error", EmailIntegration(to="ops@x.io"))])
    with pytest.warns(DeprecationWarning, match=deprecated):
        task.add_actions([Action("*/10%", WebhookIntegration("webhook:abc"))])
    with pytest.warns(DeprecationWarning, match=deprecated):
        taskbadger.update_task(task.id, actions=[Action("stale", EmailIntegration(to="me@x.io"))])
    assert _actions_of(taskbadger_server, task.id) == [("success,error", "email", {"to": "ops@x.io"}),
                                                       ("*/10%", "webhook:abc", {}),
                                                       ("stale", "email", {"to": "me@x.io"})]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Action("success", EmailIntegration(to="x@y.z"))  # building one does not warn
    with pytest.raises(taskbadger.TaskbadgerException, match="start with 'webhook'"):
        WebhookIntegration("hook")


def test_the_stand_in_serves_the_action_endpoints(taskbadger_server):
    task = taskbadger.create_task("actions api")
    base = f"{taskbadger_server.url}/api/acme/demo/tasks/{task.id}/actions/"
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {taskbadger_server.key}"
    created = session.post(base, json={"trigger": "error", "integration": "email", "config": {"to": "a@b.c"}})
    assert created.status_code == 201 and created.json()["status"] == "active"
    url = f"{base}{created.json()['id']}/"
    assert session.get(url).json()["trigger"] == "error"
    assert session.patch(url, json={"trigger": "success"}).json()["trigger"] == "success"
    assert session.put(url, json={"trigger": "stale"}).json() == {"integration": ["This field is required."]}
    assert session.put(url, json={"trigger": "stale", "integration": "email"}).status_code == 200
    assert session.post(base, json={"trigger": ""}).json() == {"trigger": ["This field may not be blank."],
                                                               "integration": ["This field is required."]}
    assert session.delete(url).status_code == 204 and session.get(url).json()["status"] == "cancelled"
    assert len(session.get(base).json()) == 1


# -- Badger, list pages -------------------------------------------------------------------------------


def test_badger_current_settings(taskbadger_server):
    taskbadger.config.reset()
    assert taskbadger.Badger.current.settings is None and not taskbadger.Badger.is_configured()
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url)
    settings = taskbadger.Badger.current.settings
    assert (settings.organization_slug, settings.project_slug, settings.token) == ("acme", "demo", "test-key")
    assert settings.base_url == taskbadger_server.url


def test_list_pages_have_the_official_spellings(taskbadger_server):
    for i in range(3):
        taskbadger.create_task(f"page {i}")
    page = taskbadger.list_tasks(page_size=2)
    assert [t.name for t in page.results] == ["page 2", "page 1"]
    assert page.next_ == page.next and "cursor=" in page.next_ and page.previous is None
    as_dict = page.to_dict()
    assert set(as_dict) == {"results", "next", "previous"} and as_dict["results"][0]["name"] == "page 2"


# -- rate limits -------------------------------------------------------------------------------------


def _as_if_updated(task: Task, seconds_ago: float) -> Task:
    """The task as Task Badger last answered it, ``seconds_ago`` after its last update."""
    model = task._task
    model.updated = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds_ago)
    return task


def test_rate_limits_count_from_the_tasks_last_update_on_the_server(taskbadger_server):
    created = taskbadger.create_task("rate")
    stale = _as_if_updated(Task.get(created.id), 60)  # fetched just now, last updated a minute ago
    assert stale.ping(rate_limit=30) is True
    assert stale.ping(rate_limit=30) is False  # the ping just updated it
    assert _as_if_updated(Task.get(created.id), 60).update_value(3, rate_limit=30) is True
    assert len(patches(taskbadger_server)) == 2


def test_a_value_of_zero_counts_as_unset_for_value_step(taskbadger_server):
    task = taskbadger.create_task("step", value=0)
    assert task.update_value(1, value_step=5) is True
    assert task.update_value(2, value_step=5) is False and task.update_value(6, value_step=5) is True


# -- scope tags ------------------------------------------------------------------------------------------


def test_init_tags_are_the_scopes_and_main_thread_tags_reach_later_threads(taskbadger_server):
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, tags={"env": "prod"})
    assert taskbadger.current_scope().tags == {"env": "prod"}
    taskbadger.current_scope().tag({"team": "billing"})  # main thread, outside a with block
    created = []
    thread = threading.Thread(target=lambda: created.append(taskbadger.create_task("in a thread")))
    thread.start()
    thread.join(10)
    assert created[0].tags == {"env": "prod", "team": "billing"}


# -- configuration ----------------------------------------------------------------------------------------


def test_http_timeout_from_the_environment_and_timeout_objects(taskbadger_server, monkeypatch):
    monkeypatch.setenv("TASKBADGER_HTTP_TIMEOUT", "3.5")
    assert taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url).timeout == (3.5, 3.5)
    monkeypatch.setenv("TASKBADGER_HTTP_TIMEOUT", "abc")
    with pytest.raises(taskbadger.ConfigurationError, match="TASKBADGER_HTTP_TIMEOUT must be a number, got 'abc'"):
        taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url)
    monkeypatch.delenv("TASKBADGER_HTTP_TIMEOUT")
    like_httpx = types.SimpleNamespace(connect=1, read=4, write=4, pool=4)
    assert taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url,
                           timeout=like_httpx).timeout == (1.0, 4.0)


def test_a_legacy_key_warns_with_the_official_words(taskbadger_server, monkeypatch):
    monkeypatch.setenv("TASKBADGER_HOST", taskbadger_server.url)
    with pytest.warns(DeprecationWarning) as caught:
        taskbadger.init(organization_slug="acme", project_slug="demo", token=taskbadger_server.key)
    assert str(caught[0].message) == "Legacy API keys are deprecated. Please switch to a project API key."
    project_key = base64.b64encode(b"acme/demo/test-key").decode()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        taskbadger.init(token=project_key)


# -- the official SDK's module paths ------------------------------------------------------------------


def test_the_official_module_paths_import(taskbadger_server):
    """Code written for the official SDK imports from its modules, not only from ``taskbadger``."""
    from taskbadger.integrations import Action as Action2
    from taskbadger.integrations import EmailIntegration as Email2
    from taskbadger.integrations import WebhookIntegration as Hook2
    from taskbadger.mug import Badger as Badger2
    from taskbadger.mug import Session as Session2
    from taskbadger.safe_sdk import create_task_safe, update_task_safe
    from taskbadger.sdk import DefaultMergeStrategy, TaskList, create_task, get_task, init, list_tasks
    from taskbadger.sdk import Task as Task2

    assert (Action2, Email2, Hook2, Task2) == (Action, EmailIntegration, WebhookIntegration, Task)
    assert (Badger2, Session2) == (taskbadger.Badger, taskbadger.Session)
    assert init is taskbadger.init and TaskList is taskbadger.TaskList
    task = create_task("via sdk")
    assert isinstance(get_task(task.id), Task2) and update_task_safe(task.id, status="success").status == "success"
    assert create_task_safe("safe").name == "safe" and len(list_tasks()) == 2
    assert DefaultMergeStrategy(append_keys=["log"]).merge({"log": "a"}, {"log": "b"}) == {"log": "ab"}


def test_badger_current_scope_is_the_current_scope(taskbadger_server):
    """The official SDK's ``current_scope()`` is ``Badger.current.scope()``, and code uses either."""
    with taskbadger.Badger.current.scope() as scope:
        scope["host"] = "web-1"
        scope.tag({"tenant": "acme"})
        assert taskbadger.current_scope().tags == {"tenant": "acme"}
        task = taskbadger.create_task("scoped")
    assert (task.data, task.tags) == ({"host": "web-1"}, {"tenant": "acme"})
    assert taskbadger.Badger.current.scope().context == {}
