from __future__ import annotations

import json
import os
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
    assert json.loads((bottle / ".claude" / "settings.json").read_text()) == {"theme": "dark"}
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


def test_host_settings_enter_only_through_the_allowlist(tmp_path: Path) -> None:
    """Issue 18 item 5: secrets and programs in the host's settings.json stay outside."""
    host, bottle = tmp_path / "host", tmp_path / "bottle"
    (host / ".claude").mkdir(parents=True)
    bottle.mkdir()
    secret = "sk-ant-api03-" + "Q" * 40
    host_settings = {
        "model": "claude-opus-4",
        "includeCoAuthoredBy": False,
        "cleanupPeriodDays": 30,
        "permissions": {"allow": ["Bash(npm test)"], "deny": ["Read(./.env)"], "x": secret},
        "env": {"ANTHROPIC_API_KEY": secret, "GITHUB_TOKEN": secret},
        "apiKeyHelper": f"echo {secret}",
        "awsAuthRefresh": "aws sso login",
        "awsCredentialExport": "/bin/creds",
        "otelHeadersHelper": "/bin/headers",
        "hooks": {"Stop": [{"hooks": [{"type": "command", "command": f"curl -H {secret} x"}]}]},
        "statusLine": {"type": "command", "command": "~/.claude/status.sh"},
        "mcpServers": {"x": {"url": "https://mcp.test", "headers": {"Authorization": secret}}},
        "model_typo": secret,
    }
    (host / ".claude" / "settings.json").write_text(json.dumps(host_settings))
    seed_claude_home(bottle, host, Path("/work/project"))
    written = (bottle / ".claude" / "settings.json").read_text()
    assert secret not in written
    assert json.loads(written) == {
        "model": "claude-opus-4",
        "includeCoAuthoredBy": False,
        "cleanupPeriodDays": 30,
        "permissions": {"allow": ["Bash(npm test)"], "deny": ["Read(./.env)"]},
    }
    every_file = "".join(
        p.read_text() for p in bottle.rglob("*") if p.is_file() and not p.is_symlink()
    )
    assert secret not in every_file


def test_host_settings_that_are_not_an_object_or_not_a_file_carry_nothing(
    tmp_path: Path,
) -> None:
    host, bottle = tmp_path / "host", tmp_path / "bottle"
    (host / ".claude").mkdir(parents=True)
    bottle.mkdir()
    (host / ".claude" / "settings.json").write_text('["env", {"apiKeyHelper": "x"}]')
    seed_claude_home(bottle, host, Path("/work/project"))
    assert not (bottle / ".claude" / "settings.json").exists()
    (host / ".claude" / "settings.json").unlink()
    os.mkfifo(host / ".claude" / "settings.json")  # would block a reader forever
    seed_claude_home(bottle, host, Path("/work/project"))
    assert not (bottle / ".claude" / "settings.json").exists()


def test_a_copy_an_earlier_version_made_whole_loses_the_hosts_secrets(tmp_path: Path) -> None:
    """Before the allowlist, the host's settings.json was copied whole into a bottle's
    home; at the next launch the secrets in that copy are removed, the rest kept."""
    host, bottle = tmp_path / "host", tmp_path / "bottle"
    (host / ".claude").mkdir(parents=True)
    (bottle / ".claude").mkdir(parents=True)
    secret = "sk-ant-api03-" + "Z" * 40
    old_copy = {"env": {"ANTHROPIC_API_KEY": secret}, "apiKeyHelper": secret, "model": "m"}
    (bottle / ".claude" / "settings.json").write_text(json.dumps(old_copy))
    seed_claude_home(bottle, host, Path("/work/project"))
    assert json.loads((bottle / ".claude" / "settings.json").read_text()) == {"model": "m"}
    # A planted directory where the rewrite goes: the whole file goes instead.
    (bottle / ".claude" / "settings.json").write_text(json.dumps(old_copy))
    (bottle / ".claude" / "settings.json.new").mkdir()
    (bottle / ".claude" / "settings.json.new" / "x").write_text("")
    seed_claude_home(bottle, host, Path("/work/project"))
    assert not (bottle / ".claude" / "settings.json").exists()
