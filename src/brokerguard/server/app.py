"""The HTTP surface: liveness, readiness, status, metrics, the status page, halt and resume.

The control endpoints (``POST /halt``, ``POST /resume``) need ``Authorization: Bearer <token>``
with the control token from the environment. Without a configured token they are disabled
(403), never open. The server binds 127.0.0.1 unless configured otherwise.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from brokerguard.errors import BrokerGuardError
from brokerguard.metrics import CONTENT_TYPE, ServiceMetrics
from brokerguard.server.page import render_page
from brokerguard.service import GuardService

__all__ = ["HaltRequest", "ResumeRequest", "create_app"]

Text = Annotated[str, Field(min_length=1, max_length=500, pattern=r"\S")]


class HaltRequest(BaseModel):
    """Halt an account."""

    model_config = ConfigDict(extra="forbid")
    account_id: Text
    reason: Text
    operator: Text


class ResumeRequest(BaseModel):
    """Resume an account: an operator, and why it is safe."""

    model_config = ConfigDict(extra="forbid")
    account_id: Text
    operator: Text
    reason: Text


_CONTROL_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "the body is not valid JSON"},
    401: {"description": "missing or wrong bearer token"},
    403: {"description": "control endpoints disabled: no control token configured"},
    404: {"description": "no such account"},
    503: {"description": "the state store is unreachable"},
}


def create_app(  # noqa: C901 (one nested function per route reads best in one place)
    service: GuardService, *, control_token: str | None
) -> FastAPI:
    """Build the app for `service`; `control_token` None disables the control endpoints."""
    from brokerguard import __version__  # noqa: PLC0415 (the package imports this module)

    app = FastAPI(title="brokerguard", version=__version__, docs_url=None, redoc_url=None)
    metrics = ServiceMetrics(service)

    def authorize(authorization: str | None) -> None:
        if control_token is None:
            raise HTTPException(403, "control endpoints are disabled: no control token configured")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.encode(), control_token.encode()
        ):
            raise HTTPException(
                401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"}
            )

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
            render_page(service.status(), control_enabled=control_token is not None)
        )

    @app.post("/halt", responses=_CONTROL_RESPONSES)
    def halt(
        request: HaltRequest, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Halt an account (durable, audited)."""
        authorize(authorization)
        known(request.account_id)
        try:
            service.halt(request.account_id, request.reason, request.operator)
        except BrokerGuardError as exc:
            raise HTTPException(503, f"{type(exc).__name__}: {exc}") from exc
        return {"account_id": request.account_id, "halted": True}

    @app.post("/resume", responses=_CONTROL_RESPONSES)
    def resume(
        request: ResumeRequest, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Lift an account's halt (operator and reason required; audited)."""
        authorize(authorization)
        known(request.account_id)
        try:
            lifted = service.resume(request.account_id, request.operator, request.reason)
        except BrokerGuardError as exc:
            raise HTTPException(503, f"{type(exc).__name__}: {exc}") from exc
        return {"account_id": request.account_id, "resumed": lifted}

    return app
