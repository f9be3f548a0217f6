"""Delivery with real workers: API faults at publish, flushes at shutdown and recycling, outages."""

import time
import uuid

import pytest

import taskbadger
import taskbadger.delivery.sender
from taskbadger import inline
from taskbadger.http import late

from .celery_project import app as tasks
from .conftest import start_worker, stop_worker

pytestmark = pytest.mark.integration
NAME = "tests.celery_project.app."


def successes(server, name=NAME + "add"):
    return [t for t in server.tasks.values() if t["name"] == name and t["status"] == "success"]


def ran(worker, count):
    return worker.log().count("succeeded in") >= count


def test_a_create_given_up_at_its_deadline_is_taken_up_by_the_worker_not_made_twice(taskbadger_server,
                                                                                    solo_worker):
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, publish_budget=0.3)
    # One untracked publish first (as test_misbehaving_api's worker and the benchmark's publishers): the publish below
    # does not pay Celery's own set-up of the first publish of this process (its broker connection), which is not
    # tracking's wait. This test runs first in its module.
    solo_worker.send(tasks.untracked_plain, 0)
    taskbadger_server.set_latency(2.0, times=1, method="POST")  # carried out at once, answered too late
    submitted = taskbadger.stats()["submitted"]
    result = solo_worker.send(tasks.add, 1, 1)
    # Given up at its deadline, not waited for: no create had been answered when the publish returned. Not a bound on
    # the publish's wall-clock time: "0.3 s budget + 0.25 s" failed on a loaded machine (0.55-0.60 s, 1.13 s for the
    # first publish of the process) while the create had been given up at 0.3 s.
    assert not [r for r in taskbadger_server.requests if r.method == "POST" and r.status is not None]
    assert result.taskbadger_task_id is None  # published untracked
    # The worker looks the task up by its Celery id, finds it pending and tracks the run with it; the
    # late answer then finds it taken up and leaves it alone.
    task = taskbadger_server.wait_for_task(name=NAME + "add", status="success")
    assert task["external_id"] == result.id and task["end_time"]
    # The late answer came and its closing is queued: the reader stops waiting on the connection before it hands the
    # answer over, so waiting() == 0 alone let the flush below run before there was anything to flush.
    taskbadger_server.wait_for(lambda: late.reader().waiting() == 0 and taskbadger.stats()["submitted"] > submitted)
    before = len(taskbadger_server.requests)
    assert taskbadger.delivery.sender.flush(5)  # the late answer's "still pending?" read, made now
    # that read, and nothing written over the worker's outcome
    assert [(r.method, r.path.rstrip("/").rsplit("/", 1)[-1]) for r in taskbadger_server.requests[before:]] == [
        ("GET", task["id"])]
    assert [t["status"] for t in taskbadger_server.tasks.values()] == ["success"]
    assert [r.method for r in taskbadger_server.requests if r.method == "POST"] == ["POST"]  # never made twice


def test_a_task_created_after_its_create_was_given_up_is_closed_not_left_pending(taskbadger_server, monkeypatch):
    # Published untracked and never run (its message is still queued, or lost): the task the late answer
    # names must not stay pending for ever.
    monkeypatch.setattr(inline, "LATE_CLOSE_GRACE", 0.5)
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, publish_budget=0.3)
    taskbadger_server.set_latency(1.0, times=1, method="POST")
    result = tasks.add.apply_async((1, 1), queue=f"nobody-listens-{uuid.uuid4().hex}")
    assert result.taskbadger_task_id is None
    closed = taskbadger_server.wait_for_task(name=NAME + "add", status="cancelled")
    assert closed["external_id"] == result.id
    assert "after the 0.3 s its caller could wait" in closed["data"]["abandoned"]


def test_a_task_a_worker_takes_up_just_after_the_late_answer_is_not_cancelled(taskbadger_server,
                                                                              taskbadger_server_session):
    # The publisher read "still pending?" as soon as the late answer came, the moment its worker was taking the
    # task up (it looks it up when it starts): the run was cancelled (when the read came before the worker's first
    # update landed), or a second task made. The read now waits LATE_CLOSE_GRACE; a flush makes it at once.
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, publish_budget=0.3)
    taskbadger_server.set_latency(1.0, times=1, method="POST")  # carried out at once, answered too late
    queue = f"taken-up-late-{uuid.uuid4().hex}"
    submitted = taskbadger.stats()["submitted"]
    result = tasks.add.apply_async((2, 2), queue=queue)
    assert result.taskbadger_task_id is None  # published untracked, its create maybe carried out
    # the late answer came, and its read is queued
    taskbadger_server.wait_for(lambda: late.reader().waiting() == 0 and taskbadger.stats()["submitted"] > submitted)
    worker = start_worker(taskbadger_server_session, pool="solo", concurrency=1, queue=queue)
    try:
        task = taskbadger_server.wait_for_task(name=NAME + "add", status="success")
    finally:
        stop_worker(worker)
    assert taskbadger.delivery.sender.flush(5)  # the publisher's read, now: the task is taken, left alone
    assert [(t["status"], t["external_id"]) for t in taskbadger_server.tasks.values()] == [("success", result.id)]
    assert "abandoned" not in (taskbadger_server.get_task(task["id"])["data"] or {})


def test_a_run_whose_start_create_was_answered_late_keeps_the_outcome_it_recorded(taskbadger_server,
                                                                                 taskbadger_server_session):
    # Published untracked (503, refused before any work), so the worker creates the task when the run starts; that
    # create is carried out at once and answered after the worker's publish budget. The run ends first and its
    # outcome is recorded on the task (looked up by its Celery id); the late answer then closed it as cancelled
    # ("abandoned... the run untracked"), over its success: a monitor's check-in cancelled for a run that succeeded.
    taskbadger_server.fail(503, times=1, method="POST")
    queue = f"late-start-{uuid.uuid4().hex}"
    result = tasks.add.apply_async((3, 4), queue=queue)
    assert result.taskbadger_task_id is None
    taskbadger_server.set_latency(2.5, times=1, method="POST")
    worker = start_worker(taskbadger_server_session, pool="solo", concurrency=1, queue=queue)
    try:
        task = taskbadger_server.wait_for_task(name=NAME + "add", status="success", timeout=30)
        # the late answer reached the worker and was acted on (its closing, with the bug)
        taskbadger_server.wait_for(lambda: "was created after its create was given up" in worker.log(), timeout=30)
    finally:
        stop_worker(worker)  # flushes what the worker still holds
    final = taskbadger_server.get_task(task["id"])
    assert (final["status"], final["external_id"]) == ("success", result.id)
    assert "abandoned" not in (final["data"] or {})


def test_tasks_publish_and_run_while_the_api_refuses_connections(taskbadger_server, solo_worker, tb_log):
    taskbadger_server.refuse()
    try:
        results = [solo_worker.send(tasks.add, i, i) for i in range(6)]
        assert all(r.taskbadger_task_id is None for r in results)
        connects = [r for r in taskbadger_server.requests if r.method == "POST"]
        assert connects == []  # refused: nothing reached the server
        assert taskbadger.stats()["breaker"] == "open"
        taskbadger_server.wait_for(lambda: ran(solo_worker, 6) and solo_worker.log().count(
            "tests.celery_project.app.add[" + results[-1].id) >= 2, timeout=20)
    finally:
        taskbadger_server.accept()
    assert len([r for r in tb_log.records if "new tasks are not tracked;" in r.getMessage()]) == 1


@pytest.mark.parametrize("pool", ["solo", "threads", "gevent", "eventlet"])
def test_final_states_are_flushed_on_warm_shutdown(taskbadger_server, taskbadger_server_session, pool):
    worker = start_worker(taskbadger_server_session, pool=pool, concurrency=1 if pool == "solo" else 4)
    try:
        # The worker's updates queue up behind a slow one: the first task's final update is answered 0.9 s
        # after it arrives (under the 1 s after which a shutdown takes the API for hung and spools instead),
        # and the other seven run, and the shutdown begins, while the worker's sender waits for that answer.
        taskbadger_server.set_latency(0.9, method="PATCH")
        worker.send(tasks.add, 0, 0)
        taskbadger_server.wait_for(lambda: len(successes(taskbadger_server)) == 1, timeout=20)
        for i in range(1, 8):
            worker.send(tasks.add, i, i)
        taskbadger_server.wait_for(lambda: ran(worker, 8), timeout=20)
        assert len(successes(taskbadger_server)) < 8  # still queued when the shutdown begins
    finally:
        stop_worker(worker)
    assert len(successes(taskbadger_server)) == 8


def test_final_states_are_flushed_when_a_child_is_recycled(taskbadger_server, taskbadger_server_session):
    worker = start_worker(taskbadger_server_session, pool="prefork", concurrency=1,
                          extra_args=["--max-tasks-per-child=1"])
    try:
        taskbadger_server.set_latency(0.5, method="PATCH")
        for i in range(3):
            worker.send(tasks.add, i, i)
        # each child exits after one task: without a flush its final update would be lost
        taskbadger_server.wait_for(lambda: len(successes(taskbadger_server)) == 3, timeout=30)
    finally:
        taskbadger_server.clear_faults()
        stop_worker(worker)


def test_each_prefork_child_has_its_own_connection(taskbadger_server, prefork_worker):
    for _ in range(2):
        prefork_worker.send(tasks.sleep_for, 0.5)
    taskbadger_server.wait_for(lambda: len(successes(taskbadger_server, NAME + "sleep_for")) == 2, timeout=20)
    publisher = {r.connection_id for r in taskbadger_server.requests if r.method == "POST"}
    by_task: dict[str, set] = {}
    for r in taskbadger_server.requests:
        if r.method == "PATCH":
            by_task.setdefault(r.path, set()).add(r.connection_id)
    worker_connections = set().union(*by_task.values())
    assert len(worker_connections) >= 2 and not worker_connections & publisher


def test_a_groups_tasks_share_one_publish_budget_and_every_task_is_tracked(taskbadger_server, solo_worker, tb_log):
    """An API that answers each create in 0.4 s (within the budget, so the breaker never opens): a group of 12 tasks
    made 12 creates one after the other, each with a budget of its own, and ``apply_async()`` waited 4.8 s. Its
    creates now share one budget: the tasks whose create did not fit go out untracked, and their worker creates
    their tasks; every task ends ``success`` in one Task Badger task of its own."""
    from celery import group

    queue = solo_worker.queue
    taskbadger_server.set_latency(0.4, method="POST")
    started = time.monotonic()
    result = group(tasks.add.si(i, i).set(queue=queue) for i in range(12)).apply_async()
    took = time.monotonic() - started
    taskbadger_server.clear_faults()
    assert took < 2.0, took  # one budget of 1 s, and twelve publishes on a loaded machine
    at_publish = [r for r in taskbadger_server.requests if r.method == "POST" and r.json["status"] == "pending"]
    assert 1 <= len(at_publish) < 12  # the first creates fit, not all of them (the worker creates the others)
    assert any("tasks of a Celery group" in r.getMessage() for r in tb_log.records)

    def ended():  # polls the stand-in under a deadline
        found = successes(taskbadger_server)
        return found if len(found) >= 12 else None

    found = taskbadger_server.wait_for(ended, timeout=30)
    assert sorted(t["external_id"] for t in found) == sorted(r.id for r in result.results)  # one task per task


def test_a_group_of_chains_shares_one_publish_budget(taskbadger_server, solo_worker, tb_log):
    """``group(chain(a, b), chain(c, d), ...).apply_async()`` publishes each chain's first link, and Celery gives the
    group's id and index only to each chain's last link (in the first link's message, in the chain it carries): the
    first links' creates had a budget each, and with an API that answers each create in 0.4 s a group of 8 chains
    held ``apply_async()`` 3.2 s. They now share the group's one budget; every task still ends ``success`` in one
    Task Badger task of its own (the worker creates those whose create did not fit, and the later links)."""
    from celery import chain, group

    queue = solo_worker.queue
    # the first publish of a process pays for its broker connection: not the group's budget (CI measured 2.4 s once)
    tasks.add.apply_async((0, 0), queue=queue, taskbadger_track=False)
    taskbadger_server.set_latency(0.4, method="POST")
    started = time.monotonic()
    result = group(chain(tasks.add.si(i, i).set(queue=queue), tasks.add.si(i, 1).set(queue=queue))
                   for i in range(8)).apply_async()
    took = time.monotonic() - started
    taskbadger_server.clear_faults()
    assert took < 2.0, took  # one budget of 1 s, and eight publishes on a loaded machine
    at_publish = [r for r in taskbadger_server.requests if r.method == "POST" and r.json["status"] == "pending"]
    assert 1 <= len(at_publish) < 8  # the first creates fit, not all of them
    assert any("tasks of a Celery group" in r.getMessage() for r in tb_log.records)

    def ended():  # polls the stand-in under a deadline
        found = successes(taskbadger_server)
        return found if len(found) >= 16 else None

    found = taskbadger_server.wait_for(ended, timeout=60)
    last_links = [r.id for r in result.results]
    first_links = [r.parent.id for r in result.results]
    assert sorted(t["external_id"] for t in found) == sorted(first_links + last_links)  # one task per task


def test_the_chain_links_of_a_group_published_by_a_worker_have_a_publish_budget_each(taskbadger_server, solo_worker):
    """``group(chain(a, b), chain(c, d))``: the worker publishes ``b`` as ``a`` ends and ``d`` as ``c`` ends, two
    publishes of one group (the same group id, a later index) from one thread. When ``c`` ended within 0.25 s of
    ``b``'s create, ``d``'s create was taken for part of the same publish and shared ``b``'s budget: with an API that
    answers each create in 0.6 s (within the 1 s budget), ``b``'s took 0.6 s of it, and ``d`` went out untracked,
    its worker creating its task only when it started (a warning said the group's tasks did not fit). Each link is
    published by the task it follows: each now has a budget of its own, and every task is created at publish."""
    from celery import chain, group

    queue = solo_worker.queue
    result = group(chain(tasks.sleep_for.si(1.5).set(queue=queue), tasks.add.si(1, 1).set(queue=queue)),
                   chain(tasks.add.si(2, 2).set(queue=queue), tasks.add.si(2, 3).set(queue=queue))).apply_async()
    # while the worker runs the first link (1.5 s): from now on the API answers each create in 0.6 s
    taskbadger_server.set_latency(0.6, method="POST")

    def ended():  # polls the stand-in under a deadline
        found = successes(taskbadger_server)
        return found if len(found) >= 3 else None

    taskbadger_server.wait_for(ended, timeout=30)
    last_links = [r.id for r in result.results]
    created = {r.json.get("external_id"): r.json["status"] for r in taskbadger_server.requests if r.method == "POST"}
    assert {celery_id: created.get(celery_id) for celery_id in last_links} == dict.fromkeys(last_links, "pending")
    assert "tasks of a Celery group" not in solo_worker.log()
