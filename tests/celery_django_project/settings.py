"""The test project with django-celery-results: ``testproject.settings`` plus its app, on ``DATABASE_URL``
(SQLite or PostgreSQL). The Celery app is ``tests.celery_django_project.app`` (result backend ``django-db``)."""

from testproject.settings import *  # noqa: F403
from testproject.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "django_celery_results"]

ROOT_URLCONF = "tests.celery_django_project.urls"
# As many Django teams run it: each request in a transaction (``.delay()`` in a view writes our PENDING row at its
# commit: ``taskbadger/celery/result_backend.py``)
DATABASES["default"]["ATOMIC_REQUESTS"] = True  # noqa: F405
