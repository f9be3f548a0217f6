"""``manage.py taskbadger check|list`` against the stand-in Task Badger API (real HTTP)."""

import base64
import csv
import io
import json
import os
import re
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

import taskbadger
from taskbadger_django import conf


@pytest.fixture(autouse=True)
def _fresh_conf():
    conf.reset_state()
    yield
    conf.reset_state()


def settings_for(server, **extra):
    return {"API_KEY": server.api_key, "HOST": server.url, **extra}


def command(*args):
    out = io.StringIO()
    call_command("taskbadger", *args, stdout=out)
    return out.getvalue()


def test_check_with_a_good_key(taskbadger_server):
    monitors = {"a.b": "0b0b5c86-4a43-4c3c-9a53-7d3e6f1c2a11"}
    with override_settings(TASKBADGER=settings_for(taskbadger_server, MONITORS=monitors)):
        output = command("check")
    lines = output.splitlines()
    assert lines[0] == "Task Badger: the API accepted the key."
    assert "organization: acme" in lines and "project:      demo" in lines
    assert f"host:         {taskbadger_server.url}" in lines
    assert "celery:       auto_track=False monitors=1" in lines
    assert "breaker:      closed" in lines
    delivery = lines[-2]
    assert delivery.startswith("delivery:     this process (manage.py): submitted ")
    numbers = [int(n) for n in re.findall(r"\b(\d+)\b", delivery.split("(retried")[0])]
    assert numbers[0] == sum(numbers[1:])  # what became of each update adds up to what was submitted
    assert "at most once a minute and only when its counters changed" in lines[-1]
    [request] = taskbadger_server.requests
    assert (request.method, request.query) == ("GET", {"page_size": "1"})
    assert taskbadger_server.key not in output


def test_check_with_a_refused_key(taskbadger_server):
    wrong = base64.b64encode(b"acme/demo/wrong-secret-123").decode()
    with override_settings(TASKBADGER=settings_for(taskbadger_server, API_KEY=wrong)):
        with pytest.raises(CommandError) as info:
            command("check")
    message = str(info.value)
    assert "refused the API key" in message and "401" in message
    assert "wrong-secret-123" not in message and wrong not in message


def test_check_with_an_unknown_project(taskbadger_server):
    other = base64.b64encode(f"acme/other/{taskbadger_server.key}".encode()).decode()
    with override_settings(TASKBADGER=settings_for(taskbadger_server, API_KEY=other)):
        with pytest.raises(CommandError, match="no project at .*'other'"):
            command("check")


def test_check_with_a_host_that_has_a_path_says_the_path_may_be_why(taskbadger_server):
    with override_settings(TASKBADGER=settings_for(taskbadger_server, HOST=taskbadger_server.url + "/api/")):
        with pytest.raises(CommandError, match=r"TASKBADGER\['HOST'\], whose path \(api\) comes before"):
            command("check")


def test_check_with_an_unreachable_host(taskbadger_server):
    taskbadger_server.refuse()
    with override_settings(TASKBADGER=settings_for(taskbadger_server)):
        with pytest.raises(CommandError, match=f"Could not reach Task Badger at {taskbadger_server.url}") as info:
            command("check")
    # in our words, as the worker says it, never urllib3's ("HTTPConnectionPool(host=…): Max retries exceeded")
    assert f"Could not connect to {taskbadger_server.url}: [Errno 111] Connection refused" in str(info.value)
    assert "HTTPConnectionPool" not in str(info.value) and "Max retries" not in str(info.value)


def test_check_delivers_what_the_spool_holds(taskbadger_server, tmp_path):
    from taskbadger.delivery.spool import Entry, Spool, api_key_of

    task = taskbadger.create_task("left behind")
    spool = tmp_path / "spool"
    Spool(spool).write(api_key_of(taskbadger.get_config()), [Entry({"status": "success"}, task_id=task.id,
                                                                     final=True)])
    with override_settings(TASKBADGER=settings_for(taskbadger_server, SPOOL_DIR=str(spool))):
        output = command("check")
    assert f"spool:        {spool}: 0 update(s) waiting" in output and "all delivered)" in output
    assert taskbadger_server.get_task(task.id)["status"] == "success"


def test_check_when_not_configured():
    with override_settings(TASKBADGER={"API_KEY": None}):
        with pytest.raises(CommandError, match="not configured: no API key"):
            command("check")
    with override_settings(TASKBADGER={"ENABLED": False}):
        with pytest.raises(CommandError, match="ENABLED'] is False"):
            command("check")
    with override_settings(TASKBADGER={"API_KEY": base64.b64encode(b"a/b/c").decode(), "HOST": "nope"}):
        with pytest.raises(CommandError, match="setting has errors, so it is not applied: .*host.*manage.py check"):
            command("list")


def test_list_prints_recent_tasks_as_the_console_script_does(taskbadger_server, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # the pretty table fits its names whatever runs the tests
    with override_settings(TASKBADGER=settings_for(taskbadger_server)):
        taskbadger.create_task("oldest export", value=1, value_max=4)
        done = taskbadger.create_task("finished import")
        done.success(value=100)
        taskbadger.create_task("newest job")
        limited = command("list", "--limit", "2")  # not a terminal: CSV, as `taskbadger list` on a pipe
        everything = command("list", "--format", "csv")
        as_json = command("list", "-f", "json")
        pretty = command("list", "-f", "pretty")
    rows = list(csv.reader(io.StringIO(limited)))
    assert rows[0] == ["Task ID", "Created", "Name", "Status", "Percent", "Value", "Value Max", "Duration (s)"]
    assert [row[2:7] for row in rows[1:]] == [["newest job", "pending", "", "", "100"],
                                              ["finished import", "success", "100", "100", "100"]]
    assert [row[2:5] for row in csv.reader(io.StringIO(everything))][1:] == [
        ["newest job", "pending", ""], ["finished import", "success", "100"], ["oldest export", "pending", "25"]]
    document = json.loads(as_json)
    assert document["next_token"] is None
    assert [task["name"] for task in document["results"]] == ["newest job", "finished import", "oldest export"]
    assert "Project: demo, Organization: acme" in pretty and "finished import" in pretty and "25%" in pretty

    # One command layer: the console script prints the very same CSV and JSON.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBADGER_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "xdg"), TASKBADGER_HOST=taskbadger_server.url,
               TASKBADGER_API_KEY=taskbadger_server.api_key)
    for args, ours in ((["--format", "csv"], everything), (["-f", "json"], as_json)):
        script = subprocess.run([sys.executable, "-m", "taskbadger.cli", "list", *args], env=env, capture_output=True,
                                text=True, stdin=subprocess.DEVNULL, timeout=30, check=True)
        if args[-1] == "json":
            assert json.loads(script.stdout) == json.loads(ours)
        else:  # the running task's duration grows between the two calls
            assert [row[:7] for row in csv.reader(io.StringIO(script.stdout))] == \
                [row[:7] for row in csv.reader(io.StringIO(ours))]


def test_list_pages_through_more_than_one_request(taskbadger_server):
    with override_settings(TASKBADGER=settings_for(taskbadger_server)):
        for number in range(120):
            taskbadger.create_task(f"job {number}")
        before = len(taskbadger_server.requests)
        out, err = io.StringIO(), io.StringIO()
        call_command("taskbadger", "list", "--limit", "110", stdout=out, stderr=err)
    names = [row[2] for row in csv.reader(io.StringIO(out.getvalue()))][1:]
    assert names == [f"job {number}" for number in range(119, 9, -1)]
    pages = [r for r in taskbadger_server.requests[before:] if r.method == "GET"]
    assert [r.query["page_size"] for r in pages] == ["100", "10"]
    assert err.getvalue().startswith("Next page: --start-token ")  # CSV stays pure CSV: the token goes to stderr


def test_list_empty_and_bad_limit(taskbadger_server):
    with override_settings(TASKBADGER=settings_for(taskbadger_server)):
        assert "No tasks." in command("list", "-f", "pretty")
        assert command("list").splitlines() == ["Task ID,Created,Name,Status,Percent,Value,Value Max,Duration (s)"]
        with pytest.raises(CommandError, match="^--limit must be from 1 to 100000$"):
            command("list", "--limit", "0")
        taskbadger_server.refuse()
        with pytest.raises(CommandError, match="^could not reach Task Badger"):
            command("list")


def test_an_action_is_required():
    with pytest.raises(CommandError):
        command()
