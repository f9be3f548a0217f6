"""The official SDK's ``taskbadger.integrations`` module path (per-task actions), for code that imports from it."""

from .actions import Action, EmailIntegration, Integration, WebhookIntegration

__all__ = ["Action", "EmailIntegration", "Integration", "WebhookIntegration"]
