"""Two web processes sharing a Redis cache: however many viewers poll either of them, Task Badger is read at most
once per task and poll interval (the progress cache's add() lock and entries live in the shared cache)."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.backends.signed_cookies import SessionStore
from django.test import RequestFactory, override_settings

import taskbadger
import taskbadger_django

from .test_readme_newcomer import redis_up
from .test_testproject import project_env
from .workers import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.redis]

INTERVAL = 0.5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the web process exited: {process.communicate()[0]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


def viewer_url_and_cookie(task_id: str) -> tuple[str, str]:
    """A new anonymous visitor: the URL its page's bar polls, and its session cookie (the test project keeps
    sessions in signed cookies, and both processes share its SECRET_KEY)."""
    request = RequestFactory().get("/")
    request.user, request.session = AnonymousUser(), SessionStore()
    with override_settings(ROOT_URLCONF="testproject.urls"):
        url = taskbadger_django.progress_url(request, task_id)
    request.session.save()
    return url, request.session.session_key


def test_two_processes_sharing_a_redis_cache_read_the_api_once_per_interval(taskbadger_server):
    if not redis_up():
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    server = taskbadger_server
    env = project_env(TASKBADGER_API_KEY=server.api_key, TASKBADGER_HOST=server.url,
                      CACHE_URL="redis://127.0.0.1:6379/9", PROGRESS_POLL_INTERVAL=str(INTERVAL))
    ports = [free_port(), free_port()]
    web = [subprocess.Popen([sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL) for port in ports]
    try:
        for port, process in zip(ports, web, strict=True):
            wait_listening(port, process)
        task = taskbadger.create_task("export rows", status="processing", value=0)
        viewers = [viewer_url_and_cookie(task.id) for _ in range(10)]
        answers: list[int] = []
        stop = threading.Event()

        def watch(index: int, url: str, cookie: str) -> None:
            with requests.Session() as session:
                session.cookies.set("sessionid", cookie)
                turn = index
                while not stop.wait(0.2):  # faster than the bars poll: the cache must hold anyway
                    turn += 1
                    answer = session.get(f"http://127.0.0.1:{ports[turn % 2]}{url}", timeout=10)
                    answers.append(answer.status_code)

        threads = [threading.Thread(target=watch, args=(i, *viewer)) for i, viewer in enumerate(viewers)]
        since = len(server.requests)
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for value in range(1, 25):  # the task reports progress while they watch (six seconds)
            stop.wait(0.25)
            task.update(value=value)
        stop.set()
        for thread in threads:
            thread.join(15)
        elapsed = time.monotonic() - started
    finally:
        for process in web:
            process.terminate()
        for process in web:
            try:
                process.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
    reads = [r for r in server.requests[since:] if r.method == "GET" and r.task_id == task.id]
    assert set(answers) == {200} and len(answers) >= 100, (len(answers), set(answers))
    assert len(reads) <= math.ceil(elapsed / INTERVAL) + 1, (len(reads), elapsed)
    stamps = sorted(r.timestamp for r in reads)
    # reads one interval apart, never together (the slack: a read is timed when it starts, logged when it arrives)
    assert all(b - a >= INTERVAL * 0.5 for a, b in zip(stamps, stamps[1:], strict=False)), stamps
