"""A fork from one thread while another holds a module lock (billiard's pool supervisor does this)
must not leave the child with a lock nobody will ever release."""

import multiprocessing
import os
import signal
import subprocess
import sys
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


#: A uWSGI master as it runs by default (the app loaded, then fork(2) without Python's after-fork hooks: no
#: ``--py-call-uwsgi-fork-hooks``), in a process of its own so that its only other threads are the SDK's, idle, as
#: in a master; ``ctypes.PyDLL(None).fork()`` keeps the GIL, as uWSGI does. The worker's exit status says whether
#: its update went out.
UWSGI_STYLE_MASTER = """
import ctypes, os, sys
import taskbadger
from taskbadger.delivery import sender

taskbadger.init(token=os.environ["KEY"], host=os.environ["HOST"])
before = taskbadger.create_task("before the fork")
sender.submit(before.id, {"value": 1})
assert taskbadger.flush(5)  # the master's sender thread ran; its kept-alive connection is pooled
in_worker = taskbadger.create_task("in the worker")
pid = ctypes.PyDLL(None).fork()
if pid == 0:
    sender.submit(in_worker.id, {"status": "success"}, final=True)
    os._exit(0 if taskbadger.flush(5) else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize("noticed_by", ["wiped page", "pid"])
def test_child_forked_without_pythons_fork_hooks_sends_its_own_updates(taskbadger_server, noticed_by):
    """uWSGI's default: a worker forked from a master that already used delivery (it took the spool's updates when
    the project started, or tracked a call) inherited the master's senders, dead in the worker, and its final
    states stayed queued for as long as the worker lived. The child is noticed by a page the kernel wipes in it
    (Linux), or by its pid where there is no such page."""
    env = {**os.environ, "KEY": taskbadger_server.api_key, "HOST": taskbadger_server.url}
    script = UWSGI_STYLE_MASTER
    if noticed_by == "pid":
        script = "import taskbadger._runtime\ntaskbadger._runtime._marker = None\n" + script
    elif sys.platform == "linux":
        script = "import taskbadger._runtime\nassert taskbadger._runtime._marker is not None\n" + script
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker too
        output, _ = proc.communicate()
    assert proc.returncode == 0, f"the worker's update stayed queued (exit {proc.returncode}):\n{output}"
    taskbadger_server.wait_for_task(name="in the worker", status="success", timeout=5)
