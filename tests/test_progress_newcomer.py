"""A newcomer follows docs/progress.md from `django-admin startproject`: the code blocks are taken from the doc
itself (which holds the three snippets of issue 24 as written), the project runs under `runserver` with a real
Celery worker, and Chromium shows the bar filling, then done."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import pytest

from .test_progress_browser import bar, drawn_at, driver, events, wait  # noqa: F401 (driver is a fixture)
from .test_progress_processes import free_port, wait_listening
from .workers import ROOT

pytestmark = pytest.mark.integration

#: The snippets of the issue, as users write them: the doc must hold them word for word.
SNIPPETS = [
    'urlpatterns += [path("taskbadger/", include("taskbadger_django.urls"))]',
    '''def start_export(request):
    result = export_rows.delay(request.user.pk)           # Celery; django.tasks and create_task work too
    return render(request, "export.html", {"tb_id": result.taskbadger_task_id})''',
    '''{% load taskbadger %}
<h1>Preparing your export</h1>
{% taskbadger_progress tb_id %}''',
]


def doc_files() -> dict[str, tuple[str, str]]:
    """{path: (mode, code)} for each code block the quick start labels with a file path."""
    text = (ROOT / "docs" / "progress.md").read_text()
    section = text[text.index("\n## Quick start"):text.index("\n## What the bar shows")]
    found = {}
    pattern = r"^(At the end of )?`([\w/.]+\.(?:py|html))`:\n\n```(?:python|django)\n(.*?)```"
    for match in re.finditer(pattern, section, re.S | re.M):
        found[match.group(2)] = ("append" if match.group(1) else "write", match.group(3))
    return found


def test_the_docs_hold_the_snippets_word_for_word():
    text = (ROOT / "docs" / "progress.md").read_text()
    for snippet in SNIPPETS:
        assert snippet in text


@pytest.mark.timeout(300)  # seven Django commands, a web server and a worker: slow on a loaded machine
def test_a_fresh_project_shows_a_live_progress_bar(taskbadger_server_session, driver, tmp_path):  # noqa: F811
    server = taskbadger_server_session
    server.reset()
    files = doc_files()
    assert set(files) == {"mysite/celery.py", "mysite/__init__.py", "mysite/settings.py", "exports/tasks.py",
                          "mysite/urls.py", "exports/views.py", "exports/templates/export.html"}
    broker = tempfile.mkdtemp(prefix="tbfresh-broker-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKBADGER_", "CELERY_", "DJANGO_"))}
    env.update(TASKBADGER_API_KEY=server.api_key, TASKBADGER_HOST=server.url,
               CELERY_BROKER_URL="filesystem://localhost/", DJANGO_SUPERUSER_PASSWORD="a-long-password-1")
    project = tmp_path / "mysite"

    def run(*args, cwd=project):
        return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=120, check=True, stdin=subprocess.DEVNULL)

    run("-m", "django", "startproject", "mysite", cwd=tmp_path)
    run("manage.py", "startapp", "exports")
    (project / "exports" / "templates").mkdir()
    for path, (mode, code) in files.items():
        with open(project / path, "a" if mode == "append" else "w") as fh:
            fh.write("\n" + code)
    with open(project / "mysite" / "settings.py", "a") as fh:  # not the doc's: the embedded broker, no Redis needed
        fh.write(f"""
CELERY_BROKER_TRANSPORT = "taskbadger.testing.broker:FilesystemTransport"
CELERY_BROKER_TRANSPORT_OPTIONS = {{"data_folder_in": {broker!r}, "data_folder_out": {broker!r},
                                   "control_folder": {broker!r}, "polling_interval": 0.05}}
""")
    check = run("manage.py", "check")
    assert "taskbadger." not in check.stdout + check.stderr
    run("manage.py", "migrate", "-v", "0")
    run("manage.py", "createsuperuser", "--noinput", "--username", "ada", "--email", "ada@example.com")

    port = free_port()
    processes = [
        subprocess.Popen([sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"], cwd=project,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         stdin=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "celery", "-A", "mysite", "worker", "-P", "solo", "-l", "info"],
                         cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         stdin=subprocess.DEVNULL),
    ]
    try:
        wait_listening(port, processes[0])
        from selenium.webdriver.common.by import By

        driver.get(f"http://127.0.0.1:{port}/admin/login/?next=/export/")
        driver.find_element(By.NAME, "username").send_keys("ada")
        driver.find_element(By.NAME, "password").send_keys("a-long-password-1")
        driver.find_element(By.CSS_SELECTOR, "[type=submit]").click()
        wait(driver, lambda d: d.current_url.endswith("/export/") and bar(d) is not None)
        assert driver.find_element(By.TAG_NAME, "h1").text == "Preparing your export"
        assert len(server.tasks_named("exports.tasks.export_rows")) == 1  # the view started it, tracked

        def part_way(d):  # the fill drawn at the percentage the page says, neither 0 nor 100
            shown = bar(d)
            percent = int(shown["percent"][:-1]) if shown["percent"] else None
            return shown["state"] == "running" and percent is not None and 0 < percent < 100 and drawn_at(d, percent)

        wait(driver, part_way, timeout=60)
        wait(driver, lambda d: bar(d)["state"] == "done", timeout=60)
        wait(driver, lambda d: drawn_at(d, 100))
        assert bar(driver)["status"] == "Done" and bar(driver)["name"] == "exports.tasks.export_rows"
        assert [e["detail"]["status"] for e in events(driver, "taskbadger:done")] == ["success"]
        assert server.api_key not in driver.page_source
    finally:
        for process in processes:
            process.terminate()
        logs = []
        for process in processes:
            try:
                logs.append(process.communicate(timeout=30)[0])
            except subprocess.TimeoutExpired:
                process.kill()
                logs.append(process.communicate()[0])
    assert "Traceback" not in logs[0], logs[0]
