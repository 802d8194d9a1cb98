from __future__ import annotations

import json
from pathlib import Path

from claude_bottle.claude_home import seed_claude_home


def test_seeds_onboarding_and_copies_only_settings(tmp_path: Path) -> None:
    host, bottle = tmp_path / "host", tmp_path / "bottle"
    (host / ".claude" / "commands").mkdir(parents=True)
    (host / ".claude" / "settings.json").write_text('{"theme": "dark"}')
    (host / ".claude" / "commands" / "x.md").write_text("cmd")
    (host / ".claude" / ".credentials.json").write_text("SECRET")
    bottle.mkdir()
    seed_claude_home(bottle, host, Path("/work/project"))
    state = json.loads((bottle / ".claude.json").read_text())
    assert state["hasCompletedOnboarding"] is True
    # No trust dialog for the workspace, and trust for nothing else.
    assert state["projects"] == {"/work/project": {"hasTrustDialogAccepted": True}}
    assert (bottle / ".claude" / "settings.json").read_text() == '{"theme": "dark"}'
    assert (bottle / ".claude" / "commands" / "x.md").read_text() == "cmd"
    assert not (bottle / ".claude" / ".credentials.json").exists()


def test_planted_symlinks_are_never_followed(tmp_path: Path) -> None:
    host, bottle, outside = tmp_path / "host", tmp_path / "bottle", tmp_path / "outside"
    (host / ".claude").mkdir(parents=True)
    (host / ".claude" / "settings.json").write_text("{}")
    bottle.mkdir()
    outside.mkdir()
    # What an agent could leave in its home for the next launch:
    (bottle / ".claude.json").symlink_to(outside / "victim.json")
    (bottle / ".claude").symlink_to(outside)
    seed_claude_home(bottle, host, Path("/work/project"))
    assert list(outside.iterdir()) == []
    (bottle / ".claude").unlink()
    (bottle / ".claude").mkdir()
    (bottle / ".claude" / "settings.json").symlink_to(outside / "victim2.json")
    seed_claude_home(bottle, host, Path("/work/project"))
    assert list(outside.iterdir()) == []
