"""The user's git identity in the bottle's home, and nothing else of their git config.

`git commit` inside needs `user.name` and `user.email`. The host's
~/.gitconfig may also hold credential helpers, `insteadOf` rules with tokens
in URLs and `include` paths, so only those two values are read (from
`git config --global`, as the user's git resolves them) and written into a
fresh ~/.gitconfig in the bottle's home. `[bottle] git_identity = false`
turns this off.

The bottle's home is a host directory the agent writes to: the file is
created with O_EXCL|O_NOFOLLOW, and a name that already exists is left alone
(as claude_home does).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import NamedTuple

GIT_TIMEOUT = 5.0
_MAX_VALUE = 256  # a name or an address; anything longer is not an identity


class GitIdentity(NamedTuple):
    name: str
    email: str


def _clean(value: str) -> str | None:
    value = value.strip()
    if not value or len(value) > _MAX_VALUE or any(not c.isprintable() for c in value):
        return None
    return value


def host_git_identity() -> GitIdentity | None:
    """user.name and user.email from the host's global git config; None unless both are set."""
    try:
        found = subprocess.run(
            [
                "git",
                "config",
                "--global",
                "--includes",
                "-z",
                "--get-regexp",
                r"^user\.(name|email)$",
            ],
            capture_output=True,
            timeout=GIT_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None  # no git on the host: nothing to carry over
    values: dict[str, str] = {}
    for record in found.stdout.decode(errors="replace").split("\0"):
        key, _, value = record.partition("\n")
        cleaned = _clean(value)
        if key in ("user.name", "user.email") and cleaned is not None:
            values[key] = cleaned  # the last one wins, as in git
    if "user.name" not in values or "user.email" not in values:
        return None
    return GitIdentity(values["user.name"], values["user.email"])


def _quoted(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def render(identity: GitIdentity) -> bytes:
    return (
        "# written by claude-bottle: your git identity, and nothing else of your git config\n"
        f"[user]\n\tname = {_quoted(identity.name)}\n\temail = {_quoted(identity.email)}\n"
    ).encode()


def seed_git_identity(bottle_home: Path, identity: GitIdentity | None) -> None:
    """Write ~/.gitconfig in the bottle's home, unless the name exists in any form."""
    if identity is None:
        return
    try:
        fd = os.open(
            bottle_home / ".gitconfig", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644
        )
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as handle:
        handle.write(render(identity))
