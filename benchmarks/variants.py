"""Measurement switches for ``benchmarks/locate.py``: a tracked worker with part of our work cut out or
moved, to locate where a tracked task's cost goes. Benchmark-only: the library never imports this.

``BENCH_VARIANT`` (read by ``benchapp`` in a tracked worker):

* ``receivers-only``  the signal receivers do all their work, but nothing is queued or sent (the
  worker's delivery is replaced by a function that drops each update);
* ``agent``  delivery from another process: each update is pickled and written as one datagram to a
  local socket, and an agent process (``python variants.py agent PATH``, started by the worker's main
  process, the API key on its stdin) queues it for its own senders. A prototype of the design, enough
  to measure it: no fallback when the agent is gone, nothing spooled.
* ``no-http``  everything but the requests: the receivers queue their updates and the senders take them
  in batches as they would, but each batch counts as delivered without a request;
* ``headers-only``  our headers on the messages (the publisher tracks), our receivers disconnected in the
  worker: what the larger messages cost Celery and kombu, without any of our work;
* ``pipelined``  HTTP/1.1 pipelining: a sender's batch goes out ``PIPELINE_DEPTH`` requests per
  connection, written in one ``send``; after the first answers arrive the reader sleeps for what the
  rest should take and reads each connection's answers with one ``recv``. A prototype, enough to
  measure the system calls it saves against the stand-in (which answers a connection's requests in
  order): no fallback for servers that close after an answer, no late answers, no resend.

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

VARIANTS = ("receivers-only", "no-http", "agent", "pipelined", "headers-only")
#: Variants whose updates never reach the API (the benchmark does not wait for them there).
UNDELIVERED = ("receivers-only", "no-http", "headers-only")
#: Requests written at once on one connection by the ``pipelined`` variant.
PIPELINE_DEPTH = 4
#: Updates of several tasks are never batched into one datagram: each submit is one write, as a
#: worker's task thread would make it.
DATAGRAM_MAX = 1 << 16


def apply(variant: str) -> None:
    """Switch this worker process (and the pool children it forks) to ``variant``."""
    from taskbadger.delivery import sender

    if variant == "receivers-only":
        sender.submit = lambda task_id, fields, final=False: True  # type: ignore[assignment]
    elif variant == "no-http":
        from taskbadger import endpoints

        endpoints.update_many = lambda updates, deadline=None: [None] * len(updates)  # type: ignore[assignment]
    elif variant == "agent":
        sender.submit = _agent_client(_start_agent())  # type: ignore[assignment]
    elif variant == "headers-only":
        from taskbadger.celery import signals

        for signal, receiver in signals._RECEIVERS:
            signal.disconnect(receiver, dispatch_uid=f"taskbadger.{receiver.__name__}")
    elif variant == "pipelined":
        from taskbadger.http import pooled

        pooled.PooledTransport.exchange_many = _pipelined  # type: ignore[method-assign]
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


def _pipelined(self: Any, config: Any, requests: Any, deadline: Any = None, late_answer: Any = None) -> list[Any]:
    """``PooledTransport.exchange_many`` with ``PIPELINE_DEPTH`` requests per connection (see above)."""
    import select

    from taskbadger.exceptions import TransportError
    from taskbadger.http import pooled
    from taskbadger.http.deadline import Deadline

    deadline = deadline or Deadline.for_call(config.timeout)
    groups = [list(range(i, min(i + PIPELINE_DEPTH, len(requests)))) for i in range(0, len(requests), PIPELINE_DEPTH)]
    conns = pooled._checkout(config.host, len(groups))
    results: list[Any] = [None] * len(requests)
    block = pooled._header_block(config.host, requests[0])  # a sender's requests share their headers
    waiting: dict[int, tuple[Any, list[int]]] = {}  # fd -> (connection, indexes still unanswered)
    poller = select.poll()
    for conn, group in zip(conns, groups, strict=True):
        try:
            if conn.sock is None:
                conn.connect(deadline)
            conn.send(b"".join(pooled._encode(requests[i], block) for i in group), deadline)
        except OSError as err:
            conn.close()
            for i in group:
                results[i] = TransportError(f"not sent: {err}")
            continue
        waiting[conn.sock.fileno()] = (conn, list(group))
        poller.register(conn.sock, select.POLLIN | select.POLLERR | select.POLLHUP)
    started = time.monotonic()
    first_wave: float | None = None
    while waiting and deadline.remaining() > 0:
        if first_wave is not None:  # the rest come one latency apart on each connection: sleep until then
            time.sleep(min(deadline.remaining(), first_wave * (PIPELINE_DEPTH - 1)))
        ready = poller.poll(int(deadline.remaining() * 1000) + 1)
        if first_wave is None:
            first_wave = time.monotonic() - started
        for fd, _ in ready:
            conn, left = waiting[fd]
            try:
                answer = conn.receive_some()
                while answer is not None and left:
                    results[left.pop(0)] = answer
                    answer = conn.receive_some() if left else None
            except OSError as err:
                conn.close()
                for i in left:
                    results[i] = TransportError(f"no answer: {err}")
                left.clear()
            if not left or conn.sock is None:
                for i in left:
                    results[i] = TransportError("the connection closed")
                poller.unregister(fd)
                del waiting[fd]
    for conn, left in waiting.values():
        conn.close()
        for i in left:
            results[i] = TransportError("timed out")
    pooled._checkin(config.host, conns)
    return results


if __name__ == "__main__" and sys.argv[1:2] == ["agent"]:
    run_agent(sys.argv[2])
