"""The README's `django.tasks` section, followed literally from the quick start project: its settings
block, its task (`@task` over the `def` it gives, imported as it says), `manage.py migrate`, its
`enqueue(...)` in `manage.py shell` and a real `manage.py db_worker` on the project's SQLite database."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys

from .test_readme_newcomer import readme_files
from .workers import ROOT

DJANGO_6 = importlib.util.find_spec("django.tasks") is not None


def section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Django's own tasks")
    return text[start:text.index("\n## ", start + 3)]


def test_readme_django_tasks_section_gives_a_tracked_task(taskbadger_server_session, tmp_path):
    server = taskbadger_server_session
    server.reset()
    text = section()
    settings_block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    spans = re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S).replace("\n", " "))
    function = next(s for s in spans if s.startswith("def "))
    import_line = next(s for s in spans if s.startswith("from django_tasks import task"))
    enqueue = next(s for s in spans if ".enqueue(" in s)
    module = next(s for s in spans if s.startswith("billing/") and s.endswith(".py"))
    if DJANGO_6:  # as the section says: django.tasks, and no backport app
        import_line = import_line.replace("django_tasks", "django.tasks")
        settings_block = settings_block.replace('"django_tasks", ', "")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKBADGER_", "CELERY_", "DJANGO_"))}
    env.update(TASKBADGER_API_KEY=server.api_key, TASKBADGER_HOST=server.url)
    project = tmp_path / "mysite"

    def run(*args, cwd=project):
        return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
                              check=True, stdin=subprocess.DEVNULL)

    run("-m", "django", "startproject", "mysite", cwd=tmp_path)
    run("manage.py", "startapp", "billing")
    for path, (mode, code) in readme_files().items():  # the quick start project
        if path.startswith(("mysite/", "billing/tasks")):
            with open(project / path, "a" if mode == "append" else "w") as fh:
                fh.write("\n" + code)
    with open(project / "mysite" / "settings.py", "a") as fh:
        fh.write("\n" + settings_block)
    (project / module).write_text(f"{import_line}\n\n\n@task\n{function}\n")

    run("manage.py", "migrate", "-v", "0")
    check = run("manage.py", "check")
    assert "taskbadger." not in check.stdout + check.stderr
    name = module.removesuffix(".py").replace("/", ".") + "." + function.split("(")[0].removeprefix("def ")
    run("manage.py", "shell", "-c", f"from {name.rsplit('.', 1)[0]} import {name.rsplit('.', 1)[1]}; {enqueue}")
    [created] = server.tasks.values()
    assert (created["name"], created["status"]) == (name, "pending")

    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen([sys.executable, "manage.py", "db_worker"], cwd=project, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        task = server.wait_for_task(name=name, status="success", timeout=45)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    assert task["id"] == created["id"] and task["start_time"] and task["end_time"]
    assert len(server.tasks) == 1, (tmp_path / "worker.log").read_text()
