"""A URL configuration for tests that need a view calling the SDK (the debug-page tests)."""

from django.http import HttpResponse
from django.urls import path

import taskbadger


def create(request):
    task = taskbadger.create_task("from a view")
    return HttpResponse(task.id)


urlpatterns = [path("create/", create)]
