"""The bottle's home as Claude Code expects it: onboarded, no credentials, harmless settings.

From the host only what cannot carry a secret or run a command is taken: an
allowlist of keys of `~/.claude/settings.json` (`SETTINGS`), and CLAUDE.md,
commands and agents. Never `.credentials.json` or `~/.claude.json` (tokens, MCP
servers with their headers and env, per-project history), and never a setting
that holds secrets or names a program: `env`, `apiKeyHelper`, `awsAuthRefresh`,
`awsCredentialExport`, `otelHeadersHelper`, `hooks`, `statusLine`, MCP servers. The one
program the settings do name is the bottle's own: the tool-call hook (`ToolHook`,
`bundle/tool_hook.py`), which tells the bundle which tool call runs.

The bottle's home is a host directory the agent writes to, so anything in it
may be a planted symlink: nothing here follows one. A file is created with
O_EXCL|O_NOFOLLOW, and a name that already exists in any form is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from claude_bottle.bottle_env import PLACEHOLDER_API_KEY

COPIED = ("CLAUDE.md", "commands", "agents")
"""Copied as they are: prompts the user wrote for Claude Code."""

HOOK_SCRIPT = Path(__file__).resolve().parent / "bundle" / "tool_hook.py"
HOOK_NAME = "claude-bottle-tool-hook.py"
"""The tool-call hook, copied into the bottle's `~/.claude` at every launch."""
HOOK_EVENTS = ("PreToolUse", "PostToolUse", "PostToolUseFailure")
HOOK_TIMEOUT = 5
"""Seconds Claude Code gives the hook; it gives up on the bundle itself after one."""

MAX_SETTINGS = 1 << 20
"""A host settings.json larger than this is not carried in."""

_PERMISSION_LISTS = ("allow", "ask", "deny", "additionalDirectories")

SECRET_SETTINGS = (
    "env",
    "apiKeyHelper",
    "awsAuthRefresh",
    "awsCredentialExport",
    "otelHeadersHelper",
)
"""Keys that carry the host's secrets: before the allowlist, a bottle's home got the host's
settings.json whole, and such a copy still holds them (`_strip_host_secrets`)."""


def _string(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 256


def _flag(value: object) -> bool:
    return isinstance(value, bool)


def _days(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100_000


SETTINGS: dict[str, Callable[[object], bool]] = {
    "model": _string,
    "theme": _string,
    "outputStyle": _string,
    "language": _string,
    "includeCoAuthoredBy": _flag,
    "alwaysThinkingEnabled": _flag,
    "spinnerTipsEnabled": _flag,
    "verbose": _flag,
    "cleanupPeriodDays": _days,
}
"""Settings carried into the bottle, each with the shape its value must have. Anything
else stays on the host: keys that hold secrets, run programs, or point Claude Code at
another server or credential (the bottle's environment sets those)."""


def _permissions(value: object) -> dict[str, object] | None:
    """Permission rules are patterns, never secrets or programs: kept, as lists of strings."""
    if not isinstance(value, dict):
        return None
    kept: dict[str, object] = {}
    for key in _PERMISSION_LISTS:
        rules = value.get(key)
        if isinstance(rules, list) and all(_string(r) for r in rules):
            kept[key] = rules[:1000]
    if _string(value.get("defaultMode")):
        kept["defaultMode"] = value["defaultMode"]
    return kept or None


def harmless_settings(raw: bytes) -> dict[str, object]:
    """The allowlisted part of a host settings.json; {} when it is not a JSON object."""
    try:
        settings = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(settings, dict):
        return {}
    kept = {k: v for k, v in settings.items() if k in SETTINGS and SETTINGS[k](v)}
    permissions = _permissions(settings.get("permissions"))
    if permissions is not None:
        kept["permissions"] = permissions
    return kept


def _read_file(path: Path, limit: int, *, follow: bool) -> bytes | None:
    """A regular file's bytes (at most `limit`); None otherwise. The host's home is the
    user's, not the bottle's: a symlink there (a dotfiles manager's) is followed."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO would block, a device never end
            return None
        data = handle.read(limit + 1)
    return data if len(data) <= limit else None


def _create(path: Path, data: bytes) -> None:
    """Write a new file; do nothing if the name exists (file, dir or symlink)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


class ToolHook(NamedTuple):
    """How the bottle runs the tool-call hook: its interpreter and the relay's hook port."""

    python: str  # a path or name the bottle's shell finds
    port: int


def seed_claude_home(
    bottle_home: Path, host_home: Path, workspace: Path, tool_hook: ToolHook | None = None
) -> None:
    """Prepare the bottle's home so `claude` starts without prompts or credentials.

    `workspace` is the workspace's path inside the bottle (every backend mounts it at
    its host path). With `tool_hook`, its settings run the tool-call hook.
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
    _strip_host_secrets(target / "settings.json")
    source = host_home / ".claude"
    raw = _read_file(source / "settings.json", MAX_SETTINGS, follow=True)
    settings = harmless_settings(raw) if raw is not None else {}
    if settings:
        _create(target / "settings.json", (json.dumps(settings, indent=2) + "\n").encode())
    for name in COPIED:
        src, dst = source / name, target / name
        if dst.exists() or dst.is_symlink() or src.is_symlink():
            continue
        if src.is_file():
            _create(dst, src.read_bytes())
        elif src.is_dir():
            shutil.copytree(src, dst, symlinks=True)
    if tool_hook is not None:
        with contextlib.suppress(OSError):  # something planted there: advisory, go without
            _install_tool_hook(target, tool_hook)


def _install_tool_hook(target: Path, tool_hook: ToolHook) -> None:
    """Copy the hook in and register it in the bottle's settings.json, every launch (the
    agent may have edited either: attribution is advisory, launch restores it)."""
    _replace(target / HOOK_NAME, HOOK_SCRIPT.read_bytes())
    raw = _read_file(target / "settings.json", MAX_SETTINGS, follow=False)
    try:
        settings = json.loads(raw) if raw is not None else {}
    except (ValueError, RecursionError):
        settings = {}
    if not isinstance(settings, dict):
        settings = {}
    hooks = settings.get("hooks")
    hooks = dict(hooks) if isinstance(hooks, dict) else {}
    command = f'{tool_hook.python} -I -S "$HOME/.claude/{HOOK_NAME}" {tool_hook.port}'
    ours = {"hooks": [{"type": "command", "command": command, "timeout": HOOK_TIMEOUT}]}
    for event in HOOK_EVENTS:
        theirs = hooks.get(event)
        kept = [
            entry
            for entry in (theirs if isinstance(theirs, list) else [])
            if HOOK_NAME not in json.dumps(entry)
        ]
        hooks[event] = [*kept, ours]
    settings["hooks"] = hooks
    _replace(target / "settings.json", (json.dumps(settings, indent=2) + "\n").encode())


def _replace(path: Path, data: bytes) -> None:
    """Write `path` anew: a fresh file renamed over it (a symlink there is replaced, never
    followed)."""
    fresh = path.with_name(path.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        fresh.unlink()
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(fresh, path)


def _strip_host_secrets(path: Path) -> None:
    """Remove `SECRET_SETTINGS` from a settings.json in the bottle's home; the rest of it
    is the bottle's own. Runs at launch, when nothing in the bottle runs to race it."""
    raw = _read_file(path, MAX_SETTINGS, follow=False)
    try:
        settings = json.loads(raw) if raw is not None else None
    except (ValueError, RecursionError):
        return
    if not isinstance(settings, dict) or not any(k in settings for k in SECRET_SETTINGS):
        return
    kept = {k: v for k, v in settings.items() if k not in SECRET_SETTINGS}
    try:
        _replace(path, (json.dumps(kept, indent=2) + "\n").encode())
    except OSError:  # something odd was planted there: the secrets go with the whole file
        path.unlink()
