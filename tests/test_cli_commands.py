"""The CLI's command layer called in-process, as ``manage.py taskbadger`` calls it, and its parts."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

import taskbadger
from taskbadger.cli import commands, process, render, run, settings
from taskbadger.exceptions import ServerError, Unauthorized

from .test_cli import CLI, make_env


def call(func, *args, **kwargs):
    out, err = io.StringIO(), io.StringIO()
    code = func(*args, out=out, err=err, **kwargs)
    return code, out.getvalue(), err.getvalue()


def finished_tasks(names):
    for name in names:
        taskbadger.create_task(name, status="processing").success(value=100)


def test_list_walks_the_pages_up_to_the_limit(taskbadger_server, monkeypatch):
    monkeypatch.setattr(commands, "PAGE_SIZE", 2)
    finished_tasks(f"t{i}" for i in range(5))
    code, out, err = call(commands.list_tasks, "csv", 3, None, is_terminal=False)
    assert code == 0
    assert [line.split(",")[2] for line in out.splitlines()[1:]] == ["t4", "t3", "t2"]
    pages = [r.query.get("page_size") for r in taskbadger_server.requests if r.method == "GET"]
    assert pages == ["2", "1"]
    assert err.startswith("Next page: --start-token ")
    token = err.split("--start-token ", 1)[1].strip()
    code, out, err = call(commands.list_tasks, "csv", 100, token, is_terminal=False)
    assert [line.split(",")[2] for line in out.splitlines()[1:]] == ["t1", "t0"] and err == ""


@pytest.mark.parametrize("token", ["not-a-token", "a\rb"])
def test_a_start_token_the_api_cannot_read_is_a_usage_error_about_the_token(taskbadger_server, token):
    # it said "not found ... (HTTP 404): check the task id, the organization and the project": no task id was given
    finished_tasks(["t0"])
    code, out, err = call(commands.list_tasks, "csv", 10, token, is_terminal=False)
    assert (code, out) == (commands.USAGE, "")
    assert f"--start-token {token!r} is not a page of the task list of acme/demo" in err
    assert "copy the token an earlier list printed as 'Next page'" in err and "task id" not in err


@pytest.mark.parametrize("limit", [0, 10**21])
def test_a_list_limit_out_of_range_is_a_usage_error_that_says_the_range(taskbadger_server, limit):
    # 10**21 failed inside itertools.islice with its own words ("Stop argument for islice() must be ...")
    code, out, err = call(commands.list_tasks, "csv", limit, None, is_terminal=False)
    assert (code, out) == (commands.USAGE, "") and "--limit must be from 1 to 100000" in err
    assert [r for r in taskbadger_server.requests if r.method == "GET"] == []


def test_the_command_refuses_a_list_limit_out_of_range_before_running(tmp_path):
    proc = subprocess.run([*CLI, "list", "--limit", str(10**21)], capture_output=True, text=True, timeout=60,
                          env=make_env(tmp_path), stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "--limit" in proc.stderr and "100000" in proc.stderr and "islice" not in proc.stderr


def test_both_entry_points_print_the_same(taskbadger_server, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    finished_tasks(["alpha", "[bold]not markup[/bold]"])
    env = make_env(tmp_path, TASKBADGER_HOST=taskbadger_server.url, TASKBADGER_API_KEY=taskbadger_server.api_key,
                   TZ=os.environ.get("TZ", ""))
    if not env["TZ"]:
        del env["TZ"]
    outputs = {}
    for fmt in ("pretty", "json", "csv"):
        code, out, _ = call(commands.list_tasks, fmt, 100, None, is_terminal=False)
        printed = subprocess.run([*CLI, "list", "-f", fmt], env=env, capture_output=True, text=True, timeout=30)
        assert (code, out) == (printed.returncode, printed.stdout), fmt
        outputs[fmt] = out
    assert "[bold]not markup[/bold]" in outputs["pretty"]  # names are text, never rich markup


def test_the_pretty_list_without_rich(taskbadger_server, monkeypatch):
    monkeypatch.setitem(sys.modules, "rich.console", None)
    finished_tasks(["plain one"])
    code, out, _ = call(commands.list_tasks, None, 10, None, is_terminal=True)
    title, header, row = out.splitlines()
    assert title == "Project: demo, Organization: acme"
    assert header.split() == ["Task", "ID", "Name", "Status", "Progress", "Duration", "Created"]
    assert row.index("plain one") == header.index("Name") and "success" in row and "100%" in row


def test_get_create_update_in_process(taskbadger_server):
    code, out, err = call(commands.create_task, "made here", tags=["a=bc"], quiet=True)
    assert code == 0, err
    task_id = out.strip()
    assert call(commands.update_task, task_id, status="success", quiet=True)[:2] == (0, "")
    code, out, _ = call(commands.get_task, task_id, "pretty")
    assert "Status: success" in out and "Tags: a=bc" in out
    assert call(commands.update_task, task_id, status="nope")[0] == 2
    assert call(commands.create_task, "x", metadata_json="[1]")[0] == 2


def test_commands_say_when_the_sdk_is_not_configured():
    code, out, err = call(commands.list_tasks, "csv", 10, None, is_terminal=False)
    assert (code, out) == (1, "") and "not configured" in err


def test_describe_error_never_shows_the_key(taskbadger_server):
    config = taskbadger.get_config()
    text = commands.describe_error(Unauthorized(401, b'{"detail": "bad"}', "bad"), config)
    assert "401" in text and config.token not in text


@pytest.mark.parametrize(("action", "expected"), [
    (("success", "email", "to:me@x.com"), {"trigger": "success", "integration": "email", "config": {"to": "me@x.com"}}),
    (("error", "webhook:abc", ""), {"trigger": "error", "integration": "webhook:abc", "config": {}}),
])
def test_parse_action(action, expected):
    assert commands.parse_action(action).to_dict() == expected


@pytest.mark.parametrize("action", [("e", "webhook:abc", "to:x"), ("e", "sms", ""), ("e", "email", "to")])
def test_parse_action_rejects(action):
    with pytest.raises(commands.UsageError):
        commands.parse_action(action)


# -- settings -------------------------------------------------------------------------------------------

def test_settings_precedence(tmp_path):
    path = tmp_path / "config"
    path.write_text('[defaults]\norg = "fileorg"\nproject = "fileproj"\n'
                    '[auth]\ntoken = "legacy-token"\nhost = "https://file.example.com"\n[tags]\nenv = 42\n')
    resolved = settings.resolve(environ={}, path=path)
    assert (resolved.org, resolved.host) == (settings.Value("fileorg", "config file"),
                                             settings.Value("https://file.example.com", "config file"))
    assert resolved.tags == {"env": "42"} and resolved.describe_key() == "set (legacy key lega…)"
    env = {"TASKBADGER_ORG": "envorg", "TASKBADGER_HOST": "https://env.example.com", "TASKBADGER_API_KEY": "k2"}
    resolved = settings.resolve(environ=env, path=path)
    assert resolved.org.source == "environment" and resolved.host.value == "https://env.example.com"
    assert resolved.token == settings.Value("k2", "environment")
    assert settings.resolve("optorg", environ=env, path=path).org == settings.Value("optorg", "option")
    project_key = base64.b64encode(b"acme/demo/secret").decode()
    resolved = settings.resolve("optorg", environ={**env, "TASKBADGER_API_KEY": project_key}, path=path)
    assert resolved.org == settings.Value("acme", "project key, environment")
    assert resolved.overridden == ["organization 'optorg' (option)", "project 'fileproj' (config file)"]
    assert "secret" not in resolved.describe_key() and resolved.problem() is None


def test_settings_problems(tmp_path):
    broken = tmp_path / "config"
    broken.write_text("[auth\n")
    assert "not valid TOML" in settings.resolve(environ={"TASKBADGER_API_KEY": "k"}, path=broken).problem()
    missing = settings.resolve(environ={"TASKBADGER_API_KEY": "abcd1234.secret"}, path=tmp_path / "none")
    assert "legacy key, which needs an organization and a project" in missing.problem()
    typo = settings.resolve(environ={"TASKBADGER_API_KEY": "not-a-key"}, path=tmp_path / "none")
    assert typo.problem().startswith("the API key does not look like a Task Badger API key: copy the project key")
    half = settings.resolve("acme", environ={"TASKBADGER_API_KEY": "not-a-key"}, path=tmp_path / "none")
    assert "legacy key, which needs a project" in half.problem()  # an organization given: meant as a legacy key
    with pytest.raises(settings.SettingsError, match="no API key"):
        settings.resolve(environ={}, path=tmp_path / "none").configure_sdk()


def test_config_path_honours_xdg(tmp_path):
    assert settings.config_path({"XDG_CONFIG_HOME": "/x"}) == settings.Path("/x/taskbadger/config")
    assert settings.config_path({"HOME": "/h"}) == settings.Path("/h/.config/taskbadger/config")


# -- process and rendering parts -----------------------------------------------------------------------

def test_tail_keeps_the_last_characters_and_counts_the_rest():
    tail = process.Tail(5)
    data = "héllo wörld ✓".encode()
    for i in range(len(data)):  # one byte at a time: multi-byte characters split across chunks
        tail.feed(data[i:i + 1])
    tail.feed(b"", final=True)
    assert tail.snapshot() == ("rld ✓", len("héllo wö"))


def test_shell_argv(tmp_path):
    spaced = tmp_path / "my script.sh"
    spaced.write_text("")
    assert process.shell_argv(["ls", "-la"]) == ["ls", "-la"]
    assert process.shell_argv(["./backup.sh"]) == ["./backup.sh"]
    assert process.shell_argv(["./backup.sh --full | gzip"]) == ["/bin/sh", "-c", "./backup.sh --full | gzip"]
    assert process.shell_argv([str(spaced)]) == [str(spaced)]
    assert (process.exit_code(-15), process.exit_code(3)) == (143, 3)


def test_durations_and_progress():
    assert [render.format_duration(s) for s in (None, 0.25, 42, 125, 3725, 90000)] == [
        "-", "0.2s", "42s", "2m 05s", "1h 02m", "1d 01h"]
    start = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    task = SimpleNamespace(start_time=start, created=start, end_time=start + dt.timedelta(seconds=90),
                           updated=None, status="success", value_percent=None, value=3, value_max=4)
    assert (render.duration(task), render.progress(task)) == (90.0, "3/4")
    running = SimpleNamespace(**{**vars(task), "end_time": None, "status": "processing"})
    assert render.duration(running, now=start + dt.timedelta(seconds=5)) == 5.0


# -- run, in-process -----------------------------------------------------------------------------------

def test_run_command_in_process(taskbadger_server, capfd):
    code = run.run_command("in-process", [sys.executable, "-c", "print('hi')"], configure=taskbadger.get_config,
                           capture_output=True)
    assert code == 0
    assert capfd.readouterr().out == "hi\n"
    task = taskbadger_server.wait_for_task(name="in-process", status="success")
    assert task["data"] == {"stdout": "hi\n", "return_code": 0}


def test_the_final_update_gives_up_within_its_budget(taskbadger_server):
    tracker = run.Tracker(taskbadger.get_config(), "doomed", {"status": "processing"}, None)
    assert tracker.wait_created(5) and tracker.task_id
    taskbadger_server.fail(503, method="PATCH")
    started = time.monotonic()
    outcome = tracker.outcome(1, {"return_code": 1})
    failure = tracker.deliver(outcome, time.monotonic() + 1.5, threading.Event())
    assert isinstance(failure, ServerError) and time.monotonic() - started < 1.5 + 1
    assert len([r for r in taskbadger_server.requests if r.method == "PATCH"]) >= 3
    abort = threading.Event()
    abort.set()  # a second Ctrl-C: stop retrying at once
    started = time.monotonic()
    assert isinstance(tracker.deliver(outcome, time.monotonic() + 10, abort), ServerError)
    assert time.monotonic() - started < 1


def test_outcome_lines_say_what_was_cut():
    from taskbadger.cli.render import outcome_lines

    data = {"return_code": 137, "signal": "SIGKILL", "stdout": "".join(f"l{i}\n" for i in range(30)),
            "stdout_truncated_chars": 12345, "exception": "\n".join(f"frame {i}" for i in range(25)) + "\nOSError: x"}
    lines = outcome_lines(data)
    assert lines[:4] == ["Return code: 137", "Signal: SIGKILL", "Error: OSError: x", "Traceback (last 10 of 26 lines):"]
    assert "Output (stdout, last 10 of 30 kept lines, 12,345 earlier characters not kept):" in lines
    assert lines[-1] == "  l29"
    assert outcome_lines(None) == outcome_lines({"rows": 3}) == outcome_lines(["not", "a", "dict"]) == []



#: What a task's author could use to rewrite a terminal: carriage return, erase line, a window title (OSC ...
#: BEL), clear screen, a newline that forges a field, a right-to-left override.
HOSTILE = "export.csv\r\x1b[2KName: nightly\x1b]0;pwned\x07\nStatus: success \u202eevil"
HOSTILE_SHOWN = "export.csv\\r\\x1b[2KName: nightly\\x1b]0;pwned\\x07\\nStatus: success \\u202eevil"


@pytest.mark.parametrize("is_terminal", [True, False])
def test_the_pretty_views_show_control_characters_instead_of_sending_them_to_the_terminal(
        taskbadger_server, monkeypatch, is_terminal):
    monkeypatch.setenv("COLUMNS", "250")
    task = taskbadger.create_task(HOSTILE, status="processing", tags={"env\x1b[31m": "prod\r"})
    task.error(data={"error": "ok\x1b[2J\x1b[H all fine", "stdout": "line\r\x1b[1Afaked\n"})
    code, shown_task, _ = call(commands.get_task, task.id, "pretty")
    assert code == 0
    code, listed, _ = call(commands.list_tasks, "pretty", 5, None, is_terminal=is_terminal)
    assert code == 0
    for text in (shown_task, listed):
        assert not any(char in text for char in ("\r", "\x07", "\u202e")), text
        assert HOSTILE_SHOWN in text
    # escape sequences: only rich's own colours on a terminal, none of the task's
    assert "\x1b" not in shown_task and ("\x1b" in listed) == is_terminal
    assert "\x1b[2K" not in listed and "\x1b]" not in listed
    assert shown_task.count("\nStatus: ") == 1  # the forged field stays inside the name
    assert f"Name: {HOSTILE_SHOWN}\n" in shown_task
    assert "Tags: env\\x1b[31m=prod\\r" in shown_task
    assert "Error: ok\\x1b[2J\\x1b[H all fine" in shown_task
    assert "  line\n  \\x1b[1Afaked" in shown_task  # a \\r in captured output ends a line
    # json and csv are for programs: json escapes them itself, csv keeps the data as it is
    assert f'"name": {json.dumps(HOSTILE)}' in call(commands.get_task, task.id, "json")[1]


@pytest.mark.parametrize("columns", [40, 44, 60, 80, 100, 140])
def test_the_pretty_list_shows_whole_ids_and_the_names_in_a_narrow_terminal(taskbadger_server, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    name = "billing.tasks.generate_monthly_invoice_for_every_customer"
    task = taskbadger.create_task(name, status="processing", value=3, value_max=4)
    code, listed, _ = call(commands.list_tasks, "pretty", 5, None, is_terminal=False)
    assert code == 0
    lines = listed.splitlines()
    assert max(len(line) for line in lines) <= columns
    row = next(line for line in lines if task.id in line)  # the id whole, on one line
    # the name, folded over the row's lines: every character of it in the Name column
    start = lines.index(row)
    cells = [line.split("│")[2].strip() for line in lines[start:] if line.startswith("│")
             and (line is row or line.split("│")[1].strip() == "")]
    assert "".join(cells).startswith(name) and len(cells[0]) >= (10 if columns >= 60 else 5)
    headers = next(line for line in lines if "Task ID" in line)
    assert ("Created" in headers) == (columns >= 102) and ("Progress" in headers) == (columns >= 80)
    assert ("Status" in headers) == (columns >= 58)


@pytest.mark.parametrize("source", ["environment", "config file"])
def test_settings_never_show_the_key(tmp_path, source):
    """``Settings`` is in the frames of every command (``configure_sdk``, ``problem``, ``show_info``): a crash
    reporter or a debug page shows it with ``repr``."""
    import traceback

    secret = "LEAKCANARY-cli-5d1e"
    key = base64.b64encode(f"acme/demo/{secret}".encode()).decode()
    path = tmp_path / "config"
    environ = {"TASKBADGER_HOST": "ftp://not-a-host"}
    if source == "environment":
        environ["TASKBADGER_API_KEY"] = key
    else:
        path.write_text(f'[auth]\ntoken = "{key}"\n')
    resolved = settings.resolve(environ=environ, path=path)
    assert resolved.token.value == key and resolved.token.source == source
    assert secret not in repr(resolved) and key not in repr(resolved)
    with pytest.raises(settings.SettingsError) as raised:
        resolved.configure_sdk()  # the host is refused
    shown = "".join(traceback.TracebackException(type(raised.value), raised.value, raised.value.__traceback__.tb_next,
                                                 capture_locals=True).format())
    assert "configure_sdk" in shown and secret not in shown and key not in shown
