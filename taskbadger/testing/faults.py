"""Fault injection for the stand-in Task Badger server.

A fault is a rule that changes how the server answers matching requests: extra latency, a forced
status code, a dropped connection, a hang, or one of the ways a misbehaving API or proxy answers
(``MISBEHAVIOURS``). Each rule can be limited to ``times`` requests and to some HTTP methods. All
operations are thread-safe: tests change faults while handler threads read them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

__all__ = ["Fault", "FaultSet", "Methods", "Decision"]

Methods = str | Iterable[str] | None

FAIL = "fail"
DROP = "drop"
HANG = "hang"
LATENCY = "latency"

#: How a misbehaving API answers a request it has carried out (the task is created or updated):
MISBEHAVIOURS = {
    "slow_headers": "the status line at once, then one header line every `seconds` (50 of them), then the answer",
    "slow_body": "the headers at once, then the body one byte every `seconds`",
    "endless_headers": "the status line, then header lines as fast as the client reads them, without end",
    "huge_body": "a 2xx answer whose JSON body is padded to `size` bytes (40 MB by default)",
    "extra_answer": "the answer, then `seconds` later (0.05 by default) a copy of it that nobody asked for",
    "not_json": "the answer's status with a body that is not JSON",
    "reset": "half of the answer, then a connection reset",
}


def _normalise_methods(method: Methods) -> frozenset[str] | None:
    if method is None:
        return None
    if isinstance(method, str):
        return frozenset({method.upper()})
    return frozenset(m.upper() for m in method)


@dataclass
class Fault:
    """One injected fault. ``remaining`` is None for "until cleared"."""

    kind: str
    remaining: int | None = None
    methods: frozenset[str] | None = None
    status: int | None = None
    retry_after: float | int | str | None = None
    detail: str | None = None
    seconds: float = 0.0
    size: int = 0

    def matches(self, method: str) -> bool:
        return (self.remaining is None or self.remaining > 0) and (
            self.methods is None or method.upper() in self.methods
        )


@dataclass
class Decision:
    """What the server must do with one request, decided when the request arrives."""

    latency: float = 0.0
    action: Fault | None = None
    # Set when the fault that hangs this request is cleared (or the server stops).
    release: threading.Event = field(default_factory=threading.Event)


class FaultSet:
    """The active faults of one server, in the order they were added."""

    def __init__(self, latency: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._default_latency = float(latency)
        self._latency = float(latency)
        self._faults: list[Fault] = []
        self._release = threading.Event()

    # -- configuration --------------------------------------------------------------------------
    def add(self, fault: Fault) -> Fault:
        if fault.remaining is not None and fault.remaining < 1:
            raise ValueError("times must be a positive integer or None")
        with self._lock:
            self._faults.append(fault)
        return fault

    def set_latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        with self._lock:
            self._latency = float(seconds)

    @property
    def latency(self) -> float:
        with self._lock:
            return self._latency

    def clear(self) -> None:
        """Remove every fault, restore the initial latency and release hung requests."""
        with self._lock:
            self._faults.clear()
            self._latency = self._default_latency
            release, self._release = self._release, threading.Event()
        release.set()

    def release_all(self) -> None:
        """Release every hung request without removing the faults (used when stopping)."""
        with self._lock:
            release, self._release = self._release, threading.Event()
        release.set()

    @property
    def active(self) -> list[Fault]:
        with self._lock:
            return [f for f in self._faults if f.remaining is None or f.remaining > 0]

    # -- per request ----------------------------------------------------------------------------
    def decide(self, method: str) -> Decision:
        """Consume the faults that apply to one request and return what to do with it.

        The first matching latency fault adds to the base latency; the first matching
        fail/drop/hang fault decides the answer. Each consumed fault's counter goes down by one.
        """
        with self._lock:
            decision = Decision(latency=self._latency, release=self._release)
            latency_fault = next(
                (f for f in self._faults if f.kind == LATENCY and f.matches(method)), None
            )
            if latency_fault is not None:
                decision.latency += latency_fault.seconds
                self._consume(latency_fault)
            action = next((f for f in self._faults if f.kind != LATENCY and f.matches(method)), None)
            if action is not None:
                decision.action = action
                self._consume(action)
            return decision

    def _consume(self, fault: Fault) -> None:
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.remove(fault)


def make_fault(
    kind: str,
    *,
    times: int | None = None,
    method: Methods = None,
    status: int | None = None,
    retry_after: float | int | str | None = None,
    detail: str | None = None,
    seconds: float = 0.0,
    size: int = 0,
) -> Fault:
    return Fault(
        kind=kind,
        remaining=times,
        methods=_normalise_methods(method),
        status=status,
        retry_after=retry_after,
        detail=detail,
        seconds=seconds,
        size=size,
    )



def phrase(status: int, default: str) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return default


_DETAILS = {
    429: "Request was throttled.",
    500: "A server error occurred.",
    502: "Bad gateway.",
    503: "Service temporarily unavailable, try again later.",
    504: "Gateway timeout.",
}


def response(fault: Fault) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The (status, JSON body, headers) a FAIL fault answers with."""
    assert fault.kind == FAIL and fault.status is not None
    status = fault.status
    headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
    detail = fault.detail
    if detail is None:
        detail = _DETAILS.get(status) or phrase(status, "Error")
        if status == 429 and isinstance(fault.retry_after, int):
            detail += f" Expected available in {fault.retry_after} seconds."
    return status, {"detail": detail}, headers
