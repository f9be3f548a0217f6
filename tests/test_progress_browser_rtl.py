"""The bar on a right-to-left page (Arabic, Hebrew, Persian): it fills from the right, and the indeterminate block
sweeps across the whole track, from where the bar starts (the right) to where it ends."""

from __future__ import annotations

import pytest

import taskbadger

from .test_progress_browser import _fresh, bar, drawn_at, driver, open_bar, server, wait  # noqa: F401

pytestmark = pytest.mark.urls("tests.progress_urls")

#: The sweeping block's left and right edges over one cycle (1.4 s) and a bit, as fractions of the track.
SAMPLE_SWEEP = """
var done = arguments[arguments.length - 1];
var track = document.querySelector(".taskbadger-progress__track");
var fill = document.querySelector(".taskbadger-progress__fill");
var frames = [], until = performance.now() + 1600;
(function frame(now) {
  var t = track.getBoundingClientRect(), f = fill.getBoundingClientRect();
  frames.push([(f.left - t.left) / t.width, (f.right - t.left) / t.width]);
  if (now < until) { requestAnimationFrame(frame); } else { done(frames); }
})(performance.now());
"""


def test_a_right_to_left_page(server, driver, live_server):  # noqa: F811 (fixtures)
    """In RTL the block started at 40 % of the track and swept rightwards out of it: the left 40 % of the track
    (where an RTL bar ends) never showed it, and it moved against the reading direction."""
    queued = taskbadger.create_task("تصدير الصفوف", status="pending")
    running = taskbadger.create_task("تصدير الصفوف", status="processing", value=25)
    open_bar(driver, live_server, queued.id, running.id)
    driver.execute_script("document.documentElement.dir = 'rtl'")
    wait(driver, lambda d: bar(d)["state"] == "indeterminate" and drawn_at(d, 25, 1))
    running_fill = driver.execute_script("""
        var els = document.querySelectorAll(".taskbadger-progress__track");
        var t = els[1].getBoundingClientRect(), f = els[1].firstElementChild.getBoundingClientRect();
        return [t.right - f.right, f.left - t.left];""")
    assert abs(running_fill[0]) <= 1 and running_fill[1] > 0  # a determinate RTL bar fills from the right
    frames = driver.execute_async_script(SAMPLE_SWEEP)
    assert min(left for left, _ in frames) <= 0.05, frames  # it reaches the left end of the track...
    assert max(right for _, right in frames) >= 0.95, frames  # ...and the right one
    steps = [b[0] - a[0] for a, b in zip(frames, frames[1:], strict=False) if abs(b[0] - a[0]) < 0.5]
    leftwards = sum(1 for s in steps if s < 0)
    assert leftwards > 0.8 * len([s for s in steps if s != 0]), steps  # it moves as an RTL reader reads
