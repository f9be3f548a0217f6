"""taskbadger.Task: status helpers, progress, pings, tags, merging, copy/pickle."""

import copy
import logging
import pickle

import pytest

import taskbadger
from taskbadger import DefaultMergeStrategy, StatusEnum, Task


def patches(server):
    return [r for r in server.requests if r.method == "PATCH"]


def test_create_get_and_attribute_access(taskbadger_server):
    task = Task.create("report", value_max=50)
    assert isinstance(task, Task)
    again = Task.get(task.id)
    assert (again.id, again.name, again.value_max) == (task.id, "report", 50)
    with pytest.raises(AttributeError):
        again.no_such_field  # noqa: B018


@pytest.mark.parametrize(
    "method,status",
    [
        ("pre_processing", "pre_processing"),
        ("processing", "processing"),
        ("post_processing", "post_processing"),
        ("success", "success"),
        ("canceled", "cancelled"),
    ],
)
def test_status_helpers(taskbadger_server, method, status):
    task = Task.create("s")
    getattr(task, method)()
    assert task.status == status
    assert taskbadger_server.get_task(task.id)["status"] == status


def test_success_with_value_sets_end_time(taskbadger_server):
    task = Task.create("s")
    task.success(value=100)
    assert (task.status, task.value, task.value_percent) == (StatusEnum.SUCCESS, 100, 100)
    assert task.end_time is not None


def test_error_records_type_message_traceback_and_keeps_data(taskbadger_server):
    task = Task.create("e", data={"input": "file.csv"})

    def fail():
        raise KeyError("missing column")

    try:
        fail()
    except KeyError as exc:
        task.error(exception=exc, data={"row": 7})
    data = taskbadger_server.get_task(task.id)["data"]
    assert data["input"] == "file.csv" and data["row"] == 7
    assert "Traceback" in data["exception"] and "KeyError: 'missing column'" in data["exception"]
    assert "in fail" in data["exception"]
    assert data["exception_type"] == "KeyError"
    assert task.status == StatusEnum.ERROR


def test_error_with_a_message_for_exception_records_it_as_the_official_sdk_does(taskbadger_server):
    # upstream code passes the message (task.error(exception=str(err))): it raised AttributeError here
    task = Task.create("e", data={"input": "file.csv"})
    task.error(exception="disk full")
    data = taskbadger_server.get_task(task.id)["data"]
    assert data == {"input": "file.csv", "exception": "disk full"}
    assert task.status == StatusEnum.ERROR


def test_update_value_respects_value_step_and_rate_limit(taskbadger_server):
    task = Task.create("p", value=0)
    assert task.update_value(5, value_step=10) is True  # 0 counts as unset, as in the official SDK
    assert task.update_value(10, value_step=10) is False
    assert task.update_value(15, value_step=10) is True
    assert task.update_value(16, rate_limit=3600) is False
    assert task.update_value(17) is True
    assert [r.json["value"] for r in patches(taskbadger_server)] == [5, 15, 17]


def test_increment_value_and_set_value_max(taskbadger_server):
    task = Task.create("p")
    task.increment_value(3)
    task.increment_value(4)
    task.set_value_max(20)
    server_task = taskbadger_server.get_task(task.id)
    assert (server_task["value"], server_task["value_max"], server_task["value_percent"]) == (7, 20, 35)


def test_ping_rate_limit(taskbadger_server):
    task = Task.create("hb")
    assert task.ping() is True
    assert task.ping(rate_limit=3600) is False
    assert len(patches(taskbadger_server)) == 1


def test_tag_adds_to_existing_tags(taskbadger_server):
    task = Task.create("t", tags={"env": "prod"})
    task.tag({"customer": "c42"})
    assert task.tags == {"env": "prod", "customer": "c42"}


def test_data_merge_strategies(taskbadger_server):
    task = Task.create("m", data={"a": 1, "log": ["x"]})
    task.update(data={"b": 2}, data_merge_strategy="default")
    assert task.data == {"a": 1, "log": ["x"], "b": 2}
    task.update(data={"log": ["y"]}, data_merge_strategy=DefaultMergeStrategy(append_keys=["log"]))
    assert task.data["log"] == ["x", "y"]
    task.update(data={"only": True})
    assert task.data == {"only": True}
    with pytest.raises(ValueError, match="data_merge_strategy"):
        task.update(data={"c": 1}, data_merge_strategy="deep")


def test_safe_update_logs_instead_of_raising(taskbadger_server, tb_log):
    task = Task.create("t")
    taskbadger_server.fail(500, times=1)
    assert task.safe_update(value=3) is False
    assert "500" in [r for r in tb_log.records if r.levelno == logging.WARNING][-1].getMessage()
    assert task.safe_update(value=4) is True


def test_copy_and_pickle(taskbadger_server):
    task = Task.create("c", data={"k": [1, 2]})
    for clone in (copy.copy(task), copy.deepcopy(task), pickle.loads(pickle.dumps(task))):
        assert clone.id == task.id and clone.data == {"k": [1, 2]} and clone == task
    restored = pickle.loads(pickle.dumps(task))
    restored.success()
    assert taskbadger.get_task(task.id).status == "success"


def test_the_sdk_task_class_as_a_celery_base_says_which_class_to_use():
    """``base=taskbadger.Task`` for ``base=taskbadger.celery.Task``: it failed at the first ``.delay()`` with
    "missing 1 required positional argument: 'task'"."""
    from celery import Celery

    app = Celery("slip", broker="memory://", set_as_current=False)

    @app.task(base=taskbadger.Task, name="billing.export", shared=False)  # not in every app made after it
    def export():
        return None

    with pytest.raises(TypeError, match=r"write @app.task\(base=taskbadger.celery.Task\) for billing.export"):
        export.delay()


def test_the_sdk_task_class_can_still_be_subclassed():
    class Mine(taskbadger.Task):
        pass

    assert Mine({"id": "a1", "name": "n", "status": "pending"}).name == "n"


def test_empty_data_leaves_the_tasks_data_as_the_official_sdk_does(taskbadger_server):
    """update(data=extra or {}) sent {} and wiped the task's data (the official SDK sends nothing)."""
    task = taskbadger.Task.create("kept", data={"a": 1})
    task.update(value=2, data={})
    taskbadger.update_task(task.id, data={})
    assert taskbadger.get_task(task.id).data == {"a": 1} and task.value == 2
    assert all("data" not in (r.json or {}) for r in taskbadger_server.requests if r.method == "PATCH")


def test_an_unknown_keyword_is_a_type_error_not_a_lost_update(taskbadger_server, tb_log):
    """update(valu=5), a typo, was sent as an unknown field (the API ignored it): the update was lost."""
    task = taskbadger.Task.create("typo")
    with pytest.raises(TypeError, match="'valu'"):
        task.update(valu=5)
    assert task.safe_update(bogus=1) is False
    assert [r.method for r in taskbadger_server.requests] == ["POST"]



def test_internal_merge_fields_sent_at_once_are_resolved_against_the_task_on_the_server(taskbadger_server):
    """A retry recorded at once (``back_to_pending(wait=True)``) by a run that does not know the task's data (too
    large to carry): its attempt is merged into the data the task has. With nothing else queued for the task, the
    internal ``merge_data`` field went out as it was: the API ignored it and the attempt was lost."""
    from taskbadger import lifecycle
    from taskbadger.lifecycle.carried import Meta

    task = Task.create("job", status="processing", data={"rows": 3})
    run = lifecycle.Run("job-1", Meta({"id": task.id, "name": "job", "status": "processing", "data_omitted": True}))
    lifecycle.back_to_pending(run, {"attempts": 1}, wait=True)
    assert (Task.get(task.id).status, Task.get(task.id).data) == (StatusEnum.PENDING, {"rows": 3, "attempts": 1})
    assert not [r for r in patches(taskbadger_server) if set(r.json or {}) - {"status", "data"}]


@pytest.mark.parametrize("fraction, micro", [(".12", 120000), (".1234", 123400), (".12345", 123450), (".123", 123000),
                                             (".1234567", 123456), ("", 0)])
def test_the_apis_times_parse_whatever_digits_of_a_second_they_carry(fraction, micro):
    # Python 3.10's fromisoformat takes only 3 or 6 digits: updated_at with 2, 4 or 5 was None there, and
    # ping(rate_limit=...) and update_value(rate_limit=...) stopped limiting.
    import datetime as dt

    from taskbadger.models import parse_datetime

    expected = dt.datetime(2026, 12, 6, 17, 0, 0, micro, tzinfo=dt.timezone.utc)
    assert parse_datetime(f"2026-12-06T17:00:00{fraction}Z") == expected
    assert parse_datetime(f"2026-12-06T18:00:00{fraction}+01:00") == expected


def test_a_running_tasks_fields_that_were_not_carried_are_read_only_when_the_body_needs_them(taskbadger_server):
    """A Procrastinate job carries only its task's id: ``current_task()`` read the task from the API (a GET on the
    job's critical path) although most bodies only report progress. It is built from what was carried; a field it
    does not hold is read once, when the body reads it or calls a method that needs it; a failure recorded by the
    body is merged into the data the task has."""
    from taskbadger import lifecycle
    from taskbadger.lifecycle.carried import Meta

    def run_of(task):
        return lifecycle.Run("job-1", Meta({"id": task.id, "name": "job", "status": "processing",
                                            "data_omitted": True}))

    task = Task.create("job", status="processing", value=3, value_max=10, data={"rows": 3}, tags={"team": "ab"})
    run = run_of(task)
    lifecycle.enter(run)
    try:
        tb = taskbadger.current_task()
        assert [r.method for r in taskbadger_server.requests] == ["POST"]  # built from what was carried
        tb.increment_value(2)  # from the value the task has: read once
        assert (tb.value, tb.value_max, tb.data, tb.tags) == (5, 10, {"rows": 3}, {"team": "ab"})
        assert [r.method for r in taskbadger_server.requests] == ["POST", "GET", "PATCH"]
    finally:
        lifecycle.leave(run)

    failed = Task.create("job", status="processing", data={"rows": 4})
    run = run_of(failed)
    lifecycle.enter(run)
    try:
        taskbadger.current_task().error(exception=ValueError("no more rows"), data={"at": 2})
    finally:
        lifecycle.leave(run)
    data = Task.get(failed.id).data
    assert (data["rows"], data["at"], data["exception_type"]) == (4, 2, "ValueError"), data
