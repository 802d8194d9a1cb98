"""Host paths that hold credentials or history: never shown in a bottle, on any backend.

`[bottle] read_only` grants are resolved here, so every backend refuses the same ones;
the namespace backend's toolchain binds are checked against the same list.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from pathlib import Path

from claude_bottle.errors import ConfigError

# Directories that hold credentials or history; nothing that contains one is ever bound.
SECRET_PATHS = (
    ".ssh",
    ".aws",
    ".gnupg",
    ".config/gh",
    ".config/gcloud",
    ".azure",
    ".kube",
    ".docker",
    ".netrc",
    ".claude",
    ".claude.json",
    ".git-credentials",
    ".npmrc",
    ".pypirc",
    ".gitconfig",
    ".config/git",
    ".config/pip",
    ".pip",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".gem/credentials",
    ".bash_history",
    ".zsh_history",
    ".python_history",
    ".local/share/keyrings",
    ".password-store",
    ".vault-token",
)


@functools.lru_cache(maxsize=4)
def _secrets(home: str) -> tuple[frozenset[str], dict[str, str]]:
    """The secret paths, and each of them and their ancestors -> a secret they hold."""
    secrets = [os.path.join(home, relative) for relative in SECRET_PATHS]
    holders: dict[str, str] = {}
    for secret in secrets:
        directory = secret
        while directory not in holders:
            holders[directory] = secret
            parent = os.path.dirname(directory)
            if parent == directory:
                break
            directory = parent
    return frozenset(secrets), holders


def exposes_secret(path: Path, home: Path) -> str | None:
    """The secret path that binding `path` would reveal (it holds one, or is inside one)."""
    secrets, holders = _secrets(str(home))
    shown = os.path.normpath(str(path))
    if shown in holders:
        return holders[shown]
    while True:
        if shown in secrets:
            return shown
        parent = os.path.dirname(shown)
        if parent == shown:
            return None
        shown = parent


def grant_read_only(raw_paths: Iterable[str], home: Path) -> list[str]:
    """Resolve `bottle.read_only` grants; refuse any that would reveal a credential."""
    granted_paths = []
    for raw in raw_paths:
        granted = Path(os.path.expanduser(raw)).resolve()
        secret = exposes_secret(granted, home)
        if secret is not None:
            raise ConfigError(
                f"bottle.read_only: {raw} would expose {secret} to the bottle",
                "grant a narrower path that holds no credentials",
            )
        if not granted.exists():
            raise ConfigError(f"bottle.read_only: {raw} does not exist", "fix or remove the path")
        granted_paths.append(str(granted))
    return granted_paths
