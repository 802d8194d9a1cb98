"""Loading and refreshing the real Anthropic credential, host-side, without ever showing it."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.bundle.credentials import (
    CLAUDE_CODE_CLIENT_ID,
    Credential,
    CredentialProvider,
    http_refresher,
    load_credential,
    refresh_if_needed,
    store_path,
)
from claude_bottle.errors import EXIT_MISSING_DEPENDENCY, MissingDependency

API_KEY = "sk-ant-api03-" + "A1b2C3d4" * 10 + "-xyzAA"
ACCESS = "sk-ant-oat01-" + "Q9w8E7r6" * 10 + "-accAA"
REFRESH = "sk-ant-ort01-" + "Z1x2C3v4" * 10 + "-refAA"
NEW_ACCESS = "sk-ant-oat01-" + "N3wN3wN3" * 10 + "-newAA"
NEW_REFRESH = "sk-ant-ort01-" + "R0tR0tR0" * 10 + "-rotAA"
NOW = 1_750_000_000.0


def _never_shows(exc: BaseException, *secrets: str) -> None:
    text = f"{exc}\n{exc!r}\n{getattr(exc, 'hint', '')}"
    for secret in secrets:
        assert secret not in text
        assert secret[:16] not in text


def _store(home: Path, **oauth: Any) -> Path:
    path = home / ".claude" / ".credentials.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "claudeAiOauth": {
            "accessToken": ACCESS,
            "refreshToken": REFRESH,
            "expiresAt": int((NOW + 8 * 3600) * 1000),
            "scopes": ["user:inference", "user:profile"],
            "subscriptionType": "max",
            **oauth,
        },
        "otherTool": {"keep": True},
    }
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return path


# --- env: -----------------------------------------------------------------------------


def test_env_api_key(tmp_path: Path) -> None:
    cred = load_credential("env:MY_KEY", {"MY_KEY": f"  {API_KEY}\n"}, tmp_path)
    assert cred.kind == "api-key"
    assert cred.value == API_KEY
    assert cred.source == "env:MY_KEY"
    assert cred.header() == (b"x-api-key", API_KEY.encode())


def test_env_oauth_token_becomes_bearer(tmp_path: Path) -> None:
    cred = load_credential(
        "env:CLAUDE_CODE_OAUTH_TOKEN", {"CLAUDE_CODE_OAUTH_TOKEN": ACCESS}, tmp_path
    )
    assert cred.kind == "oauth"
    assert cred.header() == (b"authorization", b"Bearer " + ACCESS.encode())


@pytest.mark.parametrize("env", [{}, {"MY_KEY": ""}, {"MY_KEY": "   "}])
def test_env_missing_or_empty_names_the_variable(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(MissingDependency) as info:
        load_credential("env:MY_KEY", env, tmp_path)
    assert info.value.exit_code == EXIT_MISSING_DEPENDENCY == 3
    assert "env:MY_KEY" in info.value.message
    assert "export MY_KEY=" in info.value.hint


@pytest.mark.parametrize(
    "value",
    [
        API_KEY[:20] + " " + API_KEY[20:],  # space inside
        API_KEY[:20] + "\n" + API_KEY[20:],  # newline inside
        API_KEY[:20] + "é" + API_KEY[20:],  # not ASCII
        API_KEY[:20] + "\x00" + API_KEY[20:],  # control
        "sk-ant-short",  # implausibly short
        "k" * 9000,  # implausibly long
    ],
)
def test_env_malformed_never_echoes_value(tmp_path: Path, value: str) -> None:
    with pytest.raises(MissingDependency) as info:
        load_credential("env:MY_KEY", {"MY_KEY": value}, tmp_path)
    assert "malformed" in info.value.message
    assert "env:MY_KEY" in info.value.message
    _never_shows(info.value, value, API_KEY)


def test_accepts_non_anthropic_looking_tokens(tmp_path: Path) -> None:
    token = "proxy-token_0123456789abcdef"
    assert load_credential("env:K", {"K": token}, tmp_path).value == token


# --- file: ----------------------------------------------------------------------------


def test_file_strips_whitespace_and_expands_home(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "anthropic").write_text(f"\n  {API_KEY}  \n")
    cred = load_credential("file:~/keys/anthropic", {}, tmp_path)
    assert cred.value == API_KEY
    assert cred.kind == "api-key"
    assert cred.source == f"file:{tmp_path / 'keys' / 'anthropic'}"


def test_file_missing_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(MissingDependency) as info:
        load_credential(f"file:{tmp_path}/nope", {}, tmp_path)
    assert f"{tmp_path}/nope" in info.value.message
    assert "not found" in info.value.message


def test_file_empty(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("\n\n")
    with pytest.raises(MissingDependency, match="empty"):
        load_credential(f"file:{tmp_path}/k", {}, tmp_path)


def test_file_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "k").mkdir()
    with pytest.raises(MissingDependency, match="cannot read") as info:
        load_credential(f"file:{tmp_path}/k", {}, tmp_path)
    assert str(tmp_path / "k") in info.value.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_file_unreadable(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_text(API_KEY)
    key.chmod(0)
    with pytest.raises(MissingDependency, match="cannot read") as info:
        load_credential(f"file:{key}", {}, tmp_path)
    assert str(key) in info.value.message


@pytest.mark.parametrize(
    "content",
    [
        (API_KEY + "\n" + API_KEY).encode(),  # two lines
        ("é" + API_KEY).encode(),  # non-ASCII
        b"\xff\xfe" + API_KEY.encode(),  # not even UTF-8
    ],
)
def test_file_malformed_never_echoes_value(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "k").write_bytes(content)
    with pytest.raises(MissingDependency, match="malformed") as info:
        load_credential(f"file:{tmp_path}/k", {}, tmp_path)
    assert str(tmp_path / "k") in info.value.message
    _never_shows(info.value, API_KEY)


def test_unknown_spec(tmp_path: Path) -> None:
    with pytest.raises(MissingDependency, match="unknown credential source"):
        load_credential("vault:x", {}, tmp_path)


# --- keychain (Claude Code's store) ---------------------------------------------------


def test_keychain_reads_claude_code_store(tmp_path: Path) -> None:
    path = _store(tmp_path)
    cred = load_credential("keychain", {}, tmp_path, platform="linux")
    assert cred.kind == "oauth"
    assert cred.value == ACCESS
    assert cred.refresh_token == REFRESH
    assert cred.expires_at == pytest.approx(NOW + 8 * 3600)
    assert cred.store == path
    assert cred.source == f"keychain:{path}"


def test_keychain_honours_claude_config_dir(tmp_path: Path) -> None:
    written = _store(tmp_path / "elsewhere")
    env = {"CLAUDE_CONFIG_DIR": str(written.parent)}
    assert store_path(env, tmp_path) == written
    assert load_credential("keychain", env, tmp_path, platform="linux").value == ACCESS
    assert store_path({}, tmp_path) == tmp_path / ".claude" / ".credentials.json"


def test_keychain_missing_names_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(MissingDependency) as info:
        load_credential("keychain", {}, tmp_path, platform="linux")
    assert str(tmp_path / ".claude" / ".credentials.json") in info.value.message
    assert "/login" in info.value.hint


@pytest.mark.parametrize(
    "content",
    [
        "not json " + ACCESS,
        json.dumps({"somethingElse": {"accessToken": ACCESS}}),
        json.dumps({"claudeAiOauth": {"accessToken": ACCESS[:30] + " " + ACCESS[30:]}}),
        json.dumps({"claudeAiOauth": {"accessToken": 12345}}),
        json.dumps({"claudeAiOauth": {"accessToken": ACCESS, "expiresAt": "tomorrow"}}),
        json.dumps({"claudeAiOauth": {"accessToken": ACCESS, "refreshToken": "x y"}}),
        json.dumps([ACCESS]),
    ],
)
def test_keychain_malformed_never_echoes_content(tmp_path: Path, content: str) -> None:
    path = tmp_path / ".claude" / ".credentials.json"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(MissingDependency, match="malformed") as info:
        load_credential("keychain", {}, tmp_path, platform="linux")
    assert str(path) in info.value.message
    _never_shows(info.value, ACCESS)


def test_keychain_on_macos_falls_back_to_security_tool(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    payload = json.dumps({"claudeAiOauth": {"accessToken": ACCESS, "refreshToken": REFRESH}})
    tool = bin_dir / "security"
    tool.write_text(
        "#!/bin/sh\n"
        '[ "$1 $2 $3" = "find-generic-password -s Claude Code-credentials" ] || exit 44\n'
        f"echo '{payload}'\n"
    )
    tool.chmod(0o755)
    cred = load_credential("keychain", {"PATH": str(bin_dir)}, tmp_path, platform="darwin")
    assert cred.value == ACCESS
    assert cred.kind == "oauth"
    assert cred.store is None  # read-only: never refreshed by us


def test_keychain_on_macos_without_login(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "security").write_text("#!/bin/sh\nexit 44\n")
    (bin_dir / "security").chmod(0o755)
    with pytest.raises(MissingDependency, match="no Claude Code login"):
        load_credential("keychain", {"PATH": str(bin_dir)}, tmp_path, platform="darwin")


# --- repr never shows secrets ------------------------------------------------------------


def test_repr_and_str_hide_secrets(tmp_path: Path) -> None:
    _store(tmp_path)
    cred = load_credential("keychain", {}, tmp_path, platform="linux")
    for text in (repr(cred), str(cred), f"{cred}", repr([cred])):
        assert ACCESS not in text
        assert REFRESH not in text
        assert "<hidden>" in text
        assert "keychain:" in text


# --- refresh ------------------------------------------------------------------------------


class FakeRefresher:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.fail = fail

    def __call__(self, refresh_token: str) -> tuple[str, str, float]:
        self.calls.append(refresh_token)
        if self.fail:
            raise RuntimeError(f"HTTP 400 for token {refresh_token}")
        return NEW_ACCESS, NEW_REFRESH, NOW + 8 * 3600


def test_refresh_not_needed_when_far_from_expiry(tmp_path: Path) -> None:
    _store(tmp_path)
    cred = load_credential("keychain", {}, tmp_path, platform="linux")
    refresher = FakeRefresher()
    assert refresh_if_needed(cred, NOW, refresher) is cred
    assert refresher.calls == []


def test_refresh_when_expiring_rewrites_store_0600(tmp_path: Path) -> None:
    path = _store(tmp_path, expiresAt=int((NOW + 120) * 1000))
    path.chmod(0o644)
    cred = load_credential("keychain", {}, tmp_path, platform="linux")
    refresher = FakeRefresher()
    fresh = refresh_if_needed(cred, NOW, refresher)
    assert refresher.calls == [REFRESH]
    assert fresh.value == NEW_ACCESS
    assert fresh.refresh_token == NEW_REFRESH
    assert fresh.expires_at == NOW + 8 * 3600
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    oauth = data["claudeAiOauth"]
    assert oauth["accessToken"] == NEW_ACCESS
    assert oauth["refreshToken"] == NEW_REFRESH
    assert oauth["expiresAt"] == int((NOW + 8 * 3600) * 1000)
    assert oauth["scopes"] == ["user:inference", "user:profile"]  # other fields kept
    assert oauth["subscriptionType"] == "max"
    assert data["otherTool"] == {"keep": True}
    assert not list(path.parent.glob("*.tmp"))
    # a second call is a no-op now
    assert refresh_if_needed(fresh, NOW, refresher) is fresh
    assert len(refresher.calls) == 1


def test_refresh_uses_token_the_host_already_refreshed(tmp_path: Path) -> None:
    path = _store(tmp_path, expiresAt=int((NOW + 60) * 1000))
    cred = load_credential("keychain", {}, tmp_path, platform="linux")
    _store(tmp_path, accessToken=NEW_ACCESS, expiresAt=int((NOW + 3600) * 1000))
    refresher = FakeRefresher()
    fresh = refresh_if_needed(cred, NOW, refresher)
    assert refresher.calls == []
    assert fresh.value == NEW_ACCESS
    assert fresh.store == path


def test_refresh_failure_names_source_not_token(tmp_path: Path) -> None:
    _store(tmp_path, expiresAt=int((NOW - 10) * 1000))
    cred = load_credential("keychain", {}, tmp_path, platform="linux")
    with pytest.raises(MissingDependency, match="refreshing it failed") as info:
        refresh_if_needed(cred, NOW, FakeRefresher(fail=True))
    assert "HTTP 400" in info.value.message
    _never_shows(info.value, ACCESS, REFRESH)


def test_api_keys_and_unwritable_stores_are_never_refreshed(tmp_path: Path) -> None:
    refresher = FakeRefresher()
    key = Credential("api-key", API_KEY, "env:K")
    assert refresh_if_needed(key, NOW, refresher) is key
    readonly = Credential("oauth", ACCESS, "keychain:macos", NOW - 5, REFRESH, store=None)
    assert refresh_if_needed(readonly, NOW, refresher) is readonly
    assert refresher.calls == []


# --- the real refresher, against a local token endpoint ----------------------------------


class TokenEndpoint:
    def __init__(self, status: int = 200, answer: dict[str, Any] | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["content-length"])
                outer.bodies.append(json.loads(self.rfile.read(length)))
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                payload = json.dumps(answer or {}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/oauth/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    server = TokenEndpoint(
        answer={
            "access_token": NEW_ACCESS,
            "refresh_token": NEW_REFRESH,
            "expires_in": 28800,
            "token_type": "Bearer",
        }
    )
    yield server
    server.close()


def test_http_refresher_posts_json_grant(endpoint: TokenEndpoint) -> None:
    refresh = http_refresher(endpoint.url, clock=lambda: NOW)
    assert refresh(REFRESH) == (NEW_ACCESS, NEW_REFRESH, NOW + 28800)
    assert endpoint.bodies == [
        {
            "grant_type": "refresh_token",
            "refresh_token": REFRESH,
            "client_id": CLAUDE_CODE_CLIENT_ID,
        }
    ]
    assert endpoint.headers[0]["content-type"] == "application/json"


def test_http_refresher_error_names_status_only() -> None:
    server = TokenEndpoint(status=400, answer={"error": "invalid_grant"})
    try:
        with pytest.raises(RuntimeError, match="HTTP 400") as info:
            http_refresher(server.url)(REFRESH)
        assert REFRESH not in str(info.value)
    finally:
        server.close()


def test_http_refresher_end_to_end_with_store(tmp_path: Path, endpoint: TokenEndpoint) -> None:
    path = _store(tmp_path, expiresAt=int((NOW + 30) * 1000))
    cred = load_credential("keychain", {}, tmp_path, platform="linux")
    fresh = refresh_if_needed(cred, NOW, http_refresher(endpoint.url, clock=lambda: NOW))
    assert fresh.value == NEW_ACCESS
    assert json.loads(path.read_text())["claudeAiOauth"]["refreshToken"] == NEW_REFRESH


# --- the async provider the gateway uses ---------------------------------------------------


def test_provider_refreshes_once_for_concurrent_callers(tmp_path: Path) -> None:
    _store(tmp_path, expiresAt=int((NOW + 30) * 1000))
    cred = load_credential("keychain", {}, tmp_path, platform="linux")
    refresher = FakeRefresher()
    provider = CredentialProvider(cred, refresher, clock=lambda: NOW)

    async def main() -> list[Credential]:
        return list(await asyncio.gather(*(provider() for _ in range(5))))

    results = asyncio.run(main())
    assert refresher.calls == [REFRESH]
    assert {c.value for c in results} == {NEW_ACCESS}


def test_provider_keeps_old_token_on_failure_and_backs_off(tmp_path: Path) -> None:
    _store(tmp_path, expiresAt=int((NOW + 30) * 1000))
    cred = load_credential("keychain", {}, tmp_path, platform="linux")
    refresher = FakeRefresher(fail=True)
    errors: list[str] = []
    provider = CredentialProvider(cred, refresher, clock=lambda: NOW, on_error=errors.append)

    async def main() -> tuple[Credential, Credential]:
        return await provider(), await provider()

    first, second = asyncio.run(main())
    assert first.value == second.value == ACCESS
    assert len(refresher.calls) == 1  # no retry inside the back-off window
    assert len(errors) == 1 and "refreshing it failed" in errors[0]
    assert REFRESH not in errors[0]
