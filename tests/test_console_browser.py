"""The console in a real browser: Debian's Chromium, headless, driven by selenium through
Debian's chromedriver, against the console served by uvicorn on PostgreSQL, with the SkyHub
emulator and a database left by console_helpers.seed.

Each page is opened, checked for its data and saved as a screenshot under
``test-artifacts/console/`` (gitignored); requeue and release are done by clicking, through the
confirmation, and the rows change in the database; an unauthenticated request gets 401, a
read-only user's action and a POST without its CSRF token get 403, as the browser saw them
(the status codes come from Chromium's own network log).

No browser is no skip: `make test` installs Debian's chromium and chromium-driver first
(.ci/ensure-browser), and without them these tests fail saying so.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from conftest import empty_tables
from console_helpers import OPERATOR, VIEWER, Story, console_settings, seed, served
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.wait import WebDriverWait

from skysync.console.app import create_app
from skysync.emulator import Sandbox
from skysync.store.db import session_scope
from skysync.store.models import OutboxRow, RunLog

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "console"


def _chromium() -> webdriver.Chrome:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"the console's browser tests need Debian's chromium and chromium-driver: "
            f"{', '.join(missing)} missing. `make test` installs them (.ci/ensure-browser); "
            "or: apt-get install chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    driver = _chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def story(pg_url: str, sb: Sandbox) -> Story:
    empty_tables(pg_url)
    return seed(pg_url, sb)


@pytest.fixture
def console_url(pg_url: str, sb: Sandbox, story: Story) -> Iterator[str]:
    with served(create_app(console_settings(pg_url, sb.base_url))) as url:
        yield url


def as_user(url: str, user: tuple[str, str]) -> str:
    """``url`` with ``user``'s credentials in it: Chromium answers the Basic challenge with
    them, and keeps them for the pages' stylesheet and forms."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{user[0]}:{user[1]}@{parts.netloc}"


def statuses(driver: webdriver.Chrome) -> list[tuple[int, str, str]]:
    """(status, method, path) of every document Chromium received since the last call."""
    found = []
    sent: dict[str, str] = {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            sent[params["requestId"]] = params["request"]["method"]
        elif message["method"] == "Network.responseReceived" and params.get("type") == "Document":
            response = params["response"]
            method = sent.get(params["requestId"], "GET")
            found.append((response["status"], method, urlsplit(response["url"]).path))
    return found


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    """The whole page (beyond the window) as ``test-artifacts/console/<name>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    import base64

    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def press(driver: webdriver.Chrome, element: Any) -> None:
    """Click ``element`` and wait for the page it leads to (a click returns before it loads)."""
    page = driver.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(driver, 30).until(staleness_of(page))


def submitted(driver: webdriver.Chrome, script: str) -> None:
    """Run ``script``, which submits a form, and wait for the page it leads to."""
    page = driver.find_element(By.TAG_NAME, "html")
    driver.execute_script(script)
    WebDriverWait(driver, 30).until(staleness_of(page))


def text_of(driver: webdriver.Chrome) -> str:
    return str(driver.find_element(By.TAG_NAME, "body").text)


def states(db_url: str, ids: list[int]) -> dict[int, str]:
    with session_scope(db_url) as session:
        query = sa.select(OutboxRow.id, OutboxRow.state).where(OutboxRow.id.in_(ids))
        return {i: s for i, s in session.execute(query)}


def console_actions(db_url: str) -> list[dict[str, Any]]:
    with session_scope(db_url) as session:
        query = sa.select(RunLog.summary).where(RunLog.kind == "console_action")
        return [dict(s) for s in session.scalars(query.order_by(RunLog.id))]


PAGES = {
    "overview": ("/", ["Overview", "Rows by state and kind", "Relay batches", "Unhealthy"]),
    "trouble": ("/trouble", ["Rows in trouble", "90% below", "price: must be", "ean_null"]),
    "sku-doctor": ("/sku?sku=TACA-VINHO", ["What SkyHub last acknowledged", "Its last rows"]),
    "orders": ("/orders", ["Orders by status", "Americanas-1001", "Late orders"]),
    "order": ("/orders/Americanas-1001", ["In: what SkyHub's queue delivered", "order_invoice"]),
    "reconciliation": ("/reconcile", ["The last run", "TACA-VINHO", "Repair"]),
}


def test_every_page_renders_with_data(browser: webdriver.Chrome, console_url: str) -> None:
    base = as_user(console_url, OPERATOR)
    for name, (path, expected) in PAGES.items():
        browser.get(base + path)
        shown = text_of(browser)
        for words in expected:
            assert words in shown, (name, words)
        # the stylesheet was applied (served behind the same authentication)
        header = browser.find_element(By.CSS_SELECTOR, "header.top")
        assert header.value_of_css_property("background-color") == "rgba(31, 46, 68, 1)"
        assert screenshot(browser, name).stat().st_size > 10_000
    # the SKU doctor's read from SkyHub, by its button
    browser.get(base + "/sku?sku=TACA-VINHO")
    press(browser, browser.find_element(By.ID, "read-skyhub"))
    compare = browser.find_element(By.ID, "compare").text
    assert "DRIFT" in compare and "120.0" in compare
    screenshot(browser, "sku-doctor-skyhub-now")
    assert all(status == 200 for status, _m, _p in statuses(browser))


def test_requeue_and_release_by_clicking(
    browser: webdriver.Chrome, console_url: str, pg_url: str, story: Story
) -> None:
    base = as_user(console_url, OPERATOR)
    browser.get(base + "/trouble?state=dead")
    press(browser, browser.find_element(By.ID, "requeue-all"))
    question = browser.find_element(By.CSS_SELECTOR, ".confirm .question").text
    assert "This will requeue 3 rows" in question and "state dead" in question
    screenshot(browser, "confirm-requeue")
    assert set(states(pg_url, story.dead).values()) == {"dead"}  # nothing before the confirm
    press(browser, browser.find_element(By.ID, "confirm"))
    assert "requeued 3 rows" in browser.find_element(By.CSS_SELECTOR, ".flash").text
    assert set(states(pg_url, story.dead).values()) == {"pending"}

    # one row, by its own button: the held price
    browser.get(base + "/trouble?state=held")
    press(browser, browser.find_element(By.CSS_SELECTOR, f"#row-{story.held} button"))
    assert "This will release 1 row" in browser.find_element(By.CSS_SELECTOR, ".question").text
    press(browser, browser.find_element(By.ID, "confirm"))
    assert "released 1 row" in browser.find_element(By.CSS_SELECTOR, ".flash").text
    assert states(pg_url, [story.held]) == {story.held: "pending"}

    # checked rows: the rejected one, requeued; Cancel changes nothing
    browser.get(base + "/trouble")
    browser.find_element(By.CSS_SELECTOR, f"#row-{story.rejected} input[type=checkbox]").click()
    press(browser, browser.find_element(By.ID, "requeue-checked"))
    press(browser, browser.find_element(By.ID, "cancel"))
    assert states(pg_url, [story.rejected]) == {story.rejected: "rejected"}
    browser.find_element(By.CSS_SELECTOR, f"#row-{story.rejected} input[type=checkbox]").click()
    press(browser, browser.find_element(By.ID, "requeue-checked"))
    press(browser, browser.find_element(By.ID, "confirm"))
    assert states(pg_url, [story.rejected]) == {story.rejected: "pending"}
    screenshot(browser, "after-actions")

    done = [(a["action"], a["count"], a["user"]) for a in console_actions(pg_url)]
    assert done == [("requeue", 3, "otto"), ("release", 1, "otto"), ("requeue", 1, "otto")]
    posts = [(s, p) for s, m, p in statuses(browser) if m == "POST"]
    assert posts and all(status in (200, 303) for status, _ in posts)


def test_unauthenticated_request_gets_401(browser: webdriver.Chrome, console_url: str) -> None:
    browser.get(console_url + "/trouble")
    assert (401, "GET", "/trouble") in statuses(browser)
    assert "Rows in trouble" not in browser.page_source
    browser.get(as_user(console_url, ("otto", "wrong-password")) + "/")
    assert (401, "GET", "/") in statuses(browser)


def test_a_read_only_users_action_is_refused(
    browser: webdriver.Chrome, console_url: str, pg_url: str, story: Story
) -> None:
    browser.get(as_user(console_url, VIEWER) + "/trouble")
    assert "read-only: actions are for operators" in text_of(browser)
    assert not browser.find_elements(By.ID, "requeue-all")  # no button to press
    # the form a viewer could still send (the page's own token): refused all the same
    submitted(
        browser,
        "const form = document.getElementById('rows');"
        "form.action = '/trouble/requeue';"
        "const confirm = document.createElement('input');"
        "confirm.type = 'hidden'; confirm.name = 'confirm'; confirm.value = 'yes';"
        "form.appendChild(confirm); form.submit();",
    )
    assert "read-only user" in text_of(browser)
    assert (403, "POST", "/trouble/requeue") in statuses(browser)
    screenshot(browser, "refused-viewer")
    assert set(states(pg_url, story.dead).values()) == {"dead"}
    assert console_actions(pg_url) == []


def test_a_post_without_its_csrf_token_is_refused(
    browser: webdriver.Chrome, console_url: str, pg_url: str, story: Story
) -> None:
    browser.get(as_user(console_url, OPERATOR) + "/trouble?state=dead")
    browser.execute_script("document.querySelector('#rows input[name=csrf]').remove();")
    press(browser, browser.find_element(By.ID, "requeue-all"))
    assert "security token is missing" in text_of(browser)
    assert (403, "POST", "/trouble/requeue") in statuses(browser)
    screenshot(browser, "refused-csrf")
    assert set(states(pg_url, story.dead).values()) == {"dead"}
    assert console_actions(pg_url) == []


def test_the_browser_is_debians() -> None:
    """What ran these tests (for the record in the test log), never a downloaded build."""
    assert shutil.which("chromedriver") in (str(CHROMEDRIVER), None) or CHROMEDRIVER.exists()
    try:
        driver = _chromium()
    except WebDriverException as exc:  # pragma: no cover - says why on a broken install
        pytest.fail(f"Chromium did not start: {exc}")
    try:
        version = driver.capabilities["browserVersion"]
    finally:
        driver.quit()
    assert version.split(".")[0].isdigit()
