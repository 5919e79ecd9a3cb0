"""The status page in a real headless Chromium: an open breaker and a halt show, resume works.

The page's own story is checked too: the last enforcement per account, recent events, the links
to the machine views, and a refresh without a reload. Screenshots go to
``$BROKERGUARD_SCREENSHOTS`` (or a pytest temporary folder); the folder is printed in the test
output.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from brokerguard.server import StatusServer, create_app
from brokerguard.service import GuardService, embedded_default_config
from brokerguard.testing import FakeClock
from tests.conftest import require_service

TOKEN = "browser-test-token"  # noqa: S105 (a test value)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without these, Chromium keeps calling home on a machine whose network is closed.
QUIET = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser():
    if shutil.which("chromium") is None:
        require_service("Chromium", "Debian's chromium package is not installed (see .ci/run)")
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=QUIET)
        yield launched
        launched.close()


@pytest.fixture
def served(tmp_path):
    service = GuardService(
        embedded_default_config(tmp_path), clock=FakeClock(start=1_795_000_000.0)
    )
    server = StatusServer(create_app(service, control_token=TOKEN), port=0)
    server.start()
    yield service, server
    server.stop()
    service.close()


@pytest.fixture(scope="module")
def screenshots(request, tmp_path_factory):
    """The folder screenshots go to, reported in the test output when the module is done."""
    given = os.environ.get("BROKERGUARD_SCREENSHOTS")
    folder = Path(given) if given else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    taken = sorted(p.name for p in folder.glob("*.png"))
    line = f"status page screenshots ({len(taken)}): {folder}"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # shown, whatever pytest captures
        print(f"\n{line}")  # noqa: T201 (the report is the point)


def test_an_open_breaker_and_a_halt_show_and_resume_works(browser, served):
    """Red for the offline broker, the halt with its reason, and a working resume form."""
    service, server = served
    service.breakers["paper"]["read"].force_open("exchange outage drill")
    service.halt("paper-small", "runaway bot", "bob")
    page = browser.new_page()
    page.goto(f"{server.url}/")

    health = page.locator("tr[data-broker='paper'] .health")
    assert health.inner_text() == "offline"
    assert health.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(207, 34, 46)"
    assert page.locator("tr[data-broker='paper'] .read").inner_text() == "open"
    assert "NOT READY" in page.locator("#ready").inner_text()
    halt_row = page.locator("tr[data-halt='paper-small']")
    assert "runaway bot" in halt_row.inner_text()
    assert page.locator("tr[data-account='paper-small'] .state").inner_text() == "halted"

    page.fill("#token", TOKEN)
    form = page.locator("form[data-resume='paper-small']")
    form.locator("input[name='operator']").fill("alice")
    form.locator("input[name='reason']").fill("bot fixed, positions checked")
    form.locator("button").click()
    page.wait_for_selector("tr[data-halt='paper-small']", state="detached", timeout=10_000)

    assert not service.store.is_halted("paper-small")
    assert service.store.audit_log("paper-small")[0].actor == "alice"
    assert "no halts" in page.locator("#halts").inner_text()


def test_a_wrong_token_is_refused_in_the_page(browser, served):
    """The page shows the 401 and the halt stays."""
    service, server = served
    service.halt("paper-main", "drill", "bob")
    page = browser.new_page()
    page.goto(f"{server.url}/")
    page.fill("#token", "wrong")
    form = page.locator("form[data-resume='paper-main']")
    form.locator("input[name='operator']").fill("mallory")
    form.locator("input[name='reason']").fill("let me in")
    form.locator("button").click()
    page.wait_for_function("document.getElementById('msg').textContent.length > 0")
    assert page.locator("#msg").inner_text().startswith("401")
    assert service.store.is_halted("paper-main")


def _utc(epoch_s: float) -> str:
    return f"{datetime.fromtimestamp(epoch_s, tz=UTC):%Y-%m-%d %H:%M:%S} UTC"


def test_the_page_shows_last_enforcement_events_and_working_links(browser, served, screenshots):
    """Per account its last enforcement (UTC and "N s ago"), recent events, links that answer."""
    service, server = served
    service.tick()
    completed = service.status()["accounts"]["paper-main"]["last_enforcement_completed_at"]
    service.clock.advance(30)
    service.breakers["paper"]["read"].force_open("exchange outage drill")
    service.halt("paper-small", "runaway bot", "bob")
    requested: list[str] = []
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("request", lambda r: requested.append(r.url))
    page.goto(f"{server.url}/")

    last = page.locator("tr[data-account='paper-main'] .last-enforcement").inner_text()
    assert _utc(completed) in last
    ago = round(service.clock.time() - completed)
    assert f"{ago} s ago" in last
    events = page.locator("#events li")
    assert events.count() >= 2
    assert events.first.get_attribute("data-kind") == "TradingHalted"
    assert "runaway bot" in events.first.inner_text()
    hrefs = page.locator("nav#links a").evaluate_all("links => links.map(a => a.href)")
    assert {f"{server.url}/status", f"{server.url}/metrics"} <= set(hrefs)
    for href in hrefs:
        answer = page.request.get(href)
        assert answer.status in {200, 503}, href  # /readyz is 503 while the circuit is open
        if href.endswith(("/status", "/metrics")):
            assert answer.status == 200, href
    page.screenshot(path=screenshots / "status-page.png", full_page=True)
    assert (screenshots / "status-page.png").stat().st_size > 10_000
    assert all(url.startswith(server.url) for url in requested), requested  # nothing external


def test_the_page_refreshes_itself_without_a_reload(browser, served, screenshots):
    """After the service's state changes, the open page shows it; the page was never reloaded."""
    service, server = served
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{server.url}/?refresh=1")
    assert page.locator("#every").inner_text() == "1"
    cell = page.locator("tr[data-account='paper-main'] .last-enforcement")
    assert cell.inner_text() == "never"
    assert "no events yet" in page.locator("#events").inner_text()
    page.evaluate("window.loadedOnce = true")  # a reload would forget it
    page.screenshot(path=screenshots / "before-refresh.png", full_page=True)

    service.tick()
    service.halt("paper-small", "cap breached twice", "bob")
    page.wait_for_function(
        "document.querySelector(\"tr[data-account='paper-small'] .state\").textContent"
        " === 'halted'",
        timeout=10_000,
    )

    assert page.evaluate("window.loadedOnce") is True
    assert "UTC" in cell.inner_text()
    assert "s ago" in cell.inner_text()
    assert page.locator("#events li").first.get_attribute("data-kind") == "TradingHalted"
    assert page.locator("tr[data-halt='paper-small']").count() == 1
    assert page.locator("#stale").inner_text() == ""
    page.screenshot(path=screenshots / "after-refresh.png", full_page=True)


def test_a_refresh_leaves_a_resume_form_being_typed_alone(browser, served):
    """An operator typing a resume reason does not lose it to the next refresh."""
    service, server = served
    service.halt("paper-small", "drill", "bob")
    page = browser.new_page()
    page.goto(f"{server.url}/?refresh=1")
    form = page.locator("form[data-resume='paper-small']")
    form.locator("input[name='reason']").fill("checked the positions by hand")
    service.tick()  # the live parts change: the accounts table now has a completed time
    page.wait_for_function(
        "!document.querySelector(\"tr[data-account='paper-main'] .last-enforcement\")"
        ".textContent.startsWith('never')",
        timeout=10_000,
    )
    assert form.locator("input[name='reason']").input_value() == "checked the positions by hand"


def test_a_failed_refresh_says_the_page_is_stale(browser, served, screenshots):
    """When the service stops answering the page says so instead of looking current."""
    _service, server = served
    page = browser.new_page()
    page.goto(f"{server.url}/?refresh=1")
    server.stop()
    page.wait_for_function(
        "document.getElementById('stale').textContent.includes('refresh failed')",
        timeout=10_000,
    )
    assert "out of date" in page.locator("#stale").inner_text()
    page.screenshot(path=screenshots / "stale.png", full_page=True)
