"""Instructions per no-op task in a real solo worker, counted by valgrind's callgrind: a figure that does not
depend on what else the machine runs (the throughput ratios of ``run.py`` and ``locate.py`` move by ±0.1
between runs on a shared machine; these counts by well under 1 %).

    python benchmarks/instructions.py [--tasks 300] [--kind untracked --kind receivers-only --kind ours] [--keep DIR]

Each kind publishes ``WARM + tasks`` no-op tasks to Redis (db 9), starts ``celery worker -P solo`` under
callgrind with counting off, turns counting on once the warm-up tasks are done (caches, connections and
the senders' threads are up), and off once the rest are done and, for ``ours``, their final updates were
delivered to the stand-in API. The counts are per thread: the worker's main thread (where a solo worker
runs its tasks, our receivers included) and the others (our senders). Kinds: ``untracked``, ``ours``,
and the tracked variants of ``variants.py`` (``receivers-only``: the receivers, nothing queued or sent).

The worker runs ~50 times slower under callgrind: its updates are sent in smaller batches than at full
speed (``processing`` and the final update still merge: the last column), so the senders' count is an
upper bound. Instructions are not time: a cold cache makes the same instructions slower in a worker than
in a tight loop. They are what a change to our code changes, measured exactly; time stays ``locate.py``'s
(the main thread's run-to-run spread is about 0.5 %, the senders' about 3 %: their batches vary).
Needs ``valgrind`` (Debian's package); a kind takes under a minute.

``--micro`` counts the senders' own instructions per update exactly, in a tight loop instead of a worker:

    python benchmarks/instructions.py --micro [--batch 1 --batch 32] [--updates 2000] [--cut send ...]

A process of its own (``PYTHONHASHSEED=0``, under ``valgrind --tool=callgrind --collect-atstart=no
--toggle-collect=functools_reduce``) queues each batch's updates as a worker's receivers do (``processing``
with ``start_time``, then the final ``success`` with ``end_time``, merged into one entry), outside the count,
then counts one sender round (``Sender._run_once``: take the batch, resolve, build, send, read, settle,
finish) run inside ``functools.reduce``, against the stand-in API in another process. The same tree gives the
same count within a few hundred instructions per update. ``--cut`` leaves parts out, to locate the cost
(benchmark-only replacements, as ``variants.py``): ``transport`` (answers made up, no socket), ``endpoints``
(no request built: every update counts as sent), ``send`` (no ``_send``: the queue and the round alone);
``--parts`` also counts each step of one update's path on its own.
"""

from __future__ import annotations

import argparse
import glob
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid

import redis
import run
import variants

#: Tasks run before counting starts.
WARM = 100


def count(b: run.Bench, kind: str, n: int, keep: pathlib.Path | None = None) -> tuple[float, float, float]:
    """(main thread's instructions per task, other threads' per task, updates sent per task) for one kind.
    ``keep``: a directory to move callgrind's per-thread files to (``callgrind_annotate`` reads them)."""
    sdk = "untracked" if kind == "untracked" else "ours"
    variant = "" if kind in ("untracked", "ours") else kind
    delivered = sdk == "ours" and variant not in variants.UNDELIVERED
    b.fresh(0.0)
    queue = b.name(f"instructions-{kind}")
    key = queue + ":results"
    env = b.env(sdk, queue)
    if variant:
        env["BENCH_VARIANT"] = variant
    run.publish(sdk, env, count=WARM + n, key=key)
    b.api.latency(b.latency)
    out_dir = pathlib.Path(tempfile.mkdtemp(prefix="tbbench-callgrind-"))
    env["BENCH_READY_FILE"] = str(out_dir / "ready")
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
           f"--callgrind-out-file={out_dir}/callgrind.out", str(run.python_for(sdk)), "-m", "celery", "-A", "benchapp",
           "worker", "-P", "solo", "-Q", queue, "-n", f"instructions-{uuid.uuid4().hex[:6]}@bench",
           "--loglevel=WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    with open(out_dir / "worker.log", "wb") as log_file:
        worker = subprocess.Popen(cmd, cwd=run.BENCH_DIR, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        def finished(total: int) -> bool:
            return b.r.llen(key) >= total and (not delivered or b.api.call("terminal") >= total)

        if not run.wait_until(lambda: (out_dir / "ready").exists(), 900, 0.5) or not run.wait_until(
                lambda: finished(WARM), 900, 0.2):
            raise RuntimeError(f"the {kind} worker did not start or run its warm-up tasks:\n"
                               f"{(out_dir / 'worker.log').read_text(errors='replace')[-3000:]}")
        subprocess.run(["callgrind_control", "-i", "on", str(worker.pid)], check=True, capture_output=True)
        first, patches = b.r.llen(key), _patches(b)
        if not run.wait_until(lambda: finished(WARM + n), 1800, 0.2):
            raise RuntimeError(f"the {kind} worker did not finish its tasks")
        counted, patches = b.r.llen(key) - first, _patches(b) - patches
        subprocess.run(["callgrind_control", "-d", str(worker.pid)], check=True, capture_output=True)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    main = other = 0
    for path in glob.glob(f"{out_dir}/callgrind.out.*"):
        total = _total(path)
        if path.endswith("-01"):  # thread 1: the main thread
            main += total
        else:
            other += total
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        for path in glob.glob(f"{out_dir}/callgrind.out.*"):
            shutil.move(path, keep / f"{kind}.{pathlib.Path(path).name}")
    shutil.rmtree(out_dir, ignore_errors=True)
    return main / counted, other / counted, patches / counted


def _patches(b: run.Bench) -> int:
    return b.api.counts()["by_method"].get("PATCH", 0)


def _total(path: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    return 0


# -- the senders' micro count (--micro) ---------------------------------------------------------------------------

#: Cuts of ``--micro --cut``: what each leaves out of a sender's round.
CUTS = ("transport", "endpoints", "send")
#: Rounds run before counting starts (connections open, caches warm).
MICRO_WARM = 8


def micro(batches: list[int], updates: int, cuts: list[str], parts: bool, keep: pathlib.Path | None) -> int:
    """Count a sender's instructions per update (``--micro``) for each batch size, whole and with each cut."""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    api = run.ApiServer()
    rows: list[tuple[str, int, float]] = []
    try:
        for batch in batches:
            for cut in ["", *cuts]:
                per, _ = _micro_child(api, batch, updates, cut, False, keep)
                rows.append((cut or "everything", batch, per))
                run.log(f"batch {batch}, {cut or 'everything'}: {per:,.0f} instructions per update")
        if parts:
            _, steps = _micro_child(api, batches[-1], updates, "", True, keep)
    finally:
        api.stop()
    print(f"\nsenders, {updates} updates per count, stand-in API in another process, callgrind (exact)\n")
    print("| sender round | batch | instructions per update |")
    print("|---|---|---|")
    for what, batch, per in rows:
        print(f"| {what} | {batch} | {per:,.0f} |")
    if parts:
        print("\n| one update's step, alone | instructions per update |")
        print("|---|---|")
        for name, per in steps:
            print(f"| {name} | {per:,.0f} |")
    return 0


def _micro_child(api: run.ApiServer, batch: int, updates: int, cut: str, parts: bool,
                 keep: pathlib.Path | None) -> tuple[float, list[tuple[str, float]]]:
    out_dir = pathlib.Path(tempfile.mkdtemp(prefix="tbbench-micro-"))
    env = {**os.environ, "PYTHONHASHSEED": "0", "TASKBADGER_HOST": api.url, "TASKBADGER_API_KEY": api.api_key}
    cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=functools_reduce",
           "--dump-before=os_sched_yield", f"--callgrind-out-file={out_dir}/callgrind.out.%p",
           sys.executable, os.path.abspath(__file__), "--micro-child", "--batch", str(batch), "--updates", str(updates)]
    if cut:
        cmd += ["--cut", cut]
    if parts:
        cmd.append("--parts")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=run.BENCH_DIR)
    if done.returncode != 0:
        raise RuntimeError(f"the micro count failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    labels = [line.split("\t") for line in done.stdout.splitlines() if line.startswith("count\t")]
    # one dump per label, in order, before each os.sched_yield(); the last file is the exit's (nothing counted)
    dumps = sorted(glob.glob(f"{out_dir}/callgrind.out.*.*"), key=lambda path: int(path.rsplit(".", 1)[1]))
    if len(dumps) < len(labels):
        raise RuntimeError(f"expected {len(labels)} dumps, found {len(dumps)}")
    counts = [(label, _total(path) / int(n)) for (_, label, n), path in zip(labels, dumps, strict=False)]
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        for path in dumps:
            shutil.move(path, keep / f"micro-{batch}-{cut or 'all'}.{pathlib.Path(path).name}")
    shutil.rmtree(out_dir, ignore_errors=True)
    return counts[0][1], counts[1:]


def micro_child(batch: int, updates: int, cut: str, parts: bool) -> int:
    """The counted process of ``--micro`` (under callgrind): prints ``count<TAB>label<TAB>n`` before each dump."""
    import concurrent.futures
    import functools

    import taskbadger
    from taskbadger import endpoints, lifecycle
    from taskbadger.delivery.queue import PendingQueue
    from taskbadger.delivery.sender import SENT, Sender
    from taskbadger.http import pooled

    taskbadger.init(token=os.environ["TASKBADGER_API_KEY"], host=os.environ["TASKBADGER_HOST"])
    rounds = -(-updates // batch)
    total = MICRO_WARM * batch + rounds * batch
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        ids = [task.id for task in pool.map(lambda i: taskbadger.create_task("micro.noop", external_id=f"m-{i}"),
                                            range(total))]
    answer_of = {}
    if cut == "transport":  # the answers the stand-in gives, made up without a socket
        raw = b'{"id":"%s","organization":"acme","project":"demo","name":"micro.noop","status":"success"}'
        answer_of = {task_id: (200, {"content-type": "application/json"}, raw % task_id.encode()) for task_id in ids}

        def exchange_many(self, config, requests, deadline=None, late_answer=None):  # type: ignore[no-untyped-def]
            return [answer_of[request.target.rsplit("/", 2)[1]] for request in requests]

        pooled.PooledTransport.exchange_many = exchange_many  # type: ignore[method-assign]
    elif cut == "endpoints":
        endpoints.update_many = lambda updates, deadline=None: [None] * len(updates)  # type: ignore[assignment]
    elif cut == "send":
        def _send(self, batch_):  # type: ignore[no-untyped-def]
            self._delivered([entry for _, entry in batch_])
            return [SENT] * len(batch_)

        Sender._send = _send  # type: ignore[method-assign]
    queue = PendingQueue()
    sender = Sender(queue, threads=1)  # a worker's batch size (BATCH_SIZE): a round takes what is ready, up to it
    if batch > sender.batch_size:
        raise SystemExit(f"--batch {batch}: a sender takes at most {sender.batch_size} updates per round")
    one_round = functools.partial(functools.reduce, lambda _, __: sender._run_once(), [0])
    taken = iter(ids)

    def queue_round() -> None:  # as a worker's receivers queue a task's two updates (merged: one entry)
        for _ in range(batch):
            task_id = next(taken)
            queue.submit(task_id, {"status": "processing", "start_time": lifecycle.now()})
            queue.submit(task_id, {"status": "success", "end_time": lifecycle.now()}, final=True, delay=0)

    for _ in range(MICRO_WARM):
        queue_round()
        sender._run_once()
    for _ in range(rounds):
        queue_round()
        one_round(None)
    stats = queue.stats()
    assert stats["sent"] == total and not stats["dropped"] and not stats["failed"], stats
    print(f"count\tround\t{rounds * batch}", flush=True)
    os.sched_yield()
    if parts:
        _count_parts(ids[:updates])
    return 0


def _count_parts(ids: list[str]) -> None:
    """Each step of one update's path alone, over ``ids`` (the stand-in's answers read from a socketless
    connection's parser)."""
    import functools

    from taskbadger import endpoints, lifecycle
    from taskbadger.config import get_config
    from taskbadger.delivery import merge
    from taskbadger.http import build_request, pooled
    from taskbadger.http.connection import Connection

    config = get_config()
    assert config is not None
    fields = [{"status": "success", "start_time": lifecycle.now(), "end_time": lifecycle.now()} for _ in ids]
    bodies = [endpoints.clean_body(f) for f in fields]
    requests = [build_request(config, "PATCH", task_id, json_body=body,
                              expect=endpoints.expecting(task_id)) for task_id, body in zip(ids, bodies, strict=True)]
    block = pooled._header_block(config.host, requests[0])
    raw = [b"HTTP/1.1 200 OK\r\nServer: standin\r\nDate: Mon, 07 Dec 2026 16:00:00 GMT\r\nContent-Type: "
           b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body) for body in (
               b'{"id":"%s","name":"micro.noop","status":"success","value":null}' % i.encode() for i in ids)]
    conn = Connection("http", "127.0.0.1", 80)
    conn.fresh()  # as connect() leaves it
    answers = [conn._take(chunk) for chunk in raw]

    def count(label: str, step) -> None:  # type: ignore[no-untyped-def]
        functools.reduce(lambda _, i: step(i), range(len(ids)), None)
        print(f"count\t{label}\t{len(ids)}", flush=True)
        os.sched_yield()

    count("nothing (the loop itself)", lambda i: None)
    count("merge.needs_current + merge.resolve", lambda i: merge.needs_current(fields[i]) or merge.resolve(
        fields[i], None))
    count("endpoints.clean_body", lambda i: endpoints.clean_body(fields[i]))
    count("endpoints.expecting", lambda i: endpoints.expecting(ids[i]))
    count("http.build_request (the id checked, JSON included)", lambda i: build_request(
        config, "PATCH", ids[i], json_body=bodies[i], expect=None))
    count("pooled._encode", lambda i: pooled._encode(requests[i], block))
    count("an answer parsed (httptools and its callbacks)", lambda i: conn._take(raw[i]))
    count("endpoints._updated (says_so)", lambda i: endpoints._updated(config, ids[i], requests[i], answers[i]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--latency", type=float, default=0.010)
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--kind", action="append", choices=("untracked", "ours", *variants.VARIANTS))
    parser.add_argument("--keep", type=pathlib.Path, help="keep callgrind's files here, for callgrind_annotate")
    parser.add_argument("--micro", action="store_true", help="count the senders' own instructions per update")
    parser.add_argument("--batch", type=int, action="append", help="--micro: updates per sender round (1 and 32)")
    parser.add_argument("--updates", type=int, default=2000, help="--micro: updates counted")
    parser.add_argument("--cut", action="append", choices=CUTS, default=[], help="--micro: also count without this")
    parser.add_argument("--parts", action="store_true", help="--micro: also count each step of the path alone")
    parser.add_argument("--micro-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.micro_child:
        return micro_child(args.batch[0], args.updates, args.cut[0] if args.cut else "", args.parts)
    if args.micro:
        return micro(args.batch or [1, 32], args.updates, args.cut, args.parts, args.keep)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    kinds = args.kind or ["untracked", "receivers-only", "ours"]
    api = run.ApiServer()
    b = run.Bench(api=api, broker=args.broker, r=redis.Redis.from_url(args.broker), latency=args.latency,
                  quick=False, official=False, pools=("solo",))
    results: dict[str, tuple[float, float, float]] = {}
    try:
        for kind in kinds:
            results[kind] = count(b, kind, args.tasks, args.keep)
            main_i, other_i, patches = results[kind]
            run.log(f"{kind}: {main_i / 1e3:.0f}k + {other_i / 1e3:.0f}k instructions per task, {patches:.2f} PATCH")
    finally:
        b.reap()
        api.stop()
        b.cleanup()
    base = results.get("untracked")
    print(f"\nsolo worker, {args.tasks} no-op tasks counted after {WARM}, API latency {args.latency * 1000:g} ms\n")
    print("| worker | main thread, per task | over untracked | other threads (senders), per task | ours in all "
          "| PATCH requests per task |")
    print("|---|---|---|---|---|---|")
    for kind, (main_i, other_i, patches) in results.items():
        over = f"{(main_i - base[0]) / 1e3:+.0f}k" if base and kind != "untracked" else "—"
        ours = f"{(main_i - base[0] + other_i) / 1e3:.0f}k ({(main_i - base[0] + other_i) / base[0]:.0%})" \
            if base and kind != "untracked" else "—"
        print(f"| {kind} | {main_i / 1e3:.0f}k | {over} | {other_i / 1e3:.0f}k | {ours} | {patches:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
