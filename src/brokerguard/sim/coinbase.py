"""A Coinbase Advanced Trade REST emulator on 127.0.0.1, for driving the real ``ccxt.coinbase``.

It speaks what ccxt 4.5.90's ``coinbase`` class sends (point ``exchange.urls["api"]["rest"]`` at
:attr:`CoinbaseEmulator.url`; ccxt builds ``/v2/...`` and ``/api/v3/...`` under it):

==============================================  ============================================
``load_markets``                                v2 ``currencies``, ``currencies/crypto``,
                                                ``exchange-rates``; v3 ``brokerage/market/
                                                products`` (SPOT, then ``product_type=FUTURE``,
                                                answered empty) and, signed,
                                                ``brokerage/transaction_summary``
``fetch_balance``                               v2 ``accounts`` (ccxt's default: totals only,
                                                one page); with ``{"v3": True}``
                                                ``brokerage/accounts`` (``available_balance``,
                                                ``hold``; pages of ``has_next``/``cursor``)
``fetch_ticker`` / ``fetch_tickers``            ``brokerage/market/products/{id}/ticker`` /
                                                ``brokerage/market/products?product_ids=``
``fetch_bids_asks``                             ``brokerage/best_bid_ask``
``create_order``                                ``POST brokerage/orders``
``fetch_order``                                 ``brokerage/orders/historical/{order_id}``
``fetch_orders`` / ``fetch_open_orders`` ...    ``brokerage/orders/historical/batch``
``cancel_order(s)``                             ``POST brokerage/orders/batch_cancel``
``fetch_time``                                  v2 ``time`` (or v3 ``brokerage/time``)
==============================================  ============================================

plus the private twins ``brokerage/products[/{id}[/ticker]]`` and ``brokerage/accounts/{uuid}``.
Anything else answers 404 in the shape of its API version.

**Orders.** ``order_configuration`` takes one of ``market_market_ioc`` (``base_size``, or
``quote_size`` for a BUY), ``limit_limit_gtc`` / ``limit_limit_gtd`` (``post_only``,
``end_time``), ``limit_limit_fok`` and ``sor_limit_ioc``. Market orders fill at the ask (BUY)
or bid (SELL) after ``fill_delay`` seconds, in ``fill_parts`` parts; limit orders rest until
:meth:`CoinbaseEmulator.set_price` crosses them (a resting order fills at its limit price, one
that crossed on arrival at the touch); IOC and FOK fill at once or are ``CANCELLED``; GTD orders
are ``EXPIRED`` at ``end_time``. Statuses are ``PENDING`` (``pending_delay``), ``OPEN``,
``FILLED``, ``CANCELLED``, ``EXPIRED`` and ``FAILED`` (the last only through
:meth:`~CoinbaseEmulator.set_order_status`); ``filled_size``, ``filled_value``,
``average_filled_price``, ``number_of_fills`` and ``completion_percentage`` grow with each part.
Cancels can take ``cancel_delay`` seconds (``pending_cancel`` is true meanwhile, and fills due
before then still happen). No fees are charged (``total_fees`` is ``"0"``).

Refusals are data, as on Coinbase: HTTP 200 with ``{"success": false, "error_response":
{"error", "message", "error_details", "preview_failure_reason", "new_order_failure_reason"}}``
for ``PREVIEW_INSUFFICIENT_FUND``, ``PREVIEW_INVALID_BASE_SIZE_TOO_SMALL`` / ``_TOO_LARGE``,
``PREVIEW_INVALID_QUOTE_SIZE_TOO_SMALL`` / ``_TOO_LARGE`` / ``_PRECISION``,
``PREVIEW_INVALID_SIZE_PRECISION``, ``PREVIEW_INVALID_PRICE_PRECISION``,
``PREVIEW_INVALID_LIMIT_PRICE_POST_ONLY``, ``PREVIEW_INVALID_PRODUCT_ID``, ``PREVIEW_INVALID_SIDE``,
``PREVIEW_INVALID_ORDER_CONFIG``, ``PREVIEW_END_TIME_IS_IN_THE_PAST``, ``PREVIEW_TRADING_DISABLED``
and ``PREVIEW_NOT_ALLOWED_BY_MARKET_STATE`` (products in ``cancel_only``, ``limit_only``,
``post_only`` or ``trading_disabled`` mode, :meth:`~CoinbaseEmulator.set_product_status`).
The notional of a base-sized limit order is held to ``quote_min_size`` too (an assumption).

**Idempotency.** Coinbase's Create Order reference: "If the ID provided is not unique, the order
will not be created and the order corresponding with that ID will be returned instead." A
reused ``client_order_id`` answers ``success: true`` with the *existing* order's id, whatever
the new request says (``duplicate_client_order_id="reject"`` answers
``DUPLICATE_CLIENT_ORDER_ID`` instead, the value Coinbase's ``new_order_failure_reason`` enum
also lists). A queued order whose client id was taken while it waited is dropped. Note that
ccxt 4.5.90's ``create_order`` *ignores* ``clientOrderId`` and sends ``ccxt-<uuid4>``; only
the raw ``client_order_id`` param reaches Coinbase. Coinbase offers no lookup by client id
(List Orders has no such filter; Get Order's ``client_order_id`` query is deprecated): resending
the same create is the lookup.

**Authentication**, chosen from the credential shape exactly as ccxt chooses its signer:

* legacy HMAC (any other key/secret): ``CB-ACCESS-KEY`` must be the key and ``CB-ACCESS-SIGN``
  the hex HMAC-SHA256, keyed with the secret's UTF-8 bytes, of ``CB-ACCESS-TIMESTAMP + method +
  path + payload`` (payload: the JSON body; for a v2 GET ``"?" + query``; for a v3 GET nothing);
* CDP ES256 JWT (key ``organizations/...`` or a PEM secret) and Ed25519 JWT (a secret of 88
  characters or ending in ``=``): ``Authorization: Bearer``, header ``alg``/``kid``/``nonce``,
  claims ``sub`` (the key), ``iss``/``aud`` as ccxt writes them, ``uri`` (``uris[0]`` for
  EdDSA) naming this method and path (the host is not compared), and the signature, verified
  with the public key of the configured secret (needs ``cryptography``, which ccxt requires).

With ``max_clock_skew_s`` set, the HMAC timestamp and the JWT ``nbf``/``exp`` are checked
against ``time_source`` too (off by default: tests step the emulator's clock, ccxt signs with
the wall clock). A refusal is HTTP 401 ``Unauthorized`` in plain text on v3, as Advanced Trade
answers, and ``{"errors": [{"id": "authentication_error", ...}]}`` on v2.

Faults are injected per endpoint, named by ccxt's path template (``"brokerage/orders"``,
``"brokerage/orders/historical/{order_id}"``, ``"brokerage/accounts"``, v2 ``"accounts"``), or
for every endpoint, and consumed in order:

===================================  ===============================================================
``"http:503"``                       that status with an HTML body, like a load balancer (Advanced
                                     Trade answers 429 this way too)
``"error:429:rate_limit_exceeded"``  that status with ``{"error", "error_details", "message"}``
                                     (an optional third part is the message)
``"errors:401:invalid_token"``       that status with the v2 shape ``{"errors": [{"id",
                                     "message"}]}``
``"unauthorized"``                   HTTP 401 ``Unauthorized`` (plain text)
``"slow:1.5"``                       answer normally after that many real seconds;
                                     ``"slow:1.5:http:504"`` answers that fault instead
``"malformed"``                      a 200 whose body is not JSON
``"empty_result"``                   a successful, empty answer (accounts: ``{"accounts": [],
                                     "has_next": false, ...}``; ``brokerage/orders``: ``{}``);
                                     nothing is executed
``"omit:BTC,filled_size"``           serve, then drop list entries so identified (currency,
                                     product, order or client order id) and keys so named
``"accept_then:http:504"``           ``brokerage/orders`` executes the order, then answers the fault
``"delayed_accept:1.5"``             ``brokerage/orders`` is queued in the engine: it answers
                                     ``delayed_answer`` (default HTTP 503) now, and the order is
                                     accepted 1.5 s of emulator time later, invisible until then;
                                     ``"delayed_accept:1.5:slow:3"`` answers with any fault above
===================================  ===============================================================

What ccxt 4.5.90 makes of these (pinned in ``tests/sim/test_coinbase_emulator.py``): a JSON
body with ``error`` is classified by that string *before* the HTTP status is looked at
(``rate_limit_exceeded`` RateLimitExceeded, ``unauthorized`` AuthenticationError,
``PERMISSION_DENIED`` PermissionDenied, ``INVALID_ARGUMENT`` BadRequest, anything else, a JSON 500
included, a plain ExchangeError); a body that is not JSON falls through to the status (401
AuthenticationError, 429 RateLimitExceeded, 500/502/503 ExchangeNotAvailable, 504
RequestTimeout). An order refusal is classified by its ``preview_failure_reason``: only
``PREVIEW_INSUFFICIENT_FUND`` (InsufficientFunds) is mapped among those above, every other is a
plain ExchangeError. A refused cancel is BadRequest whatever the reason; an unknown order id is
a plain ExchangeError, never OrderNotFound; a malformed 200 reads as an empty balance (v2), a
TypeError (v3 accounts) or an order without an id (create), as does an empty create answer.

``set_down(True)`` takes the whole API down (HTTP 503 everywhere) until ``set_down(False)``.
Every delay except ``slow:`` is measured with ``time_source`` (default ``time.time``): tests step
time instead of sleeping. Time acts lazily: queued orders are accepted, orders fill, expire and
cancel when a request, :meth:`~CoinbaseEmulator.set_price` or a test accessor looks.

Run on its own (a separate process)::

    python -m brokerguard.sim.coinbase --port 0 --admin

prints its URL; with ``--admin``, ``POST /admin/down``, ``POST /admin/up`` and ``GET
/admin/stats`` control it over HTTP. The emulator never talks to anything but its own socket.

Sources: ccxt 4.5.90's ``python/ccxt/coinbase.py`` (requests, signing, response comments, error
table); ccxt's recorded ``ts/src/test/static/response/coinbase.json`` and ``request/coinbase.json``
(``tests/sim/fixtures/coinbase_recorded.json`` keeps excerpts); Coinbase's Advanced Trade API
reference (Create Order, Get Order, List Orders, Cancel Orders) and its failure-reason enums.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any, Final
from urllib.parse import parse_qs, unquote

from brokerguard.sim._http import LoopbackServer, Served, serve_until_terminated

__all__ = ["CoinbaseEmulator", "CoinbaseProduct", "CoinbaseRequest", "running_coinbase"]

DEFAULT_API_KEY: Final = "brokerguard-emulator-key"
DEFAULT_API_SECRET: Final = "brokerguard-emulator-secret-not-a-real-one"  # noqa: S105 (a test key)
"""A legacy HMAC secret: ccxt signs with HMAC unless the secret is a PEM, 88 chars or ends '='."""

USER_ID: Final = "5e1f0000-0000-4000-8000-00000000b6d1"
DELAYED_ANSWER: Final = "http:503"
"""What a queued create order answers when the fault or constructor names no other answer."""
MAX_PAGE: Final = 250
"""Coinbase's documented maximum ``limit`` for List Accounts."""

ORDER_STATUSES: Final = frozenset({"PENDING", "OPEN", "FILLED", "CANCELLED", "EXPIRED", "FAILED"})
PRODUCT_STATUSES: Final = frozenset(
    {"online", "cancel_only", "limit_only", "post_only", "trading_disabled"}
)
ORDER_CONFIGURATIONS: Final = frozenset(
    {"market_market_ioc", "limit_limit_gtc", "limit_limit_gtd", "limit_limit_fok", "sor_limit_ioc"}
)
DUPLICATE_MODES: Final = frozenset({"return_existing", "reject"})

_LIVE: Final = frozenset({"PENDING", "OPEN"})
_IMMEDIATE: Final = frozenset({"limit_limit_fok", "sor_limit_ioc"})
_TRADING: Final = frozenset({"online", "limit_only", "post_only"})  # modes in which books match
_TIME_IN_FORCE: Final[Mapping[str, str]] = {
    "market_market_ioc": "IMMEDIATE_OR_CANCEL",
    "sor_limit_ioc": "IMMEDIATE_OR_CANCEL",
    "limit_limit_gtc": "GOOD_UNTIL_CANCELLED",
    "limit_limit_gtd": "GOOD_UNTIL_DATE_TIME",
    "limit_limit_fok": "FILL_OR_KILL",
}
_CANCEL_REFUSALS: Final[Mapping[str, str]] = {
    "FILLED": "ORDER_IS_FULLY_FILLED",
    "CANCELLED": "DUPLICATE_CANCEL_REQUEST",
    "EXPIRED": "NOT_ALLOWED_TO_CANCEL",
    "FAILED": "NOT_ALLOWED_TO_CANCEL",
}
_FIAT: Final = frozenset({"USD", "EUR", "GBP"})
# name, exponent (the decimals v2 prints), colour
_CURRENCIES: Final[Mapping[str, tuple[str, int, str]]] = {
    "BTC": ("Bitcoin", 8, "#F7931A"),
    "ETH": ("Ethereum", 8, "#627EEA"),
    "SOL": ("Solana", 9, "#9945FF"),
    "USDC": ("USDC", 6, "#2775CA"),
    "USD": ("United States Dollar", 2, "#85BB65"),
    "EUR": ("Euro", 2, "#0052B4"),
    "GBP": ("British Pound", 2, "#CF142B"),
}
_NAMESPACE: Final = uuid.UUID("6f0c4a52-41b2-4f0e-9a53-c01bba5e0000")
_NOT_FOUND_ORDER: Final = "order with this orderID was not found"
_INSUFFICIENT: Final = "Insufficient balance in source account"


@dataclass(frozen=True, slots=True)
class CoinbaseProduct:
    """One spot product as Advanced Trade lists it: its book top, increments, limits and mode."""

    product_id: str  # "BTC-USD"
    base: str  # "BTC"
    quote: str  # "USD"
    bid: Decimal
    ask: Decimal
    base_increment: Decimal = Decimal("0.00000001")
    quote_increment: Decimal = Decimal("0.01")
    price_increment: Decimal = Decimal("0.01")
    base_min_size: Decimal = Decimal("0.00000001")
    base_max_size: Decimal = Decimal(3400)
    quote_min_size: Decimal = Decimal(1)
    quote_max_size: Decimal = Decimal(150_000_000)
    status: str = "online"


# BTC-USD and ETH-USD increments and limits as ccxt 4.5.90 quotes real products in its comments.
DEFAULT_PRODUCTS: Final = (
    CoinbaseProduct("BTC-USD", "BTC", "USD", Decimal("64999.99"), Decimal("65000.00")),
    CoinbaseProduct(
        "ETH-USD",
        "ETH",
        "USD",
        Decimal("3199.99"),
        Decimal("3200.00"),
        base_max_size=Decimal(42000),
    ),
    CoinbaseProduct(
        "SOL-USD",
        "SOL",
        "USD",
        Decimal("149.99"),
        Decimal("150.00"),
        base_max_size=Decimal(100_000),
    ),
)


@dataclass(frozen=True, slots=True)
class CoinbaseRequest:
    """One request the emulator received (after authentication, before faults)."""

    method: str
    endpoint: str  # ccxt's path template: "brokerage/orders", "accounts" (v2) ...
    params: Mapping[str, Any]  # query parameters, path parameters and the JSON body


@dataclass(frozen=True, slots=True)
class _Refusal:
    """Why Coinbase would refuse an order, in its own words."""

    error: str
    preview: str | None
    message: str = ""
    status: int = 200  # 400: the request itself is invalid (INVALID_ARGUMENT)


@dataclass(frozen=True)
class _NewOrder:
    """A create-order request that passed validation, as the engine will see it."""

    params: Mapping[str, Any]
    client_order_id: str
    product_id: str
    side: str
    kind: str  # the order_configuration key
    configuration: Mapping[str, Any]
    base_size: Decimal | None
    quote_size: Decimal | None
    limit_price: Decimal | None
    post_only: bool
    end_time: float | None


@dataclass
class _Queued:
    request: _NewOrder
    due: float


@dataclass
class _Order:
    order_id: str
    request: _NewOrder
    created: float
    live_at: float
    parts: int
    status: str = "OPEN"
    taker: bool = False  # crossed on arrival: fills at the touch, not at its limit
    filled_size: Decimal = Decimal(0)
    filled_value: Decimal = Decimal(0)
    number_of_fills: int = 0
    parts_done: int = 0
    last_fill_time: float | None = None
    fills_due: list[float] = field(default_factory=list)
    cancel_at: float | None = None
    cancel_message: str = ""
    frozen: bool = False  # a status set by a test: the engine leaves the order alone

    @property
    def product_id(self) -> str:
        return self.request.product_id

    @property
    def live(self) -> bool:
        return self.status in _LIVE


@dataclass
class _State:
    balances: dict[str, Decimal]
    products: dict[str, CoinbaseProduct]
    last: dict[str, Decimal]
    last_trade_at: dict[str, float]
    orders: dict[str, _Order] = field(default_factory=dict)
    by_client_id: dict[str, str] = field(default_factory=dict)
    queue: list[_Queued] = field(default_factory=list)
    faults: dict[str | None, list[str]] = field(default_factory=lambda: defaultdict(list))
    requests: list[CoinbaseRequest] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    next_order: int = 1
    next_trade: int = 1
    fill_market_orders: bool = True
    down: bool = False
    total: int = 0
    while_down: int = 0


@dataclass(frozen=True)
class _Route:
    api: str  # "v2" or "v3"
    method: str
    template: str
    private: bool
    handler: str


_ROUTES: Final = (
    _Route("v2", "GET", "time", private=False, handler="_v2_time"),
    _Route("v2", "GET", "currencies", private=False, handler="_v2_currencies"),
    _Route("v2", "GET", "currencies/crypto", private=False, handler="_v2_crypto_currencies"),
    _Route("v2", "GET", "exchange-rates", private=False, handler="_v2_exchange_rates"),
    _Route("v2", "GET", "accounts", private=True, handler="_v2_accounts"),
    _Route("v3", "GET", "brokerage/time", private=False, handler="_time"),
    _Route("v3", "GET", "brokerage/market/products", private=False, handler="_products"),
    _Route(
        "v3", "GET", "brokerage/market/products/{product_id}", private=False, handler="_product"
    ),
    _Route(
        "v3",
        "GET",
        "brokerage/market/products/{product_id}/ticker",
        private=False,
        handler="_ticker",
    ),
    _Route("v3", "GET", "brokerage/products", private=True, handler="_products"),
    _Route("v3", "GET", "brokerage/products/{product_id}", private=True, handler="_product"),
    _Route("v3", "GET", "brokerage/products/{product_id}/ticker", private=True, handler="_ticker"),
    _Route("v3", "GET", "brokerage/best_bid_ask", private=True, handler="_best_bid_ask"),
    _Route(
        "v3", "GET", "brokerage/transaction_summary", private=True, handler="_transaction_summary"
    ),
    _Route("v3", "GET", "brokerage/accounts", private=True, handler="_accounts"),
    _Route("v3", "GET", "brokerage/accounts/{account_uuid}", private=True, handler="_account"),
    _Route("v3", "GET", "brokerage/orders/historical/batch", private=True, handler="_list_orders"),
    _Route(
        "v3", "GET", "brokerage/orders/historical/{order_id}", private=True, handler="_get_order"
    ),
    _Route("v3", "POST", "brokerage/orders", private=True, handler="_create_order"),
    _Route("v3", "POST", "brokerage/orders/batch_cancel", private=True, handler="_cancel_orders"),
)
CREATE_ORDER: Final = "brokerage/orders"

_EMPTY: Final[Mapping[str, object]] = {
    "accounts": {"data": [], "pagination": {"next_starting_after": None, "next_uri": None}},
    "currencies": {"data": []},
    "currencies/crypto": {"data": []},
    "exchange-rates": {"data": {"currency": "USD", "rates": {}}},
    "brokerage/accounts": {"accounts": [], "has_next": False, "cursor": "", "size": 0},
    "brokerage/market/products": {"products": [], "num_products": 0},
    "brokerage/products": {"products": [], "num_products": 0},
    "brokerage/best_bid_ask": {"pricebooks": []},
    "brokerage/orders/historical/batch": {
        "orders": [],
        "sequence": "0",
        "has_next": False,
        "cursor": "",
    },
    "brokerage/orders/batch_cancel": {"results": []},
}

Answer = tuple[int, bytes]
Handler = Callable[[dict[str, Any]], Answer]


class CoinbaseEmulator(Served):
    """A Coinbase Advanced Trade REST API on 127.0.0.1 with injectable faults (see the module).

    Use it as a context manager (or :func:`running_coinbase`); :attr:`url` is its base URL, for
    ``exchange.urls["api"] = {"rest": emulator.url}``.

    Args:
        balances: starting balances by currency (``{"USD": "10000", "BTC": "0.5"}``).
        products: the tradable products (default BTC, ETH and SOL against USD).
        api_key, api_secret: the credentials private calls must be signed with; their shape
            picks the scheme (HMAC, ES256 JWT or Ed25519 JWT) as ccxt picks it.
        fill_market_orders: fill market orders (False: they rest ``OPEN``).
        fill_delay: seconds between an order becoming fillable and its (next) part filling.
        fill_parts: fill each order in this many parts, ``fill_delay`` apart.
        pending_delay: seconds a new order shows ``PENDING`` before it is ``OPEN``.
        accept_delay: seconds every create order waits in the engine queue (answering
            ``delayed_answer``) before the order exists; ``"delayed_accept:<s>"`` does it once.
        delayed_answer: what a queued create order answers (any answer fault).
        cancel_delay: seconds between a cancel request and the order being ``CANCELLED``.
        duplicate_client_order_id: ``"return_existing"`` (Coinbase's documented behaviour) or
            ``"reject"``.
        accounts_page_size: the most accounts one page holds, whatever ``limit`` asks (Coinbase:
            250); a small value makes ``has_next`` pagination happen in tests.
        max_clock_skew_s: check signature times against ``time_source`` within this many
            seconds (None: not checked).
        time_source: epoch seconds for timestamps and every delay (default ``time.time``).
        record_requests: keep every request for :attr:`requests`.
        admin: serve ``/admin/down``, ``/admin/up`` and ``/admin/stats``.
    """

    def __init__(
        self,
        *,
        balances: Mapping[str, object] | None = None,
        products: tuple[CoinbaseProduct, ...] = DEFAULT_PRODUCTS,
        api_key: str = DEFAULT_API_KEY,
        api_secret: str = DEFAULT_API_SECRET,
        fill_market_orders: bool = True,
        fill_delay: float = 0.0,
        fill_parts: int = 1,
        pending_delay: float = 0.0,
        accept_delay: float = 0.0,
        delayed_answer: str = DELAYED_ANSWER,
        cancel_delay: float = 0.0,
        duplicate_client_order_id: str = "return_existing",
        accounts_page_size: int = MAX_PAGE,
        max_clock_skew_s: float | None = None,
        time_source: Callable[[], float] = time.time,  # wall-clock-ok: a server's own time
        record_requests: bool = True,
        admin: bool = False,
    ) -> None:
        if fill_parts < 1:
            raise ValueError("fill_parts must be at least 1")
        if accounts_page_size < 1:
            raise ValueError("accounts_page_size must be at least 1")
        if duplicate_client_order_id not in DUPLICATE_MODES:
            raise ValueError(f"duplicate_client_order_id must be one of {sorted(DUPLICATE_MODES)}")
        for product in products:
            _check_product_status(product.status)
        _check_answer(delayed_answer)
        self.api_key = api_key
        self.api_secret = api_secret
        self.scheme = _auth_scheme(api_key, api_secret)
        """``"hmac"``, ``"es256"`` or ``"eddsa"``: how private calls must be signed."""
        self._verify = None if self.scheme == "hmac" else _jwt_verifier(self.scheme, api_secret)
        self.record_requests = record_requests
        self.admin = admin
        self._now = time_source
        self._fill_delay = fill_delay
        self._fill_parts = fill_parts
        self._pending_delay = pending_delay
        self._accept_delay = accept_delay
        self._delayed_answer = delayed_answer
        self._cancel_delay = cancel_delay
        self._duplicates = duplicate_client_order_id
        self._page_size = accounts_page_size
        self._skew = max_clock_skew_s
        self._lock = threading.RLock()
        now = time_source()
        self._started = now
        self._state = _State(
            balances={k: Decimal(str(v)) for k, v in (balances or {"USD": "100000"}).items()},
            products={p.product_id: p for p in products},
            last={p.product_id: _mid(p.bid, p.ask, p.price_increment) for p in products},
            last_trade_at={p.product_id: now for p in products},
            fill_market_orders=fill_market_orders,
        )
        self._handlers: dict[str, Handler] = {r.handler: getattr(self, r.handler) for r in _ROUTES}
        self._http = LoopbackServer(self.handle, name="coinbase-emulator")

    # ------------------------------------------------------------------ test controls

    def inject(self, fault: str, *, endpoint: str | None = None, times: int = 1) -> None:
        """Make the next `times` requests to `endpoint` (None: any endpoint) fail with `fault`."""
        _check_fault(fault)
        with self._lock:
            self._state.faults[endpoint].extend([fault] * times)

    def clear_faults(self) -> None:
        """Forget every pending fault."""
        with self._lock:
            self._state.faults.clear()

    def set_price(self, product_id: str, bid: object, ask: object = None) -> None:
        """Move a product's book top (``ask`` None: bid and ask both at `bid`); orders react."""
        with self._lock:
            self._advance()  # what was due happened at the old price
            product = self._state.products[product_id]
            low = Decimal(str(bid))
            high = low if ask is None else Decimal(str(ask))
            if high < low:
                raise ValueError(f"the ask {high} is below the bid {low}")
            self._state.products[product_id] = replace(product, bid=low, ask=high)
            self._state.last[product_id] = _mid(low, high, product.price_increment)
            self._state.last_trade_at[product_id] = self._now()
            self._advance()

    def set_product_status(self, product_id: str, status: str) -> None:
        """Put a product in a trading mode (``online``, ``cancel_only``, ``limit_only``, ...).

        The products list shows it; new orders it forbids are refused as Coinbase refuses them,
        and nothing on it fills in ``cancel_only`` or ``trading_disabled``.
        """
        _check_product_status(status)
        with self._lock:
            self._advance()  # what was due happened in the old mode
            product = self._state.products[product_id]
            self._state.products[product_id] = replace(product, status=status)
            self._advance()

    def set_fill_market_orders(self, fill: bool) -> None:
        """Choose whether new market orders fill (at once, or after ``fill_delay``) or rest."""
        with self._lock:
            self._state.fill_market_orders = fill

    def set_order_status(self, ref: str, status: str) -> None:
        """Force an order's status (by order id or client order id); the engine then leaves it.

        For statuses the engine does not reach by itself in a test (``FAILED``, ``PENDING``
        forever, an ``EXPIRED`` order with fills, ...).
        """
        if status not in ORDER_STATUSES:
            raise ValueError(f"not a Coinbase order status: {status!r}")
        with self._lock:
            self._advance()
            order = self._find(ref)
            if order is None:
                raise KeyError(ref)
            order.status = status
            order.frozen = True
            order.fills_due.clear()

    def credit(self, currency: str, amount: object) -> None:
        """Add `amount` of `currency` to the account, as a deposit outside our client."""
        with self._lock:
            balances = self._state.balances
            balances[currency] = balances.get(currency, Decimal(0)) + Decimal(str(amount))

    def set_down(self, down: bool) -> None:
        """Take the whole API down (HTTP 503 everywhere) or bring it back."""
        with self._lock:
            self._state.down = down

    def stats(self) -> dict[str, int | bool]:
        """Requests received in all, and while the API was down."""
        with self._lock:
            state = self._state
            return {"down": state.down, "requests": state.total, "while_down": state.while_down}

    def refusals(self) -> dict[str, int]:
        """How many requests were refused, by Coinbase's reason.

        Orders count under their ``preview_failure_reason`` (else their ``error``), cancels
        under their ``failure_reason``, bad signatures as ``UNAUTHORIZED``; queued orders
        dropped when the engine reaches them count too, though no client saw that refusal.
        """
        with self._lock:
            return dict(self._state.refusals)

    @property
    def requests(self) -> list[CoinbaseRequest]:
        """Every authenticated request received, in order."""
        with self._lock:
            return list(self._state.requests)

    def count(self, endpoint: str) -> int:
        """How many requests reached `endpoint` (a ccxt path template)."""
        return sum(1 for r in self.requests if r.endpoint == endpoint)

    def orders(self) -> list[dict[str, Any]]:
        """Every order the engine accepted, oldest first, as Get Order describes it."""
        with self._lock:
            self._advance()
            return [self._payload(o) for o in self._state.orders.values()]

    def queued(self) -> list[dict[str, Any]]:
        """The bodies of the create orders still waiting in the engine queue (never visible)."""
        with self._lock:
            self._advance()
            return [dict(q.request.params) for q in self._state.queue]

    def balances(self) -> dict[str, Decimal]:
        """The account's total balances (available plus hold) by currency."""
        with self._lock:
            self._advance()
            return dict(self._state.balances)

    def holds(self) -> dict[str, Decimal]:
        """What live orders hold, by currency (only currencies with a hold)."""
        with self._lock:
            self._advance()
            return {k: v for k, v in self._holds().items() if v}

    # ------------------------------------------------------------------ request handling

    def handle(
        self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> Answer:
        """Answer one HTTP request (`headers` lower-cased); return (status, body)."""
        early = self._front_door(method, path)
        if early is not None:
            return early
        found = _match(method, path)
        if found is None:
            return _not_found("v2" if path.startswith("/v2/") else "v3")
        route, path_params = found
        params = _params(query, body, path_params)
        if params is None:
            return _error(400, "INVALID_ARGUMENT", "the request body is not a JSON object")
        if route.private:
            problem = self._authenticate(route.api, method, path, query, headers, body)
            if problem is not None:
                with self._lock:
                    self._state.refusals["UNAUTHORIZED"] += 1
                return _unauthorized(route.api, problem)
        with self._lock:
            if self.record_requests:
                self._state.requests.append(CoinbaseRequest(method, route.template, params))
            self._advance()
        fault = self._take_fault(route.template)
        if fault is None:
            return self._call(route, params)
        return self._faulted(fault, route, params)

    def _front_door(self, method: str, path: str) -> Answer | None:
        """Admin requests, the counters, and the whole API being down."""
        parts = path.strip("/").split("/")
        if parts[0] == "admin" and self.admin and len(parts) == 2:  # noqa: PLR2004
            return self._admin(method, parts[1])
        with self._lock:
            self._state.total += 1
            if self._state.down:
                self._state.while_down += 1
                return _html(503)
        return None

    def _admin(self, method: str, action: str) -> Answer:
        if method == "POST" and action in {"down", "up"}:
            self.set_down(action == "down")
        elif not (method == "GET" and action == "stats"):
            return 404, b'{"error": "NOT_FOUND", "message": "unknown admin action"}'
        return 200, json.dumps(self.stats()).encode()

    def _take_fault(self, endpoint: str) -> str | None:
        with self._lock:
            for key in (endpoint, None):
                queue = self._state.faults.get(key)
                if queue:
                    return queue.pop(0)
        return None

    def _call(self, route: _Route, params: dict[str, Any]) -> Answer:
        """Serve the endpoint itself (no fault)."""
        return self._handlers[route.handler](params)

    def _faulted(self, fault: str, route: _Route, params: dict[str, Any]) -> Answer:
        kind, _, argument = fault.partition(":")
        if kind == "accept_then":
            served = self._call(route, params)
            return self._answer(argument, route.template, lambda: served)
        if kind == "delayed_accept":
            delay, answer = _split_delayed(argument, self._delayed_answer)
            if route.template == CREATE_ORDER:
                return self._create(params, delay, answer)
            return self._answer(answer, route.template, lambda: _html(503))
        if kind == "omit":
            status, payload = self._call(route, params)
            return status, _omit(payload, set(argument.split(",")))
        return self._answer(fault, route.template, lambda: self._call(route, params))

    def _answer(self, fault: str, endpoint: str, otherwise: Callable[[], Answer]) -> Answer:
        """Serve an answer fault; `otherwise` is the answer a bare ``slow:<s>`` ends with."""
        kind, _, argument = fault.partition(":")
        if kind == "slow":
            seconds, _, rest = argument.partition(":")
            time.sleep(float(seconds))  # wall-clock-ok: emulating a slow server
            return self._answer(rest, endpoint, otherwise) if rest else otherwise()
        if kind == "empty_result":
            return _json(_EMPTY.get(endpoint, {}))
        return _plain_answer(fault)

    def _authenticate(  # noqa: PLR0911, PLR0917 (the parts of one request; one refusal per check)
        self,
        api: str,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> str | None:
        """Why the request is not signed with our credentials, or None when it is."""
        if self.scheme != "hmac":
            bearer = headers.get("authorization", "")
            if not bearer.startswith("Bearer "):
                return "no bearer token"
            return self._check_jwt(bearer.removeprefix("Bearer "), method, path)
        if headers.get("cb-access-key") != self.api_key:
            return "unknown key"
        stamp = headers.get("cb-access-timestamp", "")
        if not stamp.isdigit():
            return "no timestamp"
        if method == "GET":
            payload = f"?{query}" if api == "v2" and query else ""
        else:
            payload = body.decode("utf-8", errors="replace")
        message = f"{stamp}{method}{path}{payload}".encode()
        expected = hmac.new(self.api_secret.encode(), message, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, headers.get("cb-access-sign", "")):
            return "invalid signature"
        if self._skew is not None and abs(int(stamp) - self._now()) > self._skew:
            return "request timestamp expired"
        return None

    def _check_jwt(  # noqa: C901, PLR0911 (one refusal per claim checked)
        self, token: str, method: str, path: str
    ) -> str | None:
        parts = token.split(".")
        if len(parts) != 3:  # noqa: PLR2004 (header.claims.signature)
            return "malformed token"
        try:
            header = json.loads(_unb64(parts[0]))
            claims = json.loads(_unb64(parts[1]))
            signature = _unb64(parts[2])
        except (ValueError, binascii.Error):
            return "malformed token"
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return "malformed token"
        es256 = self.scheme == "es256"
        expected = ("ES256", "coinbase-cloud", "retail_rest_api_proxy", "uri")
        alg, issuer, audience, uri_claim = (
            expected if es256 else ("EdDSA", "cdp", "cdp_service", "uris")
        )
        if header.get("alg") != alg or header.get("kid") != self.api_key or not header.get("nonce"):
            return "bad token header"
        if claims.get("sub") != self.api_key or claims.get("iss") != issuer:
            return "bad subject or issuer"
        if audience not in (claims.get("aud") or []):
            return "bad audience"
        uri = claims.get(uri_claim)
        if not es256:
            uri = uri[0] if isinstance(uri, list) and uri else None
        if not _uri_names(uri, method, path):
            return "token for another request"
        verify = self._verify
        if verify is None or not verify(f"{parts[0]}.{parts[1]}".encode(), signature):
            return "invalid signature"
        if self._skew is not None:
            now = self._now()
            not_before, expires = claims.get("nbf"), claims.get("exp")
            if not isinstance(not_before, int | float) or not isinstance(expires, int | float):
                return "no validity window"
            if now + self._skew < not_before or now - self._skew >= expires:
                return "token expired"
        return None

    # ------------------------------------------------------------------ public endpoints

    def _v2_time(self, _params: dict[str, Any]) -> Answer:
        now = self._now()
        return _json({"data": {"epoch": int(now), "iso": _rfc3339(now, 0)}})

    def _time(self, _params: dict[str, Any]) -> Answer:
        now = self._now()
        return _json(
            {
                "iso": _rfc3339(now, 0),
                "epochSeconds": str(int(now)),
                "epochMillis": str(int(now * 1000)),
            }
        )

    def _currencies(self) -> list[str]:
        with self._lock:
            known = set(self._state.balances)
            for product in self._state.products.values():
                known |= {product.base, product.quote}
        return sorted(known)

    def _v2_currencies(self, _params: dict[str, Any]) -> Answer:
        fiat = [
            {"id": code, "name": _CURRENCIES.get(code, (code, 2, ""))[0], "min_size": "0.01"}
            for code in self._currencies()
            if code in _FIAT
        ]
        return _json({"data": fiat})

    def _v2_crypto_currencies(self, _params: dict[str, Any]) -> Answer:
        crypto = []
        for index, code in enumerate(c for c in self._currencies() if c not in _FIAT):
            name, exponent, color = _CURRENCIES.get(code, (code, 8, "#000000"))
            crypto.append(
                {
                    "asset_id": str(uuid.uuid5(_NAMESPACE, f"asset/{code}")),
                    "code": code,
                    "name": name,
                    "color": color,
                    "sort_index": 100 + index,
                    "exponent": exponent,
                    "type": "crypto",
                    "address_regex": "^.+$",
                }
            )
        return _json({"data": crypto})

    def _v2_exchange_rates(self, _params: dict[str, Any]) -> Answer:
        with self._lock:
            usd = {p.base: self._state.last[p.product_id] for p in self._state.products.values()}
        rates = {"USD": "1"}
        rates.update(
            {code: _num((1 / price).quantize(Decimal("1e-12"))) for code, price in usd.items()}
        )
        return _json({"data": {"currency": "USD", "rates": rates}})

    def _products(self, params: dict[str, Any]) -> Answer:
        if params.get("product_type") == "FUTURE":  # no derivatives here
            return _json({"products": [], "num_products": 0})
        wanted = set(_strings(params, "product_ids"))
        with self._lock:
            chosen = [
                self._product_body(p)
                for p in self._state.products.values()
                if not wanted or p.product_id in wanted
            ]
        return _json({"products": chosen, "num_products": len(chosen)})

    def _product(self, params: dict[str, Any]) -> Answer:
        with self._lock:
            product = self._state.products.get(params["product_id"])
            if product is None:
                return _missing_product(params["product_id"])
            return _json(self._product_body(product))

    def _product_body(self, p: CoinbaseProduct) -> dict[str, Any]:
        """A product as List Products describes it (lock held)."""
        disabled = p.status == "trading_disabled"
        return {
            "product_id": p.product_id,
            "price": _num(self._state.last[p.product_id]),
            "price_percentage_change_24h": "0",
            "volume_24h": "1000",
            "volume_percentage_change_24h": "0",
            "base_increment": _num(p.base_increment),
            "quote_increment": _num(p.quote_increment),
            "quote_min_size": _num(p.quote_min_size),
            "quote_max_size": _num(p.quote_max_size),
            "base_min_size": _num(p.base_min_size),
            "base_max_size": _num(p.base_max_size),
            "base_name": _CURRENCIES.get(p.base, (p.base, 8, ""))[0],
            "quote_name": _CURRENCIES.get(p.quote, (p.quote, 2, ""))[0],
            "watched": False,
            "is_disabled": disabled,
            "new": False,
            "status": "offline" if disabled else "online",
            "cancel_only": p.status == "cancel_only",
            "limit_only": p.status == "limit_only",
            "post_only": p.status == "post_only",
            "trading_disabled": disabled,
            "auction_mode": False,
            "product_type": "SPOT",
            "quote_currency_id": p.quote,
            "base_currency_id": p.base,
            "fcm_trading_session_details": None,
            "mid_market_price": "",
            "alias": "",
            "alias_to": [],
            "base_display_symbol": p.base,
            "quote_display_symbol": p.quote,
            "view_only": False,
            "price_increment": _num(p.price_increment),
            "display_name": p.product_id,
            "product_venue": "CBE",
            "approximate_quote_24h_volume": "0",
            "new_at": "2023-01-01T00:00:00Z",
        }

    def _ticker(self, params: dict[str, Any]) -> Answer:
        with self._lock:
            product = self._state.products.get(params["product_id"])
            if product is None:
                return _missing_product(params["product_id"])
            trade = {
                "trade_id": str(self._state.next_trade),
                "product_id": product.product_id,
                "price": _num(self._state.last[product.product_id]),
                "size": "0.01",
                "time": _rfc3339(self._state.last_trade_at[product.product_id]),
                "side": "BUY",
                "bid": "",
                "ask": "",
            }
            return _json(
                {"trades": [trade], "best_bid": _num(product.bid), "best_ask": _num(product.ask)}
            )

    # ------------------------------------------------------------------ private reads

    def _best_bid_ask(self, params: dict[str, Any]) -> Answer:
        wanted = set(_strings(params, "product_ids"))
        with self._lock:
            books = [
                {
                    "product_id": p.product_id,
                    "bids": [{"price": _num(p.bid), "size": "1"}],
                    "asks": [{"price": _num(p.ask), "size": "1"}],
                    "time": _rfc3339(self._state.last_trade_at[p.product_id]),
                }
                for p in self._state.products.values()
                if not wanted or p.product_id in wanted
            ]
        return _json({"pricebooks": books})

    def _transaction_summary(self, _params: dict[str, Any]) -> Answer:
        tier = {
            "pricing_tier": "Advanced 1",
            "usd_from": "0",
            "usd_to": "1000",
            "taker_fee_rate": "0.012",
            "maker_fee_rate": "0.006",
            "aop_from": "",
            "aop_to": "",
        }
        return _json(
            {
                "total_volume": 0,
                "total_fees": 0,
                "fee_tier": tier,
                "margin_rate": None,
                "goods_and_services_tax": None,
                "advanced_trade_only_volume": 0,
                "advanced_trade_only_fees": 0,
                "coinbase_pro_volume": 0,
                "coinbase_pro_fees": 0,
                "total_balance": "",
                "has_promo_fee": False,
            }
        )

    def _account_rows(self) -> list[tuple[str, Decimal, Decimal]]:
        """(currency, available, hold) for every account, by currency (lock held)."""
        holds = self._holds()
        rows = []
        for code in self._currencies():
            total = self._state.balances.get(code, Decimal(0))
            held = holds.get(code, Decimal(0))
            rows.append((code, total - held, held))
        return rows

    def _account_body(self, code: str, available: Decimal, held: Decimal) -> dict[str, Any]:
        stamp = _rfc3339(self._started, 3)
        return {
            "uuid": _account_uuid(code),
            "name": f"{code} Wallet",
            "currency": code,
            "available_balance": {"value": _num(available), "currency": code},
            "default": True,
            "active": True,
            "created_at": stamp,
            "updated_at": stamp,
            "deleted_at": None,
            "type": "ACCOUNT_TYPE_FIAT" if code in _FIAT else "ACCOUNT_TYPE_CRYPTO",
            "ready": True,
            "hold": {"value": _num(held), "currency": code},
        }

    def _accounts(self, params: dict[str, Any]) -> Answer:
        limit = _int(params.get("limit"), 49)  # Coinbase's default page
        start = _int(params.get("cursor"), 0)
        if limit is None or start is None or limit < 1:
            return _error(400, "INVALID_ARGUMENT", "invalid limit or cursor")
        size = min(limit, MAX_PAGE, self._page_size)
        with self._lock:
            rows = self._account_rows()
            page = [self._account_body(*row) for row in rows[start : start + size]]
        more = start + size < len(rows)
        return _json(
            {
                "accounts": page,
                "has_next": more,
                "cursor": str(start + size) if more else "",
                "size": len(page),
            }
        )

    def _account(self, params: dict[str, Any]) -> Answer:
        with self._lock:
            for row in self._account_rows():
                if _account_uuid(row[0]) == params["account_uuid"]:
                    return _json({"account": self._account_body(*row)})
        return _error(404, "NOT_FOUND", "account not found")

    def _v2_accounts(self, params: dict[str, Any]) -> Answer:
        limit = _int(params.get("limit"), 25)
        if limit is None or limit < 1:
            return _v2_error(400, "invalid_request", "invalid limit")
        size = min(limit, MAX_PAGE, self._page_size)
        with self._lock:
            rows = self._account_rows()
        ids = [_account_uuid(code) for code, _, _ in rows]
        after = params.get("starting_after")
        start = ids.index(after) + 1 if isinstance(after, str) and after in ids else 0
        page = rows[start : start + size]
        more = start + size < len(rows)
        last = ids[start + len(page) - 1] if page and more else None
        data = [self._v2_account_body(code, available + held) for code, available, held in page]
        pagination = {
            "ending_before": None,
            "starting_after": after if isinstance(after, str) else None,
            "previous_ending_before": None,
            "next_starting_after": last,
            "limit": size,
            "order": "desc",
            "previous_uri": None,
            "next_uri": None
            if last is None
            else f"/v2/accounts?limit={size}&starting_after={last}",
        }
        return _json({"pagination": pagination, "data": data})

    def _v2_account_body(self, code: str, total: Decimal) -> dict[str, Any]:
        name, exponent, color = _CURRENCIES.get(code, (code, 8, "#000000"))
        account_id = _account_uuid(code)
        # The keys of ccxt's recorded 2024 v2 answer (response/coinbase.json, fetchBalance).
        currency: dict[str, Any] = {"code": code, "color": color, "exponent": exponent}
        currency.update({"name": name, "slug": name.lower().replace(" ", "-")})
        currency.update({"type": "fiat" if code in _FIAT else "crypto", "rewards": None})
        if code not in _FIAT:
            currency["asset_id"] = str(uuid.uuid5(_NAMESPACE, f"asset/{code}"))
        stamp = _rfc3339(self._started, 0)
        return {
            "id": account_id,
            "name": f"{code} Wallet",
            "primary": True,
            "type": "fiat" if code in _FIAT else "wallet",
            "currency": currency,
            "balance": {"amount": f"{total:.{exponent}f}", "currency": code},
            "created_at": stamp,
            "updated_at": stamp,
            "resource": "account",
            "resource_path": f"/v2/accounts/{account_id}",
            "allow_deposits": True,
            "allow_withdrawals": True,
        }

    def _get_order(self, params: dict[str, Any]) -> Answer:
        with self._lock:
            order = self._state.orders.get(params["order_id"])
            if order is None:
                # The body ccxt 4.5.90 quotes; its 'broad' entry for it never matches in Python
                # (the transpiler wrote "self orderID"), so ccxt raises a plain ExchangeError.
                return 404, json.dumps(
                    {
                        "error": "unknown",
                        "error_details": _NOT_FOUND_ORDER,
                        "message": _NOT_FOUND_ORDER,
                    }
                ).encode()
            return _json({"order": self._payload(order)})

    def _list_orders(self, params: dict[str, Any]) -> Answer:
        ids = set(_strings(params, "order_ids"))
        products = set(_strings(params, "product_ids")) | set(_strings(params, "product_id"))
        statuses = set(_strings(params, "order_status"))
        side = params.get("order_side")
        start = _parse_time(params.get("start_date"))
        end = _parse_time(params.get("end_date"))
        limit = _int(params.get("limit"), 100)
        offset = _int(params.get("cursor"), 0)
        if limit is None or offset is None or limit < 1 or statuses - ORDER_STATUSES:
            return _error(400, "INVALID_ARGUMENT", "invalid limit, cursor or order_status")
        with self._lock:
            found = []
            for order in reversed(self._state.orders.values()):  # newest first
                if (ids and order.order_id not in ids) or (
                    products and order.product_id not in products
                ):
                    continue
                if (statuses and order.status not in statuses) or (
                    side and order.request.side != side
                ):
                    continue
                if (start is not None and order.created < start) or (
                    end is not None and order.created > end
                ):
                    continue
                found.append(self._payload(order))
        page = found[offset : offset + limit]
        more = offset + limit < len(found)
        return _json(
            {
                "orders": page,
                "sequence": "0",
                "has_next": more,
                "cursor": str(offset + limit) if more else "",
            }
        )

    # ------------------------------------------------------------------ orders

    def _create_order(self, params: dict[str, Any]) -> Answer:
        return self._create(params, self._accept_delay, self._delayed_answer)

    def _create(self, params: dict[str, Any], delay: float, answer: str) -> Answer:
        """Validate, then accept now, or queue for `delay` seconds and answer `answer`."""
        with self._lock:
            now = self._now()
            existing = self._existing(params)
            if existing is not None:
                return existing
            request = _validate(params, self._state.products, now)
            if isinstance(request, _Refusal):
                return self._refuse(request, params)
            if delay > 0:
                self._state.queue.append(_Queued(request, now + delay))
                accepted: _Order | _Refusal | None = None
            else:
                accepted = self._accept(request, now)
        if accepted is None:  # queued: answer outside the lock (it may be slow)
            return self._answer(answer, CREATE_ORDER, lambda: _html(503))
        if isinstance(accepted, _Refusal):
            return self._refuse(accepted, params)
        return _json(_created(accepted))

    def _existing(self, params: Mapping[str, Any]) -> Answer | None:
        """The answer to a reused client order id, or None when it is new (lock held)."""
        client_order_id = params.get("client_order_id")
        if not isinstance(client_order_id, str) or client_order_id not in self._state.by_client_id:
            return None
        if self._duplicates == "reject":
            refusal = _Refusal("DUPLICATE_CLIENT_ORDER_ID", None, "duplicate client order id")
            return self._refuse(refusal, params)
        return _json(_created(self._state.orders[self._state.by_client_id[client_order_id]]))

    def _refuse(self, refusal: _Refusal, params: Mapping[str, Any]) -> Answer:
        with self._lock:
            self._state.refusals[refusal.preview or refusal.error] += 1
        if refusal.status != 200:  # noqa: PLR2004
            return _error(refusal.status, refusal.error, refusal.message)
        error_response: dict[str, Any] = {
            "error": refusal.error,
            "message": refusal.message,
            "error_details": refusal.message,
        }
        if refusal.preview is not None:
            error_response["preview_failure_reason"] = refusal.preview
        error_response["new_order_failure_reason"] = refusal.error
        return _json(
            {
                "success": False,
                "failure_reason": "UNKNOWN_FAILURE_REASON",
                "order_id": "",
                "error_response": error_response,
                "order_configuration": params.get("order_configuration"),
            }
        )

    def _accept(self, request: _NewOrder, at: float) -> _Order | _Refusal:
        """The engine takes the order at `at`: the order, or why it was refused (lock held)."""
        state = self._state
        product = state.products[request.product_id]
        if request.client_order_id in state.by_client_id:
            return _Refusal("DUPLICATE_CLIENT_ORDER_ID", None, "duplicate client order id")
        if product.status in {"trading_disabled", "cancel_only"}:
            return _Refusal("TRADING_DISABLED", "PREVIEW_TRADING_DISABLED")
        market = request.kind == "market_market_ioc"
        if (product.status == "limit_only" and market) or (
            product.status == "post_only" and not request.post_only
        ):
            return _Refusal("UNKNOWN_FAILURE_REASON", "PREVIEW_NOT_ALLOWED_BY_MARKET_STATE")
        crossed = _crosses(request, product)
        if request.post_only and crossed:
            return _Refusal(
                "INVALID_LIMIT_PRICE_POST_ONLY", "PREVIEW_INVALID_LIMIT_PRICE_POST_ONLY"
            )
        currency, needed = _needs(request, product)
        if needed > self._free(currency):
            return _Refusal("INSUFFICIENT_FUND", "PREVIEW_INSUFFICIENT_FUND", _INSUFFICIENT)
        number = state.next_order
        state.next_order += 1
        live_at = at + self._pending_delay
        order = _Order(
            order_id=str(uuid.uuid5(_NAMESPACE, f"order/{number}")),
            request=request,
            created=at,
            live_at=live_at,
            parts=1 if request.kind in _IMMEDIATE else self._fill_parts,
            status="PENDING" if self._pending_delay > 0 else "OPEN",
            taker=crossed,
        )
        if market and state.fill_market_orders:
            order.fills_due = [live_at + self._fill_delay * k for k in range(1, order.parts + 1)]
        state.orders[order.order_id] = order
        state.by_client_id[request.client_order_id] = order.order_id
        self._advance_order(order, max(at, self._now()))
        return order

    def _cancel_orders(self, params: dict[str, Any]) -> Answer:
        ids = params.get("order_ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            return _error(400, "INVALID_ARGUMENT", "order_ids is required")
        results = []
        with self._lock:
            now = self._now()
            for order_id in ids:
                order = self._state.orders.get(order_id)
                reason = "UNKNOWN_CANCEL_ORDER" if order is None else None
                if order is not None and not order.live:
                    reason = _CANCEL_REFUSALS[order.status]
                elif order is not None and order.cancel_at is not None:
                    reason = "DUPLICATE_CANCEL_REQUEST"
                if reason is not None:
                    self._state.refusals[reason] += 1
                    results.append(
                        {"success": False, "failure_reason": reason, "order_id": order_id}
                    )
                    continue
                assert order is not None  # noqa: S101 (narrowing for mypy)
                order.cancel_at = now + self._cancel_delay
                order.cancel_message = "User requested cancel"
                self._advance_order(order, now)
                results.append(
                    {
                        "success": True,
                        "failure_reason": "UNKNOWN_CANCEL_FAILURE_REASON",
                        "order_id": order_id,
                    }
                )
        return _json({"results": results})

    # ------------------------------------------------------------------ engine (lock held)

    def _advance(self) -> None:
        """Let emulator time act: accept due queued orders, then fill, expire, cancel."""
        state = self._state
        now = self._now()
        due = sorted((q for q in state.queue if q.due <= now), key=lambda q: q.due)
        for queued in due:
            state.queue.remove(queued)
            outcome = self._accept(queued.request, queued.due)
            if isinstance(outcome, _Refusal):  # dropped: nobody hears of it but the tally
                state.refusals[outcome.preview or outcome.error] += 1
        for order in list(state.orders.values()):
            self._advance_order(order, now)

    def _advance_order(self, order: _Order, now: float) -> None:  # noqa: C901 (the life cycle)
        if order.frozen or not order.live:
            return
        if order.status == "PENDING" and order.live_at <= now:
            order.status = "OPEN"
        if order.status != "OPEN":
            return
        product = self._state.products[order.product_id]
        request = order.request
        if request.kind in _IMMEDIATE and not order.parts_done:
            if product.status in _TRADING and _crosses(request, product):
                self._fill_part(order, order.live_at, product)
            if order.status == "OPEN":
                order.status = "CANCELLED"
            return
        stop = min((t for t in (order.cancel_at, request.end_time) if t is not None), default=None)
        limit = request.kind != "market_market_ioc"
        if limit and not order.fills_due and _crosses(request, product):
            start = max(order.live_at, min(now, stop) if stop is not None else now)
            left = order.parts - order.parts_done
            order.fills_due = [start + self._fill_delay * k for k in range(1, left + 1)]
        while (
            product.status in _TRADING
            and order.status == "OPEN"
            and order.fills_due
            and order.fills_due[0] <= now
            and (stop is None or order.fills_due[0] < stop)
        ):
            if limit and not _crosses(request, product):
                order.fills_due.clear()
                break
            self._fill_part(order, order.fills_due.pop(0), product)
        if order.status != "OPEN":
            return
        if order.cancel_at is not None and now >= order.cancel_at:
            order.status = "CANCELLED"
            order.fills_due.clear()
        elif request.end_time is not None and now >= request.end_time:
            order.status = "EXPIRED"
            order.fills_due.clear()

    def _fill_part(self, order: _Order, at: float, product: CoinbaseProduct) -> None:
        """Execute the next part of `order` at the price of the moment."""
        request = order.request
        buy = request.side == "BUY"
        price = product.ask if buy else product.bid
        if request.limit_price is not None and not order.taker:
            price = request.limit_price  # a resting maker order trades at its own price
        order.parts_done += 1
        last = order.parts_done >= order.parts
        if request.quote_size is not None:
            target = request.quote_size
            if not last:
                target = (target * order.parts_done / order.parts).quantize(
                    product.quote_increment, rounding=ROUND_DOWN
                )
            size = ((target - order.filled_value) / price).quantize(
                product.base_increment, rounding=ROUND_DOWN
            )
        else:
            assert request.base_size is not None  # noqa: S101 (validated: base or quote sized)
            target = request.base_size
            if not last:
                target = (target * order.parts_done / order.parts).quantize(
                    product.base_increment, rounding=ROUND_DOWN
                )
            size = target - order.filled_size
        if size > 0:
            value = size * price
            sign = 1 if buy else -1
            balances = self._state.balances
            balances[product.base] = balances.get(product.base, Decimal(0)) + sign * size
            balances[product.quote] = balances.get(product.quote, Decimal(0)) - sign * value
            order.filled_size += size
            order.filled_value += value
            order.number_of_fills += 1
            order.last_fill_time = at
            self._state.last[product.product_id] = price
            self._state.last_trade_at[product.product_id] = at
            self._state.next_trade += 1
        if last:
            order.status = "FILLED"
            order.fills_due.clear()

    def _find(self, ref: str) -> _Order | None:
        """An order by order id, else by client order id."""
        orders = self._state.orders
        if ref in orders:
            return orders[ref]
        order_id = self._state.by_client_id.get(ref)
        return None if order_id is None else orders[order_id]

    def _hold(self, order: _Order) -> tuple[str, Decimal]:
        """(currency, amount) a live order holds."""
        request = order.request
        product = self._state.products[order.product_id]
        if request.side == "SELL":
            assert request.base_size is not None  # noqa: S101 (sells are base-sized)
            return product.base, request.base_size - order.filled_size
        if request.quote_size is not None:
            return product.quote, max(request.quote_size - order.filled_value, Decimal(0))
        assert request.base_size is not None  # noqa: S101 (validated: base or quote sized)
        price = request.limit_price if request.limit_price is not None else product.ask
        return product.quote, (request.base_size - order.filled_size) * price

    def _holds(self) -> dict[str, Decimal]:
        held: dict[str, Decimal] = defaultdict(Decimal)
        for order in self._state.orders.values():
            if order.live:
                currency, amount = self._hold(order)
                held[currency] += amount
        return held

    def _free(self, currency: str) -> Decimal:
        return self._state.balances.get(currency, Decimal(0)) - self._holds().get(
            currency, Decimal(0)
        )

    def _payload(self, order: _Order) -> dict[str, Any]:
        """The order as Get Order describes it (lock held)."""
        request = order.request
        in_quote = request.quote_size is not None
        if order.status == "FILLED":
            completion = "100.00"
        else:
            whole = request.quote_size if in_quote else request.base_size
            done = order.filled_value if in_quote else order.filled_size
            share = done / whole * 100 if whole else Decimal(0)
            completion = f"{share:.2f}" if share else "0"
        average = order.filled_value / order.filled_size if order.filled_size else Decimal(0)
        held = self._hold(order)[1] if order.live else Decimal(0)
        return {
            "order_id": order.order_id,
            "product_id": order.product_id,
            "user_id": USER_ID,
            "order_configuration": {request.kind: dict(request.configuration)},
            "side": request.side,
            "client_order_id": request.client_order_id,
            "status": order.status,
            "time_in_force": _TIME_IN_FORCE[request.kind],
            "created_time": _rfc3339(order.created),
            "completion_percentage": completion,
            "filled_size": _num(order.filled_size),
            "average_filled_price": _num(average),
            "fee": "",
            "number_of_fills": str(order.number_of_fills),
            "filled_value": _num(order.filled_value),
            "pending_cancel": order.live and order.cancel_at is not None,
            "size_in_quote": in_quote,
            "total_fees": "0",
            "size_inclusive_of_fees": in_quote,
            "total_value_after_fees": _num(order.filled_value),
            "trigger_status": "INVALID_ORDER_TYPE",
            "order_type": "MARKET" if request.kind == "market_market_ioc" else "LIMIT",
            "reject_reason": "REJECT_REASON_UNSPECIFIED",
            "settled": not order.live,
            "product_type": "SPOT",
            "reject_message": "",
            "cancel_message": order.cancel_message,
            "order_placement_source": "RETAIL_ADVANCED",
            "outstanding_hold_amount": _num(held),
            "is_liquidation": False,
            "last_fill_time": None
            if order.last_fill_time is None
            else _rfc3339(order.last_fill_time, 3),
            "edit_history": [],
            "leverage": "",
            "margin_type": "UNKNOWN_MARGIN_TYPE",
        }


# ---------------------------------------------------------------------- validation


def _validate(  # noqa: C901, PLR0911, PLR0912 (one refusal per rule Coinbase checks)
    params: Mapping[str, Any], products: Mapping[str, CoinbaseProduct], now: float
) -> _NewOrder | _Refusal:
    """What Coinbase checks before an order reaches the engine: the request or a refusal."""
    client_order_id = params.get("client_order_id")
    if not isinstance(client_order_id, str) or not client_order_id:
        return _Refusal("INVALID_ARGUMENT", None, "client_order_id is required", status=400)
    product = products.get(str(params.get("product_id")))
    if product is None:
        return _Refusal("INVALID_PRODUCT_ID", "PREVIEW_INVALID_PRODUCT_ID")
    side = params.get("side")
    if side not in {"BUY", "SELL"}:
        return _Refusal("INVALID_SIDE", "PREVIEW_INVALID_SIDE")
    configuration = params.get("order_configuration")
    unsupported = _Refusal("UNSUPPORTED_ORDER_CONFIGURATION", "PREVIEW_INVALID_ORDER_CONFIG")
    if not isinstance(configuration, dict) or len(configuration) != 1:
        return unsupported
    ((kind, settings),) = configuration.items()
    if kind not in ORDER_CONFIGURATIONS or not isinstance(settings, dict):
        return unsupported
    sizes = {key: settings.get(key) for key in ("base_size", "quote_size", "limit_price")}
    parsed = {key: _decimal(value) for key, value in sizes.items() if value is not None}
    if any(value is None or value <= 0 for value in parsed.values()):
        return _Refusal("UNKNOWN_FAILURE_REASON", "PREVIEW_NON_NUMERIC_ORDER_SIZE")
    base, quote, limit = (
        parsed.get("base_size"),
        parsed.get("quote_size"),
        parsed.get("limit_price"),
    )
    market = kind == "market_market_ioc"
    if (base is None) == (quote is None) or (market and limit is not None):
        return unsupported
    if quote is not None and (side == "SELL" or not market):
        return unsupported  # quote-sized: market buys only
    if not market and limit is None:
        return _Refusal("INVALID_LIMIT_PRICE", "PREVIEW_INVALID_LIMIT_PRICE")
    end_time: float | None = None
    if kind == "limit_limit_gtd":
        end_time = _parse_time(settings.get("end_time"))
        if end_time is None:
            return _Refusal(
                "GTD_ORDERS_MUST_HAVE_END_TIME", "PREVIEW_GTD_ORDERS_MUST_HAVE_END_TIME"
            )
        if end_time <= now:
            return _Refusal("END_TIME_IS_IN_THE_PAST", "PREVIEW_END_TIME_IS_IN_THE_PAST")
    refusal = _check_sizes(product, base, quote, limit)
    if refusal is not None:
        return refusal
    return _NewOrder(
        params=dict(params),
        client_order_id=client_order_id,
        product_id=product.product_id,
        side=side,
        kind=kind,
        configuration=dict(settings),
        base_size=base,
        quote_size=quote,
        limit_price=limit,
        post_only=settings.get("post_only") is True,
        end_time=end_time,
    )


def _check_sizes(  # noqa: C901, PLR0911 (one refusal per product rule)
    product: CoinbaseProduct, base: Decimal | None, quote: Decimal | None, limit: Decimal | None
) -> _Refusal | None:
    """The product's increments and minimums (Coinbase rejects off-grid values, never rounds)."""
    if base is not None:
        if base % product.base_increment:
            return _Refusal("INVALID_SIZE_PRECISION", "PREVIEW_INVALID_SIZE_PRECISION")
        if base < product.base_min_size:
            return _Refusal("UNKNOWN_FAILURE_REASON", "PREVIEW_INVALID_BASE_SIZE_TOO_SMALL")
        if base > product.base_max_size:
            return _Refusal("UNKNOWN_FAILURE_REASON", "PREVIEW_INVALID_BASE_SIZE_TOO_LARGE")
    if quote is not None:
        if quote % product.quote_increment:
            return _Refusal("UNKNOWN_FAILURE_REASON", "PREVIEW_INVALID_QUOTE_SIZE_PRECISION")
        if quote < product.quote_min_size:
            return _Refusal("UNKNOWN_FAILURE_REASON", "PREVIEW_INVALID_QUOTE_SIZE_TOO_SMALL")
        if quote > product.quote_max_size:
            return _Refusal("UNKNOWN_FAILURE_REASON", "PREVIEW_INVALID_QUOTE_SIZE_TOO_LARGE")
    if limit is not None:
        if limit % product.price_increment:
            return _Refusal("INVALID_PRICE_PRECISION", "PREVIEW_INVALID_PRICE_PRECISION")
        if base is not None and base * limit < product.quote_min_size:
            return _Refusal("UNKNOWN_FAILURE_REASON", "PREVIEW_INVALID_QUOTE_SIZE_TOO_SMALL")
    return None


def _crosses(request: _NewOrder, product: CoinbaseProduct) -> bool:
    """Whether the order can trade against the book now (a market order always can)."""
    if request.limit_price is None:
        return True
    if request.side == "BUY":
        return product.ask <= request.limit_price
    return product.bid >= request.limit_price


def _needs(request: _NewOrder, product: CoinbaseProduct) -> tuple[str, Decimal]:
    """(currency, amount) the whole order would hold."""
    if request.side == "SELL":
        assert request.base_size is not None  # noqa: S101 (sells are base-sized)
        return product.base, request.base_size
    if request.quote_size is not None:
        return product.quote, request.quote_size
    assert request.base_size is not None  # noqa: S101 (validated: base or quote sized)
    price = request.limit_price if request.limit_price is not None else product.ask
    return product.quote, request.base_size * price


def _created(order: _Order) -> dict[str, Any]:
    request = order.request
    return {
        "success": True,
        "failure_reason": "UNKNOWN_FAILURE_REASON",
        "order_id": order.order_id,
        "success_response": {
            "order_id": order.order_id,
            "product_id": request.product_id,
            "side": request.side,
            "client_order_id": request.client_order_id,
        },
        "order_configuration": {request.kind: dict(request.configuration)},
    }


# ---------------------------------------------------------------------- routing and parsing


def _match(method: str, path: str) -> tuple[_Route, dict[str, str]] | None:
    if path.startswith("/api/v3/"):
        api, rest = "v3", path.removeprefix("/api/v3/")
    elif path.startswith("/v2/"):
        api, rest = "v2", path.removeprefix("/v2/")
    else:
        return None
    segments = rest.strip("/").split("/")
    for route in _ROUTES:
        if route.api != api or route.method != method:
            continue
        pattern = route.template.split("/")
        if len(pattern) != len(segments):
            continue
        found: dict[str, str] = {}
        for want, got in zip(pattern, segments, strict=True):
            if want.startswith("{"):
                found[want.strip("{}")] = unquote(got)
            elif want != got:
                break
        else:
            return route, found
    return None


def _params(query: str, body: bytes, path_params: Mapping[str, str]) -> dict[str, Any] | None:
    """Query (repeated keys become lists), path parameters and JSON body, or None if unparsable."""
    params: dict[str, Any] = {
        key: values[0] if len(values) == 1 else values
        for key, values in parse_qs(query, keep_blank_values=True).items()
    }
    if body.strip():
        try:
            document = json.loads(body)
        except ValueError:
            return None
        if not isinstance(document, dict):
            return None
        params.update(document)
    params.update(path_params)
    return params


def _strings(params: Mapping[str, Any], key: str) -> list[str]:
    value = params.get(key)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(item) for item in value]
    return []


def _int(value: object, default: int) -> int | None:
    if value is None or value == "":
        return default
    try:
        return int(str(value))
    except ValueError:
        return None


def _decimal(value: object) -> Decimal | None:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _parse_time(value: object) -> float | None:
    """Epoch seconds of an RFC 3339 date-time with an offset (``2021-05-31T09:59:59.000Z``)."""
    if not isinstance(value, str) or "T" not in value.upper():
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return None if moment.tzinfo is None else moment.timestamp()


def _auth_scheme(api_key: str, secret: str) -> str:
    """The signer ccxt 4.5.90 picks for these credentials (see ``coinbase.sign``)."""
    if len(secret) == 88 or secret.endswith("="):  # noqa: PLR2004 (a base64 Ed25519 key pair)
        return "eddsa"
    if "organizations/" in api_key or secret.startswith("-----BEGIN"):
        return "es256"
    return "hmac"


def _jwt_verifier(scheme: str, secret: str) -> Callable[[bytes, bytes], bool]:
    """A check of JWT signatures made with `secret` (an EC PEM or a base64 Ed25519 key)."""
    # Only JWT credentials need it; ccxt itself requires `cryptography`.
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.utils import (  # noqa: PLC0415
        encode_dss_signature,
    )

    if scheme == "eddsa":
        seed = base64.b64decode(secret)[:32]
        edwards = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key()

        def verify_eddsa(message: bytes, signature: bytes) -> bool:
            try:
                edwards.verify(signature, message)
            except InvalidSignature:
                return False
            return True

        return verify_eddsa
    key = serialization.load_pem_private_key(secret.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("a CDP key secret must be a P-256 EC private key in PEM")
    public = key.public_key()

    def verify_es256(message: bytes, signature: bytes) -> bool:
        if len(signature) != 64:  # noqa: PLR2004 (r and s, 32 bytes each)
            return False
        r, s = int.from_bytes(signature[:32]), int.from_bytes(signature[32:])
        try:
            public.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    return verify_es256


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _uri_names(uri: object, method: str, path: str) -> bool:
    """Whether a JWT ``uri`` claim (``"GET api.coinbase.com/api/v3/..."``) names this request."""
    if not isinstance(uri, str):
        return False
    verb, _, target = uri.partition(" ")
    target = target.split("://", 1)[-1]  # ccxt strips only "https://"
    slash = target.find("/")
    return verb == method and slash >= 0 and target[slash:].split("?")[0] == path


# ---------------------------------------------------------------------- faults


def _check_fault(fault: str) -> None:
    """Refuse a fault string the emulator would not understand (so a typo fails in the test)."""
    kind, _, argument = fault.partition(":")
    if kind == "omit":
        if not argument:
            raise ValueError("omit needs the keys to drop: 'omit:BTC,filled_size'")
    elif kind == "accept_then":
        _check_answer(argument)
    elif kind == "delayed_accept":
        _split_delayed(argument, DELAYED_ANSWER)
    else:
        _check_answer(fault)


def _check_answer(fault: str) -> None:
    kind, _, argument = fault.partition(":")
    if kind == "slow":
        seconds, _, rest = argument.partition(":")
        if not float(seconds) >= 0:
            raise ValueError(f"slow needs a delay in seconds, not {seconds!r}")
        if rest:
            _check_answer(rest)
    elif kind == "http":
        int(argument)
    elif kind in {"error", "errors"}:
        status, _, code = argument.partition(":")
        if not code:
            raise ValueError(f"{kind} needs a status and a code: '{kind}:429:rate_limit_exceeded'")
        int(status)
    elif fault not in {"malformed", "empty_result", "unauthorized"}:
        raise ValueError(f"not a Coinbase emulator fault: {fault!r}")


def _split_delayed(argument: str, default: str) -> tuple[float, str]:
    """``"1.5"`` or ``"1.5:<answer fault>"`` -> (1.5, answer)."""
    delay, _, answer = argument.partition(":")
    seconds = float(delay)
    if not seconds >= 0:
        raise ValueError(f"delayed_accept needs a delay in seconds, not {delay!r}")
    answer = answer or default
    _check_answer(answer)
    return seconds, answer


def _plain_answer(fault: str) -> Answer:
    """An answer fault that needs no endpoint: http, error(s), unauthorized, malformed."""
    kind, _, argument = fault.partition(":")
    if kind == "http":
        return _html(int(argument))
    if kind in {"error", "errors"}:
        status, _, rest = argument.partition(":")
        code, _, message = rest.partition(":")
        if kind == "errors":
            return _v2_error(int(status), code, message or code)
        return _error(int(status), code, message or code)
    if kind == "unauthorized":
        return _unauthorized("v3", "injected")
    return 200, b'{"success": true, "unterminated'  # "malformed"


def _omit(payload: bytes, keys: set[str]) -> bytes:
    """Drop list entries identified by `keys` and keys named in `keys` from a JSON answer."""
    body = json.loads(payload)  # every endpoint answers a JSON object
    for key in keys:
        body.pop(key, None)
    for value in body.values():
        if isinstance(value, list):
            value[:] = [e for e in value if not (isinstance(e, dict) and _identity(e) & keys)]
            entries = [e for e in value if isinstance(e, dict)]
        else:
            entries = [value] if isinstance(value, dict) else []
        for entry in entries:
            for key in keys:
                entry.pop(key, None)
    return json.dumps(body).encode()


def _identity(entry: Mapping[str, Any]) -> set[str]:
    names = set()
    for key in ("uuid", "id", "currency", "product_id", "order_id", "client_order_id"):
        value = entry.get(key)
        if isinstance(value, dict):
            value = value.get("code")
        if value is not None:
            names.add(str(value))
    return names


# ---------------------------------------------------------------------- answers


def _json(body: object) -> Answer:
    return 200, json.dumps(body).encode()


def _html(code: int) -> Answer:
    return code, f"<html><body><h1>{code}</h1>upstream trouble</body></html>".encode()


def _error(status: int, code: str, message: str) -> Answer:
    """Advanced Trade's error body (``grpc-gateway``): error, error_details, message."""
    body = {"error": code, "error_details": message, "message": message}
    return status, json.dumps(body).encode()


def _v2_error(status: int, code: str, message: str) -> Answer:
    return status, json.dumps({"errors": [{"id": code, "message": message}]}).encode()


def _unauthorized(api: str, problem: str) -> Answer:
    if api == "v2":
        return _v2_error(401, "authentication_error", problem)
    return 401, b"Unauthorized\n"  # what Advanced Trade answers a bad key or signature


def _not_found(api: str) -> Answer:
    if api == "v2":
        return _v2_error(404, "not_found", "Not found")
    return _error(404, "NOT_FOUND", "Not Found")


def _missing_product(product_id: str) -> Answer:
    return _error(404, "NOT_FOUND", f"ProductID {product_id} could not be found")


def _check_product_status(status: str) -> None:
    if status not in PRODUCT_STATUSES:
        raise ValueError(
            f"not a Coinbase product status: {status!r} (one of {sorted(PRODUCT_STATUSES)})"
        )


def _account_uuid(currency: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"account/{currency}"))


def _mid(bid: Decimal, ask: Decimal, tick: Decimal) -> Decimal:
    """The last trade price a book top implies: its middle, on the price grid."""
    return ((bid + ask) / 2).quantize(tick, rounding=ROUND_DOWN)


def _num(value: Decimal) -> str:
    """A decimal as Coinbase prints it: plain digits, no exponent, no trailing zeros."""
    return format(value.normalize(), "f")


def _rfc3339(epoch: float, digits: int = 6) -> str:
    """``2023-11-26T10:19:47.423220Z`` (``digits`` of the second's fraction; 0: none)."""
    moment = datetime.fromtimestamp(epoch, tz=UTC)
    whole = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if not digits:
        return f"{whole}Z"
    return f"{whole}.{moment.microsecond:06d}"[: len(whole) + 1 + digits] + "Z"


@contextmanager
def running_coinbase(**kwargs: Any) -> Iterator[CoinbaseEmulator]:
    """Run a :class:`CoinbaseEmulator` for the duration of a ``with`` block."""
    emulator = CoinbaseEmulator(**kwargs).start()
    try:
        yield emulator
    finally:
        emulator.stop()


def main(argv: list[str] | None = None) -> int:
    """Serve the emulator until SIGTERM; print its URL first (see the module docstring)."""
    import argparse  # noqa: PLC0415 (only the command line needs it)

    parser = argparse.ArgumentParser(description="A Coinbase Advanced Trade emulator on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--admin", action="store_true", help="serve /admin/down|up|stats")
    parser.add_argument("--fill-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    emulator = CoinbaseEmulator(
        fill_delay=args.fill_delay, record_requests=False, admin=args.admin
    ).start(port=args.port)
    return serve_until_terminated(emulator.url, emulator.stop)


if __name__ == "__main__":
    sys.exit(main())
