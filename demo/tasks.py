"""Demo tasks: one per feature `manage.py demo` shows."""

import time

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

import taskbadger
from taskbadger_django import Task


@shared_task(base=Task)
def send_welcome_email(user_id: int) -> str:
    """A plain tracked task."""
    return f"sent to user {user_id}"


@shared_task(bind=True, base=Task, taskbadger_value_max=100)
def import_contacts(self, rows: int) -> int:
    """Progress from the task body."""
    tb = self.taskbadger_task
    for i in range(1, rows + 1):
        time.sleep(0.01)  # stands for the real work of importing one row
        if tb and i % 10 == 0:
            tb.update(value=i, value_max=rows)
    return rows


@shared_task(base=Task)
def charge_card(amount_cents: int) -> None:
    """A failure: the exception is recorded on the task."""
    raise ValueError(f"card declined for {amount_cents / 100:.2f} EUR")


@shared_task(bind=True, base=Task, max_retries=3)
def sync_inventory(self) -> str:
    """Fails twice, then succeeds: one Task Badger task, ending in success."""
    if self.request.retries < 2:
        raise self.retry(exc=ConnectionError("warehouse API timed out"), countdown=0.2)
    return "inventory synced"


@shared_task(base=Task)
def nightly_report() -> str:
    """Monitored through settings (TASKBADGER["MONITORS"]) and run by celery beat."""
    return "report sent"


@shared_task(bind=True, base=Task)
def rebuild_search_index(self, shards: int) -> int:
    """Spawns subtasks: they appear as its children."""
    queue = (self.request.delivery_info or {}).get("routing_key")
    for shard in range(shards):
        index_shard.apply_async((shard,), queue=queue)
    return shards


@shared_task(base=Task)
def index_shard(shard: int) -> int:
    time.sleep(0.1)  # stands for indexing one shard
    return shard


@shared_task(bind=True, base=Task, taskbadger_heartbeat_interval=1)
def export_archive(self, seconds: int) -> None:
    """A long task the demo revokes while it runs."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(0.1)  # stands for writing the archive
    except SoftTimeLimitExceeded:
        pass


try:
    from django.tasks import task  # Django 6: Django's own tasks framework
except ImportError:
    from django_tasks import task  # Django 5.2: the backport


@task
def send_receipt(order_id: int) -> str:
    """A django.tasks task, next to the Celery ones: tracked from settings with no code (the test project's
    default backend, ImmediateBackend, runs it in the process that enqueues it)."""
    tb = taskbadger.current_task()
    if tb:
        tb.update(value=1, value_max=1)
    return f"receipt for order {order_id}"
