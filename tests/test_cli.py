"""The ``taskbadger`` console script, run as a real process against the stand-in API.

Every test runs ``python -m taskbadger.cli`` with its own HOME and XDG_CONFIG_HOME, so no user's config
file is read, and waits on conditions (``taskbadger_server.wait_for``), never on fixed sleeps.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

import taskbadger
from taskbadger.cli.run import CAPTURE_LIMIT

CLI = [sys.executable, "-m", "taskbadger.cli"]
WRONG_KEY = base64.b64encode(b"acme/demo/not-the-key-42").decode()


@pytest.fixture
def env(tmp_path, taskbadger_server):
    """An environment pointing the CLI at the stand-in server, with an empty home of its own."""
    return make_env(tmp_path, TASKBADGER_HOST=taskbadger_server.url, TASKBADGER_API_KEY=taskbadger_server.api_key)


def make_env(tmp_path, **extra: str) -> dict[str, str]:
    result = {k: v for k, v in os.environ.items() if not k.startswith("TASKBADGER_")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    result.update(HOME=str(home), XDG_CONFIG_HOME=str(tmp_path / "xdg"), COLUMNS="120", NO_COLOR="1", TZ="UTC")
    result.update(extra)
    return result


def cli(*args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def cli_all(*calls: tuple[tuple[str, ...], dict[str, str]]) -> list[subprocess.CompletedProcess]:
    """Run independent CLI invocations at the same time (each costs an interpreter start)."""
    procs = [(args, subprocess.Popen([*CLI, *args], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)) for args, env in calls]
    results = []
    for args, proc in procs:
        out, err = proc.communicate(timeout=30)
        results.append(subprocess.CompletedProcess([*CLI, *args], proc.returncode, out, err))
    return results


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def only_task(server, name: str) -> dict:
    [task] = server.tasks_named(name)
    return task


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


# -- run: exit status and the task's outcome ----------------------------------------------------------

@pytest.mark.parametrize(("command", "code", "status", "returncode"), [
    (["true"], 0, "success", 0),
    (["sh", "-c", "exit 1"], 1, "error", 1),
    (["sh", "-c", "kill -INT $$"], 130, "error", -signal.SIGINT),  # we die of it too: a shell's $? is 130
])
def test_run_returns_the_exit_status_and_records_it(taskbadger_server, env, command, code, status, returncode):
    result = cli("run", "job", "--", *command, env=env)
    assert result.returncode == returncode, result.stderr
    assert result.stdout == "" and result.stderr == ""  # nothing of ours on a non-terminal
    task = only_task(taskbadger_server, "job")
    assert task["status"] == status and task["data"]["return_code"] == code
    assert task["stale_timeout"] == 10
    if code == 0:
        assert task["value_percent"] == 100
    if code == 130:
        assert task["data"]["signal"] == "SIGINT"


def test_command_not_found_and_not_executable(taskbadger_server, env, tmp_path):
    missing = cli("run", "missing", "--", "no-such-command-xyz", "arg", env=env)
    assert missing.returncode == 127
    assert missing.stderr == "taskbadger: no-such-command-xyz: command not found\n"
    task = only_task(taskbadger_server, "missing")
    assert task["status"] == "error" and task["data"]["return_code"] == 127
    assert "command not found" in task["data"]["error"]

    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    denied = cli("run", "denied", "--", str(script), env=env)
    assert denied.returncode == 126 and "cannot execute" in denied.stderr
    assert only_task(taskbadger_server, "denied")["data"]["return_code"] == 126


def test_sigterm_is_forwarded_to_the_command(taskbadger_server, env, tmp_path):
    started = tmp_path / "started"
    child = python(f"""
        import pathlib, time
        pathlib.Path({str(started)!r}).write_text("up")
        time.sleep(60)
    """)
    proc = subprocess.Popen([*CLI, "run", "terminated", "--", *child], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        taskbadger_server.wait_for(started.exists, timeout=15)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    task = taskbadger_server.wait_for_task(name="terminated", status="error")
    assert task["data"] == {"return_code": 143, "signal": "SIGTERM", "forwarded_signal": "SIGTERM"}


def test_signals_we_were_started_with_ignored_stay_ignored_by_the_command(taskbadger_server, env, tmp_path):
    """``nohup taskbadger run ...`` (SIGHUP ignored) or a script's ``taskbadger run ... &`` (SIGINT ignored):
    the command must survive the hang-up or the Ctrl-C as it would without us. It used to be killed: we
    replaced the ignored disposition with our forwarding handler, and the command inherited the default."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    child = python(f"""
        import json, os, pathlib, signal, sys, time
        ignored = {{s.name: signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGHUP, signal.SIGINT)}}
        pathlib.Path({str(ready)!r}).write_text(json.dumps(ignored))
        deadline = time.monotonic() + 20  # polled: the test says when the signals were sent
        while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:
            time.sleep(0.01)
        sys.exit(0)
    """)

    def ignore_hup_and_int() -> None:  # what nohup and a non-interactive shell's background job do
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.Popen([*CLI, "run", "nohup", "--", *child], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ignore_hup_and_int)
    try:
        taskbadger_server.wait_for(ready.exists, timeout=15)
        # a signal sent to a process that ignores it is discarded at once: nothing is pending after these
        proc.send_signal(signal.SIGHUP)
        proc.send_signal(signal.SIGINT)
        go.touch()
        _, stderr = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert json.loads(ready.read_text()) == {"SIGHUP": True, "SIGINT": True}
    assert proc.returncode == 0, stderr
    task = taskbadger_server.wait_for_task(name="nohup", status="success")
    assert task["data"] == {"return_code": 0}


def test_ctrl_c_on_a_terminal_reaches_the_command_once(taskbadger_server, env, tmp_path):
    import pty

    ready = tmp_path / "ready"
    child = python(f"""
        import pathlib, signal, sys, time
        count = []
        signal.signal(signal.SIGINT, lambda *_: count.append(1))
        pathlib.Path({str(ready)!r}).write_text("up")
        deadline = time.monotonic() + 20
        while not count and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # room for a second copy to arrive, were we to forward one
        sys.exit(10 + len(count))
    """)
    # The pty becomes the controlling terminal of a new session, as a terminal window's is.
    on_terminal = python("""
        import fcntl, os, sys, termios
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        os.execv(sys.argv[1], sys.argv[1:])
    """)
    leader, follower = pty.openpty()
    proc = subprocess.Popen([*on_terminal, *CLI, "run", "interrupted", "--", *child], env=env, stdin=follower,
                            stdout=follower, stderr=follower, start_new_session=True)
    os.close(follower)
    try:
        taskbadger_server.wait_for(ready.exists, timeout=15)
        os.write(leader, b"\x03")  # Ctrl-C: the terminal signals its foreground process group
        assert proc.wait(timeout=15) == 11  # one SIGINT, handled by the command, which exited 11
    finally:
        proc.kill()
        os.close(leader)
    task = taskbadger_server.wait_for_task(name="interrupted", status="error")
    assert task["data"] == {"return_code": 11}


def test_ctrl_c_stops_the_script_the_run_is_in_as_it_would_without_us(taskbadger_server, env, tmp_path):
    """A shell waiting for a command goes on with the script after a Ctrl-C unless the command died of SIGINT
    ("wait and cooperative exit"). The command died of it, but we exited 130: the script went on."""
    ready = tmp_path / "ready"
    child = python(f"""
        import os, pathlib, signal, time
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # dies of Ctrl-C, as most programs do
        pathlib.Path({str(ready)!r}).write_text("up")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.01)
    """)
    script = f"{shlex.join([*CLI, 'run', 'interrupted-script', '--', *child])}; echo went on with $?"
    proc = subprocess.Popen(["bash", "-c", script], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        taskbadger_server.wait_for(ready.exists, timeout=15)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the foreground process group gets SIGINT
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert "went on" not in stdout and proc.returncode == -signal.SIGINT, (stdout, stderr)
    no_traceback(subprocess.CompletedProcess([], 0, stdout, stderr))
    task = taskbadger_server.wait_for_task(name="interrupted-script", status="error")
    assert task["data"]["return_code"] == 130 and task["data"]["signal"] == "SIGINT"


def test_a_signal_before_the_command_starts_stops_it_from_starting(taskbadger_server, env, tmp_path):
    taskbadger_server.hang(method="POST")
    proc = subprocess.Popen([*CLI, "run", "stopped", "--", *started_at(tmp_path)], stdin=subprocess.DEVNULL,
                            env={**env, "TASKBADGER_HTTP_TIMEOUT": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        taskbadger_server.wait_for(lambda: taskbadger_server.requests, timeout=15)  # waiting on the create
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 143 and not (tmp_path / "stamp").exists()
    assert len(stderr.splitlines()) == 1


def sigterm_when(server, env, args, ready) -> tuple[int, str, float]:
    """Start `taskbadger ARGS`, send it SIGTERM once the stand-in API has seen what ``ready()`` waits for; its exit
    status, its stderr, and the seconds it took to stop after the signal."""
    proc = subprocess.Popen([*CLI, *args], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        server.wait_for(ready, timeout=15)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        return proc.returncode, stderr, time.monotonic() - signalled
    finally:
        proc.kill()


def test_a_signal_while_the_create_hangs_ends_us_at_once_and_the_run_is_recorded_later(taskbadger_server, env,
                                                                                       tmp_path):
    """docs/cli.md: a signal ends taskbadger at once. One that came while the create hung, before the command
    started, was acted on only after the wait for the create (the connect timeout) and the whole 10 s budget for
    the outcome; every further SIGTERM or Ctrl-C was ignored meanwhile."""
    taskbadger_server.hang(method="POST")
    returncode, stderr, stopped_in = sigterm_when(
        taskbadger_server, env, ("run", "stopped", "--", *started_at(tmp_path)),
        lambda: taskbadger_server.requests)  # waiting on the create
    assert returncode == 143 and stopped_in < 1.0 and not (tmp_path / "stamp").exists()
    [line] = stderr.splitlines()
    assert "stopped by a signal; spooled in" in line
    taskbadger_server.clear_faults()  # the hung create was never carried out: the next command makes the task
    assert cli("list", env=env).returncode == 0
    task = only_task(taskbadger_server, "stopped")
    assert task["status"] == "error" and task["data"] == {
        "return_code": 143, "signal": "SIGTERM", "error": "stopped before the command started"}


def test_environment_is_added_to_and_arguments_are_passed_intact(taskbadger_server, env):
    env = {**env, "MY_VAR": "hello world"}
    child = python("""
        import json, os, sys
        keys = ("MY_VAR", "PATH", "HOME", "TASKBADGER_TASK_ID")
        print(json.dumps({"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in keys}}))
    """)
    args = ["two words", "--tag", "a=b", "-v", "", "$HOME", "it's \"quoted\""]
    result = cli("run", "env", "--", *child, *args, env=env)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["argv"] == args
    task = only_task(taskbadger_server, "env")
    assert seen["env"] == {"MY_VAR": "hello world", "PATH": env["PATH"], "HOME": env["HOME"],
                           "TASKBADGER_TASK_ID": task["id"]}


@pytest.mark.parametrize(("redirect", "capture"), [(">&-", False), (">&-", True), ("2>&-", False)])
def test_the_command_runs_when_we_are_started_with_stdout_or_stderr_closed(taskbadger_server, env, tmp_path,
                                                                          redirect, capture):
    """``taskbadger run ... >&-``, or a daemon that closed its descriptors: Python gives sys.stdout (or
    sys.stderr) as None. The command did not run, we exited 1 with a traceback, the task stayed processing."""
    ran = tmp_path / "ran"
    command = [*CLI, "run", "closed", *(["--capture-output"] if capture else []), "--", "sh", "-c",
               f"touch {shlex.quote(str(ran))}; echo out; echo err >&2; exit 4"]
    proc = subprocess.run(["sh", "-c", f'exec "$@" {redirect}', "sh", *command], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 4 and ran.exists(), proc.stderr
    no_traceback(proc)
    task = taskbadger_server.wait_for_task(name="closed", status="error")
    assert task["data"]["return_code"] == 4


@pytest.mark.skipif(os.name != "posix", reason="descriptors are inherited by number on POSIX")
def test_the_command_gets_the_file_descriptors_we_were_given(taskbadger_server, env, tmp_path):
    """A descriptor the crontab line or the caller opened for the command (``3>>log``, a make jobserver's,
    systemd's sockets) was closed for it: the command failed ('3: Bad file descriptor', status 2) where it
    succeeded without taskbadger. The SDK's own descriptors are not inheritable (PEP 446): none of ours leak."""
    log = tmp_path / "fd3.log"
    inner = shlex.join([*CLI, "run", "fd3", "--", "sh", "-c", "echo wrapped >&3; ls /proc/$$/fd"])
    result = subprocess.run(["sh", "-c", f"{inner} 3>>{shlex.quote(str(log))}"], env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert log.read_text() == "wrapped\n"
    if os.path.isdir("/proc/self/fd"):  # the command has its three, the one it was given, and ls's own
        assert sorted(int(fd) for fd in result.stdout.split()) == [0, 1, 2, 3]
    assert only_task(taskbadger_server, "fd3")["status"] == "success"


def test_a_single_command_line_runs_through_the_shell(taskbadger_server, env):
    # what crontab lines written for the official CLI (which always used a shell) look like
    result = cli("run", "shell", "--", "echo abc | tr a x; exit 3", env=env)
    assert (result.returncode, result.stdout) == (3, "xbc\n")


# -- run: output capture ------------------------------------------------------------------------------

def test_capture_output_reaches_the_terminal_entirely_and_the_task_keeps_a_tail(taskbadger_server, env):
    child = python("""
        import sys
        sys.stdout.write("".join(f"line {i:07d}\\n" for i in range(400_000)))
        sys.stdout.flush()
        sys.stderr.write("warning: almost done\\n")
    """)
    result = subprocess.run([*CLI, "run", "big", "--capture-output", "--", *child], env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    expected = "".join(f"line {i:07d}\n" for i in range(400_000))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == len(expected) > 5_000_000
    assert result.stdout.decode() == expected
    assert result.stderr.decode() == "warning: almost done\n"
    data = only_task(taskbadger_server, "big")["data"]
    assert data["stdout"] == expected[-CAPTURE_LIMIT:]
    assert data["stdout_truncated_chars"] == len(expected) - CAPTURE_LIMIT
    assert data["stderr"] == "warning: almost done\n" and "stderr_truncated_chars" not in data
    assert data["return_code"] == 0


def test_captured_binary_output_is_kept_as_text_the_api_can_store(taskbadger_server, env, tmp_path):
    """A backup writing its dump to stdout (``pg_dump -Fc``) or ``find -print0``: NUL bytes went into data.stdout as
    JSON's ``\\u0000``, which PostgreSQL refuses in text and in ``jsonb``: an API keeping data there refuses the
    final update, and the run's outcome with it. They are kept as U+FFFD, as bytes that are not UTF-8 are; the
    terminal (here, a file) still gets the output byte for byte."""
    out = tmp_path / "dump"
    with out.open("wb") as target:
        result = subprocess.run([*CLI, "run", "dump", "--capture-output", "--", "sh", "-c",
                                 r"printf 'PGDMP\000\000\001\377done\n'"], env=env, stdin=subprocess.DEVNULL,
                                stdout=target, stderr=subprocess.PIPE, timeout=60)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == b"PGDMP\0\0\1\xffdone\n"
    task = only_task(taskbadger_server, "dump")
    assert (task["status"], task["data"]["stdout"]) == ("success", "PGDMP\ufffd\ufffd\x01\ufffddone\n")


def test_capture_output_keeps_the_order_of_stdout_and_stderr_going_to_one_file(taskbadger_server, env, tmp_path):
    """``taskbadger run ... --capture-output > log 2>&1``: the command's stdout and stderr were two pipes, copied by
    two threads, so its lines reached the log, and the task, in another order than it wrote them. One file, one
    pipe: the order is the command's, and the task keeps the lines as they are in the log."""
    child = python("""
        import os
        for i in range(1000):  # unbuffered, alternating: the order is only kept if nothing reorders it
            os.write(1 if i % 2 == 0 else 2, f"{'out' if i % 2 == 0 else 'err'} {i}\\n".encode())
    """)
    expected = "".join(f"{'out' if i % 2 == 0 else 'err'} {i}\n" for i in range(1000))
    log = tmp_path / "log"
    with log.open("wb") as out:
        result = subprocess.run([*CLI, "run", "both", "--capture-output", "--", *child], env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=60)
    assert result.returncode == 0, log.read_text()
    assert log.read_text() == expected
    assert only_task(taskbadger_server, "both")["data"] == {"stdout": expected, "return_code": 0}


def test_the_api_key_the_command_prints_is_not_kept_on_its_task(taskbadger_server, env):
    """A script that prints its environment (a CI step's debugging), or ``curl -v`` with the key in its header,
    put the API key into the task's data: on the task's page, and to every reader of the project's tasks. What
    reaches the terminal is the command's output as it is; only what the task keeps is redacted, the key whole,
    as its secret part (a Bearer header), and what is left of it where the kept tail begins."""
    key = taskbadger_server.api_key
    bearer = base64.b64decode(key).decode().split("/")[2]
    child = python(f"""
        import os, sys
        print("TASKBADGER_API_KEY=" + os.environ["TASKBADGER_API_KEY"])
        sys.stderr.write("> Authorization: Bearer {bearer}\\n")
        sys.stderr.write("x" * {CAPTURE_LIMIT} + "{key}" + "y" * ({CAPTURE_LIMIT} - 9))
    """)
    result = subprocess.run([*CLI, "run", "debug env", "--capture-output", "--", *child], env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"TASKBADGER_API_KEY={key}\n" and f"Bearer {bearer}" in result.stderr  # as printed
    data = only_task(taskbadger_server, "debug env")["data"]
    assert data["stdout"] == "TASKBADGER_API_KEY=[redacted: API key]\n"
    assert not data["stderr"].startswith(key[-9:]) and data["stderr"].endswith("y" * 100)
    assert bearer not in json.dumps(data) and key[-9:] not in json.dumps(data)


def test_get_shows_why_a_run_failed_without_json(taskbadger_server, env):
    """Issue 21, item 8: the pretty view showed `Status: error` and nothing of the return code, the error or
    the output."""
    child = python("""
        import sys
        for i in range(15):
            print(f"row {i}")
        sys.stderr.write("backup.sh: /srv/data: No space left on device\\n")
        sys.exit(3)
    """)
    failed = subprocess.run([*CLI, "run", "nightly backup", "--capture-output", "--", *child], env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 3, failed.stderr
    task = only_task(taskbadger_server, "nightly backup")
    shown = cli("get", task["id"], env=env).stdout.splitlines()
    assert "Status: error" in shown
    start = shown.index("Return code: 3")
    assert shown[start:] == [
        "Return code: 3",
        "Output (stdout, last 10 of 15 kept lines):", *(f"  row {i}" for i in range(5, 15)),
        "Output (stderr):", "  backup.sh: /srv/data: No space left on device",
        "All data: -f json",
    ]


def test_get_shows_a_celery_error_and_the_end_of_its_traceback(taskbadger_server, env):
    try:
        raise ValueError("customer 42 has no address")
    except ValueError as exc:
        data = taskbadger.models.exception_data(exc)
    task = taskbadger.create_task("billing.tasks.send", status="error", data=data)
    shown = cli("get", task.id, env=env).stdout.splitlines()
    assert "Exception type: ValueError" in shown and "Error: ValueError: customer 42 has no address" in shown
    traceback_at = next(i for i, line in enumerate(shown) if line == "Traceback:")
    assert shown[traceback_at + 1].startswith("  Traceback") and shown[-2] == "  ValueError: customer 42 has no address"


@contextlib.contextmanager
def pinged_run(server, env, name, before=""):
    """`taskbadger run NAME --capture-output` of a command that runs ``before``, prints "tick" and waits to be released
    (its stdin, ours, closed): yields the first ping that carries the tick; on leaving, releases the command and checks
    it ended well."""
    child = python(f"""
        import os, sys, taskbadger
        {before}
        print("tick", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen([*CLI, "run", name, "--capture-output", "--", *child], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def pinged():
            return [r for r in server.requests
                    if r.method == "PATCH" and (r.json or {}).get("data", {}).get("stdout") == "tick\n"]

        [ping] = server.wait_for(pinged, timeout=15)
        yield ping
        proc.communicate(timeout=15)  # closes its stdin: the command ends
        assert proc.returncode == 0
    finally:
        proc.kill()
        proc.communicate()


def test_pings_carry_the_captured_output_while_the_command_runs(taskbadger_server, env, tmp_path):
    with pinged_run(taskbadger_server, env, "pinged") as ping:
        assert set(ping.json) == {"data"}  # a ping: no status, no return code yet
        assert only_task(taskbadger_server, "pinged")["status"] == "processing"
    task = only_task(taskbadger_server, "pinged")
    assert task["status"] == "success" and task["data"] == {"stdout": "tick\n", "return_code": 0}


def test_pings_with_the_captured_output_keep_what_the_command_wrote_to_its_task(taskbadger_server, env, tmp_path):
    """A ping sent the task's data as it was when it was created, plus the output's tail: what the command had
    written to its task meanwhile (`taskbadger update "$TASKBADGER_TASK_ID" --metadata rows=42`) was wiped."""
    before = 'taskbadger.init(); taskbadger.update_task(os.environ["TASKBADGER_TASK_ID"], data={"rows": 42})'
    with pinged_run(taskbadger_server, env, "reporting", before) as ping:
        assert ping.json["data"] == {"rows": 42, "stdout": "tick\n"}
        assert only_task(taskbadger_server, "reporting")["data"] == {"rows": 42, "stdout": "tick\n"}
    assert only_task(taskbadger_server, "reporting")["data"] == {"rows": 42, "stdout": "tick\n", "return_code": 0}


# -- run: whatever happens to Task Badger, the command runs ----------------------------------------

def started_at(tmp_path) -> list[str]:
    stamp = tmp_path / "stamp"
    return python(f"""
        import pathlib, sys, time
        pathlib.Path({str(stamp)!r}).write_text(repr(time.time()))
        sys.exit(5)
    """)


def test_api_refusing_connections(taskbadger_server, env, tmp_path):
    taskbadger_server.refuse()
    result = cli("run", "down", "--", *started_at(tmp_path), env=env)
    assert result.returncode == 5
    first, last = result.stderr.splitlines()
    assert first.startswith("taskbadger: not tracked yet: could not reach Task Badger")
    assert "spooled in" in last  # its task is made by the next command (test_a_run_whose_create_failed_in_an_outage)
    assert (tmp_path / "stamp").exists()


def test_a_run_whose_create_failed_for_a_moment_is_created_when_it_ends(taskbadger_server, env):
    """A 503 at the create (the API restarting) left the run untracked, though the API was back when it ended."""
    taskbadger_server.fail(503, times=1)
    result = cli("run", "restart", "--", *fail_with(4), env=env)
    assert result.returncode == 4 and result.stderr.startswith("taskbadger: not tracked yet:")
    task = only_task(taskbadger_server, "restart")
    assert task["status"] == "error" and task["data"] == {"return_code": 4} and task["start_time"] <= task["end_time"]


def wait_before_the_command(server, tmp_path) -> float:
    """Seconds from the create reaching the API to the command starting (its stamp): our wait, and the
    child interpreter's start-up. Counted from the create, not from our launch, whose own start-up (imports)
    varies with the machine's load and is not what the contract bounds."""
    (create,) = [r for r in server.requests if r.method == "POST"]
    return float((tmp_path / "stamp").read_text()) - create.timestamp


def test_api_hanging_delays_the_command_by_the_connect_timeout_at_most(taskbadger_server, env, tmp_path):
    taskbadger_server.hang()
    result = cli("run", "hung", "--", *started_at(tmp_path), env={**env, "TASKBADGER_HTTP_TIMEOUT": "1"})
    assert result.returncode == 5
    assert wait_before_the_command(taskbadger_server, tmp_path) < 1 + 1
    assert len(result.stderr.splitlines()) == 1 and "did not answer within 1 s" in result.stderr
    no_traceback(result)


def test_api_refusing_the_key(taskbadger_server, env, tmp_path):
    result = cli("run", "unauthorized", "--", *started_at(tmp_path), env={**env, "TASKBADGER_API_KEY": WRONG_KEY})
    assert result.returncode == 5 and (tmp_path / "stamp").exists()
    [line] = result.stderr.splitlines()
    assert "not tracking this run: Task Badger refused the API key (HTTP 401)" in line
    assert WRONG_KEY not in line and "not-the-key-42" not in line


def test_no_configuration_at_all(tmp_path):
    result = cli("run", "nothing", "--", *started_at(tmp_path), env=make_env(tmp_path))
    assert result.returncode == 5 and (tmp_path / "stamp").exists()
    assert result.stderr == ("taskbadger: not tracking this run: no API key: set TASKBADGER_API_KEY or run "
                             "`taskbadger configure`\n")


def test_a_slow_create_still_tracks_the_run(taskbadger_server, env, tmp_path):
    taskbadger_server.set_latency(2.5, times=1, method="POST")  # answers after the 2 s connect wait
    child = python(f"""
        import os, pathlib, time
        pathlib.Path({str(tmp_path / "stamp")!r}).write_text(repr(time.time()))
        print(os.environ.get("TASKBADGER_TASK_ID"))
    """)
    result = cli("run", "slow", "--", *child, env=env)
    assert result.returncode == 0 and result.stderr == ""
    assert wait_before_the_command(taskbadger_server, tmp_path) < 2 + 1
    assert result.stdout == "None\n"  # it started before the task existed
    assert taskbadger_server.wait_for_task(name="slow", status="success")


def test_a_name_longer_than_the_api_takes_is_shortened_and_the_run_tracked(taskbadger_server, env):
    long_name = "nightly-export-" + "x" * 300  # e.g. built from a host name and arguments in a crontab line
    result = cli("run", long_name, "--", "true", env=env)
    assert result.returncode == 0 and result.stderr == ""
    [task] = taskbadger_server.tasks.values()
    assert task["name"] == long_name[:254] + "…" and task["status"] == "success"


def test_a_tag_value_longer_than_the_api_takes_is_shortened_and_the_run_tracked(taskbadger_server, env):
    long_value = "x" * 300  # e.g. a commit message; the API takes 2 to 255 characters and refused the create
    result = cli("run", "migrate", "--tag", f"commit={long_value}", "--", "true", env=env)
    assert result.returncode == 0 and result.stderr == ""
    task = only_task(taskbadger_server, "migrate")
    assert task["tags"] == {"commit": long_value[:254] + "…"} and task["status"] == "success"


def test_bytes_that_are_not_utf8_on_the_command_line_are_sent_as_text(taskbadger_server, env, tmp_path):
    """A name or tag built from a file name in another encoding (``taskbadger run "backup $f"``): Python reads the
    bytes that are not UTF-8 as lone surrogates, and the body carried them as JSON escapes (``\\udcff``) that are not
    text: an API storing UTF-8 cannot keep them and refuses the create. They are sent as U+FFFD; the command still
    gets its own arguments byte for byte."""
    stamp = tmp_path / "arg"
    keep = b"import os, sys; open(sys.argv[2], 'wb').write(os.fsencode(sys.argv[1]))"
    argv = [*map(os.fsencode, CLI), b"run", b"backup caf\xe9.tar", b"--tag", b"file=caf\xe9", b"--",
            os.fsencode(sys.executable), b"-c", keep, b"caf\xe9", os.fsencode(stamp)]
    result = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    [task] = taskbadger_server.tasks.values()
    # compared as ascii(): a lone surrogate in a failure's report would break pytest-xdist's channel
    assert ascii((task["name"], task["tags"], task["status"])) == ascii(("backup caf\ufffd.tar", {"file": "caf\ufffd"},
                                                                         "success"))
    assert stamp.read_bytes() == b"caf\xe9"
    listed = subprocess.run([*map(os.fsencode, CLI), b"list", b"--start-token", b"p\xe9"], env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    # it said "Error: 'utf-8' codec can't encode character '\\udce9' in position 1: surrogates not allowed"
    assert listed.returncode == 2 and b"is not a page of the task list of acme/demo" in listed.stderr, listed.stderr
    made = subprocess.run([*map(os.fsencode, CLI), b"create", b"m", b"--metadata", b"file=caf\xe9"], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert made.returncode == 0, made.stderr
    assert ascii(only_task(taskbadger_server, "m")["data"]) == ascii({"file": "caf\ufffd"})


def test_a_tag_value_too_short_for_the_api_is_refused_before_anything_runs(taskbadger_server, env, tmp_path):
    for command in (("run", "short", "--tag", "env=a", "--", *started_at(tmp_path)),
                    ("create", "short", "--tag", "env=")):
        result = cli(*command, env=env)
        assert result.returncode == 2 and "a tag's value takes 2 to 255 characters" in result.stderr, result.stderr
    json_tags = cli("create", "short", "--tags-json", '{"env": "a"}', env=env)  # said as the option it came from
    assert json_tags.returncode == 2 and "--tags-json env='a': a tag's value" in json_tags.stderr, json_tags.stderr
    assert not (tmp_path / "stamp").exists() and not taskbadger_server.tasks


def test_the_config_files_tags_are_fitted_as_the_command_lines_are(taskbadger_server, env, tmp_path):
    """The config file's [tags] (added to every task the CLI creates) were not shortened to the API's 255 characters
    as a --tag value is: init() refused them, and every run went untracked until the file was fixed. One too short
    for the API (``env = "a"``) is said as on the command line, naming the file; the command still runs."""
    long_value = "x" * 300
    write_config(tmp_path, f"""
        [tags]
        commit = "{long_value}"
        host = "web1"
    """)
    result = cli("run", "migrate", "--tag", "env=prod", "--", "true", env=env)
    assert result.returncode == 0 and result.stderr == ""
    task = only_task(taskbadger_server, "migrate")
    assert task["tags"] == {"commit": long_value[:254] + "…", "host": "web1", "env": "prod"}
    assert task["status"] == "success"

    write_config(tmp_path, """
        [tags]
        env = "a"
    """)
    path = tmp_path / "xdg" / "taskbadger" / "config"
    said = f"the config file {path}, [tags] env='a': a tag's value takes 2 to 255 characters"
    ran, created = cli_all((("run", "short", "--", *started_at(tmp_path)), env), (("create", "short"), env))
    assert ran.returncode == 5 and (tmp_path / "stamp").exists()  # the command runs, untracked
    assert ran.stderr.splitlines() == [f"taskbadger: not tracking this run: {said} (Task Badger refuses shorter ones)"]
    assert created.returncode == 1 and said in created.stderr, created.stderr
    no_traceback(ran)
    assert not taskbadger_server.tasks_named("short")


def test_a_config_file_that_is_not_utf8_is_named_with_what_to_do(taskbadger_server, env, tmp_path):
    """A config file saved in Latin-1 (an editor's default on some systems): the CLI said only the codec's words,
    "'utf-8' codec can't decode byte 0xe9 in position 21"; it says which file, where, and to save it as UTF-8."""
    path = tmp_path / "xdg" / "taskbadger" / "config"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes('[defaults]\norg = "café"\n'.encode("latin-1"))
    said = f"the config file {path} is not UTF-8 text (line 2): save it as UTF-8"
    listed, ran = cli_all((("list",), env), (("run", "short", "--", *started_at(tmp_path)), env))
    assert listed.returncode == 1 and said in listed.stderr, listed.stderr
    assert ran.returncode == 5 and (tmp_path / "stamp").exists()  # the command runs, untracked
    assert said in ran.stderr and "codec" not in ran.stderr, ran.stderr
    no_traceback(listed)
    no_traceback(ran)


@pytest.mark.parametrize("why", ["refused", "slow"])
def test_a_run_without_a_task_does_not_pass_on_an_outer_runs_task_id(taskbadger_server, env, why):
    """A tracked script running a tracked step: when the step's run has no task (its create refused, or not
    answered before the command starts), its command got the outer run's TASKBADGER_TASK_ID, and its reports
    (``taskbadger update "$TASKBADGER_TASK_ID" --status success``) changed the outer task."""
    outer = taskbadger.create_task("deploy", status="processing")
    env = {**env, "TASKBADGER_TASK_ID": outer.id}
    if why == "refused":
        env["TASKBADGER_API_KEY"] = WRONG_KEY
    else:
        taskbadger_server.set_latency(2.5, times=1, method="POST")  # answered after the command started
    result = cli("run", "step", "--", *python("import os; print(os.environ.get('TASKBADGER_TASK_ID'))"), env=env)
    assert result.returncode == 0 and result.stdout == "None\n", result.stderr


def test_the_outcome_is_retried_through_server_errors(taskbadger_server, env):
    taskbadger_server.fail(503, times=3, method="PATCH")
    result = cli("run", "flaky", "--", "sh", "-c", "exit 4", env=env)
    assert result.returncode == 4 and result.stderr == ""
    task = only_task(taskbadger_server, "flaky")
    assert task["status"] == "error" and task["data"]["return_code"] == 4
    patches = [r.status for r in taskbadger_server.requests if r.method == "PATCH"]
    assert patches == [503, 503, 503, 200]


def test_the_outcome_keeps_what_the_command_wrote_to_its_task(taskbadger_server, env):
    child = python("""
        import os, taskbadger
        taskbadger.init()
        taskbadger.update_task(os.environ["TASKBADGER_TASK_ID"], data={"rows": 12}, value=3, value_max=4)
    """)
    result = cli("run", "reports", "--", *child, env=env)
    assert result.returncode == 0, result.stderr
    task = only_task(taskbadger_server, "reports")
    assert task["data"] == {"rows": 12, "return_code": 0} and task["value"] == 4 and task["status"] == "success"


# -- run: the budget after the command, whatever the API does (issue: nothing lost, nothing slowed) ---------


def fail_with(code: int) -> list[str]:
    return ["sh", "-c", f"exit {code}"]


def spooled_files(tmp_path) -> list:
    spool = tmp_path / "home" / ".local" / "state" / "taskbadger" / "spool"
    return sorted(p for p in spool.iterdir() if not p.name.startswith(".")) if spool.exists() else []


@pytest.mark.parametrize("mode", ["slow_headers", "slow_body", "hang", "refused"])
def test_after_the_command_tracking_keeps_its_budget_and_spools_the_rest(taskbadger_server, env, tmp_path, mode):
    from taskbadger.cli.run import FINAL_UPDATE_BUDGET

    if mode == "refused":
        taskbadger_server.refuse()  # after the create: the API goes down while the command runs
        taskbadger_server.accept()
    go = tmp_path / "go"  # the command ends once the API misbehaves, however slow this machine is
    proc = subprocess.Popen([*CLI, "run", "trickled", "--", *python(f"""
        import os, sys, time
        deadline = time.monotonic() + 30
        while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:
            time.sleep(0.01)
        sys.exit(3)
    """)], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    taskbadger_server.wait_for(lambda: taskbadger_server.tasks_named("trickled"), timeout=15)
    if mode == "refused":
        taskbadger_server.refuse()
    elif mode == "hang":
        taskbadger_server.hang()
    else:
        taskbadger_server.misbehave(mode, seconds=1.0)  # one header line (or body byte) a second
    faulted = time.monotonic()
    go.touch()
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        taskbadger_server.clear_faults()
    assert proc.returncode == 3  # the command's own status
    assert time.monotonic() - faulted < FINAL_UPDATE_BUDGET + 3  # was 80-100 s with a trickling API
    assert "spooled in" in stderr and len(spooled_files(tmp_path)) == 1
    # the next taskbadger command on this machine delivers it
    assert cli("run", "next", "--", "true", env=env).returncode == 0
    task = taskbadger_server.wait_for(lambda: [t for t in taskbadger_server.tasks_named("trickled")
                                               if t["status"] == "error"])[0]
    assert task["data"]["return_code"] == 3
    assert spooled_files(tmp_path) == []


def left_running(tmp_path, code: int) -> list[str]:
    """A command that leaves a process running with its stdout and stderr (``server &``), which writes ``late``
    once its stdin (the test's pipe) is closed, then ``survived`` in its folder; before exiting with ``code`` it
    stamps the time."""
    background = python(f"""
        import sys
        sys.stdin.read()
        print("late", flush=True)
        open({str(tmp_path / "survived")!r}, "w").close()
    """)
    return python(f"""
        import pathlib, subprocess, sys, time
        subprocess.Popen({background!r})
        print("done", flush=True)
        pathlib.Path({str(tmp_path / "stamp")!r}).write_text(repr(time.time()))
        sys.exit({code})
    """)


def run_leaving(env, tmp_path, code: int) -> subprocess.Popen:
    """`taskbadger run left --capture-output` of ``left_running``, its stdout and stderr to files (``out``, ``err``),
    once it has exited: what the command left running holds them after we exit, as it would hold a pipe. Closing the
    returned process's ``stdin`` lets what was left running write."""
    with (tmp_path / "out").open("wb") as out, (tmp_path / "err").open("wb") as err:
        ran = subprocess.Popen([*CLI, "run", "left", "--capture-output", "--", *left_running(tmp_path, code)], env=env,
                               stdin=subprocess.PIPE, stdout=out, stderr=err)
    try:
        ran.wait(timeout=60)
    except BaseException:
        ran.kill()
        ran.stdin.close()
        raise
    return ran


def test_the_output_drain_is_part_of_the_budget_after_the_command(taskbadger_server, env, tmp_path):
    """docs/cli.md: after the command ends, tracking takes at most 10 s. With --capture-output and a process the
    command left holding its output, we waited 5 s for that output, then gave the outcome 10 s more: 15 s."""
    from taskbadger.cli.run import FINAL_UPDATE_BUDGET

    taskbadger_server.hang(method="GET")  # the read before the final update: the outcome waits its whole budget
    try:
        result = run_leaving(env, tmp_path, 3)
        took = time.time() - float((tmp_path / "stamp").read_text())
        result.stdin.close()
    finally:
        taskbadger_server.clear_faults()
    assert result.returncode == 3 and "spooled in" in (tmp_path / "err").read_text()
    assert took < FINAL_UPDATE_BUDGET + 3, took  # was 15 s and more


def test_a_process_the_command_left_running_outlives_us_under_capture(taskbadger_server, env, tmp_path):
    """``taskbadger run --capture-output -- sh -c 'server &'``: the process left running writes to the command's
    output, a pipe of ours. We waited for it a while, then exited, closing the pipe: its next write died of
    SIGPIPE (BrokenPipeError in Python). Without capture, or without taskbadger, it lives on and its output reaches
    our stdout: so it does now, copied on by a process of its own."""
    result = run_leaving(env, tmp_path, 0)
    result.stdin.close()  # now that we are gone, it writes
    assert result.returncode == 0 and (tmp_path / "err").read_text() == ""
    taskbadger_server.wait_for((tmp_path / "survived").exists, timeout=15)
    assert taskbadger_server.wait_for(lambda: (tmp_path / "out").read_text() == "done\nlate\n", timeout=15)
    assert only_task(taskbadger_server, "left")["data"] == {"stdout": "done\n", "return_code": 0}


@pytest.mark.parametrize("fault", ["503", "502"])
def test_a_run_named_with_a_tab_whose_create_failed_in_an_outage_is_still_created(taskbadger_server, env, tmp_path,
                                                                                 fault):
    """A run's name or tag holding a control character (a tab pasted into a crontab line, a tag value from a command's
    output with a line break) is sent as the API takes it, in the JSON body. Spooled during an outage, the spool
    refused such text in its entries (as if it went into a header): the run's create was left out, and the outcome,
    found by nobody, was dropped."""
    taskbadger_server.fail(int(fault))
    outage = cli("run", "nightly\tbackup", "--tag", "note=two\nlines", "--", *fail_with(3), env=env)
    assert outage.returncode == 3 and "spooled in" in outage.stderr
    taskbadger_server.clear_faults()
    delivered = cli("list", env=env)
    assert delivered.returncode == 0, delivered.stderr
    assert len(taskbadger_server.tasks) == 1, (outage.stderr, delivered.stderr)
    [task] = taskbadger_server.tasks.values()
    assert (task["name"], task["tags"], task["status"]) == ("nightly\tbackup", {"note": "two\nlines"}, "error")


@pytest.mark.parametrize("fault", ["502", "hang", "503", "429", "refused"])
def test_a_run_whose_create_failed_in_an_outage_is_created_by_the_next_command(taskbadger_server, env, tmp_path, fault):
    """A create answered 502 (a proxy in front of a down API), or never answered, may or may not have been carried
    out: the outcome was spooled by external id only, and when the next command found no task by that id it dropped
    the outcome without a word, although stderr had promised its delivery: the run, and its monitor's check-in, lost.
    A create that certainly failed for a while (503, 429, no connection) left the run untracked altogether."""
    monitor = taskbadger_server.add_monitor()
    if fault in ("502", "503", "429"):
        taskbadger_server.fail(int(fault))
    elif fault == "refused":
        taskbadger_server.refuse()
    else:
        taskbadger_server.hang()
    outage = cli("run", "nightly", "--monitor-id", monitor, "--tag", "host=web1", "--", *fail_with(3), env=env)
    assert outage.returncode == 3 and "spooled in" in outage.stderr
    assert not taskbadger_server.tasks
    taskbadger_server.clear_faults()
    taskbadger_server.accept()
    delivered = cli("list", env=env)  # "the next taskbadger command within a day delivers it"
    assert delivered.returncode == 0 and len(taskbadger_server.tasks) == 1, (delivered.stderr, spooled_files(tmp_path))
    [task] = taskbadger_server.tasks.values()
    assert task["name"] == "nightly" and task["status"] == "error" and task["data"] == {"return_code": 3}
    assert task["monitor_id"] == monitor and task["tags"] == {"host": "web1"}
    assert task["external_id"].startswith("taskbadger-run-") and task["start_time"] <= task["end_time"]
    assert spooled_files(tmp_path) == []
    assert cli("list", env=env).returncode == 0 and len(taskbadger_server.tasks) == 1  # made once


@pytest.mark.parametrize("mode", ["not_json", "reset", "huge_body", "endless_headers"])
def test_a_run_whose_create_was_carried_out_but_answered_unreadably_ends_its_one_task(taskbadger_server, env, mode):
    """The API (or a proxy) carries the create out and its answer cannot be read: a 2xx page that is not JSON, a
    reset mid-answer, 40 MB, headers without end. The command runs at once with its own exit status, and the one
    task the API made ends with the run's outcome: not left processing, not made twice."""
    taskbadger_server.misbehave(mode, method="POST")
    result = cli("run", "garbled", "--", *fail_with(3), env=env)
    assert result.returncode == 3
    no_traceback(result)
    [task] = taskbadger_server.tasks_named("garbled")  # the run looked its task up by its external id, and ended it
    assert task["status"] == "error" and task["data"] == {"return_code": 3}


@pytest.mark.parametrize("when", ["start", "end"])
def test_a_run_under_a_monitor_the_api_refuses_is_tracked_without_it(taskbadger_server, env, when):
    """A mistyped --monitor-id (or a monitor deleted in Task Badger): the API refuses the create (404). The CLI made
    its creates itself, not through the SDK's path that leaves a refused monitor out: the run went untracked, or, when
    the create was made at the end (the first one failed for a moment: a 503), its outcome was "refused" and lost,
    although the spool's creates of the same run would have left the monitor out."""
    taskbadger_server.add_monitor()  # from now on, a create under any other monitor is refused
    unknown = "0b2c6a4e-5d1f-4c1e-9f43-3c0a1d2b7e55"
    if when == "end":
        taskbadger_server.fail(503, times=1, method="POST")  # the create at the start: tried again at the end
    result = cli("run", "nightly", "--monitor-id", unknown, "--", *fail_with(3), env=env)
    assert result.returncode == 3
    task = only_task(taskbadger_server, "nightly")
    assert task["status"] == "error" and task["data"] == {"return_code": 3} and task["monitor_id"] is None
    posts = [r for r in taskbadger_server.requests if r.method == "POST"]
    assert [(r.headers.get("X-TASKBADGER-MONITOR"), r.status) for r in posts][-2:] == [(unknown, 404), (None, 201)]
    assert f"monitor {unknown} is not one of project acme/demo's monitors" in result.stderr, result.stderr
    assert "check --monitor-id" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("monitor", ["0b2c6a4e-5d1f-4c1e-9f43-3c0a1d2b7e5", "'0b2c6a4e-5d1f-4c1e-9f43-3c0a1d2b7e55'",
                                     "0b2c6a4e-5d1f-4c1e-9f43-3c0a1d2b7e55\r\nX-Injected: 1"],
                         ids=["a-character-short", "quoted", "crlf"])
def test_a_run_under_a_monitor_id_that_is_not_one_is_tracked_without_it(taskbadger_server, env, monitor):
    """A --monitor-id mistyped so that it is not a UUID at all (a character short, pasted with its quotes) left the run
    untracked ("not tracking this run: monitor_id ... is not a monitor id"), where one Task Badger refuses leaves out
    the monitor alone: the run is tracked without it, and stderr says which option to fix. Nothing of it is sent."""
    result = cli("run", "nightly", "--monitor-id", monitor, "--", *fail_with(3), env=env)
    assert result.returncode == 3
    task = only_task(taskbadger_server, "nightly")
    assert task["status"] == "error" and task["data"] == {"return_code": 3} and task["monitor_id"] is None
    assert all(r.headers.get("X-TASKBADGER-MONITOR") is None for r in taskbadger_server.requests)
    assert "--monitor-id" in result.stderr and "is not a monitor id (a UUID): the run is tracked without it" in \
        result.stderr and "\r\n" not in result.stderr, result.stderr


def test_an_earlier_runs_outcome_dropped_by_a_later_run_is_said_on_stderr(taskbadger_server, env, tmp_path):
    """What the SDK logs as an error (updates lost) reaches stderr, where a crontab's mail shows it: the
    command line had silenced every SDK line."""
    from taskbadger.delivery.spool import Entry, Spool, api_key_of

    spool = tmp_path / "home" / ".local" / "state" / "taskbadger" / "spool"
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, spool_dir=False)  # as the CLI's
    Spool(spool).write(api_key_of(taskbadger.get_config()),
                       [Entry({"status": "success"}, task_id="A" * 26, since=time.time() - 2 * 86400)])
    result = cli("run", "next", "--", "true", env=env)
    assert result.returncode == 0
    assert result.stderr == "taskbadger: 1 spooled update(s) were too old (900 s, a final state 86400 s) and are " \
                            "dropped\n"


@pytest.mark.parametrize("command", [("get", "{other}"), ("list", "-f", "csv", "--limit", "1")])
def test_the_next_command_of_any_kind_delivers_a_spooled_outcome(taskbadger_server, env, tmp_path, command):
    """docs/cli.md: "the next taskbadger command on this machine within a day delivers it". A quick one
    (``get``) claimed the spool file and ended before delivering it: the task stayed processing."""
    from taskbadger.delivery.spool import Entry, Spool, api_key_of

    tracked = taskbadger.create_task("spooled-run", status="processing")
    other = taskbadger.create_task("other", status="success")
    spool = tmp_path / "home" / ".local" / "state" / "taskbadger" / "spool"
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, spool_dir=False)  # as the CLI's
    Spool(spool).write(api_key_of(taskbadger.get_config()),
                       [Entry({"status": "error", "data": {"return_code": 3}}, task_id=tracked.id, final=True)])
    result = cli(*[arg.format(other=other.id) for arg in command], env=env)
    assert result.returncode == 0, result.stderr
    assert taskbadger_server.tasks[tracked.id]["status"] == "error"  # delivered before the command ended
    assert spooled_files(tmp_path) == []


def test_sigterm_while_the_outcome_waits_for_the_api_ends_at_once_with_the_commands_status(taskbadger_server, env,
                                                                                             tmp_path):
    taskbadger_server.misbehave("slow_headers", method="GET", seconds=1.0)  # the read before the final update
    try:
        returncode, stderr, stopped_in = sigterm_when(
            taskbadger_server, env, ("run", "stopped-late", "--", *fail_with(3)),
            lambda: any(r.method == "GET" for r in taskbadger_server.requests))
    finally:
        taskbadger_server.clear_faults()
    assert returncode == 3 and stopped_in < 1.0  # not 137 after a SIGKILL: SIGTERM is enough now
    assert "stopped by a signal" in stderr and len(spooled_files(tmp_path)) == 1


def test_a_create_answered_too_late_still_gets_its_outcome(taskbadger_server, env):
    # The API takes 7 s to answer the create (the call's deadline is 5 s after it is sent): the task exists,
    # and used to stay processing for ever. Now the outcome reaches it: found by the run's external id.
    taskbadger_server.set_latency(7.0, times=1, method="POST")
    result = cli("run", "slow-create", "--", *fail_with(4), env=env)
    assert result.returncode == 4
    task = taskbadger_server.wait_for(lambda: [t for t in taskbadger_server.tasks_named("slow-create")
                                               if t["status"] == "error"], timeout=20)[0]
    assert task["data"]["return_code"] == 4 and task["external_id"].startswith("taskbadger-run-")


def test_a_closed_pipe_reaches_the_command_under_capture(env):
    script = (f"set -o pipefail; {shlex.join(CLI)} run pipe --capture-output -- yes | head -1; "
              "echo \"${PIPESTATUS[0]}\"")
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    lines = done.stdout.splitlines()
    assert lines[0] == "y" and lines[-1] == "141"  # yes got SIGPIPE, as it does without taskbadger


def test_configure_says_why_the_key_should_not_be_on_the_command_line(taskbadger_server, tmp_path):
    env = make_env(tmp_path)
    helped = cli("configure", "--help", env=env)
    assert "process list" in " ".join(helped.stdout.split())
    given = cli("configure", "--key", taskbadger_server.api_key, env=env)
    assert given.returncode == 0 and "process list" in given.stderr
    assert "process list" not in cli("configure", "--key", "-", env=env, stdin=taskbadger_server.api_key).stderr


def test_usage_errors(env):
    no_command, frequency, bad_tag = cli_all((("run", "x"), env),
                                             (("run", "x", "--update-frequency", "3", "--", "true"), env),
                                             (("run", "x", "--tag", "novalue", "--", "true"), env))
    assert no_command.returncode == frequency.returncode == bad_tag.returncode == 2
    assert "--tag must be 'name=value'" in bad_tag.stderr


# -- create / update / get / list ---------------------------------------------------------------------

def test_create_update_get_in_every_format(taskbadger_server, env):
    created = cli("create", "cli-create", "-q", "--queue", "qq", "--metadata", "a=1", "--metadata", "b=x=y",
                  "--metadata-json", '{"j": [1]}', "--tag", "t=v1", "--tags-json", '{"u": "v2"}', env=env)
    assert created.returncode == 0, created.stderr
    task_id = created.stdout.strip()
    [post] = [r for r in taskbadger_server.requests if r.method == "POST"]
    assert post.json == {"name": "cli-create", "queue": "qq", "status": "processing", "value_max": 100,
                         "data": {"a": "1", "b": "x=y", "j": [1]}, "tags": {"t": "v1", "u": "v2"}}

    updated = cli("update", task_id, "--value", "40", env=env)
    assert updated.returncode == 0 and updated.stdout.startswith("Task updated: http")
    [patch] = [r for r in taskbadger_server.requests if r.method == "PATCH"]
    assert patch.json == {"value": 40}  # only what was given: the status stays as it was

    pretty, as_json, as_csv = cli_all((("get", task_id), env), (("get", task_id, "-f", "json"), env),
                                      (("get", task_id, "--format", "csv"), env))
    lines = pretty.stdout.splitlines()
    assert lines[0] == f"Task ID: {task_id}"
    assert lines[2:5] == ["Name: cli-create", "Status: processing", "Percent: 40%"]
    document = json.loads(as_json.stdout)
    assert (document["id"], document["value"], document["tags"]) == (task_id, 40, {"t": "v1", "u": "v2"})
    header, row = as_csv.stdout.splitlines()
    assert header == "Task ID,Created,Name,Status,Percent,Value,Value Max,Duration (s)"
    assert row.startswith(f"{task_id},") and ",cli-create,processing,40,40,100," in row


def test_api_errors_exit_1_without_a_traceback(taskbadger_server, env):
    missing, refused = cli_all((("get", "NoSuchTask"), env),
                               (("create", "x"), {**env, "TASKBADGER_API_KEY": WRONG_KEY}))
    assert missing.returncode == 1 and missing.stderr == "Error: no task 'NoSuchTask' in acme/demo\n"
    assert refused.returncode == 1 and "refused the API key (HTTP 401)" in refused.stderr
    assert "not-the-key" not in refused.stderr
    taskbadger_server.refuse()
    down = cli("list", env=env)
    assert down.returncode == 1 and "could not reach Task Badger" in down.stderr
    for result in (missing, refused, down):
        no_traceback(result)


def test_action_option(taskbadger_server, env):
    result = cli("create", "act", "-a", "success,error", "email", "to:me@example.com", env=env)
    assert result.returncode == 0, result.stderr
    assert "Per-task actions are deprecated" in result.stderr
    [post] = [r for r in taskbadger_server.requests if r.method == "POST"]
    assert post.json["actions"] == [{"trigger": "success,error", "integration": "email",
                                     "config": {"to": "me@example.com"}}]
    bad = cli("create", "act", "-a", "error", "pager:1", "", env=env)
    assert bad.returncode == 2 and "Unknown integration type: 'pager'" in bad.stderr


def test_list_formats_on_a_pipe_and_on_a_terminal(taskbadger_server, env):
    for name in ("first", "second"):
        taskbadger.create_task(name, status="processing")
    piped, as_json, as_pretty, limited = cli_all((("list",), env), (("list", "-f", "json"), env),
                                                 (("list", "--format", "pretty"), env), (("list", "--limit", "1"), env))
    assert piped.stdout.splitlines()[0] == "Task ID,Created,Name,Status,Percent,Value,Value Max,Duration (s)"
    assert [line.split(",")[2] for line in piped.stdout.splitlines()[1:]] == ["second", "first"]
    document = json.loads(as_json.stdout)
    assert document["next_token"] is None and [t["name"] for t in document["results"]] == ["second", "first"]
    pretty = as_pretty.stdout
    assert "Project: demo, Organization: acme" in pretty and "Progress" in pretty and "Duration" in pretty
    assert "second" in pretty and "processing" in pretty and "\x1b[" not in pretty
    # the hint is the option and the token, pasted after `list` as it is (the same on a terminal, below)
    assert len(limited.stdout.splitlines()) == 2 and limited.stderr.startswith("Next page: --start-token ")
    rest = cli("list", *shlex.split(limited.stderr.split(": ", 1)[1]), env=env)
    assert [line.split(",")[2] for line in rest.stdout.splitlines()[1:]] == ["first"]

    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen([*CLI, "list", "--limit", "1"], env=env, stdin=subprocess.DEVNULL, stdout=follower,
                            stderr=subprocess.PIPE)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=15) == 0
    on_terminal = b"".join(chunks).decode()
    assert "┏━" in on_terminal and "Task ID" in on_terminal and "Task ID,Created" not in on_terminal
    assert limited.stderr.strip() in on_terminal.splitlines()  # the same hint, unquoted, on a terminal


# -- configuration ------------------------------------------------------------------------------------

def write_config(tmp_path, text: str) -> None:
    path = tmp_path / "xdg" / "taskbadger" / "config"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_precedence_option_then_environment_then_file(taskbadger_server, tmp_path):
    # a legacy key, so that the organization and project are not taken from the key
    write_config(tmp_path, f"""
        [defaults]
        org = "acme"
        project = "demo"
        [auth]
        token = "{taskbadger_server.key}"
        host = "{taskbadger_server.url}"
    """)
    from_file = make_env(tmp_path)
    from_env = {**from_file, "TASKBADGER_PROJECT": "other"}
    file_only, env_wins, option_wins, env_host, info_run = cli_all(
        (("list",), from_file), (("list",), from_env), (("-p", "demo", "list"), from_env),
        (("list",), {**from_file, "TASKBADGER_HOST": "http://127.0.0.1:9"}),
        (("-o", "optorg", "info"), {**from_env, "TASKBADGER_ORG": "envorg"}))
    assert file_only.returncode == 0 and option_wins.returncode == 0
    assert env_wins.returncode == 1 and "HTTP 404" in env_wins.stderr
    assert env_host.returncode == 1 and "127.0.0.1:9" in env_host.stderr
    info = info_run.stdout
    assert "Organization: optorg  (option)" in info and "Project:      other  (environment)" in info
    assert f"Host:         {taskbadger_server.url}  (config file)" in info
    assert "API key:      set (legacy key test…)  (config file)" in info
    assert taskbadger_server.key not in info


def test_org_and_project_options_ignored_for_a_project_key_say_so(taskbadger_server, env):
    """A project key carries its organization and project: -o/-p were ignored without a word (only ``info`` said
    it), while --help said they override: the user asked for another project and never knew they did not get it."""
    warning = ("Warning: -o/--org 'other-org' and -p/--project 'staging' are ignored: the API key is a project key, "
               "for acme/demo, which sets the organization and the project; to use another project, use that "
               "project's key\n")
    ran, listed, same, one = cli_all(
        (("-o", "other-org", "-p", "staging", "run", "deploy", "--", "true"), env),
        (("-o", "other-org", "-p", "staging", "list", "-f", "csv"), env),
        (("-o", "acme", "-p", "demo", "list"), env),  # what the key says: nothing to warn about
        (("-p", "staging", "create", "one", "-q"), env))
    assert ran.returncode == 0 and ran.stderr == warning
    assert listed.returncode == 0 and listed.stderr == warning  # (run alongside: the list may not show deploy yet)
    assert same.returncode == 0 and same.stderr == ""
    assert one.returncode == 0 and one.stderr == "Warning: -p/--project 'staging' is ignored: the API key is a " \
        "project key, for acme/demo, which sets the organization and the project; to use another project, use " \
        "that project's key\n"
    assert {(t["organization"], t["project"]) for t in taskbadger_server.tasks.values()} == {("acme", "demo")}
    helped = " ".join(cli("--help", env=env).stdout.replace("│", " ").split())
    assert "A project key carries its own: this is then ignored, with a warning." in helped


def test_info_never_shows_the_key(taskbadger_server, env):
    result = cli("-o", "someone-else", "info", env=env)
    assert result.returncode == 0
    assert taskbadger_server.api_key not in result.stdout and taskbadger_server.key not in result.stdout
    assert "API key:      set (project key for acme/demo)  (environment)" in result.stdout
    assert "Organization: acme  (project key, environment)" in result.stdout
    assert "not the organization 'someone-else' (option)" in result.stdout


def test_info_shows_a_config_files_tags_as_text_a_terminal_does_not_act_on(taskbadger_server, env, tmp_path):
    """A [tags] value holding an escape sequence (a provisioning template's output) reached the terminal as it
    was: ``taskbadger info`` cleared the screen. It is shown escaped, as get and list show a task's."""
    write_config(tmp_path, '''
        [tags]
        host = "web\\u001b[2J1"
        note = "right\\u202eleft"
    ''')
    result = cli("info", env=env)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    assert "Tags:         host=web\\x1b[2J1, note=right\\u202eleft  (config file)" in result.stdout


def test_configure_writes_0600_and_keeps_host_tags_and_unknown_keys(taskbadger_server, tmp_path):
    write_config(tmp_path, """
        [defaults]
        org = "old"
        [auth]
        token = "old-token"
        host = "https://tb.example.com"
        [tags]
        env = "prod"
        [extra]
        keep = true
    """)
    path = tmp_path / "xdg" / "taskbadger" / "config"
    path.chmod(0o644)
    env = make_env(tmp_path)
    result = cli("configure", "--key", "-", "--tag", "team=ops", env=env, stdin=taskbadger_server.api_key + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"Config written to {path}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # the cli extra installs tomli where the standard library has no TOML reader
        import tomli as tomllib

    document = tomllib.loads(path.read_text())
    assert document == {"defaults": {"org": "old"}, "extra": {"keep": True}, "tags": {"env": "prod", "team": "ops"},
                        "auth": {"token": taskbadger_server.api_key, "host": "https://tb.example.com"}}
    assert cli("configure", "--host", taskbadger_server.url, env=env).returncode == 0
    # the file's tags are applied to what the CLI creates
    assert cli("create", "tagged", "-q", env=env).returncode == 0
    assert cli("run", "tagged-run", "--tag", "run=yes", "--", "true", env=env).returncode == 0
    assert only_task(taskbadger_server, "tagged")["tags"] == {"env": "prod", "team": "ops"}
    assert only_task(taskbadger_server, "tagged-run")["tags"] == {"env": "prod", "team": "ops", "run": "yes"}


def test_configure_in_a_new_home_and_without_a_terminal(tmp_path):
    env = make_env(tmp_path)
    no_terminal, bad = cli_all((("configure",), env), (("configure", "--key", "k", "--host", "ftp://x"), env))
    assert no_terminal.returncode == 2  # no options, no terminal to prompt on
    assert bad.returncode == 2 and "host must be a URL" in bad.stderr
    result = cli("configure", "--key", "legacy-key", "--org", "acme", "--project", "demo", env=env)
    assert result.returncode == 0
    path = tmp_path / "xdg" / "taskbadger" / "config"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_configure_under_umask_0_makes_private_directories(tmp_path):
    # The config file holds the API key: under umask 0 (some containers and supervisors), the directories made above
    # it must not be writable by every user (one could swap in a config file that sends the key elsewhere).
    env = make_env(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "home" / ".config"))
    result = subprocess.run([*CLI, "configure", "--key", "legacy-key", "--org", "acme", "--project", "demo"], env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
                            umask=0)
    assert result.returncode == 0, result.stderr
    for made in (tmp_path / "home" / ".config", tmp_path / "home" / ".config" / "taskbadger"):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
    assert stat.S_IMODE((tmp_path / "home" / ".config" / "taskbadger" / "config").stat().st_mode) == 0o600


def converse(argv: list[str], env: dict[str, str], answers: list[tuple[str, str]], timeout: float = 15) -> str:
    """Run ``argv`` on a terminal of its own; type each answer once its prompt shows. Returns the transcript."""
    import pty
    import select

    leader, follower = pty.openpty()
    # A session of its own: no controlling terminal, so hidden prompts read this pty, never the real /dev/tty.
    proc = subprocess.Popen(argv, env=env, stdin=follower, stdout=follower, stderr=follower, start_new_session=True)
    os.close(follower)
    transcript, pending, deadline = b"", list(answers), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other side closed
                break
            transcript += chunk
            # Answer once the whole prompt shows: getpass flushes what was typed before it, and click writes
            # the prompt's last character only after that.
            if pending and pending[0][0].encode() in transcript:
                os.write(leader, pending.pop(0)[1].encode() + b"\n")
        assert proc.wait(timeout=max(0.1, deadline - time.monotonic())) == 0, transcript
    finally:
        proc.kill()
        os.close(leader)
    return transcript.decode()


def test_configure_prompts_on_a_terminal(taskbadger_server, tmp_path):
    env = make_env(tmp_path)
    transcript = converse([*CLI, "configure"], env, [("API Key: ", taskbadger_server.api_key)])
    assert "Project key detected — organization: acme, project: demo" in transcript
    assert taskbadger_server.api_key not in transcript  # typed hidden
    assert "Config written to" in transcript
    assert cli("list", env={**env, "TASKBADGER_HOST": taskbadger_server.url}).returncode == 0
    # a legacy key: organization and project are asked for; the current key is kept when none is typed
    transcript = converse([*CLI, "configure"], env, [("keep the current key): ", "legacy-key"),
                                                     ("Organization slug", "acme"), ("Project slug", "demo")])
    info = cli("info", env=env).stdout
    assert "set (legacy key lega…)  (config file)" in info and "Project:      demo  (config file)" in info


# -- packaging ----------------------------------------------------------------------------------------

def test_without_typer_the_entry_point_says_how_to_install_it():
    code = "import sys; sys.modules['typer'] = None; from taskbadger.cli import main; main()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "requires the 'typer' package" in result.stderr and 'pip install "django-taskbadger[cli]"' in result.stderr
    no_traceback(result)


def test_the_sdk_and_the_command_layer_import_no_cli_framework():
    code = ("import sys, taskbadger, taskbadger.cli.commands, taskbadger.cli.run; "
            "print(sorted(m for m in ('typer', 'rich', 'click') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "[]", result.stderr


def test_version(tmp_path):
    result = cli("--version", env=make_env(tmp_path))
    assert result.returncode == 0 and result.stdout.startswith("Task Badger CLI Version: ")


def test_without_the_double_dash_what_follows_the_command_is_the_commands_own(env, tmp_path, taskbadger_server):
    """``taskbadger run "disk report" df -h`` (no ``--``, as crontab lines for the official CLI are written): options
    of ours after the command's first word (-h, --tag, --capture-output...) were taken as ours: our help was
    printed, exit 0, and the command never ran."""
    marker = tmp_path / "ran"
    script = tmp_path / "backup.py"
    script.write_text(f"import sys; open({str(marker)!r}, 'w').write(repr(sys.argv[1:]))")
    args = ["--full", "-h", "--help", "--tag", "x=yz", "--capture-output", "--", "-a"]
    ran = cli("run", "--tag", "host=web1", "backup", sys.executable, str(script), *args, env=env)
    assert ran.returncode == 0 and ran.stdout == "" and ran.stderr == "", (ran.stdout, ran.stderr)
    assert marker.read_text() == repr(args)
    task = only_task(taskbadger_server, "backup")
    assert task["status"] == "success" and task["tags"] == {"host": "web1"}


def test_an_unknown_option_before_the_command_says_to_put_the_double_dash(env, tmp_path, taskbadger_server):
    slip = cli("run", "backup", "--full", "true", env=env)
    assert slip.returncode == 2  # refused before anything ran, as any usage error
    said = " ".join(slip.stderr.replace("│", " ").split())
    assert "No such option: --full. If it is an option of the command to run, put -- before the command: " \
           "taskbadger run NAME -- COMMAND --full ..." in said
    assert not taskbadger_server.tasks
    mistyped = cli("run", "--frequency", "9", "backup", "--", "true", env=env)  # our own option: click's message
    assert mistyped.returncode == 2 and "put -- before" not in mistyped.stderr
