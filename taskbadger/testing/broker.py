"""Celery's embedded (filesystem) broker, with each message written atomically.

kombu's filesystem transport creates a message's file, then serialises the message and writes it
in. A worker polling the folder can take the file in that gap, read nothing, and its consumer dies
on ``JSONDecodeError`` (kombu issue 1551), which stops the worker. Here the message is written to
a file the reader ignores (its name does not contain ``.<queue>.msg``, which is what kombu 5.3 looks
for; 5.4 and later want names that end in it) and renamed into place, so a reader sees whole
messages or none. Reading is kombu's own.

Use it where the filesystem broker runs tests or a demo::

    app.conf.broker_url = "filesystem://"
    app.conf.broker_transport = "taskbadger.testing.broker:FilesystemTransport"
"""

from __future__ import annotations

import itertools
import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

_sequence = itertools.count()


class FilesystemChannel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        # A worker takes files in name order: kombu's millisecond prefix, then (ours) a counter, so
        # that messages one process sends within a millisecond keep their order too.
        stem = f"{int(round(monotonic() * 1000))}_{next(_sequence):012d}_{uuid.uuid4()}.{queue}"
        path = os.path.join(self.data_folder_out, stem + ".msg")
        # Not "<stem>.msg.partial": kombu before 5.4 takes any name that merely contains ".<queue>.msg".
        partial = os.path.join(self.data_folder_out, stem + ".partial")
        data = str_to_bytes(dumps(payload))
        try:
            with open(partial, "wb") as f:
                f.write(data)
            os.replace(partial, path)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {path!r} to directory") from exc


#: How often a worker waiting for messages checks whether it was asked to stop.
_STOP_CHECK = 0.1


class FilesystemTransport(filesystem.Transport):
    Channel = FilesystemChannel

    def drain_events(self, connection: Any, timeout: float | None = None) -> Any:  # type: ignore[override]
        """kombu's, but a worker asked to stop (SIGTERM) stops waiting within ``_STOP_CHECK`` seconds. Celery's loop
        for a polled transport waits 2 s per call and checks for a shutdown only between calls: every warm shutdown
        of a worker on this broker took 4 s more (the tests start and stop hundreds of workers)."""
        if not timeout:
            return super().drain_events(connection, timeout=timeout)
        deadline = monotonic() + timeout
        while True:
            try:
                return super().drain_events(connection, timeout=max(0.001, min(_STOP_CHECK, deadline - monotonic())))
            except TimeoutError:  # socket.timeout
                if monotonic() >= deadline or _worker_stopping():
                    raise


def _worker_stopping() -> bool:
    """Whether this process is a Celery worker that was asked to stop (warm or cold)."""
    import sys

    state = sys.modules.get("celery.worker.state")  # imported by every worker; not imported here otherwise
    return state is not None and (state.should_stop is not None or state.should_terminate is not None)
