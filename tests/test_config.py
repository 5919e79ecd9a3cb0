"""Configuration: one TOML file, every problem listed by field, no secret ever inline."""

from __future__ import annotations

import pathlib

import pytest

from brokerguard import ConfigurationError
from brokerguard.config import load_config, parse_config, resolve_secret
from brokerguard.resilience import BackoffKind

EXAMPLE = pathlib.Path(__file__).parents[1] / "examples" / "paper.toml"

MINIMAL = {"brokers": {"paper": {"kind": "paper"}}, "accounts": [{"id": "a", "broker": "paper"}]}


def test_the_example_runs_with_no_secrets():
    """examples/paper.toml validates, and names only environment variables."""
    config = load_config(EXAMPLE)
    assert config.accounts[0].id == "paper-main"
    assert config.brokers["paper"].faults.outages_s == [(120.0, 300.0)]
    assert config.server.host == "127.0.0.1"
    assert config.backoff.policy().kind is BackoffKind.FULL


def test_defaults_are_the_documented_ones():
    """A minimal file gets the documented defaults."""
    config = parse_config(MINIMAL)
    assert (config.breaker.failure_threshold, config.breaker.recovery_timeout_s) == (5, 60.0)
    policy = config.backoff.policy()
    assert policy.kind is BackoffKind.FULL  # bench/jitter.py: fewest calls, fastest
    assert [policy.capped(k) for k in (1, 2, 3, 4, 5, 6)] == [2, 4, 8, 16, 30, 30]
    assert config.accounts[0].max_positions == 8
    assert config.accounts[0].count_unpriced is True
    assert config.server.port == 8000
    assert config.server.control_token_env == "BROKERGUARD_CONTROL_TOKEN"  # noqa: S105 (a name)
    assert config.store.url.startswith("sqlite:///")
    assert [a.kind for a in config.alerts] == ["log"]


def test_every_problem_is_listed_by_field_at_once():
    """One run names them all, with where they are."""
    bad = {
        "brokers": {"paper": {"kind": "paper"}, "k": {"kind": "ccxt"}},
        "accounts": [
            {"id": "a", "broker": "nope", "max_positions": -1},
            {"id": "a", "broker": "paper", "settle_timeout_s": "soon"},
        ],
        "server": {"port": 70000},
        "breaker": {"failure_threshold": 0, "recovery_timeout_s": 10, "max_recovery_timeout_s": 5},
        "typo": True,
    }
    with pytest.raises(ConfigurationError) as info:
        parse_config(bad, source="bad.toml")
    text = str(info.value)
    for expected in (
        "bad.toml:",
        "accounts[0].max_positions",
        "accounts[0].broker: 'nope' is not a configured broker",
        "accounts[1].id: 'a' appears twice",
        "accounts[1].settle_timeout_s",
        "server.port",
        "breaker.failure_threshold",
        "brokers.k: a ccxt broker needs `exchange`",
        "typo: Extra inputs are not permitted",
    ):
        assert expected in text, expected


@pytest.mark.parametrize(
    ("section", "key"),
    [("broker", "api_key"), ("broker", "api_secret"), ("alert", "url"), ("alert", "token")],
)
def test_secrets_inline_are_refused_with_a_pointer_to_env(section, key):
    """A secret written in the file is an error that says how to do it instead."""
    data = {**MINIMAL, "brokers": {"paper": {"kind": "paper"}}}
    if section == "broker":
        data["brokers"] = {**data["brokers"], "k": {"kind": "ccxt", "exchange": "kraken", key: "x"}}
    else:
        data["alerts"] = [{"kind": "webhook", key: "https://hooks.example/T0K3N"}]
    with pytest.raises(ConfigurationError) as info:
        parse_config(data)
    assert "secrets never go in the configuration file" in str(info.value)
    assert "x" not in str(info.value).split("problem(s):")[1].replace("exchange", "")
    assert "T0K3N" not in str(info.value)


def test_a_password_in_the_store_url_is_refused():
    """Database passwords stay out of the file too."""
    with pytest.raises(ConfigurationError, match="must not contain a password"):
        parse_config({**MINIMAL, "store": {"url": "postgresql://bg:hunter2@db/bg"}})


def test_env_names_must_look_like_env_names():
    """`api_key_env` holds a variable's NAME, not a key."""
    data = {
        **MINIMAL,
        "brokers": {"k": {"kind": "ccxt", "exchange": "kraken", "api_key_env": "sk-live-123"}},
        "accounts": [{"id": "a", "broker": "k"}],
    }
    with pytest.raises(ConfigurationError, match="NAME of an environment variable"):
        parse_config(data)


def test_secrets_are_read_from_the_environment_only_when_needed(monkeypatch):
    """resolve_secret reads the variable; unset or empty means no secret (feature off)."""
    monkeypatch.setenv("BG_TEST_TOKEN", "s3cret")
    monkeypatch.setenv("BG_EMPTY", "")
    assert resolve_secret("BG_TEST_TOKEN") == "s3cret"
    assert resolve_secret("BG_EMPTY") is None
    assert resolve_secret("BG_UNSET_FOR_SURE") is None
    assert resolve_secret(None) is None


def test_files_that_are_missing_or_not_toml_are_clear_errors(tmp_path):
    """No traceback: a sentence naming the file."""
    with pytest.raises(ConfigurationError, match="no such configuration file"):
        load_config(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[brokers\n")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_config(broken)


def test_configs_are_frozen():
    """A loaded config cannot be edited behind the service's back."""
    config = parse_config(MINIMAL)
    with pytest.raises(Exception, match="frozen"):
        config.accounts[0].max_positions = 99  # type: ignore[misc]


def test_paper_brokers_take_no_keys_and_webhooks_need_a_url():
    """Nonsense combinations are refused."""
    with pytest.raises(ConfigurationError, match="paper broker takes no"):
        parse_config({**MINIMAL, "brokers": {"paper": {"kind": "paper", "api_key_env": "K"}}})
    with pytest.raises(ConfigurationError, match="webhook alert needs url_env"):
        parse_config({**MINIMAL, "alerts": [{"kind": "webhook"}]})


@pytest.mark.parametrize(
    "url",
    ["https://user:secret@api.kraken.com", "ftp://127.0.0.1", "127.0.0.1:8080", "http://a b"],
)
def test_an_api_url_must_be_plain_http_without_credentials(url):
    """`api_url` (a sandbox, an emulator) never carries a key and is always http(s)."""
    data = {
        **MINIMAL,
        "brokers": {"k": {"kind": "ccxt", "exchange": "kraken", "api_url": url}},
        "accounts": [{"id": "a", "broker": "k"}],
    }
    with pytest.raises(ConfigurationError, match="api_url"):
        parse_config(data)


def test_an_api_url_replaces_every_api_url_of_the_exchange(monkeypatch):
    """The ccxt exchange the service builds talks to `api_url`, public and private alike."""
    from brokerguard.service import GuardService  # noqa: PLC0415

    data = {
        **MINIMAL,
        "store": {"url": "sqlite://"},
        "brokers": {
            "k": {
                "kind": "ccxt",
                "exchange": "kraken",
                "api_url": "http://127.0.0.1:9/emulator",
                "max_calls_per_s": 5,
            }
        },
        "accounts": [{"id": "a", "broker": "k"}],
    }
    service = GuardService(parse_config(data))
    exchange = service.accounts["a"].broker.exchange  # type: ignore[attr-defined]
    assert set(exchange.urls["api"].values()) == {"http://127.0.0.1:9/emulator"}
    assert exchange.enableRateLimit is False  # brokerguard's limiter paces the calls
    assert exchange.timeout == 10_000
    service.close()


def test_the_fleet_example_validates():
    """examples/fleet.toml: a PostgreSQL store, Redis coordination, a paper exchange."""
    config = load_config(EXAMPLE.parent / "fleet.toml")
    assert config.store.url.startswith("postgresql://")
    assert config.coordination_url == "redis://127.0.0.1:6379/0"
    assert config.brokers["exchange"].kind == "paper_exchange"
    assert config.coordination.lease_ttl_s == 30
