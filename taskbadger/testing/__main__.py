"""Run the stand-in Task Badger API in the foreground: ``python -m taskbadger.testing``."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import threading

from ..config import is_loopback
from .server import TaskBadgerServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m taskbadger.testing",
        description="Stand-in Task Badger API server (in memory), with a live dashboard at its root URL.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind: loopback (127.0.0.1, ::1, localhost) unless --allow-remote")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a --host other machines can reach (e.g. 0.0.0.0 in a container): the dashboard "
                             "has no authentication, so anyone who reaches the port reads every task")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every response")
    parser.add_argument("--organization", default="acme", help="organization slug the API answers for")
    parser.add_argument("--project", default="demo", help="project slug the API answers for")
    parser.add_argument("--key", default="test-key", help="the secret part of the project key it accepts")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")

    stop = threading.Event()
    # Both signals explicitly: a process started with SIGINT ignored (``nohup … &``) keeps it ignored
    # otherwise, and Ctrl-C would do nothing.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        server = TaskBadgerServer(
            host=args.host,
            port=args.port,
            organization=args.organization,
            project=args.project,
            key=args.key,
            latency=args.latency,
            max_requests_logged=10_000,
            allow_remote=args.allow_remote,
        )
    except ValueError as err:
        parser.error(str(err))
    try:
        server.start()
    except OSError as err:  # the port taken (a stand-in started earlier, in another terminal), or not ours to take
        server.stop()
        what = {errno.EADDRINUSE: "another process listens there (a stand-in started earlier?): stop it, or choose "
                                  "another --port (0: any free port)",
                errno.EACCES: "this user may not listen on that port: choose a --port above 1023 (0: any free port)"}
        reason = os.strerror(err.errno) if err.errno else str(err)
        parser.exit(1, f"{parser.prog}: cannot listen on {args.host} port {args.port}: {reason}; "
                       f"{what.get(err.errno or 0, 'choose another --host or --port')}\n")
    try:
        if not is_loopback(args.host):
            print(f"Task Badger test server listening on {args.host or '0.0.0.0'} port {server.port}; "
                  f"from this machine: {server.url}", flush=True)
        else:
            print(f"Task Badger test server listening on {server.url}", flush=True)
        print(f"API key: {server.api_key}", flush=True)
        print(f"export TASKBADGER_HOST={server.url} TASKBADGER_API_KEY={server.api_key}", flush=True)
        print(f"Dashboard: {server.url}/", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
