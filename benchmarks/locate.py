"""Where a tracked no-op task's cost goes in a worker: untracked, tracked and tracked variants
(``variants.py``) run in turn within each round, and each is compared with the untracked run of its
own round (the machine's speed drifts between minutes; see ``run.py``'s throughput step).

    python benchmarks/locate.py [--pool solo] [--rounds 5] [--tasks 3000] [--variant agent ...] [--api-idle]

For each: the burst throughput ratio (median of the rounds' ratios), and CPU per task while the burst
runs: the worker with its children (pool children, and the agent process of the ``agent`` variant)
minus the untracked run's, and the stand-in API's own CPU (it shares this machine's cores with the
worker; a real API would not). ``--api-idle`` runs the stand-in API at the idle scheduling class
(``SCHED_IDLE``): it then gets only the CPU that the worker, the broker and everything else leave, which
is closer to an API on another machine (its answers may come later when the machine is busy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import redis
import run
import variants


def one_run(b: run.Bench, sdk: str, pool: str, n: int, variant: str = "") -> dict[str, Any]:
    b.fresh(0.0)  # publish fast, then measure the worker at the benchmark latency
    queue = b.name(f"locate-{sdk}-{variant or 'all'}")
    key = queue + ":results"
    env = b.env(sdk, queue)
    if variant:
        env["BENCH_VARIANT"] = variant
    run.publish(sdk, env, count=n, key=key)
    b.api.latency(b.latency)
    api_pid = b.api._process.pid
    with b.worker(sdk, env, queue, pool) as w:
        cpu_start, api_start = run.thread_cpu(w.pid), run.pid_cpu_seconds(api_pid)
        ok = b.wait_tasks(key, n, interval=0.005)
        if sdk != "untracked" and variant not in variants.UNDELIVERED:  # with the final updates delivered
            ok = ok and run.wait_until(lambda: b.api.call("terminal") >= n, 120, 0.1)
        cpu_end, api_end = run.thread_cpu(w.pid), run.pid_cpu_seconds(api_pid)
    stamps = sorted(float(x) for x in b.r.lrange(key, 0, -1))
    return {"rate": (len(stamps) - 1) / (stamps[-1] - stamps[0]), "ok": ok,
            "main": (cpu_end[0] - cpu_start[0]) / n, "other": (cpu_end[1] - cpu_start[1]) / n,
            "cpu": (sum(cpu_end) - sum(cpu_start)) / n, "api_cpu": (api_end - api_start) / n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", choices=list(run.POOL_ARGS), default="solo")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--latency", type=float, default=0.010)
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--variant", choices=variants.VARIANTS, action="append",
                        help="a tracked variant to measure beside the whole (repeatable; default: all)")
    parser.add_argument("--api-idle", action="store_true",
                        help="run the stand-in API at the idle scheduling class (only CPU nothing else wants)")
    args = parser.parse_args(argv)
    kinds = [("untracked", ""), ("ours", ""), *(("ours", v) for v in (args.variant or variants.VARIANTS))]
    api = run.ApiServer()
    if args.api_idle:  # every thread of it: the threads they start inherit the class
        for tid in os.listdir(f"/proc/{api._process.pid}/task"):
            os.sched_setscheduler(int(tid), os.SCHED_IDLE, os.sched_param(0))
    b = run.Bench(api=api, broker=args.broker, r=redis.Redis.from_url(args.broker), latency=args.latency,
                  quick=False, official=False, pools=(args.pool,))
    results: dict[str, list[dict[str, Any]]] = {}
    started = time.monotonic()
    try:
        for i in range(args.rounds):
            for sdk, variant in kinds:
                label = variant or sdk
                result = one_run(b, sdk, args.pool, args.tasks, variant)
                results.setdefault(label, []).append(result)
                run.log(f"round {i + 1} {label}: {result['rate']:.0f} tasks/s, {result['cpu'] * 1e6:.0f} µs CPU "
                        f"per task{'' if result['ok'] else ' (INCOMPLETE)'}")
        b.reap()
    finally:
        b.reap()
        api.stop()
        b.cleanup()
    base = results["untracked"]
    print(f"\n{args.pool}, {args.rounds} rounds of {args.tasks} no-op tasks, API latency {args.latency * 1000:g} ms"
          f"{', the stand-in API at SCHED_IDLE' if args.api_idle else ''}, {time.monotonic() - started:.0f} s\n")
    print("| worker | ×untracked (median; each round) | ours: CPU per task over untracked, worker and children "
          "(median) | of it, main threads / other threads | stand-in API's CPU per task |")
    print("|---|---|---|---|---|")
    for label, runs in results.items():
        ratios = [r["rate"] / u["rate"] for r, u in zip(runs, base, strict=True)]
        extra = [(r["cpu"] - u["cpu"]) * 1e6 for r, u in zip(runs, base, strict=True)]
        api_cpu = statistics.median(r["api_cpu"] for r in runs) * 1e6
        main = statistics.median((r["main"] - u["main"]) * 1e6 for r, u in zip(runs, base, strict=True))
        other = statistics.median((r["other"] - u["other"]) * 1e6 for r, u in zip(runs, base, strict=True))
        incomplete = sum(not r["ok"] for r in runs)
        print(f"| {label} | ×{statistics.median(ratios):.2f} ({' '.join(f'{x:.2f}' for x in ratios)}) | "
              f"{'—' if label == 'untracked' else f'{statistics.median(extra):.0f} µs'} | "
              f"{'—' if label == 'untracked' else f'{main:+.0f} / {other:+.0f} µs'} | {api_cpu:.0f} µs |"
              + (f" {incomplete} incomplete" if incomplete else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
