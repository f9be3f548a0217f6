"""The demo's progress page: the bars of the tasks `manage.py demo` publishes, as a user would see them."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

#: (label, Task Badger id) of the tasks the running demo published; set by the demo command in its process
TASKS: list[tuple[str, str]] = []


def progress(request: HttpRequest) -> HttpResponse:
    response = render(request, "demo/progress.html", {"tasks": list(TASKS)})
    # What the bars are built for: a page that allows only its own scripts and styles.
    response["Content-Security-Policy"] = "default-src 'self'; frame-ancestors 'none'"
    return response
