"""TaskBadgerScopeMiddleware: request context on tasks created during a request (sync and async)."""

import asyncio
import types

import pytest
from asgiref.sync import iscoroutinefunction, sync_to_async
from celery import Celery
from celery import _state as celery_state
from django.http import HttpResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import path
from django.utils.functional import SimpleLazyObject

import taskbadger
from taskbadger.celery import Task
from taskbadger_django import conf
from taskbadger_django.middleware import TaskBadgerScopeMiddleware

MIDDLEWARE = "taskbadger_django.middleware.TaskBadgerScopeMiddleware"


def fake_auth(get_response):
    """Sets request.user from the X-User header (no database needed)."""

    def middleware(request):
        user_id = request.headers.get("X-User")
        user = types.SimpleNamespace(is_authenticated=bool(user_id), pk=int(user_id) if user_id else None)
        request.user = user

        async def auser():
            return user

        request.auser = auser
        return get_response(request)

    return middleware


def sync_view(request):
    taskbadger.create_task("from sync view")
    taskbadger.create_task("own data", data={"request_path": "mine", "rows": 3})
    return HttpResponse("ok")


async def async_view(request):
    await sync_to_async(taskbadger.create_task)("from async view")
    return HttpResponse("ok")


def celery_view(request):
    publish.delay(1)
    return HttpResponse("ok")


app = Celery("tbdjango-middleware", broker="memory://", set_as_current=False)


@app.task(shared=False, base=Task, name="shop.publish")
def publish(x):
    return x


urlpatterns = [path("sync/", sync_view), path("async/", async_view), path("celery/", celery_view)]


@pytest.fixture(autouse=True)
def _fresh_conf():
    conf.reset_state()
    yield
    conf.reset_state()


@pytest.fixture
def wired(taskbadger_server):
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=[f"{__name__}.fake_auth", MIDDLEWARE]):
        yield taskbadger_server


def data_of(server, name):
    [task] = server.tasks_named(name)
    return task["data"]


def test_sync_request_context_with_user(wired):
    assert Client().get("/sync/", headers={"X-User": "42"}).status_code == 200
    assert data_of(wired, "from sync view") == {"request_path": "/sync/", "request_method": "GET", "user_id": 42}
    # what the task sets itself wins over the scope
    assert data_of(wired, "own data") == {"request_path": "mine", "request_method": "GET", "user_id": 42, "rows": 3}


def test_anonymous_request_has_no_user_id_and_the_scope_ends_with_the_request(wired):
    Client().post("/sync/")
    assert data_of(wired, "from sync view") == {"request_path": "/sync/", "request_method": "POST"}
    taskbadger.create_task("after the request")
    assert data_of(wired, "after the request") is None


def test_async_request_context(wired):
    async def call():
        return await AsyncClient().get("/async/", headers={"X-User": "7"})

    assert asyncio.run(call()).status_code == 200
    assert data_of(wired, "from async view") == {"request_path": "/async/", "request_method": "GET", "user_id": 7}


def test_with_djangos_auth_middleware_for_an_anonymous_user(taskbadger_server):
    middleware = ["django.contrib.sessions.middleware.SessionMiddleware",
                  "django.contrib.auth.middleware.AuthenticationMiddleware", MIDDLEWARE]
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=middleware):
        Client().get("/sync/")
    assert data_of(taskbadger_server, "from sync view") == {"request_path": "/sync/", "request_method": "GET"}


def quiet_view(request):
    return HttpResponse("a public page")


urlpatterns.append(path("quiet/", quiet_view))


def test_a_request_that_creates_no_task_reads_neither_the_session_nor_the_user(taskbadger_server):
    # The middleware read request.user on every request: a session read (and a query for a logged-in user) per
    # request, and every response said "Vary: Cookie", so a cache could not share public pages between visitors.
    middleware = ["django.contrib.sessions.middleware.SessionMiddleware",
                  "django.contrib.auth.middleware.AuthenticationMiddleware", MIDDLEWARE]
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=middleware):
        quiet = Client().get("/quiet/")
        busy = Client().get("/sync/")
    assert quiet.status_code == 200 and not quiet.has_header("Vary")
    assert busy.has_header("Vary")  # this one created tasks: its user was read for them


#: The paths of the requests whose user was loaded (``lazy_auth``).
USER_LOADS: list[str] = []


def lazy_auth(get_response):
    """Sets request.user as AuthenticationMiddleware does: loaded (recorded in USER_LOADS) when first read."""

    def middleware(request):
        def load():
            USER_LOADS.append(request.path)
            return types.SimpleNamespace(is_authenticated=True, pk=9)

        request.user = SimpleLazyObject(load)
        return get_response(request)

    return middleware


def test_the_user_is_read_once_a_task_is_created_and_only_then(taskbadger_server):
    USER_LOADS.clear()
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=[f"{__name__}.lazy_auth", MIDDLEWARE]):
        Client().get("/quiet/")
        assert USER_LOADS == []
        Client().get("/sync/")
    assert USER_LOADS == ["/sync/"]
    assert data_of(taskbadger_server, "from sync view") == {"request_path": "/sync/", "request_method": "GET",
                                                            "user_id": 9}


async def quiet_async_view(request):
    return HttpResponse("a public page")


urlpatterns.append(path("quiet-async/", quiet_async_view))


def test_an_async_request_reads_no_session_when_nothing_can_be_tracked(taskbadger_server):
    # With ENABLED False (or no key) the async path still awaited request.auser(): a session read per request and
    # "Vary: Cookie" on every response, for tasks that could not be created.
    middleware = ["django.contrib.sessions.middleware.SessionMiddleware",
                  "django.contrib.auth.middleware.AuthenticationMiddleware", MIDDLEWARE]
    taskbadger.config.reset()

    async def call():
        return await AsyncClient().get("/quiet-async/")

    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=middleware):
        response = asyncio.run(call())
    assert response.status_code == 200 and not response.has_header("Vary")


def test_celery_task_published_from_a_view_carries_the_request(wired):
    previous = celery_state._tls.current_app
    app.set_current()
    try:
        Client().get("/celery/", headers={"X-User": "5"})
    finally:
        celery_state._set_current_app(previous)
    assert data_of(wired, "shop.publish") == {"request_path": "/celery/", "request_method": "GET", "user_id": 5}


def test_middleware_is_sync_and_async_capable():
    assert TaskBadgerScopeMiddleware.sync_capable and TaskBadgerScopeMiddleware.async_capable

    async def get_response(request):
        return HttpResponse()

    assert iscoroutinefunction(TaskBadgerScopeMiddleware(get_response))
    assert not iscoroutinefunction(TaskBadgerScopeMiddleware(lambda request: HttpResponse()))


class DatabaseDown(Exception):
    """What loading the user raises when the database holding sessions or users does not answer."""


def failing_auth(get_response):
    """Sets request.user and request.auser as AuthenticationMiddleware does, loading a user that cannot be loaded
    (the sessions' database down, a custom backend's bug) or one whose pk property raises (X-Pk-Raises)."""

    def middleware(request):
        class User:
            is_authenticated = True

            @property
            def pk(self):
                raise DatabaseDown("pk of a deferred field that could not be loaded")

        def load():
            if request.headers.get("X-Pk-Raises"):
                return User()
            raise DatabaseDown("could not connect to the sessions database")

        request.user = SimpleLazyObject(load)

        async def auser():
            return load()

        request.auser = auser
        return get_response(request)

    return middleware


@pytest.mark.parametrize("pk_raises", [False, True], ids=["user-load-raises", "pk-raises"])
def test_a_user_that_cannot_be_read_fails_no_request_and_no_task(taskbadger_server, tb_log, pk_raises):
    """An async view's request read the user in the middleware for its tasks' user_id, whether or not a task was
    created: a user that could not be loaded failed every async request with a 500, pages that never read the user
    too (the sync path computes user_id only when a task is created, and leaves it out when it cannot). Now the
    request and its tasks go on without user_id, with one warning."""
    headers = {"X-Pk-Raises": "1"} if pk_raises else {}

    async def call(url):
        return await AsyncClient(raise_request_exception=False).get(url, headers=headers)

    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=[f"{__name__}.failing_auth", MIDDLEWARE]):
        quiet = asyncio.run(call("/quiet-async/"))
        busy = asyncio.run(call("/async/"))
        synced = Client(raise_request_exception=False).get("/sync/", headers=headers)
    assert (quiet.status_code, busy.status_code, synced.status_code) == (200, 200, 200)
    assert data_of(taskbadger_server, "from async view") == {"request_path": "/async/", "request_method": "GET"}
    assert data_of(taskbadger_server, "from sync view") == {"request_path": "/sync/", "request_method": "GET"}
    assert "DatabaseDown" in tb_log.text and "user_id" in tb_log.text
