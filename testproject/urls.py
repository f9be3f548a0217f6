from django.urls import include, path

urlpatterns: list = [
    path("taskbadger/", include("taskbadger_django.urls")),
    path("demo/", include("demo.urls")),
]
