"""The dashboard in a real headless Chromium, against a real `simplequeue serve` on real
PostgreSQL with real worker processes.

Skipped when chromium or chromedriver is missing, unless SIMPLEQUEUE_REQUIRE_BROWSER=1.
SIMPLEQUEUE_DASHBOARD_SCREENSHOTS=<dir> also runs test_screenshots, which writes the
screenshots of docs/dashboard.md there (docs/img).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

import simplequeue as sq
from tests.conftest import ROOT, WorkerProcess, count, query

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ADMIN = "dash-admin-token-0123456789"
READER = "dash-read-token-0123456789"
TITLE = "simplequeue"
HOSTILE_QUEUE = "<img src=x onerror=\"document.title='pwned'\"> 'q\" <script>x</script>"
NEWLINE_QUEUE = "two\nlines <b>bold</b>"
"""(The API cannot pause this one: its path converter does not match a newline.)"""
HOSTILE_DATA = {
    "html": "<img src=x onerror=\"document.title='pwned'\">",
    "s": "<script>document.title='pwned'</script>",
}

T = TypeVar("T")
Workers = Callable[..., WorkerProcess]


def _missing_browser() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """One headless Chromium for the module (each test opens its own server's origin, so
    sessionStorage starts empty)."""
    missing = _missing_browser()
    if missing:
        if os.environ.get("SIMPLEQUEUE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"SIMPLEQUEUE_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # never Selenium Manager: no download
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,800")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    # The viewport itself 1280x800, for the screenshots.
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
    )
    try:
        yield driver
    finally:
        driver.quit()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(dsn: str) -> Iterator[str]:
    """A real `simplequeue serve` on the test database; its base URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simplequeue",
            "serve",
            "--dsn",
            dsn,
            "--port",
            str(port),
            "--admin-token",
            ADMIN,
            "--read-token",
            READER,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url + "openapi.json", timeout=1) as answer:
                if answer.status == 200:
                    break
        except (OSError, urllib.error.URLError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"simplequeue serve did not start: {proc.communicate()[0]}")
        time.sleep(0.1)
    try:
        yield url
    finally:
        # uvicorn waits for open event streams, and notices a client gone only at the next
        # ping (15 s): a second SIGTERM makes it stop at once (its lifespan still closes).
        proc.terminate()
        try:
            proc.wait(1)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def browser_log(driver: WebDriver) -> list[dict[str, Any]]:
    """The console messages since the last call (chromedriver's log, typed)."""
    get_log = cast(Callable[[str], list[dict[str, Any]]], driver.get_log)
    return get_log("browser")


class Page:
    """The dashboard open in the browser, with waits that survive redraws."""

    def __init__(self, driver: WebDriver, url: str) -> None:
        self.driver = driver
        self.url = url

    def wait(self, check: Callable[[], T | None], what: str, timeout: float = 10.0) -> T:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = check()
            except (NoSuchElementException, StaleElementReferenceException):  # not yet drawn
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout}s: {what}; page:\n{self.main_text()}")
            time.sleep(0.1)

    def main_text(self) -> str:
        try:
            return str(self.driver.find_element(By.TAG_NAME, "body").text)
        except WebDriverException:
            return "?"

    def by_id(self, element_id: str) -> WebElement:
        return self.driver.find_element(By.ID, element_id)

    def text(self, element_id: str) -> str:
        return str(self.by_id(element_id).get_property("textContent"))

    def visible(self, element_id: str) -> bool:
        return bool(self.by_id(element_id).is_displayed())

    def sign_in(self, token: str) -> None:
        self.wait(lambda: self.visible("token-form"), "the token form is shown")
        field = self.by_id("token-input")
        field.clear()
        field.send_keys(token)
        self.driver.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()

    def go(self, fragment: str) -> None:
        """Change view without reloading the page."""
        self.driver.execute_script("location.hash = arguments[0]", fragment)

    def queue_row(self, name: str) -> WebElement | None:
        for row in self.driver.find_elements(By.CSS_SELECTOR, "#queues-table tbody tr"):
            if row.get_attribute("data-queue") == name:
                return row
        return None

    def queue_cell(self, name: str, css: str) -> str | None:
        row = self.queue_row(name)
        return None if row is None else str(row.find_element(By.CSS_SELECTOR, css).text)

    def click_in_queue_row(self, name: str, css: str) -> None:
        def click() -> bool:
            row = self.queue_row(name)
            if row is None:
                return False
            row.find_element(By.CSS_SELECTOR, css).click()
            return True

        self.wait(click, f"a {css} button for queue {name!r}")

    def message(self) -> str:
        return self.text("message") if self.visible("message") else ""

    def severe_logs(self) -> list[dict[str, Any]]:
        logs = browser_log(self.driver)
        return [entry for entry in logs if entry.get("level") == "SEVERE"]


@pytest.fixture
def page(browser: WebDriver, server: str) -> Iterator[Page]:
    browser.get(server)
    browser_log(browser)  # drop what earlier tests left
    try:
        yield Page(browser, server)
    finally:
        browser.get("about:blank")  # close the event stream before the server stops


def insert(dsn: str, job: sq.Job) -> str:
    queue = sq.SyncQueue.from_url(dsn)
    with queue:
        job_id = queue.insert_job(job)
    assert job_id is not None
    return str(job_id)


def paused(dsn: str, name: str) -> bool:
    rows = query(dsn, "SELECT paused_at FROM simplequeue.queues WHERE name = %s", [name])
    return bool(rows) and rows[0][0] is not None


def wait_db(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


# -- the tests ------------------------------------------------------------------------


def test_loads_asks_for_a_token_then_shows_the_queues_and_workers(
    page: Page, dsn: str, workers: Workers
) -> None:
    worker = workers()
    wait_db(lambda: count(dsn, table="workers") > 0, "the worker registered")
    assert page.driver.title == TITLE
    assert page.visible("token-form") and not page.visible("view-queues")
    assert not page.visible("nav"), "nothing but the token form before a token"
    assert page.severe_logs() == [], "console errors (CSP violations included) on load"

    page.sign_in(ADMIN)
    page.wait(lambda: page.visible("view-queues"), "the queues view")
    assert not page.visible("token-form")
    assert page.driver.execute_script("return sessionStorage.getItem('simplequeue.token')") == ADMIN
    page.wait(lambda: page.queue_cell("work", "td:nth-child(12)") == "1", "queue work, 1 worker")
    assert page.queue_cell("work", "td.state") == "active"
    page.wait(lambda: page.by_id("live").get_attribute("data-state") == "on", "live: connected")
    # Two charts, a line for the queue in each.
    page.wait(
        lambda: len(page.driver.find_elements(By.CSS_SELECTOR, ".chart-svg polyline")) == 2,
        "a depth and a throughput line",
    )

    page.go("#workers")
    page.wait(lambda: str(worker.pid) in page.text("workers-table"), "the worker's pid")
    row = page.driver.find_element(By.CSS_SELECTOR, "#workers-table tbody tr")
    assert "work" in row.text and "alive" in row.text

    # The charts keep a point per poll (every 3 s) in memory.
    page.go("#queues")

    def history() -> int:
        points = page.driver.find_element(By.CSS_SELECTOR, "#chart-depth polyline")
        return len(str(points.get_attribute("points")).split())

    page.wait(lambda: history() >= 3, "three points of history in the depth chart")

    assert page.severe_logs() == [], "console errors after signing in"


def test_updates_live_when_a_job_completes(page: Page, dsn: str, workers: Workers) -> None:
    workers()
    page.sign_in(ADMIN)
    page.wait(lambda: page.by_id("live").get_attribute("data-state") == "on", "live: connected")
    page.wait(lambda: page.queue_row("work"), "queue work")
    page.driver.execute_script("window.notReloaded = true")

    job_id = insert(dsn, sq.Job("work", {"sleep": 1.5}))
    # The event feed shows its transitions as they commit; its link opens the job.
    link = page.wait(
        lambda: page.driver.find_element(
            By.CSS_SELECTOR, f'#event-feed li[data-id="{job_id}"][data-kind="started"] a'
        ),
        "the job's started event",
    )
    link.click()
    page.wait(lambda: page.text("job-id") == job_id, "the job's detail")
    assert page.wait(lambda: page.text("job-status"), "a status") in ("pending", "running")
    # Only events refresh the detail (no polling): its status turns completed by itself.
    page.wait(lambda: page.text("job-status") == "completed", "completed, live", timeout=8)
    assert page.by_id("job-cancel").get_property("disabled") is True

    page.go("#queues")
    page.wait(lambda: page.queue_cell("work", "td.completed") == "1", "1 completed in stats")
    assert page.driver.execute_script("return window.notReloaded") is True


def test_pause_and_resume_with_the_buttons(page: Page, dsn: str, workers: Workers) -> None:
    workers()
    page.sign_in(ADMIN)
    page.wait(lambda: page.queue_row("work"), "queue work")
    assert not paused(dsn, "work")

    page.click_in_queue_row("work", "button.pause")
    wait_db(lambda: paused(dsn, "work"), "queues.paused_at set")
    page.wait(lambda: page.queue_cell("work", "td.state") == "paused", "shown paused")
    assert "paused" in page.message()
    # A paused queue's jobs wait.
    job_id = insert(dsn, sq.Job("work", {"sleep": 0}))
    time.sleep(1.0)
    assert count(dsn, "id = %s AND status = 'pending'", [job_id]) == 1

    page.click_in_queue_row("work", "button.resume")
    wait_db(lambda: not paused(dsn, "work"), "queues.paused_at cleared")
    page.wait(lambda: page.queue_cell("work", "td.state") == "active", "shown active")
    wait_db(
        lambda: count(dsn, "id = %s AND status = 'completed'", [job_id]) == 1,
        "the waiting job runs once resumed",
    )


def test_requeue_a_dead_job_and_purge_a_queue_from_the_dlq(
    page: Page, dsn: str, workers: Workers
) -> None:
    worker = workers()
    dead = [insert(dsn, sq.Job("work", {"fail": f"boom {i}"}, max_attempts=1)) for i in range(2)]
    wait_db(lambda: count(dsn, "status = 'failed'") == 2, "two failed jobs", timeout=15)
    worker.terminate()  # so a requeued job stays pending

    page.sign_in(ADMIN)
    page.go("#dlq")

    def row(job_id: str) -> WebElement | None:
        found = page.driver.find_elements(By.CSS_SELECTOR, f'#dlq-table tr[data-id="{job_id}"]')
        return found[0] if found else None

    page.wait(lambda: row(dead[0]) and row(dead[1]), "both dead jobs listed")
    assert "ValueError: boom 0" in page.text("dlq-table")
    page.wait(lambda: row(dead[0]), "row").find_element(By.CSS_SELECTOR, "button.requeue").click()
    wait_db(
        lambda: count(dsn, "id = %s AND status = 'pending' AND attempt = 0", [dead[0]]) == 1,
        "the requeued job is pending again with fresh attempts",
    )
    page.wait(lambda: row(dead[0]) is None, "gone from the DLQ view")
    assert "requeued" in page.message()

    # Bulk purge of one queue, behind a confirm() prompt.
    select = page.by_id("dlq-queue")
    page.wait(
        lambda: any(
            o.get_attribute("value") == "work" for o in select.find_elements(By.TAG_NAME, "option")
        ),
        "queue work in the filter",
    )
    page.driver.execute_script(
        "const s = document.getElementById('dlq-queue'); s.value = 'work';"
        "document.querySelector('#dlq-filter button[type=submit]').click();"
    )
    page.wait(lambda: "of queue" in page.text("dlq-purge-all"), "the purge button names the queue")
    page.by_id("dlq-purge-all").click()
    alert = page.driver.switch_to.alert
    assert "work" in alert.text
    alert.accept()
    wait_db(
        lambda: (
            count(dsn, "id = %s", [dead[1]]) + count(dsn, "id = %s", [dead[1]], table="dlq") == 0
        ),
        "the other dead job purged",
    )
    assert count(dsn, "id = %s", [dead[0]]) == 1, "the requeued job is no longer dead"
    page.wait(lambda: row(dead[1]) is None, "gone from the DLQ view")


def test_hostile_data_and_queue_names_show_as_text(page: Page, dsn: str, server: str) -> None:
    job_id = insert(dsn, sq.Job(HOSTILE_QUEUE, HOSTILE_DATA))
    insert(dsn, sq.Job(NEWLINE_QUEUE, {"text": "a\nb"}))
    query(  # as a handler could have left them: its result, its progress
        dsn,
        "UPDATE simplequeue.jobs SET result = %s::jsonb, progress = %s::jsonb, "
        "progress_message = %s, progress_at = now() WHERE id = %s",
        [json.dumps(HOSTILE_DATA), json.dumps(HOSTILE_DATA["html"]), HOSTILE_DATA["s"], job_id],
    )
    page.sign_in(ADMIN)
    for name in (HOSTILE_QUEUE, NEWLINE_QUEUE):
        row = page.wait(partial(page.queue_row, name), f"queue {name!r} listed")
        link = row.find_element(By.CSS_SELECTOR, "a.queue-name")
        assert link.get_property("textContent") == name
        assert link.find_elements(By.XPATH, "*") == [], "text, no elements inside"

    page.go(f"#job/{job_id}")
    page.wait(lambda: page.text("job-status") == "pending", "the job's detail")
    time.sleep(0.3)
    # Nothing ran: no element came out of the data (the page's CSP would block an inline
    # handler, and report it on the console: there is no such report either).
    assert page.driver.title == TITLE
    assert page.driver.find_elements(By.CSS_SELECTOR, "main img, main script, main b") == []
    scripts = page.driver.find_elements(By.TAG_NAME, "script")
    assert [s.get_attribute("src") for s in scripts] == [server + "static/app.js"]
    assert page.severe_logs() == []
    # The text is there, literally, visible: the data as pretty JSON, the queue's name.
    shown = page.by_id("job-data").text
    assert "<img src=x onerror=" in shown and "<script>document.title='pwned'</script>" in shown
    assert json.loads(page.text("job-data")) == HOSTILE_DATA
    assert json.loads(page.text("job-result")) == HOSTILE_DATA
    assert json.dumps(HOSTILE_DATA["html"]) in page.text("job-progress")  # as JSON
    assert HOSTILE_DATA["s"] in page.text("job-progress")
    assert HOSTILE_QUEUE in page.text("job-fields")

    # The name goes percent-encoded in the path: pausing it pauses exactly that queue.
    page.go("#queues")
    page.click_in_queue_row(HOSTILE_QUEUE, "button.pause")
    wait_db(lambda: paused(dsn, HOSTILE_QUEUE), "the hostile queue paused")
    page.wait(lambda: page.queue_cell(HOSTILE_QUEUE, "td.state") == "paused", "shown paused")
    assert HOSTILE_QUEUE in page.message()
    assert count(dsn, "paused_at IS NOT NULL", table="queues") == 1
    assert page.driver.title == TITLE


def test_a_read_token_is_told_it_may_not_pause(page: Page, dsn: str) -> None:
    insert(dsn, sq.Job("work", {"sleep": 0}))
    page.sign_in("not-a-valid-token-at-all")
    page.wait(lambda: "401" in page.message(), "a 401 message for a wrong token")
    assert page.visible("token-form") and not page.visible("view-queues")

    page.sign_in(READER)
    page.wait(lambda: page.queue_row("work"), "queue work")
    page.click_in_queue_row("work", "button.pause")
    page.wait(lambda: "403" in page.message(), "a 403 message")
    assert "admin token" in page.message()
    assert page.by_id("message").get_attribute("class") == "error"
    time.sleep(0.5)
    assert not paused(dsn, "work")
    assert count(dsn, "paused_at IS NOT NULL", table="queues") == 0
    assert page.queue_cell("work", "td.state") == "active"


def test_a_queues_limits_and_park_are_shown(page: Page, dsn: str) -> None:
    with sq.SyncQueue.from_url(dsn) as queue:
        queue.configure_queue(
            "partner", max_running=3, rate_limit=sq.Rate(10, per=1), fair=True, durability="fast"
        )
        queue.park("partner", datetime.now(UTC) + timedelta(hours=1))
        queue.configure_queue("plain")
    page.sign_in(ADMIN)
    page.wait(lambda: page.queue_row("partner"), "queue partner")
    shown = page.queue_cell("partner", "td.limits")
    for part in ("≤3 running", "10/1s", "fair", "fast commits", "parked until"):
        assert part in shown
    page.wait(lambda: page.queue_row("plain"), "queue plain")
    assert page.queue_cell("plain", "td.limits") == "—"  # durable: nothing to say


def test_schedules_are_listed_and_paused_from_the_dashboard(
    page: Page, dsn: str, workers: Workers
) -> None:
    workers(target="tests.worker_app:scheduled")
    page.sign_in(ADMIN)
    page.go("schedules")

    def row() -> WebElement | None:
        found = page.driver.find_elements(By.CSS_SELECTOR, "#schedules-table tbody tr")
        return next((r for r in found if r.get_attribute("data-schedule") == "tick"), None)

    shown = page.wait(row, "schedule tick")
    assert "every 1.0 s" in shown.text and "all" in shown.text
    page.wait(lambda: (r := row()) and r.find_element(By.CSS_SELECTOR, "button.pause"), "pause")
    page.wait(lambda: _click(row, "button.pause"), "the pause button")
    page.wait(lambda: query(dsn, "SELECT paused FROM simplequeue.schedules")[0][0], "paused")
    page.wait(
        lambda: (r := row()) and r.find_element(By.CSS_SELECTOR, "td.state").text == "paused",
        "shown paused",
    )
    page.wait(lambda: _click(row, "button.resume"), "the resume button")
    page.wait(lambda: not query(dsn, "SELECT paused FROM simplequeue.schedules")[0][0], "resumed")
    assert page.severe_logs() == []


def _click(row: Callable[[], WebElement | None], css: str) -> bool:
    found = row()
    if found is None:
        return False
    found.find_element(By.CSS_SELECTOR, css).click()
    return True


SHOTS = os.environ.get("SIMPLEQUEUE_DASHBOARD_SCREENSHOTS")


@pytest.mark.skipif(not SHOTS, reason="set SIMPLEQUEUE_DASHBOARD_SCREENSHOTS=docs/img")
def test_screenshots(page: Page, dsn: str, workers: Workers) -> None:
    """The screenshots of docs/dashboard.md: a few queues at work, a failed job."""
    assert SHOTS
    out = Path(SHOTS)
    out.mkdir(parents=True, exist_ok=True)
    workers()
    page.sign_in(ADMIN)
    page.wait(lambda: page.queue_row("work"), "queue work")
    queue = sq.SyncQueue.from_url(dsn)
    with queue:
        queue.insert_job(sq.Job("mail", {"to": "ops@example.com"}))
        later = datetime.now(UTC) + timedelta(hours=1)
        queue.insert_job(sq.Job("reports", {"month": "2026-11"}, run_at=later))
        failed = queue.insert_job(
            sq.Job("work", {"fail": "upstream answered 503", "order": 1042}, max_attempts=1)
        )
        for i in range(40):
            queue.insert_job(sq.Job("work", {"sleep": 0.2 * (i % 4), "order": 1000 + i}))
            if i % 3 == 0:
                queue.insert_job(sq.Job("mail", {"to": f"user{i}@example.com"}))
            time.sleep(0.4)
    page.click_in_queue_row("reports", "button.pause")
    page.wait(lambda: page.queue_cell("reports", "td.state") == "paused", "reports paused")
    time.sleep(3)
    page.driver.execute_script("document.getElementById('message').hidden = true")
    page.driver.save_screenshot(str(out / "dashboard-queues.png"))
    page.go(f"#job/{failed}")
    page.wait(lambda: page.text("job-status") == "failed", "the failed job")
    page.driver.save_screenshot(str(out / "dashboard-job.png"))
