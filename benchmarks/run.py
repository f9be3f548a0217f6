"""Benchmark: untracked Celery vs this project vs the official ``taskbadger`` SDK (PyPI 2.6.0), in one run.

    python benchmarks/run.py            # full run (~6 minutes)
    python benchmarks/run.py --quick    # smoke run (< 60 s): small counts, no 30 s outage, no memory run

What runs:

* the stand-in Task Badger API (``taskbadger.testing.TaskBadgerServer``) in its own process, driven
  through a control pipe (latency, faults, request log, connection counter), so it never shares a
  GIL with a publisher or worker being timed;
* a Redis broker (``--broker``, db 9 by default; the script flushes that database);
* real workers: ``python -m celery -A benchapp worker`` from the virtualenv of the SDK measured,
  ``-P solo`` and ``-P prefork -c 2``;
* publishers (``benchmarks/publisher.py``) from the same virtualenvs. The official SDK gets its own
  virtualenv, created on first use in ``benchmarks/.venv-official``.

Prints one markdown table and writes it to ``benchmarks/results.md``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import pathlib
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import redis

BENCH_DIR = pathlib.Path(__file__).resolve().parent
OURS_PYTHON = pathlib.Path(sys.executable)
OFFICIAL_VENV = BENCH_DIR / ".venv-official"
OFFICIAL_PYTHON = OFFICIAL_VENV / "bin" / "python"
OFFICIAL_VERSION = "2.6.0"
TERMINAL = {"success", "error", "cancelled"}
FAULT_TIMEOUT_OURS = "1,1"  # (connect, read) seconds configured for ours in the fault scenarios
OFFICIAL_DEFAULT_TIMEOUT = 5.0  # taskbadger.mug.DEFAULT_HTTP_TIMEOUT in 2.6.0
MAX_PENDING_TASKS = 10_000  # taskbadger.delivery.queue.MAX_PENDING_TASKS (checked at start-up)
SDKS = ("untracked", "ours", "official")
POOL_LABELS = (("solo", "solo"), ("prefork", "prefork 2"), ("threads", "threads 4"), ("gevent", "gevent 10"))
#: The worker pools the throughput step measures, with the arguments each is started with.
POOL_ARGS = {"solo": ["-P", "solo"], "prefork": ["-P", "prefork", "-c", "2"], "threads": ["-P", "threads", "-c", "4"],
             "gevent": ["-P", "gevent", "-c", "10"]}



def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The stand-in API, in its own process
# ---------------------------------------------------------------------------------------------


def _serve(conn: Connection, latency: float) -> None:
    """Child process: run the stand-in server and answer control commands from the pipe."""
    from taskbadger.testing import TaskBadgerServer

    server = TaskBadgerServer(latency=latency).start()
    conn.send((server.url, server.api_key))

    def counts() -> dict[str, Any]:
        requests = server.requests
        return {
            "requests": len(requests),
            "by_method": dict(Counter(r.method for r in requests)),
            "connections": server.connections_opened,
            "statuses": dict(Counter(t["status"] for t in server.tasks.values())),
        }

    def final(external_ids: list[str]) -> dict[str, int]:
        wanted = set(external_ids)
        tasks = [t for t in server.tasks.values() if t["external_id"] in wanted]
        return {"tracked": len(tasks), "final": sum(t["status"] in TERMINAL for t in tasks)}

    def terminal() -> int:
        return sum(t["status"] in TERMINAL for t in server.tasks.values())

    handlers: dict[str, Callable[..., Any]] = {
        "latency": server.set_latency,
        "fail": lambda status: server.fail(status),
        "hang": lambda: server.hang(),
        "refuse": server.refuse,
        "accept": server.accept,
        "clear": server.clear_faults,
        "reset": server.reset,
        "connections": lambda: server.connections_opened,
        "counts": counts,
        "final": final,
        "terminal": terminal,
    }
    while True:
        try:
            command, args = conn.recv()
        except (EOFError, KeyboardInterrupt):
            break
        if command == "stop":
            conn.send(("ok", None))
            break
        try:
            conn.send(("ok", handlers[command](*args)))
        except Exception as err:  # report to the controller, keep serving
            conn.send(("error", repr(err)))
    server.stop()


class ApiServer:
    """Controller side of the stand-in API process."""

    def __init__(self, latency: float = 0.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child, latency), name="tb-standin-api", daemon=True)
        self._process.start()
        self.url, self.api_key = self._receive(60)

    def _receive(self, timeout: float) -> Any:
        if not self._conn.poll(timeout):
            alive = "alive" if self._process.is_alive() else f"exited with {self._process.exitcode}"
            raise RuntimeError(f"stand-in API process did not answer within {timeout} s ({alive})")
        return self._conn.recv()

    def call(self, command: str, *args: Any) -> Any:
        self._conn.send((command, args))
        status, value = self._receive(120)
        if status != "ok":
            raise RuntimeError(f"stand-in API: {command} failed: {value}")
        return value

    def latency(self, seconds: float) -> None:
        self.call("latency", seconds)

    def reset(self, latency: float = 0.0) -> None:
        self.call("reset")
        self.call("latency", latency)

    def counts(self) -> dict[str, Any]:
        return self.call("counts")

    def round_trip(self, calls: int = 300, warmup: int = 20) -> float:
        """p50 of a plain keep-alive POST (``requests.Session``) from this process: the floor any SDK's
        create pays at the current latency."""
        import requests

        organization, project, key = base64.b64decode(self.api_key).decode().split("/")
        url = f"{self.url}/api/{organization}/{project}/tasks/"
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        body = json.dumps({"name": "round trip", "status": "pending"})
        durations = []
        with requests.Session() as session:
            for i in range(calls + warmup):
                start = time.perf_counter()
                session.post(url, data=body, headers=headers).raise_for_status()
                if i >= warmup:
                    durations.append(time.perf_counter() - start)
        return statistics.median(durations)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


# ---------------------------------------------------------------------------------------------
# Virtualenvs, publishers and workers
# ---------------------------------------------------------------------------------------------


def ensure_official_venv() -> None:
    """Create benchmarks/.venv-official with taskbadger==2.6.0 and celery[redis] if missing."""
    probe = ("import importlib.metadata as m, celery, redis, taskbadger.celery, taskbadger.sdk; "
             "print(m.version('taskbadger'))")
    if OFFICIAL_PYTHON.exists():
        done = subprocess.run([str(OFFICIAL_PYTHON), "-c", probe], cwd=BENCH_DIR, capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == OFFICIAL_VERSION:
            return
    else:
        interpreter = shutil.which("python3.11") or sys.executable
        log(f"creating {OFFICIAL_VENV} with {interpreter}")
        subprocess.run([interpreter, "-m", "venv", str(OFFICIAL_VENV)], check=True)
    log(f"installing taskbadger=={OFFICIAL_VERSION} and celery[redis] into {OFFICIAL_VENV}")
    subprocess.run([str(OFFICIAL_PYTHON), "-m", "pip", "install", "-q", f"taskbadger=={OFFICIAL_VERSION}",
                    "celery[redis]"], check=True)


def python_for(sdk: str) -> pathlib.Path:
    return OFFICIAL_PYTHON if sdk == "official" else OURS_PYTHON


def sdk_env(sdk: str, api: ApiServer, broker: str, queue: str, timeout: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKBADGER_", "BENCH_"))}
    env.pop("PYTHONPATH", None)
    env.update({
        "PYTHONPATH": str(BENCH_DIR),  # benchapp only: never this repo's taskbadger in the official venv
        "BENCH_MODE": "untracked" if sdk == "untracked" else "tracked",
        "BENCH_BROKER": broker,
        "BENCH_QUEUE": queue,
        "BENCH_API_URL": api.url,
        "BENCH_API_KEY": api.api_key,
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    if timeout:
        env["BENCH_TIMEOUT"] = timeout
    return env


@dataclass
class Published:
    durations: list[list[float]]
    warmup: list[float]
    celery_ids: list[str]
    failed: int

    @property
    def all_durations(self) -> list[float]:
        return self.warmup + [d for batch in self.durations for d in batch]

    @property
    def published(self) -> int:
        return len(self.all_durations)


def start_publisher(sdk: str, env: dict[str, str], **spec: Any) -> subprocess.Popen:
    return subprocess.Popen([str(python_for(sdk)), str(BENCH_DIR / "publisher.py"), json.dumps(spec)],
                            cwd=BENCH_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_publisher(process: subprocess.Popen, timeout: float = 600) -> Published:
    out, err = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"publisher failed ({process.returncode}):\n{err[-3000:]}")
    data = json.loads(out)
    return Published(data["durations"], data["warmup_durations"], data["celery_ids"], data.get("failed", 0))


def publish(sdk: str, env: dict[str, str], **spec: Any) -> Published:
    return finish_publisher(start_publisher(sdk, env, **spec))


class Worker:
    """``python -m celery -A benchapp worker`` in the SDK's virtualenv, in its own process group."""

    def __init__(self, sdk: str, env: dict[str, str], queue: str, pool: str) -> None:
        self.sdk, self.pool, self.queue = sdk, pool, queue
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="tbbench-worker-"))
        ready = self.dir / "ready"
        env = {**env, "BENCH_READY_FILE": str(ready)}
        pool_args = POOL_ARGS[pool]
        cmd = [str(python_for(sdk)), "-m", "celery", "-A", "benchapp", "worker", *pool_args, "-Q", queue,
               "-n", f"{sdk}-{pool}-{uuid.uuid4().hex[:6]}@bench", "--loglevel=WARNING",
               "--without-gossip", "--without-mingle", "--without-heartbeat"]
        self.log_path = self.dir / "worker.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(cmd, cwd=BENCH_DIR, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        ACTIVE_GROUPS.add(self.process.pid)
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"{sdk} worker exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{sdk} worker not ready after 60 s:\n{self.log()[-3000:]}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self) -> None:
        """Ask for a warm shutdown (ours flushes its queue) without waiting for it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.sdk} worker did not stop within {timeout} s; killing it")
        self.kill()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # the worker's own group: it and its pool children
        with contextlib.suppress(Exception):
            self.process.wait(10)
        self._log.close()
        if not os.environ.get("BENCH_KEEP_LOGS"):
            shutil.rmtree(self.dir, ignore_errors=True)




def stop_all(workers: Iterable[Worker]) -> None:
    """Warm-shut down several workers at once."""
    workers = list(workers)
    for w in workers:
        w.terminate()
    for w in workers:
        w.stop()


def thread_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of the main threads of a worker's processes (the worker and its pool
    children: a no-op task runs in a child's main thread under prefork) and of all their other threads
    (ours: the senders; Celery's: the threads pool's workers, the consumer)."""
    tick = os.sysconf("SC_CLK_TCK")
    main = other = 0.0
    for proc in [pid, *children_of(pid)]:
        try:
            tasks = list(pathlib.Path(f"/proc/{proc}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # the thread ended meanwhile
                continue
            seconds = (int(fields[11]) + int(fields[12])) / tick
            if int(task.name) == proc:
                main += seconds
            else:
                other += seconds
    return main, other


def children_of(pid: int) -> list[int]:
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine spent since boot (user + nice + system in /proc/stat;
    interrupts and hypervisor steal are left out: no process is charged for them)."""
    fields = [int(x) for x in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (fields[0] + fields[1] + fields[2]) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU seconds of this process and every child it has waited for (workers, publishers, the API)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def pid_cpu_seconds(pid: int) -> float:
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_pid() -> int | None:
    for proc in pathlib.Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if (proc / "comm").read_text().strip() == "redis-server":
                    return int(proc.name)
    return None


def foreign_processes() -> list[str]:
    """Other benchmark runs or Celery workers on this machine (not ours): they skew the figures."""
    mine = {os.getpid(), os.getppid()}  # the parent: a wrapper such as `timeout 1800 python run.py`
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid, pgid = int(proc.name), int(stat[1]), int(stat[2])
        if pid in mine or ppid in mine:
            continue
        if "benchmarks/run.py" in cmdline or ("celery" in cmdline and " worker" in cmdline):
            if pgid not in ACTIVE_GROUPS and ppid not in ACTIVE_GROUPS:
                found.append(f"{pid}: {cmdline[:80]}")
    return found


#: Process groups of the workers this run started (each worker is its own group leader).
ACTIVE_GROUPS: set[int] = set()


def rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p50(values: list[float]) -> float:
    return median(values)


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


@dataclass
class Bench:
    api: ApiServer
    broker: str
    r: redis.Redis
    latency: float
    quick: bool
    official: bool
    pools: tuple[str, ...] = tuple(POOL_ARGS)
    results: dict[str, Any] = field(default_factory=dict)
    _retiring: list[Worker] = field(default_factory=list)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    foreign: set[str] = field(default_factory=set)
    other_load: float = 0.0  # CPU cores' worth used by other processes during the run
    started_at: float = field(default_factory=time.time)

    @property
    def sdks(self) -> tuple[str, ...]:
        return SDKS if self.official else SDKS[:2]

    def env(self, sdk: str, queue: str, timeout: str | None = None) -> dict[str, str]:
        return sdk_env(sdk, self.api, self.broker, queue, timeout)

    @contextlib.contextmanager
    def worker(self, sdk: str, env: dict[str, str], queue: str, pool: str) -> Iterator[Worker]:
        """A worker for a run that leaves it idle: its warm shutdown (1-3 s) overlaps the next
        run's publishing, and is waited for before the next worker starts."""
        self.reap()
        w = Worker(sdk, env, queue, pool)
        try:
            yield w
        except BaseException:
            w.stop()
            raise
        w.terminate()
        self._retiring.append(w)

    def reap(self) -> None:
        while self._retiring:
            self._retiring.pop().stop()

    def name(self, kind: str) -> str:
        """A queue or Redis key of this run only: concurrent runs on the same db do not collide."""
        return f"bench-{self.run_id}-{kind}"

    def cleanup(self) -> None:
        """Delete this run's queues and result lists (never FLUSHDB: another run may share the db)."""
        keys = list(self.r.scan_iter(match=f"*bench-{self.run_id}-*", count=1000))
        for i in range(0, len(keys), 500):
            self.r.delete(*keys[i:i + 500])

    def wait_tasks(self, key: str, n: int, timeout: float = 300, interval: float = 0.01, stall: float = 30) -> bool:
        """Wait until ``n`` tasks wrote to ``key``; False on timeout or when none finished for ``stall`` s."""
        start = last_change = time.monotonic()
        last = -1
        while True:
            count = self.r.llen(key)
            now = time.monotonic()
            if count >= n:
                return True
            if count != last:
                last, last_change = count, now
            if now - last_change > stall or now - start > timeout:
                log(f"gave up waiting for {key}: {count}/{n} tasks done")
                return False
            time.sleep(interval)

    def fresh(self, latency: float = 0.0) -> None:
        """Empty this run's queues and the stand-in API (call only when no worker is running)."""
        self.cleanup()
        self.api.reset(latency)

    # -- publish latency ------------------------------------------------------------------------
    def publish_latency(self) -> None:
        calls = 50 if self.quick else 300
        repeats = 1 if self.quick else 3
        out: dict[str, Any] = {}
        for latency in (0.0, self.latency):
            self.fresh(latency)
            out[f"round_trip@{latency}"] = self.api.round_trip(calls)
            log(f"plain keep-alive POST @ {latency * 1000:.0f} ms: p50 {out[f'round_trip@{latency}'] * 1000:.2f} ms")
            for sdk in self.sdks:
                self.fresh(latency)
                n = calls if sdk != "official" else max(20, calls // 3)
                pub = publish(sdk, self.env(sdk, self.name("pub")), count=n, warmup=20, repeats=repeats,
                              key=self.name("pub:results"))
                counts = self.api.counts()
                out[f"{sdk}@{latency}"] = {
                    "p50": median([p50(batch) for batch in pub.durations]),
                    "p50s": [p50(batch) for batch in pub.durations],
                    "calls": pub.published,
                    "requests": counts["requests"],
                    "connections": counts["connections"],
                }
                log(f"publish {sdk} @ {latency * 1000:.0f} ms: p50 {out[f'{sdk}@{latency}']['p50'] * 1000:.2f} ms, "
                    f"{counts['connections']} connections for {pub.published} calls")
        # For a task that keeps its result, with a result backend, ours stores the task's id as the PENDING
        # result at publish (as the official SDK does, so another process finds the task by Celery id);
        # without a backend it stores nothing. (The other rows' tasks ignore results: no store.)
        for backend in ("backend", "no backend"):
            self.fresh(0.0)
            env = {**self.env("ours", self.name("pub")), "BENCH_KEEP_RESULTS": "1"}
            if backend == "no backend":
                env["BENCH_NO_RESULT_BACKEND"] = "1"
            pub = publish("ours", env, count=calls, warmup=20, repeats=repeats, key=self.name("pub:results"))
            out[f"ours {backend}@0.0"] = median([p50(batch) for batch in pub.durations])
            log(f"publish ours @ 0 ms, {backend}: p50 {out[f'ours {backend}@0.0'] * 1000:.2f} ms")
        self.cleanup()
        self.results["publish"] = out

    # -- worker throughput and requests per task -------------------------------------------------
    def throughput(self) -> None:
        """Untracked, ours and official run in turn within each repeat, and each SDK's ratio is the
        median of its per-repeat ratios to the untracked run next to it: the machine's speed drifts by
        ±20 % over minutes here, which would otherwise land in the ratio."""
        out: dict[str, Any] = {}
        repeats = 1 if self.quick else 5
        for pool in self.pools:
            all_runs: dict[str, list[dict[str, Any]]] = {sdk: [] for sdk in self.sdks}
            for i in range(repeats):
                for sdk in self.sdks:
                    n = (20 if self.quick else 150) if sdk == "official" else (300 if self.quick else 2000)
                    all_runs[sdk].append(self._throughput_run(sdk, pool, n, i))
            for sdk in self.sdks:
                runs = [run for run in all_runs[sdk] if run["complete"]] or all_runs[sdk]
                rates = [run["rate"] for run in runs]
                ratios = [run["rate"] / base["rate"] for run, base in zip(all_runs[sdk], all_runs["untracked"],
                                                                          strict=True) if run["complete"]]
                out[f"{sdk}/{pool}"] = {
                    "rate": median(rates), "rates": rates, "n": runs[0]["n"],
                    "ratio": median(ratios) if ratios else float("nan"), "ratios": ratios,
                    **{k: median([run[k] for run in runs]) for k in ("req_per_task", "worker_conn_steady",
                                                                      "worker_conn_per_task", "final_lag",
                                                                      "cpu_main", "cpu_other")},
                    "by_method": runs[-1]["by_method"],
                    "complete": all(run["complete"] for run in all_runs[sdk]),
                    "incomplete": sum(not run["complete"] for run in all_runs[sdk]), "repeats": repeats,
                }
                runs_text = ", ".join(f"{x:.0f}" for x in rates)
                log(f"throughput {sdk} {pool}: {median(rates):.0f} tasks/s (runs {runs_text}), "
                    f"paired ratio x{out[f'{sdk}/{pool}']['ratio']:.3f}, "
                    f"{out[f'{sdk}/{pool}']['req_per_task']:.2f} requests/task")
        self.results["throughput"] = out

    def _throughput_run(self, sdk: str, pool: str, n: int, index: int) -> dict[str, Any]:
        self.fresh(0.0)  # publish fast, then measure the worker at the benchmark latency
        queue = self.name(f"tp-{sdk}-{pool}-{index}")
        key = queue + ":results"
        env = self.env(sdk, queue)
        publish(sdk, env, count=n, key=key)
        self.api.latency(self.latency)
        conn_published = self.api.call("connections")
        with self.worker(sdk, env, queue, pool) as w:
            cpu_start = thread_cpu(w.pid)
            ok = self.wait_tasks(key, n // 2, interval=0.005)
            conn_half = self.api.call("connections")
            ok = ok and self.wait_tasks(key, n, interval=0.005)
            tasks_done = time.time()
            if sdk != "untracked":  # requests per task must include the asynchronous final updates
                ok = ok and wait_until(lambda: self.api.call("terminal") >= n, 120, 0.1)
            updates_done = time.time()
            cpu_end = thread_cpu(w.pid)  # with the senders' last batches
            counts = self.api.counts()
        stamps = sorted(float(x) for x in self.r.lrange(key, 0, -1))
        rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
        return {
            "rate": rate,
            "n": n,
            "complete": ok,
            "req_per_task": counts["requests"] / n,
            "by_method": {m: c / n for m, c in sorted(counts["by_method"].items())},
            "worker_conn_per_task": (counts["connections"] - conn_published) / n,
            "worker_conn_steady": (counts["connections"] - conn_half) / (n - n // 2),
            "final_lag": updates_done - tasks_done if sdk != "untracked" else 0.0,
            "cpu_main": (cpu_end[0] - cpu_start[0]) / n,
            "cpu_other": (cpu_end[1] - cpu_start[1]) / n,
        }

    # -- sustained load: more fast tasks than the update queue holds ----------------------------
    def sustained(self, pairs: int = 3) -> None:
        """A burst of 2,000 tasks fits in the dispatcher's queue; a steady stream does not. Run 16,000
        no-op tasks through one solo worker at the benchmark latency and measure the last 1,500,
        untracked then ours, back to back, ``pairs`` times: the ratio is the median of the pairs'
        ratios (one pair swung from x0.69 to x1.09 between two runs on a noisy 2-vCPU machine)."""
        runs: list[dict[str, Any]] = []
        for _ in range(pairs):
            pair = {sdk: self._sustained_run(sdk) for sdk in ("untracked", "ours")}
            for sdk, result in pair.items():
                log(f"sustained {sdk} solo: {result}")
            runs.append(pair)
        ratios = [pair["ours"]["tail_rate"] / pair["untracked"]["tail_rate"] for pair in runs]
        middle = runs[sorted(range(pairs), key=ratios.__getitem__)[pairs // 2]]
        self.results["sustained"] = {
            **middle["ours"], "untracked": middle["untracked"], "ratios": ratios,
            "first_ratios": [pair["ours"]["first_rate"] / pair["untracked"]["first_rate"] for pair in runs],
            "conn_tails": [pair["ours"]["conn_tail"] for pair in runs],
        }

    def _sustained_run(self, sdk: str, n: int = 16_000, tail: int = 1_500) -> dict[str, Any]:
        self.fresh(0.0)
        queue = self.name(f"sustained-{sdk}")
        key = queue + ":results"
        env = self.env(sdk, queue)
        procs = [start_publisher(sdk, env, count=n // 4, key=key) for _ in range(4)]
        for p in procs:
            finish_publisher(p)
        self.api.latency(self.latency)
        conn_start = self.api.call("connections")
        w = Worker(sdk, env, queue, "solo")
        try:
            ok = self.wait_tasks(key, n - tail, interval=0.02)
            conn_tail = self.api.call("connections")
            ok = ok and self.wait_tasks(key, n, interval=0.02)
            conn_end = self.api.call("connections")
            stamps = sorted(float(x) for x in self.r.lrange(key, 0, -1))
            delivered = self.api.call("terminal")
        finally:
            w.kill()  # the backlog of updates is not what is measured here
        first = stamps[: n - tail]
        last = stamps[n - tail:]
        self.cleanup()
        return {
            "n": n, "tail": tail, "complete": ok,
            "first_rate": (len(first) - 1) / (first[-1] - first[0]),
            "tail_rate": (len(last) - 1) / (last[-1] - last[0]),
            "delivered_when_done": delivered,
            "conn_total": conn_end - conn_start,
            "conn_tail": conn_end - conn_tail,
            "seconds": stamps[-1] - stamps[0],
        }

    # -- requests for a task longer than the linger / a round trip -------------------------------
    def long_task_requests(self) -> None:
        out: dict[str, Any] = {}
        n = 4 if self.quick else 10
        for sdk in self.sdks[1:]:
            self.fresh(self.latency)
            queue = self.name(f"long-{sdk}")
            key = queue + ":results"
            env = self.env(sdk, queue)
            with self.worker(sdk, env, queue, "prefork"):
                publish(sdk, env, count=n, key=key, task="sleep", seconds=0.3)
                ok = self.wait_tasks(key, n, 60)
                ok = ok and wait_until(lambda: self.api.call("terminal") >= n, 60, 0.1)
                counts = self.api.counts()
            out[sdk] = {"req_per_task": counts["requests"] / n, "complete": ok,
                        "by_method": {m: c / n for m, c in sorted(counts["by_method"].items())}}
            log(f"0.3 s task {sdk}: {out[sdk]['req_per_task']:.2f} requests/task {out[sdk]['by_method']}")
        self.results["long"] = out

    # -- publish under API faults ----------------------------------------------------------------
    def publish_faults(self) -> None:
        out: dict[str, Any] = {}
        faults: dict[str, Callable[[], None]] = {
            "refused": lambda: self.api.call("refuse"),
            "hanging": lambda: self.api.call("hang"),
            "500": lambda: self.api.call("fail", 500),
        }
        for name, apply in faults.items():
            for sdk in self.sdks[1:]:
                self.fresh(0.0)
                apply()
                if sdk == "ours":
                    spec = {"warmup": 10, "count": 50 if self.quick else 300}
                elif name == "hanging":
                    spec = {"warmup": 0, "count": 1 if self.quick else 2}  # 5 s each
                else:
                    spec = {"warmup": 10, "count": 20 if self.quick else 100}
                timeout = FAULT_TIMEOUT_OURS if sdk == "ours" else None
                pub = publish(sdk, self.env(sdk, self.name(f"fault-{sdk}"), timeout), key=self.name("fault:results"),
                              **spec)
                self.api.call("clear")
                out[f"{sdk}/{name}"] = {"p50": median([p50(b) for b in pub.durations]),
                                        "max": max(pub.all_durations), "calls": pub.published}
                log(f"publish, API {name}, {sdk}: p50 {out[f'{sdk}/{name}']['p50'] * 1000:.2f} ms, "
                    f"max {out[f'{sdk}/{name}']['max']:.3f} s over {pub.published} calls")
        self.cleanup()
        self.results["publish_faults"] = out

    # -- tasks published and executed while the API misbehaves ----------------------------------
    def executed_under_faults(self) -> None:
        out: dict[str, Any] = {}
        faults: dict[str, Callable[[], None]] = {
            "down": lambda: self.api.call("refuse"),
            "slow (2 s)": lambda: self.api.latency(2.0),
            "500": lambda: self.api.call("fail", 500),
        }
        for name, apply in faults.items():
            self.fresh(self.latency)
            sdks = self.sdks[1:]
            counts = {sdk: ((1 if self.quick else 5) if name.startswith("slow") else (5 if self.quick else 20))
                      if sdk == "official"
                      else (10 if self.quick else 50) for sdk in sdks}
            queues = {sdk: self.name(f"exec-{sdk}") for sdk in sdks}
            keys = {sdk: queues[sdk] + ":results" for sdk in sdks}
            envs = {sdk: self.env(sdk, queues[sdk], FAULT_TIMEOUT_OURS if sdk == "ours" else None) for sdk in sdks}
            workers = {sdk: Worker(sdk, envs[sdk], queues[sdk], "prefork") for sdk in sdks}
            try:
                apply()
                started = time.monotonic()
                procs = {sdk: start_publisher(sdk, envs[sdk], count=counts[sdk], key=keys[sdk]) for sdk in sdks}
                pubs = {sdk: finish_publisher(p) for sdk, p in procs.items()}
                for sdk in sdks:
                    self.wait_tasks(keys[sdk], pubs[sdk].published, 120)
                elapsed = time.monotonic() - started
                executed = {sdk: self.r.llen(keys[sdk]) for sdk in sdks}
            finally:
                self.api.call("clear")
                self.api.latency(self.latency)
                stop_all(workers.values())
            for sdk in sdks:
                out[f"{sdk}/{name}"] = {"asked": counts[sdk], "published": pubs[sdk].published - pubs[sdk].failed,
                                        "executed": executed[sdk], "max_delay": max(pubs[sdk].all_durations)}
                log(f"API {name}, {sdk}: published {out[f'{sdk}/{name}']['published']}/{counts[sdk]}, executed "
                    f"{executed[sdk]}, max .delay() {out[f'{sdk}/{name}']['max_delay']:.2f} s ({elapsed:.1f} s)")
        self.cleanup()
        self.results["executed"] = out

    # -- a 30 s outage while tracked tasks finish -------------------------------------------------
    def outage(self, seconds: float = 30.0) -> None:
        sdks = self.sdks[1:]
        n = 50
        self.fresh(self.latency)
        queues = {sdk: self.name(f"outage-{sdk}") for sdk in sdks}
        envs = {sdk: self.env(sdk, queues[sdk]) for sdk in sdks}
        keys = {sdk: queues[sdk] + ":results" for sdk in sdks}
        pubs = {sdk: publish(sdk, envs[sdk], count=n, key=keys[sdk], ids=True) for sdk in sdks}
        tracked = {sdk: self.api.call("final", pubs[sdk].celery_ids)["tracked"] for sdk in sdks}
        self.api.call("refuse")
        down_at = time.monotonic()
        workers = {sdk: Worker(sdk, envs[sdk], queues[sdk], "prefork") for sdk in sdks}
        out: dict[str, Any] = {}
        try:
            for sdk in sdks:
                self.wait_tasks(keys[sdk], n, 60)
            finished_down = {sdk: self.r.llen(keys[sdk]) for sdk in sdks}
            time.sleep(max(0.0, down_at + seconds - time.monotonic()))
            self.api.call("accept")
            up_at = time.monotonic()
            recovered: dict[str, float | None] = {sdk: None for sdk in sdks}
            deadline = up_at + 40  # ours retries with backoff capped at 10 s
            while time.monotonic() < deadline and any(v is None for v in recovered.values()):
                for sdk in sdks:
                    if recovered[sdk] is None and self.api.call("final", pubs[sdk].celery_ids)["final"] >= n:
                        recovered[sdk] = time.monotonic() - up_at
                if recovered["ours"] is not None:  # the others get 5 s more, not the whole deadline
                    deadline = min(deadline, up_at + recovered["ours"] + 5)
                time.sleep(0.2)
            for sdk in sdks:
                final = self.api.call("final", pubs[sdk].celery_ids)["final"]
                out[sdk] = {"n": n, "tracked": tracked[sdk], "finished_while_down": finished_down[sdk],
                            "final": final, "recovered_in": recovered[sdk]}
                log(f"outage {sdk}: {finished_down[sdk]}/{n} finished while down, {final}/{tracked[sdk]} final "
                    f"states after recovery (in {recovered[sdk]} s)")
        finally:
            self.api.call("clear")
            stop_all(workers.values())
        self.cleanup()
        self.results["outage"] = out

    # -- worker memory while the API is down -----------------------------------------------------
    def memory(self) -> None:
        out: dict[str, Any] = {}
        over = 1000  # tasks past the cap: their final updates are dropped at once (the API is failing)
        for sdk in ("untracked", "ours"):
            n = MAX_PENDING_TASKS + (over if sdk == "ours" else 0)
            self.fresh(0.0)
            queue = self.name(f"mem-{sdk}")
            key = queue + ":results"
            env = self.env(sdk, queue, FAULT_TIMEOUT_OURS if sdk == "ours" else None)
            halves = [n // 2, n - n // 2]  # two publishers in parallel: 10,000 tracked creates take a while
            procs = [start_publisher(sdk, env, count=c, key=key) for c in halves]
            for p in procs:
                finish_publisher(p)
            self.api.call("refuse")
            samples: list[tuple[int, float, float]] = []
            w = Worker(sdk, env, queue, "solo")
            try:
                t0 = time.monotonic()
                samples.append((0, 0.0, rss_mb(w.pid)))
                for mark in (2500, 5000, 7500, MAX_PENDING_TASKS, n):
                    if mark > n or (samples and samples[-1][0] >= mark):
                        continue
                    self.wait_tasks(key, mark, 120)
                    samples.append((int(self.r.llen(key)), time.monotonic() - t0, rss_mb(w.pid)))
                stamps = sorted(float(x) for x in self.r.lrange(key, 0, -1))
            finally:
                self.api.call("clear")
                w.kill()  # nothing to verify in the queue here; skip the shutdown flush
            gaps = [b - a for a, b in zip(stamps[MAX_PENDING_TASKS - 1:-1], stamps[MAX_PENDING_TASKS:], strict=True)]
            out[sdk] = {"samples": samples, "seconds_per_task_past_cap": median(gaps) if gaps else None}
            log(f"memory {sdk}: " + ", ".join(f"{c} tasks {m:.1f} MB @{t:.1f}s" for c, t, m in samples))
        self.cleanup()
        self.results["memory"] = out


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def yes(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def incomplete(result: dict[str, Any]) -> str:
    """Runs that timed out (tasks or final states missing) are left out of the medians: say so."""
    k = result.get("incomplete", 0)
    return f" — **{k} of {result['repeats']} runs incomplete** (left out)" if k else ""


def methods(by_method: dict[str, float]) -> str:
    return ", ".join(f"{m} {v:.2f}" for m, v in by_method.items())


def build_table(b: Bench, started: float, header: str) -> str:
    res = b.results
    lat_ms = b.latency * 1000
    rows: list[tuple[str, str, str, str, str, str]] = []
    official = b.official
    na = "—"

    def off(text: str) -> str:
        return text if official else "not run"

    tp = res.get("throughput", {})
    measured = [(pool, label) for pool, label in POOL_LABELS if f"ours/{pool}" in tp]
    if tp:
        for pool, label in measured:
            oursr = tp[f"ours/{pool}"]
            offr = tp.get(f"official/{pool}")
            rows.append((
                f"API requests per no-op task (finishes within one round trip), {label}",
                "0", f"{oursr['req_per_task']:.2f} ({methods(oursr['by_method'])})" + incomplete(oursr),
                off(f"{offr['req_per_task']:.2f} ({methods(offr['by_method'])})" if offr else ""),
                "≤ 2", yes(oursr["req_per_task"] <= 2.0 and oursr["complete"])))
    long = res.get("long", {})
    if long:
        o = long["ours"]
        offl = long.get("official")
        rows.append(("API requests per 0.3 s task (no progress calls), prefork 2", "0",
                     f"{o['req_per_task']:.2f} ({methods(o['by_method'])})",
                     off(f"{offl['req_per_task']:.2f} ({methods(offl['by_method'])})" if offl else ""),
                     "≤ 3", yes(o["req_per_task"] <= 3.0 and o["complete"])))
    if tp:
        for pool, label in measured:
            u, o = tp[f"untracked/{pool}"], tp[f"ours/{pool}"]
            offr = tp.get(f"official/{pool}")
            ratio = o["ratio"]
            rows.append((
                f"worker throughput, burst of {o['n']:,} no-op tasks, {lat_ms:.0f} ms API latency, {label} "
                f"(tracked ÷ untracked: median of {len(o['ratios'])} paired runs)",
                f"{u['rate']:.0f}/s", f"{o['rate']:.0f}/s (×{ratio:.2f}; pairs "
                f"{' '.join(f'{r:.2f}' for r in o['ratios'])}); last final state {o['final_lag']:.1f} s "
                f"after the last task" + incomplete(o),
                off(f"{offr['rate']:.1f}/s (×{offr['ratio']:.3f})" + incomplete(offr) if offr else ""),
                "≥ 0.9", yes(ratio >= 0.9 and o["complete"])))
    if tp:
        def cpu(r: dict[str, Any]) -> str:
            return (f"{(r['cpu_main'] + r['cpu_other']) * 1000:.3f} ms (main threads {r['cpu_main'] * 1000:.3f} + "
                    f"other threads {r['cpu_other'] * 1000:.3f})")

        for pool, label in measured:
            u, o = tp[f"untracked/{pool}"], tp[f"ours/{pool}"]
            offr = tp.get(f"official/{pool}")
            rows.append((f"worker CPU per no-op task, {label} (while the burst runs; /proc per-thread times of the "
                         "worker and its children)", cpu(u), cpu(o), off(cpu(offr) if offr else ""),
                         "(explains the throughput ratio)", na))
        for pool, label in measured:
            u, o = tp[f"untracked/{pool}"], tp[f"ours/{pool}"]
            ours_cpu = (o["cpu_main"] + o["cpu_other"] - u["cpu_main"] - u["cpu_other"]) * 1e6
            rows.append((f"our CPU per task in the worker, {label}: receivers and delivery (tracked minus untracked "
                         "thread CPU per task, medians of the paired runs)", "—", f"{ours_cpu:.0f} µs", na,
                         "≤ 80 µs", yes(ours_cpu <= 80)))
    sus = res.get("sustained")
    if sus and tp:
        base = sus["untracked"]
        offr = tp.get("official/solo")
        ratio = median(sus["ratios"])
        pairs = " ".join(f"{r:.2f}" for r in sus["ratios"])
        rows.append((
            f"worker throughput, sustained no-op load, {lat_ms:.0f} ms API latency, solo: last {sus['tail']:,} of "
            f"{sus['n']:,} tasks (tracked ÷ untracked: median of {len(sus['ratios'])} pairs run back to back)",
            f"{base['tail_rate']:.0f}/s; first {base['n'] - base['tail']:,}: {base['first_rate']:.0f}/s",
            f"{sus['tail_rate']:.0f}/s (×{ratio:.2f}; pairs {pairs}); first {sus['n'] - sus['tail']:,}: "
            f"×{median(sus['first_ratios']):.2f} (pairs {' '.join(f'{r:.2f}' for r in sus['first_ratios'])}); "
            f"{sus['delivered_when_done']:,} final states delivered when the last task ended",
            off(f"{offr['rate']:.1f}/s (synchronous: same as burst)" if offr else ""),
            "≥ 0.8", yes(ratio >= 0.8)))
    pub = res.get("publish", {})
    if pub:
        for latency in (0.0, b.latency):
            u = pub[f"untracked@{latency}"]["p50"]
            o = pub[f"ours@{latency}"]["p50"]
            offp = pub.get(f"official@{latency}")
            floor = pub[f"round_trip@{latency}"]
            rows.append((
                f"`.delay()` p50 at {latency * 1000:.0f} ms API latency (tracked − untracked); floor: a plain "
                f"keep-alive POST takes {ms(floor)}", ms(u),
                f"{ms(o)} ({(o - u) * 1000:+.2f} ms)",
                off(f"{ms(offp['p50'])} ({(offp['p50'] - u) * 1000:+.2f} ms)" if offp else ""),
                f"≤ +{latency * 1000 + 1.5:.1f} ms", yes(o - u <= latency + 0.0015)))
    if pub and "ours backend@0.0" in pub:
        with_backend, without = pub["ours backend@0.0"], pub["ours no backend@0.0"]
        rows.append(("`.delay()` p50 at 0 ms of a task that keeps its result, with a Redis result backend − "
                     "without one (ours stores the Task Badger id as the PENDING result; back to back)", "—",
                     f"{ms(with_backend)} − {ms(without)} = {(with_backend - without) * 1000:+.2f} ms",
                     off("(stores it too, then reads it back)"), "(the price of the hint)", "—"))
    if pub and tp:
        po = pub[f"ours@{b.latency}"]
        offp = pub.get(f"official@{b.latency}")
        wo = {pool: tp[f"ours/{pool}"] for pool in ("solo", "prefork")}
        wf = {pool: tp.get(f"official/{pool}") for pool in ("solo", "prefork")}
        sus = res.get("sustained")
        ours_text = (f"publisher: {po['connections']} for {po['calls']} calls; worker, burst of {wo['solo']['n']:,}: "
                     f"{wo['solo']['worker_conn_per_task'] * wo['solo']['n']:.0f} opened in all (solo), "
                     f"{wo['prefork']['worker_conn_per_task'] * wo['prefork']['n']:.0f} (prefork 2), of which "
                     f"{wo['solo']['worker_conn_steady'] * (wo['solo']['n'] - wo['solo']['n'] // 2):.0f} / "
                     f"{wo['prefork']['worker_conn_steady'] * (wo['prefork']['n'] - wo['prefork']['n'] // 2):.0f} "
                     f"in the second half")
        if sus:
            ours_text += (f"; sustained (solo): {' / '.join(str(c) for c in sus['conn_tails'])} opened during the "
                          f"last {sus['tail']:,} of {sus['n']:,} tasks in its {len(sus['conn_tails'])} runs "
                          f"({sus['conn_total']} in all in the median run)")
        off_text = ""
        if offp and wf["solo"] and wf["prefork"]:
            off_text = (f"publisher: {offp['connections']} for {offp['calls']} calls; worker steady state: "
                        f"{wf['solo']['worker_conn_steady']:.2f} (solo), {wf['prefork']['worker_conn_steady']:.2f} "
                        f"(prefork 2) per task")
        # Steady state: the publisher keeps one connection; the worker opens none once its pool is warm
        # (measured over the sustained run's tail when it ran, else over the bursts' second halves).
        worker_steady = (max(sus["conn_tails"]) == 0 if sus
                         else max(w["worker_conn_steady"] for w in wo.values()) == 0)
        steady_ok = po["connections"] <= 1 and worker_steady
        rows.append(("new TCP connections per task, steady state", "0", ours_text, off(off_text), "0",
                     yes(steady_ok)))
    pf = res.get("publish_faults", {})
    if pf and pub:
        u = pub["untracked@0.0"]["p50"]
        for name in ("refused", "hanging", "500"):
            o = pf[f"ours/{name}"]
            offf = pf.get(f"official/{name}")
            rows.append((
                f"API {name}: `.delay()` p50 overhead once the breaker has opened; max single call",
                ms(u), f"{(o['p50'] - u) * 1000:+.2f} ms; max {o['max']:.3f} s (timeout (1, 1) s)",
                off(f"{(offf['p50'] - u) * 1000:+.2f} ms; max {offf['max']:.3f} s (default timeout "
                    f"{OFFICIAL_DEFAULT_TIMEOUT:.0f} s; no breaker)" if offf else ""),
                "≤ +2 ms; max ≤ timeout", yes(o["p50"] - u <= 0.002 and o["max"] <= 1.0 * 1.05)))
    out = res.get("outage")
    if out:
        o = out["ours"]
        offo = out.get("official")
        rec = f", all within {o['recovered_in']:.1f} s of recovery" if o["recovered_in"] is not None else ""
        rows.append((
            "API down 30 s while tracked tasks finish, then back: final states that arrive after recovery", na,
            f"{100 * o['final'] / o['n']:.0f} % ({o['final']}/{o['n']}, {o['finished_while_down']} finished "
            f"while down){rec}",
            off(f"{100 * offo['final'] / offo['n']:.0f} % ({offo['final']}/{offo['n']})" if offo else ""),
            "100 %", yes(o["final"] == o["n"])))
    ex = res.get("executed", {})
    for name in ("down", "slow (2 s)", "500"):
        if f"ours/{name}" not in ex:
            continue
        o = ex[f"ours/{name}"]
        offe = ex.get(f"official/{name}")

        def cell(e: dict[str, Any]) -> str:
            return (f"published {e['published']}/{e['asked']}, executed {e['executed']}/{e['asked']} "
                    f"(max `.delay()` {e['max_delay']:.2f} s)")

        rows.append((f"Celery tasks published and executed while the API is {name}", "100 % (by construction)",
                     cell(o), off(cell(offe) if offe else ""), "100 %",
                     yes(o["published"] == o["asked"] and o["executed"] == o["asked"])))
    mem = res.get("memory")
    if mem:
        o, u = mem["ours"]["samples"], mem["untracked"]["samples"]

        def rss(samples: list[tuple[int, float, float]]) -> str:
            return " → ".join(f"{m:.0f} MB@{c}" for c, _, m in samples)

        at_cap = next(m for c, _, m in o if c >= MAX_PENDING_TASKS)
        growth_after_cap = o[-1][2] - at_cap
        per_task = mem["ours"]["seconds_per_task_past_cap"]
        rows.append((
            "worker RSS (solo) while the API is down and tasks keep finishing (RSS@tasks done)", rss(u),
            f"{rss(o)}; {growth_after_cap:+.1f} MB after the cap; past the cap a task took "
            f"{per_task * 1000:.1f} ms (its update dropped at once, counted and logged)" if per_task else rss(o),
            "not measured (keeps no queue: updates are lost)", f"bounded (cap {MAX_PENDING_TASKS:,} tasks)",
            yes(growth_after_cap <= 1.0)))

    lines = [header, "", "| figure | untracked | ours | official 2.6.0 | target (ours) | ours meets it |",
             "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    changed = [str(f.relative_to(BENCH_DIR.parent)) for f in sorted((BENCH_DIR.parent / "taskbadger").rglob("*.py"))
               if f.stat().st_mtime > b.started_at]
    if b.other_load > 0.1:
        lines += ["", f"**Warning: other processes used {b.other_load:.2f} CPU cores on average during this run"
                      + (f" ({len(b.foreign)} other benchmark or Celery worker processes seen)" if b.foreign else "")
                      + "; figures may be skewed. Run again on a quiet machine.**"]
    if changed:
        lines += ["", f"**Warning: the library changed during this run ({', '.join(changed)}); figures may mix "
                      f"versions. Run again.**"]
    lines += ["", "Notes:", "",
              "- Requests and TCP connections are counted by the stand-in server; requests per task include the "
              "publish-side POST and the worker's asynchronous updates (the run waits for every final state).",
              "- Throughput = tasks ÷ (last − first task timestamp), each task RPUSHing `time.time()` to Redis; the "
              "batch is published at 0 ms latency, then the latency is set and the worker started. \"Burst\": the "
              "batch fits in ours' update queue; \"sustained\": more tasks than the queue holds "
              f"(MAX_PENDING_TASKS = {MAX_PENDING_TASKS:,}), so the worker runs at the pace updates are delivered.",
              "- `.delay()` floor: p50 of a plain keep-alive `requests` POST to the stand-in API from another "
              "process. At 10 ms it is itself about latency + 1.5 ms on this machine (timer and wake-up costs of the "
              "two processes), so that target leaves ours almost no margin: compare ours with the floor.",
              "- Connections: the publisher figure is all connections for all calls of one process; the worker "
              "figures count connections opened while a worker ran (its pool warming up), and, for the steady "
              "state, those opened during the last tasks of the sustained run.",
              "- Fault rows: p50 over the calls after 10 warm-up calls (the breaker opens after 3 failures); "
              "\"max ≤ timeout\" allows 5 % over the 1 s read timeout. Every publisher (all modes) first makes one "
              "untimed publish of a task no SDK tracks, so no timed call pays Celery's own first-publish set-up "
              "(~17 ms). The official SDK has no breaker: every call pays the fault; with a hanging API it waits its "
              "5 s timeout, so only 2 calls are made.",
              "- Outage: tasks created while the API is up, then the API refuses connections for 30 s while the "
              "workers run them, then accepts again; a final state counts if it reached the server.",
              "- Memory: one solo worker, API refusing connections, tasks created before the outage; RSS from "
              "/proc. Past the cap, with the API failing, a final update is dropped at once (counted, logged).",
              "", f"Run time: {time.monotonic() - started:.0f} s."]
    return "\n".join(lines)


def make_header(b: Bench) -> str:
    def version(python: pathlib.Path, module: str) -> str:
        done = subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version('{module}'))"],
                              capture_output=True, text=True, cwd=BENCH_DIR)
        return done.stdout.strip() or "?"

    def pyver(python: pathlib.Path) -> str:
        done = subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                              capture_output=True, text=True, cwd=BENCH_DIR)
        return done.stdout.strip() or "?"

    official = (f"official: taskbadger {version(OFFICIAL_PYTHON, 'taskbadger')}, Python {pyver(OFFICIAL_PYTHON)}, "
                f"Celery {version(OFFICIAL_PYTHON, 'celery')}" if b.official else "official: not run")
    mode = "quick smoke run" if b.quick else "full run"
    root = BENCH_DIR.parent
    git = ["git", "-C", str(root)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "taskbadger"], capture_output=True,
                           text=True).stdout.split("\n")
    changed = sorted(line[3:] for line in dirty if line.strip())
    revision = f"{head or '?'}" + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")
    return (f"## taskbadger benchmark ({mode}), {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}\n\n"
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (nproc), {platform.system()} "
            f"{platform.release()}. Ours: this repo at {revision}. Ours/untracked: Python "
            f"{platform.python_version()}, Celery "
            f"{version(OURS_PYTHON, 'celery')}; {official}. API: stand-in server in its own process, "
            f"{b.latency * 1000:.0f} ms latency unless stated. Other load on the machine during the run: "
            f"{b.other_load:.2f} CPU cores. Broker: Redis `{b.broker}` (results ignored; "
            f"it is also the result backend, which the official SDK's `.delay()` needs). Medians over "
            f"{1 if b.quick else 3} repeats ({1 if b.quick else 5} paired repeats for burst throughput); "
            f"fault scenarios: ours with timeout (1, 1) s, official with its "
            f"default ({OFFICIAL_DEFAULT_TIMEOUT:.0f} s).")


STEPS = ("publish_latency", "throughput", "long_task_requests", "publish_faults", "executed_under_faults",
         "sustained", "outage", "memory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short smoke run (< 60 s)")
    parser.add_argument("--latency", type=float, default=0.010, help="API latency in seconds (default 0.010)")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/9", help="Redis URL (its db gets flushed)")
    parser.add_argument("--no-official", action="store_true", help="skip the official SDK")
    parser.add_argument("--pool", choices=list(POOL_ARGS), action="append",
                        help="measure the throughput of this worker pool (repeatable; default: all)")
    parser.add_argument("--output", default=str(BENCH_DIR / "results.md"), help="where to write the table")
    parser.add_argument("--only", choices=STEPS, action="append",
                        help="run only this step (repeatable); pair it with --output elsewhere")
    args = parser.parse_args(argv)
    started = time.monotonic()

    from taskbadger.delivery import queue

    if queue.MAX_PENDING_TASKS != MAX_PENDING_TASKS:
        log(f"note: MAX_PENDING_TASKS is {queue.MAX_PENDING_TASKS}, the memory run assumes "
            f"{MAX_PENDING_TASKS}")
    official = not args.no_official
    if official:
        if args.quick and not OFFICIAL_PYTHON.exists():
            log("quick run: no official virtualenv yet, skipping the official SDK")
            official = False
        else:
            ensure_official_venv()
    r = redis.Redis.from_url(args.broker)
    try:
        r.ping()
    except redis.RedisError as err:
        print(f"Redis at {args.broker} is not reachable: {err}", file=sys.stderr)
        return 2
    api = ApiServer()
    bench = Bench(api=api, broker=args.broker, r=r, latency=args.latency, quick=args.quick, official=official,
                  pools=tuple(args.pool or POOL_ARGS))
    redis_server = redis_pid()
    load_start = (time.monotonic(), machine_busy_seconds(), own_seconds(),
                  pid_cpu_seconds(redis_server) if redis_server else 0.0)
    try:
        names = [name for name in STEPS if name not in ("sustained", "outage", "memory") or not args.quick]
        steps: list[Callable[[], None]] = [getattr(bench, name) for name in args.only or names]
        for step in steps:
            bench.reap()
            others = foreign_processes()
            if others:
                bench.foreign.update(others)
                log(f"warning: other benchmark runs or Celery workers are running: {others}")
            log(f"--- {step.__name__}")
            step()
        bench.reap()
    finally:
        bench.reap()
        api.stop()
        with contextlib.suppress(redis.RedisError):
            bench.cleanup()
            # The official SDK stores a result per publish (``update_state``); nothing reads them later.
            stale = list(r.scan_iter(match="celery-task-meta-*", count=1000))
            for i in range(0, len(stale), 500):
                r.delete(*stale[i:i + 500])
    # CPU the rest of the machine used meanwhile (other test runs, builds): it skews every figure.
    elapsed = time.monotonic() - load_start[0]
    others = ((machine_busy_seconds() - load_start[1]) - (own_seconds() - load_start[2])
              - ((pid_cpu_seconds(redis_server) if redis_server else 0.0) - load_start[3]))
    bench.other_load = max(0.0, others) / elapsed
    header = make_header(bench)
    table = build_table(bench, started, header)
    print(table)
    write_table(pathlib.Path(args.output), table)
    return 0


TABLE_START, TABLE_END = "<!-- benchmarks/run.py writes below -->", "<!-- benchmarks/run.py writes above -->"


def write_table(path: pathlib.Path, table: str) -> None:
    """Replace the previous table in ``path`` (between the markers), keeping the rest of the file."""
    block = f"{TABLE_START}\n{table}\n{TABLE_END}"
    text = path.read_text() if path.exists() else ""
    if TABLE_START in text and TABLE_END in text:
        before, _, rest = text.partition(TABLE_START)
        _, _, after = rest.partition(TABLE_END)
        path.write_text(before + block + after)
    else:
        path.write_text(block + "\n" + text)


if __name__ == "__main__":
    raise SystemExit(main())
