"""``@track``: record a plain function call (or coroutine) as a task."""

from __future__ import annotations

import concurrent.futures
import contextvars
import datetime as dt
import functools
import inspect
import logging
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from . import lifecycle
from ._runtime import PerProcess, log_once, on_an_event_loop, short
from .actions import action_dicts
from .api import create_task
from .config import get_config, is_configured
from .delivery import sender
from .delivery.queue import pending_updates
from .exceptions import InvalidData, MissingConfiguration
from .inline import Created, create_inline
from .lifecycle.options import OPTIONS, check_option
from .models import StatusEnum, fitted_name, format_datetime, is_json
from .scope import parent_for_new_task

log = logging.getLogger("taskbadger")

F = TypeVar("F", bound=Callable[..., Any])
#: What ``@track(**task_kwargs)`` accepts besides name/monitor_id/max_runtime: ``create_task``'s fields.
_FIELDS = frozenset(inspect.signature(create_task).parameters) - {"name", "monitor_id", "max_runtime"}
#: Threads that make the creates of tracked coroutines, so that the event loop never waits for the API.
_CREATORS = 16
_creators: PerProcess[concurrent.futures.ThreadPoolExecutor] = PerProcess(
    lambda: concurrent.futures.ThreadPoolExecutor(_CREATORS, thread_name_prefix="taskbadger-track"))
#: How the ``external_id`` a call's task gets when its decorator gives none starts (``taskbadger run``'s are
#: ``taskbadger-run-…``).
OWN_EXTERNAL_ID = "taskbadger-track-"


@dataclass(frozen=True)
class _Unsettled:
    """A call whose create the API may have carried out although its answer was lost (cut, unreadable, too late), and
    that was not found in time: the call runs untracked, and its outcome is recorded on that task, found by
    ``external_id``, once the API answers (``lifecycle.settle``), or when the create's late answer names it. Else the
    task stayed ``processing`` for ever, or was closed ``cancelled`` for a call that succeeded. ``start_time``: the one
    its create sent, when the decorator gives an ``external_id`` that calls running at the same time share: the task
    that has it is this call's."""

    external_id: str
    start_time: str | None = None


class _StartTimes:
    """The ``start_time`` of this process's calls: now, but never the same instant twice (a microsecond later than
    the last one at least). A call whose create's answer was lost tells its task by it when its ``external_id`` is
    shared (``@track(external_id=...)``): two calls of two threads started in the same microsecond could not."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dt.datetime | None = None

    def next(self) -> str:
        now = dt.datetime.now(dt.timezone.utc)
        with self._lock:
            if self._last is not None and now <= self._last:
                now = self._last + dt.timedelta(microseconds=1)
            self._last = now
        return format_datetime(now)


_start_times: PerProcess[_StartTimes] = PerProcess(_StartTimes)


@overload
def track(func: F) -> F: ...
@overload
def track(
    func: None = None, *, name: str | None = None, monitor_id: str | None = None, max_runtime: int | None = None,
    **task_kwargs: Any,
) -> Callable[[F], F]: ...


def track(
    func: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    monitor_id: str | None = None,
    max_runtime: int | None = None,
    **task_kwargs: Any,
) -> Any:
    """Track each call of the decorated function (or coroutine function) as a task.

    Works bare (``@track``) or with options (``@track(name="nightly", monitor_id=...)``); extra
    keyword arguments are ``create_task``'s fields. The task starts ``processing`` and ends ``success``,
    or ``error`` with the exception, which is re-raised. Calls made inside a tracked call (other
    ``@track`` functions, Celery tasks published from it) become its children; inside it,
    ``taskbadger.current_task()`` is its task.

    The create waits at most the publish budget (``init(publish_budget=...)``), and not at all while
    the API is failing (the call then runs untracked); the final state is queued for the background
    senders, so the function returns at once. A coroutine's create runs in a thread: the event loop
    never waits for Task Badger.
    """
    unknown = set(task_kwargs) - _FIELDS
    if unknown:
        raise TypeError(f"@track got unknown option(s) {sorted(unknown)}: it takes name, monitor_id, max_runtime "
                        f"and create_task's fields ({', '.join(sorted(_FIELDS))})")
    _check_options({"name": name or None, "monitor_id": monitor_id, "max_runtime": max_runtime, **task_kwargs})
    if task_kwargs.get("actions"):
        # Checked once, here, where the decorator is written: an action that is not one is a mistake in that
        # line, not a failure of every call (which raised before the function ran, configured or not).
        task_kwargs = {**task_kwargs, "actions": action_dicts(task_kwargs["actions"], stacklevel=2)}

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(fn):
            raise TypeError(f"@track needs a function, got {fn!r}")
        task_name = fitted_name(name) if name else _default_name(fn)  # a long name is cut, as a queue's job's
        # A fixed external_id is shared by the calls running at the same time: after a lost answer, a call tells its
        # own task by the start_time its create sent (unique in this process), not by the id alone (the newest task
        # with it may be another call's). Not when the decorator fixes the start_time too: nothing tells them apart.
        shared_id = bool(task_kwargs.get("external_id")) and task_kwargs.get("start_time") is None

        def fields() -> dict[str, Any]:
            values: dict[str, Any] = {"status": StatusEnum.PROCESSING, "max_runtime": max_runtime,
                                      "parent": parent_for_new_task(), "start_time": _start_times.get().next()}
            values.update(task_kwargs)  # an explicit parent= wins over the enclosing call
            if not values.get("external_id"):
                # What tells this call's task when its create's answer is lost (the API carried it out, its answer
                # was cut or came too late): looked up, or its outcome recorded on it later, by this id.
                values["external_id"] = f"{OWN_EXTERNAL_ID}{uuid.uuid4()}"
            return {k: v for k, v in values.items() if v is not None}

        def create(values: dict[str, Any], max_in_flight: int | None = None) -> Created | None:
            if not is_configured():
                log_once("track:unconfigured", logging.WARNING, "Task Badger is not configured, so tasks are not "
                         "tracked: %s", MissingConfiguration(["token"]))
                return None
            return create_inline(task_name, values, monitor_id, where="call", max_in_flight=max_in_flight,
                                 one_of_many=shared_id)

        def begin(created: Created | None, values: dict[str, Any]) -> lifecycle.Run | _Unsettled | None:
            if created is None:
                return None
            if created.task is None:
                external_id = values.get("external_id")
                if not created.maybe_created or not isinstance(external_id, str):
                    return None
                return _Unsettled(external_id, values["start_time"] if shared_id else None)
            run = lifecycle.Run.of_task(created.task)
            lifecycle.enter(run)
            return run

        def finish(run: lifecycle.Run | _Unsettled | None, exc: BaseException | None) -> None:
            if run is None:
                return
            try:
                if isinstance(run, _Unsettled):
                    lifecycle.settle(run.external_id, StatusEnum.SUCCESS if exc is None else StatusEnum.ERROR, exc,
                                     start_time=run.start_time)
                elif exc is None:
                    lifecycle.succeed(run)
                else:
                    lifecycle.fail(run, exc)
            except Exception as err:
                log.warning("Task Badger: could not record the end of %s: %s", short(task_name), err)
            finally:
                if isinstance(run, lifecycle.Run):
                    lifecycle.leave(run)
            _deliver_in_a_pool_worker()

        async def create_off_the_loop(values: dict[str, Any], context: contextvars.Context) -> Created | None:
            import asyncio  # loaded already: this runs on its event loop

            # a coroutine waiting for its create blocks neither the loop nor other coroutines: as many
            # creates may wait at once as there are threads to make them
            try:
                made = asyncio.get_running_loop().run_in_executor(_creators.get(), context.run, create, values,
                                                                  _CREATORS)
            except RuntimeError:
                # No thread to make it in: the interpreter is shutting down (this coroutine runs in an atexit
                # handler, or in a thread that outlived the main one), and a thread pool refuses work then. Made
                # here: the loop waits for it, at most the create's budget.
                return context.run(create, values, _CREATORS)
            return await made

        if _is_coroutine_function(fn):
            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                values = fields()
                context = contextvars.copy_context()  # the create reads the scope of this coroutine
                tracked = begin(await create_off_the_loop(values, context), values)
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    finish(tracked, exc)
                    raise
                finish(tracked, None)
                return result

            return run_async

        # A generator's body runs when it is iterated, not when it is called: its task is created at its first
        # step and ended when it is exhausted, raises or is closed (a consumer that stops early, a ``break``: what
        # the body did so far is a success). Each step runs in the run's own context, so that ``current_task()`` is
        # its task in the body, and the caller's code between two steps is not inside the run.
        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            async def run_async_generator(*args: Any, **kwargs: Any) -> Any:
                agen = fn(*args, **kwargs)
                context = contextvars.copy_context()
                values = fields()
                tracked = context.run(begin, await create_off_the_loop(values, context), values)
                sent: Any = None
                thrown: BaseException | None = None
                while True:
                    step = agen.athrow(thrown) if thrown is not None else agen.asend(sent)
                    try:
                        item = await _in_context(context, step)
                    except StopAsyncIteration:
                        context.run(finish, tracked, None)
                        return
                    except BaseException as exc:
                        context.run(finish, tracked, exc)
                        raise
                    sent, thrown = None, None
                    try:
                        sent = yield item
                    except GeneratorExit:
                        try:
                            await _in_context(context, agen.aclose())
                        except BaseException as exc:
                            context.run(finish, tracked, exc)
                            raise
                        context.run(finish, tracked, None)
                        raise
                    except BaseException as exc:
                        thrown = exc

            return run_async_generator

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def run_generator(*args: Any, **kwargs: Any) -> Any:
                gen = fn(*args, **kwargs)
                context = contextvars.copy_context()
                values = context.run(fields)
                tracked = context.run(begin, context.run(create, values), values)
                if tracked is None:
                    return (yield from gen)
                sent: Any = None
                thrown: BaseException | None = None
                while True:
                    try:
                        item = context.run(gen.throw, thrown) if thrown is not None else context.run(gen.send, sent)
                    except StopIteration as stop:
                        context.run(finish, tracked, None)
                        return stop.value
                    except BaseException as exc:
                        context.run(finish, tracked, exc)
                        raise
                    sent, thrown = None, None
                    try:
                        sent = yield item
                    except GeneratorExit:
                        try:
                            context.run(gen.close)
                        except BaseException as exc:
                            context.run(finish, tracked, exc)
                            raise
                        context.run(finish, tracked, None)
                        raise
                    except BaseException as exc:
                        thrown = exc

            return run_generator

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            values = fields()
            tracked = begin(create(values), values)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                finish(tracked, exc)
                raise
            finish(tracked, None)
            if isinstance(tracked, lifecycle.Run) and inspect.isawaitable(result):
                log_once(f"track:awaitable:{task_name[:200]}", logging.WARNING, "Task Badger: @track: %s returned an "
                         "awaitable, not its result: its task ended when the call returned, before the awaitable ran. "
                         "Decorate the async function itself (put @track below the decorator that wraps it).",
                         short(task_name))
            return result

        return run

    return decorate if func is None else decorate(func)


async def _await(step: Awaitable[Any]) -> Any:
    return await step


def _in_context(context: contextvars.Context, step: Awaitable[Any]) -> Awaitable[Any]:
    """``step`` (an async generator's) run as a task in the run's ``context`` itself, so that what one step sets in a
    context variable the next sees, as without ``@track``; before Python 3.11 (no ``context=``), in a copy of it."""
    import asyncio  # loaded already: this runs on its event loop

    if sys.version_info >= (3, 11):
        return asyncio.get_running_loop().create_task(_await(step), context=context)
    return context.run(asyncio.ensure_future, step)


def _is_coroutine_function(fn: Any) -> bool:
    """Whether calling ``fn`` gives a coroutine: an ``async def``, or a callable marked as one, as asgiref's
    ``sync_to_async`` is (before Python 3.12 with asyncio's marker, which ``inspect`` does not see)."""
    if inspect.iscoroutinefunction(fn):
        return True
    asyncio = sys.modules.get("asyncio")  # a callable marked with its marker was made after it was loaded
    marker = getattr(getattr(asyncio, "coroutines", None), "_is_coroutine", None)
    return marker is not None and getattr(fn, "_is_coroutine", None) is marker


def _default_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of ``fn``; for a callable that has neither (a ``functools.partial``, an instance with
    ``__call__``), its type's, or the function it wraps'."""
    inner = getattr(fn, "func", fn)  # functools.partial
    module = getattr(inner, "__module__", None) or type(inner).__module__
    qualname = getattr(inner, "__qualname__", None) or type(inner).__qualname__
    return fitted_name(f"{module}.{qualname}")


#: ``@track``'s options checked where the decorator is written: each is the same on every call, so a value the API
#: would refuse is a mistake in that line (``lifecycle.options`` says what each takes).
_NOT_CHECKED = frozenset({"actions", "external_id", "start_time", "end_time"})


def _check_options(options: dict[str, Any]) -> None:
    """Raise InvalidData, naming the option and what it takes, for an option of ``@track`` the API would refuse.
    Before, such a call ran untracked every time, with a warning at most once a minute (a monitor id, a status, a tag
    of one character), or the user's call itself raised (a name that is not text)."""
    for option, value in options.items():
        if value is None or option in _NOT_CHECKED or (option == "tags" and value == {}) \
                or (option == "queue" and value == ""):  # the API's own default
            continue
        if option == "status":
            try:
                StatusEnum.coerce(value)
            except ValueError as err:
                raise InvalidData(f"@track({option}={short(value, 80)}): {err}") from None
            continue
        if option == "name" and isinstance(value, str) and value.strip():
            continue  # cut to what the API takes where the decorator is applied
        if option == "data":
            if not is_json(value):
                raise InvalidData(f"@track(data={short(value, 80)}): data must be what JSON encodes (a dict of "
                                  "strings, numbers, lists and dicts): convert dates, sets, decimals and objects first")
            continue
        if option in OPTIONS and not check_option(option, value)[0]:
            raise InvalidData(f"@track({option}={short(value, 80)}): {option} must be {OPTIONS[option][1]}")


def _deliver_in_a_pool_worker() -> None:
    """In a ``multiprocessing`` worker (a ``Pool``'s, a ``ProcessPoolExecutor``'s), the call's final update is
    delivered before it returns, within the publish budget: the pool may end the worker as soon as it has the
    result (``with Pool() as pool:`` terminates them), before the senders would send it; and a worker ends
    through ``os._exit``. Not while the API is failing (it is not waited for: what is left is delivered or
    spooled when the worker exits normally), nor on an event loop (it would stall the loop)."""
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is None or multiprocessing.parent_process() is None or on_an_event_loop():
        return
    config = get_config()
    if config is not None:
        sender.flush(config.publish_budget, give_up=lambda: pending_updates().failing)
