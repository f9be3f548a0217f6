"""A task's progress for the person waiting on a page: who may watch it, and what they see.

``{% taskbadger_progress tb_id %}`` (``templatetags/taskbadger.py``) and ``progress_url(request, task_id)``
issue a token; the view (``views.progress``) answers the bar's polls. This module owns the rules both use:

* **Tokens.** ``django.core.signing``, timestamped, bound to the task id and to the viewer who rendered
  the page: the authenticated user, or, for an anonymous visitor, a random marker kept in their session.
  The token holds only a keyed digest of the viewer (never a user id or a session key), and expires after
  ``TASKBADGER["PROGRESS"]["TOKEN_MAX_AGE"]`` seconds.
* **Authorization.** A valid token of the same viewer, and ``AUTHORIZE(request, task_id)`` when the
  project sets one: it is asked when a token is issued and at every poll, so it can only narrow who
  watches.
* **Reading.** A GET of the task within the SDK's publish budget, as a ``.delay()``'s create (a web request
  waits on both), at most once per poll interval per task however many people watch: Django's cache holds
  the answer, and an ``add()`` lock lets one request read while the others serve what the cache holds
  (``LocMemCache``: per process; a shared cache such as Redis: across processes). A failure of the API is
  an answer too (``unavailable``), cached the same way, so an outage costs the API no more than a healthy
  service does.
* **What a viewer gets.** Only ``status``, ``value``, ``value_max``, ``percent``, ``name``, ``done`` and
  ``awaiting_retry`` (whether it waits for a retry; not why): never the task's data, tags or any key. A successful
  task shows 100 %; a task that never reported progress has no percentage (the bar is indeterminate), not 0 %.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings as django_settings
from django.core import signing
from django.core.cache import caches
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils.crypto import constant_time_compare, salted_hmac

import taskbadger
from taskbadger import endpoints
from taskbadger._runtime import log_once, log_throttled, short
from taskbadger.config import get_config, import_string
from taskbadger.exceptions import ConfigurationError, MissingConfiguration, NotFound, TaskbadgerException
from taskbadger.http import Deadline
from taskbadger.models import (
    MAX_EXTERNAL_ID_LENGTH,
    TERMINAL_STATUSES,
    StatusEnum,
    has_control_characters,
    is_task_id,
    waits_for_retry,
)

from . import conf, schema

log = logging.getLogger("taskbadger.django")

__all__ = ["ProgressSettings", "authorized", "progress_body", "progress_settings", "progress_url", "read_progress",
           "read_progress_by_external_id", "task_id_for", "token_target"]

#: The salt of the tokens (a token of another feature signed with the same SECRET_KEY never passes).
SALT = "taskbadger_django.progress"
#: The session key of an anonymous viewer's random marker.
SESSION_KEY = "_taskbadger_progress_viewer"
#: The URL name of the progress view (``taskbadger_django.urls``).
URL_NAME = "taskbadger_django:progress"
#: How long a read's lock may be held (seconds beyond the poll interval): the longest a read of the API
#: may take. Only a process that dies while reading holds it that long.
LOCK_SLACK = 30
#: How long a final answer (success, cancelled) stays in the cache: it no longer changes.
FINAL_TTL = 600
#: How long any other answer stays in the cache, beyond the poll interval (it is re-read after one interval).
ENTRY_SLACK = 60
#: A search for a task its worker creates (``read_progress_by_external_id``) that found nothing looks again after one
#: poll interval, or after this fraction of the time it has been looking, whichever is longer, and at most
#: ``MAX_SEARCH_GAP`` seconds later: a task that no worker ever tracks (one that ran untracked, a result nobody else
#: waits for) cost one list read of the API per interval for the token's whole life (21,600 in six hours at 1 s).
SEARCH_BACKOFF = 0.1
MAX_SEARCH_GAP = 60.0

#: The prefix of the progress answers' cache keys.
CACHE_PREFIX = "taskbadger_django.progress"

# The clock the cache entries are stamped with: wall time, which processes sharing a cache agree on.
_clock = time.time


# -- settings -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgressSettings:
    """``TASKBADGER["PROGRESS"]``, resolved and checked."""

    token_max_age: int
    poll_interval: float
    #: ``(request, task_id) -> bool`` or None; a dotted path that cannot be imported denies every request
    authorize: Callable[[HttpRequest, str], Any] | None
    cache: str


def _deny_all(request: HttpRequest, task_id: str) -> bool:
    return False


_resolved: tuple[Any, ProgressSettings] | None = None


def progress_settings() -> ProgressSettings:
    """The progress settings of this process (follows ``override_settings`` of ``TASKBADGER``).

    A value of the wrong type falls back to its default, logged once (``manage.py check`` reports it as
    ``taskbadger.E003``). An ``AUTHORIZE`` path that cannot be imported denies every viewer (``E012``):
    a rule that cannot be read must not let everyone in.
    """
    global _resolved
    settings = conf.get_settings()
    cached = _resolved
    if cached is not None and cached[0] is settings:
        return cached[1]
    values: dict[str, Any] = dict(settings.PROGRESS)
    where = f"{conf.SETTING_NAME}['PROGRESS']"
    keys = {f"{where}[{key!r}]": key for key in schema.PROGRESS}
    for problem in schema.type_problems(values, schema.PROGRESS, where):
        key = keys[problem.label]
        default = _deny_all if key == "AUTHORIZE" else schema.PROGRESS[key].default  # a rule fails closed
        log_once(f"progress-setting:{key}", logging.ERROR, "Task Badger: %s; using %s. Run `manage.py check` for "
                 "details.", problem.message.rstrip("."),
                 "a rule that refuses everyone" if key == "AUTHORIZE" else f"the default {default!r}")
        values[key] = default
    authorize = values["AUTHORIZE"]
    if isinstance(authorize, str):
        try:
            authorize = import_string(authorize)
        except Exception as err:
            log_once(f"progress-authorize:{authorize}", logging.ERROR,
                     "Task Badger: TASKBADGER['PROGRESS']['AUTHORIZE'] %s cannot be imported (%s): every progress "
                     "request is refused. Run `manage.py check` for details.", short(authorize), err)
            authorize = _deny_all
    if authorize is not None and not callable(authorize):
        authorize = _deny_all
    if values["CACHE"] not in (getattr(django_settings, "CACHES", None) or {}):
        log_once(f"progress-cache:{values['CACHE']}", logging.ERROR,
                 "Task Badger: TASKBADGER['PROGRESS']['CACHE'] %s is not an alias in CACHES; using 'default'. Run "
                 "`manage.py check` for details.", short(values["CACHE"]))
        values["CACHE"] = "default"
    resolved = ProgressSettings(token_max_age=values["TOKEN_MAX_AGE"], poll_interval=float(values["POLL_INTERVAL"]),
                                authorize=authorize, cache=values["CACHE"])
    _resolved = (settings, resolved)
    return resolved


# -- which task ----------------------------------------------------------------------------------------


def task_id_for(task: Any) -> str | None:
    """The Task Badger id of ``task``, or None when it is not tracked.

    ``task`` may be a Task Badger task id (a string), a ``taskbadger.Task`` (``taskbadger.create_task``), or
    the result of publishing a Celery task (``.delay()``/``.apply_async()``: ``result.taskbadger_task_id``, or
    for a task auto-tracked by name the task this process created when it published it; None when the task
    was published untracked). Anything else is a TypeError; a string that is not a
    Task Badger id (letters, digits, ``-`` and ``_``) a ValueError.
    """
    if task is None or task == "":
        return None
    if isinstance(task, str):
        if not is_task_id(task):
            raise ValueError(f"{short(task, 80)} is not a Task Badger task id (letters, digits, - and _); pass "
                             "the Celery result itself, a taskbadger.Task or its .id")
        return task
    if isinstance(task, taskbadger.Task):
        return task_id_for(task.id)
    found = getattr(task, "taskbadger_task_id", _MISSING)  # a Celery AsyncResult, or anything that says
    if found is _MISSING:
        found = _celery_task_id(task)
    if found is _MISSING:
        found = _django_tasks_task_id(task)
    if found is None or isinstance(found, str):  # never an object again (a Mock gives itself without end)
        return task_id_for(found)
    raise TypeError(f"cannot tell the Task Badger task of a {type(task).__module__}.{type(task).__qualname__}: "
                    "pass a Task Badger task id, a taskbadger.Task, or the result of a tracked Celery task's "
                    ".delay()/.apply_async()")


class _Missing:
    pass


_MISSING: Any = _Missing()


def _celery_task_id(result: Any) -> Any:
    """The Task Badger id of a Celery result without ``taskbadger_task_id`` (its task auto-tracked by name, not
    published through the base class): known in the process that published it, else None (not tracked, as far
    as this process can tell); ``_MISSING`` for anything that is not a Celery result."""
    if not (type(result).__module__ or "").startswith("celery.result"):
        return _MISSING
    from taskbadger.celery import task_id_of_result

    return task_id_of_result(result)


def _target(task: Any) -> tuple[str | None, str | None]:
    """What a bar follows: ``(task id, None)``, or ``(None, Celery id)`` for a Celery task published tracked whose
    Task Badger task its worker creates when it starts (``taskbadger.celery.state.follow_result``: known in the process
    that published it, and elsewhere from the result backend), or ``(None, None)``. A Celery result without a Task
    Badger id costs one read of the result backend at most, as ``task_id_for`` does."""
    if (type(task).__module__ or "").startswith("celery.result") \
            and not isinstance(getattr(task, "taskbadger_task_id", None), str):
        from taskbadger.celery.state import follow_result

        task_id, celery_id = follow_result(task)
        return task_id_for(task_id), celery_id
    return task_id_for(task), None


def _django_tasks_task_id(result: Any) -> Any:
    """The Task Badger id of a ``django.tasks`` ``TaskResult`` (None when it is not tracked, or no longer
    known: see ``tasks.task_id_for_result``), or ``_MISSING`` for anything else."""
    module = type(result).__module__ or ""
    if module == "django.tasks" or module.startswith(("django.tasks.", "django_tasks")):
        from .tasks import task_id_for_result

        return task_id_for_result(result)
    return _MISSING


# -- who watches ---------------------------------------------------------------------------------------


def viewer(request: HttpRequest, create: bool = False) -> str | None:
    """Who is looking: ``user:<pk>`` for an authenticated user, ``session:<marker>`` for an anonymous
    visitor (``create``: make the marker if the session has none yet), None when neither can be told
    (an anonymous visitor without ``SessionMiddleware``)."""
    user = getattr(request, "user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        return f"user:{user.pk}"
    session = getattr(request, "session", None)
    if session is None:
        return None
    marker = session.get(SESSION_KEY)
    if not isinstance(marker, str) or not marker:
        if not create:
            return None
        marker = secrets.token_urlsafe(18)
        session[SESSION_KEY] = marker  # saved, and its cookie sent, by SessionMiddleware
    return f"session:{marker}"


def _binding(who: str, secret: Any = None) -> str:
    """A keyed digest of the viewer: what the token holds instead of a user id or a session marker (``secret``:
    ``SECRET_KEY`` when None)."""
    return salted_hmac(f"{SALT}.viewer", who, secret=secret, algorithm="sha256").hexdigest()[:32]  # Django 6.1 warns


def _bindings(who: str) -> list[str]:
    """The viewer's digest under ``SECRET_KEY`` and each of ``SECRET_KEY_FALLBACKS``: a token issued before the key
    was rotated (the old key kept as a fallback, as Django's docs have it) stays good, as its signature does."""
    from django.conf import settings

    return [_binding(who)] + [_binding(who, old) for old in getattr(settings, "SECRET_KEY_FALLBACKS", None) or ()]


#: What a token names: a Task Badger task id ("t"), or the ``external_id`` (a Celery id) of a task its worker
#: creates ("e"; ``progress_url``).
TASK, EXTERNAL = "t", "e"


def make_token(task_id: str, who: str, kind: str = TASK) -> str:
    return signing.dumps({kind: task_id, "v": _binding(who)}, salt=SALT)


def token_target(request: HttpRequest, token: str, max_age: int) -> tuple[str, str] | None:
    """What a token names, ``(TASK, task id)`` or ``(EXTERNAL, external id)``, if it is genuine, not older than
    ``max_age`` seconds, and was issued to the viewer of ``request``; None otherwise (which one is not said: a 403
    gives no detail)."""
    try:
        payload = signing.loads(token, salt=SALT, max_age=max_age)
    except (signing.BadSignature, ValueError, TypeError):  # tampered, foreign, expired, or not a token at all
        return None
    if not isinstance(payload, Mapping):
        return None
    kind = TASK if TASK in payload else EXTERNAL
    named, bound = payload.get(kind), payload.get("v")
    if not isinstance(named, str) or not isinstance(bound, str) \
            or not (is_task_id(named) if kind == TASK else _is_external_id(named)):
        return None
    if not any(constant_time_compare(bound, binding) for who in _viewers(request) for binding in _bindings(who)):
        return None
    return kind, named


def _is_external_id(value: Any) -> bool:
    """A Celery id: any text ``apply_async(task_id=...)`` was given, within reason."""
    return isinstance(value, str) and 0 < len(value) <= MAX_EXTERNAL_ID_LENGTH and not has_control_characters(value)



def _viewers(request: HttpRequest) -> list[str]:
    """Who may hold a token in this request: the viewer, and for an authenticated user the anonymous visitor
    this session was before logging in (Django's ``login()`` keeps the session's data, the marker with it), so
    that a page shown before the login goes on following its task after it. A logout flushes the session."""
    who = viewer(request)
    found = [] if who is None else [who]
    session = getattr(request, "session", None)
    marker = session.get(SESSION_KEY) if session is not None and who is not None and who.startswith("user:") else None
    if isinstance(marker, str) and marker:
        found.append(f"session:{marker}")
    return found


def authorized(request: HttpRequest, task_id: str, settings: ProgressSettings | None = None) -> bool:
    """Whether the project's ``AUTHORIZE`` rule lets this request see ``task_id`` (True without a rule).
    A rule that raises denies, and the error is logged with its traceback."""
    rule = (settings or progress_settings()).authorize
    if rule is None:
        return True
    try:
        return bool(rule(request, task_id))
    except Exception:
        log.exception("Task Badger: TASKBADGER['PROGRESS']['AUTHORIZE'] raised for task %s; access denied.", task_id)
        return False


def progress_url(request: HttpRequest, task: Any) -> str | None:
    """The URL a page's script polls for the progress of ``task`` (an id, a ``taskbadger.Task``, a Celery
    result), for the viewer of ``request``: for code that draws its own bar (a React page, HTMX).

    None when there is nothing to show: the task is not tracked (``result.taskbadger_task_id`` is None),
    ``AUTHORIZE`` refuses, or the viewer cannot be told (an anonymous visitor without sessions). A Celery task
    published tracked but whose task its worker creates (a group's create that did not fit in the publish budget, the
    API failing at publish) is followed by its Celery id until that task exists, unless the project has an
    ``AUTHORIZE`` rule (it judges Task Badger ids): in the process that published it
    (``taskbadger.celery.state.left_to_worker``), and in another one given ``app.AsyncResult(celery_id)`` while the
    result backend holds what the publisher left there (``taskbadger.celery.result_backend.tell_left_to_worker``).
    Raises ``NoReverseMatch`` with what to add to ``urls.py`` when ``taskbadger_django.urls`` is not included.
    """
    task_id, external_id = _target(task)
    settings = progress_settings()
    if settings.authorize is not None:
        external_id = None  # the rule judges Task Badger ids: none to judge yet
    if task_id is None and external_id is None:
        return None
    if task_id is not None and not authorized(request, task_id, settings):
        return None
    who = viewer(request, create=True)
    if who is None:
        log_once("progress-no-session", logging.WARNING,
                 "Task Badger: a progress bar for an anonymous visitor needs sessions "
                 "(django.contrib.sessions.middleware.SessionMiddleware); it shows 'not available'.")
        return None
    try:
        token = make_token(task_id, who) if task_id is not None else make_token(str(external_id), who, EXTERNAL)
        return reverse(URL_NAME, args=[token])
    except NoReverseMatch as err:
        raise NoReverseMatch('Task Badger progress bars need their URLs: add path("taskbadger/", '
                             'include("taskbadger_django.urls")) to your urlpatterns.') from err


# -- what the viewer sees ---------------------------------------------------------------------------------


def progress_body(task: Any) -> dict[str, Any]:
    """What the bar needs of a ``taskbadger.Task``, and nothing else."""
    status = str(task.status)
    value, value_max = task.value, task.value_max
    if status == StatusEnum.SUCCESS.value:
        percent: int | None = 100  # a finished task is complete, whatever it reported
    elif isinstance(value, int) and isinstance(value_max, int) and value_max > 0:
        percent = max(0, min(100, value * 100 // value_max))
    else:
        percent = None  # it never reported progress: an indeterminate bar, not 0 %
    # ``stale`` is not an end: Task Badger marks a task stale when it stops reporting, and it may report again.
    # ``awaiting_retry``: pending again after an attempt that ran (a retry's countdown): not "Queued" as if it never ran
    return {"status": status, "value": value, "value_max": value_max, "percent": percent,
            "name": task.name if isinstance(task.name, str) else "", "done": status in _ENDS,
            "awaiting_retry": waits_for_retry(status, task.data)}


_ENDS = frozenset(s.value for s in TERMINAL_STATUSES if s is not StatusEnum.STALE)

#: The body of "the first read is under way in another request": no status yet, poll again.
LOADING: dict[str, Any] = {"status": None, "value": None, "value_max": None, "percent": None, "name": None,
                           "done": False, "awaiting_retry": False}
UNAVAILABLE: dict[str, Any] = {"available": False}
#: The body for a task its worker has not created yet (``read_progress_by_external_id``): its message is queued.
QUEUED: dict[str, Any] = {"status": StatusEnum.PENDING.value, "value": None, "value_max": None, "percent": None,
                          "name": None, "done": False, "awaiting_retry": False}


@dataclass(frozen=True)
class Answer:
    """One answer of the progress view: HTTP status, JSON body, its ETag."""

    status: int
    body: bytes
    etag: str | None = None


def _entry(status: int, body: Mapping[str, Any], at: float, final: bool) -> dict[str, Any]:
    """A cache entry: the answer, when it was read (``at``), and whether it is final. An entry may also say how many
    seconds it stays fresh (``"for"``; one poll interval when it does not)."""
    raw = json.dumps(body, separators=(",", ":"), sort_keys=True)
    return {"status": status, "body": raw, "etag": f'"{hashlib.sha256(raw.encode()).hexdigest()[:24]}"', "at": at,
            "final": final}


def _answer(entry: Mapping[str, Any]) -> Answer:
    return Answer(entry["status"], entry["body"].encode(), entry["etag"] if entry["status"] == 200 else None)


def _fresh_for(entry: Mapping[str, Any], interval: float) -> float:
    fresh_for = entry.get("for")
    return max(interval, float(fresh_for)) if isinstance(fresh_for, (int, float)) else interval


def _fresh(entry: Any, now: float, interval: float) -> bool:
    return isinstance(entry, Mapping) and (entry.get("final") is True
                                           or now - entry.get("at", 0) < _fresh_for(entry, interval))


def _read(fetch: Callable[[Deadline], Any], at: float) -> dict[str, Any]:
    """Ask Task Badger (``fetch``: the task, or None when it does not exist yet), within the SDK's publish budget
    (``PUBLISH_BUDGET``, 1 s by default): a poll holds a web worker, and an API that hangs must not hold one for the
    SDK's whole timeout at every poll of every task being watched. Never raises: a failure is an answer."""
    try:
        config = get_config()
        if config is None:
            raise MissingConfiguration(["token"])
        # a web request waits on this read, as on a .delay()'s create: the publish budget, not the SDK's timeout
        task = fetch(Deadline(config.publish_budget, config.timeout[0]))
    except NotFound:
        return _entry(404, UNAVAILABLE, at, final=False)
    except ConfigurationError as err:  # the SDK is not configured (no key, ENABLED False, bad settings)
        log_once("progress-unconfigured", logging.WARNING,
                 "Task Badger: progress bars show 'unavailable': %s", err)
        return _entry(503, UNAVAILABLE, at, final=False)
    except TaskbadgerException as err:
        log_throttled("progress-read", 60.0, logging.WARNING,
                      "Task Badger: could not read a task's progress (%s); its bars show 'unavailable' "
                      "and retry.", short(err, 200))
        return _entry(503, UNAVAILABLE, at, final=False)
    except Exception:
        log.exception("Task Badger: internal error while reading a task's progress",
                      extra={"taskbadger_internal_error": True})
        return _entry(503, UNAVAILABLE, at, final=False)
    body = QUEUED if task is None else progress_body(task)
    # An error is not kept as final: the same task can run again (a message redelivered after a cold shutdown or
    # a lost child, a failed job re-run by hand), and a page reloaded then showed "Failed" for ten minutes while
    # Task Badger said processing, then success.
    return _entry(200, body, at, final=bool(body["done"]) and body["status"] != StatusEnum.ERROR.value)


def read_progress(task_id: str, settings: ProgressSettings | None = None) -> Answer:
    """The progress answer for ``task_id``: from the cache when it was read less than one poll interval
    ago (or is final), else read from Task Badger by this request, while concurrent requests keep
    serving what the cache holds. At most one read of the API per task per interval for all the
    processes that share the cache.

    Never raises: when the cache itself fails (a Redis that is down), the answer is "unavailable", not a
    read of the API for every poll of every viewer."""
    settings = settings or progress_settings()

    def fetch(deadline: Deadline) -> taskbadger.Task:
        return taskbadger.Task(endpoints.get(task_id, deadline))

    return _guarded(settings, lambda cache: _read_through_cache(cache, f"{CACHE_PREFIX}:{task_id}",
                                                                lambda at: _read(fetch, at), settings))


def read_progress_by_external_id(external_id: str, settings: ProgressSettings | None = None) -> Answer:
    """The progress answer for the task whose ``external_id`` is ``external_id`` (a Celery id), which its worker
    creates when it starts (``progress_url``): ``pending`` until it exists, then its progress (``read_progress``).
    Until then, at most one look-up of the project's newest tasks (one list page) per poll interval for all the
    viewers, as a bar's read, and less and less often as the search goes on (``_search_gap``); once found, its id
    is kept in the cache and the task is read as any other. When Celery's result backend says the task has ended
    and a look-up made after that still finds no such task, no worker tracked it: "not available" (404), and no
    more look-ups (a page reloaded later asks again, once)."""
    settings = settings or progress_settings()
    # hashed: a Celery id may hold characters a cache key may not (memcached: spaces), and lone surrogates, which
    # UTF-8 cannot encode (an id made from bytes that are not UTF-8: the view failed with a 500)
    key = f"{CACHE_PREFIX}:external:{hashlib.sha256(external_id.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}"

    def answer(cache: Any) -> Answer:
        task_id = cache.get(f"{key}:id")
        if is_task_id(task_id):
            return read_progress(task_id, settings)

        def fetch(deadline: Deadline) -> Any:
            from taskbadger.celery.result_backend import ended_in_backend

            ended = ended_in_backend(external_id)  # asked first: its worker's create, if any, was made before the end
            found = endpoints.find_recent(external_id, deadline, pages=1)
            if found is not None and is_task_id(found.id):
                cache.set(f"{key}:id", found.id, timeout=settings.token_max_age)
            elif found is None and ended:
                raise NotFound(404, message="the Celery task ended, and no worker created its Task Badger task")
            return found

        def read(at: float) -> dict[str, Any]:
            entry = _read(fetch, at)
            if entry["status"] == 200 and not entry["final"] and json.loads(entry["body"]) == QUEUED:  # not found yet
                cache.add(f"{key}:since", at, timeout=settings.token_max_age)  # the first look-up's time
                since = cache.get(f"{key}:since")
                searched = at - since if isinstance(since, (int, float)) else 0.0
                entry["for"] = _search_gap(searched, settings.poll_interval)
            return entry

        return _read_through_cache(cache, key, read, settings)

    return _guarded(settings, answer)


def _search_gap(searched: float, interval: float) -> float:
    """Seconds until the next look-up of a task not found after ``searched`` seconds of looking: the poll interval at
    first (a task left to its worker usually starts within seconds), then a growing share of the search, at most
    ``MAX_SEARCH_GAP`` (a task queued behind a long backlog, or with an ``eta``, is still found within a minute of its
    start). Over a six-hour token: about 400 look-ups instead of 21,600 at a 1 s interval."""
    return max(interval, min(MAX_SEARCH_GAP, searched * SEARCH_BACKOFF))


def _guarded(settings: ProgressSettings, answer: Callable[[Any], Answer]) -> Answer:
    """``answer(cache)``, or "unavailable" when the cache itself fails (a Redis that is down), not a read of the API
    for every poll of every viewer."""
    try:
        return answer(caches[settings.cache])
    except Exception as err:
        log_throttled("progress-cache", 60.0, logging.WARNING,
                      "Task Badger: the progress bars' cache %s failed (%s); they show 'unavailable'.",
                      short(settings.cache), short(err, 200))
        return Answer(503, json.dumps(UNAVAILABLE).encode())


def _read_through_cache(cache: Any, key: str, read: Callable[[float], dict[str, Any]],
                        settings: ProgressSettings) -> Answer:
    interval = settings.poll_interval
    lock = f"{key}:lock"
    entry = cache.get(key)
    if _fresh(entry, _clock(), interval):
        return _answer(entry)
    # add() is atomic in every cache backend: one request reads, the others answer with what the cache holds
    if not cache.add(lock, 1, timeout=math.ceil(interval) + LOCK_SLACK):
        return _answer(entry) if isinstance(entry, Mapping) else Answer(200, json.dumps(LOADING).encode())
    try:
        entry = cache.get(key)  # another request may have read it between our look and our lock
        now = _clock()
        if _fresh(entry, now, interval):
            return _answer(entry)
        entry = read(now)
        cache.set(key, entry,
                  timeout=FINAL_TTL if entry["final"] else math.ceil(_fresh_for(entry, interval)) + ENTRY_SLACK)
        return _answer(entry)
    finally:
        cache.delete(lock)
