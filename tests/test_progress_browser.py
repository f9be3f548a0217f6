"""The progress bar in a real browser (Debian's Chromium through Selenium): what a person sees, under a strict
Content-Security-Policy, against the stand-in API and the test project served by pytest-django's live server."""

from __future__ import annotations

import math
import threading
import time

import pytest
from django.test import Client, override_settings

import taskbadger
from taskbadger_django import conf

from . import browser

pytestmark = pytest.mark.urls("tests.progress_urls")

HOSTILE = '<img src=x onerror="window.__pwned = 1">'
PROGRESS_URL = "/taskbadger/progress/"

#: Installed in every page of a tab before the page's own scripts: records the bars' events, any CSP violation,
#: and when the page was hidden or shown (a tab in the background is hidden, as in a desktop browser).
RECORDER = """
window.__tbEvents = [];
window.__csp = [];
window.__visibility = [];
["taskbadger:progress", "taskbadger:done", "taskbadger:unavailable"].forEach(function (name) {
  document.addEventListener(name, function (e) { window.__tbEvents.push({type: name, detail: e.detail}); });
});
document.addEventListener("securitypolicyviolation", function (e) {
  window.__csp.push(e.violatedDirective + " " + e.blockedURI);
});
document.addEventListener("visibilitychange", function () {
  window.__visibility.push([document.visibilityState, performance.now()]);
});
"""
#: A person looking at the page: it stays visible in a background tab (ten tabs stand for ten people).
ON_SCREEN = """
Object.defineProperty(Document.prototype, "hidden", {configurable: true, get: function () { return false; }});
Object.defineProperty(Document.prototype, "visibilityState", {configurable: true,
                                                              get: function () { return "visible"; }});
"""


def new_tab(driver, *scripts):
    """Open a tab; `scripts` run in each of its pages before the page's own (RECORDER always)."""
    driver.switch_to.new_window("tab")
    for script in (RECORDER, *scripts):
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": script})
    return driver.current_window_handle


@pytest.fixture(scope="module")
def driver():
    browser.require()
    # Tabs in the background keep their timers at full rate: ten tabs are ten viewers polling as a shown page does.
    driver = browser.start(1000, 700, arguments=("--disable-background-timer-throttling",
                                                  "--disable-renderer-backgrounding"))
    blank = driver.current_window_handle
    recorded = new_tab(driver)
    driver.switch_to.window(blank)
    driver.close()
    driver.switch_to.window(recorded)
    yield driver
    browser.stop(driver)


@pytest.fixture(autouse=True)
def _fresh():
    from django.core.cache import caches

    conf.reset_state()
    caches["default"].clear()
    yield
    conf.reset_state()


@pytest.fixture
def server(taskbadger_server):
    with settings_for(taskbadger_server):
        yield taskbadger_server


def settings_for(server, **progress):
    return override_settings(TASKBADGER={"API_KEY": server.api_key, "HOST": server.url,
                                         "PROGRESS": {"POLL_INTERVAL": 0.5, **progress}})


def wait(driver, predicate, timeout=10):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: predicate(d))


def open_bar(driver, live_server, *task_ids, label=None):
    driver.get(f"{live_server.url}/bar/{','.join(task_ids)}/" + (f"?label={label}" if label else ""))


def bar(driver, index=0):
    """What the bar shows: the fill's rendered width over the track's, its state, its words, its ARIA value."""
    return driver.execute_script("""
        var el = document.querySelectorAll("[data-taskbadger-progress]")[arguments[0]];
        if (!el) { return null; }
        var track = el.querySelector(".taskbadger-progress__track").getBoundingClientRect();
        var fill = el.querySelector(".taskbadger-progress__fill").getBoundingClientRect();
        var track_el = el.querySelector(".taskbadger-progress__track");
        return {ratio: fill.width / track.width, fill: fill.width, track: track.width,
                state: el.getAttribute("data-state"), unavailable: el.hasAttribute("data-unavailable"),
                name: el.querySelector(".taskbadger-progress__name").textContent,
                status: el.querySelector(".taskbadger-progress__status").textContent,
                percent: el.querySelector(".taskbadger-progress__percent").textContent,
                valuenow: track_el.getAttribute("aria-valuenow")};
    """, index)


def drawn_at(driver, percent, index=0):
    """The bar's fill is drawn at `percent` of its track (within a pixel), its transition over."""
    shown = bar(driver, index)
    return shown is not None and abs(shown["fill"] - shown["track"] * percent / 100) <= 1.0


def events(driver, kind=None):
    found = driver.execute_script("return window.__tbEvents")
    return [e for e in found if kind is None or e["type"] == kind]


def polls(driver):
    """How many times the page polled (the browser's own record of its requests)."""
    return driver.execute_script("""
        var url = arguments[0];
        return performance.getEntriesByType("resource").filter(function (e) {
            return e.name.indexOf(url) >= 0; }).length;""", PROGRESS_URL)


def gets(server, task_id):
    return [r for r in server.requests if r.method == "GET" and r.task_id == task_id]


# -- what a person sees ----------------------------------------------------------------------------------


def test_the_bar_is_drawn_at_the_tasks_percentage_and_moves_without_a_reload(server, driver, live_server):
    task = taskbadger.create_task("export rows", status="processing", value=40, value_max=100)
    open_bar(driver, live_server, task.id)
    wait(driver, lambda d: drawn_at(d, 40))
    shown = bar(driver)
    assert (shown["state"], shown["name"], shown["status"], shown["percent"], shown["valuenow"]) == (
        "running", "export rows", "Running", "40%", "40")
    assert shown["track"] > 300
    driver.execute_script("window.__sameDocument = true")
    task.update(value=75)
    wait(driver, lambda d: drawn_at(d, 75))
    assert driver.execute_script("return window.__sameDocument") is True  # no reload
    task.success()
    wait(driver, lambda d: bar(d)["state"] == "done")
    wait(driver, lambda d: drawn_at(d, 100))
    shown = bar(driver)
    assert (shown["status"], shown["percent"], shown["valuenow"]) == ("Done", "100%", "100")
    percents = [e["detail"]["percent"] for e in events(driver, "taskbadger:progress")]
    assert percents[0] == 40 and 75 in percents and percents[-1] == 100
    [done] = events(driver, "taskbadger:done")
    assert done["detail"]["status"] == "success" and done["detail"]["done"] is True
    assert driver.execute_script("return window.__csp") == []


@pytest.mark.parametrize("end, fields, state, words, percent", [
    ("error", {"value": 30, "value_max": 60}, "failed", "Failed", 50),
    ("cancelled", {"value": 10}, "cancelled", "Cancelled", 10),
])
def test_each_final_state(server, driver, live_server, end, fields, state, words, percent):
    task = taskbadger.create_task("export rows", status="processing", **fields)
    open_bar(driver, live_server, task.id)
    wait(driver, lambda d: bar(d)["state"] in ("running", "indeterminate"))
    taskbadger.update_task(task.id, status=end)
    wait(driver, lambda d: bar(d)["state"] == state)
    shown = bar(driver)
    assert shown["status"] == words
    if percent is None:
        assert shown["valuenow"] is None and shown["percent"] == ""
        wait(driver, lambda d: bar(d)["fill"] == 0)  # no sweep any more: it ended
    else:
        wait(driver, lambda d: drawn_at(d, percent))
        assert shown["percent"] == f"{percent}%"
    [done] = events(driver, "taskbadger:done")
    assert done["detail"]["status"] == end


def test_a_stale_task_is_shown_stale_and_followed_when_it_reports_again(server, driver, live_server):
    """Task Badger marks a task stale when it stops reporting (a step longer than its stale timeout); it may
    report again. The bar said 'Stale' for ever, and a reload kept saying it for ten minutes (cached as final)."""
    task = taskbadger.create_task("export rows", status="processing", value=30)
    open_bar(driver, live_server, task.id)
    wait(driver, lambda d: drawn_at(d, 30))
    taskbadger.update_task(task.id, status="stale")
    wait(driver, lambda d: bar(d)["state"] == "stale")
    assert bar(driver)["status"] == "Stale: no news from the task" and drawn_at(driver, 30)  # where it stopped
    taskbadger.update_task(task.id, status="processing", value=80)
    wait(driver, lambda d: drawn_at(d, 80) and bar(d)["state"] == "running")
    task.success()
    wait(driver, lambda d: bar(d)["state"] == "done")
    assert [e["detail"]["status"] for e in events(driver, "taskbadger:done")] == ["success"]


def test_a_bar_replaced_by_a_swap_stops_polling(server, driver, live_server):
    """An HTMX-style partial replaces the bar's element with a fresh copy of its HTML: the new bar polls, the old
    one stops (each replaced bar went on polling: requests grew with every swap)."""
    task = taskbadger.create_task("export rows", status="processing", value=10)
    open_bar(driver, live_server, task.id)
    wait(driver, lambda d: drawn_at(d, 10))
    for swap in range(6):
        driver.execute_script("""
            var el = document.querySelector("[data-taskbadger-progress]");
            var copy = el.cloneNode(true);
            copy.setAttribute("data-state", "loading");
            copy.setAttribute("data-swap", arguments[0]);
            el.replaceWith(copy);""", swap)
        wait(driver, lambda d: bar(d)["state"] == "running")
    before, started = polls(driver), time.monotonic()
    wait(driver, lambda d: polls(d) >= before + 5, timeout=20)
    # one bar polls every 0.5 s (±10 %): five polls take at least four intervals; seven bars took 0.4 s
    assert time.monotonic() - started >= 4 * 0.5 * 0.9 - 0.1


def test_a_task_started_untracked_says_so_without_asking_for_a_reload(server, driver, live_server):
    """Reloading a page that starts its task on GET starts another one: never advise it when it cannot help."""
    open_bar(driver, live_server, "untracked")
    wait(driver, lambda d: bar(d)["state"] == "unavailable")
    assert bar(driver)["status"] == "Progress is not available for this task."


def test_a_task_that_never_reported_progress_is_indeterminate_not_zero(server, driver, live_server):
    task = taskbadger.create_task("export rows", status="pending")
    open_bar(driver, live_server, task.id)
    wait(driver, lambda d: bar(d)["status"] == "Queued")
    shown = bar(driver)
    assert shown["state"] == "indeterminate" and shown["valuenow"] is None and shown["percent"] == ""
    assert shown["fill"] > 0  # the sweeping block, not an empty (0 %) bar
    animation = driver.execute_script(
        "return getComputedStyle(document.querySelector('.taskbadger-progress__fill')).animationName")
    assert animation == "taskbadger-progress-sweep"
    task.processing()
    wait(driver, lambda d: bar(d)["status"] == "Running")
    assert bar(driver)["state"] == "indeterminate"


def test_the_name_is_text_never_html(server, driver, live_server):
    from selenium.common.exceptions import NoAlertPresentException

    task = taskbadger.create_task(HOSTILE, status="processing", value=5)
    open_bar(driver, live_server, task.id)
    wait(driver, lambda d: bar(d)["name"] == HOSTILE)
    assert driver.find_elements("css selector", "img") == []
    assert driver.execute_script("return window.__pwned") is None
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 (reading it is what raises)
    open_bar(driver, live_server, task.id, label="%3Cb%3Ebold%3C%2Fb%3E")  # a label: text as well
    wait(driver, lambda d: bar(d)["state"] == "running")
    assert bar(driver)["name"] == "<b>bold</b>" and driver.find_elements("css selector", "b") == []


def test_the_pages_own_deferred_script_hears_the_end_of_a_task_that_had_already_ended(server, driver, live_server):
    """The docs' listener in a module script (deferred, as every module script is) after the bar: the page is
    opened (or reloaded) once the task has ended. The bar fired "taskbadger:done" as soon as its first answer
    came, before the page's script had arrived, and the page never moved on."""
    task = taskbadger.create_task("export rows", status="processing", value=10)
    task.success()
    driver.get(f"{live_server.url}/bar/{task.id}/?listener=0.5")
    wait(driver, lambda d: d.execute_script("return window.__listener !== undefined"))
    wait(driver, lambda d: bar(d)["state"] == "done")
    wait(driver, lambda d: d.execute_script("return window.__listener") == ["success"], timeout=5)


def test_several_bars_on_one_page(server, driver, live_server):
    first = taskbadger.create_task("first", status="processing", value=20)
    second = taskbadger.create_task("second", status="processing", value=60)
    open_bar(driver, live_server, first.id, second.id)
    wait(driver, lambda d: drawn_at(d, 20, 0) and drawn_at(d, 60, 1))
    second.success()
    wait(driver, lambda d: bar(d, 1)["state"] == "done")
    assert bar(driver, 0)["state"] == "running"
    assert [e["detail"]["name"] for e in events(driver, "taskbadger:done")] == ["second"]


def test_no_inline_script_or_style_under_a_strict_csp(server, driver, live_server):
    task = taskbadger.create_task("export rows", status="processing", value=33)
    open_bar(driver, live_server, task.id)
    wait(driver, lambda d: drawn_at(d, 33))
    assert driver.execute_script("return window.__csp") == []
    # the recorder does see a violation: an inline script the page's policy refuses
    driver.execute_script("var s = document.createElement('script'); s.textContent = 'window.__ran = 1';"
                          "document.body.appendChild(s);")
    wait(driver, lambda d: d.execute_script("return window.__csp").__len__() == 1)
    assert driver.execute_script("return window.__ran") is None


def _contrast(a, b):
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_dark_on_a_dark_page_and_light_on_a_light_one_whatever_the_system_prefers(server, driver, live_server):
    """A light-only page (no `color-scheme`, as most Django sites and the docs' own example) seen with the system in
    dark mode got the dark palette: a slate track on white, and grey status words at 2.6:1 (WCAG asks 4.5:1). The
    bar now follows the page's `color-scheme`; a page that opts into dark still gets the dark one."""
    task = taskbadger.create_task("export rows", status="processing", value=50)
    seen = {}
    try:
        for system, page in (("light", None), ("dark", None), ("dark", "light dark"), ("light", "light dark")):
            driver.execute_cdp_cmd("Emulation.setEmulatedMedia",
                                   {"features": [{"name": "prefers-color-scheme", "value": system}]})
            driver.get(f"{live_server.url}/bar/{task.id}/" + (f"?scheme={page}" if page else ""))
            wait(driver, lambda d: drawn_at(d, 50))
            seen[system, page] = driver.execute_script("""
                var q = function (s, p) { return getComputedStyle(document.querySelector(s))[p]; };
                return {track: q('.taskbadger-progress__track', 'backgroundColor'),
                        fill: q('.taskbadger-progress__fill', 'backgroundColor'),
                        words: q('.taskbadger-progress__status', 'color'), page: q('body', 'color')};""")
    finally:
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    white, black = "rgb(255, 255, 255)", "rgb(0, 0, 0)"
    for key in (("light", None), ("dark", None), ("light", "light dark")):  # light pages, white behind the bar
        assert seen[key] == seen["light", None], key
        assert _luminance(seen[key]["track"]) > 0.7 and _contrast(seen[key]["words"], white) >= 4.5, key
    dark = seen["dark", "light dark"]  # the page's own background is the browser's dark canvas
    assert _luminance(dark["page"]) > 0.7  # (the page's text is light: it is dark behind it)
    assert _luminance(dark["track"]) < 0.1 and _luminance(dark["fill"]) > 0.3
    assert _contrast(dark["words"], black) >= 4.5


def test_visible_in_forced_colors(server, driver, live_server):
    """Windows' contrast themes force every background to the system's Canvas colour: the bar, track and fill,
    was drawn as blank page (only the words were left) for the people who use them."""

    def pixel(x, y):  # what is drawn at one point of the page, as PNG bytes: equal bytes, equal colour
        clip = {"x": x, "y": y, "width": 1, "height": 1, "scale": 1}
        return driver.execute_cdp_cmd("Page.captureScreenshot", {"clip": clip})["data"]

    task = taskbadger.create_task("export rows", status="processing", value=40)
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia",
                           {"features": [{"name": "forced-colors", "value": "active"}]})
    try:
        open_bar(driver, live_server, task.id)
        wait(driver, lambda d: bar(d)["state"] == "running")
        wait(driver, lambda d: abs(bar(d)["fill"] / bar(d)["track"] - 0.4) < 0.02)
        track = driver.execute_script("""var r = document.querySelector('.taskbadger-progress__track')
            .getBoundingClientRect(); return [r.left, r.top, r.width, r.height];""")
        left, top, width, height = track
        middle = top + height / 2
        page, filled, empty = pixel(left + width + 20, middle), pixel(left + width * 0.2, middle), pixel(
            left + width * 0.7, middle)
        assert filled != empty and filled != page  # the fill is drawn, and where it ends shows
        assert pixel(left + 0.5, middle) != page  # the track's own edge is drawn
    finally:
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})


def _luminance(css_color):
    r, g, b = (int(x) / 255 for x in css_color[css_color.index("(") + 1:-1].split(",")[:3])

    def channel(c):
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


# -- who may watch -------------------------------------------------------------------------------------------


def _login(driver, live_server, user):
    client = Client()
    client.force_login(user)
    driver.get(f"{live_server.url}/blank/")
    driver.delete_all_cookies()
    driver.add_cookie({"name": "sessionid", "value": client.cookies["sessionid"].value, "path": "/"})


def _paste_bar(driver, live_server, page_html):
    """Put a page's HTML as the server sent it (its bar, stylesheet link and script tag) into a page of this
    browser, and run the script (a script tag set through innerHTML does not run)."""
    driver.get(f"{live_server.url}/blank/")
    driver.execute_script("""
        document.body.innerHTML = arguments[0];
        var s = document.createElement("script");
        s.src = "/static/taskbadger_django/progress.js";
        document.body.appendChild(s);""", page_html)


def _served_html(driver):
    """The current page's HTML as the server sends it to this browser (its cookies), before any script ran."""
    return _fetch_status(driver, driver.current_url)[1]


def _fetch_status(driver, url):
    return driver.execute_async_script("""
        var done = arguments[arguments.length - 1];
        fetch(arguments[0], {credentials: "same-origin"}).then(function (r) {
            return r.text().then(function (t) { done([r.status, t]); }); });""", url)


@pytest.mark.django_db(transaction=True)
def test_another_users_session_gets_403_and_sees_nothing_of_the_task(server, driver, live_server,
                                                                      django_user_model):
    ada = django_user_model.objects.create_user("ada", password="pw")
    bob = django_user_model.objects.create_user("bob", password="pw")
    task = taskbadger.create_task("ada's payroll export", status="processing", value=64)
    _login(driver, live_server, ada)
    open_bar(driver, live_server, task.id)
    wait(driver, lambda d: drawn_at(d, 64))
    ada_page = _served_html(driver)  # a page of ada's, with a token of hers
    url = PROGRESS_URL + ada_page.split(PROGRESS_URL, 1)[1].split('"', 1)[0]
    assert "payroll" not in ada_page  # the name comes with the polls
    assert _fetch_status(driver, url)[0] == 200
    _login(driver, live_server, bob)
    _paste_bar(driver, live_server, ada_page)
    wait(driver, lambda d: bar(d) is not None and bar(d)["state"] == "unavailable")
    wait(driver, lambda d: bar(d)["fill"] == 0)  # the sweep of "loading" shrinks away
    shown = bar(driver)
    assert shown["valuenow"] is None and shown["percent"] == ""
    assert "not available" in shown["status"]
    assert "payroll" not in driver.find_element("tag name", "body").text
    [refused] = events(driver, "taskbadger:unavailable")
    assert refused["detail"]["httpStatus"] == 403
    status, body = _fetch_status(driver, url)
    assert status == 403 and "payroll" not in body and "64" not in body


def test_a_tampered_token_and_an_expired_token(server, driver, live_server, monkeypatch):
    from django.core import signing

    task = taskbadger.create_task("export rows", status="processing", value=10)
    open_bar(driver, live_server, task.id)
    wait(driver, lambda d: drawn_at(d, 10))
    served = _served_html(driver)
    token = served.split(PROGRESS_URL, 1)[1].split("/", 1)[0]
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    _paste_bar(driver, live_server, served.replace(token, tampered))
    wait(driver, lambda d: bar(d) is not None and bar(d)["state"] == "unavailable")
    assert events(driver, "taskbadger:unavailable")[0]["detail"]["httpStatus"] == 403
    # a page rendered seven hours ago (tokens live six hours by default)
    monkeypatch.setattr(signing.TimestampSigner, "timestamp",
                        lambda self: signing.b62_encode(int(time.time()) - 7 * 3600))
    open_bar(driver, live_server, task.id)
    wait(driver, lambda d: bar(d)["state"] == "unavailable")
    assert "Reload the page" in bar(driver)["status"]
    assert events(driver, "taskbadger:progress") == []


# -- the cost for the API, and its failures --------------------------------------------------------------------


def test_ten_viewers_for_ten_seconds_cost_at_most_one_api_read_per_interval(server, driver, live_server):
    interval = 0.5
    task = taskbadger.create_task("export rows", status="processing", value=0)
    first_tab = driver.current_window_handle
    tabs = []
    for _ in range(10):  # ten people, each with the page in front of them
        tabs.append(new_tab(driver, ON_SCREEN))
        open_bar(driver, live_server, task.id)
    reported = [0]
    stop = threading.Event()

    def work():  # the task reports progress while they watch
        while not stop.wait(0.25) and reported[0] < 99:
            reported[0] += 1
            task.update(value=reported[0])

    worker = threading.Thread(target=work)
    since = len(server.requests)
    started = time.monotonic()
    worker.start()
    stop.wait(10)  # ten seconds of watching: the measurement itself
    stop.set()
    worker.join(5)
    elapsed = time.monotonic() - started
    reads = [r for r in server.requests[since:] if r.method == "GET" and r.task_id == task.id]
    assert 0.5 * elapsed / interval <= len(reads) <= math.ceil(elapsed / interval) + 1, (len(reads), elapsed)
    stamps = sorted(r.timestamp for r in reads)
    # reads one interval apart, never together (the slack: a read is timed when it starts, logged when it arrives)
    assert all(b - a >= interval * 0.5 for a, b in zip(stamps, stamps[1:], strict=False)), stamps
    page_polls = []
    for tab in tabs:
        driver.switch_to.window(tab)
        wait(driver, lambda d: drawn_at(d, reported[0]))  # every viewer sees the latest progress
        page_polls.append(polls(driver))
        driver.close()
    driver.switch_to.window(first_tab)
    assert min(page_polls) >= 10, page_polls  # each viewer polled about twice a second: the cache saved the API


def test_the_api_down_and_back(server, driver, live_server):
    task = taskbadger.create_task("export rows", status="processing", value=40)
    open_bar(driver, live_server, task.id)
    wait(driver, lambda d: drawn_at(d, 40))
    server.refuse()
    wait(driver, lambda d: bar(d)["unavailable"])
    first_failure = polls(driver)
    shown = bar(driver)
    assert "unavailable right now" in shown["status"] and drawn_at(driver, 40)  # the last known progress stays
    assert [e["detail"]["retrying"] for e in events(driver, "taskbadger:unavailable")] == [True]
    time.sleep(4)  # eight poll intervals of outage: the measurement itself
    assert polls(driver) - first_failure <= 3  # it waited 1, 2, then 4 s: the script backs off
    server.clear_faults()
    task.update(value=70)
    wait(driver, lambda d: drawn_at(d, 70) and not bar(d)["unavailable"], timeout=20)
    assert bar(driver)["status"] == "Running"


def test_an_indeterminate_bar_the_api_cannot_read_shows_no_block(server, driver, live_server):
    """The sweeping block stopped where it was: a still grey block over 30 % read as '30 % done'."""
    task = taskbadger.create_task("export rows", status="pending")
    open_bar(driver, live_server, task.id)
    wait(driver, lambda d: bar(d)["state"] == "indeterminate")
    server.fail(500)
    wait(driver, lambda d: bar(d)["unavailable"])
    wait(driver, lambda d: bar(d)["fill"] == 0)
    assert bar(driver)["status"] == "Progress is unavailable right now; retrying…"


def test_a_hidden_tab_polls_rarely_and_at_once_when_shown_again(server, driver, live_server):
    task = taskbadger.create_task("export rows", status="processing", value=1)
    watched = driver.current_window_handle
    open_bar(driver, live_server, task.id)
    wait(driver, lambda d: polls(d) >= 3)  # polling every 0.5 s
    other = new_tab(driver)  # another tab in front: the page is hidden
    driver.get(f"{live_server.url}/blank/")
    time.sleep(3)  # six poll intervals in the background: the measurement itself
    task.update(value=90)
    driver.close()
    driver.switch_to.window(watched)  # shown again
    wait(driver, lambda d: drawn_at(d, 90), timeout=2)
    assert other not in driver.window_handles
    (hidden_state, hidden_at), (shown_state, shown_at) = driver.execute_script("return window.__visibility")[-2:]
    assert (hidden_state, shown_state) == ("hidden", "visible") and shown_at - hidden_at > 2900
    starts = driver.execute_script("""
        return performance.getEntriesByType("resource").filter(function (e) {
            return e.name.indexOf("/taskbadger/progress/") >= 0; }).map(function (e) { return e.startTime; });""")
    while_hidden = [t for t in starts if hidden_at < t < shown_at]
    assert len(while_hidden) <= 1, while_hidden  # the poll already scheduled; the next waits ten intervals (5 s)
    after = [t - shown_at for t in starts if t >= shown_at]
    assert after and after[0] < 250  # shown again: it polls at once, not at the end of its long wait


# -- tasks run by real workers ------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_celery_task_waiting_for_its_retry_says_so_then_ends_done(server, driver, live_server, prefork_worker):
    """A Celery task reports 50 %, then self.retry(countdown=5), then succeeds (a real worker). Its task is pending
    again while the retry waits: the bar said "Queued", as for a task that never ran, beside the progress of the attempt
    that had, for the whole countdown (three minutes with Celery's default delay)."""
    from .celery_project import app as tasks

    result = prefork_worker.send(tasks.retry_later, 5)
    open_bar(driver, live_server, result.taskbadger_task_id)
    wait(driver, lambda d: bar(d)["status"] == "Waiting to retry", timeout=15)
    wait(driver, lambda d: drawn_at(d, 50))  # where the first attempt stopped: neither failed nor 100 %
    shown = bar(driver)
    assert (shown["state"], shown["percent"], shown["valuenow"]) == ("running", "50%", "50")
    assert events(driver, "taskbadger:done") == []
    assert events(driver, "taskbadger:progress")[-1]["detail"]["awaiting_retry"] is True
    wait(driver, lambda d: bar(d)["state"] == "done", timeout=20)
    wait(driver, lambda d: drawn_at(d, 100))
    assert bar(driver)["status"] == "Done"
    assert [e["detail"]["status"] for e in events(driver, "taskbadger:done")] == ["success"]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_the_tasks_of_a_group_left_to_their_worker_show_their_progress(server, driver, live_server, prefork_worker):
    """A view starts a group of six tasks while the API answers slowly (0.4 s a create): the creates that do not fit
    in the publish budget (1 s, which the group's tasks share) are left to the worker, which creates each task when it
    starts. Their bars said "Progress is not available for this task." while the worker tracked them."""
    server.set_latency(0.4, method="POST")
    driver.get(f"{live_server.url}/group/6/?queue={prefork_worker.queue}")
    left = int(driver.find_element("id", "left").text)
    assert 1 <= left <= 5, left  # some of the group were left to the worker
    wait(driver, lambda d: [bar(d, i)["state"] for i in range(6)] == ["done"] * 6, timeout=30)
    assert {bar(driver, i)["status"] for i in range(6)} == {"Done"}
    wait(driver, lambda d: all(drawn_at(d, 100, i) for i in range(6)))  # every fill drawn to its end, not just said
    assert len(server.tasks) == 6 and {t["status"] for t in server.tasks.values()} == {"success"}


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_task_its_worker_ran_untracked_says_not_available_once_celery_says_it_ended(server, driver, live_server,
                                                                                       tmp_path):
    """The API fails the create at publish, so the bar follows the task by its Celery id; its worker has no API key
    and runs it untracked. The bar said *Queued* until its token expired, and the server looked the task up in the
    list of the newest tasks once per poll interval all that time. Now, once the worker has stored the task's end in
    the result backend, the bar says progress is not available for this task, and the look-ups stop."""
    from celery import Celery

    from .celery_project import app as tasks
    from .conftest import start_worker, stop_worker

    backend = f"file://{tmp_path}"
    worker = start_worker(server, extra_env={"TASKBADGER_API_KEY": "", "TB_RESULT_BACKEND": backend})
    # the project's app, with its result backend: the page is served from another thread (the live server's), where
    # Celery's current app is its fallback one, as in runserver's request threads
    project = Celery("tbtests-project", backend=backend, set_as_current=False)
    try:
        server.fail(500, times=1, method="POST")  # the create at publish fails: its worker is to create it
        result = worker.send(tasks.sleep_for, 1.0)
        assert server.tasks == {} and result.taskbadger_task_id is None
        driver.get(f"{live_server.url}/celery/{result.id}/")
        wait(driver, lambda d: bar(d)["status"] == "Queued")
        assert bar(driver)["state"] == "indeterminate"
        wait(driver, lambda d: bar(d)["state"] == "unavailable", timeout=30)
        wait(driver, lambda d: drawn_at(d, 0))  # the sweeping block gone (its width's transition over)
        shown = bar(driver)
        assert (shown["status"], shown["percent"], shown["valuenow"]) == ("Progress is not available for this task.",
                                                                          "", None)
        assert project.AsyncResult(result.id).state == "SUCCESS" and server.tasks == {}  # it ran, untracked
        assert [e["detail"]["httpStatus"] for e in events(driver, "taskbadger:unavailable")] == [404]
        assert [e["detail"]["retrying"] for e in events(driver, "taskbadger:unavailable")] == [False]  # it stopped
    finally:
        stop_worker(worker)


# -- the demo ------------------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(300)  # a worker, beat and a web server: slow on a loaded machine
def test_the_demo_serves_a_page_whose_bars_fill_live(driver):
    import re
    import signal
    import subprocess
    import sys

    from .test_testproject import project_env
    from .workers import ROOT

    env = project_env(PROGRESS_POLL_INTERVAL="0.5")
    demo = subprocess.Popen([sys.executable, "manage.py", "demo", "--keep-open"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    output = []
    try:
        for line in demo.stdout:
            output.append(line)
            found = re.search(r"progress page: (http://\S+)", line)
            if found:
                driver.get(found.group(1))
                break
        else:
            pytest.fail("the demo printed no progress page:\n" + "".join(output))
        names = [el.text for el in driver.find_elements("css selector", ".taskbadger-progress__name")]
        assert names == ["Importing 200 contacts", "Charging a card", "Syncing the inventory (it retries twice)",
                         "Writing an archive (the demo revokes it)"]
        wait(driver, lambda d: [bar(d, i)["state"] for i in range(4)] == ["done", "failed", "done", "cancelled"],
             timeout=60)
        wait(driver, lambda d: drawn_at(d, 100, 0))  # the fill's 0.4 s transition may still run when it is done
        assert bar(driver, 1)["status"] == "Failed"
        imported = [e["detail"]["percent"] for e in events(driver, "taskbadger:progress")
                    if e["detail"]["name"] == "demo.tasks.import_contacts"]
        assert any(p is not None and 0 < p < 100 for p in imported), imported  # it filled while watched
        assert driver.execute_script("return window.__csp") == []  # the demo's page sends a strict policy
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            demo.kill()


# -- what a screen reader hears --------------------------------------------------------------------------
# The status words are a polite live region, announced when they change. Writing the same words again replaces
# the region's text node, which screen readers announce again.

WATCH_STATUS = """
window.__announced = [];
new MutationObserver(function (mutations) {
  mutations.forEach(function (m) { window.__announced.push(m.target.textContent); });
}).observe(document.querySelector(".taskbadger-progress__status"),
           {childList: true, characterData: true, subtree: true});
"""


def announced(d):
    return d.execute_script("return window.__announced")


def test_the_live_region_changes_only_when_its_words_do(server, driver, live_server):
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


# -- a right-to-left page --------------------------------------------------------------------------------
# The bar on a right-to-left page (Arabic, Hebrew, Persian): it fills from the right, and the indeterminate block
# sweeps across the whole track, from where the bar starts (the right) to where it ends.

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


def test_in_a_flex_row_the_bar_keeps_its_length_as_its_words_change(server, driver, live_server):
    """Beside an icon in a flex row (Bootstrap's `d-flex`, a card's header) the bar was only as long as its words,
    and its length jumped with them: 118 px queued, 153 px running, 140 px done, in an 884 px row."""
    task = taskbadger.create_task("export", status="pending")
    open_bar(driver, live_server, task.id)
    wait(driver, lambda d: bar(d)["state"] == "indeterminate")
    driver.execute_script("""
        var el = document.querySelector('[data-taskbadger-progress]'), row = document.createElement('div');
        row.style.cssText = 'display: flex; gap: 8px; width: 500px';
        var icon = document.createElement('span'); icon.textContent = 'icon';
        el.parentNode.insertBefore(row, el); row.appendChild(icon); row.appendChild(el);""")
    widths = {"indeterminate": bar(driver)["track"]}
    task.update(status="processing", value=40)
    wait(driver, lambda d: drawn_at(d, 40))
    widths["running"] = bar(driver)["track"]
    task.success()
    wait(driver, lambda d: bar(d)["state"] == "done")
    widths["done"] = bar(driver)["track"]
    icon = driver.execute_script("return document.querySelector('span').getBoundingClientRect().width")
    assert all(abs(width - (500 - 8 - icon)) <= 1 for width in widths.values()), (widths, icon)


def test_a_right_to_left_page(server, driver, live_server):
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
    percent_gap = driver.execute_script("""
        var el = document.querySelectorAll("[data-taskbadger-progress]")[1];
        var t = el.querySelector(".taskbadger-progress__track").getBoundingClientRect();
        return el.querySelector(".taskbadger-progress__percent").getBoundingClientRect().left - t.left;""")
    assert abs(percent_gap) <= 1  # the percentage at the bar's end, as in LTR (it sat beside the words)
    frames = driver.execute_async_script(SAMPLE_SWEEP)
    assert min(left for left, _ in frames) <= 0.05, frames  # it reaches the left end of the track...
    assert max(right for _, right in frames) >= 0.95, frames  # ...and the right one
    steps = [b[0] - a[0] for a, b in zip(frames, frames[1:], strict=False) if abs(b[0] - a[0]) < 0.5]
    leftwards = sum(1 for s in steps if s < 0)
    assert leftwards > 0.8 * len([s for s in steps if s != 0]), steps  # it moves as an RTL reader reads
