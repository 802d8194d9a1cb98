"""Which tool call made a request (issue 22), with the real Claude Code CLI in a real bottle.

The fake API (tests/fakes/fake_anthropic.py) answers Claude Code's first turn with a
canned `tool_use` (Bash running curl, or WebFetch), and the turn after the tool result
with text. The bottle's seeded settings run the tool-call hook, which reports the call
to the bundle through the relay; the audit events made meanwhile carry its id.
"""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_anthropic import FakeAnthropic
from tests.integration.conftest import BottleEnv
from tests.integration.dev_upstreams import _tls
from tests.integration.tls_upstream import TLSUpstream
from tests.integration.tmux import TmuxScreen

pytestmark = pytest.mark.integration

REAL_KEY = "sk-ant-api03-" + "TestOnlyRealKey" * 6 + "-AbCdEfAA"
TOOL_USE_ID = "toolu_01BottleAttribution"
DONE = "Done with the tool call."
API_HOST = "api.anthropic.com"


class ToolTurn:
    """Replies with one tool_use to the first call that offers the tool, then text once
    the tool's result comes back; records that result."""

    def __init__(self, tool: str, tool_input: dict[str, Any]) -> None:
        self.tool = tool
        self.tool_input = tool_input
        self.results: list[Any] = []

    def __call__(self, params: dict[str, Any]) -> list[dict[str, Any]] | None:
        messages = params.get("messages") or []
        last = messages[-1] if messages else {}
        content = last.get("content") if isinstance(last, dict) else None
        if isinstance(content, list):
            for block in content:
                if isinstance(block, dict) and block.get("tool_use_id") == TOOL_USE_ID:
                    self.results.append(block.get("content"))
                    return [{"type": "text", "text": DONE}]
        tools = [t.get("name") for t in params.get("tools") or [] if isinstance(t, dict)]
        if self.tool in tools and not self.results:
            return [
                {"type": "tool_use", "id": TOOL_USE_ID, "name": self.tool, "input": self.tool_input}
            ]
        return None


def _claude_config(
    env: BottleEnv, fake: FakeAnthropic, *, egress: str = "", resolve: str = ""
) -> None:
    env.env["ANTHROPIC_API_KEY"] = REAL_KEY  # on the host only
    env.write_config(f"""
[egress]
{egress}
allow = ["allowed.test", "tls.test"]
[egress.resolve]
"allowed.test" = "127.0.0.1:{env.upstream.port}"
"denied.test" = "127.0.0.1:{env.upstream.port}"
{resolve}
[gateway]
anthropic_upstream = "{fake.url}"
[dlp]
enabled = true
""")


@pytest.fixture
def claude_here(bottle_env: BottleEnv) -> BottleEnv:
    if shutil.which("claude", path=bottle_env.env["PATH"]) is None:
        pytest.skip("Claude Code is not installed: npm install -g @anthropic-ai/claude-code")
    return bottle_env


def _events(env: BottleEnv) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (env.state_dir() / "audit.jsonl").open()]


def _run_claude(env: BottleEnv) -> None:
    result = env.run("claude", "-p", "--dangerously-skip-permissions", "Use the tool.", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert DONE in result.stdout


@pytest.fixture
def bash_turn() -> Iterator[tuple[ToolTurn, FakeAnthropic]]:
    turn = ToolTurn(
        "Bash",
        {"command": "curl -s http://allowed.test/from-the-tool", "description": "fetch"},
    )
    with FakeAnthropic("Hello.", api_key=REAL_KEY, reply=turn) as fake:
        yield turn, fake


def test_a_bash_tool_calls_request_carries_its_tool_use_id(
    claude_here: BottleEnv, bash_turn: tuple[ToolTurn, FakeAnthropic]
) -> None:
    turn, fake = bash_turn
    _claude_config(claude_here, fake)
    _run_claude(claude_here)
    assert turn.results  # Claude Code ran the tool and sent its result back
    assert any("from-the-tool" in r.path for r in claude_here.upstream.requests)
    events = _events(claude_here)
    tool = [e for e in events if e["kind"] == "tool"]
    assert [(e["decision"], e["detail"]["id"], e["detail"]["tool"]) for e in tool] == [
        ("start", TOOL_USE_ID, "Bash"),
        ("end", TOOL_USE_ID, "Bash"),
    ]
    assert tool[0]["detail"]["summary"] == "curl -s http://allowed.test/from-the-tool"
    (fetched,) = [e for e in events if e["kind"] == "egress" and e["host"] == "allowed.test"]
    assert fetched["decision"] == "allow"
    assert fetched["detail"]["tool_use"]["ids"] == [TOOL_USE_ID]
    assert fetched["detail"]["tool_use"]["attribution"].startswith("advisory")
    # Claude Code's calls before the tool ran are not attributed to it.
    first_call = next(e for e in events if e["kind"] == "gateway")
    assert "tool_use" not in (first_call.get("detail") or {})

    listed = claude_here.cli("logs", "t", "--tool", TOOL_USE_ID, check=True).stdout
    lines = listed.splitlines()
    assert len(lines) >= 3, listed  # start, the request, end
    assert all(TOOL_USE_ID in line for line in lines), listed
    assert any("allowed.test" in line for line in lines)
    assert "bundle-start" not in listed


NAMESPACE = pytest.mark.parametrize("backend", ["namespace"], indirect=True)


@NAMESPACE
def test_a_held_request_shows_the_tool_call_that_made_it(claude_here: BottleEnv) -> None:
    turn = ToolTurn(
        "Bash",
        {
            "command": "curl -sS -w ' %{http_code}' http://denied.test/npm-install",
            "description": "fetch",
        },
    )
    with FakeAnthropic("Hello.", api_key=REAL_KEY, reply=turn) as fake:
        _claude_config(claude_here, fake, egress='mode = "ask"')
        cli = [*_cli_prefix(claude_here), "claude", "-p", "--dangerously-skip-permissions", "go"]
        running = subprocess.Popen(
            cli,
            env=claude_here.env,
            cwd=claude_here.workspace,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        try:
            item = _wait_held(claude_here)
            assert (item["host"], item["port"]) == ("denied.test", 80)
            assert item["tool_call"].startswith("Bash: curl -sS")
            text = claude_here.cli("pending").stdout
            assert "Bash: curl -sS" in text and "TOOL CALL (advisory)" in text
            with TmuxScreen(claude_here, "supervise", cols=80, rows=24) as screen:
                screen.wait_for("Bash: curl -sS")  # the live view's held list, at 80×24
                screen.wait_for("TOOL CALL (advisory)")
                screen.wait_for("rule=PreToolUse  tool=Bash")  # the events pane
            assert claude_here.cli("deny", "t", "denied.test").returncode == 0
            out, err = running.communicate(timeout=120)
        finally:
            if running.poll() is None:
                running.kill()
        assert running.returncode == 0, out + err
    assert turn.results and "ask-denied" in json.dumps(turn.results)  # the agent saw why
    held = [e for e in _events(claude_here) if e["decision"] == "pending"]
    assert held and held[0]["detail"]["tool_use"]["ids"] == [TOOL_USE_ID]


def _cli_prefix(env: BottleEnv) -> list[str]:
    return [
        sys.executable,
        "-m",
        "claude_bottle",
        "run",
        "--backend",
        env.backend,
        "--name",
        "t",
        "--",
    ]


def _wait_held(env: BottleEnv) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        items = json.loads(env.cli("pending", "--json", check=True).stdout)
        if items:
            return dict(items[0])
        assert time.monotonic() < deadline, "nothing was held"
        time.sleep(0.3)


class DomainInfo:
    """Stands in for api.anthropic.com's `/api/web/domain_info`, which Claude Code asks
    before each WebFetch whether a domain may be fetched (this machine is offline). A
    fake: TLS with its own throwaway CA, answering `can_fetch: true` for every domain."""

    def __init__(self, directory: Path) -> None:
        self.asked: list[str] = []
        own = directory / "domain-info"  # its own CA files, beside other upstreams'
        own.mkdir(exist_ok=True)
        context, self.ca_file = _tls(own, (API_HOST,))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(
            self.server.socket, server_side=True, do_handshake_on_connect=False
        )
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        asked = self.asked

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                asked.append(self.path)
                domain = self.path.partition("domain=")[2]
                body = json.dumps({"domain": domain, "can_fetch": True}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


@pytest.fixture
def tls_upstream(tmp_path: Path) -> Iterator[TLSUpstream]:
    (tmp_path / "site").mkdir()
    server = TLSUpstream(tmp_path / "site", "tls.test")
    yield server
    server.close()


@pytest.fixture
def domain_info(tmp_path: Path) -> Iterator[DomainInfo]:
    (tmp_path / "api").mkdir()
    fake = DomainInfo(tmp_path / "api")
    yield fake
    fake.close()


def _webfetch(
    env: BottleEnv, upstream: TLSUpstream, domain_info: DomainInfo, url: str, egress: str = ""
) -> tuple[ToolTurn, FakeAnthropic]:
    """Claude Code runs one WebFetch of `url`; tls.test and api.anthropic.com (allowed by
    default) are allowed and intercepted, denied.test is not."""
    cas = env.root / "upstream-cas.pem"
    cas.write_bytes(upstream.ca_file.read_bytes() + domain_info.ca_file.read_bytes())
    turn = ToolTurn("WebFetch", {"url": url, "prompt": "What does the page say?"})
    with FakeAnthropic("Hello.", api_key=REAL_KEY, reply=turn) as fake:
        _claude_config(
            env,
            fake,
            egress=f'upstream_ca_file = "{cas}"\n{egress}',
            resolve=(
                f'"tls.test" = "127.0.0.1:{upstream.port}"\n'
                f'"api.anthropic.com" = "127.0.0.1:{domain_info.port}"'
            ),
        )
        _run_claude(env)
    return turn, fake


@NAMESPACE
def test_webfetch_checks_the_domain_then_fetches_and_both_are_attributed(
    claude_here: BottleEnv, tls_upstream: TLSUpstream, domain_info: DomainInfo
) -> None:
    turn, fake = _webfetch(claude_here, tls_upstream, domain_info, "https://tls.test/page")
    # Claude Code's own extra request: the domain check, through the egress proxy.
    assert domain_info.asked == ["/api/web/domain_info?domain=tls.test"]
    (fetched,) = tls_upstream.requests  # through the bundle's interception, our CA trusted
    assert fetched.path == "/page"
    # WebFetch hands the page to a model call of its own (the gateway, then the fake).
    assert any(b"hello from upstream /page" in r.body for r in fake.requests)
    gets = [e for e in _events(claude_here) if e["kind"] == "egress" and e["method"] == "GET"]
    assert [(e["host"], e["decision"]) for e in gets] == [
        ("api.anthropic.com", "allow"),
        ("tls.test", "allow"),
    ]
    assert all(e["detail"]["tool_use"]["ids"] == [TOOL_USE_ID] for e in gets)
    assert turn.results


@NAMESPACE
def test_webfetch_of_a_refused_host_reports_the_403(
    claude_here: BottleEnv, tls_upstream: TLSUpstream, domain_info: DomainInfo
) -> None:
    turn, _ = _webfetch(claude_here, tls_upstream, domain_info, "https://denied.test/page")
    # Claude Code's WebFetch reports an error status without its body ("The response body
    # was not retrieved"): the agent learns 403, the rule and hint are in the audit log.
    (result,) = turn.results
    assert "HTTP 403" in json.dumps(result), result
    assert not claude_here.upstream.requests and not tls_upstream.requests
    egress = [e for e in _events(claude_here) if e["kind"] == "egress"]
    refused = [e for e in egress if e["host"] == "denied.test"]
    assert [(e["decision"], e["rule"]) for e in refused] == [("deny", "deny:not-allowlisted")]
    assert refused[0]["detail"]["tool_use"]["ids"] == [TOOL_USE_ID]


@NAMESPACE
def test_webfetch_of_an_excluded_host_gets_no_status_at_all(
    claude_here: BottleEnv, tls_upstream: TLSUpstream, domain_info: DomainInfo
) -> None:
    """The contrast: a host excluded from interception keeps the plain CONNECT refusal,
    and WebFetch then reports only a dropped connection (no 403, no rule)."""
    turn, _ = _webfetch(
        claude_here,
        tls_upstream,
        domain_info,
        "https://denied.test/page",
        egress='intercept_exclude = ["denied.test"]',
    )
    (result,) = turn.results
    assert "403" not in json.dumps(result), result


@NAMESPACE
def test_webfetch_without_its_domain_check_fails_before_fetching(
    claude_here: BottleEnv, tls_upstream: TLSUpstream, domain_info: DomainInfo
) -> None:
    """api.anthropic.com denied: the domain check is refused like any
    other host, and WebFetch gives up before it fetches anything."""
    turn, _ = _webfetch(
        claude_here,
        tls_upstream,
        domain_info,
        "https://tls.test/page",
        egress='deny = ["api.anthropic.com"]',
    )
    assert not tls_upstream.requests and not domain_info.asked
    (result,) = turn.results
    assert "tls.test" in json.dumps(result), result
    refused = [e for e in _events(claude_here) if e["host"] == "api.anthropic.com"]
    assert refused and refused[0]["decision"] == "deny"
