"""A real headless browser for the dashboard's tests (and docs/make_screenshot.py): Debian's Chromium and
ChromeDriver, driven by Selenium. No browser is downloaded: only the package registries are reachable."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

CHROMIUM = os.environ.get("TASKBADGER_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TASKBADGER_CHROMEDRIVER", "/usr/bin/chromedriver")


def unavailable() -> str | None:
    """Why no browser can run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.path.exists(path):
            return f"{path} is missing: install Debian's {package} (apt-get install chromium chromium-driver)"
    return None


def require() -> None:
    """Skip the calling test when no browser can run here; fail it instead where one must
    (``TASKBADGER_REQUIRE_BROWSER=1``, which CI sets once Chromium is installed)."""
    import pytest

    reason = unavailable()
    if reason:
        if os.environ.get("TASKBADGER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser tests must run here, but {reason}")
        pytest.skip(reason)


def start(width: int = 1280, height: int = 800, arguments: tuple[str, ...] = ()) -> Any:
    """A headless Chromium; ``arguments`` are more command-line flags."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="tb-chromium-")
    # A closed network: without these, Chromium keeps trying to reach its own services at every start.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={width},{height}",
                 *arguments):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver._taskbadger_profile = profile  # removed by stop()
    return driver


def stop(driver: Any) -> None:
    try:
        driver.quit()
    finally:
        shutil.rmtree(getattr(driver, "_taskbadger_profile", ""), ignore_errors=True)
