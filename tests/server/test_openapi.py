"""The OpenAPI schema is served and the app honours it for generated requests (schemathesis)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from brokerguard.server import create_app
from brokerguard.server.app import HaltRequest, ResumeRequest
from brokerguard.service import GuardService, embedded_default_config
from brokerguard.testing import FakeClock

TOKEN = "schema-test-token"  # noqa: S105 (a test value)


def _app():
    import tempfile  # noqa: PLC0415

    service = GuardService(
        embedded_default_config(tempfile.mkdtemp(prefix="bg-schema-")),
        clock=FakeClock(start=1_795_000_000.0),
    )
    # One token for both (the CLI refuses that; here it lets every route be reached).
    return create_app(service, control_token=TOKEN, bot_token=TOKEN)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_without_a_token(case):
    """Unauthenticated generated requests get documented answers, never a 500."""
    case.call_and_validate()


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_with_the_token(case):
    """Authenticated generated requests get documented answers, never a 500."""
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"})


def test_the_schema_documents_the_control_failures():
    """400, 401, 403, 404, 413 and 422 are part of the contract of the control endpoints."""
    document = _app().openapi()
    for path in ("/halt", "/resume"):
        responses = document["paths"][path]["post"]["responses"]
        assert {"400", "401", "403", "404", "413", "422"} <= set(responses)


def test_the_schema_documents_the_bodies_the_handlers_read():
    """Each control body is documented from its model, though the framework never reads it."""
    document = _app().openapi()
    for path, model in (("/halt", HaltRequest), ("/resume", ResumeRequest)):
        body = document["paths"][path]["post"]["requestBody"]
        assert body["required"] is True
        assert body["content"]["application/json"]["schema"] == model.model_json_schema()


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
