"""The wrapped command's process: how it is started, how its output is copied, how signals reach it.

* **Arguments.** Several arguments are an argv, run as given (no shell). A single argument that reads
  like a shell command line (``'./backup.sh --full | gzip'``) runs through ``/bin/sh -c``: the official
  CLI ran every command that way, so crontab lines written for it keep working.
* **Environment.** The child inherits ours; ``TASKBADGER_TASK_ID`` is added to it (taken out of it when
  the run has no task: an outer run's would be the wrong task). It gets the file
  descriptors we were given (``3>>log``), not ours.
* **Exit status.** A command that cannot be found exits 127 and one that cannot be executed 126, as in a
  shell; a child killed by signal N gives 128 + N, and one killed by SIGINT ends us by SIGINT too
  (``RERAISED``), once its outcome is recorded: the script we run in stops on a Ctrl-C as it would
  without us.
* **Signals.** The child stays in our process group, so the terminal's job control (Ctrl-Z, ``fg``,
  reading the terminal) works as if it had been started by the shell. SIGHUP, SIGINT, SIGQUIT, SIGTERM,
  SIGUSR1 and SIGUSR2 sent to us are forwarded to the child, which decides when to exit; we wait for
  it. SIGINT and SIGQUIT are the exception when they come from the terminal (we are its foreground
  process group): the terminal sent them to the child as well, and a second copy could interrupt the
  child's own cleanup. A signal we were started with ignored (``nohup`` ignores SIGHUP, a shell ignores
  SIGINT and SIGQUIT for a background job) stays ignored, by us and by the command, as without us.
* **Output capture.** The child's stdout and stderr are pipes that two threads copy to ours as the
  bytes arrive, keeping the last ``limit`` characters of each for the task (``Tail``). When our stdout and
  stderr are one file (``> log 2>&1``, a terminal), the child gets one pipe for both, as ``2>&1`` gives it one
  file: its lines keep their order, and the task keeps them as its stdout. When our own
  output is gone (``… | head -1`` exited), the pipe from the child is closed too, so the child meets the
  broken pipe on its next write, as it would have without capture (``yes`` ends with SIGPIPE). A process the
  command left running (``server &``) may hold the pipes after the command exits: its output is drained for
  ``DRAIN_GRACE`` at most, then the copy is handed to a ``cat`` of its own (``keep_copying``), which outlives us:
  that process writes on to our stdout, as it would without us, instead of dying of SIGPIPE when we exit.
"""

from __future__ import annotations

import codecs
import errno
import os
import select
import selectors
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import IO, Any

from taskbadger._runtime import start_daemon_thread

#: Characters that make a lone argument a shell command line rather than a program's name.
_SHELL_SYNTAX = frozenset(" \t\n|&;<>()$`\\\"'*?[]#~={}%!")
COMMAND_NOT_FOUND, NOT_EXECUTABLE = 127, 126
#: How long, after the child exits, its output may still be drained (a grandchild may hold the pipes): part of the
#: budget after the command (``run.FINAL_UPDATE_BUDGET``), not added to it.
DRAIN_GRACE = 5.0
_CHUNK = 65536


def forwarded_signals() -> list[signal.Signals]:
    names = ("SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGUSR1", "SIGUSR2")
    return [getattr(signal, name) for name in names if hasattr(signal, name)]


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def shell_argv(command: Sequence[str]) -> list[str]:
    """The argv to execute for ``command`` (see the module docstring)."""
    argv = list(command)
    if len(argv) == 1 and any(ch in _SHELL_SYNTAX for ch in argv[0]) and not os.path.exists(argv[0]):
        if sys.platform == "win32":
            return [os.environ.get("COMSPEC", "cmd.exe"), "/c", argv[0]]
        return ["/bin/sh", "-c", argv[0]]
    return argv


def exit_code(returncode: int) -> int:
    """A shell's exit status for a child's ``returncode`` (Popen's -N for "killed by signal N")."""
    return 128 - returncode if returncode < 0 else returncode


class ExitStatus(int):
    """A command's exit status (``exit_code``), and the signal that killed it (or stopped it from starting), if
    one did (``killed_by``)."""

    killed_by: int | None

    def __new__(cls, code: int, killed_by: int | None = None) -> ExitStatus:
        status = super().__new__(cls, code)
        status.killed_by = killed_by
        return status

    @classmethod
    def of(cls, returncode: int) -> ExitStatus:
        """The status for a child's ``returncode`` (Popen's -N for "killed by signal N")."""
        return cls(exit_code(returncode), -returncode if returncode < 0 else None)


#: Signals we end by ourselves, once the outcome is recorded, when the command died of them. SIGINT: a shell
#: running a script goes on with the script's next line after a Ctrl-C when the command it waited for exited
#: (with whatever status, 130 included), and stops the script only when the command died of SIGINT too
#: (the "wait and cooperative exit" every shell does): ``taskbadger run`` must not turn a Ctrl-C into a
#: "go on" for the script it is in.
RERAISED = frozenset(getattr(signal, name) for name in ("SIGINT",) if hasattr(signal, name))


class DieOfSignal(Exception):
    """Raised through the command line's framework to ``taskbadger.cli.main``: end by ``signum`` (``die_of``),
    or exit ``code`` if that does not end us."""

    def __init__(self, signum: int, code: int) -> None:
        super().__init__(signum, code)
        self.signum, self.code = signum, code


def die_of(signum: int) -> None:
    """End this process by ``signum``, with the signal's default action (returns if that did not end it)."""
    try:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    except (OSError, ValueError):
        return


def spawn_failure(err: OSError, program: str) -> tuple[int, str]:
    """The shell's exit code and message for a command that could not be started."""
    if isinstance(err, FileNotFoundError) or err.errno == errno.ENOENT:
        return COMMAND_NOT_FOUND, f"{program}: command not found"
    reason = err.strerror or str(err)
    return NOT_EXECUTABLE, f"{program}: cannot execute: {reason}"


class Tail:
    """The last ``limit`` characters of a stream (decoded as UTF-8), and how many were cut before them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.cut = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._parts: list[str] = []
        self._length = 0
        self._lock = threading.Lock()
        self.version = 0  # bumped on every change: "anything new since the last ping?"

    def feed(self, data: bytes, final: bool = False) -> None:
        text = self._decoder.decode(data, final)
        if not text:
            return
        with self._lock:
            self._parts.append(text)
            self._length += len(text)
            if self._length > 2 * self.limit:  # trim now and then, not on every chunk
                self._trim()
            self.version += 1

    def _trim(self) -> None:
        joined = "".join(self._parts)
        excess = max(0, len(joined) - self.limit)
        self.cut += excess
        self._parts, self._length = [joined[excess:]], len(joined) - excess

    def snapshot(self) -> tuple[str, int]:
        """(text kept, characters cut)."""
        with self._lock:
            self._trim()
            return self._parts[0] if self._parts else "", self.cut


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:  # our stdout was left non-blocking by someone: wait until it drains
            select.select([], [fd], [], 1.0)
            continue
        view = view[written:]


class Pump:
    """Copies one of the child's pipes to one of our file descriptors, keeping a ``Tail``. On POSIX it can stop
    copying without closing the pipe (``hand_over``), for a process of its own to carry on (``keep_copying``)."""

    def __init__(self, source: IO[bytes], target_fd: int | None, tail: Tail, name: str) -> None:
        self._source, self._target_fd, self.tail, self.name = source, target_fd, tail, name
        self._handed_over = False
        self._wake: tuple[int, int] | None = None  # a byte written here stops the copy (``hand_over``)
        if os.name == "posix":
            try:
                self._wake = os.pipe()  # not inheritable (PEP 446): the command never holds it
            except OSError:
                pass
        thread = start_daemon_thread(self._run, name=f"taskbadger-cli-{name}")
        if thread is None:  # the process is out of threads: nothing would drain the child's pipe
            self._close_wake()
            raise RuntimeError(f"no thread could start to copy the command's {name}")
        self._thread = thread

    def _run(self) -> None:
        fd = self._source.fileno()
        selector = None
        try:
            if self._wake is not None:
                selector = selectors.DefaultSelector()
                selector.register(fd, selectors.EVENT_READ)
                selector.register(self._wake[0], selectors.EVENT_READ)
            while True:
                if selector is not None and any(key.fd != fd for key, _ in selector.select()):
                    self._handed_over = True  # what is still in the pipe is left there, for whoever carries on
                    return
                chunk = os.read(fd, _CHUNK)
                if not chunk:
                    break
                self.tail.feed(chunk)
                if self._target_fd is not None:
                    try:
                        _write_all(self._target_fd, chunk)
                    except BrokenPipeError:  # our reader is gone: so is the child's, as without capture
                        break
                    except OSError:  # our stdout cannot be written (a full disk…): keep capturing, stop copying
                        self._target_fd = None
        except (OSError, ValueError):
            pass  # the pipe was closed under us: what was read is kept
        finally:
            if selector is not None:
                selector.close()
            self.tail.feed(b"", final=True)
            if not self._handed_over:
                self._close_source()  # the child's next write to this pipe fails (SIGPIPE)
                self._close_wake()

    def _close_source(self) -> None:
        try:
            self._source.close()
        except OSError:
            pass

    def _close_wake(self) -> None:
        wake, self._wake = self._wake, None
        for fd in wake or ():
            try:
                os.close(fd)
            except OSError:
                pass

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def carry_on(self, cat: str, timeout: float) -> bool:
        """Stop copying (within ``timeout``) without closing the pipe, and leave the copy to a ``cat`` of its own,
        which outlives us; whether it does. Not when the copy has ended, nor when it cannot stop so (not POSIX, our
        stdout not taking what it writes)."""
        wake = self._wake
        if wake is None or not self._thread.is_alive():
            return False
        try:
            os.write(wake[1], b"!")
        except OSError:
            return False
        if not self.join(timeout) or not self._handed_over:
            return False  # stuck writing to our stdout, or the pipe ended meanwhile (then closed as usual)
        self._close_wake()
        target = subprocess.DEVNULL if self._target_fd is None else self._target_fd
        try:  # in our process group, as the process it copies for: the terminal's signals reach both
            _carrying_on.append(subprocess.Popen([cat], stdin=self._source.fileno(), stdout=target,
                                                 stderr=subprocess.DEVNULL, close_fds=True))
            return True
        except OSError:
            return False  # nothing to carry on: the pipe closes, as it did before
        finally:
            self._close_source()


#: The ``cat`` processes carrying on copies (``Pump.carry_on``): they outlive us, and are not waited for.
_carrying_on: list[subprocess.Popen[bytes]] = []


def keep_copying(pumps: Sequence[Pump], timeout: float) -> None:
    """The copies of pipes a process the command left running still holds (``server &``), once we stop waiting for
    its output: each is handed to a ``cat`` of its own (``Pump.carry_on``). Without us that process would write to
    our stdout; with the pipe closed at our exit it died of SIGPIPE at its next write."""
    cat = shutil.which("cat") if os.name == "posix" else None
    for pump in pumps:
        if cat is not None and not pump.join(0):
            pump.carry_on(cat, timeout)


def _target_fd(stream: Any) -> int | None:
    try:
        stream.flush()
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None


def spawn(argv: Sequence[str], env: Mapping[str, str], capture: bool) -> subprocess.Popen[bytes]:
    """Start the command; OSError when it cannot be (see ``spawn_failure``)."""
    for stream in (sys.stdout, sys.stderr):  # what we printed comes before what the child prints
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # AttributeError: None, the descriptor was closed
            pass
    pipe = subprocess.PIPE if capture else None
    # Our stdout and stderr one file (``> log 2>&1``, a terminal, ``2>&1 | mail``): one pipe for both, copied by one
    # thread, so the command's lines keep the order it wrote them in, in the file and on the task (two pipes, copied
    # by two threads, interleaved them at random).
    errors = subprocess.STDOUT if capture and _same_file(sys.stdout, sys.stderr) else pipe
    # close_fds=False: the descriptors we were given for the command (``3>>log``, a jobserver's, systemd's
    # sockets) reach it, as without us; those Python opened here are not inheritable (PEP 446) and stay ours.
    return subprocess.Popen(list(argv), env=dict(env), stdout=pipe, stderr=errors, close_fds=False)


def _same_file(first: Any, second: Any) -> bool:
    """Whether two of our streams write to the same file (same device and inode: one file, one pipe, one terminal)."""
    try:
        one, other = os.fstat(first.fileno()), os.fstat(second.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return bool(one.st_ino) and (one.st_dev, one.st_ino) == (other.st_dev, other.st_ino)


def start_pumps(child: subprocess.Popen[bytes], limit: int) -> list[Pump]:
    pumps = []
    for source, stream, name in ((child.stdout, sys.stdout, "stdout"), (child.stderr, sys.stderr, "stderr")):
        if source is not None:
            pumps.append(Pump(source, _target_fd(stream), Tail(limit), name))
    return pumps


def _from_terminal() -> bool:
    """Whether we are the foreground process group of our terminal (so the terminal's SIGINT reached
    the child, which shares our group, as well as us)."""
    if not hasattr(os, "tcgetpgrp"):  # Windows: no process groups to share
        return False
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            continue
    return False


class SignalRelay:
    """Takes the signals the command should get: records them before the child exists, forwards them
    while it runs, and, after it exited, sets ``after_exit`` (an impatient user: stop retrying)."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.forwarded: list[int] = []
        self.after_exit = threading.Event()
        #: set by every signal we take: a wait before the command starts (its task's create) ends at once
        self.signalled = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # handlers can only be set from the main thread (an embedding caller's choice)
        for sig in forwarded_signals():
            try:
                if signal.getsignal(sig) == signal.SIG_IGN:
                    continue  # ignored by whoever started us (nohup, a background job): the command inherits that
                self._previous[sig] = signal.signal(sig, self._handle)
            except (OSError, ValueError):
                continue

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            try:
                signal.signal(sig, previous)
            except (OSError, ValueError, TypeError):
                continue
        self._previous.clear()

    def attach(self, child: subprocess.Popen[bytes], since: int) -> None:
        """Forward to ``child`` from now on, and pass on what arrived since the ``since``-th signal
        (between the decision to start it and now)."""
        self._child = child
        for signum in self.received[since:]:
            self._forward(child, signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        self.signalled.set()
        child = self._child
        if child is None:
            return
        if child.returncode is not None:
            self.after_exit.set()
            return
        self._forward(child, signum)

    def _forward(self, child: subprocess.Popen[bytes], signum: int) -> None:
        if signum in (getattr(signal, "SIGINT", -1), getattr(signal, "SIGQUIT", -1)) and _from_terminal():
            return
        try:
            child.send_signal(signum)
            self.forwarded.append(signum)
        except OSError:
            pass  # it exited meanwhile
