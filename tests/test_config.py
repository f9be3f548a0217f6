"""taskbadger.init(): keys, environment fallbacks, clear errors, process-wide visibility."""

import base64
import subprocess
import sys
import threading
import warnings

import pytest

import taskbadger
from taskbadger import config
from taskbadger.exceptions import ConfigurationError, MissingConfiguration


def project_key(org="acme", project="demo", key="secret-key-123"):
    return base64.b64encode(f"{org}/{project}/{key}".encode()).decode()


def test_project_key_gives_organization_and_project():
    cfg = taskbadger.init(token=project_key())
    assert (cfg.organization_slug, cfg.project_slug, cfg.token) == ("acme", "demo", "secret-key-123")
    assert cfg.host == "https://taskbadger.net"
    assert taskbadger.is_configured()


def test_legacy_key_needs_slugs_and_warns():
    with pytest.warns(DeprecationWarning, match="Legacy"):
        cfg = taskbadger.init(token="legacykey", organization_slug="org", project_slug="proj")
    assert (cfg.organization_slug, cfg.project_slug, cfg.token) == ("org", "proj", "legacykey")


def test_legacy_key_without_slugs_names_what_is_missing():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(MissingConfiguration) as info:
            taskbadger.init(token="legacykey", organization_slug="org")
    assert info.value.missing == ["project_slug"]
    assert "TASKBADGER_PROJECT" in str(info.value)
    assert not taskbadger.is_configured()


def test_missing_token_names_the_env_var():
    with pytest.raises(MissingConfiguration) as info:
        taskbadger.init()
    assert info.value.missing == ["token"]
    assert "TASKBADGER_API_KEY" in str(info.value)


def test_env_vars_are_fallbacks_and_arguments_win(monkeypatch):
    monkeypatch.setenv("TASKBADGER_API_KEY", project_key(org="envorg"))
    monkeypatch.setenv("TASKBADGER_HOST", "http://127.0.0.1:9999/")
    cfg = taskbadger.init()
    assert cfg.organization_slug == "envorg"
    assert cfg.host == "http://127.0.0.1:9999"
    cfg = taskbadger.init(token=project_key(org="argorg"), host="https://example.test")
    assert (cfg.organization_slug, cfg.host) == ("argorg", "https://example.test")


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("TASKBADGER_HOST", "taskbadger.net", "Task Badger host must be a URL"),
    ("TASKBADGER_PUBLISH_BUDGET", "0", "publish_budget must be seconds"),
    ("TASKBADGER_HTTP_TIMEOUT", "inf", "timeout values must be numbers of seconds"),
    ("TASKBADGER_SPOOL_DIR", "/tmp/x\x07y", "spool_dir must be a directory path"),
    ("TASKBADGER_API_KEY", project_key() + "\n", "The Task Badger API key has whitespace around it"),
    ("TASKBADGER_API_KEY", "changeme", "This does not look like a Task Badger API key"),
])
def test_a_value_refused_from_the_environment_names_its_variable(monkeypatch, variable, value, says):
    # The message named the argument (host, publish_budget...) that the code calling init() never passed.
    if variable != "TASKBADGER_API_KEY":
        monkeypatch.setenv("TASKBADGER_API_KEY", project_key())
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as info:
        taskbadger.init()
    assert says in str(info.value) and f"(from the environment variable {variable})" in str(info.value)
    assert "secret-key-123" not in str(info.value)


def test_the_same_value_given_as_an_argument_is_not_said_to_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("TASKBADGER_HOST", "taskbadger.net")
    with pytest.raises(ConfigurationError) as info:
        taskbadger.init(token=project_key(), host="taskbadger.net")
    assert "environment" not in str(info.value)


@pytest.mark.parametrize("variable", ["TASKBADGER_HOST", "TASKBADGER_PUBLISH_BUDGET"])
def test_a_blank_variable_counts_as_not_set_as_in_the_django_app(monkeypatch, variable):
    # TASKBADGER_HOST=" " (a template that left it empty) raised "host must be a URL ..., got '  '"
    monkeypatch.setenv(variable, "  ")
    cfg = taskbadger.init(token=project_key())
    assert (cfg.host, cfg.organization_slug, cfg.publish_budget) == ("https://taskbadger.net", "acme", 1.0)


@pytest.mark.parametrize("name", ["systems", "context_providers"])
def test_one_integration_not_in_a_list_is_a_configuration_error(name):
    # init(systems=CelerySystemIntegration()) raised TypeError: 'CelerySystemIntegration' object is not iterable
    with pytest.raises(ConfigurationError, match=f"{name} must be a list, e.g. {name}=\\["):
        taskbadger.init(token=project_key(), **{name: 5})


def test_legacy_env_slugs(monkeypatch):
    monkeypatch.setenv("TASKBADGER_ORG", "o")
    monkeypatch.setenv("TASKBADGER_PROJECT", "p")
    with pytest.warns(DeprecationWarning):
        cfg = taskbadger.init(token="legacy")
    assert (cfg.organization_slug, cfg.project_slug) == ("o", "p")


@pytest.mark.parametrize(
    "token",
    [
        base64.b64encode(b"acme/demo").decode(),  # two parts
        base64.b64encode(b"acme//key").decode(),  # empty part
        project_key() + "\n",  # pasted with a newline
        "abc def",
    ],
)
def test_malformed_key_is_a_clear_configuration_error(token):
    with pytest.raises(ConfigurationError, match="key") as info:
        taskbadger.init(token=token)
    assert not isinstance(info.value, MissingConfiguration)
    assert "secret" not in str(info.value) and token.strip() not in str(info.value)


@pytest.mark.parametrize("host", ["taskbadger.net", "ftp://x.test", "http://", "https://x.test/?a=1",
                                  "http://127.0.0.1:1#", "http://127.0.0.1:1?", "http://127.0.0.1:1/#/",
                                  "http://127.0.0.1:188110", "http://127.0.0.1:0", "http://127.0.0.1:80x"])
def test_malformed_host(host):
    with pytest.raises(ConfigurationError, match="host"):
        taskbadger.init(token=project_key(), host=host)


@pytest.mark.parametrize("timeout,expected", [(3, (3.0, 3.0)), ((1, 4.5), (1.0, 4.5))])
def test_timeout_accepts_seconds_or_pair(timeout, expected):
    assert taskbadger.init(token=project_key(), timeout=timeout).timeout == expected


@pytest.mark.parametrize("timeout", [0, -1, "5", (1, 2, 3), (1, None), float("inf"), float("nan"), (1, 1e300), 601,
                                     (1e-300, 1e-300), (2, 0.001)])
def test_bad_timeout(timeout):
    with pytest.raises(ConfigurationError, match="timeout"):
        taskbadger.init(token=project_key(), timeout=timeout)


def test_a_timeout_from_the_environment_that_cannot_be_a_deadline_is_refused(monkeypatch):
    monkeypatch.setenv("TASKBADGER_HTTP_TIMEOUT", "inf")
    with pytest.raises(ConfigurationError, match="timeout"):
        taskbadger.init(token=project_key())


@pytest.mark.parametrize("tags", [{"env": "p"}, {"env": ""}, {"env": "x" * 256}, {"": "prod"}])
def test_tags_the_api_would_refuse_are_refused_at_init(tags):
    # else every create of the process is refused by the API (400), and every task runs untracked
    with pytest.raises(ConfigurationError, match="tags must be a dict of names to strings of 2 to 255 characters"):
        taskbadger.init(token=project_key(), tags=tags)


def test_publish_budget_from_argument_environment_or_default(monkeypatch):
    assert taskbadger.init(token=project_key()).publish_budget == 1.0
    monkeypatch.setenv("TASKBADGER_PUBLISH_BUDGET", "0.25")
    assert taskbadger.init(token=project_key()).publish_budget == 0.25
    assert taskbadger.init(token=project_key(), publish_budget=2).publish_budget == 2.0


@pytest.mark.parametrize("budget", [0, -1, 31, "soon", True])
def test_bad_publish_budget(budget, monkeypatch):
    with pytest.raises(ConfigurationError, match="publish_budget"):
        taskbadger.init(token=project_key(), publish_budget=budget)


def test_before_create_dotted_path_and_bad_path():
    cfg = taskbadger.init(token=project_key(), before_create="copy.deepcopy")
    import copy

    assert cfg.before_create is copy.deepcopy
    with pytest.raises(ConfigurationError, match="cannot be imported"):
        taskbadger.init(token=project_key(), before_create="no_such_module.func")


def test_key_never_in_repr_or_str():
    cfg = taskbadger.init(token=project_key(key="topsecretvalue"))
    assert "topsecretvalue" not in repr(cfg)
    assert "topsecretvalue" not in str(cfg)


def test_config_set_in_main_thread_is_seen_by_other_threads():
    taskbadger.init(token=project_key(org="threaded"))
    seen = []
    thread = threading.Thread(target=lambda: seen.append(config.get_config().organization_slug))
    thread.start()
    thread.join()
    assert seen == ["threaded"]


def test_import_taskbadger_imports_neither_django_nor_celery():
    import subprocess
    import sys

    code = "import sys, taskbadger, taskbadger.systems; print('django' in sys.modules, 'celery' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_a_key_that_is_neither_a_project_key_nor_a_legacy_key_says_so():
    """Issue 21, item 5: `TASKBADGER_API_KEY=not-a-key` was described as a legacy key needing slugs."""
    assert config.key_kind(project_key()) == "project"
    assert config.key_kind("abcd1234.Secret0987") == "legacy"  # a prefix, a dot and a secret
    assert config.key_kind("not-a-key") == "unknown"
    with pytest.raises(ConfigurationError) as info:
        taskbadger.init(token="not-a-key")
    assert str(info.value) == config.NOT_A_KEY and not isinstance(info.value, MissingConfiguration)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(MissingConfiguration) as legacy:
            taskbadger.init(token="abcd1234.Secret0987")
    assert legacy.value.missing == ["organization_slug", "project_slug"] and str(legacy.value).endswith("only).")
    with pytest.warns(DeprecationWarning):  # with an organization and a project, any key is used as a legacy key
        assert taskbadger.init(token="not-a-key", organization_slug="o", project_slug="p").token == "not-a-key"


@pytest.mark.parametrize("host", ["https://user:hunter2@example.com", "https://hunter2@example.com/",
                                  "http://:hunter2@127.0.0.1:8000", "admin:hunter2@taskbadger.example.com",
                                  "https:/user:hunter2@example.com", "https:user:hunter2@example.com"])
def test_a_host_holding_a_user_or_password_is_refused_without_showing_it(host, monkeypatch):
    # it was accepted, shown in full by `taskbadger info` and every error message, and sent as the Host header
    with pytest.raises(ConfigurationError, match="must not hold a user or password") as refused:
        taskbadger.init(token=project_key(), host=host)
    assert "hunter2" not in str(refused.value)
    monkeypatch.setenv("TASKBADGER_HOST", host)
    monkeypatch.setenv("TASKBADGER_API_KEY", project_key())
    info = subprocess.run([sys.executable, "-m", "taskbadger.cli", "info"], capture_output=True, text=True, timeout=60)
    assert "Note: Task Badger host must not hold a user or password" in info.stdout
    assert "hunter2" not in info.stdout + info.stderr


def test_a_key_given_as_bytes_is_read_and_one_of_another_type_is_refused_clearly():
    """As read from a file or a secret store (the official SDK takes bytes): it raised AttributeError."""
    cfg = taskbadger.init(token=project_key().encode())
    assert (cfg.organization_slug, cfg.project_slug, cfg.token) == ("acme", "demo", "secret-key-123")
    with pytest.raises(ConfigurationError, match="must be a string, got int"):
        taskbadger.init(token=12345)
    with pytest.raises(ConfigurationError, match="not ASCII"):
        taskbadger.init(token="clé".encode())


CANARY = "LEAKCANARY-secret-7f3a"


def _locals_of(err):
    """What a crash reporter that captures frame locals (or Django's debug page) shows for ``err``, from the
    SDK's frames on (the test's own frame holds the key it passed)."""
    import traceback

    inner = err.__traceback__.tb_next
    return "".join(traceback.TracebackException(type(err), err, inner, capture_locals=True).format())


@pytest.mark.parametrize("from_env", [False, True])
@pytest.mark.parametrize("bad", [{"tags": {"a": 5}}, {"host": "ftp://example.com"}, {"timeout": -1},
                                 {"before_create": "no.such.module.func"}, {"spool_dir": "\x01"}])
def test_the_key_is_not_in_the_locals_of_a_configuration_error(bad, from_env, monkeypatch):
    key = project_key(key=CANARY)
    if from_env:
        monkeypatch.setenv("TASKBADGER_API_KEY", key)
    with pytest.raises(ConfigurationError) as raised:
        taskbadger.init(**({} if from_env else {"token": key}), **bad)
    shown = _locals_of(raised.value)
    assert "build_config" in shown  # the frames are there, with their locals
    assert CANARY not in shown and key not in shown


@pytest.mark.filterwarnings("ignore:Legacy API keys are deprecated")  # the legacy case: warned, then refused
@pytest.mark.parametrize("token", [project_key(key=CANARY + "\x01"), "legacy." + CANARY])
def test_the_key_is_not_in_the_locals_of_a_refused_key(token):
    with pytest.raises((ConfigurationError, MissingConfiguration)) as raised:
        taskbadger.init(token=token)
    assert CANARY not in _locals_of(raised.value)


def test_the_key_is_not_in_vars_or_asdict_of_the_config():
    import dataclasses

    cfg = taskbadger.init(token=project_key(key=CANARY))
    assert cfg.token == CANARY  # what is sent is the key itself
    assert CANARY not in repr(vars(cfg)) and CANARY not in repr(dataclasses.asdict(cfg))
    assert CANARY not in repr(config.parse_project_key(project_key(key=CANARY)))


@pytest.mark.parametrize("field,value", [("token", "k\r\nX-Injected: yes"), ("token", "k\x00"), ("token", ""),
                                         ("host", "http://127.0.0.1:1\r\nX-Injected: yes"),
                                         ("organization_slug", "acme HTTP/1.1\r\nX-Injected: yes"),
                                         ("project_slug", "demo\n")])
def test_a_config_made_directly_refuses_what_would_change_a_request(field, value):
    """``taskbadger.Config`` is public, and ``dataclasses.replace`` makes one from another: a value with a control
    character (or one that is no key, host or slug) is refused there, and never reaches a request line or header
    (a CR LF in the key added a header to every request)."""
    import dataclasses

    good = dict(host="http://127.0.0.1:1", organization_slug="acme", project_slug="demo", token="k")
    with pytest.raises(ConfigurationError):
        config.Config(**{**good, field: value})
    with pytest.raises(ConfigurationError):
        dataclasses.replace(config.Config(**good), **{field: value})


def test_a_call_before_init_says_init_is_missing_when_the_key_is_set(monkeypatch):
    """TASKBADGER_API_KEY exported, taskbadger.init() never called (docs/procrastinate.md's first example before it
    was fixed): the error said to set TASKBADGER_API_KEY, which was set."""
    monkeypatch.setenv("TASKBADGER_API_KEY", project_key())
    with pytest.raises(MissingConfiguration) as raised:
        taskbadger.create_task("report")
    assert "taskbadger.init() was not called" in str(raised.value)
    assert "set TASKBADGER_API_KEY" not in str(raised.value)
    monkeypatch.delenv("TASKBADGER_API_KEY")
    with pytest.raises(MissingConfiguration, match=r"token \(pass token= to taskbadger.init\(\) or set "
                                                   r"TASKBADGER_API_KEY\)"):
        taskbadger.create_task("report")
