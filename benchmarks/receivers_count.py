"""The Celery receivers' own instructions per tracked task, counted exactly by callgrind in a tight loop (issue 25).

    python benchmarks/receivers_count.py [--tasks 2000] [--parts] [--keep DIR]

A process of its own (``PYTHONHASHSEED=0``, under ``valgrind --tool=callgrind --collect-atstart=no
--toggle-collect=functools_reduce``) runs, for each task, what a solo worker's receivers run: ``on_received`` for the
message (the main process's map of tracked messages), then ``on_prerun`` and ``on_postrun`` around a pushed request
of a registered ``taskbadger.celery.Task`` carrying the headers its publisher wrote (the task was created at publish).
Nothing is queued or sent (``sender.submit`` counts the update and drops it, as ``variants.py``'s
``receivers-only``): the senders have their own count (``instructions.py --micro``). The same loop with the receivers
left out (the request pushed and popped, Celery's own part) is counted too and subtracted, so the figure is ours
alone. The same tree gives the same count to within a few instructions: a lever of 1k per task shows.

``--parts`` also counts, each alone, the steps the receivers are made of (reading the headers, the start, the end),
to locate the cost.
"""

from __future__ import annotations

import argparse
import glob
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import uuid

from instructions import _total

#: Tasks run before counting starts (caches warm, lazily made objects made).
WARM = 200


def count(tasks: int, parts: bool, keep: pathlib.Path | None) -> list[tuple[str, float]]:
    out_dir = pathlib.Path(tempfile.mkdtemp(prefix="tbbench-receivers-"))
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=functools_reduce",
           "--dump-before=os_sched_yield", f"--callgrind-out-file={out_dir}/callgrind.out.%p",
           sys.executable, os.path.abspath(__file__), "--child", "--tasks", str(tasks)]
    if parts:
        cmd.append("--parts")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=os.path.dirname(__file__))
    if done.returncode != 0:
        raise RuntimeError(f"the count failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    labels = [line.split("\t") for line in done.stdout.splitlines() if line.startswith("count\t")]
    dumps = sorted(glob.glob(f"{out_dir}/callgrind.out.*.*"), key=lambda path: int(path.rsplit(".", 1)[1]))
    if len(dumps) < len(labels):
        raise RuntimeError(f"expected {len(labels)} dumps, found {len(dumps)}")
    counts = [(label, _total(path) / int(n)) for (_, label, n), path in zip(labels, dumps, strict=False)]
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        for path in dumps:
            shutil.move(path, keep / pathlib.Path(path).name)
    shutil.rmtree(out_dir, ignore_errors=True)
    return counts


def child(tasks: int, parts: bool) -> int:
    """The counted process (under callgrind): prints ``count<TAB>label<TAB>n`` before each dump."""
    import functools
    from types import SimpleNamespace

    from celery import Celery
    from celery.app.task import Context

    import taskbadger
    from taskbadger.celery import Task, headers
    from taskbadger.celery import signals as receivers
    from taskbadger.delivery import sender

    submitted = [0]

    def submit(task_id: str, fields: dict, final: bool = False, delay: float | None = None) -> bool:
        submitted[0] += 1
        return True

    sender.submit = submit  # type: ignore[assignment]  # benchmark-only: nothing queued (see the docstring)
    app = Celery("receivers_count", broker="memory://", set_as_current=True)

    @app.task(base=Task, name="receivers_count.noop")
    def noop_() -> None:
        return None

    app.finalize()
    noop = app.tasks["receivers_count.noop"]  # the task itself, as a worker has it (not the decorator's proxy)

    # a key and a host that nothing reaches: no update is sent, and the tasks were created at publish
    taskbadger.init(token="count-only", host="http://127.0.0.1:9", organization_slug="acme", project_slug="demo")
    total = WARM + tasks
    messages = []
    for i in range(total):
        celery_id = str(uuid.UUID(int=i + 1))
        task_id = f"{i:022d}"[:22]
        header = {"task": {"id": task_id, "name": "receivers_count.noop", "status": "pending", "tags": {},
                           "queue": "celery", "external_id": celery_id,
                           "public_url": f"https://taskbadger.net/public/{task_id}/"},
                  "heartbeat_interval": None, "stale_timeout": None}
        fields = {"taskbadger_task": header, "taskbadger_task_id": task_id}
        request = {"id": celery_id, "task": "receivers_count.noop", "args": (), "kwargs": {}, "retries": 0,
                   "is_eager": False, "delivery_info": {"routing_key": "celery", "redelivered": False},
                   "headers": fields, **fields}
        # what on_received is given in the main process: a worker Request, whose headers are its request_dict
        messages.append((SimpleNamespace(id=celery_id, name="receivers_count.noop", request_dict=request), request))

    def one(i: int) -> None:
        received, request = messages[i]
        receivers.on_received(sender=None, request=received)
        noop.push_request(**request)
        try:
            receivers.on_prerun(sender=noop, task_id=request["id"], task=noop, args=(), kwargs={})
            receivers.on_postrun(sender=noop, task_id=request["id"], task=noop, state="SUCCESS", retval=None)
        finally:
            noop.pop_request()

    def celery_only(i: int) -> None:
        received, request = messages[i]
        noop.push_request(**request)
        try:
            noop.request  # noqa: B018  # as on_prerun reads it
        finally:
            noop.pop_request()

    for i in range(WARM):
        one(i)
    assert submitted[0] == 2 * WARM, f"expected a start and an end per task, {submitted[0]} updates"

    def counted(label: str, step, indexes: range) -> None:  # type: ignore[no-untyped-def]
        functools.reduce(lambda _, i: step(i), indexes, None)
        print(f"count\t{label}\t{len(indexes)}", flush=True)
        os.sched_yield()

    counted("the receivers, one task", one, range(WARM, total))
    assert submitted[0] == 2 * total
    counted("Celery's part of the loop (a request pushed, read, popped)", celery_only, range(WARM, total))
    if parts:
        contexts = [Context(request) for _, request in messages]  # what ``task.request`` is in the worker
        counted("read_incoming (the headers read and checked)",
                lambda i: headers.read_incoming(contexts[i], "receivers_count.noop"), range(WARM, total))
        counted("read_task_id (the main process's read)",
                lambda i: headers.read_task_id(messages[i][0]), range(WARM, total))
        counted("on_received", lambda i: receivers.on_received(sender=None, request=messages[i][0]),
                range(WARM, total))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--parts", action="store_true")
    parser.add_argument("--keep", type=pathlib.Path, help="keep callgrind's files here, for callgrind_annotate")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.tasks, args.parts)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    counts = count(args.tasks, args.parts, args.keep)
    whole, celery = counts[0][1], counts[1][1]
    print(f"\nthe Celery receivers, {args.tasks} tasks counted after {WARM}, callgrind (exact)\n")
    print("| what | instructions per task |")
    print("|---|---|")
    print(f"| **ours: the receivers' own** (the loop less Celery's part) | **{whole - celery:,.0f}** |")
    for label, per in counts:
        print(f"| {label} | {per:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
