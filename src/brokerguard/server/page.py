"""The status page for humans.

Brokers with their health colour, accounts against their cap, halts with their reason and a
resume form. Everything shown is escaped; no secret is shown.
"""

from __future__ import annotations

from html import escape
from typing import Any

__all__ = ["render_page"]

_COLOURS = {"healthy": "#1a7f37", "degraded": "#9a6700", "offline": "#cf222e"}

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1f2328}
h1{font-size:20px} h2{font-size:16px;margin-top:24px}
table{border-collapse:collapse;min-width:640px} td,th{border-bottom:1px solid #d0d7de;
padding:6px 10px;text-align:left} .pill{color:#fff;border-radius:10px;padding:2px 8px}
.halt{background:#fff1f0} form{display:inline} input{margin-right:6px}
#msg{margin-top:12px;font-weight:600}
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


def render_page(status: dict[str, Any], *, control_enabled: bool) -> str:
    """Render the status page HTML from a service status."""
    service = status["service"]
    brokers = "".join(
        f"<tr data-broker='{escape(name)}'><td>{escape(name)}</td>"
        f"<td><span class='pill health' style='background:{_COLOURS[b['health_state']]}'>"
        f"{escape(b['health_state'])}</span></td>"
        f"<td class='read'>{escape(b['breakers']['read']['circuit_state'])}</td>"
        f"<td class='write'>{escape(b['breakers']['write']['circuit_state'])}</td>"
        f"<td>{'allowed' if b['trading_allowed'] else 'blocked'}</td></tr>"
        for name, b in status["brokers"].items()
    )
    accounts = "".join(_account_row(account_id, a) for account_id, a in status["accounts"].items())
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
<title>brokerguard</title><style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>
<h1>brokerguard</h1><p id="ready">{escape(ready)} · store {escape(service["store"])} ·
{service["enforcement_passes"]} enforcement pass(es)</p>
<h2>Brokers</h2><table id="brokers"><tr><th>broker</th><th>health</th><th>read circuit</th>
<th>write circuit</th><th>trading</th></tr>{brokers}</table>
<h2>Accounts</h2><table id="accounts"><tr><th>account</th><th>positions / cap</th>
<th>state</th><th>last enforcement</th><th>paused</th></tr>{accounts}</table>
<h2>Halts</h2>{control}<table id="halts"><tr><th>account</th><th>reason</th><th>by</th>
<th>resume</th></tr>{halts}</table><div id="msg"></div></body></html>"""


def _account_row(account_id: str, a: dict[str, Any]) -> str:
    last = a["last_enforcement"] or {}
    held = "?" if a["positions"] is None else str(a["positions"])
    paused = ", ".join(a["paused_symbols"] or {}) or "-"
    css = " class='halt'" if a["halt"] else ""
    return (
        f"<tr{css} data-account='{escape(account_id)}'><td>{escape(account_id)}</td>"
        f"<td>{escape(held)} / {a['max_positions']}</td><td class='state'>"
        f"{escape(a['trading_state'])}</td><td>{escape(str(last.get('status', '-')))}</td>"
        f"<td>{escape(paused)}</td></tr>"
    )


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
