"""The official SDK's ``taskbadger.safe_sdk`` module path, for code that imports from it."""

from .api import create_task_safe, update_task_safe

__all__ = ["create_task_safe", "update_task_safe"]
