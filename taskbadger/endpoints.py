"""The Task Badger API's task endpoints, one function each, returning models.

Bodies are cleaned here into the API's wire shape (statuses as strings, datetimes as ISO 8601, ``data``
that JSON can encode exactly), and ids and monitor ids checked, before anything is sent.

Answers are checked against their request before they are believed: a task answer must be a task (a
JSON object with a task id), the task the request addressed (a PATCH or GET answers with its id), or
the task the create described (its ``name`` and ``external_id``). Anything else is ``BadAnswer``: an
answer meant for another request (a confused server or proxy) never becomes someone's task.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import http
from ._runtime import short
from .config import Config, get_config, unconfigured_reason
from .exceptions import BadAnswer, InvalidData, MissingConfiguration, NotFound, TaskbadgerException, UnexpectedStatus
from .models import NULL, StatusEnum, TaskModel, format_datetime, is_task_id, monitor_id, parse_datetime, storable


def current_config() -> Config:
    config = get_config()
    if config is None:
        missing = MissingConfiguration(["token"])
        # "set TASKBADGER_API_KEY" would send the reader to what is done already, when init() is what is missing
        # (or the reason the Django app gave for not configuring the SDK)
        missing.hint = unconfigured_reason() or (
            "TASKBADGER_API_KEY is set, but taskbadger.init() was not called in this process: call it once where the "
            "process starts (with Django, add taskbadger_django to INSTALLED_APPS)"
            if (os.environ.get("TASKBADGER_API_KEY") or "").strip() else None)
        raise missing
    return config


#: The statuses as the API writes them.
_STATUSES = frozenset(member.value for member in StatusEnum)


def clean_body(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Drop None values, coerce the status, serialise datetimes, and check ``tags``; ``models.NULL`` is sent as
    ``null``. (``data`` that JSON cannot encode is refused when the body is encoded, by ``http.build_request``.)"""
    body: dict[str, Any] = {}
    for key, value in fields.items():
        if value.__class__ is str:  # most fields (a worker's status and timestamps): only a status is checked
            if key == "status":
                if value not in _STATUSES:
                    value = StatusEnum.coerce(value).value
            elif key == "tags":
                raise InvalidData("tags must be a dict of str to str, got str")
            body[key] = value
            continue
        if value is NULL:
            body[key] = None
            continue
        if value is None:
            continue
        if key == "status":
            value = StatusEnum.coerce(value).value
        elif key in ("start_time", "end_time") and hasattr(value, "isoformat"):
            value = format_datetime(value)
        elif key == "tags":
            if not isinstance(value, Mapping):
                raise InvalidData(f"tags must be a dict of str to str, got {type(value).__name__}")
            value = {str(k): str(v) for k, v in value.items()}
        body[key] = value
    return body


#: Fields of a create that the API echoes unchanged: an answer that differs was meant for another request
#: (``status`` too: a stray answer to an update of a task with the same name says ``success``, not ``pending``).
_ECHOED = ("name", "external_id", "status")


def _foreign(payload: Any, task_id: str | None, sent: Mapping[str, Any] | None) -> str | None:
    """Why ``payload``, a task, was meant for another request than the one about ``task_id`` / the
    create of ``sent``; None when nothing says so."""
    if not isinstance(payload, dict) or not is_task_id(payload.get("id")):
        return None
    if task_id is not None and payload["id"] != task_id:
        return f"a request about task {short(task_id)} was answered with task {short(payload['id'])}"
    for key in _ECHOED if sent is not None else ():
        expected = sent.get(key, payload.get(key)) if sent is not None else None
        # (compared as it left: text the API cannot store with U+FFFD in its place, ``http.build_request``)
        if key in payload and payload[key] != expected and payload[key] != storable(expected):
            return (f"a create was answered with another task (its {key} is {short(payload[key], 60)}, not "
                    f"{short(expected, 60)})")
    return None


class _Expecting(http.JsonExpectation):
    """For the transports: refuses a successful answer that is another request's task."""

    __slots__ = ("task_id", "sent", "marks", "said")

    def __init__(self, task_id: str | None, sent: Mapping[str, Any] | None) -> None:
        # JsonExpectation.__init__'s two fields set here: the senders make one of these per update
        self._body: bytes | None = None
        self._payload: Any = http.NOT_PARSED
        self.task_id, self.sent = task_id, sent
        self.marks: tuple[bytes, ...] | None = None
        #: the successful answer's body that ``says_so`` recognised when the transport asked (``_updated`` asks again)
        self.said: bytes | None = None

    def accepts(self, payload: Any) -> bool:
        return _foreign(payload, self.task_id, self.sent) is None

    def says_so(self, body: bytes) -> bool:
        """Whether ``body`` starts with this task's id, as the API writes it (with or without a space): then
        it is the task's answer, known without parsing it (the senders' path reads thousands)."""
        if self.marks is None:
            task_id = self.task_id.encode() if self.task_id else b""
            self.marks = (b'{"id":"%s"' % task_id, b'{"id": "%s"' % task_id) if task_id else ()
        return body.startswith(self.marks) if self.marks else False

    def __call__(self, answer: http.Answer) -> bool:
        status, _, body = answer
        if 200 <= status < 300 and self.says_so(body):
            self.said = body
            return True
        if self.task_id is None and self.sent is not None and 200 <= status < 300 and status != 201:
            # A create is answered 201 (the contract): a 200 is a copy of an earlier answer on the connection that
            # came after the create was written (a confused proxy), too late for the check at checkout.
            return False
        return super().__call__(answer)


def expecting(task_id: str | None = None, sent: Mapping[str, Any] | None = None) -> Callable[[http.Answer], bool]:
    """For the transports: False for a successful answer that is another request's task (about ``task_id``,
    or a create of ``sent``); the answer's JSON is parsed once, here."""
    return _Expecting(task_id, sent)


def task_answer(config: Config, payload: Any, task_id: str | None = None,
                sent: Mapping[str, Any] | None = None) -> TaskModel:
    """The task in an answer, checked: a JSON object with a task id; ``task_id``'s when given; with the
    ``sent`` fields the API echoes. BadAnswer otherwise."""
    if not isinstance(payload, dict) or not is_task_id(payload.get("id")):
        raise BadAnswer(f"{config.host} answered with something that is not a task ({short(payload, 80)})")
    foreign = _foreign(payload, task_id, sent)
    if foreign is not None:
        raise BadAnswer(f"{config.host} answered with another request's answer: {foreign}")
    try:
        return TaskModel.from_dict(payload)
    except (TypeError, ValueError) as err:
        raise BadAnswer(f"{config.host} answered with a task this SDK cannot read ({err})") from None


def create(body: Mapping[str, Any], monitor: str | None = None, deadline: http.Deadline | None = None,
           late_answer: http.LateAnswer | None = None) -> TaskModel:
    """POST: create a task from a body (``name`` included), optionally under a monitor. ``late_answer``:
    called with the raw answer if it arrives after ``deadline`` (see ``taskbadger.http.late``)."""
    config = current_config()
    headers = None
    if monitor:
        canonical = monitor_id(monitor)
        if canonical is None:
            raise InvalidData(f"monitor_id {short(monitor)} is not a monitor id (a UUID): copy it from the "
                              "monitor's page in Task Badger")
        headers = {http.MONITOR_HEADER: canonical}
    cleaned = clean_body(body)
    request = http.build_request(config, "POST", json_body=cleaned, headers=headers, expect=expecting(sent=cleaned))
    try:
        return task_answer(config, http.send(config, request, deadline, late_answer), sent=cleaned)
    except UnexpectedStatus as err:
        about_a_field = bool(getattr(err, "errors", None)) and not any(
            "monitor" in str(key) for key in err.errors)  # type: ignore[attr-defined]
        if headers and err.status_code in (400, 403, 404) and not about_a_field and err.args \
                and isinstance(err.args[0], str):
            # the API refuses a create under a monitor that is not one of the project's (mistyped, deleted, another
            # project's) with one of these, which name neither the monitor nor what to do
            # (a 403's hint about the key is left out: here the monitor is the likelier reason)
            said = err.args[0] if err.status_code != 403 else f"Task Badger API answered 403: {err.message}"
            err.args = (f"{said.rstrip('.')}. The task was to be created under monitor "
                        f"{headers[http.MONITOR_HEADER]}: if it is not one of project {config.organization_slug}/"
                        f"{config.project_slug}'s monitors, copy the id from the monitor's page in Task Badger.",)
        elif isinstance(err, NotFound) and err.args and isinstance(err.args[0], str):
            # a create names no task: the API knows no project of that name at that host
            err.args = (f"{err.args[0].rstrip('.')}: Task Badger has no project {config.organization_slug}/"
                        f"{config.project_slug} at {config.host}. Check that the API key is the project's key "
                        "(TASKBADGER_API_KEY, init(token=...) or TASKBADGER['API_KEY']: it names the organization "
                        "and project), and the host.",)
        raise


def get(task_id: str, deadline: http.Deadline | None = None) -> TaskModel:
    config = current_config()
    request = http.build_request(config, "GET", task_id, expect=expecting(task_id))
    try:
        return task_answer(config, http.send(config, request, deadline), task_id)
    except NotFound as err:
        raise _no_such_task(err, config, task_id) from None


def _no_such_task(err: NotFound, config: Config, task_id: str) -> NotFound:
    """``err``, a 404 about one task, saying which task, in which project, and what to check."""
    if err.args and isinstance(err.args[0], str):
        err.args = (f"{err.args[0].rstrip('.')}: no task {short(task_id)} in project {config.organization_slug}/"
                    f"{config.project_slug}. Check the task id, and that the API key is the key of the project that "
                    "holds the task.",)
    return err


def get_many(task_ids: list[str], deadline: http.Deadline | None = None) -> list[TaskModel | Exception]:
    """GET several tasks at once (on parallel connections, as ``update_many``), all before one ``deadline``.
    Returns, per task, its model or the error its read met."""
    config = current_config()
    requests = [http.build_request(config, "GET", task_id, expect=expecting(task_id))
                for task_id in task_ids]
    results: list[TaskModel | Exception] = []
    for task_id, answer in zip(task_ids, http.send_many(config, requests, deadline), strict=True):
        if isinstance(answer, Exception):
            results.append(answer)
            continue
        try:
            results.append(task_answer(config, answer, task_id))
        except TaskbadgerException as err:
            results.append(err)
    return results


def update(task_id: str, fields: Mapping[str, Any], deadline: http.Deadline | None = None) -> TaskModel:
    """PATCH: send the given fields (None values are left out)."""
    config = current_config()
    request = http.build_request(config, "PATCH", task_id, json_body=clean_body(fields),
                                 expect=expecting(task_id))
    try:
        return task_answer(config, http.send(config, request, deadline), task_id)
    except NotFound as err:
        raise _no_such_task(err, config, task_id) from None


def update_many(updates: list[tuple[str, Mapping[str, Any]]], deadline: http.Deadline | None = None
                ) -> list[Exception | None]:
    """PATCH several tasks as one batch, all before one ``deadline`` (the delivery senders' path).
    Returns, per update, None or the error it met."""
    config = current_config()
    errors: dict[int, Exception] = {}
    requests: list[http.Request] = []
    expectations: list[_Expecting] = []
    for i, (task_id, fields) in enumerate(updates):
        try:
            expectation = _Expecting(task_id, None)  # (``expecting``'s, without its frame: one per update)
            requests.append(http.build_request(config, "PATCH", task_id, json_body=clean_body(fields),
                                               expect=expectation))
        except (InvalidData, ValueError) as err:
            errors[i] = err
            continue
        expectations.append(expectation)
    sent = zip(requests, expectations,
               http.transport_for(config).exchange_many(config, requests, deadline) if requests else (), strict=True)
    results: list[Exception | None] = []
    for i, (task_id, _) in enumerate(updates):
        if i in errors:
            results.append(errors[i])
            continue
        request, expectation, answer = next(sent)
        said = expectation.said
        if said is not None and answer.__class__ is tuple and answer[2] is said:
            # the usual answer: the transport read it as this task's (``_Expecting.__call__``), 2xx; no call
            # to ``_updated`` to say so again
            results.append(None)
        else:
            results.append(_updated(config, task_id, request, answer))
    return results


def _updated(config: Config, task_id: str, request: http.Request, answer: http.Answer | Exception) -> Exception | None:
    """What a PATCH of the senders came to: None, or the error it met. Nothing in a successful answer is
    needed, so none is parsed or turned into a model when it names its task (``_Expecting.says_so``)."""
    if isinstance(answer, Exception):
        return answer
    expect = request.expect
    if 200 <= answer[0] < 300 and isinstance(expect, _Expecting) and (expect.said is answer[2]
                                                                       or expect.says_so(answer[2])):
        return None
    try:
        task_answer(config, http.parsed(request, answer), task_id)
    except TaskbadgerException as err:
        return err
    return None


#: How far back ``find_recent`` looks: the newest tasks, this many pages of ``FIND_PAGE_SIZE``.
FIND_PAGES = 3
FIND_PAGE_SIZE = 100


def find_recent(external_id: str, deadline: http.Deadline, name: str | None = None,
                pages: int = FIND_PAGES, start_time: str | None = None) -> TaskModel | None:
    """The newest task with this ``external_id`` (and this ``name``, when given; and this ``start_time``, when given)
    among the project's most recent ones (``pages`` pages of ``FIND_PAGE_SIZE``), or None.

    For a create whose answer was lost (given up at its deadline, a 5xx, an answer that could not be
    read): the API may hold the task, and only its ``external_id`` (a Celery id, a job id, a ``@track`` call's own)
    can tell it; a job id that only counts up in one database (Procrastinate's) needs the name too, and an id that
    calls running at the same time share (``@track(external_id="nightly-report")``) the instant the create sent as
    its ``start_time`` (compared as instants: the API writes it in its own way). Looks at the newest
    ``pages * FIND_PAGE_SIZE`` tasks at most, before ``deadline``."""
    config = current_config()
    # as the API holds it: its create sent U+FFFD for a lone surrogate or NUL (``http.request._encoded``), so a raw
    # id holding one (a Celery id made from a file name that is not UTF-8) never matched
    external_id = storable(external_id)
    started = parse_datetime(start_time) if start_time is not None else None
    cursor = None
    for _ in range(pages):
        params = {"page_size": FIND_PAGE_SIZE, "cursor": cursor}
        payload = http.send(config, http.build_request(config, "GET", params=params), deadline)
        if not isinstance(payload, dict) or not isinstance(payload.get("results"), list):
            raise BadAnswer(f"{config.host} answered the task list with something that is not a page")
        for item in payload["results"]:
            if not isinstance(item, dict) or (name is not None and not _same_name(item.get("name"), name)):
                continue
            if item.get("external_id") == external_id and (
                    started is None or parse_datetime(item.get("start_time")) == started):
                return task_answer(config, item)
        cursor = cursor_of(payload.get("next"))
        if cursor is None:
            return None
    return None


def _same_name(stored: Any, name: str) -> bool:
    # the API may trim the whitespace around a name as it stores it
    return isinstance(stored, str) and stored.strip() == name.strip()


def cursor_of(url: Any) -> str | None:
    """The ``cursor`` of a page URL (``next``/``previous``), or None."""
    if not url or not isinstance(url, str):
        return None
    values = parse_qs(urlsplit(url).query).get("cursor")
    return values[0] if values else None


def probe(deadline: http.Deadline) -> None:
    """One cheap authenticated read (the first task of the list): raises when the API cannot answer."""
    config = current_config()
    payload = http.send(config, http.build_request(config, "GET", params={"page_size": 1}), deadline)
    if not isinstance(payload, dict):
        raise BadAnswer(f"{config.host} answered the task list with something that is not a page")


def cancel(task_id: str) -> None:
    """DELETE: the task's status becomes ``cancelled``."""
    config = current_config()
    try:
        http.send(config, http.build_request(config, "DELETE", task_id))
    except NotFound as err:
        raise _no_such_task(err, config, task_id) from None


@dataclass
class Page:
    """One page of the task list."""

    results: list[TaskModel] = field(default_factory=list)
    next: str | None = None
    previous: str | None = None


def list_page(page_size: int | None = None, cursor: str | None = None, parent: str | None = None) -> Page:
    """GET the list: one page of tasks, newest first; ``parent`` keeps only that task's children."""
    config = current_config()
    params = {"page_size": page_size, "cursor": cursor, "parent": parent}
    payload = http.send(config, http.build_request(config, "GET", params=params))
    payload = payload if isinstance(payload, dict) else {}
    return Page([TaskModel.from_dict(item) for item in payload.get("results") or [] if isinstance(item, dict)],
                payload.get("next"), payload.get("previous"))
