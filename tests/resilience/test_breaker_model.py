"""Model-based test: the breaker against the simplest reference model of its specification.

Hypothesis drives random sequences of calls (succeeding, failing in each way), time passing
and operator actions through both, and checks after every step that they agree on the state,
the health, the counts, trading permission and the next probe time.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from brokerguard import (
    BrokerCircuitBreaker,
    BrokerRejection,
    CircuitOpenError,
    CircuitState,
    FatalBrokerError,
    TransientBrokerError,
)
from brokerguard.testing import FakeClock

C, O, H = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN

ERRORS = {
    "transient": lambda: TransientBrokerError("503"),
    "failure": lambda: ValueError("garbled"),
    "fatal": lambda: FatalBrokerError("invalid key"),
    "rejection": lambda: BrokerRejection("insufficient funds"),
}


@dataclass
class Model:
    """The specification, written as plainly as possible (single-threaded, no generations)."""

    failure_threshold: int
    success_threshold: int
    recovery_timeout: float
    max_recovery_timeout: float
    state: CircuitState = C
    streak: int = 0
    recovery_now: float = 0.0
    open_until: float = 0.0
    forced: bool = False
    probe_successes: int = 0
    calls: int = 0
    failures: int = 0
    rejected: int = 0

    def __post_init__(self) -> None:
        self.recovery_now = self.recovery_timeout

    def open(self, now: float, *, forced: bool = False) -> None:
        if self.state is H and not forced:
            self.recovery_now = min(self.recovery_now * 2, self.max_recovery_timeout)
        self.state, self.forced, self.open_until = O, forced, now + self.recovery_now

    def close(self) -> None:
        self.state, self.streak, self.forced = C, 0, False
        self.recovery_now = self.recovery_timeout

    def call(self, outcome: str, now: float) -> bool:
        """Return whether the call reached the broker."""
        if self.state is O:
            if self.forced or now < self.open_until:
                self.rejected += 1
                return False
            self.state, self.probe_successes = H, 0
        self.calls += 1
        if outcome == "ok":
            if self.state is H:
                self.probe_successes += 1
                if self.probe_successes >= self.success_threshold:
                    self.close()
            else:
                self.streak = 0
        elif outcome != "rejection":
            self.failures += 1
            self.streak += 1
            if self.state is H or outcome == "fatal" or self.streak >= self.failure_threshold:
                self.open(now)
        return True

    def health(self) -> str:
        if self.state is O:
            return "offline"
        return "degraded" if self.state is H or self.streak else "healthy"

    def next_probe_in(self, now: float) -> float | None:
        if self.state is H:
            return 0.0
        if self.state is C or self.forced:
            return None
        return max(0.0, self.open_until - now)


class BreakerVersusModel(RuleBasedStateMachine):
    """Random walks through the breaker and the model, which must always agree."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(start=500.0)

    @initialize(
        failure_threshold=st.integers(1, 5),
        success_threshold=st.integers(1, 3),
        recovery_timeout=st.sampled_from([1.0, 10.0, 60.0]),
        growth=st.sampled_from([1.0, 3.0, 10.0]),
    )
    def build(self, failure_threshold, success_threshold, recovery_timeout, growth):
        self.breaker = BrokerCircuitBreaker(
            "model",
            failure_threshold=failure_threshold,
            recovery_timeout=recovery_timeout,
            success_threshold=success_threshold,
            max_recovery_timeout=recovery_timeout * growth,
            clock=self.clock,
        )
        self.model = Model(
            failure_threshold, success_threshold, recovery_timeout, recovery_timeout * growth
        )

    @rule(outcome=st.sampled_from(["ok", "transient", "failure", "fatal", "rejection"]))
    def call(self, outcome):
        ran = []

        def broker_call() -> str:
            ran.append(True)
            if outcome == "ok":
                return "ok"
            raise ERRORS[outcome]()  # noqa: RSE102 (a factory call, not a class)

        reached = self.model.call(outcome, self.clock.monotonic())
        if reached:
            if outcome == "ok":
                assert self.breaker.call(broker_call) == "ok"
            else:
                with pytest.raises(type(ERRORS[outcome]())):
                    self.breaker.call(broker_call)
        else:
            with pytest.raises(CircuitOpenError):
                self.breaker.call(broker_call)
        assert bool(ran) == reached

    @rule(seconds=st.sampled_from([0.5, 1.0, 5.0, 30.0, 60.0, 120.0, 1000.0]))
    def wait(self, seconds):
        self.clock.advance(seconds)

    @rule()
    def wait_until_probe_time(self):
        # Reaching the probe time exactly (and not a second later) is where off-by-one and
        # doubling bugs live; random waits would find it only by luck.
        wait = self.model.next_probe_in(self.clock.monotonic())
        if wait:
            self.clock.advance(wait)

    @rule(outcome=st.sampled_from(["transient", "failure"]))
    def fail_until_open(self, outcome):
        for _ in range(self.model.failure_threshold):
            self.call(outcome)

    @rule()
    def force_open(self):
        self.breaker.force_open("model test")
        self.model.open(self.clock.monotonic(), forced=True)

    @rule()
    def force_closed(self):
        self.breaker.force_closed()
        self.model.close()

    @rule()
    def reset(self):
        self.breaker.reset()
        self.model.close()
        self.model.calls = self.model.failures = self.model.rejected = 0

    @invariant()
    def agree(self):
        if not hasattr(self, "breaker"):
            return
        now = self.clock.monotonic()
        snap = self.breaker.snapshot()
        model = self.model
        assert snap.circuit_state is model.state
        assert snap.health_state.value == model.health()
        assert snap.consecutive_failures == model.streak
        assert snap.total_calls == model.calls
        assert snap.total_failures == model.failures
        assert snap.total_rejected == model.rejected
        assert snap.trading_allowed == (model.state is C)
        assert self.breaker.is_trading_allowed() == (model.state is C)
        assert snap.next_probe_in_seconds == model.next_probe_in(now)


TestBreakerVersusModel = BreakerVersusModel.TestCase
TestBreakerVersusModel.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
