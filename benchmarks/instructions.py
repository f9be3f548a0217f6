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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--latency", type=float, default=0.010)
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--kind", action="append", choices=("untracked", "ours", *variants.VARIANTS))
    parser.add_argument("--keep", type=pathlib.Path, help="keep callgrind's files here, for callgrind_annotate")
    args = parser.parse_args(argv)
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
