"""Tracking never breaks a defer or a job: with the API refusing connections, hanging, or answering 500,
``defer()`` and ``defer_async()`` return within the publish budget, every job runs in a real worker (which
meets the same API), and its Procrastinate status is what it would be untracked. Once the API behaves
again, no task created for these jobs is left pending or processing."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

import procrastinate
import pytest

import taskbadger
from taskbadger import inline
from taskbadger.procrastinate import TB_TASK_ID_KWARG
from taskbadger.systems.procrastinate import ProcrastinateSystemIntegration

from .procrastinate_project import app as tasks
from .services import api_fault, revoked_key
from .test_procrastinate import app, dsn, job_of, start, stop, wait_job  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

MODES = ["refused", "hang", "500", "slow", "429", "not_json", "not_json everywhere"]
BUDGET = 0.5  # the publish budget the tests configure (in this process and the worker)
TIMEOUT = (0.5, 0.5)
SLACK = 0.35  # what a loaded, shared machine may add before the call returns


@pytest.fixture(scope="module")
def worker(taskbadger_server_session, dsn):  # noqa: F811
    started = start(taskbadger_server_session, dsn, extra_env={"TASKBADGER_PUBLISH_BUDGET": str(BUDGET)})
    yield started
    stop(started)


@pytest.fixture
def api(taskbadger_server, app):  # noqa: F811
    taskbadger.init(
        token=taskbadger_server.api_key,
        host=taskbadger_server.url,
        timeout=TIMEOUT,
        publish_budget=BUDGET,
        systems=[ProcrastinateSystemIntegration(app)],
    )
    yield taskbadger_server
    taskbadger_server.clear_faults()


def timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


@pytest.mark.parametrize("mode", MODES)
def test_defer_keeps_its_budget_and_the_jobs_run_as_untracked(api, app, dsn, worker, mode, monkeypatch):  # noqa: F811
    # A slow API carries out the creates the defers gave up: each is closed (cancelled, saying why) once its late
    # answer comes, after a grace for a worker to take it up (30 s; 1 s here, so the check below need not wait).
    monkeypatch.setattr(inline, "LATE_CLOSE_GRACE", 1.0)
    api_fault(api, mode)
    q = worker.queue
    sent = [timed(lambda i=i: tasks.echo.configure(queue=q).defer(value=f"v{i}")) for i in range(4)]
    sent.append(timed(lambda: tasks.boom.configure(queue=q).defer(message="fails as it would untracked")))

    async def defer_async():
        with app.replace_connector(procrastinate.PsycopgConnector(conninfo=dsn)):
            async with app.open_async():
                out = []
                for i in range(3):
                    started = time.monotonic()
                    job_id = await tasks.aecho.configure(queue=q).defer_async(value=f"a{i}")
                    out.append((job_id, time.monotonic() - started))
                return out

    sent += asyncio.run(defer_async())
    waits = [seconds for _, seconds in sent]
    assert max(waits) <= BUDGET + SLACK, waits
    job_ids = [job_id for job_id, _ in sent]
    statuses = [wait_job(app, job_id, timeout=30).status for job_id in job_ids]
    assert statuses == ["succeeded"] * 4 + ["failed"] + ["succeeded"] * 3
    api.clear_faults()

    def open_tasks():  # every task of this worker's queue, whether its job id reached it or not
        return [
            (t["external_id"], t["status"])
            for t in api.tasks.values()
            if t["queue"] == q and t["status"] not in ("success", "error", "cancelled")
        ]

    try:
        api.wait_for(lambda: not open_tasks() or None, timeout=20)
    except AssertionError:
        raise AssertionError(f"left open: {open_tasks()}") from None


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_batch_defer_waits_one_budget_and_every_job_is_tracked(api, app, dsn, asynchronous):  # noqa: F811
    """An API that answers each create in 0.2 s (within the budget, so the breaker never opens): a batch of 20 jobs
    made 20 creates one after the other, each with a budget of its own, and ``batch_defer()`` waited 4 s (50 jobs
    at 0.5 s: 25 s). Its creates now share one budget: the jobs whose create did not fit are deferred untracked,
    and their worker creates their tasks; every job ends ``success`` in one task of its own."""
    api.set_latency(0.2, method="POST")
    queue = f"batch-{uuid.uuid4().hex[:6]}"
    deferred = tasks.echo.configure(queue=queue)
    values = [{"value": f"v{i}"} for i in range(20)]
    if asynchronous:
        async def batch_defer_async():
            with app.replace_connector(procrastinate.PsycopgConnector(conninfo=dsn)):
                async with app.open_async():
                    return await deferred.batch_defer_async(*values)

        job_ids, took = timed(lambda: asyncio.run(batch_defer_async()))
    else:
        job_ids, took = timed(lambda: deferred.batch_defer(*values))
    assert took <= BUDGET + 2 * SLACK, took  # the creates' budget, and the insert of 20 jobs on a loaded machine
    tracked_at_defer = [job_id for job_id in job_ids if TB_TASK_ID_KWARG in job_of(app, job_id).task_kwargs]
    assert 1 <= len(tracked_at_defer) < len(job_ids), tracked_at_defer  # the first create fits, not all of them
    # The jobs run in a worker of their own, once the API answers at its usual speed: this test is about the defer,
    # and the module's worker carries its breaker's state from the faults above.
    api.clear_faults()
    worker = start(api, dsn, queue=queue, extra_env={"TASKBADGER_PUBLISH_BUDGET": str(BUDGET)})
    try:
        assert [wait_job(app, job_id, timeout=30).status for job_id in job_ids] == ["succeeded"] * len(job_ids)

        def ended():  # polls the stand-in under a deadline
            found = [t for t in api.tasks.values() if t["queue"] == queue]
            return found if len(found) >= len(job_ids) and all(t["status"] == "success" for t in found) else None

        found = api.wait_for(ended, timeout=30)
    finally:
        stop(worker)
    assert sorted(int(t["external_id"]) for t in found) == sorted(job_ids)  # one task per job, none left behind


@pytest.mark.parametrize("mode", ["hang", "hang GET", "503", "404"])
def test_progress_from_a_jobs_body_never_fails_or_holds_up_the_job(api, app, worker, mode, tmp_path):  # noqa: F811
    """``tb.update()`` in a loop while the API misbehaves with updates (or with the read of the task's data that
    ``current_task()`` makes: it waited the whole request timeout): the job succeeds, held up by a few budgets at
    most; once the API behaves, its task ends ``success`` with the progress it reported."""
    if mode == "hang":
        api.hang(method="PATCH")
    elif mode == "hang GET":
        api.hang(method="GET")
    else:
        api.fail(int(mode), method="PATCH")
    out = tmp_path / "body.json"
    job_id = tasks.progress_loop.configure(queue=worker.queue).defer(path=str(out), steps=12)
    assert wait_job(app, job_id, timeout=30).status == "succeeded"
    body = json.loads(out.read_text())
    # A refused update is not shown, unless queued without asking (the worker still counting the API as failing
    # from an earlier mode): under 404 the body shows the last update queued so, if any (a CI run: 1, the worker
    # learnt the API answered again after its first update).
    shown = (None, *range(1, 13)) if mode == "404" else (12,)
    assert body["shown"] in shown and body["took"] <= 3 * BUDGET + SLACK, body
    api.clear_faults()
    if mode != "404":
        api.wait_for(lambda: next((t for t in api.tasks.values() if t["external_id"] == str(job_id)
                                   and t["status"] == "success" and t["value"] == 12), None), timeout=20)


def test_an_async_jobs_body_never_waits_for_the_api_on_the_workers_event_loop(api, app, worker, tmp_path):  # noqa: F811
    """``current_task()`` and ``tb.update()`` in an ``async def`` job while the API hangs: they return at once, and
    the other jobs on the worker's event loop are not held up (``current_task()`` fetched the task's data on the
    loop, stalling every job of the worker for the whole request timeout). Its merge into the task's data is made
    against the task's data once the API answers."""
    api.hang(method="GET")
    q, out, started = worker.queue, tmp_path / "body.json", tmp_path / "watch-started"
    watch_id = tasks.loop_watch.configure(queue=q).defer(started=str(started), until=str(out))
    job_id = tasks.async_progress.configure(queue=q).defer(path=str(out), after=str(started))
    assert wait_job(app, job_id, timeout=30).status == "succeeded"
    assert wait_job(app, watch_id, timeout=30).status == "succeeded"
    body = json.loads(out.read_text())
    worst = json.loads((tmp_path / "body.json.watch").read_text())["worst"]
    assert body["tracked"] and body["took"] <= SLACK, body
    assert worst <= SLACK, worst
    api.clear_faults()
    api.wait_for(lambda: next((t for t in api.tasks.values() if t["external_id"] == str(job_id)
                               and t["status"] == "success" and t["value"] == 2
                               and t["data"] == {"origin": "deferred", "seen": "async"}), None), timeout=20)


def test_a_periodic_run_whose_create_is_answered_late_keeps_its_outcome(taskbadger_server, dsn):  # noqa: F811
    """Every answer slow, past the worker's publish budget: the worker's create of a periodic run is carried out and
    answered late, after the run has ended. The run's outcome waited to be recorded on the task (looked up by its job
    id once the API answers within the budget), but the late answer closed the task first, as cancelled ("abandoned…
    the run untracked"): a monitored run that succeeded checked in as cancelled."""
    monitor = str(uuid.uuid4())
    queue = f"late-{uuid.uuid4().hex[:6]}"
    taskbadger_server.set_latency(BUDGET + 0.6)
    worker = start(taskbadger_server, dsn, queue=queue, extra_env={
        "TB_PRO_PERIODIC": "1", "TB_PRO_QUEUE": queue, "TB_PRO_MONITORS": json.dumps({"tick": monitor}),
        "TASKBADGER_PUBLISH_BUDGET": str(BUDGET)})
    try:
        def first_ended():  # polls the stand-in under a deadline
            ticks = taskbadger_server.tasks_named("tick")
            return ticks[0] if ticks and ticks[0]["status"] in ("success", "error", "cancelled") else None

        first = taskbadger_server.wait_for(first_ended, timeout=30)
    finally:
        stop(worker)
        taskbadger_server.set_latency(0)
    assert (first["status"], first["monitor_id"]) == ("success", monitor), first
    assert "abandoned" not in (first["data"] or {})
    assert not [t for t in taskbadger_server.tasks_named("tick") if t["status"] == "cancelled"]


def test_a_key_the_api_refuses_is_said_never_shown(taskbadger_server, app, dsn, caplog):  # noqa: F811
    """Contract 4 under a 401: a revoked key, in this process's ``init()`` and in the worker's ``TASKBADGER_API_KEY``.
    The defers' creates and the worker's (each job went out untracked) are refused; every job succeeds, both processes
    say the key was refused and where to set it, and neither the key nor its secret is in anything they log (the
    worker's at DEBUG)."""
    key, secret = revoked_key(taskbadger_server)
    taskbadger.init(token=key, host=taskbadger_server.url, timeout=TIMEOUT, publish_budget=BUDGET,
                    systems=[ProcrastinateSystemIntegration(app)])
    caplog.set_level(logging.DEBUG, logger="taskbadger")
    worker = start(taskbadger_server, dsn, verbosity=2,
                   extra_env={"TASKBADGER_API_KEY": key, "TASKBADGER_PUBLISH_BUDGET": str(BUDGET)})
    try:
        job_ids = [tasks.echo.configure(queue=worker.queue).defer(value=f"k{i}") for i in range(2)]
        assert [wait_job(app, job_id, timeout=30).status for job_id in job_ids] == ["succeeded"] * 2
        refused = [r for r in taskbadger_server.requests if r.method == "POST"]
        # the defers' creates, then the worker's as each job starts: all refused, no task made
        assert len(refused) >= 2 and {r.status for r in refused} == {401}, refused
        assert not taskbadger_server.tasks
    finally:
        stop(worker)
    assert "401" in caplog.text and "TASKBADGER_API_KEY" in caplog.text, caplog.text
    assert "401" in worker.log() and "TASKBADGER_API_KEY" in worker.log(), worker.log()[-4000:]
    said = caplog.text + worker.log()
    assert key not in said and secret not in said
