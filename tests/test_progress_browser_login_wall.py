"""The progress bar behind a login wall that does not exempt its polls: a project's own login-required middleware
(what many wrote before Django 5.1's, usually with a list of public paths), or a single-sign-on proxy in front of
the site. A poll is then sent to a login page, on the site (a redirect the browser follows, to HTML) or at the
proxy's sign-in host (another origin), refused with a 401, or answered with the sign-in page itself (200 or 403,
HTML). The bar must say so and stop, not retry for ever."""

from __future__ import annotations

import http.server
import threading
import time

import pytest
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponse
from django.test import override_settings
from django.urls import path

import taskbadger

from .progress_urls import CSP, PAGE
from .progress_urls import urlpatterns as progress_urlpatterns
from .test_progress_browser import _fresh, bar, driver, events, server, wait  # noqa: F401

pytestmark = pytest.mark.urls("tests.test_progress_browser_login_wall")

LOGIN_PAGE = "<!doctype html><html><head><title>Sign in</title></head><body><form>Sign in</form></body></html>"
#: Where the wall sends the polls it stops ("login", "sso"; or "401", "200", "403": the sign-in page with that status),
#: and how many it stopped.
WALL = {"mode": "login", "sso": None, "stopped": 0}


class LoginWall:
    """A site-wide login requirement with a list of public pages: the page with the bar is on it, its polls are
    not (the project's developer did not know the bar polls a URL of its own)."""

    PUBLIC = ("/public/", "/accounts/login/", "/static/", "/favicon.ico")

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.user.is_authenticated or request.path.startswith(self.PUBLIC):
            return self.get_response(request)
        WALL["stopped"] += request.path.startswith("/taskbadger/progress/")  # the bar's polls (not the favicon)
        if WALL["mode"] in ("401", "200", "403"):  # a sign-in page where the poll asked (as some proxies do)
            return HttpResponse(LOGIN_PAGE, status=int(WALL["mode"]))
        login_url = WALL["sso"] if WALL["mode"] == "sso" else settings.LOGIN_URL
        return redirect_to_login(request.get_full_path(), login_url)


def public_bar(request, task_id):
    response = HttpResponse(PAGE.render({"ids": [task_id], "label": None}, request))
    response["Content-Security-Policy"] = CSP
    return response


def login(request):
    return HttpResponse(LOGIN_PAGE)


urlpatterns = [path("public/<str:task_id>/", public_bar), path("accounts/login/", login), *progress_urlpatterns]


class _SignIn(http.server.BaseHTTPRequestHandler):
    """The proxy's sign-in host: another origin, with no CORS headers (it serves people, not scripts)."""

    def do_GET(self):
        body = LOGIN_PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def walled_site():
    """The project served with the wall (the server's handler loads its middleware once, at start)."""
    from django.contrib.staticfiles.handlers import StaticFilesHandler
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    sign_in = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SignIn)
    servers = [sign_in]
    WALL.update(mode="login", stopped=0, sso=f"http://127.0.0.1:{sign_in.server_address[1]}/sign_in")
    middleware = [*settings.MIDDLEWARE, "tests.test_progress_browser_login_wall.LoginWall"]
    with override_settings(MIDDLEWARE=middleware):
        httpd = ThreadedWSGIServer(("127.0.0.1", 0), WSGIRequestHandler, allow_reuse_address=False)
        httpd.set_app(StaticFilesHandler(WSGIHandler()))
        servers.append(httpd)
        threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
        for thread in threads:
            thread.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}"
        finally:
            for s in servers:
                s.shutdown()
                s.server_close()
            for thread in threads:
                thread.join(10)


@pytest.mark.parametrize("mode", ["login", "sso", "401", "200", "403"])
@pytest.mark.django_db(transaction=True)
def test_a_poll_sent_to_sign_in_says_so_and_stops(server, driver, walled_site, mode, tmp_path):  # noqa: F811
    """It said 'Progress is unavailable right now; retrying…' for ever, polling the login page every 30 seconds,
    and nothing anywhere said why."""
    WALL["mode"] = mode
    task = taskbadger.create_task("export rows", status="processing", value=40)
    driver.delete_all_cookies()
    driver.get(f"{walled_site}/public/{task.id}/")
    wait(driver, lambda d: bar(d)["state"] == "unavailable" or bar(d)["unavailable"])
    wait(driver, lambda d: bar(d)["fill"] == 0)  # the loading sweep gone: nothing is going on (no transition left)
    shown = bar(driver)
    driver.save_screenshot(str(tmp_path / f"login_wall_{mode}.png"))  # to look at: pytest --basetemp
    assert (shown["state"], shown["status"], shown["percent"], shown["valuenow"]) == (
        "unavailable",
        "Sign in again to see progress.",
        "",
        None,
    ), shown
    [unavailable] = events(driver, "taskbadger:unavailable")
    assert unavailable["detail"] == {"httpStatus": int(mode) if mode.isdigit() else 0, "retrying": False,
                                     "signIn": True}
    stopped = WALL["stopped"]
    assert stopped == 1
    time.sleep(2.5)  # five poll intervals, and the first retry's delay: a window in which no poll may come
    assert WALL["stopped"] == stopped
    assert driver.execute_script("return window.__csp") == []
