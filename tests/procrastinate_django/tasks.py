"""Tasks of the Django project (found by procrastinate.contrib.django's autodiscovery of ``tasks`` modules)."""

from procrastinate.contrib.django import app

import taskbadger
from taskbadger.procrastinate import track


@app.task(name="dj.echo")
def echo(value: str) -> str:
    assert taskbadger.current_task() is not None
    return value


@app.task(name="dj.skipped")
def skipped() -> None:
    assert taskbadger.current_task() is None


@track(name="dj tracked by hand")
@app.task(name="dj.skip_but_tracked")
async def skip_but_tracked() -> None:
    assert taskbadger.current_task() is not None
