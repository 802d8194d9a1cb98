"""The bottle's home as Claude Code expects it: onboarded, no credentials, user settings copied.

Only non-secret settings are copied from the host (settings.json, CLAUDE.md,
commands, agents); never `.credentials.json` or `.claude.json`, which may
hold tokens and per-project history.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from claude_bottle.bottle_env import PLACEHOLDER_API_KEY

COPIED = ("settings.json", "CLAUDE.md", "commands", "agents")


def seed_claude_home(bottle_home: Path, host_home: Path) -> None:
    """Prepare (once) the bottle's home so `claude` starts without prompts or credentials."""
    state = bottle_home / ".claude.json"
    if not state.exists():
        state.write_text(
            json.dumps(
                {
                    "hasCompletedOnboarding": True,
                    "bypassPermissionsModeAccepted": True,
                    # Claude Code asks before using an API key from the environment; the
                    # placeholder is pre-approved (it stores the last 20 characters).
                    "customApiKeyResponses": {
                        "approved": [PLACEHOLDER_API_KEY[-20:]],
                        "rejected": [],
                    },
                },
                indent=2,
            )
            + "\n"
        )
    target = bottle_home / ".claude"
    target.mkdir(mode=0o700, exist_ok=True)
    source = host_home / ".claude"
    for name in COPIED:
        src, dst = source / name, target / name
        if dst.exists() or src.is_symlink():
            continue
        if src.is_file():
            shutil.copy2(src, dst)
        elif src.is_dir():
            shutil.copytree(src, dst, symlinks=False, ignore_dangling_symlinks=True)
