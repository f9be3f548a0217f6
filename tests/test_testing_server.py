"""The stand-in Task Badger server (taskbadger.testing), exercised over real HTTP with requests."""

from __future__ import annotations

import base64
import logging
import os
import queue
import re
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

import taskbadger
from taskbadger.testing import TaskBadgerServer, http11

ROOT = Path(__file__).resolve().parents[1]
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|\+00:00)$")


class Api:
    """A thin requests client for the task endpoints."""

    def __init__(self, server: TaskBadgerServer, token: str | None = "test-key", org: str = "acme") -> None:
        self.server = server
        self.session = requests.Session()
        if token is not None:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.base = f"{server.url}/api/{org}/demo/tasks/"

    def url(self, task_id: str | None = None) -> str:
        return self.base if task_id is None else f"{self.base}{task_id}/"

    def create(self, expect: int | None = 201, **body: Any) -> dict:
        response = self.session.post(self.base, json=body, timeout=5)
        if expect is not None:
            assert response.status_code == expect, response.text
        return response.json()

    def request(self, method: str, task_id: str | None = None, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 5)
        return self.session.request(method, self.url(task_id), **kwargs)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[TaskBadgerServer]:
    with TaskBadgerServer() as server:
        yield server


@pytest.fixture
def server(shared_server: TaskBadgerServer) -> Iterator[TaskBadgerServer]:
    shared_server.reset()
    yield shared_server
    shared_server.reset()


@pytest.fixture
def api(server: TaskBadgerServer) -> Iterator[Api]:
    client = Api(server)
    yield client
    client.session.close()


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- basics -------------------------------------------------------------------------------------
def test_server_basics() -> None:
    server = TaskBadgerServer(organization="org", project="proj", key="k3y")
    with pytest.raises(RuntimeError):
        server.url  # noqa: B018 - not started yet
    with server:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url)
        assert base64.b64decode(server.api_key, validate=True) == b"org/proj/k3y"
        # listening as soon as start() returns
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1)


# Tests bind loopback addresses only: the opt-in for others is checked without binding one.
@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "192.0.2.10", "example.com"])
def test_an_address_beyond_loopback_is_refused_unless_allowed(host: str) -> None:
    with pytest.raises(ValueError, match=r"loopback only .*allow_remote=True.*--allow-remote"):
        TaskBadgerServer(host=host)


def test_allow_remote_takes_any_address_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="taskbadger.testing")
    server = TaskBadgerServer(host="0.0.0.0", port=8700, allow_remote=True)  # never started
    assert "no authentication" in caplog.text and "'0.0.0.0'" in caplog.text
    assert server.url == "http://127.0.0.1:8700"  # a wildcard address: the URL to use on this machine
    assert TaskBadgerServer(host="::", port=8700, allow_remote=True).url == "http://[::1]:8700"
    caplog.clear()
    assert TaskBadgerServer(host="127.0.0.1", allow_remote=True).host == "127.0.0.1"
    assert caplog.text == ""  # loopback needs no warning, allowed or not


@pytest.mark.parametrize("host,url_host", [("127.0.0.1", "127.0.0.1"), ("127.0.0.2", "127.0.0.2"),
                                           ("localhost", "127.0.0.1"), ("::1", "[::1]")])
def test_loopback_addresses_listen_and_the_url_works(host: str, url_host: str) -> None:
    with TaskBadgerServer(host=host) as server:
        assert server.url == f"http://{url_host}:{server.port}"
        assert requests.get(f"{server.url}/_dashboard/tasks", timeout=5).status_code == 200
        response = requests.post(f"{server.url}/api/acme/demo/tasks/", json={"name": "x"}, timeout=5,
                                 headers={"Authorization": "Bearer test-key"})
        assert response.status_code == 201 and response.json()["url"].startswith(f"{server.url}/")


def test_create_returns_full_task(api: Api, server: TaskBadgerServer) -> None:
    task = api.create(name="report", data={"a": 1}, tags={"env": "test"}, queue="q1", external_id="e1")
    assert re.fullmatch(r"[A-Za-z0-9]{26}", task["id"])
    expected = {
        "organization": "acme", "project": "demo", "name": "report", "status": "pending", "value": None,
        "value_max": 100, "value_percent": None, "data": {"a": 1}, "tags": {"env": "test"}, "queue": "q1",
        "external_id": "e1", "start_time": None, "end_time": None, "time_to_start": None,
        "max_runtime": None, "stale_timeout": None, "parent": None,
    }
    assert {k: task[k] for k in expected} == expected
    assert ISO.match(task["created"]) and ISO.match(task["updated"])
    assert isinstance(task["url"], str) and task["id"] in task["url"]
    assert isinstance(task["public_url"], str) and task["id"] in task["public_url"]
    held = server.get_task(task["id"])
    assert held is not None and held["monitor_id"] is None and held["name"] == "report"
    assert server.tasks_named("report") == [held]
    assert api.create(name="report")["id"] != task["id"]


def test_get_and_not_found(api: Api) -> None:
    task = api.create(name="t")
    response = api.request("GET", task["id"])
    assert response.status_code == 200 and response.json() == task
    missing = api.request("GET", "x" * 26)
    assert missing.status_code == 404 and missing.json() == {"detail": "Not found."}
    for method in ("PATCH", "PUT", "DELETE"):
        assert api.request(method, "nope", json={"name": "x"}).status_code == 404


def test_patch_is_partial_replaces_data_and_merges_tags(api: Api) -> None:
    task = api.create(name="t", data={"a": 1, "b": 2}, tags={"one": "11", "two": "22"}, queue="q")
    response = api.request("PATCH", task["id"], json={"data": {"c": 3}, "tags": {"two": "2x", "three": "33"}})
    assert response.status_code == 200
    updated = response.json()
    assert updated["data"] == {"c": 3}
    assert updated["tags"] == {"one": "11", "two": "2x", "three": "33"}
    assert updated["name"] == "t" and updated["queue"] == "q"
    assert parse(updated["updated"]) >= parse(task["updated"])
    assert updated["created"] == task["created"]
    # an empty PATCH is valid and changes nothing but `updated`
    assert api.request("PATCH", task["id"]).status_code == 200


def test_put_requires_name(api: Api) -> None:
    task = api.create(name="t", value=3)
    missing = api.request("PUT", task["id"], json={"status": "processing"})
    assert missing.status_code == 400 and missing.json() == {"name": ["This field is required."]}
    response = api.request("PUT", task["id"], json={"name": "renamed", "status": "processing"})
    assert response.status_code == 200
    assert response.json()["name"] == "renamed" and response.json()["status"] == "processing"


def test_delete_cancels_and_keeps_task(api: Api, server: TaskBadgerServer) -> None:
    task = api.create(name="t", status="processing")
    response = api.request("DELETE", task["id"])
    assert response.status_code == 204 and response.content == b""
    kept = api.request("GET", task["id"]).json()
    assert kept["status"] == "cancelled" and kept["end_time"] is not None
    assert server.get_task(task["id"])["status"] == "cancelled"


# -- status, times and progress -----------------------------------------------------------------
def test_start_and_end_time_rules(api: Api) -> None:
    task = api.create(name="t")
    assert task["start_time"] is None and task["end_time"] is None
    processing = api.request("PATCH", task["id"], json={"status": "processing"}).json()
    assert processing["start_time"] is not None and processing["end_time"] is None
    assert ISO.match(processing["start_time"]) and processing["time_to_start"] is not None
    again = api.request("PATCH", task["id"], json={"status": "post_processing"}).json()
    assert again["start_time"] == processing["start_time"]
    done = api.request("PATCH", task["id"], json={"status": "success"}).json()
    assert done["end_time"] is not None and done["start_time"] == processing["start_time"]
    later = api.request("PATCH", task["id"], json={"status": "error"}).json()
    assert later["end_time"] == done["end_time"]


def test_times_given_in_request_win(api: Api) -> None:
    start = datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)
    end = start + timedelta(seconds=90)
    task = api.create(name="t", status="success", start_time=start.isoformat(), end_time="2024-01-02T03:05:35.123456Z")
    assert parse(task["start_time"]) == start and parse(task["end_time"]) == end
    fast = api.create(name="fast")
    done = api.request("PATCH", fast["id"], json={"status": "success", "start_time": start.isoformat()}).json()
    assert parse(done["start_time"]) == start and done["end_time"] is not None
    # created with a running status: both set by the server
    running = api.create(name="r", status="error")
    assert running["start_time"] is not None and running["end_time"] is not None


@pytest.mark.parametrize("fraction, micro", [(".12", 120000), (".1234", 123400), (".12345", 123450), (".123", 123000)])
def test_times_with_any_digits_of_a_second_are_accepted(api: Api, fraction: str, micro: int) -> None:
    # the service takes one to six digits (YYYY-MM-DDThh:mm[:ss[.uuuuuu]]); on Python 3.10 the stand-in took only
    # 3 or 6 and answered 400 "Datetime has wrong format." to a start_time the service accepts
    task = api.create(name="t", start_time=f"2024-01-02T03:04:05{fraction}Z")
    assert parse(task["start_time"]) == datetime(2024, 1, 2, 3, 4, 5, micro, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("fields", "percent"),
    [({"value": 50}, 50), ({"value": 50, "value_max": 200}, 25), ({"value": 1, "value_max": 3}, 33),
     ({"value": None}, None), ({}, None), ({"value": 0}, 0)],
)
def test_value_percent(api: Api, fields: dict, percent: int | None) -> None:
    assert api.create(name="t", **fields)["value_percent"] == percent


def test_unknown_fields_are_ignored_but_recorded(api: Api, server: TaskBadgerServer) -> None:
    task = api.create(name="t", colour="blue", id="ignored", value_percent=99)
    assert "colour" not in task and task["id"] != "ignored" and task["value_percent"] is None
    assert server.get_task(task["id"])["unknown_fields"] == {"colour": "blue"}
    assert server.requests[-1].json["colour"] == "blue"


# -- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({}, "name", "This field is required."),
        ({"name": ""}, "name", "This field may not be blank."),
        ({"name": None}, "name", "This field may not be null."),
        ({"name": "x" * 256}, "name", "Ensure this field has no more than 255 characters."),
        ({"name": 5}, "name", "Not a valid string."),
        ({"value": -1}, "value", "Ensure this value is greater than or equal to 0."),
        ({"value": "5"}, "value", "A valid integer is required."),
        ({"value": 1.5}, "value", "A valid integer is required."),
        ({"value": True}, "value", "A valid integer is required."),
        ({"value_max": -3}, "value_max", "Ensure this value is greater than or equal to 0."),
        ({"value_max": None}, "value_max", "This field may not be null."),
        ({"max_runtime": 0}, "max_runtime", "Ensure this value is greater than or equal to 1."),
        ({"stale_timeout": 0}, "stale_timeout", "Ensure this value is greater than or equal to 1."),
        ({"status": "done"}, "status", '"done" is not a valid choice.'),
        ({"tags": ["a"]}, "tags", 'Expected a dictionary of items but got type "list".'),
        ({"tags": {"k": "v"}}, "tags", 'Tag "k": Ensure this field has at least 2 characters.'),
        ({"tags": {"k": "v" * 256}}, "tags", 'Tag "k": Ensure this field has no more than 255 characters.'),
        ({"tags": {"k": 12}}, "tags", 'Tag "k": Not a valid string.'),
        ({"queue": "q" * 256}, "queue", "Ensure this field has no more than 255 characters."),
        ({"external_id": "e" * 256}, "external_id", "Ensure this field has no more than 255 characters."),
        ({"start_time": "yesterday"}, "start_time", "Datetime has wrong format."),
        ({"parent": "missing"}, "parent", 'Invalid pk "missing" - object does not exist.'),
    ],
)
def test_validation_errors(api: Api, server: TaskBadgerServer, body: dict, field: str, message: str) -> None:
    payload = {"name": "ok", **body} if field != "name" else body
    response = api.request("POST", json=payload)
    assert response.status_code == 400
    errors = response.json()
    assert list(errors) == [field]
    assert errors[field][0].startswith(message)
    # the same rule applies to updates
    task = api.create(name="valid")
    if field != "name" or body:
        update = api.request("PATCH", task["id"], json=payload)
        assert update.status_code == 400 and list(update.json()) == [field]
    assert len(server.tasks) == 1
    assert server.requests[0].status == 400


def test_several_errors_at_once(api: Api) -> None:
    response = api.request("POST", json={"value": -1, "status": "nope"})
    assert response.status_code == 400 and set(response.json()) == {"name", "value", "status"}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"[1, 2]", {"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]}),
        (b"{not json", None),
    ],
)
def test_body_must_be_a_json_object(api: Api, data: bytes, expected: dict | None) -> None:
    response = api.request("POST", data=data, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    if expected is None:
        assert response.json()["detail"].startswith("JSON parse error")
    else:
        assert response.json() == expected


def test_monitor_header(api: Api, server: TaskBadgerServer) -> None:
    monitor = str(uuid.uuid4())
    response = api.request("POST", json={"name": "m"}, headers={"X-TASKBADGER-MONITOR": monitor})
    assert response.status_code == 201 and "monitor_id" not in response.json()
    assert server.get_task(response.json()["id"])["monitor_id"] == monitor
    assert server.requests[-1].headers["x-taskbadger-monitor"] == monitor
    bad = api.request("POST", json={"name": "m"}, headers={"X-TASKBADGER-MONITOR": "not-a-uuid"})
    assert bad.status_code == 400 and list(bad.json()) == ["X-TASKBADGER-MONITOR"]
    assert len(server.tasks) == 1


def test_a_monitor_the_project_does_not_hold_is_refused(api: Api, server: TaskBadgerServer) -> None:
    """The contract is silent on it: the service looks the monitor up among the project's, so one it does not hold
    (mistyped, deleted, another project's) is not found, and no task is made. Until a test gives the project a
    monitor, any well-formed id is one (tests that use made-up ids keep working)."""
    known = server.add_monitor()
    assert server.add_monitor(known.upper()) == known
    refused = api.request("POST", json={"name": "m"}, headers={"X-TASKBADGER-MONITOR": str(uuid.uuid4())})
    assert refused.status_code == 404 and refused.json() == {"detail": "Not found."}
    assert server.tasks == {}
    created = api.request("POST", json={"name": "m"}, headers={"X-TASKBADGER-MONITOR": known.upper()})
    assert created.status_code == 201 and server.get_task(created.json()["id"])["monitor_id"] == known
    assert api.request("POST", json={"name": "m"}).status_code == 201  # no monitor: nothing to look up
    server.reset()  # forgets the monitors: any id again
    other = api.request("POST", json={"name": "m"}, headers={"X-TASKBADGER-MONITOR": str(uuid.uuid4())})
    assert other.status_code == 201
    foreign = server.foreign_monitor()  # another project's: 403, no task, whatever the project holds
    refused = api.request("POST", json={"name": "m"}, headers={"X-TASKBADGER-MONITOR": foreign})
    assert refused.status_code == 403 and len(server.tasks) == 1
    server.reset()
    assert api.request("POST", json={"name": "m"}, headers={"X-TASKBADGER-MONITOR": foreign}).status_code == 201


# -- auth and routing ---------------------------------------------------------------------------
def test_auth(server: TaskBadgerServer) -> None:
    no_header = Api(server, token=None).request("GET")
    assert no_header.status_code == 401 and no_header.json() == {
        "detail": "Authentication credentials were not provided."
    }
    for token in ("wrong", server.api_key):  # the project key itself is not the bearer token
        response = Api(server, token=token).request("POST", json={"name": "x"})
        assert response.status_code == 401 and response.json() == {"detail": "Invalid token."}
    assert server.tasks == {}
    assert server.requests[-1].status == 401


def test_wrong_org_or_project_is_404(server: TaskBadgerServer) -> None:
    other = Api(server, org="other")
    assert other.request("GET").status_code == 404
    assert other.request("POST", json={"name": "x"}).status_code == 404
    session = requests.Session()
    session.headers["Authorization"] = "Bearer test-key"
    assert session.get(f"{server.url}/api/acme/nope/tasks/", timeout=5).status_code == 404
    assert session.get(f"{server.url}/elsewhere/", timeout=5).status_code == 404
    assert session.post(f"{server.url}/api/acme/demo/tasks/x/", json={}, timeout=5).status_code == 405
    assert server.tasks == {}


# -- listing ------------------------------------------------------------------------------------
def test_list_pagination(api: Api) -> None:
    ids = [api.create(name=f"t{i}")["id"] for i in range(5)]
    newest_first = ids[::-1]
    first = api.request("GET").json()
    assert [t["id"] for t in first["results"]] == newest_first
    assert first["next"] is None and first["previous"] is None

    pages, url = [], f"{api.base}?page_size=2"
    while url:
        assert url.startswith(api.server.url)
        page = api.session.get(url, timeout=5).json()
        pages.append(page)
        url = page["next"]
    assert [[t["id"] for t in p["results"]] for p in pages] == [newest_first[0:2], newest_first[2:4], newest_first[4:]]
    assert pages[0]["previous"] is None and pages[1]["previous"] is not None
    assert "page_size=2" in pages[1]["next"] and "cursor=" in pages[1]["next"]
    back = api.session.get(pages[2]["previous"], timeout=5).json()
    assert [t["id"] for t in back["results"]] == newest_first[2:4]
    back = api.session.get(back["previous"], timeout=5).json()
    assert [t["id"] for t in back["results"]] == newest_first[0:2] and back["previous"] is None
    # a task created meanwhile does not shift the cursor
    api.create(name="late")
    again = api.session.get(pages[0]["next"], timeout=5).json()
    assert [t["id"] for t in again["results"]] == newest_first[2:4]
    assert api.request("GET", params={"cursor": "!!"}).status_code == 404


def test_parent(api: Api) -> None:
    parent = api.create(name="parent")
    child = api.create(name="child", parent=parent["id"])
    assert child["parent"] == parent["id"]
    orphan = api.create(name="orphan")
    children = api.request("GET", params={"parent": parent["id"]}).json()
    assert [t["id"] for t in children["results"]] == [child["id"]]
    assert len(api.request("GET").json()["results"]) == 3

    def error(response: requests.Response) -> str:
        assert response.status_code == 400, response.text
        return response.json()["parent"][0]

    assert "one level" in error(api.request("POST", json={"name": "grandchild", "parent": child["id"]}))
    assert "changed" in error(api.request("PATCH", child["id"], json={"parent": orphan["id"]}))
    assert "changed" in error(api.request("PATCH", child["id"], json={"parent": None}))
    assert "one level" in error(api.request("PATCH", parent["id"], json={"parent": orphan["id"]}))
    assert "own parent" in error(api.request("PATCH", orphan["id"], json={"parent": orphan["id"]}))
    # setting the same parent again is fine, and a parent can be set later
    assert api.request("PATCH", child["id"], json={"parent": parent["id"]}).status_code == 200
    adopted = api.request("PATCH", orphan["id"], json={"parent": parent["id"]}).json()
    assert adopted["parent"] == parent["id"]


def test_malformed_requests(server: TaskBadgerServer) -> None:
    session = requests.Session()
    session.headers["Authorization"] = "Bearer test-key"
    url = f"{server.url}/api/acme/demo/tasks/"
    chunked = session.post(url, data=iter([b'{"name": "x"}']), timeout=5)
    assert chunked.status_code == 411 and chunked.headers["Connection"] == "close"
    text = session.post(url, data=b"name=x", headers={"Content-Type": "text/plain"}, timeout=5)
    assert text.status_code == 415
    assert session.request("HEAD", url, timeout=5).status_code == 405
    assert server.tasks == {}


# -- request log and helpers --------------------------------------------------------------------
def test_request_log(api: Api, server: TaskBadgerServer) -> None:
    task = api.create(name="logged", value=1)
    api.request("GET", params={"page_size": "5"})
    create, listing = server.requests
    assert (create.method, create.path, create.status, create.json) == (
        "POST", "/api/acme/demo/tasks/", 201, {"name": "logged", "value": 1}
    )
    assert create.task_id == task["id"]
    assert create.headers["authorization"] == create.headers["Authorization"] == "Bearer test-key"
    assert "CONTENT-TYPE" in create.headers
    assert listing.query == {"page_size": "5"} and listing.json is None
    assert create.connection_id == listing.connection_id
    assert create.timestamp <= listing.timestamp


def test_reset(api: Api, server: TaskBadgerServer) -> None:
    api.create(name="t")
    server.fail(500)
    server.reset()
    assert server.tasks == {} and server.requests == [] and server.faults == []
    assert server.connections_opened == 0
    assert api.create(name="again")["name"] == "again"


def test_wait_for(api: Api, server: TaskBadgerServer) -> None:
    assert server.wait_for(lambda: 42) == 42
    with pytest.raises(AssertionError, match="timed out after 0.05s waiting for.*never"):
        server.wait_for(lambda: "never" == "ever", timeout=0.05)

    worker = threading.Thread(target=lambda: Api(server).create(name="background", status="success"))
    worker.start()
    task = server.wait_for_task(name="background", status="success")
    assert task["status"] == "success"
    worker.join()
    with pytest.raises(AssertionError, match="no task with name='background' status='error'"):
        server.wait_for_task(name="background", status="error", timeout=0.05)


# -- faults -------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [500, 503, 502])
def test_fail_n_times(api: Api, server: TaskBadgerServer, status: int) -> None:
    server.fail(status, times=2)
    assert [api.request("GET").status_code for _ in range(3)] == [status, status, 200]
    assert api.request("GET").status_code == 200
    assert [r.status for r in server.requests] == [status, status, 200, 200]


def test_fail_body_and_method_filter(api: Api, server: TaskBadgerServer) -> None:
    server.fail(503, method=["POST", "patch"])
    response = api.request("POST", json={"name": "x"})
    assert response.status_code == 503 and "detail" in response.json()
    assert api.request("GET").status_code == 200
    assert server.tasks == {}
    server.clear_faults()
    assert api.request("POST", json={"name": "x"}).status_code == 201


def test_429_with_retry_after(api: Api, server: TaskBadgerServer) -> None:
    server.fail(429, times=1, retry_after=7)
    response = api.request("GET")
    assert response.status_code == 429 and response.headers["Retry-After"] == "7"
    assert response.json()["detail"] == "Request was throttled. Expected available in 7 seconds."
    assert api.request("GET").status_code == 200


def test_fail_rejects_non_error_status(server: TaskBadgerServer) -> None:
    with pytest.raises(ValueError):
        server.fail(200)
    with pytest.raises(ValueError):
        server.drop(times=0)


def test_stop_and_start_again() -> None:
    server = TaskBadgerServer().start()
    port = server.port
    Api(server).create(name="kept")
    server.hang()
    server.stop()
    server.stop()  # idempotent
    server.clear_faults()  # does not start a stopped server
    assert not server.listening
    with server:
        assert server.port == port
        assert [t["name"] for t in Api(server).request("GET").json()["results"]] == ["kept"]


def test_drop(api: Api, server: TaskBadgerServer) -> None:
    server.drop(times=1, method="POST")
    with pytest.raises(requests.ConnectionError):
        api.request("POST", json={"name": "lost"})
    assert server.requests[-1].status is None and server.requests[-1].json == {"name": "lost"}
    assert server.tasks == {}
    assert api.request("POST", json={"name": "kept"}).status_code == 201


def test_hang_until_cleared(api: Api, server: TaskBadgerServer) -> None:
    server.hang(method="PATCH")
    task = api.create(name="t")
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        api.request("PATCH", task["id"], json={"status": "success"}, timeout=0.2)
    assert time.monotonic() - started >= 0.2
    assert server.requests[-1].method == "PATCH" and server.requests[-1].status is None
    assert api.request("GET", task["id"]).status_code == 200  # other methods unaffected
    server.clear_faults()
    assert api.request("PATCH", task["id"], json={"status": "success"}).json()["status"] == "success"


def test_hang_does_not_block_stop() -> None:
    server = TaskBadgerServer().start()
    server.hang()
    client = Api(server)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            client.request("GET", timeout=30)
        except requests.RequestException as err:
            outcome.append(err)

    caller = threading.Thread(target=call)
    caller.start()
    server.wait_for(lambda: server.requests)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2
    caller.join(timeout=5)
    assert not caller.is_alive() and isinstance(outcome[0], requests.ConnectionError)


def test_refuse_and_accept_on_same_port() -> None:
    with TaskBadgerServer() as server:
        api = Api(server)
        assert api.create(name="before")
        port = server.port
        server.refuse()
        assert not server.listening
        with pytest.raises(requests.ConnectionError):
            api.request("GET")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1)
        server.accept()
        assert server.port == port and server.listening
        assert len(api.request("GET").json()["results"]) == 1  # state survives an outage
        server.refuse()
        server.reset()  # reset() listens again too
        assert api.request("GET").status_code == 200


def test_latency(api: Api, server: TaskBadgerServer) -> None:
    server.set_latency(0.15)
    started = time.monotonic()
    assert api.request("GET").status_code == 200
    assert time.monotonic() - started >= 0.15
    server.clear_faults()
    server.set_latency(0.1, times=1, method="POST")
    started = time.monotonic()
    api.create(name="slow")
    assert time.monotonic() - started >= 0.1
    assert server.faults == []


def test_latency_from_constructor() -> None:
    with TaskBadgerServer(latency=0.1) as server:
        started = time.monotonic()
        Api(server).request("GET")
        assert time.monotonic() - started >= 0.1
        server.clear_faults()  # keeps the constructor's latency
        started = time.monotonic()
        Api(server).request("GET")
        assert time.monotonic() - started >= 0.1


# -- connections --------------------------------------------------------------------------------
def test_connection_counting(api: Api, server: TaskBadgerServer) -> None:
    for _ in range(3):
        api.request("GET")
    assert server.connections_opened == 1
    assert len({r.connection_id for r in server.requests}) == 1
    other = Api(server)
    other.request("GET")
    assert server.connections_opened == 2
    assert server.requests[-1].connection_id != server.requests[0].connection_id
    closing = api.request("GET", headers={"Connection": "close"})
    assert closing.headers["Connection"] == "close"
    api.request("GET")
    assert server.connections_opened == 3


def test_keep_alive_is_fast(api: Api, server: TaskBadgerServer) -> None:
    """Responses leave in one write with TCP_NODELAY: no ~40 ms delayed-ACK stall per request."""
    task = api.create(name="t")
    durations = []
    for i in range(50):
        started = time.perf_counter()
        if i % 2:
            response = api.request("PATCH", task["id"], json={"value": i})
        else:
            response = api.request("GET", task["id"])
        durations.append(time.perf_counter() - started)
        assert response.ok
    assert statistics.median(durations) < 0.015, durations
    assert server.connections_opened == 1
    assert len({r.connection_id for r in server.requests}) == 1


def test_each_response_is_one_write_with_nodelay(
    api: Api, server: TaskBadgerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = api.create(name="t")
    writes: list[int] = []
    original = http11.Connection._write

    def counting_write(self: Any, data: bytes) -> None:
        writes.append(len(data))
        original(self, data)

    monkeypatch.setattr(http11.Connection, "_write", counting_write)
    for method, body in (("GET", None), ("PATCH", {"value": 1}), ("DELETE", None)):
        writes.clear()
        api.request(method, task["id"], json=body)
        assert len(writes) == 1, (method, writes)
    writes.clear()
    api.request("POST", json={})  # a 400
    assert len(writes) == 1
    sockets = server.app.open_sockets
    assert sockets and all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets)


def test_concurrent_clients(server: TaskBadgerServer) -> None:
    def work(n: int) -> None:
        client = Api(server)
        for i in range(10):
            task = client.create(name=f"w{n}-{i}")
            client.request("PATCH", task["id"], json={"status": "success"})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(server.tasks) == 80
    assert all(t["status"] == "success" for t in server.tasks.values())


# -- entry points -------------------------------------------------------------------------------
def _read_lines(stream: Any, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as ``nohup … &`` starts a process


@pytest.mark.parametrize("stop_signal,started", [(signal.SIGTERM, "normally"), (signal.SIGINT, "normally"),
                                                 (signal.SIGINT, "with SIGINT ignored")])
def test_main_runs_in_foreground_and_stops_on_signal(stop_signal: signal.Signals, started: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-m", "taskbadger.testing", "--latency", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        preexec_fn=_ignore_sigint if started != "normally" else None,
    ) as process:
        # read the child's output in a thread so that every wait below has a deadline
        output: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(process.stdout, output), daemon=True)
        reader.start()
        try:
            lines = [output.get(timeout=10) for _ in range(4)]
            url = re.search(r"http://127\.0\.0\.1:\d+", lines[0]).group(0)
            key = lines[1].split()[-1]
            assert lines[2].strip() == f"export TASKBADGER_HOST={url} TASKBADGER_API_KEY={key}"
            assert lines[3].strip() == f"Dashboard: {url}/"
            token = base64.b64decode(key).decode().split("/")[2]
            response = requests.post(
                f"{url}/api/acme/demo/tasks/", json={"name": "cli"},
                headers={"Authorization": f"Bearer {token}"}, timeout=5,
            )
            assert response.status_code == 201
            process.send_signal(stop_signal)
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        reader.join(timeout=5)
    rest = "".join(output.queue)
    assert "stopped" in rest and "Traceback" not in rest


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10"])
def test_main_refuses_an_address_beyond_loopback(host: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "taskbadger.testing", "--host", host], capture_output=True,
                            text=True, env=env, timeout=30)
    assert result.returncode == 2 and result.stdout == ""
    assert f"refusing to listen on '{host}'" in result.stderr and "--allow-remote" in result.stderr
    assert "Traceback" not in result.stderr


def test_main_on_a_port_in_use_says_what_to_do_without_a_traceback() -> None:
    """The docs start it with ``--port 8700``; one started earlier (another terminal) holds the port. It used to
    end in an OSError traceback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "taskbadger.testing", "--port", str(port)], capture_output=True,
                                text=True, env=env, timeout=30)
    assert result.returncode == 1 and result.stdout == ""
    assert f"cannot listen on 127.0.0.1 port {port}" in result.stderr, result.stderr
    assert "another process listens there" in result.stderr and "--port" in result.stderr
    assert "Traceback" not in result.stderr


def run_with_the_plugin(tmp_path: Path) -> str:
    """pytest on the project written in ``tmp_path``, with this package's plugin and no other: its output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "taskbadger.testing.plugin", "-p", "no:cacheprovider",
         str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_pytest_plugin_fixture_restores_the_configuration_it_found(tmp_path: Path) -> None:
    """A project's own configuration (its settings, with the key in the environment) is back for the tests after
    one that used ``taskbadger_server``: whether a test tracks does not depend on the order the tests run in."""
    (tmp_path / "conftest.py").write_text(textwrap.dedent("""
        import taskbadger

        taskbadger.init(token="YWNtZS9kZW1vL2tleQ==", host="https://tb.example.com")
    """))
    (tmp_path / "test_inner.py").write_text(textwrap.dedent("""
        from taskbadger import config

        def test_stand_in(taskbadger_server):
            assert config.get_config().host == taskbadger_server.url

        def test_after():
            assert config.get_config() is not None and config.get_config().host == "https://tb.example.com"
    """))
    assert "2 passed" in run_with_the_plugin(tmp_path)


def test_pytest_plugin_fixtures(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(textwrap.dedent("""
        import types
        import pytest
        import taskbadger

        calls = []

        @pytest.fixture(autouse=True)
        def fake_sdk(monkeypatch):
            monkeypatch.setattr(taskbadger, "init", lambda **kw: calls.append(("init", kw)), raising=False)
            config = types.SimpleNamespace(get_config=lambda: "the project's",
                                           set_config=lambda previous: calls.append(("set_config", previous)))
            monkeypatch.setattr(taskbadger, "config", config, raising=False)
            return calls
    """))
    (tmp_path / "test_inner.py").write_text(textwrap.dedent("""
        import requests

        def test_session(taskbadger_server_session):
            assert requests.get(taskbadger_server_session.url + "/elsewhere/", timeout=5).status_code == 404

        def test_function(taskbadger_server, fake_sdk):
            assert fake_sdk == [("init", {"token": taskbadger_server.api_key, "host": taskbadger_server.url})]
            taskbadger_server.fail(500)

        def test_after(taskbadger_server, taskbadger_server_session, fake_sdk):
            assert taskbadger_server is taskbadger_server_session
            assert taskbadger_server.faults == [] and taskbadger_server.requests == []
            assert ("set_config", "the project's") in fake_sdk  # restored, not left unconfigured
    """))
    assert "3 passed" in run_with_the_plugin(tmp_path)


@pytest.fixture
def project_scope_tags():
    """Tags the project set in the main thread's scope (at import, say), checked after ``taskbadger_server`` ends."""
    taskbadger.current_scope().tag({"team": "ops"})
    yield
    # the fixture's init() set the scope's tags to none, and they stayed so for the tests after it
    assert taskbadger.current_scope().tags == {"team": "ops"}


def test_the_fixture_gives_the_project_its_scope_tags_back(project_scope_tags, taskbadger_server):
    taskbadger.create_task("in the test")
    assert taskbadger_server.tasks_named("in the test")
