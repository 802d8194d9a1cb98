"""Where bottles keep their records (state) and their sockets (runtime).

State outlives a bottle so `logs` works after it exits; runtime holds only
sockets and pids and is removed at teardown. Unix socket paths are limited
to 108 bytes, so the runtime root is kept short.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from claude_bottle.errors import ConfigError, LaunchError

_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


def validate_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"bottle name {name!r} is not valid",
            "use 1-63 characters from a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
        )
    return name


def state_root() -> Path:
    override = os.environ.get("CLAUDE_BOTTLE_STATE_DIR")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_state_dir("claude-bottle"))


def cache_root() -> Path:
    """Derived data that is safe to lose (compiled DLP databases)."""
    override = os.environ.get("CLAUDE_BOTTLE_CACHE_DIR")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("claude-bottle"))


def runtime_root() -> Path:
    override = os.environ.get("CLAUDE_BOTTLE_RUNTIME_DIR")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir():
        return Path(xdg) / "claude-bottle"
    return Path(f"/tmp/claude-bottle-{os.getuid()}")


def bottles_dir() -> Path:
    return state_root() / "bottles"


def state_dir(name: str) -> Path:
    return bottles_dir() / validate_name(name)


def runtime_dir(name: str) -> Path:
    path = runtime_root() / validate_name(name)
    # The longest socket we create is <runtime>/<name>/bottle/proxy.sock.
    if len(str(path / "bottle" / "gateway.sock")) > _SOCKET_PATH_MAX:
        raise ConfigError(
            f"runtime directory {path} is too long for unix sockets (limit 108 bytes)",
            "set CLAUDE_BOTTLE_RUNTIME_DIR to a shorter path, or use a shorter --name",
        )
    return path


def claim_runtime_dir(name: str, path: Path) -> Path:
    """Create a bottle's runtime dir; one that exists means the bottle runs or crashed."""

    if path.exists():
        raise LaunchError(
            f"bottle {name} already has runtime files in {path}",
            "it may be running (claude-bottle ls); otherwise: claude-bottle cleanup",
        )
    make_private_dir(path.parent)
    return make_private_dir(path)


def make_private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` whole or not at all (a temporary file in the same
    directory, synced, then renamed over it), with `mode` from the start."""
    import contextlib
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a crash
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def remove_runtime_dir(name: str, recorded: str) -> None:
    """Remove a stopped bottle's runtime dir, if the record names the one its name implies.

    The bottle can write inside that dir (its sockets are there), so nothing in it is
    followed: a link at the top is removed as a link, and rmtree does not follow links.
    """
    import shutil

    if not _NAME_RE.fullmatch(name):
        return
    path = runtime_root() / name
    if recorded != str(path):
        return
    if path.is_symlink():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
