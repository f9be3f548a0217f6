"""The progress view: what a ``{% taskbadger_progress %}`` bar polls (rules in ``progress``).

=======  ============================================================================================
status   body
=======  ============================================================================================
200      ``{"status", "value", "value_max", "percent", "name", "done", "awaiting_retry"}`` (``status``
         null while the first read of the task is under way in another request); an ``ETag``
304      nothing changed since the ``If-None-Match`` the script sent
403      ``{"error": "forbidden"}``: no valid token for this viewer (tampered, expired, another user's),
         or ``AUTHORIZE`` said no. Nothing about the task.
404      ``{"available": false}``: Task Badger does not know the task
503      ``{"available": false}`` and ``Retry-After``: Task Badger cannot be read right now (the script
         keeps the bar, says so, and retries with a growing delay)
=======  ============================================================================================

Never an error page: a failure of the API is a 503 with that small body.
"""

from __future__ import annotations

import math

from django.http import HttpRequest, HttpResponse, HttpResponseNotModified
from django.utils.cache import patch_vary_headers
from django.utils.http import parse_etags
from django.views.decorators.http import require_safe

from . import progress as _progress

try:  # Django 5.1+: LoginRequiredMiddleware redirects every view that does not say it needs no login
    from django.contrib.auth.decorators import login_not_required
except ImportError:  # pragma: no cover (older Django has no such middleware)

    def login_not_required(view):
        return view

FORBIDDEN = b'{"error":"forbidden"}'


def _headers(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "private, no-cache"
    response["X-Content-Type-Options"] = "nosniff"
    patch_vary_headers(response, ["Cookie"])
    return response


def _json(body: bytes, status: int) -> HttpResponse:
    return _headers(HttpResponse(body, status=status, content_type="application/json"))


@login_not_required  # the token says who may read the task; anonymous visitors hold one too (their session)
@require_safe
def progress(request: HttpRequest, token: str) -> HttpResponse:
    settings = _progress.progress_settings()
    target = _progress.token_target(request, token, settings.token_max_age)
    if target is None:
        return _json(FORBIDDEN, 403)
    kind, named = target
    if kind == _progress.EXTERNAL:
        if settings.authorize is not None:  # a rule judges Task Badger ids (a rule set since the page was rendered)
            return _json(FORBIDDEN, 403)
        answer = _progress.read_progress_by_external_id(named, settings)
    elif not _progress.authorized(request, named, settings):
        return _json(FORBIDDEN, 403)
    else:
        answer = _progress.read_progress(named, settings)
    if answer.etag is not None:
        # If-None-Match compares weakly (RFC 9110 13.1.2): a proxy that compresses the answer (nginx's gzip,
        # Django's GZipMiddleware) marks its ETag weak, and the browser sends it back so
        wanted = {tag.removeprefix("W/") for tag in parse_etags(request.headers.get("If-None-Match", ""))}
        if answer.etag in wanted or "*" in wanted:
            response = _headers(HttpResponseNotModified())
            response["ETag"] = answer.etag
            return response
    response = _json(answer.body, answer.status)
    if answer.etag is not None:
        response["ETag"] = answer.etag
    if answer.status == 503:
        response["Retry-After"] = str(math.ceil(settings.poll_interval))
    return response
