"""What supervise and pending show of a bottle's text, policy suggest's output, and
allow --always's edit of the user config."""

from __future__ import annotations

import json
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from claude_bottle.cli.policy_suggest import render, suggest
from claude_bottle.cli.user_config import append_allow
from claude_bottle.errors import ConfigError
from claude_bottle.tui.app import event_text
from claude_bottle.tui.feed import parse_event, recent_records
from claude_bottle.tui.text import cut_host, plain, registrable_domain


def test_long_host_names_are_cut_from_the_left_keeping_the_registrable_domain() -> None:
    host = "a" * 50 + ".b.c.files.pythonhosted.org"
    shown = cut_host(host, 30)
    assert len(shown) == 30 and shown.startswith("…")
    assert shown.endswith(".files.pythonhosted.org")
    assert registrable_domain(host) == "pythonhosted.org"
    assert cut_host("short.example.com", 30) == "short.example.com"
    assert cut_host("x." + "d" * 40 + ".com", 10).endswith("ddd.com")  # the domain, cut


def test_control_characters_are_escaped_and_markup_is_not_interpreted() -> None:
    hostile = "evil\x1b]0;pwned\x07\u202e[bold red]x[/]\n.test"
    shown = plain(hostile)
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "\n" not in shown
    line = parse_event(
        json.dumps({"kind": "egress", "decision": "deny", "host": hostile, "port": 80}).encode()
    )
    assert line is not None
    text = event_text(line)
    assert "[bold red]x[/]" in text.plain  # shown as typed, not as styling
    assert not text.spans and "\x1b" not in text.plain


def test_a_bundle_line_that_is_no_event_is_ignored() -> None:
    assert parse_event(b"not json") is None
    assert parse_event(b"[1, 2]") is None
    event = parse_event(b'{"kind": "egress", "port": true, "ts": "2026-01-01T00:00:00.000Z"}')
    assert event is not None and event.port == 0 and event.ts > 0


def test_the_log_is_read_once_for_what_came_before(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    records = [
        {"ts": f"2026-01-01T00:00:0{n}.000Z", "kind": "egress", "decision": "allow"}
        for n in range(3)
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"kind": "cut')
    cutoff = parse_event(json.dumps(records[2]).encode())
    assert cutoff is not None
    assert len(recent_records(log, cutoff.ts)) == 2


def test_policy_suggest_collapses_more_than_three_subdomains() -> None:
    seen = Counter(
        {
            "a.many.test": 1,
            "b.many.test": 2,
            "c.many.test": 1,
            "d.many.test": 1,
            "many.test": 3,
            "x.few.test": 1,
            "y.few.test": 1,
            "pypi.org": 7,
        }
    )
    entries = suggest(seen)
    assert entries == [
        ("pypi.org", 7),
        ("x.few.test", 1),
        ("y.few.test", 1),
        ("many.test", 3),
        ("*.many.test", 5),
    ]
    text = render("b", entries, "audit chain verified")
    assert tomllib.loads(text)["egress"]["allow"] == [pattern for pattern, _ in entries]
    assert '"pypi.org",  # 7 requests' in text


def test_allow_always_keeps_comments_and_adds_one(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '# mine\nbackend = "namespace"  # why\n\n[egress]\nallow = ["a.test",  # first\n]\n'
        "\n[dlp]\nblock = true  # keep\n"
    )
    append_allow("New.Test.", bottle="b1", path=config)
    append_allow("new.test", bottle="b1", path=config)  # listed already: unchanged
    text = config.read_text()
    assert "# mine" in text and "# why" in text and "# first" in text and "# keep" in text
    assert text.count("new.test") == 1 and "from bottle b1" in text
    assert tomllib.loads(text)["egress"]["allow"] == ["a.test", "new.test"]
    created = tmp_path / "sub" / "config.toml"
    append_allow("*.example.com", bottle="b2", path=created)
    assert tomllib.loads(created.read_text())["egress"]["allow"] == ["*.example.com"]
    assert created.stat().st_mode & 0o777 == 0o600


def test_allow_always_refuses_bad_patterns_and_broken_files(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    with pytest.raises(ValueError):
        append_allow('x.test"]\nmode = "audit', bottle="b", path=config)
    assert not config.exists()
    config.write_text("[egress\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        append_allow("x.test", bottle="b", path=config)
    assert config.read_text() == "[egress\n"


def test_the_view_caps_held_hosts_per_bottle_and_escapes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from textual.widgets import DataTable

    from claude_bottle.cli.supervise_commands import Pending
    from claude_bottle.tui.app import PENDING_PER_BOTTLE, SuperviseApp

    monkeypatch.setenv("CLAUDE_BOTTLE_STATE_DIR", str(tmp_path / "state"))
    held = [
        Pending("flood", f"h{n}.\x1b[31m[b]x[/b].test", 80, 1, 0.0, "GET /\x07", "")
        for n in range(PENDING_PER_BOTTLE + 5)
    ]

    async def scenario() -> None:
        app = SuperviseApp(())
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            app.show([], {}, held)
            await pilot.pause()
            table = app.query_one("#pending", DataTable)
            assert table.row_count == PENDING_PER_BOTTLE + 1  # and one "+5 more" row
            cells = [str(table.get_row_at(n)[1]) for n in range(table.row_count)]
            assert all("\x1b" not in cell for cell in cells)
            assert "+5 more hosts" in cells[-1]

    asyncio.run(scenario())


def test_the_bundle_image_leaves_the_cli_only_requirements_out() -> None:
    from claude_bottle.backend.docker import images

    names = " ".join(images.bundle_requirements())
    assert "httptools" in names
    assert not any(name in names for name in images.CLI_ONLY_REQUIREMENTS)
    bundle_modules = " ".join(images._package_files())
    assert "claude_bottle/bundle/held.py" in bundle_modules
    assert "claude_bottle/tui/" not in bundle_modules
