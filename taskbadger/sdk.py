"""The official SDK's ``taskbadger.sdk`` module path, for code that imports from it: the same objects as
``taskbadger``'s."""

from .api import TaskList, create_task, get_task, list_tasks, update_task
from .compat import Badger, Session
from .config import init
from .delivery.merge import DefaultMergeStrategy
from .exceptions import (
    ConfigurationError,
    MissingConfiguration,
    ServerError,
    TaskbadgerException,
    Unauthorized,
    UnexpectedStatus,
)
from .models import StatusEnum
from .task import Task

__all__ = ["Badger", "ConfigurationError", "DefaultMergeStrategy", "MissingConfiguration", "ServerError", "Session",
           "StatusEnum", "Task", "TaskList", "TaskbadgerException", "Unauthorized", "UnexpectedStatus", "create_task",
           "get_task", "init", "list_tasks", "update_task"]
