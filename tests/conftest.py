"""Shared fixtures: every test starts with an empty breaker registry and breaking enabled."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from brokerguard import clear_registry, set_breaking_enabled
from brokerguard.testing import FakeClock

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture(autouse=True)
def _fresh_resilience_state() -> Iterator[None]:
    clear_registry()
    set_breaking_enabled(True)
    yield
    clear_registry()
    set_breaking_enabled(True)


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock starting at t=1000 s (far from zero so that off-by-origin bugs show)."""
    return FakeClock(start=1000.0)
