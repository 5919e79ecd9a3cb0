"""brokerguard for freqtrade: ask the guard before every entry, and supervise the bot.

Two halves, neither of which imports freqtrade at module level (this module imports without
freqtrade installed; the mixin imports freqtrade's ``Trade`` only when it reads its database):

**In the bot** — :class:`BrokerguardMixin`, put before ``IStrategy`` in a strategy's bases::

    from freqtrade.strategy import IStrategy
    from brokerguard.integrations.freqtrade import BrokerguardMixin


    class MyStrategy(BrokerguardMixin, IStrategy): ...

and a ``brokerguard`` section in the bot's config (``url``, ``account_id``, ``token_env``,
``timeout_s``; see :class:`GuardSettings`). Then:

- ``confirm_trade_entry`` reserves the entry with the guard service (``POST
  /v1/accounts/{id}/entries``) and answers False on a refusal **and on any exception**, a
  timeout included. freqtrade calls this hook through a wrapper whose default is True (an
  exception inside it lets the entry through); this hook never raises, so that default never
  applies: the bot fails closed. Without asking, it also refuses a pair whose previous entry
  has no known outcome (the submit timed out: the order may still fill) and a pair the
  exchange holds although freqtrade has no trade in it (buying again would double a position
  freqtrade does not know).
- ``order_filled`` reports the entry's order id (``.../placed``); an entry order freqtrade
  cancelled with nothing filled gives its reservation back (``DELETE``), noticed in
  ``bot_loop_start``. A reservation whose order never reached freqtrade's database (the submit
  timed out) is left to the guard, which resolves it at the broker and never assumes it absent.
- ``bot_loop_start`` refreshes the account's state (``GET /v1/accounts/{id}``):
  ``adjust_trade_position`` refuses adds unless the account is ACTIVE (reductions pass), and
  ``custom_exit`` exits the pairs the guard wants sold while the account is over its cap.

A strategy that overrides one of these hooks calls ``super()`` and honours its answer.

**Beside the bot** — :class:`FreqtradeSupervisor`, the client of freqtrade's own REST API
(``/api/v1``, HTTP basic auth) the guard service uses: a halt becomes a lock on pair ``"*"``
(kept in freqtrade's database, so it survives a restart of the bot), a resume deletes it, and
an excess is sold first through ``forceexit`` for the trades freqtrade knows.

Both talk HTTP through a :data:`Transport` (default: :func:`urllib_transport`, standard
library only); a test passes an in-memory one. Errors::

    BrokerGuardError
    ├── GuardAPIError          the guard's /v1 API did not answer as its contract says
    │                          (url, status: None when nothing answered, body)
    ├── FreqtradeAPIError      freqtrade's REST API did not (url, status, body)
    └── ConfigurationError     the brokerguard section or its variables are invalid

A refusal is not an error: it is a :class:`~brokerguard.risk.gate.Decision`.
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
import os
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final
from urllib.parse import quote, urlencode

from brokerguard.errors import BrokerGuardError, ConfigurationError
from brokerguard.risk.gate import Decision, TradingState

__all__ = [
    "DEFAULT_TOKEN_ENV",
    "EXIT_TAG",
    "LOCK_REASON_PREFIX",
    "UNTIL_RESUMED",
    "AccountState",
    "BrokerguardMixin",
    "EntryReservation",
    "FreqtradeAPIError",
    "FreqtradeLock",
    "FreqtradeSupervisor",
    "FreqtradeTrade",
    "GateAnswer",
    "GuardAPIError",
    "GuardClient",
    "GuardSettings",
    "Transport",
    "urllib_transport",
]

log = logging.getLogger("brokerguard.integrations.freqtrade")

DEFAULT_TOKEN_ENV: Final = "BROKERGUARD_BOT_TOKEN"  # noqa: S105 (a variable's name)
"""The variable holding the bot token of the guard's ``/v1`` API, unless ``token_env`` names
another."""
URL_ENV: Final = "BROKERGUARD_URL"
"""The guard service's base URL when the ``brokerguard`` section gives no ``url``."""
ACCOUNT_ENV: Final = "BROKERGUARD_ACCOUNT_ID"
"""The guarded account when the ``brokerguard`` section gives no ``account_id``."""
DEFAULT_GUARD_TIMEOUT_S: Final = 2.0
"""Seconds a call to the guard may take; an entry whose reservation takes longer is refused."""
EXIT_TAG: Final = "brokerguard_over_cap"
"""The exit reason ``custom_exit`` gives a trade the guard wants sold."""
LOCK_REASON_PREFIX: Final = "brokerguard: "
"""How the reason of every freqtrade lock brokerguard sets begins (``locks()`` finds them)."""
UNTIL_RESUMED: Final = datetime(2100, 1, 1, tzinfo=UTC)
"""The end of a halt's lock: it lasts until brokerguard deletes it on resume (freqtrade needs an
end time; one fixed value also lets freqtrade merge a repeated lock into the existing one)."""
FREQTRADE_USERNAME_ENV: Final = "FREQTRADE__API_SERVER__USERNAME"
"""freqtrade's own variable for its API user: the supervisor reads the same one by default."""
FREQTRADE_PASSWORD_ENV: Final = "FREQTRADE__API_SERVER__PASSWORD"  # noqa: S105 (a variable's name)
"""freqtrade's own variable for its API password."""
DEFAULT_FREQTRADE_TIMEOUT_S: Final = 10.0
"""Seconds a call to freqtrade's API may take (a forceexit waits for the exchange)."""

_SETTINGS_KEYS: Final = frozenset({"url", "account_id", "token_env", "timeout_s"})
_CANCELLED: Final = frozenset({"canceled", "cancelled", "expired", "rejected"})

Transport = Callable[[str, str, Mapping[str, str], bytes | None, float], tuple[int, bytes]]
"""``(method, url, headers, body, timeout_s) -> (status, body)``.

Any HTTP status is an answer; a transport raises only when nothing answered (refused, reset,
timed out). :func:`urllib_transport` is the default.
"""


class GuardAPIError(BrokerGuardError):
    """The guard's ``/v1`` API did not answer as its contract says: treat it as a refusal.

    Attributes:
        url: the request's URL.
        status: the HTTP status, or None when nothing answered (refused, timeout).
        body: what it answered (empty when nothing did).
    """

    def __init__(self, message: str, *, url: str, status: int | None, body: str = "") -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.body = body


class FreqtradeAPIError(BrokerGuardError):
    """freqtrade's REST API did not do what was asked.

    Attributes:
        url: the request's URL.
        status: the HTTP status (freqtrade answers 502 when its RPC refuses, 401 on bad
            credentials), or None when nothing answered.
        body: what it answered.
    """

    def __init__(self, message: str, *, url: str, status: int | None, body: str = "") -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.body = body


def urllib_transport(
    method: str, url: str, headers: Mapping[str, str], body: bytes | None, timeout_s: float
) -> tuple[int, bytes]:
    """Send one request with the standard library; any HTTP status is an answer.

    Proxies from the environment are ignored: a pre-trade check goes straight to its peer.
    """
    request = urllib.request.Request(url, data=body, headers=dict(headers), method=method)  # noqa: S310 (the URL comes from the operator's config)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout_s) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:  # a status outside 2xx: still an answer
        with exc:
            return int(exc.code), bytes(exc.read())


def _call(
    transport: Transport,
    error: type[GuardAPIError | FreqtradeAPIError],
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    payload: object,
    timeout_s: float,
) -> tuple[int, Any]:
    """Send `payload` as JSON; (status, decoded JSON body). The one seam where errors become ours.

    Nothing answering (any exception of the transport) and a body that is not JSON both raise
    `error`; the caller judges the status.
    """
    body = None if payload is None else json.dumps(payload).encode()
    sent = {"Accept": "application/json", **headers}
    if body is not None:
        sent["Content-Type"] = "application/json"
    try:
        status, raw = transport(method, url, sent, body, timeout_s)
    except Exception as exc:  # whatever the transport raised, nothing answered
        raise error(
            f"{method} {url}: no answer ({type(exc).__name__}: {exc})", url=url, status=None
        ) from exc
    text = raw.decode("utf-8", errors="replace")
    try:
        decoded = json.loads(text) if text.strip() else None
    except ValueError as exc:
        raise error(
            f"{method} {url}: HTTP {status} with a body that is not JSON",
            url=url,
            status=status,
            body=text[:500],
        ) from exc
    return status, decoded


# ---------------------------------------------------------------------------------- the guard


@dataclass(frozen=True, slots=True)
class EntryReservation:
    """The guard's answer to an entry: a reservation, or a refusal (``reservation_id`` None)."""

    decision: Decision
    reservation_id: str | None = None
    expires_at: float | None = None
    """Epoch seconds after which the guard resolves an unreported reservation at the broker."""
    client_order_id: str | None = None

    @property
    def allowed(self) -> bool:
        """Whether the entry may be sent."""
        return self.decision.allowed and self.reservation_id is not None


@dataclass(frozen=True, slots=True)
class GateAnswer:
    """The gate's decision for a symbol (nothing reserved) and the account's trading state."""

    decision: Decision
    trading_state: TradingState


@dataclass(frozen=True, slots=True)
class AccountState:
    """What the guard knows of an account (``GET /v1/accounts/{id}``)."""

    account_id: str
    trading_state: TradingState
    max_positions: int
    positions: int | None
    """Positions held now; None when the guard does not know (unknown is not zero)."""
    symbols_held: tuple[str, ...] = ()
    exit_symbols: tuple[str, ...] = ()
    """What the guard wants sold now, smallest first, while the account is over its cap."""

    @property
    def over_cap(self) -> bool:
        """Whether the account holds more positions than its cap (False when unknown)."""
        return self.positions is not None and self.positions > self.max_positions


class GuardClient:
    """A client of the guard service's ``/v1`` pre-trade API, for one bot token.

    Args:
        base_url: the service's root (``http://127.0.0.1:8080``).
        token: the bot token, sent as ``Authorization: Bearer``.
        timeout_s: seconds each call may take.
        transport: how requests travel (default :func:`urllib_transport`).

    Every method raises :class:`GuardAPIError` when the service does not answer as its
    contract says; a refused entry is an answer (:attr:`EntryReservation.allowed` False).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None,
        timeout_s: float = DEFAULT_GUARD_TIMEOUT_S,
        transport: Transport = urllib_transport,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"the guard's url must be http(s)://..., not {base_url!r}")
        if not timeout_s > 0:
            raise ConfigurationError(f"timeout_s must be positive, not {timeout_s!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._token = token
        self._transport = transport

    def __repr__(self) -> str:
        return f"GuardClient({self.base_url!r}, timeout_s={self.timeout_s})"  # never the token

    def reserve_entry(
        self,
        account_id: str,
        symbol: str,
        *,
        side: str = "buy",
        client_order_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> EntryReservation:
        """Reserve an entry (``201``) or learn why not (``409``).

        `client_order_id` defaults to a fresh id; `idempotency_key` to the client order id, so
        a resent request can never reserve twice.
        """
        client_order_id = client_order_id or _new_client_order_id()
        headers = {"Idempotency-Key": idempotency_key or client_order_id}
        payload = {"symbol": symbol, "side": side, "client_order_id": client_order_id}
        url = self._url(account_id, "entries")
        status, body = self._send("POST", url, payload, headers)
        if status == 409:  # noqa: PLR2004 (HTTP Conflict: the documented refusal)
            return EntryReservation(decision=_decision(body, url, status))
        if status != 201:  # noqa: PLR2004 (HTTP Created)
            raise _unexpected(url, status, body)
        decision = _decision(body, url, status)
        reservation_id = _field(body, "reservation_id", str, url, status)
        expires_at = _field(body, "expires_at", (int, float), url, status)
        answered_id = body.get("client_order_id", client_order_id)
        return EntryReservation(
            decision=decision,
            reservation_id=reservation_id,
            expires_at=float(expires_at),
            client_order_id=str(answered_id),
        )

    def report_placed(self, account_id: str, reservation_id: str, order_id: str) -> None:
        """Tell the guard the reserved entry was placed as `order_id`."""
        url = self._url(account_id, "entries", reservation_id, "placed")
        status, body = self._send("POST", url, {"order_id": order_id})
        if status != 200:  # noqa: PLR2004
            raise _unexpected(url, status, body)

    def release(self, account_id: str, reservation_id: str) -> None:
        """Give a reservation back: its order was definitely not placed."""
        url = self._url(account_id, "entries", reservation_id)
        status, body = self._send("DELETE", url, None)
        if status != 200:  # noqa: PLR2004
            raise _unexpected(url, status, body)

    def gate(self, account_id: str, symbol: str) -> GateAnswer:
        """Ask the gate about an entry in `symbol` without reserving anything."""
        url = self._url(account_id, "gate") + "?" + urlencode({"symbol": symbol})
        status, body = self._send("GET", url, None)
        if status != 200:  # noqa: PLR2004
            raise _unexpected(url, status, body)
        state = _trading_state(_field(body, "trading_state", str, url, status), url, status)
        return GateAnswer(decision=_decision(body, url, status), trading_state=state)

    def account(self, account_id: str) -> AccountState:
        """Read the account's trading state, cap, positions and what it wants sold."""
        url = self._url(account_id)
        status, body = self._send("GET", url, None)
        if status != 200:  # noqa: PLR2004
            raise _unexpected(url, status, body)
        positions = body.get("positions") if isinstance(body, dict) else None
        if positions is not None and (not isinstance(positions, int) or positions < 0):
            raise GuardAPIError(f"{url}: positions is {positions!r}", url=url, status=status)
        return AccountState(
            account_id=_field(body, "account_id", str, url, status),
            trading_state=_trading_state(
                _field(body, "trading_state", str, url, status), url, status
            ),
            max_positions=_field(body, "max_positions", int, url, status),
            positions=positions,
            symbols_held=_strings(body.get("symbols_held", []), "symbols_held", url, status),
            exit_symbols=_strings(body.get("exit_symbols", []), "exit_symbols", url, status),
        )

    def _url(self, account_id: str, *parts: str) -> str:
        path = "/".join(quote(p, safe="") for p in (account_id, *parts))
        return f"{self.base_url}/v1/accounts/{path}"

    def _send(
        self, method: str, url: str, payload: object, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Any]:
        sent = dict(headers or {})
        if self._token is not None:
            sent["Authorization"] = f"Bearer {self._token}"
        return _call(
            self._transport,
            GuardAPIError,
            method=method,
            url=url,
            headers=sent,
            payload=payload,
            timeout_s=self.timeout_s,
        )


def _new_client_order_id() -> str:
    """A fresh client order id for a reservation (18 characters: Kraken's free-text limit)."""
    return "ft" + uuid.uuid4().hex[:16]


def _unexpected(url: str, status: int, body: object) -> GuardAPIError:
    text = json.dumps(body)[:500]
    return GuardAPIError(
        f"{url}: unexpected HTTP {status}: {text}", url=url, status=status, body=text
    )


def _field(body: object, name: str, kind: type | tuple[type, ...], url: str, status: int) -> Any:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise GuardAPIError(f"{url}: {name} is {value!r}", url=url, status=status)
    return value


def _strings(value: object, name: str, url: str, status: int) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise GuardAPIError(f"{url}: {name} is {value!r}", url=url, status=status)
    return tuple(value)


def _trading_state(value: str, url: str, status: int) -> TradingState:
    try:
        return TradingState(value)
    except ValueError:
        raise GuardAPIError(f"{url}: trading_state is {value!r}", url=url, status=status) from None


def _decision(body: object, url: str, status: int) -> Decision:
    """The ``decision`` object of an answer, as a :class:`Decision` (its code kept first)."""
    raw = body.get("decision") if isinstance(body, dict) else None
    if not isinstance(raw, dict):
        raise GuardAPIError(f"{url}: no decision in the answer", url=url, status=status)
    allowed = raw.get("allowed")
    code = raw.get("code")
    reason = raw.get("reason")
    details = raw.get("details", {})
    if not isinstance(allowed, bool) or not isinstance(code, str) or not code:
        raise GuardAPIError(f"{url}: malformed decision {raw!r}", url=url, status=status)
    if not isinstance(details, dict):
        raise GuardAPIError(f"{url}: malformed decision {raw!r}", url=url, status=status)
    if isinstance(reason, str) and reason.startswith(code):
        text = reason
    elif isinstance(reason, str) and reason:
        text = f"{code}: {reason}"
    else:
        text = code
    if allowed and status == 409:  # noqa: PLR2004 (a refusal that says it allows is not data)
        raise GuardAPIError(f"{url}: a 409 whose decision allows", url=url, status=status)
    return Decision(allowed=allowed, reason=text, details=details)


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardSettings:
    """Where the guard is and who the bot is: the ``brokerguard`` section of freqtrade's config.

    Keys (unknown keys are refused)::

        "brokerguard": {
            "url": "http://127.0.0.1:8080",       # else $BROKERGUARD_URL
            "account_id": "kraken-main",          # else $BROKERGUARD_ACCOUNT_ID
            "token_env": "BROKERGUARD_BOT_TOKEN", # the variable holding the bot token (default)
            "timeout_s": 2.0                      # per call (default 2 s)
        }

    The token itself never sits in the config file.
    """

    url: str
    account_id: str
    token: str = field(repr=False)
    timeout_s: float = DEFAULT_GUARD_TIMEOUT_S

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> GuardSettings:
        """Read the ``brokerguard`` section of `config`, with `environ` (default os.environ)."""
        env = os.environ if environ is None else environ
        section = config.get("brokerguard") or {}
        if not isinstance(section, Mapping):
            raise ConfigurationError("the brokerguard section of the config must be an object")
        unknown = set(section) - _SETTINGS_KEYS
        if unknown:
            raise ConfigurationError(
                f"unknown keys in the brokerguard section: {sorted(unknown)} "
                f"(known: {sorted(_SETTINGS_KEYS)})"
            )
        url = section.get("url") or env.get(URL_ENV)
        account_id = section.get("account_id") or env.get(ACCOUNT_ENV)
        token_env = section.get("token_env") or DEFAULT_TOKEN_ENV
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"brokerguard.url (or ${URL_ENV}) must be the guard's http(s):// URL, not {url!r}"
            )
        if not isinstance(account_id, str) or not account_id:
            raise ConfigurationError(f"brokerguard.account_id (or ${ACCOUNT_ENV}) is required")
        token = env.get(str(token_env))
        if not token:
            raise ConfigurationError(f"the bot token variable ${token_env} is not set")
        timeout_s = section.get("timeout_s", DEFAULT_GUARD_TIMEOUT_S)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
            raise ConfigurationError(f"brokerguard.timeout_s must be positive, not {timeout_s!r}")
        return cls(url=url, account_id=account_id, token=token, timeout_s=float(timeout_s))

    def client(self, transport: Transport = urllib_transport) -> GuardClient:
        """A :class:`GuardClient` for these settings."""
        return GuardClient(
            self.url, token=self.token, timeout_s=self.timeout_s, transport=transport
        )


# ---------------------------------------------------------------------------------- the mixin


@dataclass
class _Pending:
    """A reservation the mixin has not yet reported."""

    reservation_id: str
    pair: str
    client_order_id: str
    reserved_at: datetime
    expires_at: float
    trade_id: int | None = None  # the freqtrade trade its order opened, once seen


def _side(freqtrade_side: str) -> str:
    """Map freqtrade's entry side (``long``/``short``) to the order's side."""
    return {"long": "buy", "short": "sell"}.get(freqtrade_side, freqtrade_side)


def _utc(moment: datetime) -> datetime:
    """Make a naive UTC datetime (what freqtrade's database keeps) aware."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _is_add(answer: object) -> bool:
    """Whether an ``adjust_trade_position`` answer adds to the position (a positive stake)."""
    stake = answer[0] if isinstance(answer, tuple) else answer
    return isinstance(stake, int | float) and stake > 0


class BrokerguardMixin:
    """A freqtrade strategy mixin that asks the guard before every entry (see the module doc).

    Use it first in the bases: ``class MyStrategy(BrokerguardMixin, IStrategy)``. It reads the
    ``brokerguard`` section of the bot's config (:class:`GuardSettings`) the first time it
    needs the guard; :attr:`brokerguard_client` may be set beforehand instead (a test does).

    Attributes:
        brokerguard_client: the client in use (built from the config when first needed).
        brokerguard_account: the account's state as of the last ``bot_loop_start``; None when
            it could not be read (then adds are refused and nothing is exited on its word).
    """

    config: Any  # freqtrade's IStrategy sets it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.brokerguard_client: GuardClient | None = None
        self.brokerguard_account: AccountState | None = None
        self._bg_settings: GuardSettings | None = None
        self._bg_pending: dict[str, _Pending] = {}
        self._bg_settled: set[int] = set()  # trades whose reservation was reported
        self._bg_unanswered: dict[str, str] = {}  # pair -> client order id of a lost request
        self._bg_lock = threading.RLock()

    # ------------------------------------------------------------------ settings and client

    @property
    def brokerguard_account_id(self) -> str:
        """The guarded account's id (from the ``brokerguard`` section or its variable)."""
        return self._brokerguard_settings().account_id

    def _brokerguard_settings(self) -> GuardSettings:
        if self._bg_settings is None:
            self._bg_settings = GuardSettings.from_config(getattr(self, "config", None) or {})
        return self._bg_settings

    def _brokerguard(self) -> GuardClient:
        if self.brokerguard_client is None:
            self.brokerguard_client = self._brokerguard_settings().client()
        return self.brokerguard_client

    def brokerguard_trades(self, pair: str) -> Sequence[Any]:
        """Return freqtrade's trades in `pair`, open and closed, from its database.

        The one place the mixin reads freqtrade's state (a test may override it).
        """
        # Imported here: the module imports without freqtrade installed.
        persistence = importlib.import_module("freqtrade.persistence")
        return list(persistence.Trade.get_trades_proxy(pair=pair))

    def brokerguard_pending(self) -> dict[str, str]:
        """The reservations not reported yet: reservation id -> pair."""
        with self._bg_lock:
            return {r: p.pair for r, p in self._bg_pending.items()}

    # ------------------------------------------------------------------ freqtrade's hooks

    def bot_start(self, **kwargs: Any) -> None:
        """Check the ``brokerguard`` settings once, so a bad config is loud at start."""
        super().bot_start(**kwargs)  # type: ignore[misc]  # IStrategy, after the mixin
        try:
            self._brokerguard()
        except ConfigurationError as exc:
            log.error("brokerguard is not configured (%s): every entry will be refused", exc)

    def bot_loop_start(self, current_time: datetime, **kwargs: Any) -> None:
        """Refresh the account's state, then settle the reservations freqtrade's orders decided."""
        super().bot_loop_start(current_time=current_time, **kwargs)  # type: ignore[misc]
        self._brokerguard_refresh()
        with self._bg_lock:
            pending = list(self._bg_pending.values())
        for pair in sorted({p.pair for p in pending}):
            try:
                self._brokerguard_settle(pair, current_time)
            except Exception as exc:  # noqa: BLE001 (a bad read retries next loop; nothing is lost)
                log.warning(
                    "could not settle brokerguard reservations for %s (%s); retrying next loop",
                    pair,
                    exc,
                )

    def confirm_trade_entry(  # noqa: PLR0917 (freqtrade's signature)
        self,
        pair: str,
        order_type: str,
        amount: float,
        rate: float,
        time_in_force: str,
        current_time: datetime,
        entry_tag: str | None,
        side: str,
        **kwargs: Any,
    ) -> bool:
        """Reserve the entry with the guard: False on a refusal and on any exception.

        Refused without asking: a pair whose previous entry's outcome is still unknown (its
        order never reached freqtrade's database: the submit may yet fill), and a pair the
        exchange already holds although freqtrade has no trade in it (buying again would
        double a position freqtrade does not know). A reservation request that got no answer
        is resent with the same client order id, so the guard answers it once.
        """
        try:
            if not super().confirm_trade_entry(  # type: ignore[misc]
                pair=pair,
                order_type=order_type,
                amount=amount,
                rate=rate,
                time_in_force=time_in_force,
                current_time=current_time,
                entry_tag=entry_tag,
                side=side,
                **kwargs,
            ):
                return False
            account_id = self.brokerguard_account_id
            problem = self._brokerguard_entry_problem(pair)
            if problem is not None:
                log.warning("entry in %s on account %s refused: %s", pair, account_id, problem)
                return False
            with self._bg_lock:
                client_order_id = self._bg_unanswered.get(pair) or _new_client_order_id()
                self._bg_unanswered[pair] = client_order_id
            answer = self._brokerguard().reserve_entry(
                account_id, pair, side=_side(side), client_order_id=client_order_id
            )
            with self._bg_lock:
                self._bg_unanswered.pop(pair, None)
        except Exception as exc:  # noqa: BLE001 (fail closed: whatever went wrong, no entry)
            log.warning("entry in %s refused: the guard could not be asked (%s)", pair, exc)
            return False
        if not answer.allowed or answer.reservation_id is None:
            log.info(
                "entry in %s on account %s refused by brokerguard: %s",
                pair,
                account_id,
                answer.decision.reason,
            )
            return False
        with self._bg_lock:
            self._bg_pending[answer.reservation_id] = _Pending(
                reservation_id=answer.reservation_id,
                pair=pair,
                client_order_id=answer.client_order_id or client_order_id,
                reserved_at=_utc(current_time),
                expires_at=answer.expires_at or 0.0,
            )
        return True

    def _brokerguard_entry_problem(self, pair: str) -> str | None:
        """Why an entry in `pair` must not even be asked for, or None."""
        with self._bg_lock:
            unknown = [
                p for p in self._bg_pending.values() if p.pair == pair and p.trade_id is None
            ]
        if unknown:
            return (
                f"the outcome of the previous entry (reservation {unknown[0].reservation_id}) is "
                "unknown: its order may still fill; retrying after brokerguard resolves it"
            )
        account = self.brokerguard_account
        if account is not None and pair in account.symbols_held:
            return (
                "the exchange already holds it and freqtrade has no trade in it (an untracked "
                "position): not buying more"
            )
        return None

    def order_filled(
        self, pair: str, trade: Any, order: Any, current_time: datetime, **kwargs: Any
    ) -> None:
        """Report a filled entry order's id to the guard (its reservation is then placed)."""
        super().order_filled(  # type: ignore[misc]
            pair=pair, trade=trade, order=order, current_time=current_time, **kwargs
        )
        if getattr(order, "ft_order_side", None) != getattr(trade, "entry_side", None):
            return
        try:
            with self._bg_lock:
                pending = self._claim(pair, trade)
            if pending is not None:
                self._report_placed(pending, str(order.order_id))
        except Exception as exc:  # noqa: BLE001 (the guard resolves an unreported reservation)
            log.warning(
                "could not report order %s in %s to brokerguard (%s); it will resolve it",
                getattr(order, "order_id", "?"),
                pair,
                exc,
            )

    def adjust_trade_position(  # noqa: PLR0917 (freqtrade's signature)
        self,
        trade: Any,
        current_time: datetime,
        current_rate: float,
        current_profit: float,
        min_stake: float | None,
        max_stake: float,
        current_entry_rate: float,
        current_exit_rate: float,
        current_entry_profit: float,
        current_exit_profit: float,
        **kwargs: Any,
    ) -> float | tuple[float | None, str | None] | None:
        """Pass the strategy's answer, except an add while the account is not ACTIVE."""
        answer: float | tuple[float | None, str | None] | None = super().adjust_trade_position(  # type: ignore[misc]
            trade=trade,
            current_time=current_time,
            current_rate=current_rate,
            current_profit=current_profit,
            min_stake=min_stake,
            max_stake=max_stake,
            current_entry_rate=current_entry_rate,
            current_exit_rate=current_exit_rate,
            current_entry_profit=current_entry_profit,
            current_exit_profit=current_exit_profit,
            **kwargs,
        )
        if not _is_add(answer):
            return answer
        account = self.brokerguard_account
        if account is None or account.trading_state is not TradingState.ACTIVE:
            state = "unknown" if account is None else account.trading_state.value
            log.info("add to %s refused: the account is %s", trade.pair, state)
            return None
        return answer

    def custom_exit(
        self,
        pair: str,
        trade: Any,
        current_time: datetime,
        current_rate: float,
        current_profit: float,
        **kwargs: Any,
    ) -> str | bool | None:
        """Exit `pair` when the guard wants it sold (over the cap); else ask the strategy."""
        account = self.brokerguard_account
        if (
            account is not None
            and pair in account.exit_symbols
            and (account.trading_state is not TradingState.ACTIVE or account.over_cap)
        ):
            log.warning(
                "exiting %s: account %s holds %s positions, cap %d (brokerguard)",
                pair,
                account.account_id,
                account.positions,
                account.max_positions,
            )
            return EXIT_TAG
        answer: str | bool | None = super().custom_exit(  # type: ignore[misc]
            pair=pair,
            trade=trade,
            current_time=current_time,
            current_rate=current_rate,
            current_profit=current_profit,
            **kwargs,
        )
        return answer

    # ------------------------------------------------------------------ internals

    def _brokerguard_refresh(self) -> None:
        try:
            self.brokerguard_account = self._brokerguard().account(self.brokerguard_account_id)
        except Exception as exc:  # noqa: BLE001 (unknown state: adds refused, no exits on its word)
            self.brokerguard_account = None
            log.warning("brokerguard account state unknown (%s): adds are refused", exc)

    def _claim(self, pair: str, trade: Any) -> _Pending | None:
        """The reservation `trade` belongs to: its own, else the newest unclaimed one before it.

        (Lock held.) A trade opens right after the reservation freqtrade asked for it, so it
        belongs to the newest reservation in its pair made before it opened.
        """
        trade_id = getattr(trade, "id", None)
        if trade_id in self._bg_settled:
            return None  # a later entry of a trade already reported (a position adjustment)
        mine = [p for p in self._bg_pending.values() if p.pair == pair]
        own = next((p for p in mine if p.trade_id is not None and p.trade_id == trade_id), None)
        if own is not None:
            return own
        opened = getattr(trade, "open_date_utc", None) or getattr(trade, "open_date", None)
        free = [
            p
            for p in mine
            if p.trade_id is None and (opened is None or p.reserved_at <= _utc(opened))
        ]
        if not free:
            return None
        chosen = max(free, key=lambda p: p.reserved_at)
        chosen.trade_id = trade_id
        return chosen

    def _brokerguard_settle(self, pair: str, now: datetime) -> None:
        """Match `pair`'s reservations with freqtrade's trades; report what they show."""
        trades = {t.id: t for t in self.brokerguard_trades(pair)}
        with self._bg_lock:
            claimed = {p.trade_id for p in self._bg_pending.values() if p.pair == pair}
            for trade in sorted(
                (t for t in trades.values() if t.id not in claimed),
                key=lambda t: _utc(t.open_date),
            ):
                self._claim(pair, trade)
            pending = [p for p in self._bg_pending.values() if p.pair == pair]
        for item in pending:
            if item.trade_id is None:
                if now.timestamp() > item.expires_at:
                    # No order reached freqtrade's database (its submit failed or timed out):
                    # the guard looks the entry up at the broker; we stop waiting for it.
                    log.info(
                        "reservation %s in %s: no order recorded before it expired; "
                        "brokerguard resolves it at the broker",
                        item.reservation_id,
                        pair,
                    )
                    self._forget(item)
                continue
            trade = trades.get(item.trade_id)
            if trade is None:
                # freqtrade deletes a trade only when its entry was cancelled with nothing
                # filled (or an operator deleted it): nothing was bought.
                self._release(item, "its trade was removed after a cancel with nothing filled")
                continue
            entry = _first_entry_order(trade)
            if entry is None:
                continue
            filled = _number(getattr(entry, "filled", None))
            if filled > 0:
                self._report_placed(item, str(entry.order_id))
            elif str(getattr(entry, "status", "")).lower() in _CANCELLED:
                self._release(item, f"entry order {entry.order_id} ended with nothing filled")

    def _report_placed(self, item: _Pending, order_id: str) -> None:
        self._brokerguard().report_placed(
            self.brokerguard_account_id, item.reservation_id, order_id
        )
        self._forget(item)
        log.info(
            "reservation %s in %s placed as order %s", item.reservation_id, item.pair, order_id
        )

    def _release(self, item: _Pending, why: str) -> None:
        self._brokerguard().release(self.brokerguard_account_id, item.reservation_id)
        self._forget(item)
        log.info("reservation %s in %s released: %s", item.reservation_id, item.pair, why)

    def _forget(self, item: _Pending) -> None:
        with self._bg_lock:
            self._bg_pending.pop(item.reservation_id, None)
            if item.trade_id is not None:
                self._bg_settled.add(item.trade_id)


def _first_entry_order(trade: Any) -> Any:
    """The trade's first entry order (the one its reservation paid for), or None."""
    side = getattr(trade, "entry_side", None)
    entries = [o for o in getattr(trade, "orders", []) if getattr(o, "ft_order_side", None) == side]
    return entries[0] if entries else None


def _number(value: object) -> Decimal:
    try:
        return Decimal(str(value)) if value is not None else Decimal(0)
    except InvalidOperation:
        return Decimal(0)


# ---------------------------------------------------------------------------------- supervision


@dataclass(frozen=True, slots=True)
class FreqtradeLock:
    """A freqtrade pair lock (``GET /api/v1/locks``)."""

    lock_id: int
    pair: str
    side: str
    reason: str | None
    active: bool
    until_ms: int
    """The lock's end, epoch milliseconds."""

    @property
    def by_brokerguard(self) -> bool:
        """Whether brokerguard set it (its reason begins with :data:`LOCK_REASON_PREFIX`)."""
        return (self.reason or "").startswith(LOCK_REASON_PREFIX)


@dataclass(frozen=True, slots=True)
class FreqtradeTrade:
    """An open trade as freqtrade's ``GET /api/v1/status`` shows it."""

    trade_id: int
    pair: str
    amount: Decimal
    """Base units the trade holds (freqtrade's own bookkeeping)."""
    is_open: bool
    has_open_orders: bool


class FreqtradeSupervisor:
    """A client of a freqtrade bot's REST API (``api_server``), for the guard service.

    Args:
        base_url: the bot's API root (``http://127.0.0.1:8081``; ``/api/v1`` is added).
        username, password: the ``api_server`` credentials (HTTP basic auth).
        timeout_s: seconds each call may take.
        transport: how requests travel (default :func:`urllib_transport`).

    Every method raises :class:`FreqtradeAPIError` when the bot does not do what was asked.
    """

    def __init__(
        self,
        base_url: str,
        *,
        username: str,
        password: str,
        timeout_s: float = DEFAULT_FREQTRADE_TIMEOUT_S,
        transport: Transport = urllib_transport,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"freqtrade's url must be http(s)://..., not {base_url!r}")
        self.base_url = base_url.rstrip("/").removesuffix("/api/v1")
        self.timeout_s = timeout_s
        credentials = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._auth = f"Basic {credentials}"
        self._transport = transport

    def __repr__(self) -> str:
        return f"FreqtradeSupervisor({self.base_url!r})"  # never the credentials

    @classmethod
    def from_env(
        cls,
        base_url: str,
        *,
        username_env: str = FREQTRADE_USERNAME_ENV,
        password_env: str = FREQTRADE_PASSWORD_ENV,
        environ: Mapping[str, str] | None = None,
        timeout_s: float = DEFAULT_FREQTRADE_TIMEOUT_S,
        transport: Transport = urllib_transport,
    ) -> FreqtradeSupervisor:
        """Build one with the credentials in `username_env` and `password_env`.

        The defaults are freqtrade's own variables for its ``api_server`` credentials.
        """
        env = os.environ if environ is None else environ
        username, password = env.get(username_env), env.get(password_env)
        if not username or not password:
            raise ConfigurationError(
                f"freqtrade's API credentials: set ${username_env} and ${password_env}"
            )
        return cls(
            base_url,
            username=username,
            password=password,
            timeout_s=timeout_s,
            transport=transport,
        )

    def ping(self) -> bool:
        """Whether the bot's API answers (``GET /api/v1/ping``, no credentials needed)."""
        try:
            status, body = self._send("GET", "/ping", None)
        except FreqtradeAPIError:
            return False
        return status == 200 and isinstance(body, dict) and body.get("status") == "pong"  # noqa: PLR2004

    def lock_all(self, reason: str, *, until: datetime = UNTIL_RESUMED) -> FreqtradeLock:
        """Lock every pair (``"*"``, both sides) until `until`: freqtrade opens no trade.

        The lock lives in freqtrade's database, so it outlasts a restart of the bot. Its reason
        is `reason` after :data:`LOCK_REASON_PREFIX`; locking again with the same reason and
        end returns the existing lock (freqtrade merges them).
        """
        if until.tzinfo is None:
            raise ValueError("until must be timezone-aware")
        text = reason if reason.startswith(LOCK_REASON_PREFIX) else LOCK_REASON_PREFIX + reason
        payload = [{"pair": "*", "side": "*", "until": until.isoformat(), "reason": text}]
        status, body = self._send("POST", "/locks", payload)
        locks = self._locks(status, body, "/locks")
        mine = [lock for lock in locks if lock.pair == "*" and lock.reason == text and lock.active]
        if not mine:
            raise FreqtradeAPIError(
                f"{self.base_url}: the lock {text!r} is not among the bot's locks after POST",
                url=self.base_url + "/api/v1/locks",
                status=status,
                body=json.dumps(body)[:500],
            )
        return max(mine, key=lambda lock: lock.lock_id)

    def locks(self) -> list[FreqtradeLock]:
        """The bot's active locks (``GET /api/v1/locks``)."""
        status, body = self._send("GET", "/locks", None)
        return self._locks(status, body, "/locks")

    def unlock(self, lock_id: int) -> None:
        """End a lock now (``DELETE /api/v1/locks/{id}``); an unknown id is no error."""
        status, body = self._send("DELETE", f"/locks/{int(lock_id)}", None)
        self._locks(status, body, f"/locks/{lock_id}")

    def unlock_brokerguard(self) -> list[int]:
        """End every lock brokerguard set (a resume); the ids ended."""
        ended = [lock.lock_id for lock in self.locks() if lock.by_brokerguard]
        for lock_id in ended:
            self.unlock(lock_id)
        return ended

    def force_exit(self, trade_id: int, *, ordertype: str | None = "market") -> str:
        """Exit a trade freqtrade knows (``POST /api/v1/forceexit``); freqtrade's message.

        freqtrade cancels the trade's open entry order first, then sends the exit order and
        keeps its database true. `ordertype` None: the strategy's own exit order type.
        """
        payload: dict[str, Any] = {"tradeid": str(int(trade_id))}
        if ordertype is not None:
            payload["ordertype"] = ordertype
        status, body = self._send("POST", "/forceexit", payload)
        if status != 200 or not isinstance(body, dict) or "result" not in body:  # noqa: PLR2004
            raise self._error("/forceexit", status, body)
        return str(body["result"])

    def open_trades(self) -> list[FreqtradeTrade]:
        """The bot's open trades (``GET /api/v1/status``)."""
        status, body = self._send("GET", "/status", None)
        if status != 200 or not isinstance(body, list):  # noqa: PLR2004
            raise self._error("/status", status, body)
        try:
            return [
                FreqtradeTrade(
                    trade_id=int(item["trade_id"]),
                    pair=str(item["pair"]),
                    amount=Decimal(str(item["amount"])),
                    is_open=bool(item.get("is_open", True)),
                    has_open_orders=bool(item.get("has_open_orders", False)),
                )
                for item in body
            ]
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise self._error("/status", status, body) from exc

    def count(self) -> tuple[int, int]:
        """(open trades, ``max_open_trades``) as the bot counts them (``GET /api/v1/count``)."""
        status, body = self._send("GET", "/count", None)
        if status != 200 or not isinstance(body, dict):  # noqa: PLR2004
            raise self._error("/count", status, body)
        try:
            return int(body["current"]), int(body["max"])
        except (KeyError, TypeError, ValueError) as exc:
            raise self._error("/count", status, body) from exc

    def _locks(self, status: int, body: object, path: str) -> list[FreqtradeLock]:
        if status != 200 or not isinstance(body, dict):  # noqa: PLR2004
            raise self._error(path, status, body)
        try:
            return [
                FreqtradeLock(
                    lock_id=int(item["id"]),
                    pair=str(item["pair"]),
                    side=str(item.get("side", "*")),
                    reason=item.get("reason"),
                    active=bool(item["active"]),
                    until_ms=int(item["lock_end_timestamp"]),
                )
                for item in body["locks"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise self._error(path, status, body) from exc

    def _error(self, path: str, status: int, body: object) -> FreqtradeAPIError:
        text = json.dumps(body)[:500]
        url = f"{self.base_url}/api/v1{path}"
        return FreqtradeAPIError(f"{url}: HTTP {status}: {text}", url=url, status=status, body=text)

    def _send(self, method: str, path: str, payload: object) -> tuple[int, Any]:
        url = f"{self.base_url}/api/v1{path}"
        headers = {"Authorization": self._auth}
        return _call(
            self._transport,
            FreqtradeAPIError,
            method=method,
            url=url,
            headers=headers,
            payload=payload,
            timeout_s=self.timeout_s,
        )
