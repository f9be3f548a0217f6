"""The servers some integration tests need (Redis, RabbitMQ, PostgreSQL on loopback).

Without one, the README's test command skips those tests and says why; `.ci/run` starts every server
and sets TASKBADGER_REQUIRE_SERVICES=1, so there a missing server fails the test instead of skipping it.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import uuid
from collections.abc import Iterator

import pytest

PORTS = {"redis": 6379, "rabbitmq": 5672, "postgresql": 5432}


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def require(service: str) -> None:
    """Skip the calling test when ``service`` is not running (fail instead under .ci/run)."""
    if port_open(PORTS[service]):
        return
    message = f"{service} is not running on 127.0.0.1:{PORTS[service]}"
    if os.environ.get("TASKBADGER_REQUIRE_SERVICES"):
        pytest.fail(f"{message} (TASKBADGER_REQUIRE_SERVICES is set: .ci/run starts it)")
    pytest.skip(message)


def postgres_url(database: str) -> str:
    return f"postgresql://postgres@127.0.0.1:5432/{database}"


@contextlib.contextmanager
def postgres_database(prefix: str = "taskbadger_test") -> Iterator[str]:
    """A new, empty PostgreSQL database for one test (or module); dropped afterwards. Yields its name."""
    require("postgresql")
    import psycopg

    # TASKBADGER_TEST_PG_PREFIX: a run beside others on one server names its databases apart
    name = f"{os.environ.get('TASKBADGER_TEST_PG_PREFIX', '')}{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(postgres_url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


#: The API faults every queue integration's fault matrix runs (the stand-in server's names).
API_FAULTS = ("refused", "hang", "slow", "500", "429")
#: How late a ``slow`` API answers: past the publish budget of every fault test (0.5 s), so a create is given up
#: at its deadline and carried out later.
SLOW_SECONDS = 1.5


def api_fault(server, mode: str) -> None:
    """Make the stand-in API misbehave as ``mode`` (one of ``API_FAULTS``) until ``accept``/``clear_faults``."""
    if mode == "refused":
        server.refuse()
    elif mode == "hang":
        server.hang()
    elif mode == "slow":
        server.set_latency(SLOW_SECONDS)
    elif mode == "500":
        server.fail(500)
    elif mode == "429":
        server.fail(429, retry_after=30)
    elif mode == "not_json":
        server.misbehave("not_json", method="POST")
    elif mode == "not_json everywhere":  # the look-up after an unreadable create is unreadable too
        server.misbehave("not_json")
    else:
        raise ValueError(f"unknown API fault {mode!r}: use one of {API_FAULTS}")


def revoked_key(server) -> tuple[str, str]:
    """A project key the stand-in refuses (401), as a revoked or mistyped one is: the key, and its secret part."""
    secret = "revoked-" + uuid.uuid4().hex
    return base64.b64encode(f"{server.organization}/{server.project}/{secret}".encode()).decode(), secret
