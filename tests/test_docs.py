"""The README and the documentation site (docs/) say what the code does: their Python is compiled and its
names resolved, marked blocks run against the stand-in API, and specific claims are checked against
behaviour. (The Django quick start, with docs/testing.md's test file, is run for real in
test_readme_newcomer.py; `mkdocs build --strict` in .ci/run checks links and anchors.)

Marks, in the Markdown, an HTML comment on the line before a code block:

* ``<!-- docs-check: run -->``: the block runs as it is, with the SDK pointed at a stand-in API;
* ``<!-- docs-check: canvas -->``: the block's comments state what a canvas publish creates.
"""

from __future__ import annotations

import ast
import base64
import importlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from django.test import override_settings

import taskbadger
from taskbadger.celery import Task
from taskbadger.cli import render
from taskbadger_django import checks as tb_checks
from taskbadger_django import conf, schema

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^(?:<!-- docs-check: (?P<mark>[\w-]+) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)^```", re.S | re.M)
LOGGERS = {"taskbadger.django"}  # logger names the prose mentions, not modules
OUR_MODULE = re.compile(r"^(taskbadger|taskbadger_django)(\.\w+)*$")
DOTTED = re.compile(r"^(?!taskbadger\.[EWI]\d{3}$)(?:taskbadger|taskbadger_django)(?:\.\w+)+(?::\w+)?$")


def blocks(lang: str = "python", mark: str | None = None) -> Iterator[tuple[str, str]]:
    """(where, code) for each code block of the pages, in order."""
    for page in PAGES:
        text = page.read_text()
        for match in BLOCK.finditer(text):
            if match["lang"] == lang and (mark is None or match["mark"] == mark):
                line = text[:match.start()].count("\n") + 1
                yield f"{page.relative_to(ROOT)}:{line}", match["code"]


def prose(page: Path) -> str:
    """The page without its code blocks."""
    return BLOCK.sub("", page.read_text())


def resolve(dotted: str) -> object:
    """Import ``pkg.module.attr`` or ``pkg.module:attr`` and return the object (AttributeError/ImportError if
    anything is missing)."""
    module_path, _, attr = dotted.partition(":")
    parts = module_path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:] + ([attr] if attr else []):
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def key(org: str = "acme", project: str = "demo", secret: str = "s3cret") -> str:
    return base64.b64encode(f"{org}/{project}/{secret}".encode()).decode()


# -- the shape of the README -------------------------------------------------------------------------


def test_the_readme_is_short_and_links_to_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    assert readme.count("\n") < 250
    links = re.findall(r"\]\((?!https?://)([^)#\s]+)(?:#([\w-]+))?\)", readme)
    assert {"docs/django.md", "docs/testing.md", "docs/celery.md", "docs/cli.md"} <= {path for path, _ in links}
    for path, anchor in links:
        target = ROOT / path
        assert target.exists(), path
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).strip().replace(" ", "-") for h in headings}
            assert anchor in slugs, (path, anchor)


# -- code: compiled, names resolved, marked blocks run -------------------------------------------------


def test_every_python_block_compiles_and_what_it_imports_from_us_exists():
    checked = 0
    for where, code in blocks():
        tree = compile(code, where, "exec", ast.PyCF_ONLY_AST)
        imported: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and OUR_MODULE.match(node.module):
                for alias in node.names:
                    resolve(f"{node.module}:{alias.name}")
                    checked += 1
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if OUR_MODULE.match(alias.name):
                        imported[alias.asname or alias.name.split(".")[0]] = alias.name.split(".")[0]
        # taskbadger.create_task, taskbadger.systems.CelerySystemIntegration…: every attribute of a module of
        # ours the block uses exists
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                chain, inner = [node.attr], node.value
                while isinstance(inner, ast.Attribute):
                    chain.insert(0, inner.attr)
                    inner = inner.value
                if isinstance(inner, ast.Name) and inner.id in imported:
                    resolve(".".join([imported[inner.id], *chain]))
                    checked += 1
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and DOTTED.match(node.value):
                resolve(node.value)  # "taskbadger_django.middleware.TaskBadgerScopeMiddleware" in settings
                checked += 1
    assert checked > 15  # the blocks were read


def test_inline_code_names_modules_and_files_that_exist():
    """`taskbadger_django.conf.configure`, `taskbadger/http/request.py`…: what the prose points at is there."""
    names = paths = 0
    for page in PAGES:
        for span in re.findall(r"`([^`\n]+)`", prose(page)):
            if DOTTED.match(span) and span not in LOGGERS:
                resolve(span)
                names += 1
            elif re.fullmatch(r"\w[\w.-]*(/[\w.-]+)*/([\w.-]+\.[a-z]+)?", span) \
                    and not span.startswith(("mysite/", "billing/", "exports/")):  # the user's project, not ours
                assert (ROOT / span).exists() or (ROOT / "taskbadger" / span).exists(), f"{page.name}: `{span}`"
                paths += 1
    assert names >= 2 and paths >= 10


def test_marked_blocks_run_against_the_stand_in(taskbadger_server):
    ran = 0
    for where, code in blocks(mark="run"):
        exec(compile(code, where, "exec"), {"__name__": "docs_example"})
        ran += 1
    assert ran >= 1
    names = {t["name"] for t in taskbadger_server.tasks.values()}
    assert {"nightly export", "import", "docs_example.rebuild_index"} <= names


# -- claims checked against behaviour ------------------------------------------------------------------


def test_what_the_docs_say_about_canvas_tasks_is_what_a_publish_creates(taskbadger_server, memory_app):
    """Issue 21, item 9: the README said `"pkg.fn (map 5)"` with the official SDK's data keys in one place and
    the inner task's name with `{"canvas": "map", "items": n}` in another."""

    @memory_app.task(shared=False, name="pkg.fn", base=Task)
    def fn(x):
        return x

    [(where, code)] = blocks(mark="canvas")
    claimed_name = re.search(r'name "([^"]+)"', code)[1]
    claimed_data = ast.literal_eval(re.search(r"data (\{.*\})", code)[1])
    exec(compile(code.split("\n", 1)[0], where, "exec"), {"fn": fn})  # the publish line, as written
    [created] = taskbadger_server.tasks.values()
    assert (created["name"], created["data"]) == (claimed_name, claimed_data)
    # wherever else the README or the docs write canvas data down, it is this
    for page in PAGES:
        for literal in re.findall(r"\{[^{}\n]*\"canvas[^{}\n]*\}", page.read_text()):
            assert ast.literal_eval(literal) == claimed_data, f"{page.name}: {literal}"


def test_the_refusal_line_in_the_docs_is_the_one_logged(caplog):
    """docs/django.md quotes the line that bad settings log; it is the real one."""
    [quoted] = [line for page in PAGES for line in page.read_text().splitlines()
                if line.startswith("Task Badger: tasks run untracked:")]
    conf.reset_state()
    try:
        with override_settings(TASKBADGER={"API_KEY": key(), "TAG": {"environment": "production"},
                                           "MONITORS": {"billing.tasks.nightly_invoices": "nightly"}}):
            assert conf.configure() is None
    finally:
        conf.reset_state()
    [logged] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == "taskbadger.django"]
    assert quoted == logged


def _table_keys(text: str, header: str) -> set[str]:
    """The first-column keys of the Markdown table right after ``header``."""
    rows = text[text.index(header):].split("\n\n", 2)[1].splitlines()[2:]
    return {key for row in rows for key in re.findall(r"`(\w+)`", row.split("|")[1])}


def test_the_settings_and_checks_tables_list_what_the_code_has():
    readme = (ROOT / "README.md").read_text()
    assert _table_keys(readme, "One dict, every key optional:") == set(schema.TOP)
    assert _table_keys(readme, "`CELERY`:") == set(schema.CELERY)
    django_page = (ROOT / "docs" / "django.md").read_text()
    documented = set(re.findall(r"^\| `(taskbadger\.[EWI]\d{3})` \|", django_page, re.M))
    # every id a check module emits, and the table of the package's docstring
    in_code = {found for module in Path(tb_checks.__file__).parent.glob("*.py")
               for found in re.findall(r"taskbadger\.[EWI]\d{3}", module.read_text())}
    assert in_code == set(re.findall(r"taskbadger\.[EWI]\d{3}", tb_checks.__doc__ or ""))
    assert documented == in_code


def test_the_cli_page_shows_the_hint_and_the_outcome_as_printed():
    cli_page = (ROOT / "docs" / "cli.md").read_text()
    assert render.next_page_hint("cD0y").strip() in cli_page.splitlines()
    shown = render.outcome_lines({"return_code": 3, "stdout": "".join(f"row {i}\n" for i in range(1, 15)),
                                  "stderr": "/srv/data: No space left on device\n"})
    page_lines = cli_page.splitlines()
    for line in shown:
        assert line in page_lines or line.startswith("  row "), line
    assert "All data: -f json" in page_lines and taskbadger.__name__ == "taskbadger"
