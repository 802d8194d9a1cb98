"""The bottle's git config: the user's identity in ~/.gitconfig, the git gate's URL
rewrites in a system-level file the bottle can read and not change.

`git commit` inside needs `user.name` and `user.email`. The host's
~/.gitconfig may also hold credential helpers, `insteadOf` rules with tokens
in URLs and `include` paths, so only those two values are read (from
`git config --global`, as the user's git resolves them) and written into a
fresh ~/.gitconfig in the bottle's home. `[bottle] git_identity = false`
turns this off.

Each `[git.remotes.NAME]` adds `url.<gate>.insteadOf` lines for every spelling of the
remote's URL (https, scp-style and ssh://), so the real URL works unchanged inside and
goes to the bundle's git gate (`bundle/git_gate.py`) at `gate_url(NAME)`. They are not in
~/.gitconfig (written once, then the agent's own): the bundle publishes them as
`gitconfig` beside its sockets, read-only in the bottle at `GATE_GIT_CONFIG`, and the
bottle's environment names that file as git's system config (`GIT_CONFIG_SYSTEM`; it
includes the image's or host's own /etc/gitconfig first). So they hold whatever the
home's file says, on every start. The agent can still unset the variable or add rewrites
of its own: then its git goes through the egress proxy, which refuses every push.

The bottle's home is a host directory the agent writes to: the file is
created with O_EXCL|O_NOFOLLOW, and a name that already exists is left alone
(as claude_home does).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from claude_bottle.bottle_env import GATE_GIT_CONFIG, GIT_PORT

GIT_TIMEOUT = 5.0
SYSTEM_GIT_CONFIG = "/etc/gitconfig"  # the image's or host's own, still read inside
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


class GateRewrite(NamedTuple):
    """A configured remote as the bottle's git sees it: its name and real URL."""

    name: str
    url: str


def gate_url(name: str) -> str:
    return f"http://127.0.0.1:{GIT_PORT}/{name}.git"


def url_spellings(url: str) -> list[str]:
    """The ways a user writes the same repository: https, scp-style ssh and ssh://."""
    if "://" in url:
        parts = urlsplit(url)
        user = f"{parts.username}@" if parts.username else ""
        host, path = parts.hostname or "", parts.path.lstrip("/")
        port = f":{parts.port}" if parts.port else ""
    else:  # scp-style: [user@]host:path
        authority, _, path = url.partition(":")
        user, _, host = authority.rpartition("@")
        user, port = f"{user}@" if user else "", ""
    bases = {path, path.removesuffix(".git")}
    spellings = {url}
    for base in sorted(bases):
        spellings.add(f"https://{host}/{base}")
        spellings.add(f"{user or 'git@'}{host}:{base}")
        spellings.add(f"ssh://{user or 'git@'}{host}{port}/{base}")
        if port:
            spellings.add(f"https://{host}{port}/{base}")
    return sorted(spellings)


def render(identity: GitIdentity) -> bytes:
    lines = [
        "# written by claude-bottle: your git identity, nothing else",
        "[user]",
        f"\tname = {_quoted(identity.name)}",
        f"\temail = {_quoted(identity.email)}",
    ]
    return ("\n".join(lines) + "\n").encode()


def render_gate_config(rewrites: Sequence[GateRewrite]) -> bytes:
    """The bottle's system-level git config: the gate's rewrites after the system's own."""
    lines = [
        "# written by claude-bottle's bundle: the git gate's URL rewrites (read-only here)",
        "[include]",
        f"\tpath = {_quoted(SYSTEM_GIT_CONFIG)}",
    ]
    for rewrite in rewrites:
        lines.append(f"[url {_quoted(gate_url(rewrite.name))}]")
        lines += [f"\tinsteadOf = {_quoted(spelling)}" for spelling in url_spellings(rewrite.url)]
    return ("\n".join(lines) + "\n").encode()


def gate_config_env(rewrites: Sequence[GateRewrite]) -> dict[str, str]:
    """The bottle's variable naming the gate's config as git's system config."""
    return {"GIT_CONFIG_SYSTEM": GATE_GIT_CONFIG} if rewrites else {}


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
