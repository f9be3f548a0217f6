"""Measurement switches for ``benchmarks/locate.py``: a tracked worker with part of our work cut out or
moved, to locate where a tracked task's cost goes. Benchmark-only: the library never imports this.

``BENCH_VARIANT`` (read by ``benchapp`` in a tracked worker):

* ``receivers-only``  the signal receivers do all their work, but nothing is queued or sent (the
  worker's delivery is replaced by a function that drops each update);
* ``agent``  delivery from another process: each update is pickled and written as one datagram to a
  local socket, and an agent process (``python variants.py agent PATH``, started by the worker's main
  process, the API key on its stdin) queues it for its own senders. A prototype of the design, enough
  to measure it: no fallback when the agent is gone, nothing spooled.

Replacing ``taskbadger.delivery.sender.submit`` is what a measurement needs and what the library must
never do (see DESIGN.md): this module is the only place that does it.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

VARIANTS = ("receivers-only", "agent")
#: Updates of several tasks are never batched into one datagram: each submit is one write, as a
#: worker's task thread would make it.
DATAGRAM_MAX = 1 << 16


def apply(variant: str) -> None:
    """Switch this worker process (and the pool children it forks) to ``variant``."""
    from taskbadger.delivery import sender

    if variant == "receivers-only":
        sender.submit = lambda task_id, fields, final=False: True  # type: ignore[assignment]
    elif variant == "agent":
        sender.submit = _agent_client(_start_agent())  # type: ignore[assignment]
    else:
        raise SystemExit(f"BENCH_VARIANT={variant!r}: expected one of {', '.join(VARIANTS)}")


def _start_agent() -> str:
    path = os.path.join(tempfile.mkdtemp(prefix="tbbench-agent-"), "socket")
    agent = subprocess.Popen([sys.executable, os.path.abspath(__file__), "agent", path], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, text=True)
    assert agent.stdin is not None
    agent.stdin.write(os.environ["BENCH_API_KEY"] + "\n")
    agent.stdin.flush()  # left open: the agent ends when it reads EOF, that is when this worker is gone
    _start_agent.process = agent  # type: ignore[attr-defined]
    deadline = time.monotonic() + 20
    while not os.path.exists(path + ".ready"):
        if agent.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the delivery agent did not start (exit code {agent.poll()})")
        time.sleep(0.01)
    return path


def _agent_client(path: str) -> Any:
    clients: dict[int, socket.socket] = {}  # one per process: pool children connect their own

    def submit(task_id: str, fields: dict[str, Any], final: bool = False) -> bool:
        client = clients.get(os.getpid())
        if client is None:
            client = clients[os.getpid()] = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            client.connect(path)
        client.send(pickle.dumps((task_id, fields, final), protocol=pickle.HIGHEST_PROTOCOL))
        return True

    return submit


def run_agent(path: str) -> None:
    """The agent: every datagram becomes ``submit()`` on this process's own queue and senders."""
    import taskbadger
    from taskbadger.delivery import sender

    taskbadger.init(host=os.environ["BENCH_API_URL"], token=sys.stdin.readline().strip())
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    server.bind(path)

    def until_parent_gone() -> None:
        sys.stdin.read()  # EOF: the worker's main process ended
        sender.flush(10)
        os._exit(0)

    threading.Thread(target=until_parent_gone, daemon=True).start()
    open(path + ".ready", "w").close()
    while True:
        task_id, fields, final = pickle.loads(server.recv(DATAGRAM_MAX))
        sender.submit(task_id, fields, final)


if __name__ == "__main__" and sys.argv[1:2] == ["agent"]:
    run_agent(sys.argv[2])
