"""Fencing that holds: a lapsed lease sends nothing, handovers wait, tokens survive Redis loss.

Two "workers" here are two AccountLeases (own Redis connections) and two
ContinuousExitEnforcers whose cap enforcers share one paper broker per account: one world, so
every order either worker sends is counted once.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from brokerguard import BrokerCircuitBreaker
from brokerguard.alerts import AlertLevel, alert_for
from brokerguard.brokers import PaperBroker
from brokerguard.clock import Clock
from brokerguard.config import parse_config
from brokerguard.coordination import RedisCoordinator
from brokerguard.coordination.leases import AccountLeases
from brokerguard.errors import LeaseLostError
from brokerguard.models import Position
from brokerguard.risk import PositionCapEnforcer
from brokerguard.risk.exits import ContinuousExitEnforcer
from brokerguard.risk.valuation import ValuationReport, Valuator
from brokerguard.server import create_app
from brokerguard.service import GuardService
from brokerguard.store import StateStore, open_store
from brokerguard.testing import FakeClock
from tests.conftest import REDIS_URL
from tests.risk.worlds import coins

CAP = 4


class StallingValuator(Valuator):
    """Stalls the first valuation until released: a GC pause, a frozen VM, a SIGSTOP."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.stalled = threading.Event()
        self.resume = threading.Event()
        self._first = True

    def value(self, positions: Iterable[Position]) -> ValuationReport:
        if self._first:
            self._first = False
            self.stalled.set()
            assert self.resume.wait(30), "the test never released the stalled worker"
        return super().value(positions)


def paper(clock: FakeClock, account: str = "acct-1", held: int = 6) -> PaperBroker:
    """One account's paper broker holding `held` positions (C01..), breakers of its own."""
    return PaperBroker(
        "paper",
        account_id=account,
        clock=clock,
        prices=coins(10),
        positions=dict.fromkeys(list(coins(held)), "1"),
        settle_delay=0,
        volatility=0,
        read_breaker=BrokerCircuitBreaker(f"paper-{account}", scope="read", clock=clock),
        write_breaker=BrokerCircuitBreaker(f"paper-{account}", scope="write", clock=clock),
    )


def enforcer(broker, store: StateStore, clock: Clock, name: str, *, stall: bool = False):
    """A worker's cap enforcer on the shared broker; its orders' ids start with `name`."""
    valuator = (StallingValuator if stall else Valuator)(broker, store=store, clock=clock)
    return PositionCapEnforcer(
        broker,
        CAP,
        store=store,
        clock=clock,
        valuator=valuator,
        settle_timeout=0,
        order_id_factory=lambda: f"{name}-{uuid.uuid4()}",
    )


def sells_by(broker, name: str) -> list[str]:
    return [
        o.symbol
        for o in broker.all_orders()
        if o.side.value == "sell" and o.client_order_id.startswith(f"{name}-")
    ]


def run_in_thread(function) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def target() -> None:
        try:
            box["result"] = function()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def fence_marks(store: StateStore) -> dict[str, int]:
    """The highest fencing token the store holds per account (raw SQL: any schema)."""
    with store._engine.connect() as conn:
        rows = conn.execute(text("SELECT account_id, MAX(token) FROM bg_fences GROUP BY 1"))
        return {account: int(token) for account, token in rows}


# --------------------------------------------------------------------------- item 5


def test_a_worker_whose_lease_lapsed_mid_enforcement_sends_nothing(redis_namespace, pg_url):
    """A stalls past its lease, B takes it (token 2), A resumes first: zero orders from A."""
    clock = FakeClock(1000.0)
    store = open_store(pg_url, clock=clock)
    broker = paper(clock, held=5)
    account = broker.account_id
    a_enforcer = enforcer(broker, store, clock, "A", stall=True)
    leases_a = AccountLeases(RedisCoordinator(REDIS_URL, namespace=redis_namespace), ttl=0.5)
    leases_b = AccountLeases(RedisCoordinator(REDIS_URL, namespace=redis_namespace), ttl=0.5)
    worker_a = ContinuousExitEnforcer(a_enforcer, leases=leases_a)
    worker_b = ContinuousExitEnforcer(enforcer(broker, store, clock, "B"), leases=leases_b)

    thread, box = run_in_thread(worker_a.tick)  # A holds the lease and starts enforcing
    assert a_enforcer.valuator.stalled.wait(10)
    time.sleep(0.8)  # wall-clock-ok: A is frozen past its 0.5 s lease (Redis's clock decides)
    leases_b.begin_pass([account])  # B sees A gone and takes the account: a newer token
    holder = leases_b.coordinator.lease_holder(account)
    assert holder is not None
    assert holder[0] == leases_b.owner

    a_enforcer.valuator.resume.set()  # A resumes before B has done anything
    thread.join(30)
    assert "error" not in box, box
    assert sells_by(broker, "A") == []  # A sent nothing after B's acquisition
    assert box["result"][account]["status"] == "lease_lost"

    result = worker_b.tick()[account]  # B enforces normally: exactly the excess of one
    assert result["status"] == "compliant"
    assert len(sells_by(broker, "B")) == 1
    assert len(broker.true_positions()) == CAP
    store.close()


def test_a_taken_lease_is_fenced_in_the_store_before_any_write(redis_namespace, tmp_path):
    """Acquiring records the new holder's token at once: the old holder is fenced out already."""
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    leases = AccountLeases(
        RedisCoordinator(REDIS_URL, namespace=redis_namespace), ttl=5, store=store
    )
    leases.begin_pass(["acct-1"])
    lease = leases.held()["acct-1"]
    assert store.fence_token("acct-1", namespace=redis_namespace) == lease.token
    stale = store.fenced("acct-1", lease.token - 1 or 1, holder="old", namespace=redis_namespace)
    if lease.token > 1:
        with pytest.raises(LeaseLostError):
            stale.record_audit("acct-1", "liquidation_order", "old", "too late")
    store.close()


def test_the_enforcer_renews_its_lease_before_an_order_and_stops_if_it_cannot(
    redis_namespace, tmp_path
):
    """keep() extends the lease to a full ttl; once another worker holds it, LeaseLostError."""
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    coordinator = RedisCoordinator(REDIS_URL, namespace=redis_namespace)
    leases = AccountLeases(coordinator, ttl=2, store=store)
    leases.begin_pass(["acct-1"])
    lease = leases.held()["acct-1"]
    key = coordinator.key("lease", "acct-1")
    coordinator.client.pexpire(key, 100)  # about to lapse
    leases.keep(lease)
    assert coordinator.client.pttl(key) > 1500  # renewed to a full ttl
    coordinator.client.set(key, f"thief|{lease.token + 1}")  # another worker holds it now
    with pytest.raises(LeaseLostError):
        leases.keep(lease)
    assert "acct-1" not in leases.held()
    store.close()


def test_a_handover_waits_for_the_end_of_an_enforcement(redis_namespace, tmp_path):
    """A newcomer's account is handed over only after the step in flight on it has finished."""
    clock = FakeClock(1000.0)
    store = open_store(f"sqlite:///{tmp_path / 's.db'}", clock=clock)
    first = AccountLeases(RedisCoordinator(REDIS_URL, namespace=redis_namespace), ttl=5)
    newcomer = AccountLeases(
        RedisCoordinator(REDIS_URL, namespace=redis_namespace), ttl=5, owner="newcomer"
    )
    newcomer.begin_pass()
    first.begin_pass()
    account = next(f"acct-{n}" for n in range(200) if not first.prefers(f"acct-{n}"))
    newcomer.release_all()  # gone again: `first` enforces the account alone

    broker = paper(clock, account)
    busy = enforcer(broker, store, clock, "first", stall=True)
    worker = ContinuousExitEnforcer(busy, leases=first)
    thread, box = run_in_thread(worker.tick)
    assert busy.valuator.stalled.wait(10)
    holder = first.coordinator.lease_holder(account)
    assert holder is not None
    assert holder[0] == first.owner

    newcomer.begin_pass()  # the newcomer joins while the step is in flight
    first.begin_pass()  # `first` learns of it mid-step (another thread's heartbeat)
    holder = first.coordinator.lease_holder(account)
    assert holder is not None
    assert holder[0] == first.owner  # not handed over mid-enforcement

    busy.valuator.resume.set()
    thread.join(30)
    assert "error" not in box, box
    assert box["result"][account]["status"] == "compliant"  # the step ran to its end
    assert len(sells_by(broker, "first")) == 2

    first.begin_pass()  # the step is over: now it is handed over
    holder = first.coordinator.lease_holder(account)
    assert holder is not None
    assert holder[0] == "newcomer"
    assert newcomer.hold(account) is not None
    store.close()


# --------------------------------------------------------------------------- item 6


def test_tokens_stay_above_the_stores_mark_after_redis_loses_its_data(redis_server, pg_url):
    """After an empty Redis restart, a new lease's token is above every token the store saw."""
    store = open_store(pg_url)
    holder = AccountLeases(
        RedisCoordinator(redis_server.url, namespace="fleet"), ttl=5, store=store
    )
    accounts = [f"acct-{n}" for n in range(4)]
    holder.begin_pass(accounts)
    before = {a: lease.token for a, lease in holder.held().items()}
    holder.release_all()
    holder.begin_pass(accounts)  # a second lease on each
    assert all(holder.held()[a].token > before[a] for a in accounts)
    marks = {a: store.fence_token(a, namespace="fleet") for a in accounts}

    redis_server.kill()
    redis_server.start()  # EMPTY: every counter starts over
    assert redis_server.dbsize() == 0
    newcomer = AccountLeases(
        RedisCoordinator(redis_server.url, namespace="fleet"), ttl=5, store=store
    )
    newcomer.begin_pass(accounts)  # a worker that never saw these accounts
    after = newcomer.held()
    assert set(after) == set(accounts)
    assert all(after[a].token > marks[a] for a in accounts), (after, marks)
    assert all(store.fence_token(a, namespace="fleet") == after[a].token for a in accounts)
    store.close()


def run_until(workers: list[ContinuousExitEnforcer], predicate, timeout: float) -> float:
    """Tick every worker until `predicate` holds; fail after `timeout` seconds; the time taken."""
    started = time.monotonic()  # wall-clock-ok: leases live on Redis's clock
    while not predicate():
        if time.monotonic() - started > timeout:  # wall-clock-ok
            assert all(w.leases is not None for w in workers)
            results = {w.leases.owner: w.last_results for w in workers if w.leases}
            pytest.fail(f"not enforced within {timeout}s: {results}")
        for worker in workers:
            worker.tick()
        time.sleep(0.1)  # wall-clock-ok
    return time.monotonic() - started  # wall-clock-ok


def rogue_buys(brokers: dict[str, PaperBroker], symbol: str) -> None:
    """A bot that bypasses the guard buys `symbol` on every account: one position too many."""
    for account, broker in brokers.items():
        broker.place_market_order(symbol, "buy", 1, client_order_id=f"rogue-{symbol}-{account}")


def test_every_account_is_enforced_again_after_an_empty_redis_restart(redis_server, pg_url):
    """Two workers, Redis killed and restarted EMPTY: every account is enforced again, soon."""
    clock = FakeClock(1000.0)
    store = open_store(pg_url, clock=clock)
    accounts = [f"acct-{n}" for n in range(4)]
    brokers = {a: paper(clock, a) for a in accounts}
    workers = [
        ContinuousExitEnforcer(
            [enforcer(brokers[a], store, clock, name) for a in accounts],
            leases=AccountLeases(
                RedisCoordinator(redis_server.url, namespace="fleet", timeout=0.3), ttl=1.0
            ),
        )
        for name in ("w1", "w2")
    ]

    def within_caps() -> bool:
        return all(len(b.true_positions()) <= CAP for b in brokers.values())

    run_until(workers, within_caps, 20)
    for symbol in ("C07/USD", "C08/USD"):  # leases come and go, excess too: tokens climb
        for worker in workers:
            assert worker.leases is not None
            worker.leases.release_all()
        rogue_buys(brokers, symbol)
        run_until(workers, within_caps, 10)
    before = fence_marks(store)
    assert set(before) == set(accounts)
    assert min(before.values()) >= 3

    redis_server.kill()
    for worker in workers:  # Redis gone: nothing is enforced, nothing is sent
        assert {r["status"] for r in worker.tick().values()} <= {"unverified", "held_elsewhere"}
    redis_server.start()  # EMPTY
    rogue_buys(brokers, "C09/USD")  # new excess, which only a working fleet removes
    took = run_until(workers, within_caps, 15)

    after = fence_marks(store)
    assert all(after[a] > before[a] for a in accounts), (before, after)  # tokens kept growing
    for broker in brokers.values():  # exactly the excess, once: 2 at first, then 1 a buy
        assert len([o for o in broker.all_orders() if o.side.value == "sell"]) == 5
        assert len(broker.true_positions()) == CAP
    for _ in range(3):  # and no write is refused from then on
        for worker in workers:
            statuses = {r["status"] for r in worker.tick().values()}
            assert statuses <= {"compliant", "held_elsewhere"}, statuses
    print(f"enforced again {took:.1f}s after the empty restart")  # noqa: T201 (evidence)
    store.close()


def fleet_config(namespace: str, state_url: str) -> dict:
    return {
        "state_url": state_url,
        "coordination_url": REDIS_URL,
        "coordination": {"namespace": namespace, "lease_ttl_s": 30, "timeout_s": 0.5},
        "alerts": [],
        "brokers": {"paper": {"kind": "paper", "prices": coins(12), "settle_delay_s": 0}},
        "accounts": [
            {
                "id": f"acct-{n}",
                "broker": "paper",
                "max_positions": CAP,
                "positions": dict.fromkeys(list(coins(6)), "1"),
            }
            for n in range(2)
        ],
    }


def test_a_fencing_lockout_is_loud(redis_namespace, tmp_path, monkeypatch):
    """Tokens refused as stale pass after pass: an alert, /readyz 503, the account unenforced."""
    service = GuardService(
        parse_config(fleet_config(redis_namespace, f"sqlite:///{tmp_path / 's.db'}"))
    )

    def refuse(claims, **_):  # a store that never agrees: it always "has seen" newer tokens
        return {account: token + 1_000 for account, token, _holder in claims}

    monkeypatch.setattr(service.store, "claim_fences", refuse)
    try:
        for _ in range(3):
            results = service.tick()
            assert {r["status"] for r in results.values()} == {"lease_lost"}
        assert service.accounts["acct-0"].broker.all_orders() == []  # nothing sent, ever
        ready, reasons = service.ready()
        assert not ready
        assert any("acct-0" in r and "lock-out" in r for r in reasons), reasons
        http = TestClient(create_app(service, control_token=None))
        answer = http.get("/readyz")
        assert answer.status_code == 503
        assert any("lock-out" in r for r in answer.json()["reasons"])
        coordination = service.status()["service"]["coordination"]
        assert coordination["accounts_held"] == []
        assert set(coordination["accounts_locked_out"]) == {"acct-0", "acct-1"}
        scrape = http.get("/metrics").text
        assert 'brokerguard_account_lease_held{account="acct-0"}' not in scrape
        lockouts = [e for e in service.recent_events() if type(e).__name__ == "FencingLockout"]
        assert {e.account_id for e in lockouts} == {"acct-0", "acct-1"}
        alert = alert_for(lockouts[0])
        assert alert is not None
        assert alert.level is AlertLevel.CRITICAL

        monkeypatch.undo()  # the store agrees again: enforced, ready, held
        results = service.tick()
        assert {r["status"] for r in results.values()} == {"compliant"}
        assert service.ready()[0]
        assert service.status()["service"]["coordination"]["accounts_held"] == ["acct-0", "acct-1"]
        assert len(service.accounts["acct-0"].broker.true_positions()) == CAP
    finally:
        service.close()
