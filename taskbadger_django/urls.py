"""``path("taskbadger/", include("taskbadger_django.urls"))``: the progress view of ``{% taskbadger_progress %}``."""

from django.urls import path

from . import views

app_name = "taskbadger_django"

urlpatterns = [
    path("progress/<str:token>/", views.progress, name="progress"),
]
