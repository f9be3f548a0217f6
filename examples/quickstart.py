"""Track a few tasks against the stand-in Task Badger API and print what it recorded.

    python examples/quickstart.py

With TASKBADGER_API_KEY set, the same script tracks against that Task Badger project instead.
"""

import os
import time

import taskbadger
from taskbadger.testing import TaskBadgerServer


@taskbadger.track(name="quickstart: resize images")
def resize_images(count: int) -> int:
    task = taskbadger.Task.create("quickstart: upload batch", value_max=count)
    for i in range(1, count + 1):
        time.sleep(0.01)
        task.update_value(i, value_step=5)
    task.success(value=count)
    return count


@taskbadger.track(name="quickstart: failing import")
def failing_import() -> None:
    raise ValueError("row 7: 'price' is not a number")


def main() -> None:
    server = None
    if os.environ.get("TASKBADGER_API_KEY"):
        taskbadger.init()
    else:
        server = TaskBadgerServer().start()
        taskbadger.init(token=server.api_key, host=server.url)
        print(f"Stand-in Task Badger API at {server.url}")
    resize_images(20)
    try:
        failing_import()
    except ValueError:
        pass
    # A tracked call's end is sent in the background, so the call returns at once; wait for it here
    # to list the final states (a script's exit waits for it anyway).
    taskbadger.flush()
    print(f"{'name':32} {'status':10} {'progress':>8}  error")
    for task in taskbadger.list_tasks(page_size=10):
        error = (task.data or {}).get("exception", "").strip().splitlines()[-1:] if task.data else []
        # A task that never reported progress has no value: it shows no percentage, not 0 %.
        progress = "-" if task.value_percent is None else f"{task.value_percent}%"
        print(f"{task.name:32} {task.status:10} {progress:>8}  {error[0] if error else ''}")
    if server:
        server.stop()


if __name__ == "__main__":
    main()
