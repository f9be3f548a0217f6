"""Delivery against the stand-in API: the queue of pending updates and its senders, and the breaker."""

import logging
import math
import os
import subprocess
import sys
import threading
import time

import pytest

import taskbadger
from taskbadger.delivery import breaker as breaker_module
from taskbadger.delivery import merge, queue, sender
from taskbadger.delivery.breaker import Breaker
from taskbadger.delivery.queue import PendingQueue
from taskbadger.delivery.sender import Sender
from taskbadger.exceptions import TransportError


def Dispatcher(max_pending=queue.MAX_PENDING_TASKS, linger=queue.LINGER, threads=sender.SENDER_THREADS,  # noqa: N802
               batch_size=sender.BATCH_SIZE, retry_horizon=sender.RETRY_HORIZON) -> Sender:
    """A queue and its senders, of their own (not this process's)."""
    return Sender(PendingQueue(max_pending, linger), threads=threads, batch_size=batch_size,
                  retry_horizon=retry_horizon)


def patches(server, task_id=None):
    return [r for r in server.requests if r.method == "PATCH" and (task_id is None or f"/{task_id}/" in r.path)]


@pytest.fixture
def dispatcher(taskbadger_server):
    d = Dispatcher(linger=0.2)
    yield d
    d.flush(5)


def test_queued_updates_for_one_task_merge_into_one_patch(taskbadger_server, dispatcher):
    task = taskbadger.create_task("fast")
    dispatcher.submit(task.id, {"status": "processing", "start_time": "2026-01-01T00:00:00+00:00"})
    dispatcher.submit(task.id, {"tags": {"a": "v1"}})
    dispatcher.submit(task.id, {"status": "success", "end_time": "2026-01-01T00:00:01+00:00", "tags": {"b": "v2"}},
                      final=True)
    assert dispatcher.flush(5)
    [patch] = patches(taskbadger_server, task.id)
    assert patch.json == {"status": "success", "start_time": "2026-01-01T00:00:00+00:00",
                          "end_time": "2026-01-01T00:00:01+00:00", "tags": {"a": "v1", "b": "v2"}}
    stats = dispatcher.stats()
    assert (stats["sent"], stats["merged"], stats["queued"]) == (1, 2, 0)


def test_a_workers_start_and_end_merge_into_one_patch_with_the_first_start(taskbadger_server, dispatcher):
    """A worker's two updates of a fast task (no tags, no markers: merged without the rules that change nothing for
    them): one PATCH, the newer fields win, and the start is the first one queued (a second start is a run again)."""
    task = taskbadger.create_task("fast worker task")
    dispatcher.submit(task.id, {"status": "processing", "start_time": "2026-01-01T00:00:00+00:00", "stale_timeout": 5})
    dispatcher.submit(task.id, {"status": "processing", "start_time": "2026-01-01T00:00:02+00:00", "value": 1})
    dispatcher.submit(task.id, {"status": "success", "end_time": "2026-01-01T00:00:03+00:00", "value": 2,
                                "value_max": 2}, final=True)
    assert dispatcher.flush(5)
    [patch] = patches(taskbadger_server, task.id)
    assert patch.json == {"status": "success", "start_time": "2026-01-01T00:00:00+00:00", "stale_timeout": 5,
                          "end_time": "2026-01-01T00:00:03+00:00", "value": 2, "value_max": 2}


def test_a_run_again_drops_the_old_error_and_completes_the_old_progress_at_send_time(taskbadger_server, dispatcher):
    """A run again after an error, which knows neither the task's data nor its progress: the exception leaves the
    data the task has on the server (what else it holds stays), and its success ends at 100 %."""
    task = taskbadger.create_task("run again", value=1, value_max=4,
                                  data={"args": [1], "exception": "Traceback...", "exception_type": "ValueError"})
    dispatcher.submit(task.id, {"status": "processing", merge.DROP_DATA: ["exception", "exception_type"]})
    dispatcher.submit(task.id, {"status": "success", merge.COMPLETE_PROGRESS: True, merge.MERGE_DATA: {"k": 2}},
                      final=True)
    assert dispatcher.flush(5)
    [patch] = patches(taskbadger_server, task.id)
    assert patch.json == {"status": "success", "value": 4, "data": {"args": [1], "k": 2}}


def test_a_field_taken_off_is_sent_as_null_and_the_later_of_a_value_and_its_removal_wins(taskbadger_server,
                                                                                         dispatcher):
    """``None`` leaves a field out of a PATCH; a task waiting for its retry takes its stale timeout off (null). Merged
    with the updates around it, the later one wins: the next attempt's start sets it again."""
    tasks = [taskbadger.create_task(f"t{i}", stale_timeout=5) for i in range(3)]
    dispatcher.submit(tasks[0].id, {"status": "pending", merge.SEND_NULL: ["stale_timeout"]})
    dispatcher.submit(tasks[1].id, {"status": "processing", "stale_timeout": 3})
    dispatcher.submit(tasks[1].id, {"status": "pending", merge.SEND_NULL: ["stale_timeout"]})
    dispatcher.submit(tasks[2].id, {"status": "pending", merge.SEND_NULL: ["stale_timeout"]})
    dispatcher.submit(tasks[2].id, {"status": "processing", "stale_timeout": 4})
    assert dispatcher.flush(5)
    assert [taskbadger_server.get_task(t.id)["stale_timeout"] for t in tasks] == [None, None, 4]
    assert [p.json for p in patches(taskbadger_server, tasks[0].id)] == [{"status": "pending", "stale_timeout": None}]


def test_a_start_kept_if_the_task_has_one_is_left_out_merged_or_not(taskbadger_server, dispatcher):
    """A message delivered again (its worker was lost) starts the same task again: its ``start_time`` is sent only
    when the task has none, also when merged with the run's success; a task that never started gets it."""
    started = taskbadger.create_task("started", status="processing")
    taskbadger.update_task(started.id, start_time="2026-01-01T00:00:00+00:00")
    never = taskbadger.create_task("never started")
    for task in (started, never):
        dispatcher.submit(task.id, {"status": "processing", "start_time": "2026-01-01T00:05:00+00:00",
                                    merge.KEEP_START: True})
        dispatcher.submit(task.id, {"status": "success", "end_time": "2026-01-01T00:05:01+00:00"}, final=True)
    assert dispatcher.flush(5)
    assert taskbadger_server.get_task(started.id)["start_time"].startswith("2026-01-01T00:00:00")
    assert taskbadger_server.get_task(never.id)["start_time"].startswith("2026-01-01T00:05:00")
    assert all(merge.KEEP_START not in p.json for p in patches(taskbadger_server))


def test_an_update_that_sends_the_whole_data_after_a_drop_is_sent_as_it_is(taskbadger_server, dispatcher):
    task = taskbadger.create_task("run again", data={"exception": "old"})
    dispatcher.submit(task.id, {"status": "processing", merge.DROP_DATA: ["exception"]})
    dispatcher.submit(task.id, {"status": "error", "data": {"exception": "new"}}, final=True)
    assert dispatcher.flush(5)
    [patch] = patches(taskbadger_server, task.id)
    assert patch.json == {"status": "error", "data": {"exception": "new"}}
    assert [r.method for r in taskbadger_server.requests if r.task_id == task.id] == ["POST", "PATCH"]  # no GET


def test_a_batch_whose_updates_read_their_tasks_is_delivered_while_reads_are_slow(taskbadger_server):
    """Updates resolved against their task's current state (a merge into unknown data, an update sent only while
    the task has no final state: every retried attempt's start has one) read it one after another, under the
    deadline the batch's PATCHes share: with reads of 0.5 s, a batch of 32 used it up before its PATCHes, was
    retried, and read and timed out again, for ever (a Procrastinate hunt: 17 of 30 tasks never ended)."""
    tasks = [taskbadger.create_task(f"slow read {i}", data={"orig": i}) for i in range(32)]
    taskbadger_server.set_latency(0.5, method="GET")
    d = Dispatcher(linger=0.05, threads=1)
    for i, task in enumerate(tasks):
        d.submit(task.id, {"status": "success", merge.MERGE_DATA: {"k": i}, merge.UNLESS_FINAL: True}, final=True)
    assert d.flush(15), d.stats()
    assert [t["data"] for t in (taskbadger_server.tasks[task.id] for task in tasks)] == [
        {"orig": i, "k": i} for i in range(32)]
    assert d.stats()["retried"] == 0


def test_the_process_counters_are_one_call_away(taskbadger_server):
    task = taskbadger.create_task("counted")
    before = taskbadger.stats()
    sender.submit(task.id, {"status": "processing"})
    sender.submit(task.id, {"status": "success"}, final=True)
    assert sender.flush(5)
    after = taskbadger.stats()
    assert (after["submitted"] - before["submitted"], after["merged"] - before["merged"],
            after["sent"] - before["sent"]) == (2, 1, 1)
    assert (after["queued"], after["in_flight"], after["breaker"]) == (0, 0, "closed")


def test_each_process_logs_its_counters_when_they_changed(taskbadger_server, monkeypatch, tb_log):
    assert sender.flush(5)  # what earlier tests left in this process's own queue is not this test's
    monkeypatch.setattr(sender, "STATS_LOG_INTERVAL", 0.0)  # every round instead of once a minute
    d = Dispatcher(linger=0.0)
    task = taskbadger.create_task("counted")

    def lines():
        return [r.getMessage() for r in tb_log.records if r.getMessage().startswith("Task Badger delivery (process")]

    d.submit(task.id, {"status": "success"}, final=True)
    sent_one = (f"Task Badger delivery (process {os.getpid()}): submitted 1 = sent 1 + merged 0 + claimed 0 + "
                "dropped 0 + failed 0 + spooled 0 + queued 0 + in_flight 0 (retried 0, from the spool 0)")
    taskbadger_server.wait_for(lambda: sent_one in lines(), timeout=5)  # logged by the sender thread
    d.submit(task.id, {"value": 1})
    sent_two = sent_one.replace("submitted 1 = sent 1", "submitted 2 = sent 2")
    taskbadger_server.wait_for(lambda: sent_two in lines(), timeout=5)
    assert lines().index(sent_one) < lines().index(sent_two)
    assert d.flush(5)


def test_an_idle_process_writes_its_line_a_minute_after_its_counters_changed(taskbadger_server, monkeypatch,
                                                                             tb_log):
    # The line used to wait for the next batch: after a burst of work, an idle worker never said it.
    assert sender.flush(5)
    monkeypatch.setattr(sender, "STATS_LOG_INTERVAL", 0.5)  # half a second instead of a minute
    d = Dispatcher(linger=0.0)
    task = taskbadger.create_task("counted")
    for value in range(3):
        d.submit(task.id, {"value": value})
    d.submit(task.id, {"status": "success"}, final=True)
    assert d.flush(5)

    def lines():
        return [r.getMessage() for r in tb_log.records if "submitted 4 = sent" in r.getMessage()]

    taskbadger_server.wait_for(lambda: lines(), timeout=5)  # no new work came: the thread woke up by itself


def assert_counters_add_up(stats):
    ends = sum(stats[key] for key in ("sent", "merged", "claimed", "dropped", "failed", "spooled", "queued",
                                      "in_flight"))
    assert stats["submitted"] == ends, stats


def test_the_counters_add_up_through_merges_claims_retries_and_drops(taskbadger_server):
    from taskbadger.delivery.queue import PendingQueue
    from taskbadger.delivery.sender import Sender

    tasks = [taskbadger.create_task(f"t{i}") for i in range(6)]
    s = Sender(PendingQueue(max_pending=4, linger=0.05), threads=1)
    taskbadger_server.fail(503, times=2, method="PATCH")  # two attempts retried
    for task in tasks:
        for value in range(3):
            s.submit(task.id, {"value": value})  # merged into each other, some dropped past the cap of 4
    s.submit(tasks[0].id, {"status": "success"}, final=True)
    with s.queue.cond:
        assert_counters_add_up(s.queue.stats() | {"queued": len(s.queue._pending), "in_flight": len(s.queue._inflight)})
    fields = s.queue.claim(tasks[1].id)  # a synchronous update took what was queued for its task
    assert fields or s.queue.stats()["claimed"] == 0
    assert s.flush(15)
    stats = s.stats()
    assert_counters_add_up(stats)
    assert stats["merged"] and stats["dropped"] and stats["retried"]


def test_non_final_updates_are_sent_after_the_linger(taskbadger_server, dispatcher):
    task = taskbadger.create_task("slow")
    dispatcher.submit(task.id, {"status": "processing"})
    taskbadger_server.wait_for(lambda: patches(taskbadger_server, task.id), timeout=5)
    assert taskbadger_server.get_task(task.id)["status"] == "processing"


@pytest.fixture
def process_queue(monkeypatch):
    """This process's queue, holding non-final updates for 0.2 s."""
    monkeypatch.setattr(queue.pending_updates(), "linger", 0.2)
    yield queue.pending_updates()
    sender.flush(5)


def test_body_update_is_sent_after_queued_ones_and_carries_them(taskbadger_server, process_queue):
    task = taskbadger.create_task("body")
    sender.submit(task.id, {"status": "processing", "start_time": "2026-01-01T00:00:00+00:00"})
    task.update(value=7)  # synchronous, while 'processing' is still queued
    [patch] = patches(taskbadger_server, task.id)
    assert patch.json == {"status": "processing", "start_time": "2026-01-01T00:00:00+00:00", "value": 7}
    assert process_queue.stats()["queued"] == 0


def test_a_body_update_that_carries_a_queued_drop_reads_the_task_on_the_server(taskbadger_server, process_queue):
    """A run again's body reports progress while its ``processing`` (which drops the earlier error) is queued: the
    drop was resolved against the task the body holds (what was carried, without the error), and so lost."""
    created = taskbadger.create_task("run again", data={"args": [1], "exception": "Traceback", "exception_type": "E"})
    task = taskbadger.Task.get(created.id)
    task._task.data = {"args": [1]}  # what the message carried
    sender.submit(task.id, {"status": "processing", merge.DROP_DATA: ["exception", "exception_type"]})
    task.update(value=2, value_max=4)
    [patch] = patches(taskbadger_server, task.id)
    assert patch.json == {"status": "processing", "value": 2, "value_max": 4, "data": {"args": [1]}}


def test_a_drop_takes_out_what_an_older_queued_update_would_add(taskbadger_server, dispatcher):
    """An error still queued (the API was down) when the run again starts: its exception came back after the drop."""
    task = taskbadger.create_task("run again", data={"args": [1]})
    dispatcher.submit(task.id, {"status": "error", merge.MERGE_DATA: {"exception": "Traceback", "exception_type": "E"}},
                      final=True)
    dispatcher.submit(task.id, {"status": "processing", merge.DROP_DATA: ["exception", "exception_type"]})
    dispatcher.submit(task.id, {"status": "success", merge.COMPLETE_PROGRESS: True}, final=True)
    assert dispatcher.flush(5)
    assert taskbadger_server.get_task(task.id)["data"] == {"args": [1]}


def test_body_update_waits_for_a_request_already_in_flight(taskbadger_server, process_queue):
    task = taskbadger.create_task("inflight")
    taskbadger_server.set_latency(0.5, times=1, method="PATCH")
    sender.submit(task.id, {"value": 1}, final=True)
    taskbadger_server.wait_for(lambda: process_queue.stats()["in_flight"] == 1, timeout=5)
    task.update(value=2)
    assert [p.json["value"] for p in patches(taskbadger_server, task.id)] == [1, 2]
    assert taskbadger_server.get_task(task.id)["value"] == 2


def test_body_update_waits_for_a_hung_request_in_flight_within_its_own_deadline(taskbadger_server, process_queue):
    """The wait for the senders' request is part of the call's one deadline (connect + read), not added to it
    (it waited for the request, then had a whole deadline of its own: twice the time)."""
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, timeout=(0.5, 1.0))
    task = taskbadger.create_task("hung in flight")
    taskbadger_server.hang(method="PATCH")
    sender.submit(task.id, {"value": 1}, final=True)
    taskbadger_server.wait_for(lambda: process_queue.stats()["in_flight"] == 1, timeout=5)
    started = time.monotonic()
    with pytest.raises(taskbadger.exceptions.ReadTimeout):
        task.update(value=2)
    assert time.monotonic() - started < 1.5 + 0.9  # the call's deadline, 0.5 + 1.0 s (it took 3 s)
    taskbadger_server.clear_faults()


def test_body_update_is_not_sent_while_a_request_for_its_task_is_still_in_flight(taskbadger_server, process_queue):
    """When the call's deadline passes with the senders' request for the task still unanswered, the body's
    update is not sent at all: it would overtake that request."""
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, timeout=(0.5, 3.0))
    task = taskbadger.create_task("long in flight")
    taskbadger_server.hang(method="PATCH")
    sender.submit(task.id, {"value": 1}, final=True)
    taskbadger_server.wait_for(lambda: process_queue.stats()["in_flight"] == 1, timeout=5)
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, timeout=(0.5, 0.5))
    started = time.monotonic()
    with pytest.raises(taskbadger.exceptions.ReadTimeout, match="still waiting for its answer, so this one was not"):
        task.update(value=2)
    assert time.monotonic() - started < 1.0 + 0.9  # (it took 3.5 s, then sent it)
    assert [p.json["value"] for p in patches(taskbadger_server, task.id)] == [1]
    taskbadger_server.clear_faults()


def test_retry_after_is_honoured(taskbadger_server, dispatcher):
    task = taskbadger.create_task("limited")
    taskbadger_server.fail(429, times=1, retry_after=1, method="PATCH")
    dispatcher.submit(task.id, {"status": "success"}, final=True)
    assert dispatcher.flush(10)
    first, second = patches(taskbadger_server, task.id)
    assert (first.status, second.status) == (429, 200)
    assert second.timestamp - first.timestamp >= 1.0
    assert dispatcher.stats()["retried"] == 1


def test_a_retry_after_of_a_billion_seconds_pauses_delivery_only_up_to_the_cap(taskbadger_server, dispatcher,
                                                                             monkeypatch):
    """One 429 with ``Retry-After: 1e9`` (or ``inf``) paused every update of the process for good."""
    monkeypatch.setattr(sender, "RETRY_AFTER_CAP", 0.5)
    task = taskbadger.create_task("limited")
    taskbadger_server.fail(429, times=1, retry_after=1e9, method="PATCH")
    dispatcher.submit(task.id, {"status": "success"}, final=True)
    assert dispatcher.flush(10)
    assert [r.status for r in patches(taskbadger_server, task.id)] == [429, 200]


def test_server_errors_and_dropped_connections_are_retried_until_delivered(taskbadger_server, dispatcher):
    task = taskbadger.create_task("flaky api")
    taskbadger_server.fail(503, times=2, method="PATCH")
    taskbadger_server.drop(times=2, method="PATCH")
    dispatcher.submit(task.id, {"status": "success"}, final=True)
    assert dispatcher.flush(20)
    assert taskbadger_server.get_task(task.id)["status"] == "success"
    # each 503 is retried by the dispatcher; the two dropped connections cost one retry: the transport
    # sends a PATCH again at once on a new connection when a kept-alive one closes before answering
    assert dispatcher.stats()["retried"] == 3


def test_a_refused_update_is_dropped_counted_and_logged(taskbadger_server, dispatcher, tb_log):
    dispatcher.submit("no-such-task", {"status": "success"}, final=True)
    assert dispatcher.flush(5)
    assert dispatcher.stats()["dropped"] == 1
    assert any("404" in r.getMessage() and r.levelno == logging.WARNING for r in tb_log.records)


def _wait_until_failing(server, d):
    server.wait_for(lambda: d.stats()["retried"] >= 1, timeout=10)


def test_past_the_cap_a_final_update_takes_the_place_of_a_progress_update(taskbadger_server, tb_log):
    tasks = [taskbadger.create_task(f"cap-{i}") for i in range(6)]
    taskbadger_server.refuse()  # API down: nothing drains
    small = Dispatcher(max_pending=5, linger=0)
    for task in tasks[:5]:
        small.submit(task.id, {"status": "processing"})
    assert small.submit("one-too-many", {"value": 1}) is False  # a progress update past the cap: dropped
    _wait_until_failing(taskbadger_server, small)
    start = time.monotonic()
    assert small.submit(tasks[5].id, {"status": "success"}, final=True) is True
    assert time.monotonic() - start < 0.5  # no waiting: room was made at once
    stats = small.stats()
    assert stats["queued"] + stats["in_flight"] <= 5
    assert stats["dropped"] == 2  # the progress update past the cap, and the one evicted for the final
    taskbadger_server.accept()
    assert small.flush(20)
    assert taskbadger_server.get_task(tasks[5].id)["status"] == "success"


def test_past_the_cap_a_final_update_takes_the_place_of_a_progress_update_in_flight():
    """During an outage every progress update may be in flight (an attempt under way) when a final one comes:
    it was dropped, as no queued progress update could make room (a 3.12 CI run of the test above)."""
    q = PendingQueue(max_pending=3, linger=0)
    for i in range(3):
        q.submit(f"progress-{i}", {"value": i})
    with q.cond:
        batch = q.take_batch(3)  # all three in flight
        q.failing = True
    assert len(batch) == 3
    assert q.submit("done", {"status": "success"}, final=True) is True  # at once: no waiting while failing
    stats = q.stats()
    assert (stats["queued"], stats["in_flight"], stats["dropped"]) == (1, 2, 1)
    with q.cond:
        q.finish(batch, [True, True, True])  # the attempt failed: all come back, but the one given up
        assert q.held() == 3 and q.holds("done")
    assert q.stats()["queued"] == 3


def test_a_batch_takes_the_oldest_ready_updates_in_order_and_leaves_the_rest_queued():
    """A batch is the oldest ready update, then the next ready ones in queue order (a final one still inside its
    window counts as ready), never one whose task has a request in flight, nor a progress update still lingering;
    what it does not take stays queued."""
    q = PendingQueue(linger=60)
    q.submit("a", {"value": 1})  # lingering: not ready for a minute
    q.submit("b", {"status": "success"}, final=True, delay=0)
    q.submit("c", {"value": 2}, delay=0)
    q.submit("d", {"status": "error"}, final=True)  # inside its final window: taken with the others
    q.submit("e", {"value": 3}, delay=0)
    q.submit("f", {"value": 4}, delay=0)
    with q.lock:
        first = q.take_batch(3)
    assert [task_id for task_id, _ in first] == ["b", "c", "d"]
    assert q.holds("a") and q.holds("e") and q.holds("f") and q.stats()["queued"] == 3
    q.submit("c", {"value": 5}, delay=0)  # its task has a request in flight: queued, not taken
    with q.lock:
        second = q.take_batch(5)
    assert [task_id for task_id, _ in second] == ["e", "f"]
    assert q.stats()["queued"] == 2 and q.stats()["in_flight"] == 5
    with q.lock:
        q.finish(first + second, [False] * 5)
        third = q.take_batch(5, until=time.monotonic())
    assert [task_id for task_id, _ in third] == ["c"] and third[0][1].fields == {"value": 5}


def test_a_senders_round_waits_under_the_queues_lock_and_a_submit_wakes_it():
    """A sender's round enters the queue's lock directly (no ``Condition`` frames): it must be the condition's own
    lock, so that nobody else takes the queue while a round holds it, the round's wait releases it, and a submit's
    notify wakes the round."""
    q = PendingQueue(linger=0)
    s = Sender(q, threads=1)
    taken: list[str] = []
    done = threading.Event()

    def send(batch):
        taken.extend(task_id for task_id, _ in batch)
        s._delivered([entry for _, entry in batch])
        done.set()
        return [sender.SENT] * len(batch)

    s._send = send
    with q.lock:
        outside = threading.Thread(target=lambda: taken.append(str(q.cond.acquire(blocking=False))))
        outside.start()
        outside.join(10)
        q.cond.notify_all()  # the condition's lock is held: no RuntimeError
    assert taken == ["False"]
    taken.clear()
    round_ = threading.Thread(target=s._run_once, daemon=True)
    round_.start()  # nothing queued: it waits on the condition, under the lock it entered directly
    assert q.submit("task-1", {"status": "success"}, final=True, delay=0)
    assert done.wait(10), "the submit did not wake the waiting round"
    round_.join(10)
    assert taken == ["task-1"] and q.stats()["sent"] == 1 and not q.busy()


def test_the_counters_add_up_while_a_batch_is_being_finished_and_when_it_is_spooled(taskbadger_server):
    """The delivery line (``manage.py taskbadger check``, the log line every minute) read between a batch's outcome
    being counted and the batch being finished counted its updates twice: sent, and still in flight (a CI run:
    'submitted 5091' against 5095). An update given up while in flight, then answered, was counted dropped and
    sent; spooled at exit, dropped and spooled."""
    tasks = [taskbadger.create_task(f"t{i}") for i in range(3)]
    s = Sender(PendingQueue(max_pending=3, linger=0), threads=1)
    for task in tasks:
        s.queue.submit(task.id, {"value": 1})
    with s.queue.cond:
        batch = s.queue.take_batch(3)
        s.queue.failing = True
    assert s.queue.submit(tasks[0].id, {"status": "success"}, final=True)  # takes the place of one in flight
    outcomes = s._send(batch)  # the sender's step: sent, counted ...
    assert outcomes == [sender.SENT] * 3
    assert_counters_add_up(s.queue.stats())  # ... and the batch not finished yet
    with s.queue.cond:
        spooled = s.queue.take_all()  # the process ends now
    assert [task_id for task_id, *_ in spooled] == [tasks[0].id]
    assert_counters_add_up(s.queue.stats())
    assert s.queue.stats()["spooled"] == 1  # the final update; not the ones whose answer was counted


def test_the_counters_add_up_when_a_batch_is_answered_after_it_was_spooled(taskbadger_server):
    """The process ends while a batch is in flight: its updates are spooled (sent again by the next process), and
    the answers may still come in before it exits. Each was counted spooled, then sent as well (a CI run of
    ``manage.py taskbadger check``: 'submitted 5131' against 5138)."""
    tasks = [taskbadger.create_task(f"t{i}") for i in range(3)]
    s = Sender(PendingQueue(max_pending=3, linger=0), threads=1)
    for task in tasks:
        s.queue.submit(task.id, {"value": 1})
    with s.queue.cond:
        batch = s.queue.take_batch(3)
        spooled = s.queue.take_all()  # the process ends now, the batch still in flight
    assert len(spooled) == 3
    assert s._send(batch) == [sender.SENT] * 3  # the answers come in after all
    with s.queue.cond:
        s.queue.finish(batch, [False] * 3)
    assert_counters_add_up(s.queue.stats())
    assert (s.queue.stats()["spooled"], s.queue.stats()["sent"]) == (3, 0)


def test_past_the_cap_with_the_api_down_a_final_update_is_dropped_at_once_counted_and_logged(
        taskbadger_server, tb_log, monkeypatch):
    monkeypatch.setattr(queue, "BACKPRESSURE_TIMEOUT", 30)  # would show as a wait if it applied
    taskbadger_server.refuse()
    small = Dispatcher(max_pending=5, linger=0)
    for i in range(5):
        small.submit(f"task-{i}", {"status": "success"}, final=True)
    _wait_until_failing(taskbadger_server, small)
    start = time.monotonic()
    assert small.submit("final-task", {"status": "success"}, final=True) is False
    assert time.monotonic() - start < 1.0  # the API is down: waiting for room would only slow the task
    assert small.stats()["dropped"] == 1
    errors = [r for r in tb_log.records if r.levelno == logging.ERROR and "dropped" in r.getMessage()]
    assert errors and "final-task" in errors[-1].getMessage()
    for i in range(200):  # an outage on a busy worker: every drop counted, not every drop logged
        small.submit(f"more-{i}", {"status": "success"}, final=True)
    assert small.stats()["dropped"] == 201
    assert len([r for r in tb_log.records if r.levelno == logging.ERROR and "dropped" in r.getMessage()]) == 1
    taskbadger_server.accept()
    assert small.flush(20)


def test_past_the_cap_with_the_api_slow_but_up_a_final_update_waits_for_room(taskbadger_server):
    tasks = [taskbadger.create_task(f"slow-{i}") for i in range(3)]
    taskbadger_server.set_latency(0.3)
    small = Dispatcher(max_pending=2, linger=0, threads=1, batch_size=1)
    small.submit(tasks[0].id, {"status": "success"}, final=True)
    small.submit(tasks[1].id, {"status": "success"}, final=True)
    assert small.submit(tasks[2].id, {"status": "success"}, final=True) is True  # backpressure, then room
    assert small.flush(20)
    assert [taskbadger_server.get_task(t.id)["status"] for t in tasks] == ["success"] * 3
    assert small.stats()["dropped"] == 0


def test_updates_survive_an_outage(taskbadger_server, dispatcher):
    task = taskbadger.create_task("outage")
    taskbadger_server.refuse()
    dispatcher.submit(task.id, {"status": "success"}, final=True)
    taskbadger_server.wait_for(lambda: dispatcher.stats()["retried"] >= 2, timeout=10)
    taskbadger_server.accept()
    assert dispatcher.flush(20)
    assert taskbadger_server.get_task(task.id)["status"] == "success"


def test_an_outage_longer_than_the_retry_horizon_drops_progress_but_keeps_final_states(taskbadger_server, tb_log):
    """A live worker through an outage longer than 15 minutes (here: a 0.5 s horizon) dropped its final states."""
    dispatcher = Dispatcher(linger=0.0, retry_horizon=0.5)
    done, running = taskbadger.create_task("done"), taskbadger.create_task("running")
    taskbadger_server.refuse()
    dispatcher.submit(done.id, {"status": "success"}, final=True)
    dispatcher.submit(running.id, {"value": 5})
    taskbadger_server.wait_for(lambda: dispatcher.stats()["dropped"] == 1, timeout=20)  # the progress, past 0.5 s
    taskbadger_server.accept()
    assert dispatcher.flush(20)
    assert taskbadger_server.get_task(done.id)["status"] == "success"
    assert taskbadger_server.get_task(running.id)["value"] is None


def fail_once(breaker, err=None):
    call = breaker.begin()
    assert call is not None, "the breaker skipped a call it should have let through"
    breaker.end(call, err or ConnectionError("refused"))


def test_breaker_opens_after_repeated_failures_and_a_probe_closes_it(tb_log):
    api_up = threading.Event()
    probes = []

    def probe():
        probes.append(time.monotonic())
        if not api_up.is_set():
            raise ConnectionError("still refused")

    breaker = Breaker(failure_threshold=3, min_cooldown=0.05, probe=probe)
    for _ in range(3):
        fail_once(breaker)
    assert breaker.state() == "open"
    # while it is open, no caller waits to find out: the probe does, in the breaker's own thread
    assert all(breaker.begin() is None for _ in range(100))
    # a job body's progress updates and the lookups are skipped too, but queued or settled later: not counted
    assert all(breaker.begin(creates=False) is None for _ in range(5000))
    wait_until(lambda: len(probes) >= 2)
    assert breaker.state() == "open"
    api_up.set()
    wait_until(lambda: breaker.state() == "half-open")
    trial = breaker.begin()
    assert trial is not None and breaker.begin() is None  # one call at a time until one succeeds
    breaker.end(trial)
    assert breaker.state() == "closed" and breaker.begin() is not None
    messages = [r.getMessage() for r in tb_log.records]
    assert len([m for m in messages if "new tasks are not tracked;" in m]) == 1
    assert len([m for m in messages if "tracking resumed (101 new tasks were not tracked)" in m]) == 1


def test_a_trial_call_that_fails_reopens_the_breaker():
    breaker = Breaker(failure_threshold=3, min_cooldown=0.05, probe=lambda: None)
    for _ in range(3):
        fail_once(breaker)
    wait_until(lambda: breaker.state() == "half-open")
    fail_once(breaker)  # the API answers probes but not creates
    assert breaker.state() == "open" and breaker.begin() is None


def test_a_trial_call_that_fails_after_a_quiet_spell_still_reopens_the_breaker(monkeypatch, tb_log):
    # An outage, then nothing published for a minute; the API now answers reads but hangs on creates. The
    # trial call's failure reopens the breaker (a fresh outage: a short pause), instead of starting a new
    # count that lets four more creates wait their whole budget (a CI run saw five after one probe).
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    breaker = Breaker(failure_threshold=3, min_cooldown=0.25)
    for _ in range(3):
        fail_once(breaker)
    clock[0] += 60.0
    trial = breaker.begin()
    assert trial is not None and breaker.begin() is None  # one call finds out
    clock[0] += 0.5
    breaker.end(trial, TimeoutError("did not answer within 0.5 s"))
    assert breaker.state() == "open" and breaker.begin() is None
    clock[0] += 0.3  # counted from the trial: a fresh outage pauses a quarter second, not 30 s
    assert breaker.state() == "half-open"
    assert len([m for m in tb_log.messages if "new tasks are not tracked;" in m]) == 1  # said once


def test_without_a_probe_one_call_finds_out_after_the_cooldown():
    breaker = Breaker(failure_threshold=3, min_cooldown=0.05)
    for _ in range(3):
        fail_once(breaker)
    assert breaker.state() == "open" and breaker.begin() is None
    wait_until(lambda: breaker.state() == "half-open")
    trial = breaker.begin()
    assert trial is not None and breaker.begin() is None
    breaker.end(trial)
    assert breaker.state() == "closed"


def test_when_no_thread_can_probe_one_call_finds_out_after_the_cooldown(monkeypatch):
    # Python 3.12+ at interpreter shutdown (the flush at exit, a user's atexit handler) starts no thread: the
    # probe's start failed inside the call that opened the breaker, and raised into the caller.
    monkeypatch.setattr(breaker_module, "start_daemon_thread", lambda target, name: None)
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    probes = []
    breaker = Breaker(failure_threshold=3, min_cooldown=0.25, probe=lambda: probes.append(1))
    for _ in range(3):
        fail_once(breaker)
    assert breaker.state() == "open" and breaker.begin() is None
    clock[0] += 0.3
    assert breaker.state() == "half-open"
    trial = breaker.begin()
    assert trial is not None and breaker.begin() is None and probes == []
    breaker.end(trial)
    assert breaker.state() == "closed"


def test_a_429_defers_for_its_retry_after_without_opening_the_breaker():
    from taskbadger.exceptions import RateLimited

    breaker = Breaker(failure_threshold=1)
    fail_once(breaker, RateLimited(429, b"", "slow down", retry_after=0.2))
    assert breaker.state() == "deferred" and breaker.begin() is None
    wait_until(lambda: breaker.state() != "deferred")
    assert breaker.state() == "closed"
    assert breaker.begin() is not None and breaker.begin() is not None  # not a trial: closed


def test_failures_count_from_when_their_call_started(monkeypatch):
    # A hung API: each call lasts its whole deadline (5 s here), back to back. Counted from when they
    # ended, failures 5 s apart looked like "nothing tried for a while" and the breaker never opened.
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    breaker = Breaker(failure_threshold=3)
    for _ in range(3):
        call = breaker.begin()
        assert call is not None
        clock[0] += 5.0
        breaker.end(call, TimeoutError("did not answer within 5 s"))
    assert breaker.state() == "open" and breaker.begin() is None


def test_at_most_four_calls_wait_at_once_and_none_join_a_suspect_one(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    breaker = Breaker(max_in_flight=4)
    calls = [breaker.begin() for _ in range(16)]  # 16 threads publishing at once
    assert len([c for c in calls if c is not None]) == 4
    for call in [c for c in calls if c is not None][1:]:
        breaker.end(call)  # three answer at once...
    clock[0] += 2.0  # ...one has been waiting for two seconds: the API is suspect
    assert breaker.begin() is None


def test_a_call_with_a_deadline_waits_for_a_place_while_the_calls_in_flight_answer():
    """Four calls in flight that are not suspect: a fifth with a deadline waits for a place (it skipped, and a create
    skipped is a task not tracked, with a healthy API); one without a deadline skips at once, as before."""
    from taskbadger.http import Deadline

    breaker = Breaker(max_in_flight=4)
    calls = [breaker.begin() for _ in range(4)]
    assert breaker.begin() is None  # no deadline: no wait
    got = []
    waiting = threading.Thread(target=lambda: got.append(breaker.begin(deadline=Deadline(5.0))))
    waiting.start()
    wait_until(lambda: breaker._changed._waiters)  # type: ignore[attr-defined]  (blocked in begin, waiting)
    assert not got
    breaker.end(calls[0])  # answered: a place is free
    waiting.join(5)
    assert got and got[0] is not None


def test_a_call_waiting_for_a_place_skips_once_the_calls_in_flight_look_hung():
    """The calls in flight hang: the one waiting for a place skips when they turn suspect (``MAX_SUSPECT_AFTER``
    before any call has answered), not at its deadline: only the calls in flight wait for a hung API."""
    from taskbadger.http import Deadline

    breaker = Breaker(max_in_flight=4)
    for _ in range(4):
        assert breaker.begin() is not None
    started = time.monotonic()
    assert breaker.begin(deadline=Deadline(10.0)) is None
    assert breaker_module.MAX_SUSPECT_AFTER <= time.monotonic() - started < 2.0


def test_a_call_waits_for_a_place_at_most_half_of_its_deadline():
    """What is left is for its own request: a call given a place at the end of its budget would fail, and count
    as a failure of the API."""
    from taskbadger.http import Deadline

    breaker = Breaker(max_in_flight=1)
    breaker._usual = 10.0  # calls usually take long: the one in flight is not suspect for a while (0.5 s)
    assert breaker.begin() is not None
    started = time.monotonic()
    assert breaker.begin(deadline=Deadline(0.4)) is None
    assert 0.2 <= time.monotonic() - started < 0.4


def test_the_breaker_pauses_longer_the_longer_the_api_fails(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    breaker = Breaker(failure_threshold=3, min_cooldown=0.25, max_cooldown=30)
    pauses = []
    for _ in range(3):
        fail_once(breaker)
    while clock[0] < 1200:
        opened_at = clock[0]
        while (call := breaker.begin()) is None:
            clock[0] += 0.01
        pauses.append(round(clock[0] - opened_at, 2))
        breaker.end(call, ConnectionError("still refused"))  # the trial call fails too
    # a blip costs a quarter second; an outage one try every 30 s
    assert pauses[0] == pytest.approx(0.25, abs=0.02) and max(pauses) == pytest.approx(30.0, abs=0.02)
    assert pauses == sorted(pauses)


def wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)  # polling the breaker's own state, under a deadline


def test_stats_is_public():
    stats = taskbadger.stats()
    assert {"sent", "merged", "retried", "dropped", "queued", "in_flight", "breaker"} <= set(stats)


def test_one_sender_thread_until_a_backlog_builds_then_more_send_in_parallel(taskbadger_server):
    tasks = [taskbadger.create_task(f"backlog-{i}") for i in range(12)]
    taskbadger_server.set_latency(0.2)
    d = Dispatcher(linger=0, threads=3, batch_size=2)
    d.submit(tasks[0].id, {"status": "success"}, final=True)
    assert d.flush(10)
    senders = [t for t in threading.enumerate() if t.name.startswith("taskbadger-sender") and t in d.threads]
    assert len(senders) == 1  # no backlog: one thread, one connection
    first = len(taskbadger_server.requests)
    for task in tasks[1:]:
        d.submit(task.id, {"status": "success"}, final=True)
    assert d.flush(20)
    patches = [r for r in taskbadger_server.requests[first:] if r.method == "PATCH"]
    assert len(patches) == 11
    assert len({r.connection_id for r in patches}) > 2  # more than one thread's batch of 2 in flight
    assert [taskbadger_server.get_task(t.id)["status"] for t in tasks] == ["success"] * 12


def test_a_final_update_given_back_by_a_failed_synchronous_send_is_not_evicted(taskbadger_server):
    taskbadger_server.refuse()
    small = Dispatcher(max_pending=2, linger=0)
    small.submit("task-a", {"status": "success"}, final=True)
    _wait_until_failing(taskbadger_server, small)
    fields = small.queue.claim("task-a")  # what task.success() in the body does before its own request...
    small.queue.unclaim("task-a", fields)  # ...and gives back when that request fails
    small.submit("task-b", {"status": "success"}, final=True)
    assert small.submit("task-c", {"status": "error"}, final=True) is False  # dropped, evicts no final
    assert small.queue.claim("task-a")["status"] == "success"
    taskbadger_server.accept()
    assert small.flush(20)  # task-b: unknown to the server, refused and dropped


def run_clean(script, *args, env=None):
    """Run ``script`` with this Python (3.12 in CI's 3.12 leg, where no thread starts at exit): it must exit 0 with no
    traceback."""
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return done


AT_EXIT = """
import atexit, sys
import taskbadger

taskbadger.init(token=sys.argv[2], host=sys.argv[1])

@taskbadger.track(name="cleanup at exit")
def cleanup():
    return 1

atexit.register(cleanup)  # runs before Task Badger's own flush at exit (registered at import, so later)
"""


def test_a_tracked_call_made_at_exit_is_delivered_by_the_flush_at_exit(taskbadger_server):
    # Python 3.12+ refuses to start a thread in an atexit handler: the sender's first thread could not start, the
    # final state was neither queued nor sent (a traceback instead), and the flush at exit failed the same way (an
    # internal error). The flush now sends from its own thread.
    run_clean(AT_EXIT, taskbadger_server.url, taskbadger_server.api_key)
    taskbadger_server.wait_for_task(name="cleanup at exit", status="success", timeout=10)


SETTLE_AT_EXIT = """
import atexit, sys
import taskbadger
from taskbadger import inline

taskbadger.init(token=sys.argv[2], host=sys.argv[1])
task = taskbadger.create_task("settled at exit", external_id="run-at-exit")

def interrupted():  # as a create interrupted during an atexit handler: its outcome waits for its task to be found
    inline.settle_later("run-at-exit", {"status": "cancelled"})

atexit.register(interrupted)
"""


def test_a_run_left_to_settle_at_exit_is_settled_by_the_flush_at_exit(taskbadger_server):
    # On Python 3.12+ the settler's thread cannot start in an atexit handler: settle_later raised from there (in
    # place of the exception that interrupted the create). The run now waits for the flush at exit, which finds it.
    run_clean(SETTLE_AT_EXIT, taskbadger_server.url, taskbadger_server.api_key)
    taskbadger_server.wait_for_task(name="settled at exit", status="cancelled", timeout=10)


SETTLING_THROUGH_A_429 = """
import sys, time
import taskbadger
from taskbadger import inline
from taskbadger.delivery.breaker import publish_breaker

taskbadger.init(token=sys.argv[2], host=sys.argv[1])
taskbadger.create_task("lost run", external_id="lost-run")  # pending: as a create whose answer was lost
inline.settle_later("lost-run", {"status": "cancelled"})
deadline = time.monotonic() + 10
while publish_breaker().state() != "deferred":  # the settler's first look-up was answered 429
    assert time.monotonic() < deadline, "the look-up was never answered 429"
    time.sleep(0.01)
cpu = time.process_time()
while publish_breaker().state() == "deferred" and time.monotonic() < deadline:
    time.sleep(0.05)  # the settler alone runs meanwhile
print(f"{time.process_time() - cpu:.3f}", flush=True)
taskbadger.flush(10)
"""


def test_a_run_waiting_for_its_task_through_a_429_does_not_spin_a_cpu(taskbadger_server):
    # The settler (a run whose create was lost, a Procrastinate defer's abandoned create) waited for the breaker to
    # be up after a look-up it could not make; a 429 does not open the breaker, so the wait returned at once and the
    # thread asked again and again, for the whole Retry-After: a CPU spun for up to 30 s (1.2 s of CPU in 3 s).
    taskbadger_server.fail(429, times=1, method="GET", retry_after=2)
    done = run_clean(SETTLING_THROUGH_A_429, taskbadger_server.url, taskbadger_server.api_key)
    assert float(done.stdout) < 0.2, done.stdout  # the process's CPU time over the two seconds of Retry-After
    # and once the pause is over, the run's outcome is recorded on its task
    taskbadger_server.wait_for_task(name="lost run", status="cancelled", timeout=10)


SETTLING_WHILE_HUNG_CALLS_HOLD_THE_PLACES = """
import sys, threading, time
import taskbadger
from taskbadger import inline

taskbadger.init(token=sys.argv[2], host=sys.argv[1])
taskbadger.create_task("lost run", external_id="lost-run")  # pending: as a create whose answer was lost
print("ready", flush=True)
sys.stdin.readline()  # the API hangs its creates from now on
hung = [threading.Thread(target=inline.create_inline, args=("hung publish", {"status": "pending"}))
        for _ in range(4)]  # four publishes: every place of the breaker (max_in_flight)
for thread in hung:
    thread.start()
print("publishing", flush=True)
sys.stdin.readline()  # the four creates reached the API, which holds them
inline.settle_later("lost-run", {"status": "cancelled"})
cpu, wall = time.process_time(), time.monotonic()
for thread in hung:
    thread.join()  # each create waits its budget: the settler alone runs meanwhile
print(f"{time.process_time() - cpu:.3f} {time.monotonic() - wall:.3f}", flush=True)
ended = time.monotonic()
while inline.settling("lost-run") and time.monotonic() < ended + 10:
    time.sleep(0.01)
print(f"{time.monotonic() - ended:.3f}", flush=True)
taskbadger.flush(10)
"""


def test_a_run_waiting_for_its_task_while_hung_calls_hold_every_place_does_not_spin_a_cpu(taskbadger_server):
    # The breaker closed, every place held by creates the API hangs (suspect: the settler's look-up is skipped at
    # once), the settler's wait for the breaker to be up returned at once, and the thread asked again and again
    # until the hung creates' deadlines: 0.36-0.51 s of CPU in the one second of the budget. It now waits for a call
    # to end; and once the API answers, the run's outcome is recorded as soon as before (0.51-0.55 s after the hung
    # creates ended, the breaker's cool-down).
    api = taskbadger_server
    child = subprocess.Popen([sys.executable, "-c", SETTLING_WHILE_HUNG_CALLS_HOLD_THE_PLACES, api.url, api.api_key],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        api.hang(method="POST")
        child.stdin.write("hang\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "publishing"
        api.wait_for(lambda: sum(r.method == "POST" for r in api.requests) == 5 or None)  # 1 made, 4 hung
        child.stdin.write("held\n")
        child.stdin.flush()
        cpu, held = map(float, child.stdout.readline().split())
        settled_after = float(child.stdout.readline())
        _, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0 and "Traceback" not in stderr, stderr
    assert held <= 1.0 + 0.5, held  # the hung creates waited their budget (1 s), no longer
    assert cpu < 0.1, cpu  # the process's CPU time while they held the places
    assert settled_after < 3.0, settled_after  # the run did not wait longer for its task than before
    api.clear_faults()
    api.wait_for_task(name="lost run", status="cancelled", timeout=10)


FAILING_AT_EXIT = """
import atexit, sys
import taskbadger

taskbadger.init(token=sys.argv[2], host=sys.argv[1])

@taskbadger.track(name="cleanup step")
def step(i):
    return i

def cleanup():
    done = [step(i) for i in range(10)]
    print("cleanup ran", len(done), "steps", flush=True)

atexit.register(cleanup)
"""


def test_an_api_failing_at_exit_does_not_break_the_users_atexit_code(taskbadger_server):
    # Python 3.12+ refuses new threads at interpreter shutdown: the fifth failed create opened the breaker, whose
    # probe thread could not start, and the RuntimeError went into the user's atexit function (its last five
    # steps never ran). Without a probe, the breaker lets one call find out after the cool-down.
    taskbadger_server.fail(503)
    done = run_clean(FAILING_AT_EXIT, taskbadger_server.url, taskbadger_server.api_key)
    assert done.stdout.strip() == "cleanup ran 10 steps", done.stderr
    creates = [r for r in taskbadger_server.requests if r.method == "POST"]
    assert 1 <= len(creates) <= 6  # the breaker still held back the calls it should


PROXIED_SCRIPT = """
import sys
import taskbadger

taskbadger.init(token=sys.argv[2], host=sys.argv[1])

@taskbadger.track(name="nightly report")
def report():
    return 1

report()  # its final update is queued; the process ends at once, and the flush at exit sends it
"""


def test_behind_a_proxy_a_scripts_last_update_is_sent_by_the_flush_at_exit(taskbadger_server):
    # With a proxy in the environment every exchange goes through requests, in a thread of its own (for the
    # deadline). Python 3.12+ refuses that thread at exit: each final update the flush at exit sent failed with an
    # internal error, and every short script's task stayed "processing". The exchange now runs in the flushing
    # thread. The API host is a port nothing listens on: only the proxy (the stand-in, which serves a proxy's
    # absolute-form requests itself) can have delivered it.
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(HTTP_PROXY=taskbadger_server.url, NO_PROXY="")
    run_clean(PROXIED_SCRIPT, "http://127.0.0.1:9", taskbadger_server.api_key, env=env)
    taskbadger_server.wait_for_task(name="nightly report", status="success", timeout=10)


@pytest.mark.parametrize(("timeout", "error"), [("5", TypeError), (math.nan, ValueError), (True, TypeError)])
def test_flush_refuses_a_timeout_that_is_no_number_of_seconds_even_with_nothing_queued(taskbadger_server, timeout,
                                                                                        error):
    # It returned True with nothing queued, and raised (a str) or waited for ever (NaN) only when something was:
    # in production, not in the tests.
    with pytest.raises(error, match=r"flush\(timeout\) takes seconds"):
        taskbadger.flush(timeout)


def test_flush_with_none_waits_the_default(taskbadger_server):
    @taskbadger.track(name="queued end")
    def job():
        return 1

    job()
    taskbadger_server.set_latency(0.3)  # the call's end is still queued or in flight when flush() is called
    job()
    assert taskbadger.flush(None) is True  # it raised TypeError when something was queued
    assert taskbadger_server.wait_for_task(name="queued end", status="success")


def test_a_call_waiting_for_a_place_skips_when_a_call_in_flight_fails():
    """A place freed by a call that failed (a slow answer cut at its deadline, a reset) is not taken by the call that
    waited for it: the API is misbehaving, and a hang's first round must cost at most ``max_in_flight`` creates (a
    fifth reached the API under load in test_misbehaving_api's sixteen threads)."""
    from taskbadger.http import Deadline

    breaker = Breaker(max_in_flight=4)
    calls = [breaker.begin() for _ in range(4)]
    got = []
    waiting = threading.Thread(target=lambda: got.append(breaker.begin(deadline=Deadline(5.0))))
    waiting.start()
    wait_until(lambda: breaker._changed._waiters)  # type: ignore[attr-defined]  (blocked in begin, waiting)
    breaker.end(calls[0], TransportError("timed out"))  # the first in flight fails: one failure, the breaker closed
    waiting.join(5)
    assert got == [None]
