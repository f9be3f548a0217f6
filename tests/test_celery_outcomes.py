"""How tasks end: retries, Ignore/Reject, revoke and expiry, time limits, lost worker children."""

import datetime as dt
import importlib.util

import pytest
from celery import chain

from taskbadger.celery import task_id_of_result

from .celery_project import app as tasks
from .conftest import BROKER

pytestmark = pytest.mark.integration

NAME = "tests.celery_project.app."


def test_retry_then_success_is_one_task_that_ends_success(taskbadger_server, any_worker):
    result = any_worker.send(tasks.flaky, 2)
    task = taskbadger_server.wait_for_task(name=NAME + "flaky", status="success")
    assert len(taskbadger_server.tasks) == 1 and task["id"] == result.taskbadger_task_id
    assert task["data"]["retries"] == 2
    statuses = [r.json.get("status") for r in taskbadger_server.requests if r.method == "PATCH"]
    assert "pending" in statuses  # back to pending while waiting for the retry
    assert "error" not in statuses


def test_retries_exhausted_end_error_with_the_last_exception(taskbadger_server, prefork_worker):
    prefork_worker.send(tasks.flaky, 10)  # max_retries=3
    task = taskbadger_server.wait_for_task(name=NAME + "flaky", status="error")
    assert len(taskbadger_server.tasks) == 1
    assert "attempt 3 failed" in task["data"]["exception"]
    assert task["data"]["retries"] == 3


def test_a_retry_published_without_raising_is_pending_until_its_next_attempt_ends(taskbadger_server, prefork_worker):
    """``self.retry(throw=False)``, then the body returns: the task ended ``success`` while its retry waited in the
    queue (an action on success fired, a page showed it done), and its next attempt ran it again."""
    result = prefork_worker.send(tasks.retry_without_raising)

    def ended():  # polls the stand-in under a deadline: the next attempt's success completes its progress
        task = taskbadger_server.get_task(result.taskbadger_task_id)
        return task if task and task["status"] == "success" and task["value"] == 2 else None

    task = taskbadger_server.wait_for(ended, timeout=20)
    assert task["data"]["retries"] == 1
    statuses = [r.json.get("status") for r in taskbadger_server.requests
                if r.method == "PATCH" and r.path.endswith(f"/{result.taskbadger_task_id}/")]
    assert statuses.count("success") == 1 and statuses[-1] == "success", statuses
    assert "pending" in statuses


def test_ignore_is_not_an_error(taskbadger_server, any_worker):
    any_worker.send(tasks.ignore_me)
    task = taskbadger_server.wait_for_task(name=NAME + "ignore_me", status="cancelled")
    assert "exception" not in (task["data"] or {})


def test_reject_is_not_an_error(taskbadger_server, any_worker):
    any_worker.send(tasks.reject_me)
    taskbadger_server.wait_for_task(name=NAME + "reject_me", status="cancelled")
    statuses = [r.json.get("status") for r in taskbadger_server.requests if r.method == "PATCH"]
    assert "error" not in statuses


def test_reject_with_requeue_that_celery_cannot_requeue_ends_cancelled(taskbadger_server, prefork_worker):
    """Without acks_late the message was acknowledged when it arrived: Celery cannot requeue it, it never runs
    again, and its task stayed pending for ever."""
    prefork_worker.send(tasks.reject_requeue_without_acks_late)
    taskbadger_server.wait_for_task(name=NAME + "reject_requeue_without_acks_late", status="cancelled")


def test_a_task_the_worker_does_not_know_ends_error(taskbadger_server, prefork_worker, celery_app):
    """A typo in ``send_task``'s name, or a worker running older code: Celery discards the message and records
    NotRegistered; its task stayed pending for ever."""
    result = celery_app.send_task(NAME + "no_such_task", (1,), queue=prefork_worker.queue,
                                  headers={"taskbadger_track": True})
    task = taskbadger_server.wait_for_task(name=NAME + "no_such_task", status="error")
    assert task["id"] == task_id_of_result(result)
    assert task["data"]["exception_type"] == "celery.exceptions.NotRegistered"
    assert "no task named 'tests.celery_project.app.no_such_task'" in task["data"]["exception"]
    prefork_worker.send(tasks.add, 1, 2)
    taskbadger_server.wait_for_task(name=NAME + "add", status="success")  # the worker goes on


def test_a_task_the_worker_cannot_read_ends_error(taskbadger_server, prefork_worker):
    """Published with a serializer the worker does not accept (pickle, to a worker that takes JSON only): Celery
    discards the message and logs it, and the task never runs; its task stayed pending for ever."""
    result = prefork_worker.send(tasks.add, 1, 2, serializer="pickle")
    task = taskbadger_server.wait_for_task(name=NAME + "add", status="error", timeout=20)
    assert task["id"] == result.taskbadger_task_id
    assert task["data"]["exception_type"] == "kombu.exceptions.ContentDisallowed"
    assert "discarded it without running the task" in task["data"]["exception"]
    again = prefork_worker.send(tasks.add, 1, 2)
    assert taskbadger_server.wait_for_task(name=NAME + "add", status="success")["id"] == again.taskbadger_task_id


def test_progress_reported_before_a_retry_ends_complete(taskbadger_server, prefork_worker):
    """The retry's message carried the fields from when the task was created: the attempt that succeeded did
    not know the progress, and the task ended success at 50 %."""
    prefork_worker.send(tasks.progress_then_retry)
    task = taskbadger_server.wait_for_task(name=NAME + "progress_then_retry", status="success")
    assert (task["value"], task["value_max"]) == (100, 100)


def test_revoked_before_execution_ends_cancelled(taskbadger_server, prefork_worker, celery_app):
    # Workers hold countdown tasks in memory; some brokers report the revoke only when it comes due.
    result = prefork_worker.send(tasks.add, 1, 1, countdown=3)
    celery_app.control.revoke(result.id)
    task = taskbadger_server.wait_for_task(name=NAME + "add", status="cancelled", timeout=20)
    assert task["data"]["celery_revoked"] == "revoked"


def test_revoked_with_terminate_while_running_ends_cancelled(taskbadger_server, prefork_worker, celery_app):
    result = prefork_worker.send(tasks.sleep_for, 30)
    taskbadger_server.wait_for_task(name=NAME + "sleep_for", status="processing")
    celery_app.control.revoke(result.id, terminate=True)
    task = taskbadger_server.wait_for_task(name=NAME + "sleep_for", status="cancelled", timeout=20)
    assert task["data"]["celery_revoked"] == "terminated"


def test_expired_task_ends_cancelled(taskbadger_server, prefork_worker):
    expired = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    prefork_worker.send(tasks.add, 1, 1, expires=expired)
    task = taskbadger_server.wait_for_task(name=NAME + "add", status="cancelled", timeout=20)
    assert task["data"]["celery_revoked"] == "expired"


def test_soft_time_limit_ends_error_with_the_limit(taskbadger_server, prefork_worker):
    # Only Celery's prefork pool enforces time limits (threads and solo ignore them).
    prefork_worker.send(tasks.sleep_for, 10, soft_time_limit=1)
    task = taskbadger_server.wait_for_task(name=NAME + "sleep_for", status="error", timeout=20)
    assert "soft time limit (1 s) exceeded" in task["data"]["exception"]


def test_soft_time_limit_strikes_even_during_an_update_from_the_body(taskbadger_server, prefork_worker):
    """Celery raises SoftTimeLimitExceeded from a signal handler, wherever the body is: inside a request of
    ``tb.update()`` with a slow API, tracking took it for one of its own errors and swallowed it, and the task ran
    on past its limit and ended success."""
    taskbadger_server.set_latency(0.4, method="PATCH")  # each update of the body takes 0.4 s: 15 take 6 s
    prefork_worker.send(tasks.update_data, 15, soft_time_limit=1)
    # polls the stand-in under a deadline for the task's final state, whichever it is
    [task] = taskbadger_server.wait_for(lambda: [t for t in taskbadger_server.tasks_named(NAME + "update_data")
                                                 if t["status"] in ("error", "success")], timeout=30)
    assert task["status"] == "error", task["data"]
    assert "soft time limit (1 s) exceeded" in task["data"]["exception"]


@pytest.mark.parametrize(("hanging", "worker_limit"), [(False, False), (True, False), (True, True)],
                         ids=["slow", "hanging", "worker-option"])
def test_a_soft_time_limit_under_the_publish_budget_applies_to_a_task_the_worker_creates(
        taskbadger_server, taskbadger_server_session, tmp_path, hanging, worker_limit):
    """A task published untracked is created by its worker when it starts, within the publish budget (4 s in this
    worker). With a soft time limit under it (0.5 s) and an API that answers slowly or not at all, the limit struck
    during that create: it was taken for an interruption of the create (an internal error), the body then ran without
    any limit (5 s here) and ended success. The create at start now waits at most half the task's time limit, so the
    limit strikes in the body, and the task's outcome is recorded. The limit may be the worker's own
    (``celery worker --soft-time-limit``), which its pool applies to tasks that set none."""
    import json

    from taskbadger import config

    from .conftest import start_worker, stop_worker

    if hanging:
        taskbadger_server.hang(times=1, method="POST")
    else:
        taskbadger_server.set_latency(3, times=1, method="POST")  # within the budget, long after the limit
    config.reset()  # as another service publishes it: its worker creates its task when it starts
    out = tmp_path / "interrupted"
    worker = start_worker(taskbadger_server_session, pool="prefork", concurrency=1,
                          extra_env={"TASKBADGER_PUBLISH_BUDGET": "4"},
                          extra_args=["--soft-time-limit", "0.5"] if worker_limit else [])
    try:
        limit = {} if worker_limit else {"soft_time_limit": 0.5}
        result = worker.send(tasks.work_until_soft_limit, str(out), 5, **limit)
        assert result.taskbadger_task_id is None  # published untracked
        interrupted = taskbadger_server.wait_for(
            lambda: out.exists() and out.read_text() and json.loads(out.read_text()), timeout=20)
    finally:
        stop_worker(worker)
    # the limit struck in the body, long before its 5 s of work ended (Celery's worker sends the signal when its
    # event loop gets to it: up to a second late on a loaded machine)
    assert interrupted["ran"] < 4, interrupted
    if hanging:
        return  # the create was not carried out: nothing to record its outcome on

    def ended():  # polls the stand-in under a deadline: the outcome is recorded on the task its worker created
        found = [t for t in taskbadger_server.tasks.values() if t["external_id"] == result.id]
        return found if found and found[0]["status"] in ("error", "success") else None

    [task] = taskbadger_server.wait_for(ended, timeout=30)
    assert task["status"] == "error", task
    assert "SoftTimeLimitExceeded" in task["data"]["exception"], task["data"]


@pytest.mark.skipif(BROKER == "rabbitmq", reason="AMQP's header table takes integers of 64 bits at most: Celery "
                                                "cannot publish such a time limit there")
def test_a_time_limit_too_large_for_a_float_still_lets_its_worker_track_the_task(taskbadger_server, solo_worker):
    """A message's time limit is whatever its producer wrote (JSON has no bound on an integer). One too large for a
    float made the worker's create at start raise OverflowError: an internal error in the worker's log, and the task
    ran untracked. Such a limit never strikes: the task is tracked as one without a limit."""
    from taskbadger import config

    config.reset()  # as another service publishes it: its worker creates its task when it starts
    solo_worker.new_internal_errors()  # only this test's lines count
    result = solo_worker.send(tasks.add, 2, 3, time_limit=10**400)
    assert result.taskbadger_task_id is None  # published untracked
    task = taskbadger_server.wait_for_task(name=NAME + "add", status="success", timeout=20)
    assert task["external_id"] == result.id
    assert solo_worker.new_internal_errors() == ""


@pytest.fixture
def own_prefork_worker(taskbadger_server_session):
    """Tests that kill pool children get a worker of their own: the shared one would spend its time
    replacing children while other tests wait on it."""
    from .conftest import start_worker, stop_worker

    worker = start_worker(taskbadger_server_session, pool="prefork", concurrency=2)
    yield worker
    stop_worker(worker)


def test_hard_time_limit_ends_error_with_the_limit(taskbadger_server, own_prefork_worker):
    own_prefork_worker.send(tasks.sleep_for, 10, time_limit=1)
    task = taskbadger_server.wait_for_task(name=NAME + "sleep_for", status="error", timeout=20)
    assert "hard time limit (1" in task["data"]["exception"]


@pytest.mark.skipif(importlib.util.find_spec("gevent") is None, reason="gevent is not installed")
def test_hard_time_limit_on_the_gevent_pool_ends_error(taskbadger_server, gevent_worker):
    # The gevent pool enforces hard time limits in the task's own greenlet (gevent.Timeout): Celery's tracer
    # still sends task_postrun (with no state), then the worker reports the TimeLimitExceeded failure.
    result = gevent_worker.send(tasks.sleep_for, 10, time_limit=1)
    task = taskbadger_server.wait_for(
        lambda: (t := taskbadger_server.get_task(result.taskbadger_task_id)) and t["status"] == "error" and t,
        timeout=20)
    assert "hard time limit (1" in task["data"]["exception"]


def test_tasks_handed_to_the_pool_survive_killed_children(taskbadger_server, own_prefork_worker):
    # A child killed on its hard time limit must not take the pool's shared result-queue lock with
    # it (tests/test_signal_safety.py): the tasks sent next, and one queued behind the killed ones,
    # still run. Before the fix this lost a task within one to three rounds. What counts here is the
    # user's task, so the worker's own log is the witness: an update still queued in a child that is
    # SIGKILLed right after is lost with it (docs/delivery.md).
    killed = []
    for round_ in range(3):
        killed.append(own_prefork_worker.send(tasks.sleep_for, 10, time_limit=1))
        first = own_prefork_worker.send(tasks.add, 1, round_)
        killed.append(own_prefork_worker.send(tasks.kill_worker_child))
        second = own_prefork_worker.send(tasks.add, 2, round_)
        for result in (first, second):
            taskbadger_server.wait_for(lambda r=result: f"add[{r.id}] succeeded" in own_prefork_worker.log(),
                                       timeout=20)
    # Polled under a deadline: the worker has reported every child it lost before the test ends. A warm shutdown
    # that began while the pool was still handling a lost child hung in billiard (the fixture's stop timed out).
    taskbadger_server.wait_for(lambda: all((taskbadger_server.get_task(r.taskbadger_task_id) or {}).get("status")
                                           == "error" for r in killed), timeout=30)


def test_worker_child_killed_mid_task_ends_error(taskbadger_server, own_prefork_worker):
    own_prefork_worker.send(tasks.kill_worker_child)
    task = taskbadger_server.wait_for_task(name=NAME + "kill_worker_child", status="error", timeout=20)
    assert "WorkerLostError" in task["data"]["exception"]


@pytest.mark.parametrize("tracked_at_publish", [True, False])
def test_a_task_delivered_again_after_its_child_was_lost_is_one_task_that_ends_complete(
        taskbadger_server, taskbadger_server_session, tmp_path, tracked_at_publish):
    """``acks_late`` with ``reject_on_worker_lost``: the lost run's message goes back to its queue and runs again (Redis
    flags it delivered again). A task its publisher did not track was created a second time by the run again, and
    the first one, created by the lost run, stayed processing for good; one its publisher tracked ended success at the
    progress the lost run reported (1 of 2)."""
    from celery import Celery

    from taskbadger import config

    from .conftest import start_worker, stop_worker
    from .services import require

    require("redis")
    broker = "redis://127.0.0.1:6379/7"
    worker = start_worker(taskbadger_server_session, pool="prefork", concurrency=2, extra_env={"TB_BROKER_URL": broker})
    try:
        client = Celery("redelivery-client", broker=broker, set_as_current=False)
        if not tracked_at_publish:
            config.reset()  # as another service publishes it: its worker creates its task
        result = client.send_task(NAME + "late_lost_once", (str(tmp_path / "deliveries"),), queue=worker.queue)

        def ended():  # polls the stand-in under a deadline
            found = [t for t in taskbadger_server.tasks.values() if t["external_id"] == result.id]
            return found if any(t["status"] == "success" for t in found) else None

        found = taskbadger_server.wait_for(ended, timeout=30)
    finally:
        stop_worker(worker)
    assert (tmp_path / "deliveries").read_text() == "2"
    assert [(t["status"], t["value"], t["value_max"]) for t in found] == [("success", 2, 2)]


def test_a_task_the_worker_retries_after_its_child_was_lost_waits_pending(taskbadger_server, own_prefork_worker):
    """``retry_on_worker_lost``: the worker's main process publishes the next attempt itself (``default_retry_delay``
    later, three minutes by default) and announces the retry. The task showed ``processing`` meanwhile, and nothing
    said it was retried."""
    result = own_prefork_worker.send(tasks.lost_then_retried)

    def waiting():  # polls the stand-in under a deadline
        task = taskbadger_server.get_task(result.taskbadger_task_id)
        return task if task and task["status"] == "pending" and (task["data"] or {}).get("retries") == 1 else None

    task = taskbadger_server.wait_for(waiting, timeout=30)  # the worker notices its lost child within seconds
    assert "WorkerLostError: Worker exited prematurely: signal 9" in task["data"]["last_exception"]
    assert task["stale_timeout"] is None  # no heartbeat comes until its next attempt runs
    task = taskbadger_server.wait_for_task(name=NAME + "lost_then_retried", status="success", timeout=20)
    assert task["data"]["retries"] == 1
    # a retry starts over, as one from the body does: the attempt that succeeds ends the task complete, not at the
    # progress its lost attempt had reported (1 of 2), which the worker's main process cannot carry to it
    assert (task["value"], task["value_max"]) == (2, 2)
    assert list(taskbadger_server.tasks) == [result.taskbadger_task_id]


def test_a_task_the_worker_retries_after_its_child_was_lost_sees_the_progress_task_badger_shows(
        taskbadger_server, own_prefork_worker, tmp_path):
    """``retry_on_worker_lost``: the message the worker's main process sends again is the publisher's, which carried
    the task's progress as published (0 of 10), while its lost attempt had reported 1 of 2. The next attempt's
    ``self.taskbadger_task`` showed 0 of 10, and when it returned the task ended at 10 of 2. It now shows what Task
    Badger shows (read from the API when the body asks for it), and the task ends complete at 2 of 2."""
    import json

    seen = tmp_path / "seen.json"
    result = own_prefork_worker.send(tasks.lost_then_reads_progress, str(seen), taskbadger_value=0,
                                     taskbadger_value_max=10)
    task = taskbadger_server.wait_for(
        lambda: (t := taskbadger_server.get_task(result.taskbadger_task_id)) and t["status"] == "success" and t,
        timeout=30)
    assert task["data"]["retries"] == 1
    assert (task["value"], task["value_max"]) == (2, 2)
    assert json.loads(seen.read_text()) == {"value": 1, "value_max": 2}


def test_a_cold_shutdown_ends_the_tasks_it_interrupted_error(taskbadger_server, taskbadger_server_session):
    """SIGQUIT (or a second Ctrl-C) while a task runs in a pool child: Celery acknowledged its message on receipt
    and reports no failure, so it never runs again, and its task stayed processing for ever. (The threads pool
    cannot stop a running task: it finishes it.)"""
    import signal

    from .conftest import start_worker, stop_worker

    worker = start_worker(taskbadger_server_session, pool="prefork", concurrency=2)
    try:
        worker.send(tasks.sleep_for, 30)
        taskbadger_server.wait_for_task(name=NAME + "sleep_for", status="processing", timeout=20)
        worker.process.send_signal(signal.SIGQUIT)
        assert worker.process.wait(30) is not None
        task = taskbadger_server.wait_for_task(name=NAME + "sleep_for", status="error", timeout=10)
        assert "shut down cold" in task["data"]["exception"], task["data"]
        assert "cancelled by a cold shutdown end in error" in worker.log()
        assert task["data"]["exception_type"] == "billiard.exceptions.WorkerLostError"
    finally:
        stop_worker(worker)


@pytest.mark.skipif(BROKER == "filesystem", reason="kombu's virtual transports do not flag a message delivered again")
def test_a_task_delivered_again_after_a_cold_shutdown_keeps_its_first_start(taskbadger_server,
                                                                            taskbadger_server_session, tmp_path):
    """``acks_late``: a cold shutdown while the task runs gives its message back to the broker, which delivers it
    again (flagged so); the same Task Badger task runs again, and its ``start_time`` stays its first start, as a
    retry's does (it was the second one's)."""
    import signal

    from .conftest import start_worker, stop_worker

    counter = tmp_path / "deliveries"
    first = start_worker(taskbadger_server_session, pool="prefork", concurrency=1)
    try:
        result = first.send(tasks.late_until_redelivered, str(counter))
        started = taskbadger_server.wait_for(
            lambda: (t := taskbadger_server.get_task(result.taskbadger_task_id)) and t["status"] == "processing"
            and t["start_time"] and t, timeout=20)
        first.process.send_signal(signal.SIGQUIT)
        assert first.process.wait(30) is not None
    finally:
        stop_worker(first)
    second = start_worker(taskbadger_server_session, pool="prefork", concurrency=1, queue=first.queue)
    try:
        task = taskbadger_server.wait_for(
            lambda: (t := taskbadger_server.get_task(result.taskbadger_task_id)) and t["status"] == "success" and t,
            timeout=30)
    finally:
        stop_worker(second)
    assert counter.read_text() == "2"  # it ran again
    assert task["start_time"] == started["start_time"]


FINAL = ("success", "error", "cancelled")


def settled(server):
    """Wait until every task has a final state; the tasks by name. (A task that publishes another creates it
    before it ends, so a workflow has settled when every task it created so far has.)"""

    def every_task_final():
        tasks_ = list(server.tasks.values())
        if not tasks_ or any(t["status"] not in FINAL for t in tasks_):
            return None
        by_name = {}
        for task in tasks_:
            by_name.setdefault(task["name"].removeprefix(NAME), []).append(task)
        return by_name

    return server.wait_for(every_task_final, timeout=20)


def replaced_statuses(server, task_id):
    return [r.json.get("status") for r in server.requests if r.method == "PATCH" and task_id in r.path]


def test_a_task_replaced_by_another_ends_success_and_the_replacement_is_its_child(taskbadger_server,
                                                                                  prefork_worker):
    """``self.replace(sig)`` publishes the replacement with the replaced task's Celery id: it was taken for a
    retry (``data["retries"]``, back to ``pending``), the replacement ran as the replaced task, which Celery's
    ``Ignore`` made ``cancelled`` meanwhile."""
    result = prefork_worker.send(tasks.replace_with, "task")
    by_name = settled(taskbadger_server)
    assert {name: len(found) for name, found in by_name.items()} == {"replace_with": 1, "add": 1}, by_name
    [replaced], [replacement] = by_name["replace_with"], by_name["add"]
    assert replaced["id"] == result.taskbadger_task_id
    assert replaced["status"] == "success" and replaced["data"] == {"celery_replaced": True}
    assert {"pending", "cancelled"}.isdisjoint(replaced_statuses(taskbadger_server, replaced["id"]))
    assert replacement["status"] == "success" and replacement["parent"] == replaced["id"]
    assert replacement["external_id"] == result.id  # Celery gives the replacement the replaced task's id
    assert "retries" not in (replacement["data"] or {})


def test_a_task_replaced_by_a_chain_ends_success_and_the_chain_is_tracked(taskbadger_server, prefork_worker):
    """The chain's first task has a new Celery id, its last one the replaced task's: the replaced task ended
    ``cancelled`` (``replace`` raises Celery's ``Ignore``)."""
    result = prefork_worker.send(tasks.replace_with, "chain")
    by_name = settled(taskbadger_server)
    assert {name: len(found) for name, found in by_name.items()} == {"replace_with": 1, "add": 2}, by_name
    [replaced], links = by_name["replace_with"], by_name["add"]
    assert replaced["status"] == "success" and replaced["data"] == {"celery_replaced": True}
    assert [link["status"] for link in links] == ["success", "success"]
    first, last = sorted(links, key=lambda link: link["external_id"] == result.id)
    assert first["parent"] == replaced["id"]  # published from the replaced task's body
    assert last["external_id"] == result.id  # Celery gives the chain's last task the replaced task's id
    assert last["parent"] == replaced["id"]  # a chain's next link is its predecessor's sibling


def test_a_task_replaced_inside_a_chain_has_its_replacement_as_child(taskbadger_server, prefork_worker):
    """The replacement shares its name with the chain's next link: it was taken for that successor, with no
    parent."""
    q = prefork_worker.queue
    chain(tasks.replace_with.s("task").set(queue=q), tasks.add.s(10).set(queue=q)).apply_async()
    by_name = settled(taskbadger_server)
    assert {name: len(found) for name, found in by_name.items()} == {"replace_with": 1, "add": 2}, by_name
    [replaced] = by_name["replace_with"]
    assert replaced["data"] == {"celery_replaced": True}
    assert [t["parent"] for t in by_name["add"]] == [replaced["id"]] * 2, by_name["add"]


def test_a_task_replaced_by_a_group_ends_success_and_the_group_is_its_children(taskbadger_server, backend_worker):
    """Celery makes the group a chord whose body (``celery.accumulate``, untracked) takes the replaced task's
    Celery id: the replaced task ended ``cancelled``."""
    backend_worker.send(tasks.replace_with, "group")
    by_name = settled(taskbadger_server)
    assert {name: len(found) for name, found in by_name.items()} == {"replace_with": 1, "add": 2}, by_name
    [replaced], members = by_name["replace_with"], by_name["add"]
    assert replaced["status"] == "success" and replaced["data"] == {"celery_replaced": True}
    assert [(m["status"], m["parent"]) for m in members] == [("success", replaced["id"])] * 2


def test_retries_and_requeues_while_the_api_is_slow_end_in_their_final_state_across_two_workers(
        taskbadger_server, taskbadger_server_session, tmp_path):
    """Two workers on one queue, and an API slower than the publish budget: a retry's or a requeue's 'pending'
    could not be sent at once and was queued in its worker, while the next attempt ran in the other worker and
    ended first: the queued 'pending' (and the attempt's data) came after that final state, and the task stayed
    pending for good (13 of 30 retried tasks in a hunt, 14 of 30 requeued ones)."""
    from .conftest import start_worker, stop_worker

    workers = [start_worker(taskbadger_server_session, pool="prefork", concurrency=2)]
    try:
        workers.append(start_worker(taskbadger_server_session, pool="solo", concurrency=1, queue=workers[0].queue))
        taskbadger_server.set_latency(1.5, method="PATCH")  # every update outlasts the publish budget (1 s)
        sent = [workers[0].send(tasks.flaky, 2) for _ in range(8)]
        sent += [workers[0].send(tasks.flaky, 10) for _ in range(4)]  # max_retries=3: ends error
        sent += [workers[0].send(tasks.reject_requeue_until, str(tmp_path / f"count-{i}"), 2) for i in range(8)]
        ids = [result.taskbadger_task_id for result in sent]
        # polled under a deadline: every task reaches a final state
        taskbadger_server.wait_for(lambda: all(taskbadger_server.get_task(i)["status"] in ("success", "error")
                                               for i in ids), timeout=60)
    finally:
        for worker in workers:
            stop_worker(worker)  # a warm shutdown sends what each worker still had queued
    statuses = [taskbadger_server.get_task(i)["status"] for i in ids]
    expected = ["success"] * 8 + ["error"] * 4 + ["success"] * 8
    wrong = [(i, status) for i, status, want in zip(ids, statuses, expected, strict=True) if status != want]
    assert not wrong, f"{len(wrong)} of {len(ids)} tasks did not end in their final state: {wrong}"
    assert [taskbadger_server.get_task(i)["data"]["retries"] for i in ids[:12]] == [2] * 8 + [3] * 4


def test_a_retry_handed_over_while_its_start_is_in_flight_ends_success(taskbadger_server,
                                                                         taskbadger_server_session):
    """The first attempt's 'processing' hung in the API while its retry could not be sent either: the retry went
    to the next attempt (another worker), which ended success; the hung 'processing' was then sent again as it
    was, after that success, and the task looked running for good (threads pool, one of 16 in a hunt)."""
    from .conftest import start_worker, stop_worker

    workers = [start_worker(taskbadger_server_session, pool="threads", concurrency=2)]
    try:
        workers.append(start_worker(taskbadger_server_session, pool="solo", concurrency=1, queue=workers[0].queue))
        taskbadger_server.hang(times=1, method="PATCH")  # the first attempt's start: in flight at its retry
        task_id = workers[0].send(tasks.retry_after, 0.5).taskbadger_task_id
        # polled under a deadline: the next attempt's success reaches the API
        taskbadger_server.wait_for(lambda: (taskbadger_server.get_task(task_id) or {}).get("status") == "success",
                                   timeout=30)
        taskbadger_server.clear_faults()  # the hung request is given up unanswered: its sender tries it again
    finally:
        for worker in workers:
            stop_worker(worker)  # a warm shutdown sends what each worker still had queued or in flight
    task = taskbadger_server.get_task(task_id)
    assert (task["status"], task["data"]["retries"]) == ("success", 1)
    assert not any(worker.new_internal_errors() for worker in workers)
