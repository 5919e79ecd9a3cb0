"""Configuration: one TOML file, every problem listed by field, no secret ever inline."""

from __future__ import annotations

import json
import pathlib
import random
import secrets
import string
import sys

import pytest

from brokerguard import ConfigurationError
from brokerguard.config import (
    check_control_token,
    load_config,
    parse_config,
    redact_url,
    require_secret,
    resolve_secret,
)
from brokerguard.resilience import BackoffKind

EXAMPLE = pathlib.Path(__file__).parents[1] / "examples" / "paper.toml"

MINIMAL = {"brokers": {"paper": {"kind": "paper"}}, "accounts": [{"id": "a", "broker": "paper"}]}
ACCOUNT = {"id": "a", "broker": "paper"}


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


# ---------------------------------------------------------------------- secrets in URLs (#12.8)

SECRET = "hunter2-s3cr3t"  # noqa: S105 (a fake secret that must never be printed)

STORE_URLS_WITH_SECRETS = [
    f"postgresql://bg:{SECRET}@db/bg",
    f"postgresql://bg@db/bg?password={SECRET}",
    f"postgresql://bg@db/bg?sslmode=require&PassWord={SECRET}",
    f"postgresql://bg@db/bg?passwd={SECRET}",
    f"postgresql://bg@db/bg?pass={SECRET}",
    f"postgresql://bg@db/bg?sslpassword={SECRET}",
    f"postgresql://bg@db/bg?pass%77ord={SECRET}",
    f"postgresql://bg@db/bg?api_key={SECRET}",
    f"postgresql://bg@db/bg?token={SECRET}",
    f"postgresql://bg@db/bg?secret={SECRET}",
    f"postgresql+psycopg://bg@db/bg#password={SECRET}",
    f"postgresql://bg:pa/{SECRET}@db/bg",
]
REDIS_URLS_WITH_SECRETS = [
    f"redis://:{SECRET}@127.0.0.1:6379/0",
    f"rediss://bg:{SECRET}@redis.internal:6380/0",
    f"redis://127.0.0.1:6379/0?password={SECRET}",
    f"redis://127.0.0.1:6379/0?Password={SECRET}",
    f"redis://127.0.0.1:6379/0?db=0&ssl_password={SECRET}",
    f"redis://bg@127.0.0.1:6379/0?token={SECRET}",
    f"unix://:{SECRET}@/run/redis.sock?db=0",
    f"unix:///run/redis.sock?db=0&password={SECRET}",
]
API_URLS_WITH_SECRETS = [
    f"http://127.0.0.1:9/emulator?apikey={SECRET}",
    f"https://sandbox.example/api?API_KEY={SECRET}",
    f"https://sandbox.example/api?x=1&access_token={SECRET}",
    f"https://sandbox.example/api#secret={SECRET}",
]


def _problems(data) -> str:
    with pytest.raises(ConfigurationError) as info:
        parse_config(data, source="bad.toml")
    return str(info.value)


@pytest.mark.parametrize("url", STORE_URLS_WITH_SECRETS)
@pytest.mark.parametrize("where", ["store.url", "state_url"])
def test_a_secret_anywhere_in_the_store_url_is_refused(url, where):
    """A password in the user:password@ part or any query parameter of the store URL is refused."""
    data = (
        {**MINIMAL, "store": {"url": url}}
        if where == "store.url"
        else {**MINIMAL, "state_url": url}
    )
    text = _problems(data)
    assert "store.url: must not contain a password" in text
    assert "password_env" in text  # says how to do it instead
    assert SECRET not in text


@pytest.mark.parametrize("url", REDIS_URLS_WITH_SECRETS)
def test_a_secret_anywhere_in_the_coordination_url_is_refused(url):
    """Redis passwords stay out of coordination_url, wherever in the URL they hide."""
    text = _problems({**MINIMAL, "coordination_url": url})
    assert "coordination_url: must not contain a password" in text
    assert "password_env" in text
    assert SECRET not in text


@pytest.mark.parametrize("url", API_URLS_WITH_SECRETS)
def test_a_secret_in_an_api_url_query_is_refused(url):
    """A broker's api_url never carries a key, in its query or fragment either."""
    text = _problems(
        {
            **MINIMAL,
            "brokers": {"k": {"kind": "ccxt", "exchange": "kraken", "api_url": url}},
            "accounts": [{"id": "a", "broker": "k"}],
        }
    )
    assert "brokers.k.api_url" in text
    assert SECRET not in text


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://bg@db.internal:5432/bg",
        "postgresql://bg@db/bg?sslmode=verify-full&connect_timeout=5&passfile=/etc/bg/pgpass",
        "postgresql://bg@db/bg?options=-csearch_path%3Dbg&sslkey=/etc/bg/client.key",
        "postgresql://bg@[::1]:5432/bg",
        "sqlite:///brokerguard-data/state.db",
    ],
)
def test_urls_without_secrets_are_accepted(url):
    """Options that are not secrets (sslmode, passfile, a key FILE's path) stay allowed."""
    assert parse_config({**MINIMAL, "store": {"url": url}}).store.url == url


def test_passwords_come_from_variables_named_in_store_and_coordination(monkeypatch):
    """`password_env` in [store] and [coordination] names the variable holding each password."""
    config = parse_config(
        {
            **MINIMAL,
            "state_url": "postgresql://bg@db.internal/bg",
            "store": {"password_env": "BG_PG_PASSWORD"},
            "coordination_url": "rediss://bg@redis.internal:6380/0",
            "coordination": {"password_env": "BG_REDIS_PASSWORD"},
        }
    )
    assert config.store.password_env == "BG_PG_PASSWORD"  # noqa: S105 (a variable's name)
    assert config.coordination.password_env == "BG_REDIS_PASSWORD"  # noqa: S105 (a name)
    monkeypatch.setenv("BG_PG_PASSWORD", SECRET)
    assert require_secret(config.store.password_env, "store.password_env") == SECRET
    assert SECRET not in repr(config)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"store": {"url": "sqlite:///x.db", "password_env": "BG_PG_PASSWORD"}},
            "store.password_env: a SQLite store takes no password",
        ),
        (
            {"coordination": {"password_env": "BG_REDIS_PASSWORD"}},
            "coordination.password_env: set, but there is no coordination_url",
        ),
        (
            {"store": {"url": "postgresql://bg@db/bg", "password_env": "hunter2"}},
            "store.password_env: must be the NAME of an environment variable",
        ),
        (
            {"store": {"url": "postgresql://bg@db/bg", "password": "x"}},
            "store: password: secrets never go in the configuration file",
        ),
        (
            {"coordination_url": "redis://r:6379/0", "coordination": {"password": "x"}},
            "coordination: password: secrets never go in the configuration file",
        ),
    ],
)
def test_password_env_is_checked_where_it_is_given(data, expected):
    """A password variable where none can be used, or a password inline, is refused by field."""
    assert expected in _problems({**MINIMAL, **data})


def test_a_named_password_variable_that_is_not_set_is_an_error(monkeypatch):
    """A configured password variable that is unset or empty stops the start (fail closed)."""
    monkeypatch.delenv("BG_UNSET_FOR_SURE", raising=False)
    monkeypatch.setenv("BG_EMPTY", "")
    assert require_secret(None, "store.password_env") is None
    for name in ("BG_UNSET_FOR_SURE", "BG_EMPTY"):
        with pytest.raises(ConfigurationError, match=f"store.password_env: {name} is not set"):
            require_secret(name, "store.password_env")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql://bg:{SECRET}@db/bg", "postgresql://bg:***@db/bg"),
        (f"postgresql://bg@db/bg?sslmode=require&password={SECRET}",
         "postgresql://bg@db/bg?sslmode=require&password=***"),
        (f"redis://127.0.0.1:6379/0?PASSWORD={SECRET}&db=0",
         "redis://127.0.0.1:6379/0?PASSWORD=***&db=0"),
        (f"redis://:{SECRET}@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        (f"unix://:{SECRET}@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
        (f"https://h.example/x?pass%77ord={SECRET}", "https://h.example/x?pass%77ord=***"),
        (f"https://h.example/x#token={SECRET}", "https://h.example/x#token=***"),
        (f"postgresql://bg:pa/{SECRET}@db/bg", "postgresql://bg:***@db/bg"),
        ("postgresql+psycopg://bg:***@db/bg", "postgresql+psycopg://bg:***@db/bg"),
        ("sqlite:///brokerguard-data/state.db", "sqlite:///brokerguard-data/state.db"),
        (f"not a url password={SECRET}", "not a url password=***"),
    ],
)  # fmt: skip
def test_redact_url_masks_every_secret_and_keeps_the_rest(url, shown):
    """redact_url hides passwords and secret parameters, and nothing a reader needs."""
    assert redact_url(url) == shown


def test_no_printed_url_shows_a_password_from_its_query_string(pg_url):
    """store.safe_url, the coordinator's safe_url and status, service.status() and the page."""
    import redis  # noqa: PLC0415 (only this test needs it)

    from brokerguard.coordination import RedisCoordinator  # noqa: PLC0415
    from brokerguard.server.page import render_page  # noqa: PLC0415
    from brokerguard.service import GuardService  # noqa: PLC0415
    from brokerguard.store import open_store  # noqa: PLC0415

    store = open_store(f"{pg_url}&password={SECRET}")  # a library caller, past the config
    client = redis.Redis()
    coordinator = RedisCoordinator(f"redis://127.0.0.1:6379/0?password={SECRET}", client=client)
    service = GuardService(parse_config({**MINIMAL, "alerts": []}), store=store)
    try:
        shown = [
            store.safe_url,
            repr(store),
            coordinator.safe_url,
            json.dumps(coordinator.status()),
            repr(coordinator),
            json.dumps(service.status(), default=str),
            render_page(service.status(), control_enabled=False),
        ]
        for text in shown:
            assert SECRET not in text, text
        assert "password=***" in store.safe_url
        assert "password=***" in coordinator.safe_url
    finally:
        service.close()
        client.close()


# ---------------------------------------------------------------------- no disarming (#12.11)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"breaker": {"failure_threshold": 1e9}}, "breaker.failure_threshold"),
        ({"breaker": {"failure_threshold": 1001}}, "breaker.failure_threshold"),
        ({"breaker": {"success_threshold": 1000}}, "breaker.success_threshold"),
        ({"breaker": {"max_attempts": 1000}}, "breaker.max_attempts"),
        ({"breaker": {"recovery_timeout_s": 1e300}}, "breaker.recovery_timeout_s"),
        ({"breaker": {"max_recovery_timeout_s": 86400}}, "breaker.max_recovery_timeout_s"),
        ({"breaker": {"max_total_delay_s": 1e9}}, "breaker.max_total_delay_s"),
        (
            {"brokers": {"paper": {"kind": "paper", "breaker": {"failure_threshold": 10**9}}}},
            "brokers.paper.breaker.failure_threshold",
        ),
    ],
)
def test_breaker_settings_that_never_open_or_never_probe_are_refused(data, field):
    """Case 1: a breaker that cannot open (or never probes again) cannot protect the broker."""
    assert f"{field}:" in _problems({**MINIMAL, **data})


@pytest.mark.parametrize("interval", [1e12, 3601, 0.05, 0])
def test_an_enforcement_interval_outside_its_range_is_refused(interval):
    """Case 2: enforcement runs at least hourly and at most ten times a second."""
    assert "enforcement.interval_s:" in _problems(
        {**MINIMAL, "enforcement": {"interval_s": interval}}
    )


@pytest.mark.parametrize(
    ("account", "field"),
    [
        ({"max_cycles": 1e9, "settle_timeout_s": 1e300}, "accounts[0].max_cycles"),
        ({"max_cycles": 1e9, "settle_timeout_s": 1e300}, "accounts[0].settle_timeout_s"),
        ({"max_cycles": 21}, "accounts[0].max_cycles"),
        ({"settle_timeout_s": 601}, "accounts[0].settle_timeout_s"),
        ({"max_cycles": 20, "settle_timeout_s": 600}, "accounts[0]: max_cycles x settle_timeout_s"),
        ({"max_positions": 10**9}, "accounts[0].max_positions"),
        ({"max_quote_age_s": 1e300}, "accounts[0].max_quote_age_s"),
        ({"max_position_age_s": 1e300}, "accounts[0].max_position_age_s"),
    ],
)
def test_an_enforcement_that_could_wait_forever_is_refused(account, field):
    """Case 3: cycles, settle time and their product are bounded, so a pass ends."""
    data = {**MINIMAL, "accounts": [{"id": "a", "broker": "paper", **account}]}
    assert field in _problems(data)


@pytest.mark.parametrize(
    ("coordination", "enforcement", "expected"),
    [
        ({"lease_ttl_s": 0.001}, {}, "coordination.lease_ttl_s:"),
        ({"lease_ttl_s": 5}, {"interval_s": 10}, "coordination.lease_ttl_s: 5 s must exceed"),
        ({"lease_ttl_s": 10}, {"interval_s": 10}, "coordination.lease_ttl_s: 10 s must exceed"),
        ({"lease_ttl_s": 2, "timeout_s": 5}, {"interval_s": 1}, "coordination.timeout_s"),
        ({"timeout_s": 1e9}, {}, "coordination.timeout_s"),
    ],
)
def test_a_lease_that_expires_between_passes_is_refused(coordination, enforcement, expected):
    """Case 4: a fleet lease outlives the enforcement interval and a Redis call, above a floor."""
    data = {
        **MINIMAL,
        "coordination_url": "redis://127.0.0.1:6379/0",
        "coordination": coordination,
        "enforcement": enforcement,
    }
    assert expected in _problems(data)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("/home/bob", "9 characters"),
        ("x" * 40, "distinct characters"),
        ("0123456789abcdef" * 3, "repeats"),
        ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ", "sequence"),
        ("ab" * 20, "distinct characters"),
        ("Tr0ub4dor&3Tr0ub4dor&3Tr0ub4dor&3", "repeats"),
    ],
)
def test_a_weak_control_token_is_refused_with_its_reason(token, reason):
    """Case 5: a token shorter than 32 characters or obviously not random is refused."""
    problems = check_control_token(token)
    assert any(reason in p for p in problems), problems
    assert all(token not in p for p in problems)


def test_random_control_tokens_pass():
    """Case 5: what `secrets` generates (urlsafe and hex, 128 bits and up) is strong enough."""
    rng = random.Random(12)
    tokens = [secrets.token_urlsafe(32), secrets.token_hex(16), secrets.token_hex(32)]
    tokens += ["".join(rng.choices("0123456789abcdef", k=32)) for _ in range(2000)]
    tokens += ["".join(rng.choices(string.ascii_letters + string.digits, k=32)) for _ in range(500)]
    assert [t for t in tokens if check_control_token(t)] == []


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"accounts": [{**ACCOUNT, "max_positions": "8"}]}, "accounts[0].max_positions"),
        ({"accounts": [{**ACCOUNT, "count_unpriced": "yes"}]}, "accounts[0].count_unpriced"),
        ({"accounts": [{**ACCOUNT, "count_unpriced": 1}]}, "accounts[0].count_unpriced"),
        ({"accounts": [{**ACCOUNT, "max_cycles": 3.0}]}, "accounts[0].max_cycles"),
        ({"enforcement": {"interval_s": "10"}}, "enforcement.interval_s"),
        ({"server": {"port": "8000"}}, "server.port"),
        ({"breaker": {"failure_threshold": True}}, "breaker.failure_threshold"),
        ({"backoff": {"kind": 1}}, "backoff.kind"),
        ({"brokers": {"paper": {"kind": "paper", "faults": {"outages_s": [["1", "2"]]}}}},
         "brokers.paper.faults.outages_s[0][0]"),
    ],
)  # fmt: skip
def test_types_are_never_coerced_from_strings(data, field):
    """Case 6: `max_positions = "8"` and `count_unpriced = "yes"` are errors, not guesses."""
    assert f"{field}:" in _problems({**MINIMAL, **data})


def test_ints_are_accepted_where_seconds_are_expected():
    """Case 6: `timeout_s = 1` is a number of seconds; strict types keep int for float."""
    config = parse_config(
        {
            **MINIMAL,
            "coordination_url": "redis://127.0.0.1:6379/0",
            "coordination": {"timeout_s": 1, "lease_ttl_s": 30},
            "enforcement": {"interval_s": 5},
            "backoff": {"jitter": 0, "kind": "proportional"},
            "brokers": {"paper": {"kind": "paper", "faults": {"outages_s": [[1, 2]]}}},
        }
    )
    assert config.coordination.timeout_s == 1.0
    assert isinstance(config.coordination.timeout_s, float)
    assert config.backoff.kind is BackoffKind.PROPORTIONAL
    assert config.brokers["paper"].faults.outages_s == [(1.0, 2.0)]


@pytest.mark.parametrize(
    ("backoff", "field"),
    [
        ({"jitter": 5}, "backoff.jitter"),
        ({"jitter": -0.1}, "backoff.jitter"),
        ({"factor": 1000}, "backoff.factor"),
        ({"base_s": 1e9, "max_delay_s": 1e9}, "backoff.base_s"),
        ({"max_delay_s": 1e300}, "backoff.max_delay_s"),
    ],
)
def test_jitter_is_a_proportion_and_backoff_is_bounded(backoff, field):
    """Case 7: jitter is 0..1; retries wait at most minutes, never forever."""
    assert f"{field}:" in _problems({**MINIMAL, "backoff": backoff})


def _on_one_key(second: dict, caps: tuple[int, int]) -> dict:
    kraken = {"kind": "ccxt", "exchange": "kraken", "api_key_env": "KRAKEN_KEY"}
    return {
        **MINIMAL,
        "brokers": {"k1": kraken, "k2": {**kraken, **second}},
        "accounts": [
            {"id": "a", "broker": "k1", "max_positions": caps[0]},
            {"id": "b", "broker": "k2", "max_positions": caps[1]},
        ],
    }


@pytest.mark.parametrize(
    "data",
    [
        _on_one_key({}, (2, 5)),
        _on_one_key({"api_secret_env": "OTHER_SECRET"}, (2, 5)),
        _on_one_key({}, (3, 3)),
        {
            **MINIMAL,
            "brokers": {"k": {"kind": "ccxt", "exchange": "kraken", "api_key_env": "KRAKEN_KEY"}},
            "accounts": [
                {"id": "a", "broker": "k", "max_positions": 2},
                {"id": "b", "broker": "k", "max_positions": 5},
            ],
        },
    ],
)
def test_two_accounts_on_one_api_key_are_refused(data):
    """Case 8: one API key is one account at the exchange, so it has one cap and one guard."""
    text = _problems(data)
    assert "accounts[1].broker:" in text
    assert "KRAKEN_KEY" in text
    assert "one API key is one account at the exchange" in text


def test_one_key_on_two_exchanges_or_two_keys_are_fine():
    """Case 8: different keys, or the same variable name on different exchanges, are accounts."""
    parse_config(_on_one_key({"api_key_env": "KRAKEN_KEY_2"}, (2, 5)))
    parse_config(_on_one_key({"exchange": "binance"}, (2, 5)))


def test_an_unknown_ccxt_exchange_is_refused_with_close_matches():
    """Case 9: a ccxt id ccxt does not know is refused, naming the ids it resembles."""
    text = _problems(
        {
            **MINIMAL,
            "brokers": {"k": {"kind": "ccxt", "exchange": "krakn"}},
            "accounts": [{"id": "a", "broker": "k"}],
        }
    )
    assert "brokers.k.exchange: ccxt has no exchange 'krakn'" in text
    assert "'kraken'" in text


def test_a_ccxt_broker_without_ccxt_installed_says_which_extra(monkeypatch):
    """Case 9: without ccxt the exchange cannot be checked or used: say to install the extra."""
    monkeypatch.setitem(sys.modules, "ccxt", None)  # `import ccxt` now raises ImportError
    text = _problems(
        {
            **MINIMAL,
            "brokers": {"k": {"kind": "ccxt", "exchange": "kraken"}},
            "accounts": [{"id": "a", "broker": "k"}],
        }
    )
    assert "brokers.k.exchange:" in text
    assert "pip install 'brokerguard[ccxt]'" in text


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "guard.example.com", ""])  # noqa: S104 (the bind under test)
def test_a_non_loopback_bind_needs_allow_remote(host):
    """Case 10: the plain-HTTP control endpoints stay on loopback unless allow_remote says so."""
    text = _problems({**MINIMAL, "server": {"host": host}})
    assert "server.host:" in text
    assert "allow_remote" in text
    config = parse_config({**MINIMAL, "server": {"host": host or "0.0.0.0", "allow_remote": True}})  # noqa: S104
    assert config.server.allow_remote is True


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_binds_need_nothing(host):
    """Case 10: loopback is the default and needs no opt-in."""
    assert parse_config({**MINIMAL, "server": {"host": host}}).server.allow_remote is False


def test_the_examples_stay_within_every_bound():
    """Both examples validate under the strict rules (no coercion, every bound)."""
    for name in ("paper.toml", "fleet.toml"):
        load_config(EXAMPLE.parent / name)
