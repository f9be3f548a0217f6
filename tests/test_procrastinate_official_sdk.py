"""Mixed deployments, for real: jobs deferred by this package run tracked in a worker running the official
SDK, and the reverse. The official SDK is imported as ``taskbadger`` too, so it runs from a virtualenv of
its own: set ``TB_OFFICIAL_SDK_PYTHON`` to that virtualenv's python (with ``taskbadger[procrastinate]``
installed); without it these tests are skipped (the kwarg's format both ways is also covered, without the
official SDK, in test_procrastinate.py)."""

from __future__ import annotations

import os
import subprocess
import textwrap

import pytest

from .procrastinate_project import app as tasks
from .test_procrastinate import api, app, dsn, job_of, task_of_job, wait_job, worker  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

OFFICIAL = os.environ.get("TB_OFFICIAL_SDK_PYTHON")
requires_official = pytest.mark.skipif(not OFFICIAL, reason="TB_OFFICIAL_SDK_PYTHON is not set")

# An app run with the official SDK (its host is not configurable through init(): _init takes it).
OFFICIAL_APP = textwrap.dedent("""
    import os

    import procrastinate
    import taskbadger.sdk
    from taskbadger.systems.procrastinate import ProcrastinateSystemIntegration

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=os.environ["DSN"]))


    @app.task(name="kwargs_seen", queue=os.environ["QUEUE"])
    def kwargs_seen(**kwargs):
        if set(kwargs) != {"value"}:
            raise AssertionError(f"unexpected kwargs {sorted(kwargs)}")


    taskbadger.sdk._init(os.environ["HOST"], None, None, os.environ["KEY"],
                         systems=[ProcrastinateSystemIntegration(app)])
""")


def official_env(server, dsn: str, queue: str, tmp_path) -> dict:  # noqa: F811
    (tmp_path / "official_app.py").write_text(OFFICIAL_APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "TASKBADGER_"))}
    return {**env, "DSN": dsn, "QUEUE": queue, "HOST": server.url, "KEY": server.api_key}


@requires_official
def test_a_job_we_defer_runs_tracked_in_an_official_worker(api, app, dsn, tmp_path):  # noqa: F811
    queue = "official-worker"
    env = official_env(api, dsn, queue, tmp_path)
    job_id = tasks.kwargs_seen.configure(queue=queue).defer(value=1)
    created = task_of_job(api, job_id, statuses=("pending",))
    subprocess.run(
        [OFFICIAL, "-m", "procrastinate", "--app", "official_app.app", "worker", "--queues", queue, "--one-shot"],
        cwd=tmp_path,
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
    )
    assert job_of(app, job_id).status == "succeeded"  # the official wrapper removed the kwarg
    api.wait_for(lambda: api.get_task(created["id"])["status"] == "success" or None)


@requires_official
def test_a_job_the_official_sdk_defers_runs_tracked_in_our_worker(api, app, dsn, worker, tmp_path):  # noqa: F811
    env = official_env(api, dsn, worker.queue, tmp_path)
    out = subprocess.run(
        [OFFICIAL, "-c", "import official_app as m\nwith m.app.open(): print(m.kwargs_seen.defer(value=1))"],
        cwd=tmp_path,
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    job_id = int(out.stdout.split()[-1])
    assert wait_job(app, job_id).status == "succeeded"  # our middleware removed the kwarg
    tb = task_of_job(api, job_id)  # the official SDK recorded the job id as external_id
    assert tb["status"] == "success" and tb["name"] == "kwargs_seen"
