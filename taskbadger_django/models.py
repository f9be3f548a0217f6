"""The one table of the app: the Task Badger id of each tracked ``django.tasks`` task, from the
process that enqueues it to the worker that runs it (``carried``). See docs/django-tasks.md."""

from __future__ import annotations

from django.db import models


class CarriedTask(models.Model):
    """One tracked ``django.tasks`` task between its enqueue and its end (a succeeded one ten minutes longer, a
    failed one a day)."""

    result_id = models.CharField(max_length=64, primary_key=True)  # TaskResult.id
    state = models.CharField(max_length=8)  # creating | created | maybe | left | done
    # lifecycle.Meta.to_dict() as JSON text, checked where it is read (a text column: no JSON support asked of
    # the database, nor a connection at check time)
    meta = models.TextField(null=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True)

    class Meta:
        verbose_name = "carried Task Badger task id"

    def __str__(self) -> str:
        return f"{self.result_id} ({self.state})"
