"""Which host paths the bottle needs read-only so the command and the relay can run.

The bottle masks /home, /root and $HOME, yet people keep toolchains there
(pyenv shims and versions, nvm/fnm node, uv Pythons and tools, a native
`claude` in ~/.local/bin, rustup's cargo, ~/go/bin). We bind exactly what
they need: each PATH directory under a masked root (or the install prefix
it is the `bin` of), what its symlinks point to, the base interpreter of a
bound virtualenv, what a version manager selects, and the command's own
file, symlink target and interpreter — never a path that holds credentials,
and never a whole directory tools write to (the cargo registry, the Go module
cache and the npm cache are made in the bottle's own home).
"""

from __future__ import annotations

import itertools
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from claude_bottle.backend.namespace import version_managers
from claude_bottle.host_secrets import exposes_secret

# A prefix this shallow under the home is shared by many tools (~/.local, ~/go): bind files only.
_MIN_PREFIX_DEPTH = 2
_MAX_PATH_ENTRIES = 256
_MAX_DIR_ENTRIES = 4096  # symlinks looked at per PATH directory
_PYVENV_CFG_LIMIT = 4096
_MAX_WORKSPACE_VENVS = 8


# Container engines keep sockets (their own and other bottles') in their state dirs.
ENGINE_STATE = (Path("/var/lib/docker"), Path("/var/lib/containerd"))
# bwrap mounts fresh ones over these, so sockets below them are already out of sight.
_FRESH_MOUNTS = (Path("/tmp"), Path("/var/tmp"), Path("/run"), Path("/dev"), Path("/proc"))
# Of those, the ones where a host file may live that the bottle then does not see.
_EMPTIED = (Path("/tmp"), Path("/var/tmp"), Path("/run"))


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


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer if outer.endswith("/") else f"{outer}/")


def _is_within(path: Path, root: Path) -> bool:
    # On strings: pathlib's `parents` costs ~50x more, and this runs thousands of times a start.
    return _within(str(path), str(root))


class Bind(NamedTuple):
    """A host path shown read-only at the same path inside the bottle."""

    path: str
    reason: str  # what needs it, for the plan


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


def _pyvenv_home(prefix: Path) -> Path | None:
    """The `home` (the base interpreter's bin dir) a virtualenv's pyvenv.cfg names."""
    text = version_managers.read_head(prefix / "pyvenv.cfg", _PYVENV_CFG_LIMIT) or ""
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "home" and Path(value.strip()).is_absolute():
            return Path(value.strip())
    return None


def _walk_executables(
    names: Iterable[str], path_env: str, agent_chosen: Callable[[Path], bool]
) -> Iterator[tuple[str, Path]]:
    """Each of `names` found (a name on `path_env`, or a path), then the interpreter its
    shebang names, and so on, each once: (name, absolute path). The caller handles each
    before the walk goes on; an `agent_chosen` file's shebang is not followed."""
    pending = list(names)
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
        yield name, path
        if agent_chosen(path):
            continue
        interpreter = _interpreter(path.resolve())
        if interpreter:
            pending.append(interpreter)


class _Binds:
    """Collects read-only binds under the masked roots, refusing any that reveal a secret.

    The workspace is shown anyway, and the agent writes it: nothing in it is followed (a
    planted symlink or shebang would otherwise choose what of the home gets shown).
    """

    def __init__(self, home: Path, workspace: Path | None) -> None:
        self.home = home
        self.workspace = workspace
        self.roots = masked_roots(home)
        self.found: dict[Path, str] = {}
        self.resolved: dict[Path, Path] = {}

    def real(self, path: Path) -> Path:
        if path not in self.resolved:
            self.resolved[path] = path.resolve()
        return self.resolved[path]

    def agent_writable(self, path: Path) -> bool:
        return self.workspace is not None and (
            _is_within(path, self.workspace) or _is_within(self.real(path), self.workspace)
        )

    def root_of(self, path: Path) -> Path | None:
        return next((r for r in self.roots if _is_within(path, r)), None)

    def depth(self, path: Path) -> int:
        """Depth below the home (or below another user's home under a masked root)."""
        if _is_within(path, self.home):
            return len(path.relative_to(self.home).parts)
        root = self.root_of(path)
        return max(len(path.relative_to(root).parts) - 1, 0) if root is not None else 0

    def add(self, path: Path, reason: str) -> bool:
        if self.root_of(path) is None or self.agent_writable(path):
            return False
        # bwrap binds what a symlink points to: judge both names.
        if exposes_secret(path, self.home) or exposes_secret(self.real(path), self.home):
            return False
        self.found.setdefault(path, reason)
        return True

    def prefix_or_self(self, directory: Path, reason: str) -> None:
        """A `bin` directory deep enough under the home brings its install prefix (node's
        lib/node_modules, a venv's lib); anything else only itself."""
        if (
            directory.name == "bin"
            and self.depth(directory.parent) >= _MIN_PREFIX_DEPTH
            and self.add(directory.parent, reason)
        ):
            return
        self.add(directory, reason)

    def file(self, path: Path, reason: str) -> None:
        """An executable, and its symlink target: each with its prefix when that is specific."""
        chain = [path]
        real = self.real(path)
        if real != path:
            chain.append(real)
        for item in chain:
            if self.root_of(item) is None:
                continue
            prefix = item.parent.parent if item.parent.name == "bin" else item.parent
            if not (self.depth(prefix) >= _MIN_PREFIX_DEPTH and self.add(prefix, reason)):
                self.add(item, reason)

    def path_directory(self, entry: Path) -> None:
        """A PATH entry: the directory (or its prefix), its real location, and what its
        symlinks point to under the masked roots."""
        reason = f"PATH {entry}"
        real = self.real(entry)
        for directory in {entry, real}:
            if self.root_of(directory) is not None:
                self.prefix_or_self(directory, reason)
        try:
            with os.scandir(real) as scan:
                items = itertools.islice(scan, _MAX_DIR_ENTRIES)
                links = [item.path for item in items if item.is_symlink()]
        except OSError:
            return
        for link in links:
            target = Path(os.path.realpath(link))
            if self.root_of(target) is not None and not self.covered(target):
                self.file(target, reason)

    def covered(self, path: Path) -> bool:
        return any(_is_within(path, bound) for bound in self.found)

    def virtualenv_bases(self) -> None:
        """A bound virtualenv runs its base interpreter (uv tools, pyenv-virtualenv)."""
        pending = list(self.found)
        seen: set[Path] = set()
        while pending:
            prefix = pending.pop()
            if prefix in seen:
                continue
            seen.add(prefix)
            base = _pyvenv_home(prefix)
            if base is None or self.root_of(base) is None or self.covered(base):
                continue
            before = set(self.found)
            self.prefix_or_self(base, f"base interpreter of {prefix}")
            pending += [p for p in self.found if p not in before]

    def workspace_venv_bases(self, entries: Sequence[Path], stores: Sequence[Path]) -> None:
        """The base interpreter of a venv in the workspace (activated on PATH, or `.venv`,
        uv's default), so `.venv/bin/python` runs inside. The agent writes its pyvenv.cfg:
        only a whole interpreter in a version manager's store is ever bound for it."""
        if self.workspace is None:
            return
        venvs = [e.parent for e in entries if e.name == "bin" and self.agent_writable(e)]
        for venv in [*venvs, self.workspace / ".venv"][:_MAX_WORKSPACE_VENVS]:
            base = _pyvenv_home(venv)
            if base is None or base.name != "bin":
                continue
            prefix = self.real(base.parent)
            if any(prefix.parent == self.real(store) for store in stores):
                self.add(prefix, f"base interpreter of {venv}")

    def result(self) -> tuple[Bind, ...]:
        unique = sorted(self.found, key=lambda p: (len(p.parts), str(p)))
        kept: list[Path] = []
        for path in unique:  # parents first: a path inside a kept one is already shown
            if not any(_is_within(path, parent) for parent in kept):
                kept.append(path)
        return tuple(Bind(str(p), self.found[p]) for p in kept)


def _path_entries(path_env: str) -> list[Path]:
    entries = dict.fromkeys(e for e in path_env.split(os.pathsep) if e and os.path.isabs(e))
    return [Path(e) for e in itertools.islice(entries, _MAX_PATH_ENTRIES)]


def resolve_binds(
    executables: Iterable[str],
    *,
    home: Path,
    path_env: str,
    python_prefix: Path | None = None,
    environ: Mapping[str, str] | None = None,
    workspace: Path | None = None,
) -> tuple[Bind, ...]:
    """Read-only binds for the toolchains on `path_env` and these executables (names or
    paths), deduplicated, parents first."""
    environ = {} if environ is None else environ
    binds = _Binds(home, workspace)
    entries = _path_entries(path_env)
    for entry in entries:
        if binds.root_of(entry) is not None and not binds.agent_writable(entry) and entry.is_dir():
            binds.path_directory(entry)
    if workspace is not None:
        for path, reason in version_managers.pyenv_paths(environ, entries, workspace):
            binds.add(path, reason)
    for path, reason in version_managers.rustup_paths(environ, home, entries):
        binds.add(path, reason)
    binds.workspace_venv_bases(entries, version_managers.interpreter_stores(home, environ))
    # A file the agent writes is shown as it is; its shebang is the agent's to choose.
    for name, path in _walk_executables(executables, path_env, binds.agent_writable):
        if not binds.agent_writable(path):
            binds.file(path, f"runs {name}")
    if python_prefix is not None:
        binds.add(python_prefix, "the relay's Python")
    binds.virtualenv_bases()
    return binds.result()


class Unreachable(NamedTuple):
    """A host file the command needs that the bottle would not show."""

    path: str
    secret: str | None  # the credential path that keeps it hidden, if that is why
    is_command: bool = False  # the command's own file (else what it runs: interpreter, …)


def unreachable(
    program: str,
    *,
    home: Path,
    path_env: str,
    visible: Sequence[str],
    environ: Mapping[str, str] | None = None,
    workspace: Path | None = None,
) -> Unreachable | None:
    """The first file `program` needs (itself, its symlink target, its interpreters, a pyenv
    shim's pyenv) that is hidden in the bottle: under a masked root and not in `visible`.
    A file in the workspace ends the search: its shebang is the agent's to choose."""
    environ = {} if environ is None else environ
    roots = (*masked_roots(home), *_EMPTIED)
    shown = [Path(p) for p in visible]
    entries = _path_entries(path_env)

    def hidden(path: Path) -> bool:
        inside_mask = any(_is_within(path, r) for r in roots)
        return inside_mask and not any(_is_within(path, v) for v in shown)

    agent_chosen: set[Path] = set()
    for name, path in _walk_executables([program], path_env, agent_chosen.__contains__):
        needed = [path, path.resolve()]
        if version_managers.is_pyenv_shim(path, environ, entries):
            needed.append(version_managers.pyenv_libexec(path, environ, entries))
        for item in needed:
            if hidden(item):
                is_command = name == program and item == needed[0]
                return Unreachable(str(item), exposes_secret(item, home), is_command)
        if workspace is not None and any(_is_within(item, workspace) for item in needed):
            agent_chosen.add(path)
    return None
