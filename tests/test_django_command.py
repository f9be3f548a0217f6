"""``manage.py taskbadger check|list`` against the stand-in Task Badger API (real HTTP)."""

import base64
import io

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
    delivery = lines[-1]
    assert delivery.startswith("delivery:     submitted=") and "dropped=0" in delivery and "breaker=closed" in delivery
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


def test_check_with_an_unreachable_host(taskbadger_server):
    taskbadger_server.refuse()
    with override_settings(TASKBADGER=settings_for(taskbadger_server)):
        with pytest.raises(CommandError, match=f"Could not reach Task Badger at {taskbadger_server.url}"):
            command("check")


def test_check_when_not_configured():
    with override_settings(TASKBADGER={"API_KEY": None}):
        with pytest.raises(CommandError, match="not configured: no API key"):
            command("check")
    with override_settings(TASKBADGER={"ENABLED": False}):
        with pytest.raises(CommandError, match="ENABLED'] is False"):
            command("check")
    with override_settings(TASKBADGER={"API_KEY": base64.b64encode(b"a/b/c").decode(), "HOST": "nope"}):
        with pytest.raises(CommandError, match="settings are invalid.*manage.py check"):
            command("list")


def test_list_prints_recent_tasks(taskbadger_server):
    with override_settings(TASKBADGER=settings_for(taskbadger_server)):
        taskbadger.create_task("oldest export", value=1, value_max=4)
        done = taskbadger.create_task("finished import")
        done.success(value=100)
        taskbadger.create_task("newest job")
        output = command("list", "--limit", "2")
        everything = command("list")
    lines = output.splitlines()
    assert lines[0].split() == ["STATUS", "PROGRESS", "NAME", "AGE"]
    assert lines[1].split() == ["pending", "-", "newest", "job", "0s"]
    assert lines[2].split() == ["success", "100%", "finished", "import", "0s"]
    assert len(lines) == 3
    assert [line.split()[:2] for line in everything.splitlines()[1:]] == [
        ["pending", "-"], ["success", "100%"], ["pending", "25%"]]
    # columns line up
    assert lines[1].index("newest") == lines[0].index("NAME") == lines[2].index("finished")


def test_list_empty_and_bad_limit(taskbadger_server):
    with override_settings(TASKBADGER=settings_for(taskbadger_server)):
        assert command("list").strip() == "No tasks."
        with pytest.raises(CommandError, match="--limit"):
            command("list", "--limit", "0")


def test_an_action_is_required():
    with pytest.raises(CommandError):
        command()
