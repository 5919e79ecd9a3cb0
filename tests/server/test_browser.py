"""The status page in a real headless Chromium: an open breaker and a halt show, resume works."""

from __future__ import annotations

import shutil

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
