"""The Kraken error table: complete against ccxt's tables, read the way ccxt formats errors."""

from __future__ import annotations

import json

import ccxt
import ccxt.pro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from brokerguard.brokers.kraken_errors import (
    FAIL_CLOSED_ORDER,
    KRAKEN_ERRORS,
    UNCLASSIFIED_CCXT_STRINGS,
    WRITE_MAY_HAVE_LANDED,
    WRITE_NOT_PROCESSED,
    KrakenErrorClass,
    classify_kraken_error,
    find_kraken_errors,
)

C = KrakenErrorClass
KNOWN = sorted(KRAKEN_ERRORS)


def ccxt_tables() -> dict[str, set[str]]:
    rest = ccxt.kraken().describe()["exceptions"]
    pro = ccxt.pro.kraken().describe()["exceptions"]
    return {
        "rest exact": set(rest["exact"]),
        "rest broad": set(rest["broad"]),
        "pro exact": set(pro["exact"]),
        "pro broad": set(pro["broad"]),
        "ws exact": set(pro["ws"]["exact"]),
        "ws broad": set(pro["ws"]["broad"]),
    }


def ccxt_error(*errors: str) -> ccxt.BaseError:
    """What ccxt's kraken REST client raises for a response body {"error": [...]}."""
    body = json.dumps({"error": list(errors)}, separators=(",", ":"))
    exchange = ccxt.kraken()
    with pytest.raises(ccxt.BaseError) as raised:
        exchange.handle_errors(
            200, "OK", "https://api.kraken.com", "POST", {}, body, json.loads(body), None, None
        )
    return raised.value


# ------------------------------------------------------------------ (a) complete against ccxt


@pytest.mark.parametrize("table", sorted(ccxt_tables()))
def test_every_ccxt_kraken_string_is_classified(table):
    """Every string in ccxt's Kraken tables is in the table, or deliberately left out of it."""
    missing = sorted(
        s
        for s in ccxt_tables()[table]
        if s not in KRAKEN_ERRORS and s not in UNCLASSIFIED_CCXT_STRINGS
    )
    assert missing == [], f"ccxt ({table}) knows Kraken strings nobody classified: {missing}"


def test_the_strings_left_out_carry_no_kraken_code_and_are_still_in_ccxt():
    """Only ccxt's plain-English websocket subscription errors are left out: they hold no code."""
    ws = ccxt_tables()["ws exact"] | ccxt_tables()["ws broad"]
    assert ws >= UNCLASSIFIED_CCXT_STRINGS
    for text in UNCLASSIFIED_CCXT_STRINGS:
        assert classify_kraken_error(text) is None
        assert ":" not in text


def test_every_key_has_kraken_shape_and_a_definite_class():
    """A key is an E<Category>: code or one of ccxt's ':' fragments, and never UNKNOWN."""
    for key, cls in KRAKEN_ERRORS.items():
        assert key.startswith(":") or (key[0] == "E" and key[1].isupper() and ":" in key), key
        assert cls in C
        assert cls is not C.UNKNOWN
        assert classify_kraken_error(key) is cls, key


# ------------------------------------------------------------------- (b) (c) the pivotal strings


def test_deadline_elapsed_is_transient_though_ccxt_leaves_it_bare():
    """A deadline timeout may or may not have placed the order; ccxt's REST table lacks it."""
    assert KRAKEN_ERRORS["EService:Deadline elapsed"] is C.TRANSIENT
    assert C.TRANSIENT in WRITE_MAY_HAVE_LANDED
    error = ccxt_error("EService:Deadline elapsed")
    assert type(error) is ccxt.ExchangeError
    assert classify_kraken_error(str(error)) is C.TRANSIENT


def test_duplicate_order_is_evidence_the_order_exists():
    """EOrder:Duplicate order says the order is there and beats a rejection; ccxt leaves it bare."""
    assert classify_kraken_error("kraken EOrder:Duplicate order") is C.EXISTS
    assert C.EXISTS in WRITE_MAY_HAVE_LANDED
    error = ccxt_error("EOrder:Duplicate order")
    assert type(error) is ccxt.ExchangeError
    assert classify_kraken_error(str(error)) is C.EXISTS
    assert (
        classify_kraken_error(
            str(ccxt_error("EOrder:Insufficient funds", "EOrder:Duplicate order"))
        )
        is C.EXISTS
    )


def test_a_reduce_only_flip_that_matched_in_part_exists():
    """A reduce-only order that would flip a position matched in part before being cancelled."""
    assert classify_kraken_error("EOrder:Reduce only:Position is closed") is C.EXISTS


def test_market_modes_are_definite_refusals_though_ccxt_calls_them_maintenance():
    """A market mode refuses this order outright; ccxt raises OnMaintenance, a NetworkError."""
    for mode in ("cancel_only", "post_only", "limit_only"):
        assert classify_kraken_error(f"EService:Market in {mode} mode") is C.REJECTED
    for mode in ("cancel_only", "post_only"):
        error = ccxt_error(f"EService:Market in {mode} mode")
        assert isinstance(error, ccxt.OnMaintenance)
        assert isinstance(error, ccxt.NetworkError)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("EOrder:Unknown order", C.NOT_FOUND),
        ("EOrder:Invalid order", C.NOT_FOUND),
        ("EOrder:Unknown position", C.REJECTED),
        ("EAPI:Invalid nonce", C.NONCE),
        ("EAPI:Rate limit exceeded", C.RATE_LIMITED),
        ("EOrder:Rate limit exceeded", C.RATE_LIMITED),
        ("EGeneral:Too many requests", C.RATE_LIMITED),
        ("EGeneral:Temporary lockout", C.RATE_LIMITED),
        ("EService: Throttled: 1788471234", C.RATE_LIMITED),
        ("EAPI:Invalid key", C.FATAL),
        ("EAPI:Invalid signature", C.FATAL),
        ("EGeneral:Permission denied", C.FATAL),
        ("EOrder:Trading agreement required", C.FATAL),
        ("EService:Unavailable", C.TRANSIENT),
        ("EService:Busy", C.TRANSIENT),
        ("EOrder:Insufficient funds", C.REJECTED),
        ("EOrder:Order minimum not met", C.REJECTED),
    ],
)
def test_the_briefed_strings_have_their_deliberate_class(code, expected):
    """Each string named in the design has the class decided for it."""
    assert classify_kraken_error(code) is expected


# -------------------------------------------------------------------- (d) unknown and plain text


@pytest.mark.parametrize(
    "message",
    [
        "EOrder:Something new",
        'kraken {"error":["EFuture:Not yet invented"]}',
        "EAPI:Invalid keyring",  # a known code glued to more letters is a different code
        "EDatabase: Internal error",  # ccxt's spelling with a space, but without its note
        "EWhatever:x",
    ],
)
def test_an_unknown_kraken_shaped_code_is_unknown(message):
    """A code of Kraken's shape that the table does not know is UNKNOWN, never a guess."""
    assert classify_kraken_error(message) is C.UNKNOWN


@pytest.mark.parametrize(
    "message",
    [
        "",
        "kraken GET https://api.kraken.com/0/private/AddOrder 503 Service Unavailable",
        "Connection reset by peer",
        "Insufficient funds",  # the words without Kraken's code
        "eorder:insufficient funds",  # Kraken's codes are case-sensitive
        "ETH: 3000",  # a colon followed by no text of Kraken's shape
        "WDatabase:No change",  # a warning, not an error
        "Malformed request",
    ],
)
def test_text_without_a_kraken_code_is_none(message):
    """A message carrying no Kraken code gives None: the exception type decides."""
    assert classify_kraken_error(message) is None
    assert find_kraken_errors(message) == []


def test_unknown_codes_are_reported_as_found():
    """find_kraken_errors names an unknown code by its own text, up to a delimiter."""
    found = find_kraken_errors('kraken {"error":["EOrder:Insufficient funds","ENew:Thing here"]}')
    assert found == [("EOrder:Insufficient funds", C.REJECTED), ("ENew:Thing here", C.UNKNOWN)]


# ---------------------------------------------------------------------------- (e) detail suffixes


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("EGeneral:Invalid arguments:volume", C.REJECTED),
        ("EGeneral:Invalid arguments:ordertype", C.REJECTED),
        ("EOrder:Cannot open position:margin", C.REJECTED),
        ("EGeneral:Internal error:5", C.TRANSIENT),
        ("EService:Throttled:1788471234", C.RATE_LIMITED),
        ("EAPI:Feature disabled:viqc", C.FATAL),
        ("EOrder:Insufficient funds (insufficient user funds)", C.REJECTED),
        ("EQuery:Unknown asset pair", C.REJECTED),
    ],
)
def test_kraken_detail_after_a_code_keeps_its_class(message, expected):
    """Kraken appends detail after a colon or a space; the longest known code still decides."""
    assert classify_kraken_error(message) is expected
    assert classify_kraken_error(str(ccxt_error(message))) is expected


@pytest.mark.parametrize("key", KNOWN)
def test_every_key_keeps_its_class_with_a_detail_suffix(key):
    """Any known code followed by ':detail' classifies as the code itself."""
    assert classify_kraken_error(f"{key}:some detail 42") is KRAKEN_ERRORS[key]


def test_a_longer_key_never_changes_the_class_of_its_prefix():
    """Where one key extends another past a word boundary, both have one class."""
    for short in KNOWN:
        for long in KNOWN:
            if long != short and long.startswith(short) and not long[len(short)].isalnum():
                assert KRAKEN_ERRORS[long] is KRAKEN_ERRORS[short], (short, long)


def test_detail_inside_a_code_is_not_a_second_code():
    """A ccxt fragment inside a code's own text belongs to that code, not to a second one."""
    assert classify_kraken_error("EGeneral:Invalid arguments:Rate limit exceeded") is C.REJECTED
    assert classify_kraken_error("EFoo:Invalid nonce") is C.UNKNOWN
    assert classify_kraken_error("oops :Invalid nonce") is C.NONCE


# -------------------------------------------------------------------- several codes, fail-closed


def test_write_outcome_sets_partition_the_classes_in_fail_closed_order():
    """Every class either may have landed or was not processed, and the former rank first."""
    assert set(C) == WRITE_MAY_HAVE_LANDED | WRITE_NOT_PROCESSED
    assert not WRITE_MAY_HAVE_LANDED & WRITE_NOT_PROCESSED
    assert sorted(FAIL_CLOSED_ORDER) == sorted(C)
    assert set(FAIL_CLOSED_ORDER[: len(WRITE_MAY_HAVE_LANDED)]) == WRITE_MAY_HAVE_LANDED
    assert FAIL_CLOSED_ORDER[-1] is C.NOT_FOUND


def test_several_codes_give_the_most_fail_closed_class_where_ccxt_takes_the_first():
    """With several errors ccxt raises for the first; the table picks the one that fails closed."""
    error = ccxt_error("EOrder:Insufficient funds", "EService:Unavailable")
    assert isinstance(error, ccxt.InsufficientFunds)
    assert classify_kraken_error(str(error)) is C.TRANSIENT
    assert (
        classify_kraken_error(str(ccxt_error("EOrder:Insufficient funds", "ENew:Code")))
        is C.UNKNOWN
    )
    assert classify_kraken_error("EOrder:Unknown order EGeneral:Invalid arguments") is C.REJECTED


# ------------------------------------------------------------------------ (f) property tests

SEPARATORS = st.sampled_from([" ", '"', "'", "[", "]", "(", ")", ",", "\n", "{", "}", "\t"])
NO_COLON_TEXT = st.text(alphabet=st.characters(exclude_characters=":"), max_size=40)


@given(st.text())
def test_the_parser_never_raises(message):
    """Any text at all gives a class or None, never an exception."""
    assert classify_kraken_error(message) in {*C, None}
    assert all(cls in C for _, cls in find_kraken_errors(message))


@given(st.sampled_from(KNOWN), NO_COLON_TEXT, SEPARATORS, SEPARATORS, NO_COLON_TEXT)
def test_a_known_code_anywhere_in_text_keeps_its_class(key, before, left, right, after):
    """A lone known code set off by a delimiter in arbitrary text classifies as that code."""
    assert classify_kraken_error(before + left + key + right + after) is KRAKEN_ERRORS[key]


@given(st.lists(st.sampled_from(KNOWN), min_size=1, max_size=4))
def test_several_codes_in_a_kraken_body_give_the_most_fail_closed(keys):
    """In Kraken's error array the class is the most fail-closed of the codes' classes."""
    message = "kraken " + json.dumps({"error": keys}, separators=(",", ":"))
    expected = min((KRAKEN_ERRORS[k] for k in keys), key=FAIL_CLOSED_ORDER.index)
    assert classify_kraken_error(message) is expected


@given(st.sampled_from(KNOWN))
def test_ccxts_real_message_shape_keeps_the_class(key):
    """Whatever ccxt raises for a Kraken body, its message classifies as the code's class."""
    assert classify_kraken_error(str(ccxt_error(key))) is KRAKEN_ERRORS[key]


# ------------------------------------------------------- what ccxt 4.5.90 raises, class by class

CCXT_LEAVES_BARE = frozenset(
    {
        "EAPI:Bad request",
        "EOrder:Post only order",
        "EAPI:Feature disabled",
        "EAPI:Invalid signature",
        "EAccount:Invalid permissions",
        "EAuth:Account temporary disabled",
        "EAuth:Account unconfirmed",
        "EAuth:Too many requests",
        "EBM:limit exceeded:CAL",
        "EDatabase: Internal error (to be deprecated)",
        "EFunding:Invalid reference id",
        "EFunding:Invalid staking method",
        "EFunding:Max fee exceeded",
        "EFunding:Too many addresses",
        "EFunding:Unknown reference id",
        "EGeneral:Internal error[:<code>]",
        "EGeneral:Invalid arguments:Index unavailable",
        "EGeneral:Unknown method",
        "EOrder:Cannot open opposing position",
        "EOrder:Cannot open position",
        "EOrder:Cost minimum not met",
        "EOrder:Domain rate limit exceeded",
        "EOrder:Duplicate order",
        "EOrder:Insufficient funds (insufficient user funds)",
        "EOrder:Insufficient margin",
        "EOrder:Insufficient margin (exchange does not have sufficient funds to allow margin trading)",  # noqa: E501 (ccxt's key, verbatim)
        "EOrder:Invalid price",
        "EOrder:Margin allowance exceeded",
        "EOrder:Margin level too low",
        "EOrder:Margin position size exceeded",
        "EOrder:Margin position size exceeded (client would exceed the maximum position size for self pair)",  # noqa: E501 (ccxt's key, verbatim)
        "EOrder:Order minimum not met (volume too low)",
        "EOrder:Orders limit exceeded",
        "EOrder:Positions limit exceeded",
        "EOrder:Reduce only:No position exists",
        "EOrder:Reduce only:Non-PC",
        "EOrder:Reduce only:Position is closed",
        "EOrder:Scheduled orders limit exceeded",
        "EOrder:Tick size check failed",
        "EOrder:Trading agreement required",
        "EOrder:Unknown position",
        "EQuery:Unknown asset pair",
        "EService: Throttled",
        "EService:Deadline elapsed",
        "EService:Market in limit_only mode",
        "EService:Throttled",
        "ETrade:Invalid request",
        "ETrade:Locked",
    }
)
"""Strings ccxt 4.5.90's REST client raises as a bare ExchangeError: only the table reads them."""

CCXT_TYPES_BY_CLASS = {
    C.TRANSIENT: {ccxt.ExchangeNotAvailable},
    C.RATE_LIMITED: {ccxt.DDoSProtection, ccxt.RateLimitExceeded},
    C.NONCE: {ccxt.InvalidNonce},
    C.FATAL: {ccxt.AuthenticationError, ccxt.PermissionDenied, ccxt.AccountSuspended},
    C.REJECTED: {
        ccxt.BadRequest,
        ccxt.BadSymbol,
        ccxt.CancelPending,
        ccxt.InsufficientFunds,
        ccxt.InvalidAddress,
        ccxt.InvalidOrder,
        ccxt.OnMaintenance,
    },
    C.EXISTS: set(),
    C.NOT_FOUND: {ccxt.InvalidOrder},
}
"""Apart from the bare ones, the ccxt exception types each class arrives as (ccxt 4.5.90)."""


@pytest.mark.parametrize("key", KNOWN)
def test_what_ccxt_raises_for_each_string_is_pinned(key):
    """A bare ExchangeError comes exactly for the pinned strings, else a type of the class."""
    error = ccxt_error(key)
    if key in CCXT_LEAVES_BARE:
        assert type(error) is ccxt.ExchangeError
    else:
        assert type(error) in CCXT_TYPES_BY_CLASS[KRAKEN_ERRORS[key]], type(error).__name__


def test_ccxts_exact_table_misses_kraken_detail_suffixes():
    """With Kraken's detail appended ccxt's exact match fails and it raises a bare ExchangeError."""
    for message in ("EGeneral:Internal error:5", "EGeneral:Invalid arguments:ordertype"):
        assert type(ccxt_error(message)) is ccxt.ExchangeError
        assert classify_kraken_error(message) is not None
