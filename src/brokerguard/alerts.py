"""Alerts: the events an operator must hear about, sent to the log and to webhooks.

:func:`alert_for` decides which events are alerts and how loud (a halt and an unvaluable symbol
are CRITICAL, an open circuit or an unverified enforcement a WARNING, a recovery INFO).
:class:`AlertRouter` subscribes to the service's events and hands alerts at or above each
sink's level to it, dropping an identical alert repeated within ``repeat_after`` seconds. A sink
that fails is logged and never stops enforcement. A webhook's URL (which usually carries a
token) is read from the environment when sending and never logged.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Protocol

from brokerguard.clock import SYSTEM_CLOCK, Clock
from brokerguard.config import AlertConfig, resolve_secret
from brokerguard.logs import log_context
from brokerguard.resilience.backoff import BackoffPolicy
from brokerguard.risk.exits import (
    CapRestored,
    CapViolationDetected,
    EnforcementCrashed,
    EnforcementEvent,
    EnforcementUnverified,
    OrdersUnresolved,
    PositionsImplausible,
    SymbolsRevalued,
    SymbolsUnvaluable,
    TradingHalted,
    TradingResumed,
)

__all__ = [
    "Alert",
    "AlertLevel",
    "AlertRouter",
    "AlertSink",
    "AppriseAlertSink",
    "LogAlertSink",
    "WebhookAlertSink",
    "alert_for",
    "sinks_from_config",
]

log = logging.getLogger("brokerguard.alerts")


class AlertLevel(IntEnum):
    """How loud an alert is."""

    INFO = logging.INFO
    WARNING = logging.WARNING
    CRITICAL = logging.CRITICAL


@dataclass(frozen=True, slots=True)
class Alert:
    """Something an operator must know, with what happens next."""

    level: AlertLevel
    kind: str
    account_id: str
    title: str
    message: str
    at: float


class AlertSink(Protocol):
    """Where alerts go."""

    min_level: AlertLevel

    def send(self, alert: Alert) -> None:
        """Deliver `alert` (raise on failure; the router logs it)."""
        ...


def alert_for(event: EnforcementEvent) -> Alert | None:  # noqa: C901, PLR0911 (a case per kind)
    """Return the alert an event deserves, or None if it is routine."""
    a, at = event.account_id, event.at
    match event:
        case TradingHalted(reason=reason):
            return Alert(
                AlertLevel.CRITICAL, "trading_halted", a, f"TRADING HALTED on {a}",
                f"{reason}. New entries are blocked until an operator resumes the account.", at,
            )  # fmt: skip
        case SymbolsUnvaluable(symbols=symbols):
            return Alert(
                AlertLevel.CRITICAL, "symbols_unvaluable", a, f"no valid price on {a}",
                f"{', '.join(symbols)}: no usable price; paused (no entries, no management) "
                "until a valid price arrives. No fallback price is used.", at,
            )  # fmt: skip
        case OrdersUnresolved(client_order_ids=ids, symbols=symbols):
            return Alert(
                AlertLevel.CRITICAL, "orders_unresolved", a, f"order outcome UNKNOWN on {a}",
                f"{', '.join(ids)} ({', '.join(symbols) or 'journaled'}): the broker may have "
                "placed them. Not resent; their symbols are not traded again until each is found "
                "or proven absent after its deadline.", at,
            )  # fmt: skip
        case PositionsImplausible(missing=missing):
            return Alert(
                AlertLevel.CRITICAL, "positions_implausible", a, f"implausible positions on {a}",
                f"a successful read lost {', '.join(missing)} with no sell to explain it; not "
                "believed: new entries refused until agreeing reads confirm it or the "
                "positions come back.", at,
            )  # fmt: skip
        case EnforcementCrashed(error=error):
            return Alert(
                AlertLevel.CRITICAL, "enforcement_crashed", a, f"enforcement crashed on {a}",
                f"{error}. Other accounts carry on; this one is retried next pass.", at,
            )  # fmt: skip
        case EnforcementUnverified(reason=reason):
            return Alert(
                AlertLevel.WARNING, "enforcement_unverified", a, f"positions unknown on {a}",
                f"{reason}. No order sent; entries blocked until positions are known.", at,
            )  # fmt: skip
        case CapViolationDetected(position_count=count, max_positions=cap):
            return Alert(
                AlertLevel.WARNING, "cap_violation", a, f"{a} over its position cap",
                f"{count} positions for a cap of {cap}; liquidating the smallest.", at,
            )  # fmt: skip
        case CapRestored(position_count=count):
            return Alert(
                AlertLevel.INFO, "cap_restored", a, f"{a} back within its cap",
                f"{count} positions.", at,
            )  # fmt: skip
        case TradingResumed(operator=operator, reason=reason):
            return Alert(
                AlertLevel.WARNING, "trading_resumed", a, f"trading RESUMED on {a}",
                f"by {operator}: {reason}. New entries are allowed again.", at,
            )  # fmt: skip
        case SymbolsRevalued(symbols=symbols):
            return Alert(
                AlertLevel.INFO, "symbols_revalued", a, f"prices back on {a}",
                f"{', '.join(symbols)} valued again and unpaused.", at,
            )  # fmt: skip
    return _breaker_alert(event)


def _breaker_alert(event: EnforcementEvent) -> Alert | None:
    new_state = getattr(event, "new_state", None)
    scope = getattr(event, "scope", "")
    broker = event.account_id
    if new_state == "open":
        return Alert(
            AlertLevel.WARNING, "circuit_open", broker, f"broker {broker} OFFLINE ({scope})",
            f"the {scope} circuit opened: calls are refused without reaching the broker and "
            "trading is blocked until probes succeed.", event.at,
        )  # fmt: skip
    if new_state == "closed":
        return Alert(
            AlertLevel.INFO, "circuit_closed", broker, f"broker {broker} back ({scope})",
            f"the {scope} circuit closed: calls flow again.", event.at,
        )  # fmt: skip
    return None


class LogAlertSink:
    """Alerts as log records on the ``brokerguard.alerts`` logger."""

    def __init__(self, min_level: AlertLevel = AlertLevel.WARNING) -> None:
        self.min_level = min_level

    def send(self, alert: Alert) -> None:
        """Log the alert at its level."""
        log.log(
            int(alert.level),
            "ALERT %s: %s",
            alert.title,
            alert.message,
            extra=log_context(reason=alert.kind.upper()),  # the subject may be a broker's name
        )


class WebhookAlertSink:
    """POST alerts as JSON to a URL held in an environment variable (read at send time).

    A failed delivery is retried with backoff, ``attempts`` times at most (its own bounded
    retry: the router never retries), on the sink's clock.
    """

    def __init__(
        self,
        url_env: str,
        min_level: AlertLevel = AlertLevel.WARNING,
        *,
        timeout: float = 5.0,
        attempts: int = 3,
        backoff: BackoffPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.url_env = url_env
        self.min_level = min_level
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff or BackoffPolicy(base=0.5, max_delay=4.0, jitter=0)
        self.clock = clock if clock is not None else SYSTEM_CLOCK

    def send(self, alert: Alert) -> None:
        """Deliver one alert, retrying a failed POST; raise once the attempts are spent."""
        for attempt in range(1, self.attempts + 1):
            try:
                self._post(alert)
            except RuntimeError:
                if attempt == self.attempts:
                    raise
                self.clock.sleep(self.backoff.delay(attempt))
            else:
                return

    def _post(self, alert: Alert) -> None:
        url = resolve_secret(self.url_env)
        if url is None:
            raise RuntimeError(f"webhook URL variable {self.url_env} is not set")
        if not url.startswith(("https://", "http://")):
            raise RuntimeError(f"webhook URL in {self.url_env} is not http(s)")
        body = json.dumps({**asdict(alert), "level": alert.level.name.lower()}).encode()
        request = urllib.request.Request(  # noqa: S310 (scheme checked just above)
            url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError as exc:
            # The URL carries a token: say which variable, never the URL itself.
            raise RuntimeError(
                f"webhook from {self.url_env} failed: {type(exc).__name__}"
            ) from None
        if status >= 300:  # noqa: PLR2004 (HTTP success range)
            raise RuntimeError(f"webhook from {self.url_env} answered HTTP {status}")


class AppriseAlertSink:
    """Send alerts through apprise URLs (Slack, Telegram, e-mail ...) held in an env variable.

    The variable holds one or more apprise URLs separated by spaces or commas; they carry
    tokens, so they are read at send time and never logged. Needs ``brokerguard[apprise]``.
    """

    def __init__(self, urls_env: str, min_level: AlertLevel = AlertLevel.WARNING) -> None:
        self.urls_env = urls_env
        self.min_level = min_level

    def send(self, alert: Alert) -> None:
        """Notify every URL; raise if none is set or apprise reports a failure."""
        import apprise  # noqa: PLC0415 (optional dependency)

        urls = [u for u in re.split(r"[\s,]+", resolve_secret(self.urls_env) or "") if u]
        if not urls:
            raise RuntimeError(f"apprise URL variable {self.urls_env} is not set")
        notifier = apprise.Apprise()
        for url in urls:
            if not notifier.add(url):
                raise RuntimeError(f"an apprise URL in {self.urls_env} is not understood")
        kind = {
            AlertLevel.INFO: apprise.NotifyType.INFO,
            AlertLevel.WARNING: apprise.NotifyType.WARNING,
            AlertLevel.CRITICAL: apprise.NotifyType.FAILURE,
        }[alert.level]
        if not notifier.notify(title=alert.title, body=alert.message, notify_type=kind):
            raise RuntimeError(f"apprise could not deliver to the URLs in {self.urls_env}")


_STOP = object()

RECENT_ALERTS = 100
"""How many delivered alerts :attr:`AlertRouter.delivered` keeps (the newest): the sinks and
the log have them all; this is a bounded look at the last ones."""


class AlertRouter:
    """Turn events into alerts and deliver them to every sink whose level they reach.

    Delivery happens on a background thread (unless ``background=False``): a slow or dead sink
    delays only other alerts, never enforcement. :meth:`flush` waits for the queue to drain.
    """

    def __init__(
        self,
        sinks: Sequence[AlertSink],
        *,
        clock: Clock | None = None,
        repeat_after: float = 60.0,
        background: bool = True,
    ) -> None:
        self.sinks = list(sinks)
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self.repeat_after = repeat_after
        # (kind, account, message) -> when last routed; entries older than repeat_after are
        # swept, so it holds at most the distinct alerts of about two repeat_after windows.
        self._last: dict[tuple[str, str, str], float] = {}
        self._sweep_at = self.clock.monotonic() + repeat_after
        self._lock = threading.Lock()
        self.delivered: list[Alert] = []
        """Alerts handed to at least one sink (the newest :data:`RECENT_ALERTS`)."""
        self._queue: queue.Queue[object] | None = None
        self._worker: threading.Thread | None = None
        if background:
            self._queue = queue.Queue(maxsize=10_000)
            self._worker = threading.Thread(
                target=self._drain, name="brokerguard-alerts", daemon=True
            )
            self._worker.start()

    def __call__(self, event: EnforcementEvent) -> None:
        """Listener entry point: route the alert of `event`, if it has one."""
        alert = alert_for(event)
        if alert is None or self._repeated(alert):
            return
        if self._queue is None:
            self._deliver(alert)
            return
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            log.error("alert queue full: dropping %r (sinks are too slow or down)", alert.title)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued alert was handled; return False on timeout."""
        if self._queue is None:
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued, then stop the delivery thread."""
        if self._queue is not None and self._worker is not None:
            self._queue.put(_STOP)
            self._worker.join(timeout)

    def _drain(self) -> None:
        assert self._queue is not None  # noqa: S101 (only started with a queue)
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, threading.Event):
                item.set()
            elif isinstance(item, Alert):
                self._deliver(item)

    def _deliver(self, alert: Alert) -> None:
        delivered = False
        for sink in self.sinks:
            if alert.level < sink.min_level:
                continue
            try:
                sink.send(alert)
                delivered = True
            except Exception as exc:  # noqa: BLE001 (a broken sink must not stop enforcement)
                log.error("alert sink %s failed for %r: %s", type(sink).__name__, alert.title, exc)
        if delivered:
            with self._lock:
                self.delivered.append(alert)
                del self.delivered[:-RECENT_ALERTS]

    def _repeated(self, alert: Alert) -> bool:
        key = (alert.kind, alert.account_id, alert.message)
        now = self.clock.monotonic()
        with self._lock:
            if now >= self._sweep_at:  # messages carry ids: without this, one key per order
                self._sweep_at = now + self.repeat_after
                for old in [k for k, at in self._last.items() if now - at >= self.repeat_after]:
                    del self._last[old]
            last = self._last.get(key)
            if last is not None and now - last < self.repeat_after:
                return True
            self._last[key] = now
        return False


def sinks_from_config(alerts: Sequence[AlertConfig]) -> list[AlertSink]:
    """Build the sinks a configuration names."""
    sinks: list[AlertSink] = []
    for alert in alerts:
        level = AlertLevel[alert.min_level.upper()]
        if alert.kind == "log":
            sinks.append(LogAlertSink(level))
        elif alert.kind == "webhook":
            sinks.append(WebhookAlertSink(str(alert.url_env), level))
        else:
            sinks.append(AppriseAlertSink(str(alert.url_env), level))
    return sinks
