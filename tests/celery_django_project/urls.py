"""The test project's URLs, and an export started by a POST that redirects to the page showing its bar, as
docs/progress.md has it: the page knows only the Celery id, and may be served by another web process."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template import engines
from django.urls import include, path
from django.views.decorators.http import require_POST

from .app import app, export_rows

PAGE = engines["django"].from_string("""{% load taskbadger %}<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Export</title></head>
<body><h1>Preparing your export</h1>{% taskbadger_progress result %}</body></html>
""")


@require_POST
def start_export(request: HttpRequest) -> HttpResponse:
    result = export_rows.apply_async((request.POST["gate"],), queue=request.POST["queue"])
    return redirect("export-progress", celery_id=result.id)


def export_progress(request: HttpRequest, celery_id: str) -> HttpResponse:
    return HttpResponse(PAGE.render({"result": app.AsyncResult(celery_id)}, request))


urlpatterns = [
    path("", include("testproject.urls")),
    path("export/", start_export),
    path("export/<str:celery_id>/", export_progress, name="export-progress"),
]
