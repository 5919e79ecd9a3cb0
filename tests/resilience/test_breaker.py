"""The circuit breaker's behaviour, pinned on a FakeClock (nothing here sleeps for real)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest

from brokerguard import (
    BrokerCircuitBreaker,
    BrokerHealthState,
    BrokerRejection,
    CircuitOpenError,
    CircuitState,
    ConfigurationError,
    FatalBrokerError,
    Outcome,
    TransientBrokerError,
    set_breaking_enabled,
)
from brokerguard.testing import FakeClock

from .helpers import Scripted, ok

STATUS_KEYS = {
    "broker",
    "health_state",
    "circuit_state",
    "failure_count",
    "total_calls",
    "total_failures",
    "failure_rate",
    "last_success",
    "last_failure",
    "state_uptime_seconds",
    "trading_allowed",
    "scope",
    "next_probe_in_seconds",
}


def make(clock: FakeClock, **kwargs) -> BrokerCircuitBreaker:
    kwargs.setdefault("failure_threshold", 3)
    kwargs.setdefault("recovery_timeout", 60.0)
    return BrokerCircuitBreaker("kraken", clock=clock, **kwargs)


def fail(breaker: BrokerCircuitBreaker, times: int, exc: Exception | None = None) -> None:
    for _ in range(times):
        with pytest.raises(type(exc) if exc else ConnectionError):
            breaker.call(Scripted([exc or ConnectionError("reset")]))


# --------------------------------------------------------------------------- the seed's suite


def test_stays_closed_and_returns_results_on_success(clock):
    """Successful calls pass their result through and leave the circuit closed and healthy."""
    breaker = make(clock)
    assert breaker.call(lambda a, b=0: a + b, 2, b=3) == 5
    assert breaker.state is CircuitState.CLOSED
    assert breaker.get_broker_health_state() is BrokerHealthState.HEALTHY
    assert breaker.is_trading_allowed()


def test_opens_after_the_failure_threshold(clock):
    """`failure_threshold` consecutive failures open the circuit, not one fewer."""
    breaker = make(clock, failure_threshold=3)
    fail(breaker, 2)
    assert breaker.state is CircuitState.CLOSED
    fail(breaker, 1)
    assert breaker.state is CircuitState.OPEN


def test_trading_is_blocked_and_calls_rejected_while_open(clock):
    """An open circuit rejects calls without running them and blocks trading."""
    breaker = make(clock)
    fail(breaker, 3)
    probe = Scripted(["ok"])
    clock.advance(59.0)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(probe)
    assert probe.calls == 0
    assert info.value.broker == "kraken"
    assert info.value.next_probe_in == pytest.approx(1.0)
    assert not breaker.is_trading_allowed()
    assert breaker.get_broker_health_state() is BrokerHealthState.OFFLINE


def test_recovers_through_half_open_after_success_threshold_probes(clock):
    """After the recovery timeout, `success_threshold` probe successes close the circuit."""
    breaker = make(clock, success_threshold=2)
    fail(breaker, 3)
    clock.advance(60.0)
    assert breaker.probe_due()
    assert breaker.call(ok) == "ok"
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.get_broker_health_state() is BrokerHealthState.DEGRADED
    assert not breaker.is_trading_allowed()
    assert breaker.call(ok) == "ok"
    assert breaker.state is CircuitState.CLOSED
    assert breaker.is_trading_allowed()
    assert breaker.get_broker_health_state() is BrokerHealthState.HEALTHY


def test_health_tracks_the_failure_streak(clock):
    """HEALTHY, then DEGRADED on a failure, HEALTHY again after a success, OFFLINE when open."""
    breaker = make(clock)
    assert breaker.get_broker_health_state() is BrokerHealthState.HEALTHY
    fail(breaker, 1)
    assert breaker.get_broker_health_state() is BrokerHealthState.DEGRADED
    assert breaker.is_trading_allowed()  # degraded but closed: still trading
    breaker.call(ok)
    assert breaker.get_broker_health_state() is BrokerHealthState.HEALTHY
    fail(breaker, 3)
    assert breaker.get_broker_health_state() is BrokerHealthState.OFFLINE


def test_a_success_resets_the_streak(clock):
    """Failures must be consecutive: a success in between starts the count again."""
    breaker = make(clock, failure_threshold=3)
    fail(breaker, 2)
    breaker.call(ok)
    fail(breaker, 2)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.get_status()["failure_count"] == 2


# --------------------------------------------------------------------------- classification


def test_a_rejection_passes_through_and_counts_as_neither(clock):
    """A business rejection is re-raised, is not a failure, and does not reset the streak."""
    breaker = make(clock, failure_threshold=3)
    fail(breaker, 2)
    with pytest.raises(BrokerRejection):
        breaker.call(Scripted([BrokerRejection("insufficient funds")]))
    status = breaker.get_status()
    assert status["failure_count"] == 2  # not reset, unlike pybreaker & co.
    assert status["total_failures"] == 2
    fail(breaker, 1)
    assert breaker.state is CircuitState.OPEN


def test_a_fatal_error_opens_at_once(clock):
    """Authentication failures open the circuit on the first occurrence."""
    breaker = make(clock, failure_threshold=5)
    fail(breaker, 1, FatalBrokerError("EAPI:Invalid key"))
    assert breaker.state is CircuitState.OPEN
    assert not breaker.is_trading_allowed()


def test_other_exceptions_are_counted(clock):
    """A bug or garbled payload counts as a failure (it is not retried, see test_retry)."""
    breaker = make(clock, failure_threshold=2)
    fail(breaker, 2, ValueError("garbled"))
    assert breaker.state is CircuitState.OPEN


def test_base_exceptions_are_not_outcomes(clock):
    """KeyboardInterrupt and cancellation say nothing about the broker and are not counted."""
    breaker = make(clock)
    with pytest.raises(KeyboardInterrupt):
        breaker.call(Scripted([KeyboardInterrupt()]))
    assert breaker.get_status()["total_calls"] == 0
    assert breaker.get_broker_health_state() is BrokerHealthState.HEALTHY


def test_the_classifier_is_replaceable(clock):
    """A custom classifier decides: here every error is fatal."""
    breaker = make(clock, failure_threshold=10, classifier=lambda exc: Outcome.FATAL)
    fail(breaker, 1)
    assert breaker.state is CircuitState.OPEN


# --------------------------------------------------------------------------- half-open and recovery


def test_a_failed_probe_reopens_and_doubles_the_recovery_timeout(clock):
    """Each failed probe doubles the wait, up to max_recovery_timeout."""
    breaker = make(clock, recovery_timeout=60.0, max_recovery_timeout=200.0)
    fail(breaker, 3)
    waits = []
    for _ in range(4):
        clock.advance(breaker.next_probe_in())
        fail(breaker, 1)  # the probe fails
        assert breaker.state is CircuitState.OPEN
        waits.append(breaker.next_probe_in())
    assert waits == [120.0, 200.0, 200.0, 200.0]


def test_closing_resets_the_recovery_timeout(clock):
    """After a recovery the next outage starts again from the configured timeout."""
    breaker = make(clock, recovery_timeout=60.0, success_threshold=1)
    fail(breaker, 3)
    clock.advance(60.0)
    fail(breaker, 1)
    assert breaker.next_probe_in() == 120.0
    clock.advance(120.0)
    breaker.call(ok)
    assert breaker.state is CircuitState.CLOSED
    fail(breaker, 3)
    assert breaker.next_probe_in() == 60.0


def test_half_open_admits_at_most_success_threshold_probes(clock):
    """While probes are in flight, further calls are rejected without reaching the broker."""
    breaker = make(clock, success_threshold=2)
    fail(breaker, 3)
    clock.advance(60.0)
    refused = []

    def third() -> str:
        with pytest.raises(CircuitOpenError) as info:
            breaker.call(ok)
        refused.append(info.value.next_probe_in)
        return "ok"

    def second() -> str:
        # Probes 1 and 2 are both in flight while this runs: probe 3 must be refused.
        return third()

    def first() -> str:
        return breaker.call(second)

    assert breaker.call(first) == "ok"
    assert refused == [0.0]
    assert breaker.state is CircuitState.CLOSED


def test_a_rejection_during_half_open_frees_the_probe_slot(clock):
    """A probe that gets a business rejection gives its slot back and decides nothing."""
    breaker = make(clock, success_threshold=1)
    fail(breaker, 3)
    clock.advance(60.0)
    with pytest.raises(BrokerRejection):
        breaker.call(Scripted([BrokerRejection("unknown order")]))
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.call(ok)
    assert breaker.state is CircuitState.CLOSED


def test_a_fatal_probe_reopens(clock):
    """A probe that meets an authentication error reopens the circuit."""
    breaker = make(clock, success_threshold=1)
    fail(breaker, 3)
    clock.advance(60.0)
    fail(breaker, 1, FatalBrokerError("EAPI:Invalid key"))
    assert breaker.state is CircuitState.OPEN


def test_a_late_failure_from_before_the_trip_cannot_reopen_a_recovered_circuit(clock):
    """A call admitted before an outage that fails after recovery is counted, not decisive."""
    breaker = make(clock, failure_threshold=1, success_threshold=1)

    def slow_then_fail() -> None:
        # While this call is in flight the circuit trips, waits, probes and closes again.
        fail(breaker, 1)
        clock.advance(60.0)
        breaker.call(ok)
        assert breaker.state is CircuitState.CLOSED
        raise TransientBrokerError("late timeout")

    with pytest.raises(TransientBrokerError):
        breaker.call(slow_then_fail)
    assert breaker.state is CircuitState.CLOSED
    status = breaker.get_status()
    assert status["total_failures"] == 2
    assert status["failure_count"] == 0


def test_a_probe_overtaken_by_an_operator_cannot_close_the_circuit(clock):
    """A probe that succeeds after an operator forced the circuit open does not close it."""
    breaker = make(clock, success_threshold=1)
    fail(breaker, 3)
    clock.advance(60.0)

    def probe() -> str:
        breaker.force_open("incident 42")
        return "ok"

    assert breaker.call(probe) == "ok"
    assert breaker.state is CircuitState.OPEN
    assert breaker.snapshot().forced_open


def test_a_late_failing_probe_cannot_reopen_a_circuit_an_operator_closed(clock):
    """Evidence from before an operator's decision does not override it."""
    breaker = make(clock, success_threshold=1)
    fail(breaker, 3)
    clock.advance(60.0)

    def probe() -> None:
        breaker.force_closed()
        raise TransientBrokerError("503")

    with pytest.raises(TransientBrokerError):
        breaker.call(probe)
    assert breaker.state is CircuitState.CLOSED


def test_a_cancelled_async_probe_gives_its_slot_back(clock):
    """Cancelling a probe is not a failure; the next call may probe."""
    breaker = make(clock, success_threshold=1)
    fail(breaker, 3)
    clock.advance(60.0)

    async def hang() -> str:
        await asyncio.sleep(3600)
        return "never"

    async def ok_async() -> str:
        return "ok"

    async def main() -> str:
        task = asyncio.create_task(breaker.acall(hang))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert breaker.state is CircuitState.HALF_OPEN
        return await breaker.acall(ok_async)

    assert asyncio.run(main()) == "ok"
    assert breaker.state is CircuitState.CLOSED


# --------------------------------------------------------------------------- async


def test_acall_follows_the_same_rules(clock):
    """The async shell opens, rejects and recovers exactly like the sync one."""
    breaker = make(clock, failure_threshold=2, success_threshold=1)

    async def aboom() -> None:
        raise TimeoutError

    async def aok() -> int:
        return 7

    async def main() -> None:
        for _ in range(2):
            with pytest.raises(TimeoutError):
                await breaker.acall(aboom)
        with pytest.raises(CircuitOpenError):
            await breaker.acall(aok)
        clock.advance(60.0)
        assert await breaker.acall(aok) == 7

    asyncio.run(main())
    assert breaker.state is CircuitState.CLOSED
    assert breaker.get_status()["total_calls"] == 3


def test_acall_resets_the_streak_on_success(clock):
    """An async success clears the failure streak like a sync one."""
    breaker = make(clock)

    async def aok() -> int:
        return 1

    fail(breaker, 2)
    asyncio.run(breaker.acall(aok))
    assert breaker.get_status()["failure_count"] == 0


# --------------------------------------------------------------------------- status


def test_status_has_exactly_the_seed_keys_plus_scope_and_probe_time(clock):
    """The status report's keys are a contract."""
    assert set(make(clock).get_status()) == STATUS_KEYS


def test_status_reports_counts_times_and_states(clock):
    """Counts, ISO timestamps from the injected clock, states as strings, uptime in state."""
    breaker = make(clock, scope="read")
    breaker.call(ok)
    clock.advance(10.0)
    fail(breaker, 3)
    clock.advance(15.0)
    status = breaker.get_status()
    assert status == {
        "broker": "kraken",
        "health_state": "offline",
        "circuit_state": "open",
        "failure_count": 3,
        "total_calls": 4,
        "total_failures": 3,
        "failure_rate": 0.75,
        "last_success": datetime.fromtimestamp(1000.0, UTC).isoformat(),
        "last_failure": datetime.fromtimestamp(1010.0, UTC).isoformat(),
        "state_uptime_seconds": 15.0,
        "trading_allowed": False,
        "scope": "read",
        "next_probe_in_seconds": 45.0,
    }


def test_status_before_any_call(clock):
    """A fresh breaker reports zeros and no timestamps, never a made-up rate."""
    status = make(clock).get_status()
    assert status["total_calls"] == 0
    assert status["failure_rate"] == 0.0
    assert status["last_success"] is None
    assert status["last_failure"] is None
    assert status["next_probe_in_seconds"] is None
    assert status["health_state"] == "healthy"


def test_rejections_are_not_calls_but_are_counted_in_the_snapshot(clock):
    """Calls the circuit refused never reached the broker: they are counted apart."""
    breaker = make(clock)
    fail(breaker, 3)
    for _ in range(5):
        with pytest.raises(CircuitOpenError):
            breaker.call(ok)
    snap = breaker.snapshot()
    assert snap.total_calls == 3
    assert snap.total_rejected == 5
    assert snap.recovery_timeout_seconds == 60.0


# --------------------------------------------------------------------------- operators


def test_force_open_stays_open_until_an_operator_closes_it(clock):
    """A forced-open circuit never probes by itself."""
    breaker = make(clock)
    breaker.force_open("maintenance window")
    clock.advance(10_000.0)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(ok)
    assert info.value.next_probe_in is None
    assert not breaker.probe_due()
    assert breaker.get_status()["next_probe_in_seconds"] is None
    assert "maintenance window" in breaker.snapshot().last_transition_reason
    breaker.force_closed()
    assert breaker.call(ok) == "ok"


def test_force_open_needs_a_reason(clock):
    """An operator action without a reason is refused."""
    with pytest.raises(ConfigurationError):
        make(clock).force_open("  ")


def test_force_closed_clears_the_streak_and_the_backoff(clock):
    """Closing by hand resets the failure streak and the doubled recovery timeout."""
    breaker = make(clock)
    fail(breaker, 3)
    clock.advance(60.0)
    fail(breaker, 1)
    breaker.force_closed()
    assert breaker.get_status()["failure_count"] == 0
    fail(breaker, 3)
    assert breaker.next_probe_in() == 60.0


def test_reset_returns_to_a_fresh_breaker(clock):
    """reset() clears state, streak, counters and timestamps."""
    breaker = make(clock)
    breaker.call(ok)
    fail(breaker, 3)
    breaker.reset()
    status = breaker.get_status()
    assert status["circuit_state"] == "closed"
    assert status["total_calls"] == 0
    assert status["failure_count"] == 0
    assert status["last_failure"] is None


def test_listeners_hear_every_state_change_once(clock):
    """Listeners receive (breaker, old, new) for each change, and only for changes."""
    breaker = make(clock, success_threshold=1)
    heard = []
    breaker.add_listener(lambda b, old, new: heard.append((b is breaker, old, new)))
    fail(breaker, 3)
    breaker.force_open("again")  # already open: not a change
    breaker.force_closed()
    breaker.force_closed()  # already closed: not a change
    C, O = CircuitState.CLOSED, CircuitState.OPEN
    assert heard == [(True, C, O), (True, O, C)]


def test_a_failing_listener_is_logged_and_does_not_break_calls(clock, caplog):
    """A broken alert sink cannot take the broker call down with it."""
    breaker = make(clock, failure_threshold=1)

    def broken(*_args: object) -> None:
        raise RuntimeError("sink down")

    heard = []
    breaker.add_listener(broken)
    breaker.add_listener(lambda *a: heard.append(a[2]))
    with caplog.at_level(logging.ERROR, logger="brokerguard.breaker"):
        fail(breaker, 1)
    assert heard == [CircuitState.OPEN]
    assert "sink down" in caplog.text
    breaker.remove_listener(broken)
    breaker.remove_listener(broken)  # unknown now: ignored


def test_transitions_are_logged_with_broker_scope_and_what_happens_next(clock, caplog):
    """Log lines name the broker and scope and say what the breaker does next."""
    breaker = make(clock, scope="write")
    with caplog.at_level(logging.INFO, logger="brokerguard.breaker"):
        fail(breaker, 3)
    assert "'kraken'" in caplog.text
    assert "'write'" in caplog.text
    assert "rejected for 60s, then probed" in caplog.text


# --------------------------------------------------------------------------- emergency switch


def test_disabling_breaking_passes_calls_through_and_keeps_counting(clock):
    """The rollback switch: no rejection, trading allowed, every outcome still counted."""
    breaker = make(clock)
    fail(breaker, 3)
    set_breaking_enabled(False)
    probe = Scripted(["ok"])
    assert breaker.call(probe) == "ok"
    assert probe.calls == 1
    assert breaker.is_trading_allowed()
    fail(breaker, 2)
    snap = breaker.snapshot()
    assert snap.total_failures == 5
    assert not snap.breaking_enabled
    assert snap.circuit_state is CircuitState.OPEN  # what it would have done
    set_breaking_enabled(True)
    with pytest.raises(CircuitOpenError):
        breaker.call(ok)


def test_breakers_created_while_disabled_pass_through(clock):
    """The switch holds for breakers created after it was flipped."""
    set_breaking_enabled(False)
    breaker = make(clock, failure_threshold=1)
    fail(breaker, 2)
    assert breaker.call(ok) == "ok"


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"failure_threshold": 2.5},
        {"failure_threshold": True},
        {"success_threshold": 0},
        {"recovery_timeout": 0},
        {"recovery_timeout": float("nan")},
        {"max_recovery_timeout": 10.0},  # below recovery_timeout
        {"max_attempts": 0},
        {"max_total_delay": -1.0},
        {"scope": ""},
    ],
)
def test_invalid_settings_are_refused(kwargs):
    """A breaker that cannot keep its promises is refused at construction."""
    with pytest.raises(ConfigurationError):
        BrokerCircuitBreaker("kraken", **kwargs)


def test_an_empty_broker_name_is_refused():
    """Every breaker must say which broker it guards."""
    with pytest.raises(ConfigurationError):
        BrokerCircuitBreaker(" ")


def test_default_backoff_is_capped_at_max_retry_delay():
    """Without a backoff, max_retry_delay is the cap of the default schedule."""
    breaker = BrokerCircuitBreaker("kraken", max_retry_delay=12.0)
    assert breaker.backoff.max_delay == 12.0
    assert breaker.backoff.capped(10) == 12.0


def test_defaults_are_the_documented_ones():
    """Defaults: failure 5, recovery 60 s, success 2, 3 attempts, budget 60 s, cap 30 s, 600 s."""
    breaker = BrokerCircuitBreaker("kraken")
    assert (breaker.failure_threshold, breaker.recovery_timeout, breaker.success_threshold) == (
        5,
        60.0,
        2,
    )
    assert breaker.retry_policy.max_attempts == 3
    assert breaker.retry_policy.max_total_delay == 60.0
    assert breaker.backoff.max_delay == 30.0
    assert breaker.max_recovery_timeout == 600.0
    assert breaker.scope == "default"
    assert "kraken" in repr(breaker)
