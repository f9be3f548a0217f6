"""The ``taskbadger_task`` message header between versions (issue 25): what a publisher writes leaves out what
its readers take for the same value when it is missing, and messages sit in brokers across deploys, so a worker
of this version reads the header as the previous version wrote it, and a worker of the previous version reads the
one this version writes without losing its task.
"""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace

import pytest

import taskbadger
from taskbadger import lifecycle
from taskbadger.celery import headers
from taskbadger.lifecycle import carried

from .celery_project import app as tasks
from .foreign import publish_foreign, wait_for_result

CELERY_ID = "b9256cde-5213-4837-ac42-7f10979d357b"
TB_ID = "RbvcLjmm5foymJZBpY4Zet1pqw"
NAME = "tests.celery_project.app.report_carried"


def previous_header(tb_id: str = TB_ID, celery_id: str = CELERY_ID, name: str = NAME, queue: str = "q",
                    public_url: str = f"http://127.0.0.1:1/public/tasks/{TB_ID}/") -> dict:
    """The header as the previous version wrote it for a task published with no options (``Meta.to_dict()`` of the
    created task: every field the API answered, null heartbeat and stale timeout)."""
    return {"task": {"id": tb_id, "name": name, "status": "pending", "value_max": 100, "tags": {}, "queue": queue,
                     "external_id": celery_id, "public_url": public_url},
            "heartbeat_interval": None, "stale_timeout": None}


def written(header: dict, celery_id: str = CELERY_ID) -> dict:
    """The headers this version's publisher writes for what ``header`` says (a message's headers carry its id)."""
    message = {"id": celery_id, "task": NAME}
    headers.write_meta(message, headers.parse_meta(header, NAME))
    return message


def body_view(meta: carried.Meta, celery_id: str = CELERY_ID) -> dict:
    """What the task's body sees of its task (``self.taskbadger_task``) once a worker has read ``meta``."""
    task = lifecycle.Run(celery_id, meta).task
    return {field: getattr(task, field) for field in tasks.CARRIED_FIELDS}


def read_by_this_version(message: dict, celery_id: str = CELERY_ID) -> carried.Meta:
    request = SimpleNamespace(id=celery_id, request_dict={**message, "id": celery_id})
    meta = headers.read_incoming(request, NAME).meta
    assert meta is not None
    return meta


def read_by_previous_version(message: dict) -> carried.Meta | None:
    """The previous version's worker: its ``read_incoming`` hands the raw header to ``carried.parse_meta`` (which
    this change leaves as it was) and nothing else; its ``Run`` is this one's."""
    return carried.parse_meta(message[headers.META_KEY], NAME, "message header taskbadger_task")


EXPECTED = {"id": TB_ID, "name": NAME, "status": "pending", "value": None, "value_max": 100, "tags": {}, "queue": "q",
            "external_id": CELERY_ID, "public_url": f"http://127.0.0.1:1/public/tasks/{TB_ID}/", "parent": None}


def test_the_header_leaves_out_what_its_readers_take_for_the_same_value():
    """The previous header for a task published with no options was 340 characters (the benchmark's task): a pending
    status, empty tags, null heartbeat and stale timeout, and the message's own Celery id as ``external_id``."""
    message = written(previous_header())
    assert message[headers.META_KEY] == {"task": {"id": TB_ID, "name": NAME, "value_max": 100, "queue": "q",
                                                  "public_url": f"http://127.0.0.1:1/public/tasks/{TB_ID}/"}}
    assert message[headers.ID_KEY] == TB_ID  # the official SDK's workers read it
    assert len(json.dumps(message[headers.META_KEY])) <= len(json.dumps(previous_header())) - 130


def test_what_is_not_at_its_default_stays_in_the_header():
    header = previous_header()
    header["task"].update(status="processing", tags={"env": "prod"}, external_id="another")
    header.update(heartbeat_interval=30.0, stale_timeout=120)
    assert written(header)[headers.META_KEY] == header


@pytest.mark.parametrize("form", ["previous", "this"])
def test_this_version_reads_either_header_as_the_same_task(form):
    message = {headers.META_KEY: previous_header()} if form == "previous" else written(previous_header())
    meta = read_by_this_version(message)
    assert body_view(meta) == EXPECTED
    assert (meta.heartbeat_interval, meta.stale_timeout, meta.resend) == (None, None, None)


def test_a_previous_version_worker_reads_the_new_header_without_losing_its_task():
    """Tracked, under the same id, with every field but ``external_id`` (the body's ``tb.external_id`` is None there
    until it reads the task, ``Task.get(tb.id)``; the task in Task Badger keeps it)."""
    meta = read_by_previous_version(written(previous_header()))
    assert meta is not None and meta.id == TB_ID
    assert body_view(meta) == {**EXPECTED, "external_id": None}
    assert lifecycle.Run(CELERY_ID, meta).is_finished() is False


def test_a_celery_id_too_long_for_an_external_id_is_not_taken_for_one():
    """A Celery id longer than the API takes is not the task's ``external_id`` (``create_fields``: it has none)."""
    long_id = "x" * 300
    header = previous_header(celery_id=long_id)
    del header["task"]["external_id"]
    meta = read_by_this_version(written(header, celery_id=long_id), celery_id=long_id)
    assert "external_id" not in meta.task


def test_the_header_of_a_retry_keeps_what_its_next_attempt_needs():
    meta = headers.parse_meta(previous_header(), NAME)
    run = lifecycle.Run(CELERY_ID, meta)
    message = {"id": CELERY_ID}
    headers.write_meta(message, run.meta_for_next_attempt({"value": 5, "start_time": "2026-12-07T10:00:00Z"}))
    again = read_by_this_version(message)
    assert again.resend == {"value": 5, "start_time": "2026-12-07T10:00:00Z"}
    assert body_view(again) == EXPECTED


# -- real workers -----------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_worker_s_body_sees_the_fields_its_publisher_carried(taskbadger_server, solo_worker):
    result = solo_worker.send(tasks.report_carried)
    seen = wait_for_result(result.id)
    created = taskbadger_server.get_task(result.taskbadger_task_id)
    assert seen == {"tracked": True, **{field: created[field] for field in tasks.CARRIED_FIELDS if field != "status"},
                    "status": "processing"}
    assert seen["external_id"] == result.id and seen["tags"] == {}


@pytest.mark.integration
def test_a_worker_tracks_a_message_a_previous_version_published(taskbadger_server, solo_worker, celery_app):
    celery_id = str(uuid.uuid4())
    task = taskbadger.create_task(NAME, external_id=celery_id, queue=solo_worker.queue)
    header = previous_header(task.id, celery_id, queue=solo_worker.queue, public_url=task.public_url)
    publish_foreign(celery_app, NAME, (), solo_worker.queue,
                    {headers.META_KEY: header, headers.ID_KEY: task.id}, celery_id=celery_id)
    seen = wait_for_result(celery_id)
    assert seen == {"tracked": True, **EXPECTED, "id": task.id, "external_id": celery_id, "queue": solo_worker.queue,
                    "public_url": task.public_url, "status": "processing"}
    assert taskbadger_server.wait_for_task(name=NAME, status="success", timeout=20)["id"] == task.id
