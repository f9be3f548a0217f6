"""A django.tasks task outside an app's ``tasks`` module (the README's ``billing/jobs.py``), and not imported
by anything but a worker that runs it: the checks find it by its module path."""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("django.tasks") is not None:
    from django.tasks import task
else:
    from django_tasks import task


@task
def nightly_report(day: str) -> str:
    return day
