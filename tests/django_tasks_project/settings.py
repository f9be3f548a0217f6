"""The test project with Django's tasks framework: ``testproject.settings`` plus the tasks apps and a
``TASKS`` backend chosen by ``DJT_BACKEND`` (db, rq, immediate, dummy). The integration tests run
``manage.py migrate``, ``db_worker`` / ``rqworker`` and the ``djt`` command (the web process's side) with
these settings, each in its own process, on one database (``DATABASE_URL``)."""

import importlib.util

from testproject.settings import *  # noqa: F403
from testproject.settings import INSTALLED_APPS, TASKBADGER, env

DJT_BACKEND = env.str("DJT_BACKEND", default="db")
#: The queue the tests' tasks go to (an RQ queue per test run: Redis db 10 is shared).
DJT_QUEUE = env.str("DJT_QUEUE", default="default")

INSTALLED_APPS = [*INSTALLED_APPS, "django_tasks_db", "django_rq", "tests.django_tasks_project"]
if importlib.util.find_spec("django.tasks") is None:
    INSTALLED_APPS.append("django_tasks")  # the backport on Django < 6

_BACKENDS = {
    "db": "django_tasks_db.DatabaseBackend",
    "rq": "django_tasks_rq.RQBackend",
    "broker": "tests.django_tasks_project.broker.BrokerBackend",  # a kind Task Badger does not know
    "immediate": ("django.tasks.backends.immediate.ImmediateBackend" if importlib.util.find_spec("django.tasks")
                  else "django_tasks.backends.immediate.ImmediateBackend"),
    "dummy": ("django.tasks.backends.dummy.DummyBackend" if importlib.util.find_spec("django.tasks")
              else "django_tasks.backends.dummy.DummyBackend"),
}
TASKS = {"default": {"BACKEND": _BACKENDS[DJT_BACKEND], "QUEUES": sorted({"default", DJT_QUEUE})}}
#: The Redis database of the RQ queues (``DJT_REDIS_URL``: a test run beside another one uses its own database).
DJT_REDIS_URL = env.str("DJT_REDIS_URL", default="redis://127.0.0.1:6379/10")
#: RQ's job timeout (``DJT_RQ_TIMEOUT``, seconds): when the work horse raises ``JobTimeoutException`` in the job.
RQ_QUEUES = {name: {"URL": DJT_REDIS_URL, "DEFAULT_TIMEOUT": env.int("DJT_RQ_TIMEOUT", default=60)}
             for name in {"default", DJT_QUEUE}}
#: The worker class the docs tell RQ users to name (docs/django-tasks.md): every RQ test runs with it.
RQ = {"WORKER_CLASS": "taskbadger.django_tasks.rq.Worker"}

TASKBADGER = {
    **TASKBADGER,
    "MONITORS": {"tests.django_tasks_project.tasks.add": "0b0b5c86-4a43-4c3c-9a53-7d3e6f1c2a12"},
    "TAGS": {"environment": "test"},
    "DJANGO_TASKS": {"EXCLUDES": [r".*\.untracked_by_rule"], "RECORD_TASK_ARGS": True},
}
if env.float("DJT_PUBLISH_BUDGET", default=0):
    TASKBADGER["PUBLISH_BUDGET"] = env.float("DJT_PUBLISH_BUDGET")
    TASKBADGER["TIMEOUT"] = (env.float("DJT_PUBLISH_BUDGET"), env.float("DJT_PUBLISH_BUDGET"))

#: A second database (``DJT_JOBS_DATABASE_URL``), and the apps whose tables a router puts there (``DJT_ON_JOBS``).
if env.str("DJT_JOBS_DATABASE_URL", default=""):
    DATABASES = {**DATABASES, "jobs": env.db("DJT_JOBS_DATABASE_URL")}  # noqa: F405
    DATABASE_ROUTERS = ["tests.django_tasks_project.routers.JobsRouter"]
DJT_ON_JOBS = [label for label in env.str("DJT_ON_JOBS", default="").split(",") if label]
#: A third database, a read replica that lags (``DJT_REPLICA_DATABASE_URL``), read for the apps in
#: ``DJT_READ_FROM_REPLICA`` (``tests.django_tasks_project.routers``).
if env.str("DJT_REPLICA_DATABASE_URL", default=""):
    DATABASES = {**DATABASES, "replica": env.db("DJT_REPLICA_DATABASE_URL")}  # noqa: F405
    DATABASE_ROUTERS = ["tests.django_tasks_project.routers.JobsRouter"]
DJT_READ_FROM_REPLICA = [label for label in env.str("DJT_READ_FROM_REPLICA", default="").split(",") if label]
