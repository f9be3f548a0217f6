"""How the Task Badger id of a ``django.tasks`` task travels from the process that enqueues it to the
worker that runs it: ``django.tasks`` carries no message headers, so each side writes and reads an
entry keyed by the ``TaskResult`` id.

An entry is in one of four states: ``creating`` (the publisher claimed the task and is creating it:
a worker that starts it meanwhile waits for the answer, within the publish budget), ``created`` (its
``Meta`` is there), ``maybe`` (the create's answer was lost: the worker looks the task up before
creating it) or ``left`` (the create failed: the worker creates the task). A ``maybe`` or ``left`` entry
holds the options the worker's create needs from the enqueue (``lifecycle.untracked_options``: the
parent of a task enqueued from a tracked task's body); a job whose create failed with nothing to carry
has no entry. Whoever claims first (the publisher at enqueue, or a worker that starts the task before
the publisher's signal ran, as the RQ backend allows) is the only one that creates it: one Task Badger
task per ``TaskResult``.

``LocalChannel`` keeps the entries in this process (the ``ImmediateBackend`` runs the task where it is
enqueued); the Django app's table (``taskbadger_django.carried``) is shared by a web process and its
workers.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from .._runtime import ForkSafeLock

CREATING, CREATED, MAYBE, LEFT = "creating", "created", "maybe", "left"
#: A task that ended in success: its entry stays a little while, so that an enqueue whose signal comes after its
#: job already ran (a fast RQ worker) finds it claimed and does not create a second task.
DONE = "done"


@dataclass(frozen=True)
class Entry:
    state: str
    meta: Any = None  # the raw Meta dict (checked by ``lifecycle.parse_meta`` where it is read)


class Channel(Protocol):
    def claim(self, result_id: str) -> bool:
        """Record that this process creates the task; False when an entry exists already."""

    def put(self, result_id: str, state: str, meta: Any = None) -> None:
        """Set the entry's state (and meta)."""

    def get(self, result_id: str) -> Entry | None: ...

    def finished(self, result_id: str, failed: bool) -> None:
        """The run ended: a success's entry goes; a failure's is kept a while (a requeue runs it again)."""

    def discard(self, result_id: str) -> None: ...

    # Optional: ``release()``, to let go of what this process holds open (a database connection) before it forks.
    # Optional: ``if_rolled_back(result_id, callback, database_job=False)``, to call ``callback()`` if the
    # transaction that enqueued the job rolls back and takes it with it (the job was never enqueued): the entry's
    # transaction, or with ``database_job`` the one on the database backend's table. A channel without it never
    # calls anything.
    # Optional: ``claim_waiting(result_id, wait)``: ``claim`` by a worker, which waits at most ``wait`` seconds for an
    # entry another transaction holds (written, not committed: an enqueue in a transaction that goes on); None when
    # it is still held then (not claimed, not readable). Without it, the worker's ``claim`` waits as it does.
    # Optional: ``apart_from_jobs()``: True when the entries may roll back apart from the database backend's jobs
    # (another database): a worker that finds no entry looks the task up before it creates one.


class LocalChannel:
    """Entries in this process, the most recent ``limit`` kept."""

    def __init__(self, limit: int = 10_000) -> None:
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._lock = ForkSafeLock()
        self._limit = limit

    def claim(self, result_id: str) -> bool:
        with self._lock:
            if result_id in self._entries:
                return False
            self._set(result_id, Entry(CREATING))
            return True

    def put(self, result_id: str, state: str, meta: Any = None) -> None:
        with self._lock:
            self._set(result_id, Entry(state, meta))

    def _set(self, result_id: str, entry: Entry) -> None:
        self._entries[result_id] = entry
        self._entries.move_to_end(result_id)
        while len(self._entries) > self._limit:
            self._entries.popitem(last=False)

    def get(self, result_id: str) -> Entry | None:
        with self._lock:
            return self._entries.get(result_id)

    def finished(self, result_id: str, failed: bool) -> None:
        if not failed:
            self.discard(result_id)

    def discard(self, result_id: str) -> None:
        with self._lock:
            self._entries.pop(result_id, None)

    def __len__(self) -> int:
        return len(self._entries)
