"""The id channel through the project's database (``taskbadger_django.carried``): claim once, read what was
written, keep a failed task's row a while, purge old rows; and a database error (the table not migrated)
never reaches the user's enqueue, nor breaks the user's transaction."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection, transaction
from django.utils import timezone

from taskbadger.django_tasks import CREATED, CREATING, DONE, Entry
from taskbadger_django.carried import DONE_RETENTION, MAX_AGE, DatabaseChannel
from taskbadger_django.models import CarriedTask

META = {"task": {"id": "abc123", "name": "billing.tasks.nightly_invoices"}, "heartbeat_interval": None}


@pytest.mark.django_db
def test_claimed_once_read_back_and_cleared():
    channel = DatabaseChannel()
    assert channel.claim("r-1") is True
    assert channel.claim("r-1") is False  # whoever comes second creates nothing
    assert channel.get("r-1") == Entry(CREATING)
    channel.put("r-1", CREATED, META)
    assert channel.get("r-1") == Entry(CREATED, META)
    channel.finished("r-1", failed=True)  # kept: a requeue runs the same TaskResult again
    assert CarriedTask.objects.get(pk="r-1").finished_at is not None
    channel.put("r-2", CREATED, META)
    channel.finished("r-2", failed=False)
    # kept a while: an enqueue whose signal comes after a fast worker ran its job finds it claimed (a second task
    # was created: the enqueue's claim came after the row was deleted)
    assert channel.get("r-2") == Entry(DONE)
    assert channel.claim("r-2") is False
    CarriedTask.objects.filter(pk="r-2").update(finished_at=timezone.now() - DONE_RETENTION - dt.timedelta(minutes=1))
    channel._next_purge = 0.0
    channel.claim("another")
    assert channel.get("r-2") is None


@pytest.mark.django_db
def test_old_rows_are_purged():
    channel = DatabaseChannel()
    channel.put("old", CREATED, META)
    channel.put("new", CREATED, META)
    CarriedTask.objects.filter(pk="old").update(created_at=timezone.now() - MAX_AGE - dt.timedelta(hours=1))
    channel._next_purge = 0.0
    channel.claim("another")
    assert set(CarriedTask.objects.values_list("pk", flat=True)) == {"new", "another"}


@pytest.mark.django_db(transaction=True)
def test_a_missing_table_is_logged_and_leaves_the_users_transaction_usable(caplog):
    caplog.set_level(logging.WARNING, logger="taskbadger")
    with connection.schema_editor() as editor:
        editor.delete_model(CarriedTask)  # as before `manage.py migrate`
    try:
        channel = DatabaseChannel()
        with transaction.atomic():
            count = ContentType.objects.count()
            assert channel.claim("r-3") is False
            assert channel.get("r-3") is None
            assert ContentType.objects.count() == count  # the transaction still works
        assert "manage.py migrate taskbadger_django" in caplog.text
    finally:
        with connection.schema_editor() as editor:
            editor.create_model(CarriedTask)
