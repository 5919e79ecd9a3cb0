"""Shared fixtures: every test starts with an empty breaker registry and breaking enabled."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """A benchmark's main() quiets logging process-wide; later tests read their logs."""
    disabled = logging.root.manager.disable
    ours = logging.getLogger("brokerguard")
    kept = (ours.level, ours.disabled, ours.propagate)
    yield
    logging.disable(disabled)
    ours.disabled, ours.propagate = kept[1], kept[2]
    ours.setLevel(kept[0])  # (setLevel also clears the loggers' cached levels)


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock starting at t=1000 s (far from zero so that off-by-origin bugs show)."""
    return FakeClock(start=1000.0)


PG_URL = os.environ.get("BROKERGUARD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_SERVICES = os.environ.get("BROKERGUARD_REQUIRE_SERVICES") == "1"


def require_service(name: str, problem: str) -> None:
    """Skip (on a laptop) or fail (in CI, BROKERGUARD_REQUIRE_SERVICES=1) when a service is down."""
    message = f"{name} is not reachable: {problem}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} (BROKERGUARD_REQUIRE_SERVICES=1: CI must have it)")
    pytest.skip(f"{message}; start it or set BROKERGUARD_REQUIRE_SERVICES=1 to make this fail")


@pytest.fixture(params=["sqlite-file", "postgresql"])
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store that outlives its connections (reopening sees the same data), on each database."""
    if request.param == "sqlite-file":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    import psycopg  # noqa: PLC0415 (only tests that need PostgreSQL import it)

    schema = f"bg_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        require_service("PostgreSQL", f"{PG_URL}: {exc}")
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield f"{PG_URL}?options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


REDIS_URL = os.environ.get("BROKERGUARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    """A fresh key namespace on the test Redis, deleted afterwards (skip or fail if it is down)."""
    import redis  # noqa: PLC0415 (only tests that need Redis import it)

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        require_service("Redis", f"{REDIS_URL}: {exc}")
    namespace = f"bg-test-{uuid.uuid4().hex[:12]}"
    try:
        yield namespace
    finally:
        keys = list(client.scan_iter(match=f"{namespace}:*"))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
def coordinator(redis_namespace):
    """A RedisCoordinator on the test Redis, in its own namespace."""
    from brokerguard.coordination import RedisCoordinator  # noqa: PLC0415

    opened = RedisCoordinator(REDIS_URL, namespace=redis_namespace)
    yield opened
    opened.close()
