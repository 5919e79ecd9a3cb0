"""The one exception tree of brokerguard.

Every error brokerguard raises derives from :class:`BrokerGuardError`, in two families that
tell the caller what to do::

    BrokerGuardError
    ├── BlockedError                 brokerguard refused: nothing reached the broker
    │   ├── CircuitOpenError         the broker's circuit is open (broker, scope, next_probe_in)
    │   ├── CoordinationUnavailableError  the fleet's Redis cannot be reached: no new risk
    │   └── LeaseLostError           this worker no longer holds the account (stale fence)
    ├── BrokerError                  the broker was called and did not do it
    │   ├── TransientBrokerError     network, timeout, unavailable, maintenance (retry_after)
    │   │   └── RateLimitedError     the broker asked us to slow down (retry_after)
    │   ├── BrokerRejection          a business refusal from a healthy broker: do not retry
    │   ├── FatalBrokerError         authentication or permission: trading must stop
    │   ├── InvalidBrokerData        the broker answered with something that is not data
    │   │                            (field, value, reason): never becomes a number
    │   ├── DuplicateOrderError      the venue already has an order with this client order id:
    │   │                            evidence that it exists, never a rejection
    │   ├── OrderUnconfirmedError    an order's outcome is unknown (UNRESOLVED): never resend it
    │   │                            (client_order_id, deadline, exists)
    │   └── PositionsImplausibleError  a successful position read lost positions that nothing
    │                                explains: suspect until confirmed (missing, agreeing, needed)
    ├── StoreUnavailableError        the state store cannot be read or written: deny new risk
    └── ConfigurationError           a setting is invalid (also a ValueError)

Errors carry their context as attributes so handlers never parse messages. Foreign errors
(ccxt, HTTP) are translated into this tree at exactly one seam, inside the adapter that met
them, and re-raised ``from`` the original.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "BlockedError",
    "BrokerError",
    "BrokerGuardError",
    "BrokerRejection",
    "CircuitOpenError",
    "ConfigurationError",
    "CoordinationUnavailableError",
    "DuplicateOrderError",
    "FatalBrokerError",
    "InvalidBrokerData",
    "LeaseLostError",
    "OrderUnconfirmedError",
    "PositionsImplausibleError",
    "RateLimitedError",
    "StoreUnavailableError",
    "TransientBrokerError",
]


class BrokerGuardError(Exception):
    """Base of every error brokerguard raises."""


class BlockedError(BrokerGuardError):
    """brokerguard refused the action; nothing was sent to the broker."""


class CircuitOpenError(BlockedError):
    """The broker's circuit is open, so the call was rejected without reaching the broker.

    Attributes:
        broker: the broker whose circuit is open.
        next_probe_in: seconds until the breaker will let a probe through; ``0.0`` when the
            probe time has come but the allowed probes are already in flight; ``None`` when an
            operator forced the circuit open (no automatic probe).
        scope: the breaker's scope (``"read"``, ``"write"``, ``"default"`` ...).
    """

    # The constructor is BaseException's own (arguments land in ``args``): an open circuit
    # rejects calls in a hot loop, and a Python-level __init__ would double the cost of each
    # rejection. The properties below give the arguments their names.
    if TYPE_CHECKING:

        def __init__(
            self, broker: str, next_probe_in: float | None, scope: str = "default"
        ) -> None: ...

    @property
    def broker(self) -> str:
        """Name of the broker whose circuit is open."""
        return str(self.args[0])

    @property
    def next_probe_in(self) -> float | None:
        """Seconds until the next probe is allowed (None: forced open, no automatic probe)."""
        seconds = self.args[1] if len(self.args) > 1 else None
        return None if seconds is None else float(seconds)

    @property
    def retry_after(self) -> float | None:
        """Same as :attr:`next_probe_in`, under the name transient errors use."""
        return self.next_probe_in

    @property
    def scope(self) -> str:
        """Scope of the breaker that rejected the call."""
        return str(self.args[2]) if len(self.args) > 2 else "default"  # noqa: PLR2004 (args[2])

    def __str__(self) -> str:
        wait = self.next_probe_in
        when = "until an operator closes it" if wait is None else f"next probe in {wait:.1f}s"
        return f"circuit open for broker {self.broker!r} (scope {self.scope!r}): {when}"


class BrokerError(BrokerGuardError):
    """The broker was called and did not do what was asked."""


class TransientBrokerError(BrokerError):
    """A failure that may go away by itself: network, timeout, unavailable, maintenance.

    Attributes:
        retry_after: seconds the broker asked us to wait before trying again, when it said so.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        if retry_after is not None and not retry_after >= 0:  # also rejects NaN
            raise ConfigurationError(f"retry_after must be >= 0 seconds, got {retry_after!r}")
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only state would be lost by BaseException's pickling (args only); fleets pass
        # errors between processes.
        return (_rebuild_transient, (type(self), self.args, self.retry_after))


class RateLimitedError(TransientBrokerError):
    """The broker said we are calling too often; ``retry_after`` is honoured when given."""


class BrokerRejection(BrokerError):  # noqa: N818 (the name is the documented contract)
    """A business refusal (insufficient funds, invalid order, unknown order).

    The broker answered, so it is healthy: a rejection is never retried and never counts as a
    breaker failure (nor as a success).
    """


class FatalBrokerError(BrokerError):
    """Authentication or permission failure: retrying cannot help and trading must stop."""


class InvalidBrokerData(BrokerError):  # noqa: N818 (the name is the documented contract)
    """A value from a broker (or handed to a model) is not data: it never becomes a number.

    Raised for NaN, infinity, negative or absurd quantities, zero or negative prices, empty
    symbols, non-numeric strings, wrong types and missing fields. By default it counts as a
    breaker failure (a garbled payload) but is not retried.

    Attributes:
        field: which field was bad (``"price"``, ``"quantity"``, ``"symbol"`` ...).
        value: the offending value, as received.
        reason: a stable code for what was wrong (``"nan"``, ``"negative"``, ``"missing"`` ...).
        symbol: the instrument concerned, when known.
    """

    def __init__(
        self, field: str, value: object, reason: str, *, symbol: str | None = None
    ) -> None:
        where = f" for {symbol}" if symbol else ""
        super().__init__(f"invalid {field}{where}: {reason} (got {value!r})")
        self.field = field
        self.value = value
        self.reason = reason
        self.symbol = symbol

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_invalid, (type(self), self.field, self.value, self.reason, self.symbol))


class DuplicateOrderError(BrokerError):
    """The venue answered that an order with this client order id already exists.

    Kraken (``EOrder:Duplicate order``) and most venues say this only about a *live* order:
    it is evidence that our earlier send landed, never a rejection. The order is looked up and
    adopted; a bot that read it as "refused" would try another coin and end over its cap.

    Attributes:
        client_order_id: the id the venue says it already has, when known.
    """

    def __init__(self, message: str, *, client_order_id: str | None = None) -> None:
        super().__init__(message)
        self.client_order_id = client_order_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_duplicate, (type(self), str(self), self.client_order_id))


class OrderUnconfirmedError(BrokerError):
    """An order's outcome is unknown: it is UNRESOLVED, and it must never be resent.

    A timeout, a transient error, an unknown error string or a garbled answer after a submit
    leave the order possibly accepted (Kraken may execute it seconds later), and a lookup made
    at once proves nothing. The order stays unresolved until it is found (its state is adopted)
    or two lookups made after :attr:`deadline`, 2 s apart, find it neither open nor closed (it
    was not placed; :data:`brokerguard.orders.ABSENT_LOOKUPS_REQUIRED`). Until then its slot
    stays taken and its symbol is not traded again.

    Attributes:
        client_order_id: the order's client order id: reconcile with it, never with a new one.
        deadline: epoch seconds from which a lookup can decide (the venue's own deadline plus a
            margin, or 2 s after an unconfirmed absent answer); lookups from then on that find
            nothing prove the order was not placed. None when only finding it can resolve it.
        exists: True when the venue said the order exists (a duplicate-id answer): only
            finding it resolves it.
    """

    def __init__(
        self,
        message: str,
        *,
        client_order_id: str,
        deadline: float | None = None,
        exists: bool = False,
    ) -> None:
        super().__init__(message)
        self.client_order_id = client_order_id
        self.deadline = deadline
        self.exists = exists

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_unconfirmed,
            (type(self), str(self), self.client_order_id, self.deadline, self.exists),
        )


class PositionsImplausibleError(BrokerError):
    """A successful position read lost positions that no fill, sell or transfer explains.

    An exchange that answers a well-formed, empty (or thinner) balance is the incident through
    another door: "holds nothing" would let the bot buy past its cap. The read is *suspect*:
    the gate refuses (``POSITIONS_IMPLAUSIBLE``) and the enforcer reports ``unverified`` until
    enough agreeing reads confirm it.

    Attributes:
        missing: the symbols the read lost.
        agreeing: how many consecutive reads agreed on the loss so far.
        needed: how many agreeing reads (and, see the broker, how much time) confirm it.
    """

    def __init__(
        self, message: str, *, missing: tuple[str, ...], agreeing: int, needed: int
    ) -> None:
        super().__init__(message)
        self.missing = missing
        self.agreeing = agreeing
        self.needed = needed

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_implausible,
            (type(self), str(self), self.missing, self.agreeing, self.needed),
        )


class CoordinationUnavailableError(BlockedError):
    """The shared coordination backend (Redis) cannot be reached.

    Whether another worker holds the account, what the fleet's breaker says, which nonce is
    next: all unknown, and unknown means no new risk and no action on the account.
    """


class LeaseLostError(BlockedError):
    """This worker's lease on an account is gone.

    Another worker, with a newer fencing token, may be acting on the account: this one must not
    write or send anything for it.
    """


class StoreUnavailableError(BrokerGuardError):
    """The state store could not be read or written.

    Whatever the store would have said (halted? paused?) is unknown, and unknown means deny.
    """


class ConfigurationError(BrokerGuardError, ValueError):
    """A setting is invalid; raised when the object is built, never later."""


def _rebuild_transient(
    cls: type[TransientBrokerError], args: tuple[Any, ...], retry_after: float | None
) -> TransientBrokerError:
    return cls(*args, retry_after=retry_after)


# The rebuilders take the class itself (``type(self)``): a subclass (the ccxt-kind errors of
# brokerguard.ccxt) pickles as itself with no rebuilder of its own.


def _rebuild_invalid(
    cls: type[InvalidBrokerData], field: str, value: object, reason: str, symbol: str | None
) -> InvalidBrokerData:
    return cls(field, value, reason, symbol=symbol)


def _rebuild_duplicate(
    cls: type[DuplicateOrderError], message: str, client_order_id: str | None
) -> DuplicateOrderError:
    return cls(message, client_order_id=client_order_id)


def _rebuild_unconfirmed(
    cls: type[OrderUnconfirmedError],
    message: str,
    client_order_id: str,
    deadline: float | None,
    exists: bool,
) -> OrderUnconfirmedError:
    return cls(message, client_order_id=client_order_id, deadline=deadline, exists=exists)


def _rebuild_implausible(
    cls: type[PositionsImplausibleError],
    message: str,
    missing: tuple[str, ...],
    agreeing: int,
    needed: int,
) -> PositionsImplausibleError:
    return cls(message, missing=missing, agreeing=agreeing, needed=needed)
