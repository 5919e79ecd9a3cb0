"""The pre-trade API under ``/v1``: a bot in any process or language asks before it enters.

Authenticated with the **bot token** (``Authorization: Bearer``, from ``BROKERGUARD_BOT_TOKEN``
by default), which is not the operator's control token: a bot can reserve, report and ask; it
cannot halt or resume. Without a configured bot token the API answers 403, never opens.

- ``POST /v1/accounts/{account_id}/entries`` ``{"symbol", "side", "client_order_id"}``: 201
  with a reservation (``reservation_id``, ``expires_at``, ``decision``), or 409 with the
  refusing ``decision`` (the gate's reason code and details). ``Idempotency-Key`` replays the
  first answer.
- ``POST .../entries/{reservation_id}/placed`` ``{"order_id"}``: the order was placed.
- ``DELETE .../entries/{reservation_id}``: definitely not placed (checked with the broker
  first: an order found keeps the slot).
- ``GET /v1/accounts/{account_id}/gate?symbol=``: the decision, reserving nothing.
- ``GET /v1/accounts/{account_id}``: the trading state, the cap and what to exit now.

A reservation never reported is looked up at the broker by its client order id when it
expires (the service's pass), never assumed unplaced (:mod:`brokerguard.risk.entries`).
Calls are handled as the control calls are: authenticate before the body is read, cap the body
(413), parse (400), validate (422).
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from brokerguard.errors import BrokerGuardError, InvalidBrokerData
from brokerguard.risk.entries import Entry, EntryBook, UnknownReservationError, decision_dict
from brokerguard.server.body import CLOSE, read_capped, validate_body
from brokerguard.server.body import parse_json as parse_body
from brokerguard.service import GuardService

__all__ = ["EntryRequest", "PlacedRequest", "pretrade_router"]

PRETRADE_BODY_LIMIT_BYTES = 4 * 1024
"""An entry request is a few short strings."""

Id = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\s\u0085]+$")]
r"""No white space by either reading of ``\s`` (see ``server.app.NOT_BLANK``)."""


class EntryRequest(BaseModel):
    """Reserve an entry: the symbol, the side, and the client order id the bot will send."""

    model_config = ConfigDict(extra="forbid")
    symbol: Id
    side: Literal["buy", "sell"]
    client_order_id: Id


class PlacedRequest(BaseModel):
    """The bot placed its order: the venue's order id, when it has one."""

    model_config = ConfigDict(extra="forbid")
    order_id: Id | None = None


_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "the body is not one UTF-8 JSON document (after authentication)"},
    401: {"description": "missing or wrong bot token; the body is not read"},
    403: {"description": "the pre-trade API is disabled: no bot token configured"},
    404: {"description": "no such account, or no such reservation in it"},
    413: {"description": f"the body is over {PRETRADE_BODY_LIMIT_BYTES} bytes"},
    503: {"description": "the state store or the broker cannot answer"},
}


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        },
        "responses": {"422": {"description": "JSON that does not fit the schema"}},
    }


def pretrade_router(  # noqa: C901, PLR0915 (one nested function per route)
    service: GuardService, *, bot_token: str | None
) -> APIRouter:
    """The ``/v1`` routes for `service`; `bot_token` None disables them (403)."""
    router = APIRouter(prefix="/v1", tags=["pre-trade"])

    def authorize(authorization: str | None) -> None:
        if bot_token is None:
            raise HTTPException(403, "the pre-trade API is disabled: no bot token configured")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.encode(), bot_token.encode()
        ):
            raise HTTPException(
                401, "a valid bot token is required", {"WWW-Authenticate": "Bearer", **CLOSE}
            )

    def book(account_id: str) -> EntryBook:
        runtime = service.accounts.get(account_id)
        if runtime is None:
            raise HTTPException(404, f"no account {account_id!r}")
        return runtime.entries

    async def body(request: Request, model: type[BaseModel]) -> Any:
        raw = await read_capped(request, limit=PRETRADE_BODY_LIMIT_BYTES)
        return validate_body(model, parse_body(raw))

    def entry_json(entry: Entry) -> dict[str, Any]:
        data = entry.as_dict()
        data.pop("account_id")
        return data

    @router.post(
        "/accounts/{account_id}/entries",
        status_code=201,
        responses={**_RESPONSES, 409: {"description": "refused: the decision says why"}},
        openapi_extra=_body_doc(EntryRequest),
    )
    async def reserve(
        account_id: str,
        request: Request,
        authorization: Annotated[str | None, Header()] = None,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Any:
        """Reserve an entry (201), or say why not (409)."""
        authorize(authorization)
        entries = book(account_id)
        order: EntryRequest = await body(request, EntryRequest)
        try:
            answer = await run_in_threadpool(
                entries.reserve,
                order.symbol,
                order.side,
                order.client_order_id,
                idempotency_key=idempotency_key,
            )
        except InvalidBrokerData as exc:
            raise HTTPException(422, str(exc)) from exc
        except BrokerGuardError as exc:
            raise HTTPException(503, f"{type(exc).__name__}: {exc}") from exc
        if isinstance(answer, Entry):
            return JSONResponse(entry_json(answer), status_code=201)
        return JSONResponse({"decision": decision_dict(answer)}, status_code=409)

    @router.post(
        "/accounts/{account_id}/entries/{reservation_id}/placed",
        responses=_RESPONSES,
        openapi_extra=_body_doc(PlacedRequest),
    )
    async def placed(
        account_id: str,
        reservation_id: str,
        request: Request,
        authorization: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """The order was placed: its slot stays until a snapshot shows the position."""
        authorize(authorization)
        entries = book(account_id)
        report: PlacedRequest = await body(request, PlacedRequest)
        try:
            entry = await run_in_threadpool(entries.placed, reservation_id, report.order_id)
        except UnknownReservationError as exc:
            raise HTTPException(404, str(exc)) from exc
        return entry_json(entry)

    @router.delete("/accounts/{account_id}/entries/{reservation_id}", responses=_RESPONSES)
    async def release(
        account_id: str,
        reservation_id: str,
        authorization: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """Definitely not placed: the broker is asked first; an order found keeps the slot."""
        authorize(authorization)
        entries = book(account_id)
        try:
            entry = await run_in_threadpool(entries.release, reservation_id)
        except UnknownReservationError as exc:
            raise HTTPException(404, str(exc)) from exc
        return entry_json(entry)

    @router.get("/accounts/{account_id}/gate", responses=_RESPONSES)
    async def gate(
        account_id: str,
        symbol: Annotated[str, Field(min_length=1, max_length=100)],
        authorization: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """The gate's decision for an entry in `symbol`, reserving nothing."""
        authorize(authorization)
        entries = book(account_id)
        decision = await run_in_threadpool(entries.gate.check_entry, symbol)
        state = await run_in_threadpool(entries.gate.trading_state)
        return {"decision": decision_dict(decision), "trading_state": state.value}

    @router.get("/accounts/{account_id}", responses=_RESPONSES)
    async def account(
        account_id: str, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """The trading state, the cap, the positions and what to exit now."""
        authorize(authorization)
        book(account_id)
        return await run_in_threadpool(service.account_view, account_id)

    return router
