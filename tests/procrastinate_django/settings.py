"""A Django project with ``procrastinate.contrib.django`` for the ``manage.py procrastinate worker`` tests
(``DJANGO_SETTINGS_MODULE=tests.procrastinate_django.settings``; its database from ``TB_DJANGO_PG_NAME``).
Task Badger is configured from settings alone; the key and host come from the environment."""

import json
import os

SECRET_KEY = "procrastinate-tests"
USE_TZ = True
INSTALLED_APPS = (
    ["django.contrib.contenttypes", "taskbadger_django", "procrastinate.contrib.django"]
    if os.environ.get("TB_DJANGO_TB_FIRST") == "1"  # the order check W013 reports
    else ["django.contrib.contenttypes", "procrastinate.contrib.django", "taskbadger_django"]
) + ["tests.procrastinate_django"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("TB_DJANGO_PG_NAME", "postgres"),
        "HOST": "127.0.0.1",
        "PORT": 5432,
        "USER": "postgres",
    }
}
TASKBADGER = {
    "MONITORS": {os.environ.get("TB_DJANGO_MONITOR_TASK", "dj.echo"): os.environ.get("TB_DJANGO_MONITOR")},
    "PROCRASTINATE": {"EXCLUDES": [r"dj\.skip.*", *json.loads(os.environ.get("TB_DJANGO_EXCLUDES", "[]"))],
                      "RECORD_TASK_ARGS": True},
}
LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "taskbadger": {"handlers": ["console"], "level": "INFO"},
        "procrastinate": {"handlers": ["console"], "level": "INFO"},
    },
}
