"""Hostile HTTP input: authenticate before reading a body, cap it while streaming, 400 for bad JSON.

The measure is bytes the app pulls from the server (ASGI ``http.request`` messages), not RSS:
what the app never pulls it never holds. Most tests drive the ASGI app directly with a body
that is produced lazily and counted; the ``served`` ones go through uvicorn on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.routing import APIRoute

from brokerguard.server import StatusServer, create_app
from brokerguard.service import GuardService, embedded_default_config
from brokerguard.testing import FakeClock

TOKEN = "hostile-test-control-token-0123456789"  # noqa: S105 (a test value)
CAP = 20 * 1024  # the control-body cap docs/operate.md states
HUGE = 50 * 1024 * 1024
FIELDS = ("account_id", "reason", "operator")
GOOD = b'{"account_id": "paper-main", "reason": "drill", "operator": "alice"}'


class HostileBody:
    """An ASGI ``receive`` that streams ``total`` bytes lazily and counts what the app pulls."""

    def __init__(self, total: int, *, chunk: int = 64 * 1024, data: bytes | None = None) -> None:
        self.total = total
        self.chunk = chunk
        self.pulled = 0
        self.calls = 0
        self._data = data
        self._block = b"A" * chunk

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.pulled >= self.total and self.calls > 1:
            return {"type": "http.disconnect"}
        size = min(self.chunk, self.total - self.pulled)
        if self._data is not None:
            piece = self._data[self.pulled : self.pulled + size]
        elif self.pulled == 0:
            # A JSON string that never closes: a parser has to read all of it to give up.
            piece = (b'{"account_id": "' + self._block)[:size]
        else:
            piece = self._block[:size]
        self.pulled += len(piece)
        return {"type": "http.request", "body": piece, "more_body": self.pulled < self.total}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def call(
    app: Any,
    path: str,
    *,
    body: HostileBody,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    length: int | None = None,
) -> Answer:
    """Send one request straight into the ASGI app; ``length`` is the declared Content-Length."""
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if length is not None:
        raw.append((b"content-length", str(length).encode()))
    raw.append((b"content-type", b"application/json"))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, body, send))
    start = sent[0]
    return Answer(
        status=start["status"],
        headers={k.decode().lower(): v.decode() for k, v in start["headers"]},
        text=b"".join(m.get("body", b"") for m in sent[1:]).decode(),
    )


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def exact(data: bytes, *, chunk: int = 64 * 1024) -> HostileBody:
    return HostileBody(len(data), chunk=chunk, data=data)


@pytest.fixture
def service(tmp_path):
    svc = GuardService(embedded_default_config(tmp_path), clock=FakeClock(start=1_795_000_000.0))
    yield svc
    svc.close()


@pytest.fixture
def app(service):
    return create_app(service, control_token=TOKEN)


# --- (a) authentication comes before the body ------------------------------------------------


@pytest.mark.parametrize("path", ["/halt", "/resume"])
@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong"), {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["none", "wrong", "no-scheme", "basic"],
)
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_an_unauthenticated_huge_body_is_refused_unread(app, path, headers, declared):
    """A request without the right bearer token gets 401 before one byte of its body is read."""
    body = HostileBody(HUGE)
    answer = call(app, path, body=body, headers=headers, length=HUGE if declared else None)
    assert answer.status == 401
    assert body.pulled == 0
    assert answer.headers.get("connection") == "close"


def test_disabled_control_refuses_a_huge_body_unread(service):
    """With no control token configured the answer is 403, and the body is never read."""
    body = HostileBody(HUGE)
    answer = call(create_app(service, control_token=None), "/halt", body=body, length=HUGE)
    assert answer.status == 403
    assert body.pulled == 0


@pytest.mark.parametrize(
    "payload",
    [b'{"nope": 1}', b"{", b"[]", b'{"account_id": 5}', b""],
    ids=["unknown-field", "malformed", "array", "wrong-type", "empty"],
)
def test_a_401_reveals_nothing_about_the_schema(app, payload):
    """An unauthenticated request learns no field name and no validation detail."""
    answer = call(app, "/halt", body=exact(payload), headers=bearer("wrong"))
    assert answer.status == 401
    assert answer.json() == {"detail": "a valid bearer token is required"}
    for secret in (*FIELDS, "loc", "msg", "Field required", "json"):
        assert secret not in answer.text


def test_get_endpoints_never_read_a_body(app):
    """A body sent with a GET is never pulled, whatever its size."""
    for path in ("/healthz", "/readyz", "/status", "/metrics", "/", "/openapi.json"):
        body = HostileBody(HUGE)
        answer = call(app, path, method="GET", body=body, length=HUGE)
        assert answer.status in {200, 503}, path
        assert body.pulled == 0, path


def test_no_route_lets_the_framework_parse_a_body(app):
    """No route declares a body FastAPI would read before the handler authenticates."""
    parsed = [r.path for r in app.routes if isinstance(r, APIRoute) and r.body_field is not None]
    assert parsed == []


# --- (b) the cap, enforced while streaming ---------------------------------------------------


def test_a_declared_length_over_the_cap_is_refused_unread(app):
    """An authenticated request whose Content-Length exceeds the cap gets 413 without a read."""
    body = HostileBody(HUGE)
    answer = call(app, "/halt", body=body, headers=bearer(), length=CAP + 1)
    assert answer.status == 413
    assert body.pulled == 0
    assert answer.headers.get("connection") == "close"


@pytest.mark.parametrize("chunk", [1, 1000, 64 * 1024])
def test_an_undeclared_oversize_body_is_cut_off_at_the_cap(app, service, chunk):
    """A body without Content-Length is read only until it passes the cap, then 413."""
    body = HostileBody(HUGE if chunk > 1 else 4 * CAP, chunk=chunk)
    answer = call(app, "/halt", body=body, headers=bearer())
    assert answer.status == 413
    assert body.pulled <= CAP + chunk  # reading stops at the message that crosses the cap
    if chunk == 1:
        assert body.pulled == CAP + 1
    assert not service.store.is_halted("paper-main")


def test_a_body_that_lies_about_its_length_is_cut_off_at_the_cap(app):
    """A Content-Length under the cap does not let a longer body through."""
    body = HostileBody(HUGE, chunk=1000)
    answer = call(app, "/halt", body=body, headers=bearer(), length=100)
    assert answer.status == 413
    assert body.pulled <= CAP + 1000


@pytest.mark.parametrize(
    ("declared", "status"), [("abc", 400), ("-1", 400), ("9" * 5000, 413)], ids=str
)
def test_a_strange_content_length_is_refused_unread(app, declared, status):
    """A Content-Length that is no number is a 400, an absurdly long one a 413; neither is read."""
    body = HostileBody(HUGE)
    headers = {**bearer(), "Content-Length": declared}
    answer = call(app, "/halt", body=body, headers=headers)
    assert answer.status == status
    assert body.pulled == 0


def test_a_body_exactly_at_the_cap_is_accepted(app, service):
    """The cap is inclusive: a valid body padded to exactly the cap is read and acted on."""
    padded = GOOD[:-1] + b" " * (CAP - len(GOOD)) + b"}"
    assert len(padded) == CAP
    answer = call(app, "/halt", body=exact(padded, chunk=1000), headers=bearer(), length=CAP)
    assert (answer.status, answer.json()) == (200, {"account_id": "paper-main", "halted": True})
    assert service.store.is_halted("paper-main")


def test_the_largest_body_the_schema_allows_fits_under_the_cap(app):
    """Every field at its maximum length, each character escaped to 12 bytes, is not a 413."""
    widest = "\U0001f600" * 500
    payload = json.dumps(dict.fromkeys(FIELDS, widest)).encode()  # ensure_ascii: 12 bytes a char
    assert len(payload) <= CAP
    answer = call(app, "/halt", body=exact(payload), headers=bearer(), length=len(payload))
    assert answer.status == 404  # parsed, validated, and the account does not exist


def test_the_cap_is_the_documented_one():
    """The cap in the code is the one the tests and docs/operate.md state."""
    from brokerguard.server import CONTROL_BODY_LIMIT_BYTES  # noqa: PLC0415 (pins a public name)

    assert CONTROL_BODY_LIMIT_BYTES == CAP


# --- (c) parsing after authentication --------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"{",
        b"",
        b"not json",
        b'{"account_id": "paper-main",}',
        b"\xff\xfe{}",
        b"{} {}",
        b'{"account_id": NaN}',
        b"[" * 10_000 + b"]" * 10_000,
    ],
    ids=[
        "truncated",
        "empty",
        "text",
        "trailing-comma",
        "bad-utf8",
        "two-documents",
        "nan",
        "deep",
    ],
)
@pytest.mark.parametrize("path", ["/halt", "/resume"])
def test_malformed_json_is_a_400(app, path, payload):
    """An authenticated body that is not JSON gets the documented 400, not a 422."""
    answer = call(app, path, body=exact(payload), headers=bearer())
    assert answer.status == 400
    assert answer.json()["detail"].startswith("the body is not valid JSON")


@pytest.mark.parametrize(
    "payload",
    [
        b"[]",
        b'{"account_id": "paper-main", "reason": "drill"}',
        b'{"account_id": "paper-main", "reason": "drill", "operator": "a", "extra": 1}',
        b'{"account_id": 5, "reason": "drill", "operator": "alice"}',
    ],
    ids=["array", "missing", "extra", "wrong-type"],
)
def test_well_formed_json_with_wrong_fields_is_a_422(app, payload):
    """Valid JSON that does not fit the schema gets 422 with the schema errors (authenticated)."""
    answer = call(app, "/halt", body=exact(payload), headers=bearer())
    assert answer.status == 422
    detail = answer.json()["detail"]
    assert detail
    assert all(error["loc"][0] == "body" for error in detail)


# --- through a real server on 127.0.0.1 ------------------------------------------------------


class Counting:
    """Wrap an ASGI app and count the body bytes it pulls from the server."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.pulled = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def counted() -> Any:
            message = await receive()
            self.pulled += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


@pytest.fixture
def served(app):
    counting = Counting(app)
    server = StatusServer(counting, port=0)
    server.start()
    yield server, counting
    server.stop()


def exchange(server: StatusServer, head: bytes, send_body: Any) -> bytes:
    """Send ``head``, stream ``send_body(sock)`` from a thread, and return the raw answer."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(head)

        def pump() -> None:
            # The server may close the connection under us: that is the point.
            with contextlib.suppress(OSError):
                send_body(sock)

        pusher = threading.Thread(target=pump, daemon=True)
        pusher.start()
        answer = b""
        try:
            while piece := sock.recv(65536):
                answer += piece
        except ConnectionResetError:
            assert answer  # a reset may follow the answer, never replace it
        pusher.join(10)
    return answer


def stream(total: int, pushed: list[int]) -> Any:
    """Make a sender of ``total`` bytes that records in ``pushed[0]`` how many the kernel took."""
    block = b"A" * (64 * 1024)

    def send(sock: socket.socket) -> None:
        while pushed[0] < total:
            pushed[0] += sock.send(block[: total - pushed[0]])

    return send


def test_served_an_unauthenticated_50_mb_post_gets_401_unread(served):
    """Through uvicorn, a 50 MB POST without a token gets 401 and the app reads none of it."""
    server, counting = served
    head = (
        b"POST /halt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % HUGE
    )
    pushed = [0]
    answer = exchange(server, head, stream(HUGE, pushed))
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert b"connection: close" in answer.lower()
    assert counting.pulled == 0
    assert pushed[0] < HUGE  # the server hung up instead of draining the rest


def test_served_an_authenticated_chunked_body_is_cut_off_at_the_cap(served, service):
    """Through uvicorn, a chunked body without Content-Length is refused 413 once past the cap."""
    server, counting = served
    head = (
        b"POST /halt HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
    )

    def chunks(sock: socket.socket) -> None:
        piece = b"%x\r\n%s\r\n" % (1024, b" " * 1024)
        for _ in range(CAP // 1024 + 2):  # a little over the cap, and never the final chunk
            sock.sendall(piece)

    answer = exchange(server, head, chunks)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert CAP < counting.pulled <= CAP + 2048
    assert not service.store.is_halted("paper-main")


def test_served_a_declared_oversize_is_answered_without_waiting_for_it(served):
    """Through uvicorn, Content-Length over the cap gets 413 before the body is even sent."""
    server, counting = served
    head = (
        b"POST /halt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n"
        b"Authorization: Bearer %s\r\n\r\n" % (HUGE, TOKEN.encode())
    )
    answer = exchange(server, head, lambda sock: None)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert counting.pulled == 0
