"""The web process's side, as a view with ``ATOMIC_REQUESTS`` would do it: ``python -m
tests.celery_django_project.publish SCENARIO ARG`` prints what it saw as one JSON line.

* ``in_transaction QUEUE``: ``add.delay(2, 3)`` inside ``transaction.atomic()``, then, the transaction still open,
  waits (with a deadline) until the worker's ``SUCCESS`` row is visible from another connection, as a request that
  goes on with its work; then commits and gets the result.
* ``autocommit_off QUEUE``: the same with ``transaction.set_autocommit(False)`` (manual transactions).
* ``on_event_loop QUEUE``: a publish in an async view (a queue no worker takes); what the logger said.
* ``not_run QUEUE`` (a queue no worker takes): a publish in a transaction that commits, one in a transaction that
  rolls back, one in autocommit; the rows other connections see.
* ``refused -``: a publish the broker refuses (nothing listens on its port), in autocommit; the rows it left.
* ``lookup CELERY_ID``: ``task_id_of_result(app.AsyncResult(celery_id))`` in a process that did not publish it.
* ``follow CELERY_ID``: what a progress bar drawn in a process that did not publish it follows
  (``follow_result(app.AsyncResult(celery_id))``: the Task Badger id, or the Celery id of a task its worker creates).
"""

import json
import sys
import time

from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from taskbadger.celery import task_id_of_result
from taskbadger.celery.state import follow_result

from .app import add, app

DEADLINE = 20.0


def row(celery_id):
    """The row of ``celery_id`` as another connection (the worker's, another web process's) sees it."""
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT status, result FROM django_celery_results_taskresult WHERE task_id = %s",
                           [celery_id])
            found = cursor.fetchone()
            return list(found) if found else None
    finally:
        other.close()


def in_transaction(queue):
    out = {}
    with CaptureQueriesContext(connection) as request:
        with transaction.atomic():
            result = publish_and_wait(queue, out)
            mark = len(request.captured_queries)
        out["commit_queries"] = [q["sql"] for q in request.captured_queries[mark:]]
    ended(result, out)
    out["celery_id"], out["tb_id"] = result.id, result.taskbadger_task_id
    return out


def publish_and_wait(queue, out):
    """``add.delay(2, 3)``, its queries (``publish_queries``), then, with a deadline, the worker's ``SUCCESS`` row as
    another connection sees it (``seen_while_open``)."""
    with CaptureQueriesContext(connection) as publishing:
        result = add.apply_async((2, 3), queue=queue)
    out["publish_queries"] = [q["sql"] for q in publishing.captured_queries]
    deadline = time.monotonic() + DEADLINE
    seen = row(result.id)
    while (seen is None or seen[0] != "SUCCESS") and time.monotonic() < deadline:
        time.sleep(0.05)  # polling another connection for the worker's row, under a deadline
        seen = row(result.id)
    out["seen_while_open"] = seen
    return result


def ended(result, out):
    """What ``.get()`` gave (``get``) and the row at the end (``row``)."""
    try:
        out["get"] = result.get(timeout=DEADLINE)
    except Exception as err:  # the task's own exception, or the time out
        out["get"] = repr(err)
    out["row"] = row(result.id)


def autocommit_off(queue):
    """As ``in_transaction``, in manual transaction management (``transaction.set_autocommit(False)``, no
    ``atomic()``): the publish, then the worker's row awaited while the transaction is open; the commit, the
    result."""
    out = {}
    transaction.set_autocommit(False)
    try:
        result = publish_and_wait(queue, out)
        transaction.commit()
    finally:
        transaction.set_autocommit(True)
    ended(result, out)
    return out


def on_event_loop(queue):
    """``add.delay()`` in an async view (on an event loop), to a queue nobody takes: the Task Badger id, the row,
    and what the taskbadger logger said."""
    import asyncio
    import logging

    said = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("taskbadger").addHandler(handler)

    async def view():
        return add.apply_async((1, 1), queue=queue)

    result = asyncio.run(view())
    return {"tb_id": result.taskbadger_task_id, "row": row(result.id), "said": said}


def not_run(queue):
    out = {}
    with transaction.atomic():
        committed = add.apply_async((1, 1), queue=queue)
        out["row_while_open"] = row(committed.id)
    out["committed"] = [committed.id, committed.taskbadger_task_id, row(committed.id)]
    try:
        with transaction.atomic():
            rolled_back = add.apply_async((1, 1), queue=queue)
            raise RuntimeError("the view failed")
    except RuntimeError:
        pass
    out["rolled_back"] = [rolled_back.id, rolled_back.taskbadger_task_id, row(rolled_back.id)]
    with CaptureQueriesContext(connection) as publishing:
        autocommit = add.apply_async((1, 1), queue=queue)
    out["autocommit"] = [autocommit.id, autocommit.taskbadger_task_id, row(autocommit.id)]
    out["autocommit_queries"] = [q["sql"] for q in publishing.captured_queries]
    return out


def refused(_):
    from django_celery_results.models import TaskResult

    app.conf.broker_url, app.conf.broker_transport = "redis://127.0.0.1:1/0", None  # refused on loopback
    before = set(TaskResult.objects.values_list("task_id", flat=True))
    try:
        add.apply_async((1, 1), retry=False)
    except Exception as err:
        raised = type(err).__name__
    else:
        raised = None
    return {"raised": raised, "rows": list(TaskResult.objects.exclude(task_id__in=before).values_list(
        "status", "result"))}


def lookup(celery_id):
    return {"tb_id": task_id_of_result(app.AsyncResult(celery_id))}


def follow(celery_id):
    return {"follow": list(follow_result(app.AsyncResult(celery_id)))}


if __name__ == "__main__":
    scenario, arg = sys.argv[1:3]
    print(json.dumps({"in_transaction": in_transaction, "autocommit_off": autocommit_off,
                      "on_event_loop": on_event_loop, "not_run": not_run,
                      "refused": refused, "lookup": lookup, "follow": follow}[scenario](arg)))
