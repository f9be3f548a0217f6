"""CelerySystemIntegration: rules, message headers for any task, recorded arguments, heartbeats."""

import logging

import pytest

import taskbadger
from taskbadger.celery.options import MAX_RECORDED_ARGS_CHARS
from taskbadger.systems import CelerySystemIntegration as FromPackage
from taskbadger.systems.celery import CelerySystemIntegration

from .celery_project import app as tasks

pytestmark = pytest.mark.integration
NAME = "tests.celery_project.app."


def init_with(server, **kwargs):
    taskbadger.init(token=server.api_key, host=server.url, systems=[CelerySystemIntegration(**kwargs)])


def test_importable_from_both_places():
    assert FromPackage is CelerySystemIntegration


def test_rules_match_whole_names_and_excludes_win():
    system = CelerySystemIntegration(includes=[r"billing\..*", "reports.daily"], excludes=[r".*\.secret"])
    assert system.track_task("billing.invoice")
    assert not system.track_task("billing.secret")
    assert not system.track_task("reports.daily_extra")  # full match, not a prefix
    assert not system.track_task("celery.backend_cleanup")
    assert not CelerySystemIntegration(auto_track_tasks=False).track_task("billing.invoice")
    assert CelerySystemIntegration().track_task("anything.at.all")


def test_auto_tracks_plain_tasks_by_rules(taskbadger_server, prefork_worker):
    init_with(taskbadger_server, includes=[NAME + "plain_.*"], excludes=[NAME + "plain_other"])
    prefork_worker.send(tasks.plain_add, 1, 2)
    prefork_worker.send(tasks.plain_other, 1)
    prefork_worker.send(tasks.untracked_plain, 1)
    prefork_worker.send(tasks.add, 0, 0)  # base class: tracked whatever the rules say
    taskbadger_server.wait_for(lambda: {t["name"] for t in taskbadger_server.tasks.values()
                                        if t["status"] == "success"} == {NAME + "plain_add", NAME + "add"})


def test_options_through_headers_for_any_task(taskbadger_server, prefork_worker):
    init_with(taskbadger_server, auto_track_tasks=False)
    prefork_worker.send(tasks.untracked_plain, 5, headers={
        "taskbadger_track": True, "taskbadger_kwargs": {"name": "header task", "value_max": 3, "tags": {"via": "hdr"}}})
    task = taskbadger_server.wait_for_task(name="header task", status="success")
    assert (task["value_max"], task["tags"]) == (3, {"via": "hdr"})


def test_record_task_args_json_repr_fallback_and_truncation(taskbadger_server, prefork_worker):
    init_with(taskbadger_server, auto_track_tasks=False, record_task_args=True)
    tasks.record_me.apply_async((1, "two"), {"flag": True, "nested": {"a": [1, 2]}}, queue=prefork_worker.queue)
    task = taskbadger_server.wait_for_task(name=NAME + "record_me", status="success")
    assert task["data"]["celery_task_args"] == [1, "two"]
    assert task["data"]["celery_task_kwargs"] == {"flag": True, "nested": {"a": [1, 2]}}

    taskbadger_server.reset()
    prefork_worker.send(tasks.record_me, "x" * (MAX_RECORDED_ARGS_CHARS * 3))
    task = taskbadger_server.wait_for_task(name=NAME + "record_me", status="success")
    assert task["data"]["celery_task_args_truncated"] is True
    assert len(task["data"]["celery_task_args"]) <= MAX_RECORDED_ARGS_CHARS


def test_recorded_arg_json_cannot_encode_is_stored_as_repr(taskbadger_server, celery_app, tb_log):
    # A set travels fine with the pickle serializer; Task Badger stores its repr.
    init_with(taskbadger_server, auto_track_tasks=False, record_task_args=True)
    from taskbadger.celery.options import recorded_args

    assert recorded_args(({1, 2},), {"when": object}) == {
        "celery_task_args": [repr({1, 2})], "celery_task_kwargs": {"when": repr(object)}}


def test_record_task_args_per_call(taskbadger_server, prefork_worker):
    prefork_worker.send(tasks.record_me, 7, taskbadger_record_task_args=True)
    task = taskbadger_server.wait_for_task(name=NAME + "record_me", status="success")
    assert task["data"]["celery_task_args"] == [7]


def test_heartbeat_pings_running_task_and_stale_timeout_applies_once_running(taskbadger_server, any_worker):
    result = any_worker.send(tasks.sleep_for, 2.5, taskbadger_heartbeat_interval=0.5)
    [create] = [r for r in taskbadger_server.requests if r.method == "POST"]
    assert "stale_timeout" not in create.json  # waiting in the queue never goes stale
    task = taskbadger_server.wait_for_task(name=NAME + "sleep_for", status="success", timeout=20)
    assert task["stale_timeout"] == 1  # 2 x 0.5 s, rounded up
    patches = [r for r in taskbadger_server.requests
               if r.method == "PATCH" and r.path.endswith(f"/{result.taskbadger_task_id}/")]
    pings = [p for p in patches if p.json == {}]
    assert len(pings) >= 2, [p.json for p in patches]


def test_a_task_waiting_for_its_retry_has_no_stale_timeout(taskbadger_server, prefork_worker):
    """A retry's countdown (its backoff) is a wait in the queue: no heartbeat comes. The stale timeout its first
    attempt ran with stayed on the pending task, and Task Badger marked it stale before its next attempt began."""
    result = prefork_worker.send(tasks.retry_later, 3)

    def waiting():  # polls the stand-in under a deadline
        task = taskbadger_server.get_task(result.taskbadger_task_id)
        return task if task and task["status"] == "pending" and (task["data"] or {}).get("retries") == 1 else None

    assert taskbadger_server.wait_for(waiting)["stale_timeout"] is None
    first = next(r for r in taskbadger_server.requests if r.method == "PATCH")
    assert (first.json["status"], first.json["stale_timeout"]) == ("processing", 1)  # it ran with one
    task = taskbadger_server.wait_for_task(name=NAME + "retry_later", status="success", timeout=20)
    assert task["stale_timeout"] == 1  # applied again once its next attempt runs
    assert list(taskbadger_server.tasks) == [result.taskbadger_task_id]


@pytest.mark.parametrize("pool", ["threads", "gevent"])
def test_a_retry_running_while_its_first_attempt_ends_keeps_its_heartbeat(taskbadger_server, pool, request,
                                                                          tmp_path):
    """A retry's next attempt started in the same process (threads, green pools) before the first attempt had
    ended: the first attempt's end stopped the heartbeat of the task, which the next attempt was running (no ping
    in its 3 s, with pings due every 0.5 s)."""
    worker = request.getfixturevalue(f"{pool}_worker")
    result = worker.send(tasks.retry_overlapping, str(tmp_path / "started"), 3.0)
    taskbadger_server.wait_for_task(name=NAME + "retry_overlapping", status="success", timeout=30)
    patches = [r for r in taskbadger_server.requests
               if r.method == "PATCH" and r.path.endswith(f"/{result.taskbadger_task_id}/")]
    last_start = max(i for i, p in enumerate(patches) if p.json.get("status") == "processing")
    pings = [p for p in patches[last_start:] if p.json == {}]  # the next attempt's
    assert pings, [p.json for p in patches]


def test_a_monitor_id_that_is_not_one_is_refused_with_a_clear_error():
    good = "0B0B5C86-4A43-4C3C-9A53-7D3E6F1C2A11"
    assert CelerySystemIntegration(monitors={"a.task": good, "b.task": None}).monitors == {"a.task": good.lower()}
    with pytest.raises(taskbadger.ConfigurationError, match="monitor id") as info:
        CelerySystemIntegration(monitors={"a.task": good, "b.task": "m\r\nX-Injected: 1"})
    assert "'b.task'" in str(info.value) and "\r\n" not in str(info.value) and "a UUID" in str(info.value)


@pytest.mark.parametrize("interval", [1e-9, 0.05, 5e-324])
def test_a_heartbeat_interval_too_short_to_mean_anything_is_refused_wherever_it_enters(interval, caplog):
    """1e-9 passed every check and the heartbeat thread pinged without a pause (2 s of CPU and 37 PATCHes in a task
    that slept 2 s): from a setting, a task's option, or the header another producer wrote on a message."""
    from taskbadger.lifecycle import carried
    from taskbadger.lifecycle.options import OPTIONS, check_option

    with pytest.raises(taskbadger.ConfigurationError, match="heartbeat_interval .* from 0.1 to 86400"):
        CelerySystemIntegration(heartbeat_interval=interval)
    assert check_option("heartbeat_interval", interval) == (False, None)
    assert "0.1 to 86400" in OPTIONS["heartbeat_interval"][1]  # what the warning about the option says
    with caplog.at_level(logging.WARNING, logger="taskbadger"):
        meta = carried.parse_meta({"task": {"id": "t-1"}, "heartbeat_interval": interval}, "app.task", "header")
    assert meta is not None and meta.heartbeat_interval is None
    assert "heartbeat_interval on task 'app.task' is not a number of seconds from 0.1 to 86400" in caplog.text
    assert check_option("heartbeat_interval", 0.1) == (True, 0.1)


def test_a_monitor_id_is_read_strictly_not_as_int_reads_digits():
    """uuid.UUID reads the hex digits with int(), which takes spaces, underscores and non-ASCII digits: an id missing
    its last character and followed by a newline passed every check and another id was sent."""
    from taskbadger.models import monitor_id

    good = "0b0b5c86-4a43-4c3c-9a53-7d3e6f1c2a11"
    for same in (good, good.upper(), "{" + good + "}", "urn:uuid:" + good, good.replace("-", "")):
        assert monitor_id(same) == good
    digits = good.replace("-", "")
    arabic_indic = good.translate({ord(d): chr(0x660 + int(d)) for d in "0123456789"})
    for bad in (" " + good[:-1], good[:-1] + "\n", "_".join([digits[:16], digits[16:]]), arabic_indic,
                good[:-1] + "\t"):
        assert monitor_id(bad) is None, bad
        with pytest.raises(taskbadger.ConfigurationError, match="monitor id"):
            CelerySystemIntegration(monitors={"a.task": bad})


def test_bad_integration_settings_raise_clearly():
    with pytest.raises(taskbadger.ConfigurationError, match="heartbeat_interval"):
        CelerySystemIntegration(heartbeat_interval=-1)
    # infinity broke every publish (no stale timeout can be derived from it); past a day the workers dropped it
    for interval in (float("inf"), float("nan"), 86_401):
        with pytest.raises(taskbadger.ConfigurationError, match="heartbeat_interval .* from 0.1 to 86400"):
            CelerySystemIntegration(heartbeat_interval=interval)
    # the API refuses these: every task would run untracked
    for stale in (3_000_000_000, 0, 1.5):
        with pytest.raises(taskbadger.ConfigurationError, match="stale_timeout .* from 1 to 2147483647"):
            CelerySystemIntegration(stale_timeout=stale)
    with pytest.raises(taskbadger.ConfigurationError, match="not a valid regular expression"):
        CelerySystemIntegration(includes=["(unclosed"])


def test_two_worker_nodes_on_one_broker(taskbadger_server, prefork_worker):
    from .conftest import start_worker, stop_worker

    second = start_worker(taskbadger_server, pool="prefork", concurrency=2, queue=prefork_worker.queue)
    try:
        results = [prefork_worker.send(tasks.sleep_for, 0.3) for _ in range(10)]
        taskbadger_server.wait_for(lambda: len([t for t in taskbadger_server.tasks.values()
                                                if t["status"] == "success"]) == 10, timeout=30)
        assert {t["external_id"] for t in taskbadger_server.tasks.values()} == {r.id for r in results}
        for node in (prefork_worker, second):
            assert "succeeded in" in node.log(), f"{node.name} ran no task"
    finally:
        stop_worker(second)


def test_unconfigured_publisher_logs_nothing_and_publishes(prefork_worker, tb_log, taskbadger_server_session):
    taskbadger.config.reset()
    result = prefork_worker.send(tasks.add, 1, 2, taskbadger_track=False)
    assert result.id
    assert not [r for r in tb_log.records if r.levelno >= logging.WARNING]


def test_a_worker_without_tracking_runs_a_tracked_message_untracked(taskbadger_server):
    """The publisher tracked the task (its id travels in the headers), the worker is not configured (the key
    exported in the shell that publishes, not in the worker's): the body's ``if tb: tb.update(...)`` sees None
    and the task succeeds (it failed with MissingConfiguration), and the worker's start line says why."""
    from .conftest import start_worker, stop_worker
    from .foreign import wait_for_result

    worker = start_worker(taskbadger_server, pool="solo", concurrency=1, extra_env={"TASKBADGER_API_KEY": ""})
    try:
        failed = worker.send(tasks.fail, "broken on purpose")  # its end is reported by the worker's main process
        result = worker.send(tasks.report_progress, 7)
        assert result.taskbadger_task_id is not None  # tracked at publish
        assert wait_for_result(result.id) == {"value": 7, "tracked": False}
        taskbadger_server.wait_for(lambda: f"{failed.id}] raised unexpected" in worker.log(), timeout=10)
        taskbadger_server.wait_for(lambda: "succeeded in" in worker.log(), timeout=10)  # logged after the body
        assert "Task Badger: not tracking tasks in this worker: no API key" in worker.log(), worker.log()
        assert "dropped" not in worker.log() and "MissingConfiguration" not in worker.log(), worker.log()
        assert taskbadger_server.tasks[result.taskbadger_task_id]["status"] == "pending"  # no PATCH from the worker
        # a worker started with `-l warning` hides the start line: the first tracked message says it, once
        second = worker.send(tasks.report_progress, 8)
        assert wait_for_result(second.id) == {"value": 8, "tracked": False}
        warning = (f"WARNING/MainProcess] Task Badger: this worker received task '{NAME}fail', which its "
                   f"publisher tracks (Task Badger task {failed.taskbadger_task_id}), but it does not track tasks "
                   "itself: no API key")
        assert warning in worker.log() and worker.log().count("WARNING/MainProcess] Task Badger: this worker") == 1, \
            worker.log()
    finally:
        stop_worker(worker)


@pytest.mark.parametrize(("key", "reason"), [
    ("", "Task Badger is not configured (set TASKBADGER_API_KEY"),
    ("a-key", "TASKBADGER_API_KEY is set, but nothing called taskbadger.init() in this worker"),
])
def test_a_worker_of_a_plain_celery_app_says_why_it_does_not_track(monkeypatch, caplog, key, reason):
    """A Celery app without the Django app that never calls ``taskbadger.init()``: with the key exported,
    the start line said to set it."""
    from taskbadger.celery import signals

    monkeypatch.setenv("TASKBADGER_API_KEY", key)
    previous = taskbadger.config.set_config(None)
    try:
        with caplog.at_level(logging.INFO, logger="taskbadger"):
            signals.log_start_line()
    finally:
        taskbadger.config.set_config(previous)
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"Task Badger: not tracking tasks in this worker: {reason}")


def test_a_publisher_that_nothing_configured_says_so_once(monkeypatch, caplog):
    # The key is exported, but nothing called taskbadger.init() and taskbadger_django is not installed in this
    # process: a base=Task task went out untracked without a word, and its progress bar said "not available".
    from celery import Celery

    from taskbadger.celery import Task

    taskbadger.config.reset()
    monkeypatch.setenv("TASKBADGER_API_KEY", "YWNtZS9kZW1vL2s=")
    from celery import _state as celery_state

    previous = celery_state.get_current_app()
    app = Celery("unconfigured-publisher", broker="memory://", set_as_current=True)  # as in a project
    restore_current = previous.set_current

    @app.task(base=Task, shared=False, name="billing.jobs.refund")
    def refund(order):
        return order

    @app.task(shared=False, name="billing.jobs.plain")
    def plain(order):
        return order

    def ours():
        return [r.getMessage() for r in caplog.records if r.name == "taskbadger"]

    try:
        with caplog.at_level(logging.WARNING, logger="taskbadger"):
            plain.delay(1)  # not asked to be tracked: nothing to say
            assert not ours()
            refund.delay(1)
            refund.delay(2)
    finally:
        restore_current()
    [line] = ours()
    assert line == ("Task Badger: 'billing.jobs.refund' was published untracked: TASKBADGER_API_KEY is set, but "
                    "nothing called taskbadger.init() in this process (call it where the Celery app is made, or add "
                    "taskbadger_django to INSTALLED_APPS)")
