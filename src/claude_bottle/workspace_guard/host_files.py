"""Workspace files that a tool on the host later runs or obeys, which no mount can guard.

The bottle must be able to write them (they are ordinary project files), so they are
watched instead: at exit `run` lists each one created or changed (`host_tools = "warn"`,
the default) or puts back what was there at launch (`host_tools = "revert"`).
"""

from __future__ import annotations

import base64
import contextlib
import os
import stat
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from claude_bottle.errors import LaunchError
from claude_bottle.workspace_guard import safefs

# Files honoured wherever they are in the tree (git, direnv, pre-commit, Claude Code, MCP).
WATCHED_NAMES = frozenset(
    {
        ".gitmodules",
        ".gitattributes",
        ".envrc",
        ".pre-commit-config.yaml",
        ".mcp.json",
        ".devcontainer.json",
    }
)
# Directories whose every file is honoured by an editor, a container tool or a hook manager.
WATCHED_DIRS = frozenset({".vscode", ".idea", ".devcontainer", ".claude", ".husky", ".githooks"})
# Inside a git dir the guard does not cover (a nested repository, or one the bottle created):
# what git reads as configuration or runs.
GIT_DIR_WATCHED = frozenset(
    {"config", "config.worktree", "commondir", "gitdir", "hooks", "info", "modules", "worktrees"}
)
MAX_FILE = 16 << 20
MAX_SNAPSHOT = 64 << 20
MAX_ENTRIES = 2_000_000


class Watch(NamedTuple):
    """Which paths to watch: the guarded git dir (skipped) and extra prefixes the host's
    own git config points into the workspace (a `core.hooksPath`, an included file)."""

    guarded_git_dir: str | None  # relative to the workspace, e.g. ".git"
    extra: tuple[str, ...] = ()

    def watched(self, rel: str) -> bool:
        if self.guarded_git_dir and (
            rel == self.guarded_git_dir or rel.startswith(self.guarded_git_dir + "/")
        ):
            return False
        if any(rel == p or rel.startswith(p + "/") for p in self.extra):
            return True
        parts = rel.split("/")
        if parts[-1] in WATCHED_NAMES or parts[-1] == ".git":
            return True
        for index, part in enumerate(parts[:-1]):
            if part in WATCHED_DIRS:
                return True
            if part == ".git" and parts[index + 1] in GIT_DIR_WATCHED:
                return True
        return False


class Saved(NamedTuple):
    kind: str  # "file" | "link"
    mode: int
    data: bytes  # content, or the link's target


def snapshot(workspace: str, watch: Watch) -> dict[str, Saved]:
    """The watched files as they are at launch (for `revert`); fails closed when too big."""
    saved: dict[str, Saved] = {}
    total = 0
    root = safefs.open_dir(workspace)
    try:
        skip = frozenset({watch.guarded_git_dir} if watch.guarded_git_dir else ())
        for entry in safefs.walk(root, MAX_ENTRIES, skip=skip):
            if not watch.watched(entry.rel) or stat.S_ISDIR(entry.st.st_mode):
                continue
            item = _save(entry)
            if item is None:
                continue
            total += len(item.data)
            if total > MAX_SNAPSHOT:
                raise safefs.TooLarge(f"watched files exceed {MAX_SNAPSHOT >> 20} MiB")
            saved[entry.rel] = item
    except (OSError, safefs.TooLarge) as exc:
        raise LaunchError(
            f"cannot record the workspace's host-tool files for host_tools = revert: {exc}",
            'set [bottle] host_tools = "warn" to list changes at exit instead',
        ) from exc
    finally:
        os.close(root)
    return saved


def _save(entry: safefs.Entry) -> Saved | None:
    if stat.S_ISLNK(entry.st.st_mode):
        target = os.readlink(entry.name, dir_fd=entry.dir_fd)
        return Saved("link", 0, os.fsencode(target))
    if stat.S_ISREG(entry.st.st_mode):
        data = safefs.read_at(entry.dir_fd, entry.name, MAX_FILE)
        return Saved("file", stat.S_IMODE(entry.st.st_mode) & 0o777, data)
    return None


def current(workspace: str, rels: Iterable[str]) -> dict[str, Saved | None]:
    """What each path holds now (None: absent or not a file or link)."""
    result: dict[str, Saved | None] = {}
    for rel in rels:
        parent, _, name = rel.rpartition("/")
        try:
            fd = safefs.open_dir_beneath(workspace, parent)
        except (OSError, ValueError):
            result[rel] = None
            continue
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            result[rel] = _save(safefs.Entry(rel, fd, name, st))
        except (OSError, safefs.TooLarge):
            result[rel] = None
        finally:
            os.close(fd)
    return result


def revert(
    workspace: str, saved: Mapping[str, Saved], candidates: Iterable[str]
) -> tuple[list[str], list[str]]:
    """Put back each path that differs from launch: (reverted, could not be reverted)."""
    reverted: list[str] = []
    failed: list[str] = []
    for rel, found in current(workspace, candidates).items():
        before = saved.get(rel)
        if found == before:
            continue
        try:
            _restore(workspace, rel, before)
            reverted.append(rel)
        except (OSError, ValueError):
            failed.append(rel)
    return reverted, failed


def _restore(workspace: str, rel: str, before: Saved | None) -> None:
    parent, _, name = rel.rpartition("/")
    if before is None:
        fd = safefs.open_dir_beneath(workspace, parent)
    else:
        fd = _make_parents(workspace, parent)
    try:
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise OSError(f"{rel} is now a directory")
            os.unlink(name, dir_fd=fd)
        if before is None:
            return
        if before.kind == "link":
            os.symlink(os.fsdecode(before.data), name, dir_fd=fd)
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        out = os.open(name, flags, before.mode, dir_fd=fd)
        with os.fdopen(out, "wb") as handle:
            handle.write(before.data)
            os.fchmod(handle.fileno(), before.mode)
    finally:
        os.close(fd)


def _make_parents(workspace: str, parent: str) -> int:
    fd = safefs.open_dir(workspace)
    try:
        for part in [p for p in parent.split("/") if p]:
            if part == "..":
                raise ValueError(parent)
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            child = safefs.open_dir(part, fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def saved_to_json(saved: Mapping[str, Saved]) -> dict[str, list[object]]:
    return {rel: [s.kind, s.mode, base64.b64encode(s.data).decode()] for rel, s in saved.items()}


def saved_from_json(raw: Mapping[str, list[object]]) -> dict[str, Saved]:
    return {
        rel: Saved(str(kind), int(str(mode)), base64.b64decode(str(data)))
        for rel, (kind, mode, data) in raw.items()
    }
