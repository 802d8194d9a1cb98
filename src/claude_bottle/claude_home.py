"""The bottle's home as Claude Code expects it: onboarded, no credentials, user settings copied.

Only non-secret settings are copied from the host (settings.json, CLAUDE.md,
commands, agents); never `.credentials.json` or `.claude.json`, which may
hold tokens and per-project history.

The bottle's home is a host directory the agent writes to, so anything in it
may be a planted symlink: nothing here follows one. A file is created with
O_EXCL|O_NOFOLLOW, and a name that already exists in any form is left alone.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from claude_bottle.bottle_env import PLACEHOLDER_API_KEY

COPIED = ("settings.json", "CLAUDE.md", "commands", "agents")


def _create(path: Path, data: bytes) -> None:
    """Write a new file; do nothing if the name exists (file, dir or symlink)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def seed_claude_home(bottle_home: Path, host_home: Path, workspace: Path) -> None:
    """Prepare the bottle's home so `claude` starts without prompts or credentials.

    `workspace` is the workspace's path inside the bottle (every backend mounts it at
    its host path).
    """
    state = {
        "hasCompletedOnboarding": True,
        "bypassPermissionsModeAccepted": True,
        # Claude Code asks before using an API key from the environment; the placeholder
        # is pre-approved (it stores the last 20 characters).
        "customApiKeyResponses": {"approved": [PLACEHOLDER_API_KEY[-20:]], "rejected": []},
        # Claude Code asks whether to trust the folder it starts in; the user chose this
        # workspace for the bottle, which is the sandbox that question guards against.
        "projects": {str(workspace): {"hasTrustDialogAccepted": True}},
    }
    _create(bottle_home / ".claude.json", (json.dumps(state, indent=2) + "\n").encode())
    target = bottle_home / ".claude"
    if target.is_symlink():
        return
    target.mkdir(mode=0o700, exist_ok=True)
    source = host_home / ".claude"
    for name in COPIED:
        src, dst = source / name, target / name
        if dst.exists() or dst.is_symlink() or src.is_symlink():
            continue
        if src.is_file():
            _create(dst, src.read_bytes())
        elif src.is_dir():
            shutil.copytree(src, dst, symlinks=True)
