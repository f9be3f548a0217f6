"""Helpers that play the other parties of a Celery deployment: a producer that does not run taskbadger
(another service, an older release), and the results the test tasks leave behind."""

from __future__ import annotations

import json
import os
import pathlib
import time
import uuid
from typing import Any


def publish_foreign(app: Any, name: str, args: tuple, queue: str, headers: dict[str, Any],
                    celery_id: str | None = None) -> str:
    """Publish a Celery (protocol 2) message the way a producer without taskbadger would: straight
    through kombu, so no ``before_task_publish`` receiver sees it. Returns the Celery task id."""
    celery_id = celery_id or str(uuid.uuid4())
    message = app.amqp.as_task_v2(celery_id, name, args=args, kwargs={})
    with app.producer_or_acquire() as producer:
        producer.publish(
            message.body, exchange="", routing_key=queue, serializer="json",
            headers={**message.headers, **headers}, retry=False, **message.properties,
        )
    return celery_id


def results_dir() -> pathlib.Path:
    return pathlib.Path(os.environ["TB_RESULTS_DIR"])


def wait_for_result(celery_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """What the ``echo`` test task returned for ``celery_id`` (it writes its result to a file)."""
    path = results_dir() / celery_id
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"task {celery_id} left no result within {timeout} s")
        time.sleep(0.02)  # polling a file the worker writes, under a deadline
    return json.loads(path.read_text())
