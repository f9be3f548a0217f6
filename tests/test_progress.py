"""The progress bar's server side: the tag, the tokens, who may watch, what the view answers, the cache in front
of the API, and the system checks of TASKBADGER["PROGRESS"]. Django's test client against the stand-in API;
the browser tests are in test_progress_browser.py."""

from __future__ import annotations

import base64
import contextlib
import html
import json
import logging
import re
import threading
import time
import unittest.mock

import pytest
from django.core import signing
from django.core.cache import caches
from django.core.cache.backends.base import BaseCache
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.template import Context, Template
from django.test import Client, RequestFactory, override_settings
from django.urls import NoReverseMatch

import taskbadger
import taskbadger_django
from taskbadger_django import checks as tb_checks
from taskbadger_django import conf
from taskbadger_django import progress as tb_progress

pytestmark = pytest.mark.urls("tests.progress_urls")

HOSTILE = '<img src=x onerror="alert(1)">'
FIELDS = {"status", "value", "value_max", "percent", "name", "done", "awaiting_retry"}


@pytest.fixture(autouse=True)
def _fresh():
    conf.reset_state()
    caches["default"].clear()
    yield
    caches["default"].clear()
    conf.reset_state()


@pytest.fixture
def server(taskbadger_server):
    """The stand-in API, and TASKBADGER pointing at it (overriding TASKBADGER reconfigures the SDK)."""
    with settings_for(taskbadger_server):
        yield taskbadger_server


@contextlib.contextmanager
def settings_for(server, **progress):
    tb = {"API_KEY": server.api_key, "HOST": server.url, "PROGRESS": progress}
    with override_settings(TASKBADGER=tb):
        yield


class Clock:
    """The clock the progress cache stamps its entries with, moved by hand."""

    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(tb_progress, "_clock", fake)
    return fake


def gets(server, task_id):
    """The API reads of one task, from the stand-in's request log."""
    return [r for r in server.requests if r.method == "GET" and r.task_id == task_id]


def page(client, *task_ids, label=None):
    response = client.get(f"/bar/{','.join(task_ids)}/", {"label": label} if label else {})
    assert response.status_code == 200
    return response.content.decode()


def bar_urls(content):
    return [html.unescape(u) for u in re.findall(r'data-url="([^"]+)"', content)]


def poll(client, url, **headers):
    return client.get(url, headers=headers)


@pytest.fixture
def users(django_user_model):
    return (django_user_model.objects.create_user("ada", password="pw"),
            django_user_model.objects.create_user("bob", password="pw"))


def logged_in(user):
    client = Client()
    client.force_login(user)
    return client


# -- the tag -----------------------------------------------------------------------------------------------


def test_the_tag_draws_an_accessible_bar_with_its_assets_once_and_nothing_inline(server):
    task = taskbadger.create_task("export rows")
    content = page(Client(), task.id, task.id)
    assert content.count('rel="stylesheet" href="/static/taskbadger_django/progress.css"') == 1
    assert content.count('<script src="/static/taskbadger_django/progress.js" defer></script>') == 1
    assert content.count("data-taskbadger-progress") == 2
    assert len(set(bar_urls(content))) == 1  # the same viewer and task: the same token
    # a strict Content-Security-Policy allows it: no inline script, no style attribute or element
    assert re.findall(r"<script(?![^>]*\ssrc=)", content) == []
    assert " style=" not in content and "<style" not in content
    assert 'role="progressbar"' in content and 'aria-valuemin="0"' in content and 'aria-valuemax="100"' in content
    assert 'role="status" aria-live="polite"' in content
    assert "aria-valuenow" not in content  # no value until the first answer: not 0 %
    words = json.loads(html.unescape(re.search(r'data-words="([^"]+)"', content).group(1)))
    assert words["pending"] == "Queued" and words["error"] == "Failed" and words["stale"].startswith("Stale")


def test_a_label_is_text(server):
    task = taskbadger.create_task("export rows")
    content = page(Client(), task.id, label=HOSTILE)
    assert HOSTILE not in content and html.escape(HOSTILE, quote=True) in content
    assert "data-label" in content


@pytest.mark.parametrize("untracked", [None, ""])
def test_an_untracked_task_draws_a_bar_that_says_progress_is_not_available(server, untracked):
    content = Template("{% load taskbadger %}{% taskbadger_progress tb_id %}").render(
        _request_context({"tb_id": untracked}))
    assert "data-url" not in content and 'data-state="unavailable"' in content
    assert "Progress is not available." in content


def _request_context(values):
    from django.contrib.auth.models import AnonymousUser
    from django.contrib.sessions.backends.signed_cookies import SessionStore
    from django.template import RequestContext

    request = RequestFactory().get("/")
    request.user, request.session = AnonymousUser(), SessionStore()
    return RequestContext(request, values)


def test_the_tag_needs_the_request():
    with pytest.raises(ImproperlyConfigured, match=r"render\(request, \.\.\.\)"):
        Template("{% load taskbadger %}{% taskbadger_progress 'abc' %}").render(Context({}))


def test_the_tag_takes_a_task_or_a_celery_result_as_well_as_an_id(server):
    task = taskbadger.create_task("export rows")

    class Result:  # what .delay() returns for a tracked task
        taskbadger_task_id = task.id

    for value in (task.id, task, Result()):
        content = Template("{% load taskbadger %}{% taskbadger_progress t %}").render(_request_context({"t": value}))
        assert "data-url=" in content


def test_the_tag_takes_the_result_of_a_task_auto_tracked_by_name(taskbadger_server):
    """A plain ``@shared_task`` tracked by AUTO_TRACK: its result has no ``taskbadger_task_id`` (only the base
    class sets it), and the tag raised TypeError (a 500 page) though the task was tracked."""
    from celery import Celery

    app = Celery("progress-auto", broker="memory://", set_as_current=False)

    @app.task(name="shop.export_rows", shared=False)
    def export_rows():
        return None

    tb = {"API_KEY": taskbadger_server.api_key, "HOST": taskbadger_server.url, "CELERY": {"AUTO_TRACK": True}}
    with override_settings(TASKBADGER=tb):
        result = export_rows.delay()
        untracked = app.AsyncResult("not-published")
        [created] = [t for t in taskbadger_server.tasks.values() if t["name"] == "shop.export_rows"]
        assert not hasattr(result, "taskbadger_task_id")
        assert tb_progress.task_id_for(result) == created["id"]
        assert tb_progress.task_id_for(untracked) is None  # a result this process did not track: no bar
        content = Template("{% load taskbadger %}{% taskbadger_progress r %}").render(_request_context({"r": result}))
        assert "data-url=" in content


def _for(user):
    """A request of ``user``, as the view that renders the page sees it."""
    from django.contrib.sessions.backends.signed_cookies import SessionStore

    request = RequestFactory().get("/")
    request.user, request.session = user, SessionStore()
    return request


def _list_reads(server):
    return [r for r in server.requests if r.method == "GET" and r.task_id is None]


@pytest.mark.django_db
def test_a_celery_task_its_worker_creates_is_followed_by_its_celery_id(taskbadger_server, users, clock):
    """A tracked Celery task whose create did not happen at publish (its group's publish budget ran out, the API
    failed) goes out untracked, and the worker that runs it creates its task when it starts, with the Celery id as
    its external_id. Its bar said "Progress is not available for this task." for good (no URL)."""
    from celery import Celery

    app = Celery("progress-left", broker="memory://", set_as_current=False)

    @app.task(name="shop.export_rows", shared=False)
    def export_rows():
        return None

    server = taskbadger_server
    tb = {"API_KEY": server.api_key, "HOST": server.url, "CELERY": {"AUTO_TRACK": True},
          "PROGRESS": {"POLL_INTERVAL": 0.5}}
    with override_settings(TASKBADGER=tb):
        server.fail(500, times=1, method="POST")  # the create at publish fails
        result = export_rows.delay()
        assert server.tasks == {} and tb_progress.task_id_for(result) is None
        url = tb_progress.progress_url(_for(users[0]), result)
        assert url is not None
        ada, bob = logged_in(users[0]), logged_in(users[1])
        published = len(_list_reads(server))  # (the publish looked for a task its failed create may have made)
        body = json.loads(poll(ada, url).content)  # not created yet: its message is queued
        assert (body["status"], body["percent"], body["name"], body["done"]) == ("pending", None, None, False)
        assert poll(bob, url).status_code == 403
        assert json.loads(poll(ada, url).content)["status"] == "pending"
        assert len(_list_reads(server)) == published + 1  # one look-up per poll interval, however many polls
        # its worker starts it
        created = taskbadger.create_task("shop.export_rows", status="processing", value=3, value_max=4,
                                         external_id=result.id)
        clock.now += 1
        body = json.loads(poll(ada, url).content)
        assert (body["status"], body["percent"], body["name"]) == ("processing", 75, "shop.export_rows")
        created.success()
        clock.now += 1
        assert json.loads(poll(ada, url).content)["done"] is True
        assert len(_list_reads(server)) == published + 2  # found once: then read by its id, as any task
        # a project rule judges Task Badger ids: none to judge here, so no bar rather than one the rule never saw
        with override_settings(TASKBADGER={**tb, "PROGRESS": {"AUTHORIZE": lambda request, task_id: True}}):
            assert tb_progress.progress_url(_for(users[0]), result) is None
    assert tb_progress.progress_url(_for(users[0]), app.AsyncResult("never-published")) is None


@pytest.mark.django_db
def test_a_celery_id_that_is_not_utf8_text_is_followed_to_its_task(taskbadger_server, users, clock, tb_log):
    """A Celery id made from bytes that are not UTF-8 (a file name from ``os.listdir``: Python reads such a byte as a
    lone surrogate). The view failed with a 500 on every poll (UnicodeEncodeError hashing the id for its cache key);
    and past that, its task's external_id holds U+FFFD where the byte was (the API cannot store the surrogate), which
    the look-up compared with the raw id: the bar said pending for good, and a worker's look-up of a create that may
    have been made never found it either."""
    from celery import Celery

    app = Celery("progress-not-utf8", broker="memory://", set_as_current=False)

    @app.task(name="shop.import_file", shared=False)
    def import_file():
        return None

    server = taskbadger_server
    tb = {"API_KEY": server.api_key, "HOST": server.url, "CELERY": {"AUTO_TRACK": True},
          "PROGRESS": {"POLL_INTERVAL": 0.5}}
    with override_settings(TASKBADGER=tb):
        server.fail(500, times=1, method="POST")  # the create at publish fails: its worker creates the task
        result = import_file.apply_async(task_id="import-caf\udce9.csv")
        url = tb_progress.progress_url(_for(users[0]), result)
        assert url is not None
        ada = logged_in(users[0])
        answer = poll(ada, url)
        assert answer.status_code == 200 and json.loads(answer.content)["status"] == "pending"
        # its worker starts it, with the Celery id as its external_id (as the API stores it: U+FFFD for the byte)
        taskbadger.create_task("shop.import_file", status="processing", value=1, value_max=4, external_id=result.id)
        clock.now += 1
        body = json.loads(poll(ada, url).content)
        assert (body["status"], body["percent"], body["name"]) == ("processing", 25, "shop.import_file")
    assert not [r for r in tb_log.records if "cache" in r.getMessage()]


@contextlib.contextmanager
def left_to_worker(server, user, backend=None, poll_interval=1.0):
    """A tracked Celery task published while the API failed its create (its worker creates it when it starts), the URL
    of its bar for ``user``, and their client; the app is the process's current one (a Django project's one app), with
    ``backend`` as its result backend."""
    from celery import Celery, _state

    app = Celery("progress-left", broker="memory://", backend=backend, set_as_current=False)

    @app.task(name="shop.export_rows", shared=False)
    def export_rows():
        return None

    tb = {"API_KEY": server.api_key, "HOST": server.url, "CELERY": {"AUTO_TRACK": True},
          "PROGRESS": {"POLL_INTERVAL": poll_interval}}
    previous = _state._tls.current_app
    app.set_current()
    try:
        with override_settings(TASKBADGER=tb):
            server.fail(500, times=1, method="POST")  # the create at publish fails
            result = export_rows.delay()
            assert server.tasks == {} and tb_progress.task_id_for(result) is None
            url = tb_progress.progress_url(_for(user), result)
            assert url is not None
            yield app, result, url, logged_in(user)
    finally:
        _state._set_current_app(previous)


@pytest.mark.django_db
def test_a_task_no_worker_tracks_is_looked_up_less_and_less_often(taskbadger_server, users, clock):
    """A task left to its worker that no worker tracks (the worker has no API key; its result ignored, so Celery
    never says it ended): its bar says Queued, and the server looked it up in the list of the newest tasks once per
    poll interval until the token expired (3,600 list reads in an hour at 1 s, 21,600 in a token's six hours). Now
    less and less often, at least once a minute, and the task is still found within a minute of its start."""
    server = taskbadger_server
    with left_to_worker(server, users[0]) as (app, result, url, ada):
        before = len(_list_reads(server))
        for _ in range(720):  # an hour of a page polling every 5 s
            assert json.loads(poll(ada, url).content)["status"] == "pending"
            clock.now += 5
        reads = len(_list_reads(server)) - before
        assert reads <= 100, reads  # 720 before
        # an hour late, its worker starts it (a long backlog, an eta): the bar follows it within a minute
        created = taskbadger.create_task("shop.export_rows", status="processing", value=1, value_max=4,
                                         external_id=result.id)
        waited = 0
        while (body := json.loads(poll(ada, url).content))["status"] == "pending":
            clock.now += 5
            waited += 5
            assert waited <= tb_progress.MAX_SEARCH_GAP, "not found within a minute of its start"
        assert (body["status"], body["percent"]) == ("processing", 25)
        created.success()
        clock.now += 1
        assert json.loads(poll(ada, url).content)["done"] is True


@pytest.mark.django_db
def test_a_task_celery_says_ended_untracked_is_not_available_and_not_looked_up_again(taskbadger_server, users,
                                                                                      clock):
    """A task left to its worker that its worker ran untracked: once Celery's result backend says it ended and the
    list of the newest tasks still has no such task, the bar says progress is not available (a 404, after which the
    script stops), instead of Queued with a list read per interval for the token's life. A task its worker did
    track, ended as quickly, is shown done."""
    server = taskbadger_server
    with left_to_worker(server, users[0], backend="cache+memory://") as (app, result, url, ada):
        assert json.loads(poll(ada, url).content)["status"] == "pending"
        app.backend.store_result(result.id, "export.csv", "SUCCESS")  # its worker ran it, untracked
        clock.now += 1
        response = poll(ada, url)
        assert response.status_code == 404 and json.loads(response.content) == {"available": False}
        reads = len(_list_reads(server))
        assert poll(ada, url).status_code == 404  # a page reloaded within the interval reads nothing
        assert len(_list_reads(server)) == reads

        tracked = app.tasks["shop.export_rows"].delay()  # this time the create at publish works: no search
        assert tb_progress.task_id_for(tracked) is not None
        server.fail(500, times=1, method="POST")
        late = app.tasks["shop.export_rows"].delay()
        late_url = tb_progress.progress_url(_for(users[0]), late)
        taskbadger.create_task("shop.export_rows", status="success", external_id=late.id)  # its worker tracked it
        app.backend.store_result(late.id, "export.csv", "SUCCESS")
        body = json.loads(poll(ada, late_url).content)
        assert (body["status"], body["done"], body["percent"]) == ("success", True, 100)


@pytest.mark.django_db
def test_another_process_given_the_celery_id_follows_a_task_its_worker_creates(taskbadger_server, users, clock):
    """The page a POST redirected to, served by another process, with only ``app.AsyncResult(celery_id)``: nothing
    there said the task was tracked, and its bar said "Progress is not available for this task." for good while its
    worker tracked it. The publisher's PENDING state in the result backend says so (tests/test_progress_redirect.py
    has it with real processes); a task that ignores its result has none, and none is left once the worker stored a
    state of its own (its start under task_track_started): as for the id of a task created at publish."""
    from taskbadger.celery import state

    server = taskbadger_server
    with left_to_worker(server, users[0], backend="cache+memory://") as (app, result, url, ada):
        assert app.AsyncResult(result.id).info == {"taskbadger_created_by_worker": True}
        state._left_to_worker.replace(None)  # another process: it published nothing
        elsewhere = tb_progress.progress_url(_for(users[0]), app.AsyncResult(result.id))
        assert elsewhere is not None and tb_progress.task_id_for(app.AsyncResult(result.id)) is None
        assert json.loads(poll(ada, elsewhere).content)["status"] == "pending"
        taskbadger.create_task("shop.export_rows", status="processing", value=2, value_max=4, external_id=result.id)
        clock.now += 1
        body = json.loads(poll(ada, elsewhere).content)
        assert (body["status"], body["percent"]) == ("processing", 50)

        server.fail(500, times=2, method="POST")  # both left to their worker
        ignored = app.tasks["shop.export_rows"].apply_async(ignore_result=True)
        started = app.tasks["shop.export_rows"].apply_async()
        app.backend.store_result(started.id, None, "STARTED")
        state._left_to_worker.replace(None)
        for gone in (ignored, started):
            assert tb_progress.progress_url(_for(users[0]), app.AsyncResult(gone.id)) is None


def test_without_the_urls_the_tag_says_what_to_add(server):
    task = taskbadger.create_task("export rows")
    with override_settings(ROOT_URLCONF="tests.debug_urls"), pytest.raises(NoReverseMatch, match="include"):
        Template("{% load taskbadger %}{% taskbadger_progress t %}").render(_request_context({"t": task.id}))


# -- what the view answers ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_view_answers_only_what_the_bar_needs(server, users):
    task = taskbadger.create_task("export rows", status="processing", value=40, value_max=100,
                                  data={"secret": "customer list"}, tags={"tenant": "acme-corp"})
    client = logged_in(users[0])
    [url] = bar_urls(page(client, task.id))
    response = poll(client, url)
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert json.loads(response.content) == {"status": "processing", "value": 40, "value_max": 100, "percent": 40,
                                            "name": "export rows", "done": False, "awaiting_retry": False}
    text = response.content.decode()
    for leak in ("customer list", "acme-corp", server.key, server.api_key, task.id):
        assert leak not in text
    assert "private" in response["Cache-Control"] and "Cookie" in response["Vary"]


@pytest.mark.parametrize("fields, expected", [
    ({"status": "pending"}, {"percent": None, "done": False}),  # never reported: indeterminate, not 0 %
    ({"status": "processing"}, {"percent": None, "done": False}),
    ({"status": "processing", "value": 0, "value_max": 10}, {"percent": 0, "done": False}),
    ({"status": "processing", "value": 3, "value_max": 7}, {"percent": 42, "done": False}),
    ({"status": "processing", "value": 90, "value_max": 60}, {"percent": 100, "done": False}),
    ({"status": "processing", "value": 5, "value_max": 0}, {"percent": None, "done": False}),
    ({"status": "success"}, {"percent": 100, "done": True}),  # finished: complete, whatever it reported
    ({"status": "success", "value": 10, "value_max": 50}, {"percent": 100, "done": True}),
    ({"status": "error", "value": 30, "value_max": 60}, {"percent": 50, "done": True}),  # where it stopped
    ({"status": "error"}, {"percent": None, "done": True}),
    ({"status": "cancelled", "value": 1}, {"percent": 1, "done": True}),
    ({"status": "stale", "value": 20}, {"percent": 20, "done": False}),  # it may report again
    # pending again after an attempt that ran (Celery's data["retries"], Procrastinate's data["attempts"]): waiting to
    # retry, where the attempt stopped; a task that never ran, or one that runs again, is not
    ({"status": "pending", "value": 5, "value_max": 10, "data": {"retries": 1, "last_exception": "<b>secret</b>"}},
     {"percent": 50, "done": False, "awaiting_retry": True}),
    ({"status": "pending", "data": {"attempts": 2}}, {"percent": None, "done": False, "awaiting_retry": True}),
    ({"status": "pending", "data": {"retries": 0}}, {"awaiting_retry": False}),
    ({"status": "pending", "data": {"attempts": "1"}}, {"awaiting_retry": False}),
    ({"status": "processing", "data": {"retries": 1}}, {"awaiting_retry": False}),
    ({"status": "error", "data": {"retries": 3}}, {"done": True, "awaiting_retry": False}),
])
def test_percent_and_done(server, fields, expected):
    task = taskbadger.create_task("t", **fields)
    [url] = bar_urls(page(client := Client(), task.id))
    answer = poll(client, url).content
    body = json.loads(answer)
    assert {k: body[k] for k in expected} == expected and body["status"] == fields["status"]
    assert set(body) == FIELDS and b"secret" not in answer and b"exception" not in answer


@pytest.mark.django_db
def test_another_users_session_gets_403_and_nothing_about_the_task(server, users):
    task = taskbadger.create_task("ada's payroll export", status="processing", value=5)
    ada, bob = logged_in(users[0]), logged_in(users[1])
    [url] = bar_urls(page(ada, task.id))
    assert poll(ada, url).status_code == 200
    reads = len(gets(server, task.id))
    for client in (bob, Client()):  # another user; a visitor who is not logged in
        response = poll(client, url)
        assert response.status_code == 403
        assert response.content == b'{"error":"forbidden"}'
    assert len(gets(server, task.id)) == reads  # refused before anything was read
    ada.logout()
    assert poll(ada, url).status_code == 403  # the token was ada's, not the browser's


def test_anonymous_visitors_are_told_apart_by_their_session(server):
    task = taskbadger.create_task("export rows")
    first, second = Client(), Client()
    [url] = bar_urls(page(first, task.id))
    assert first.cookies.get("sessionid")  # the tag gave the visitor a session
    assert poll(first, url).status_code == 200
    assert poll(second, url).status_code == 403
    [other_url] = bar_urls(page(second, task.id))
    assert other_url != url and poll(second, other_url).status_code == 200


def test_a_visitor_who_logs_in_keeps_following_the_task_they_were_shown(server, users):
    """A guest starts a task and is shown its bar, then signs in (in another tab) while it runs: the same browser
    session, now a user's. The bar said "not available, reload" (and reloading may start the task again)."""
    task = taskbadger.create_task("export rows", status="processing", value=7)
    visitor = Client()
    [url] = bar_urls(page(visitor, task.id))
    visitor.force_login(users[0])  # django.contrib.auth's login(): the session's data is kept
    response = poll(visitor, url)
    assert response.status_code == 200 and json.loads(response.content)["percent"] == 7
    visitor.logout()  # a flushed session: the token is no one's any more
    assert poll(visitor, url).status_code == 403
    assert poll(logged_in(users[1]), url).status_code == 403


def test_the_token_holds_no_user_id_or_session(server, users, db):
    task = taskbadger.create_task("export rows")
    client = logged_in(users[0])
    [url] = bar_urls(page(client, task.id))
    token = url.rstrip("/").rsplit("/", 1)[1]
    payload = signing.loads(token, salt=tb_progress.SALT)
    assert payload["t"] == task.id and set(payload) == {"t", "v"}
    assert str(users[0].pk) != payload["v"] and client.cookies["sessionid"].value not in token


def test_tampered_and_expired_tokens_are_refused(server, monkeypatch):
    task = taskbadger.create_task("export rows")
    other = taskbadger.create_task("someone else's")
    client = Client()
    [url] = bar_urls(page(client, task.id))
    token = url.rstrip("/").rsplit("/", 1)[1]
    forged = signing.dumps({"t": other.id, "v": signing.loads(token, salt=tb_progress.SALT)["v"]}, salt="other")
    payload, rest = token.split(":", 1)  # another task's id in the payload, the signature left as it was
    swapped = signing.b64_encode(signing.b64_decode(payload.encode()).replace(task.id.encode(), other.id.encode()))
    swapped = f"{swapped.decode()}:{rest}"
    assert swapped != token
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    for bad in (forged, swapped, flipped, "not-a-token", token + "x"):
        assert poll(client, f"/taskbadger/progress/{bad}/").status_code == 403, bad
    # a token issued seven hours ago: the default TOKEN_MAX_AGE is six hours
    real_timestamp = signing.TimestampSigner.timestamp
    monkeypatch.setattr(signing.TimestampSigner, "timestamp",
                        lambda self: signing.b62_encode(int(time.time()) - 7 * 3600))
    [old_url] = bar_urls(page(client, task.id))
    monkeypatch.setattr(signing.TimestampSigner, "timestamp", real_timestamp)
    assert poll(client, old_url).status_code == 403
    with settings_for(server, TOKEN_MAX_AGE=8 * 3600):
        assert poll(client, old_url).status_code == 200
    assert poll(client, url).status_code == 200


def test_a_bar_shown_before_the_secret_key_was_rotated_keeps_following_its_task(server, users):
    """Django's way to rotate SECRET_KEY keeps the old one in SECRET_KEY_FALLBACKS: sessions, logins and signatures
    stay good, but every bar open at the deploy got 403 ("reload the page"), its viewer's digest being checked
    against the new key alone. Once the old key is dropped, its tokens are refused."""
    from django.conf import settings as django_settings

    task = taskbadger.create_task("export rows", status="processing", value=9)
    visitor, user = Client(), logged_in(users[0])
    [visitor_url], [user_url] = bar_urls(page(visitor, task.id)), bar_urls(page(user, task.id))
    old = django_settings.SECRET_KEY
    with override_settings(SECRET_KEY="rotated-" + old, SECRET_KEY_FALLBACKS=[old]):
        for client, url in ((visitor, visitor_url), (user, user_url)):
            response = poll(client, url)
            assert response.status_code == 200 and json.loads(response.content)["percent"] == 9
        assert poll(Client(), visitor_url).status_code == 403  # still bound to its viewer
    with override_settings(SECRET_KEY="rotated-" + old, SECRET_KEY_FALLBACKS=[]):
        assert poll(visitor, visitor_url).status_code == 403


def may_watch(request, task_id):
    return request.GET.get("deny") is None and not request.path.startswith("/bar/deny")


def raising_rule(request, task_id):
    raise RuntimeError("the rule is broken")


@pytest.mark.parametrize("rule", [may_watch, "tests.test_progress.may_watch"])
def test_authorize_narrows_who_watches_at_render_and_at_every_poll(server, rule):
    task = taskbadger.create_task("export rows")
    client = Client()
    with settings_for(server, AUTHORIZE=rule):
        [url] = bar_urls(page(client, task.id))
        assert poll(client, url).status_code == 200
        assert poll(client, url + "?deny=1").status_code == 403
        content = client.get(f"/bar/{task.id}/", {"deny": "1"}).content.decode()
        assert "data-url" not in content and 'data-state="unavailable"' in content


def test_an_authorize_rule_that_raises_cannot_be_imported_or_is_no_rule_denies(server, caplog):
    task = taskbadger.create_task("export rows")
    client = Client()
    [url] = bar_urls(page(client, task.id))
    with settings_for(server, AUTHORIZE=raising_rule):
        assert poll(client, url).status_code == 403
    assert "the rule is broken" in caplog.text and "access denied" in caplog.text
    with settings_for(server, AUTHORIZE="tests.test_progress.no_such_rule"):
        assert poll(client, url).status_code == 403
    assert "cannot be imported" in caplog.text
    for not_a_rule in (42, "tests.test_progress.HOSTILE"):  # the wrong type; a path to something not callable
        with settings_for(server, AUTHORIZE=not_a_rule):
            assert poll(client, url).status_code == 403
    assert "AUTHORIZE'] must be a callable or a dotted path to one, got int; using a rule that refuses" in caplog.text
    with settings_for(server):
        assert poll(client, url).status_code == 200


def test_progress_url_for_code_that_draws_its_own_bar(server):
    task = taskbadger.create_task("export rows", status="processing", value=7, value_max=10)
    request = _request_context({}).request
    url = taskbadger_django.progress_url(request, task.id)
    assert url.startswith("/taskbadger/progress/")
    assert taskbadger_django.progress_url(request, None) is None
    client = Client()
    client.cookies["sessionid"] = _session_cookie(request)
    assert json.loads(poll(client, url).content)["percent"] == 70


def _session_cookie(request):
    request.session.save()
    return request.session.session_key


def test_task_id_for():
    task = taskbadger.Task({"id": "abc123", "name": "x"})

    class Result:
        taskbadger_task_id = None  # published untracked

    assert tb_progress.task_id_for("abc123") == "abc123"
    assert tb_progress.task_id_for(task) == "abc123"
    assert tb_progress.task_id_for(Result()) is None
    assert tb_progress.task_id_for(None) is None
    with pytest.raises(ValueError, match="not a Task Badger task id"):
        tb_progress.task_id_for("../../etc")
    with pytest.raises(TypeError, match="taskbadger.Task"):
        tb_progress.task_id_for(42)
    with pytest.raises(TypeError, match="taskbadger.Task"):  # its taskbadger_task_id is another Mock: no recursion
        tb_progress.task_id_for(unittest.mock.MagicMock())
    TaskResult = type("TaskResult", (), {"__module__": "django.tasks.base", "id": "not-tracked"})  # noqa: N806
    assert tb_progress.task_id_for(TaskResult()) is None  # a django.tasks result nobody tracked


def test_an_anonymous_visitor_without_sessions_gets_no_bar_and_a_warning(server, caplog):
    task = taskbadger.create_task("export rows")
    from django.contrib.auth.models import AnonymousUser
    from django.template import RequestContext

    request = RequestFactory().get("/")
    request.user = AnonymousUser()
    template = Template("{% load taskbadger %}{% taskbadger_progress t %}")
    content = template.render(RequestContext(request, {"t": task.id}))
    assert "data-url" not in content and "SessionMiddleware" in caplog.text


# -- the cache in front of the API ----------------------------------------------------------------------------


def test_one_api_read_per_interval_however_many_polls(server, clock):
    task = taskbadger.create_task("export rows", status="processing", value=1)
    clients = [Client() for _ in range(10)]
    urls = [bar_urls(page(c, task.id))[0] for c in clients]
    for _ in range(5):
        for client, url in zip(clients, urls, strict=True):
            assert poll(client, url).status_code == 200
        clock.now += 0.1875
    assert len(gets(server, task.id)) == 1  # 50 polls in 0.94 s
    task.update(value=2)
    clock.now += 0.0625  # one interval after the first read
    assert json.loads(poll(clients[3], urls[3]).content)["percent"] == 2
    assert len(gets(server, task.id)) == 2
    assert json.loads(poll(clients[7], urls[7]).content)["percent"] == 2
    assert len(gets(server, task.id)) == 2


def test_an_error_is_read_again_after_an_interval_a_success_is_kept(server, clock):
    """A task in error can run again (a Celery message redelivered after a cold shutdown, a failed job re-run by
    hand): its error was cached as final for ten minutes, and a reloaded page showed "Failed" while the task ran
    again, then succeeded. A success does not change: it is read once."""
    task = taskbadger.create_task("export rows", status="error", value=3)
    client = Client()
    [url] = bar_urls(page(client, task.id))
    assert json.loads(poll(client, url).content)["status"] == "error"
    task.update(status="processing", value=4)  # the redelivered message runs it again
    clock.now += 1.0  # one poll interval
    assert json.loads(poll(client, url).content)["status"] == "processing"
    task.update(status="success", value=10)
    clock.now += 1.0
    assert json.loads(poll(client, url).content)["status"] == "success"
    reads = len(gets(server, task.id))
    clock.now += 120
    assert json.loads(poll(client, url).content)["status"] == "success" and len(gets(server, task.id)) == reads


def test_the_poll_interval_is_a_setting(server, clock):
    task = taskbadger.create_task("export rows", status="processing")
    client = Client()
    with settings_for(server, POLL_INTERVAL=5):
        [url] = bar_urls(page(client, task.id))
        assert 'data-poll="5"' in page(client, task.id)
        poll(client, url)
        clock.now += 4.9
        poll(client, url)
        assert len(gets(server, task.id)) == 1
        clock.now += 0.1
        poll(client, url)
        assert len(gets(server, task.id)) == 2


def test_concurrent_first_polls_read_the_api_once(server):
    task = taskbadger.create_task("export rows", status="processing", value=3)
    clients = [Client() for _ in range(10)]
    urls = [bar_urls(page(c, task.id))[0] for c in clients]
    server.set_latency(0.5, method="GET")  # the first read is slow: the others arrive while it runs
    bodies = []
    start = threading.Barrier(len(clients))

    def viewer(client, url):
        start.wait()
        bodies.append(json.loads(poll(client, url).content))

    threads = [threading.Thread(target=viewer, args=pair) for pair in zip(clients, urls, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(gets(server, task.id)) == 1
    assert sum(b["percent"] == 3 for b in bodies) >= 1  # the one that read
    assert all(b["percent"] == 3 or b["status"] is None for b in bodies)  # the others: "loading", poll again
    assert json.loads(poll(clients[0], urls[0]).content)["percent"] == 3
    assert len(gets(server, task.id)) == 1


def test_a_finished_task_is_not_read_again(server, clock):
    task = taskbadger.create_task("export rows", status="processing", value=50)
    client = Client()
    [url] = bar_urls(page(client, task.id))
    poll(client, url)
    task.success(value=100)
    clock.now += 1
    assert json.loads(poll(client, url).content)["done"] is True
    for _ in range(3):
        clock.now += 60
        assert json.loads(poll(client, url).content)["status"] == "success"
    assert len(gets(server, task.id)) == 2


def test_unchanged_progress_is_a_304(server, clock):
    task = taskbadger.create_task("export rows", status="processing", value=10)
    client = Client()
    [url] = bar_urls(page(client, task.id))
    first = poll(client, url)
    etag = first["ETag"]
    assert etag.startswith('"')
    again = poll(client, url, if_none_match=etag)
    assert again.status_code == 304 and again.content == b"" and again["ETag"] == etag
    clock.now += 1
    again = poll(client, url, if_none_match=etag)  # read again: the same progress
    assert again.status_code == 304 and len(gets(server, task.id)) == 2
    task.update(value=11)
    clock.now += 1
    changed = poll(client, url, if_none_match=etag)
    assert changed.status_code == 200 and changed["ETag"] != etag
    assert json.loads(changed.content)["percent"] == 11


def test_an_etag_a_compressing_proxy_made_weak_still_gets_a_304(server, clock):
    """nginx's gzip and Django's GZipMiddleware turn the ETag of an answer they compress into W/"…", and the
    browser sends that back: If-None-Match compares weakly, so it is still a 304, not the whole answer again."""
    task = taskbadger.create_task("export rows", status="processing", value=10)
    client = Client()
    [url] = bar_urls(page(client, task.id))
    etag = poll(client, url)["ETag"]
    again = poll(client, url, if_none_match=f"W/{etag}")
    assert again.status_code == 304 and again["ETag"] == etag
    task.update(value=11)
    clock.now += 1
    assert poll(client, url, if_none_match=f"W/{etag}").status_code == 200


def test_the_api_down_and_back(server, clock, caplog):
    task = taskbadger.create_task("export rows", status="processing", value=10)
    clients = [Client() for _ in range(3)]
    urls = [bar_urls(page(c, task.id))[0] for c in clients]
    assert poll(clients[0], urls[0]).status_code == 200
    server.refuse()
    clock.now += 1
    for client, url in zip(clients, urls, strict=True):
        response = poll(client, url)
        assert response.status_code == 503 and json.loads(response.content) == {"available": False}
        assert response["Retry-After"] == "1" and "ETag" not in response
    assert "could not read a task's progress" in caplog.text
    server.clear_faults()
    task.update(value=20)
    clock.now += 1
    assert json.loads(poll(clients[1], urls[1]).content)["percent"] == 20


def test_a_hanging_api_holds_a_poll_for_the_publish_budget_not_the_sdks_timeout(server):
    """People waiting on different tasks while Task Badger hangs: each poll holds a web worker thread. It answers
    503 within the publish budget (1 s, as a .delay() waits), not after the SDK's read timeout (5 s here, up to
    600 s as configured), so a few open pages cannot hold every worker of the site."""
    tasks = [taskbadger.create_task(f"export {i}", status="processing", value=i) for i in range(3)]
    clients = [Client() for _ in tasks]
    urls = [bar_urls(page(c, t.id))[0] for c, t in zip(clients, tasks, strict=True)]
    server.hang(method="GET")
    took = []
    try:
        for client, url in zip(clients, urls, strict=True):
            started = time.monotonic()
            response = poll(client, url)
            took.append(time.monotonic() - started)
            assert response.status_code == 503 and json.loads(response.content) == {"available": False}
    finally:
        server.clear_faults()
    assert max(took) < 3, took  # the budget and a margin for a busy machine, well under the 5 s timeout


@pytest.mark.parametrize("status", [500, 503, 429, 401])
def test_an_api_error_is_a_503_never_an_error_page(server, clock, status):
    task = taskbadger.create_task("export rows")
    client = Client()
    [url] = bar_urls(page(client, task.id))
    server.fail(status, method="GET")
    assert poll(client, url).status_code == 503


@pytest.mark.parametrize("mode", ["slow_headers", "slow_body", "endless_headers", "huge_body", "not_json", "reset"])
def test_a_misbehaving_api_is_a_503_within_the_budget_never_an_error_page(server, mode):
    """The API (or a proxy before it) trickles its answer past the budget, streams headers without end, sends 40 MB,
    answers 200 with an HTML page, or resets the connection mid-answer: the poll answers 503 ("unavailable", the
    bar retries) within the publish budget (1 s), not an error page, and not after the trickle ends (10 s)."""
    task = taskbadger.create_task("export rows", status="processing", value=3)
    client = Client()
    [url] = bar_urls(page(client, task.id))
    server.misbehave(mode, method="GET", seconds=0.2)  # a trickle: 50 header lines (or body bytes), one every 0.2 s
    try:
        started = time.monotonic()
        response = poll(client, url)
        took = time.monotonic() - started
    finally:
        server.clear_faults()
    assert response.status_code == 503 and json.loads(response.content) == {"available": False}
    assert took < 2, took  # the budget and a margin for a busy machine


class BrokenCache(BaseCache):
    """A cache backend whose server is down."""

    def __init__(self, location, params):
        super().__init__(params)

    def _down(self, *args, **kwargs):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    get = add = set = delete = _down


def test_a_failing_cache_is_a_503_not_an_error_page_nor_a_read_per_poll(server, caplog):
    task = taskbadger.create_task("export rows")
    client = Client()
    [url] = bar_urls(page(client, task.id))
    broken = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
              "shared": {"BACKEND": "tests.test_progress.BrokenCache"}}
    with override_settings(CACHES=broken), settings_for(server, CACHE="shared"):
        for _ in range(3):
            response = poll(client, url)
            assert response.status_code == 503 and json.loads(response.content) == {"available": False}
    assert gets(server, task.id) == []
    assert "cache 'shared' failed" in caplog.text and "Connection refused" in caplog.text


def test_an_unknown_cache_alias_falls_back_to_the_default(server, caplog):
    task = taskbadger.create_task("export rows", status="processing", value=9)
    client = Client()
    [url] = bar_urls(page(client, task.id))
    with settings_for(server, CACHE="progress"):
        assert json.loads(poll(client, url).content)["percent"] == 9
    assert "'progress' is not an alias in CACHES; using 'default'" in caplog.text


def test_a_task_the_api_does_not_know_is_a_404(server):
    client = Client()
    [url] = bar_urls(page(client, "NoSuchTask0000000000000000"))
    response = poll(client, url)
    assert response.status_code == 404 and json.loads(response.content) == {"available": False}


def test_without_a_configured_sdk_the_bar_is_unavailable(taskbadger_server, caplog):
    task = taskbadger.create_task("export rows")
    with override_settings(TASKBADGER={"ENABLED": False}):
        client = Client()
        [url] = bar_urls(page(client, task.id))
        assert poll(client, url).status_code == 503
    assert "progress bars show 'unavailable'" in caplog.text


def test_only_get_and_head(server):
    task = taskbadger.create_task("export rows")
    client = Client()
    [url] = bar_urls(page(client, task.id))
    assert client.post(url).status_code == 405
    assert client.head(url).status_code == 200


# -- settings and checks -------------------------------------------------------------------------------------


def test_progress_settings_defaults_and_bad_values_fall_back(caplog):
    with override_settings(TASKBADGER={}):
        resolved = tb_progress.progress_settings()
    assert (resolved.token_max_age, resolved.poll_interval, resolved.authorize, resolved.cache) == (
        6 * 3600, 1.0, None, "default")
    with override_settings(TASKBADGER={"PROGRESS": {"POLL_INTERVAL": 0.01, "TOKEN_MAX_AGE": 60}}):
        resolved = tb_progress.progress_settings()
    assert (resolved.poll_interval, resolved.token_max_age) == (1.0, 60)
    assert "POLL_INTERVAL'] must be a number of seconds from 0.5 to 300" in caplog.text


def run(progress=None, **django_settings):
    tb = {"API_KEY": None, "ENABLED": False}
    if progress is not None:
        tb["PROGRESS"] = progress
    with override_settings(TASKBADGER=tb, **django_settings):
        return [(m.id, m.obj) for m in run_checks(tags=[tb_checks.TAG]) if m.id.startswith("taskbadger.")]


@pytest.mark.parametrize("bad, good, expected", [
    ({"POLL_INTERVALL": 1}, {"POLL_INTERVAL": 1}, ("taskbadger.E011", "TASKBADGER['PROGRESS']")),
    ({"POLL_INTERVAL": 0.1}, {"POLL_INTERVAL": 0.5}, ("taskbadger.E003", "TASKBADGER['PROGRESS']['POLL_INTERVAL']")),
    ({"POLL_INTERVAL": "1"}, {"POLL_INTERVAL": 2}, ("taskbadger.E003", "TASKBADGER['PROGRESS']['POLL_INTERVAL']")),
    ({"TOKEN_MAX_AGE": 1.5}, {"TOKEN_MAX_AGE": 3600}, ("taskbadger.E003", "TASKBADGER['PROGRESS']['TOKEN_MAX_AGE']")),
    ({"AUTHORIZE": 3}, {"AUTHORIZE": may_watch}, ("taskbadger.E003", "TASKBADGER['PROGRESS']['AUTHORIZE']")),
    ({"AUTHORIZE": "tests.test_progress.nope"}, {"AUTHORIZE": "tests.test_progress.may_watch"},
     ("taskbadger.E012", "TASKBADGER['PROGRESS']['AUTHORIZE']")),
    ({"AUTHORIZE": "tests.test_progress.HOSTILE"}, {"AUTHORIZE": "tests.test_progress.may_watch"},
     ("taskbadger.E012", "TASKBADGER['PROGRESS']['AUTHORIZE']")),
    ({"CACHE": "progress"}, {"CACHE": "default"}, ("taskbadger.E013", "TASKBADGER['PROGRESS']['CACHE']")),
])
def test_progress_setting_checks(bad, good, expected):
    assert run(bad) == [expected]
    assert run(good) == []


def test_progress_is_a_dict():
    assert run("fast") == [("taskbadger.E003", "TASKBADGER['PROGRESS']")]


def test_wiring_checks_only_when_the_urls_are_included():
    no_sessions = [m for m in __import__("django.conf").conf.settings.MIDDLEWARE if "Session" not in m]
    no_auth = [m for m in no_sessions if "Authentication" not in m]
    dummy = {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}
    assert run(MIDDLEWARE=no_auth) == [("taskbadger.W008", "MIDDLEWARE")]
    assert run(CACHES=dummy) == [("taskbadger.W009", "TASKBADGER['PROGRESS']['CACHE']")]
    both = {**dummy, "shared": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    assert run({"CACHE": "shared"}, CACHES=both) == []
    with override_settings(ROOT_URLCONF="tests.debug_urls"):  # no progress URLs: no bars to warn about
        assert run(MIDDLEWARE=no_auth, CACHES=dummy) == []


def test_the_progress_checks_messages_say_what_to_do():
    with override_settings(TASKBADGER={"ENABLED": False, "PROGRESS": {"CACHE": "nope"}},
                           CACHES={"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}):
        messages = {m.id: m for m in run_checks(tags=[tb_checks.TAG])}
    assert "'default'" in messages["taskbadger.E013"].hint
    assert "LocMemCache" in messages["taskbadger.W009"].hint


def test_the_log_names_no_secret(server, caplog):
    caplog.set_level(logging.DEBUG, logger="taskbadger")
    task = taskbadger.create_task("export rows")
    client = Client()
    [url] = bar_urls(page(client, task.id))
    server.fail(500, method="GET")
    poll(client, url)
    assert server.api_key not in caplog.text and server.key not in caplog.text



def _strict_json(content: bytes):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(content, parse_constant=refuse)


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_an_api_answer_with_numbers_json_has_not_never_reaches_the_page(number, caplog):
    # A confused API or proxy writes NaN or Infinity (Python's json reads them, and 1e999 as infinity): the view's
    # own answer must stay JSON that a browser parses, or the bar retries for ever.
    from .test_http_wire import RawServer

    task_id = "NaNs0fAConfusedProxy000001"
    body = b'{"id":"%s","name":"export rows","status":"processing","value":%s,"value_max":10}' % (
        task_id.encode(), number)
    api = RawServer([b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body)])
    key = base64.b64encode(b"acme/demo/k").decode()
    try:
        with override_settings(TASKBADGER={"API_KEY": key, "HOST": api.url}):
            [url] = bar_urls(page(client := Client(), task_id))
            response = poll(client, url)
    finally:
        api.close()
    assert len(api.requests) == 1  # the view asked the API
    body = _strict_json(response.content)  # raises on NaN / Infinity
    assert body == {"available": False} and response.status_code == 503
    assert "not JSON" in caplog.text
