"""Delivery: how updates reach the API off the task's critical path, and when the API is failing.

* ``queue``: the per-process queue of pending updates, one entry per task (merged, claimed by a
  synchronous update, bounded). No threads, no HTTP: ``taskbadger.Task`` uses it directly.
* ``merge``: every rule that combines two updates or merges into a task's ``data``.
* ``sender``: the threads that send the queue in batches, retry through faults, count, flush.
* ``breaker``: skips creates at publish while the API cannot take them.
* ``heartbeat``: pings running tasks through the queue.
"""
