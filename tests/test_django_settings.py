"""taskbadger_django settings: precedence, AppConfig.ready(), override_settings round trip, Celery wiring."""

import base64
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from django.apps import apps
from django.core.checks import run_checks
from django.test import override_settings

import taskbadger
import taskbadger_django
from taskbadger import config as sdk_config
from taskbadger.celery import Task
from taskbadger.systems.celery import CelerySystemIntegration
from taskbadger_django import conf

ROOT = Path(__file__).resolve().parent.parent


def key(org="acme", project="demo", secret="s3cret-key"):
    return base64.b64encode(f"{org}/{project}/{secret}".encode()).decode()


def before_create(fields):
    return {**fields, "data": {**(fields.get("data") or {}), "seen": True}}


@pytest.fixture(autouse=True)
def _fresh_conf():
    conf.reset_state()
    yield
    conf.reset_state()


# -- package surface -------------------------------------------------------------------------------


def test_task_is_reexported_lazily_without_importing_celery():
    assert taskbadger_django.Task is Task
    code = "import sys, taskbadger_django; assert 'celery' not in sys.modules, 'celery imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
    with pytest.raises(AttributeError):
        taskbadger_django.Nope  # noqa: B018


# -- precedence ------------------------------------------------------------------------------------


def test_defaults():
    settings = conf.TaskBadgerSettings({})
    assert settings.HOST == "https://taskbadger.net"
    assert (settings.API_KEY, settings.ENABLED, settings.TAGS, settings.MONITORS) == (None, True, {}, {})
    assert settings.TIMEOUT is None
    assert settings.CELERY == conf.CELERY_DEFAULTS
    assert settings.source("HOST") == conf.DEFAULT


def test_env_only_configuration(monkeypatch):
    monkeypatch.setenv("TASKBADGER_API_KEY", key(org="envorg"))
    monkeypatch.setenv("TASKBADGER_HOST", "http://127.0.0.1:9")
    with override_settings(TASKBADGER={}):
        config = taskbadger.get_config()
        assert (config.organization_slug, config.project_slug, config.host) == ("envorg", "demo", "http://127.0.0.1:9")
        assert config.timeout == sdk_config.DEFAULT_TIMEOUT == (2.0, 5.0)
        assert conf.get_settings().source("API_KEY") == conf.ENVIRONMENT
    with override_settings(TASKBADGER=None):  # no TASKBADGER setting at all: env only
        assert taskbadger.get_config().organization_slug == "envorg"


def test_a_blank_key_or_host_in_the_dict_falls_back_to_the_environment(monkeypatch):
    """``"API_KEY": os.environ.get("MY_KEY", "")`` in settings.py, with TASKBADGER_API_KEY exported: the exported key
    is used (as ``taskbadger.init(token="")`` does), and the no-key warning is not given."""
    monkeypatch.setenv("TASKBADGER_API_KEY", key(org="envorg"))
    monkeypatch.setenv("TASKBADGER_HOST", "http://127.0.0.1:9")
    with override_settings(TASKBADGER={"API_KEY": "", "HOST": "  "}):
        config = taskbadger.get_config()
        assert config is not None and (config.organization_slug, config.host) == ("envorg", "http://127.0.0.1:9")
        assert conf.get_settings().source("API_KEY") == conf.ENVIRONMENT
        assert not [m for m in run_checks() if m.id == "taskbadger.W001"]
    monkeypatch.delenv("TASKBADGER_API_KEY")
    with override_settings(TASKBADGER={"API_KEY": ""}):  # blank and nothing exported: no key, said as such
        assert taskbadger.get_config() is None
        assert [m for m in run_checks() if m.id == "taskbadger.W001"]


def test_leaving_an_override_restores_the_tags_tasks_are_created_with(taskbadger_server):
    """``init(tags=...)`` also sets the scope's tags: leaving ``override_settings`` restored the configuration, but
    tasks created after it still carried the override's tags."""
    base = {"API_KEY": taskbadger_server.api_key, "HOST": taskbadger_server.url, "TAGS": {"env": "base"}}
    with override_settings(TASKBADGER=base):
        taskbadger.current_scope().tag({"request": "r1"})  # a scope tag of the code's own, from before the override
        with override_settings(TASKBADGER={**base, "TAGS": {"env": "ov", "tenant": "t1"}}):
            assert taskbadger.create_task("inside").tags == {"env": "ov", "tenant": "t1"}
        assert taskbadger.create_task("after").tags == {"env": "base", "request": "r1"}
        assert taskbadger_server.tasks_named("after")[0]["tags"] == {"env": "base", "request": "r1"}


def test_a_typo_in_configure_names_the_setting_shows_no_key_and_leaves_nothing_behind(taskbadger_server):
    """``configure(api_key=..., tag=...)``: the TypeError's frames showed the key in their locals (a debug page, a
    crash reporter), and the bad name was remembered, so every later configure() (an override entered) raised too."""
    import traceback

    api_key = taskbadger_server.api_key
    secret_part = base64.b64decode(api_key).decode().rsplit("/", 1)[-1]
    with pytest.raises(TypeError, match=r"tag \(did you mean tags\?\)") as info:
        conf.configure(api_key=str(api_key), tag={"env": "prod"})
    frames = [frame for frame in traceback.TracebackException.from_exception(info.value, capture_locals=True).stack
              if frame.filename.endswith("conf.py")]  # ours: configure() and TaskBadgerSettings.__init__
    shown = repr([frame.locals for frame in frames])
    assert len(frames) == 2 and "overrides" in shown  # the frames and their locals are there...
    assert api_key not in shown and secret_part not in shown  # ...the key is not
    with override_settings(TASKBADGER={"API_KEY": api_key, "HOST": taskbadger_server.url, "TAGS": {"env": "ok"}}):
        assert taskbadger.get_config().tags == {"env": "ok"}


def test_dict_wins_over_env_and_explicit_arguments_win_over_dict(monkeypatch):
    monkeypatch.setenv("TASKBADGER_API_KEY", key(org="envorg"))
    with override_settings(TASKBADGER={"API_KEY": key(org="dictorg"), "TAGS": {"from": "dict"}}):
        assert taskbadger.get_config().organization_slug == "dictorg"
        assert conf.get_settings().source("API_KEY") == conf.SETTINGS
        config = conf.configure(api_key=key(org="argorg"))
        assert config.organization_slug == "argorg"
        assert config.tags == {"from": "dict"}  # the other settings still come from the dict
    assert conf.TaskBadgerSettings({"HOST": "https://a.test"}, {"host": "https://b.test"}).HOST == "https://b.test"
    with pytest.raises(TypeError, match="nope"):
        conf.TaskBadgerSettings({}, {"nope": 1})


def test_dict_configuration_reaches_the_sdk():
    monitor, reports_monitor = str(uuid.uuid4()), str(uuid.uuid4())
    settings = {
        "API_KEY": key(), "HOST": "https://tb.example.test/", "TAGS": {"environment": "production"},
        "BEFORE_CREATE": "tests.test_django_settings.before_create", "TIMEOUT": (1, 3),
        "MONITORS": {"billing.tasks.nightly": monitor, r"reports\..*": reports_monitor},
        "CELERY": {"AUTO_TRACK": True, "INCLUDES": [r"billing\..*"], "EXCLUDES": None, "RECORD_TASK_ARGS": True,
                   "HEARTBEAT_INTERVAL": 10, "STALE_TIMEOUT": 60},
    }
    with override_settings(TASKBADGER=settings):
        config = taskbadger.get_config()
        assert (config.host, config.tags, config.timeout) == ("https://tb.example.test", {"environment": "production"},
                                                              (1.0, 3.0))
        assert config.before_create is before_create
        assert "s3cret" not in repr(config) and "s3cret" not in repr(conf.get_settings())
        system = config.system("celery")
        assert isinstance(system, CelerySystemIntegration)
        assert (system.auto_track_tasks, system.record_task_args, system.heartbeat_interval, system.stale_timeout) == (
            True, True, 10, 60)
        assert system.track_task("billing.invoice") and not system.track_task("other.task")
        assert system.monitor_for("billing.tasks.nightly") == monitor
        assert system.monitor_for("reports.daily") == reports_monitor


def test_celery_integration_is_always_present_with_auto_track_off_by_default():
    with override_settings(TASKBADGER={"API_KEY": key()}):
        system = taskbadger.get_config().system("celery")
        assert isinstance(system, CelerySystemIntegration)
        assert system.auto_track_tasks is False and system.monitors == {}


def test_without_celery_no_system_is_configured(monkeypatch):
    monkeypatch.setattr(conf, "celery_available", lambda: False)
    monkeypatch.setattr(conf, "django_tasks_available", lambda: False)
    with override_settings(TASKBADGER={"API_KEY": key(), "MONITORS": {"a.b": str(uuid.uuid4())}}):
        assert taskbadger.get_config().systems == {}


def test_app_works_without_celery_installed(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["celery"] = None   # as if Celery were not installed
        import django
        from django.conf import settings
        settings.configure(INSTALLED_APPS=["taskbadger_django"],
                           TASKBADGER={{"API_KEY": {key()!r}, "MONITORS": {{"x": "not-a-uuid"}}}})
        django.setup()
        import taskbadger
        from django.core.checks import run_checks
        from django.test import override_settings
        # a bad monitor id refuses the settings without Celery too (the same settings, the same outcome)
        print(taskbadger.get_config(), sorted(m.id for m in run_checks()))
        with override_settings(TASKBADGER={{"API_KEY": {key()!r}, "MONITORS": {{"x": {str(uuid.uuid4())!r}}}}}):
            print(taskbadger.get_config().organization_slug, sorted(taskbadger.get_config().systems),
                  sorted(m.id for m in run_checks()))
        try:
            import taskbadger_django
            taskbadger_django.Task
        except ImportError as err:
            print(str(err).split(" (")[0])
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBADGER_") and k != "DJANGO_SETTINGS_MODULE"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=60)
    assert out.stdout.splitlines() == [
        "None ['taskbadger.E006']",
        f"acme {['django_tasks'] if conf.django_tasks_available() else []} []",  # no Celery system
        'taskbadger_django.Task needs Celery: pip install "django-taskbadger[celery]"',
    ], out.stderr


# -- enabled / missing key / invalid ---------------------------------------------------------------


def test_disabled_resets_the_sdk_and_nothing_is_sent(taskbadger_server):
    assert taskbadger.is_configured()  # the fixture configured it
    with override_settings(TASKBADGER={"API_KEY": taskbadger_server.api_key, "HOST": taskbadger_server.url,
                                       "ENABLED": False}):
        assert not taskbadger.is_configured()
        assert taskbadger.create_task_safe("not sent") is None
    assert taskbadger_server.requests == []
    assert taskbadger.is_configured()  # leaving the override restored the fixture's configuration


def test_no_key_runs_untracked_with_one_info_line_per_process(caplog):
    caplog.set_level(logging.DEBUG, logger="taskbadger")
    with override_settings(TASKBADGER={"TAGS": {"a": "bc"}}):
        assert conf.configure() is None
        assert conf.configure() is None
        assert not taskbadger.is_configured()
    lines = [r for r in caplog.records if "no API key" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO


def test_invalid_settings_are_logged_not_raised(caplog):
    with override_settings(TASKBADGER={"API_KEY": key(), "HOST": "not a url"}):
        assert not taskbadger.is_configured()
        assert "setting has errors, so it is not applied" in conf.unconfigured_reason()
    with override_settings(TASKBADGER={"API_KEY": key(), "ENABLED": "no"}):
        assert not taskbadger.is_configured()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("host must be a URL" in m for m in errors) and any("ENABLED" in m for m in errors)
    assert not any("s3cret" in m for m in caplog.messages)


def test_a_typo_key_and_a_bad_monitor_id_refuse_the_whole_setting_with_one_line(caplog, taskbadger_server):
    """Issue 21, item 4: a typo key ("TAG") and a monitor id that is not a UUID used to be dropped while the
    rest applied (tasks tracked without the tags and the monitor). Now nothing of the setting is applied, one
    ERROR line names both problems, and a publish creates no task."""
    monitor = str(uuid.uuid4())
    bad = {"API_KEY": taskbadger_server.api_key, "HOST": taskbadger_server.url, "TAG": {"environment": "prod"},
           "MONITORS": {"demo.tasks.nightly_report": "nightly-monitor", "demo.tasks.add": monitor}}
    with override_settings(TASKBADGER=bad):
        assert not taskbadger.is_configured()
        assert taskbadger.create_task_safe("not sent") is None
        assert sdk_config.unconfigured_reason() == conf.unconfigured_reason()  # what the worker's start line says
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert line == ("Task Badger: tasks run untracked: the TASKBADGER setting has errors, so it is not applied: "
                    "unknown key 'TAG' in TASKBADGER (did you mean 'TAGS'?); monitors entry "
                    "'demo.tasks.nightly_report' -> 'nightly-monitor': the key must be a task name or pattern and "
                    "the value a monitor id (a UUID); copy the id from the monitor's page in Task Badger. "
                    "Run `manage.py check` for how to fix each.")
    assert [r for r in taskbadger_server.requests if r.method == "POST"] == []
    fixed = {**bad, "MONITORS": {"demo.tasks.add": monitor}}
    fixed["TAGS"] = fixed.pop("TAG")
    with override_settings(TASKBADGER=fixed):
        assert taskbadger.create_task("sent").tags == {"environment": "prod"}


# -- override_settings round trip, idempotency, ready() ------------------------------------------------


def test_override_settings_round_trip():
    assert not taskbadger.is_configured()
    with override_settings(TASKBADGER={"API_KEY": key(org="outer"), "TAGS": {"level": "outer"}}):
        outer = taskbadger.get_config()
        assert (outer.organization_slug, outer.tags) == ("outer", {"level": "outer"})
        with override_settings(TASKBADGER={"API_KEY": key(org="inner"), "TAGS": {"level": "inner"}}):
            inner = taskbadger.get_config()
            assert (inner.organization_slug, inner.tags) == ("inner", {"level": "inner"})
            assert conf.get_settings().TAGS == {"level": "inner"}
        assert taskbadger.get_config() is outer
        assert conf.get_settings().TAGS == {"level": "outer"}
    assert not taskbadger.is_configured()


def test_round_trip_restores_a_configuration_made_in_code(taskbadger_server):
    before = taskbadger.get_config()
    with override_settings(TASKBADGER={"API_KEY": key(org="other")}):
        assert taskbadger.get_config().organization_slug == "other"
    assert taskbadger.get_config() is before


def test_configure_is_idempotent_and_ready_can_run_again():
    with override_settings(TASKBADGER={"API_KEY": key()}):
        first = taskbadger.get_config()
        assert conf.configure() is first
        apps.get_app_config("taskbadger_django").ready()
        assert taskbadger.get_config() is first


def test_ready_keeps_a_configuration_made_in_code_before_django_started(caplog):
    explicit = taskbadger.init(token=key(org="explicit"))
    with override_settings(TASKBADGER={"API_KEY": key(org="settings")}):
        pass  # leaving restores the explicit configuration
    conf.reset_state()
    apps.get_app_config("taskbadger_django").ready()
    assert taskbadger.get_config() is explicit
    assert any("before Django started" in m for m in caplog.messages)


def test_worker_and_beat_startup_configures_the_sdk():
    """``celery worker`` and ``celery beat`` set Django up through Celery's Django fixup when they import
    the task modules (``loader.import_default_modules()``); that runs ready()."""
    script = textwrap.dedent("""
        from testproject.celery import app
        app.loader.import_default_modules()   # what worker and beat do at startup
        import taskbadger
        config = taskbadger.get_config()
        print(config.organization_slug, sorted(config.system("celery").monitors), "demo.tasks.nightly_report"
              in app.tasks)
    """)
    env = {**os.environ, "TASKBADGER_API_KEY": key(org="workerorg"), "DJANGO_SETTINGS_MODULE": "testproject.settings"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=60)
    assert out.stdout.strip() == "workerorg ['demo.tasks.nightly_report'] True", out.stderr
    assert "s3cret" not in out.stderr


# -- the user's day: MONITORS from settings on a base=Task task ---------------------------------------------


def test_monitors_from_settings_apply_to_base_class_tasks(taskbadger_server, memory_app):
    @memory_app.task(shared=False, base=Task, name="billing.tasks.nightly_invoices")
    def nightly_invoices(customer_ids):
        return len(customer_ids)

    @memory_app.task(shared=False, base=Task, name="reports.weekly")
    def weekly():
        return None

    exact, pattern = str(uuid.uuid4()), str(uuid.uuid4())
    settings = {"API_KEY": taskbadger_server.api_key, "HOST": taskbadger_server.url, "TAGS": {"env": "test"},
                "MONITORS": {"billing.tasks.nightly_invoices": exact, r"reports\..*": pattern}}
    with override_settings(TASKBADGER=settings):
        result = nightly_invoices.delay([1, 2, 3])
        weekly.delay()
    task = taskbadger_server.get_task(result.taskbadger_task_id)
    assert (task["name"], task["status"], task["monitor_id"], task["tags"]) == (
        "billing.tasks.nightly_invoices", "pending", exact, {"env": "test"})
    assert taskbadger_server.tasks_named("reports.weekly")[0]["monitor_id"] == pattern


def test_a_monitor_left_unset_is_not_replaced_by_a_pattern(taskbadger_server, memory_app):
    """README: a MONITORS value of None means no monitor (an id read from the environment, unset in development).
    A broader pattern further on must not give that task its monitor instead: the catch-all monitor would get
    check-ins at the wrong times."""

    @memory_app.task(shared=False, base=Task, name="billing.tasks.nightly_invoices")
    def nightly_invoices():
        return None

    @memory_app.task(shared=False, base=Task, name="billing.tasks.hourly_sync")
    def hourly_sync():
        return None

    @memory_app.task(shared=False, base=Task, name="billing.tasks.weekly_digest")
    def weekly_digest():
        return None

    catch_all = str(uuid.uuid4())
    settings = {"API_KEY": taskbadger_server.api_key, "HOST": taskbadger_server.url,
                "MONITORS": {"billing.tasks.nightly_invoices": None,  # env.str("NIGHTLY_MONITOR", default=None)
                             r"billing\.tasks\.weekly_.*": None, r"billing\.tasks\..*": catch_all}}
    with override_settings(TASKBADGER=settings):
        for task in (nightly_invoices, hourly_sync, weekly_digest):
            task.delay()
    monitors = {t["name"]: t["monitor_id"] for t in taskbadger_server.tasks.values()}
    assert monitors == {"billing.tasks.nightly_invoices": None, "billing.tasks.hourly_sync": catch_all,
                        "billing.tasks.weekly_digest": None}
