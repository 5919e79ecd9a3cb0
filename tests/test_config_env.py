"""Environment overrides: BROKERGUARD__SECTION__KEY, secrets still only by variable name."""

from __future__ import annotations

import logging
import pathlib

import pytest

from brokerguard import ConfigurationError
from brokerguard.config import _shown, apply_env_overrides, load_config, parse_config

FILE = """\
[store]
url = "sqlite:///state.db"

[enforcement]
interval_s = 10

[brokers.kraken]
kind = "paper"

[brokers.paper-2]
kind = "paper"

[[accounts]]
id = "main"
broker = "kraken"
max_positions = 8

[[accounts]]
id = "desk.small-1"
broker = "paper-2"
max_positions = 3
"""

SECRET = "hunter2-s3cret"  # noqa: S105 (a test value)


@pytest.fixture
def config_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "brokerguard.toml"
    path.write_text(FILE, encoding="utf-8")
    return path


def load(path: pathlib.Path, **env: str):
    return load_config(path, environ=env)


def test_a_section_key_is_overridden_and_env_wins_over_the_file(config_file):
    config = load(
        config_file,
        BROKERGUARD__STORE__URL="sqlite:///elsewhere.db",
        BROKERGUARD__ENFORCEMENT__INTERVAL_S="5",
    )
    assert config.store.url == "sqlite:///elsewhere.db"
    assert config.enforcement.interval_s == 5
    assert load(config_file).enforcement.interval_s == 10  # the file alone


def test_load_config_reads_the_process_environment(config_file, monkeypatch):
    monkeypatch.setenv("BROKERGUARD__ENFORCEMENT__INTERVAL_S", "2.5")
    assert load_config(config_file).enforcement.interval_s == 2.5


def test_parse_config_applies_overrides_only_when_given_an_environment(monkeypatch):
    data = {"brokers": {"p": {"kind": "paper"}}, "accounts": [{"id": "a", "broker": "p"}]}
    monkeypatch.setenv("BROKERGUARD__ENFORCEMENT__INTERVAL_S", "3")
    assert parse_config(data).enforcement.interval_s == 10
    env = {"BROKERGUARD__ENFORCEMENT__INTERVAL_S": "3"}
    assert parse_config(data, environ=env).enforcement.interval_s == 3
    assert "enforcement" not in data  # the caller's mapping is left alone


def test_top_level_keys(config_file):
    config = load(config_file, BROKERGUARD__STATE_URL="sqlite:///top.db")
    assert config.store.url == "sqlite:///top.db"  # state_url is [store] url: env wins


def test_a_broker_by_name_and_nested_tables(config_file):
    config = load(
        config_file,
        BROKERGUARD__BROKERS__KRAKEN__ORDER_DEADLINE_S="20",
        BROKERGUARD__BROKERS__PAPER_2__SEED="42",  # "paper-2": non-alphanumerics are _
        BROKERGUARD__BROKERS__KRAKEN__BREAKER__FAILURE_THRESHOLD="2",  # absent in the file
        BROKERGUARD__BROKERS__KRAKEN__FAULTS__OUTAGES_S="[[1, 2]]",
    )
    assert config.brokers["kraken"].order_deadline_s == 20
    assert config.brokers["paper-2"].seed == 42
    assert config.breaker_for("kraken").failure_threshold == 2
    assert config.brokers["kraken"].faults.outages_s == [(1, 2)]


def test_an_account_by_id(config_file):
    config = load(
        config_file,
        BROKERGUARD__ACCOUNTS__MAIN__MAX_POSITIONS="4",
        BROKERGUARD__ACCOUNTS__DESK_SMALL_1__SYMBOLS='["BTC/USD", "ETH/USD"]',
        BROKERGUARD__ACCOUNTS__main__COUNT_UNPRICED="false",  # parts ignore case
    )
    main, small = config.accounts
    assert (main.max_positions, main.count_unpriced) == (4, False)
    assert small.symbols == ["BTC/USD", "ETH/USD"]


def test_an_alert_by_position_including_the_default_one(config_file):
    config = load(config_file, BROKERGUARD__ALERTS__0__MIN_LEVEL="critical")
    assert [(a.kind, a.min_level) for a in config.alerts] == [("log", "critical")]


def test_a_whole_table_then_keys_inside_it(config_file):
    config = load(
        config_file,
        BROKERGUARD__BROKERS__KRAKEN__PRICES='{"BTC/USD" = "50000"}',
        BROKERGUARD__BREAKER="{failure_threshold = 7, recovery_timeout_s = 30}",
        BROKERGUARD__BREAKER__RECOVERY_TIMEOUT_S="40",  # applied after the table
    )
    assert config.brokers["kraken"].prices == {"BTC/USD": "50000"}
    assert (config.breaker.failure_threshold, config.breaker.recovery_timeout_s) == (7, 40)


def test_values_are_toml_and_strictness_stays(config_file):
    config = load(
        config_file,
        BROKERGUARD__SERVER__ALLOW_REMOTE="true",
        BROKERGUARD__SERVER__HOST="0.0.0.0",  # not TOML: text  # noqa: S104
        BROKERGUARD__SERVER__PORT="8081",
        BROKERGUARD__BACKOFF__KIND="proportional",
        BROKERGUARD__BROKERS__KRAKEN__QUOTE_CURRENCY="123",  # a text key takes it as text
    )
    assert config.server.allow_remote is True
    assert (config.server.host, config.server.port) == ("0.0.0.0", 8081)  # noqa: S104
    assert config.brokers["kraken"].quote_currency == "123"
    for var, value, problem in [
        ("BROKERGUARD__ACCOUNTS__MAIN__MAX_POSITIONS", '"8"', "valid integer"),
        ("BROKERGUARD__ACCOUNTS__MAIN__MAX_POSITIONS", "eight", "valid integer"),
        ("BROKERGUARD__SERVER__ALLOW_REMOTE", "yes", "valid boolean"),
        ("BROKERGUARD__SERVER__ALLOW_REMOTE", "1", "valid boolean"),
        ("BROKERGUARD__ENFORCEMENT__INTERVAL_S", "0", "greater than or equal to 0.1"),
    ]:
        with pytest.raises(ConfigurationError, match=problem) as info:
            load(config_file, **{var: value})
        assert f"(set by {var})" in str(info.value)


def test_an_empty_variable_is_ignored(config_file):
    assert load(config_file, BROKERGUARD__ENFORCEMENT__INTERVAL_S="").enforcement.interval_s == 10


@pytest.mark.parametrize(
    ("var", "problem"),
    [
        ("BROKERGUARD__STORE__URLL", "[store] has no key 'urll' (did you mean URL?)"),
        ("BROKERGUARD__NOSUCH", "the top level has no key 'nosuch'"),
        ("BROKERGUARD__BROKERS__BINANCE__SEED", "'BINANCE' matches none of the names"),
        ("BROKERGUARD__ACCOUNTS__OTHER__MAX_POSITIONS", "'OTHER' matches none of the ids"),
        ("BROKERGUARD__ALERTS__3__MIN_LEVEL", "addressed by position, 0 to 0"),
        ("BROKERGUARD__ENFORCEMENT__INTERVAL_S__X", "is one value, set whole"),
        ("BROKERGUARD__STORE____URL", "an empty part"),
    ],
)
def test_an_unknown_key_is_refused_by_its_variable(config_file, var, problem):
    with pytest.raises(ConfigurationError) as info:
        load(config_file, **{var: "1"})
    message = str(info.value)
    assert message.startswith("environment: 1 problem(s):")
    assert f"{var}: " in message
    assert problem in message


def test_every_refused_override_is_listed_at_once(config_file):
    with pytest.raises(ConfigurationError, match=r"2 problem\(s\)"):
        load(config_file, BROKERGUARD__A="1", BROKERGUARD__B="2")


@pytest.mark.parametrize(
    ("var", "value", "problem"),
    [
        (
            "BROKERGUARD__BROKERS__KRAKEN__API_KEY",
            SECRET,
            "set BROKERGUARD__BROKERS__KRAKEN__API_KEY_ENV",
        ),
        ("BROKERGUARD__STORE__PASSWORD", SECRET, "set BROKERGUARD__STORE__PASSWORD_ENV"),
        (
            "BROKERGUARD__SERVER__CONTROL_TOKEN",
            SECRET,
            "set BROKERGUARD__SERVER__CONTROL_TOKEN_ENV",
        ),
        ("BROKERGUARD__STORE__URL", f"postgresql://bg:{SECRET}@db/bg", "user:password@"),
        ("BROKERGUARD__STORE__URL", f"postgresql://db/bg?password={SECRET}", "'password'"),
        ("BROKERGUARD__COORDINATION_URL", f"redis://:{SECRET}@redis:6379/0", "password"),
        (
            "BROKERGUARD__ACCOUNTS__MAIN__SUPERVISE",
            f'{{url = "http://u:{SECRET}@bot"}}',
            "password",
        ),
    ],
)
def test_a_secret_is_never_set_by_value_nor_repeated(config_file, caplog, var, value, problem):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigurationError, match="secret") as info:
        load(config_file, **{var: value})
    assert problem in str(info.value)
    assert var in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in caplog.text


def test_a_secret_inside_a_whole_table_is_refused_by_the_model(config_file):
    with pytest.raises(ConfigurationError, match="secrets never go") as info:
        load(config_file, BROKERGUARD__BROKERS__KRAKEN=f'{{kind = "paper", api_key = "{SECRET}"}}')
    assert "BROKERGUARD__BROKERS__KRAKEN" in str(info.value)
    assert SECRET not in str(info.value)


def test_variable_names_of_secrets_can_be_overridden(config_file):
    config = load(
        config_file,
        BROKERGUARD__STORE__URL="postgresql://bg@db:5432/bg",
        BROKERGUARD__STORE__PASSWORD_ENV="PGPASSWORD",  # noqa: S106 (a variable's name)
        BROKERGUARD__SERVER__CONTROL_TOKEN_ENV="MY_TOKEN",  # noqa: S106 (a variable's name)
    )
    assert config.store.password_env == "PGPASSWORD"  # noqa: S105 (a variable's name)
    assert config.server.control_token_env == "MY_TOKEN"  # noqa: S105 (a variable's name)
    with pytest.raises(ConfigurationError, match="NAME of an environment variable"):
        load(config_file, BROKERGUARD__SERVER__CONTROL_TOKEN_ENV=SECRET)


def test_overrides_are_logged_with_urls_redacted(config_file, caplog):
    caplog.set_level(logging.INFO, logger="brokerguard.config")
    load(
        config_file,
        BROKERGUARD__STORE__URL="postgresql://bg@db:5432/bg?sslmode=require",
        BROKERGUARD__ACCOUNTS__MAIN__MAX_POSITIONS="4",
    )
    assert (
        "BROKERGUARD__ACCOUNTS__MAIN__MAX_POSITIONS sets accounts[0].max_positions = 4"
        in caplog.text
    )
    assert "BROKERGUARD__STORE__URL sets store.url = postgresql://bg@db:5432/bg" in caplog.text


def test_the_log_masks_a_secret_that_reached_a_value_some_other_way():
    assert SECRET not in _shown(f"postgresql://u:{SECRET}@db/x?token={SECRET}")
    assert SECRET not in _shown({"url": f"postgresql://u:{SECRET}@db/x"})


def test_apply_env_overrides_returns_unvalidated_data():
    data = {"brokers": {"p": {"kind": "paper"}}, "accounts": [{"id": "a", "broker": "p"}]}
    out = apply_env_overrides(data, {"BROKERGUARD__ACCOUNTS__A__MAX_POSITIONS": "2"})
    assert out["accounts"][0]["max_positions"] == 2
    assert "max_positions" not in data["accounts"][0]


def test_the_embedded_default_takes_overrides_too(monkeypatch, tmp_path):
    """`brokerguard run` without --config honours BROKERGUARD__SECTION__KEY as well."""
    from brokerguard.service import embedded_default_config  # noqa: PLC0415

    monkeypatch.setenv("BROKERGUARD__ENFORCEMENT__INTERVAL_S", "7")
    assert embedded_default_config(tmp_path).enforcement.interval_s == 7.0
