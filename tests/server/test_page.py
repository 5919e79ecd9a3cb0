"""The status page's HTML: last enforcement per account, recent events, links, all escaped."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from brokerguard.server.page import REFRESH_S, render_page
from brokerguard.service import GuardService, embedded_default_config
from brokerguard.testing import FakeClock

START = 1_795_000_000.0
HOSTILE = "<img src=x onerror=alert(1)>'\"&"


@pytest.fixture
def service(tmp_path):
    svc = GuardService(embedded_default_config(tmp_path), clock=FakeClock(start=START))
    yield svc
    svc.close()


def _cell(html: str, account: str, css: str) -> str:
    row = re.search(rf"<tr[^>]*data-account='{re.escape(account)}'>(.*?)</tr>", html, re.DOTALL)
    assert row, account
    cell = re.search(rf"<td class='{css}'[^>]*>(.*?)</td>", row.group(1), re.DOTALL)
    assert cell, css
    return cell.group(1)


def test_an_account_never_enforced_says_never(service):
    """Before the first pass the last-enforcement cell says "never", not a made-up time."""
    html = render_page(service.status(), control_enabled=False, now=START)
    assert _cell(html, "paper-main", "last-enforcement") == "never"


def test_the_last_enforcement_shows_its_utc_time_and_how_long_ago(service):
    """After a pass: the absolute UTC time of its completion and "N s ago" at render time."""
    service.tick()
    completed = service.status()["accounts"]["paper-main"]["last_enforcement_completed_at"]
    html = render_page(service.status(), control_enabled=False, now=completed + 42)
    cell = _cell(html, "paper-main", "last-enforcement")
    stamp = datetime.fromtimestamp(completed, tz=UTC)
    assert f"{stamp:%Y-%m-%d %H:%M:%S} UTC" in cell
    assert f"datetime='{stamp.isoformat()}'" in cell
    assert "42 s ago" in cell
    assert _cell(html, "paper-main", "last-step").endswith("compliant")


@pytest.mark.parametrize(
    ("age_s", "shown"),
    [(0, "0 s ago"), (119, "119 s ago"), (600, "10 min ago"), (9000, "2.5 h ago")],
)
def test_ages_read_in_a_sensible_unit(service, age_s, shown):
    """Seconds for the last two minutes, then minutes, then hours."""
    service.tick()
    completed = service.status()["accounts"]["paper-main"]["last_enforcement_completed_at"]
    html = render_page(service.status(), control_enabled=False, now=completed + age_s)
    assert shown in _cell(html, "paper-main", "last-enforcement")


def test_recent_events_are_listed_newest_first_and_escaped(service):
    """A halt and a breaker transition show as events; operator text is escaped."""
    service.breakers["paper"]["read"].force_open("drill")
    service.halt("paper-small", f"reason {HOSTILE}", "bob")
    html = render_page(service.status(), control_enabled=True, now=START + 5)
    events = re.search(r"<ol id=\"events\">(.*?)</ol>", html, re.DOTALL)
    assert events
    kinds = re.findall(r"<li data-kind='(\w+)'>", events.group(1))
    assert kinds[0] == "TradingHalted"  # the newest first
    assert "BreakerTransitioned" in kinds
    assert HOSTILE not in html
    assert "&lt;img src=x onerror=alert(1)&gt;&#x27;&quot;&amp;" in events.group(1)


def test_an_empty_event_list_says_so(service):
    """No events yet is said, not an empty box that could mean a broken page."""
    html = render_page(service.status(), control_enabled=False, now=START)
    assert "no events yet" in html


def test_a_hostile_account_id_is_escaped_everywhere(service):
    """An operator-supplied account id never becomes markup in any column or attribute."""
    service.tick()
    status = service.status()
    status["accounts"] = {HOSTILE: status["accounts"]["paper-main"]}
    html = render_page(status, control_enabled=True, now=START + 1)
    assert HOSTILE not in html
    assert "<img" not in html
    assert "data-account='&lt;img src=x onerror=alert(1)&gt;&#x27;&quot;&amp;'" in html


def test_the_page_links_the_machine_views_and_loads_nothing_external(service):
    """Links to /status and /metrics; no external script, style, image or font."""
    html = render_page(service.status(), control_enabled=False, now=START)
    links = re.findall(r"<a href=\"([^\"]+)\">", html)
    assert {"/status", "/metrics"} <= set(links)
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", html)
    assert f'data-refresh-s="{REFRESH_S}"' in html
    assert "setInterval(refresh" in html
