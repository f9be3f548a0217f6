"""Settings for the test project. Everything comes from the environment (see .env.example); the
defaults need no service: SQLite, and a Celery broker and result backend on local files."""

import sys
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("TESTPROJECT_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env(DEBUG=(bool, False))
environ.Env.read_env(BASE_DIR / ".env")

DEBUG = env("DEBUG")
SECRET_KEY = env("SECRET_KEY", default="insecure-testproject-key-change-me")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "taskbadger_django",
    "demo",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "testproject.urls"
# Sessions in a signed cookie: the demo's progress page needs no database table (and no `migrate`).
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": ["django.template.context_processors.request",
                                       "django.contrib.auth.context_processors.auth"]},
}]
STATIC_URL = "static/"
# The progress bars read Task Badger at most once per task and poll interval per cache: per process with
# the default, across processes with a shared one (CACHE_URL=redis://127.0.0.1:6379/9).
CACHES = {"default": env.cache("CACHE_URL", default="locmemcache://")}
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

# Celery: embedded defaults (files under var/), or any broker through CELERY_BROKER_URL.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="filesystem://localhost/")  # a host: no kombu warning
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default=f"file://{VAR_DIR / 'results'}")
if CELERY_BROKER_URL.startswith("filesystem://"):
    # kombu's own writes a message file before its content, and a worker can read it empty and stop
    CELERY_BROKER_TRANSPORT = "taskbadger.testing.broker:FilesystemTransport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(VAR_DIR / "broker" / "queue"),
        "data_folder_out": str(VAR_DIR / "broker" / "queue"),
        "control_folder": str(VAR_DIR / "broker" / "control"),
        "polling_interval": 0.05,
    }
    for _folder in ("queue", "control"):
        (VAR_DIR / "broker" / _folder).mkdir(parents=True, exist_ok=True)
    (VAR_DIR / "results").mkdir(parents=True, exist_ok=True)
CELERY_TASK_ALWAYS_EAGER = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "nightly-report": {"task": "demo.tasks.nightly_report",
                       "schedule": env.float("DEMO_BEAT_INTERVAL", default=24 * 3600.0)},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

TASKBADGER = {
    "API_KEY": env.str("TASKBADGER_API_KEY", default=None),
    "HOST": env.str("TASKBADGER_HOST", default="https://taskbadger.net"),
    "TAGS": {"environment": env.str("TASKBADGER_ENVIRONMENT", default="development")},
    "MONITORS": {"demo.tasks.nightly_report": "0b0b5c86-4a43-4c3c-9a53-7d3e6f1c2a11"},
    "CELERY": {"AUTO_TRACK": False, "RECORD_TASK_ARGS": False},
    "PROGRESS": {"POLL_INTERVAL": env.float("PROGRESS_POLL_INTERVAL", default=1.0)},
}

# `manage.py demo` tells its own story on stdout: the SDK's start-up INFO lines in its process ("no API key",
# before the demo starts its stand-in API) would contradict it. Its worker and beat still log INFO to files.
_SDK_LOG_LEVEL = "WARNING" if sys.argv[1:2] == ["demo"] else "INFO"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "taskbadger": {"handlers": ["console"], "level": env.str("TASKBADGER_LOG_LEVEL", default=_SDK_LOG_LEVEL)},
    },
}
