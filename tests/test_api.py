"""The task endpoint functions against the stand-in API over real HTTP."""

import logging
import multiprocessing
import os
import uuid

import pytest

import taskbadger
from taskbadger import (
    ConnectError,
    CreateSkipped,
    InvalidData,
    NotFound,
    RateLimited,
    ReadTimeout,
    ServerError,
    StatusEnum,
    Unauthorized,
    ValidationError,
)


def posts(server):
    return [r for r in server.requests if r.method == "POST"]


def test_create_sends_auth_and_user_agent_and_returns_the_task(taskbadger_server):
    task = taskbadger.create_task("export", value_max=10, data={"a": 1}, queue="q", external_id="ext-1")
    assert task.id and task.name == "export"
    assert task.status == StatusEnum.PENDING and task.status == "pending"
    assert (task.value_max, task.data, task.queue, task.external_id) == (10, {"a": 1}, "q", "ext-1")
    assert task.created is not None and task.created.tzinfo is not None
    request = posts(taskbadger_server)[0]
    assert request.headers["Authorization"].startswith("Bearer ")
    assert request.headers["User-Agent"].startswith(f"taskbadger-python/{taskbadger.__version__}")
    assert taskbadger_server.get_task(task.id)["name"] == "export"


def test_plain_status_strings_are_accepted_and_unknown_ones_rejected_before_sending(taskbadger_server):
    assert taskbadger.create_task("a", status="processing").status == StatusEnum.PROCESSING
    with pytest.raises(ValueError, match="Unknown task status 'runing'.*pending"):
        taskbadger.create_task("b", status="runing")
    assert len(posts(taskbadger_server)) == 1


def test_get_update_and_cancel(taskbadger_server):
    created = taskbadger.create_task("job")
    updated = taskbadger.update_task(created.id, status=StatusEnum.PROCESSING, value=5)
    assert (updated.status, updated.value, updated.value_percent) == ("processing", 5, 5)
    assert updated.start_time is not None
    fetched = taskbadger.get_task(created.id)
    assert fetched.value == 5
    taskbadger.cancel_task(created.id)
    assert taskbadger.get_task(created.id).status == StatusEnum.CANCELLED
    assert [r.method for r in taskbadger_server.requests] == ["POST", "PATCH", "GET", "DELETE", "GET"]


def test_update_rejects_unknown_fields_clearly(taskbadger_server):
    task = taskbadger.create_task("job")
    with pytest.raises(TypeError, match="valeu"):
        taskbadger.update_task(task.id, valeu=3)


def test_monitor_id_is_sent_as_header(taskbadger_server):
    monitor = str(uuid.uuid4())
    task = taskbadger.create_task("monitored", monitor_id=monitor)
    assert posts(taskbadger_server)[0].headers["X-TASKBADGER-MONITOR"] == monitor
    assert taskbadger_server.get_task(task.id)["monitor_id"] == monitor


def test_list_pages_cursors_and_walking_all_pages(taskbadger_server):
    ids = [taskbadger.create_task(f"t{i}").id for i in range(5)]
    page = taskbadger.list_tasks(page_size=2)
    assert len(page) == 2 and len(list(page)) == 2
    assert page.next_cursor and page.previous is None
    second = page.next_page()
    assert second.previous_cursor
    assert {t.id for t in taskbadger.iter_tasks(page_size=2)} == set(ids)
    assert {t.id for t in taskbadger.list_tasks(page_size=2).iter_all()} == set(ids)


def test_tasks_with_a_lot_of_data_are_read_back(taskbadger_server):
    """The API echoes the data it was sent: a create with 1.1 MB of data was carried out and then reported as
    failed (the answer was over a 1 MB read limit), and a page of 60 tasks with 20 KB each could not be read."""
    big = taskbadger.create_task("big", data={"rows": "x" * 1_100_000})
    assert taskbadger.get_task(big.id).data == {"rows": "x" * 1_100_000}
    for i in range(60):
        taskbadger.create_task(f"t{i}", data={"rows": "y" * 20_000})
    page = taskbadger.list_tasks(page_size=100)
    assert len(page.results) == 61


def test_list_parent_filter(taskbadger_server):
    root = taskbadger.create_task("root")
    kids = {taskbadger.create_task(f"kid{i}", parent=root.id).id for i in range(3)}
    taskbadger.create_task("other")
    listed = taskbadger.list_tasks(parent=root.id)
    assert {t.id for t in listed} == kids
    assert all(t.parent == root.id for t in listed)


def test_wrong_key_raises_unauthorized_without_the_key(taskbadger_server):
    import base64

    bad = base64.b64encode(b"acme/demo/not-the-key-xyz").decode()
    taskbadger.init(token=bad, host=taskbadger_server.url)
    with pytest.raises(Unauthorized) as info:
        taskbadger.create_task("x")
    assert info.value.status_code == 401
    assert "not-the-key-xyz" not in str(info.value) and bad not in str(info.value)
    # it said only "Task Badger API answered 401: Invalid token."
    assert "Check the API key (TASKBADGER_API_KEY, init(token=...) or TASKBADGER['API_KEY'])" in str(info.value)


@pytest.mark.parametrize("call", [taskbadger.get_task, lambda task_id: taskbadger.update_task(task_id, value=1),
                                  taskbadger.cancel_task])
def test_not_found_says_which_task_in_which_project(taskbadger_server, call):
    # it said only "Task Badger API answered 404: Not found."
    with pytest.raises(NotFound) as info:
        call("doesnotexist")
    assert info.value.status_code == 404 and info.value.message == "Not found."
    assert "no task 'doesnotexist' in project acme/demo. Check the task id, and that the API key is the key of the " \
        "project that holds the task." in str(info.value)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"value_max": -1}, "value_max"),
        ({"value": -5}, "value"),
        ({"name": "x" * 300}, "name"),
        ({"tags": {"k": "v"}}, "tags"),
        ({"stale_timeout": 0}, "stale_timeout"),
    ],
)
def test_invalid_fields_are_validation_errors_with_per_field_messages(taskbadger_server, kwargs, field):
    kwargs = {"name": "job", **kwargs}
    with pytest.raises(ValidationError) as info:
        taskbadger.create_task(**kwargs)
    assert info.value.status_code == 400
    assert field in info.value.errors and info.value.errors[field]
    assert field in str(info.value)


def test_data_that_json_cannot_encode_is_refused_before_sending(taskbadger_server):
    with pytest.raises(InvalidData, match="JSON"):
        taskbadger.create_task("job", data={"when": object()})
    assert taskbadger_server.requests == []


def test_text_that_is_not_unicode_is_sent_as_replacement_characters_and_emoji_as_they_are(taskbadger_server, tb_log):
    """A file name from ``os.listdir`` in another encoding holds lone surrogates (``surrogateescape``): they went out
    as JSON escapes no UTF-8 store keeps. Characters beyond the BMP (an emoji: a surrogate pair in escaped JSON) are
    text, and stay as they are; so does a backslash followed by "ud" written in the data."""
    name = os.fsdecode(b"import caf\xe9.csv")
    task = taskbadger.create_task(name, data={"files": [name, "ok \U0001f600", "\\ud83d"], os.fsdecode(b"k\xff"): 1})
    # compared as ascii(): a lone surrogate in a failure's report would break pytest-xdist's channel
    assert ascii(task.name) == ascii("import caf\ufffd.csv")  # the create's answer is taken: it echoes what was sent
    stored = taskbadger_server.get_task(task.id)
    assert ascii(stored["name"]) == ascii("import caf\ufffd.csv")
    assert ascii(stored["data"]) == ascii({"files": ["import caf\ufffd.csv", "ok \U0001f600", "\\ud83d"], "k\ufffd": 1})
    task.update(data={"next": os.fsdecode(b"\xff")})
    assert ascii(taskbadger_server.get_task(task.id)["data"]) == ascii({"next": "\ufffd"})
    assert "not UTF-8 text" in tb_log.text


def test_text_that_is_not_unicode_deep_in_the_data_is_sent_as_replacement_characters(taskbadger_server):
    """``storable`` stops 100 levels down: a NUL or a lone surrogate nested deeper went out as a JSON escape that an
    API keeping its data in PostgreSQL refuses, and the whole update with it (a final status, here). The stand-in
    stores what it is sent: what it holds is what went out."""
    def nested(leaf):
        for _ in range(150):
            leaf = {"in": [leaf]}
        return leaf

    task = taskbadger.create_task("deep data")
    task.update(status="success", data=nested({"out": "a\x00b", "path": os.fsdecode(b"caf\xe9"), "ok": "\U0001f600"}))
    stored = taskbadger_server.get_task(task.id)
    assert stored["status"] == "success"
    assert ascii(stored["data"]) == ascii(nested({"out": "a\ufffdb", "path": "caf\ufffd", "ok": "\U0001f600"}))


def test_server_errors_and_rate_limits_are_mapped(taskbadger_server):
    taskbadger_server.fail(500, times=1)
    with pytest.raises(ServerError) as info:
        taskbadger.create_task("x")
    assert info.value.status_code == 500
    taskbadger_server.fail(429, times=1, retry_after=7)
    with pytest.raises(RateLimited) as info:
        taskbadger.create_task("x")
    assert info.value.retry_after == 7


def test_unreachable_host_is_a_connect_error(taskbadger_server):
    taskbadger_server.refuse()
    try:
        with pytest.raises(ConnectError) as info:
            taskbadger.create_task("x")
        assert info.value.reached_server is False
    finally:
        taskbadger_server.accept()
    assert taskbadger.create_task("back").name == "back"


def test_server_slower_than_the_timeout(taskbadger_server):
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, timeout=(1.0, 0.3))
    taskbadger_server.hang(times=1)
    with pytest.raises(ReadTimeout) as info:
        taskbadger.create_task("slow")
    assert info.value.reached_server is True


def test_safe_functions_log_and_return_none(taskbadger_server, tb_log):
    taskbadger_server.fail(503)
    assert taskbadger.create_task_safe("x") is None
    assert taskbadger.update_task_safe("abc", value=1) is None
    warnings = [r for r in tb_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "503" in warnings[0].getMessage()


def test_safe_functions_when_unconfigured_return_none_and_warn_once(tb_log):
    assert taskbadger.create_task_safe("x") is None
    assert taskbadger.create_task_safe("y") is None
    assert taskbadger.update_task_safe("id", value=1) is None
    warnings = [r for r in tb_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "TASKBADGER_API_KEY" in warnings[0].getMessage()


def test_before_create_can_change_or_skip_or_fail(taskbadger_server, tb_log):
    def before(body):
        if body["name"] == "skip":
            return None
        if body["name"] == "empty":
            return {}  # skips as well, as in the official SDK (it was sent, and refused with a 400)
        if body["name"] == "boom":
            raise RuntimeError("hook broke")
        body["name"] = body["name"].upper()
        return body

    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, before_create=before)
    assert taskbadger.create_task("changed").name == "CHANGED"
    with pytest.raises(CreateSkipped):
        taskbadger.create_task("skip")
    with pytest.raises(CreateSkipped):
        taskbadger.create_task("empty")
    tb_log.clear()
    assert taskbadger.create_task_safe("skip") is None
    assert not [r for r in tb_log.records if r.levelno >= logging.WARNING]
    assert taskbadger.create_task_safe("boom") is None
    assert "hook broke" in tb_log.records[-1].getMessage()
    assert len(posts(taskbadger_server)) == 1


@pytest.mark.parametrize("changes, sent, in_line", [
    ({"value": "abc"}, {"value": None}, "set value to 'abc', which the API refuses (it takes a whole number"),
    ({"status": "weird"}, {"status": "pending"}, "set status to 'weird', which the API refuses"),
    ({"stale_timeout": 0}, {"stale_timeout": None}, "set stale_timeout to 0"),
    ({"name": ""}, {"name": "export"}, "the task's own name is used"),
    ({"name": "x" * 300}, {"name": "x" * 254 + "…"}, None),  # too long: shortened, as a job's module path is
    ({"data": {"ids": {1}}}, {"data": {"ids": "{1}"}}, "set data to {'ids': {1}}, which JSON cannot encode"),
    ({"tags": {"team": "ops", "bad": "v" * 300}}, {"tags": {"team": "ops"}}, "'bad' is 'vvv"),
])
def test_a_before_create_hook_that_sets_a_field_the_api_refuses_loses_that_field_not_the_task(
        taskbadger_server, tb_log, changes, sent, in_line):
    """The hook's own mistake used to cost the whole create (a 400 naming `value`, which the caller gave right, and
    not the hook), so the task ran untracked: now that field is left out, said once, naming the hook."""
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url,
                    before_create=lambda body: {**body, **changes})
    for _ in range(2):
        task = taskbadger.create_task("export", value=3)
    stored = taskbadger_server.get_task(task.id)
    for key, value in sent.items():
        assert stored.get(key) == value, key
    lines = [r.getMessage() for r in tb_log.records if r.levelno >= logging.WARNING]
    if in_line is None:
        assert lines == []
    else:
        [line] = lines  # once, not per task
        assert in_line in line and "Fix the hook (TASKBADGER['BEFORE_CREATE'] or init(before_create=...))" in line


def test_a_before_create_hook_that_returns_no_dict_gets_a_clear_error(taskbadger_server):
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, before_create=lambda body: True)
    with pytest.raises(InvalidData, match="before_create returned bool; it must return the task's fields"):
        taskbadger.create_task("export")
    assert posts(taskbadger_server) == []


def test_global_scope_and_explicit_tags_merge_explicit_wins(taskbadger_server):
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, tags={"env": "prod", "team": "a1"})
    with taskbadger.current_scope() as scope:
        scope.tag({"team": "b2", "region": "eu"})
        scope["request"] = "r1"
        task = taskbadger.create_task("x", tags={"region": "us"}, data={"own": 1})
    assert task.tags == {"env": "prod", "team": "b2", "region": "us"}
    assert task.data == {"request": "r1", "own": 1}


def test_nested_scopes_restore_on_exit(taskbadger_server):
    with taskbadger.current_scope() as outer:
        outer["level"] = "outer"
        with taskbadger.current_scope() as inner:
            inner["level"] = "inner"
            inner["extra"] = 1
            assert taskbadger.create_task("in").data == {"level": "inner", "extra": 1}
        assert taskbadger.create_task("out").data == {"level": "outer"}
    assert taskbadger.create_task("none").data is None


def test_one_keep_alive_connection_for_many_calls(taskbadger_server):
    with taskbadger.Session() as session:
        assert session is not None
        for i in range(10):
            taskbadger.create_task(f"t{i}")
    for i in range(5):
        taskbadger.create_task(f"u{i}")
    assert len({r.connection_id for r in taskbadger_server.requests}) == 1


def _create_in_child(name, queue):
    try:
        queue.put(taskbadger.create_task(name).id)
    except Exception as err:  # report, so the parent's assertion shows it
        queue.put(repr(err))


# It forks a process that has threads, on purpose: billiard's prefork pool does (Python 3.12 warns about it).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
def test_a_forked_child_opens_its_own_connection(taskbadger_server):
    taskbadger.create_task("parent-before")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_create_in_child, args=("child", queue))
    child.start()
    child_result = queue.get(timeout=10)
    child.join(10)
    assert taskbadger_server.get_task(child_result)["name"] == "child"
    taskbadger.create_task("parent-after")
    conns = [r.connection_id for r in taskbadger_server.requests]
    assert conns[0] == conns[2] != conns[1]


def test_scope_tags_the_api_would_refuse_are_left_out_of_the_create(taskbadger_server, tb_log):
    with taskbadger.current_scope() as scope:
        scope.tag({"user": "7", "region": "eu", "": "no-name"})
        scope.tag(["not", "a", "dict"])  # type: ignore[arg-type]
        task = taskbadger.create_task("x")
    assert task.tags == {"region": "eu"}
    assert len([r for r in tb_log.records if r.levelno == logging.WARNING]) == 3


def test_scope_data_json_cannot_encode_is_sent_as_its_repr_and_every_create_in_the_scope_works(taskbadger_server,
                                                                                                 tb_log):
    # A uuid.UUID request id in the scope made every create in it fail: create_task raised InvalidData about data
    # it was never given, @track ran untracked.
    @taskbadger.track(name="tracked in scope")
    def job():
        return taskbadger.current_task()

    with taskbadger.current_scope() as scope:
        scope["request_id"] = uuid.UUID(int=5)
        scope["user"] = "u-1"
        task = taskbadger.create_task("x", data={"rows": 3})
        assert job() is not None
    assert task.data == {"request_id": "UUID('00000000-0000-0000-0000-000000000005')", "user": "u-1", "rows": 3}
    [warning] = [r.getMessage() for r in tb_log.records if "scope data" in r.getMessage()]
    assert "'request_id' cannot be encoded as JSON" in warning and "scope[key] = str(value)" in warning


@pytest.mark.parametrize("foreign", [False, True])
def test_a_create_refused_under_a_monitor_says_the_monitor_may_be_why(taskbadger_server, foreign):
    # it said only "Task Badger API answered 404: Not found." (or 403: "You do not have permission"), naming neither
    # the monitor nor what to do; a 403 must not send the reader to the key, which is right
    taskbadger_server.add_monitor()
    monitor = taskbadger_server.foreign_monitor() if foreign else str(uuid.uuid4())
    with pytest.raises(NotFound if not foreign else Unauthorized) as info:
        taskbadger.create_task("nightly", monitor_id=monitor)
    assert f"The task was to be created under monitor {monitor}: if it is not one of project acme/demo's monitors, " \
        "copy the id from the monitor's page in Task Badger." in str(info.value)
    assert "Check the API key" not in str(info.value)


def test_a_create_refused_for_a_field_under_a_monitor_does_not_blame_the_monitor(taskbadger_server):
    with pytest.raises(ValidationError) as info:
        taskbadger.create_task("nightly", value=-1, monitor_id=str(uuid.uuid4()))
    assert "monitor" not in str(info.value)


CRAFTED_IDS = ["../../other", "a/b", "abc\r\nX-Injected: 1",
               "abc HTTP/1.1", "abc?x=1", "abc#", "", "é", "x" * 65, 12, None]


@pytest.mark.parametrize("task_id", CRAFTED_IDS, ids=repr)
def test_a_crafted_task_id_never_reaches_the_wire(taskbadger_server, task_id):
    """A task id is the only caller's text in a request line: one that is not an id the API issues (letters, digits,
    - and _) is refused before anything is sent, by every endpoint and both transports (the one check is where the id
    enters the request, ``http.build_request``)."""
    from taskbadger import endpoints, http

    good = taskbadger.create_task("job")
    calls = [lambda: taskbadger.get_task(task_id), lambda: taskbadger.update_task(task_id, value=1),
             lambda: taskbadger.cancel_task(task_id), lambda: endpoints.get(task_id), lambda: endpoints.update(
                 task_id, {"value": 1}), lambda: endpoints.cancel(task_id)]
    for call in calls:
        with pytest.raises((InvalidData, ValueError, TypeError)):
            call()
    results = endpoints.update_many([(task_id, {"value": 1}), (good.id, {"value": 2})])
    assert isinstance(results[0], InvalidData) and "is not a Task Badger task id" in str(results[0])
    assert results[1] is None
    with pytest.raises(InvalidData, match="is not a Task Badger task id"):
        endpoints.get_many([good.id, task_id])
    config = endpoints.current_config()
    if task_id is not None:
        with pytest.raises(InvalidData, match="is not a Task Badger task id"):
            http.build_request(config, "PATCH", task_id, json_body={"value": 1})
    assert all(r.path.endswith(("/tasks/", f"/tasks/{good.id}/")) for r in taskbadger_server.requests), \
        [r.path for r in taskbadger_server.requests]
    assert [r.method for r in taskbadger_server.requests] == ["POST", "PATCH"]
