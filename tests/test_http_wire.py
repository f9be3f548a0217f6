"""The pooled transport's HTTP/1.1 exchange against answers the stand-in API never gives."""

import base64
import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import taskbadger
from taskbadger import TransportError
from taskbadger.config import build_config
from taskbadger.http import build_request, pooled
from taskbadger.http.connection import Connection


class RawServer:
    """Answers each request on a connection with the next canned bytes, then closes if told to."""

    def __init__(self, answers: list[bytes], close_after: bool = False) -> None:
        self.answers = answers
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            buffer = b""
            for answer in self.answers:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length")), b"0"))
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + buffer[:length])
                buffer = buffer[length:]
                conn.sendall(answer)
            if self.close_after:
                conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


def call(server, body=None):
    body = {"a": 1} if body is None else body
    config = build_config(token=base64.b64encode(b"x/y/k").decode(), host=server.url, timeout=(2.0, 2.0))
    return pooled.PooledTransport().exchange(config, build_request(config, "PATCH", json_body=body))


@pytest.fixture(autouse=True)
def fresh_connections():
    pooled.close_idle()  # each test talks to its own raw server
    yield
    pooled.close_idle()


def test_request_bytes_are_well_formed():
    server = RawServer([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"])
    status, _, body = call(server)  # (a 2xx answer's headers are not kept: nothing reads them)
    assert (status, body) == (200, b"{}")
    request = server.requests[0]
    assert request.startswith(b"PATCH /api/x/y/tasks/ HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nAuthorization: Bearer k\r\n" in request and b"\r\nContent-Length: 7\r\n" in request
    assert request.endswith(b'\r\n\r\n{"a":1}')


def test_chunked_answers_and_keep_alive():
    server = RawServer([
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;ext=1\r\n:1}\r\n0\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    ])
    assert call(server)[2] == b'{"a":1}'
    assert call(server)[0] == 201  # same connection: the chunked body was consumed exactly
    assert len(server.requests) == 2


def test_a_body_without_length_ends_when_the_server_closes():
    server = RawServer([b"HTTP/1.0 200 OK\r\n\r\nall of it"], close_after=True)
    status, headers, body = call(server)
    assert (status, body, headers["connection"]) == (200, b"all of it", "close")
    assert pooled.idle_connections() == 0  # closed, not kept for reuse


def test_interim_100_continue_is_skipped():
    server = RawServer([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"])
    assert call(server) == (204, {}, b"")


def test_connection_close_header_closes_it():
    server = RawServer([b"HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"])
    status, headers, _ = call(server)
    assert (status, headers["retry-after"]) == (429, "3")
    assert pooled.idle_connections() == 0  # closed, not kept for reuse


def test_one_connection_reads_usual_and_unusual_answers_in_turn():
    # The usual answer (a whole 2xx, kept alive) is read without its headers; the others are parsed again
    # with them, and the answer after them is read the usual way again, on the same connection.
    big = b'{"data":"%s"}' % (b"x" * 100_000)  # more than one read: it ends in a later one
    server = RawServer([
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nContent-Length: 7\r\n\r\n{\"b\":2}",
    ])
    assert call(server)[::2] == (200, b"{}")
    status, headers, _ = call(server)
    assert (status, headers["retry-after"]) == (429, "3")
    assert call(server)[::2] == (200, big)
    assert call(server)[::2] == (200, b"{}")
    assert call(server)[::2] == (201, b'{"b":2}')
    assert len(server.requests) == 5  # one connection (the raw server accepts one) carried them all
    assert pooled.idle_connections() == 1


def test_more_than_100_header_lines_are_refused_in_a_small_answer_too():
    lines = b"".join(b"X-%d: 1\r\n" % n for n in range(100))  # and Content-Length: 101 lines, in 1 KB
    server = RawServer([b"HTTP/1.1 200 OK\r\n%sContent-Length: 2\r\n\r\n{}" % lines])
    with pytest.raises(TransportError, match="more than 100 header lines"):
        call(server)
    server = RawServer([b"HTTP/1.1 200 OK\r\n%sContent-Length: 2\r\n\r\n{}" % lines[:-len(b"X-99: 1\r\n")]])
    assert call(server)[::2] == (200, b"{}")  # 100 lines are within the limit


def test_an_answer_switching_protocols_is_a_transport_error():
    # llhttp raises HttpParserUpgrade, not an HttpParserError, for a 101: it escaped as an unknown error ("77", the
    # offset where the upgrade began), and the publish logged that as its reason
    server = RawServer([b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"])
    with pytest.raises(TransportError, match="101 Switching Protocols"):
        call(server)
    assert pooled.idle_connections() == 0


def test_a_server_that_closes_mid_answer_is_a_transport_error():
    server = RawServer([b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"trunc"], close_after=True)
    with pytest.raises(TransportError):
        call(server)


def test_garbage_is_a_transport_error():
    server = RawServer([b"SSH-2.0-OpenSSH\r\n\r\n"])
    with pytest.raises(TransportError, match="not an HTTP answer"):
        call(server)


def test_an_answer_that_starts_with_a_byte_order_mark_is_json():
    # a proxy may add one; the JSON standard lets readers ignore it (Python's json.loads on bytes did)
    from taskbadger.http import decode

    assert decode(200, {}, b'\xef\xbb\xbf{"id": "abc"}') == {"id": "abc"}


DEEP = b"[" * 200_000 + b"]" * 200_000  # deeper than Python's JSON parser goes: RecursionError, not ValueError


def test_json_nested_too_deeply_is_a_bad_answer_not_a_recursion_error():
    """A confused proxy's 400 KB of brackets: the senders' batch failed as an internal error (none retried), and
    the public API raised RecursionError."""
    from taskbadger.http import decode
    from taskbadger.http.errors import BadAnswer

    with pytest.raises(BadAnswer):
        decode(200, {}, DEEP)
    assert "[[[" in str(pytest.raises(taskbadger.TaskbadgerException, decode, 400, {}, DEEP).value)
    server = RawServer([b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: "
                        + str(len(DEEP)).encode() + b"\r\n\r\n" + DEEP])
    try:
        taskbadger.init(token=base64.b64encode(b"x/y/k").decode(), host=server.url)
        with pytest.raises(taskbadger.TaskbadgerException):
            taskbadger.create_task("deep")
    finally:
        taskbadger.config.reset()
        server.close()


def test_a_stray_answer_about_a_task_of_the_same_name_is_not_taken_for_a_create():
    """A stray answer to an update of a task named as the next create, arriving just before the create's own
    answer (a CI run: the create got an earlier task, gone since, and its updates were refused with 404)."""
    import json

    def answer(status_line, task):
        body = json.dumps(task).encode()
        return f"HTTP/1.1 {status_line}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n" \
            .encode() + body

    stray = answer("200 OK", {"id": "A" * 26, "name": "same", "status": "success", "value": 7})
    own = answer("201 Created", {"id": "B" * 26, "name": "same", "status": "pending"})
    server = RawServer([stray + own])
    try:
        taskbadger.init(token=base64.b64encode(b"x/y/k").decode(), host=server.url)
        task = taskbadger.create_task("same")
        assert (task.id, task.status) == ("B" * 26, "pending")
    finally:
        server.close()



TOKEN = base64.b64encode(b"x/y/k").decode()
BODIES = [{"name": "é\u2028\"quoted\"\n\t", "value": 7, "value_max": 10, "data": {"nested": [None, True, 1.5, -3]}},
          {"status": "success", "end_time": "2026-12-07T16:00:00.000001+00:00"}, {"data": {}}, {"tags": {"k": "v"}}]


@pytest.mark.parametrize("body", BODIES)
def test_a_request_body_is_the_json_the_standard_encoder_writes(body):
    import json

    request = build_request(build_config(token=TOKEN), "PATCH", "abc", json_body=body)
    assert request.body == json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def test_a_request_carries_the_key_and_host_of_the_configuration_it_was_built_for():
    """The tasks URL and the headers are kept for the last configuration: a new one (another key, another host, as
    ``init`` makes) must never send a request with the one before's."""
    from taskbadger.http import Request

    first = build_config(token=base64.b64encode(b"x/y/first").decode(), host="http://127.0.0.1:1")
    second = build_config(token=base64.b64encode(b"a/b/second").decode(), host="http://127.0.0.1:2")
    for config, org, key in ((first, "x/y", "x/y/first"), (second, "a/b", "a/b/second"), (first, "x/y", "x/y/first")):
        for body in (None, {"status": "success"}):
            request = build_request(config, "PATCH", "abc", json_body=body)
            assert isinstance(request, Request) and request.method == "PATCH"
            assert request.headers["Authorization"] == "Bearer " + key.rsplit("/", 1)[1]
            assert ("Content-Type" in request.headers) is (body is not None)
            assert request.url == f"{config.host}/api/{org}/tasks/abc/"
            assert request.target == f"/api/{org}/tasks/abc/"
            assert request.expect is None and request.body == (None if body is None else b'{"status":"success"}')


class _Text(str):
    pass


_FIELD_NAMES = ["status", "start_time", "end_time", "name", "value", "value_max", "data", "tags", "parent", "queue",
                "external_id", "max_runtime", "stale_timeout", "time_to_start", "other", "Status", "status "]
_VALUES = st.one_of(
    st.text(max_size=40), st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF),
                                  max_size=20),
    st.integers(), st.none(), st.booleans(), st.floats(allow_nan=False), st.builds(_Text, st.text(max_size=10)),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2), st.lists(st.integers(), max_size=2))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.one_of(st.sampled_from(_FIELD_NAMES), st.text(max_size=6)), _VALUES, max_size=6))
def test_a_body_of_any_fields_is_written_as_the_standard_encoder_writes_it(body):
    """The usual body (the API's field names with text, whole-number or null values) is written without the
    encoder: the text must be the encoder's, to the byte, for those and for any other key or value beside them
    (control characters, quotes, lone surrogates, non-ASCII, a str subclass, booleans, floats, nested values)."""
    import json

    from taskbadger.http import request as request_module

    encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
    for order in (body, dict(reversed(body.items()))):
        try:
            standard = encoder.encode(order)
        except ValueError:  # infinity: refused by both
            with pytest.raises(ValueError):
                request_module._json_text(order)
            continue
        assert request_module._json_text(order) == standard


@pytest.mark.parametrize("body", [{"status": "success", "value": True}, {"status": "x", "value": 1.5},
                                  {"status": 1, "tags": {"a": "b"}}])
def test_a_usual_body_with_one_unusual_value_is_the_standard_text_too(body):
    import json

    from taskbadger.http import request as request_module

    assert request_module._json_text(body) == json.dumps(body, separators=(",", ":"), allow_nan=False)


@pytest.mark.parametrize("bad", [{"value": float("nan")}, {"data": {"when": object()}}, {"data": {1, 2}}])
def test_a_body_json_cannot_hold_is_refused_before_anything_is_sent(bad):
    with pytest.raises(taskbadger.InvalidData):
        build_request(build_config(token=TOKEN), "PATCH", "abc", json_body=bad)


def test_the_c_encoder_is_used_only_where_it_agrees_with_the_standard_one(monkeypatch):
    """The bodies are encoded by calling json's C encoder directly (its arguments are json's own business): on a
    Python whose C encoder takes other arguments, or writes other text, the standard encoder is used instead of
    refusing every body."""
    from taskbadger.http import request as request_module

    assert request_module._c_encoder_agrees()  # this Python's: used

    def other_signature(*args):
        raise TypeError("c_make_encoder() takes 10 arguments")

    monkeypatch.setattr(request_module, "_C_MAKE_ENCODER", other_signature)
    assert not request_module._c_encoder_agrees()
    monkeypatch.setattr(request_module, "_C_MAKE_ENCODER", lambda *args: (lambda value, level: ["{}"]))
    assert not request_module._c_encoder_agrees()


# -- the two answer parsers' hand-offs, on any split of the bytes -------------------------------------------------

@st.composite
def _answer(draw):
    """(bytes of one kept-alive answer, its status, its body, its Retry-After or None)."""
    status = draw(st.sampled_from([200, 201, 429, 503, 100]))
    if status == 100:  # an interim answer: the real one follows it on the wire
        wire, real_status, body, retry = draw(_answer().filter(lambda a: a[1] != 100))
        return b"HTTP/1.1 100 Continue\r\n\r\n" + wire, real_status, body, retry
    body = draw(st.binary(max_size=300))
    extra = b"".join(b"X-Extra-%d: %s\r\n" % (i, b"v" * draw(st.integers(0, 40)))
                     for i in range(draw(st.integers(0, 6))))
    retry = str(draw(st.integers(0, 30))) if status in (429, 503) else None
    head = b"HTTP/1.1 %d Status\r\n%s" % (status, extra)
    if retry is not None:
        head += b"Retry-After: %s\r\n" % retry.encode()
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(body)))
        pieces = [p for p in (body[:cut], body[cut:]) if p]
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + framed, status, body, retry
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body, status, body, retry


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers=st.lists(_answer(), min_size=1, max_size=5), data=st.data())
def test_answers_split_anywhere_read_the_same_through_both_parsers(answers, data):
    """The usual answers (whole 2xx, kept alive) are read by a parser without headers, anything else again from its
    first byte by the one with every check: on one connection, whatever the reads cut, each answer arrives once, in
    order, with its status, its body and (for a 429/503) its Retry-After, and the connection stays reusable."""
    wire = b"".join(a[0] for a in answers)
    cuts = sorted(data.draw(st.lists(st.integers(1, max(1, len(wire) - 1)), max_size=6, unique=True)))
    conn = Connection("http", "127.0.0.1", 80)
    conn.fresh()
    got = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        answer = conn._take(wire[start:end])
        if answer is not None:
            got.append(answer)
        while conn._ready:
            got.append(conn._next())
    assert [(status, body) for status, _, body in got] == [(a[1], a[2]) for a in answers]
    for (_, headers, _), (_, _, _, retry) in zip(got, answers, strict=True):
        if retry is not None:
            assert headers.get("retry-after") == retry
    assert not conn._in_answer() and not conn._ready


def test_a_batch_of_updates_is_answered_per_update_whatever_its_answers_say():
    """``update_many`` takes an answer that starts with its task's id, 2xx, as delivered without reading it further;
    any other answer is read whole: a 2xx that is not the task is a bad answer, a 404 is NotFound, and an update
    refused before it was sent keeps its place in the results."""
    from taskbadger import endpoints

    own = "T" * 26

    def answer(status: bytes, body: bytes) -> bytes:
        return b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            status, len(body), body)

    server = RawServer([answer(b"200 OK", b"{}"), answer(b"200 OK", b'{"id":"%s","status":"success"}' % own.encode()),
                        answer(b"404 Not Found", b'{"id":"%s","detail":"Not found."}' % own.encode()),
                        answer(b"200 OK", b'{"id": "%s", "status": "success"}' % own.encode())])
    try:
        taskbadger.init(token=TOKEN, host=server.url)
        first = endpoints.update_many([("a/b", {"status": "success"}), (own, {"status": "success"})])
        assert [type(result).__name__ for result in first] == ["InvalidData", "BadAnswer"]
        assert endpoints.update_many([(own, {"status": "success"}), ("", {"value": 1})])[0] is None
        assert isinstance(endpoints.update_many([(own, {"value": 2})])[0], taskbadger.exceptions.NotFound)
        assert endpoints.update_many([(own, {"value": 3})]) == [None]
        assert len(server.requests) == 4
    finally:
        server.close()


def test_a_body_is_cleaned_into_the_apis_shape_whatever_the_kind_of_each_value():
    """``clean_body`` takes text fields as they are but for a status (checked) and tags (refused as text); statuses
    given as enum members or text subclasses are sent as their text, datetimes as ISO 8601, NULL as null, None left
    out."""
    import datetime as dt

    from taskbadger import StatusEnum, endpoints
    from taskbadger.models import NULL

    class Text(str):
        pass

    when = dt.datetime(2026, 12, 7, 16, 0, 0, 1)
    cleaned = endpoints.clean_body({
        "status": "success", "start_time": "2026-12-07T16:00:00+00:00", "end_time": when, "name": "n",
        "value": 3, "data": NULL, "queue": None, "tags": {"k": 1}, "external_id": Text("e")})
    assert cleaned == {"status": "success", "start_time": "2026-12-07T16:00:00+00:00",
                       "end_time": "2026-12-07T16:00:00.000001+00:00", "name": "n", "value": 3, "data": None,
                       "tags": {"k": "1"}, "external_id": "e"}
    for status in (StatusEnum.ERROR, Text("error")):
        sent = endpoints.clean_body({"status": status})["status"]
        assert sent == "error" and sent.__class__ is str
    for bad in ("done", Text("done"), "SUCCESS", "success "):
        with pytest.raises(ValueError, match="Unknown task status"):
            endpoints.clean_body({"status": bad})
    for tags in ("k=v", Text("k=v"), ["k"]):
        with pytest.raises(taskbadger.InvalidData, match="tags must be a dict"):
            endpoints.clean_body({"tags": tags})


def test_a_calls_deadline_and_its_answers_deadline():
    """``Deadline.for_call``: connect + read in all, connecting within ``connect`` (never more than the whole); once
    the request is sent, ``sent()`` gives the answer ``read`` from then, when that is sooner than the whole."""
    import time

    from taskbadger.http import Deadline

    before = time.monotonic()
    deadline = Deadline.for_call((2.0, 5.0))
    after = time.monotonic()
    assert (deadline.seconds, deadline.connect, deadline.read) == (7.0, 2.0, 5.0)
    assert before + 7.0 <= deadline.at <= after + 7.0
    assert Deadline.for_call((0.0, 3.0)).connect == 0.0

    before = time.monotonic()
    answer = deadline.sent()
    after = time.monotonic()
    assert answer is not deadline and (answer.seconds, answer.connect, answer.read) == (5.0, 2.0, None)
    assert before + 5.0 <= answer.at <= after + 5.0 and answer.at < deadline.at
    assert answer.sent() is answer  # no read budget of its own: the deadline itself
    late = Deadline.for_call((2.0, 5.0))
    late.at = time.monotonic() + 1.0  # less left than the read budget: the whole deadline stays
    assert late.sent() is late
    assert 0 < late.remaining() <= 1.0 and not late.expired()
    assert Deadline(0.5).read is None and Deadline(3.0, 9.0).connect == 3.0


def test_a_request_larger_than_the_sockets_buffer_arrives_whole():
    """Most requests leave in one ``send``; one that the socket takes in parts (8 MB of data, more than a socket's
    send buffer) is sent to its last byte, and answered."""
    server = RawServer([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"] * 2)
    try:
        data = "x" * (8 * 1024 * 1024)
        assert call(server, {"data": data})[::2] == (200, b"{}")
        assert call(server, {"value": 1})[::2] == (200, b"{}")  # the same connection, after it
        assert server.requests[0].endswith(b'\r\n\r\n{"data":"%s"}' % data.encode())
        assert server.requests[1].endswith(b'\r\n\r\n{"value":1}')
    finally:
        server.close()
