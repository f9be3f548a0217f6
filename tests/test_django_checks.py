"""System checks: every id triggered and silenced, under override_settings, through run_checks()."""

import base64
import logging
import re

import pytest
from celery import Celery
from celery import _state as celery_state
from django.core import checks
from django.core.checks import run_checks
from django.test import override_settings

import taskbadger
from taskbadger.celery import Task
from taskbadger.exceptions import ConfigurationError
from taskbadger_django import checks as tb_checks
from taskbadger_django import conf

SECRET = "zz-very-secret-zz"
MONITOR = "0b0b5c86-4a43-4c3c-9a53-7d3e6f1c2a11"


def key(org="acme", project="demo", secret=SECRET):
    return base64.b64encode(f"{org}/{project}/{secret}".encode()).decode()


VALID = {"API_KEY": key(), "HOST": "https://taskbadger.net"}


@pytest.fixture(autouse=True)
def _fresh_conf():
    conf.reset_state()
    yield
    conf.reset_state()


@pytest.fixture(autouse=True)
def app():
    """A Celery app of our own, current during the test, so the task checks see known tasks only."""
    previous = celery_state._tls.current_app
    app = Celery("tbdjango-checks", broker="memory://", set_as_current=False)
    app.set_current()
    try:
        yield app
    finally:
        celery_state._set_current_app(previous)
        # the task checks read every Celery app of the process: this one's tasks are not the next test's
        celery_state._deregister_app(app)


def run(settings, **tb):
    """The taskbadger messages of run_checks() under TASKBADGER=settings (updated with tb)."""
    if isinstance(settings, dict):
        settings = {**settings, **tb}
    with override_settings(TASKBADGER=settings):
        return run_checks(tags=[tb_checks.TAG])


def ids(messages):
    return sorted(m.id for m in messages)


def no_secret(messages):
    for m in messages:
        assert SECRET not in m.msg and SECRET not in (m.hint or "") and SECRET not in str(m.obj)
        assert key() not in m.msg and key() not in (m.hint or "")


def test_valid_settings_give_no_messages():
    assert run(VALID) == []
    assert run(VALID, ENABLED=False, TAGS={"a": "bc"}, TIMEOUT=5, BEFORE_CREATE="json.dumps",
               CELERY={"AUTO_TRACK": True, "INCLUDES": r"a\..*", "EXCLUDES": ["b"], "RECORD_TASK_ARGS": True,
                       "HEARTBEAT_INTERVAL": 2.5, "STALE_TIMEOUT": 10}) == []


#: (bad settings, the fix, the check id, its obj, a phrase of its hint): every settings check.
SETTING_CASES = [
    ({"API_KY": "x"}, {"API_KEY": key()}, "taskbadger.E001", "TASKBADGER", "Did you mean 'API_KEY'?"),
    ({"monitors": {}}, {"MONITORS": {}}, "taskbadger.E001", "TASKBADGER", "Did you mean 'MONITORS'?"),
    ({"CELERY": {"AUTOTRACK": True}}, {"CELERY": {"AUTO_TRACK": True}}, "taskbadger.E002", "TASKBADGER['CELERY']",
     "Did you mean 'AUTO_TRACK'?"),
    ({"ENABLED": "yes"}, {"ENABLED": True}, "taskbadger.E003", "TASKBADGER['ENABLED']", "For example"),
    ({"TAGS": {"n": 1}}, {"TAGS": {"n": "12"}}, "taskbadger.E003", "TASKBADGER['TAGS']", "environment"),
    ({"TIMEOUT": -1}, {"TIMEOUT": (1, 2)}, "taskbadger.E003", "TASKBADGER['TIMEOUT']", "(2, 5)"),
    # values the API or the clocks cannot take: passed by `check`, they lost every final update (or every task)
    ({"TIMEOUT": float("inf")}, {"TIMEOUT": 600}, "taskbadger.E003", "TASKBADGER['TIMEOUT']", "(2, 5)"),
    ({"TIMEOUT": (1, 1e300)}, {"TIMEOUT": (1, 30)}, "taskbadger.E003", "TASKBADGER['TIMEOUT']", "(2, 5)"),
    ({"TAGS": {"env": "p"}}, {"TAGS": {"env": "pr"}}, "taskbadger.E003", "TASKBADGER['TAGS']", "environment"),
    ({"TAGS": {"env": "x" * 256}}, {"TAGS": {"env": "x" * 255}}, "taskbadger.E003", "TASKBADGER['TAGS']",
     "environment"),
    ({"CELERY": {"HEARTBEAT_INTERVAL": float("inf")}}, {"CELERY": {"HEARTBEAT_INTERVAL": 86_400}}, "taskbadger.E003",
     "TASKBADGER['CELERY']['HEARTBEAT_INTERVAL']", "30"),
    # an interval of 1e-9 kept a thread pinging without a pause while each task ran
    ({"CELERY": {"HEARTBEAT_INTERVAL": 1e-9}}, {"CELERY": {"HEARTBEAT_INTERVAL": 0.1}}, "taskbadger.E003",
     "TASKBADGER['CELERY']['HEARTBEAT_INTERVAL']", "30"),
    ({"DJANGO_TASKS": {"HEARTBEAT_INTERVAL": 1e12}}, {"DJANGO_TASKS": {"HEARTBEAT_INTERVAL": 0.5}}, "taskbadger.E003",
     "TASKBADGER['DJANGO_TASKS']['HEARTBEAT_INTERVAL']", "30"),
    ({"CELERY": {"STALE_TIMEOUT": 3_000_000_000}}, {"CELERY": {"STALE_TIMEOUT": 2_147_483_647}}, "taskbadger.E003",
     "TASKBADGER['CELERY']['STALE_TIMEOUT']", "120"),
    ({"BEFORE_CREATE": 3}, {"BEFORE_CREATE": len}, "taskbadger.E003", "TASKBADGER['BEFORE_CREATE']", "before_create"),
    ({"MONITORS": ["a"]}, {"MONITORS": {}}, "taskbadger.E003", "TASKBADGER['MONITORS']", "monitor"),
    ({"MONITORS": {"shop.nightly": 1}}, {"MONITORS": {}}, "taskbadger.E003", "TASKBADGER['MONITORS']", "monitor"),
    ({"CELERY": "on"}, {"CELERY": {}}, "taskbadger.E003", "TASKBADGER['CELERY']", "AUTO_TRACK"),
    ({"CELERY": {"STALE_TIMEOUT": 1.5}}, {"CELERY": {"STALE_TIMEOUT": 2}}, "taskbadger.E003",
     "TASKBADGER['CELERY']['STALE_TIMEOUT']", "120"),
    ({"CELERY": {"INCLUDES": [1]}}, {"CELERY": {"INCLUDES": ["a"]}}, "taskbadger.E003",
     "TASKBADGER['CELERY']['INCLUDES']", "INCLUDES"),
    ({"API_KEY": 12345}, {"API_KEY": key()}, "taskbadger.E003", "TASKBADGER['API_KEY']", "env.str"),
    ({"SPOOL_DIR": "/tmp/a\nb"}, {"SPOOL_DIR": "/tmp/ab"}, "taskbadger.E003", "TASKBADGER['SPOOL_DIR']",
     "taskbadger-spool"),
    ({"SPOOL_DIR": "  "}, {"SPOOL_DIR": False}, "taskbadger.E003", "TASKBADGER['SPOOL_DIR']", "taskbadger-spool"),
    ({"API_KEY": key() + "\n"}, {"API_KEY": key()}, "taskbadger.E004", "TASKBADGER['API_KEY']", "strip it"),
    ({"API_KEY": key()[:6] + " " + key()[6:]}, {"API_KEY": key()}, "taskbadger.E004", "TASKBADGER['API_KEY']",
     "copy it again"),
    ({"API_KEY": base64.b64encode(f"acme/{SECRET}".encode()).decode()}, {"API_KEY": key()}, "taskbadger.E004",
     "TASKBADGER['API_KEY']", "organization/project/key"),
    ({"API_KEY": SECRET}, {"API_KEY": key()}, "taskbadger.E004", "TASKBADGER['API_KEY']", "project key"),
    ({"HOST": "taskbadger.net"}, {"HOST": "https://taskbadger.net"}, "taskbadger.E005", "TASKBADGER['HOST']",
     "https://taskbadger.net"),
    ({"HOST": f"https://user:{SECRET}@taskbadger.net"}, {"HOST": "https://taskbadger.net"}, "taskbadger.E005",
     "TASKBADGER['HOST']", "https://taskbadger.net"),
    ({"MONITORS": {"shop.nightly": "monitor-1"}}, {"MONITORS": {"shop.nightly": MONITOR}}, "taskbadger.E006",
     "TASKBADGER['MONITORS']", "monitor's page"),
    ({"MONITORS": {"shop.nightly": ""}}, {"MONITORS": {"shop.nightly": None}}, "taskbadger.E006",
     "TASKBADGER['MONITORS']", "give None, not an empty string"),
    ({"MONITORS": {"shop.nightly": MONITOR + " "}}, {"MONITORS": {"shop.nightly": MONITOR}}, "taskbadger.E006",
     "TASKBADGER['MONITORS']", "Remove the whitespace"),
    ({"HOST": "https://taskbadger.net/api/"}, {"HOST": "https://taskbadger.net"}, "taskbadger.W017",
     "TASKBADGER['HOST']", '"https://taskbadger.net"'),
    ({"MONITORS": {"shop.(": MONITOR}}, {"MONITORS": {r"shop\..*": MONITOR}}, "taskbadger.E007",
     "TASKBADGER['MONITORS']", "whole task name"),
    ({"CELERY": {"EXCLUDES": ["("]}}, {"CELERY": {"EXCLUDES": [r"celery\..*"]}}, "taskbadger.E007",
     "TASKBADGER['CELERY']['EXCLUDES']", "whole task name"),
    ({"BEFORE_CREATE": "tests.no_such_module.hook"}, {"BEFORE_CREATE": "json.dumps"}, "taskbadger.E008",
     "TASKBADGER['BEFORE_CREATE']", "dotted path"),
    ({"BEFORE_CREATE": "os.sep"}, {"BEFORE_CREATE": "os.getcwd"}, "taskbadger.E008", "TASKBADGER['BEFORE_CREATE']",
     "function"),
    ({"API_KEY": None}, {"API_KEY": None, "ENABLED": False}, "taskbadger.W001", "TASKBADGER['API_KEY']",
     "TASKBADGER_API_KEY"),
    ({"HOST": "http://tb.example.com"}, {"HOST": "http://127.0.0.1:8000"}, "taskbadger.W002", "TASKBADGER['HOST']",
     "https://"),
    ({"HOST": "http://tb.example.com"}, {"HOST": "http://localhost:8000"}, "taskbadger.W002", "TASKBADGER['HOST']",
     "loopback"),
    ({"API_KEY": SECRET, "ORGANIZATION_SLUG": "o", "PROJECT_SLUG": "p"}, {"API_KEY": key()}, "taskbadger.W004",
     "TASKBADGER['API_KEY']", "project key"),
    ({"ORGANIZATION_SLUG": "o"}, {"ORGANIZATION_SLUG": None}, "taskbadger.W005", "TASKBADGER", "Remove"),
    ({"CELERY": {"HEARTBEAT_INTERVAL": 60, "STALE_TIMEOUT": 60}}, {"CELERY": {"HEARTBEAT_INTERVAL": 60,
     "STALE_TIMEOUT": 120}}, "taskbadger.W020", "TASKBADGER['CELERY']['STALE_TIMEOUT']", "twice HEARTBEAT_INTERVAL"),
    ({"DJANGO_TASKS": {"HEARTBEAT_INTERVAL": 30.5, "STALE_TIMEOUT": 10}},
     {"DJANGO_TASKS": {"HEARTBEAT_INTERVAL": 30.5}}, "taskbadger.W020", "TASKBADGER['DJANGO_TASKS']['STALE_TIMEOUT']",
     "Remove STALE_TIMEOUT"),
    ({"API_KEY": "abcd1234.legacysecret"}, {"API_KEY": key()}, "taskbadger.E004", "TASKBADGER['API_KEY']",
     "ORGANIZATION_SLUG"),
    ({"API_KEY": "abcd1234.legacysecret", "ORGANIZATION_SLUG": "o", "PROJECT_SLUG": "not a slug"},
     {"API_KEY": key()}, "taskbadger.E004", "TASKBADGER['PROJECT_SLUG']", "slug"),
]


@pytest.mark.parametrize("bad, good, expected_id, expected_obj, in_hint", SETTING_CASES)
@pytest.mark.filterwarnings("ignore:Legacy API keys are deprecated:DeprecationWarning")
def test_setting_check_triggered_and_silenced(app, bad, good, expected_id, expected_obj, in_hint):
    @app.task(shared=False, name="shop.nightly", base=Task)
    def nightly():
        return None

    messages = run(VALID, **bad)
    assert [(m.id, m.obj) for m in messages] == [(expected_id, expected_obj)], messages
    assert in_hint in messages[0].hint
    assert messages[0].level == {"E": checks.ERROR, "W": checks.WARNING}[expected_id[11]]
    no_secret(messages)
    assert run(VALID, **good) == []


@pytest.mark.parametrize(("variable", "value", "setting", "fixed"), [
    ("TASKBADGER_HTTP_TIMEOUT", "abc", "TIMEOUT", (2, 5)),
    ("TASKBADGER_HTTP_TIMEOUT", "nan", "TIMEOUT", (2, 5)),
    ("TASKBADGER_PUBLISH_BUDGET", "60", "PUBLISH_BUDGET", 1.0),
    ("TASKBADGER_SPOOL_DIR", "/tmp/spool\x01", "SPOOL_DIR", False),
])
def test_an_environment_variable_the_sdk_refuses_is_reported_where_the_error_line_sends_its_reader(
        monkeypatch, caplog, variable, value, setting, fixed):
    """The SDK reads these itself when the setting is unset: a bad one left tasks untracked with an ERROR line saying
    "run manage.py check", and the check said "no issues"."""
    monkeypatch.setenv(variable, value)
    messages = run(VALID)
    assert [(m.id, m.obj) for m in messages] == [("taskbadger.E018", variable)], messages
    assert f"TASKBADGER[{setting!r}]" in messages[0].hint and messages[0].level == checks.ERROR
    no_secret(messages)
    with caplog.at_level(logging.ERROR, logger="taskbadger"), override_settings(TASKBADGER=VALID):
        assert taskbadger.get_config() is None  # what the check is about: the process refuses it
    assert "manage.py check" in caplog.text
    assert run(VALID, **{setting: fixed}) == []  # the setting wins over the variable: nothing to report


@pytest.mark.parametrize("bad, good, expected_id, expected_obj, in_hint", SETTING_CASES)
@pytest.mark.filterwarnings("ignore:Legacy:DeprecationWarning")
def test_settings_with_a_check_error_are_not_applied_at_all(caplog, bad, good, expected_id, expected_obj, in_hint):
    """The README's rule: settings that `manage.py check` reports an error for are not applied, not even in part
    (tasks run untracked, one ERROR line names the problem); warnings do not stop them."""
    with override_settings(TASKBADGER={**VALID, **bad}):
        applied = conf.configure()
        reason = conf.unconfigured_reason()
    if expected_id.startswith("taskbadger.E"):
        assert applied is None and reason is not None and "manage.py check" in reason, expected_id
        [line] = [r for r in caplog.records if r.name == "taskbadger.django" and r.levelno == logging.ERROR]
        assert line.getMessage().startswith("Task Badger: tasks run untracked: the TASKBADGER setting has errors")
        assert line.getMessage().endswith("Run `manage.py check` for how to fix each.")
        assert SECRET not in line.getMessage()
    elif bad.get("API_KEY", VALID["API_KEY"]):  # a warning; W001 is the missing key itself
        assert applied is not None and reason is None, expected_id
    conf.reset_state()
    with override_settings(TASKBADGER={**VALID, **good}):
        assert (conf.configure() is None) == (good.get("ENABLED") is False or good.get("API_KEY", 1) is None)


def test_taskbadger_setting_that_is_not_a_dict():
    messages = run(["API_KEY"])
    assert [(m.id, m.obj) for m in messages] == [("taskbadger.E003", "TASKBADGER")]


def test_key_and_host_from_the_environment_are_checked_too(monkeypatch):
    monkeypatch.setenv("TASKBADGER_API_KEY", key() + "\n")
    monkeypatch.setenv("TASKBADGER_HOST", "http://tb.example.com")
    messages = run({})
    assert [(m.id, m.obj) for m in messages] == [("taskbadger.E004", "TASKBADGER_API_KEY"),
                                                 ("taskbadger.W002", "TASKBADGER_HOST")]
    no_secret(messages)
    monkeypatch.setenv("TASKBADGER_API_KEY", key())
    monkeypatch.setenv("TASKBADGER_HOST", "https://tb.example.com")
    assert run({}) == []


@pytest.mark.filterwarnings("ignore:Legacy API keys are deprecated:DeprecationWarning")
def test_the_key_never_appears_in_any_message():
    for bad_key in (SECRET, key() + " ", base64.b64encode(f"a/{SECRET}".encode()).decode(), 42, key(secret="")):
        messages = run(VALID, API_KEY=bad_key, TAGS={"k": 1}, HOST="ftp://x")
        assert messages
        no_secret(messages)


# -- checks on the registered Celery tasks -----------------------------------------------------------------


def test_unknown_and_invalid_task_options(app):
    @app.task(shared=False, name="shop.typo", base=Task, taskbadger_valu_max=10)
    def typo():
        return None

    @app.task(shared=False, name="shop.bad_value", base=Task, taskbadger_value_max="ten",
              taskbadger_kwargs={"nmae": "x"})
    def bad_value():
        return None

    @app.task(shared=False, name="shop.bad_bundle", taskbadger_kwargs="name")
    def bad_bundle():
        return None

    @app.task(shared=False, name="shop.good", base=Task, taskbadger_value_max=10, taskbadger_kwargs={"name": "Good"})
    def good():
        return None

    messages = run(VALID)
    assert [(m.id, m.obj) for m in messages] == [
        ("taskbadger.E010", "shop.bad_bundle"),
        ("taskbadger.E009", "shop.bad_value"),
        ("taskbadger.E010", "shop.bad_value"),
        ("taskbadger.E009", "shop.typo"),
    ]
    assert messages[1].msg == "Task 'shop.bad_value' has an unknown option taskbadger_nmae."
    assert messages[1].hint.startswith("Did you mean taskbadger_name?")
    assert "an integer >= 0" in messages[2].msg
    assert messages[3].hint.startswith("Did you mean taskbadger_value_max?")


def test_task_options_of_a_second_app_are_checked(app):
    """A task registered on another Celery app of the process (not the current one) is checked too."""
    second = Celery("tbdjango-checks-second", broker="memory://", set_as_current=False)

    @second.task(shared=False, name="billing.typo", base=Task, taskbadger_valu_max=10)
    def typo():
        return None

    @second.task(shared=False, name="billing.bad_monitor", base=Task, taskbadger_monitor_id="nightly")
    def bad_monitor():
        return None

    try:
        messages = run(VALID)
    finally:
        celery_state._deregister_app(second)
    assert [(m.id, m.obj) for m in messages] == [
        ("taskbadger.E010", "billing.bad_monitor"),
        ("taskbadger.E009", "billing.typo"),
    ]
    assert messages[1].hint.startswith("Did you mean taskbadger_value_max?")


def test_task_options_silenced_when_valid(app):
    @app.task(shared=False, name="shop.fine", base=Task, taskbadger_value_max=10, taskbadger_monitor_id=MONITOR)
    def fine():
        return None

    assert run(VALID) == []


def test_monitor_that_matches_no_task(app):
    @app.task(shared=False, name="shop.nightly_report", base=Task)
    def nightly_report():
        return None

    messages = run(VALID, MONITORS={"shop.nightly_reports": MONITOR})
    assert [(m.id, m.obj) for m in messages] == [("taskbadger.W003", "TASKBADGER['MONITORS']")]
    assert messages[0].hint.startswith("Did you mean 'shop.nightly_report'?")
    assert run(VALID, MONITORS={"shop.nightly_report": MONITOR}) == []
    assert run(VALID, MONITORS={r"shop\.nightly_.*": MONITOR}) == []
    # Celery's own tasks do not count as a match
    assert ids(run(VALID, MONITORS={r"celery\..*": MONITOR})) == ["taskbadger.W003"]


def test_a_monitor_left_unset_means_no_monitor(app):
    @app.task(shared=False, name="shop.nightly_report")
    def nightly_report():
        return None

    unset = {"shop.nightly_report": None}  # as env.str("NIGHTLY_REPORT_MONITOR", default=None) gives
    assert run(VALID, MONITORS=unset) == []
    with override_settings(TASKBADGER={**VALID, "MONITORS": unset}):
        assert conf.configure().system("celery").monitors == {}


@pytest.mark.parametrize(("url", "expected"), [
    ("sqs://", ["taskbadger.W007"]),  # boto3 is not installed here
    ("redis://127.0.0.1:6379/0", []),
    ("amqp://guest:guest@127.0.0.1:5672//", []),
    ("filesystem://localhost/", []),
    (None, []),
])
def test_a_broker_whose_transport_package_is_missing(url, expected):
    with override_settings(CELERY_BROKER_URL=url):
        messages = run(VALID)
    assert ids(messages) == expected
    if expected:
        assert messages[0].hint == 'Install it: pip install "celery[sqs]"' and "'boto3'" in messages[0].msg


def test_beat_task_without_monitor(app):
    @app.task(shared=False, name="shop.nightly", base=Task)
    def nightly():
        return None

    @app.task(shared=False, name="shop.hourly", base=Task, taskbadger_monitor_id=MONITOR)
    def hourly():
        return None

    app.conf.beat_schedule = {
        "nightly": {"task": "shop.nightly", "schedule": 86400},
        "hourly": {"task": "shop.hourly", "schedule": 3600},   # monitor on the decorator
        "cleanup": {"task": "celery.backend_cleanup", "schedule": 3600},
    }
    messages = run(VALID)
    assert messages == [checks.Info(
        "Celery beat runs 'shop.nightly' (entry 'nightly') with no Task Badger monitor.",
        hint="Create a monitor in Task Badger and add 'shop.nightly': '<monitor id>' to TASKBADGER['MONITORS'] so "
             "that a missed or failed run raises an alert.",
        obj="CELERY_BEAT_SCHEDULE", id="taskbadger.I001")]
    assert run(VALID, MONITORS={"shop.nightly": MONITOR}) == []
    assert run(VALID, MONITORS={r"shop\..*": MONITOR}) == []
    assert run(VALID, ENABLED=False) == []
    # an entry with a monitor of its own (two entries of one task, each with its monitor)
    app.conf.beat_schedule = {
        "nightly-eu": {"task": "shop.nightly", "schedule": 86400, "options": {"taskbadger_monitor_id": MONITOR}},
        "nightly-us": {"task": "shop.nightly", "schedule": 86400,
                       "options": {"taskbadger_kwargs": {"monitor_id": MONITOR}}},
        "nightly-asia": {"task": "shop.nightly", "schedule": 86400,
                         "options": {"headers": {"taskbadger_kwargs": {"monitor_id": MONITOR}}}},
    }
    assert run(VALID) == []
    # one that is not a monitor id is ignored at run time (logged once): an error here
    app.conf.beat_schedule = {"nightly": {"task": "shop.nightly", "schedule": 86400,
                                          "options": {"taskbadger_monitor_id": "nightly"}}}
    [message] = run(VALID)
    assert (message.id, message.obj) == ("taskbadger.E010", "CELERY_BEAT_SCHEDULE")
    assert "entry 'nightly'" in message.msg and "'nightly'" in message.msg


def test_a_wrong_monitor_value_says_which_entry_and_what_to_use(app):
    @app.task(shared=False, name="shop.nightly", base=Task)
    def nightly():
        return None

    @app.task(shared=False, name="shop.hourly", base=Task)
    def hourly():
        return None

    page = f"https://taskbadger.net/a/acme/monitors/{MONITOR}/"
    messages = run(VALID, MONITORS={"shop.nightly": MONITOR, "shop.hourly": 12})
    assert [m.id for m in messages] == ["taskbadger.E003"]
    assert "'shop.hourly'" in messages[0].msg
    [message] = run(VALID, MONITORS={"shop.nightly": page})
    assert message.id == "taskbadger.E006" and message.hint == f"Use the monitor id it contains: {MONITOR!r}."


def plain_and_tracked_tasks(app):
    """``shop.nightly``, a plain task (not tracked unless auto-tracked), and ``shop.tracked``, with ``base=Task``."""

    @app.task(shared=False, name="shop.nightly")
    def nightly():
        return None

    @app.task(shared=False, name="shop.tracked", base=Task)
    def tracked():
        return None


def test_a_monitored_task_that_is_never_tracked(app):
    """A monitor on a task that is not tracked (plain @shared_task, AUTO_TRACK off by default): beat runs it, no
    task is ever created, and the monitor reports every run as missed; the check says so, and how to track it."""

    plain_and_tracked_tasks(app)

    @app.task(shared=False, name="shop.opted_out", base=Task, taskbadger_track=False)
    def opted_out():
        return None

    app.conf.beat_schedule = {"nightly": {"task": "shop.nightly", "schedule": 86400}}
    monitors = {"shop.nightly": MONITOR, "shop.tracked": MONITOR, "shop.opted_out": MONITOR}
    messages = run(VALID, MONITORS=monitors)
    assert [(m.id, m.obj) for m in messages] == [("taskbadger.W019", "shop.nightly"),
                                                 ("taskbadger.W019", "shop.opted_out")]
    assert "is not tracked (it does not use base=Task" in messages[0].msg
    assert "@shared_task(base=Task)" in messages[0].hint and "AUTO_TRACK" in messages[0].hint
    assert "taskbadger_track=False" in messages[1].msg
    # tracked by the Celery rules: no warning
    assert run(VALID, MONITORS={"shop.nightly": MONITOR}, CELERY={"AUTO_TRACK": True}) == []
    assert ids(run(VALID, MONITORS={"shop.nightly": MONITOR},
                   CELERY={"AUTO_TRACK": True, "EXCLUDES": [r"shop\..*"]})) == ["taskbadger.W019"]
    assert run(VALID, MONITORS={"shop.nightly": None, "shop.tracked": MONITOR}) == []
    # its beat entry tracks it
    app.conf.beat_schedule = {"nightly": {"task": "shop.nightly", "schedule": 86400,
                                          "options": {"headers": {"taskbadger_track": True}}}}
    assert run(VALID, MONITORS={"shop.nightly": MONITOR}) == []


def test_a_beat_entry_whose_own_options_leave_its_monitored_runs_untracked(app):
    """A beat entry's own options decide for its runs: a monitor given there to a task nothing tracks, or
    taskbadger_track=False on the entry of a task that has a monitor, was not reported; the monitor heard nothing."""

    plain_and_tracked_tasks(app)

    own = {"nightly": {"task": "shop.nightly", "schedule": 86400,
                       "options": {"headers": {"taskbadger_kwargs": {"monitor_id": MONITOR}}}}}
    opted_out = {"tracked": {"task": "shop.tracked", "schedule": 86400, "options": {"taskbadger_track": False}}}
    for schedule, why in ((own, "does not use base=Task"), (opted_out, "its options have taskbadger_track=False")):
        app.conf.beat_schedule = schedule
        messages = run(VALID, MONITORS={"shop.tracked": MONITOR})
        assert [(m.id, m.obj) for m in messages] == [("taskbadger.W019", "CELERY_BEAT_SCHEDULE")], messages
        assert why in messages[0].msg and repr(next(iter(schedule))) in messages[0].msg
    # tracked after all: the task by the Celery rules, or the entry's runs by its own options
    app.conf.beat_schedule = own
    assert run(VALID, MONITORS={"shop.tracked": MONITOR}, CELERY={"AUTO_TRACK": True}) == []
    own["nightly"]["options"]["headers"]["taskbadger_track"] = True
    assert run(VALID, MONITORS={"shop.tracked": MONITOR}) == []


def test_task_modules_that_cannot_be_imported(app):
    app.conf.imports = ["tests.no_such_tasks_module"]
    messages = run(VALID)
    assert [(m.id, m.obj) for m in messages] == [("taskbadger.W006", "celery")]
    assert "No module named 'tests.no_such_tasks_module'" in messages[0].msg
    fixed = Celery("tbdjango-checks-fixed", broker="memory://", set_as_current=False)
    fixed.set_current()
    assert run(VALID) == []


def test_task_checks_are_silent_without_celery(app, monkeypatch):
    @app.task(shared=False, name="shop.typo", taskbadger_valu_max=10)
    def typo():
        return None

    assert ids(run(VALID)) == ["taskbadger.E009"]
    monkeypatch.setattr(conf, "celery_available", lambda: False)
    assert run(VALID) == []


def test_checks_do_not_recurse_through_celerys_django_fixup(monkeypatch):
    """Celery's Django fixup runs the system checks while importing task modules; ours import them."""
    from testproject.celery import app as project_app

    project_app.set_current()
    calls, depth, deepest = [], [0], [0]
    original = tb_checks.check_celery_tasks

    def counting(*args, **kwargs):
        depth[0] += 1
        deepest[0] = max(deepest[0], depth[0])
        try:
            result = original(*args, **kwargs)
            calls.append(result)
            return result
        finally:
            depth[0] -= 1

    monkeypatch.setattr(tb_checks, "check_celery_tasks", counting)
    assert ids(run(VALID, MONITORS={"nope": MONITOR})) == ["taskbadger.I001", "taskbadger.W003"]
    assert deepest[0] == 2  # the fixup's nested run of the checks ...
    assert calls[0] == []   # ... skipped the task checks instead of recursing


# -- the full run_checks() on the test project -------------------------------------------------------------


def test_full_run_checks_on_the_test_project():
    from testproject.celery import app as project_app

    project_app.set_current()
    project_settings = {
        "API_KEY": key(),
        "TAGS": {"environment": "test"},
        "MONITORS": {"demo.tasks.nightly_report": MONITOR},
        "CELERY": {"AUTO_TRACK": False, "RECORD_TASK_ARGS": False},
    }
    with override_settings(TASKBADGER=project_settings):
        assert run_checks() == []
    broken = {**project_settings, "MONITOR": {}, "HOST": "http://tb.example.com", "MONITORS": {}}
    broken.pop("API_KEY")
    with override_settings(TASKBADGER=broken):
        assert run_checks() == [
            checks.Error(
                "Unknown key 'MONITOR' in TASKBADGER.",
                hint="Did you mean 'MONITORS'? Valid keys: API_KEY, HOST, ORGANIZATION_SLUG, PROJECT_SLUG, "
                     "ENABLED, TAGS, BEFORE_CREATE, TIMEOUT, SPOOL_DIR, PUBLISH_BUDGET, MONITORS, CELERY, "
                     "DJANGO_TASKS, PROCRASTINATE, PROGRESS.",
                obj="TASKBADGER", id="taskbadger.E001"),
            checks.Warning(
                "No Task Badger API key: tasks run untracked.",
                hint="Set TASKBADGER['API_KEY'] (e.g. env.str(\"TASKBADGER_API_KEY\", default=None)) or the "
                     "TASKBADGER_API_KEY environment variable, or set TASKBADGER['ENABLED'] = False to track "
                     "nothing on purpose.",
                obj="TASKBADGER['API_KEY']", id="taskbadger.W001"),
            checks.Warning(
                "TASKBADGER['HOST'] uses plain HTTP to tb.example.com: the API key would travel unencrypted.",
                hint="Use https://, or plain HTTP only to a loopback host (127.0.0.1, localhost) in development.",
                obj="TASKBADGER['HOST']", id="taskbadger.W002"),
            checks.Info(
                "Celery beat runs 'demo.tasks.nightly_report' (entry 'nightly-report') with no Task Badger "
                "monitor.",
                hint="Create a monitor in Task Badger and add 'demo.tasks.nightly_report': '<monitor id>' to "
                     "TASKBADGER['MONITORS'] so that a missed or failed run raises an alert.",
                obj="CELERY_BEAT_SCHEDULE", id="taskbadger.I001"),
        ]


@pytest.mark.parametrize(("tags", "named"), [
    ({"environment": "production", "version": 2}, "'version' is int 2"),
    ({"team": ""}, "'team' is '', 0 characters"),
    ({"region": "x" * 300}, "'region' is 'xxxx"),
    ({7: "prod"}, "the name 7 is not a non-empty string"),
    (["production"], "got list"),
])
def test_a_tags_error_names_the_entry_to_fix(tags, named):
    [message] = [m for m in run(VALID, TAGS=tags) if m.id == "taskbadger.E003"]
    assert message.msg.startswith("TASKBADGER['TAGS'] must be a dict of names to strings of 2 to 255 characters, ")
    assert named in message.msg and "got dict" not in message.msg
    with pytest.raises(ConfigurationError, match=re.escape(named)):
        taskbadger.init(token=key(), tags=tags)


def test_an_init_call_before_django_started_is_a_warning_when_there_are_settings():
    # A newcomer copied `taskbadger.init(token=...)` into mysite/celery.py: TAGS and MONITORS were silently lost.
    from django.apps import apps

    taskbadger.init(token=key())
    conf.reset_state()
    try:
        apps.get_app_config("taskbadger_django").ready()
        [warning] = [m for m in run(VALID, TAGS={"environment": "production"}) if m.id == "taskbadger.W014"]
        assert "TASKBADGER setting is not applied" in warning.msg and "Remove the taskbadger.init()" in warning.hint
    finally:
        taskbadger.config.reset()
        conf.reset_state()
    assert "taskbadger.W014" not in ids(run(VALID))  # configured from the settings: nothing to say


@pytest.mark.parametrize("with_dict", [False, True])
def test_a_setting_named_for_a_key_of_the_dict_says_to_move_it(with_dict):
    """``TASKBADGER_API_KEY = "..."`` in settings.py: W001 only (no key), and TASKBADGER_HOST was taken for a misspelled
    TASKBADGER ("Rename TASKBADGER_HOST to TASKBADGER")."""
    with override_settings(TASKBADGER_API_KEY=key(), TASKBADGER_HOST="https://taskbadger.net"):
        messages = run({"TAGS": {"env": "test"}} if with_dict else None)
    stray = sorted((m.obj, m.hint) for m in messages if m.id == "taskbadger.W016")
    assert stray == [("TASKBADGER_API_KEY", stray[0][1]), ("TASKBADGER_HOST", stray[1][1])]
    assert "TASKBADGER = {'API_KEY': ...}" in stray[0][1]
    assert "taskbadger.W015" not in ids(messages)
    no_secret(messages)


def test_a_setting_the_dict_reads_its_key_from_is_no_warning():
    with override_settings(TASKBADGER_API_KEY=key()):
        assert "taskbadger.W016" not in ids(run(VALID))  # TASKBADGER = {"API_KEY": TASKBADGER_API_KEY, ...}


def test_a_host_with_a_path_over_plain_http_gets_both_warnings():
    messages = run(VALID, HOST="http://tb.example.com/taskbadger")
    assert {"taskbadger.W002", "taskbadger.W017"} <= set(ids(messages))


def test_monitors_checked_in_celerys_default_app_say_to_import_the_projects_app():
    """No Celery app of the project made (its module not imported by the project's __init__.py): W003 blamed
    the task name."""
    previous_default = celery_state.default_app
    celery_state._set_current_app(None)  # as in a process that made no app: current_app is the one Celery makes
    celery_state.default_app = None
    try:
        messages = run(VALID, MONITORS={"shop.nightly": MONITOR})
    finally:
        celery_state.default_app = previous_default
    [warning] = [m for m in messages if m.id == "taskbadger.W003"]
    assert "from .celery import app as celery_app" in warning.hint


def test_a_projects_app_made_the_default_one_is_not_taken_for_celerys_own(app):
    """Celery's Django fixup makes the project's app the default app (set_default) in every project laid out as
    Celery's guide has it: W003 said "no Celery app of this project is loaded" there, for any name matching no task."""
    previous_default = celery_state.default_app
    app.set_default()
    try:
        messages = run(VALID, MONITORS={"nightly_invoices": MONITOR})
    finally:
        celery_state.default_app = previous_default
    [warning] = [m for m in messages if m.id == "taskbadger.W003"]
    assert "from .celery import app as celery_app" not in warning.hint


@pytest.mark.parametrize("name", ["TASK_BADGER", "TASKBADGERS", "TASKBAGDER", "TASK_BADGER_"])
def test_a_misspelled_setting_name_is_a_warning(name):
    with override_settings(**{name: {"API_KEY": key()}}):
        [warning] = [m for m in run(None) if m.id == "taskbadger.W015"]
    assert warning.obj == name and f"Rename {name} to TASKBADGER" in warning.hint
    assert "taskbadger.W015" not in ids(run(VALID))
