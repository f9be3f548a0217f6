"""The misbehaving-API matrix (``test_misbehaving_api``), continued where it needs workers of its own or several
shapes of publish: Celery's canvas (group, chain, chord) while the API hangs, a key the API refuses at publish and
in the worker, a body's updates while the API is down, and the body's updates in a prefork and a threads worker.

A module of its own: test processes take whole modules (``--dist loadfile``), so these run beside the first part
instead of after it. Same budget, same bounds.
"""

from __future__ import annotations

import logging
import re

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
    report,
    timed,
    tracked_share,
    worker,
)


@pytest.mark.integration
@pytest.mark.parametrize("shape", ["group", "chain"])
def test_a_canvas_published_while_the_api_hangs_waits_one_budget(api, worker, shape):  # noqa: F811
    """``group(...)`` (8 tasks) and ``chain(...)`` (4) ``.apply_async()`` while the API hangs: the publish waits one
    budget in all (a group's creates share it; a chain publishes its first task), every task runs with its own
    result, and none is left pending once the API answers again."""
    from celery import chain, group

    api.hang(method="POST")
    n = 8 if shape == "group" else 4  # each later link of a chain is published by the worker, waiting its budget
    signatures = [tasks.echo.si(f"{shape}{i}").set(queue=worker.queue) for i in range(n)]
    result, took = timed(lambda: (group if shape == "group" else chain)(*signatures).apply_async())
    assert took <= BUDGET + 2 * SLACK, took  # the budget, and n publishes on a loaded machine
    if shape == "group":
        results = result.results
        assert [wait_for_result(r.id)["value"] for r in results] == [f"group{i}" for i in range(n)]
    else:
        results = []
        while result is not None:  # the chain's tasks, last first
            results.append(result)
            result = result.parent
        assert [wait_for_result(r.id)["value"] for r in reversed(results)] == [f"chain{i}" for i in range(n)]
    api.clear_faults()
    assert_nothing_left_pending(api, [r.id for r in results])
    report(f"{shape}({n} tasks).apply_async()", "hang", took, tracked_share(api, [r.id for r in results]))


@pytest.mark.integration
def test_a_chord_published_while_the_api_hangs_waits_one_budget(api, taskbadger_server_session):  # noqa: F811
    """A chord (it needs a result backend: Redis) published from a task's body while the API hangs: the body waits
    one budget for the header's creates, the header and the body run, and none of their tasks is left pending once
    the API answers again. Its own worker: the hang opens the worker's breaker, which the session's chord worker
    must not carry into other tests."""
    from .services import require

    require("redis")
    chords = start_worker(taskbadger_server_session, pool="solo", concurrency=1,
                          extra_env={"TB_RESULT_BACKEND": "redis://127.0.0.1:6379/6",
                                     "TASKBADGER_PUBLISH_BUDGET": str(BUDGET)})
    try:
        api.hang(method="POST")
        publisher = chords.send(tasks.start_chord)  # its own create waits this process's budget: it hangs too
        api.wait_for(lambda: re.search(r"record_me\[[0-9a-f-]{36}\] succeeded", chords.log()), timeout=30)
        took = float(re.search(rf"start_chord\[{publisher.id}\] succeeded in ([0-9.]+)s", chords.log())[1])
        assert took <= BUDGET + 2 * SLACK, took  # the header's creates share one budget
        api.clear_faults()
        ran = re.findall(r"tests\.celery_project\.app\.(?:add|record_me)\[([0-9a-f-]{36})\] succeeded", chords.log())
        assert len(ran) == 3, chords.log()
        assert_nothing_left_pending(api, ran)
    finally:
        api.clear_faults()
        stop_worker(chords)
    report("chord(2 tasks) published from a task's body", "hang", took, tracked_share(api, ran))


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
    go = tmp_path / "go"
    result = worker.send(tasks.progress_loop, 12, after=str(go))
    api.wait_for(lambda: next((t for t in api.tasks.values()
                               if t["external_id"] == result.id and t["status"] == "processing"), None), timeout=20)
    api.refuse()
    try:
        go.touch()
        body = wait_for_result(result.id, timeout=30)
    finally:
        api.clear_faults()
    assert body["value"] == 12 and body["tracked"] and body["shown"] == 12
    assert body["took"] <= 3 * BUDGET + SLACK, body["took"]
    task = api.wait_for(lambda: next((t for t in api.tasks.values()
                                      if t["external_id"] == result.id and t["status"] == "success"), None), timeout=30)
    assert (task["value"], task["value_max"]) == (12, 12)
    report("tb.update() in a Celery task's body (12 in a row)", "refused", body["took"], "ran to its result; success")


@pytest.fixture(scope="module", params=["prefork", "threads"])
def pool_worker(request, taskbadger_server_session):
    """A worker of each of the other pools Celery users run, with the same publish budget: each prefork child has
    its own senders and breaker, the threads of a threads worker share theirs."""
    started = start_worker(taskbadger_server_session, pool=request.param, concurrency=2,
                           extra_env={"TASKBADGER_PUBLISH_BUDGET": str(BUDGET)})
    yield started
    stop_worker(started)


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["hang", "not_json", "503", "429"])
def test_progress_from_a_celery_tasks_body_in_the_other_pools(api, pool_worker, mode):  # noqa: F811
    """The same in a prefork and a threads worker: a sample of the modes (a wait, a bad answer, an error, a
    throttle); the solo worker above takes every one."""
    check_progress_from_a_celery_tasks_body(api, pool_worker, mode)
