"""Read a control call's body without trusting it: bounded while streaming, then parsed strictly.

The order is fixed by the caller: authenticate → size → parse. Nothing here may run before the
caller has authenticated, because reading is what costs memory and parsing is what tells a
stranger about the schema. FastAPI is never given a body parameter for the same reason: it would
read and validate the whole body before any handler code runs.

Answers (an :class:`~fastapi.HTTPException`, or FastAPI's ``RequestValidationError``):

* 413 when ``Content-Length`` says more than the cap (nothing is read) or when the streamed body
  passes it (reading stops at the message that crosses the cap; nothing past the cap is kept);
  ``Connection: close`` so the server drops the unread rest instead of draining it.
* 400 when the bytes are not one UTF-8 JSON document (or nest too deep to parse).
* 422 when the JSON does not fit the model, in FastAPI's ``HTTPValidationError`` shape.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

__all__ = ["CONTROL_BODY_LIMIT_BYTES", "parse_json", "read_capped", "validate_body"]

#: The largest control body read, in bytes. The largest body the schema allows (three fields of
#: 500 characters, each escaped as a 12-byte ``\\ud83d\\ude00`` pair) is about 18,050 bytes, so
#: every valid request fits and nothing much larger is ever held.
CONTROL_BODY_LIMIT_BYTES = 20 * 1024

# Sent with every refusal that leaves a body unread, so the server closes instead of draining it.
CLOSE = {"Connection": "close"}

# More digits than this is over any cap, and int() of a very long string is itself slow.
_MAX_LENGTH_DIGITS = 18

M = TypeVar("M", bound=BaseModel)


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"the body is over the {limit}-byte limit", CLOSE)


async def read_capped(request: Request, *, limit: int) -> bytes:
    """Return the body, refusing (413) one that declares or streams more than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise HTTPException(400, "the Content-Length header is not a number", CLOSE)
        if len(declared) > _MAX_LENGTH_DIGITS or int(declared) > limit:
            raise _too_large(limit)
    body = bytearray()
    try:
        async for chunk in request.stream():
            # Checked before keeping the chunk: a body that lies about its length, or sends none,
            # is cut off here too.
            if len(body) + len(chunk) > limit:
                raise _too_large(limit)
            body += chunk
    except ClientDisconnect as exc:
        # Nobody will see this answer; it only keeps a half-sent body out of the error log.
        raise HTTPException(400, "the client went away before the body ended", CLOSE) from exc
    return bytes(body)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> object:
    """Parse one strict JSON document (UTF-8, no NaN or Infinity); anything else is a 400."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        raise HTTPException(400, f"the body is not valid JSON: {exc}") from exc


def validate_body(model: type[M], payload: object) -> M:
    """Validate parsed JSON against `model`; a mismatch is FastAPI's 422 with ``body`` locations."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        errors = [
            {**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)
        ]
        raise RequestValidationError(errors) from exc
