"""One TOML file describes a deployment: brokers, accounts, breakers, the store, the server.

The file is validated with pydantic into frozen models that reject unknown keys, and every
problem is reported at once, by field (``accounts[0].max_positions: must be >= 0``), as a
:class:`~brokerguard.errors.ConfigurationError` — never a traceback. Defaults are documented on
each field; units are in the names (``_s`` for seconds).

Secrets (API keys, webhook URLs with tokens, the control token) never appear in the file: the
file names the *environment variables* that hold them (``api_key_env = "KRAKEN_API_KEY"``), and a
key that looks like a secret given inline is refused with a message saying so.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from brokerguard.errors import ConfigurationError
from brokerguard.resilience.backoff import BackoffKind, BackoffPolicy

__all__ = [
    "DEFAULT_CONTROL_TOKEN_ENV",
    "AccountConfig",
    "AlertConfig",
    "BackoffConfig",
    "BreakerConfig",
    "BrokerConfig",
    "BrokerGuardConfig",
    "EnforcementConfig",
    "PaperFaultsConfig",
    "ServerConfig",
    "StoreConfig",
    "load_config",
    "parse_config",
    "resolve_secret",
]

DEFAULT_CONTROL_TOKEN_ENV = "BROKERGUARD_CONTROL_TOKEN"  # noqa: S105 (a variable's name)

_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_SECRET_KEYS = ("api_key", "api_secret", "secret", "password", "token", "webhook_url", "url")

Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Model(BaseModel):
    """Frozen, strict about unknown keys: a typo is an error, not a silently ignored setting."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _env_name(value: str | None) -> str | None:
    if value is not None and not _ENV_NAME.match(value):
        raise ValueError(
            f"must be the NAME of an environment variable (A-Z, 0-9, _), got {value!r}"
        )
    return value


class BreakerConfig(_Model):
    """Circuit breaker settings, shared by every broker unless a broker overrides them."""

    failure_threshold: int = Field(5, ge=1, description="consecutive failures that open it")
    recovery_timeout_s: PositiveSeconds = 60.0
    success_threshold: int = Field(2, ge=1, description="probe successes that close it")
    max_recovery_timeout_s: PositiveSeconds = 600.0
    max_attempts: int = Field(3, ge=1, description="attempts per read, retries included")
    max_total_delay_s: Seconds = 60.0

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

    base_s: PositiveSeconds = 2.0
    factor: float = Field(2.0, ge=1, allow_inf_nan=False)
    max_delay_s: PositiveSeconds = 30.0
    jitter: float = Field(0.3, ge=0, allow_inf_nan=False)
    kind: BackoffKind = BackoffKind.FULL

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
    outages_s: list[tuple[Seconds, Seconds]] = Field(
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
    api_key_env: str | None = None
    api_secret_env: str | None = None
    api_url: str | None = Field(
        None,
        pattern=r"^https?://[^/@\s]+(/[^@\s]*)?$",
        description="ccxt only: base URL replacing the exchange's API URLs (a sandbox, an "
        "emulator); no credentials in it",
    )
    timeout_s: PositiveSeconds = Field(10.0, description="ccxt only: per-request timeout")
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
    positions_confirm_reads: int = Field(
        3, ge=1, description="agreeing reads needed to believe that positions are gone"
    )
    positions_confirm_after_s: Seconds = Field(
        30.0, description="seconds those agreeing reads must span"
    )
    seed: int = Field(0, description="paper only: seeds prices and faults")
    prices: dict[str, Annotated[str, Field(min_length=1)]] = Field(
        default_factory=dict, description="paper only: starting prices (default: a dozen pairs)"
    )
    settle_delay_s: Seconds = 0.5
    faults: PaperFaultsConfig = Field(default_factory=PaperFaultsConfig)
    breaker: BreakerConfig | None = Field(None, description="overrides the global breaker")
    max_calls_per_s: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="raw calls per second, all accounts together"
    )
    burst: int = Field(5, ge=1, description="calls allowed at once above that rate")

    _check_env = field_validator("api_key_env", "api_secret_env")(_env_name)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        return _refuse_inline_secrets(data)

    @model_validator(mode="after")
    def _kind_needs(self) -> Self:
        if self.kind == "ccxt" and not self.exchange:
            raise ValueError("a ccxt broker needs `exchange` (the ccxt id, e.g. 'kraken')")
        if self.kind == "paper_exchange" and (
            not self.api_url or self.exchange or self.api_key_env or self.api_secret_env
        ):
            raise ValueError("a paper_exchange broker needs api_url, and takes no exchange or keys")
        if self.kind == "paper" and (
            self.exchange or self.api_key_env or self.api_secret_env or self.api_url
        ):
            raise ValueError("a paper broker takes no exchange, API keys or API URL")
        return self


class AccountConfig(_Model):
    """One guarded account on a broker."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:@-]+$")
    broker: str = Field(min_length=1)
    max_positions: int = Field(8, ge=0)
    symbols: list[str] = Field(default_factory=list, description="what the strategy trades")
    max_cycles: int = Field(3, ge=1)
    settle_timeout_s: Seconds = 3.0
    count_unpriced: bool = True
    max_position_age_s: PositiveSeconds = 30.0
    max_quote_age_s: PositiveSeconds = 60.0
    positions: dict[str, str] = Field(
        default_factory=dict, description="paper only: starting positions"
    )


class EnforcementConfig(_Model):
    """How the guard service runs enforcement."""

    interval_s: PositiveSeconds = 10.0
    max_concurrency: int = Field(8, ge=1, description="accounts enforced at once")


class StoreConfig(_Model):
    """Where halts, pauses and the audit log live."""

    url: str = Field(
        "sqlite:///brokerguard-data/state.db",
        description="sqlite:///path, sqlite:// (memory) or postgresql://",
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgres://", "postgresql+")):
            raise ValueError("must start with sqlite:// or postgresql://")
        if re.search(r"://[^/@]*:[^/@]+@", value):
            raise ValueError(
                "must not contain a password: use a .pgpass file, trust auth, or the "
                "PGPASSWORD environment variable"
            )
        return value


class ServerConfig(_Model):
    """The HTTP status server. It binds loopback unless told otherwise."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    control_token_env: str = DEFAULT_CONTROL_TOKEN_ENV

    _check_env = field_validator("control_token_env")(_env_name)


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

    lease_ttl_s: PositiveSeconds = Field(
        30.0,
        description="an account's lease lasts this long unless renewed (each pass renews it); "
        "a dead worker's accounts are taken over after at most this",
    )
    namespace: str = Field("brokerguard", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    timeout_s: PositiveSeconds = Field(0.5, description="per Redis command; no answer = blocked")


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
        if re.search(r"://[^/@]*:[^/@]+@", value):
            raise ValueError(
                "must not contain a password: use Redis ACLs bound to the host, or a local "
                "socket (secrets never go in the config file)"
            )
        return value

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
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def breaker_for(self, broker: str) -> BreakerConfig:
        """The breaker settings of a broker (its override, or the global ones)."""
        return self.brokers[broker].breaker or self.breaker


def parse_config(data: Mapping[str, Any], *, source: str = "<config>") -> BrokerGuardConfig:
    """Validate a configuration mapping; raise ConfigurationError listing every problem."""
    try:
        return BrokerGuardConfig.model_validate(dict(data))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = _location(error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            for part in message.split("; "):  # a model-level check may report several
                problem = f"{where}: {part}" if where else part
                if problem not in problems:
                    problems.append(problem)
        # Cross-references are only checked by the model once every field is valid: report
        # them now too, so one run lists every problem.
        problems += [p for p in _reference_problems(data) if p not in problems]
        lines = [f"{source}: {len(problems)} problem(s):", *(f"  {p}" for p in problems)]
        raise ConfigurationError("\n".join(lines)) from None


def load_config(path: str | os.PathLike[str]) -> BrokerGuardConfig:
    """Read and validate a TOML configuration file."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"{file}: no such configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{file}: not valid TOML: {exc}") from None
    return parse_config(data, source=str(file))


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


def _refuse_inline_secrets(data: Any) -> Any:
    if isinstance(data, Mapping):
        inline = [k for k in data if k in _SECRET_KEYS]
        if inline:
            raise ValueError(
                f"{', '.join(sorted(inline))}: secrets never go in the configuration file; name "
                f'the environment variable that holds it instead ({inline[0]}_env = "NAME")'
            )
    return data


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
