"""Tracking never hurts a task: hostile or careless input, API hiccups, broker failures.

Each test here reproduces a defect found by trying the integration as a hostile or careless user
would, with real workers against the stand-in API over real HTTP.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid

import kombu
import kombu.exceptions
import pytest

import taskbadger
from taskbadger.systems.celery import CelerySystemIntegration

from .celery_project import app as tasks
from .conftest import start_worker, stop_worker
from .foreign import publish_foreign, wait_for_result

pytestmark = pytest.mark.integration
NAME = "tests.celery_project.app."
ID_PATH = re.compile(r"^/api/acme/demo/tasks/(?:[A-Za-z0-9_-]{1,64}/)?$")
EXPECTED_HEADERS = {"host", "user-agent", "accept", "accept-encoding", "connection", "authorization",
                    "content-type", "content-length", "x-taskbadger-monitor"}


def assert_wire_clean(server, foreign_ids: bool = False) -> None:
    """Every request the stand-in received parsed, went where the SDK meant, and carried only the
    headers the SDK sends. ``foreign_ids``: messages carried ids of their own (well-formed ones are
    sent, and the API answers 404 for those it does not know)."""
    for request in server.requests:
        assert request.malformed is None, f"the server received bytes that are not a request: {request.body!r}"
        assert ID_PATH.match(request.path), f"unexpected path {request.path!r}"
        task_id = request.path.rstrip("/").rsplit("/", 1)[-1]
        assert task_id == "tasks" or foreign_ids or server.issued(task_id), \
            f"request for a task nobody created: {request.path!r}"
        assert set(request.headers) <= EXPECTED_HEADERS, f"unexpected headers {set(request.headers)}"
        monitor = request.headers.get("X-TASKBADGER-MONITOR")
        assert monitor is None or str(uuid.UUID(monitor)) == monitor


def open_breaker(server, celery_app) -> None:
    """Open this process's breaker, then let the API answer again. The tasks that open it go to a queue no
    worker reads (then deleted): a worker that ran them while the API refused would open its own breaker
    and run the next task untracked, which is right for it but not what these tests are about."""
    queue = f"nobody-{uuid.uuid4().hex[:8]}"
    server.refuse()
    try:
        for _ in range(3):
            tasks.add.apply_async((0, 0), queue=queue)
        # Read while the API still refuses: its probe cannot close it yet. Read after the queue's deletion, a CI
        # run's Redis leg found it half-open: the 0.2 s cool-down had passed and a probe had found the API back.
        assert taskbadger.stats()["breaker"] == "open"
    finally:
        server.accept()
        with celery_app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)


# -- 1. options JSON cannot encode never stop the publish --------------------------------------------

UNENCODABLE = [
    pytest.param({"taskbadger_data": {"s": {1, 2}}}, id="set-in-option"),
    pytest.param({"taskbadger_data": {"o": object()}}, id="object-in-option"),
    pytest.param({"taskbadger_kwargs": {"data": {"s": {1, 2}}}}, id="set-in-kwargs-dict"),
]


@pytest.mark.parametrize("options", UNENCODABLE)
@pytest.mark.parametrize("publisher", ["tracking", "unconfigured", "breaker-open"])
def test_options_json_cannot_encode_never_stop_the_publish(taskbadger_server, solo_worker, celery_app, options,
                                                          publisher):
    if publisher == "unconfigured":
        taskbadger.config.reset()
    elif publisher == "breaker-open":
        open_breaker(taskbadger_server, celery_app)
    result = solo_worker.send(tasks.echo, "payload", **options)  # must not raise
    assert wait_for_result(result.id) == {"value": "payload", "tracked": True}
    task = taskbadger_server.wait_for_task(name=NAME + "echo", status="success")
    assert task["external_id"] == result.id
    value = task["data"].get("s", task["data"].get("o"))
    assert isinstance(value, str)  # converted the way recorded arguments are: a repr


def test_options_inside_the_task_kwargs_are_converted_too(taskbadger_server, solo_worker):
    result = tasks.echo.apply_async(("x",), {"taskbadger_data": {"when": {3, 4}}}, queue=solo_worker.queue)
    assert wait_for_result(result.id)["value"] == "x"
    task = taskbadger_server.wait_for_task(name=NAME + "echo", status="success")
    assert task["data"]["when"] == "{3, 4}"


# -- 2. headers written by anyone never fail the task ---------------------------------------------------

FOREIGN_HEADERS = [
    pytest.param({"taskbadger_task": {"task": {}}}, id="empty-task"),
    pytest.param({"taskbadger_task": {"task": {"id": "x1", "created": "notadate"}}}, id="bad-date"),
    pytest.param({"taskbadger_task": {"task": {"id": 12, "name": ["n"]}}}, id="wrong-types"),
    pytest.param({"taskbadger_task": {"task": {"id": "abc\r\nX-Injected: 1"}}}, id="crlf-id"),
    pytest.param({"taskbadger_task": {"task": {"id": "../../other"}}}, id="path-id"),
    pytest.param({"taskbadger_task": {"task": {"id": "x1"}, "heartbeat_interval": "abc"}}, id="bad-heartbeat"),
    pytest.param({"taskbadger_task": "not a dict"}, id="meta-string"),
    pytest.param({"taskbadger_kwargs": "name=evil"}, id="kwargs-string"),
    pytest.param({"taskbadger_kwargs": ["name", "evil"]}, id="kwargs-list"),
    pytest.param({"taskbadger_kwargs": {"monitor_id": "m\r\nX-Injected: 1"}}, id="kwargs-crlf-monitor"),
    pytest.param({"taskbadger_track": "yes please"}, id="track-string"),
]


@pytest.mark.parametrize("headers", FOREIGN_HEADERS)
def test_headers_from_another_producer_never_fail_the_task(taskbadger_server, solo_worker, celery_app, headers,
                                                           tb_log):
    celery_id = publish_foreign(celery_app, NAME + "echo", ("intact",), solo_worker.queue, headers)
    assert wait_for_result(celery_id)["value"] == "intact"
    taskbadger_server.wait_for(lambda: f"[{celery_id}] succeeded" in solo_worker.log(), timeout=20)
    assert "Traceback" not in solo_worker.log().split(celery_id, 1)[-1]
    taskbadger.delivery.sender.flush(5)
    assert_wire_clean(taskbadger_server, foreign_ids=True)


def test_thousands_of_unknown_options_in_a_header_are_not_a_line_each(taskbadger_server, solo_worker, celery_app):
    """Another producer's taskbadger_kwargs with 2,000 keys: the worker logged 4,000 warning lines for the one
    message (each unknown option reported, at receipt and at the run), and as many for every message with other keys.
    The first few are named, the rest counted in one line; the task runs and is tracked."""
    celery_id = publish_foreign(celery_app, NAME + "echo", ("intact",), solo_worker.queue,
                                {"taskbadger_kwargs": {f"k{i}": i for i in range(2000)}})
    assert wait_for_result(celery_id) == {"value": "intact", "tracked": True}
    taskbadger_server.wait_for(lambda: f"[{celery_id}] succeeded" in solo_worker.log(), timeout=20)
    lines = [line for line in solo_worker.log().split(celery_id, 1)[-1].splitlines() if "Task Badger" in line]
    assert len(lines) <= 30, len(lines)
    assert any("1990 more unknown options on task 'tests.celery_project.app.echo'" in line for line in lines), lines


def test_carried_data_larger_than_a_publisher_of_ours_carries_is_not_written_back(taskbadger_server, solo_worker,
                                                                                  celery_app):
    """Another producer's header carried 3 MB of data: the worker's final update sent it back as the task's data (a
    3 MB PATCH), replacing what the task held."""
    task = taskbadger.create_task("foreign", data={"orig": 1})
    meta = {"task": {"id": task.id, "name": "foreign", "status": "pending", "data": {"blob": "x" * 3_000_000}}}
    publish_foreign(celery_app, NAME + "fail", ("broken on purpose",), solo_worker.queue, {"taskbadger_task": meta})
    ended = taskbadger_server.wait_for_task(name="foreign", status="error", timeout=20)
    assert set(ended["data"]) == {"orig", "exception", "exception_type"}
    assert max(len(r.body or b"") for r in taskbadger_server.requests if r.method == "PATCH") < 100_000


@pytest.mark.parametrize("resend", [{"data": {"blob": "x" * 3_000_000}, "value": 5},
                                    {"status": "success", "end_time": "2020-01-01T00:00:00Z", "value": 5},
                                    {"start_time": "not a time", "value": 5},
                                    {"start_time": "2026-13-45T99:99:99", "value": 5},
                                    {"start_time": "2026-01-01", "value": 5},
                                    {"start_time": "2026-01-01T10", "value": 5}],
                         ids=["too large", "fields it may not carry", "a start that is not a time",
                              "a start out of range", "a date without its time", "an hour without its minutes"])
def test_a_retry_s_resend_fields_are_taken_only_within_bounds(taskbadger_server, solo_worker, celery_app, resend):
    """``resend`` (what an attempt could not send when it was retried, for the next attempt to send) is read from
    the message like the rest of it: only the fields listed, each checked, and not up to any size. A start time
    that is not one (any text up to 64 characters was taken) rode in the worker's first update, and the API's 400
    refused it: the task never showed processing, nor, when its end was merged with its start, its outcome."""
    task = taskbadger.create_task("foreign", data={"orig": 1})
    meta = {"task": {"id": task.id, "name": "foreign", "status": "pending", "data": {"orig": 1}}, "resend": resend}
    publish_foreign(celery_app, NAME + "fail", ("broken on purpose",), solo_worker.queue, {"taskbadger_task": meta})
    ended = taskbadger_server.wait_for_task(name="foreign", status="error", timeout=20)
    assert set(ended["data"]) == {"orig", "exception", "exception_type"}
    assert ended["end_time"] != "2020-01-01T00:00:00Z"
    assert max(len(r.body or b"") for r in taskbadger_server.requests if r.method == "PATCH") < 100_000
    # the checked fields of a resend within bounds are sent with the start
    assert ended["value"] == (None if "data" in resend else 5)


@pytest.mark.parametrize(("nesting", "replaces"), [(1.5, True), (1, True), (True, False), ("2", False), (None, False)])
def test_a_replacement_is_told_by_any_number_celery_adds_one_to(nesting, replaces):
    """Celery computes a replacement's ``replaced_task_nesting`` from whatever the message said (1.5 + 1): a float
    made ``self.replace()`` read as a retry."""
    from taskbadger.celery.publish import _replaces_running_task

    assert _replaces_running_task({"task": "t", "replaced_task_nesting": nesting}, None) is replaces


# -- 3. no bytes injected into our requests ----------------------------------------------------------------

SMUGGLED = ("x\r\nContent-Length: 0\r\n\r\nPOST /api/acme/demo/tasks/ HTTP/1.1\r\nHost: x\r\n"
            "Authorization: Bearer test-key\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n"
            '{"name":"evil"}')


@pytest.mark.parametrize("monitor", ["m\r\nX-Injected: 1", SMUGGLED], ids=["header", "smuggled-request"])
def test_a_crafted_monitor_id_never_reaches_the_wire(taskbadger_server, solo_worker, monitor):
    first = solo_worker.send(tasks.add, 1, 1, taskbadger_monitor_id=monitor)
    results = [solo_worker.send(tasks.add, i, i) for i in range(30)]
    ids = {t["external_id"]: t["id"] for t in taskbadger_server.tasks.values()}
    wrong = [r for r in [first, *results] if ids.get(r.id) != r.taskbadger_task_id]
    assert wrong == [], f"{len(wrong)} of 31 publishes got another task's id"
    assert not taskbadger_server.tasks_named("evil")
    taskbadger_server.wait_for(lambda: len([t for t in taskbadger_server.tasks.values()
                                            if t["status"] == "success"]) == 31, timeout=20)
    assert_wire_clean(taskbadger_server)


def test_an_invalid_option_is_reported_naming_the_option_and_the_task(taskbadger_server, solo_worker, tb_log):
    result = solo_worker.send(tasks.echo, "v", taskbadger_monitor_id="m\r\nX-Injected: 1")
    assert wait_for_result(result.id)["value"] == "v"
    [line] = [r.getMessage() for r in tb_log.records if "taskbadger_monitor_id" in r.getMessage()]
    assert "tests.celery_project.app.echo" in line and "ignored" in line and "\r\n" not in line


def test_a_kept_alive_connection_with_unread_bytes_is_not_reused(taskbadger_server):
    """An answer followed by bytes nobody asked for (a confused proxy, a smuggled request) must not
    answer the next request."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    created = []

    def serve() -> None:
        for serial in range(2):
            conn, _ = listener.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, sent = data.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])
                while len(sent) < length:
                    sent += conn.recv(65536)
                fields = json.loads(sent)
                task_id = f"T{serial:025d}"
                created.append(task_id)
                # the answer echoes what was sent, as the API does; the stray one is another task's
                body = json.dumps({"id": task_id, "name": fields["name"], "external_id": fields["external_id"],
                                   "status": "pending"}).encode()
                extra = json.dumps({"id": "EXTRA0000000000000000000000", "name": fields["name"],
                                    "external_id": "another-celery-id", "status": "pending"}).encode()
                answer = (b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                          % (len(body), body))
                stray = (b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(extra), extra))
                conn.sendall(answer + stray)  # one answer too many
                conn.recv(65536)  # keep the connection open until the client closes it

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    taskbadger.init(token=taskbadger_server.api_key, host=f"http://127.0.0.1:{port}")
    memory = kombu.Producer(kombu.Connection("memory://"))  # the message goes nowhere: only the create matters
    first = tasks.add.apply_async((1, 1), producer=memory)
    second = tasks.add.apply_async((2, 2), producer=memory)
    assert [first.taskbadger_task_id, second.taskbadger_task_id] == created
    listener.close()


# -- 4. an API hiccup does not turn tracking off for long --------------------------------------------------


def publish_through(server, worker, seconds: float, fault_until: float):
    """Publish ``add`` every 20 ms for ``seconds``; returns (seconds after the fault ended, tracked?)."""
    published = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        result = worker.send(tasks.add, 1, 1)
        published.append((time.monotonic() - fault_until, result.taskbadger_task_id is not None))
        threading.Event().wait(0.02)  # pacing of the load, not a wait for an outcome
    return published


@pytest.mark.parametrize("fault", ["429", "503", "drop"])
def test_a_two_second_hiccup_does_not_stop_tracking_after_it(taskbadger_server, solo_worker, fault):
    if fault == "429":
        taskbadger_server.fail(429, retry_after=2, method="POST")
    elif fault == "503":
        taskbadger_server.fail(503, method="POST")
    else:
        taskbadger_server.drop(method="POST")
    fault_until = time.monotonic() + 2.0
    threading.Timer(2.0, taskbadger_server.clear_faults).start()
    published = publish_through(taskbadger_server, solo_worker, 6.0, fault_until)
    # A 429 asks for Retry-After seconds of quiet (honoured, from the last 429); the breaker probes early.
    grace = 2.5 if fault == "429" else 1.5
    late = [tracked for after, tracked in published if after > grace]
    untracked_after_recovery = sum(1 for after, tracked in published if after > 0 and not tracked)
    assert late and all(late), f"untracked after recovery: {untracked_after_recovery} of {len(published)}"


@pytest.fixture
def fresh_solo_worker(taskbadger_server_session):
    """A worker with no history: what its breaker knows comes from this test alone."""
    worker = start_worker(taskbadger_server_session, pool="solo", concurrency=1)
    yield worker
    stop_worker(worker)


def test_the_worker_creates_what_the_publisher_skipped_after_its_own_failures(taskbadger_server, fresh_solo_worker):
    solo_worker = fresh_solo_worker
    taskbadger.config.reset()  # this publisher tracks nothing: the worker creates each task at start
    taskbadger_server.fail(503, method="POST")
    threading.Timer(1.0, taskbadger_server.clear_faults).start()
    fault_until = time.monotonic() + 1.0
    sent = []
    end = time.monotonic() + 5.0
    while time.monotonic() < end:
        sent.append((time.monotonic() - fault_until, solo_worker.send(tasks.add, 2, 2)))
        threading.Event().wait(0.05)  # pacing of the load
    late = [r.id for after, r in sent if after > 2.0]
    taskbadger_server.wait_for(lambda: all(f"[{celery_id}] succeeded" in solo_worker.log() for celery_id in late),
                               timeout=20)
    created = {t["external_id"] for t in taskbadger_server.tasks.values()}
    assert late and [c for c in late if c not in created] == []


# -- 5. the API key never shows on Django's debug page ------------------------------------------------------

SECRET = "sk-Unique-Secret-9f8e7d"


@pytest.fixture
def secret_server():
    from taskbadger.testing import TaskBadgerServer

    with TaskBadgerServer(key=SECRET) as server:
        yield server


@pytest.mark.parametrize("fault", ["401", "400", "refused", "dropped"])
@pytest.mark.parametrize("accept", ["text/html", "text/plain"])
def test_the_api_key_is_not_on_the_debug_page(secret_server, settings, fault, accept):
    from django.test import Client

    settings.DEBUG = True
    settings.ROOT_URLCONF = "tests.debug_urls"
    taskbadger.init(token=secret_server.api_key, host=secret_server.url)
    if fault == "401":
        secret_server.fail(401)
    elif fault == "400":
        secret_server.fail(400, detail="bad")
    elif fault == "refused":
        secret_server.refuse()
    else:
        secret_server.drop()
    response = Client(raise_request_exception=False).get("/create/", HTTP_ACCEPT=accept)
    page = response.content.decode()
    assert response.status_code == 500 and "taskbadger" in page  # the debug page, with our frames
    assert SECRET not in page and secret_server.api_key not in page


# -- 6. a task whose message was never published does not stay pending -----------------------------------


def dead_broker_producer():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once the probe closes
    return kombu.Producer(kombu.Connection(f"redis://127.0.0.1:{port}/0", connect_timeout=0.5))


def test_a_publish_that_fails_cancels_the_task_it_created(taskbadger_server):
    with pytest.raises(kombu.exceptions.OperationalError) as raised:
        tasks.add.apply_async((1, 1), producer=dead_broker_producer(), retry=False)
    [task] = taskbadger_server.tasks.values()
    task = taskbadger_server.wait_for(lambda: taskbadger_server.get_task(task["id"])["status"] == "cancelled"
                                      and taskbadger_server.get_task(task["id"]), timeout=10)
    assert type(raised.value).__name__ in task["data"]["publish_error"]


def test_an_auto_tracked_publish_that_fails_cancels_its_task(taskbadger_server, monkeypatch):
    from taskbadger.celery import publish as publish_module

    monkeypatch.setattr(publish_module, "CONFIRM_WINDOW", 0.5)
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url,
                    systems=[CelerySystemIntegration(includes=[r"tests\.celery_project\.app\.plain_.*"])])
    with pytest.raises(kombu.exceptions.OperationalError):
        tasks.plain_add.apply_async((1, 1), producer=dead_broker_producer(), retry=False)
    task = taskbadger_server.wait_for_task(name=NAME + "plain_add", status="cancelled", timeout=10)
    assert "not published" in task["data"]["publish_error"]


# -- also seen ----------------------------------------------------------------------------------------------


def test_log_lines_about_a_huge_name_stay_short(taskbadger_server, solo_worker, tb_log):
    solo_worker.send(tasks.add, 1, 1, taskbadger_name="n" * 10_000, taskbadger_max_runtime="soon")
    lines = [r.getMessage() for r in tb_log.records if r.name.startswith("taskbadger")]
    assert lines and max(len(line) for line in lines) < 1000


@pytest.fixture
def one_child_worker(taskbadger_server_session):
    worker = start_worker(taskbadger_server_session, pool="prefork", concurrency=1)
    yield worker
    stop_worker(worker)


def test_a_success_just_before_the_child_is_killed_is_recorded(taskbadger_server, one_child_worker):
    """The child dies within milliseconds of a success, its final update still queued; the worker's
    main process knows the task succeeded and closes it."""
    finished = []
    for _ in range(5):
        finished.append(one_child_worker.send(tasks.add, 1, 1))
        one_child_worker.send(tasks.kill_worker_child)
    taskbadger_server.wait_for(lambda: len([t for t in taskbadger_server.tasks.values()
                                            if t["name"] == NAME + "kill_worker_child"
                                            and t["status"] == "error"]) == 5, timeout=60)
    ids = {r.taskbadger_task_id for r in finished}
    taskbadger_server.wait_for(lambda: all(taskbadger_server.get_task(i)["status"] == "success" for i in ids),
                               timeout=20)


def test_successes_queued_in_a_child_killed_by_a_hard_time_limit_are_recorded(taskbadger_server, one_child_worker):
    """The API is down, so the child holds its final updates; a hard time limit then kills the child
    (SIGTERM, SIGKILL 0.1 s later) with them. The main process knows those tasks succeeded."""
    results = [one_child_worker.send(tasks.add, i, i) for i in range(3)]
    taskbadger_server.refuse()
    try:
        limited = one_child_worker.send(tasks.sleep_for, 10, time_limit=1)
        taskbadger_server.wait_for(lambda: "TimeLimitExceeded" in one_child_worker.log()
                                   and all(f"[{r.id}] succeeded" in one_child_worker.log() for r in results),
                                   timeout=30)
    finally:
        taskbadger_server.accept()
    assert limited.taskbadger_task_id is None  # published while the API was down
    taskbadger_server.wait_for(lambda: all(taskbadger_server.get_task(r.taskbadger_task_id)["status"] == "success"
                                           for r in results), timeout=30)


def test_a_lookup_the_api_refuses_is_an_answer_not_an_outage(taskbadger_server):
    """A worker looks up the task a publish may have created; the API refusing that read (a 4xx) has answered. It
    counted as a failure: three such refusals opened the breaker, and the process's creates were skipped (its tasks
    untracked) while the API was up."""
    from taskbadger import inline

    taskbadger_server.fail(400, method="GET", detail="no such filter")
    for _ in range(4):
        found = inline.find("ext-1")
        assert found.task is None and found.asked  # the worker creates its task, rather than settle it later
    taskbadger_server.clear_faults()
    assert inline.create_inline("after the refusals", {"external_id": "ext-2"}).task is not None


def test_a_stray_answer_that_comes_after_a_create_was_written_is_not_its_answer(taskbadger_server):
    """A confused proxy sends a copy of an earlier answer on a kept-alive connection after the next request, a
    create, went out on it (too late for the check at checkout): the copy names a task of the same name and status,
    so nothing in its body tells it apart. It was taken as the create's answer: the task looked created, with
    another task's id (a CI run: the body's updates of it were answered 404). A create is answered 201."""
    import socket

    from taskbadger import inline

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer(status: bytes, task_id: str) -> bytes:
        body = json.dumps({"id": task_id, "name": "same name", "status": "processing"}).encode()
        return b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            status, len(body), body)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            for serial in range(2):
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, data = data.partition(b"\r\n\r\n")
                length = int(m[1]) if (m := re.search(rb"(?i)content-length: *(\d+)", head)) else 0
                while len(data) < length:
                    data += conn.recv(65536)
                data = data[length:]
                if serial == 0:  # a read of task A
                    conn.sendall(answer(b"200 OK", "A" * 26))
                else:  # the create: a copy of the read's answer first, then its own
                    conn.sendall(answer(b"200 OK", "A" * 26) + answer(b"201 Created", "B" * 26))
            conn.recv(65536)  # open until the client closes it

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        taskbadger.init(token=taskbadger_server.api_key, host=f"http://127.0.0.1:{port}")
        assert inline.fetch("A" * 26) is not None  # the connection is kept alive, idle, nothing to read
        created = inline.create_inline("same name", {"status": "processing"})
        assert created.task is not None and created.task.id == "B" * 26
    finally:
        listener.close()
