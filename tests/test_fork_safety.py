"""A fork from one thread while another holds a module lock (billiard's pool supervisor does this)
must not leave the child with a lock nobody will ever release."""

import multiprocessing
import threading

import pytest

import taskbadger
from taskbadger import api, celery_options, config, delivery, fastpath, heartbeat, tracking, transport

LOCKS = [
    (tracking, "_received_lock"),
    (celery_options, "_reported_lock"),
    (config, "_lock"),
    (transport, "_lock"),
    (heartbeat, "_lock"),
    (delivery, "_dispatcher_lock"),
    (fastpath, "_idle_lock"),
]


def _use_every_lock(queue):
    class Request:
        id = "celery-id"
        request_dict = {"taskbadger_task": {"task": {"id": "tb-id"}}}

    tracking.on_received(Request())
    tracking._forget_received("celery-id")
    celery_options.report_once("task", "option", "message")
    config.set_config(config.get_config())
    transport.get_session()
    heartbeat.get_heartbeat()
    delivery.get_dispatcher()
    api.send_create("in the child", {"status": "pending"}, fast=True)
    queue.put("done")


@pytest.mark.parametrize("module,name", LOCKS, ids=[f"{m.__name__}.{n}" for m, n in LOCKS])
def test_child_forked_while_another_thread_holds_a_lock_does_not_hang(taskbadger_server, module, name):
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url)
    held, release = threading.Event(), threading.Event()

    def hold():
        with getattr(module, name):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    try:
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_use_every_lock, args=(queue,))
        child.start()
        assert queue.get(timeout=10) == "done"
        child.join(10)
        assert child.exitcode == 0
    finally:
        release.set()
        holder.join()
