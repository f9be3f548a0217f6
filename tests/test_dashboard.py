"""The stand-in API's local dashboard, in a real headless browser (Chromium, through Selenium)."""

from __future__ import annotations

import inspect
import os
import socket

import pytest
import requests

import taskbadger
from taskbadger.testing import dashboard

from . import browser

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def driver():
    reason = browser.unavailable()
    if reason:
        if os.environ.get("TASKBADGER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser tests must run here, but {reason}")
        pytest.skip(reason)
    driver = browser.start()
    yield driver
    browser.stop(driver)


def rows(driver):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#tasks tr")


def wait(driver, predicate, timeout=10, state=None):
    """Wait until `predicate(driver)` holds. The page replaces its rows whenever the data changes,
    so an element found a moment ago can be gone when it is read: that attempt counts as "not yet".
    On time-out, the failure names the predicate and shows `state(driver)` when given."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(
            driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
        ).until(lambda d: predicate(d))
    except TimeoutException:
        try:
            source = inspect.getsource(predicate).strip()
        except (OSError, TypeError):
            source = repr(predicate)
        shown = f"; state: {state(driver)!r}" if state is not None else ""
        raise AssertionError(f"timed out after {timeout}s waiting for: {source}{shown}") from None


def bar_boxes(driver, row=0):
    """The rendered widths of a row's progress track and of the bar inside it (CSS pixels), read in one
    script so that both come from the same drawing of the page."""
    return driver.execute_script("""
        const track = document.querySelectorAll("#tasks tr")[arguments[0]].querySelector(".progress");
        const bar = track.querySelector(".bar");
        return [track.getBoundingClientRect().width, bar.getBoundingClientRect().width];
    """, row)


def bar_fills(driver, fraction, row=0):
    """Whether the row's bar is drawn `fraction` of its track's width (within a pixel)."""
    track, bar = bar_boxes(driver, row)
    return track > 50 and abs(bar - fraction * track) <= 1


def names(driver):
    from selenium.webdriver.common.by import By

    return [row.find_element(By.CSS_SELECTOR, "td.name a").text for row in rows(driver)]


def test_the_pages_are_served_without_auth_and_not_recorded(taskbadger_server):
    page = requests.get(f"{taskbadger_server.url}/", timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert requests.get(f"{taskbadger_server.url}/_dashboard/tasks", timeout=5).json()["tasks"] == []
    assert taskbadger_server.requests == []  # the dashboard is not an API client


def test_tasks_appear_newest_first_with_children_under_their_parent(taskbadger_server, driver):
    parent = taskbadger.create_task("nightly export", tags={"env": "test"})
    taskbadger.create_task("shard 1", parent=parent.id)
    taskbadger.create_task("newest job", status="processing")
    driver.get(f"{taskbadger_server.url}/")
    wait(driver, lambda d: len(rows(d)) == 3)
    assert names(driver) == ["newest job", "nightly export", "shard 1"]
    assert "child" in rows(driver)[2].get_attribute("class")
    assert "env=test" in rows(driver)[1].text and "processing" in rows(driver)[0].text


def test_progress_moves_while_a_task_runs(taskbadger_server, driver):
    task = taskbadger.create_task("import contacts", status="processing", value=10, value_max=200)
    driver.get(f"{taskbadger_server.url}/")
    wait(driver, lambda d: "5%" in d.find_element("css selector", "#tasks .percent").text)
    wait(driver, lambda d: bar_fills(d, 0.05), state=bar_boxes)
    task.update(value=150)  # no reload: the page polls
    wait(driver, lambda d: "75%" in d.find_element("css selector", "#tasks .percent").text)
    wait(driver, lambda d: bar_fills(d, 0.75), state=bar_boxes)  # what is drawn, not what the style says
    task.success(value=200)
    wait(driver, lambda d: {"success", "100%"} <= set(rows(d)[0].text.split()))
    wait(driver, lambda d: bar_fills(d, 1.0), state=bar_boxes)


def test_filters_by_status_and_name(taskbadger_server, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    taskbadger.create_task("billing run", status="error")
    taskbadger.create_task("billing check", status="success")
    taskbadger.create_task("report", status="error")
    driver.get(f"{taskbadger_server.url}/")
    wait(driver, lambda d: len(rows(d)) == 3)
    Select(driver.find_element(By.ID, "status-filter")).select_by_visible_text("error")
    wait(driver, lambda d: sorted(names(d)) == ["billing run", "report"])
    driver.find_element(By.ID, "name-filter").send_keys("billing")
    wait(driver, lambda d: names(d) == ["billing run"])
    assert driver.find_element(By.ID, "count").text == "1 of 3 tasks"


def test_task_content_is_shown_as_text(taskbadger_server, driver):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    task = taskbadger.create_task(XSS, tags={"t": XSS}, data={"html": XSS})
    driver.get(f"{taskbadger_server.url}/")
    wait(driver, lambda d: names(d) == [XSS])
    assert driver.find_elements(By.CSS_SELECTOR, "#tasks img") == []
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 (reading it is what raises)
    driver.get(task.url)
    wait(driver, lambda d: d.find_element(By.ID, "title").text == XSS)
    assert XSS in driver.find_element(By.ID, "data").text and driver.find_elements(By.TAG_NAME, "img") == []


def test_a_tasks_url_opens_its_page_with_data_and_traceback(taskbadger_server, driver):
    from selenium.webdriver.common.by import By

    task = taskbadger.create_task("charge card", data={"amount": 1999})
    try:
        raise ValueError("card declined")
    except ValueError as err:
        task.error(exception=err)
    driver.get(f"{taskbadger_server.url}/")
    wait(driver, lambda d: names(d) == ["charge card"])
    wait(driver, lambda d: rows(d)[0].find_element(By.CSS_SELECTOR, "td.name a").click() or True)
    wait(driver, lambda d: d.current_url == task.url and d.find_element(By.ID, "title").text == "charge card")
    wait(driver, lambda d: "ValueError: card declined" in d.find_element(By.ID, "traceback").text)
    assert '"amount": 1999' in driver.find_element(By.ID, "data").text
    fields = driver.find_element(By.ID, "fields").text
    assert "status\nerror" in fields and task.id in fields


def test_filters_go_to_the_server_and_find_tasks_older_than_the_newest_listed(taskbadger_server, driver,
                                                                             monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    monkeypatch.setattr(dashboard, "MAX_LISTED", 3)  # the page lists 500 tasks; 3 here, the same code
    taskbadger.create_task("old failure", status="error")
    for n in range(4):
        taskbadger.create_task(f"recent job {n}", status="success")
    driver.get(f"{taskbadger_server.url}/")
    wait(driver, lambda d: names(d) == ["recent job 3", "recent job 2", "recent job 1"])
    wait(driver, lambda d: d.find_element(By.ID, "count").text == "newest 3 of 5 tasks")
    Select(driver.find_element(By.ID, "status-filter")).select_by_visible_text("error")
    wait(driver, lambda d: names(d) == ["old failure"])  # not among the newest 3: the server filtered
    wait(driver, lambda d: d.find_element(By.ID, "count").text == "1 of 5 tasks")
    Select(driver.find_element(By.ID, "status-filter")).select_by_visible_text("all")
    driver.find_element(By.ID, "name-filter").send_keys("JOB")
    wait(driver, lambda d: d.find_element(By.ID, "count").text == "newest 3 matching of 5 tasks")


# -- the list endpoint, over HTTP ---------------------------------------------------------------
def listed(server, query=""):
    response = requests.get(f"{server.url}/_dashboard/tasks{query}", timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def listed_names(server, query=""):
    return [task["name"] for task in listed(server, query)["tasks"]]


def test_the_list_is_filtered_by_the_server_with_children_under_their_parent(taskbadger_server):
    export = taskbadger.create_task("nightly export", status="success")
    taskbadger.create_task("shard 1", parent=export.id, status="error")
    taskbadger.create_task("billing run", status="error")
    taskbadger.create_task("shard 2", parent=export.id, status="success")
    taskbadger.create_task("Billing check", status="success", data={"big": "x" * 1000})

    assert listed_names(taskbadger_server) == ["Billing check", "billing run", "nightly export", "shard 1", "shard 2"]
    # a parent is listed for a child that matches, whatever its own status or name
    assert listed_names(taskbadger_server, "?status=error") == ["billing run", "nightly export", "shard 1"]
    assert listed_names(taskbadger_server, "?name=BILL") == ["Billing check", "billing run"]
    assert listed_names(taskbadger_server, "?status=success&name=shard") == ["nightly export", "shard 2"]
    assert listed_names(taskbadger_server, "?status=stale") == []
    payload = listed(taskbadger_server, "?name=billing")
    assert (payload["total"], payload["more"]) == (5, False)
    row = payload["tasks"][0]
    assert "data" not in row and row["monitor_id"] is None and row["url"].endswith(f"/tasks/{row['id']}/")


def test_a_task_given_its_parent_later_is_listed_under_it_in_creation_order(taskbadger_server):
    early = taskbadger.create_task("early")
    parent = taskbadger.create_task("parent")
    taskbadger.create_task("child", parent=parent.id)
    early.update(parent=parent.id)
    assert listed_names(taskbadger_server) == ["parent", "early", "child"]
    taskbadger_server.reset()
    assert listed(taskbadger_server) == {"organization": "acme", "project": "demo", "tasks": [], "more": False,
                                         "total": 0}


def test_the_list_sends_at_most_max_listed_rows_and_says_there_are_more(taskbadger_server, monkeypatch):
    monkeypatch.setattr(dashboard, "MAX_LISTED", 3)
    parent = taskbadger.create_task("parent")
    for n in range(3):
        taskbadger.create_task(f"child {n}", parent=parent.id)
    payload = listed(taskbadger_server)
    assert [t["name"] for t in payload["tasks"]] == ["parent", "child 0", "child 1"]
    assert (payload["total"], payload["more"]) == (4, True)
    assert listed(taskbadger_server, "?name=child 2")["more"] is False


@pytest.mark.parametrize("query", ["?status=done", "?status=ERROR", f"?name={'x' * 256}"])
def test_bad_filters_are_refused_with_what_to_send(taskbadger_server, query):
    response = requests.get(f"{taskbadger_server.url}/_dashboard/tasks{query}", timeout=5)
    assert response.status_code == 400
    assert "status must be one of pending" in response.json()["detail"] or "at most 255" in response.json()["detail"]


# -- who may read it: Host ----------------------------------------------------------------------
def raw_get(server, path, host):
    """GET with exactly this Host header (None: none at all): (status, body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        head = f"GET {path} HTTP/1.1\r\n" + (f"Host: {host}\r\n" if host is not None else "")
        sock.sendall((head + "Connection: close\r\n\r\n").encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def dashboard_paths(task):
    return ["/", "/_dashboard/tasks", f"/_dashboard/tasks/{task.id}", "/_dashboard/static/dashboard.js",
            f"/a/acme/tasks/{task.id}/", f"/public/tasks/{task.id}/"]


@pytest.mark.parametrize("host", [
    "evil.example:{port}",  # DNS rebinding: a page of evil.example whose name now points at 127.0.0.1
    "evil.example",
    "127.0.0.1.evil.example:{port}",
    "127.0.0.1:{other}",
    "localhost:{other}",
    "192.0.2.7:{port}",
    "user@127.0.0.1:{port}",
    "",
    None,
])
def test_the_dashboard_answers_only_when_host_names_this_server_on_loopback(taskbadger_server, host):
    task = taskbadger.create_task("payroll secret")
    port = taskbadger_server.port
    header = None if host is None else host.format(port=port, other=port + 1 if port < 65535 else port - 1)
    for path in dashboard_paths(task):
        status, body = raw_get(taskbadger_server, path, header)
        assert status in (400, 403) and b"payroll" not in body and task.id.encode() not in body, (path, status, body)
        if status == 403:
            assert f"answers at {taskbadger_server.url}/ only".encode() in body


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}"])
def test_the_dashboard_answers_to_its_loopback_names(taskbadger_server, host):
    task = taskbadger.create_task("payroll")
    for path in dashboard_paths(task):
        status, body = raw_get(taskbadger_server, path, host.format(port=taskbadger_server.port))
        assert status == 200, (path, body)
    assert b"payroll" in raw_get(taskbadger_server, "/_dashboard/tasks", host.format(port=taskbadger_server.port))[1]


def test_the_api_answers_any_host_with_the_key(taskbadger_server):
    # an SDK may reach the stand-in under any name (a container's, a proxy's): the API checks the key
    response = requests.post(f"{taskbadger_server.url}/api/acme/demo/tasks/", json={"name": "via a proxy"},
                             headers={"Authorization": "Bearer test-key", "Host": "standin.internal:8700"},
                             timeout=5)
    assert response.status_code == 201
    assert requests.get(f"{taskbadger_server.url}/api/acme/demo/tasks/", timeout=5,
                        headers={"Host": "standin.internal:8700"}).status_code == 401


@pytest.mark.parametrize("host,allow_remote,allowed", [
    ("127.0.0.1:8700", False, True), ("127.0.0.1", False, False), ("127.0.0.1:9000", False, False),
    ("[::1]:8700", False, True), ("192.0.2.7:8700", False, False), ("evil.example:8700", False, False),
    # allow_remote (a container's 0.0.0.0): any address and port (a port mapping changes it), never a name
    ("192.0.2.7:9000", True, True), ("[2001:db8::1]:8700", True, True), ("localhost:9000", True, True),
    ("evil.example:8700", True, False), ("192.0.2.7.evil.example:8700", True, False), ("", True, False),
])
def test_host_policy(host, allow_remote, allowed):
    assert dashboard.host_allowed(host, 8700, allow_remote) is allowed
