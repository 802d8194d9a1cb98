"""Which host paths the bottle needs read-only so the command and the relay can run.

The bottle masks /home, /root and $HOME, yet people keep toolchains there
(nvm/fnm node, pyenv/uv Python, a native `claude` in ~/.local/bin). We bind
exactly what the executables need — the file, its symlink target, its
interpreter, and the install prefix when that prefix is specific to the
toolchain — and never a directory that holds credentials.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

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
    ".bash_history",
    ".zsh_history",
    ".python_history",
    ".local/share/keyrings",
    ".password-store",
    ".vault-token",
)
# A prefix this shallow under a masked root is shared by many tools (~/.local): bind files only.
_MIN_PREFIX_DEPTH = 2


# Container engines keep sockets (their own and other bottles') in their state dirs.
ENGINE_STATE = (Path("/var/lib/docker"), Path("/var/lib/containerd"))
# bwrap mounts fresh ones over these, so sockets below them are already out of sight.
_FRESH_MOUNTS = (Path("/tmp"), Path("/var/tmp"), Path("/run"), Path("/dev"), Path("/proc"))


def masked_roots(home: Path) -> tuple[Path, ...]:
    roots = [Path("/home"), Path("/root")]
    if not any(_is_within(home, r) for r in roots):
        roots.append(home)
    roots += [p for p in ENGINE_STATE if p.is_dir()]
    return tuple(roots)


def host_sockets(
    masked: Sequence[Path], proc_net_unix: Path = Path("/proc/net/unix")
) -> tuple[str, ...]:
    """Bound unix sockets of the host that the bottle would still see, to be hidden one by one."""
    try:
        lines = proc_net_unix.read_text(errors="replace").splitlines()[1:]
    except OSError:
        return ()
    hidden = (*_FRESH_MOUNTS, *masked)
    found: set[str] = set()
    for line in lines:
        fields = line.split(maxsplit=7)
        if len(fields) < 8 or not fields[7].startswith("/"):
            continue  # unnamed or abstract (abstract ones stay in the host's network namespace)
        # Judge (and cover) the real path: /var/run/x.sock is /run/x.sock, already hidden.
        path = Path(os.path.realpath(fields[7]))
        if any(_is_within(path, root) for root in hidden):
            continue
        try:
            if stat.S_ISSOCK(path.lstat().st_mode):
                found.add(str(path))
        except OSError:
            continue
    return tuple(sorted(found))


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def exposes_secret(path: Path, home: Path) -> str | None:
    """The secret path that binding `path` would reveal, if any."""
    for relative in SECRET_PATHS:
        secret = home / relative
        if _is_within(secret, path) or _is_within(path, secret):
            return str(secret)
    return None


def grant_read_only(raw_paths: Iterable[str], home: Path) -> list[str]:
    """Resolve `bottle.read_only` grants; refuse any that would reveal a credential."""
    from claude_bottle.errors import ConfigError

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


def _interpreter(executable: Path) -> str | None:
    try:
        with executable.open("rb") as handle:
            head = handle.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].decode(errors="replace").split()
    if not words:
        return None
    if Path(words[0]).name == "env":
        rest = [w for w in words[1:] if not w.startswith("-")]
        return rest[0] if rest else None
    return words[0]


def _binds_for_file(path: Path, roots: Sequence[Path], home: Path) -> list[Path]:
    binds: list[Path] = []
    chain = [path]
    real = path.resolve()
    if real != path:
        chain.append(real)
    for item in chain:
        root = next((r for r in roots if _is_within(item, r)), None)
        if root is None:
            continue
        prefix = item.parent.parent if item.parent.name == "bin" else item.parent
        depth = len(prefix.relative_to(root).parts) if _is_within(prefix, root) else 0
        if depth >= _MIN_PREFIX_DEPTH and exposes_secret(prefix, home) is None:
            binds.append(prefix)
        elif exposes_secret(item, home) is None:
            binds.append(item)
    return binds


def resolve_binds(
    executables: Iterable[str],
    *,
    home: Path,
    path_env: str,
    python_prefix: Path | None = None,
) -> tuple[Path, ...]:
    """Read-only binds for these executables (names or paths), deduplicated, parents first."""
    roots = masked_roots(home)
    found: list[Path] = []
    pending = list(executables)
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        located = shutil.which(name, path=path_env) if os.sep not in name else name
        if not located:
            continue
        path = Path(os.path.abspath(located))
        found.extend(_binds_for_file(path, roots, home))
        interpreter = _interpreter(path.resolve())
        if interpreter:
            pending.append(interpreter)
    if python_prefix is not None and any(_is_within(python_prefix, r) for r in roots):
        found.append(python_prefix)
    unique = sorted(set(found), key=lambda p: (len(p.parts), str(p)))
    return tuple(p for p in unique if not any(q in p.parents for q in unique if q != p))
