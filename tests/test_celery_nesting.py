"""Parent/child nesting of tasks published from tracked tasks; chains, links and canvas."""

import pytest
from celery import chain, group

from .celery_project import app as tasks

pytestmark = pytest.mark.integration
NAME = "tests.celery_project.app."


def done(server, count):
    return server.wait_for(lambda: len([t for t in server.tasks.values() if t["status"] == "success"]) == count,
                           timeout=20)


def test_tasks_published_inside_a_tracked_task_are_its_children(taskbadger_server, any_worker):
    # spawn_children publishes to the default queue; route it to this worker's queue
    parent = any_worker.send(tasks.spawn_children, 2)
    taskbadger_server.wait_for_task(name=NAME + "spawn_children", status="success")
    children = [t for t in taskbadger_server.tasks.values() if t["name"] == NAME + "add"]
    assert len(children) == 3
    with_parent = [t for t in children if t["parent"] == parent.taskbadger_task_id]
    assert len(with_parent) == 2  # the third opted out with taskbadger_parent=None
    assert [t for t in children if t["parent"] is None]


def test_children_of_children_become_siblings(taskbadger_server, any_worker):
    root = any_worker.send(tasks.spawn_nested)
    taskbadger_server.wait_for(lambda: len(taskbadger_server.tasks) == 3)
    by_name = {t["name"]: t for t in taskbadger_server.tasks.values()}
    assert by_name[NAME + "spawn_grandchild"]["parent"] == root.taskbadger_task_id
    assert by_name[NAME + "add"]["parent"] == root.taskbadger_task_id


def test_explicit_parent_option(taskbadger_server, prefork_worker):
    import taskbadger

    root = taskbadger.create_task("root")
    prefork_worker.send(tasks.add, 1, 1, taskbadger_parent=root.id)
    task = taskbadger_server.wait_for_task(name=NAME + "add", status="success")
    assert task["parent"] == root.id


def test_chain_successors_and_link_callbacks_are_not_nested(taskbadger_server, prefork_worker):
    q = prefork_worker.queue
    chain(tasks.add.s(1, 1).set(queue=q), tasks.add.s(10).set(queue=q)).apply_async()
    tasks.add.apply_async((2, 2), queue=q, link=tasks.add.s(5).set(queue=q))
    done(taskbadger_server, 4)
    assert all(t["parent"] is None for t in taskbadger_server.tasks.values())


def test_a_link_publishing_the_task_chained_after_it_keeps_its_children(taskbadger_server, prefork_worker):
    """The next link is the task the body published too: those are still the body's children, the link is not."""
    q = prefork_worker.queue
    result = chain(tasks.spawn_children.si(2).set(queue=q), tasks.add.si(5, 5).set(queue=q)).apply_async()
    done(taskbadger_server, 5)
    [root] = taskbadger_server.tasks_named(NAME + "spawn_children")
    parents = {t["external_id"]: t["parent"] for t in taskbadger_server.tasks_named(NAME + "add")}
    assert parents.pop(result.id) is None  # the chain's next link
    assert sorted(parents.values(), key=str) == sorted([root["id"], root["id"], None], key=str)


def test_a_chain_published_inside_a_task_is_its_children(taskbadger_server, prefork_worker):
    """The second link is published by the first one's worker: it followed the first link, with no parent."""
    root = prefork_worker.send(tasks.spawn_chain)
    done(taskbadger_server, 3)
    links = [t for t in taskbadger_server.tasks.values() if t["name"] == NAME + "add"]
    assert [t["parent"] for t in links] == [root.taskbadger_task_id] * 2


def test_a_group_in_a_chain_follows_the_link_before_it(taskbadger_server, prefork_worker):
    """The group's tasks are published by the first link's worker: they were nested under it."""
    q = prefork_worker.queue
    chain(tasks.add.s(1, 1).set(queue=q), group(tasks.add.s(2).set(queue=q), tasks.add.s(3).set(queue=q))) \
        .apply_async()
    done(taskbadger_server, 3)
    assert [t["parent"] for t in taskbadger_server.tasks.values()] == [None] * 3


def test_a_chords_body_follows_its_header(taskbadger_server, backend_worker):
    """The last header task to finish publishes the body: it was nested under that header task."""
    backend_worker.send(tasks.start_chord)
    done(taskbadger_server, 3)
    assert {t["name"]: t["parent"] for t in taskbadger_server.tasks.values()} == {NAME + "add": None,
                                                                                NAME + "record_me": None}


def test_a_chords_errback_follows_the_header_task_that_failed(taskbadger_server, backend_worker):
    """A header task that fails publishes the errback of the chord's body after it ended: not its child."""
    backend_worker.send(tasks.start_failing_chord)
    errback = taskbadger_server.wait_for_task(name=NAME + "on_error", status="success", timeout=20)
    failed = taskbadger_server.wait_for_task(name=NAME + "fail", status="error")
    assert (errback["parent"], failed["parent"]) == (None, None)
    assert not taskbadger_server.tasks_named(NAME + "record_me")  # the body never ran


def test_an_errback_follows_the_task_that_failed(taskbadger_server, prefork_worker):
    q = prefork_worker.queue
    tasks.fail.apply_async(("broken",), queue=q, link_error=tasks.on_error.s().set(queue=q))
    errback = taskbadger_server.wait_for_task(name=NAME + "on_error", status="success")
    assert errback["parent"] is None  # it was nested under the task that failed


@pytest.mark.parametrize("kind", ["map", "starmap"])
def test_map_and_starmap_are_tracked_with_the_inner_name_and_item_count(taskbadger_server, prefork_worker, kind):
    if kind == "map":
        sig = tasks.record_me.map([1, 2, 3])
    else:
        sig = tasks.add.starmap([(1, 2), (3, 4), (5, 6)])
    sig.apply_async(queue=prefork_worker.queue)
    inner = NAME + ("record_me" if kind == "map" else "add")
    task = taskbadger_server.wait_for_task(name=f"{inner} ({kind} 3)", status="success")  # the official SDK's name
    assert task["data"] == {"canvas_type": f"celery.{kind}", "item_count": 3, "canvas": kind, "items": 3}
    assert len(taskbadger_server.tasks) == 1  # the items run inside it, untracked


def test_chunks_track_each_chunk(taskbadger_server, prefork_worker):
    tasks.add.chunks([(i, i) for i in range(7)], 3).apply_async(queue=prefork_worker.queue)
    done(taskbadger_server, 3)
    assert sorted(t["data"]["items"] for t in taskbadger_server.tasks.values()) == [1, 3, 3]
    assert {t["name"] for t in taskbadger_server.tasks.values()} == {NAME + "add (starmap 3)", NAME + "add (starmap 1)"}


def test_a_child_whose_create_failed_at_publish_is_created_by_its_worker_under_its_parent(taskbadger_server,
                                                                                         solo_worker, tmp_path):
    """A body publishes a child while the API refuses that create (a 503): the child goes out untracked, and its worker
    creates its task when it starts. It was created without a parent (the worker runs no task that could be it): a
    page listing the parent's children missed it. The parent now travels in the child's options."""
    gate = tmp_path / "go"
    parent = solo_worker.send(tasks.publish_child_when, str(gate))
    taskbadger_server.wait_for(lambda: (taskbadger_server.get_task(parent.taskbadger_task_id) or {}).get(
        "status") == "processing", timeout=20)
    taskbadger_server.fail(503, times=1, method="POST")  # the child's create at publish
    gate.write_text("go")
    child = taskbadger_server.wait_for_task(name=NAME + "add", status="success", timeout=20)
    creates = [r.json for r in taskbadger_server.requests if r.method == "POST" and r.json["name"] == NAME + "add"]
    assert [c["status"] for c in creates] == ["pending", "processing"]  # refused at publish, made by the worker
    assert child["parent"] == parent.taskbadger_task_id


def test_a_task_applied_eagerly_in_a_tracked_body_leaves_the_run_to_its_body(taskbadger_server, any_worker):
    """``other.apply()`` inside a tracked body runs ``other`` with Celery's task signals: its end is not the body's
    end. The body still reports progress after it, ``current_task()`` is still its task, and it ends with its own
    outcome; the eager run is not tracked."""
    any_worker.send(tasks.apply_eagerly_then_report)
    task = taskbadger_server.wait_for_task(name=NAME + "apply_eagerly_then_report", status="success")
    assert task["data"]["eager_result"] == 5
    assert task["data"]["current"] == task["id"]
    assert (task["value"], task["value_max"]) == (2, 2)  # the body's progress arrived, and its success completed it
    assert taskbadger_server.tasks_named(NAME + "add") == []
