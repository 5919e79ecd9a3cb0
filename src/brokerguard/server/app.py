"""The HTTP surface: liveness, readiness, status, metrics, the status page, halt and resume.

The control endpoints (``POST /halt``, ``POST /resume``) need ``Authorization: Bearer <token>``
with the control token from the environment. Without a configured token they are disabled
(403), never open. The server binds 127.0.0.1 unless configured otherwise.

A control call is handled in a fixed order: authenticate (401/403, the body unread) → size (413
over :data:`~brokerguard.server.body.CONTROL_BODY_LIMIT_BYTES`, enforced while streaming) →
parse (400 for anything but one JSON document) → validate (422, FastAPI's error shape) → act.
No route declares a body parameter, because FastAPI would read and validate it before any of
that; the request body schema is documented through ``openapi_extra`` instead. No GET reads a
body.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from brokerguard.errors import BrokerGuardError, ConfigurationError
from brokerguard.metrics import CONTENT_TYPE, ServiceMetrics
from brokerguard.server.body import (
    CLOSE,
    CONTROL_BODY_LIMIT_BYTES,
    parse_json,
    read_capped,
    validate_body,
)
from brokerguard.server.page import render_page
from brokerguard.server.pretrade import pretrade_router
from brokerguard.service import GuardService

__all__ = ["HaltRequest", "ResumeRequest", "create_app"]

NOT_BLANK = r"[^\s\u0085]"
r"""Some character that is not white space, by every reading of ``\s``: the validator's (Unicode
White_Space, which has U+0085) and the schema's (ECMAScript, which has not); with plain ``\S``
the published schema allowed a "\u0085" that the validator then refused."""

Text = Annotated[str, Field(min_length=1, max_length=500, pattern=NOT_BLANK)]
SymbolText = Annotated[str, Field(min_length=1, max_length=40, pattern=NOT_BLANK)]


class HaltRequest(BaseModel):
    """Halt an account."""

    model_config = ConfigDict(extra="forbid")
    account_id: Text
    reason: Text
    operator: Text


class ConfirmPositionsRequest(BaseModel):
    """Confirm that positions a read lost are really gone: which, who, and how it is known."""

    model_config = ConfigDict(extra="forbid")
    account_id: Text
    symbols: list[SymbolText] = Field(min_length=1, max_length=50)
    operator: Text
    reason: Text


class ResumeRequest(BaseModel):
    """Resume an account: an operator, and why it is safe."""

    model_config = ConfigDict(extra="forbid")
    account_id: Text
    operator: Text
    reason: Text


M = TypeVar("M", bound=BaseModel)

_CONTROL_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "the body is not one UTF-8 JSON document (checked after authentication)"},
    401: {"description": "missing or wrong bearer token; the body is not read"},
    403: {"description": "control endpoints disabled: no control token configured"},
    404: {"description": "no such account"},
    413: {
        "description": f"the body is over {CONTROL_BODY_LIMIT_BYTES} bytes, declared or streamed; "
        "checked after authentication, and the connection is closed"
    },
    503: {"description": "the state store is unreachable"},
}


def _control_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """Document the body FastAPI is not allowed to read, and what 422 means here."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        },
        "responses": {
            "422": {"description": "JSON that does not fit the schema (after authentication)"}
        },
    }


def create_app(  # noqa: C901, PLR0915 (one nested function per route reads best in one place)
    service: GuardService, *, control_token: str | None, bot_token: str | None = None
) -> FastAPI:
    """Build the app for `service`; a None token disables its endpoints (control, /v1)."""
    from brokerguard import __version__  # noqa: PLC0415 (the package imports this module)

    app = FastAPI(title="brokerguard", version=__version__, docs_url=None, redoc_url=None)
    metrics = ServiceMetrics(service)

    def authorize(authorization: str | None) -> None:
        if control_token is None:
            raise HTTPException(
                403, "control endpoints are disabled: no control token configured", CLOSE
            )
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.encode(), control_token.encode()
        ):
            raise HTTPException(
                401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer", **CLOSE}
            )

    async def control_body(request: Request, authorization: str | None, model: type[M]) -> M:
        # The order is the defence: nothing is read before the token is checked.
        authorize(authorization)
        body = await read_capped(request, limit=CONTROL_BODY_LIMIT_BYTES)
        return validate_body(model, parse_json(body))

    def known(account_id: str) -> None:
        if account_id not in service.accounts:
            raise HTTPException(404, f"no account {account_id!r}")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "not ready"}})
    def readyz() -> JSONResponse:
        """Readiness: 503 while any broker is offline or the store is unreachable."""
        ready, reasons = service.ready()
        return JSONResponse({"ready": ready, "reasons": reasons}, status_code=200 if ready else 503)

    @app.get("/status")
    def status() -> dict[str, Any]:
        """Every breaker, every account's last enforcement, halts, paused symbols, events."""
        return service.status()

    @app.get("/metrics", response_class=Response)
    def prometheus() -> Response:
        """Prometheus text exposition."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        """The status page for humans."""
        return HTMLResponse(
            render_page(
                service.status(),
                control_enabled=control_token is not None,
                now=service.clock.time(),
            )
        )

    @app.post("/halt", responses=_CONTROL_RESPONSES, openapi_extra=_control_openapi(HaltRequest))
    async def halt(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Halt an account (durable, audited)."""
        order = await control_body(request, authorization, HaltRequest)
        known(order.account_id)
        try:
            await run_in_threadpool(service.halt, order.account_id, order.reason, order.operator)
        except BrokerGuardError as exc:
            raise HTTPException(503, f"{type(exc).__name__}: {exc}") from exc
        return {"account_id": order.account_id, "halted": True}

    @app.post(
        "/resume", responses=_CONTROL_RESPONSES, openapi_extra=_control_openapi(ResumeRequest)
    )
    async def resume(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Lift an account's halt (operator and reason required; audited)."""
        order = await control_body(request, authorization, ResumeRequest)
        known(order.account_id)
        try:
            lifted = await run_in_threadpool(
                service.resume, order.account_id, order.operator, order.reason
            )
        except BrokerGuardError as exc:
            raise HTTPException(503, f"{type(exc).__name__}: {exc}") from exc
        return {"account_id": order.account_id, "resumed": lifted}

    @app.post(
        "/positions/confirm",
        responses=_CONTROL_RESPONSES,
        openapi_extra=_control_openapi(ConfirmPositionsRequest),
    )
    async def confirm_positions(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Confirm that positions a read lost are really gone (audited).

        The next read lacking them is believed. Only for losses no sell of ours or trade
        history explains.
        """
        order = await control_body(request, authorization, ConfirmPositionsRequest)
        known(order.account_id)
        try:
            symbols = await run_in_threadpool(
                service.confirm_positions,
                order.account_id,
                order.symbols,
                order.operator,
                order.reason,
            )
        except ConfigurationError as exc:
            raise HTTPException(422, str(exc)) from exc
        except BrokerGuardError as exc:
            raise HTTPException(503, f"{type(exc).__name__}: {exc}") from exc
        return {"account_id": order.account_id, "confirmed": symbols}

    app.include_router(pretrade_router(service, bot_token=bot_token))
    return app
