"""The Anthropic API gateway, over real loopback sockets, with FakeAnthropic as the API.

The gateway runs in a thread with its own event loop on 127.0.0.1; clients are plain
sockets speaking HTTP/1.1 (parsed with h11), so every byte the bottle could send is under
the test's control. Records go through the real AuditLog.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest

from claude_bottle.bundle.api_policy import OAUTH_BETA, api_target, upstream_headers
from claude_bottle.bundle.audit import AuditLog
from claude_bottle.bundle.credentials import Credential
from claude_bottle.bundle.gateway import AnthropicGateway, GatewayUpstream, TokenBudget
from claude_bottle.bundle.refusal import Refusal
from claude_bottle.bundle.usage import MODEL_SCAN_BYTES, UsageMeter, model_of
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.integration.upstream import RecordingHTTPServer

REAL_KEY = "sk-ant-api03-REALREALREAL" + "k" * 60 + "AA"
OAUTH_TOKEN = "sk-ant-oat01-OAUTHOAUTH" + "t" * 60 + "AA"
PLACEHOLDER = "sk-ant-api03-placeholder-not-a-real-key-000000"
PROMPT = "please summarise the secret plans for project nightingale"
API_KEY_CRED = Credential("api-key", REAL_KEY, "env:ANTHROPIC_API_KEY")
OAUTH_CRED = Credential("oauth", OAUTH_TOKEN, "keychain:/x", expires_at=None)


# --- harness ----------------------------------------------------------------------------


class GatewayThread:
    """AnthropicGateway on 127.0.0.1:<port>, its own loop in a thread."""

    def __init__(
        self,
        upstream: GatewayUpstream,
        credentials: Callable[[], Any],
        audit: AuditLog,
        budget: TokenBudget | None = None,
    ) -> None:
        self.upstream = upstream
        self.credentials = credentials
        self.audit = audit
        self.budget = budget
        self.records: list[dict[str, Any]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()

        async def start() -> None:
            self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await AnthropicGateway(
                self.upstream, self.credentials, self.record, reader, writer, budget=self.budget
            ).serve()
        except asyncio.CancelledError:
            pass  # test teardown
        finally:
            self.tasks.discard(task)

    def record(self, kind: str, decision: str, **fields: Any) -> None:
        self.records.append(self.audit.record(kind, decision, **fields))

    def wait_records(self, count: int, timeout: float = 5) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.records) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.records) >= count, self.records
        return self.records

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            if self.tasks:
                await asyncio.wait(set(self.tasks), timeout=2)
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Reply:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    first_byte: float = 0.0
    done: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body)


def read_reply(sock: socket.socket, method: bytes = b"POST") -> Reply:
    """Read one response from `sock` with h11 (the request itself was sent raw)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"x")]))
    conn.send(h11.EndOfMessage())
    reply = Reply(0, {}, b"")
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = sock.recv(65536)
            if not reply.first_byte:
                reply.first_byte = time.monotonic()
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Response):
            reply.status = event.status_code
            reply.headers = dict(event.headers)
        elif isinstance(event, h11.Data):
            reply.chunks.append((time.monotonic(), bytes(event.data)))
            body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            reply.done = time.monotonic()
            reply.body = bytes(body)
            return reply


def raw_request(
    method: str,
    target: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method == "POST":
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def call(port: int, raw: bytes, method: bytes = b"POST", timeout: float = 10) -> Reply:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        return read_reply(sock, method)


def messages_body(stream: bool = False, model: str = "claude-sonnet-4-5") -> bytes:
    return json.dumps(
        {
            "model": model,
            "max_tokens": 256,
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": stream,
        }
    ).encode()


BOTTLE_HEADERS = {
    "x-api-key": PLACEHOLDER,
    "authorization": f"Bearer {PLACEHOLDER}",
    "anthropic-api-key": PLACEHOLDER,
    "cookie": f"session={PLACEHOLDER}",
    "proxy-authorization": f"Basic {PLACEHOLDER}",
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
    "connection": "keep-alive, x-custom-hop",
    "x-custom-hop": "drop me",
}


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=REAL_KEY) as server:
        yield server


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "audit.jsonl", "unit")
    yield log
    log.close()


def start_gateway(
    fake: FakeAnthropic,
    audit: AuditLog,
    cred: Credential = API_KEY_CRED,
    budget: TokenBudget | None = None,
) -> GatewayThread:
    return GatewayThread(GatewayUpstream(fake.url), lambda: cred, audit, budget)


@pytest.fixture
def gateway(fake: FakeAnthropic, audit: AuditLog) -> Iterator[GatewayThread]:
    gw = start_gateway(fake, audit)
    yield gw
    gw.close()


# --- forwarding and credential injection --------------------------------------------------


def test_json_call_gets_canned_reply_with_real_key(
    gateway: GatewayThread, fake: FakeAnthropic
) -> None:
    reply = call(gateway.port, raw_request("POST", "/v1/messages", messages_body(), BOTTLE_HEADERS))
    assert reply.status == 200, reply.body
    assert reply.json()["content"][0]["text"] == fake.text
    [seen] = fake.requests
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == REAL_KEY
    assert seen.headers["host"] == f"127.0.0.1:{fake.port}"
    assert seen.headers["anthropic-version"] == "2023-06-01"
    for name in ("authorization", "anthropic-api-key", "cookie", "proxy-authorization"):
        assert name not in seen.headers
    assert "x-custom-hop" not in seen.headers  # named in Connection: hop-by-hop
    assert PLACEHOLDER not in json.dumps(seen.raw_headers)
    assert seen.json()["messages"][0]["content"] == PROMPT  # body untouched


def test_accounting_record_has_model_and_tokens_but_no_prompt_or_key(
    gateway: GatewayThread, fake: FakeAnthropic, audit: AuditLog
) -> None:
    call(gateway.port, raw_request("POST", "/v1/messages", messages_body(), BOTTLE_HEADERS))
    [record] = gateway.wait_records(1)
    assert record["kind"] == "gateway"
    assert record["decision"] == "allow"
    assert record["rule"] == "anthropic"
    assert record["method"] == "POST"
    assert record["host"] == "127.0.0.1"
    assert record["port"] == fake.port
    assert record["path"] == "/v1/messages"
    assert record["bytes_up"] == len(messages_body())
    assert record["bytes_down"] > 0
    detail = record["detail"]
    assert detail["status"] == 200
    assert detail["model"] == "claude-sonnet-4-5"
    assert detail["input_tokens"] == fake.input_tokens == 12
    assert detail["output_tokens"] == fake.output_tokens
    assert isinstance(detail["ms"], int)
    written = audit.path.read_text()
    for secret in (PROMPT, "nightingale", REAL_KEY, PLACEHOLDER, fake.text):
        assert secret not in written


def test_oauth_credential_sends_bearer_and_beta(audit: AuditLog) -> None:
    with FakeAnthropic(oauth_token=OAUTH_TOKEN) as fake:
        gw = start_gateway(fake, audit, OAUTH_CRED)
        try:
            headers = {
                **BOTTLE_HEADERS,
                "anthropic-beta": "claude-code-20250219, fine-grained-tool-streaming-2025-05-14",
            }
            reply = call(gw.port, raw_request("POST", "/v1/messages", messages_body(), headers))
        finally:
            gw.close()
    assert reply.status == 200, reply.body
    [seen] = fake.requests
    assert seen.headers["authorization"] == f"Bearer {OAUTH_TOKEN}"
    assert "x-api-key" not in seen.headers
    assert seen.headers["anthropic-beta"] == (
        "claude-code-20250219,fine-grained-tool-streaming-2025-05-14," + OAUTH_BETA.decode()
    )


def test_credential_provider_may_be_async_and_is_asked_per_call(
    fake: FakeAnthropic, audit: AuditLog
) -> None:
    asked: list[int] = []

    async def provider() -> Credential:
        asked.append(1)
        return API_KEY_CRED

    gw = GatewayThread(GatewayUpstream(fake.url), provider, audit)
    try:
        for _ in range(2):
            assert call(gw.port, raw_request("POST", "/v1/messages", messages_body())).status == 200
    finally:
        gw.close()
    assert len(asked) == 2


def test_wrong_key_reaches_fake_as_401_not_placeholder(audit: AuditLog) -> None:
    with FakeAnthropic(api_key="sk-ant-api03-some-other-key-000000000000") as fake:
        gw = start_gateway(fake, audit)
        try:
            reply = call(
                gw.port, raw_request("POST", "/v1/messages", messages_body(), BOTTLE_HEADERS)
            )
        finally:
            gw.close()
    assert reply.status == 401
    assert reply.json()["error"]["type"] == "authentication_error"


def test_keep_alive_reuses_one_upstream_connection(
    gateway: GatewayThread, fake: FakeAnthropic
) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        for _ in range(3):
            sock.sendall(raw_request("POST", "/v1/messages", messages_body()))
            assert read_reply(sock).status == 200
        sock.sendall(raw_request("GET", "/v1/models?limit=5"))
        models = read_reply(sock, b"GET")
    assert models.status == 200
    assert models.json()["data"][0]["id"] == "claude-fake-1"
    assert [r.path for r in fake.requests][-1] == "/v1/models?limit=5"
    assert fake.connections == 1


def test_head_and_get_root_answered_locally(gateway: GatewayThread, fake: FakeAnthropic) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(raw_request("HEAD", "/"))
        head = read_reply(sock, b"HEAD")
        sock.sendall(raw_request("GET", "/"))
        get = read_reply(sock, b"GET")
    assert head.status == 200 and head.body == b""
    assert get.status == 200 and b"gateway" in get.body
    assert fake.requests == []
    assert fake.connections == 0


# --- path tricks: the key goes to the configured upstream and nowhere else -----------------


@pytest.fixture(scope="module")
def evil() -> Iterator[RecordingHTTPServer]:
    """A listener the bottle would love to reach; shared: every test asserts it heard nothing."""
    server = RecordingHTTPServer()
    yield server
    server.close()


TRICKS = [
    ("POST", "/../v1/messages", 400),
    ("POST", "/v1/../../admin", 400),
    ("POST", "/v1/./messages", 400),
    ("POST", "/v1/%2e%2e/%2e%2e/admin", 400),
    ("POST", "/v1/%2E%2E/x", 400),
    ("POST", "/v1/..%2fadmin", 400),
    ("POST", "/v1/messages%2F..%2F..", 400),
    ("POST", "/v1/%252e%252e/x", 400),
    ("POST", "/v1\\..\\admin", 400),
    ("POST", "/v1/messages%00", 400),
    ("POST", "//evil.test/v1/messages", 400),
    ("POST", "//{evil}/v1/messages", 400),
    ("POST", "/v1//evil.test/messages", 400),
    ("POST", "http://evil.test/v1/messages", 400),
    ("POST", "http://{evil}/v1/messages", 400),
    ("POST", "https://{evil}/v1/messages", 400),
    ("CONNECT", "{evil}", 400),
    ("OPTIONS", "*", 400),
    ("POST", "/admin", 404),
    ("POST", "/v1", 404),
    ("POST", "/V1/messages", 404),
    ("GET", "/api/oauth/profile", 404),
    ("TRACE", "/v1/messages", 405),
    ("PUT", "/v1/messages", 405),
]


@pytest.mark.parametrize(("method", "target", "status"), TRICKS)
def test_path_tricks_never_leave_the_configured_upstream(
    gateway: GatewayThread,
    fake: FakeAnthropic,
    evil: RecordingHTTPServer,
    method: str,
    target: str,
    status: int,
) -> None:
    target = target.replace("{evil}", f"127.0.0.1:{evil.port}")
    raw = raw_request(method, target, messages_body() if method == "POST" else b"", BOTTLE_HEADERS)
    reply = call(gateway.port, raw, method.encode())
    assert reply.status == status, reply.body
    assert reply.headers[b"x-claude-bottle-block"].startswith(b"gateway:")
    assert reply.body.count(b"\n") == 1  # one line
    assert reply.json()["type"] == "error"
    assert fake.requests == []
    assert evil.requests == []
    [record] = gateway.wait_records(1)
    assert record["decision"] == "deny"
    assert record["detail"]["status"] == status


def test_nothing_after_a_refused_connect_is_read_as_a_request(
    gateway: GatewayThread, fake: FakeAnthropic
) -> None:
    """What follows a CONNECT would be a tunnel's bytes: the refusal closes, and a request
    hidden there is never parsed, let alone forwarded."""
    raw = raw_request("CONNECT", "api.test:443") + raw_request(
        "POST", "/v1/messages", messages_body(), BOTTLE_HEADERS
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(raw)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.count(b"HTTP/1.1 ") == 1
    assert reply.startswith(b"HTTP/1.1 400") and b"connection: close" in reply.lower()
    assert fake.requests == []


def test_raw_nul_in_target_is_refused(gateway: GatewayThread, fake: FakeAnthropic) -> None:
    reply = call(
        gateway.port, b"POST /v1/mess\x00ages HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"
    )
    assert reply.status == 400
    assert fake.requests == []


@pytest.mark.parametrize("host", ["evil.test", "{evil}", "api.anthropic.com.evil.test"])
def test_host_header_is_ignored(
    gateway: GatewayThread, fake: FakeAnthropic, evil: RecordingHTTPServer, host: str
) -> None:
    host = host.replace("{evil}", f"127.0.0.1:{evil.port}")
    raw = raw_request("POST", "/v1/messages?beta=true", messages_body(), BOTTLE_HEADERS, host=host)
    assert call(gateway.port, raw).status == 200
    [seen] = fake.requests
    assert seen.headers["host"] == f"127.0.0.1:{fake.port}"
    assert seen.path == "/v1/messages?beta=true"
    assert evil.requests == []


def test_every_forwarded_path_is_under_v1(
    gateway: GatewayThread, fake: FakeAnthropic, evil: RecordingHTTPServer
) -> None:
    for method, target, _ in TRICKS:
        raw = raw_request(method, target.replace("{evil}", f"127.0.0.1:{evil.port}"), b"{}")
        assert call(gateway.port, raw, method.encode()).status >= 400
    call(gateway.port, raw_request("POST", "/v1/messages/count_tokens", messages_body()))
    assert [r.path for r in fake.requests] == ["/v1/messages/count_tokens"]
    assert evil.requests == []


# --- streaming ------------------------------------------------------------------------------


def test_streaming_is_incremental(audit: AuditLog) -> None:
    with FakeAnthropic(api_key=REAL_KEY, event_delay=0.3, deltas=3) as fake:
        gw = start_gateway(fake, audit)
        try:
            sent = time.monotonic()
            reply = call(
                gw.port, raw_request("POST", "/v1/messages", messages_body(True), BOTTLE_HEADERS)
            )
            records = gw.wait_records(1)
        finally:
            gw.close()
    assert reply.status == 200
    assert reply.headers[b"content-type"].startswith(b"text/event-stream")
    seen = b""
    first_delta = None
    for at, chunk in reply.chunks:
        seen += chunk
        if first_delta is None and b"content_block_delta" in seen:
            first_delta = at
    assert first_delta is not None
    # 9 events, 0.3 s apart: the first delta arrives after ~0.9 s, the end after ~2.4 s
    assert first_delta - sent < 1.5
    assert reply.done - first_delta >= 1.2
    assert len(reply.chunks) >= 5  # relayed event by event, not as one buffered body
    texts = [
        json.loads(line[6:])["delta"]["text"]
        for line in reply.body.decode().splitlines()
        if line.startswith("data: ") and "text_delta" in line
    ]
    assert "".join(texts) == fake.text
    detail = records[0]["detail"]
    assert detail["input_tokens"] == 12
    assert detail["output_tokens"] == fake.output_tokens
    assert detail["model"] == "claude-sonnet-4-5"
    assert "aborted" not in detail


def test_client_disconnect_mid_stream_closes_upstream(audit: AuditLog) -> None:
    with FakeAnthropic(api_key=REAL_KEY, event_delay=0.6, deltas=5) as fake:
        gw = start_gateway(fake, audit)
        try:
            sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            sock.sendall(raw_request("POST", "/v1/messages", messages_body(True)))
            seen = b""
            while b"content_block_delta" not in seen:
                seen += sock.recv(65536)
            sock.close()
            closed = time.monotonic()
            assert fake.disconnected.wait(5)
            noticed = time.monotonic() - closed
            [record] = gw.wait_records(1)
        finally:
            gw.close()
    # well within one event gap: the gateway closed upstream on the client's EOF, it did
    # not wait to fail writing the next event (nor leave the API streaming ~4 more seconds)
    assert noticed < 0.3
    assert fake.disconnects == 1
    assert record["detail"]["aborted"] is True
    assert record["detail"]["input_tokens"] == 12
    assert record["detail"]["output_tokens"] == 1  # message_start's count; no message_delta came


class SlowBodyUpstream:
    """A raw loopback server that notes when each piece of a request body arrives."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.arrivals: list[tuple[float, int]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(
                next(
                    line.split(b":")[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
            )
            got = len(body)
            self.arrivals.append((time.monotonic(), got))
            while got < length:
                chunk = conn.recv(65536)
                got += len(chunk)
                self.arrivals.append((time.monotonic(), got))
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
            )
            time.sleep(0.2)

    def close(self) -> None:
        self.sock.close()


def test_request_body_is_streamed_upstream(audit: AuditLog) -> None:
    upstream = SlowBodyUpstream()
    gw = GatewayThread(
        GatewayUpstream(f"http://127.0.0.1:{upstream.port}"), lambda: API_KEY_CRED, audit
    )
    try:
        body = messages_body()
        half = len(body) // 2
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(raw_request("POST", "/v1/messages", body)[: -len(body) + half])
            time.sleep(0.5)
            second_half_sent = time.monotonic()
            sock.sendall(body[half:])
            assert read_reply(sock).status == 200
    finally:
        gw.close()
        upstream.close()
    # the first half reached the API before the client had even sent the rest (all of it
    # but the byte the gateway holds until the body has ended and passed its checks)
    first_half_at = min(at for at, got in upstream.arrivals if got >= half - 1)
    assert first_half_at < second_half_sent
    assert max(got for at, got in upstream.arrivals if at < second_half_sent) == half - 1
    assert upstream.arrivals[-1][1] == len(body)


def test_large_chunked_body_is_forwarded_and_model_found(
    gateway: GatewayThread, fake: FakeAnthropic
) -> None:
    big = json.dumps(
        {"model": "claude-opus-4-1", "messages": [{"role": "user", "content": "x" * 3_000_000}]}
    ).encode()
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(big[i : i + 65536]), big[i : i + 65536])
        for i in range(0, len(big), 65536)
    )
    raw = (
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        + chunks
        + b"0\r\n\r\n"
    )
    reply = call(gateway.port, raw)
    assert reply.status == 200
    assert fake.requests[0].body == big
    [record] = gateway.wait_records(1)
    assert record["detail"]["model"] == "claude-opus-4-1"
    assert record["bytes_up"] == len(big)


# --- budget and failures --------------------------------------------------------------------


def test_token_budget_stops_further_calls(fake: FakeAnthropic, audit: AuditLog) -> None:
    budget = TokenBudget(limit=fake.input_tokens + fake.output_tokens)
    gw = start_gateway(fake, audit, budget=budget)
    try:
        first = call(gw.port, raw_request("POST", "/v1/messages", messages_body()))
        gw.wait_records(1)
        second = call(gw.port, raw_request("POST", "/v1/messages", messages_body()))
        records = gw.wait_records(2)
    finally:
        gw.close()
    assert first.status == 200
    assert second.status == 429
    assert second.headers[b"x-claude-bottle-block"] == b"gateway:token-budget"
    assert second.headers[b"x-should-retry"] == b"false"
    assert b"max_tokens_total" in second.body and second.body.count(b"\n") == 1
    assert len(fake.requests) == 1
    assert budget.total == fake.input_tokens + fake.output_tokens
    assert budget.calls == 1
    assert records[1]["decision"] == "deny"
    assert records[1]["rule"] == "gateway:token-budget"


def test_upstream_down_gives_502(audit: AuditLog) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    gw = GatewayThread(GatewayUpstream(f"http://127.0.0.1:{port}"), lambda: API_KEY_CRED, audit)
    try:
        reply = call(gw.port, raw_request("POST", "/v1/messages", messages_body()))
        [record] = gw.wait_records(1)
    finally:
        gw.close()
    assert reply.status == 502
    assert reply.headers[b"x-claude-bottle-block"] == b"gateway:upstream"
    assert record["decision"] == "error"
    assert record["detail"]["status"] == 502


def test_credential_failure_gives_503_without_calling_upstream(
    fake: FakeAnthropic, audit: AuditLog
) -> None:
    from claude_bottle.errors import MissingDependency

    def provider() -> Credential:
        raise MissingDependency("Anthropic credential from env:K: $K is not set", "export K")

    gw = GatewayThread(GatewayUpstream(fake.url), provider, audit)
    try:
        reply = call(gw.port, raw_request("POST", "/v1/messages", messages_body()))
        [record] = gw.wait_records(1)
    finally:
        gw.close()
    assert reply.status == 503
    assert reply.headers[b"x-claude-bottle-block"] == b"gateway:credential"
    assert b"env:K" in reply.body
    assert fake.requests == []
    assert record["decision"] == "error"
    assert record["rule"] == "gateway:credential"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_https_upstream_with_extra_ca_and_pinned_address(tmp_path: Path, audit: AuditLog) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=api.fake.test",
            "-addext",
            "subjectAltName=DNS:api.fake.test",
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    with FakeAnthropic(api_key=REAL_KEY, tls=context) as fake:
        upstream = GatewayUpstream(
            f"https://api.fake.test:{fake.port}",
            ca_file=str(cert),
            connect_to=("127.0.0.1", fake.port),
        )
        gw = GatewayThread(upstream, lambda: API_KEY_CRED, audit)
        try:
            reply = call(gw.port, raw_request("POST", "/v1/messages", messages_body(True)))
        finally:
            gw.close()
    assert reply.status == 200
    assert b"message_stop" in reply.body
    assert fake.requests[0].headers["host"] == f"api.fake.test:{fake.port}"
    assert fake.requests[0].headers["x-api-key"] == REAL_KEY


def test_first_byte_latency_close_to_direct(fake: FakeAnthropic, audit: AuditLog) -> None:
    gw = start_gateway(fake, audit)
    body = messages_body(True)
    headers = {"x-api-key": REAL_KEY}

    def ttfb(port: int) -> list[float]:
        out = []
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            for _ in range(30):
                start = time.monotonic()
                sock.sendall(raw_request("POST", "/v1/messages", body, headers))
                reply = read_reply(sock)
                assert reply.status == 200
                out.append(reply.first_byte - start)
        return out

    try:
        direct = statistics.median(ttfb(fake.port))
        through = statistics.median(ttfb(gw.port))
    finally:
        gw.close()
    print(f"\nfirst byte: direct {direct * 1000:.2f} ms, via gateway {through * 1000:.2f} ms")
    assert through - direct < 0.02


# --- pure pieces -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/v1/messages",
        "/v1/messages?beta=true",
        "/v1/models/claude-3@2024",
        "/v1/models/",
        "/v1/messages/batches/msgbatch_01?after_id=a%20b",
    ],
)
def test_api_target_accepts_api_paths(target: str) -> None:
    assert api_target(target.encode()) == target


@pytest.mark.parametrize(
    "target", ["/v1/a b", "/v1/é", "/v1/messages#frag", "/v1/%25", "/v1/x/%2e", "v1/messages"]
)
def test_api_target_refuses(target: str) -> None:
    with pytest.raises(Refusal):
        api_target(target.encode("utf-8"))


def test_upstream_headers_strip_and_inject() -> None:
    incoming = [(k.encode(), v.encode()) for k, v in BOTTLE_HEADERS.items()] + [
        (b"host", b"evil.test"),
        (b"accept-encoding", b"gzip, br"),
        (b"anthropic-beta", b"a-1"),
        (b"anthropic-beta", b"b-2, oauth-2025-04-20"),
        (b"transfer-encoding", b"chunked"),
    ]
    out = upstream_headers(incoming, OAUTH_CRED, "api.anthropic.com")
    names = [name for name, _ in out]
    assert out[0] == (b"host", b"api.anthropic.com")
    assert names.count(b"host") == 1
    assert (b"authorization", b"Bearer " + OAUTH_TOKEN.encode()) in out
    assert names.count(b"authorization") == 1
    for gone in (
        b"x-api-key",
        b"cookie",
        b"anthropic-api-key",
        b"proxy-authorization",
        b"connection",
        b"x-custom-hop",
        b"accept-encoding",
    ):
        assert gone not in names
    assert (b"anthropic-beta", b"a-1,b-2,oauth-2025-04-20") in out
    assert (b"transfer-encoding", b"chunked") in out
    key_out = upstream_headers(incoming, API_KEY_CRED, "h")
    assert (b"x-api-key", REAL_KEY.encode()) in key_out
    assert (b"anthropic-beta", b"a-1,b-2,oauth-2025-04-20") in key_out  # betas untouched
    assert b"authorization" not in [n for n, _ in key_out]


def test_model_of() -> None:
    assert model_of(b'{"model": "claude-x", "messages": []}', complete=True) == "claude-x"
    assert model_of(b'{"messages": [], "model": "claude-y"}', complete=True) == "claude-y"
    assert model_of(b"not json", complete=True) is None
    assert model_of(b'{"model": "has spaces and prompt text"}', complete=True) is None
    assert model_of(b'["model"]', complete=True) is None
    truncated = b'{"model":"claude-z","messages":[{"role":"user","content":"' + b"x" * 100
    assert model_of(truncated, complete=False) == "claude-z"
    # a tool input mentioning a model, before the top-level key, is not taken for it
    nested_first = (
        b'{"max_tokens": 5, "tools": [{"input": {"model": "haiku"}}], "model": "claude-w", "m'
    )
    assert model_of(nested_first, complete=False) == "claude-w"
    # when the top level cannot be walked, the first unescaped "model" key is used
    assert model_of(b'{"messages":[{"content":"' + b"y" * 10 + b'", "model": "m-1"', False) == "m-1"
    assert model_of(b'{"messages":[{"content":"\\"model\\": \\"fake\\"', complete=False) is None
    assert MODEL_SCAN_BYTES == 64 * 1024


def _sse(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(f"event: {n}\ndata: {json.dumps(d)}\n\n".encode() for n, d in events)


def test_usage_meter_sse_byte_by_byte_and_crlf() -> None:
    with FakeAnthropic(input_tokens=321, output_tokens=654) as fake:
        stream = _sse(fake.events("msg_1", "m"))
    for data in (stream, stream.replace(b"\n", b"\r\n")):
        meter = UsageMeter(b"text/event-stream; charset=utf-8", b"")
        for i in range(len(data)):
            meter.feed(data[i : i + 1])
        meter.finish()
        assert (meter.input_tokens, meter.output_tokens) == (321, 654)


def test_usage_meter_skips_oversized_events_and_keeps_going() -> None:
    meter = UsageMeter(b"text/event-stream", b"")
    meter.feed(b"event: content_block_delta\ndata: " + b"x" * (2 * 1024 * 1024))
    meter.feed(b"\n\n")
    meter.feed(_sse([("message_delta", {"type": "message_delta", "usage": {"output_tokens": 7}})]))
    meter.finish()
    assert meter.output_tokens == 7
    assert len(meter._buf) == 0


def test_usage_meter_json_and_other_types() -> None:
    meter = UsageMeter(b"application/json", b"")
    payload = json.dumps(
        {"usage": {"input_tokens": 5, "output_tokens": 6, "cache_read_input_tokens": 2}}
    )
    meter.feed(payload[:10].encode())
    meter.feed(payload[10:].encode())
    meter.finish()
    assert (meter.input_tokens, meter.output_tokens, meter.cache_read) == (5, 6, 2)
    gz = UsageMeter(b"application/json", b"gzip")
    gz.feed(payload.encode())
    gz.finish()
    assert gz.input_tokens is None
    bad = UsageMeter(b"application/json", b"")
    bad.feed(b'{"usage": {"input_tokens": -1, "output_tokens": true}}')
    bad.finish()
    assert (bad.input_tokens, bad.output_tokens) == (None, None)
