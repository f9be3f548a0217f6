"""The pooled keep-alive transport of the hot paths (the create at publish, the senders' updates)."""

import base64
import multiprocessing
import os
import subprocess
import sys
import threading

import pytest

import taskbadger
from taskbadger import ConnectError, ReadTimeout, Unauthorized, endpoints, http
from taskbadger.http import requests_backend


def update(task_id, fields):
    [error] = endpoints.update_many([(task_id, fields)])
    if error is not None:
        raise error


def create(name, fields):
    return endpoints.create({"name": name, **fields})


def test_fast_create_and_update_reuse_one_connection(taskbadger_server):
    task = create("fast", {"status": "pending"})
    for value in range(5):
        update(task.id, {"value": value})
    assert taskbadger_server.get_task(task.id)["value"] == 4
    assert len({r.connection_id for r in taskbadger_server.requests}) == 1
    assert taskbadger_server.requests[0].headers["User-Agent"].startswith("taskbadger-python/")


def test_init_again_sends_the_new_key_and_project_not_those_formatted_for_earlier_requests(taskbadger_server):
    """Requests reuse the header block and the tasks URL formatted for the requests before them (kept by identity,
    so that a sender does not format them per batch): a new configuration must never go out with the old key or
    the old project's path."""
    task = create("rekey", {"status": "pending"})
    update(task.id, {"value": 1})  # the block and the URL are formatted for this key and project
    organization, project, _ = base64.b64decode(taskbadger_server.api_key).decode().split("/")
    other_key = base64.b64encode(f"{organization}/{project}/not-the-key".encode()).decode()
    taskbadger.init(token=other_key, host=taskbadger_server.url)
    with pytest.raises(Unauthorized):
        update(task.id, {"value": 2})
    taskbadger.init(token=base64.b64encode(f"{organization}/another-project/not-the-key".encode()).decode(),
                    host=taskbadger_server.url)
    with pytest.raises(Exception):  # noqa: B017  (refused: another project, another key)
        update(task.id, {"value": 3})
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url)
    update(task.id, {"value": 4})
    assert taskbadger_server.get_task(task.id)["value"] == 4
    patches = [r for r in taskbadger_server.requests if r.method == "PATCH"]
    assert [r.headers["Authorization"].endswith("not-the-key") for r in patches] == [False, True, True, False]
    assert [f"/{project}/" in r.path for r in patches] == [True, True, False, True]


def test_a_batch_goes_out_on_several_kept_alive_connections(taskbadger_server):
    tasks = [create(f"b{i}", {"status": "pending"}) for i in range(4)]
    taskbadger_server.fail(404, times=1, method="PATCH")
    for round_ in range(3):
        errors = [type(e).__name__ if e else None for e in endpoints.update_many(
            [(t.id, {"value": round_}) for t in tasks])]
        if round_ == 0:
            # the server answers the four connections in whatever order its threads run: the one 404
            # can hit any of them, and must be reported for the update that did not land
            assert errors.count("NotFound") == 1 and errors.count(None) == 3
            values = [taskbadger_server.get_task(t.id)["value"] for t in tasks]
            assert [v is None for v in values] == [e == "NotFound" for e in errors]
        else:
            assert errors == [None] * 4
    assert [taskbadger_server.get_task(t.id)["value"] for t in tasks] == [2, 2, 2, 2]
    conns = [r.connection_id for r in taskbadger_server.requests if r.method == "PATCH"]
    assert len(set(conns[:4])) == 4  # one connection per update of the batch...
    assert set(conns[4:]) == set(conns[:4])  # ...kept alive across batches


def test_one_slow_answer_in_a_batch_times_out_alone(taskbadger_server):
    tasks = [create(f"s{i}", {"status": "pending"}) for i in range(4)]
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, timeout=(1, 0.3))
    taskbadger_server.set_latency(2.0, times=1, method="PATCH")
    errors = endpoints.update_many([(t.id, {"value": 1}) for t in tasks])
    assert [type(e).__name__ for e in errors if e] == ["ReadTimeout"]
    answered = [t for t, e in zip(tasks, errors, strict=True) if e is None]
    assert [taskbadger_server.get_task(t.id)["value"] for t in answered] == [1, 1, 1]
    assert endpoints.update_many([(t.id, {"value": 2}) for t in tasks]) == [None] * 4  # its connection was replaced


def test_errors_map_like_the_requests_transport(taskbadger_server):
    task = create("x", {"status": "pending"})
    taskbadger_server.fail(401, times=1)
    with pytest.raises(Unauthorized):
        update(task.id, {"value": 1})
    taskbadger.init(token=taskbadger_server.api_key, host=taskbadger_server.url, timeout=(1, 0.3))
    taskbadger_server.set_latency(1.0, times=1)
    with pytest.raises(ReadTimeout) as info:
        update(task.id, {"value": 2})
    assert info.value.reached_server
    taskbadger_server.refuse()
    try:
        with pytest.raises(ConnectError) as info:
            update(task.id, {"value": 3})
        assert not info.value.reached_server
    finally:
        taskbadger_server.accept()
    update(task.id, {"value": 4})  # reconnects by itself
    assert taskbadger_server.get_task(task.id)["value"] == 4


def test_a_connection_the_server_closed_while_idle_is_replaced_quietly(taskbadger_server):
    task = create("idle", {"status": "pending"})
    taskbadger_server.refuse()  # closes every open connection...
    taskbadger_server.accept()  # ...and listens again
    create("idle 2", {"status": "pending"})  # a POST too: checked, not resent
    update(task.id, {"value": 1})
    assert [r.status for r in taskbadger_server.requests] == [201, 201, 200]


def test_a_recently_used_connection_closed_by_the_server_resends_a_patch_once_but_never_a_post(
        taskbadger_server):
    task = create("stale", {"status": "pending"})
    taskbadger_server.refuse()  # closes the kept-alive connection right after its last use
    taskbadger_server.accept()
    update(task.id, {"value": 1})  # found closed while sending or reading: sent again, new connection
    assert taskbadger_server.get_task(task.id)["value"] == 1

    taskbadger_server.drop(times=1, method="POST")  # reads the create, closes without answering
    with pytest.raises(taskbadger.TransportError):
        create("maybe created", {"status": "pending"})
    assert [r.method for r in taskbadger_server.requests].count("POST") == 2  # not sent again


def _update_in_child(task_id, queue):
    try:
        update(task_id, {"value": 9})
        queue.put("ok")
    except Exception as err:
        queue.put(repr(err))


# It forks a process that has threads, on purpose: billiard's prefork pool does (Python 3.12 warns about it).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Using fork.. is a bad idea:DeprecationWarning")  # eventlet, when loaded
def test_a_forked_child_does_not_reuse_the_parents_socket(taskbadger_server):
    task = create("fork", {"status": "pending"})
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_update_in_child, args=(task.id, queue))
    child.start()
    assert queue.get(timeout=10) == "ok"
    child.join(10)
    update(task.id, {"value": 10})
    conns = [r.connection_id for r in taskbadger_server.requests]
    assert conns[0] == conns[2] != conns[1]


def test_import_taskbadger_leaves_requests_out_until_a_proxy_may_apply():
    """``requests`` was two fifths of ``import taskbadger`` and ``asyncio`` a sixth: a process whose API host no proxy
    serves never loads requests, and one with a proxy in its environment still sends through it."""
    script = ("import sys, taskbadger\n"
              "assert 'asyncio' not in sys.modules and 'requests' not in sys.modules, 'loaded by import taskbadger'\n"
              "import taskbadger.celery, taskbadger.procrastinate\n"
              "taskbadger.init(organization_slug='o', project_slug='p', token='k', host='http://127.0.0.1:9')\n"
              "from taskbadger import http\n"
              "print(type(http.transport_for(taskbadger.get_config())).__name__, 'requests' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    plain = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert plain.stdout.split() == ["PooledTransport", "False"], plain.stderr
    proxied = subprocess.run([sys.executable, "-c", script], env={**env, "https_proxy": "http://127.0.0.1:9"},
                             capture_output=True, text=True, timeout=60)
    assert proxied.stdout.split() == ["RequestsTransport", "True"], proxied.stderr


def test_a_proxy_in_the_environment_sends_everything_through_requests(taskbadger_server, monkeypatch):
    http._proxied.cache_clear()
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "")
    try:
        assert isinstance(http.transport_for(taskbadger.get_config()), requests_backend.RequestsTransport)
        with pytest.raises(taskbadger.TransportError):
            update("any", {"value": 1})  # went to the (dead) proxy, through requests
        assert taskbadger_server.requests == []
    finally:
        http._proxied.cache_clear()


def _connections_of(server, method):
    return [r.connection_id for r in server.requests if r.method == method]


def test_short_lived_threads_share_the_process_connections(taskbadger_server):
    # A web server that starts a thread per request must not open a connection per .delay()
    for i in range(20):
        thread = threading.Thread(target=create, args=(f"t{i}", {"status": "pending"}))
        thread.start()
        thread.join()
    assert len(set(_connections_of(taskbadger_server, "POST"))) == 1


def test_concurrent_requests_never_share_a_connection(taskbadger_server):
    # Held for 0.5 s by the server, each request is still in flight when the other threads send theirs.
    taskbadger_server.set_latency(0.5)
    start = threading.Barrier(5)
    created: list[int] = []

    def create_one(i):
        start.wait(5)
        created.append(create(f"c{i}", {"status": "pending", "data": {"i": i}}).data["i"])

    threads = [threading.Thread(target=create_one, args=(i,)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(created) == [0, 1, 2, 3, 4]  # each thread read its own answer
    first = _connections_of(taskbadger_server, "POST")
    assert len(set(first)) == 5
    for i in range(5):  # afterwards, the same connections serve one thread after another
        create(f"again{i}", {"status": "pending"})
    assert set(_connections_of(taskbadger_server, "POST")[5:]) <= set(first)


GREEN_PUBLISHER = """
import sys
kind = sys.argv[1]
if kind == "gevent":
    from gevent import monkey
    monkey.patch_all()
    import gevent
    def run_in_new_greenlet(fn):
        gevent.spawn(fn).join()
else:
    import eventlet
    eventlet.monkey_patch()
    def run_in_new_greenlet(fn):
        eventlet.spawn(fn).wait()
import taskbadger
from taskbadger import endpoints, http
config = taskbadger.init()  # TASKBADGER_HOST and TASKBADGER_API_KEY from the environment
assert isinstance(http.transport_for(config), http.pooled.PooledTransport)
for i in range(20):  # like a greenlet per web request, or per task in a green Celery pool
    run_in_new_greenlet(lambda: endpoints.create({"name": f"g{i}", "status": "pending"}))
print("done")
"""


@pytest.mark.parametrize("kind", ["gevent", "eventlet"])
def test_greenlets_share_the_process_connections(taskbadger_server, kind):
    env = {**os.environ, "TASKBADGER_HOST": taskbadger_server.url, "TASKBADGER_API_KEY": taskbadger_server.api_key}
    done = subprocess.run([sys.executable, "-c", GREEN_PUBLISHER, kind], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "done", done.stderr[-2000:]
    assert len(_connections_of(taskbadger_server, "POST")) == 20
    assert len(set(_connections_of(taskbadger_server, "POST"))) == 1


EXIT_SCRIPT = """
import sys
import taskbadger
from taskbadger.delivery import sender
from taskbadger.http import requests_backend

taskbadger.init(token=sys.argv[2], host=sys.argv[1])
task = taskbadger.create_task("ends")
task.update(value=1)  # the pooled transport keeps its connection for the next request
requests_backend.session().get(sys.argv[1] + "/", timeout=10).raise_for_status()  # the requests transport's
sender.submit(task.id, {"value": 2})  # queued: delivered by the flush at exit, before the connections close
print("done")
"""


def test_a_process_ends_with_its_kept_alive_connections_closed(taskbadger_server):
    # Left to the garbage collector at exit, they print a ResourceWarning into the user's own output
    # (python -X dev, test runners that show warnings).
    run = subprocess.run([sys.executable, "-X", "dev", "-c", EXIT_SCRIPT, taskbadger_server.url,
                          taskbadger_server.api_key], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert run.returncode == 0 and "done" in run.stdout, run.stderr
    assert "ResourceWarning" not in run.stderr, run.stderr
    assert taskbadger_server.get_task(next(r.task_id for r in taskbadger_server.requests if r.task_id))["value"] == 2
