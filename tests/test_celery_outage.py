"""Final states survive a long API outage, with a real prefork worker.

A module of its own: the outage lasts 30 s, and test processes take whole modules (``--dist loadfile``), so
here it runs beside the other delivery tests instead of after them.
"""

import threading
import time

import pytest

from .celery_project import app as tasks
from .test_celery_delivery import NAME, successes

pytestmark = pytest.mark.integration


def test_final_states_survive_a_30_second_outage(taskbadger_server, prefork_worker):
    results = [prefork_worker.send(tasks.sleep_for, 1.0) for _ in range(4)]
    taskbadger_server.wait_for(lambda: len([t for t in taskbadger_server.tasks.values()
                                            if t["status"] == "processing"]) >= 2, timeout=20)
    taskbadger_server.refuse()
    outage_started = time.monotonic()
    try:
        # the tasks finish while the API is down
        taskbadger_server.wait_for(lambda: all(prefork_worker.log().count(r.id) >= 2 for r in results), timeout=25)
        assert len(successes(taskbadger_server, NAME + "sleep_for")) < 4
        threading.Event().wait(max(0.0, 30 - (time.monotonic() - outage_started)))  # the outage lasts 30 s
    finally:
        taskbadger_server.accept()
    taskbadger_server.wait_for(lambda: len(successes(taskbadger_server, NAME + "sleep_for")) == 4, timeout=30)
