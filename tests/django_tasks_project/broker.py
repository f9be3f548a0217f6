"""A django.tasks backend of a kind Task Badger does not know (a third party's, as a Celery- or Redis-based one
would be): its jobs live in a broker, apart from the database, so a transaction that rolls back does not take them.
Here the broker is Redis, through RQ's backend, which this one uses without being it."""

from __future__ import annotations

from typing import Any

from django_tasks.backends.base import BaseTaskBackend
from django_tasks_rq import RQBackend


class BrokerBackend(BaseTaskBackend):
    supports_async_task = True
    supports_get_result = True
    supports_defer = True

    def __init__(self, alias: str, params: dict) -> None:
        super().__init__(alias, params)
        self._broker = RQBackend(alias, params)
        self.queues = self._broker.queues

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        return self._broker.enqueue(task, args, kwargs)

    def get_result(self, result_id: str) -> Any:
        return self._broker.get_result(result_id)
