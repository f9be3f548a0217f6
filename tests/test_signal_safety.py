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
