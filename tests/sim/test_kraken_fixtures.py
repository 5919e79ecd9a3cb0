"""The emulator's payloads have the keys and value types of Kraken's recorded ones.

The recorded excerpts live in ``fixtures/kraken_recorded.json`` (sources in its ``_about``). ccxt
records with ``quoteJsonNumbers``, so a numeric string there may have been a JSON number on the
wire: those excerpts are compared with ``quoted=True``; the ``raw`` ones keep their wire types.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import ccxt
import pytest

from brokerguard.sim.kraken import DEFAULT_API_KEY, DEFAULT_API_SECRET, running_kraken

RECORDED = json.loads((Path(__file__).parent / "fixtures" / "kraken_recorded.json").read_text())


def _numeric(text: str) -> bool:
    try:
        return Decimal(text).is_finite()
    except InvalidOperation:
        return False


def shape_differences(
    recorded: Any,
    emitted: Any,
    *,
    quoted: bool,
    path: str = "$",
    ignore: frozenset[str] = frozenset(),
) -> list[str]:
    """Where `emitted` differs from `recorded` in keys or JSON value types (empty: same shape)."""
    if isinstance(recorded, dict):
        return _object_differences(recorded, emitted, quoted=quoted, path=path, ignore=ignore)
    if isinstance(recorded, list):
        if not isinstance(emitted, list):
            return [f"{path}: an array expected, got {emitted!r}"]
        if recorded and emitted:
            return shape_differences(recorded[0], emitted[0], quoted=quoted, path=f"{path}[0]")
        return []
    problem = _scalar_difference(recorded, emitted, quoted=quoted)
    return [] if problem is None else [f"{path}: {problem}, got {emitted!r}"]


def _object_differences(
    recorded: dict[str, Any], emitted: Any, *, quoted: bool, path: str, ignore: frozenset[str]
) -> list[str]:
    if not isinstance(emitted, dict):
        return [f"{path}: an object expected, got {emitted!r}"]
    problems = []
    missing, extra = set(recorded) - set(emitted) - ignore, set(emitted) - set(recorded)
    if missing or extra:
        problems.append(f"{path}: missing keys {sorted(missing)}, extra keys {sorted(extra)}")
    for key in sorted((set(recorded) & set(emitted)) - ignore):
        problems += shape_differences(
            recorded[key], emitted[key], quoted=quoted, path=f"{path}.{key}"
        )
    return problems


def _scalar_difference(recorded: Any, emitted: Any, *, quoted: bool) -> str | None:
    """What JSON type `emitted` should have had, or None when it has it."""
    is_number = isinstance(emitted, int | float) and not isinstance(emitted, bool)
    if recorded is None:
        expected, ok = "null", emitted is None
    elif isinstance(recorded, str):
        expected = "a string"
        ok = isinstance(emitted, str) or (quoted and _numeric(recorded) and is_number)
    elif isinstance(recorded, bool):
        expected, ok = "a boolean", isinstance(emitted, bool)
    else:
        expected = "a number"
        ok = is_number or (quoted and isinstance(emitted, str) and _numeric(emitted))
    return None if ok else f"{expected} expected"


@pytest.fixture(scope="module")
def world():
    """One emulator session that produced every payload kind once."""
    balances = {"ZUSD": "100000", "ZEUR": "3", "XXBT": "1", "XETH": "2", "USDT": "5"}
    with running_kraken(balances=balances) as kraken:
        exchange = ccxt.kraken(
            {"apiKey": DEFAULT_API_KEY, "secret": DEFAULT_API_SECRET, "enableRateLimit": False}
        )
        exchange.urls["api"] = {"public": kraken.url, "private": kraken.url}
        market = {"pair": "XXBTZUSD", "type": "buy", "ordertype": "market", "volume": "0.01"}
        added = exchange.private_post_addorder(market)["result"]
        filled = added["txid"][0]
        kraken.set_fill_market_orders(fill=False)
        resting = exchange.private_post_addorder(market)["result"]["txid"][0]
        exchange.private_post_addorder({**market, "cl_ord_id": "123"})
        open_cl = exchange.private_post_openorders({"cl_ord_id": "123"})["result"]["open"]
        cancelled = exchange.private_post_cancelorder({"cl_ord_id": "123"})["result"]
        closed_cl = exchange.private_post_closedorders({"cl_ord_id": "123"})["result"]
        query = exchange.private_post_queryorders({"txid": f"{filled},{resting}", "trades": True})
        yield {
            "AddOrder": added,
            "QueryOrders_closed_market": query["result"][filled],
            "QueryOrders_open": query["result"][resting],
            "OpenOrders_cl_ord_id": next(iter(open_cl.values())),
            "ClosedOrders_cl_ord_id": closed_cl,
            "CancelOrder": cancelled,
            "Ticker": exchange.public_get_ticker({"pair": "XBTUSD"})["result"]["XXBTZUSD"],
            "Balance": exchange.private_post_balance()["result"],
            "BalanceEx": exchange.private_post_balanceex()["result"],
            "AssetPairs": exchange.public_get_assetpairs()["result"]["XXBTZUSD"],
            "Assets": exchange.public_get_assets()["result"],
        }


@pytest.mark.parametrize(
    "name",
    [
        "AddOrder",
        "QueryOrders_closed_market",
        "QueryOrders_open",
        "OpenOrders_cl_ord_id",
        "CancelOrder",
        "Ticker",
    ],
)
def test_order_and_ticker_payloads_match_ccxt_recordings(world, name):
    """Each payload has exactly the recorded keys, with the recorded value types."""
    assert shape_differences(RECORDED["ccxt_recorded"][name], world[name], quoted=True) == []


def test_closed_orders_with_a_cl_ord_id_match_the_recording(world):
    """ClosedOrders: a ``closed`` map of entries shaped like the recorded one, and a count."""
    recorded = RECORDED["ccxt_recorded"]["ClosedOrders_cl_ord_id"]
    emitted = world["ClosedOrders_cl_ord_id"]
    assert set(emitted) == set(recorded)
    assert shape_differences(recorded["count"], emitted["count"], quoted=True) == []
    (recorded_entry,) = recorded["closed"].values()
    (entry,) = emitted["closed"].values()
    assert shape_differences(recorded_entry, entry, quoted=True) == []
    assert entry["reason"] == "User requested"


def test_order_times_and_userref_have_their_wire_types(world):
    """Unquoted payloads: times are numbers, userref is null beside a cl_ord_id."""
    raw = RECORDED["raw"]
    assert (
        shape_differences(raw["OpenOrders_cl_ord_id"], world["OpenOrders_cl_ord_id"], quoted=False)
        == []
    )
    # The 2020 QueryOrders payload predates Kraken's userref 0 default (the 2024 recording has it).
    differences = shape_differences(
        raw["QueryOrders_closed_market"],
        world["QueryOrders_closed_market"],
        quoted=False,
        ignore=frozenset({"userref"}),
    )
    assert differences == []
    assert world["QueryOrders_closed_market"]["userref"] == 0


def test_balances_are_strings_with_each_assets_decimals(world):
    """Balance amounts are strings with the recorded number of decimals per asset."""
    recorded = RECORDED["raw"]["Balance"]
    emitted = world["Balance"]
    assert set(emitted) <= set(recorded)
    for asset, amount in emitted.items():
        assert isinstance(amount, str)
        assert len(amount.partition(".")[2]) == len(recorded[asset].partition(".")[2]), asset


def test_balance_ex_entries_match_the_documented_shape(world):
    """BalanceEx: per asset a ``balance`` and a ``hold_trade``."""
    recorded = RECORDED["docs"]["BalanceEx"]["ZUSD"]
    for entry in world["BalanceEx"].values():
        assert shape_differences(recorded, entry, quoted=True) == []


def test_asset_pairs_and_assets_match_the_recorded_entries(world):
    """AssetPairs (spot: without the margin-only keys) and Assets entries match ccxt's fixtures."""
    pairs = RECORDED["ccxt_markets"]
    margin_only = frozenset(pairs["_margin_only_keys"])
    recorded_pair = {k: v for k, v in pairs["AssetPairs_XXBTZUSD"].items() if k not in margin_only}
    assert shape_differences(recorded_pair, world["AssetPairs"], quoted=True) == []
    for asset in ("XXBT", "ZUSD"):
        recorded = RECORDED["ccxt_currencies"][f"Assets_{asset}"]
        assert shape_differences(recorded, world["Assets"][asset], quoted=True) == []
        assert str(world["Assets"][asset]["decimals"]) == recorded["decimals"]


def test_the_comparison_itself_catches_a_string_time():
    """The checker is not vacuous: a quoted time fails the wire-type comparison."""
    recorded = RECORDED["raw"]["OpenOrders_cl_ord_id"]
    stringly = {**recorded, "opentm": "1733815269.370054", "userref": "0"}
    assert shape_differences(recorded, stringly, quoted=False) == [
        "$.opentm: a number expected, got '1733815269.370054'",
        "$.userref: null expected, got '0'",
    ]
