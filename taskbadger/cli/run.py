"""``taskbadger run NAME -- COMMAND...``: run a command and record its outcome as a task.

What a crontab line or a CI step can rely on:

* **The command always runs, and its exit status is always ours**, whatever happens to Task Badger: no
  configuration (one line on stderr says why, then the command runs untracked), the API down, slow,
  refusing the key. We never print a traceback.
* **At most the connect timeout before the command starts.** The task is created in a background
  thread; we wait for it no longer than the configured connect timeout (2 s by default,
  ``TASKBADGER_HTTP_TIMEOUT`` sets it). A slower create still completes in the background and the task
  is then tracked as usual, but the command started without ``TASKBADGER_TASK_ID``.
* **While it runs**, the task is pinged every ``--update-frequency`` seconds (its ``stale_timeout`` is
  twice that), with the captured output's tail under ``--capture-output``.
* **After the command ends, at most ``FINAL_UPDATE_BUDGET`` (10 s) for tracking, whatever the API
  does.** The outcome is retried through transient failures (no answer, 5xx, 429) with exponential
  backoff (0.25 s doubling to 8 s, or the server's Retry-After); every request has one deadline for
  the whole exchange, so an API that trickles its answer cannot stretch it. What is not delivered by
  then (the API down, hanging, refusing) is written to the local spool, and the next process that uses
  Task Badger on this machine (the next ``taskbadger run``…) delivers it. A signal (SIGTERM, SIGINT…)
  after the command exited ends us at once with the command's exit status, the outcome spooled.
* **No run left** ``processing``: the run's task carries an ``external_id`` of its own; when its create
  may have been carried out without an answer (a slow API), the outcome is recorded on the task found
  by that id, now or, once the API answers, by whoever delivers the spool; when the API holds no such
  task (the create was never carried out: a 5xx, a hang), whoever delivers the spool creates it, ended,
  under its monitor.
* **Status follows the exit status**: 0 is ``success``, anything else ``error``, with
  ``data.return_code``. A command killed by a signal, including one forwarded from us (Ctrl-C, a CI
  runner's or systemd's SIGTERM), ends ``error`` rather than ``cancelled``: its work did not complete,
  and alerts set on errors must fire for a job that was stopped, as they would for one that crashed.
  ``data.signal`` names the signal and ``data.forwarded_signal`` the one we passed on, which tells a
  requested stop from a crash. (``cancelled`` stays what it means in Task Badger: cancelled there.)
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from taskbadger import endpoints, http, inline, models, monitors, spooling
from taskbadger._runtime import short, start_daemon_thread
from taskbadger.actions import Action, action_dicts
from taskbadger.config import Config
from taskbadger.delivery.spool import CREATE_TASK, Entry, Spool, api_key_of
from taskbadger.exceptions import RateLimited, ServerError, TaskbadgerException, TransportError
from taskbadger.models import TaskModel, fitted_name, format_datetime
from taskbadger.task import Task

from . import process
from .commands import describe_error

log = logging.getLogger("taskbadger")

FINAL_UPDATE_BUDGET = 10.0
FIRST_BACKOFF, MAX_BACKOFF = 0.25, 8.0
#: Characters of each captured stream kept on the task (the tail: where errors are).
CAPTURE_LIMIT = 16_000
TRANSIENT = (TransportError, ServerError, RateLimited)
#: What the captured output keeps of the API key, when the command printed it (``env``, ``curl -v``).
REDACTED = "[redacted: API key]"


def run_command(name: str, command: Sequence[str], *, configure: Callable[[], Config], update_frequency: int = 5,
                monitor_id: str | None = None, tags: Mapping[str, str] | None = None, action: Action | None = None,
                capture_output: bool = False, err: TextIO | None = None) -> process.ExitStatus:
    """Run ``command`` tracked as task ``name``; return its exit status (see the module docstring), with the
    signal that killed it or stopped it from starting (``killed_by``).

    ``configure`` configures the SDK and returns its config, or raises an exception whose message says
    why it cannot (then the command runs untracked)."""
    relay = process.SignalRelay()
    relay.install()
    try:
        return _Run(name, list(command), update_frequency, capture_output, err or sys.stderr, relay).execute(
            configure, monitor_id, dict(tags or {}), action)
    finally:
        relay.restore()


class _Run:
    def __init__(self, name: str, command: list[str], frequency: int, capture: bool, err: TextIO,
                 relay: process.SignalRelay) -> None:
        self.name, self.command, self.frequency, self.capture = fitted_name(name), command, frequency, capture
        self.err, self.relay = err, relay
        self.tracker: Tracker | None = None
        self.monitor_noted = False

    def note(self, message: str) -> None:
        try:
            self.err.write(f"taskbadger: {message}\n")
            self.err.flush()
        except (OSError, ValueError):
            pass

    def execute(self, configure: Callable[[], Config], monitor_id: str | None, tags: dict[str, str],
                action: Action | None) -> process.ExitStatus:
        try:
            self.tracker = self._track(configure, monitor_id, tags, action)
        except Exception as error:  # whatever it is, the command still runs
            self.note(f"not tracking this run: {describe_error(error)}")
        if self.relay.received:  # told to stop before the command started: do not start it
            self.relay.after_exit.set()  # nor wait for the API: the outcome is spooled if not taken at once
            signum = self.relay.received[0]
            code = 128 + signum
            self._finish(code, {"signal": process.signal_name(signum), "error": "stopped before the command started"})
            return process.ExitStatus(code, signum)
        env = dict(os.environ)
        task_id = self.tracker.task_id if self.tracker else None
        if task_id:
            env["TASKBADGER_TASK_ID"] = task_id
        else:  # inherited from an outer run (a tracked script running a step): the command's reports would land there
            env.pop("TASKBADGER_TASK_ID", None)
        argv = process.shell_argv(self.command)
        seen = len(self.relay.received)
        try:
            child = process.spawn(argv, env, self.capture)
        except OSError as error:
            code, message = process.spawn_failure(error, argv[0])
            self.note(message)
            self._finish(code, {"error": message})
            return process.ExitStatus(code)
        return self._supervise(child, seen)

    def _track(self, configure: Callable[[], Config], monitor_id: str | None, tags: dict[str, str],
               action: Action | None) -> Tracker | None:
        config = configure()
        if monitor_id is not None and models.monitor_id(monitor_id) is None:
            # mistyped (a character short, a quote copied with it): the API was never asked, and the create's
            # InvalidData left the whole run untracked, where a monitor Task Badger refuses leaves out the monitor alone
            self.note(f"--monitor-id {short(monitor_id, 80)} is not a monitor id (a UUID): the run is tracked without "
                      "it; copy the id from the monitor's page in Task Badger")
            monitor_id = None
        fields: dict[str, Any] = {"status": "processing", "stale_timeout": 2 * self.frequency, "tags": tags or None,
                                  "external_id": f"taskbadger-run-{uuid.uuid4()}"}
        actions = action_dicts([action]) if action else None
        if actions:
            fields["actions"] = actions
        tracker = Tracker(config, self.name, fields, monitor_id)
        if not tracker.wait_created(config.timeout[0], self.relay.signalled):
            return tracker  # still creating: it may finish in the background
        if tracker.failure is not None and tracker.create_later:
            self.note(f"not tracked yet: {describe_error(tracker.failure, config)}; the run is recorded when it "
                      "ends, or later")
        elif tracker.failure is not None and not tracker.maybe_created:
            self.note(f"not tracking this run: {describe_error(tracker.failure, config)}")
            return None
        if tracker.task_id is not None:
            self._monitor_note(tracker)
        if _is_terminal(self.err) and tracker.public_url:
            self.note(f"Task created: {tracker.public_url}")
        return tracker

    def _monitor_note(self, tracker: Tracker) -> None:
        """Once: the run's monitor was refused, and its task made without it (the SDK's warning does not reach
        stderr; a crontab's mail must say which option to fix, or the monitor's check-ins are missed unexplained)."""
        if self.monitor_noted or not tracker.monitor_left_out:
            return
        self.monitor_noted = True
        self.note(f"monitor {tracker.monitor_id} is not one of project {tracker.config.organization_slug}/"
                  f"{tracker.config.project_slug}'s monitors (Task Badger refused it): the run is tracked without it; "
                  "check --monitor-id")

    def _supervise(self, child: subprocess.Popen[bytes], seen: int) -> process.ExitStatus:
        self.relay.attach(child, seen)
        pumps: list[process.Pump] = []
        try:
            pumps = process.start_pumps(child, CAPTURE_LIMIT) if self.capture else []
        except Exception as error:  # no thread to copy the output: a full pipe would hang the command for good
            self.note(f"cannot copy the command's output ({error}); its stdout and stderr are closed")
            for pipe in (child.stdout, child.stderr):
                if pipe is not None:
                    pipe.close()
        try:
            if self.tracker:
                secrets = _secrets(self.tracker.config)
                self.tracker.start_heartbeat(self.frequency, lambda: _captured(pumps, secrets))
        except Exception as error:
            self.note(f"tracking stopped: {describe_error(error)}")
        returncode = _wait(child)
        ended = time.monotonic()  # the budget after the command starts now: the drain is part of it
        deadline = ended + process.DRAIN_GRACE
        for pump in pumps:
            pump.join(max(0.0, deadline - time.monotonic()))
        status = process.ExitStatus.of(returncode)
        code = int(status)
        data: dict[str, Any] = _captured(pumps, _secrets(self.tracker.config) if self.tracker else ()) or {}
        if returncode < 0:
            data["signal"] = process.signal_name(-returncode)
        if self.relay.forwarded:
            data["forwarded_signal"] = process.signal_name(self.relay.forwarded[-1])
        # what the command left running still writes to its output: not killed by SIGPIPE when we exit
        process.keep_copying(pumps, min(1.0, max(0.0, ended + FINAL_UPDATE_BUDGET - time.monotonic())))
        self._finish(code, data, ended)
        return status

    def _finish(self, code: int, data: dict[str, Any], ended: float | None = None) -> None:
        """Record the outcome within ``FINAL_UPDATE_BUDGET`` of the command's end (``ended``, monotonic; now by
        default); spool it when the API does not take it by then, or when a signal says not to wait. Then hand over
        whatever else this process holds (``spooling``)."""
        deadline = (time.monotonic() if ended is None else ended) + FINAL_UPDATE_BUDGET
        stop = self.relay.after_exit
        if self.tracker is not None:
            tracker = self.tracker
            outcome = tracker.outcome(code, {**data, "return_code": code})
            result: dict[str, BaseException | None] = {}
            done = threading.Event()

            def deliver() -> None:
                try:
                    result["failure"] = tracker.deliver(outcome, deadline, stop)
                except Exception as error:
                    result["failure"] = error
                done.set()

            if start_daemon_thread(deliver, "taskbadger-cli-finish") is None:
                deliver()  # no thread to spare: the deadline still bounds each request
            while not done.wait(0.05):
                if stop.is_set() or time.monotonic() >= deadline:
                    break
            failure = result.get("failure") if done.is_set() else TimeoutError(
                "stopped by a signal" if stop.is_set() else f"not delivered within {FINAL_UPDATE_BUDGET:g} s")
            if failure is None and tracker.task_id is not None:
                self._monitor_note(tracker)
            if failure is not None and tracker.task_id is None and not (tracker.maybe_created or tracker.creating
                                                                         or tracker.create_later):
                self.note(f"this run was not tracked: {describe_error(failure, tracker.config)}")
            elif failure is not None:
                spooled = tracker.spool(outcome) if _transient(failure) else None
                what = f"spooled in {spooled}; the next taskbadger command within a day delivers it" if spooled else \
                    "it is lost" if _transient(failure) else "it was refused"
                self.note(f"could not record the outcome (exit status {code}) in Task Badger: "
                          f"{describe_error(failure, tracker.config)}; {what}")
        # updates this process took from the spool at start, still queued: deliver or spool them again
        spooling.shutdown(max(0.0, deadline - time.monotonic()), give_up=stop.is_set)


def _transient(failure: BaseException) -> bool:
    return isinstance(failure, (*TRANSIENT, TimeoutError))


def _wait(child: subprocess.Popen[bytes]) -> int:
    """The child's return code, however long it takes: it is the status we exit with."""
    while True:
        try:
            return child.wait()
        except Exception as error:  # never seen; if wait() breaks, poll rather than lose the status
            log.debug("Task Badger: waiting for the command failed (%s); polling", error)
            if child.poll() is not None:
                return child.returncode
            time.sleep(0.1)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _captured(pumps: Sequence[process.Pump], secrets: Sequence[str]) -> dict[str, Any] | None:
    if not pumps:
        return None
    data: dict[str, Any] = {}
    for pump in pumps:
        text, cut = pump.tail.snapshot()
        if text:
            data[pump.name] = _redact(text, secrets, cut_before=bool(cut))
        if cut:
            data[f"{pump.name}_truncated_chars"] = cut
    return data


def _secrets(config: Config) -> tuple[str, ...]:
    """The API key in the forms a command may print it, longest first: as it is configured (the project key,
    base64 of "org/project/secret", with or without its padding; ``TASKBADGER_API_KEY`` as it is set) and its
    secret part (what an ``Authorization: Bearer`` header carries)."""
    token = str(config.token)
    forms = {token, os.environ.get("TASKBADGER_API_KEY", "").strip()}
    if config.organization_slug and config.project_slug:
        key = base64.b64encode(f"{config.organization_slug}/{config.project_slug}/{token}".encode()).decode()
        forms |= {key, key.rstrip("=")}
    return tuple(sorted((form for form in forms if len(form) >= 8), key=len, reverse=True))


def _redact(text: str, secrets: Sequence[str], cut_before: bool) -> str:
    """``text`` without the key; when characters were cut before it (``cut_before``), the kept tail may begin
    inside a key: what is left of it goes too."""
    for form in secrets:
        text = text.replace(form, REDACTED)
    for form in secrets if cut_before else ():
        for length in range(len(form) - 1, 3, -1):
            if text.startswith(form[-length:]):
                return REDACTED + text[length:]
    return text


class Tracker:
    """One run's task: created in a background thread, pinged by another, its outcome delivered or spooled.

    Every request has one deadline for the whole exchange (``taskbadger.http.Deadline``)."""

    def __init__(self, config: Config, name: str, fields: dict[str, Any], monitor_id: str | None) -> None:
        self.config = config
        self.failure: BaseException | None = None
        self.maybe_created = False  # the create failed, but the API may have carried it out
        #: the create certainly failed, for a while (a 503, a 429, no connection): the task is created, ended, when the
        #: outcome is delivered, or by whoever delivers the spool; the run is not lost, nor its monitor's check-in
        self.create_later = False
        self.external_id: str | None = fields.get("external_id")
        self.monitor_id = monitor_id
        self.started = format_datetime(dt.datetime.now(dt.timezone.utc))
        #: the create's body as sent: what the spool needs to create the task later, should the create never happen
        self._create_sent: dict[str, Any] | None = None
        self._task: dict[str, Any] | None = None
        self._created = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._sent_output: dict[str, Any] | None = None

        def create() -> None:
            try:
                self._create_sent = _create_body(name, fields)
                self._remember(inline.create_from_body(config, name, self._create_sent, monitor_id,
                                                       http.Deadline.for_call(config.timeout), self._created_late))
            except BaseException as error:
                self.failure = error
                self.maybe_created = _maybe_created(error)
                self.create_later = not self.maybe_created and isinstance(error, TRANSIENT) and \
                    self._create_sent is not None
            finally:
                self._created.set()

        if start_daemon_thread(create, name="taskbadger-cli-create") is None:
            create()  # no thread to spare: the command starts once the create is answered or its budget spent

    def _created_late(self, answer: http.Answer) -> None:
        """The create's answer came after its deadline: the run is tracked after all."""
        try:
            self._remember(endpoints.task_answer(self.config, http.decode(*answer)))
        except TaskbadgerException:
            pass

    def _remember(self, task: TaskModel | Task) -> None:
        with self._lock:
            self._task = task.to_dict()

    def wait_created(self, timeout: float, interrupt: threading.Event | None = None) -> bool:
        """Whether the create was answered within ``timeout``; a wait ``interrupt`` ends at once (a signal: the
        command will not start, and whoever sent it expects us to end now). Polled: a signal handler cannot wake
        an ``Event.wait`` of the main thread."""
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._created.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
            if (interrupt is not None and interrupt.is_set()) or time.monotonic() >= deadline:
                return False
        return True

    @property
    def monitor_left_out(self) -> bool:
        """The run's monitor was refused by the API (not one of the project's): its task is made without it."""
        return bool(self.monitor_id) and monitors.refused(self.config, str(self.monitor_id))

    @property
    def creating(self) -> bool:
        """The create is still in flight: the API may carry it out yet."""
        return not self._created.is_set()

    @property
    def task_id(self) -> str | None:
        with self._lock:
            return self._task["id"] if self._task else None

    @property
    def public_url(self) -> str | None:
        with self._lock:
            return (self._task or {}).get("public_url")

    def _known_data(self) -> dict[str, Any]:
        with self._lock:
            data = (self._task or {}).get("data")
        return dict(data) if isinstance(data, dict) else {}

    def start_heartbeat(self, frequency: float, captured: Callable[[], dict[str, Any] | None]) -> None:
        def beat() -> None:
            while not self._stop.wait(frequency):
                task_id = self.task_id
                if task_id is None:
                    continue
                body: dict[str, Any] = {}
                output = captured()
                try:
                    if output and output != self._sent_output:  # the tail, sent when it changed
                        # The task's data as it is now: the command may have written to it (TASKBADGER_TASK_ID), and
                        # a PATCH of data replaces it (a ping wiped a script's own `taskbadger update --metadata`).
                        self._remember(_send(self.config, "GET", task_id, None, http.Deadline.for_call(
                            self.config.timeout)))
                        body["data"] = {**self._known_data(), **output}
                    self._remember(_send(self.config, "PATCH", task_id, body, http.Deadline.for_call(
                        self.config.timeout)))
                    if "data" in body:
                        self._sent_output = output
                except Exception as error:
                    log.debug("Task Badger: ping of task %s failed: %s", task_id, error)

        self._heartbeat = start_daemon_thread(beat, name="taskbadger-cli-heartbeat")

    def outcome(self, code: int, data: dict[str, Any]) -> dict[str, Any]:
        """The final update's fields (``data`` merged into the task's when the final update is sent)."""
        fields: dict[str, Any] = {"status": "success" if code == 0 else "error", "merge_data": data}
        if code == 0:
            fields["value"] = None  # 100 %, or the task's value_max (resolved when sent)
        return fields

    def deliver(self, outcome: dict[str, Any], deadline: float, abort: threading.Event) -> BaseException | None:
        """Send the outcome, retrying transient failures until ``deadline``; return the failure that
        stopped it, or None once it was delivered (or there is no task to deliver it to)."""
        self._stop.set()
        if not self._created.wait(max(0.0, deadline - time.monotonic())):
            return TimeoutError("the task was still being created")
        if self._heartbeat is not None:  # a ping still in flight must not land after the outcome
            self._heartbeat.join(max(0.0, min(sum(self.config.timeout), deadline - time.monotonic())))
        task_id = self.task_id
        if task_id is None and self.maybe_created and self.external_id:  # look for the task the create made
            try:
                found = endpoints.find_recent(self.external_id, _deadline(self.config, deadline))
            except TaskbadgerException as error:
                return error  # transient: spooled by external id, looked up again later
            if found is not None:
                self._remember(found)
                task_id = found.id
            else:
                self.maybe_created = False  # looked for: the API did not create it
        if task_id is None and not self.create_later:
            return self.failure
        if task_id is None:  # its create never reached Task Badger: made now, ended, or spooled at the first failure
            try:  # (the API failed before the command ran: no retries, that could hold a cron job its whole budget)
                body = self._final_body(self._resolved(outcome))  # the spool's path: a refused monitor is left out
                self._remember(inline.create_from_body(self.config, body["name"], body, self.monitor_id,
                                                       _deadline(self.config, deadline), None))
            except Exception as error:
                return error
            return None
        delay = FIRST_BACKOFF
        while True:
            try:  # the command may have written to its task (TASKBADGER_TASK_ID): keep what it wrote
                self._remember(_send(self.config, "GET", task_id, None, _deadline(self.config, deadline)))
                _send(self.config, "PATCH", task_id, self._body(outcome), _deadline(self.config, deadline))
                return None
            except TRANSIENT as error:
                hint = error.retry_after if isinstance(error, RateLimited) and error.retry_after else None
                pause = hint if hint is not None else delay * (0.8 + 0.4 * random.random())
                if time.monotonic() + pause >= deadline or abort.wait(pause):
                    return error
                delay = min(delay * 2, MAX_BACKOFF)
            except Exception as error:  # refused for good (401, 404, 400): retrying cannot help
                return error

    def _body(self, outcome: dict[str, Any]) -> dict[str, Any]:
        body = {key: value for key, value in outcome.items() if key not in ("merge_data", "value")}
        body["data"] = {**self._known_data(), **outcome["merge_data"]}
        if "value" in outcome:
            with self._lock:
                body["value"] = (self._task or {}).get("value_max") or 100
        return body

    def spool(self, outcome: dict[str, Any]) -> str | None:
        """Write the outcome to the spool (by task id, or by external id when the create may have made a
        task we do not know); the directory, or None when it could not be written."""
        if self.config.spool_dir is None:
            return None
        task_id = self.task_id
        fields = self._resolved(outcome)
        if task_id is not None:
            entry = Entry(fields, task_id=task_id, final=True)
        elif (self.maybe_created or self.creating or self.create_later) and self.external_id:
            # Found by its external id if the create was carried out; created from the spool if it was not
            # (a 5xx, an API that hung): otherwise the run, and its monitor's check-in, would be lost.
            if self._create_sent is not None:
                fields[CREATE_TASK] = {"body": self._final_body(fields), "monitor_id": self.monitor_id}
            entry = Entry(fields, external_id=self.external_id, final=True)
        else:
            return None
        written, _ = Spool(self.config.spool_dir).write(api_key_of(self.config), [entry])
        return self.config.spool_dir if written else None


    def _resolved(self, outcome: dict[str, Any]) -> dict[str, Any]:
        """The outcome with a success's value resolved (100 %, or the task's value_max)."""
        fields = dict(outcome)
        if "value" in fields:
            with self._lock:
                fields["value"] = (self._task or {}).get("value_max") or 100
        return fields

    def _final_body(self, outcome: dict[str, Any]) -> dict[str, Any]:
        """The create body with the run's outcome: the task as it would be now, had its create been carried out."""
        body = dict(self._create_sent or {})
        known = body.get("data")
        body.update({key: value for key, value in outcome.items() if key != "merge_data"})
        body["data"] = {**(known if isinstance(known, dict) else {}), **outcome["merge_data"]}
        body["start_time"], body["end_time"] = self.started, format_datetime(dt.datetime.now(dt.timezone.utc))
        return body


def _maybe_created(error: BaseException) -> bool:
    """Whether the API may have created the task although the create failed."""
    if isinstance(error, TransportError):
        return error.reached_server
    return isinstance(error, ServerError) and error.status_code != 503


def _deadline(config: Config, until: float) -> http.Deadline:
    """A call's deadline, cut to what is left until ``until`` (monotonic)."""
    left = max(0.05, until - time.monotonic())
    return http.Deadline(min(left, sum(config.timeout)), config.timeout[0], config.timeout[1])


def _create_body(name: str, fields: dict[str, Any]) -> dict[str, Any]:
    # ``create_body`` adds the configured tags (the config file's [tags]) and applies before_create.
    from taskbadger.task import create_body

    body = create_body(name, fields)
    if body is None:
        raise ValueError("before_create declined to create the task")
    return body


def _send(config: Config, method: str, task_id: str, body: dict[str, Any] | None,
          deadline: http.Deadline) -> TaskModel:
    json_body = None if body is None else endpoints.clean_body(body)
    request = http.build_request(config, method, task_id, json_body=json_body,
                                 expect=endpoints.expecting(task_id))
    return endpoints.task_answer(config, http.send(config, request, deadline), task_id)
