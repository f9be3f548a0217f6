"""The misbehaving-API matrix (``test_misbehaving_api``), continued where it needs workers of its own or several
shapes of publish: Celery's canvas (group, chain, chord) while the API hangs, is down, refuses the key, errs,
throttles, garbles or trickles its answers, a key the API refuses at publish and in the worker, a body's updates
while the API is down, and the body's updates in a prefork and a threads worker.

A module of its own: test processes take whole modules (``--dist loadfile``), so these run beside the first part
instead of after it. Same budget, same bounds.
"""

from __future__ import annotations

import logging
import re
import time

import pytest

from .celery_project import app as tasks
from .conftest import start_worker, stop_worker
from .foreign import wait_for_result
from .test_misbehaving_api import (  # noqa: F401 - api and worker are fixtures (this module gets its own worker)
    BUDGET,
    SLACK,
    api,
    assert_nothing_left_pending,
    check_progress_from_a_celery_tasks_body,
    misbehave,
    report,
    timed,
    tracked_share,
    worker,
)

#: How the API fails the canvas's creates besides a hang: down, a refused key, an error, a throttle, a 2xx that is not
#: JSON (the tasks exist, their ids lost), an answer trickled past the budget.
CANVAS_FAULTS = ["refused", "401", "503", "429", "not_json", "slow_headers"]


def publish_canvas(started, shape: str) -> tuple[list, float]:
    """``group(...)`` (8 tasks) or ``chain(...)`` (4) of ``echo`` ``.apply_async()``: the canvas's results in order,
    once each task has run with its own result, and how long ``apply_async()`` took."""
    from celery import chain, group

    n = 8 if shape == "group" else 4  # each later link of a chain is published by the worker, waiting its budget
    signatures = [tasks.echo.si(f"{shape}{i}").set(queue=started.queue) for i in range(n)]
    result, took = timed(lambda: (group if shape == "group" else chain)(*signatures).apply_async())
    if shape == "group":
        results = list(result.results)
    else:
        results = []
        while result is not None:  # the chain's tasks, last first
            results.append(result)
            result = result.parent
        results.reverse()
    assert [wait_for_result(r.id)["value"] for r in results] == [f"{shape}{i}" for i in range(n)]
    return results, took


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["hang", *CANVAS_FAULTS])
@pytest.mark.parametrize("shape", ["group", "chain"])
def test_a_canvas_published_while_the_api_fails_keeps_its_budget_and_every_task_runs(  # noqa: F811
        api, worker, shape, mode, tb_log):  # noqa: F811
    """``group(...)`` (8 tasks) and ``chain(...)`` (4) ``.apply_async()`` while the API hangs, is down, refuses the
    key, errs, throttles, answers a 2xx that is not JSON or trickles its answers: the publish waits one budget at most
    (a group's creates share it; a chain publishes its first task), every task runs with its own result, the
    publisher says so once (not once per task of the canvas), no task is made twice, and none of the canvas's tasks is
    left pending once the API behaves."""
    before = len(api.requests)
    misbehave(api, mode, "POST")
    results, took = publish_canvas(worker, shape)
    assert took <= BUDGET + 2 * SLACK, took
    ids = [r.id for r in results]
    # the canvas's creates met the fault: the publisher (or, for the chain's later links, the worker) asked the API
    if mode != "refused":
        assert [r for r in api.requests[before:] if r.method == "POST"], "no create reached the API"
    api.clear_faults()
    assert_nothing_left_pending(api, ids)
    # said once, not once per task of the canvas: each line once (the create given up, and why; the pause of tracking
    # that followed; the API answering again), never a line per task
    said = [r.getMessage() for r in tb_log.records if r.levelno >= logging.WARNING]
    assert len(set(said)) == len(said) < len(results), said
    assert all(api.api_key not in line and api.key not in line for line in said), said
    # a create carried out whose answer was unreadable (not_json) is found by its Celery id: no task is made twice
    made = [t["external_id"] for t in api.tasks.values() if t["external_id"] in set(ids)]
    assert len(made) == len(set(made)), made
    report(f"{shape}({len(results)} tasks).apply_async()", mode, took, tracked_share(api, ids))


@pytest.fixture(scope="module")
def chord_worker(taskbadger_server_session):
    """A solo worker with a result backend (Redis, db 6: a chord needs one) and the same publish budget, this module's
    own: a failing API opens its breaker, which the session's chord worker must not carry into other tests."""
    from .services import require

    require("redis")
    started = start_worker(taskbadger_server_session, pool="solo", concurrency=1,
                           extra_env={"TB_RESULT_BACKEND": "redis://127.0.0.1:6379/6",
                                      "TASKBADGER_PUBLISH_BUDGET": str(BUDGET)})
    yield started
    stop_worker(started)


def wait_until_the_worker_creates_again(server, started, timeout: float = 20.0) -> None:
    """Until ``started`` creates the task of a message published untracked (straight through kombu) as it starts it:
    its breaker, opened by an earlier test's fault, lets creates through again, so this test's fault is met."""
    from .foreign import publish_foreign

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # each round is a task run by the worker: no sleep needed
        celery_id = publish_foreign(tasks.app, "tests.celery_project.app.echo", ("warm",), started.queue, {})
        wait_for_result(celery_id)
        if any(t["external_id"] == celery_id for t in server.tasks.values()):
            return
    raise AssertionError(f"the worker still created no task after {timeout} s:\n{started.log()[-3000:]}")


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["hang", *CANVAS_FAULTS])
def test_a_chord_published_while_the_api_misbehaves_waits_one_budget_at_most(api, chord_worker, mode):  # noqa: F811
    """A chord published from a task's body while the API misbehaves with its creates: the body waits one budget at
    most for the header's creates, the header and the body run, and none of their tasks is left pending once the API
    answers again."""
    wait_until_the_worker_creates_again(api, chord_worker)
    since, before = len(chord_worker.log()), len(api.requests)
    misbehave(api, mode, "POST")
    try:
        publisher = chord_worker.send(tasks.start_chord)  # its own create meets the same API
        api.wait_for(lambda: re.search(r"record_me\[[0-9a-f-]{36}\] succeeded", chord_worker.log()[since:]),
                     timeout=30)
        log = chord_worker.log()[since:]
        took = float(re.search(rf"start_chord\[{publisher.id}\] succeeded in ([0-9.]+)s", log)[1])
        assert took <= BUDGET + 2 * SLACK, took  # the header's creates share one budget
        if mode != "refused":  # the worker's creates of the header met the fault
            header = [r for r in api.requests[before:]
                      if r.method == "POST" and (r.json or {}).get("name") == "tests.celery_project.app.add"]
            assert header, "no header create reached the API"
        api.clear_faults()
        ran = re.findall(r"tests\.celery_project\.app\.(?:add|record_me)\[([0-9a-f-]{36})\] succeeded", log)
        assert len(ran) == 3, log
        assert_nothing_left_pending(api, ran)
    finally:
        api.clear_faults()
    assert api.api_key not in chord_worker.log() and api.key not in chord_worker.log()
    report("chord(2 tasks) published from a task's body", mode, took, tracked_share(api, ran))


@pytest.mark.integration
@pytest.mark.parametrize("status", [401, 403])
def test_a_key_the_api_refuses_never_fails_a_publish_and_says_what_to_do_once(  # noqa: F811
        api, worker, status, tb_log):  # noqa: F811
    """A revoked or mistyped API key: every create is answered 401 (or 403). ``.delay()`` returns at once and the
    task runs with its own result; the publisher says once, not per task, that the key was refused and where to
    set it."""
    api.fail(status, method="POST")
    sent = [timed(lambda i=i: worker.send(tasks.echo, f"k{i}")) for i in range(5)]
    assert max(seconds for _, seconds in sent) <= BUDGET + SLACK
    for i, (result, _) in enumerate(sent):
        assert wait_for_result(result.id)["value"] == f"k{i}"
    said = [r.getMessage() for r in tb_log.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and str(status) in said[0] and "TASKBADGER_API_KEY" in said[0], said
    assert api.api_key not in said[0]
    # the worker met the same refusal when it started each task, and said so (once a minute): never with the key
    assert re.search(r"answered 40[13]", worker.log()) and api.api_key not in worker.log() \
        and api.key not in worker.log()


@pytest.mark.integration
def test_progress_from_a_celery_tasks_body_while_the_api_is_down(api, worker, tmp_path):  # noqa: F811
    """The API goes down (refusing connections) once the task is running, before its body's updates: the task runs
    to its own result, its body held up a few budgets at most, and once the API is back the task ends ``success``
    with the progress its body reported."""
    check_progress_while_the_api_goes_down(api, worker, tmp_path)


def check_progress_while_the_api_goes_down(server, started, tmp_path) -> None:
    go = tmp_path / "go"
    # ``after`` is the task's argument (in ``kwargs``): as a keyword of ``send`` it went to ``apply_async`` as an
    # option, which Celery ignores, and the body ran at once, before the API went down
    result = started.send(tasks.progress_loop, 12, kwargs={"after": str(go)})
    server.wait_for(lambda: next((t for t in server.tasks.values()
                                  if t["external_id"] == result.id and t["status"] == "processing"), None), timeout=20)
    server.refuse()
    try:
        go.touch()
        body = wait_for_result(result.id, timeout=30)
    finally:
        server.clear_faults()
    assert body["value"] == 12 and body["tracked"] and body["shown"] == 12
    assert body["took"] <= 3 * BUDGET + SLACK, body["took"]
    task = server.wait_for(lambda: next((t for t in server.tasks.values()
                                         if t["external_id"] == result.id and t["status"] == "success"), None),
                           timeout=30)
    assert (task["value"], task["value_max"]) == (12, 12)
    report(f"tb.update() in a Celery task's body (12 in a row, {started.pool})", "refused", body["took"],
           "ran to its result; success")


@pytest.fixture(scope="module", params=["prefork", "threads"])
def pool_worker(request, taskbadger_server_session):
    """A worker of each of the other pools Celery users run, with the same publish budget: each prefork child has
    its own senders and breaker, the threads of a threads worker share theirs."""
    started = start_worker(taskbadger_server_session, pool=request.param, concurrency=2,
                           extra_env={"TASKBADGER_PUBLISH_BUDGET": str(BUDGET)})
    yield started
    stop_worker(started)


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["hang", "not_json", "503", "429", "404"])
def test_progress_from_a_celery_tasks_body_in_the_other_pools(api, pool_worker, mode):  # noqa: F811
    """The same in a prefork and a threads worker: a sample of the modes (a wait, a bad answer, an error, a
    throttle, a refusal: the API does not know the task); the solo worker above takes every one."""
    check_progress_from_a_celery_tasks_body(api, pool_worker, mode)


@pytest.mark.integration
def test_progress_from_a_celery_tasks_body_in_the_other_pools_while_the_api_is_down(  # noqa: F811
        api, pool_worker, tmp_path):  # noqa: F811
    """The API down once the task runs, in a prefork and a threads worker (the threads of one process share its
    senders and breaker; each prefork child has its own): the same outcome as on the solo worker."""
    check_progress_while_the_api_goes_down(api, pool_worker, tmp_path)
