"""Every Kraken error string we know, classified by what it says about the request.

Why this table exists: ccxt's own mapping is too coarse to decide whether an order may exist.
It leaves strings such as ``EService:Deadline elapsed`` (a timeout after which Kraken may still
place the order) and ``EOrder:Duplicate order`` (proof that the order exists) as a bare
``ExchangeError``, and it reports ``EService:Market in cancel_only mode`` as ``OnMaintenance``,
a *network* error, although Kraken has definitely refused that order. The Kraken string
decides, so every one we know is classified here, deliberately, with its reason and source.

How a message is read (:func:`classify_kraken_error`):

* a Kraken code is ``E`` + category + ``:`` + text (``EOrder:Insufficient funds``), found
  anywhere in the message, for instance in ccxt's ``kraken {"error":["..."]}``;
* the longest known code wins, and Kraken's detail after it keeps its class
  (``EGeneral:Invalid arguments:volume``, ``EGeneral:Internal error:5``);
* a code of Kraken's shape that is not in the table is :attr:`KrakenErrorClass.UNKNOWN`: a
  write is unresolved (look the order up), a read is a failure. A misspelt or new string
  therefore fails closed instead of falling through to a guess;
* several codes in one message: the most fail-closed class wins (:data:`FAIL_CLOSED_ORDER`);
* no Kraken code at all: ``None`` (let the exception type decide).

ccxt's ``broad`` fragments (``:Invalid nonce``) are in the table too but count only where no
code surrounds them; ccxt.pro's plain-English websocket subscription errors carry no code and
are listed, unclassified, in :data:`UNCLASSIFIED_CCXT_STRINGS`.

Sources, as tagged in the table's comments:

* ``rest``: ccxt 4.5.90 ``ccxt/kraken.py``, ``describe()['exceptions']['exact']``;
* ``broad``: the same, ``['broad']`` (a fragment ccxt finds anywhere in the string);
* ``ws``: ccxt 4.5.90 ``ccxt/pro/kraken.py``, ``describe()['exceptions']['ws']``;
* ``spot``: Kraken, https://docs.kraken.com/api/docs/guides/spot-errors;
* ``guide``: Kraken, https://docs.kraken.com/exchange/guides/general/errors;
* ``limits``: Kraken, https://docs.kraken.com/exchange/guides/rest/ratelimits;
* ``support``: Kraken, https://support.kraken.com/hc/en-us/articles/360001491786 (its
  "API error messages" / "API Error Codes" article);
* ``add``: Kraken's former AddOrder reference (www.kraken.com/features/api), whose error list
  carried a description in parentheses, copied verbatim into ccxt's ``ws`` table;
* ``sdk``: python-kraken-sdk's exception table (``kraken/exceptions``), a client library;
* ``notes``: brokerguard's reference notes (Kraken answers a ``cl_ord_id`` reused among open
  orders with an error); no Kraken document read spells this string.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

__all__ = [
    "FAIL_CLOSED_ORDER",
    "KRAKEN_ERRORS",
    "UNCLASSIFIED_CCXT_STRINGS",
    "WRITE_MAY_HAVE_LANDED",
    "WRITE_NOT_PROCESSED",
    "KrakenErrorClass",
    "classify_kraken_error",
    "find_kraken_errors",
]


class KrakenErrorClass(StrEnum):
    """What a Kraken error string says about the request that received it."""

    TRANSIENT = "transient"
    """The venue may or may not have processed it: retry reads, look writes up."""
    RATE_LIMITED = "rate_limited"
    """Refused at the door for throttling: nothing was processed."""
    NONCE = "nonce"
    """Refused at authentication (invalid nonce): nothing was processed."""
    REJECTED = "rejected"
    """A definite business refusal: nothing was placed, do not retry."""
    FATAL = "fatal"
    """Key, permission or account: trading must stop."""
    EXISTS = "exists"
    """The venue says the order exists (``EOrder:Duplicate order``): evidence that it exists."""
    NOT_FOUND = "not_found"
    """The venue does not know the order or id (``EOrder:Unknown order`` on a lookup)."""
    UNKNOWN = "unknown"
    """A Kraken-shaped string we have never seen: writes are unresolved, reads are failures."""


_C = KrakenErrorClass

WRITE_MAY_HAVE_LANDED: frozenset[KrakenErrorClass] = frozenset(
    {_C.TRANSIENT, _C.UNKNOWN, _C.EXISTS}
)
"""Classes after which a write (AddOrder, CancelOrder) may have taken effect: look it up.

Never resend blindly after one of these: look the order up first. ``EXISTS`` is the strong
case: Kraken itself says the order is there.
"""

WRITE_NOT_PROCESSED: frozenset[KrakenErrorClass] = frozenset(
    {_C.RATE_LIMITED, _C.NONCE, _C.REJECTED, _C.FATAL, _C.NOT_FOUND}
)
"""Classes after which the request itself certainly did nothing.

``NOT_FOUND`` belongs here for *this* request (a cancel or lookup of an id Kraken does not
know did nothing), but it is not proof that an order sent earlier will never appear: Kraken
may still accept an order seconds after a timeout, and ``cl_ord_id`` is unique only among
open orders.
"""

FAIL_CLOSED_ORDER: tuple[KrakenErrorClass, ...] = (
    _C.EXISTS,
    _C.UNKNOWN,
    _C.TRANSIENT,
    _C.FATAL,
    _C.RATE_LIMITED,
    _C.NONCE,
    _C.REJECTED,
    _C.NOT_FOUND,
)
"""Most fail-closed first: the class chosen when one message carries several codes.

A class that says a write may have landed beats every class that says it did not (reading a
landed order as refused is the mistake that opens an unintended position); among the rest,
stopping beats slowing, slowing beats refusing, and ``NOT_FOUND`` comes last because it is the
only class a caller might read as evidence of absence.
"""

_RANK = {cls: rank for rank, cls in enumerate(FAIL_CLOSED_ORDER)}

_TABLE: dict[str, KrakenErrorClass] = {
    # ----------------------------------------------------------------- TRANSIENT
    # Matching engine or API offline; an order may still be accepted later [rest ws spot support]
    "EService:Unavailable": _C.TRANSIENT,
    # Overloaded; like Unavailable, the order may still be accepted later [rest support]
    "EService:Busy": _C.TRANSIENT,
    # Timed out; Kraken: "the order may have been placed despite the timeout" [ws spot guide]
    "EService:Deadline elapsed": _C.TRANSIENT,
    # Server-side failure after the request was read; Kraken says retry with backoff [rest spot]
    "EGeneral:Internal error": _C.TRANSIENT,
    # Kraken's docs placeholder for "Internal error:<code>", copied literally by ccxt [ws spot]
    "EGeneral:Internal error[:<code>]": _C.TRANSIENT,
    # Database failure inside Kraken: whether the write committed is unknown [rest]
    "EDatabase:Internal error": _C.TRANSIENT,
    # ccxt's transcription of the same, space and note included [ws]
    "EDatabase: Internal error (to be deprecated)": _C.TRANSIENT,
    # ------------------------------------------------------------- RATE_LIMITED
    # REST call counter above the tier's maximum: refused before processing [rest support limits]
    "EAPI:Rate limit exceeded": _C.RATE_LIMITED,
    # AddOrder/CancelOrder counter exceeded: "back off and reduce order frequency" [rest ws spot]
    "EOrder:Rate limit exceeded": _C.RATE_LIMITED,
    # Master plus subaccounts together over the order rate limit [spot]
    "EOrder:Domain rate limit exceeded": _C.RATE_LIMITED,
    # Throttled before processing [rest]
    "EGeneral:Too many requests": _C.RATE_LIMITED,
    # About 15 minutes locked after repeated bad keys, nonces or signatures [rest spot support]
    "EGeneral:Temporary lockout": _C.RATE_LIMITED,
    # Too many authentication attempts [ws spot]
    "EAuth:Rate limit exceeded": _C.RATE_LIMITED,
    # Too many authentication requests [ws spot]
    "EAuth:Too many requests": _C.RATE_LIMITED,
    # Too many concurrent requests, "try again after <timestamp>" [limits]
    "EService:Throttled": _C.RATE_LIMITED,
    # The same as Kraken's rate-limit page spells it, with a space [limits]
    "EService: Throttled": _C.RATE_LIMITED,
    # ccxt's fragment for every "...:Rate limit exceeded" [broad]
    ":Rate limit exceeded": _C.RATE_LIMITED,
    # -------------------------------------------------------------------- NONCE
    # Nonce not above the last one accepted for the key: refused at authentication [rest spot]
    "EAPI:Invalid nonce": _C.NONCE,
    # ccxt's fragment for the same [broad]
    ":Invalid nonce": _C.NONCE,
    # -------------------------------------------------------------------- FATAL
    # API-Key header missing, malformed, deleted or revoked [rest spot guide support]
    "EAPI:Invalid key": _C.FATAL,
    # API-Sign does not match: wrong secret or signing bug; retrying cannot help [spot guide]
    "EAPI:Invalid signature": _C.FATAL,
    # The key lacks the permission this call needs [rest spot guide support]
    "EGeneral:Permission denied": _C.FATAL,
    # The account lacks the permission [ws spot]
    "EAccount:Invalid permissions": _C.FATAL,
    # Account suspended for security or compliance [ws spot]
    "EAuth:Account temporary disabled": _C.FATAL,
    # Account not verified [ws spot]
    "EAuth:Account unconfirmed": _C.FATAL,
    # Websocket session token invalid; ccxt: AuthenticationError [rest ws]
    "ESession:Invalid session": _C.FATAL,
    # Account locked; ccxt: AccountSuspended [rest]
    "ETrade:User Locked": _C.FATAL,
    # Account locked for trading [support]
    "ETrade:Locked": _C.FATAL,
    # The feature is disabled for this key or account; no order can change that [support]
    "EAPI:Feature disabled": _C.FATAL,
    # An account-level agreement must be accepted by a human before any order [support add]
    "EOrder:Trading agreement required": _C.FATAL,
    # ----------------------------------------------------------------- REJECTED
    # Malformed, incorrect or ambiguous payload [rest ws spot support]
    "EGeneral:Invalid arguments": _C.REJECTED,
    # Bad price argument [rest]
    "EGeneral:Invalid arguments:price": _C.REJECTED,
    # Bad volume argument; also ccxt's broad fragment [broad]
    "EGeneral:Invalid arguments:volume": _C.REJECTED,
    # Volume-in-quote flag refused; also ccxt's broad fragment [broad]
    "EGeneral:Invalid arguments:viqc": _C.REJECTED,
    # Index price unavailable for this trigger order on this pair [spot]
    "EGeneral:Invalid arguments:Index unavailable": _C.REJECTED,
    # Endpoint does not exist (a bad URL): nothing ran [support sdk]
    "EGeneral:Unknown method": _C.REJECTED,
    # Malformed request [sdk]
    "EAPI:Bad request": _C.REJECTED,
    # Structurally invalid trade request [ws spot add]
    "ETrade:Invalid request": _C.REJECTED,
    # Pair does not exist [rest]
    "EQuery:Invalid asset pair": _C.REJECTED,
    # Pair not recognised [support sdk]
    "EQuery:Unknown asset pair": _C.REJECTED,
    # Asset not recognised [rest sdk]
    "EQuery:Unknown asset": _C.REJECTED,
    # Not enough balance for the order [rest spot guide support]
    "EOrder:Insufficient funds": _C.REJECTED,
    # The same with the old AddOrder reference's description appended [ws add]
    "EOrder:Insufficient funds (insufficient user funds)": _C.REJECTED,
    # Kraken's margin pool cannot fund this margin order [spot support]
    "EOrder:Insufficient margin": _C.REJECTED,
    # The same with the old description appended [ws add]
    "EOrder:Insufficient margin (exchange does not have sufficient funds to allow margin trading)": (  # noqa: E501 (ccxt's key, verbatim)
        _C.REJECTED
    ),
    # Volume below the pair's ordermin [rest spot guide support]
    "EOrder:Order minimum not met": _C.REJECTED,
    # The same with the old description appended [ws add]
    "EOrder:Order minimum not met (volume too low)": _C.REJECTED,
    # Price times volume below the pair's costmin [spot guide]
    "EOrder:Cost minimum not met": _C.REJECTED,
    # Price not a multiple of the pair's tick size [spot]
    "EOrder:Tick size check failed": _C.REJECTED,
    # A post-only limit order that would take liquidity: refused whole, nothing rests
    # [clients: NautilusTrader, python-kraken-sdk; not in Kraken's error table]
    "EOrder:Post only order": _C.REJECTED,
    # Zero, negative or otherwise invalid price [ws spot sdk]
    "EOrder:Invalid price": _C.REJECTED,
    # The same with Kraken's detail [rest]
    "EOrder:Invalid price:Invalid price argument": _C.REJECTED,
    # User or tier not eligible for margin trading [ws spot support]
    "EOrder:Cannot open position": _C.REJECTED,
    # User or tier not eligible for margin trading [ws spot support]
    "EOrder:Cannot open opposing position": _C.REJECTED,
    # Order would exceed the margin allowance [ws spot support]
    "EOrder:Margin allowance exceeded": _C.REJECTED,
    # Not enough equity or collateral [ws spot]
    "EOrder:Margin level too low": _C.REJECTED,
    # Order would exceed the pair's maximum margin position [spot sdk]
    "EOrder:Margin position size exceeded": _C.REJECTED,
    # The same, old description appended ("this" turned into "self" by ccxt's transpiler) [ws]
    "EOrder:Margin position size exceeded (client would exceed the maximum position size for self pair)": (  # noqa: E501 (ccxt's key, verbatim)
        _C.REJECTED
    ),
    # Too many open orders: refused until some close, so not a throttle [ws spot support]
    "EOrder:Orders limit exceeded": _C.REJECTED,
    # Too many open margin positions [ws spot support]
    "EOrder:Positions limit exceeded": _C.REJECTED,
    # Too many open trigger orders [ws spot add]
    "EOrder:Scheduled orders limit exceeded": _C.REJECTED,
    # Names a margin position, not an order: never evidence about an order's absence [ws spot]
    "EOrder:Unknown position": _C.REJECTED,
    # Reduce-only order refused [spot]
    "EOrder:Reduce only:Non-PC": _C.REJECTED,
    # Reduce-only order on a market with no open position [spot]
    "EOrder:Reduce only:No position exists": _C.REJECTED,
    # A cancel is already pending on the order: this request added nothing [broad, as EOrder:]
    "EOrder:Cancel pending": _C.REJECTED,
    # The market only accepts cancels: this order was definitely refused (not an outage)
    # [rest ws spot guide]
    "EService:Market in cancel_only mode": _C.REJECTED,
    # The market only accepts post-only limit orders: this order was refused [rest ws spot]
    "EService:Market in post_only mode": _C.REJECTED,
    # The market only accepts limit orders: a market order is refused [ws]
    "EService:Market in limit_only mode": _C.REJECTED,
    # Canadian net purchase limit exceeded: this purchase refused [spot]
    "EBM:limit exceeded:CAL": _C.REJECTED,
    # Withdrawal: unknown withdrawal key [rest sdk]
    "EFunding:Unknown withdraw key": _C.REJECTED,
    # Funding: invalid amount [rest sdk]
    "EFunding:Invalid amount": _C.REJECTED,
    # Funding: invalid or missing method [rest spot]
    "EFunding:No funding method": _C.REJECTED,
    # Funding: unknown asset [rest sdk]
    "EFunding:Unknown asset": _C.REJECTED,
    # Withdrawal fee above the max_fee given [spot]
    "EFunding:Max fee exceeded": _C.REJECTED,
    # Too many unused deposit addresses [sdk]
    "EFunding:Too many addresses": _C.REJECTED,
    # Funding reference id malformed: names a transfer, not an order [sdk]
    "EFunding:Invalid reference id": _C.REJECTED,
    # Funding reference id unknown: names a transfer, not an order [sdk]
    "EFunding:Unknown reference id": _C.REJECTED,
    # Staking method invalid [sdk]
    "EFunding:Invalid staking method": _C.REJECTED,
    # ccxt's fragments, standalone; "IInsufficient" is ccxt's typo [broad]
    ":Invalid arguments:volume": _C.REJECTED,
    ":Invalid arguments:viqc": _C.REJECTED,
    ":IInsufficient funds": _C.REJECTED,
    ":Cancel pending": _C.REJECTED,
    # Standalone the fragment is ambiguous: a refusal, never evidence of absence [broad]
    ":Invalid order": _C.REJECTED,
    # ------------------------------------------------------------------- EXISTS
    # A cl_ord_id reused among open orders: the order exists [notes]
    "EOrder:Duplicate order": _C.EXISTS,
    # Reduce-only order that would flip: it matched in part, the rest cancelled [spot]
    "EOrder:Reduce only:Position is closed": _C.EXISTS,
    # ---------------------------------------------------------------- NOT_FOUND
    # The txid or client id is not known (CancelOrder, QueryOrders) [rest ws sdk]
    "EOrder:Unknown order": _C.NOT_FOUND,
    # A txid Kraken cannot find or parse (QueryOrders, CancelOrder) [ws sdk]
    "EOrder:Invalid order": _C.NOT_FOUND,
}

KRAKEN_ERRORS: Mapping[str, KrakenErrorClass] = MappingProxyType(_TABLE)
"""Every known Kraken error string (and ccxt's ``:``-fragments) and its class."""

UNCLASSIFIED_CCXT_STRINGS: frozenset[str] = frozenset(
    {
        # ccxt.pro's websocket-v1 subscription errors: plain English with no Kraken code, sent
        # only for market-data subscriptions. Matching them in free text would turn unrelated
        # messages into definite refusals, so they are left to the exception type.
        "Event(s) not found",
        "Already subscribed",
        "Currency pair not in ISO 4217-A3 format",
        "Currency pair not supported",
        "Malformed request",
        "Pair field must be an array",
        "Pair field unsupported for self subscription type",
        "Pair(s) not found",
        "Subscription book depth must be an integer",
        "Subscription depth not supported",
        "Subscription field must be an object",
        "Subscription name invalid",
        "Subscription object unsupported field",
        "Subscription ohlc interval must be an integer",
        "Subscription ohlc interval not supported",
        "Subscription ohlc requires interval",
    }
)
"""Strings in ccxt's Kraken tables deliberately left out of :data:`KRAKEN_ERRORS`."""

# Where a Kraken code may start: "E", a category, ":" (not glued to a preceding word).
_CODE_START = re.compile(r"(?<!\w)E[A-Z][A-Za-z]{0,40}:")
# A code we do not know: its text starts with a letter (Kraken's shape); it runs to a delimiter.
_UNKNOWN_CODE = re.compile(r"E[A-Z][A-Za-z]{0,40}: ?[A-Za-z][^\"'\\\[\]{},;\n\r\t]{0,200}")
_TOKEN_END = re.compile(r"[\"'\\\[\]{},;\n\r\t]|$")
_MAX_CODE_CHARS = 250  # how far a code's text may run: keeps the scan linear in the message


def _index_codes() -> dict[str, tuple[str, ...]]:
    by_category: dict[str, list[str]] = {}
    for key in _TABLE:
        category = _CODE_START.match(key)
        if category is not None:
            by_category.setdefault(category.group(), []).append(key)
    return {c: tuple(sorted(keys, key=len, reverse=True)) for c, keys in by_category.items()}


_CODES_BY_CATEGORY = _index_codes()  # "EOrder:" -> its codes, longest first
_FRAGMENTS = tuple(k for k in _TABLE if k.startswith(":"))


def _ends_at_boundary(message: str, end: int) -> bool:
    """True if no word character follows position `end` (a code is not part of a longer word)."""
    return end == len(message) or not (message[end].isalnum() or message[end] == "_")


def _known_code_at(message: str, start: int, category: str) -> str | None:
    for code in _CODES_BY_CATEGORY.get(category, ()):
        if message.startswith(code, start) and _ends_at_boundary(message, start + len(code)):
            return code
    return None


def find_kraken_errors(message: str) -> list[tuple[str, KrakenErrorClass]]:
    """Return every Kraken code in `message`, in order, with its class.

    A known code is reported as its table key (without Kraken's detail suffix); a code of
    Kraken's shape that the table does not know is reported as found (its first characters)
    with :attr:`KrakenErrorClass.UNKNOWN`. ccxt's ``:``-fragments count only where no code
    surrounds them (a code runs to the next quote, bracket, brace, comma or line break).
    """
    found: list[tuple[int, str, KrakenErrorClass]] = []
    spans: list[list[int]] = []  # where codes run, merged; starts ascend as finditer does
    for match in _CODE_START.finditer(message):
        start = match.start()
        code = _known_code_at(message, start, match.group())
        if code is not None:
            found.append((start, code, _TABLE[code]))
        else:
            unknown = _UNKNOWN_CODE.match(message, start)
            if unknown is None:
                continue
            code = unknown.group().rstrip()
            found.append((start, code, _C.UNKNOWN))
        limit = min(len(message), start + len(code) + _MAX_CODE_CHARS)
        token_end = _TOKEN_END.search(message, start + len(code), limit)
        end = token_end.start() if token_end else limit
        if spans and start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    starts = [lo for lo, _ in spans]
    for fragment in _FRAGMENTS:
        at = message.find(fragment)
        while at >= 0:
            span = bisect_right(starts, at) - 1
            inside = span >= 0 and at < spans[span][1]
            if not inside and _ends_at_boundary(message, at + len(fragment)):
                found.append((at, fragment, _TABLE[fragment]))
            at = message.find(fragment, at + 1)
    found.sort(key=lambda item: item[0])
    return [(code, cls) for _, code, cls in found]


def classify_kraken_error(message: str) -> KrakenErrorClass | None:
    """Classify the Kraken error strings in `message`; ``None`` when it carries none.

    Unknown Kraken-shaped codes are :attr:`KrakenErrorClass.UNKNOWN`; with several codes the
    most fail-closed class wins (:data:`FAIL_CLOSED_ORDER`).
    """
    classes = {cls for _, cls in find_kraken_errors(message)}
    if not classes:
        return None
    return min(classes, key=_RANK.__getitem__)
