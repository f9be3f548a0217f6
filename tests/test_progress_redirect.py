"""The recipe of docs/progress.md for a real view: a POST starts the export and redirects to a page that knows only the
Celery id and draws the bar of ``app.AsyncResult(celery_id)``, in another web process than the one that published it
(two ``runserver`` processes of one project, a real Celery worker, the stand-in API over HTTP).

The case: Task Badger failed the create at publish (an outage), so the task went out tracked but without its Task
Badger task, which its worker creates when it starts (``external_id`` = the Celery id). Only the publishing process
knew that: the page served by the other process said "Progress is not available." for good, while the worker tracked
the task and its progress was in Task Badger.
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import requests

from .conftest import start_worker, stop_worker
from .test_progress_processes import free_port, wait_listening
from .test_testproject import project_env
from .workers import INTERNAL_ERROR, ROOT

pytestmark = pytest.mark.integration

SETTINGS = "tests.celery_django_project.settings"
APP = "tests.celery_django_project.app"
INTERVAL = 0.5


class Web:
    """Two web processes of one project (a load balancer may send the redirected GET to either)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.ports = [free_port(), free_port()]
        self.logs = [tempfile.NamedTemporaryFile(prefix="tbweb-", suffix=".log", delete=False) for _ in self.ports]
        command = [sys.executable, "manage.py", "runserver", "--noreload"]
        self.processes = [subprocess.Popen([*command, f"127.0.0.1:{port}"], cwd=ROOT, env=env, stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                          for port, log in zip(self.ports, self.logs, strict=True)]

    def url(self, index: int, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[index]}{path}"

    def log(self) -> str:
        return "\n".join(open(log.name, errors="replace").read() for log in self.logs)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in self.logs:
            log.close()


@pytest.fixture
def project(taskbadger_server) -> Iterator[tuple[dict[str, str], Web]]:
    # django-db, as the recipe's ATOMIC_REQUESTS project runs it: the marker is written at the commit, after the
    # redirect's response is built. Another backend's write is the same ``store_result`` as a created task's id
    # (test_progress.py follows it in one process on the cache backend); its own web processes cost 25 s more here.
    env = project_env(DJANGO_SETTINGS_MODULE=SETTINGS,
                      DATABASE_URL=f"sqlite:///{tempfile.mkdtemp(prefix='tbredirect-')}/db.sqlite3",
                      TASKBADGER_HOST=taskbadger_server.url, TASKBADGER_API_KEY=taskbadger_server.api_key,
                      PROGRESS_POLL_INTERVAL=str(INTERVAL),
                      TB_RESULT_BACKEND="")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True, timeout=90,
                   stdin=subprocess.DEVNULL)
    web = Web(env)
    try:
        for port, process in zip(web.ports, web.processes, strict=True):
            wait_listening(port, process)
        yield env, web
    finally:
        web.stop()
    assert INTERNAL_ERROR not in web.log(), web.log()[-4000:]


def poll_until(session: requests.Session, url: str, wanted: Callable[[dict], bool], timeout: float = 30) -> dict:
    """Poll the bar's URL as its script does, until its answer is ``wanted`` (with a deadline)."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        answer = session.get(url, timeout=10)
        assert answer.status_code == 200, (answer.status_code, answer.text)
        body = answer.json()
        seen.append((body["status"], body["percent"]))
        if wanted(body):
            return body
        time.sleep(INTERVAL / 2)  # the bar's script polls once an interval
    raise AssertionError(f"not seen within {timeout} s; the bar saw {seen[-5:]}")


@pytest.mark.timeout(180)
def test_the_page_a_post_redirected_to_follows_a_task_its_worker_creates(project, taskbadger_server, tmp_path):
    env, web = project
    server = taskbadger_server
    gate = tmp_path / "gate"
    queue = f"q-redirect-{uuid.uuid4().hex[:8]}"  # its worker starts later: the task waits in its queue
    server.fail(500, times=1, method="POST")  # Task Badger fails the create at publish

    with requests.Session() as browser:
        started = browser.post(web.url(0, "/export/"), data={"gate": str(gate), "queue": queue}, allow_redirects=False,
                               timeout=30)
        assert started.status_code == 302, started.text[-2000:]
        assert server.tasks == {}  # not created at publish
        page = browser.get(web.url(1, started.headers["Location"]), timeout=30)  # the other web process
        assert page.status_code == 200
        urls = [html.unescape(url) for url in re.findall(r'data-url="([^"]+)"', page.text)]
        assert urls, "the page's bar says: " + " ".join(re.findall(r'role="status"[^>]*>([^<]*)<', page.text))
        bar = web.url(1, urls[0])

        assert poll_until(browser, bar, lambda b: True)["status"] == "pending"  # Queued: no worker has it yet
        worker = start_worker(server, pool="prefork", concurrency=1, app=APP, queue=queue,
                              extra_env={k: v for k, v in env.items() if k.startswith(("DJANGO_", "DATABASE_",
                                                                                          "TESTPROJECT_", "TB_"))})
        try:
            body = poll_until(browser, bar, lambda b: b["percent"] is not None)  # (processing without progress first)
            assert (body["status"], body["percent"], body["name"]) == ("processing", 25, "djangodb.export_rows")
            gate.touch()
            body = poll_until(browser, bar, lambda b: b["done"])
            assert (body["status"], body["percent"]) == ("success", 100)
        finally:
            gate.touch()  # its task ends in any case: the worker's warm shutdown waits for it
            stop_worker(worker)
    celery_id = started.headers["Location"].rstrip("/").rsplit("/", 1)[1]
    [task] = server.tasks.values()  # the one its worker created
    assert (task["external_id"], task["status"]) == (celery_id, "success")
