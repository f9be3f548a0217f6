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
    path("listener.js", listener),
]
