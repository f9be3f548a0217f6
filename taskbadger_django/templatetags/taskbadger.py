"""``{% load taskbadger %}``: ``{% taskbadger_progress tb_id %}`` draws a live progress bar of a Task Badger task.

    {% taskbadger_progress tb_id %}
    {% taskbadger_progress tb_id label=_("Your export") %}

``tb_id`` is a Celery result (the one ``.delay()`` returned: followed by its Celery id while its worker has yet to
create its task, when its create failed at publish), a ``taskbadger.Task``, a Task Badger task id or a ``django.tasks``
result; None (a task published untracked; also ``result.taskbadger_task_id`` while its worker has yet to create the
task: pass the result) draws a bar that says progress is not available. ``label``
is shown instead of the task's name. The page's stylesheet and script come with the first bar of a
request (later bars reuse them); both are static files: no inline script or style. Under a nonce-based policy
('strict-dynamic', where 'self' counts for nothing) they carry the page's nonce: ``csp_nonce`` in the template
context (Django 6.0's ``csp`` context processor) or ``request.csp_nonce`` (django-csp).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from django import template
from django.core.exceptions import ImproperlyConfigured
from django.template.loader import render_to_string
from django.utils.safestring import SafeString
from django.utils.translation import gettext

from .. import progress

register = template.Library()

#: The request attribute that says this request's page already links the stylesheet and the script.
ASSETS_MARK = "_taskbadger_progress_assets"


def status_words() -> dict[str, str]:
    """The words the bar shows, in the language of the page (the script has no catalog of its own)."""
    return {
        "pending": gettext("Queued"),
        "pre_processing": gettext("Starting"),
        "processing": gettext("Running"),
        "post_processing": gettext("Finishing"),
        "success": gettext("Done"),
        "error": gettext("Failed"),
        "cancelled": gettext("Cancelled"),
        "stale": gettext("Stale: no news from the task"),
        "_awaiting_retry": gettext("Waiting to retry"),
        "_unavailable": gettext("Progress is unavailable right now; retrying…"),
        "_gone": gettext("Progress is not available. Reload the page to try again."),
        "_untracked": gettext("Progress is not available for this task."),
        "_signin": gettext("Sign in again to see progress."),
    }


@register.simple_tag(takes_context=True)
def taskbadger_progress(context: template.Context, task: Any, label: str | None = None) -> SafeString:
    request = getattr(context, "request", None) or context.get("request")
    if request is None:
        raise ImproperlyConfigured("{% taskbadger_progress %} needs the request: render the template with "
                                   "render(request, ...) (or a RequestContext)")
    url = progress.progress_url(request, task)
    assets = not getattr(request, ASSETS_MARK, False)
    if assets:
        setattr(request, ASSETS_MARK, True)
    return render_to_string("taskbadger_django/progress.html", {
        "url": url,
        "label": label,
        "poll": progress.progress_settings().poll_interval,
        "words": json.dumps(status_words(), ensure_ascii=False),
        "element_id": f"taskbadger-progress-{secrets.token_hex(4)}",
        "assets": assets,
        "nonce": _csp_nonce(context, request) if assets else None,
    }, request=None)


def _csp_nonce(context: template.Context, request: Any) -> str | None:
    """The nonce of this response's Content-Security-Policy, if the project's CSP middleware made one."""
    nonce = context.get("csp_nonce") or getattr(request, "csp_nonce", None)
    return str(nonce) if nonce else None
