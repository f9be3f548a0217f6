"""The local spool: what a process could not deliver before it ended, kept on disk for the next one.

A pool child recycled during an outage, a worker shutting down while the API hangs, ``taskbadger run``
ending while the API trickles: waiting would only hold the process up, and dropping would leave tasks
``processing`` for ever. So the updates still queued are written here in a few milliseconds, and any
process that uses the SDK on this machine with the same API (a worker's next child or its main process,
the next ``taskbadger run``, ``manage.py taskbadger check``) delivers them once the API answers again,
within the retry horizon (a day for a final state).

* Files per spooling (``<api>-<time>-<pid>-<random>-<count>.jsonl``), written to a temporary name, synced,
  and renamed into place: a reader sees a whole file or none, after a crash of the machine too. Files are
  0600 in a 0700 directory that must belong to this user (a directory anyone can write to is not used);
  they hold no key, only which API they are for (a digest of host, organization and project).
* Bounded: at most ``MAX_BYTES`` in the directory, in files of at most ``MAX_ENTRIES`` (so that a process
  takes no more than its queue has room for); what does not fit is dropped, counted and logged.
* A file is claimed by renaming it (``….claimed-<pid>-<process token>-<pid namespace>``): of two processes,
  one wins. Its holder touches it while it holds it (``keep``). A claim whose process is gone (killed; or an
  earlier process with the same pid, as a container's pid 1 is after a restart), or left untouched for
  ``STALE_CLAIM``, is taken over; a pid means nothing in another pid namespace (another container sharing the
  directory, or another machine), so a claim made in one is taken over only once its holder has left it untouched
  for ``STALE_FOREIGN_CLAIM``; a claimed file is deleted once its updates left the queue (sent, dropped,
  or spooled again at exit), and given back (``unclaim``) when they could not be spooled again.
* A directory that is not this user's, or that others can write to, is neither written nor read: its
  files could be anyone's.
* Entries are read as input from outside: only a regular file no larger than the spool may be is read, and
  no more entries than its name says; a task id must be one, each field is kept only if its value has the
  type and form the API takes (one that does not is left out, the rest of the update kept); a line that is
  not an entry is skipped, with one log line per file, and so is a file holding fewer entries than its name
  says (one cut short by a machine that stopped before its data reached the disk). A file holding a line of a
  newer format (``"v"`` above 1: a newer version of the SDK shares the directory) is left as it is, with one
  log line. Entries older than their horizon are dropped and counted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import secrets
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._runtime import PerProcess, log_throttled, make_private_dirs, short
from ..config import Config
from ..models import (
    MAX_NAME_LENGTH,
    STATUS_VALUES,
    is_count,
    is_task_id,
    is_time_text,
    is_whole_seconds,
    monitor_id,
)
from .merge import NULLABLE

log = logging.getLogger("taskbadger")

#: Most entries in one file (a process takes whole files, up to what its queue has room for), and most
#: bytes in the whole directory.
MAX_ENTRIES = 1_000
MAX_BYTES = 64 * 1024 * 1024
#: A claim its holder has not touched for this long is taken over even if its process seems alive (a recycled
#: pid).
STALE_CLAIM = 15 * 60.0
#: A claim made in another pid namespace (another container sharing the directory, another machine) cannot be
#: judged by its pid: it is taken over once its holder has not touched it for this long (a holder touches its
#: claims every ``spooling.SCAN_INTERVAL``, 10 s).
STALE_FOREIGN_CLAIM = 60.0


def _text(limit: int) -> Any:
    # Control characters are taken: these go in a JSON body, never in a request line or a header, and the SDK sends
    # them as they are (a run named with a tab, a tag value with a line break). Refused here, a run spooled during an
    # outage lost its create (one field failing refuses it whole), and its outcome was dropped, found by nobody.
    return lambda v: isinstance(v, str) and len(v) <= limit


def _dict(v: Any) -> bool:
    return isinstance(v, dict)


#: Update fields an entry may carry (what the SDK sends, and its merge markers), each with the check its value
#: must pass (a field that fails is left out; the rest of the update, its status above all, is kept).
_FIELDS: dict[str, Any] = {
    "name": _text(MAX_NAME_LENGTH * 4), "status": lambda v: isinstance(v, str) and v in STATUS_VALUES,
    "value": lambda v: v is None or is_count(v), "value_max": is_count, "max_runtime": is_whole_seconds,
    "stale_timeout": is_whole_seconds,
    "data": lambda v: v is None or _dict(v),
    "tags": lambda v: _dict(v) and all(isinstance(x, str) for x in v.values()),
    "queue": _text(1000), "external_id": _text(1000), "parent": lambda v: v is None or is_task_id(v),
    "start_time": is_time_text, "end_time": is_time_text,
    "actions": lambda v: isinstance(v, list) and all(_dict(a) for a in v), "merge_data": _dict,
    "_taskbadger_unless_final": lambda v: v is True, "_taskbadger_only_if_pending": lambda v: v is True,
    "_taskbadger_complete_progress": lambda v: v is True,
    "_taskbadger_keep_start": lambda v: v is True, "_taskbadger_unless_ended_later": lambda v: v is True,
    "_taskbadger_send_null": lambda v: isinstance(v, list) and all(k in NULLABLE for k in v),
    "_taskbadger_drop_data": lambda v: isinstance(v, list) and len(v) <= 100 and all(
        isinstance(k, str) for k in v),
}
#: The fields of a task's create body an entry may carry (``CREATE_TASK``): the API's, none of the markers.
_BODY_FIELDS = {key: check for key, check in _FIELDS.items() if key != "merge_data" and not key.startswith("_")}
#: An entry for a run's task by external id may carry how to create that task (``{"body": <create body, name
#: included, final status set>, "monitor_id": <id or None>}``): a run whose create failed during an outage (a 5xx, no
#: answer) may have no task at all, and its outcome, found by nobody, would be lost with its monitor's check-in. Not an
#: API field. An earlier version reading it leaves it out (an unknown field), as it did before.
CREATE_TASK = "_taskbadger_create"


def _create_spec(value: Any) -> bool:
    if not _dict(value) or set(value) - {"body", "monitor_id"} or not _dict(value.get("body")):
        return False
    body, monitor = value["body"], value.get("monitor_id")
    return "name" in body and all(key in _BODY_FIELDS and _BODY_FIELDS[key](v) for key, v in body.items()) and (
        monitor is None or monitor_id(monitor) is not None)


_FIELDS[CREATE_TASK] = _create_spec
#: A file larger than the whole spool may be is not one of ours: it is not read.
MAX_FILE_BYTES = MAX_BYTES
_SUFFIX = ".jsonl"
_CLAIMED = ".claimed-"
#: This process's claims are ``.claimed-<pid>-<token>-<namespace>``: the token tells its claims from those of an
#: earlier process that had the same pid, the namespace (``_pid_namespace``) where that pid means something.
_TOKEN: PerProcess[str] = PerProcess(lambda: secrets.token_hex(4))


def _pid_namespace() -> str:
    """Which pids this process's pid is one of: its pid namespace on this boot of this machine (a digest of the
    boot id and the namespace's inode; two containers, each with its pid 1, have two). "" where that is not
    known (not Linux): claims are then judged by their pid alone, as those of earlier versions are."""
    try:
        inode = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as boot:
            boot_id = boot.read(64).strip()
    except OSError:
        boot_id = b""  # the namespace alone, then
    return hashlib.sha256(boot_id + b"/" + str(inode).encode()).hexdigest()[:8]


_NAMESPACE: PerProcess[str] = PerProcess(_pid_namespace)


def api_key_of(config: Config) -> str:
    """Which API entries are for: a digest of host, organization and project (never the key)."""
    text = f"{config.host}\n{config.organization_slug}\n{config.project_slug}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Entry:
    """One update on disk: for a task (``task_id``), or for the task a run may have (``external_id``,
    looked up once the API answers: ``taskbadger.inline.settle_later``)."""

    fields: dict[str, Any]
    task_id: str | None = None
    external_id: str | None = None
    final: bool = False
    since: float = field(default_factory=time.time)  # when it was first queued (wall clock)

    def to_json(self) -> str:
        record: dict[str, Any] = {"v": 1, "fields": self.fields, "final": self.final, "since": self.since}
        if self.task_id is not None:
            record["task_id"] = self.task_id
        else:
            record["external_id"] = self.external_id
        return json.dumps(record, separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, line: str) -> Entry:
        """Raises ValueError for a line that is not an entry."""
        try:
            record = json.loads(line)
        except RecursionError:
            raise ValueError("nested too deeply") from None
        if isinstance(record, dict) and _newer(record.get("v")):
            raise NewerFormat(record["v"])
        if not isinstance(record, dict) or record.get("v") != 1:
            raise ValueError("not an entry")
        fields, task_id, external_id = record.get("fields"), record.get("task_id"), record.get("external_id")
        since = record.get("since")
        if not isinstance(fields, dict) or not isinstance(since, (int, float)) or isinstance(since, bool):
            raise ValueError("not an entry")
        if task_id is not None and not is_task_id(task_id):
            raise ValueError(f"not a task id: {short(task_id, 40)}")
        if task_id is None and not (isinstance(external_id, str) and 0 < len(external_id) <= 1000):
            raise ValueError("neither a task id nor an external id")
        kept = {key: value for key, value in fields.items()
                if key in _FIELDS and _plain(value) and _FIELDS[key](value)}
        return cls(kept, task_id, external_id if task_id is None else None, record.get("final") is True, float(since))


class NewerFormat(ValueError):
    """A line written by a newer version of the SDK, in a format this one does not know: the whole file is left
    as it is, for a process that knows it."""


def _newer(version: Any) -> bool:
    return isinstance(version, int) and not isinstance(version, bool) and version > 1


#: Spool files of a newer format this process left as they are (their names, as unclaimed), not taken again.
_NEWER: set[str] = set()


def _plain(value: Any, depth: int = 0) -> bool:
    """JSON's own types only (what ``json.loads`` makes), not too deep."""
    if depth > 32:
        return False
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, list):
        return all(_plain(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


@dataclass
class Claim:
    """A spool file this process took: its entries, and its path (deleted once they left the queue)."""

    path: pathlib.Path
    entries: list[Entry]


class Spool:
    """One spool directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = pathlib.Path(directory)

    # -- writing -------------------------------------------------------------------------------------

    def write(self, api: str, entries: Iterable[Entry]) -> tuple[int, int]:
        """Write ``entries``, in files of at most ``MAX_ENTRIES``; (written, dropped). All or none: what was
        written is removed again when the rest cannot be. Never raises."""
        items = list(entries)
        if not items:
            return 0, 0
        written: list[pathlib.Path] = []
        try:
            self._ready()
            chunks = [("\n".join(entry.to_json() for entry in items[i:i + MAX_ENTRIES]) + "\n").encode()
                      for i in range(0, len(items), MAX_ENTRIES)]
            if sum(len(chunk) for chunk in chunks) > MAX_BYTES - self._size():
                log_throttled("spool:full", 60.0, logging.ERROR, "Task Badger: the spool %s is full (%d MB): %d "
                              "update(s) dropped", self.directory, MAX_BYTES // 2**20, len(items))
                return 0, len(items)
            for i, chunk in enumerate(chunks):
                count = min(MAX_ENTRIES, len(items) - i * MAX_ENTRIES)
                written.append(self._write_file(f"{api}-{time.time_ns()}-{os.getpid()}-{secrets.token_hex(4)}-"
                                                f"{count}{_SUFFIX}", chunk, durable=True))
        except OSError as err:
            for path in written:
                path.unlink(missing_ok=True)
            log_throttled("spool:write", 60.0, logging.ERROR, "Task Badger: could not write %d update(s) to the spool "
                          "%s (%s); they are lost", len(items), self.directory, err)
            return 0, len(items)
        return len(items), 0

    def _write_file(self, name: str, data: bytes, durable: bool = False) -> pathlib.Path:
        """Write ``name`` under a temporary name and rename it into place. ``durable``: its data reaches the disk
        before the rename, and the rename before this returns (a machine that stops right after, a host crash or a
        power cut, leaves the whole file, not an empty one or a temporary one removed unread; a few ms)."""
        temporary = self.directory / f".{name}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                if durable:
                    out.flush()
                    os.fsync(out.fileno())
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        os.replace(temporary, self.directory / name)
        if durable:
            _sync_directory(self.directory)
        return self.directory / name

    def _ready(self) -> None:
        """Make the directory, and each missing one above it, 0700; check that it is ours and nobody else's to
        write."""
        make_private_dirs(self.directory)
        self._check_owner()

    def _check_owner(self) -> None:
        """Raise PermissionError unless the directory is this user's and nobody else's to write."""
        info = self.directory.stat()
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise PermissionError(f"{self.directory} belongs to another user")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise PermissionError(f"{self.directory} can be written by other users (make it 0700)")

    def _size(self) -> int:
        """Bytes in the directory, but for this process's own claims (deleted once what they held is spooled
        again, or given back if it cannot be)."""
        total = 0
        mine = _claim_suffix()
        for path in self.directory.iterdir():
            if path.name.endswith(mine):
                continue
            try:
                total += path.stat().st_size
            except OSError:
                continue
        return total

    # -- a small record the processes of one machine share (not an update: never claimed) -------------

    def read_record(self, name: str, unless_mtime: int | None = None) -> tuple[int, dict[str, Any] | None] | None:
        """The record ``name``'s mtime (ns) and the JSON object in it; None when there is none, or it cannot be
        read. When its mtime is ``unless_mtime`` (the reader has it already) the object is not read: None in its
        place (one ``stat``). Never raises."""
        path = self.directory / name
        try:
            mtime = path.stat().st_mtime_ns
            if mtime == unless_mtime:
                return mtime, None
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        return (mtime, data) if isinstance(data, dict) else None

    def write_record(self, name: str, data: Mapping[str, Any]) -> bool:
        """Replace the record ``name`` with ``data`` (JSON), at once for its readers; whether it was written.
        Never raises."""
        try:
            self._ready()
            self._write_file(name, json.dumps(data).encode())
        except (OSError, ValueError, TypeError):
            return False
        return True

    # -- reading -------------------------------------------------------------------------------------

    def waiting(self, api: str) -> int:
        """Entries waiting for ``api`` (claimed ones included), from the file names: nothing is read."""
        return sum(_count(path) for path in self._files(api, claimed=True))

    def claim(self, api: str, horizon: float, limit: int | None = None,
              final_horizon: float | None = None) -> tuple[list[Claim], int]:
        """Take the files for ``api`` nobody holds (and the claims whose process is gone), oldest first, while
        their entries add up to at most ``limit`` (what the taker's queue has room for: the rest stays for a
        later look; None: every file); return them with their entries, and how many entries were dropped (older than
        ``horizon`` seconds, ``final_horizon`` for a final state; or not entries at all)."""
        claims: list[Claim] = []
        dropped = taken = 0
        try:
            self._check_owner()
        except FileNotFoundError:
            return [], 0  # nothing was ever spooled here
        except OSError as err:
            log_throttled("spool:owner", 60.0, logging.WARNING, "Task Badger: the spool %s is not read: %s",
                          self.directory, err)
            return [], 0
        final_horizon = horizon if final_horizon is None else final_horizon
        self._expire(api, final_horizon)
        for path in self._files(api, claimed=True):
            if path.name.split(_CLAIMED)[0] in _NEWER or (_CLAIMED in path.name and not _abandoned(path)):
                continue
            count = _count(path)
            if count > MAX_ENTRIES:  # written by an earlier version (files of up to 10,000): made into files of
                dropped += self._split(api, path, horizon, final_horizon)  # this one's, taken at a later look
                continue
            taken += count
            if limit is not None and taken > limit:
                break
            mine = self._take(path)
            if mine is None:
                continue
            try:
                entries, lost = _read(mine, horizon, final_horizon, count)
            except NewerFormat as newer:
                _leave_newer(mine, newer)
                taken -= count
                continue
            dropped += lost
            claims.append(Claim(mine, entries))
        return claims, dropped

    def _expire(self, api: str, final_horizon: float) -> None:
        """Remove the files of other API keys that nobody has written for ``final_horizon`` (a key rotated away:
        nobody reads them any more, and they would hold the spool's room for ever, until it refused every write).
        Every update in them is older than that, so a reader would drop it too. Only files in this version's format:
        a newer version may keep its updates longer."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        removed = 0
        oldest = time.time() - final_horizon
        for name in names:
            path = self.directory / name
            if name.startswith(f"{api}-") or name.split(_CLAIMED)[0] in _NEWER or not (
                    name.endswith(_SUFFIX) or (f"{_SUFFIX}{_CLAIMED}" in name and _abandoned(path))):
                continue
            try:
                if path.lstat().st_mtime >= oldest or not _in_this_format(path):
                    continue
                path.unlink()
            except OSError:
                continue
            removed += 1
        if removed:
            log.warning("Task Badger: %d spool file(s) of another API key, not written for %.0f h, were removed (every "
                        "update in them was too old to send)", removed, final_horizon / 3600)

    def _take(self, path: pathlib.Path) -> pathlib.Path | None:
        """Claim a file (rename it as this process's); None when another process took it first."""
        mine = path.with_name(path.name.split(_CLAIMED)[0] + _claim_suffix())
        try:
            os.replace(path, mine)
        except FileNotFoundError:
            return None
        except OSError as err:
            log_throttled("spool:claim", 60.0, logging.WARNING, "Task Badger: cannot take %s: %s", path, err)
            return None
        Spool.keep(mine)  # a rename keeps the time the file was written: a claim's age counts from now
        return mine

    def _split(self, api: str, path: pathlib.Path, horizon: float, final_horizon: float) -> int:
        """Rewrite a file of more than ``MAX_ENTRIES`` as files of at most that; returns the entries dropped."""
        mine = self._take(path)
        if mine is None:
            return 0
        try:
            entries, lost = _read(mine, horizon, final_horizon, _count(path))
        except NewerFormat as newer:
            _leave_newer(mine, newer)
            return 0
        written, _ = self.write(api, entries)
        if written == len(entries):
            mine.unlink(missing_ok=True)
        else:
            Spool.unclaim(Claim(mine, entries))
        return lost

    def _files(self, api: str, claimed: bool) -> list[pathlib.Path]:
        try:
            names = sorted(os.listdir(self.directory))
        except OSError:
            return []
        for name in names:  # a write cut short (the process was killed mid-write) is never read: remove it
            if name.startswith(".") and name.endswith(".tmp"):
                _remove_if_older(self.directory / name, STALE_CLAIM)
        return [self.directory / name for name in names if name.startswith(f"{api}-") and (
            name.endswith(_SUFFIX) or (claimed and f"{_SUFFIX}{_CLAIMED}" in name))]

    @staticmethod
    def keep(path: pathlib.Path) -> None:
        """Mark a claimed file as held now (its mtime): a claim untouched for ``STALE_CLAIM`` is taken over."""
        try:
            os.utime(path)
        except OSError:
            pass  # given back, released or taken over meanwhile

    @staticmethod
    def release(claim: Claim) -> None:
        claim.path.unlink(missing_ok=True)

    @staticmethod
    def unclaim(claim: Claim) -> None:
        """Give a claimed file back, for the next process to take (what it held could not be spooled again)."""
        try:
            os.replace(claim.path, claim.path.with_name(claim.path.name.split(_CLAIMED)[0]))
        except OSError as err:
            log.error("Task Badger: could not give the spool file %s back (%s)", claim.path, err)


def _leave_newer(mine: pathlib.Path, newer: NewerFormat) -> None:
    """Give back a file of a newer format, and never take it again (it is said once)."""
    Spool.unclaim(Claim(mine, []))
    name = mine.name.split(_CLAIMED)[0]
    if len(_NEWER) > 100_000:
        _NEWER.clear()
    _NEWER.add(name)
    log.warning("Task Badger: the spool file %s was written by a newer version of Task Badger (format %s); it is left "
                "for a process that reads it", name, newer)


def _sync_directory(directory: pathlib.Path) -> None:
    """Put a rename in ``directory`` on disk (where a directory can be opened: not on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # a file system that cannot sync a directory: the file's own data is on disk
    finally:
        os.close(fd)


def _claim_suffix() -> str:
    namespace = _NAMESPACE.get()
    return f"{_CLAIMED}{os.getpid()}-{_TOKEN.get()}" + (f"-{namespace}" if namespace else "")


def _count(path: pathlib.Path) -> int:
    """The number of entries a spool file holds, from its name."""
    try:
        return int(path.name.split(_SUFFIX)[0].rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0


def _in_this_format(path: pathlib.Path) -> bool:
    """Whether a spool file (a regular file) starts with a line this version writes (``Entry.to_json``)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.read(fd, 7) == b'{"v":1,'
    finally:
        os.close(fd)


def _remove_if_older(path: pathlib.Path, age: float) -> None:
    try:
        if time.time() - path.stat().st_mtime > age:
            path.unlink()
    except OSError:
        pass


def _abandoned(path: pathlib.Path) -> bool:
    """A claimed file whose process is gone, or that its holder has not touched for too long. Its name says which
    process: ``<pid>-<token>-<pid namespace>`` (``<pid>-<token>`` or ``<pid>`` by earlier versions)."""
    try:
        pid_text, _, rest = path.name.rsplit(_CLAIMED, 1)[1].partition("-")
        token, _, namespace = rest.partition("-")
        pid = int(pid_text)
        age = time.time() - path.stat().st_mtime
    except (ValueError, OSError):
        return False
    if namespace and namespace != _NAMESPACE.get():
        # another container's, or another machine's: its pid says nothing here, only its holder's touches do
        return age > STALE_FOREIGN_CLAIM
    if pid == os.getpid():
        # ours, being delivered right now; or an earlier process's with the same pid (a container's pid 1)
        return token != _TOKEN.get()
    if age > STALE_CLAIM:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, someone else's
    return False


def _read(path: pathlib.Path, horizon: float, final_horizon: float, most: int) -> tuple[list[Entry], int]:
    """The entries of a claimed file (at most ``most``: what its name says it holds), and how many were dropped.
    Only a regular file no larger than the whole spool is read (not a FIFO, a device or a link to one)."""
    entries: list[Entry] = []
    dropped = corrupt = 0
    oldest, oldest_final = time.time() - horizon, time.time() - final_horizon
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        try:
            info = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE_BYTES:
            os.close(fd)
            log_throttled("spool:not-a-file", 60.0, logging.WARNING, "Task Badger: %s in the spool is not a spool file "
                          "(not a regular file, or larger than the spool may be); it is removed", path.name)
            path.unlink(missing_ok=True)
            return [], 0
        with open(fd, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if not line.strip():
                    continue
                if len(entries) + dropped + corrupt >= most:
                    corrupt += 1  # more than its name says: not a file this SDK wrote
                    continue
                try:
                    entry = Entry.from_json(line)
                except NewerFormat:
                    raise
                except ValueError:
                    corrupt += 1
                    continue
                if entry.since < (oldest_final if entry.final else oldest):
                    dropped += 1
                    continue
                entries.append(entry)
    except OSError as err:
        log.warning("Task Badger: cannot read the spool file %s (%s); it is skipped", path, err)
        return [], 0
    if corrupt:
        log.warning("Task Badger: %d line(s) of the spool file %s are not updates; they are skipped", corrupt,
                    path.name)
    missing = most - len(entries) - dropped - corrupt
    if missing > 0:  # cut short after it was renamed into place: the machine stopped before its data was on disk
        log.error("Task Badger: the spool file %s holds %d update(s) fewer than its name says (%d); they are lost",
                  path.name, missing, most)
        corrupt += missing
    if dropped:
        log.error("Task Badger: %d spooled update(s) were too old (%.0f s, a final state %.0f s) and are dropped",
                  dropped, horizon, final_horizon)
    return entries, dropped + corrupt


def entries_from(items: Iterable[tuple[str, Mapping[str, Any], bool, float]]) -> list[Entry]:
    """Spool entries for queued updates: (task id, fields, final, first queued, wall clock)."""
    return [Entry(dict(fields), task_id=task_id, final=final, since=since) for task_id, fields, final, since in items]
