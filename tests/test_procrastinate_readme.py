"""The official SDK's README, Procrastinate section, runs as written against this package: its two code
blocks (kept verbatim in ``tests/official_procrastinate_readme.md``) become ``myapp/tasks.py``, with only
what the README leaves to the reader filled in (the connector, the key, a ``process`` coroutine); a real
``procrastinate worker`` runs the jobs another process defers."""

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


def test_the_official_readme_code_runs_as_written(taskbadger_server, tmp_path):
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "tasks.py").write_text(official_code())
    with postgres_database("tb_pro_readme") as name:
        env = {
            **os.environ,
            "DSN": postgres_url(name),
            "KEY": taskbadger_server.api_key,
            "HOST": taskbadger_server.url,
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
        }
        run = [sys.executable, "-m", "procrastinate", "--app", "myapp.tasks.app"]
        subprocess.run([*run, "schema", "--apply"], cwd=tmp_path, env=env, check=True, capture_output=True)
        defer = textwrap.dedent("""
            from myapp.tasks import add, app, report
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
                    return found if {"myapp.tasks.add", "report"} <= set(found) else None

                tasks = taskbadger_server.wait_for(done, timeout=30)
            finally:
                worker.terminate()
                worker.wait(30)
        text = log.read_text(errors="replace")
        assert READY in text and "Traceback" not in text, text
    report = tasks["report"]
    assert (report["value_max"], report["tags"]) == (100, {"env": "prod"})
    assert report["value"] == 100  # it reported progress (20 of 25 rows), then ended complete
    assert report["data"]["procrastinate_task_kwargs"] == {"rows": list(range(25))}  # record_task_args=True
    assert tasks["myapp.tasks.add"]["queue"] == "default"
    assert tasks["myapp.tasks.add"]["data"]["procrastinate_task_kwargs"] == {"a": 1, "b": 2}
