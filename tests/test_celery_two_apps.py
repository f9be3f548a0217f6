"""Two Celery apps in one process: a message is tracked as a task of the app that publishes it, not of the app that
happens to be current in the publishing thread (a library's own app, a second project app, ``app.set_current()``)."""

import tempfile
import uuid

import pytest
from celery import Celery, chain, group

from taskbadger.celery import task_id_of_result

from .celery_project import app as tasks

pytestmark = pytest.mark.integration
NAME = "tests.celery_project.app."


def created_at_publish(server):
    """The Celery ids of the tasks created before their message went out (a worker creates a task it runs as
    ``processing``)."""
    return {r.json["external_id"] for r in server.requests if r.method == "POST" and r.json["status"] == "pending"}


def test_tasks_of_an_app_that_is_not_current_are_tracked_from_their_publish(taskbadger_server, solo_worker,
                                                                           memory_app):
    # memory_app: another app is current in this thread. The tasks published are the test app's (base=Task), to
    # the real worker of that app; each was looked up in the current app's registry, was not found there, and went
    # out untracked without a word (the worker then created it as it started: nothing to show while it was queued).
    from celery import current_app

    assert current_app._get_current_object() is memory_app and NAME + "add_here" not in memory_app.tasks
    queue = solo_worker.queue
    single = tasks.add_here.apply_async((1, 1), queue=queue)
    grouped = group(tasks.add_here.si(i, i).set(queue=queue) for i in range(2, 4)).apply_async()
    chained = chain(tasks.add_here.si(4, 4).set(queue=queue), tasks.add_here.si(5, 5).set(queue=queue)).apply_async()
    sent = tasks.app.send_task(NAME + "add_here", (6, 6), queue=queue)
    # a reply_to of its own: the message no longer names the app that publishes it
    replying = tasks.add_here.apply_async((7, 7), queue=queue, reply_to=f"replies-{uuid.uuid4().hex}")
    first_link = chained.parent.id
    published_here = [single.id, *(r.id for r in grouped.results), first_link, sent.id, replying.id]

    # (the chain's second link is published by the worker, when the first has run: maybe already)
    assert created_at_publish(taskbadger_server) - {chained.id} == set(published_here)
    assert single.taskbadger_task_id is not None
    assert all(task_id_of_result(tasks.app.AsyncResult(celery_id)) for celery_id in published_here)

    def ended():  # polls the stand-in under a deadline
        found = [t for t in taskbadger_server.tasks_named(NAME + "add_here") if t["status"] == "success"]
        return found if len(found) >= 7 else None

    found = taskbadger_server.wait_for(ended, timeout=30)
    assert sorted(t["external_id"] for t in found) == sorted([*published_here, chained.id])  # one task per task


def test_the_task_id_goes_to_the_result_backend_of_the_app_that_publishes_the_task(taskbadger_server, solo_worker,
                                                                                  memory_app):
    # The current app has a task of the same name (a shared task has a copy in every app), and a result backend of
    # its own: the Celery id -> Task Badger id went to that backend, and AsyncResult(celery_id) of the app that
    # published the task, in another process (the page the POST redirected to), did not find it.
    from taskbadger.celery import Task

    memory_app.conf.result_backend = "cache+memory://"
    publisher = Celery("publisher", broker=tasks.app.conf.broker_url, set_as_current=False,
                       backend="file://" + tempfile.mkdtemp(prefix="tbresults-publisher-"))
    publisher.conf.broker_transport_options = tasks.app.conf.broker_transport_options
    publisher.conf.broker_transport = tasks.app.conf.broker_transport

    def add(x, y):
        return x + y

    published = publisher.task(add, base=Task, shared=False, name=NAME + "add_here")
    copy = memory_app.task(add, base=Task, shared=False, name=NAME + "add_here")
    assert published.app is publisher and copy.app is memory_app

    result = published.apply_async((1, 1), queue=solo_worker.queue)

    stored = publisher.backend.get_task_meta(result.id)
    assert (stored["status"], stored["result"]) == ("PENDING", {"taskbadger_task_id": result.taskbadger_task_id})
    assert memory_app.backend.get_task_meta(result.id)["result"] is None
    task = taskbadger_server.wait_for_task(name=NAME + "add_here", status="success", timeout=30)
    assert task["id"] == result.taskbadger_task_id
