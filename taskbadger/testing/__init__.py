"""Test helpers for code that uses Task Badger: a stand-in API server and pytest fixtures.

```python
from taskbadger.testing import TaskBadgerServer

with TaskBadgerServer() as server:
    taskbadger.init(token=server.api_key, host=server.url)
    ...
    server.wait_for_task(name="my task", status="success")
```

With pytest, the fixtures ``taskbadger_server`` (SDK configured, state reset per test) and
``taskbadger_server_session`` come from the plugin ``taskbadger.testing.plugin``, registered
automatically when the package is installed. Run ``python -m taskbadger.testing`` for a server in
the foreground.
"""

from .app import Headers, RecordedRequest
from .faults import Fault
from .server import TaskBadgerServer

__all__ = ["Fault", "Headers", "RecordedRequest", "TaskBadgerServer"]
