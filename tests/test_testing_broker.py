"""taskbadger.testing.broker: the embedded broker never hands a worker a half-written message."""

from queue import Empty

from kombu import Connection

from taskbadger.testing import broker


def _channel(folder):
    conn = Connection("filesystem://", transport="taskbadger.testing.broker:FilesystemTransport",
                      transport_options={"data_folder_in": str(folder), "data_folder_out": str(folder)})
    return conn, conn.default_channel


def test_a_message_being_written_is_not_visible_to_a_worker(tmp_path, monkeypatch):
    conn, channel = _channel(tmp_path)
    seen_mid_write = []
    real_open = open

    def open_and_look(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "w" in mode:  # the message file exists now: what would a polling worker get?
            try:
                seen_mid_write.append(channel._get("jobs"))
            except Empty:
                seen_mid_write.append(None)
        return f

    monkeypatch.setattr(broker, "open", open_and_look, raising=False)
    channel._put("jobs", {"body": "hello"})
    monkeypatch.undo()
    assert seen_mid_write == [None]
    assert channel._get("jobs") == {"body": "hello"}
    conn.release()


def test_messages_from_one_process_keep_their_order_and_nothing_is_left_behind(tmp_path):
    conn, channel = _channel(tmp_path)
    for i in range(50):  # many within one millisecond
        channel._put("jobs", {"n": i})
    assert [channel._get("jobs")["n"] for _ in range(50)] == list(range(50))
    assert not [p for p in tmp_path.iterdir() if p.is_file()]
    conn.release()


def test_a_worker_asked_to_stop_stops_waiting_for_messages_at_once(tmp_path, monkeypatch):
    """Celery's loop for a polled transport waits 2 s per call and checks for a shutdown between calls: every warm
    shutdown on this broker waited that out (4 s per worker stopped). Asked to stop, the wait ends; not asked, it
    lasts its whole timeout, as kombu's."""
    import socket
    import time

    import pytest
    from celery.worker import state

    conn, channel = _channel(tmp_path)
    from kombu import Consumer, Queue

    Consumer(conn, [Queue("jobs")], callbacks=[lambda body, message: None]).consume()
    try:
        started = time.monotonic()
        with pytest.raises(socket.timeout):
            conn.drain_events(timeout=0.5)
        assert time.monotonic() - started >= 0.5  # not asked to stop: the whole timeout

        monkeypatch.setattr(state, "should_stop", 0)  # what Celery's SIGTERM handler sets (EX_OK)
        started = time.monotonic()
        with pytest.raises(socket.timeout):
            conn.drain_events(timeout=30)
        assert time.monotonic() - started < 10  # a third of the timeout: well above the 0.1 s it takes
    finally:
        conn.release()
