"""@track for plain functions."""

import asyncio
import datetime
import decimal
import functools
import inspect
import subprocess
import sys

import pytest

import taskbadger
from taskbadger import StatusEnum, track
from taskbadger.actions import EmailIntegration


@track
def add(a, b):
    return a + b


@track(name="custom name", max_runtime=60)
def explode():
    raise ValueError("bad input")


@track(name="outer")
def outer():
    inner()
    return "done"


@track(name="inner")
def inner():
    innermost()


@track(name="innermost")
def innermost():
    return 1


def final(server, count=1):
    """The tracked calls' tasks once they all have a final state (the end of a call is queued for the
    background senders: the function returns without waiting for the API)."""
    return server.wait_for(lambda: [t for t in server.tasks.values() if t["status"] in ("success", "error")]
                           if len(server.tasks) == count and all(t["status"] in ("success", "error")
                                                                 for t in server.tasks.values()) else None)


def test_bare_decorator_tracks_success(taskbadger_server):
    assert add(2, 3) == 5
    [task] = final(taskbadger_server)
    assert task["name"] == f"{__name__}.add" and task["status"] == "success"
    assert task["start_time"] and task["end_time"]


def test_each_calls_task_has_an_external_id_of_its_own_unless_the_decorator_gives_one(taskbadger_server):
    # what tells a call's task when its create's answer is lost (docs/sdk.md)
    @track(name="given", external_id="nightly-report")
    def given():
        return 1

    add(1, 1)
    add(2, 2)
    given()
    assert taskbadger.flush(5)
    ids = [t["external_id"] for t in taskbadger_server.tasks_named(f"{__name__}.add")]
    assert len(set(ids)) == 2 and all(i.startswith("taskbadger-track-") for i in ids), ids
    assert [t["external_id"] for t in taskbadger_server.tasks_named("given")] == ["nightly-report"]


def test_decorator_with_options_records_the_exception_and_reraises(taskbadger_server):
    with pytest.raises(ValueError, match="bad input"):
        explode()
    [task] = final(taskbadger_server)
    assert (task["name"], task["status"], task["max_runtime"]) == ("custom name", "error", 60)
    assert "ValueError: bad input" in task["data"]["exception"]


def test_nested_calls_become_children_one_level_deep(taskbadger_server):
    assert outer() == "done"
    by_name = {t["name"]: t for t in final(taskbadger_server, 3)}
    root = by_name["outer"]
    assert root["parent"] is None
    assert by_name["inner"]["parent"] == root["id"]
    assert by_name["innermost"]["parent"] == root["id"]  # siblings, not grandchildren
    assert {t["status"] for t in by_name.values()} == {StatusEnum.SUCCESS.value}


def test_function_still_runs_when_unconfigured():
    assert taskbadger.is_configured() is False
    assert add(1, 1) == 2


def test_function_still_runs_when_api_down(taskbadger_server):
    taskbadger_server.fail(503)
    assert add(1, 2) == 3


@pytest.mark.parametrize(("status", "says"), [(400, "refused by a rule"), (401, "TASKBADGER_API_KEY"),
                                              (403, "TASKBADGER_API_KEY"), (404, "has no project acme/demo")])
def test_a_create_the_api_refuses_runs_the_call_untracked_and_says_so_once(taskbadger_server, tb_log, status, says):
    """Every create answered 4xx (a rule of the API, a revoked key, a key of another project, an unknown project):
    each call runs at once with its own result, and one warning (not one per call) says why, never with the key."""
    taskbadger_server.fail(status, method="POST", detail="refused by a rule of this API" if status == 400 else None)
    assert [add(i, 1) for i in range(5)] == [1, 2, 3, 4, 5]
    said = [r.getMessage() for r in tb_log.records if r.levelno >= 30]
    assert len(said) == 1 and str(status) in said[0] and says in said[0], said
    assert taskbadger_server.api_key not in said[0] and taskbadger_server.key not in said[0]


def test_async_functions(taskbadger_server):
    @track(name="async job")
    async def job():
        return 7

    assert asyncio.run(job()) == 7
    [task] = final(taskbadger_server)
    assert (task["name"], task["status"]) == ("async job", "success")


# -- generators: the body runs while it is iterated, not when it is called ------------------------------------------
# Before, the task was created when the generator was made and ended 'success' before its body ran: the body was
# untracked (current_task() None), and a body that raised left the task 'success'.


def test_a_generator_is_tracked_while_it_is_iterated(taskbadger_server):
    seen = []

    @track(name="rows")
    def rows(n):
        for i in range(n):
            tb = taskbadger.current_task()
            seen.append(tb and (tb.name, tb.status))
            received = yield i
            seen.append(received)
        return "all sent"

    gen = rows(2)
    assert inspect.isgeneratorfunction(rows) and taskbadger_server.tasks == {}  # nothing ran yet
    assert next(gen) == 0
    assert taskbadger.current_task() is None  # the caller, between two steps, is not inside the run
    assert gen.send("a") == 1
    with pytest.raises(StopIteration) as stop:
        gen.send("b")
    assert stop.value.value == "all sent"
    assert seen == [("rows", StatusEnum.PROCESSING), "a", ("rows", StatusEnum.PROCESSING), "b"]
    [task] = final(taskbadger_server)
    assert task["status"] == "success"


def test_a_generator_that_raises_ends_error_and_one_closed_early_success(taskbadger_server):
    @track(name="fails")
    def fails():
        yield 1
        raise ValueError("row 2 is bad")

    @track(name="stopped early")
    def endless():
        while True:
            yield 1

    with pytest.raises(ValueError, match="row 2 is bad"):
        list(fails())
    for _ in zip(range(3), endless(), strict=False):
        pass
    tasks = {t["name"]: t for t in final(taskbadger_server, count=2)}
    assert tasks["fails"]["status"] == "error" and tasks["fails"]["data"]["exception_type"] == "ValueError"
    assert tasks["stopped early"]["status"] == "success"


def test_an_async_generator_is_tracked_while_it_is_iterated(taskbadger_server):
    @track(name="async rows")
    async def rows():
        for i in range(2):
            tb = taskbadger.current_task()
            yield i, tb and tb.status

    @track(name="async fails")
    async def fails():
        yield 1
        raise KeyError("gone")

    async def consume():
        got = [item async for item in rows()]
        with pytest.raises(KeyError):
            [item async for item in fails()]
        return got

    assert inspect.isasyncgenfunction(rows)
    assert asyncio.run(consume()) == [(0, StatusEnum.PROCESSING), (1, StatusEnum.PROCESSING)]
    tasks = {t["name"]: t["status"] for t in final(taskbadger_server, count=2)}
    assert tasks == {"async rows": "success", "async fails": "error"}


def test_what_an_async_generators_step_sets_in_a_context_variable_its_next_step_sees():
    """As in the generator without @track (and in a tracked sync generator): each step ran in a copy of the run's
    context, so a value one step set (a logging context bound mid-body) was gone at the next."""
    import contextvars

    if sys.version_info < (3, 11):
        pytest.skip("a task runs in a given context from Python 3.11 on; before, each step runs in a copy of it")
    stage = contextvars.ContextVar("stage", default="none")

    def body():
        async def steps():
            stage.set("opened")
            yield 1
            yield stage.get()
        return steps

    async def consume(gen):
        return [item async for item in gen()]

    plain = body()
    assert asyncio.run(consume(plain)) == [1, "opened"]
    assert asyncio.run(consume(track(name="staged")(body()))) == [1, "opened"]


def test_a_function_made_async_by_sync_to_async_is_tracked_while_it_runs(taskbadger_server):
    # @track above asgiref's @sync_to_async (marked with asyncio's marker before Python 3.12, which inspect does not
    # see) ended the task 'success' when the coroutine was made: the body ran untracked and its failure was lost
    from asgiref.sync import sync_to_async

    @track(name="made async")
    @sync_to_async
    def fails():
        assert taskbadger.current_task() is not None
        raise ValueError("in the thread")

    assert inspect.iscoroutinefunction(fails)
    with pytest.raises(ValueError, match="in the thread"):
        asyncio.run(fails())
    [task] = final(taskbadger_server)
    assert task["status"] == "error" and task["data"]["exception_type"] == "ValueError"


def test_a_function_that_returns_an_awaitable_gets_a_warning_that_says_where_track_goes(taskbadger_server, tb_log):
    async def later():
        return 5

    @track(name="returns a coroutine")
    def starts():
        return later()

    assert asyncio.run(starts()) == 5
    [warning] = [r.getMessage() for r in tb_log.records if "returned an awaitable" in r.getMessage()]
    assert "'returns a coroutine'" in warning and "Decorate the async function itself" in warning


def test_current_task_is_the_tracked_call_and_none_outside(taskbadger_server):
    seen = []

    @track(name="outer call")
    def outer_call():
        seen.append(taskbadger.current_task())
        inner_call()
        seen.append(taskbadger.current_task())

    @track(name="inner call")
    def inner_call():
        seen.append(taskbadger.current_task())

    assert taskbadger.current_task() is None
    outer_call()
    assert taskbadger.current_task() is None
    final(taskbadger_server, count=2)
    outer_task, inner_task, outer_again = seen
    assert outer_task.name == "outer call" and inner_task.name == "inner call"
    assert outer_again is outer_task  # the enclosing call's task again once the inner one returned
    assert inner_task.parent == outer_task.id


def test_current_task_is_none_when_the_call_runs_untracked():
    seen = []

    @track
    def untracked():
        seen.append(taskbadger.current_task())

    untracked()  # not configured: runs untracked
    assert seen == [None]


def test_a_final_state_set_in_the_body_is_not_overwritten(taskbadger_server):
    @track(name="cancels itself")
    def cancels_itself():
        taskbadger.current_task().cancelled()
        return "returned"

    assert cancels_itself() == "returned"
    task = taskbadger_server.wait_for(lambda: [t for t in taskbadger_server.tasks.values()
                                               if t["status"] == "cancelled"] or None)[0]
    taskbadger.flush()
    assert taskbadger_server.get_task(task["id"])["status"] == "cancelled"


def test_a_progress_value_the_api_would_refuse_is_named_in_the_warning(taskbadger_server, tb_log):
    # The warning said "has an invalid value (None)" whatever the body passed: the checked value, not the given one.
    @track(name="bad progress")
    def job():
        tb = taskbadger.current_task()
        tb.update(value=-5, value_max=10)
        tb.update(value_max=2.5)

    job()
    [task] = final(taskbadger_server)
    assert (task["value"], task["value_max"]) == (None, 10)
    warnings = [r.getMessage() for r in tb_log.records if "from the job's body has an invalid" in r.getMessage()]
    assert len(warnings) == 2
    assert "invalid value (-5; expected an integer >= 0)" in warnings[0]
    assert "invalid value_max (2.5; expected an integer >= 0)" in warnings[1]


def test_data_json_cannot_encode_is_stored_as_its_repr_with_a_warning(taskbadger_server, tb_log):
    # It was converted silently: the dashboard showed "Decimal('1.5')" and no log line said why.
    @track(name="odd data")
    def job():
        taskbadger.current_task().update(data={"when": datetime.date(2026, 1, 2), "amount": decimal.Decimal("1.5"),
                                               "ids": {7}, "rows": 3})

    job()
    [task] = final(taskbadger_server)
    assert task["data"] == {"when": "datetime.date(2026, 1, 2)", "amount": "Decimal('1.5')", "ids": "{7}", "rows": 3}
    [warning] = [r.getMessage() for r in tb_log.records if "JSON cannot encode" in r.getMessage()]
    assert "stored as their repr; convert them to strings, numbers, lists or dicts" in warning


@pytest.mark.filterwarnings("ignore:.*actions.*:DeprecationWarning")
def test_an_action_that_is_not_one_is_refused_where_the_decorator_is_written(taskbadger_server):
    # it raised at every call instead, before the function ran, even with Task Badger not configured
    with pytest.raises(taskbadger.TaskbadgerException, match="Not an action.*use taskbadger.Action"):
        track(actions=[{"trigger": "success"}])


@pytest.mark.parametrize(("options", "says"), [
    ({"name": 5}, "name must be a non-empty string"),
    ({"name": " "}, "name must be a non-empty string"),
    ({"monitor_id": "nightly"}, "monitor_id must be a monitor id"),
    ({"max_runtime": "60"}, "max_runtime must be an integer number of seconds"),
    ({"status": "done"}, "Unknown task status 'done'"),
    ({"tags": {"user": "7"}}, "tags must be a dict of strings to strings of 2 to 255"),
    ({"value_max": -1}, "value_max must be an integer >= 0"),
    ({"data": {"ids": {7}}}, "data must be what JSON encodes"),
])
def test_an_option_the_api_would_refuse_is_refused_where_the_decorator_is_written(taskbadger_server, options, says):
    # Each call ran untracked instead, warned about at most once a minute; with a name that is not text the
    # user's own call raised TypeError ('int' object is not subscriptable) from our logging.
    with pytest.raises(taskbadger.InvalidData, match=f"@track\\({next(iter(options))}=.*{says}"):
        track(**options)


def test_options_the_api_takes_are_not_refused(taskbadger_server):
    @track(queue="", tags={}, parent=None, data=[1, 2], status="pre_processing")
    def job():
        return 1

    assert job() == 1
    [task] = final(taskbadger_server)
    assert (task["queue"], task["data"]) == ("", [1, 2])


def test_a_name_longer_than_the_api_takes_is_cut_and_the_call_tracked(taskbadger_server):
    # upstream and here before: the create was refused (400) and every call ran untracked
    assert track(name="x" * 300)(lambda: 1)() == 1
    [task] = final(taskbadger_server)
    assert task["name"] == "x" * 254 + "…" and task["status"] == "success"


def test_a_callable_without_a_qualname_is_tracked_under_its_function_s_name(taskbadger_server):
    # a functools.partial has no __qualname__: @track raised AttributeError where it was applied
    tracked = track(functools.partial(add.__wrapped__, 1))
    assert tracked(2) == 3
    [task] = final(taskbadger_server)
    assert task["name"] == f"{__name__}.add" and task["status"] == "success"


@pytest.mark.filterwarnings("ignore:.*actions.*:DeprecationWarning")
def test_valid_actions_reach_the_task_and_the_calls_run(taskbadger_server):
    ran = []

    @track(actions=[taskbadger.Action("success", EmailIntegration(to="ops@example.test"))])
    def job(x):
        ran.append(x)
        return x

    assert job(1) == 1 and job(2) == 2 and ran == [1, 2]
    assert taskbadger.flush(5)
    created = [r for r in taskbadger_server.requests if r.method == "POST"]
    assert len(created) == 2
    assert all(r.json["actions"] == [{"trigger": "success", "integration": "email",
                                        "config": {"to": "ops@example.test"}}] for r in created)


# -- in multiprocessing's workers (they end through os._exit: no atexit) ---------------------------------------


def _run_in(how):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("fork")
    if how == "process":
        child = context.Process(target=add, args=(1, 2))
        child.start()
        child.join(30)
        return 1
    if how == "pool":
        with context.Pool(2) as pool:  # its __exit__ terminates the workers once it has the results
            assert pool.starmap(add, [(i, 1) for i in range(4)]) == [1, 2, 3, 4]
        return 4
    with ProcessPoolExecutor(2, mp_context=context) as executor:
        assert list(executor.map(add, range(3), [1] * 3)) == [1, 2, 3]
    return 3


# It forks a process that has threads, on purpose, as multiprocessing's users do (Python 3.12 warns about it).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Using fork.. is a bad idea:DeprecationWarning")  # eventlet, when loaded
@pytest.mark.parametrize("how", ["process", "pool", "executor"])
def test_calls_in_forked_workers_end_with_their_final_state(taskbadger_server, how):
    """Their final update was queued for senders that never sent it: the tasks stayed processing for ever."""
    count = _run_in(how)
    assert [t["status"] for t in final(taskbadger_server, count)] == ["success"] * count


ASYNC_AT_EXIT = """
import asyncio, atexit, sys
import taskbadger

taskbadger.init(token=sys.argv[2], host=sys.argv[1])

@taskbadger.track(name="async cleanup")
async def cleanup():
    return 7

atexit.register(lambda: print("cleanup returned", asyncio.run(cleanup()), flush=True))
"""


def test_a_tracked_coroutine_run_at_exit_runs_and_is_tracked(taskbadger_server):
    # A tracked coroutine makes its create in a thread pool, so that the event loop never waits for the API. Once
    # the interpreter is shutting down (an atexit handler) the pool cannot even be made: the RuntimeError went into
    # the user's coroutine, which never ran. The create is now made on the loop's thread then.
    done = subprocess.run([sys.executable, "-c", ASYNC_AT_EXIT, taskbadger_server.url, taskbadger_server.api_key],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.strip() == "cleanup returned 7", done.stderr
    taskbadger_server.wait_for_task(name="async cleanup", status="success", timeout=10)
