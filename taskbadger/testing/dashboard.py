"""The stand-in API's local dashboard: a live page of the tasks it holds, and a page per task.

``/`` lists the tasks (newest first, children under their parent, filters by status and name) and
polls ``/_dashboard/tasks`` twice a second, with the filters as query parameters: the store answers
with at most ``MAX_LISTED`` rows and copies only those (``Store.newest``), however many tasks it
holds. A task's ``url`` (``/a/<org>/tasks/<id>/``) and ``public_url`` open its page, which shows
every field, ``data`` and the error's traceback.

Read-only and without authentication: the server listens on loopback unless told otherwise
(``allow_remote``), and the dashboard answers only requests whose ``Host`` names this server by
address (loopback, with its port), never by a domain name: a page of another site that rebinds its
name to 127.0.0.1 (DNS rebinding) gets 403 and no data. The API's routes need the key instead, and
any ``Host``. The pages ship in the package (no CDN) and put task content into the page as text,
never as HTML; a Content-Security-Policy that allows only the server's own scripts and styles backs
that up. Dashboard requests are not recorded in ``TaskBadgerServer.requests`` and faults do not
apply to them.
"""

from __future__ import annotations

import ipaddress
import json
import re
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from ..config import is_loopback
from .validation import STATUSES

if TYPE_CHECKING:
    from .app import App, Headers

#: (status, body, content type)
Page = tuple[int, bytes, str]
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}
_TASK_PAGE = re.compile(r"^/(?:a/[^/]+|public)/tasks/(?P<id>[A-Za-z0-9_-]{1,64})/$")
_STATIC = re.compile(r"^/_dashboard/static/(?P<name>[a-z]+\.(?:js|css))$")
_API_TASK = re.compile(r"^/_dashboard/tasks/(?P<id>[A-Za-z0-9_-]{1,64})$")
_HOST = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9.-]+))(?::(?P<port>[0-9]{1,5}))?$")
#: Most rows the list sends (newest first).
MAX_LISTED = 500
#: Longest name filter accepted (a task name has at most 255 characters).
MAX_NAME_FILTER = 255


@lru_cache(maxsize=8)
def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("static").joinpath(name).read_bytes()


def _file(name: str) -> Page:
    suffix = name[name.rindex("."):]
    return 200, _asset(name), _TYPES[suffix]


def _json(value: Any, status: int = 200) -> Page:
    return status, json.dumps(value).encode(), "application/json"


def host_allowed(host: str | None, port: int, allow_remote: bool = False) -> bool:
    """Whether a request with this ``Host`` header may see the dashboard of a server on ``port``.

    Loopback (``127.0.0.1``, ``[::1]``, ``localhost``) with the server's port; with ``allow_remote``,
    any IP address and any port (a port mapping may change it). Never a domain name: that is what a
    DNS-rebinding page sends.
    """
    match = _HOST.match(host or "")
    if match is None:
        return False
    address = match["v6"] or match["name"]
    if is_loopback(address):
        return allow_remote or int(match["port"] or 80) == port
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return allow_remote


def _ours(path: str) -> bool:
    return path == "/" or path.startswith("/_dashboard/") or _TASK_PAGE.match(path) is not None


def serve(app: App, method: str, target: str, headers: Headers) -> Page | None:
    """The dashboard's answer to a request, or None when ``target`` is not the dashboard's."""
    path, _, query = target.partition("?")
    if method not in ("GET", "HEAD") or not _ours(path):
        return None
    base_url = app.base_url()
    if not host_allowed(headers.get("Host"), urlsplit(base_url).port or 80, app.allow_remote):
        return _json({"detail": f"This dashboard answers at {base_url}/ only: the request's Host header names "
                                "another host."}, 403)
    if path == "/":
        return _file("dashboard.html")
    if _TASK_PAGE.match(path):
        return _file("task.html")
    static = _STATIC.match(path)
    if static:
        try:
            return _file(static["name"])
        except (FileNotFoundError, KeyError):
            return _json({"detail": "Not found."}, 404)
    if path == "/_dashboard/tasks":
        return _list(app, query)
    task_path = _API_TASK.match(path)
    if task_path:
        task = app.store_task(task_path["id"])
        return _json(task) if task is not None else _json({"detail": "Not found."}, 404)
    return _json({"detail": "Not found."}, 404)


def _list(app: App, query: str) -> Page:
    """``/_dashboard/tasks?status=…&name=…``: the newest matching tasks, children under their parent."""
    params = parse_qs(query)
    status = params.get("status", [""])[-1] or None
    name = params.get("name", [""])[-1].strip() or None
    if status is not None and status not in STATUSES:
        return _json({"detail": f"status must be one of {', '.join(STATUSES)}, got {status[:40]!r}."}, 400)
    if name is not None and len(name) > MAX_NAME_FILTER:
        return _json({"detail": f"name must have at most {MAX_NAME_FILTER} characters."}, 400)
    listing = app.store.newest(MAX_LISTED, status=status, name=name)
    return _json({"organization": app.organization, "project": app.project, "tasks": listing.rows,
                  "more": listing.more, "total": listing.total})
