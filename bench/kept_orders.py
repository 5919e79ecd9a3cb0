"""What keeping sent orders in the store costs an order: with and without ``keep_orders_in``.

A broker given a store (the gate and the enforcer give theirs) claims each client order id in
the store, as the ``sent`` record with its deadline, before the request leaves, and records its
fate after: two durable writes per order (SQLite with ``synchronous=FULL``, PostgreSQL's
commit). This places ``--orders`` market orders through a paper broker without latency or
faults, one after the other on one thread, with and without a store, on a SQLite file and (when
reachable) on PostgreSQL, and prints the time per order and the difference. Entry checks,
reservations and enforcement passes that place no order do not pay it.

Run:  python bench/kept_orders.py [--orders 2000] [--pg postgresql://postgres@127.0.0.1:5432/test]
      [--no-pg]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence

from brokerguard import BrokerCircuitBreaker
from brokerguard.brokers import PaperBroker
from brokerguard.store import open_store

PG_URL = os.environ.get("BROKERGUARD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def per_order_us(url: str | None, orders: int) -> float:
    """Microseconds per market order through a paper broker, its orders kept at `url` (or not)."""
    prices = {f"C{i:03d}/USD": "10" for i in range(50)}
    broker = PaperBroker(
        "paper",
        prices=prices,
        positions={},
        settle_delay=0,
        volatility=0,
        read_breaker=BrokerCircuitBreaker("bench-kept", scope="read"),
        write_breaker=BrokerCircuitBreaker("bench-kept", scope="write"),
    )
    store = None if url is None else open_store(url)
    if store is not None:
        broker.keep_orders_in(store)
    symbols = list(prices)
    run = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    for n in range(orders):
        broker.place_market_order(symbols[n % 50], "buy", "1", client_order_id=f"{run}-{n}")
    elapsed = time.perf_counter() - started
    if store is not None:
        store.close()
    return elapsed / orders * 1e6


@contextlib.contextmanager
def pg_schema(base: str) -> Iterator[str | None]:
    """A fresh PostgreSQL schema at `base`, dropped afterwards (None when unreachable)."""
    try:
        import psycopg  # noqa: PLC0415 (optional: only with the postgres extra)

        admin = psycopg.connect(base, autocommit=True, connect_timeout=3)
    except Exception as exc:  # any failure: the row is skipped, and said so
        print(f"PostgreSQL at {base} not used: {exc}", file=sys.stderr)
        yield None
        return
    schema = f"bg_bench_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield f"{base}?options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def main(argv: Sequence[str] | None = None) -> int:
    """Print one row per store: µs per order without and with kept orders."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--pg", default=PG_URL)
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args(argv)
    print("| store | orders | µs per order without | µs per order kept | kept costs |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        stores: list[tuple[str, str | None]] = [("SQLite file", f"sqlite:///{folder}/kept.db")]
        with contextlib.ExitStack() as stack:
            if not args.no_pg:
                stores.append(("PostgreSQL", stack.enter_context(pg_schema(args.pg))))
            for name, url in stores:
                if url is None:
                    continue
                bare = per_order_us(None, args.orders)
                kept = per_order_us(url, args.orders)
                print(
                    f"| {name} | {args.orders:,} | {bare:,.0f} | {kept:,.0f} | "
                    f"+{kept - bare:,.0f} µs |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
