"""Our background threads must not take signals sent to the process.

Billiard's pool child blocks SIGTERM in its main thread while it holds the lock of the queue it
shares with the other children. If one of our threads took that SIGTERM instead, the child would die
holding the lock, every other child would block on it for good, and the tasks handed to them would be
lost. The end-to-end version of this is ``test_tasks_handed_to_the_pool_survive_killed_children``.
"""

import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="no per-thread signal masks")

SCRIPT = textwrap.dedent("""
    import os, signal, sys, threading
    import taskbadger
    from taskbadger.delivery import heartbeat, sender

    taskbadger.init(token="key", organization_slug="org", project_slug="proj", host=sys.argv[1])
    sender.submit("task-1", {"value": 1})                      # starts the senders' thread
    heartbeat.get_heartbeat().start("task-1", 60)              # and the heartbeat thread
    ours = [t.name for t in threading.enumerate() if t.name.startswith("taskbadger-")]
    print("threads", sorted(ours), flush=True)

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    os.kill(os.getpid(), signal.SIGTERM)  # any thread not blocking it would die of it right here
    print("survived while blocked", flush=True)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # now delivered to the main thread
    print("not reached", flush=True)
""")


def test_a_signal_blocked_by_the_main_thread_waits_for_it(taskbadger_server):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, taskbadger_server.url], capture_output=True,
                          text=True, timeout=60)
    assert "taskbadger-heartbeat" in proc.stdout and "taskbadger-sender-0" in proc.stdout, proc.stderr
    assert "survived while blocked" in proc.stdout, (proc.returncode, proc.stdout, proc.stderr)
    assert "not reached" not in proc.stdout
    assert proc.returncode == -signal.SIGTERM


class TimeLimit(Exception):
    """A queue's time limit, raised into the job by a signal handler (RQ's JobTimeoutException on SIGALRM, Celery's
    SoftTimeLimitExceeded on SIGUSR1) wherever the job is: here, inside a request of ours."""


class Interrupt(BaseException):
    """Not an Exception, as gevent's Timeout (the gevent pool's hard time limit) and KeyboardInterrupt."""


@pytest.mark.parametrize("raised", [TimeLimit, Interrupt])
@pytest.mark.parametrize("call", ["create", "fetch", "find", "update"])
def test_a_time_limit_striking_during_a_request_is_the_jobs_and_frees_the_breaker(taskbadger_server, call, raised):
    """A time limit that struck while a job's body waited on the API was swallowed by a create (``@track``, a
    ``.delay()`` from the body: the job ran on past its limit), and a read it interrupted stayed in the breaker's
    calls in flight: looking hung, it made every later call of the process skip, so the process tracked nothing."""
    import taskbadger
    from taskbadger import inline
    from taskbadger.delivery.breaker import publish_breaker
    from taskbadger.lifecycle.body import RunTask

    task = taskbadger.create_task("target")
    calls = {
        "create": lambda: inline.create_inline("interrupted", {"external_id": "ext-1"}),
        "fetch": lambda: inline.fetch(task.id),
        "find": lambda: inline.find("ext-1"),
        "update": lambda: RunTask(task._task).update(data={"step": 1}),
    }

    struck: list[float] = []

    def on_alarm(signum, frame):
        struck.append(time.monotonic())
        raise raised("the job's time limit")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    taskbadger_server.set_latency(0.6)  # within the publish budget (1 s): the alarm strikes while we wait
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(raised):
            calls[call]()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    # No call begun before the strike holds a place. One begun after it is the settler's look-up of the interrupted
    # create's task (the API may have made it: it is cancelled once found), which ends by itself.
    assert [began for began in publish_breaker()._in_flight.values() if began <= struck[0]] == []
    taskbadger_server.set_latency(0)
    assert inline.fetch(task.id) is not None  # the process still tracks
    if call == "create":  # the task the API made is cancelled, and no look-up of it outlives this test
        taskbadger_server.wait_for(lambda: not inline.settling("ext-1") and [
            t["status"] for t in taskbadger_server.tasks_named("interrupted")] == ["cancelled"], timeout=15)
