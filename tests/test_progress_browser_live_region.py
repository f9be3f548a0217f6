"""What a screen reader hears: the status words are a polite live region, announced when they change. Writing
the same words again replaces the region's text node, which screen readers announce again."""

from __future__ import annotations

import pytest

import taskbadger

from .test_progress_browser import _fresh, bar, drawn_at, driver, open_bar, polls, server, wait  # noqa: F401

pytestmark = pytest.mark.urls("tests.progress_urls")

WATCH_STATUS = """
window.__announced = [];
new MutationObserver(function (mutations) {
  mutations.forEach(function (m) { window.__announced.push(m.target.textContent); });
}).observe(document.querySelector(".taskbadger-progress__status"),
           {childList: true, characterData: true, subtree: true});
"""


def announced(d):
    return d.execute_script("return window.__announced")


def test_the_live_region_changes_only_when_its_words_do(server, driver, live_server):  # noqa: F811 (fixtures)
    """Every progress change rewrote 'Running' (the docs promise 'not every percent'), and every retry of an
    outage rewrote 'Progress is unavailable right now; retrying…'."""
    task = taskbadger.create_task("export rows", status="processing", value=1)
    open_bar(driver, live_server, task.id)
    wait(driver, lambda d: drawn_at(d, 1))
    driver.execute_script(WATCH_STATUS)
    for value in (10, 20, 30):
        task.update(value=value)
        wait(driver, lambda d, value=value: drawn_at(d, value))
    assert announced(driver) == []  # still "Running": nothing to announce
    server.fail(500)
    wait(driver, lambda d: bar(d)["unavailable"])
    failed_at = polls(driver)
    wait(driver, lambda d: polls(d) >= failed_at + 2)  # two more failed polls (after 1 s and 2 s)
    server.clear_faults()
    wait(driver, lambda d: not bar(d)["unavailable"], timeout=20)
    assert bar(driver)["status"] == "Running"
    assert announced(driver) == ["Progress is unavailable right now; retrying…", "Running"]
