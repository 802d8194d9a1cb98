"""`claude-bottle logs`: the destination is always printed first, and nothing the bottle
wrote into its audit records reaches the terminal unescaped (issue 27, row 8 / item 7)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from claude_bottle import state
from claude_bottle.bundle.audit_text import format_record
from claude_bottle.cli.main import main


def _egress(path: str, **extra: object) -> dict[str, object]:
    return {
        "ts": "2026-12-07T10:00:00.000Z",
        "kind": "egress",
        "decision": "allow",
        "method": "GET",
        "host": "allowed.test",
        "port": 80,
        "path": path,
        "rule": "allow:allowed.test",
        **extra,
    }


def test_a_path_starting_with_two_slashes_is_printed_after_the_host() -> None:
    line = format_record(_egress("//exfil.attacker.example/upload"))
    assert "GET allowed.test:80//exfil.attacker.example/upload" in line
    assert " //exfil" not in line


def test_an_absolute_url_path_still_follows_the_host() -> None:
    line = format_record(_egress("http://exfil.attacker.example/upload"))
    assert "GET allowed.test:80 http://exfil.attacker.example/upload" in line


def test_a_path_without_a_host_is_printed_alone() -> None:
    record = _egress("/v1/messages")
    del record["host"], record["port"]
    assert "GET /v1/messages" in format_record(record)


HOSTILE = "\x1b]0;pwned\x07\x1b[2K\r\x9b31m\u202eevil"


def test_every_field_the_bottle_controls_is_escaped() -> None:
    record = _egress(
        "/" + HOSTILE,
        method="GE\x1bT",
        rule="allow:" + HOSTILE,
        detail={HOSTILE: HOSTILE},
    )
    line = format_record(record)
    for raw in ("\x1b", "\x07", "\r", "\x9b", "\u202e"):
        assert raw not in line


def _bottle_with_log(
    root: Path, monkeypatch: pytest.MonkeyPatch, events: list[dict[str, object]]
) -> None:
    monkeypatch.setenv("CLAUDE_BOTTLE_STATE_DIR", str(root))
    state.write_record("b1", {"name": "b1", "backend": "namespace", "status": "exited"})
    log = root / "bottles" / "b1" / "audit.jsonl"
    log.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events))


def _run_cli(args: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return int(exit_info.value.code or 0), capfd.readouterr().out


def test_logs_json_escapes_c1_controls_and_bidi_marks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    _bottle_with_log(tmp_path, monkeypatch, [_egress("/" + HOSTILE)])
    monkeypatch.setattr("os._exit", lambda code: (_ for _ in ()).throw(SystemExit(code)))
    code, out = _run_cli(["logs", "b1", "--json"], capfd)
    assert code == 0
    assert json.loads(out)["path"] == "/" + HOSTILE
    assert out.isascii()


def test_logs_prints_the_host_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    _bottle_with_log(tmp_path, monkeypatch, [_egress("//exfil.attacker.example/upload")])
    monkeypatch.setattr("os._exit", lambda code: (_ for _ in ()).throw(SystemExit(code)))
    code, out = _run_cli(["logs", "b1"], capfd)
    assert code == 0
    assert "GET allowed.test:80//exfil.attacker.example/upload" in out
