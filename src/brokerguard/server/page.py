"""The status page for humans.

Brokers with their health colour, accounts against their cap with the time of their last
completed enforcement, recent events, halts with their reason and a resume form, and links to
the machine views (``/status``, ``/metrics``). Everything shown is escaped (account ids and
reasons are operator- or broker-supplied); no secret is shown.

The page refreshes itself without a reload: a small inline script fetches ``/`` every few
seconds (``?refresh=N`` seconds, default :data:`REFRESH_S`) and swaps in the live parts, so one
renderer (this module) serves both the first load and every refresh. The halts table is left
alone while an operator is typing into a resume form. A failed refresh says so on the page
instead of leaving stale data looking current. No external resource is loaded.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any

__all__ = ["REFRESH_S", "render_page"]

REFRESH_S = 5
"""Seconds between two refreshes of the page's live parts (``?refresh=N`` overrides, >= 1)."""

_EVENTS_SHOWN = 20
_COLOURS = {"healthy": "#1a7f37", "degraded": "#9a6700", "offline": "#cf222e"}
_SECONDS_UNTIL_MINUTES = 120.0
_MINUTES_UNTIL_HOURS = 7200.0
_EVENT_HEADER = frozenset({"kind", "account_id", "at"})

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1f2328}
h1{font-size:20px} h2{font-size:16px;margin-top:24px}
table{border-collapse:collapse;min-width:640px} td,th{border-bottom:1px solid #d0d7de;
padding:6px 10px;text-align:left} .pill{color:#fff;border-radius:10px;padding:2px 8px}
.halt{background:#fff1f0} form{display:inline} input{margin-right:6px}
#msg{margin-top:12px;font-weight:600} nav a{margin-right:12px} .muted{color:#57606a}
#stale{color:#cf222e;font-weight:600} #events{padding-left:20px} #events li{margin:2px 0}
"""

_SCRIPT = """
async function control(path, form) {
  const token = document.getElementById('token').value;
  const body = Object.fromEntries(new FormData(form).entries());
  const r = await fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json',
    'Authorization': 'Bearer ' + token}, body: JSON.stringify(body)});
  const text = await r.text();
  document.getElementById('msg').textContent = r.status + ' ' + text;
  if (r.ok) { setTimeout(() => location.reload(), 300); }
}
"""

# At the end of the body: it needs the elements it swaps.
_REFRESH_SCRIPT = """
const LIVE = ['refreshed', 'live', 'halts'];
function editing(el) {
  return [...el.querySelectorAll('input:not([type=hidden])')]
    .some(i => i.value || i === document.activeElement);
}
async function refresh() {
  const stale = document.getElementById('stale');
  try {
    const r = await fetch(location.pathname, {cache: 'no-store'});
    if (!r.ok) { throw new Error('HTTP ' + r.status); }
    const next = new DOMParser().parseFromString(await r.text(), 'text/html');
    for (const id of LIVE) {
      const mine = document.getElementById(id), theirs = next.getElementById(id);
      if (mine && theirs && !(id === 'halts' && editing(mine))) { mine.replaceWith(theirs); }
    }
    stale.textContent = '';
  } catch (e) {
    stale.textContent = 'refresh failed (' + e.message + '): what follows may be out of date';
  }
}
const asked = Number(new URLSearchParams(location.search).get('refresh'));
const every = Math.max(1, asked || Number(document.body.dataset.refreshS) || 5);
document.getElementById('every').textContent = every;
setInterval(refresh, every * 1000);
"""


def render_page(status: dict[str, Any], *, control_enabled: bool, now: float | None = None) -> str:
    """Render the status page HTML from a service status, as of `now` (epoch seconds).

    Without `now` the service's own time is derived from the status (start + uptime).
    """
    service = status["service"]
    if now is None:
        now = float(service["started_at"]) + float(service["uptime_seconds"])
    brokers = "".join(
        f"<tr data-broker='{escape(name)}'><td>{escape(name)}</td>"
        f"<td><span class='pill health' style='background:{_COLOURS[b['health_state']]}'>"
        f"{escape(b['health_state'])}</span></td>"
        f"<td class='read'>{escape(b['breakers']['read']['circuit_state'])}</td>"
        f"<td class='write'>{escape(b['breakers']['write']['circuit_state'])}</td>"
        f"<td>{'allowed' if b['trading_allowed'] else 'blocked'}</td></tr>"
        for name, b in status["brokers"].items()
    )
    accounts = "".join(
        _account_row(account_id, a, now) for account_id, a in status["accounts"].items()
    )
    events = "".join(_event_item(e, now) for e in status["events"][:_EVENTS_SHOWN]) or (
        "<li class='muted'>no events yet</li>"
    )
    halts = "".join(_halt_row(h, control_enabled=control_enabled) for h in status["halts"]) or (
        "<tr><td colspan='4'>no halts</td></tr>"
    )
    control = (
        "<p>Control token: <input id='token' type='password' autocomplete='off'></p>"
        if control_enabled
        else "<p>Control endpoints are disabled: no control token is configured.</p>"
        "<input id='token' type='hidden'>"
    )
    ready = "ready" if service["ready"] else "NOT READY: " + "; ".join(service["not_ready_reasons"])
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>brokerguard</title><style>{_STYLE}</style><script>{_SCRIPT}</script></head>
<body data-refresh-s="{REFRESH_S}">
<h1>brokerguard</h1>
<nav id="links"><a href="/status">/status</a><a href="/metrics">/metrics</a><a
href="/readyz">/readyz</a><a href="/healthz">/healthz</a></nav>
<p class="muted"><span id="refreshed">as of {_time(now)}</span> · refreshes every
<span id="every">{REFRESH_S}</span> s without a reload</p><p id="stale"></p>
<div id="live"><p id="ready">{escape(ready)} · store {escape(service["store"])} ·
{int(service["enforcement_passes"])} enforcement pass(es)</p>
<h2>Brokers</h2><table id="brokers"><tr><th>broker</th><th>health</th><th>read circuit</th>
<th>write circuit</th><th>trading</th></tr>{brokers}</table>
<h2>Accounts</h2><table id="accounts"><tr><th>account</th><th>positions / cap</th>
<th>state</th><th>last enforcement</th><th>last step</th><th>paused</th></tr>{accounts}</table>
<h2>Recent events</h2><ol id="events">{events}</ol></div>
<h2>Halts</h2>{control}<table id="halts"><tr><th>account</th><th>reason</th><th>by</th>
<th>resume</th></tr>{halts}</table><div id="msg"></div>
<script>{_REFRESH_SCRIPT}</script></body></html>"""


def _account_row(account_id: str, a: dict[str, Any], now: float) -> str:
    last = a["last_enforcement"] or {}
    held = "?" if a["positions"] is None else str(a["positions"])
    paused = ", ".join(a["paused_symbols"] or {}) or "-"
    css = " class='halt'" if a["halt"] else ""
    completed = a.get("last_enforcement_completed_at")
    when = "never" if completed is None else f"{_time(completed)} · {_ago(now - completed)}"
    step = str(last.get("status", "-"))
    reason = last.get("reason")
    return (
        f"<tr{css} data-account='{escape(account_id)}'><td>{escape(account_id)}</td>"
        f"<td>{escape(held)} / {int(a['max_positions'])}</td><td class='state'>"
        f"{escape(a['trading_state'])}</td><td class='last-enforcement'>{when}</td>"
        f"<td class='last-step' title='{escape(str(reason or ''))}'>{escape(step)}</td>"
        f"<td>{escape(paused)}</td></tr>"
    )


def _event_item(event: dict[str, Any], now: float) -> str:
    kind = str(event.get("kind", "?"))
    at = event.get("at")
    when = "?" if at is None else f"{_time(at)} · {_ago(now - at)}"
    details = ", ".join(
        f"{key}={_plain(value)}" for key, value in event.items() if key not in _EVENT_HEADER
    )
    return (
        f"<li data-kind='{escape(kind)}'>{when} <b>{escape(kind)}</b> "
        f"<span class='account'>{escape(str(event.get('account_id', '')))}</span>"
        f"{': ' + escape(details) if details else ''}</li>"
    )


def _plain(value: object) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def _time(epoch_s: float) -> str:
    moment = datetime.fromtimestamp(epoch_s, tz=UTC)
    return f"<time datetime='{moment.isoformat()}'>{moment:%Y-%m-%d %H:%M:%S} UTC</time>"


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)  # a clock step backwards is not "in the future"
    if seconds < _SECONDS_UNTIL_MINUTES:
        return f"{seconds:.0f} s ago"
    if seconds < _MINUTES_UNTIL_HOURS:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _halt_row(h: dict[str, Any], *, control_enabled: bool) -> str:
    account = escape(h["account_id"])
    form = (
        # control() is async: return false here, or the browser also submits the form itself.
        f"<form onsubmit=\"control('/resume', this); return false;\" data-resume='{account}'>"
        f"<input type='hidden' name='account_id' value='{account}'>"
        "<input name='operator' placeholder='operator' required>"
        "<input name='reason' placeholder='reason' required>"
        "<button type='submit'>resume</button></form>"
        if control_enabled
        else "-"
    )
    return (
        f"<tr data-halt='{account}'><td>{account}</td><td>{escape(h['reason'])}</td>"
        f"<td>{escape(h['source'])}</td><td>{form}</td></tr>"
    )
