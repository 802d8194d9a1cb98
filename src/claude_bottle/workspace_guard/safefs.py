"""Reading and changing files a bottle could write, without ever following its symlinks.

Everything under the workspace (and the bottle's private git directory) is hostile: the
agent may have put a symlink, a FIFO or a huge file wherever the host looks. Every walk
here goes through directory file descriptors opened with O_NOFOLLOW, every file is
opened with O_NOFOLLOW | O_NONBLOCK and checked to be a regular file, and every read is
bounded.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from typing import NamedTuple

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
MAX_DEPTH = 256  # each level holds a directory fd open


class TooLarge(Exception):
    """A file or a tree is bigger than the caller allows."""


class Entry(NamedTuple):
    """One directory entry met on a walk: its path relative to the root and its lstat."""

    rel: str
    dir_fd: int  # valid only while the walk is at this entry
    name: str
    st: os.stat_result


def open_dir(path: str, dir_fd: int | None = None) -> int:
    """A directory fd for `path` (its last component must not be a symlink)."""
    return os.open(path, DIR_FLAGS, dir_fd=dir_fd)


def open_dir_beneath(root: str, rel: str) -> int:
    """A directory fd for `root/rel`, following no symlink below `root`."""
    fd = open_dir(root)
    try:
        for part in _parts(rel):
            child = open_dir(part, fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _parts(rel: str) -> list[str]:
    parts = [p for p in rel.split("/") if p and p != "."]
    if ".." in parts:
        raise ValueError(f"path leaves its root: {rel!r}")
    return parts


def read_at(dir_fd: int, name: str, limit: int) -> bytes:
    """A regular file's bytes; OSError if it is missing, a link or not regular."""
    fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{name}: not a regular file")
        if st.st_size > limit:
            raise TooLarge(f"{name}: {st.st_size} bytes (limit {limit})")
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise TooLarge(f"{name}: grew past {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_beneath(root: str, rel: str, limit: int) -> bytes | None:
    """`root/rel` read without following links; None if it is absent or not a file."""
    parent, _, name = rel.rpartition("/")
    try:
        fd = open_dir_beneath(root, parent)
    except (OSError, ValueError):
        return None
    try:
        return read_at(fd, name, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def walk(root_fd: int, max_entries: int, skip: frozenset[str] = frozenset()) -> Iterator[Entry]:
    """Every entry below `root_fd`, depth first, directories before their contents.

    Symlinks are reported, never entered. `skip` names paths (relative) not descended
    into. Raises TooLarge after `max_entries`, so a hostile tree cannot keep the host busy,
    and at the end when some directory was deeper than MAX_DEPTH (the rest was walked).
    """
    seen = 0
    too_deep: list[str] = []

    def visit(fd: int, prefix: str, depth: int) -> Iterator[Entry]:
        nonlocal seen
        if depth > MAX_DEPTH:
            too_deep.append(prefix)
            return
        with os.scandir(fd) as entries:
            listing = [(e.name, e.stat(follow_symlinks=False)) for e in entries]
        for name, st in listing:
            seen += 1
            if seen > max_entries:
                raise TooLarge(f"more than {max_entries} entries")
            rel = f"{prefix}{name}"
            yield Entry(rel, fd, name, st)
            if stat.S_ISDIR(st.st_mode) and rel not in skip:
                try:
                    child = open_dir(name, fd)
                except OSError:
                    continue  # gone or replaced meanwhile: nothing to look at
                try:
                    yield from visit(child, f"{rel}/", depth + 1)
                finally:
                    os.close(child)

    yield from visit(root_fd, "", 0)
    if too_deep:
        raise TooLarge(f"{len(too_deep)} directories deeper than {MAX_DEPTH} levels not read")


def proc_path(fd: int) -> str:
    """A path naming exactly the file behind `fd` (an O_PATH fd), for calls without an fd form."""
    return f"/proc/self/fd/{fd}"


@contextlib.contextmanager
def opened_path(dir_fd: int, name: str) -> Iterator[tuple[int, os.stat_result]]:
    """An O_PATH fd on `name` in `dir_fd` (never through a symlink) and its stat."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        yield fd, os.fstat(fd)
    finally:
        os.close(fd)
