"""What the publisher tells the result backend, and what the result backend tells a progress bar (``ended_in_backend``).

What the publisher tells it: ``{"taskbadger_task_id": ...}`` as the ``PENDING`` state of the
Celery id, so that ``task_id_of_result(app.AsyncResult(celery_id))`` finds the Task Badger task in any process
(``state.task_id_of_result`` reads it back) until the worker records its own state over it. For a task published
tracked whose create failed at publish (its worker creates it when it starts, with the Celery id as its
``external_id``), ``{"taskbadger_created_by_worker": true}`` instead (``tell_left_to_worker``): a progress bar drawn in
another process (the page a POST redirected to, given only the Celery id) follows it by that id
(``state.follow_result``), where nothing told it the task was tracked at all and its bar said progress was not
available for good. Both are written the same way, by the rules below.

With django-celery-results (``CELERY_RESULT_BACKEND = "django-db"``) the backend writes through the publishing
thread's own Django connection, and a ``.delay()`` inside ``transaction.atomic()`` (or with ``ATOMIC_REQUESTS``)
wrote the ``TaskResult`` row inside the user's transaction, before the message left. The worker, on its own
connection, inserts the same ``task_id`` (unique) when it stores ``STARTED`` or ``SUCCESS``, and waited on the
uncommitted row until the request's transaction ended: a worker slot held for the rest of the request (the body
itself held back under ``task_track_started``), an ``AsyncResult.get()`` in the request waiting for a worker that
waited for the request (a timeout, or for ever), and on SQLite, whose writers lock the whole database, a task ended
``FAILURE`` with ``OperationalError: database is locked`` after 15 s though its body returned. Celery alone writes
nothing at publish, and none of that happened without Task Badger.

So for that backend the row is written when the transaction commits (``on_commit``; at once in autocommit): no
other process could see it earlier anyway, and the process that published the task knows its id without it
(``state.published``). It is one ``INSERT`` that never overwrites a row that is there (``ON CONFLICT DO NOTHING``):
by the commit the worker may have stored the task's state, which a ``PENDING`` written after it would hide (the
user's ``AsyncResult.get()`` would wait for a task that has ended). Never overwriting, it is written once the
message has left (``after_task_publish``, ``message_sent``), not before: a message the broker did not take (the
publish raised, the Task Badger task is cancelled) left a ``PENDING`` row of a Celery id nobody was given, holding
our id, in the admin until the results expire. A rolled back transaction writes nothing, as Celery alone. One
``INSERT`` where the backend's own ``store_result`` made a ``SELECT`` then a savepoint around an ``INSERT``.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

from .._runtime import log_throttled, on_an_event_loop, short
from .fields import active_apps
from .headers import ID_KEY, LEFT_KEY

log = logging.getLogger("taskbadger")


def tell_result_backend(app: Any, celery_id: str, task_id: str) -> None:
    """As the official SDK: with a result backend (``app``'s, the app publishing the task),
    ``AsyncResult(celery_id).info`` is ``{"taskbadger_task_id": ...}`` until the worker records its own state, so
    that another process finds the Task Badger task from the Celery id. Without a backend, nothing (none is needed).
    Nor for the ``rpc://`` backend: its states are messages to the reply queue of the process that published the
    task, which has the id already; asked without a request, it addresses the state to the caller of the task
    running here (the child's ``PENDING`` reached the parent's caller as the parent's own state), and in a process
    running none it raises. The caller leaves out a task that ignores its result: its user asked for no writes to
    the backend (the official SDK writes anyway, a backend round trip on every ``.delay()``)."""
    _tell(app, celery_id, {ID_KEY: task_id})


def tell_left_to_worker(app: Any, celery_id: str) -> None:
    """``{"taskbadger_created_by_worker": true}`` as the ``PENDING`` state of ``celery_id``, a task published tracked
    whose Task Badger task its worker creates when it starts (its create failed at publish, or did not fit in its
    group's publish budget): so that a progress bar drawn in another process from ``app.AsyncResult(celery_id)``
    follows it by its Celery id (its ``external_id``) until it exists, as one drawn in this process does
    (``state.left_to_worker``). Written as ``tell_result_backend`` writes the id, under the same conditions."""
    _tell(app, celery_id, {LEFT_KEY: True})


def _tell(app: Any, celery_id: str, info: dict[str, Any]) -> None:
    from celery.backends.base import DisabledBackend
    from celery.backends.rpc import RPCBackend

    try:
        backend = app.backend
        if isinstance(backend, (DisabledBackend, RPCBackend)):
            return
        if _is_django_database(backend):
            _tell_django_database(backend, celery_id, info)
        else:
            backend.store_result(celery_id, info, "PENDING")
    except Exception as err:  # the backend's trouble must not stop the publish
        _could_not(err)


def _could_not(err: BaseException) -> None:
    log_throttled("result-backend", 60.0, logging.WARNING,
                  "Task Badger: could not store the task id in the result backend: %s", short(err, 200))


def _is_django_database(backend: Any) -> bool:
    """Whether ``backend`` is django-celery-results' database backend (``django-db``): imported already when it is."""
    module = sys.modules.get("django_celery_results.backends.database")
    return module is not None and isinstance(backend, module.DatabaseBackend)


def _tell_django_database(backend: Any, celery_id: str, info: dict[str, Any]) -> None:
    """The ``PENDING`` row of ``celery_id``, written once its message has left (``message_sent``) when the
    transaction open on its database commits (at once in autocommit), and only if no row of that id is there by
    then (see the module's docstring)."""
    from django.db import router, transaction

    if on_an_event_loop():
        # an async view's .delay(): Django refuses a query here (SynchronousOnlyOperation), and Celery alone writes
        # nothing at publish, so the publish is left as it is; said once, with what to do
        log_throttled("result-backend-loop", float("inf"), logging.WARNING,
                      "Task Badger: a task was published on an event loop (an async view): Django makes no query "
                      "there, so its Task Badger id is not stored in the result backend, and task_id_of_result() "
                      "finds it only in this process. To store it, publish with "
                      "await sync_to_async(task.delay)(...)")
        return
    model = backend.TaskModel
    alias = router.db_for_write(model)
    content_type, content_encoding, result = backend.encode_content(info)
    _, _, meta = backend.encode_content({"children": []})  # as the backend's own store of a state with none
    row = model(task_id=celery_id, status="PENDING", result=result, content_type=content_type,
                content_encoding=content_encoding, meta=meta)

    def write() -> None:
        try:
            manager = model._default_manager.using(alias)
            if transaction.get_connection(alias).features.supports_ignore_conflicts:
                manager.bulk_create([row], ignore_conflicts=True)
            else:  # Oracle: the same, in two statements
                manager.get_or_create(task_id=celery_id, defaults={
                    "status": row.status, "result": row.result, "content_type": row.content_type,
                    "content_encoding": row.content_encoding, "meta": row.meta})
        except Exception as err:  # after the user's commit: nothing of it may fail
            _could_not(err)

    def when_sent() -> None:
        connection = transaction.get_connection(alias)
        if connection.in_atomic_block:
            transaction.on_commit(write, using=alias)
        elif connection.get_autocommit():
            write()
        else:
            # manual transactions (``set_autocommit(False)``, no ``atomic()``): there is no commit to wait for
            # (``on_commit`` refuses), and the row written now sits in the user's open transaction, where the worker
            # waits on it until the user commits (SQLite: "database is locked"). So none, as Celery alone; this
            # process knows the id (``state.published``)
            log_throttled("result-backend-manual", float("inf"), logging.WARNING,
                          "Task Badger: a task was published with autocommit off on database %r (manual transactions): "
                          "its Task Badger id is not stored in the result backend, so task_id_of_result() finds it "
                          "only in this process. Publish inside transaction.atomic() to have it stored at the commit",
                          alias)

    _unsent.waiting = (celery_id, when_sent)


class _Unsent(threading.local):
    #: What to do once the message of this Celery id has left: Celery publishes one message at a time in a
    #: thread, between its ``before_task_publish`` and ``after_task_publish``, so one is enough; one left by a
    #: publish that failed is replaced by the next.
    waiting: tuple[str, Callable[[], None]] | None = None


_unsent = _Unsent()


def message_sent(celery_id: Any) -> None:
    """The message of ``celery_id`` has left (``after_task_publish``): write what waited for it, if anything."""
    waiting = _unsent.waiting
    if waiting is None:
        return
    _unsent.waiting = None
    if waiting[0] == celery_id:
        try:
            waiting[1]()
        except Exception as err:
            _could_not(err)


def ended_in_backend(celery_id: str) -> bool:
    """Whether a result backend of this process's Celery apps says the task of ``celery_id`` has ended (``SUCCESS``,
    ``FAILURE``, ``REVOKED``): the current app's, and each other app's that has one. Celery's current app is per
    thread: in a web server's request threads (``runserver``, gunicorn's ``gthread``) it is Celery's fallback app,
    without a backend, while the project's app, made current in the thread that imported it, is among the active
    ones. False when none can tell: no backend, ``rpc://`` (its states are messages to the publisher's own reply
    queue, which another process must not consume), a task that ignores its result (``PENDING`` for ever), a backend
    that fails."""
    import celery

    asked: set[str] = set()
    for app in [celery.current_app._get_current_object(), *active_apps()]:
        try:
            if _backend_says_ended(app, celery_id, asked):
                return True
        except Exception as err:  # the backend's trouble is not the page's: the search goes on
            log_throttled("progress-backend", 60.0, logging.WARNING,
                          "Task Badger: could not read a task's state from the result backend: %s", short(err, 200))
    return False


def _backend_says_ended(app: Any, celery_id: str, asked: set[str]) -> bool:
    from celery import states
    from celery.backends.base import DisabledBackend
    from celery.backends.rpc import RPCBackend

    if not app.conf.result_backend:  # not app.backend: that would make a backend for an app that has none
        return False
    backend = app.backend
    uri = backend.as_uri()
    if isinstance(backend, (DisabledBackend, RPCBackend)) or uri in asked:
        return False
    asked.add(uri)
    meta = backend.get_task_meta(celery_id)
    return isinstance(meta, dict) and meta.get("status") in states.READY_STATES
