"""Task Badger SDK: track tasks (and Celery tasks, and Django projects' tasks) in Task Badger.

    import taskbadger
    taskbadger.init(token="...")          # or set TASKBADGER_API_KEY
    task = taskbadger.Task.create("nightly export", value_max=100)
    task.update(value=50)
    task.success()

Importing this package imports neither Django nor Celery.
"""

from .actions import Action, EmailIntegration, WebhookIntegration
from .api import (
    TaskList,
    cancel_task,
    create_task,
    create_task_safe,
    get_task,
    iter_tasks,
    list_tasks,
    update_task,
    update_task_safe,
)
from .compat import Badger, Session
from .config import Config, get_config, init, is_configured
from .decorators import track
from .delivery.merge import DefaultMergeStrategy
from .delivery.sender import flush
from .exceptions import (
    BadAnswer,
    ConfigurationError,
    ConnectError,
    CreateSkipped,
    InvalidData,
    MissingConfiguration,
    NotFound,
    RateLimited,
    ReadTimeout,
    ServerError,
    TaskbadgerException,
    TransportError,
    Unauthorized,
    UnexpectedStatus,
    ValidationError,
)
from .lifecycle import current_task
from .models import StatusEnum, TaskModel
from .scope import Scope, current_scope
from .spooling import stats
from .task import Task
from .version import __version__

__all__ = [
    "Action", "BadAnswer", "Badger", "EmailIntegration", "WebhookIntegration",
    "Config", "ConfigurationError", "ConnectError", "CreateSkipped", "DefaultMergeStrategy", "InvalidData",
    "MissingConfiguration", "NotFound", "RateLimited", "ReadTimeout", "Scope", "ServerError", "Session",
    "StatusEnum", "Task", "TaskList", "TaskModel", "TaskbadgerException", "TransportError", "Unauthorized",
    "UnexpectedStatus", "ValidationError", "__version__", "cancel_task", "create_task", "create_task_safe",
    "current_scope", "current_task", "flush", "get_config", "get_task", "init", "is_configured", "iter_tasks",
    "list_tasks", "stats", "track", "update_task", "update_task_safe",
]
