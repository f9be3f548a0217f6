"""The progress bar of an anonymous visitor in a project that requires a login everywhere else (Django's
LoginRequiredMiddleware): the page is public (``@login_not_required``), and so must its bar's polls be; the
token already says who may read the task."""

from __future__ import annotations

import threading

import pytest
from django.conf import settings
from django.http import HttpResponse
from django.test import override_settings
from django.urls import path

import taskbadger

from .progress_urls import CSP, PAGE
from .progress_urls import urlpatterns as progress_urlpatterns
from .test_progress_browser import _fresh, bar, drawn_at, driver, events, server, wait  # noqa: F401

login_not_required = pytest.importorskip("django.contrib.auth.decorators").__dict__.get("login_not_required")
if login_not_required is None:
    pytest.skip("LoginRequiredMiddleware is Django 5.1+", allow_module_level=True)

pytestmark = pytest.mark.urls("tests.test_progress_browser_login_required")


@login_not_required
def public_bar(request, task_id):
    response = HttpResponse(PAGE.render({"ids": [task_id], "label": None}, request))
    response["Content-Security-Policy"] = CSP
    return response


urlpatterns = [path("public/<str:task_id>/", public_bar), *progress_urlpatterns]


@pytest.fixture
def login_required_site():
    """The project served with LoginRequiredMiddleware (the live server's handler loads its middleware once, at
    start: this one is made under the setting)."""
    from django.contrib.staticfiles.handlers import StaticFilesHandler
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    middleware = [*settings.MIDDLEWARE, "django.contrib.auth.middleware.LoginRequiredMiddleware"]
    with override_settings(MIDDLEWARE=middleware):
        httpd = ThreadedWSGIServer(("127.0.0.1", 0), WSGIRequestHandler, allow_reuse_address=False)
        httpd.set_app(StaticFilesHandler(WSGIHandler()))
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}"
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join(10)


@pytest.mark.django_db(transaction=True)
def test_an_anonymous_visitors_bar_fills_under_login_required_middleware(server, driver, login_required_site):  # noqa: F811 (fixtures)
    """Its polls were redirected to the login page (302): the bar said progress was not available for this
    task, and stopped."""
    task = taskbadger.create_task("export rows", status="processing", value=40)
    driver.delete_all_cookies()
    driver.get(f"{login_required_site}/public/{task.id}/")
    wait(driver, lambda d: drawn_at(d, 40) or bar(d)["unavailable"] or bar(d)["state"] == "unavailable")
    shown = bar(driver)
    assert not shown["unavailable"] and shown["state"] != "unavailable", shown
    assert (shown["state"], shown["status"], shown["valuenow"]) == ("running", "Running", "40")
    task.success()
    wait(driver, lambda d: bar(d)["state"] == "done")
    assert [e["detail"]["status"] for e in events(driver, "taskbadger:done")] == ["success"]
