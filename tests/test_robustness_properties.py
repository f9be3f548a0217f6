"""Property-based: arbitrary ``taskbadger_*`` options at publish and arbitrary message headers at task
start never hurt the task (real worker, real HTTP).

For every example: the message is published, the task's own result is intact, nothing is logged at
ERROR, and every request the stand-in API received is one the SDK meant to send.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .celery_project import app as tasks
from .foreign import publish_foreign, wait_for_result
from .test_robustness import assert_wire_clean

pytestmark = pytest.mark.integration

OPTION_NAMES = ["name", "value", "value_max", "data", "tags", "monitor_id", "max_runtime", "stale_timeout",
                "record_task_args", "heartbeat_interval", "parent", "track", "valeu_max", "kwargs"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
# What a careless caller passes: JSON, and things JSON cannot encode.
any_values = json_values | st.sets(st.integers(), max_size=3) | st.builds(object) | st.binary(max_size=10) | \
    st.datetimes().map(lambda d: d.replace(tzinfo=dt.timezone.utc)) | \
    st.dictionaries(st.text(max_size=5), st.sets(st.integers(), max_size=2) | st.builds(object), max_size=2) | \
    st.sampled_from(["a\r\nX-Injected: 1", "x" * 5000, "../../x", "\x00", str(uuid.uuid4())])

options = st.dictionaries(st.sampled_from(OPTION_NAMES), any_values, max_size=5)

ids = st.text(max_size=30) | st.sampled_from(["", "abc\r\nX: 1", "../x", "a" * 26, "a b"]) | st.integers()
task_fields = st.fixed_dictionaries({}, optional={
    "id": ids, "name": json_values,
    "status": json_values | st.sampled_from(["pending", "processing", "bogus"]),
    "value": json_values, "value_max": json_values, "data": json_values, "tags": json_values,
    "parent": ids | st.none(), "created": json_values | st.just("notadate"), "public_url": json_values,
})
meta = st.fixed_dictionaries({}, optional={
    "task": task_fields | json_values, "heartbeat_interval": json_values, "stale_timeout": json_values,
})
headers = st.fixed_dictionaries({}, optional={
    "taskbadger_task": meta | json_values,
    "taskbadger_task_id": ids | json_values,
    "taskbadger_kwargs": st.dictionaries(st.sampled_from(OPTION_NAMES), json_values, max_size=4) | json_values,
    "taskbadger_track": json_values,
    "taskbadger_maybe_created": json_values,
})

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def errors_logged(caplog, worker, since: int) -> list[str]:
    ours = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    theirs = [line for line in worker.log()[since:].splitlines() if " ERROR/" in line or "Traceback" in line]
    return ours + theirs


@SETTINGS
@given(opts=options, payload=st.text(max_size=20))
def test_any_options_at_publish(taskbadger_server, solo_worker, caplog, opts, payload):
    since = len(solo_worker.log())
    caplog.clear()
    result = solo_worker.send(tasks.echo, payload, **{f"taskbadger_{k}": v for k, v in opts.items()})
    assert wait_for_result(result.id)["value"] == payload
    assert errors_logged(caplog, solo_worker, since) == []
    assert_wire_clean(taskbadger_server)


@SETTINGS
@given(message_headers=headers, payload=st.text(max_size=20))
def test_any_headers_at_task_start(taskbadger_server, solo_worker, celery_app, caplog, message_headers, payload):
    since = len(solo_worker.log())
    caplog.clear()
    celery_id = publish_foreign(celery_app, "tests.celery_project.app.echo", (payload,), solo_worker.queue,
                                message_headers)
    assert wait_for_result(celery_id)["value"] == payload
    taskbadger_server.wait_for(lambda: f"[{celery_id}] succeeded" in solo_worker.log(), timeout=20)
    assert errors_logged(caplog, solo_worker, since) == []
    assert_wire_clean(taskbadger_server, foreign_ids=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=4_102_444_800 * 10**9), min_size=1, max_size=4))
def test_the_lifecycles_timestamps_are_what_isoformat_says(instants_ns):
    """``lifecycle.now()`` formats with a per-second cache: the same text as ``datetime.isoformat`` (with the
    microseconds always there), for any instant and whatever instant the cache holds."""
    import time
    from unittest import mock

    from taskbadger import lifecycle

    for ns in instants_ns + [ns + 1_000 for ns in instants_ns]:  # the next microsecond: the cache's second again
        with mock.patch.object(time, "time_ns", return_value=ns):
            text = lifecycle.now()
        epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)  # integer arithmetic: no float rounding
        expected = (epoch + dt.timedelta(microseconds=ns // 1000)).isoformat(timespec="microseconds")
        assert text == expected
