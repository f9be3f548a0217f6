"""taskbadger_django.testing: the TestCase mixin and use_server() for pytest."""

import base64
import unittest
import uuid

import pytest
from celery import Celery
from celery import _state as celery_state
from django.test import SimpleTestCase, override_settings

import taskbadger
from taskbadger.celery import Task
from taskbadger_django import conf
from taskbadger_django.testing import TaskBadgerTestCaseMixin, use_server

MONITOR = str(uuid.uuid4())
app = Celery("tbdjango-testing", broker="memory://", set_as_current=False)


@app.task(shared=False, base=Task, name="billing.tasks.nightly_invoices")
def nightly_invoices(customer_ids):
    return len(customer_ids)


@pytest.fixture(autouse=True)
def _fresh_conf():
    conf.reset_state()
    yield
    conf.reset_state()


@override_settings(TASKBADGER={"TAGS": {"environment": "test"},
                               "MONITORS": {"billing.tasks.nightly_invoices": MONITOR}})
class MixinTests(TaskBadgerTestCaseMixin, SimpleTestCase):
    """What a user's test looks like."""

    def test_tracked_task_with_status(self):
        task = taskbadger.create_task("export")
        task.success(value=100)
        tracked = self.assertTaskTracked("export", status="success")
        self.assertEqual(tracked["value"], 100)
        self.assertEqual(tracked["tags"], {"environment": "test"})  # the project's settings apply
        self.assertTaskNotTracked("import")

    def test_celery_task_published_with_the_monitor_from_settings(self):
        previous = celery_state._tls.current_app
        app.set_current()
        try:
            nightly_invoices.delay([1, 2])
        finally:
            celery_state._set_current_app(previous)
        task = self.assertTaskTracked("billing.tasks.nightly_invoices", status="pending")
        self.assertEqual(task["monitor_id"], MONITOR)

    def test_each_test_starts_with_an_empty_server(self):
        self.assertEqual(self.taskbadger_tasks, [])
        taskbadger.create_task("one")
        self.assertEqual([t["name"] for t in self.taskbadger_tasks], ["one"])

    def test_failures_say_what_was_tracked(self):
        taskbadger.create_task("export")
        with self.assertRaises(self.failureException) as info:
            self.assertTaskTracked("export", status="success", timeout=0)
        self.assertIn("No task 'export' with status 'success' was tracked", str(info.exception))
        self.assertIn("('export', 'pending')", str(info.exception))
        with self.assertRaises(self.failureException):
            self.assertTaskNotTracked("export")
        with self.assertRaises(self.failureException):
            self.assertTaskTracked("never", timeout=0)

    def test_a_failure_under_eager_celery_says_eager_runs_are_not_tracked(self):
        previous = celery_state._tls.current_app
        app.set_current()
        app.conf.task_always_eager = True
        try:
            nightly_invoices.delay([1, 2])
            with self.assertRaises(self.failureException) as info:
                self.assertTaskTracked("billing.tasks.nightly_invoices", timeout=0)
        finally:
            app.conf.task_always_eager = False
            celery_state._set_current_app(previous)
        self.assertIn("eager runs are not tracked", str(info.exception))

    def test_injected_faults(self):
        self.taskbadger_server.fail(503)
        self.assertIsNone(taskbadger.create_task_safe("lost"))
        self.assertTaskNotTracked("lost")


def test_mixin_restores_the_previous_configuration():
    class Inner(TaskBadgerTestCaseMixin, SimpleTestCase):
        def test_points_at_the_stand_in_server(self):
            self.assertEqual(taskbadger.get_config().host, self.taskbadger_server.url)
            taskbadger.create_task("inner")
            self.assertTaskTracked("inner")

    before = taskbadger.init(token=base64.b64encode(b"acme/demo/outer").decode(), host="https://example.test")
    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromTestCase(Inner).run(result)
    assert result.wasSuccessful(), result.errors + result.failures
    assert taskbadger.get_config() is before
    assert not Inner.taskbadger_server.listening  # stopped with the class


def test_use_server_with_the_pytest_fixture(taskbadger_server):
    fixture_config = taskbadger.get_config()
    with override_settings(TASKBADGER={"TAGS": {"environment": "test"}, "ENABLED": False}):
        with use_server(taskbadger_server, tags={"run": "ci"}) as config:
            assert config.host == taskbadger_server.url
            taskbadger.create_task("with settings")
    [task] = taskbadger_server.tasks_named("with settings")
    assert task["tags"] == {"run": "ci"}  # explicit arguments win over the TASKBADGER dict
    assert taskbadger.get_config() is fixture_config


def test_use_server_refuses_settings_with_errors_as_start_up_does(taskbadger_server):
    fixture_config = taskbadger.get_config()
    with override_settings(TASKBADGER={"TAG": {"environment": "test"}}):
        with pytest.raises(taskbadger.ConfigurationError, match=r"unknown key 'TAG' in TASKBADGER \(did you mean"):
            with use_server(taskbadger_server):
                pass
    assert taskbadger.get_config() is fixture_config


def test_use_server_s_tags_do_not_follow_the_tests_after_it(taskbadger_server):
    # init() sets the scope's tags: after the block, tasks created under the configuration restored carried the
    # block's tags ({"run": "ci"}) too
    outer = taskbadger.get_config()
    with use_server(taskbadger_server, tags={"run": "ci"}):
        pass
    assert taskbadger.get_config() is outer
    task = taskbadger.create_task("after the block")
    assert task.tags == {}


def test_use_server_says_a_bad_value_it_was_given_is_not_from_the_settings(taskbadger_server):
    # the refusal sent the reader to `manage.py check`, which does not see the values given to use_server()
    with pytest.raises(taskbadger.ConfigurationError) as info:
        with use_server(taskbadger_server, tags={"team": "b"}):
            pass
    assert "The values given to use_server() or taskbadger_overrides (tags) are among these settings: " \
        "`manage.py check` does not see them." in str(info.value)
