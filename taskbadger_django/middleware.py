"""``TaskBadgerScopeMiddleware``: request context on the tasks created while a request is handled.

    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "taskbadger_django.middleware.TaskBadgerScopeMiddleware",   # after it, for user_id
    ]

Every task created during the request (``.delay()`` of a tracked Celery task, ``taskbadger.create_task``,
``@taskbadger.track``) gets ``request_path``, ``request_method`` and, for an authenticated user,
``user_id`` in its ``data`` (values the task sets itself win). Works for sync and async views.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

import taskbadger
from taskbadger._runtime import log_throttled, short
from taskbadger.scope import TAG_WARN_INTERVAL


def _user_id(user: Any) -> Any:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    pk = getattr(user, "pk", None)
    return pk if isinstance(pk, (int, str)) or pk is None else str(pk)


def request_context(request: HttpRequest, user: Any = None) -> dict[str, Any]:
    """The scope data for ``request``."""
    context: dict[str, Any] = {"request_path": request.path, "request_method": request.method}
    user_id = _user_id(user)
    if user_id is not None:
        context["user_id"] = user_id
    return context


class TaskBadgerScopeMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self._async:
            return self.__acall__(request)
        # ``request.user`` is only there after AuthenticationMiddleware; reading it loads the session and the user:
        # done only when a task is created. Read here, every request paid a session read (and a query for a
        # logged-in user), and every response said ``Vary: Cookie``, which keeps caches from sharing public pages.
        with taskbadger.current_scope() as scope:
            scope.update(request_context(request))
            scope.defer("user_id", lambda: _user_id(getattr(request, "user", None)))
            return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        # The user cannot be read later, when a task is created: that may be on the event loop, where Django refuses
        # a query. So it is read here, but only when tasks can be created (not with ENABLED False or without a key).
        context = request_context(request)
        if taskbadger.is_configured():
            try:
                auser = getattr(request, "auser", None)
                user_id = _user_id(await auser() if auser is not None else getattr(request, "user", None))
            except Exception as err:
                # read for our tasks alone (the view may never read it): a user that cannot be loaded (its database
                # down, an authentication backend's error) failed the request with a 500
                _could_not_read_user(err)
            else:
                if user_id is not None:
                    context["user_id"] = user_id
        with taskbadger.current_scope() as scope:
            scope.update(context)
            return await self.get_response(request)


def _could_not_read_user(err: Exception) -> None:
    log_throttled("middleware-user", TAG_WARN_INTERVAL, logging.WARNING,
                  "Task Badger: the request's user could not be read for user_id (%s: %s): tasks are created without "
                  "it", type(err).__name__, short(str(err), 200))
