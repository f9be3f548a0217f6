"""taskbadger_* options: sources, precedence, opt-out, bad options, eager/apply, no result backend."""

import logging
import uuid

import pytest

import taskbadger
from taskbadger.systems.celery import CelerySystemIntegration

from .celery_project import app as tasks

pytestmark = pytest.mark.integration


def created(server):
    return [r.json for r in server.requests if r.method == "POST"]


def test_decorator_options_with_dict_and_individual_precedence(taskbadger_server, prefork_worker):
    prefork_worker.send(tasks.decorated)
    [body] = created(taskbadger_server)
    # individual decorator arguments win over the decorator's taskbadger_kwargs dict
    assert body["name"] == "decorated name"
    assert (body["value_max"], body["value"], body["tags"]) == (50, 5, {"source": "decorator"})
    taskbadger_server.wait_for_task(name="decorated name", status="success")


def test_apply_async_wins_over_decorator_and_individual_over_dict(taskbadger_server, prefork_worker):
    monitor = str(uuid.uuid4())
    prefork_worker.send(tasks.decorated, taskbadger_name="call name", taskbadger_monitor_id=monitor,
                        taskbadger_kwargs={"name": "call dict name", "value_max": 9, "data": {"k": 1}})
    [body] = created(taskbadger_server)
    assert (body["name"], body["value_max"], body["data"]) == ("call name", 9, {"k": 1})
    assert body["tags"] == {"source": "decorator"}
    task = taskbadger_server.wait_for_task(name="call name", status="success")
    assert task["monitor_id"] == monitor


def test_options_in_task_kwargs_never_reach_the_function(taskbadger_server, prefork_worker):
    tasks.no_taskbadger_kwargs.apply_async(
        (1,), {"a": 2, "taskbadger_name": "from kwargs", "taskbadger_kwargs": {"value_max": 3}},
        queue=prefork_worker.queue)
    task = taskbadger_server.wait_for_task(name="from kwargs", status="success")
    assert task["value_max"] == 3
    prefork_worker.send(tasks.no_taskbadger_kwargs, taskbadger_name="via options")
    taskbadger_server.wait_for_task(name="via options", status="success")


def test_track_false_opts_one_call_out(taskbadger_server, prefork_worker):
    result = prefork_worker.send(tasks.add, 1, 1, taskbadger_track=False)
    assert result.taskbadger_task_id is None
    marker = prefork_worker.send(tasks.add, 2, 2)  # a tracked call after it, to know the first ran
    taskbadger_server.wait_for_task(status="success")
    assert [t["external_id"] for t in taskbadger_server.tasks.values()] == [marker.id]


def test_track_false_header_overrides_auto_tracking(taskbadger_server, prefork_worker):
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url,
                    systems=[CelerySystemIntegration()])
    prefork_worker.send(tasks.plain_add, 1, 2, headers={"taskbadger_track": False})
    prefork_worker.send(tasks.plain_add, 3, 4)
    taskbadger_server.wait_for_task(name="tests.celery_project.app.plain_add", status="success")
    assert len(taskbadger_server.tasks) == 1


def test_call_options_on_a_task_without_the_base_class_are_honoured_and_never_sent_as_properties(
        taskbadger_server, prefork_worker):
    """A beat entry's ``options={"taskbadger_monitor_id": ...}`` (apply_async's options) on an auto-tracked task
    without ``base=Task``: Celery hands options it does not know to the message's properties, no one read them
    there, and the runs were tracked without their monitor."""
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url,
                    systems=[CelerySystemIntegration(auto_track_tasks=True)])
    monitor = taskbadger_server.add_monitor()
    result = prefork_worker.send(tasks.plain_add, 1, 2, taskbadger_monitor_id=monitor.upper(),
                                 taskbadger_name="plain, with call options", taskbadger_kwargs={"value_max": 7},
                                 headers={"taskbadger_kwargs": {"value_max": 9}})  # the call's own headers win
    task = taskbadger_server.wait_for_task(name="plain, with call options", status="success")
    assert (task["monitor_id"], task["value_max"], task["external_id"]) == (monitor, 9, result.id)
    prefork_worker.send(tasks.plain_add, 3, 4, taskbadger_track=False)
    marker = prefork_worker.send(tasks.plain_add, 5, 6)
    taskbadger_server.wait_for(lambda: any(t["external_id"] == marker.id and t["status"] == "success"
                                           for t in taskbadger_server.tasks.values()))
    assert len(taskbadger_server.tasks) == 2  # taskbadger_track=False in the call opted that one out


def test_unknown_option_and_wrong_type_are_reported_once_and_task_still_runs(taskbadger_server, prefork_worker,
                                                                            tb_log):
    for _ in range(2):
        prefork_worker.send(tasks.add, 1, 2, taskbadger_valeu_max=3, taskbadger_max_runtime="soon")
    taskbadger_server.wait_for(lambda: len(taskbadger_server.tasks_named("tests.celery_project.app.add")) == 2
                               and all(t["status"] == "success"
                                       for t in taskbadger_server.tasks_named("tests.celery_project.app.add")))
    warnings = [r.getMessage() for r in tb_log.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "taskbadger_valeu_max" in w]) == 1
    assert len([w for w in warnings if "taskbadger_max_runtime" in w and "'soon'" in w]) == 1
    assert all("max_runtime" not in body for body in created(taskbadger_server))


def test_a_queue_option_names_the_queue_and_external_id_says_why_it_is_not_one(taskbadger_server, prefork_worker,
                                                                               tb_log):
    """The official SDK forwards taskbadger_queue (it was ignored as unknown). external_id stays the Celery id:
    tracking finds a task again by it."""
    result = prefork_worker.send(tasks.add, 1, 2, taskbadger_queue="reports", taskbadger_external_id="mine")
    task = taskbadger_server.wait_for_task(status="success")
    assert (task["queue"], task["external_id"]) == ("reports", result.id)
    [warning] = [r.getMessage() for r in tb_log.records if "taskbadger_external_id" in r.getMessage()]
    assert "not an option" in warning and "put your id in data" in warning


def test_apply_and_eager_and_direct_calls_are_not_tracked(taskbadger_server, celery_app):
    result = tasks.report_access.apply(("eager",), {"taskbadger_name": "ignored"})
    assert result.get() is None and result.taskbadger_task_id is None
    assert tasks.add(1, 2) == 3
    celery_app.conf.task_always_eager = True
    try:
        eager = tasks.add.delay(2, 2)
        assert eager.get() == 4 and eager.taskbadger_task_id is None
    finally:
        celery_app.conf.task_always_eager = False
    assert taskbadger_server.requests == []


def test_body_sees_none_when_not_tracked(taskbadger_server, prefork_worker):
    # Unconfigured publisher and a worker without auto-tracking: report_access finds no task.
    taskbadger.config.reset()
    result = prefork_worker.send(tasks.report_access, "untracked", taskbadger_track=False)
    assert result.taskbadger_task_id is None
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url)
    prefork_worker.send(tasks.add, 0, 0)
    taskbadger_server.wait_for_task(name="tests.celery_project.app.add", status="success")
    assert not taskbadger_server.tasks_named("tests.celery_project.app.report_access")


def test_no_result_backend_needed(taskbadger_server, prefork_worker, celery_app):
    assert celery_app.conf.result_backend is None
    result = prefork_worker.send(tasks.add, 5, 5)
    assert result.taskbadger_task_id and result.get_taskbadger_task().name == "tests.celery_project.app.add"


def test_send_task_is_tracked_when_the_publisher_knows_the_base_class(taskbadger_server, prefork_worker,
                                                                       celery_app):
    result = celery_app.send_task("tests.celery_project.app.add", (1, 2), queue=prefork_worker.queue)
    task = taskbadger_server.wait_for_task(name="tests.celery_project.app.add", status="success")
    assert task["external_id"] == result.id


def test_send_task_with_track_header_for_any_task(taskbadger_server, prefork_worker, celery_app):
    celery_app.send_task("tests.celery_project.app.untracked_plain", (1,), queue=prefork_worker.queue,
                         headers={"taskbadger_track": True, "taskbadger_kwargs": {"name": "by header",
                                                                                   "value_max": 7}})
    task = taskbadger_server.wait_for_task(name="by header", status="success")
    assert task["value_max"] == 7


@pytest.mark.parametrize("given", ["name=x", [("name", "x")], 5])
def test_a_kwargs_header_that_is_not_a_dict_beside_call_options_is_dropped_not_raised(
        taskbadger_server, prefork_worker, tb_log, given):
    # apply_async raised TypeError ('str' object is not a mapping) and the message was never published
    result = prefork_worker.send(tasks.add, 1, 2, headers={"taskbadger_kwargs": given}, taskbadger_name="by call")
    task = taskbadger_server.wait_for_task(name="by call", status="success")
    assert task["id"] == result.taskbadger_task_id
    [warning] = [r.getMessage() for r in tb_log.records if "taskbadger_kwargs" in r.getMessage()]
    assert "is not a dict" in warning and "ignored" in warning


def test_arguments_that_are_not_a_mapping_are_celerys_to_refuse(taskbadger_server):
    # our apply_async raised "'int' object is not iterable" from its own line, not Celery's message
    with pytest.raises(TypeError, match="must be a mapping"):
        tasks.add.apply_async((1,), 2, taskbadger_name="x")



def test_a_countdown_on_rabbitmqs_native_delayed_delivery_names_the_queue(taskbadger_server, memory_app, monkeypatch):
    # With quorum queues bound to a topic exchange, Celery (5.5+) publishes a countdown/ETA task through
    # RabbitMQ's native delayed delivery: to the celery_delayed_27 exchange, with the delay's 28 bits before the
    # queue's routing key ("0.0.….1.1.reports") and no queue to declare. Celery decides so only on an AMQP
    # transport with quorum queues: the memory transport is told it is one.
    import celery.app.base
    from kombu import Exchange, Queue

    from taskbadger.celery import Task

    monkeypatch.setattr(celery.app.base, "detect_quorum_queues", lambda app, driver_type: (True, "reports"))
    memory_app.conf.task_queues = [Queue("reports", Exchange("reports", type="topic"), routing_key="reports",
                                         queue_arguments={"x-queue-type": "quorum"})]

    @memory_app.task(shared=False, base=Task, name="reports.weekly_delayed")
    def weekly():
        return None

    published, send = [], memory_app.amqp.send_task_message

    def recording(producer, name, message, **kwargs):
        published.append(kwargs)
        return send(producer, name, message, **kwargs)

    monkeypatch.setattr(memory_app.amqp, "send_task_message", recording)
    result = weekly.apply_async(queue="reports", countdown=30)
    assert published[0]["exchange"].name == "celery_delayed_27"  # what Celery does on RabbitMQ
    assert published[0]["routing_key"].endswith(".1.1.1.1.0.reports") and published[0].get("queue") is None
    task = taskbadger_server.get_task(result.taskbadger_task_id)
    assert (task["status"], task["queue"]) == ("pending", "reports")


def test_a_scope_tag_the_api_refuses_is_left_out_and_the_task_still_tracked(taskbadger_server, memory_app, tb_log):
    # A one-character value (a user id "7") made the API refuse the whole create: the task ran untracked, silently.
    from taskbadger.celery import Task

    @memory_app.task(shared=False, base=Task, name="reports.tagged")
    def tagged():
        return None

    with taskbadger.current_scope() as scope:
        scope.tag({"user": "7", "team": "billing", "count": 42})
        result = tagged.delay()
    task = taskbadger_server.get_task(result.taskbadger_task_id)
    assert (task["status"], task["tags"]) == ("pending", {"team": "billing"})
    warned = [r.getMessage() for r in tb_log.records if r.levelno == logging.WARNING]
    assert any("'user'" in line and "left out" in line for line in warned), warned
    assert any("'count'" in line and "int" in line for line in warned), warned
