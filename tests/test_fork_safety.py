"""A fork from one thread while another holds a module lock (billiard's pool supervisor does this)
must not leave the child with a lock nobody will ever release."""

import multiprocessing
import threading

import pytest

import taskbadger
from taskbadger import _runtime, config, endpoints
from taskbadger.celery import events, options, state
from taskbadger.delivery import breaker, heartbeat, queue, sender
from taskbadger.http import pooled, requests_backend

# The locks of the SDK's per-process state (this test is about those locks themselves, so it names them).
LOCKS = {
    "config": lambda: config._lock,
    "log lines": lambda: _runtime._last_logged_lock,
    "received messages": lambda: state.received()._lock,
    "pending updates": lambda: queue.pending_updates().cond,
    "breaker": lambda: breaker.publish_breaker()._lock,
    "heartbeat": lambda: heartbeat.get_heartbeat()._cond,
    "pooled connections": lambda: pooled._pool.get().lock,
    "requests session": lambda: requests_backend._session._lock,
}


def _use_every_lock(queue_):
    class Request:
        id = "celery-id"
        request_dict = {"taskbadger_task": {"task": {"id": "tb-id"}}}

    events.on_received(Request())
    state.received().forget("celery-id")
    options.report_once("task", "option", "message")
    config.set_config(config.get_config())
    requests_backend.session()
    heartbeat.get_heartbeat()
    sender.submit("tb-id", {"value": 1})
    breaker.publish_breaker().end(breaker.publish_breaker().begin() or 0)
    endpoints.create({"name": "in the child", "status": "pending"})
    queue_.put("done")


# It forks a process that has threads, on purpose: billiard's prefork pool does (Python 3.12 warns about it).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
@pytest.mark.parametrize("name", list(LOCKS))
def test_child_forked_while_another_thread_holds_a_lock_does_not_hang(taskbadger_server, name):
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url)
    held, release = threading.Event(), threading.Event()

    def hold():
        with LOCKS[name]():
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    try:
        ctx = multiprocessing.get_context("fork")
        done = ctx.Queue()
        child = ctx.Process(target=_use_every_lock, args=(done,))
        child.start()
        assert done.get(timeout=10) == "done"
        child.join(10)
        assert child.exitcode == 0
    finally:
        release.set()
        holder.join()
