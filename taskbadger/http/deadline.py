"""One deadline per call: set when the call starts, carried down to every socket wait.

``requests``, urllib3 and httpx time each socket operation, so a server that drips one byte a second
keeps a call alive for ever. Here a call gets a ``Deadline`` when it starts (connect, send and the
whole answer must fit in it) and every wait below asks how much of it is left; no byte from the
server extends it.

Three budgets (``Config``):

* the inline create (at publish, the worker's create of a task its publisher could not track,
  ``@track``): ``publish_budget``, 1 s by default: a web request waits on it;
* every other call (the public synchronous API, each batch the senders send): ``connect + read`` of
  ``timeout``, 7 s by default; connecting alone is bounded by ``connect``, and the answer by ``read``
  from when the request is sent.
"""

from __future__ import annotations

import time

_new = object.__new__


class Deadline:
    """When a call must be over (``time.monotonic()`` seconds), and the budget it was given."""

    __slots__ = ("at", "seconds", "connect", "read")

    def __init__(self, seconds: float, connect: float | None = None, read: float | None = None) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        #: the most a connection attempt may take (never more than what is left of the deadline)
        self.connect = seconds if connect is None else min(connect, seconds)
        #: the most the answer may take once the request is sent (None: what is left of the deadline)
        self.read = read

    @classmethod
    def for_call(cls, timeout: tuple[float, float]) -> Deadline:
        """The deadline of an ordinary call: ``connect + read`` seconds in all, connecting within
        ``connect``, the answer within ``read`` of the request."""
        # ``cls(connect + read, connect, read)``, its fields set here: every call makes one (a sender's round, a
        # publish), and ``__init__``'s frame and ``min`` cost as much again (5.7k instructions -> 3.7k)
        connect, read = timeout
        seconds = connect + read
        deadline = _new(cls)
        deadline.seconds, deadline.at = seconds, time.monotonic() + seconds
        deadline.connect = connect if connect < seconds else seconds
        deadline.read = read
        return deadline

    def sent(self) -> Deadline:
        """The deadline for the answer to a request sent now: sooner when ``read`` says so."""
        read = self.read
        if read is None:
            return self
        at = time.monotonic() + read
        if at >= self.at:
            return self
        # ``Deadline(self.seconds, self.connect)`` with ``at`` and ``seconds`` moved, without ``__init__``'s frame
        tighter = _new(Deadline)
        tighter.at, tighter.seconds, tighter.connect, tighter.read = at, read, self.connect, None
        return tighter

    def remaining(self) -> float:
        """Seconds left (0 once it has passed)."""
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def __repr__(self) -> str:
        return f"<Deadline {self.seconds:g} s, {self.remaining():.3f} s left>"
