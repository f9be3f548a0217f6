"""Background threads that leave the process's signals to its main thread.

A signal sent to a process goes to any thread that does not block it. Code that blocks a signal in
its main thread to protect a critical section relies on there being no other thread to take it:
billiard's pool child blocks SIGTERM while it writes its last message to the queue it shares with
every other child, under a lock that only a live process can release. Our dispatcher and heartbeat
threads would otherwise take that SIGTERM and let the child die holding the lock, which leaves every
other child of the pool stuck on it and the tasks handed to them lost (WorkerLostError).

So our threads start with every asynchronous signal blocked (the new thread inherits the mask of the
thread that starts it, so there is no window). Python runs signal handlers in the main thread
whichever thread the kernel picks, so this changes nothing else.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

# Signals the kernel sends to the thread that caused them: blocking those would not stop them and
# would hide a fault in our own thread.
_SYNCHRONOUS = {getattr(signal, name) for name in ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP",
                                                   "SIGABRT", "SIGSYS") if hasattr(signal, name)}


def start_daemon_thread(target: Callable[[], object], name: str) -> threading.Thread:
    """Start a daemon thread that never receives the process's asynchronous signals."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no per-thread masks
        thread.start()
        return thread
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - _SYNCHRONOUS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return thread
