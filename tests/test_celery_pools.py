"""Many tasks at once in one worker process: Celery's threads, gevent and eventlet pools, with real workers and the
stand-in API. Each task ends with its own outcome and progress, its body sees its own task (``self.taskbadger_task``,
``taskbadger.current_task()``), the tasks it publishes are its children; calls made at the same moment by many of
them wait for a free place among the breaker's calls in flight instead of going untracked while the API answers."""

import pytest

from .celery_project import app as tasks
from .conftest import start_worker, stop_worker

pytestmark = pytest.mark.integration
NAME = "tests.celery_project.app."
#: pool -> concurrency (``-c``): as many tasks run at once in one process
POOLS = {"gevent": 30, "eventlet": 30, "threads": 8}


@pytest.fixture(scope="module", params=list(POOLS))
def pool_worker(request, taskbadger_server_session):
    worker = start_worker(taskbadger_server_session, pool=request.param, concurrency=POOLS[request.param])
    yield worker
    stop_worker(worker)


def mode(n: int) -> str:
    return "fail" if n % 5 == 1 else "retry" if n % 7 == 3 else "child" if n % 3 == 0 else "ok"


def test_each_task_ends_with_its_own_outcome_and_progress(taskbadger_server, pool_worker):
    """30 tasks at once, each reporting its own progress from its body (the pool switches between them at each
    report), some failing, some retried, some publishing a child: each ends with its own status, progress and data,
    and its body was only ever given its own task; each child is its publisher's."""
    count = 30
    results = {n: pool_worker.send(tasks.concurrent_work, n, 4, mode(n), 0.02) for n in range(count)}
    children = sum(mode(n) == "child" for n in range(count))

    def ended():  # polls the stand-in under a deadline
        final = [t for t in taskbadger_server.tasks.values() if t["status"] in ("success", "error")]
        return final if len(final) == count + children else None

    taskbadger_server.wait_for(ended, timeout=60)
    for n, result in results.items():
        task = taskbadger_server.get_task(result.taskbadger_task_id)
        expected = "error" if mode(n) == "fail" else "success"
        assert (task["status"], task["data"]["n"], task["data"]["celery_id"]) == (expected, n, result.id), task
        assert task["data"]["seen"] == [result.taskbadger_task_id], task  # never another task's
        assert (task["value"], task["value_max"]) == ((4 if expected == "error" else 4 + n), 4 + n), task
        assert task["data"].get("retries") == (1 if mode(n) == "retry" else None), task
    adds = [t for t in taskbadger_server.tasks.values() if t["name"] == NAME + "add"]
    assert sorted(t["parent"] for t in adds) == sorted(results[n].taskbadger_task_id for n in range(count)
                                                       if mode(n) == "child")


def test_children_published_at_the_same_moment_are_tracked_at_publish_as_children(
        taskbadger_server, pool_worker, tmp_path):
    """Many bodies publishing at once, with an API that answers: at most four creates may wait at once (the
    breaker's ``max_in_flight``), and the others skipped theirs at once, so their children went out untracked
    ("Task Badger API answering again: tracking resumed (23 new tasks were not tracked)", with a healthy API), and
    when those ran at once, the worker's creates were skipped as well: of 30 children, 21 were never tracked. They
    now wait for a free place."""
    gate = tmp_path / "go"
    parents = [pool_worker.send(tasks.publish_child_when, str(gate)) for _ in range(POOLS[pool_worker.pool])]
    ids = {r.taskbadger_task_id for r in parents}
    taskbadger_server.wait_for(lambda: all((taskbadger_server.get_task(i) or {}).get("status") == "processing"
                                           for i in ids), timeout=30)
    log_before = len(pool_worker.log())
    gate.write_text("go")

    def children():  # polls the stand-in under a deadline
        found = [t for t in taskbadger_server.tasks.values() if t["name"] == NAME + "add" and t["status"] == "success"]
        return found if len(found) == len(parents) else None

    found = taskbadger_server.wait_for(children, timeout=30)
    assert sorted(t["parent"] for t in found) == sorted(ids)  # one child each, under its own publisher
    creates = [r.json for r in taskbadger_server.requests if r.method == "POST" and r.json["name"] == NAME + "add"]
    assert len(creates) == len(parents)  # one task each: none made twice
    # Created at publish (``pending``), not by the worker: they waited for a place. A wait is bounded by half the
    # create's budget, by design: on a loaded machine (CI's legs, a 2-CPU host) the last of 30 greenlets in one
    # process can pass it, and its child is then created by its worker, under its parent, as the first assertion
    # checks. Before the wait, 21 of 30 were skipped at publish and never tracked; most now wait their turn.
    at_publish = [c["status"] for c in creates].count("pending")
    assert at_publish >= 2 * len(parents) // 3, [c["status"] for c in creates]
    assert "not tracked" not in pool_worker.log()[log_before:]


def test_a_slow_api_is_not_reported_as_failing(taskbadger_server, pool_worker, tmp_path):
    """An API that answers every request, in 0.7 s: bodies publishing at once, and reporting progress, wait for a
    place at most half their budget, then their creates and updates are skipped. The worker said "could not send an
    update ... (the Task Badger API is failing)" and "Task Badger API answering again: tracking resumed (N new tasks
    were not tracked)" about an API that never failed: it says the API is answering slowly."""
    gate = tmp_path / "go"
    parents = [pool_worker.send(tasks.publish_child_when, str(gate), True) for _ in range(POOLS[pool_worker.pool])]
    ids = {r.taskbadger_task_id for r in parents}
    taskbadger_server.wait_for(lambda: all((taskbadger_server.get_task(i) or {}).get("status") == "processing"
                                           for i in ids), timeout=30)
    log_before = len(pool_worker.log())
    taskbadger_server.set_latency(0.7)
    gate.write_text("go")

    def children_ran():  # polls the worker's log under a deadline
        log = pool_worker.log()[log_before:]
        return log if log.count("app.add[") >= 2 * len(parents) and "not tracked" in log else None

    log = taskbadger_server.wait_for(children_ran, timeout=60)
    assert "the API was answering slowly" in log and "API is answering slowly" in log, log[-3000:]
    assert "failing" not in log and "answering again" not in log, log[-3000:]
