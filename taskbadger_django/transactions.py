"""Whether the user's transaction that enqueued a job rolled back: then the job never runs, and its task,
created at the enqueue, would stay ``pending`` for ever.

Django has no hook for a rollback, but it drops what ``on_commit`` was given without calling it: a commit calls
``_Commit``, a rollback only frees it. Django also drops the hooks after one that raised on a commit, so a
hook dropped uncalled is confirmed by looking for the job's row from a connection of our own (this thread's
may be in the middle of the rollback): a committed job is there.

Used by the ``django.tasks`` channel (``carried.DatabaseChannel``) and for Procrastinate jobs deferred through
Django's connection (``procrastinate.contrib.django``).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connections, router, transaction

from taskbadger._runtime import log_throttled, short

log = logging.getLogger("taskbadger")


class _Commit:
    """Given to ``transaction.on_commit``: records that the transaction committed."""

    __slots__ = ("done", "__weakref__")

    def __init__(self) -> None:
        self.done: list[bool] = []

    def __call__(self) -> None:
        self.done.append(True)


#: A row written in the transaction: (table, column, value as the database stores it).
Row = tuple[str, str, Any]


def if_rolled_back(alias: str, rows: Sequence[Row], callback: Callable[[], None]) -> None:
    """Call ``callback()`` if the transaction open on database ``alias`` rolls back and takes ``rows`` with it
    (none of them is there; give one that outlives the job when there is one: the job may have run and its
    worker removed another before the look). Nothing when no transaction is open (autocommit: nothing to roll
    back)."""
    if not transaction.get_connection(alias).in_atomic_block:
        return
    commit = _Commit()

    def confirm() -> None:
        if not _any_row_exists(alias, rows):
            callback()

    weakref.finalize(commit, _unless_called, commit.done, confirm).atexit = False
    transaction.on_commit(commit, using=alias)


def _unless_called(done: list[bool], confirm: Callable[[], None]) -> None:
    if done:
        return
    try:
        confirm()
    except Exception:  # called while Django rolls back: never let it fail there
        log.exception("Task Badger: could not record that an enqueue was rolled back")


def model_row(model: Any, key: Any) -> Row | None:
    """The ``Row`` of ``model`` whose primary key is ``key`` (None when ``key`` cannot be one)."""
    pk = model._meta.pk
    try:
        value = pk.get_db_prep_value(key, connections[router.db_for_write(model)])
    except (ValidationError, ValueError, TypeError):
        return None
    return model._meta.db_table, pk.column, value


def _any_row_exists(alias: str, rows: Sequence[Row]) -> bool:
    """Whether any of the rows is in the database, as a connection of our own sees it. True when it cannot tell:
    closing a task whose job runs is worse than leaving one ``pending``."""
    wrapper = connections.create_connection(alias)
    try:
        quote = wrapper.ops.quote_name
        with wrapper.cursor() as cursor:
            for table, column, key in rows:
                cursor.execute(f"SELECT 1 FROM {quote(table)} WHERE {quote(column)} = %s", [key])
                if cursor.fetchone() is not None:
                    return True
            return False
    except Exception as err:
        log_throttled("rollback-check", 60.0, logging.WARNING,
                      "Task Badger: could not tell whether an enqueue was rolled back (%s)", short(err, 200))
        return True
    finally:
        wrapper.close()
