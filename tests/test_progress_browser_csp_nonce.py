"""The progress bar under a nonce-based Content-Security-Policy ('strict-dynamic', the "strict CSP" of web.dev and
Google's CSP Evaluator): 'self' is ignored there, and only scripts and stylesheets that carry the page's nonce load.
The nonce comes from the project's CSP middleware: ``request.csp_nonce`` (django-csp), or ``csp_nonce`` in the
template context (Django 6.0's ``django.template.context_processors.csp``)."""

from __future__ import annotations

import secrets

import pytest
from django.http import HttpResponse
from django.urls import path

import taskbadger

from .progress_urls import PAGE
from .progress_urls import urlpatterns as progress_urlpatterns
from .test_progress_browser import _fresh, bar, drawn_at, driver, server, wait  # noqa: F401

pytestmark = pytest.mark.urls("tests.test_progress_browser_csp_nonce")


def nonce_page(request, how, task_id):
    nonce = secrets.token_urlsafe(16)
    context = {"ids": [task_id], "label": None}
    if how == "request":
        request.csp_nonce = nonce  # django-csp
    else:
        context["csp_nonce"] = nonce  # Django 6.0's context processor
    response = HttpResponse(PAGE.render(context, request))
    response["Content-Security-Policy"] = (f"script-src 'nonce-{nonce}' 'strict-dynamic'; "
                                           f"style-src 'nonce-{nonce}'; object-src 'none'; base-uri 'none'")
    return response


urlpatterns = [path("nonce/<str:how>/<str:task_id>/", nonce_page), *progress_urlpatterns]


@pytest.mark.parametrize("how", ["request", "context"])
def test_the_bar_runs_under_a_nonce_based_strict_csp(server, driver, live_server, how):  # noqa: F811 (fixtures)
    """The script and the stylesheet carried no nonce: both were blocked, and the bar swept under 'Loading
    progress…' for ever."""
    task = taskbadger.create_task("export rows", status="processing", value=40)
    driver.get(f"{live_server.url}/nonce/{how}/{task.id}/")
    wait(driver, lambda d: drawn_at(d, 40) or d.execute_script("return window.__csp").__len__() > 0)
    assert driver.execute_script("return window.__csp") == []
    shown = bar(driver)
    assert (shown["state"], shown["status"], shown["valuenow"]) == ("running", "Running", "40")
    assert shown["track"] > 300
