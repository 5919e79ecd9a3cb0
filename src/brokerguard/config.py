"""One TOML file describes a deployment: brokers, accounts, breakers, the store, the server.

The file is validated with pydantic into frozen models that reject unknown keys, and every
problem is reported at once, by field (``accounts[0].max_positions: must be >= 0``), as a
:class:`~brokerguard.errors.ConfigurationError` — never a traceback. Defaults are documented on
each field; units are in the names (``_s`` for seconds).

Secrets (API keys, webhook URLs with tokens, the control token, database and Redis passwords)
never appear in the file: the file names the *environment variables* that hold them
(``api_key_env = "KRAKEN_API_KEY"``, ``[store] password_env``), a key that looks like a secret given
inline is refused with a message saying so, and so is a URL carrying a secret in any part of it
(``user:password@``, ``?password=``, ``&sslpassword=``...). URLs are printed through
:func:`redact_url` only.

The configuration cannot disarm the guard: types are strict (``max_positions = "8"`` is an
error, not 8), and every number that decides whether the guard acts has a range that keeps it
acting — a breaker that can open, an enforcement pass that ends, a lease that outlives the
interval between passes (docs/operate.md lists each range and why).
"""

from __future__ import annotations

import copy
import difflib
import importlib
import ipaddress
import itertools
import logging
import os
import re
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from brokerguard._redact import is_secret_name, redact_url, url_secrets
from brokerguard.errors import ConfigurationError
from brokerguard.resilience.backoff import BackoffKind, BackoffPolicy

__all__ = [
    "DEFAULT_BOT_TOKEN_ENV",
    "DEFAULT_CONTROL_TOKEN_ENV",
    "ENV_PREFIX",
    "AccountConfig",
    "AlertConfig",
    "BackoffConfig",
    "BreakerConfig",
    "BrokerConfig",
    "BrokerGuardConfig",
    "CoordinationConfig",
    "EnforcementConfig",
    "PaperFaultsConfig",
    "ServerConfig",
    "StoreConfig",
    "SuperviseConfig",
    "apply_env_overrides",
    "check_control_token",
    "load_config",
    "parse_config",
    "redact_url",
    "require_secret",
    "resolve_secret",
    "with_server",
]

DEFAULT_CONTROL_TOKEN_ENV = "BROKERGUARD_CONTROL_TOKEN"  # noqa: S105 (a variable's name)
DEFAULT_BOT_TOKEN_ENV = "BROKERGUARD_BOT_TOKEN"  # noqa: S105 (a variable's name)
ENV_PREFIX = "BROKERGUARD__"
"""Variables starting with this override configuration keys: ``BROKERGUARD__STORE__URL``."""

_log = logging.getLogger(__name__)

_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_SECRET_KEYS = ("api_key", "api_secret", "secret", "password", "token", "webhook_url", "url")

MIN_CONTROL_TOKEN_CHARS = 32
"""A control token shorter than this is refused when the server starts (128 bits of hex)."""
MAX_ENFORCEMENT_WAIT_S = 600.0
"""The most one account's enforcement may wait for fills: ``max_cycles * settle_timeout_s``."""

Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _pair(value: Any) -> Any:
    """Let a TOML array stand for a pair: strict mode takes only tuples, TOML has none."""
    return tuple(value) if isinstance(value, list) else value


class _Model(BaseModel):
    """Frozen and strict: a typo is an error, and ``"8"`` or ``"yes"`` is not guessed at.

    Strict mode still takes an integer where seconds (a float) are expected: ``timeout_s = 1``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True)


def _env_name(value: str | None) -> str | None:
    if value is not None and not _ENV_NAME.match(value):
        raise ValueError(
            f"must be the NAME of an environment variable (A-Z, 0-9, _), got {value!r}"
        )
    return value


def _no_url_secrets(value: str, where: str) -> str:
    found = url_secrets(value)
    if found:
        raise ValueError(
            f"must not contain a password or other secret (it has {', '.join(found)}): "
            f"secrets never go in the configuration file, {where}"
        )
    return value


class BreakerConfig(_Model):
    """Circuit breaker settings, shared by every broker unless a broker overrides them.

    Bounded so that the breaker can act: it opens after at most 1000 failures and probes the
    broker again at least hourly (a breaker that never probes never lets enforcement sell).
    """

    failure_threshold: int = Field(
        5, ge=1, le=1000, description="consecutive failures that open it"
    )
    recovery_timeout_s: PositiveSeconds = Field(60.0, le=3600)
    success_threshold: int = Field(2, ge=1, le=100, description="probe successes that close it")
    max_recovery_timeout_s: PositiveSeconds = Field(600.0, le=3600)
    max_attempts: int = Field(3, ge=1, le=20, description="attempts per read, retries included")
    max_total_delay_s: Seconds = Field(60.0, le=600)

    @model_validator(mode="after")
    def _recovery_bounds(self) -> Self:
        if self.max_recovery_timeout_s < self.recovery_timeout_s:
            raise ValueError("max_recovery_timeout_s must be >= recovery_timeout_s")
        return self


class BackoffConfig(_Model):
    """Capped exponential backoff under 2 s, 4 s, 8 s, 16 s, then 30 s, with full jitter.

    The service defaults to ``full`` jitter (each delay uniform in ``[0, d]``): in the AWS
    contention experiment it makes the fewest calls and finishes 3x sooner than the seed's
    proportional jitter (``bench/jitter.py``, docs/benchmarks.md). The library's
    ``BackoffPolicy()`` keeps the proportional default its contract names.
    """

    base_s: PositiveSeconds = Field(2.0, le=300)
    factor: float = Field(2.0, ge=1, le=10, allow_inf_nan=False)
    max_delay_s: PositiveSeconds = Field(30.0, le=600)
    jitter: float = Field(
        0.3, ge=0, le=1, allow_inf_nan=False, description="a proportion of the delay: 0 to 1"
    )
    # The one lax field: TOML writes the kind as its name ("full"), never as the enum.
    kind: BackoffKind = Field(BackoffKind.FULL, strict=False)

    def policy(self) -> BackoffPolicy:
        """Return the :class:`BackoffPolicy` these settings describe."""
        return BackoffPolicy(self.base_s, self.factor, self.max_delay_s, self.jitter, self.kind)

    @model_validator(mode="after")
    def _cap_above_base(self) -> Self:
        if self.max_delay_s < self.base_s:
            raise ValueError("max_delay_s must be >= base_s")
        return self


class PaperFaultsConfig(_Model):
    """A paper broker's fault plan (see :class:`brokerguard.brokers.FaultPlan`)."""

    error_rate: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=dict)
    latency_s: dict[str, Seconds] = Field(default_factory=dict)
    outages_s: list[Annotated[tuple[Seconds, Seconds], BeforeValidator(_pair)]] = Field(
        default_factory=list, description="(start, end) seconds after the broker starts"
    )
    bad_prices: dict[str, str | float | int | None] = Field(default_factory=dict)
    stale_positions_rate: float = Field(0.0, ge=0, le=1)
    stale_positions_age_s: Seconds = 30.0
    unsettled_sells: bool | list[str] = False
    rate_limit_rate: float = Field(0.0, ge=0, le=1)
    rate_limit_retry_after_s: Seconds = 5.0
    fail_after_accept_rate: float = Field(0.0, ge=0, le=1)


class BrokerConfig(_Model):
    """One broker connection: the in-memory paper broker, or a real exchange through ccxt."""

    kind: Literal["paper", "ccxt", "paper_exchange"] = Field(
        description="paper (in this process), ccxt (a real exchange) or paper_exchange (paper "
        "accounts served by `python -m brokerguard.sim.paper_exchange` at api_url, which a "
        "fleet of workers can share)"
    )
    exchange: str | None = Field(None, description="ccxt exchange id, e.g. 'kraken' (ccxt only)")
    venue: str | None = Field(
        None,
        min_length=1,
        description="the exchange this entry trades on, when several entries (one API key each) "
        "trade on one: they share its outage detection (circuit breakers and health), its "
        "price answers and, for paper, its market; rate limits stay per entry (per key). "
        "Default: the entry's own name",
    )
    share_prices_s: Seconds = Field(
        5.0,
        le=60,
        description="seconds one batched price answer is shared by the accounts of a venue "
        "within an enforcement pass (0: every account fetches its own); each account still "
        "judges every price, stamped when it arrived",
    )
    api_key_env: str | None = None
    api_secret_env: str | None = None
    api_url: str | None = Field(
        None,
        pattern=r"^https?://[^/@\s]+(/[^@\s]*)?$",
        description="ccxt only: base URL replacing the exchange's API URLs (a sandbox, an "
        "emulator); no credentials in it",
    )
    timeout_s: PositiveSeconds = Field(10.0, le=120, description="ccxt only: per-request timeout")
    async_reads: bool = Field(
        default=False,
        description="ccxt only: talk to the exchange through ccxt.async_support (aiohttp) on the "
        "service's reads loop, so each pass reads this entry's accounts ahead with the others "
        "(no thread per waiting read); orders, lookups and cancels still come from the pool's "
        "threads, run on that loop. Needs [enforcement] reads_ahead. Default false: the "
        "synchronous client (requests) is the one proven against the venues, and aiohttp "
        "handles proxies and TLS settings differently",
    )
    quote_currency: str = "USD"
    ignore_assets: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="ccxt only: balance codes that are not positions (fee credits, other fiat); "
        "'DOT' ignores DOT and its suffixed variants, 'DOT.S' only the staked one. Everything "
        "else counts toward the cap.",
    )
    order_deadline_s: float = Field(
        10.0,
        gt=2,
        le=60,
        allow_inf_nan=False,
        description="seconds after sending when the venue must stop accepting an order (Kraken "
        "takes 2 to 60); an order whose answer was lost is unresolved at least this long",
    )
    resolution_margin_s: Seconds = Field(
        5.0, description="added to a deadline before absence proves an order was never placed"
    )
    dead_man_switch_s: float | None = Field(
        None,
        ge=15,
        lt=86400,
        allow_inf_nan=False,
        description="arm the venue's dead man's switch (Kraken CancelAllOrdersAfter) for this "
        "many seconds and refresh it every enforcement pass: if brokerguard stops, the venue "
        "cancels every open order when it fires. Keep it above twice the enforcement interval "
        "(default: off)",
    )
    positions_believe_reads: bool = Field(
        default=False,
        description="whether agreeing reads alone may confirm that positions are gone (default "
        "false: only a sell of ours, the trade history or an operator's confirm-positions "
        "does; opt in only for a venue without a trade history)",
    )
    positions_confirm_reads: int = Field(
        5,
        ge=1,
        description="with positions_believe_reads: agreeing reads in a row (no failed read "
        "between) needed to believe that positions are gone",
    )
    positions_confirm_after_s: Seconds = Field(
        120.0, description="seconds those agreeing reads must span"
    )
    positions_quiet_after_glitch_s: Seconds = Field(
        300.0,
        description="after a thin read was proven wrong, seconds without another before any "
        "loss is believed",
    )
    seed: int = Field(0, description="paper only: seeds prices and faults")
    prices: dict[str, Annotated[str, Field(min_length=1)]] = Field(
        default_factory=dict, description="paper only: starting prices (default: a dozen pairs)"
    )
    settle_delay_s: Seconds = 0.5
    faults: PaperFaultsConfig = Field(default_factory=PaperFaultsConfig)
    breaker: BreakerConfig | None = Field(None, description="overrides the global breaker")
    max_calls_per_s: float | None = Field(
        None,
        ge=0.1,
        le=10_000,
        allow_inf_nan=False,
        description="raw calls per second, all accounts together (at least one per 10 s, or "
        "enforcement starves)",
    )
    burst: int = Field(5, ge=1, le=1000, description="calls allowed at once above that rate")
    call_weights: dict[
        Annotated[str, Field(min_length=1)], Annotated[float, Field(gt=0, allow_inf_nan=False)]
    ] = Field(
        default_factory=dict,
        description="tokens a raw call takes from the rate limit, by method (fetch_positions, "
        "fetch_prices, fetch_fills, fetch_order, fetch_open_orders, submit_order, "
        "submit_cancel, ping, or a ccxt method read through the guard); 1 if absent, at most "
        "burst. Kraken: fetch_fills 2 (trade history)",
    )

    _check_env = field_validator("api_key_env", "api_secret_env")(_env_name)

    @field_validator("call_weights")
    @classmethod
    def _weights_fit_the_burst(
        cls, value: dict[str, float], info: ValidationInfo
    ) -> dict[str, float]:
        burst = info.data.get("burst")
        heavy = sorted(name for name, weight in value.items() if burst and weight > burst)
        if heavy:
            raise ValueError(f"{', '.join(heavy)}: a call cannot weigh more than burst ({burst})")
        return value

    @field_validator("api_url")
    @classmethod
    def _api_url_has_no_secret(cls, value: str | None) -> str | None:
        if value is None:
            return value
        return _no_url_secrets(value, "name the variables that hold keys (api_key_env)")

    @field_validator("exchange")
    @classmethod
    def _known_exchange(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or info.data.get("kind") != "ccxt":
            return value  # other kinds refuse an exchange below, with their own reason
        problem = _ccxt_exchange_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        return _refuse_inline_secrets(data)

    @model_validator(mode="after")
    def _kind_needs(self) -> Self:
        if self.kind == "ccxt" and not self.exchange:
            raise ValueError("a ccxt broker needs `exchange` (the ccxt id, e.g. 'kraken')")
        if self.async_reads and self.kind != "ccxt":
            raise ValueError("async_reads is for ccxt brokers (paper brokers read async anyway)")
        if self.kind == "paper_exchange" and (
            not self.api_url or self.exchange or self.api_key_env or self.api_secret_env
        ):
            raise ValueError("a paper_exchange broker needs api_url, and takes no exchange or keys")
        if self.kind == "paper" and (
            self.exchange or self.api_key_env or self.api_secret_env or self.api_url
        ):
            raise ValueError("a paper broker takes no exchange, API keys or API URL")
        return self


class SuperviseConfig(_Model):
    """A bot brokerguard supervises through the bot's own API (freqtrade's REST API)."""

    kind: Literal["freqtrade"] = "freqtrade"
    url: str = Field(
        min_length=1,
        pattern=r"^https?://",
        description="the bot's API root, e.g. http://127.0.0.1:8081",
    )
    username_env: str = Field(
        "FREQTRADE__API_SERVER__USERNAME", description="the variable holding the API user"
    )
    password_env: str = Field(
        "FREQTRADE__API_SERVER__PASSWORD", description="the variable holding its password"
    )
    timeout_s: PositiveSeconds = Field(10.0, le=120)
    exit_grace_s: PositiveSeconds = Field(
        60.0,
        le=3600,
        description="seconds the bot has to exit a position brokerguard asked it to (forceexit) "
        "before the enforcer sells it itself",
    )

    _check_env = field_validator("username_env", "password_env")(_env_name)


class AccountConfig(_Model):
    """One guarded account on a broker."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:@-]+$")
    broker: str = Field(min_length=1)
    max_positions: int = Field(8, ge=0, le=10_000)
    symbols: list[str] = Field(default_factory=list, description="what the strategy trades")
    max_cycles: int = Field(3, ge=1, le=20)
    settle_timeout_s: Seconds = Field(3.0, le=600)
    count_unpriced: bool = True
    max_position_age_s: PositiveSeconds = Field(30.0, le=3600)
    max_quote_age_s: PositiveSeconds = Field(60.0, le=3600)
    positions: dict[str, str] = Field(
        default_factory=dict, description="paper only: starting positions"
    )
    supervise: SuperviseConfig | None = Field(
        None,
        description="the bot trading this account, supervised through its API: a halt becomes "
        "its lock on every pair, an excess is exited through it first",
    )

    @model_validator(mode="after")
    def _a_pass_ends(self) -> Self:
        wait = self.max_cycles * self.settle_timeout_s
        if wait > MAX_ENFORCEMENT_WAIT_S:
            raise ValueError(
                f"max_cycles x settle_timeout_s = {wait:g} s, above {MAX_ENFORCEMENT_WAIT_S:g} s: "
                "one enforcement would wait that long for fills while the account stays over "
                "its cap"
            )
        return self


class EnforcementConfig(_Model):
    """How the guard service runs enforcement."""

    interval_s: float = Field(
        10.0,
        ge=0.1,
        le=3600,
        allow_inf_nan=False,
        description="seconds between passes: at least hourly, at most ten a second",
    )
    max_concurrency: int = Field(
        32,
        ge=1,
        le=1024,
        description="accounts enforced at once: a pass waits on the network, so it needs about "
        "accounts x calls per account x call latency / interval of them (1,000 accounts at "
        "100 ms in a 10 s interval: 10; 32 leaves room); each may hold a store connection",
    )
    reads_ahead: bool = Field(
        default=True,
        description="make each pass's position and price reads first, all in flight on one "
        "event loop (adapters with async reads: paper), then step the accounts whose reads "
        "are in hand in one thread: no thread per waiting account",
    )
    max_in_flight: int = Field(
        512,
        ge=1,
        le=100_000,
        description="reads waiting at once when reading ahead (the rate limits still decide "
        "when each is sent)",
    )
    read_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        allow_inf_nan=False,
        description="the longest one attempt of a read made ahead waits for its venue: then "
        "it is a transient failure (counted by the read breaker), never a pass that hangs",
    )


class StoreConfig(_Model):
    """Where halts, pauses and the audit log live."""

    url: str = Field(
        "sqlite:///brokerguard-data/state.db",
        description="sqlite:///path, sqlite:// (memory) or postgresql://",
    )
    timeout_s: float = Field(
        5.0,
        ge=0.1,
        le=60,
        allow_inf_nan=False,
        description="seconds one store call may take in all (connect, statement, lock wait; "
        "PostgreSQL connects wait at least 2 s): then it fails closed as STORE_UNAVAILABLE",
    )
    cache_s: float = Field(
        1.0,
        ge=0,
        le=30,
        allow_inf_nan=False,
        description="seconds halts, pauses and live orders may be served from memory (0: read "
        "every time): how late a halt written by another process on PostgreSQL can stop "
        "entries at most; this process's own writes, and any process's on SQLite, are seen "
        "at once",
    )
    password_env: str | None = Field(
        None,
        description="PostgreSQL only: the variable holding the password, read when the store "
        "opens and handed to the driver, never put in a URL",
    )

    _check_env = field_validator("password_env")(_env_name)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        return _refuse_inline_secrets(data, allowed=("url",))

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgres://", "postgresql+")):
            raise ValueError("must start with sqlite:// or postgresql://")
        return _no_url_secrets(
            value, "name the variable that holds the password in [store] password_env"
        )

    @field_validator("password_env")
    @classmethod
    def _password_for_postgresql(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and str(info.data.get("url", "")).startswith("sqlite:"):
            raise ValueError("a SQLite store takes no password")
        return value


class ServerConfig(_Model):
    """The HTTP status server. It binds loopback unless ``allow_remote`` says otherwise.

    The server speaks plain HTTP, and ``POST /halt`` and ``/resume`` carry the control token in
    a header: on any other interface it would cross the network in clear text. A non-loopback
    ``host`` is refused unless ``allow_remote = true`` states that TLS (a proxy) or a trusted
    private network is in front.
    """

    allow_remote: bool = Field(
        default=False,
        description="allow a non-loopback host: only with TLS or a trusted network in front",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    control_token_env: str = DEFAULT_CONTROL_TOKEN_ENV
    bot_token_env: str = Field(
        DEFAULT_BOT_TOKEN_ENV,
        description="the variable holding the bot token of the /v1 pre-trade API (a bot can "
        "reserve and report entries; it cannot halt or resume). Unset: /v1 answers 403",
    )

    _check_env = field_validator("control_token_env", "bot_token_env")(_env_name)

    @field_validator("host")
    @classmethod
    def _loopback_unless_allowed(cls, value: str, info: ValidationInfo) -> str:
        if not info.data.get("allow_remote") and not _is_loopback(value):
            raise ValueError(
                f"{value!r} is not a loopback address, and the control endpoints are plain HTTP "
                "(the bearer token would cross the network in clear text): bind 127.0.0.1 and "
                "put a TLS proxy in front, or set server.allow_remote = true if one already is"
            )
        return value


class AlertConfig(_Model):
    """An alert sink: the log, or a webhook whose URL (with its token) is in the environment."""

    kind: Literal["log", "webhook", "apprise"]
    url_env: str | None = None
    min_level: Literal["info", "warning", "critical"] = "warning"

    _check_env = field_validator("url_env")(_env_name)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        return _refuse_inline_secrets(data)

    @model_validator(mode="after")
    def _webhook_needs_url(self) -> Self:
        if self.kind in {"webhook", "apprise"} and not self.url_env:
            raise ValueError(f"a {self.kind} alert needs url_env (the variable holding its URL)")
        return self


class CoordinationConfig(_Model):
    """How the workers of a fleet share accounts (used only with ``coordination_url``)."""

    lease_ttl_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        allow_inf_nan=False,
        description="an account's lease lasts this long unless renewed (each pass renews it); "
        "a dead worker's accounts are taken over after at most this. It must exceed "
        "enforcement.interval_s, or every lease expires between two passes",
    )
    namespace: str = Field("brokerguard", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    timeout_s: PositiveSeconds = Field(
        0.5, le=10, description="per Redis command; no answer = blocked"
    )
    password_env: str | None = Field(
        None,
        description="the variable holding the Redis password, read when the worker connects "
        "and handed to redis-py, never put in a URL",
    )
    rate_limit_max_wait_s: Seconds = Field(
        10.0,
        le=300,
        description="a broker's calls share one token bucket per API key in Redis "
        "(max_calls_per_s, burst); a call whose tokens are due later than this is refused "
        "(rate limited) instead of waiting",
    )

    _check_env = field_validator("password_env")(_env_name)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        return _refuse_inline_secrets(data)

    @field_validator("timeout_s")
    @classmethod
    def _a_call_fits_in_a_lease(cls, value: float, info: ValidationInfo) -> float:
        ttl = info.data.get("lease_ttl_s")
        if ttl is not None and value >= ttl:
            raise ValueError(
                f"{value:g} s must be below lease_ttl_s ({ttl:g} s): a lease would expire "
                "while one Redis call waits"
            )
        return value


class BrokerGuardConfig(_Model):
    """A whole deployment."""

    state_url: str | None = Field(
        None,
        description="where halts, the audit log and the journal live (the same as [store] url): "
        "sqlite:///path (default) or postgresql://",
    )
    coordination_url: str | None = Field(
        None,
        description="absent: one embedded process; redis://host:port/db: a fleet of workers "
        "sharing breakers, account leases and nonces",
    )
    coordination: CoordinationConfig = Field(default_factory=CoordinationConfig)
    brokers: dict[str, BrokerConfig]
    accounts: list[AccountConfig]
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    backoff: BackoffConfig = Field(default_factory=BackoffConfig)
    enforcement: EnforcementConfig = Field(default_factory=EnforcementConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    alerts: list[AlertConfig] = Field(default_factory=lambda: [AlertConfig(kind="log")])

    @model_validator(mode="before")
    @classmethod
    def _state_url_is_the_store(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or data.get("state_url") is None:
            return data
        raw = data.get("store")
        store: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        given = store.get("url")
        if given is not None and given != data["state_url"]:
            raise ValueError("state_url and [store] url name two different stores: keep one")
        return {**data, "store": {**store, "url": data["state_url"]}}

    @field_validator("coordination_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return _no_url_secrets(
            value, "name the variable that holds the password in [coordination] password_env"
        )

    @property
    def effective_state_url(self) -> str:
        """The store's URL, however it was given."""
        return self.store.url

    @model_validator(mode="after")
    def _references(self) -> Self:
        problems = _reference_problems(self.model_dump())
        if not self.brokers:
            problems.append("brokers: at least one broker is needed")
        if not self.accounts:
            problems.append("accounts: at least one account is needed")
        problems += self._fleet_problems() + self._shared_key_problems() + self._venue_problems()
        if not self.enforcement.reads_ahead:
            problems += [
                f"brokers.{name}.async_reads: needs [enforcement] reads_ahead = true (the "
                "exchange's session lives on the reads loop)"
                for name, broker in self.brokers.items()
                if broker.async_reads
            ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _fleet_problems(self) -> list[str]:
        settings = self.coordination
        if self.coordination_url is None:
            if settings.password_env is not None:
                return ["coordination.password_env: set, but there is no coordination_url"]
            return []
        interval = self.enforcement.interval_s
        if settings.lease_ttl_s <= interval:
            return [
                (
                    f"coordination.lease_ttl_s: {settings.lease_ttl_s:g} s must exceed "
                    f"enforcement.interval_s ({interval:g} s), or every lease expires between two "
                    "passes and accounts change hands (or go unenforced) all the time"
                )
            ]
        return []

    def _shared_key_problems(self) -> list[str]:
        """One API key is one account at the exchange: two guards on it would fight over it."""
        first: dict[tuple[str | None, str, str | None], AccountConfig] = {}
        problems = []
        for i, account in enumerate(self.accounts):
            broker = self.brokers.get(account.broker)
            if broker is None or broker.kind != "ccxt" or broker.api_key_env is None:
                continue
            key = (broker.exchange, broker.api_key_env, broker.api_url)
            other = first.setdefault(key, account)
            if other is account:
                continue
            caps = (
                f"both capped at {account.max_positions}"
                if other.max_positions == account.max_positions
                else f"capped at {other.max_positions} and {account.max_positions}"
            )
            problems.append(
                f"accounts[{i}].broker: {account.id!r} and {other.id!r} both trade the API key "
                f"in {broker.api_key_env} on {broker.exchange} ({caps}), but one API key is one "
                "account at the exchange: configure it once, with one cap"
            )
        return problems

    def _venue_problems(self) -> list[str]:
        """Entries sharing a venue must be one exchange: same kind, exchange id and URL."""
        first: dict[str, tuple[str, BrokerConfig]] = {}
        problems = []
        for name, broker in self.brokers.items():
            venue = self.venue_of(name)
            other_name, other = first.setdefault(venue, (name, broker))
            if other is broker:
                continue
            for field_name in _VENUE_FIELDS:
                mine, theirs = getattr(broker, field_name), getattr(other, field_name)
                if mine != theirs:
                    problems.append(
                        f"brokers.{name}.venue: {venue!r} is shared with {other_name!r}, but "
                        f"their {field_name} differ ({theirs!r} and {mine!r}): one venue is "
                        "one exchange"
                    )
        return problems

    def venue_of(self, broker: str) -> str:
        """The exchange a broker entry trades on: its ``venue``, or its own name."""
        return self.brokers[broker].venue or broker

    def breaker_for(self, broker: str) -> BreakerConfig:
        """The breaker settings of a broker (its override, or the global ones)."""
        return self.brokers[broker].breaker or self.breaker


_VENUE_FIELDS: Final = (
    "kind",
    "exchange",
    "api_url",
    "share_prices_s",
    "breaker",
    "prices",
    "seed",
    "faults",
)
"""What makes a venue: entries sharing one must agree on all of it (the first one's would win)."""


def parse_config(
    data: Mapping[str, Any],
    *,
    source: str = "<config>",
    environ: Mapping[str, str] | None = None,
) -> BrokerGuardConfig:
    """Validate a configuration mapping; raise ConfigurationError listing every problem.

    With `environ`, its ``BROKERGUARD__SECTION__KEY`` variables override `data` first (see
    :func:`apply_env_overrides`); without it (the default) the mapping is taken as it is.
    """
    overrides: list[tuple[str, str]] = []
    if environ is not None:
        data, overrides = _apply_env_overrides(data, environ)
        if overrides:
            source = f"{source} with {', '.join(var for var, _ in overrides)}"
    try:
        return BrokerGuardConfig.model_validate(dict(data))
    except ValidationError as exc:
        problems = _problems(exc)
        # Cross-references are only checked by the model once every field is valid: report
        # them now too, so one run lists every problem.
        problems += [p for p in _reference_problems(data) if p not in problems]
        problems = [_blame(problem, overrides) for problem in problems]
        raise _configuration_error(source, problems) from None


def apply_env_overrides(
    data: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Return a copy of the configuration mapping `data` with environment overrides applied.

    ``BROKERGUARD__`` followed by the key's path, parts joined by ``__`` and matched without
    regard to case: ``BROKERGUARD__STORE__URL``, ``BROKERGUARD__ENFORCEMENT__INTERVAL_S``,
    ``BROKERGUARD__BROKERS__KRAKEN__ORDER_DEADLINE_S`` (a broker by its name),
    ``BROKERGUARD__ACCOUNTS__MAIN__MAX_POSITIONS`` (an account by its id),
    ``BROKERGUARD__ALERTS__0__MIN_LEVEL`` (an alert by its position). In a broker's name or an
    account's id, every character other than a letter or a digit is written ``_``.

    A value is read as a TOML value (``5``, ``2.5``, ``true``, ``["BTC/USD"]``,
    ``{failure_threshold = 3}``); what is not TOML, and anything given to a text key, is taken
    as text. An empty variable is ignored. An unknown key, a key that would hold a secret, or a
    URL with a secret in it is refused by variable name, the value never repeated: secrets stay
    in their own variables, named by the ``*_env`` keys. The result is not validated yet.
    """
    return _apply_env_overrides(data, os.environ if environ is None else environ)[0]


def with_server(
    config: BrokerGuardConfig, *, host: str | None = None, port: int | None = None
) -> BrokerGuardConfig:
    """Return `config` with the server's host and port replaced, checked like the file's.

    ``model_copy(update=...)`` does not validate: a ``--host 0.0.0.0`` on the command line
    must meet the same loopback rule as ``host`` in the file.
    """
    updates: dict[str, Any] = {}
    if host is not None:
        updates["host"] = host
    if port is not None:
        updates["port"] = port
    try:
        server = ServerConfig.model_validate({**config.server.model_dump(), **updates})
    except ValidationError as exc:
        raise _configuration_error("command line", _problems(exc, "server")) from None
    return config.model_copy(update={"server": server})


def check_control_token(value: str) -> list[str]:
    """Return why `value` is too weak to guard ``/halt`` and ``/resume`` (empty: strong enough).

    The token is the only thing between the network and a halt or a resume, so a guessable
    one disarms the operator's controls. Refused: fewer than 32 characters, fewer than 8
    distinct characters, a repeated pattern (``abcabc...``), or a run in sequence
    (``abcdef...``, ``12345...``). Anything ``secrets.token_urlsafe(32)`` or
    ``secrets.token_hex(16)`` produces passes. The problems never quote the token.
    """
    problems = []
    if len(value) < MIN_CONTROL_TOKEN_CHARS:
        problems.append(
            f"it is {len(value)} characters, and at least {MIN_CONTROL_TOKEN_CHARS} are needed"
        )
    distinct = len(set(value))
    if distinct < 8:  # noqa: PLR2004 (32 random hex characters have about 14)
        problems.append(f"it has only {distinct} distinct characters")
    if any(value[k:] == value[:-k] for k in range(1, len(value) // 2 + 1)):
        problems.append("it repeats a shorter pattern")
    # Three in four neighbours equal or adjacent (``aaab``, ``abcd``, ``4321``): random hex
    # does that about once in 10^12 tokens, a keyboard run almost always.
    steps = [abs(ord(b) - ord(a)) <= 1 for a, b in itertools.pairwise(value)]
    if steps and sum(steps) * 4 >= len(steps) * 3:
        problems.append("it runs in sequence (abcd..., 1234...)")
    return problems


def require_secret(env_name: str | None, field: str) -> str | None:
    """Read the secret a configured `field` names; raise if that variable is unset or empty.

    For secrets that must be there once configured (a database or Redis password): connecting
    without one would fail later and less clearly, or — worse — succeed against the wrong
    server. None when the field names no variable.
    """
    if env_name is None:
        return None
    value = resolve_secret(env_name)
    if value is None:
        raise ConfigurationError(
            f"{field}: {env_name} is not set (or is empty); it must hold the password"
        )
    return value


def load_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> BrokerGuardConfig:
    """Read and validate a TOML configuration file, ``BROKERGUARD__*`` variables overriding it.

    `environ` defaults to the process environment (see :func:`apply_env_overrides`).
    """
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"{file}: no such configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{file}: not valid TOML: {exc}") from None
    return parse_config(data, source=str(file), environ=os.environ if environ is None else environ)


def resolve_secret(env_name: str | None) -> str | None:
    """Read a secret from the environment at the moment it is needed (never stored in config)."""
    if env_name is None:
        return None
    value = os.environ.get(env_name)
    return value or None  # an empty variable is no secret: the feature stays off (fail closed)


def _reference_problems(data: Mapping[str, Any]) -> list[str]:
    brokers = data.get("brokers")
    accounts = data.get("accounts")
    if not isinstance(brokers, Mapping) or not isinstance(accounts, list):
        return []
    problems, seen = [], set()
    for i, account in enumerate(accounts):
        if not isinstance(account, Mapping):
            continue
        name = account.get("broker")
        if isinstance(name, str) and name not in brokers:
            known = ", ".join(sorted(map(str, brokers))) or "none"
            problems.append(
                f"accounts[{i}].broker: {name!r} is not a configured broker (known: {known})"
            )
        account_id = account.get("id")
        if isinstance(account_id, str):
            if account_id in seen:
                problems.append(f"accounts[{i}].id: {account_id!r} appears twice")
            seen.add(account_id)
    return problems


def _refuse_inline_secrets(data: Any, *, allowed: tuple[str, ...] = ()) -> Any:
    if isinstance(data, Mapping):
        inline = [k for k in data if k in _SECRET_KEYS and k not in allowed]
        if inline:
            raise ValueError(
                f"{', '.join(sorted(inline))}: secrets never go in the configuration file; name "
                f'the environment variable that holds it instead ({inline[0]}_env = "NAME")'
            )
    return data


def _ccxt_exchange_problem(exchange: str) -> str | None:
    """Why `exchange` is not a ccxt id (None: it is); asks ccxt itself, the one authority.

    Only the list of ids is read here; everything else about ccxt stays behind the adapter.
    """
    try:
        ccxt = importlib.import_module("ccxt")
    except ImportError:
        return (
            f"checking and using the ccxt exchange {exchange!r} needs the ccxt extra: "
            "pip install 'brokerguard[ccxt]'"
        )
    known = [str(name) for name in getattr(ccxt, "exchanges", ())]
    if exchange in known:
        return None
    close = difflib.get_close_matches(exchange.lower(), known, n=3)
    hint = (
        f"did you mean {' or '.join(map(repr, close))}?"
        if close
        else "ccxt.exchanges lists the ids"
    )
    return f"ccxt has no exchange {exchange!r}: {hint}"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def _problems(exc: ValidationError, prefix: str = "") -> list[str]:
    problems: list[str] = []
    for error in exc.errors():
        where = _location((prefix, *error["loc"]) if prefix else error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        for part in message.split("; "):  # a model-level check may report several
            problem = f"{where}: {part}" if where else part
            if problem not in problems:
                problems.append(problem)
    return problems


def _configuration_error(source: str, problems: list[str]) -> ConfigurationError:
    lines = [f"{source}: {len(problems)} problem(s):", *(f"  {p}" for p in problems)]
    return ConfigurationError("\n".join(lines))


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-after", "function-before", "function-wrap")):
            continue
        else:
            out += f".{part}" if out else part
    return out


class _OverrideError(Exception):
    """One refused environment override (its message names the variable, never the value)."""


_Path = tuple[str | int, ...]


def _apply_env_overrides(
    data: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Apply the ``BROKERGUARD__*`` variables to a copy of `data`.

    Returns the new mapping and ``(variable, location)`` per override applied. A whole table
    is set before the keys inside it (fewer parts first), so ``..._KRAKEN__TIMEOUT_S`` refines
    ``..._KRAKEN = {...}``.
    """
    root: dict[str, Any] = copy.deepcopy(dict(data))
    names = sorted(
        (name for name, raw in environ.items() if name.startswith(ENV_PREFIX) and raw != ""),
        key=lambda name: (name.count("__"), name),
    )
    problems: list[str] = []
    applied: list[tuple[str, str]] = []
    paths: dict[_Path, str] = {}
    for name in names:
        try:
            path, value = _override(name, environ[name], root)
        except _OverrideError as exc:
            problems.append(str(exc))
            continue
        paths[path] = name
        applied.append((name, _location(path)))
        _log.info("configuration: %s sets %s = %s", name, _location(path), _shown(value))
    if problems:
        raise _configuration_error("environment", problems)
    # state_url and [store] url are one setting: the environment's wins over the file's.
    store = root.get("store")
    if ("state_url",) in paths and ("store", "url") not in paths and isinstance(store, dict):
        store.pop("url", None)
    if ("store", "url") in paths and ("state_url",) not in paths:
        root.pop("state_url", None)
    return root, applied


def _override(name: str, raw: str, root: dict[str, Any]) -> tuple[_Path, Any]:
    """Set the key `name` addresses in `root` to `raw`, parsed; return its path and value."""
    parts = name.removeprefix(ENV_PREFIX).split("__")
    if not all(parts):
        raise _OverrideError(
            f"{name}: an empty part in the name (parts are joined by exactly two underscores)"
        )
    annotation: Any = BrokerGuardConfig
    container: Any = root
    path: list[str | int] = []
    for i, part in enumerate(parts):
        key, annotation = _key(name, part, annotation, container, path)
        path.append(key)
        if i == len(parts) - 1:
            value = _env_value(raw, annotation)
            found = [f for text in _url_strings(str(key), value) for f in url_secrets(text)]
            if found:
                raise _OverrideError(
                    f"{name}: must not contain a password or other secret (it has "
                    f"{', '.join(dict.fromkeys(found))}): name the variable that holds it in "
                    "a *_env key (password_env) instead"
                )
            container[key] = value
            return tuple(path), value
        container = _descend(name, container, key, annotation, path)
    raise AssertionError("unreachable")  # pragma: no cover


def _key(
    name: str, part: str, annotation: Any, container: Any, path: list[str | int]
) -> tuple[str | int, Any]:
    """The key (field name, broker name, account index) `part` addresses, and its type."""
    target = _unwrap(annotation)
    here = f"[{_location(tuple(path))}]" if path else "the top level"
    origin = get_origin(target)
    if isinstance(target, type) and issubclass(target, BaseModel):
        field = part.lower()
        if field in target.model_fields:
            return field, target.model_fields[field].annotation
        if field in _SECRET_KEYS or is_secret_name(field):
            raise _OverrideError(
                f"{name}: secrets are never set by value, in the file or the environment; "
                f"set {name}_ENV to the NAME of the variable that holds it"
                if f"{field}_env" in target.model_fields
                else f"{name}: secrets are never set by value, and {here} has no key {field!r}"
            )
        close = difflib.get_close_matches(field, list(target.model_fields), n=1)
        hint = (
            f"did you mean {close[0].upper()}?"
            if close
            else "known: " + ", ".join(k.upper() for k in target.model_fields)
        )
        raise _OverrideError(f"{name}: {here} has no key {field!r} ({hint})")
    if origin is dict and _is_model(get_args(target)[1]) and isinstance(container, Mapping):
        matches = [k for k in container if _env_part(str(k)) == part.upper()]
        if len(matches) == 1:
            return str(matches[0]), get_args(target)[1]
        what = ", ".join(sorted(map(str, container))) or "none"
        problem = "matches several" if matches else "matches none"
        raise _OverrideError(
            f"{name}: {part!r} {problem} of the names in {here} (configured: {what}); the "
            "environment changes keys, it does not add entries"
        )
    if origin is list and _is_model(get_args(target)[0]) and isinstance(container, list):
        item = get_args(target)[0]
        if "id" in _unwrap(item).model_fields:
            ids = [a.get("id") if isinstance(a, Mapping) else None for a in container]
            matches = [i for i, x in enumerate(ids) if _env_part(str(x)) == part.upper()]
            if len(matches) == 1:
                return matches[0], item
            what = ", ".join(str(x) for x in ids) or "none"
            problem = "matches several" if matches else "matches none"
            raise _OverrideError(
                f"{name}: {part!r} {problem} of the ids in {here} (configured: {what}); the "
                "environment changes keys, it does not add entries"
            )
        if part.isdigit() and int(part) < len(container):
            return int(part), item
        raise _OverrideError(
            f"{name}: {here} is addressed by position, 0 to {len(container) - 1}, not {part!r}"
        )
    raise _OverrideError(
        f"{name}: {here} is one value, set whole: {ENV_PREFIX}"
        + "__".join(_env_part(str(p)) for p in path)
        + " (a TOML value: an array [..] or an inline table {..})"
    )


def _descend(
    name: str, container: Any, key: str | int, annotation: Any, path: list[str | int]
) -> Any:
    """The container at `key`, made if the file has none there (a list from its default)."""
    target = _unwrap(annotation)
    where = _location(tuple(path))
    if not _is_model(target) and get_origin(target) not in {dict, list}:
        raise _OverrideError(
            f"{name}: [{where}] is one value, set whole: {ENV_PREFIX}"
            + "__".join(_env_part(str(p)) for p in path)
        )
    child = container[key] if isinstance(key, int) else container.get(key)
    if child is None:
        if get_origin(target) is list and isinstance(key, str):
            default = BrokerGuardConfig.model_fields.get(key)
            items = default.get_default(call_default_factory=True) if default else []
            child = [i.model_dump() if isinstance(i, BaseModel) else i for i in items or []]
        else:
            child = {}
        container[key] = child
    if not isinstance(child, dict | list):
        raise _OverrideError(f"{name}: [{where}] in the file is not a table or an array")
    return child


def _env_value(raw: str, annotation: Any) -> Any:
    """`raw` as a TOML value; as text if it is not one, or if the key takes only text."""
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return raw
    if list(parsed) != ["v"]:
        return raw  # "1\nx = 2": not one value
    value = parsed["v"]
    if not isinstance(value, str) and _takes_text(annotation):
        return raw
    return value


def _takes_text(annotation: Any) -> bool:
    target = _unwrap(annotation)
    if get_origin(target) is Literal:
        return all(isinstance(a, str) for a in get_args(target))
    return isinstance(target, type) and issubclass(target, str)


def _unwrap(annotation: Any) -> Any:
    """`annotation` without Annotated[...] and Optional."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
            continue
        if origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) == 1:
                annotation = args[0]
                continue
        return annotation


def _is_model(annotation: Any) -> bool:
    target = _unwrap(annotation)
    return isinstance(target, type) and issubclass(target, BaseModel)


def _env_part(text: str) -> str:
    """How a broker's name or an account's id is written in a variable's name."""
    return re.sub(r"[^A-Z0-9]", "_", text.upper())


def _url_strings(key: str, value: Any) -> list[str]:
    """The strings in `value` that sit under a key naming a URL (``url``, ``api_url``...)."""
    if isinstance(value, str):
        return [value] if "url" in key.lower() else []
    if isinstance(value, Mapping):
        return [s for k, v in value.items() for s in _url_strings(str(k), v)]
    if isinstance(value, list):
        return [s for v in value for s in _url_strings(key, v)]
    return []


def _shown(value: Any) -> str:
    """A value as the log shows it: any secret a URL might carry masked all the same."""
    return redact_url(value if isinstance(value, str) else repr(value))


def _blame(problem: str, overrides: list[tuple[str, str]]) -> str:
    """`problem`, naming the variable that set the key it is about (the deepest one)."""
    for var, loc in sorted(overrides, key=lambda o: -len(o[1])):
        if problem.startswith(loc) and problem[len(loc) : len(loc) + 1] in {":", ".", "["}:
            return f"{problem} (set by {var})"
    return problem
