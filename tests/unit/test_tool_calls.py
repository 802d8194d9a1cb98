"""Which tool call made a request (issue 22): the hook channel is bounded, carries only
hook records, and its attribution is advisory; the in-bottle hook never blocks a tool."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_bottle.bundle import control, tool_calls
from claude_bottle.bundle.tool_calls import (
    ADVISORY,
    BURST,
    MAX_CONNECTIONS,
    MAX_RECORD,
    ToolCalls,
    concerns,
    parse_record,
    redact_summary,
)
from claude_bottle.bundle.tool_hook import record_line
from claude_bottle.claude_home import HOOK_NAME, HOOK_SCRIPT, ToolHook, seed_claude_home
from claude_bottle.policy.dlp import default_scanner
from tests.integration.upstream import RecordingHTTPServer
from tests.unit.bundle_settings import bundle_settings
from tests.unit.test_logs_output import HOSTILE, _bottle_with_log, _run_cli
from tests.unit.test_proxy import RunningBundle

GOOD = {"event": "PreToolUse", "tool": "Bash", "id": "toolu_01A", "summary": "curl x"}
AWS_KEY = "AKIA" + "Q3EGRTLMZ4N7XW2K"  # assembled: the source holds no key-shaped literal


def _line(**fields: object) -> bytes:
    return json.dumps({**GOOD, **fields}).encode()


# --- records ------------------------------------------------------------------------


def test_a_hook_record_is_exactly_its_four_fields() -> None:
    assert parse_record(_line()) == ("PreToolUse", "Bash", "toolu_01A", "curl x")
    for hostile in (
        json.dumps({"op": "stop"}).encode(),  # a control operation
        json.dumps({**GOOD, "op": "allow", "host": "evil.test"}).encode(),
        json.dumps({k: v for k, v in GOOD.items() if k != "summary"}).encode(),
        _line(event="Stop"),
        _line(tool="Bash\x1b[2J"),
        _line(id="toolu_../../etc"),
        _line(id=""),
        _line(summary=["list"]),
        _line(summary="x" * MAX_RECORD),  # oversize line
        b"[1, 2]",
        b"{not json",
        b"\xff\xfe",
    ):
        assert parse_record(hostile) is None, hostile


def test_summaries_are_cut_and_redacted() -> None:
    scanner = default_scanner()
    command = f"AWS_ACCESS_KEY_ID={AWS_KEY} aws s3 ls; " + "y" * 500
    shown = redact_summary("Bash", command, scanner)
    assert AWS_KEY not in shown and "[REDACTED:" in shown
    assert len(shown) <= 200 + 64
    url = redact_summary("WebFetch", "https://u:pw@site.test/a?token=s3cr3tvalue", None)
    assert "s3cr3tvalue" not in url and "pw@" not in url
    assert "\x1b" not in redact_summary("Bash", "echo \x1b[2J\u202e", None)


def test_the_running_set_tags_only_traffic_events_and_says_it_is_advisory() -> None:
    recorded: list[tuple[Any, ...]] = []
    calls = ToolCalls(lambda *a, **f: recorded.append((a, f)), lambda: None)
    assert calls.tag("egress", {"x": 1}) == {"x": 1}  # nothing runs: untouched
    assert calls.accept(_line())
    assert calls.accept(_line(id="toolu_02B", tool="WebFetch", summary="https://a.test/"))
    tagged = calls.tag("egress", None)
    assert tagged == {"tool_use": {"ids": ["toolu_01A", "toolu_02B"], "attribution": ADVISORY}}
    assert calls.tag("lifecycle", None) is None
    assert calls.describe() == "WebFetch: https://a.test/ (+1 more)"
    assert calls.accept(_line(event="PostToolUse", summary="changed after the fact"))
    assert [c.id for c in calls.current()] == ["toolu_02B"]
    (_, start), (_, _), (_, end) = recorded
    assert start["detail"]["attribution"] == ADVISORY
    assert end["detail"]["summary"] == "curl x"  # the start's summary, not the end's claim


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flood arrives in no time at all: nothing refills the rate's bucket meanwhile,
    however slowly this machine runs the test."""
    monkeypatch.setattr(tool_calls, "time", types.SimpleNamespace(monotonic=lambda: 1000.0))


@pytest.mark.usefixtures("frozen_clock")
def test_a_flood_of_hook_records_is_bounded_and_its_drops_audited_once() -> None:
    recorded: list[tuple[Any, ...]] = []
    calls = ToolCalls(lambda *a, **f: recorded.append((a, f)), lambda: None)
    for n in range(5000):
        calls.accept(_line(id=f"toolu_{n}"))
    assert calls.accepted == BURST
    assert calls.dropped == 5000 - BURST
    assert len(calls.running) <= 32
    drops = [f for (kind, decision), f in recorded if decision == "dropped"]
    assert len(drops) == 1 and drops[0]["detail"]["reason"] == "rate"


def test_concerns_matches_a_tool_calls_own_records_and_its_tagged_events() -> None:
    tagged = {"kind": "egress", "detail": {"tool_use": {"ids": ["toolu_1", "toolu_2"]}}}
    assert concerns(tagged, "toolu_2") and not concerns(tagged, "toolu_3")
    assert concerns({"kind": "tool", "detail": {"id": "toolu_1"}}, "toolu_1")
    assert not concerns({"kind": "tool", "detail": {"id": "toolu_1", "tool_use": 5}}, "x")
    assert not concerns({"kind": "egress", "detail": {"tool_use": {"ids": "toolu_1"}}}, "toolu_1")


# --- the hook inside the bottle ------------------------------------------------------

HOOK_INPUT = {
    "session_id": "s",
    "hook_event_name": "PreToolUse",
    "tool_name": "Bash",
    "tool_input": {"command": "npm install " + "z" * 400, "description": "d"},
    "tool_use_id": "toolu_01XYZ",
}


def test_the_hook_sends_name_id_and_a_short_summary() -> None:
    line = record_line(HOOK_INPUT)
    assert line is not None and line.endswith(b"\n")
    record = parse_record(line[:-1])
    assert record is not None
    assert (record.event, record.tool, record.id) == ("PreToolUse", "Bash", "toolu_01XYZ")
    assert record.summary.startswith("npm install ") and len(record.summary) == 200
    assert record_line({"hook_event_name": "PreToolUse"}) is None


def _run_hook(port: int, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-I", "-S", str(HOOK_SCRIPT), str(port)],
        input=stdin,
        capture_output=True,
        timeout=30,
    )


def test_the_hook_script_reports_through_a_loopback_port() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        got: list[bytes] = []

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                got.append(conn.makefile("rb").readline())
                conn.sendall(b"ok\n")

        thread = threading.Thread(target=answer)
        thread.start()
        result = _run_hook(listener.getsockname()[1], json.dumps(HOOK_INPUT).encode())
        thread.join(10)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert parse_record(got[0][:-1]) is not None


def test_the_hook_never_fails_a_tool_call_when_the_bundle_is_gone_or_stuck() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connection refused
        result = _run_hook(port, json.dumps(HOOK_INPUT).encode())
    assert (result.returncode, result.stdout) == (0, b"")
    with socket.socket() as stuck:  # accepts (backlog) and never answers
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(1)
        result = _run_hook(stuck.getsockname()[1], json.dumps(HOOK_INPUT).encode())
    assert (result.returncode, result.stdout) == (0, b"")
    assert _run_hook(1, b"\x00not json").returncode == 0


def test_seeding_registers_the_hooks_and_keeps_the_bottles_own(tmp_path: Path) -> None:
    host, bottle = tmp_path / "host", tmp_path / "bottle"
    (host / ".claude").mkdir(parents=True)
    (bottle / ".claude").mkdir(parents=True)
    own = {"hooks": {"PreToolUse": [{"hooks": [{"type": "command", "command": "true"}]}]}}
    (bottle / ".claude" / "settings.json").write_text(json.dumps(own))
    for _ in range(2):  # every launch: once, not once per launch
        seed_claude_home(bottle, host, Path("/w"), ToolHook("/usr/bin/python3", 3131))
    settings = json.loads((bottle / ".claude" / "settings.json").read_text())
    assert "skipWebFetchPreflight" not in settings  # Claude Code's own checks stay
    pre = settings["hooks"]["PreToolUse"]
    assert pre[0] == own["hooks"]["PreToolUse"][0] and len(pre) == 2
    ours = pre[1]["hooks"][0]
    assert ours["command"] == f'/usr/bin/python3 -I -S "$HOME/.claude/{HOOK_NAME}" 3131'
    for event in ("PostToolUse", "PostToolUseFailure"):
        assert settings["hooks"][event] == [pre[1]]
    assert (bottle / ".claude" / HOOK_NAME).read_bytes() == HOOK_SCRIPT.read_bytes()


def test_a_planted_symlink_for_the_hook_is_replaced_not_followed(tmp_path: Path) -> None:
    host, bottle = tmp_path / "host", tmp_path / "bottle"
    (host / ".claude").mkdir(parents=True)
    (bottle / ".claude").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, bottle / ".claude" / HOOK_NAME)
    os.symlink(victim, bottle / ".claude" / "settings.json")
    seed_claude_home(bottle, host, Path("/w"), ToolHook("python3", 3131))
    assert victim.read_text() == "keep"
    assert not (bottle / ".claude" / HOOK_NAME).is_symlink()


# --- a real bundle ------------------------------------------------------------------


@pytest.fixture
def upstream() -> Iterator[RecordingHTTPServer]:
    server = RecordingHTTPServer()
    yield server
    server.close()


@pytest.fixture
def hooked(tmp_path: Path, upstream: RecordingHTTPServer) -> Iterator[RunningBundle]:
    from claude_bottle.bundle.settings import Pin

    bundle = RunningBundle(
        bundle_settings(
            tmp_path,
            dlp_enabled=False,
            hook_socket=str(tmp_path / "hook.sock"),
            pins=(Pin("allowed.test", "127.0.0.1", upstream.port),),
        )
    )
    yield bundle
    bundle.stop()


def _hook(bundle: RunningBundle, data: bytes) -> bytes:
    assert bundle.settings.hook_socket is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(bundle.settings.hook_socket)
        sock.sendall(data)
        return sock.makefile("rb").readline()


def _closed_unanswered(bundle: RunningBundle, data: bytes) -> bool:
    """Whether the bundle closed the connection without an answer. Closed with our line
    still unread, a unix socket is reset rather than ended, depending on which side was
    quicker: both are a refusal."""
    try:
        return _hook(bundle, data) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def _audit(bundle: RunningBundle) -> list[dict[str, Any]]:
    bundle.sync_audit()
    return [json.loads(line) for line in Path(bundle.settings.audit_log).open()]


def test_a_hook_record_trying_a_control_op_is_refused(hooked: RunningBundle) -> None:
    for op in (b'{"op": "stop"}\n', b'{"op": "allow", "host": "evil.test"}\n'):
        assert _hook(hooked, op) == b"dropped\n"
    stats = control.call(Path(hooked.settings.control_socket), "stats")
    assert stats["ok"] and stats["hooks_dropped"] == 2  # still running, nothing allowed
    assert "evil.test" not in stats["allow"]
    refused = hooked.request(b"GET http://evil.test/ HTTP/1.1\r\nHost: evil.test\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 403")


def test_oversize_and_malformed_records_are_dropped(hooked: RunningBundle) -> None:
    assert _hook(hooked, b"x" * (MAX_RECORD * 4) + b"\n") == b"dropped\n"
    assert _hook(hooked, b"{broken\n") == b"dropped\n"
    assert _hook(hooked, _line() + b"\n") == b"ok\n"
    stats = control.call(Path(hooked.settings.control_socket), "stats")
    assert (stats["hooks_accepted"], stats["hooks_dropped"]) == (1, 2)


def test_events_made_while_a_tool_call_runs_carry_its_id(hooked: RunningBundle) -> None:
    get = b"GET http://allowed.test/x HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
    assert _hook(hooked, _line(summary="curl http://allowed.test/x") + b"\n") == b"ok\n"
    assert hooked.request(get).startswith(b"HTTP/1.1 200")
    assert _hook(hooked, _line(event="PostToolUse") + b"\n") == b"ok\n"
    assert hooked.request(get).startswith(b"HTTP/1.1 200")
    events = _audit(hooked)
    tools = [e for e in events if e["kind"] == "tool"]
    assert [(e["decision"], e["detail"]["id"]) for e in tools] == [
        ("start", "toolu_01A"),
        ("end", "toolu_01A"),
    ]
    during, after = [e for e in events if e["kind"] == "egress"]
    assert during["detail"]["tool_use"] == {"ids": ["toolu_01A"], "attribution": ADVISORY}
    assert during["decision"] == after["decision"] == "allow"  # advisory: same decision
    assert "tool_use" not in (after.get("detail") or {})


def test_logs_tool_lists_one_tool_call_and_escapes_what_the_bottle_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    start = {"kind": "tool", "decision": "start", "detail": {"id": "toolu_1", "summary": HOSTILE}}
    tagged = {"kind": "egress", "decision": "allow", "host": "a.test", "port": 80}
    other = {"kind": "egress", "decision": "allow", "host": "other.test", "port": 80}
    _bottle_with_log(
        tmp_path,
        monkeypatch,
        [start, {**tagged, "detail": {"tool_use": {"ids": ["toolu_1"]}}}, other],
    )
    monkeypatch.setattr("os._exit", lambda code: (_ for _ in ()).throw(SystemExit(code)))
    code, out = _run_cli(["logs", "b1", "--tool", "toolu_1"], capfd)
    assert code == 0
    assert "a.test" in out and "other.test" not in out and "toolu_1" in out
    for raw in ("\x1b", "\x07", "\r", "\x9b", "\u202e"):
        assert raw not in out
    code, _ = _run_cli(["logs", "b1", "--tool", "../x\x1b"], capfd)
    assert code == 2


def test_a_held_request_names_the_tool_call_that_made_it(
    tmp_path: Path, upstream: RecordingHTTPServer
) -> None:
    bundle = RunningBundle(
        bundle_settings(
            tmp_path, dlp_enabled=False, mode="ask", hook_socket=str(tmp_path / "hook.sock")
        )
    )
    try:
        assert _hook(bundle, _line(summary="npm install \x1b[2J") + b"\n") == b"ok\n"
        answers: list[bytes] = []
        held = threading.Thread(
            target=lambda: answers.append(
                bundle.request(b"GET http://registry.test/ HTTP/1.1\r\nHost: registry.test\r\n\r\n")
            )
        )
        held.start()
        socket_path = Path(bundle.settings.control_socket)
        for _ in range(200):  # bounded: until the request is held
            pending = control.call(socket_path, "pending")["pending"]
            if pending:
                break
            threading.Event().wait(0.05)
        (item,) = pending
        assert item["host"] == "registry.test"
        assert item["tool_call"] == "Bash: npm install \\x1b[2J"  # escaped at the source
        assert control.call(socket_path, "deny", host="registry.test")["ok"]
        held.join(10)
        assert answers[0].startswith(b"HTTP/1.1 403")
    finally:
        bundle.stop()


def test_supervise_shows_the_tool_call_escaped_and_never_as_markup() -> None:
    from claude_bottle.cli.supervise_commands import Pending
    from claude_bottle.tui.app import held_text

    item = Pending("b", "registry.test", 443, 1, 0.0, "CONNECT registry.test:443", "")
    assert held_text(item) == "CONNECT registry.test:443"
    hostile = item._replace(tool_call="Bash: npm i\x1b[2J[b]x[/b]\u202e" + "y" * 500)
    shown = held_text(hostile)
    assert shown.startswith("Bash: npm i\\x1b[2J[b]x[/b]") and "\x1b" not in shown
    assert "\u202e" not in shown and len(shown) <= 80
    assert shown.endswith("→ CONNECT registry.test:443")


@pytest.mark.usefixtures("frozen_clock")
def test_a_flood_through_the_socket_is_bounded_and_idle_connections_are_capped(
    hooked: RunningBundle,
) -> None:
    answers = [_hook(hooked, _line(id=f"toolu_{n}") + b"\n") for n in range(300)]
    assert answers.count(b"ok\n") == BURST
    assert answers.count(b"dropped\n") == 300 - BURST
    assert hooked.bundle is not None and len(hooked.bundle.tool_calls.running) <= 32
    idle = []
    try:
        for _ in range(MAX_CONNECTIONS):  # each sends nothing: a slot held until it times out
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(hooked.settings.hook_socket))
            idle.append(sock)
        for _ in range(200):  # bounded: until the bundle has accepted them all
            if hooked.bundle.tool_calls.connections == MAX_CONNECTIONS:
                break
            threading.Event().wait(0.02)
        assert _closed_unanswered(hooked, _line() + b"\n")
    finally:
        for sock in idle:
            sock.close()
    get = b"GET http://allowed.test/x HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
    assert hooked.request(get).startswith(b"HTTP/1.1 200")  # the proxy never noticed
