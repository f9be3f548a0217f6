"""Monitors the API refused: a create refused because of its monitor (an id the project does not hold: mistyped,
deleted in Task Badger, another project's; the API answers 404, 400, or 403: the contract lists no error answer for a
create, and the service may refuse another project's monitor as forbidden) is made again without it
(``inline._create``), and the monitor is left out of this process's creates (no request refused per task) for
``MONITOR_RECHECK`` seconds, then tried again. So do the other processes of the machine that share its spool
directory (a record there): RQ forks a work horse per job, which would otherwise be refused, and warn, once per job.
One warning per monitor says which setting to fix.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from ._runtime import log_throttled, short
from .config import Config
from .delivery.spool import Spool, api_key_of
from .exceptions import UnexpectedStatus

#: Seconds a process leaves out of its creates a monitor the API refused, before it tries it again (a monitor
#: created meanwhile under that id, a refusal that was the API's mistake).
MONITOR_RECHECK = 3600.0
#: Monitor id -> (the configuration it was refused under, when): left out of this process's creates.
_refused_monitors: dict[str, tuple[Config, float]] = {}
_refused_lock = threading.Lock()


#: The answers to a create with a monitor that may mean the monitor was refused (``may_be_refused``).
REFUSED_STATUSES = (400, 403, 404)


def may_be_refused(err: UnexpectedStatus) -> bool:
    """Whether the API's answer ``err`` to a create with a monitor may be a refusal of the monitor: the create is
    made again without it, and the monitor is blamed only if that one is not refused too."""
    return err.status_code in REFUSED_STATUSES


def refused(config: Config, monitor_id: str) -> bool:
    """Whether creates under ``config`` leave ``monitor_id`` out: the API refused it lately, here or in another
    process sharing the spool directory."""
    with _refused_lock:
        known = _refused_monitors.get(monitor_id)
        if known is not None:
            if known[0] is config and time.monotonic() - known[1] < MONITOR_RECHECK:
                return True
            del _refused_monitors[monitor_id]  # another configuration (init() again), or time to try it again
        # Another process of this machine may have been refused it: a work horse RQ forked for one job, a Celery
        # child recycled after its tasks, the next web process. Left out here too, without a request or a warning.
        when = _shared_refusals(config).get(monitor_id)
        age = time.time() - when if isinstance(when, (int, float)) else MONITOR_RECHECK
        if not 0 <= age < MONITOR_RECHECK:
            return False
        _refused_monitors[monitor_id] = (config, time.monotonic() - age)
        return True


#: The record of refused monitors in the spool directory, per API (``api_key_of``): monitor id -> when (wall clock).
_SHARED_NAME = "monitors-refused-{api}.json"
#: The shared record as last read: (spool directory, API, mtime) -> its refusals.
_shared_cache: list[Any] = [None, {}]


def _shared_refusals(config: Config) -> dict[str, Any]:
    """The refusals other processes recorded for ``config``'s API (``_refused_lock`` held): one stat per look,
    the record read again only when it changed."""
    if not config.spool_dir:
        return {}
    api = api_key_of(config)
    cached = _shared_cache[0]
    known = cached[2] if cached is not None and cached[:2] == (config.spool_dir, api) else None
    found = Spool(config.spool_dir).read_record(_SHARED_NAME.format(api=api), unless_mtime=known)
    if found is None:
        return {}
    mtime, refusals = found
    if refusals is not None:
        _shared_cache[:] = [(config.spool_dir, api, mtime), refusals]
    return _shared_cache[1]


def refuse(config: Config, monitor_id: str, name: str, err: UnexpectedStatus) -> None:
    """The API refused ``monitor_id`` (``err``) in the create of task ``name``: leave it out from now on, here and in
    the machine's other processes, and warn once."""
    with _refused_lock:
        if len(_refused_monitors) > 1000:  # ids come from settings and options: keep the table bounded
            _refused_monitors.clear()
        _refused_monitors[monitor_id] = (config, time.monotonic())
        if config.spool_dir:  # for this machine's other processes (see _monitor_refused)
            now = time.time()
            shared = {m: t for m, t in _shared_refusals(config).items()
                      if isinstance(t, (int, float)) and 0 <= now - t < MONITOR_RECHECK}
            Spool(config.spool_dir).write_record(_SHARED_NAME.format(api=api_key_of(config)),
                                                 {**dict(list(shared.items())[-999:]), monitor_id: now})
    log_throttled(f"monitor-refused:{monitor_id}", MONITOR_RECHECK, logging.WARNING,
                  "Task Badger: monitor %s is not one of project %s/%s's monitors (the API answered %d: %s): task %s "
                  "and every other task under that monitor are tracked without it. Fix the monitor id in %s: copy it "
                  "from the monitor's page in Task Badger (a monitor deleted there must be created again).",
                  monitor_id, config.organization_slug, config.project_slug, err.status_code,
                  short(err.message, 200), short(name), _where_set(config, monitor_id))


def _where_set(config: Config, monitor_id: str) -> str:
    """Where the user set ``monitor_id``: an integration's rules (``TASKBADGER['MONITORS']``), else a task's option."""
    for system in config.systems.values():
        monitors = getattr(system, "monitors", None)
        if isinstance(monitors, Mapping) and monitor_id in monitors.values():
            return getattr(system, "monitors_setting", None) or f"the monitors of {type(system).__name__}"
    return "the task's monitor_id option (taskbadger_monitor_id=, monitor_id=)"
