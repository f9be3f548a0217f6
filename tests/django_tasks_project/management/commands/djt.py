"""The web process's side in the django.tasks integration tests, as its own process:

``djt enqueue TASK [JSON_ARGS] [--count N] [--rollback]``: enqueue (on ``DJT_QUEUE``) and print one JSON line
per task: its TaskResult id and how long ``enqueue()`` took; ``--rollback``: inside a ``transaction.atomic()``
block that then rolls back.  ``djt result ID [--until STATUS --timeout S]``: the TaskResult as the
backend reports it (once it has STATUS, or at the deadline: polled here, not by a process per poll).
``djt rerun ID``: make the backend run the same TaskResult again.
``djt bench TASK [JSON_ARGS] --count N``: N enqueues, timed.
``djt channel PREFIX --count N``: the database channel's queries alone, timed.
``djt enqueue ... --hold-until-finished``: the transaction stays open until the job has finished (30 s at most),
then commits; one more JSON line says how the hold ended.
``djt enqueue ... --run-after-days N``: due N days from now.  ``djt age ID DAYS``: DAYS pass for a task that is
not due yet (its entry and its job's run_after are that much earlier).
``djt serve -``: the commands that only read or write the backend's storage (result, age, rerun), one JSON list of
arguments per line on stdin, each answered with one JSON line on stdout (``{"out": ...}`` or ``{"error": ...}``):
one Django start for a test module's many polls instead of one each (a second of CPU each, on a shared CI machine).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import sys
import time
import traceback
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import connections, transaction
from django.db.models import F
from django.utils import timezone

from tests.django_tasks_project import tasks


class Command(BaseCommand):
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("action", choices=["enqueue", "result", "rerun", "bench", "channel", "age", "serve"])
        parser.add_argument("target")
        parser.add_argument("arguments", nargs="?", default="[]")
        parser.add_argument("--count", type=int, default=1)
        parser.add_argument("--rollback", action="store_true")
        parser.add_argument("--using", default=None,
                            help="the database alias of the transaction (--rollback, --hold-until-started)")
        parser.add_argument("--hold", type=float, default=0.0,
                            help="keep the transaction open this many seconds after the enqueue")
        parser.add_argument("--run-after-days", type=float, default=None)
        parser.add_argument("--failing-hook", action="store_true",
                            help="inside a transaction that commits, after an on_commit hook that raises")
        parser.add_argument("--until", default=None, help="result: wait (up to --timeout) for this status")
        parser.add_argument("--timeout", type=float, default=30.0)
        parser.add_argument("--hold-until-started", action="store_true",
                            help="keep the transaction open until a worker has started the job (20 s at most)")
        parser.add_argument("--hold-until-finished", action="store_true",
                            help="keep the transaction open until the job has finished (30 s at most), then print "
                                 "how the hold ended: {\"hold\": \"finished\" or \"deadline\", \"seconds\": ...}")

    def handle(self, *_args: Any, action: str, target: str, arguments: str, count: int, rollback: bool,
               failing_hook: bool, run_after_days: float | None = None, hold_until_started: bool = False,
               hold_until_finished: bool = False,
               until: str | None = None, timeout: float = 30.0, using: str | None = None, hold: float = 0.0,
               **_: Any) -> None:
        if action == "serve":
            _serve()
        elif action == "enqueue":
            task = getattr(tasks, target).using(queue_name=settings.DJT_QUEUE)
            if run_after_days is not None:
                task = task.using(run_after=timezone.now() + dt.timedelta(days=run_after_days))
            result = None
            try:
                in_transaction = rollback or failing_hook or hold_until_started or hold or hold_until_finished
                with transaction.atomic(using=using) if in_transaction else contextlib.nullcontext():
                    if failing_hook:  # Django runs no hook after one that raises, ours included: yet it committed
                        transaction.on_commit(lambda: 1 / 0)
                    for _ in range(count):
                        started = time.perf_counter()
                        result = task.enqueue(*json.loads(arguments))
                        seconds = time.perf_counter() - started
                        self.stdout.write(json.dumps({"id": result.id, "seconds": seconds,
                                                      "status": str(result.status)}))
                    if hold_until_started and result is not None:
                        _wait_started(task, result.id)
                    if hold_until_finished and result is not None:
                        started = time.perf_counter()
                        finished = _wait_finished(task, result.id)
                        self.stdout.write(json.dumps({"hold": "finished" if finished else "deadline",
                                                      "seconds": time.perf_counter() - started}))
                    if hold:
                        time.sleep(hold)  # a long transaction (what a worker that started the job meanwhile sees)
                    if rollback:
                        transaction.set_rollback(True, using=using)
            except ZeroDivisionError:
                # The dropped hooks live on in this exception's traceback until this block ends: Django lets go of
                # them late. Hold on until the worker has run the job, as a busy process may.
                deadline = time.monotonic() + 20
                while result is not None and time.monotonic() < deadline and \
                        str(task.get_backend().get_result(result.id).status) != "SUCCESSFUL":
                    time.sleep(0.05)  # polling the database for the job's result, under the deadline above
        elif action == "bench":
            task = getattr(tasks, target).using(queue_name=settings.DJT_QUEUE)
            started = time.perf_counter()
            for _ in range(count):
                task.enqueue(*json.loads(arguments))
            self.stdout.write(json.dumps({"count": count, "seconds": time.perf_counter() - started}))
        elif action == "channel":  # the id channel alone: claim + write the created task's meta, then its end
            from taskbadger.django_tasks import CREATED
            from taskbadger_django.carried import DatabaseChannel

            channel, meta = DatabaseChannel(), {"task": {"id": "x" * 26, "name": "bench"}}
            started = time.perf_counter()
            for i in range(count):
                channel.claim(f"{target}-{i}")
                channel.put(f"{target}-{i}", CREATED, meta)
            enqueue_side = time.perf_counter() - started
            started = time.perf_counter()
            for i in range(count):
                channel.get(f"{target}-{i}")
                channel.finished(f"{target}-{i}", failed=False)
            self.stdout.write(json.dumps({"count": count, "seconds": enqueue_side,
                                          "worker_seconds": time.perf_counter() - started}))
        elif action == "result":
            deadline = time.monotonic() + timeout
            result = tasks.add.get_backend().get_result(target)
            while until is not None and str(result.status) != until and time.monotonic() < deadline:
                time.sleep(0.05)  # polling the backend for the job's status, under the deadline above
                result = tasks.add.get_backend().get_result(target)
            out: dict[str, Any] = {"status": str(result.status), "worker_ids": list(result.worker_ids),
                                   "errors": [e.exception_class_path for e in result.errors]}
            if str(result.status) == "SUCCESSFUL":
                out["return_value"] = result.return_value
            self.stdout.write(json.dumps(out))
        elif action == "age":  # the days pass: the entry is that much older, and the job that much nearer
            from django_tasks_db.models import DBTaskResult

            from taskbadger_django.models import CarriedTask

            days = dt.timedelta(days=float(arguments))
            CarriedTask.objects.filter(pk=target).update(created_at=F("created_at") - days)
            DBTaskResult.objects.filter(pk=target).update(run_after=F("run_after") - days)
        elif action == "rerun":
            if settings.DJT_BACKEND == "db":
                from django_tasks_db.models import DBTaskResult

                DBTaskResult.objects.filter(pk=target).update(status="READY", finished_at=None)
            else:
                import django_rq
                from django_tasks_rq.backend import Job

                Job.fetch(target, connection=django_rq.get_connection(settings.DJT_QUEUE)).requeue()


SERVED = {"result", "age", "rerun"}


def _serve() -> None:
    for line in sys.stdin:
        argv = json.loads(line)
        out = io.StringIO()
        try:
            if argv[0] not in SERVED:
                raise ValueError(f"djt serve runs {sorted(SERVED)}, not {argv[0]!r}")
            call_command("djt", *argv, stdout=out)
            answer = {"out": out.getvalue()}
        except Exception:
            answer = {"error": traceback.format_exc()}
        finally:
            connections.close_all()  # as at the end of a process: the next command connects afresh
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


def _wait_started(task: Any, result_id: str) -> None:
    """Until a worker has started the job (its result is no longer READY), 20 s at most."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and str(task.get_backend().get_result(result_id).status) == "READY":
        time.sleep(0.01)  # polling the backend for the job's status, under the deadline above


def _wait_finished(task: Any, result_id: str) -> bool:
    """Until the job has finished (its result SUCCESSFUL or FAILED), 30 s at most: whether it did."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if str(task.get_backend().get_result(result_id).status) in ("SUCCESSFUL", "FAILED"):
            return True
        time.sleep(0.02)  # polling the backend for the job's status, under the deadline above
    return False
