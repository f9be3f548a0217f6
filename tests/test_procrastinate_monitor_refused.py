"""A monitor id the API does not know (mistyped, deleted in Task Badger, another project's) on Procrastinate, with
real ``procrastinate worker`` processes: every job is still tracked, without the monitor, with one refused request
and one warning naming the setting to fix (the processes of a machine share what was refused: its spool
directory): ``TASKBADGER['MONITORS']`` under Django (jobs deferred by
``manage.py shell`` and by a process without a key, run by ``manage.py procrastinate worker``), the integration's
``monitors`` without Django (periodic jobs, created by the worker; jobs deferred by this process)."""

from __future__ import annotations

import json
import tempfile
import uuid

import procrastinate
import pytest

import taskbadger
from taskbadger.systems.procrastinate import ProcrastinateSystemIntegration

from . import test_procrastinate_django
from .conftest import _live_workers
from .procrastinate_project import app as tasks
from .procrastinate_workers import ProcrastinateWorker
from .test_procrastinate import dsn  # noqa: F401 (a fixture: a database with Procrastinate's schema)
from .test_procrastinate_django import manage

pytestmark = pytest.mark.integration
django_env = test_procrastinate_django.django_env  # the fixture: a migrated Django project on a database of its own
WARNING = "is not one of project acme/demo's monitors"


def refused_creates(server, monitor):
    return [r for r in server.requests if r.method == "POST" and r.headers.get("X-TASKBADGER-MONITOR") == monitor]


class _After:
    """The requests the stand-in received from some point on, as ``refused_creates`` reads them."""

    def __init__(self, requests):
        self.requests = requests


def warnings_in(output):
    return [line for line in output.splitlines() if WARNING in line]


def test_jobs_under_a_monitor_in_settings_the_api_does_not_know_are_tracked_without_it(taskbadger_server,
                                                                                        django_env):
    env, database = django_env
    env = {**env, "TASKBADGER_SPOOL_DIR": f"{tempfile.mkdtemp()}/spool"}  # one machine's processes, this test's own
    taskbadger_server.add_monitor()  # the project's only monitor: from now on the stand-in refuses the others
    unknown = env["TB_DJANGO_MONITOR"]  # TASKBADGER['MONITORS'] of dj.echo
    queue = f"dj-{uuid.uuid4().hex[:6]}"
    defer = (f"from tests.procrastinate_django import tasks as t; "
             f"[print(t.echo.configure(queue={queue!r}).defer(value=i)) for i in range(3)]")
    unpublished = manage({**env, "TASKBADGER_API_KEY": ""}, "shell", "-c", defer)  # the worker creates these
    worker = ProcrastinateWorker(taskbadger_server, database, extra_env=env, django=True, queue=queue).start()
    _live_workers.append(worker)
    try:
        def done(job_ids):
            found = [t for t in taskbadger_server.tasks.values() if t["external_id"] in job_ids]
            return found if len(found) == len(job_ids) and all(t["status"] == "success" for t in found) else None

        # polls the stand-in under a deadline
        found = taskbadger_server.wait_for(lambda: done(unpublished.stdout.split()[-3:]), timeout=30)
        before_publish = len(taskbadger_server.requests)
        published = manage(env, "shell", "-c", defer)  # then the deferring process creates them
        found += taskbadger_server.wait_for(lambda: done(published.stdout.split()[-3:]), timeout=30)
    finally:
        worker.stop()
        _live_workers.remove(worker)
    assert len(found) == 6 and all(t["monitor_id"] is None and t["name"] == "dj.echo" for t in found), found
    # The worker's first creates are refused (its jobs start together: up to three before the first refusal is
    # recorded); then the machine's processes leave the monitor out: the deferring process asks for none of it.
    refused = refused_creates(taskbadger_server, unknown)
    assert 1 <= len(refused) <= 3 and {r.status for r in refused} == {404}, refused
    assert not refused_creates(_After(taskbadger_server.requests[before_publish:]), unknown)
    [warning] = warnings_in(worker.log())
    assert unknown in warning and "Fix the monitor id in TASKBADGER['MONITORS']" in warning, worker.log()[-4000:]
    assert not warnings_in(published.stderr) and "untracked" not in published.stderr + worker.log()


def test_periodic_and_deferred_jobs_under_a_refused_monitor_rule_are_tracked_without_it(
        taskbadger_server, dsn, tb_log):  # noqa: F811 - fixture
    taskbadger_server.add_monitor()
    unknown = str(uuid.uuid4())
    queue = f"periodic-{uuid.uuid4().hex[:6]}"
    rules = {"tick": unknown, "echo": unknown}
    spool = f"{tempfile.mkdtemp()}/spool"  # one machine's processes (the worker, this one), this test's own
    worker = ProcrastinateWorker(taskbadger_server, dsn, queue=queue, extra_env={
        "TB_PRO_PERIODIC": "1", "TB_PRO_QUEUE": queue, "TB_PRO_MONITORS": json.dumps(rules),
        "TASKBADGER_SPOOL_DIR": spool}).start()
    _live_workers.append(worker)

    def ticks():
        done = [t for t in taskbadger_server.tasks_named("tick") if t["status"] == "success"]
        return done if len(done) >= 3 else None

    try:
        taskbadger_server.wait_for(ticks, timeout=30)  # polls the stand-in: the worker creates a tick every second
        with tasks.app.replace_connector(procrastinate.PsycopgConnector(conninfo=dsn)) as app, app.open():
            taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, spool_dir=spool,
                            systems=[ProcrastinateSystemIntegration(app, monitors=rules)])
            job_ids = [str(tasks.echo.configure(queue=queue).defer(value=str(i))) for i in range(3)]

        def echoes():
            done = [t for t in taskbadger_server.tasks.values() if t["external_id"] in job_ids
                    and t["status"] == "success"]
            return done if len(done) == 3 else None

        found = taskbadger_server.wait_for(echoes, timeout=30) + ticks()  # polls the stand-in under a deadline
    finally:
        worker.stop()
        _live_workers.remove(worker)
    assert all(t["monitor_id"] is None for t in found), found
    # one refused create on the machine (the worker's first tick); then its processes leave the monitor out
    assert [r.status for r in refused_creates(taskbadger_server, unknown)] == [404]
    [warning] = warnings_in(worker.log())
    assert unknown in warning and "Fix the monitor id in the monitors of ProcrastinateSystemIntegration" in warning
    assert not [r for r in tb_log.records if WARNING in r.getMessage()]
