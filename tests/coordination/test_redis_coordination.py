"""Fleet coordination on a real Redis: shared circuits, leases with fencing, nonces, fail closed.

"Processes" here are separate RedisCoordinator + breaker instances (own connections, own local
state); tests/coordination/test_processes.py runs real processes.
"""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from brokerguard import CircuitState
from brokerguard.coordination import RedisCoordinator, RedisNonceSource, SharedCircuitBreaker
from brokerguard.errors import CircuitOpenError, CoordinationUnavailableError, LeaseLostError
from brokerguard.store import open_store
from tests.conftest import REDIS_URL

from .proxy import BlackHole, TcpProxy

DEAD_REDIS = "redis://127.0.0.1:9/0"  # the discard port: nothing listens


def process(namespace: str) -> RedisCoordinator:
    """Another process's view of the fleet: its own connections."""
    return RedisCoordinator(REDIS_URL, namespace=namespace)


def shared(coordinator: RedisCoordinator, **kwargs) -> SharedCircuitBreaker:
    settings = {"failure_threshold": 3, "recovery_timeout": 0.3, "success_threshold": 2}
    settings.update(kwargs)
    return SharedCircuitBreaker("kraken", scope="read", coordinator=coordinator, **settings)


def boom() -> None:
    raise TimeoutError("exchange timed out")


def ok() -> str:
    return "ok"


def fail_times(breaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(TimeoutError):
            breaker.call(boom)


# --------------------------------------------------------------------------- shared circuits


def test_a_circuit_opened_by_one_process_rejects_the_next_call_of_another(redis_namespace):
    """Failures counted anywhere open the circuit everywhere, with no call reaching the broker."""
    a, b = shared(process(redis_namespace)), shared(process(redis_namespace))
    fail_times(a, 2)
    fail_times(b, 1)  # the third failure of the fleet, made by b
    assert a.state is CircuitState.CLOSED  # a's local mirror: a has not asked since
    calls = []
    with pytest.raises(CircuitOpenError) as info:
        a.call(lambda: calls.append("sent"))
    assert calls == []
    assert 0 < info.value.next_probe_in <= 0.3
    assert a.state is CircuitState.OPEN  # learnt from its own next call
    assert not a.is_trading_allowed()
    assert not b.is_trading_allowed()


def test_half_open_admits_at_most_success_threshold_probes_fleet_wide(redis_namespace):
    """After the timeout, 8 processes x 4 threads race: exactly 2 probes reach the broker."""
    breakers = [shared(process(redis_namespace)) for _ in range(8)]
    fail_times(breakers[0], 3)
    time.sleep(0.35)  # wall-clock-ok: Redis's own clock decides the recovery timeout
    reached = []
    release = threading.Event()
    start = threading.Barrier(32)

    def probe() -> None:
        reached.append(1)
        release.wait(5)
        return "ok"

    def worker(breaker) -> None:
        start.wait()
        with contextlib.suppress(CircuitOpenError):
            breaker.call(probe)

    threads = [threading.Thread(target=worker, args=(b,)) for b in breakers for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # wall-clock-ok: let every thread be admitted or refused
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(reached) == 2
    assert breakers[5].is_trading_allowed()  # two probe successes closed it for everyone


def test_a_failed_probe_reopens_for_everyone_with_a_doubled_timeout(redis_namespace):
    """The doubling of the recovery timeout is the fleet's, not one process's."""
    a, b = shared(process(redis_namespace)), shared(process(redis_namespace))
    fail_times(a, 3)
    time.sleep(0.35)  # wall-clock-ok
    fail_times(b, 1)  # b's call was the probe; it failed
    with pytest.raises(CircuitOpenError) as info:
        a.call(ok)
    assert 0.3 < info.value.next_probe_in <= 0.6
    assert a.snapshot().recovery_timeout_seconds == pytest.approx(0.6)


def test_a_success_resets_the_fleets_streak(redis_namespace):
    """Two failures in one process, a success in another: the streak starts over."""
    a, b = shared(process(redis_namespace)), shared(process(redis_namespace))
    fail_times(a, 2)
    assert b.call(ok) == "ok"
    fail_times(a, 2)
    assert a.is_trading_allowed()  # 2 + 2 with a success between never reached 3


def test_operators_force_open_and_close_the_fleets_circuit(redis_namespace):
    """force_open anywhere: no probe anywhere until force_closed."""
    a, b = shared(process(redis_namespace)), shared(process(redis_namespace))
    a.force_open("exchange maintenance announced")
    time.sleep(0.35)  # wall-clock-ok: longer than the recovery timeout: still no probe
    with pytest.raises(CircuitOpenError) as info:
        b.call(ok)
    assert info.value.next_probe_in is None
    b.force_closed()
    assert a.call(ok) == "ok"


def test_listeners_in_another_process_hear_the_change_it_sees(redis_namespace):
    """A listener in process b fires when b's next call finds the circuit a opened."""
    a, b = shared(process(redis_namespace)), shared(process(redis_namespace))
    heard = []
    b.add_listener(lambda _breaker, old, new: heard.append((old, new)))
    fail_times(a, 3)
    with pytest.raises(CircuitOpenError):
        b.call(ok)
    assert heard == [(CircuitState.CLOSED, CircuitState.OPEN)]


def test_the_retry_shell_stops_when_the_fleets_circuit_opens(redis_namespace):
    """call_with_circuit_breaker retries, and stops at once when the circuit opens."""
    breaker = shared(process(redis_namespace), max_attempts=5, max_total_delay=0.0)
    attempts = []

    def flaky() -> None:
        attempts.append(1)
        raise TimeoutError("down")

    with pytest.raises((TimeoutError, CircuitOpenError)):
        breaker.call_with_circuit_breaker(flaky)
    assert len(attempts) == 1  # max_total_delay 0: no backoff sleep fits, the error is raised


# --------------------------------------------------------------------------- fail closed


def test_an_unreachable_redis_blocks_calls_and_trading_and_says_why():
    """Nothing reaches the broker, trading is not allowed, the status names the problem."""
    dead = RedisCoordinator(DEAD_REDIS, timeout=0.2)
    breaker = shared(dead)
    calls = []
    with pytest.raises(CoordinationUnavailableError, match="unreachable"):
        breaker.call(lambda: calls.append("sent"))
    assert calls == []
    assert not breaker.is_trading_allowed()
    assert breaker.get_broker_health_state().value == "offline"
    assert dead.status()["reachable"] is False
    assert "Error" in dead.status()["reason"]
    assert not dead.ping()
    with pytest.raises(CoordinationUnavailableError):
        dead.acquire_lease("acct-1", "worker-a", 5)
    with pytest.raises(CoordinationUnavailableError):
        dead.next_nonce("key")


def test_a_redis_that_never_answers_blocks_within_the_timeout(redis_namespace):
    """Connect and command timeouts both apply: a black hole, new or established, costs timeout."""
    hole = BlackHole()
    proxy = TcpProxy(("127.0.0.1", int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])))
    proxy.restore()
    try:
        fresh = RedisCoordinator(f"redis://127.0.0.1:{hole.port}/0", timeout=0.3)
        established = RedisCoordinator(
            f"redis://127.0.0.1:{proxy.port}/0", namespace=redis_namespace, timeout=0.3
        )
        assert established.acquire_lease("acct-1", "worker-a", 5) is not None
        proxy.black_hole()
        for coordinator in (fresh, established):
            started = time.monotonic()  # wall-clock-ok: a real network wait
            with pytest.raises(CoordinationUnavailableError):
                coordinator.acquire_lease("acct-1", "worker-a", 5)
            assert time.monotonic() - started < 0.3 + 1.0  # wall-clock-ok
            assert not coordinator.reachable
    finally:
        proxy.cut()
        hole.close()


class FlakyAfterAdmit(RedisCoordinator):
    """Redis answers the admission, then dies before the call's outcome is recorded."""

    def breaker(self, script: str, key: str, *args: str):
        if script in {"success", "failure"}:
            raise CoordinationUnavailableError("redis died mid-call")
        return super().breaker(script, key, *args)


def test_an_order_redis_refused_to_admit_was_not_placed_and_a_sent_one_keeps_its_outcome(
    redis_namespace, clock
):
    """No admission: the order is NOT_PLACED (never unresolved); Redis lost after: it is filled."""
    from brokerguard.brokers import PaperBroker  # noqa: PLC0415 (this test's world only)
    from brokerguard.orders import OrderState  # noqa: PLC0415 (this test's world only)

    def broker(coordinator: RedisCoordinator) -> PaperBroker:
        return PaperBroker(
            "kraken",
            clock=clock,
            prices={"BTC/USD": "100"},
            positions={"BTC/USD": "2"},
            settle_delay=0,
            read_breaker=shared(coordinator),
            write_breaker=SharedCircuitBreaker(
                "kraken", scope="write", coordinator=coordinator, clock=clock
            ),
        )

    dead = broker(RedisCoordinator(DEAD_REDIS, timeout=0.2))
    with pytest.raises(CoordinationUnavailableError):
        dead.place_market_order("BTC/USD", "sell", 1, client_order_id="refused")
    assert dead.order_state("refused") is OrderState.NOT_PLACED
    assert dead.unresolved_orders() == []
    assert dead.all_orders() == []

    flaky = broker(FlakyAfterAdmit(REDIS_URL, namespace=redis_namespace))
    order = flaky.place_market_order("BTC/USD", "sell", 1, client_order_id="sent")
    assert order.client_order_id == "sent"
    assert flaky.order_state("sent") is OrderState(order.status.value)
    assert flaky.unresolved_orders() == []


def test_the_coordinator_recovers_by_itself_when_redis_answers_again(redis_namespace):
    """A coordinator that failed marks itself reachable again on its next good answer."""
    coordinator = process(redis_namespace)
    coordinator._note(reachable=False, reason="simulated outage")
    assert not coordinator.reachable
    assert coordinator.ping()
    assert coordinator.status() == {"url": REDIS_URL, "reachable": True, "reason": ""}


def test_urls_are_checked_and_passwords_never_shown():
    """Only Redis URLs; the password is masked in status and repr."""
    with pytest.raises(Exception, match="coordination_url"):
        RedisCoordinator("postgresql://db/x")
    masked = RedisCoordinator("redis://:hunter2@127.0.0.1:9/0")
    assert "hunter2" not in masked.status()["url"]
    assert "hunter2" not in repr(masked)


# --------------------------------------------------------------------------- leases and fencing


def test_one_holder_at_a_time_and_tokens_only_grow(redis_namespace):
    """A held lease refuses others; its holder extends it; after expiry a new token is larger."""
    a, b = process(redis_namespace), process(redis_namespace)
    first = a.acquire_lease("acct-1", "worker-a", 0.3)
    assert first is not None
    assert b.acquire_lease("acct-1", "worker-b", 0.3) is None
    assert a.acquire_lease("acct-1", "worker-a", 0.3).token == first.token  # re-entrant
    assert a.renew_lease(first)
    assert b.lease_holder("acct-1") == ("worker-a", first.token)
    time.sleep(0.4)  # wall-clock-ok: worker-a stops renewing (it died)
    second = b.acquire_lease("acct-1", "worker-b", 0.3)
    assert second is not None
    assert second.token > first.token
    assert not a.renew_lease(first)  # the dead worker's lease cannot come back


def test_release_frees_the_account_only_for_its_holder(redis_namespace):
    """A stale lease cannot release the new holder's lease."""
    a, b = process(redis_namespace), process(redis_namespace)
    stale = a.acquire_lease("acct-1", "worker-a", 0.2)
    time.sleep(0.3)  # wall-clock-ok
    current = b.acquire_lease("acct-1", "worker-b", 5)
    a.release_lease(stale)
    assert b.lease_holder("acct-1") == ("worker-b", current.token)
    b.release_lease(current)
    assert b.lease_holder("acct-1") is None


def test_a_paused_worker_that_lost_its_lease_cannot_write(redis_namespace, tmp_path):
    """The fencing token reaches the store: the old holder's late write is refused whole."""
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    a, b = process(redis_namespace), process(redis_namespace)
    old = a.acquire_lease("acct-1", "worker-a", 0.2)
    store.fenced("acct-1", old.token).record_audit("acct-1", "enforce", "worker-a", "cycle 1")
    time.sleep(0.3)  # wall-clock-ok: worker-a is paused (GC, VM migration) past its lease
    new = b.acquire_lease("acct-1", "worker-b", 5)
    store.fenced("acct-1", new.token).halt("acct-1", "over the cap", "worker-b")
    with pytest.raises(LeaseLostError):
        store.fenced("acct-1", old.token).resume("acct-1", "worker-a", "stale view")
    assert store.is_halted("acct-1")


# --------------------------------------------------------------------------- nonces


def test_nonces_strictly_increase_across_processes_and_threads(redis_namespace):
    """4 processes x 4 threads x 200 nonces on one key: all distinct, each thread increasing."""
    sources = [RedisNonceSource(process(redis_namespace), "api-key-1") for _ in range(4)]
    drawn: list[list[int]] = []
    lock = threading.Lock()

    def draw(source) -> None:
        mine = [source.next() for _ in range(200)]
        with lock:
            drawn.append(mine)

    threads = [threading.Thread(target=draw, args=(s,)) for s in sources for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [n for mine in drawn for n in mine]
    assert len(set(everything)) == 16 * 200
    assert all(mine == sorted(mine) and len(set(mine)) == 200 for mine in drawn)
    assert min(everything) >= int(time.time() * 1000) - 60_000  # wall-clock-ok: ms nonces


def test_a_resync_jumps_the_fleets_counter_and_keys_are_separate(redis_namespace):
    """After a refused nonce every process draws past the jump; another key is untouched."""
    a = RedisNonceSource(process(redis_namespace), "api-key-1", resync_jump_ms=60_000)
    b = RedisNonceSource(process(redis_namespace), "api-key-1")
    other = RedisNonceSource(process(redis_namespace), "api-key-2")
    before = a.next()
    a.resync()
    assert b.next() >= before + 60_000
    assert a.collisions == 1
    assert other.next() < before + 60_000
    keys = [k.decode() for k in process(redis_namespace)._redis.keys(f"{redis_namespace}:*")]
    assert not any("api-key" in k for k in keys)  # stored under a hash, never the key


# --------------------------------------------------------------------------- sharing the accounts


def test_live_workers_split_the_accounts_and_a_departure_moves_only_its_share(redis_namespace):
    """Rendezvous hashing: ~1/4 each of 1,000 accounts; when one leaves, only its share moves."""
    from brokerguard.coordination.leases import AccountLeases  # noqa: PLC0415 (as below)

    workers = [AccountLeases(process(redis_namespace), ttl=5, owner=f"w{i}") for i in range(4)]
    for worker in workers:
        worker.begin_pass()
    for worker in workers:
        worker.begin_pass()  # everyone has now seen everyone
    accounts = [f"acct-{n:04d}" for n in range(1000)]
    owners = {a: [w.owner for w in workers if w.prefers(a)] for a in accounts}
    assert all(len(o) == 1 for o in owners.values())  # exactly one preferred worker each
    shares = {w.owner: sum(1 for o in owners.values() if o == [w.owner]) for w in workers}
    assert all(180 <= n <= 320 for n in shares.values()), shares

    workers[3].release_all()  # w3 leaves cleanly
    for worker in workers[:3]:
        worker.begin_pass()
    after = {a: [w.owner for w in workers[:3] if w.prefers(a)] for a in accounts}
    assert all(len(o) == 1 for o in after.values())
    moved = [a for a in accounts if after[a] != owners[a]]
    assert set(moved) == {a for a in accounts if owners[a] == ["w3"]}


def test_a_worker_gives_back_an_account_another_live_worker_prefers(redis_namespace):
    """The first worker up takes everything; it hands the newcomer's share over, never drops it."""
    from brokerguard.coordination.leases import AccountLeases  # noqa: PLC0415 (as below)

    first = AccountLeases(process(redis_namespace), ttl=5, owner="first")
    first.begin_pass()
    accounts = [f"acct-{n}" for n in range(40)]
    assert all(first.hold(a) is not None for a in accounts)
    newcomer = AccountLeases(process(redis_namespace), ttl=5, owner="newcomer")
    newcomer.begin_pass()
    first.begin_pass()
    for account in accounts:
        first.hold(account)  # keeps its share, releases the newcomer's
    theirs = [a for a in accounts if newcomer.prefers(a)]
    assert theirs
    # Handed over, not dropped: the newcomer's name is on the lease before it even asks.
    holders = first.coordinator.lease_holders(theirs)
    assert {h[0] for h in holders.values() if h} == {"newcomer"}
    assert all(holders.values())
    assert all(newcomer.hold(a) is not None for a in theirs)
    assert set(first.held()) == set(accounts) - set(theirs)


# --------------------------------------------------------------------------- fleet-wide slots


@pytest.mark.parametrize("shared", [True, False])
def test_two_processes_gates_share_one_accounts_cap(redis_namespace, clock, shared):
    """32 threads through two processes' gates race for 8 slots of one account.

    With SharedSlots the fleet opens at most 8 positions; without (the control), each gate
    counts only its own reservations and the account blows through its cap.
    """
    from brokerguard.coordination import SharedSlots  # noqa: PLC0415 (this test only)
    from brokerguard.risk import EntryDenied, TradingGate  # noqa: PLC0415 (this test only)
    from tests.risk.worlds import coins, paper_account  # noqa: PLC0415 (this test only)

    prices = coins(40)
    broker = paper_account(clock, prices=prices, positions={}, settle_delay=0)
    gates = [
        TradingGate(
            broker,
            8,
            clock=clock,
            slots=SharedSlots(process(redis_namespace)) if shared else None,
        )
        for _ in range(2)
    ]
    start = threading.Barrier(32)
    symbols = list(prices)

    def enter(n: int) -> None:
        gate = gates[n % 2]
        start.wait()
        with contextlib.suppress(EntryDenied), gate.reserve_entry(symbols[n]):
            time.sleep(0.01)  # wall-clock-ok: the order is in flight while others race
            broker.place_market_order(symbols[n], "buy", 1, client_order_id=f"e{n}")

    threads = [threading.Thread(target=enter, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    held = len(broker.true_positions())
    if shared:
        assert held <= 8
        assert held == 8  # and the slots were all used
    else:
        assert held > 8  # the control: two gates, two caps
