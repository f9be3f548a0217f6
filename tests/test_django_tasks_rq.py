"""The tests of test_django_tasks.py on the RQ backend (``manage.py rqworker`` on Redis db 10): the same tests, in
a module of their own so that the test run's parallel workers (one module each) run them beside the database
backends'."""

from __future__ import annotations

import pytest

from . import test_django_tasks as base
from .test_django_tasks import *  # noqa: F403  (the tests, and the fixtures they use)


@pytest.fixture(scope="module", params=["rq"])
def project(request, taskbadger_server_session):
    yield from base.backend_project(request.param, taskbadger_server_session)
