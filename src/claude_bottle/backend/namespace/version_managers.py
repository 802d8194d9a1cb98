"""What version managers kept under the home need beyond the PATH: pyenv and rustup.

A pyenv shim is a script that runs `$PYENV_ROOT/libexec/pyenv exec PROGRAM`,
which picks a version (`PYENV_VERSION`, else the nearest `.python-version`
from the working directory up, else `$PYENV_ROOT/version`) and runs that
version's program. A rustup proxy (`~/.cargo/bin/cargo`) reads
`$RUSTUP_HOME/settings.toml` and runs a toolchain from
`$RUSTUP_HOME/toolchains`. Each needs those files read-only, and nothing
else of the directory they live in (pyenv's other versions, rustup's
downloads).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

# The parts of $PYENV_ROOT that `pyenv exec` reads (besides the selected versions).
# Where version managers keep whole interpreters, one per directory (relative to the home):
# a venv in the workspace may name one of these as its base, and only one of these.
INTERPRETER_STORES = (".pyenv/versions", ".local/share/uv/python")
PYENV_PARTS = ("bin", "libexec", "shims", "plugins", "pyenv.d", "version")
RUSTUP_PARTS = ("settings.toml", "toolchains")
_VERSION_FILE_LIMIT = 4096  # a .python-version is a few names; read no more than this
_MAX_VERSIONS = 16


def pyenv_root(environ: Mapping[str, str], path_entries: Sequence[Path]) -> Path | None:
    """$PYENV_ROOT, or the root whose `shims` directory is on PATH (as pyenv's installer sets
    it up); None when pyenv is not in use."""
    configured = environ.get("PYENV_ROOT")
    if configured and Path(configured).is_absolute():
        return Path(configured)
    for entry in path_entries:
        if entry.name == "shims" and (entry.parent / "libexec" / "pyenv").is_file():
            return entry.parent
    return None


def read_head(path: Path, limit: int) -> str | None:
    """The first `limit` bytes of a regular file; None for anything else. The file may be
    in the workspace, where the agent can make it a FIFO (an open would block) or huge."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit).decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_names(path: Path) -> list[str]:
    """Version names in a pyenv version file: whitespace-separated, `#` comments skipped."""
    text = read_head(path, _VERSION_FILE_LIMIT) or ""
    names = []
    for line in text.splitlines():
        names += [word for word in line.split("#", 1)[0].split() if word]
    return names[:_MAX_VERSIONS]


def pyenv_version_file(root: Path, environ: Mapping[str, str], workspace: Path) -> Path | None:
    """The file that selects the version in `workspace`, as `pyenv version-file` finds it;
    None when PYENV_VERSION decides."""
    if environ.get("PYENV_VERSION"):
        return None
    for directory in (workspace, *workspace.parents):
        candidate = directory / ".python-version"
        if candidate.is_file():
            return candidate
    return root / "version"


def pyenv_versions(root: Path, environ: Mapping[str, str], workspace: Path) -> list[Path]:
    """The installed versions pyenv selects in `workspace` (a name may be a prefix such as
    `3.12`, which pyenv takes as the newest installed 3.12.x; all are bound, they are few)."""
    selected = environ.get("PYENV_VERSION")
    if selected:
        names = [n for n in selected.split(":") if n][:_MAX_VERSIONS]
    else:
        version_file = pyenv_version_file(root, environ, workspace)
        names = _read_names(version_file) if version_file is not None else []
    versions = root / "versions"
    found: list[Path] = []
    for name in names:
        if name == "system" or "/" in name or name in (".", ".."):
            continue
        exact = versions / name
        if exact.is_dir():
            found.append(exact)
            continue
        try:
            installed = sorted(p for p in versions.iterdir() if p.name.startswith(f"{name}."))
        except OSError:
            continue
        found += installed[:_MAX_VERSIONS]
    return found


def pyenv_paths(
    environ: Mapping[str, str], path_entries: Sequence[Path], workspace: Path
) -> Iterator[tuple[Path, str]]:
    """(host path, reason) for everything `pyenv exec` reads in `workspace`."""
    root = pyenv_root(environ, path_entries)
    if root is None:
        return
    for part in PYENV_PARTS:
        if (root / part).exists():
            yield root / part, "pyenv"
    version_file = pyenv_version_file(root, environ, workspace)
    if version_file is not None and version_file.is_file():
        yield version_file, "pyenv version file"
    for version in pyenv_versions(root, environ, workspace):
        yield version, f"pyenv {version.name}"
        real = version.resolve()
        if real != version:  # a pyenv-virtualenv name links into versions/<base>/envs/
            yield real, f"pyenv {version.name}"


def pyenv_libexec(shim: Path, environ: Mapping[str, str], path_entries: Sequence[Path]) -> Path:
    """What a pyenv shim execs; the shim itself names no other file."""
    root = pyenv_root(environ, path_entries) or shim.parent.parent
    return root / "libexec" / "pyenv"


def is_pyenv_shim(path: Path, environ: Mapping[str, str], path_entries: Sequence[Path]) -> bool:
    root = pyenv_root(environ, path_entries)
    return root is not None and path.parent.name == "shims" and path.parent.parent == root


def interpreter_stores(home: Path, environ: Mapping[str, str]) -> list[Path]:
    stores = [home / store for store in INTERPRETER_STORES]
    for variable, sub in (("PYENV_ROOT", "versions"), ("UV_PYTHON_INSTALL_DIR", "")):
        configured = environ.get(variable)
        if configured and Path(configured).is_absolute():
            stores.append(Path(configured) / sub if sub else Path(configured))
    return stores


def rustup_paths(
    environ: Mapping[str, str], home: Path, path_entries: Sequence[Path]
) -> Iterator[tuple[Path, str]]:
    """(host path, reason) for rustup's proxies (cargo, rustc, …) when one is on PATH."""
    if not any((entry / "rustup").is_file() for entry in path_entries):
        return
    configured = environ.get("RUSTUP_HOME")
    root = Path(configured) if configured and Path(configured).is_absolute() else home / ".rustup"
    for part in RUSTUP_PARTS:
        if (root / part).exists():
            yield root / part, "rustup"
