"""The stand-in server's requests and responses validate against the OpenAPI contract it ships with.

Every exchange below is a real HTTP round trip; the request (as requests prepared it) and the
response are both validated with openapi-core against taskbadger/testing/openapi.yaml, so the
server cannot drift from the contract. (400 responses are not described by the contract.)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse

import taskbadger.testing
from taskbadger.testing import TaskBadgerServer

SPEC = Path(taskbadger.testing.__file__).with_name("openapi.yaml")


@pytest.fixture(scope="module")
def openapi() -> OpenAPI:
    return OpenAPI.from_file_path(str(SPEC))


@pytest.fixture(scope="module")
def server() -> Iterator[TaskBadgerServer]:
    with TaskBadgerServer() as server:
        yield server


class Checked:
    """Sends requests and validates each request and response against the spec."""

    def __init__(self, server: TaskBadgerServer, openapi: OpenAPI) -> None:
        self.openapi = openapi
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {server.key}"
        self.base = f"{server.url}/api/{server.organization}/{server.project}/tasks/"
        self.validated = 0

    def __call__(
        self, method: str, task_id: str | None = None, expect: int = 200, **kwargs: Any
    ) -> requests.Response:
        url = self.base if task_id is None else f"{self.base}{task_id}/"
        prepared = self.session.prepare_request(requests.Request(method, url, **kwargs))
        response = self.session.send(prepared, timeout=5)
        assert response.status_code == expect, response.text
        request = RequestsOpenAPIRequest(prepared)
        self.openapi.validate_request(request)
        self.openapi.validate_response(request, RequestsOpenAPIResponse(response))
        self.validated += 1
        return response


@pytest.fixture
def api(server: TaskBadgerServer, openapi: OpenAPI) -> Iterator[Checked]:
    server.reset()
    checked = Checked(server, openapi)
    yield checked
    checked.session.close()


def test_spec_has_the_local_additions(openapi: OpenAPI) -> None:
    schemas = openapi.spec / "components" / "schemas"
    for name in ("Task", "TaskRequest", "PatchedTaskRequest"):
        with (schemas / name / "properties" / "parent").open() as parent:
            assert parent["nullable"] is True
    list_params = openapi.spec / "paths" / "/api/{organization_slug}/{project_slug}/tasks/" / "get" / "parameters"
    with list_params.open() as params:
        assert "parent" in [p["name"] for p in params]


def test_task_lifecycle_conforms(api: Checked) -> None:
    created = api(
        "POST", expect=201,
        json={"name": "conformance", "status": "pending", "data": {"k": [1, 2]}, "tags": {"env": "ci"},
              "value_max": 10, "max_runtime": 60, "stale_timeout": 30, "queue": "celery", "external_id": "abc"},
        headers={"X-TASKBADGER-MONITOR": str(uuid.uuid4())},
    ).json()
    task_id = created["id"]
    api("GET", task_id)
    api("PATCH", task_id, json={"status": "processing", "value": 3})
    api("PATCH", task_id, json={"data": None, "value": None})
    api("PUT", task_id, json={"name": "conformance", "status": "success", "value": 10,
                              "end_time": "2024-05-01T10:00:00Z"})
    api("DELETE", task_id, expect=204)
    api("GET", task_id)
    assert api.validated == 7


def test_list_and_parent_conform(api: Checked) -> None:
    parent = api("POST", expect=201, json={"name": "parent"}).json()
    for i in range(3):
        api("POST", expect=201, json={"name": f"child {i}", "parent": parent["id"]})
    api("PATCH", parent["id"], json={"parent": None})
    first = api("GET", params={"page_size": 2}).json()
    assert first["next"] and first["previous"] is None
    second = api("GET", params={"page_size": 2, "cursor": first["next"].split("cursor=")[1]}).json()
    assert len(second["results"]) == 2 and second["previous"]
    children = api("GET", params={"parent": parent["id"]}).json()
    assert len(children["results"]) == 3
    api("GET", params={"parent": "none-such"})


def test_validation_catches_drift(api: Checked, openapi: OpenAPI) -> None:
    """The check is not vacuous: a response that breaks the Task schema fails validation."""
    from openapi_core.templating.responses.exceptions import ResponseNotFound
    from openapi_core.validation.response.exceptions import InvalidData

    task = api("POST", expect=201, json={"name": "drift"}).json()
    prepared = api.session.prepare_request(requests.Request("GET", f"{api.base}{task['id']}/"))
    response = api.session.send(prepared, timeout=5)
    response._content = response.content.replace(b'"value_max": 100', b'"value_max": "lots"')
    with pytest.raises(InvalidData):
        openapi.validate_response(RequestsOpenAPIRequest(prepared), RequestsOpenAPIResponse(response))
    response._content = response.content.replace(b'"value_max": "lots"', b'"value_max": 100')
    openapi.validate_response(RequestsOpenAPIRequest(prepared), RequestsOpenAPIResponse(response))
    response._content = response.content.replace(b'"created": "', b'"created": "yesterday ')
    with pytest.raises(InvalidData):
        openapi.validate_response(RequestsOpenAPIRequest(prepared), RequestsOpenAPIResponse(response))
    response.status_code = 418
    with pytest.raises(ResponseNotFound):
        openapi.validate_response(RequestsOpenAPIRequest(prepared), RequestsOpenAPIResponse(response))


def test_action_endpoints_conform(api: Checked, openapi: OpenAPI) -> None:
    task = api("POST", expect=201, json={"name": "with actions"}).json()
    url = f"{api.base}{task['id']}/actions/"
    for method, body, expect in (("POST", {"trigger": "error", "integration": "email", "config": {"to": "a@b.c"}}, 201),
                                 ("GET", None, 200)):
        prepared = api.session.prepare_request(requests.Request(method, url, json=body))
        response = api.session.send(prepared, timeout=5)
        assert response.status_code == expect, response.text
        openapi.validate_request(RequestsOpenAPIRequest(prepared))
        openapi.validate_response(RequestsOpenAPIRequest(prepared), RequestsOpenAPIResponse(response))
    [action] = response.json()
    # The contract gives actions integer ids but declares the {id} path parameter a UUID: only the
    # answers of the per-action endpoints are checked.
    prepared = api.session.prepare_request(requests.Request("PATCH", f"{url}{action['id']}/",
                                                            json={"trigger": "success"}))
    response = api.session.send(prepared, timeout=5)
    assert response.status_code == 200 and response.json()["trigger"] == "success"
    schema = openapi.spec / "components" / "schemas" / "Action" / "required"
    with schema.open() as required:
        assert set(required) <= set(response.json())
