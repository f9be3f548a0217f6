"""A URL configuration for the progress bar's tests: the test project's URLs, plus a page that shows the bar of
any task id (as a view of the project would, after starting the task), served under a strict CSP."""

import time

from django.http import HttpResponse
from django.template import engines
from django.urls import include, path

PAGE = engines["django"].from_string("""{% load taskbadger %}<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Export</title>{% if scheme %}
<meta name="color-scheme" content="{{ scheme }}">{% endif %}</head>
<body>
<h1>Preparing your export</h1>
{% for tb_id in ids %}{% taskbadger_progress tb_id label=label %}{% endfor %}
{% if listener %}<script type="module" src="/listener.js?delay={{ listener }}"></script>{% endif %}
</body>
</html>
""")

#: What the bars are built for: a page that allows only its own scripts and styles, no inline ones.
CSP = "default-src 'self'; frame-ancestors 'none'"


def bar(request, task_ids):
    ids = [None if task_id == "untracked" else task_id for task_id in task_ids.split(",")]  # None: published untracked
    response = HttpResponse(PAGE.render({"ids": ids, "label": request.GET.get("label"),
                                         "listener": request.GET.get("listener"),
                                         "scheme": request.GET.get("scheme")}, request))
    response["Content-Security-Policy"] = CSP
    return response


def group_bars(request, size):
    """A view that starts a Celery group on the worker queue ``?queue=`` and shows a bar per task, as a user's would;
    how many of its tasks were published untracked (left to their worker to create) is in ``#left``."""
    from celery import _state, group

    from taskbadger_django import task_id_for

    from .celery_project import app as tasks

    previous = _state._tls.current_app
    tasks.app.set_current()  # as a project's one app is (the test project's may be, in this test process)
    try:
        results = group(tasks.progress.s(3) for _ in range(size)).apply_async(queue=request.GET["queue"]).results
    finally:
        _state._set_current_app(previous)
    left = sum(1 for result in results if task_id_for(result) is None)
    response = HttpResponse(PAGE.render({"ids": results, "label": None}, request).replace(
        "</body>", f'<p id="left">{left}</p></body>'))
    response["Content-Security-Policy"] = CSP
    return response


def celery_bar(request, celery_id):
    """The bar of a Celery task by its id, as the page a POST redirected to would draw it: ``AsyncResult`` of the
    process's current app (a project's one app)."""
    from celery import current_app

    response = HttpResponse(PAGE.render({"ids": [current_app.AsyncResult(celery_id)], "label": None}, request))
    response["Content-Security-Policy"] = CSP
    return response


def blank(request):
    response = HttpResponse("<!doctype html><html><head><title>blank</title></head><body></body></html>")
    response["Content-Security-Policy"] = CSP
    return response


#: The page's own script, as the docs have it (a static file: a strict CSP allows no inline script), loaded late.
LISTENER = """window.__listener = [];
document.addEventListener("taskbadger:done", function (event) { window.__listener.push(event.detail.status); });"""


def listener(request):
    time.sleep(min(float(request.GET.get("delay", "0")), 2))  # a script that takes a while to arrive
    return HttpResponse(LISTENER, content_type="text/javascript")


urlpatterns = [
    path("", include("testproject.urls")),
    path("bar/<str:task_ids>/", bar),
    path("blank/", blank),
    path("celery/<str:celery_id>/", celery_bar),
    path("group/<int:size>/", group_bars),
    path("listener.js", listener),
]
