from django.apps import AppConfig


class DjangoTasksProjectConfig(AppConfig):
    name = "tests.django_tasks_project"
    label = "django_tasks_project"
