"""The official SDK's README, Procrastinate section, runs as written against this package: its two code
blocks (kept verbatim in ``tests/official_procrastinate_readme.md``) become ``myapp/tasks.py``, with only
what the README leaves to the reader filled in (the connector, the key, a ``process`` coroutine); a real
``procrastinate worker`` runs the jobs another process defers. So does our own page's first example
(docs/procrastinate.md, "Without Django"), as it is written, with only the environment it names set."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from .procrastinate_workers import READY
from .services import postgres_database, postgres_url
from .workers import ROOT

pytestmark = pytest.mark.integration

README = ROOT / "tests" / "official_procrastinate_readme.md"


def official_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 2, "the official section has two Python blocks"
    first, second = blocks
    # the reader's part: a real connector, a project key, and the `process` the example awaits
    assert first.count("connector=...") == 1 and second.count('token="***"') == 1
    first = first.replace("connector=...", 'connector=procrastinate.PsycopgConnector(conninfo=os.environ["DSN"])')
    second = second.replace('token="***"', 'token=os.environ["KEY"], host=os.environ["HOST"]')
    prelude = "import os\n\n\nasync def process(row):\n    return row\n\n\n"
    return prelude + first + "\n" + second


def run_jobs(taskbadger_server, tmp_path, module: str, code: str, env: dict[str, str], names: set[str]) -> dict:
    """``code`` as the module ``module`` (dotted) under ``tmp_path``: its schema applied, ``add`` and ``report``
    deferred by one process, run by a real ``procrastinate worker``; the tasks named ``names``, once they all
    succeeded (by name)."""
    *packages, leaf = module.split(".")
    folder = tmp_path
    for package in packages:
        folder = folder / package
        folder.mkdir(exist_ok=True)
        (folder / "__init__.py").write_text("")
    (folder / f"{leaf}.py").write_text(code)
    env = {**os.environ, **env, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    run = [sys.executable, "-m", "procrastinate", "--app", f"{module}.app"]
    subprocess.run([*run, "schema", "--apply"], cwd=tmp_path, env=env, check=True, capture_output=True)
    defer = textwrap.dedent(f"""
        from {module} import add, app, report
        with app.open():
            add.defer(a=1, b=2)
            report.defer(rows=list(range(25)))
    """)
    subprocess.run([sys.executable, "-c", defer], cwd=tmp_path, env=env, check=True, timeout=60)
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [*run, "worker", "--concurrency", "2"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:

            def done():
                found = {t["name"]: t for t in taskbadger_server.tasks.values() if t["status"] == "success"}
                return found if names <= set(found) else None

            try:
                tasks = taskbadger_server.wait_for(done, timeout=30)
            except AssertionError:
                raise AssertionError(f"tasks {sorted(names)} did not all succeed: {taskbadger_server.tasks}; the "
                                     f"worker's log:\n{log.read_text(errors='replace')}") from None
        finally:
            worker.terminate()
            worker.wait(30)
    text = log.read_text(errors="replace")
    assert READY in text and "Traceback" not in text, text
    return tasks


def test_the_official_readme_code_runs_as_written(taskbadger_server, tmp_path):
    with postgres_database("tb_pro_readme") as name:
        env = {"DSN": postgres_url(name), "KEY": taskbadger_server.api_key, "HOST": taskbadger_server.url}
        tasks = run_jobs(taskbadger_server, tmp_path, "myapp.tasks", official_code(), env,
                         {"myapp.tasks.add", "report"})
    report = tasks["report"]
    assert (report["value_max"], report["tags"]) == (100, {"env": "prod"})
    assert report["value"] == 100  # it reported progress (20 of 25 rows), then ended complete
    assert report["data"]["procrastinate_task_kwargs"] == {"rows": list(range(25))}  # record_task_args=True
    assert tasks["myapp.tasks.add"]["queue"] == "default"
    assert tasks["myapp.tasks.add"]["data"]["procrastinate_task_kwargs"] == {"a": 1, "b": 2}


def test_our_pages_first_example_runs_as_written(taskbadger_server, tmp_path):
    """docs/procrastinate.md's ``@track`` example, as ``myjobs.py``, with the environment the page names: libpq's
    ``PG*`` variables for the connector, ``TASKBADGER_API_KEY`` and ``TASKBADGER_HOST`` for ``taskbadger.init()``.
    It used to call no ``init()``: nothing was tracked, and ``report``'s ``tb.update`` raised on ``None``."""
    page = (ROOT / "docs" / "procrastinate.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", page, re.S) if "@track" in block)
    assert code.startswith("# myjobs.py\n"), "the page names the module the worker command imports"
    with postgres_database("tb_pro_page") as name:
        env = {"PGHOST": "127.0.0.1", "PGPORT": "5432", "PGUSER": "postgres", "PGDATABASE": name,
               "TASKBADGER_API_KEY": taskbadger_server.api_key, "TASKBADGER_HOST": taskbadger_server.url}
        tasks = run_jobs(taskbadger_server, tmp_path, "myjobs", code, env, {"myjobs.add", "report"})
    report = tasks["report"]
    assert (report["value_max"], report["tags"], report["value"]) == (100, {"env": "prod"}, 100)
    assert tasks["myjobs.add"]["queue"] == "default"
    # without a key (development) the module still imports: its processes run the jobs untracked
    keyless = {k: v for k, v in os.environ.items() if not k.startswith("TASKBADGER_")}
    subprocess.run([sys.executable, "-c", "import myjobs"], cwd=tmp_path, check=True, timeout=60,
                   env={**keyless, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
