"""The local spool: what a process could not deliver before it ended, delivered by the next one."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

import taskbadger
from taskbadger import inline, spooling
from taskbadger.delivery import merge, sender
from taskbadger.delivery.queue import MAX_PENDING_TASKS, pending_updates
from taskbadger.delivery.sender import RETRY_HORIZON
from taskbadger.delivery.spool import _NAMESPACE, MAX_BYTES, STALE_FOREIGN_CLAIM, Entry, Spool, api_key_of

from .workers import ROOT


@pytest.fixture
def spool_dir(tmp_path):
    return tmp_path / "spool"


@pytest.fixture
def api(taskbadger_server, spool_dir):
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, spool_dir=spool_dir,
                    timeout=(0.5, 0.5))
    assert sender.flush(5)  # this process's queue starts empty...
    queue = pending_updates()
    with queue.cond:
        queue.failing = False  # ...and knows nothing of the API yet, as a new process
        queue.paused_until = 0.0  # (nor of a Retry-After an earlier test's API asked for)
    yield taskbadger_server
    taskbadger_server.clear_faults()
    sender.flush(5)


def files(directory):
    return sorted(p for p in directory.iterdir()) if directory.exists() else []


@pytest.mark.parametrize("fault", ["refused", "503", "429", "not_json", "reset"])
def test_an_ending_process_spools_at_once_while_the_api_is_failing(api, spool_dir, fault):
    task = taskbadger.create_task("outage")
    if fault == "refused":
        api.refuse()
    elif fault in ("not_json", "reset"):  # a proxy's HTML page with a 200, an answer cut: was it taken? sent again
        api.misbehave(fault, method="PATCH")
    else:  # answering, but not taking updates: a 429 asks for a minute of quiet, longer than the process has
        api.fail(int(fault), method="PATCH", retry_after=60 if fault == "429" else None)
    before = taskbadger.stats()
    sender.submit(task.id, {"status": "success", "value": 10}, final=True)
    api.wait_for(lambda: taskbadger.stats()["retried"] > before["retried"])  # the queue knows the API is failing
    started = time.monotonic()
    spooling.shutdown(10.0)
    assert time.monotonic() - started < 0.5  # not the 10 s flush
    stats = taskbadger.stats()
    assert (stats["spooled"] - before["spooled"], stats["queued"], stats["in_flight"], stats["spool"]) == (1, 0, 0, 1)
    [written] = files(spool_dir)
    assert stat.S_IMODE(written.stat().st_mode) == 0o600 and stat.S_IMODE(spool_dir.stat().st_mode) == 0o700
    content = written.read_bytes()
    assert api.key.encode() not in content and api.api_key.encode() not in content  # no key on disk
    assert json.loads(content)["task_id"] == task.id


def test_a_final_state_the_api_refuses_at_the_end_is_dropped_counted_and_said_not_spooled(api, spool_dir, tb_log):
    """A 400 is the API's last word on that update: spooling it would only have it refused again by the next
    process. The ending process drops it at once, counts it, and says so."""
    task = taskbadger.create_task("refused at the end")
    before = taskbadger.stats()
    api.fail(400, method="PATCH", detail="refused by a rule of this API")
    sender.submit(task.id, {"status": "success"}, final=True)
    started = time.monotonic()
    spooling.shutdown(10.0)
    assert time.monotonic() - started < 0.5
    stats = taskbadger.stats()
    assert (stats["dropped"] - before["dropped"], stats["spooled"] - before["spooled"], stats["spool"]) == (1, 0, 0)
    assert files(spool_dir) == []
    assert "refused an update" in tb_log.text and "it is dropped" in tb_log.text


def test_a_healthy_api_still_gets_the_normal_flush(api, spool_dir):
    task = taskbadger.create_task("healthy")
    api.set_latency(0.3)
    sender.submit(task.id, {"status": "success"}, final=True)
    spooling.shutdown(10.0)
    assert api.get_task(task.id)["status"] == "success" and files(spool_dir) == []


def test_a_hanging_api_is_not_waited_for_either(api, spool_dir, tb_log):
    task = taskbadger.create_task("hang")
    api.hang()
    sender.submit(task.id, {"status": "success"}, final=True)
    started = time.monotonic()
    spooling.shutdown(10.0)  # its first request waits: after a second without an answer, it is spooled
    assert time.monotonic() - started < 1.0 + 0.5
    assert taskbadger.stats()["spool"] == 1
    # the reason found during the flush, not the one read before it (which said the tasks could not be found)
    assert "the API is not answering" in tb_log.text, tb_log.text


DELIVER = """
import sys, taskbadger
from taskbadger import inline, spooling
taskbadger.init(host=sys.argv[1], token=sys.argv[2], spool_dir=sys.argv[3])
print(spooling.deliver_spooled(), taskbadger.flush(10), taskbadger.stats()["spool"])
"""


def deliver_in_another_process(server, spool_dir):
    done = subprocess.run([sys.executable, "-c", DELIVER, server.url, server.api_key, str(spool_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


ENDING = """
import sys, time, taskbadger
from taskbadger.delivery import merge, sender
from taskbadger.delivery.sender import RETRY_HORIZON
taskbadger.init(host=sys.argv[1], token=sys.argv[2], spool_dir=sys.argv[3])
for task_id in sys.argv[4:]:
    sender.submit(task_id, {"status": "error", "data": {"return_code": 3}}, final=True)
deadline = time.monotonic() + 10
while taskbadger.stats()["retried"] < 1 and time.monotonic() < deadline:
    time.sleep(0.01)
print("ending", flush=True)
"""  # and the process ends: its atexit hands what it holds to the spool


def end_a_process_during_an_outage(server, spool_dir, task_ids):
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", ENDING, server.url, server.api_key, str(spool_dir), *task_ids],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0 and done.stdout.strip() == "ending", done.stderr
    return time.monotonic() - started


def test_the_next_process_delivers_what_was_spooled_once_the_api_answers(taskbadger_server, spool_dir):
    tasks = [taskbadger.create_task(f"spooled {i}") for i in range(5)]
    taskbadger_server.refuse()
    end_a_process_during_an_outage(taskbadger_server, spool_dir, [t.id for t in tasks])
    assert Spool(spool_dir).waiting(api_key_of(taskbadger.get_config())) == 5
    taskbadger_server.accept()
    assert deliver_in_another_process(taskbadger_server, spool_dir) == ["5", "True", "0"]
    assert [taskbadger_server.get_task(t.id)["status"] for t in tasks] == ["error"] * 5
    assert [taskbadger_server.get_task(t.id)["data"] for t in tasks] == [{"return_code": 3}] * 5
    assert files(spool_dir) == []  # delivered: the file is gone
    assert deliver_in_another_process(taskbadger_server, spool_dir) == ["0", "True", "0"]  # never twice


SHORT_LIVED = """
import sys, threading, taskbadger
from taskbadger import inline, spooling
# this process ends before its spool thread gets to run, as a short command on a busy machine does
spooling.start_daemon_thread = lambda target, name: threading.Thread(target=target, name=name, daemon=True)
taskbadger.init(host=sys.argv[1], token=sys.argv[2], spool_dir=sys.argv[3])
spooling.shutdown(5.0)  # as ``taskbadger run`` ends: it looks at the spool once and delivers
"""


def test_a_process_that_ends_before_its_spool_thread_runs_still_delivers_the_spool(taskbadger_server, spool_dir):
    task = taskbadger.create_task("spooled by a run")
    taskbadger_server.refuse()
    end_a_process_during_an_outage(taskbadger_server, spool_dir, [task.id])
    taskbadger_server.accept()
    done = subprocess.run([sys.executable, "-c", SHORT_LIVED, taskbadger_server.url, taskbadger_server.api_key,
                           str(spool_dir)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert taskbadger_server.get_task(task.id)["status"] == "error"
    assert files(spool_dir) == []


def test_a_process_of_another_project_leaves_the_entries_alone(taskbadger_server, spool_dir):
    task = taskbadger.create_task("mine")
    taskbadger_server.refuse()
    end_a_process_during_an_outage(taskbadger_server, spool_dir, [task.id])
    taskbadger_server.accept()
    import base64

    other = base64.b64encode(b"acme/other-project/test-key").decode()
    done = subprocess.run([sys.executable, "-c", DELIVER, taskbadger_server.url, other, str(spool_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["0", "True", "0"]
    assert len(files(spool_dir)) == 1


def test_spool_off_means_dropped_counted_and_said(taskbadger_server, tb_log):
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, spool_dir=False)
    assert sender.flush(5)
    task = taskbadger.create_task("nowhere")
    taskbadger_server.refuse()
    sender.submit(task.id, {"status": "success"}, final=True)
    taskbadger_server.wait_for(lambda: taskbadger.stats()["retried"] >= 1)
    before = taskbadger.stats()["dropped"]
    spooling.shutdown(10.0)
    taskbadger_server.accept()
    assert taskbadger.stats()["dropped"] == before + 1
    assert any("the spool is off" in r.getMessage() for r in tb_log.records)


def test_the_directories_the_spool_makes_are_private_whatever_the_umask(tmp_path):
    # A process started with umask 0 (some containers and supervisors do): the directories made above the spool's
    # own must not be left writable by every user.
    spool_dir = tmp_path / "state" / "taskbadger" / "spool"
    mode_before = stat.S_IMODE(tmp_path.stat().st_mode)
    code = ("import sys; from taskbadger.delivery.spool import Entry, Spool; "
            "print(Spool(sys.argv[1]).write('a' * 16, [Entry({'status': 'success'}, task_id='T' * 26)]))")
    out = subprocess.run([sys.executable, "-c", code, str(spool_dir)], capture_output=True, text=True, check=True,
                         umask=0)
    assert out.stdout.strip() == "(1, 0)", out
    for made in (tmp_path / "state", tmp_path / "state" / "taskbadger", spool_dir):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
    assert stat.S_IMODE(tmp_path.stat().st_mode) == mode_before  # there before: left as it was


def test_files_of_a_rotated_api_key_expire_after_the_final_horizon(spool_dir, tb_log):
    # The key was rotated after an outage: nobody reads the old key's files any more. Left for ever, they held the
    # spool's room until it refused every write. Expired ones go; a newer format's, and recent ones, stay.
    old_key, new_key, day = "o" * 16, "n" * 16, 24 * 3600.0
    spool = Spool(spool_dir)
    spool.write(old_key, [Entry({"status": "success"}, task_id="A" * 26, final=True, since=time.time() - 2 * day)])
    [expired] = files(spool_dir)
    spool.write(old_key, [Entry({"status": "success"}, task_id="B" * 26, final=True)])
    [recent] = [p for p in files(spool_dir) if p != expired]
    newer = spool_dir / expired.name.replace("o" * 16, "o" * 15 + "p")  # another old key's, by a newer version
    newer.write_text('{"v":2,"fields":{},"since":0}\n')
    for path in (expired, newer):
        os.utime(path, (time.time() - 2 * day, time.time() - 2 * day))
    claims, dropped = Spool(spool_dir).claim(new_key, 900, final_horizon=day)
    assert (claims, dropped) == ([], 0)
    assert files(spool_dir) == sorted([recent, newer])
    assert any("1 spool file(s) of another API key" in m for m in tb_log.messages)


def test_a_directory_others_can_write_is_not_used(spool_dir, tb_log):
    spool_dir.mkdir(mode=0o700)
    os.chmod(spool_dir, 0o777)
    written, dropped = Spool(spool_dir).write("a" * 16, [Entry({"status": "success"}, task_id="T" * 26)])
    assert (written, dropped) == (0, 1)
    assert any("can be written by other users" in r.getMessage() for r in tb_log.records)
    assert list(spool_dir.iterdir()) == []


def test_a_corrupt_line_is_skipped_with_one_log_line(spool_dir, tb_log):
    spool = Spool(spool_dir)
    spool.write("k" * 16, [Entry({"status": "success"}, task_id="A" * 26), Entry({"value": 2}, task_id="B" * 26)])
    [path] = files(spool_dir)
    good = path.read_text().splitlines()
    path.write_text("\n".join([good[0], "{not json", '{"v": 1, "task_id": "../../x", "fields": {}, "since": 1}',
                               '{"v": 1, "task_id": "C' + "C" * 25 + '", "fields": {"status": "success", '
                               '"evil": "x", "data": {"ok": 1}}, "since": ' + str(time.time()) + "}", good[1]]))
    path.rename(path.with_name(path.name.replace("-2.jsonl", "-5.jsonl")))  # five lines, as its name says
    claims, dropped = spool.claim("k" * 16, 900)
    [claim] = claims
    assert [(e.task_id, e.fields) for e in claim.entries] == [
        ("A" * 26, {"status": "success"}), ("C" * 26, {"status": "success", "data": {"ok": 1}}),
        ("B" * 26, {"value": 2})]  # an unknown field is not kept
    assert dropped == 2
    assert len([r for r in tb_log.records if "are not updates" in r.getMessage()]) == 1


def test_a_file_of_a_newer_format_is_left_as_it_is(taskbadger_server, spool_dir):
    """A newer SDK sharing the spool (a rolling deploy, two images on one volume) writes a format this one does not
    know: it was taken, its lines skipped as "not updates" and the file deleted, its final states lost for the
    newer processes that could have delivered them. It is now left as it is, with one log line."""
    task = taskbadger.create_task("newer")
    api = api_key_of(taskbadger.get_config())
    spool = Spool(spool_dir)
    spool.write(api, [Entry({"status": "success"}, task_id=task.id, final=True)])
    [ours] = files(spool_dir)
    newer = spool_dir / ours.name.replace(ours.name.split("-")[1], str(int(ours.name.split("-")[1]) - 1), 1)
    lines = [json.dumps({"v": 2, "task": task.id, "patch": {"status": "error"}, "at": time.time()})] * 2
    newer.write_text("\n".join(lines) + "\n")
    newer = newer.rename(newer.with_name(newer.name.replace("-1.jsonl", "-2.jsonl")))
    content = newer.read_bytes()
    done = subprocess.run([sys.executable, "-c", DELIVER + "spooling.deliver_spooled()\n"
                           "print(taskbadger.stats()['given_up'])",
                           taskbadger_server.url, taskbadger_server.api_key, str(spool_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "True", "2", "0"]  # taken (ours), flushed, left waiting, given up
    assert files(spool_dir) == [newer] and newer.read_bytes() == content
    assert done.stderr.count("newer version") == 1, done.stderr  # once, not at each look
    assert taskbadger_server.get_task(task.id)["status"] == "success"


@pytest.mark.parametrize("left", [0, 1])
def test_a_file_cut_short_says_what_it_lost(taskbadger_server, spool_dir, left):
    """A file renamed into place whose data never reached the disk (the machine stopped: it is empty, or holds
    its first lines only) lost its missing final states without a word or a count."""
    tasks = [taskbadger.create_task(f"cut short {i}") for i in range(3)]
    Spool(spool_dir).write(api_key_of(taskbadger.get_config()),
                           [Entry({"status": "success"}, task_id=task.id, final=True) for task in tasks])
    [path] = files(spool_dir)
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:left]))
    done = subprocess.run([sys.executable, "-c", DELIVER + "print(taskbadger.stats()['given_up'])",
                           taskbadger_server.url, taskbadger_server.api_key, str(spool_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(left), "True", "0", str(3 - left)]  # taken, flushed, left, given up
    assert f"holds {3 - left} update(s) fewer than its name says (3); they are lost" in done.stderr
    assert [t["status"] for t in map(taskbadger_server.get_task, (task.id for task in tasks))] == \
        ["success"] * left + ["pending"] * (3 - left)


def test_entries_older_than_the_retry_horizon_are_dropped_and_counted(spool_dir, tb_log):
    spool = Spool(spool_dir)
    spool.write("k" * 16, [Entry({"status": "success"}, task_id="A" * 26, since=time.time() - 3600),
                           Entry({"status": "success"}, task_id="B" * 26)])
    [claim], dropped = spool.claim("k" * 16, 900)
    assert [e.task_id for e in claim.entries] == ["B" * 26] and dropped == 1
    assert any("too old (900 s" in r.getMessage() for r in tb_log.records)


def test_a_final_state_is_kept_a_day(taskbadger_server, spool_dir):
    """``taskbadger run`` in an hourly crontab spooled its outcome during an outage: the next run, an hour later,
    delivers it (it was dropped as older than the retry horizon, and the task stayed processing)."""
    task = taskbadger.create_task("hourly")
    Spool(spool_dir).write(api_key_of(taskbadger.get_config()), [
        Entry({"status": "error", "data": {"return_code": 3}}, task_id=task.id, final=True, since=time.time() - 3600),
        Entry({"value": 5}, task_id="P" * 26, since=time.time() - 3600)])  # progress: the retry horizon
    assert deliver_in_another_process(taskbadger_server, spool_dir) == ["1", "True", "0"]
    assert taskbadger_server.get_task(task.id)["status"] == "error"


def test_a_spooled_success_still_completes_the_progress_of_an_earlier_attempt(taskbadger_server, spool_dir):
    """A retried job's success that did not know what its first attempt reported (``COMPLETE_PROGRESS``) keeps
    that through the spool: it ends at 4 of 4, not 1 of 4."""
    task = taskbadger.create_task("retried", value=1, value_max=4)
    Spool(spool_dir).write(api_key_of(taskbadger.get_config()), [
        Entry({"status": "success", merge.COMPLETE_PROGRESS: True}, task_id=task.id, final=True)])
    assert deliver_in_another_process(taskbadger_server, spool_dir) == ["1", "True", "0"]
    delivered = taskbadger_server.get_task(task.id)
    assert (delivered["status"], delivered["value"], delivered["value_max"]) == ("success", 4, 4)


def test_a_spooled_progress_update_never_undoes_a_final_state_another_process_sent(taskbadger_server, spool_dir):
    """A pool child killed by a hard time limit spooled its ``processing`` while the worker's main process ended the
    task ``error``: delivered later, it put the task back to ``processing`` for good."""
    ended, running = taskbadger.create_task("ended"), taskbadger.create_task("running")
    ended.error()
    Spool(spool_dir).write(api_key_of(taskbadger.get_config()), [
        Entry({"status": "processing", "value": 3}, task_id=ended.id),
        Entry({"status": "processing", "value": 3}, task_id=running.id)])
    assert deliver_in_another_process(taskbadger_server, spool_dir) == ["2", "True", "0"]
    assert taskbadger_server.get_task(ended.id)["status"] == "error"
    assert (taskbadger_server.get_task(running.id)["status"], taskbadger_server.get_task(running.id)["value"]) == \
        ("processing", 3)


def test_a_spooled_final_state_never_replaces_a_later_run_of_its_task(taskbadger_server, spool_dir):
    """A worker spooled its job's ``error`` during an outage; the job, retried by hand, ran again elsewhere and ended
    ``success``; the spool, delivered after, put the task back to ``error`` for good. An outcome spooled after the
    task's last end (the run again's own, spooled in turn) is still delivered."""
    rerun, later = taskbadger.create_task("retried by hand"), taskbadger.create_task("spooled last")
    rerun.update(status="success", end_time="2026-01-01T11:00:05+00:00")
    later.update(status="error", end_time="2026-01-01T10:00:05+00:00")
    Spool(spool_dir).write(api_key_of(taskbadger.get_config()), [
        Entry({"status": "error", "end_time": "2026-01-01T10:00:05+00:00", "data": {"exception": "boom"}},
              task_id=rerun.id, final=True),
        Entry({"status": "success", "end_time": "2026-01-01T11:00:05Z"}, task_id=later.id, final=True)])
    assert deliver_in_another_process(taskbadger_server, spool_dir) == ["2", "True", "0"]
    assert (taskbadger_server.get_task(rerun.id)["status"], taskbadger_server.get_task(rerun.id)["data"]) == \
        ("success", None)
    assert taskbadger_server.get_task(later.id)["status"] == "success"


def test_a_spooled_run_again_keeps_the_first_start_of_its_task(taskbadger_server, spool_dir):
    """A message redelivered after its worker was lost runs its task again, whose first start is kept (its
    ``start_time`` is sent only if the task has none). Spooled, that condition was left out as an unknown field:
    the run again's start replaced the first one (the task's time to start and duration misreported)."""
    task = taskbadger.create_task("redelivered")
    sender.submit(task.id, {"status": "processing", "start_time": "2026-01-01T10:00:00Z"})
    assert sender.flush(5)
    Spool(spool_dir).write(api_key_of(taskbadger.get_config()), [Entry(
        {"status": "success", "start_time": "2026-01-01T11:00:00Z", merge.KEEP_START: True,
         "end_time": "2026-01-01T11:00:05Z"}, task_id=task.id, final=True)])
    assert deliver_in_another_process(taskbadger_server, spool_dir) == ["1", "True", "0"]
    delivered = taskbadger_server.get_task(task.id)
    assert (delivered["status"], delivered["start_time"][:19]) == ("success", "2026-01-01T10:00:00")


def test_every_condition_an_update_may_carry_is_kept_in_the_spool():
    markers = {value for name, value in vars(merge).items() if name.isupper() and isinstance(value, str)}
    values = {merge.DROP_DATA: ["x"], merge.MERGE_DATA: {"a": 1}, merge.SEND_NULL: ["stale_timeout"]}
    fields = {marker: values.get(marker, True) for marker in markers}
    assert set(Entry.from_json(Entry(fields, task_id="A" * 26).to_json()).fields) == markers


def test_how_to_create_a_runs_task_is_kept_in_the_spool_only_as_the_api_takes_it():
    from taskbadger.delivery.spool import CREATE_TASK

    body = {"name": "nightly", "status": "error", "data": {"return_code": 3}, "tags": {"host": "web1"},
            "external_id": "taskbadger-run-1", "start_time": "2026-01-01T10:00:00+00:00"}
    spec = {"body": body, "monitor_id": "6f1c0a4e-8a2b-4f0e-9a55-0c6f2b1d9e11"}
    for kept in (spec, {**spec, "monitor_id": None}):
        entry = Entry.from_json(Entry({"status": "error", CREATE_TASK: kept}, external_id="taskbadger-run-1").to_json())
        assert entry.fields == {"status": "error", CREATE_TASK: kept}
    for refused in ({**spec, "monitor_id": "not-a-uuid"}, {"body": {**body, "status": "done"}},
                    {"body": {**body, "_taskbadger_unless_final": True}}, {"body": {"status": "error"}}):
        entry = Entry.from_json(Entry({"status": "error", CREATE_TASK: refused}, external_id="r").to_json())
        assert entry.fields == {"status": "error"}  # left out, the outcome kept: as an earlier version reads it


def spool_file(spool_dir, count):
    """A path named as a spool file of this API holding ``count`` entries (made the way the spool makes it)."""
    spool_dir.mkdir(mode=0o700, exist_ok=True)
    return spool_dir / f"{api_key_of(taskbadger.get_config())}-{time.time_ns()}-1-abcd-{count}.jsonl"


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero"])
def test_what_is_not_a_spool_file_is_not_read(taskbadger_server, spool_dir, kind):
    """A FIFO named as a spool file hung the scan (and the process's shutdown) for ever; a link to /dev/zero took
    gigabytes of memory."""
    path = spool_file(spool_dir, 1)
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    else:
        os.symlink("/dev/zero", path)
    assert deliver_in_another_process(taskbadger_server, spool_dir) == ["0", "True", "0"]  # within its timeout
    assert files(spool_dir) == []


def test_a_file_holding_more_than_its_name_says_takes_no_more_than_that(taskbadger_server, spool_dir):
    """Its name says 1 entry; it held 20,000 final states, which filled the taking process's whole queue (the half
    kept for its own tasks too), and its own final states were dropped."""
    tasks = [taskbadger.create_task(f"listed {i}") for i in range(3)]
    path = spool_file(spool_dir, 1)
    lines = [Entry({"status": "success"}, task_id=t.id, final=True).to_json() for t in tasks]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    assert deliver_in_another_process(taskbadger_server, spool_dir) == ["1", "True", "0"]
    assert [taskbadger_server.get_task(t.id)["status"] for t in tasks] == ["success", "pending", "pending"]


def test_spooled_fields_of_the_wrong_type_are_left_out_and_the_rest_is_delivered(taskbadger_server, spool_dir):
    """value "5", a start time with a line break, an end time that is not a time, a stale timeout of 0 or a maximum
    run time past the API's 32 bits, or a 2 MB name were sent as they were, and the API's 400 lost the whole update,
    its status with it; a string of keys to drop removed each of its letters."""
    task = taskbadger.create_task("typed", data={"a": 1, "b": 2, "keep": 3})
    Spool(spool_dir).write(api_key_of(taskbadger.get_config()), [
        Entry({"status": "success", "value": "5", "start_time": "2026-01-01\r\nX: y", "end_time": "2026-99-99T00:00",
               "stale_timeout": 0, "max_runtime": 2**40, "name": "n" * 2_000_000,
               merge.DROP_DATA: "ab", merge.COMPLETE_PROGRESS: "yes"}, task_id=task.id, final=True)])
    assert deliver_in_another_process(taskbadger_server, spool_dir) == ["1", "True", "0"]
    delivered = taskbadger_server.get_task(task.id)
    assert (delivered["status"], delivered["name"]) == ("success", "typed")
    assert delivered["data"] == {"a": 1, "b": 2, "keep": 3}
    [patch] = [r for r in taskbadger_server.requests if r.method == "PATCH" and r.task_id == task.id]
    assert patch.json == {"status": "success"}


def test_a_spooled_update_never_replaces_a_newer_one_this_process_queued(api, spool_dir):
    """A Procrastinate retry during an outage: worker A ended (its 'pending' spooled), worker B ran the next
    attempt and queued its success; B then took A's spool, whose older 'pending' was merged over the success, and
    the task stayed pending."""
    task = taskbadger.create_task("retried")
    api.refuse()
    sender.submit(task.id, {"status": "success", "data": {"attempts": 2}}, final=True)
    api.wait_for(lambda: taskbadger.stats()["retried"] >= 1, timeout=10)
    Spool(spool_dir).write(api_key_of(taskbadger.get_config()), [
        Entry({"status": "pending", "data": {"attempts": 1}}, task_id=task.id, since=time.time() - 10)])
    assert spooling.deliver_spooled() == 1
    api.accept()
    assert sender.flush(20)
    delivered = api.get_task(task.id)
    assert (delivered["status"], delivered["data"]) == ("success", {"attempts": 2})


def test_a_spooled_update_never_replaces_a_newer_one_this_process_has_in_flight(api, spool_dir):
    """A prefork child killed by a hard time limit while the API hung spooled its 'processing'; the worker's main
    process took it from the spool while its own 'error' for the task was in flight. That request timed out, and
    when it was queued again the older 'processing' was merged over the error: the task stayed processing for good
    (3 of 3 runs with a real worker)."""
    taskbadger.init(token=api.api_key, host=api.url, spool_dir=spool_dir, timeout=(0.5, 5.0))
    task = taskbadger.create_task("time limit")
    api.hang(times=1, method="PATCH")
    retried = taskbadger.stats()["retried"]
    sender.submit(task.id, {"status": "error", "data": {"exception": "TimeLimitExceeded"}}, final=True)
    api.wait_for(lambda: taskbadger.stats()["in_flight"] == 1)
    Spool(spool_dir).write(api_key_of(taskbadger.get_config()), [
        Entry({"status": "processing", "value": 3}, task_id=task.id, since=time.time() - 10)])
    assert spooling.deliver_spooled() == 1
    assert taskbadger.stats()["in_flight"] == 1  # taken while the error was in flight (for 5 s)
    assert sender.flush(20) and taskbadger.stats()["retried"] == retried + 1  # it timed out, and was sent again
    delivered = api.get_task(task.id)
    assert (delivered["status"], delivered["value"]) == ("error", 3)


def test_an_old_final_state_taken_from_the_spool_is_retried_not_dropped(api, spool_dir):
    task = taskbadger.create_task("taken an hour later")
    api.refuse()
    before = taskbadger.stats()
    Spool(spool_dir).write(api_key_of(taskbadger.get_config()), [
        Entry({"status": "success"}, task_id=task.id, final=True, since=time.time() - 3600)])
    spooling.deliver_spooled()
    api.wait_for(lambda: taskbadger.stats()["retried"] >= before["retried"] + 2)
    assert taskbadger.stats()["dropped"] == before["dropped"]
    api.accept()
    assert sender.flush(10) and api.get_task(task.id)["status"] == "success"


def _claim_all(directory, queue, done):
    claims, _ = Spool(directory).claim("k" * 16, 900)
    queue.put(sorted(e.task_id for claim in claims for e in claim.entries))
    done.wait(20)  # a live process keeps its claims (one that died would have them taken over)


# It forks a process that has threads, on purpose: billiard's prefork pool does (Python 3.12 warns about it).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
def test_two_processes_never_take_the_same_file(spool_dir):
    spool = Spool(spool_dir)
    ids = [f"T{i:025d}" for i in range(40)]
    for i in range(0, 40, 2):
        spool.write("k" * 16, [Entry({"value": 1}, task_id=ids[i]), Entry({"value": 1}, task_id=ids[i + 1])])
    context = multiprocessing.get_context("fork")
    queue, done = context.Queue(), context.Event()
    claimers = [context.Process(target=_claim_all, args=(spool_dir, queue, done)) for _ in range(4)]
    for process in claimers:
        process.start()
    taken = [queue.get(timeout=20) for _ in claimers]
    done.set()
    for process in claimers:
        process.join(10)
    flat = sorted(task_id for part in taken for task_id in part)
    assert flat == ids  # every update taken exactly once


def test_a_claim_whose_process_died_is_taken_over(spool_dir):
    spool = Spool(spool_dir)
    spool.write("k" * 16, [Entry({"value": 1}, task_id="A" * 26)])
    [path] = files(spool_dir)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.rename(path.with_name(path.name + f".claimed-{dead.pid}"))
    [claim], _ = spool.claim("k" * 16, 900)
    assert [e.task_id for e in claim.entries] == ["A" * 26]


HOLD = """
import sys, taskbadger
from taskbadger import spooling
taskbadger.init(host=sys.argv[1], token=sys.argv[2], spool_dir=sys.argv[3])
print(spooling.deliver_spooled(), flush=True)
sys.stdin.readline()  # it holds what it took (the API is down) until it is told to end
"""


def test_a_live_process_keeps_what_it_took_however_old_the_file(taskbadger_server, spool_dir):
    """A claim's age was the age of its file (a rename keeps the mtime): a file written more than ``STALE_CLAIM``
    ago (an outage that began 20 minutes earlier) was taken from the live process that had just taken it by the
    next process that looked, and the next: each queued the same updates, and each spooled them again when it
    ended, so that the copies multiplied. A live holder keeps its claims fresh."""
    task = taskbadger.create_task("an outage 20 minutes long")
    taskbadger_server.refuse()
    api, old = api_key_of(taskbadger.get_config()), time.time() - 1200
    Spool(spool_dir).write(api, [Entry({"status": "success"}, task_id=task.id, final=True, since=old)])
    [path] = files(spool_dir)
    os.utime(path, (old, old))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, taskbadger_server.url, taskbadger_server.api_key,
                               str(spool_dir)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "1"
        assert Spool(spool_dir).claim(api, 900, final_horizon=86400) == ([], 0)  # left to its live holder
        [claimed] = files(spool_dir)
        os.utime(claimed, (old, old))  # as if it had held it for 20 minutes: it touches it at each look
        taskbadger_server.wait_for(lambda: time.time() - claimed.stat().st_mtime < 60, timeout=30)
        assert Spool(spool_dir).claim(api, 900, final_horizon=86400) == ([], 0)
    finally:
        holder.communicate("\n", timeout=30)
    assert Spool(spool_dir).waiting(api) == 1  # spooled again by its holder: one copy


CLAIM_NOW = """
import sys
from taskbadger.delivery.spool import Spool
claims, _ = Spool(sys.argv[1]).claim(sys.argv[2], 900, final_horizon=86400)
print(len(claims))
"""


def _unshare_pid():
    """The command that runs a process as pid 1 of a new pid namespace (a container's), or None where it cannot."""
    try:
        done = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except OSError:
        return None
    return ["unshare", "--pid", "--fork"] if done.returncode == 0 and done.stdout.strip() == "1" else None


def test_a_process_in_another_container_leaves_a_live_holders_claim(taskbadger_server, spool_dir):
    """Containers sharing a spool volume, each with its pid 1: a claim names a pid, and a pid means nothing in
    another pid namespace. The other container's pid 1 took the claim of the live holder for "an earlier process
    with its pid", queued the same updates and spooled them again: copies, passed back and forth every 10 s."""
    unshare = _unshare_pid()
    if unshare is None:
        pytest.skip("cannot make a pid namespace here (unshare --pid needs root or user namespaces)")
    task = taskbadger.create_task("two containers, one spool")
    taskbadger_server.refuse()
    api = api_key_of(taskbadger.get_config())
    Spool(spool_dir).write(api, [Entry({"status": "success"}, task_id=task.id, final=True)])
    holder = subprocess.Popen([*unshare, sys.executable, "-c", HOLD, taskbadger_server.url,
                               taskbadger_server.api_key, str(spool_dir)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "1"
        [claimed] = files(spool_dir)
        assert ".claimed-1-" in claimed.name  # the holder is pid 1, as the other container's process is
        other = subprocess.run([*unshare, sys.executable, "-c", CLAIM_NOW, str(spool_dir), api], cwd=ROOT,
                               capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert other.returncode == 0, other.stderr
        assert other.stdout.strip() == "0"  # left to its live holder
        assert files(spool_dir) == [claimed]
    finally:
        holder.communicate("\n", timeout=30)
    assert Spool(spool_dir).waiting(api) == 1  # spooled again by its holder: one copy


def test_a_claim_from_another_pid_namespace_is_taken_once_its_holder_stops_touching_it(spool_dir):
    spool = Spool(spool_dir)
    spool.write("k" * 16, [Entry({"value": 1}, task_id="A" * 26)])
    [path] = files(spool_dir)
    claimed = path.rename(path.with_name(path.name + f".claimed-{os.getpid()}-0badc0de-ffffffff"))
    assert spool.claim("k" * 16, 900) == ([], 0)  # touched just now: its holder lives, whatever its pid is here
    old = time.time() - STALE_FOREIGN_CLAIM - 5
    os.utime(claimed, (old, old))  # a container killed a minute ago
    [claim], _ = spool.claim("k" * 16, 900)
    assert [e.task_id for e in claim.entries] == ["A" * 26]


WRITER = """
import sys, time
from taskbadger.delivery.spool import Entry, Spool
spool = Spool(sys.argv[1])
n = 0
print("ready", flush=True)
while True:
    spool.write("k" * 16, [Entry({"value": n, "data": {"pad": "x" * 2000}}, task_id=f"T{n:025d}") for _ in range(1)]
                + [Entry({"value": n, "data": {"pad": "y" * 2000}}, task_id=f"U{n:025d}")])
    n += 1
"""


def test_a_process_killed_while_it_writes_the_spool_leaves_only_whole_files(spool_dir):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(spool_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    assert writer.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 10
    while len(files(spool_dir)) < 50 and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the writer's progress, under a deadline
    writer.send_signal(signal.SIGKILL)
    writer.wait(10)
    written = [p for p in files(spool_dir) if not p.name.startswith(".")]
    claims, dropped = Spool(spool_dir).claim("k" * 16, 900)
    entries = [e for claim in claims for e in claim.entries]
    assert dropped == 0  # no half-written file is ever read
    assert len(claims) == len(written) and len(entries) == 2 * len(written)
    values = sorted(e.fields["value"] for e in entries if e.task_id.startswith("T"))
    assert values == list(range(len(written)))  # each whole file once, none missing before the kill


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_a_spool_file_is_on_disk_before_it_is_renamed_into_place(spool_dir, tmp_path):
    """A file renamed into place before its data reached the disk is left empty or cut short by a machine that
    stops right after (a host crash, a power cut: its final states lost); and a rename not on disk leaves the
    temporary file, removed unread later. The file is synced before its rename, and the directory after it."""
    trace = tmp_path / "trace"
    done = subprocess.run(["strace", "-f", "-qq", "-e", "trace=openat,fsync,fdatasync,rename,renameat,renameat2",
                           "-o", str(trace), sys.executable, "-c", WRITE_ONE, str(spool_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if done.returncode != 0 and "ptrace" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    calls = [line.split(None, 1)[1] for line in trace.read_text().splitlines() if " " in line]
    opened = next(i for i, call in enumerate(calls) if call.startswith("openat(") and ".jsonl.tmp" in call)
    renamed = next(i for i, call in enumerate(calls) if call.startswith("rename") and ".jsonl.tmp" in call)
    made = [call.split(" =")[0].rstrip() for call in calls]  # the calls, without their results
    assert f"fsync({calls[opened].rsplit('= ', 1)[1]})" in made[opened:renamed]  # its data first
    directory_fds = {call.rsplit("= ", 1)[1] for call in calls[renamed:]
                     if call.startswith("openat(") and f'"{spool_dir}"' in call and "O_DIRECTORY" in call}
    assert {f"fsync({fd})" for fd in directory_fds} & set(made[renamed:])  # then the rename
    [path] = files(spool_dir)
    assert path.name.endswith("-1.jsonl")


WRITE_ONE = """
import sys
from taskbadger.delivery.spool import Entry, Spool
assert Spool(sys.argv[1]).write("k" * 16, [Entry({"status": "success"}, task_id="A" * 26, final=True)]) == (1, 0)
"""


def scan_held_back_after_its_claim(spool_dir, monkeypatch):
    """A spooled final update for a new task, and a background scan that has claimed its file and queues it
    only 0.2 s later: (the task, the scan's thread)."""
    task = taskbadger.create_task("spooled")
    Spool(spool_dir).write(api_key_of(taskbadger.get_config()),
                           [Entry({"status": "success"}, task_id=task.id, final=True)])
    claimed, release = threading.Event(), threading.Event()
    queue_from_spool = spooling._queue_from_spool

    def held_back(entry):  # whichever scan claimed the file queues its update only once released
        claimed.set()
        assert release.wait(5)
        queue_from_spool(entry)

    monkeypatch.setattr(spooling, "_queue_from_spool", held_back)
    background = threading.Thread(target=spooling._drainer.get().scan, args=(taskbadger.get_config(),))
    background.start()
    assert claimed.wait(5)
    threading.Timer(0.2, release.set).start()  # the scan goes on while the test asks for the spool
    return task, background


def test_delivering_the_spool_now_waits_for_a_scan_already_taking_it(api, spool_dir, monkeypatch):
    """``manage.py taskbadger check`` delivers the spool, then flushes. When the background scan had just
    claimed the file, the check found nothing, flushed an empty queue, and the update was still undelivered
    when it reported (a CI failure)."""
    task, background = scan_held_back_after_its_claim(spool_dir, monkeypatch)
    spooling.deliver_spooled()
    assert taskbadger.flush(5)
    assert api.get_task(task.id)["status"] == "success"
    background.join(5)


def test_a_process_ending_during_a_scan_delivers_what_that_scan_took(api, spool_dir, monkeypatch):
    """A short process (``taskbadger run next -- true``) ends while its background scan has claimed a file but
    not yet queued it: the shutdown skipped the spool (already looked at), found its queue empty, and the
    update stayed claimed by a dead process (a 3.12 CI failure)."""
    task, background = scan_held_back_after_its_claim(spool_dir, monkeypatch)
    spooling.shutdown(5)
    assert api.get_task(task.id)["status"] == "success"
    assert files(spool_dir) == []
    background.join(5)


def test_check_logs_and_stats_say_what_is_spooled(api, spool_dir, caplog):
    caplog.set_level(logging.WARNING, logger="taskbadger")
    task = taskbadger.create_task("said")
    api.refuse()
    sender.submit(task.id, {"status": "success"}, final=True)
    api.wait_for(lambda: taskbadger.stats()["retried"] >= 1)
    spooling.shutdown(10.0)
    assert any(f"are spooled in {spool_dir}" in r.getMessage() for r in caplog.records)
    assert taskbadger.stats()["spool"] == 1
    assert api_key_of(taskbadger.get_config()) in files(spool_dir)[0].name


# -- what a process took from the spool is never lost with it (found by a hunt with real processes) ---------


def spooled_by_an_earlier_process(spool_dir, ids):
    """Entries for ``ids`` as a process that ended during an outage left them."""
    written, _ = Spool(spool_dir).write(api_key_of(taskbadger.get_config()),
                                        [Entry({"status": "success"}, task_id=task_id, final=True) for task_id in ids])
    assert written == len(ids)


def fill(spool_dir, size):
    """Another file takes ``size`` bytes of the spool's room (sparse: no disk is used)."""
    with open(spool_dir / "zz-filler", "wb") as filler:
        filler.truncate(size)


def test_a_process_that_cannot_spool_again_gives_back_what_it_took(api, spool_dir, tb_log):
    task = taskbadger.create_task("taken, then given back")
    api.refuse()
    spooled_by_an_earlier_process(spool_dir, [task.id])
    [original] = files(spool_dir)
    spooling.deliver_spooled()  # this process takes it (and the API is still down)
    api.wait_for(lambda: taskbadger.stats()["retried"] >= 1)
    fill(spool_dir, MAX_BYTES)  # ...and the spool is full when it ends: it could not be written again
    spooling.shutdown(10.0)
    assert any("is full" in r.getMessage() for r in tb_log.records)
    assert original in files(spool_dir)  # given back as it was (it was deleted)
    (spool_dir / "zz-filler").unlink()
    api.accept()
    assert deliver_in_another_process(api, spool_dir) == ["1", "True", "0"]
    assert api.get_task(task.id)["status"] == "success"


def test_what_a_process_took_does_not_count_against_the_room_to_spool_it_again(api, spool_dir):
    tasks = [taskbadger.create_task(f"taken {i}") for i in range(20)]
    api.refuse()
    spooled_by_an_earlier_process(spool_dir, [t.id for t in tasks])
    [taken] = files(spool_dir)
    size = taken.stat().st_size
    spooling.deliver_spooled()
    api.wait_for(lambda: taskbadger.stats()["retried"] >= 1)
    fill(spool_dir, MAX_BYTES - size * 3 // 2)  # room for the rewrite, once the claimed file is not counted
    spooling.shutdown(10.0)
    (spool_dir / "zz-filler").unlink()
    assert Spool(spool_dir).waiting(api_key_of(taskbadger.get_config())) == 20
    assert taken not in files(spool_dir)  # written again (not given back as it was, for want of room)


def test_a_process_takes_no_more_from_the_spool_than_half_its_queue(api, spool_dir):
    api.refuse()
    ids = [f"S{i:025d}" for i in range(MAX_PENDING_TASKS + 2_000)]
    before = taskbadger.stats()
    spooled_by_an_earlier_process(spool_dir, ids)
    spooling.deliver_spooled()  # or this process's spool thread, first
    after = taskbadger.stats()
    assert 0 < after["unspooled"] - before["unspooled"] <= MAX_PENDING_TASKS // 2
    assert after["dropped"] == before["dropped"]  # 2,000 were dropped, and their files deleted
    spooling.shutdown(10.0)
    assert Spool(spool_dir).waiting(api_key_of(taskbadger.get_config())) == len(ids)


def test_a_file_of_an_earlier_version_too_big_to_take_is_split_not_left_blocking(spool_dir):
    """The previous version wrote files of up to 10,000 entries: one over the room given was never taken, and
    nor was any file after it (taken oldest first)."""
    spool = Spool(spool_dir)
    spool_dir.mkdir(mode=0o700)
    lines = "".join(Entry({"value": 1}, task_id=f"T{i:025d}").to_json() + "\n" for i in range(6_000))
    (spool_dir / f"{'k' * 16}-1-1-abcd-6000.jsonl").write_text(lines)
    spool.write("k" * 16, [Entry({"value": 1}, task_id="N" * 26)])  # spooled after it
    taken = []
    for _ in range(4):
        claims, _ = spool.claim("k" * 16, 900, limit=5_000)
        taken += [e.task_id for claim in claims for e in claim.entries]
    assert sorted(taken) == sorted([f"T{i:025d}" for i in range(6_000)] + ["N" * 26])


def test_files_are_taken_while_they_fit_the_room_given(spool_dir):
    spool = Spool(spool_dir)
    spool.write("k" * 16, [Entry({"value": 1}, task_id=f"T{i:025d}") for i in range(2_500)])
    assert [int(p.name.split("-")[-1].split(".")[0]) for p in files(spool_dir)] == [1000, 1000, 500]
    first, _ = spool.claim("k" * 16, 900, limit=2_400)
    second, _ = spool.claim("k" * 16, 900, limit=2_400)
    assert [len(c.entries) for c in first] == [1000, 1000] and [len(c.entries) for c in second] == [500]


def test_what_waits_to_be_found_by_external_id_keeps_its_file(api, spool_dir):
    """A run's outcome waiting for its task to be found (its create's answer was lost) lives in this process
    only in memory: its spool file stays until it is settled (it was deleted at the next look)."""
    api.refuse()
    Spool(spool_dir).write(api_key_of(taskbadger.get_config()),
                           [Entry({"status": "success"}, external_id="run-7", final=True)])
    spooling.deliver_spooled()
    assert inline.settling("run-7")
    taskbadger.stats()  # what this process took and delivered is released here
    assert len(files(spool_dir)) == 1 and ".claimed-" in files(spool_dir)[0].name


def test_what_was_taken_is_given_back_even_if_another_thread_looks_during_shutdown(api, spool_dir, monkeypatch):
    """Between emptying the queue for the spool and writing it, another thread's stats() took every claim for
    delivered (the queue no longer held them) and deleted it: nothing was left to give back."""
    task = taskbadger.create_task("raced")
    api.refuse()
    spooled_by_an_earlier_process(spool_dir, [task.id])
    [original] = files(spool_dir)
    spooling.deliver_spooled()
    api.wait_for(lambda: taskbadger.stats()["retried"] >= 1)

    def write_fails_after_a_look(self, key, entries):
        taskbadger.stats()  # the spool thread or a check command, at that moment
        return 0, len(list(entries))

    monkeypatch.setattr(Spool, "write", write_fails_after_a_look)
    spooling.shutdown(10.0)
    assert original in files(spool_dir)


def test_a_directory_others_can_write_is_not_read_either(spool_dir, tb_log):
    Spool(spool_dir).write("k" * 16, [Entry({"status": "success"}, task_id="A" * 26)])
    os.chmod(spool_dir, 0o777)  # e.g. made first under /tmp by another user, who put files in it
    assert Spool(spool_dir).claim("k" * 16, 900) == ([], 0)
    assert any("is not read" in r.getMessage() and "written by other users" in r.getMessage()
               for r in tb_log.records)


@pytest.mark.parametrize("suffix", ["-0badc0de-{namespace}", "-0badc0de", ""],
                         ids=["earlier-process", "earlier-version", "older-version"])
def test_a_claim_left_by_an_earlier_process_with_this_pid_is_taken_over(spool_dir, suffix):
    """A container's pid 1, restarted after it was killed, has the pid of the process that claimed the file."""
    spool = Spool(spool_dir)
    spool.write("k" * 16, [Entry({"value": 1}, task_id="A" * 26)])
    [path] = files(spool_dir)
    path.rename(path.with_name(path.name + f".claimed-{os.getpid()}" + suffix.format(namespace=_NAMESPACE.get())))
    [claim], _ = spool.claim("k" * 16, 900)
    assert [e.task_id for e in claim.entries] == ["A" * 26]
    assert spool.claim("k" * 16, 900) == ([], 0)  # now this process's own claim: not taken twice


def test_a_run_whose_task_could_not_be_looked_up_in_time_is_dropped_counted_and_logged(api, tb_log):
    """A run whose create's answer was lost waits for its task to be found by external_id (spooled with the rest
    when its process ends); past the retry horizon it is given up, and that is said."""
    api.refuse()
    before = taskbadger.stats()["given_up"]
    inline.settle_later("job-42", {"status": "success"}, since=time.time() - RETRY_HORIZON - 1)
    api.wait_for(lambda: taskbadger.stats()["given_up"] == before + 1)
    assert any("the outcome of run 'job-42' was dropped" in r.getMessage() for r in tb_log.records)


# -- real workers -------------------------------------------------------------------------------------------


def successes(server, ids):
    return [t for t in server.tasks.values() if t["id"] in ids and t["status"] == "success"]


@pytest.mark.integration
def test_recycled_pool_children_during_an_outage_neither_wait_nor_lose_their_final_states(taskbadger_server,
                                                                                         taskbadger_server_session,
                                                                                         spool_dir):
    from .celery_project import app as tasks
    from .conftest import start_worker, stop_worker

    worker = start_worker(taskbadger_server_session, pool="prefork", concurrency=2,
                          extra_args=["--max-tasks-per-child=1"], extra_env={"TASKBADGER_SPOOL_DIR": str(spool_dir)})
    try:
        results = [worker.send(tasks.add, i, i) for i in range(12)]  # created pending while the API is up
        ids = {r.taskbadger_task_id for r in results}
        assert None not in ids
        taskbadger_server.refuse()  # then it goes down: every child ends with its final state undelivered
        started = time.monotonic()
        taskbadger_server.wait_for(lambda: worker.log().count("succeeded in") >= 12, timeout=60)
        # each child used to wait 10 s for the API when recycled: 12 tasks on 2 children took a minute
        assert time.monotonic() - started < 12.0
        assert Spool(spool_dir).waiting(api_key_of(taskbadger.get_config())) >= 1
        taskbadger_server.accept()
        # the worker's main process takes the spool within its scan interval and delivers every final state
        taskbadger_server.wait_for(lambda: len(successes(taskbadger_server, ids)) == 12, timeout=40)
    finally:
        taskbadger_server.accept()
        stop_worker(worker)


@pytest.mark.integration
@pytest.mark.parametrize("fault", ["refused", "hang"])
def test_a_warm_shutdown_during_an_outage_spools_instead_of_waiting(taskbadger_server, taskbadger_server_session,
                                                                    spool_dir, fault):
    from .celery_project import app as tasks
    from .conftest import start_worker, stop_worker

    worker = start_worker(taskbadger_server_session, pool="solo", concurrency=1,
                          extra_env={"TASKBADGER_SPOOL_DIR": str(spool_dir)})
    try:
        result = worker.send(tasks.add, 1, 1)
        taskbadger_server.wait_for(lambda: taskbadger_server.get_task(result.taskbadger_task_id), timeout=10)
        if fault == "refused":
            taskbadger_server.refuse()
        else:  # the worker's final update is sent and never answered (the worker's timeout: its default, 7 s)
            taskbadger_server.hang(method="PATCH")
        taskbadger_server.wait_for(lambda: "succeeded in" in worker.log(), timeout=20)
        if fault == "refused":
            taskbadger_server.wait_for(lambda: "updates are queued and retried" in worker.log(), timeout=10)
        else:
            taskbadger_server.wait_for(lambda: [r for r in taskbadger_server.requests if r.method == "PATCH"],
                                       timeout=10)
        assert stop_worker(worker) == 0
    finally:
        taskbadger_server.clear_faults()
        stop_worker(worker)
    # it used to wait 10 s (the flush), then 5 s more at exit; now it does not wait for the API at all (refused), or
    # no longer than a second for an answer that does not come (hung)
    waited = re.findall(r"are spooled in .* \(after ([0-9.]+) s: the API is not answering\)", worker.log())
    assert waited and all(float(seconds) < (0.5 if fault == "refused" else 1.5) for seconds in waited), worker.log()
    assert deliver_in_another_process(taskbadger_server, spool_dir) == ["1", "True", "0"]
    assert taskbadger_server.get_task(result.taskbadger_task_id)["status"] == "success"
