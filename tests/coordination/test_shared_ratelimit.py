"""Per-API-key rate limits shared by a fleet: one token bucket in Redis, weights, fail closed.

"Workers" are separate RedisCoordinator + SharedRateLimiter instances (own connections). The
budget tests inject the bucket's clock (``time_us``) so that they are exact; one test runs on
Redis's own ``TIME`` with threads and checks the same bound on the script's answers.
"""

from __future__ import annotations

import logging
import random
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brokerguard.config import parse_config
from brokerguard.coordination import (
    FleetRateLimitedError,
    NotAdmittedError,
    RedisCoordinator,
    SharedRateLimiter,
    bucket_fingerprint,
)
from brokerguard.coordination.ratelimit import BucketState, TakeResult, take
from brokerguard.errors import (
    ConfigurationError,
    CoordinationUnavailableError,
    RateLimitedError,
)
from brokerguard.orders import OrderState
from brokerguard.resilience import RateLimiter
from brokerguard.service import GuardService
from brokerguard.testing import FakeClock
from tests.brokers.helpers import FakeAdapter
from tests.conftest import REDIS_URL

DEAD_REDIS = "redis://127.0.0.1:9/0"  # the discard port: nothing listens
API_KEY = "kR4k3n-AP1-k3y-VALUE-0123456789abcdefXYZ"
SECOND_KEY = "an0ther-AP1-k3y-VALUE-9876543210fedcbaQRS"
US = 1_000_000
T0 = 1_700_000_000 * US  # the injected bucket clock starts at a realistic epoch (us)


def worker(namespace: str) -> RedisCoordinator:
    """Another process's view of the fleet: its own connections."""
    return RedisCoordinator(REDIS_URL, namespace=namespace)


def limiter(coordinator: RedisCoordinator, **kwargs) -> SharedRateLimiter:
    settings = {
        "fingerprint": bucket_fingerprint("kraken", API_KEY),
        "rate": 2.0,
        "burst": 5,
        "clock": FakeClock(),
        "max_wait_s": 60.0,
    }
    settings.update(kwargs)
    return SharedRateLimiter(coordinator, **settings)


def max_window_excess(grants: list[tuple[int, float]], rate: float, capacity: float) -> float:
    """The largest (weight in a window) - (capacity + rate * window length), over all windows.

    `grants` are (due time us, weight). Windows [a, b] bounded by two due times suffice: any
    other window holds no more calls than the tightest one inside it.
    """
    grants = sorted(grants)
    worst = float("-inf")
    for i, (start, _) in enumerate(grants):
        total = 0.0
        for end, weight in grants[i:]:
            total += weight
            worst = max(worst, total - capacity - rate * (end - start) / US)
    return worst


def slack(rate: float) -> float:
    """Allow what whole microseconds cost: rate x 1 us tokens.

    Due times are rounded up, each from the exact schedule: a window between two of them may
    be up to 1 us shorter than the exact one.
    """
    return rate / US + 1e-9


# --------------------------------------------------------------------------- the pure bucket


@given(
    rate=st.sampled_from([0.5, 1.0, 3.0, 20.0]),
    capacity=st.integers(1, 8),
    steps=st.lists(
        st.tuples(
            st.sampled_from([0, 0, 1_000, 50_000, 400_000, 3 * US]),
            st.sampled_from([0.5, 1.0, 1.0, 2.0, 3.0]),
        ),
        min_size=1,
        max_size=80,
    ),
    max_wait_s=st.sampled_from([0.0, 0.5, 2.0, 30.0]),
)
def test_the_bucket_never_lets_a_window_hold_more_than_capacity_plus_rate(
    rate, capacity, steps, max_wait_s
):
    """Whatever the arrivals and weights, calls due in w seconds weigh <= capacity + rate*w."""
    state, now, grants = None, T0, []
    for gap, weight in steps:
        now += gap
        if weight > capacity:
            continue
        state, answer = take(
            state, now, rate=rate, capacity=capacity, weight=weight, max_wait_us=max_wait_s * US
        )
        if answer.granted:
            assert answer.wait_us <= max_wait_s * US
            grants.append((answer.due_us, weight))
    assert max_window_excess(grants, rate, capacity) <= slack(rate)


@given(
    tokens=st.floats(-10, 8, allow_nan=False),
    gap=st.integers(0, 10 * US),
    weight=st.sampled_from([0.5, 1.0, 2.0]),
)
def test_a_refused_take_leaves_the_bucket_as_it_was(tokens, gap, weight):
    """A wait over the limit reserves nothing: the state is returned unchanged."""
    state = BucketState(tokens, T0)
    new, answer = take(state, T0 + gap, rate=1.0, capacity=8, weight=weight, max_wait_us=0)
    if answer.granted:
        assert new is not None
        assert new.tokens == pytest.approx(answer.tokens)
        assert answer.wait_us == 0
    else:
        assert new is state
        assert answer.wait_us > 0


def test_time_going_back_does_not_refill_the_bucket():
    """An earlier clock (a Redis failover to a lagging host) refills nothing."""
    state, _ = take(None, T0, rate=1.0, capacity=2, weight=2, max_wait_us=0)
    _, answer = take(state, T0 - 10 * US, rate=1.0, capacity=2, weight=1, max_wait_us=0)
    assert not answer.granted
    assert answer.wait_us == US


@given(
    rate=st.sampled_from([0.5, 1.0, 3.0]),
    burst=st.integers(2, 6),
    calls=st.lists(
        st.tuples(st.sampled_from([0.0, 0.1, 1.0]), st.sampled_from([0.5, 1.0, 2.0])),
        min_size=1,
        max_size=40,
    ),
)
def test_the_local_limiter_counts_weights_against_the_same_bound(rate, burst, calls):
    """One process's RateLimiter: weighted calls in w seconds weigh <= burst + rate*w."""
    clock = FakeClock()
    local = RateLimiter(rate, burst=burst, clock=clock)
    grants = []
    for gap, weight in calls:
        clock.advance(gap)
        local.acquire(weight)  # sleeps (the fake clock moves) until the tokens are due
        grants.append((clock.monotonic() * US, weight))
    assert max_window_excess(grants, rate, burst) <= slack(rate)


@pytest.mark.parametrize("weight", [0, -1, 6, float("nan"), float("inf"), True])
def test_a_weight_outside_zero_to_burst_is_refused_before_any_call(weight):
    """A call weighing more than the bucket holds could never be served: a config error."""
    with pytest.raises(ConfigurationError, match="weight"):
        RateLimiter(1.0, burst=5, clock=FakeClock()).acquire(weight)


# --------------------------------------------------------------------------- one bucket, N workers


def test_n_workers_on_one_key_together_never_exceed_the_budget(redis_namespace):
    """Five workers interleaving weighted calls: the fleet, not each worker, gets the budget."""
    rng = random.Random(15)
    now = [T0]
    workers = [
        limiter(worker(redis_namespace), rate=4.0, burst=6, time_us=lambda: now[0])
        for _ in range(5)
    ]
    grants = []
    for _ in range(400):
        now[0] += rng.choice([0, 0, 10_000, 100_000, 300_000])
        weight = rng.choice([1.0, 1.0, 2.0, 0.5])
        answer = rng.choice(workers).take(weight)
        if answer.granted:
            grants.append((answer.due_us, weight))
    elapsed = (max(due for due, _ in grants) - T0) / US
    assert sum(w for _, w in grants) <= 6 + 4.0 * elapsed + slack(4.0)
    assert max_window_excess(grants, 4.0, 6) <= slack(4.0)
    # Five local limiters would have granted about five times as much: the bound binds.
    assert sum(w for _, w in grants) >= 0.9 * 4.0 * elapsed


def test_the_script_and_the_pure_bucket_agree_step_by_step(redis_namespace):
    """The Lua script is the pure `take`, answer for answer (so the properties hold for it)."""
    rng = random.Random(7)
    now = [T0]
    shared = limiter(
        worker(redis_namespace), rate=3.0, burst=4, max_wait_s=1.5, time_us=lambda: now[0]
    )
    state = None
    for _ in range(200):
        now[0] += rng.choice([0, 1_000, 200_000, 700_000, 2 * US])
        weight = rng.choice([0.5, 1.0, 2.0, 4.0])
        state, expected = take(
            state, now[0], rate=3.0, capacity=4, weight=weight, max_wait_us=int(1.5 * US)
        )
        assert shared.take(weight) == expected


def test_workers_on_redis_time_with_threads_stay_within_the_budget(redis_namespace):
    """On Redis's own clock, 4 workers x 3 threads asking at once: due times fit the bound."""
    workers = [limiter(worker(redis_namespace), rate=50.0, burst=10) for _ in range(4)]
    answers: list[tuple[TakeResult, float]] = []
    lock = threading.Lock()

    def ask(shared: SharedRateLimiter, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(40):
            weight = rng.choice([1.0, 2.0])
            answer = shared.take(weight)
            with lock:
                answers.append((answer, weight))

    threads = [
        threading.Thread(target=ask, args=(shared, n * 10 + k))
        for n, shared in enumerate(workers)
        for k in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 480
    assert all(answer.granted for answer, _ in answers)  # max_wait 60 s covers the queue
    grants = [(answer.due_us, weight) for answer, weight in answers]
    assert max_window_excess(grants, 50.0, 10) <= slack(50.0)


def test_acquire_sleeps_on_the_injected_clock_until_the_tokens_are_due(redis_namespace):
    """An empty bucket answers a wait; the caller sleeps it on its clock, asking Redis once."""
    clock = FakeClock()
    now = [T0]
    shared = limiter(
        worker(redis_namespace), rate=2.0, burst=3, clock=clock, time_us=lambda: now[0]
    )
    waits = [shared.acquire() for _ in range(3)] + [shared.acquire(2.0)]
    assert waits == [0.0, 0.0, 0.0, 1.0]  # 2 tokens at 2/s
    assert clock.monotonic() == pytest.approx(1.0)
    assert shared.waited == pytest.approx(1.0)


def test_weights_take_that_many_tokens_from_the_whole_fleet(redis_namespace):
    """A call of weight 4 leaves one token of five for every other worker."""
    now = [T0]
    a = limiter(worker(redis_namespace), rate=1.0, burst=5, time_us=lambda: now[0])
    b = limiter(worker(redis_namespace), rate=1.0, burst=5, time_us=lambda: now[0])
    assert a.take(4.0).wait_us == 0
    assert b.take(1.0).wait_us == 0
    answer = b.take(2.0)
    assert answer.wait_us == 2 * US  # the fleet's bucket is empty: 2 tokens at 1/s
    assert answer.tokens == pytest.approx(-2.0)


def test_a_wait_over_max_wait_raises_rate_limited_and_reserves_nothing(redis_namespace):
    """Refused: FleetRateLimitedError (not processed, retry_after), and the budget is intact."""
    clock = FakeClock()
    now = [T0]
    a = limiter(
        worker(redis_namespace),
        rate=1.0,
        burst=2,
        clock=clock,
        max_wait_s=1.0,
        time_us=lambda: now[0],
    )
    a.acquire(2.0)
    with pytest.raises(FleetRateLimitedError) as refused:
        a.acquire(2.0)  # due in 2 s > 1 s
    assert isinstance(refused.value, RateLimitedError)
    assert refused.value.not_processed is True
    assert refused.value.retry_after == pytest.approx(2.0)
    assert clock.monotonic() == 0  # it did not sleep
    assert a.refused == 1
    now[0] += 1 * US
    assert a.acquire(1.0) == 0.0  # the refusal reserved nothing: one token refilled, one taken


def test_two_api_keys_have_independent_buckets(redis_namespace):
    """Spending one key's budget leaves another key's (and another venue's) untouched."""
    now = [T0]
    coordinator = worker(redis_namespace)
    kraken = limiter(coordinator, burst=2, time_us=lambda: now[0])
    other = limiter(
        coordinator,
        fingerprint=bucket_fingerprint("kraken", SECOND_KEY),
        burst=2,
        time_us=lambda: now[0],
    )
    venue = limiter(
        coordinator,
        fingerprint=bucket_fingerprint("coinbase", API_KEY),
        burst=2,
        time_us=lambda: now[0],
    )
    kraken.take(2.0)
    assert kraken.take(1.0).wait_us > 0
    assert other.take(2.0).wait_us == 0
    assert venue.take(2.0).wait_us == 0
    assert len({kraken.key, other.key, venue.key}) == 3


def test_an_idle_bucket_expires_from_redis_once_it_would_be_full(redis_namespace):
    """The key carries a ttl of about burst/rate + max_wait: rotated keys leave no litter."""
    coordinator = worker(redis_namespace)
    shared = limiter(coordinator, rate=2.0, burst=5, max_wait_s=10.0)
    shared.take()
    ttl_ms = coordinator.client.pttl(shared.key)
    assert 0 < ttl_ms <= (5 / 2.0 + 10.0 + 1.0) * 1000


# --------------------------------------------------------------------------- secrets


def test_no_key_material_is_in_redis_or_in_the_errors(redis_namespace, monkeypatch, caplog):
    """Redis keys, hash fields and values never hold the API key nor the variable naming it."""
    monkeypatch.setenv("KRAKEN_API_KEY_FOR_RL", API_KEY)
    monkeypatch.setenv("KRAKEN_API_SECRET_FOR_RL", "c2VjcmV0LXNlY3JldA==")
    config = parse_config(
        {
            "state_url": "sqlite:///:memory:",
            "coordination_url": REDIS_URL,
            "coordination": {"namespace": redis_namespace},
            "alerts": [],
            "brokers": {
                "kraken": {
                    "kind": "ccxt",
                    "exchange": "kraken",
                    "api_key_env": "KRAKEN_API_KEY_FOR_RL",
                    "api_secret_env": "KRAKEN_API_SECRET_FOR_RL",
                    "api_url": "http://127.0.0.1:9",
                    "max_calls_per_s": 5,
                    "burst": 3,
                }
            },
            "accounts": [{"id": "acct", "broker": "kraken", "max_positions": 4}],
        }
    )
    service = GuardService(config)
    try:
        shared = service.rate_limiters["kraken"]
        assert isinstance(shared, SharedRateLimiter)
        assert shared.fingerprint == bucket_fingerprint("kraken", API_KEY)  # the key's value
        shared.acquire(2.0)
        client = service.coordinator.client
        keys = [k.decode() for k in client.scan_iter(match=f"{redis_namespace}:*")]
        buckets = [k for k in keys if ":ratelimit:" in k]
        assert buckets == [shared.key]
        dump = " ".join(
            [*keys, *(f"{f!r}{v!r}" for k in buckets for f, v in client.hgetall(k).items())]
        )
        for secret in (API_KEY, "KRAKEN_API_KEY_FOR_RL", API_KEY[:12]):
            assert secret not in dump
    finally:
        service.close()
    with caplog.at_level(logging.DEBUG):
        dead = limiter(RedisCoordinator(DEAD_REDIS, namespace="x", timeout=0.2))
        with pytest.raises(NotAdmittedError) as refused:
            dead.acquire()
    assert API_KEY not in str(refused.value) + repr(dead) + caplog.text


# --------------------------------------------------------------------------- fail closed


def test_redis_unreachable_means_the_call_is_not_made(monkeypatch):
    """No bucket to ask: NotAdmittedError before the adapter is called, no local fallback."""
    clock = FakeClock()
    dead = limiter(RedisCoordinator(DEAD_REDIS, namespace="x", timeout=0.2), clock=clock)
    with pytest.raises(NotAdmittedError) as refused:
        dead.acquire()
    assert isinstance(refused.value, CoordinationUnavailableError)
    assert refused.value.not_processed is True
    assert clock.monotonic() == 0
    assert not dead.coordinator.reachable

    broker = FakeAdapter("kraken", clock=clock, rate_limiter=dead)
    with pytest.raises(CoordinationUnavailableError):
        broker.get_positions()
    assert "fetch_positions" not in broker.calls  # nothing reached the broker


def test_an_order_refused_by_the_limiter_is_not_placed_never_unresolved(redis_namespace):
    """Redis down, or the key's budget spent past max_wait: no send, state NOT_PLACED."""
    clock = FakeClock()
    dead = limiter(RedisCoordinator(DEAD_REDIS, namespace="x", timeout=0.2), clock=clock)
    now = [T0]
    spent = limiter(
        worker(redis_namespace),
        rate=0.01,
        burst=1,
        clock=clock,
        max_wait_s=0.5,
        time_us=lambda: now[0],
    )
    spent.take(1.0)  # another worker just spent the key's one token: due again in 100 s
    for shared, error in ((dead, NotAdmittedError), (spent, FleetRateLimitedError)):
        broker = FakeAdapter("kraken", clock=clock, rate_limiter=shared)
        with pytest.raises(error):
            broker.place_market_order("BTC/USD", "buy", "0.1", client_order_id="c1")
        assert broker.submissions == {}
        assert broker.order_state("c1") is OrderState.NOT_PLACED
        assert broker.unresolved_orders() == []


def test_a_broker_takes_each_raw_call_at_its_configured_weight(redis_namespace):
    """call_weights price the SPI calls: fetch_positions at 3 empties a bucket of 3."""
    now = [T0]
    clock = FakeClock()
    shared = limiter(
        worker(redis_namespace), rate=1.0, burst=3, clock=clock, time_us=lambda: now[0]
    )
    broker = FakeAdapter("kraken", clock=clock, rate_limiter=shared)
    broker.call_weights = {"fetch_positions": 3.0}
    broker.get_positions()
    assert shared.take(1.0).wait_us == US  # the positions read took all three tokens


# --------------------------------------------------------------------------- wiring


def fleet(namespace: str, **broker) -> dict:
    return {
        "state_url": "sqlite:///:memory:",
        "coordination_url": REDIS_URL,
        "coordination": {"namespace": namespace, "rate_limit_max_wait_s": 2},
        "alerts": [],
        "brokers": {"paper": {"kind": "paper", "settle_delay_s": 0, **broker}},
        "accounts": [{"id": "acct", "broker": "paper", "max_positions": 4}],
    }


def test_workers_of_a_fleet_share_the_brokers_bucket(redis_namespace):
    """Two GuardService workers with coordination_url get one Redis bucket for the broker."""
    config = parse_config(fleet(redis_namespace, max_calls_per_s=3, burst=4))
    a, b = GuardService(config), GuardService(config)
    try:
        limiters = [a.rate_limiters["paper"], b.rate_limiters["paper"]]
        assert all(isinstance(x, SharedRateLimiter) for x in limiters)
        assert limiters[0].key == limiters[1].key
        assert limiters[0].max_wait_s == 2
        limiters[0].take(4.0)
        assert limiters[1].take(1.0).wait_us > 0  # a's calls spent b's budget
        assert a.status()["brokers"]["paper"]["rate_limit"]["fleet_wide"] is True
    finally:
        a.close()
        b.close()


def test_without_coordination_the_limiter_stays_local():
    """Embedded (no coordination_url): the process's own RateLimiter, as before."""
    config = parse_config(
        {
            "alerts": [],
            "brokers": {"paper": {"kind": "paper", "max_calls_per_s": 3, "burst": 4}},
            "accounts": [{"id": "acct", "broker": "paper", "max_positions": 4}],
            "state_url": "sqlite:///:memory:",
        }
    )
    service = GuardService(config)
    try:
        assert type(service.rate_limiters["paper"]) is RateLimiter
        assert service.status()["brokers"]["paper"]["rate_limit"]["fleet_wide"] is False
    finally:
        service.close()


def test_a_call_weight_above_the_burst_is_refused_by_the_config():
    """fetch_fills weighing 6 with burst 5 could never be served: refused at load."""
    with pytest.raises(ConfigurationError, match="fetch_fills"):
        parse_config(
            {
                "alerts": [],
                "brokers": {
                    "paper": {"kind": "paper", "burst": 5, "call_weights": {"fetch_fills": 6}}
                },
                "accounts": [{"id": "acct", "broker": "paper", "max_positions": 4}],
            }
        )
