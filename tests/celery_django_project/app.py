"""A Celery app whose result backend is django-celery-results (``django-db``), run by real workers and by the web
process's side (``python -m tests.celery_django_project.publish``, or the project's views under ``runserver``), all on
one database (``DATABASE_URL``). The broker is the test run's (``TB_BROKER_URL``); the result backend another one when
``TB_RESULT_BACKEND`` names it; Task Badger is configured from ``TASKBADGER`` by the Django app."""

import os
import pathlib

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.celery_django_project.settings")

import django  # noqa: E402
from django.apps import apps  # noqa: E402

if not apps.ready:  # a worker, a script; under runserver the project's URLs import it, Django set up already
    django.setup()

from celery import Celery  # noqa: E402
from celery.signals import worker_ready  # noqa: E402

from taskbadger_django import Task  # noqa: E402

app = Celery("tbdjangodb")
app.conf.update(
    broker_url=os.environ["TB_BROKER_URL"],
    broker_transport_options=(
        {"data_folder_in": os.environ["TB_BROKER_DIR"], "data_folder_out": os.environ["TB_BROKER_DIR"],
         "control_folder": os.environ["TB_BROKER_DIR"] + "-control", "polling_interval": 0.05}
        if os.environ["TB_BROKER_URL"].startswith("filesystem") else {}
    ),
    result_backend=os.environ.get("TB_RESULT_BACKEND") or "django-db",
    task_track_started=os.environ.get("TB_TRACK_STARTED") == "1",
    task_always_eager=False,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    task_create_missing_queues=True,
)
if os.environ["TB_BROKER_URL"].startswith("filesystem"):
    app.conf.broker_transport = "taskbadger.testing.broker:FilesystemTransport"


@worker_ready.connect
def _ready(**_):
    path = os.environ.get("TB_READY_FILE")
    if path:
        pathlib.Path(path).write_text(str(os.getpid()))


@app.task(base=Task, name="djangodb.add")
def add(x, y):
    return x + y


@app.task(bind=True, base=Task, name="djangodb.export_rows")
def export_rows(self, gate):
    """Reports one row of four, then waits (with a deadline) for the file ``gate`` to exist, as an export waits on
    its work: a test sees its progress before it ends."""
    import time

    tb = self.taskbadger_task
    if tb:
        tb.update(value=1, value_max=4)
    deadline = time.monotonic() + 60
    while not pathlib.Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return "export.csv"
