"""The channel of ``django.tasks`` tasks through the project's database (``CarriedTask``): the one thing
a web process and its workers always share (a new project's cache is per process).

Costs per tracked ``enqueue()``: one INSERT (the claim) and one UPDATE (the created task), by primary
key. The worker reads the row by primary key and marks it ``DONE`` when the task succeeds, kept ``DONE_RETENTION``
(an enqueue whose signal comes after a fast worker ran the job finds it claimed, and creates no second task); a
failed task's row is kept ``FAILED_RETENTION`` (a requeue of the same ``TaskResult`` runs again as the same task),
and rows older than ``MAX_AGE`` (tasks that never ran; not those whose job the database backend still holds
waiting to run) are purged, at most once per ``PURGE_EVERY``
per process that enqueues or runs tracked tasks. Every query is guarded: a database error never reaches
the user's ``enqueue()`` or task (it runs untracked, or its worker creates its task), and inside the
user's transaction each query is in a savepoint, so that a failure does not break that transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from django.core.exceptions import ValidationError
from django.db import IntegrityError, OperationalError, router, transaction
from django.utils import timezone

from taskbadger._runtime import log_throttled, short
from taskbadger.django_tasks.channel import CREATING, DONE, Entry

from . import transactions

log = logging.getLogger("taskbadger")
T = TypeVar("T")

FAILED_RETENTION = dt.timedelta(days=1)
DONE_RETENTION = dt.timedelta(minutes=10)
MAX_AGE = dt.timedelta(days=30)
PURGE_EVERY = 600.0
#: Old entries looked up at a time in the database backend's table when they are purged.
PURGE_CHUNK = 500


def _task_result_model() -> Any:
    """The database backend's model of a task result (``django_tasks_db``), when it is installed."""
    from django.apps import apps

    for config in apps.get_app_configs():
        if config.name == "django_tasks_db":
            try:
                return config.get_model("DBTaskResult")
            except LookupError:
                return None
    return None


def _purge_old(model: Any, before: dt.datetime) -> None:
    """Delete the entries written before ``before`` (tasks that never ran), but those whose job the database
    backend still holds waiting to run (``run_after`` far ahead, or a long queue): it runs as its task."""
    alias = router.db_for_write(model)  # read where it is written (not a replica that lags): see DatabaseChannel.get
    old = model.objects.using(alias).filter(created_at__lt=before)
    result_model = _task_result_model()
    if result_model is None or router.db_for_write(result_model) != alias:
        old.delete()
        return
    result_ids = list(old.values_list("result_id", flat=True))
    for start in range(0, len(result_ids), PURGE_CHUNK):
        chunk = result_ids[start:start + PURGE_CHUNK]
        keys: dict[Any, str] = {}
        for result_id in chunk:
            try:
                keys[result_model._meta.pk.to_python(result_id)] = result_id
            except ValidationError:
                continue  # not one of the backend's ids
        waiting = {keys[pk] for pk in result_model.objects.using(alias).filter(pk__in=list(keys), status="READY")
                   .values_list("pk", flat=True) if pk in keys}
        gone = [result_id for result_id in chunk if result_id not in waiting]
        model.objects.using(alias).filter(pk__in=gone).delete()


def _claim_wait() -> float:
    from taskbadger.django_tasks.events import claim_wait

    return claim_wait()


@contextmanager
def _lock_wait(alias: str, seconds: float) -> Iterator[None]:
    """Outside any transaction, on PostgreSQL: the query in the block waits at most ``seconds`` for a lock (a row
    another transaction has written and not committed), in a short transaction of its own (SQLite's busy timeout
    bounds it there). Inside a transaction (the user's), nothing changes: ``SET LOCAL`` in a savepoint would last
    until that transaction ends."""
    connection = transaction.get_connection(alias)
    if connection.in_atomic_block or connection.vendor != "postgresql":
        yield
        return
    with transaction.atomic(using=alias):
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{max(1, round(seconds * 1000))}ms"])
        yield


def _locked(err: BaseException) -> bool:
    """Whether a database error is a lock that was waited for in vain: PostgreSQL's ``lock_timeout``, SQLite's
    "database is locked" (another connection's transaction holds its write lock)."""
    if not isinstance(err, OperationalError):
        return False
    cause = err.__cause__
    code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    return code == "55P03" or "database is locked" in str(err)


class DatabaseChannel:
    """``taskbadger.django_tasks.Channel`` on the ``CarriedTask`` table."""

    def __init__(self) -> None:
        self._next_purge = 0.0

    @staticmethod
    def _model() -> Any:
        from .models import CarriedTask

        return CarriedTask

    @contextmanager
    def _guarded(self, what: str) -> Iterator[None]:
        model = self._model()
        alias = router.db_for_write(model)
        if transaction.get_connection(alias).in_atomic_block:
            with transaction.atomic(using=alias):  # a savepoint: a failure leaves the user's transaction usable
                yield
        else:
            yield

    def _run(self, what: str, query: Callable[[], T], failed: T) -> T:
        try:
            with self._guarded(what):
                return query()
        except IntegrityError:
            raise
        except Exception as err:
            self._report(what, err)
            return failed

    @staticmethod
    def _report(what: str, err: Exception) -> None:
        if _locked(err):  # not a missing table: another transaction holds the entry (or SQLite's database)
            log.info("Task Badger: could not %s the django.tasks entry: a transaction still open holds it (%s)",
                     what, short(err, 200))
            return
        log_throttled(f"django-tasks-channel:{what}", 60.0, logging.WARNING,
                      "Task Badger: could not %s the django.tasks entry (%s); run `manage.py migrate "
                      "taskbadger_django` if the table is missing", what, short(err, 200))

    def claim(self, result_id: str) -> bool:
        def insert() -> bool:
            self._model().objects.create(result_id=result_id, state=CREATING)
            return True

        try:
            return self._run("write", insert, False)
        except IntegrityError:
            return False
        finally:
            self._purge()  # here too: rows a worker that tracks nothing would never clear

    def claim_waiting(self, result_id: str, wait: float) -> bool | None:
        """``claim``, by a worker that starts the job: an entry that another transaction has written and not
        committed (an enqueue inside ``transaction.atomic()`` whose transaction goes on) is waited for at most
        ``wait`` seconds, not until that transaction ends. None when it still holds the entry then: not claimed,
        and the entry cannot be read (its creator's create has answered by then: its task can be looked up)."""
        model = self._model()
        held = False
        try:
            with self._guarded("write"), _lock_wait(router.db_for_write(model), wait):
                model.objects.create(result_id=result_id, state=CREATING)
            return True
        except IntegrityError:
            return False
        except Exception as err:
            if not _locked(err):
                self._report("write", err)
                return False
            log.info("Task Badger: the django.tasks entry of %s is held by the transaction that enqueued it, still "
                     "open: its task is looked up (%s)", result_id, short(err, 200))
            held = True
            return None
        finally:
            if not held:  # (SQLite's lock is on the whole database: the purge would wait on it again)
                self._purge()

    def put(self, result_id: str, state: str, meta: Any = None) -> None:
        model = self._model()

        def update() -> None:
            text = None if meta is None else json.dumps(meta, default=str)
            if not model.objects.filter(pk=result_id).update(state=state, meta=text):
                # an UPDATE never waits on a row that another transaction has not committed; an INSERT of it does
                with _lock_wait(router.db_for_write(model), _claim_wait()):
                    model.objects.create(result_id=result_id, state=state, meta=text)

        try:
            self._run("write", update, None)
        except IntegrityError:
            pass

    def if_rolled_back(self, result_id: str, callback: Callable[[], None], database_job: bool = False) -> None:
        """Call ``callback()`` if the transaction that enqueued ``result_id`` rolls back and takes its job with it:
        the job never runs. A committed entry stays until its task succeeds; the callback closes only a task still
        ``pending``.

        ``database_job``: the job is a row of the database backend's table (``django_tasks_db``), which may be on
        another database than this entry (a router): the transaction watched is the one on the job's database, as
        the job goes or stays with it (this entry may commit, or go, apart from it). Otherwise the entry's."""
        model = self._model()
        alias = router.db_for_write(model)
        # The database backend's own row of the task outlives the job (this entry goes once it succeeded): a job
        # that ran before the look, which Django can make late, is not taken for a rollback.
        result_model = _task_result_model()
        if database_job and result_model is not None:
            job_alias = router.db_for_write(result_model)
            models = [result_model] + ([model] if job_alias == alias else [])
            alias = job_alias
        else:
            models = [result_model] if result_model is not None and router.db_for_write(result_model) == alias else []
            models.append(model)
        rows = [row for row in (transactions.model_row(m, result_id) for m in models) if row is not None]
        transactions.if_rolled_back(alias, rows, callback)

    def apart_from_jobs(self) -> bool:
        """Whether the entries are on another database than the database backend's jobs (a router): an entry then
        rolls back with its transaction while its job, committed on the other database, runs."""
        result_model = _task_result_model()
        try:
            return result_model is not None and router.db_for_write(result_model) != router.db_for_write(self._model())
        except Exception as err:  # a router that fails: look the task up, as when apart
            log_throttled("django-tasks-channel:router", 60.0, logging.WARNING,
                          "Task Badger: could not tell the database of the django.tasks entries (%s)", short(err, 200))
            return True

    def release(self) -> None:
        """Close this process's connection to the entries' database, unless a transaction is open on it: an RQ
        worker's main process forks a work horse per job, which must not inherit it (``django_rq`` closes the
        connections once, before the worker starts). The next query opens one again."""
        def close() -> None:
            connection = transaction.get_connection(router.db_for_write(self._model()))
            if not connection.in_atomic_block:
                connection.close()

        try:
            close()
        except Exception as err:
            log.debug("Task Badger: could not close the django.tasks entries' connection: %s", err)

    def get(self, result_id: str) -> Entry | None:
        model = self._model()

        def read() -> Entry | None:
            # From the database it is written to, not the router's database for reads: a replica that lags behind
            # the publisher's write would show no entry, and the worker would create a second task.
            alias = router.db_for_write(model)
            row = model.objects.using(alias).filter(pk=result_id).values_list("state", "meta").first()
            if row is None:
                return None
            try:
                meta = json.loads(row[1]) if row[1] else None
            except ValueError:
                meta = None  # written by someone else: parse_meta reports what is unusable
            return Entry(row[0], meta)

        return self._swallow("read", read)

    def finished(self, result_id: str, failed: bool) -> None:
        model = self._model()
        if failed:
            self._swallow("write", lambda: model.objects.filter(pk=result_id).update(finished_at=timezone.now()))
        else:
            self._swallow("write", lambda: model.objects.filter(pk=result_id).update(
                state=DONE, meta=None, finished_at=timezone.now()))
        self._purge()

    def discard(self, result_id: str) -> None:
        model = self._model()
        self._swallow("delete", lambda: model.objects.filter(pk=result_id).delete())

    def _purge(self) -> None:
        if time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + PURGE_EVERY
        model = self._model()
        now = timezone.now()

        def purge() -> None:
            model.objects.filter(state=DONE, finished_at__lt=now - DONE_RETENTION).delete()
            model.objects.filter(finished_at__lt=now - FAILED_RETENTION).delete()
            _purge_old(model, now - MAX_AGE)

        self._swallow("purge", purge)

    def _swallow(self, what: str, query: Callable[[], T]) -> T | None:
        try:
            return self._run(what, query, None)
        except IntegrityError:
            return None
