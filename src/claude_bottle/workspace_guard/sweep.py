"""The exit-time walk: find what the bottle changed since launch, clear setuid/setgid bits
and file capabilities it left, and name the host-tool files it created or changed.

"Since launch" is the inode change time: the kernel sets it on every create, write,
chmod and xattr change, and no call sets it back, so a file the bottle touched cannot
hide. Files older than the launch are the user's and are left alone (a setuid file the
user keeps in the workspace stays). The walk never follows a link (`safefs`).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import NamedTuple

from claude_bottle.workspace_guard import safefs

CAPABILITY_XATTR = "security.capability"
MAX_ENTRIES = 2_000_000


class SweepResult(NamedTuple):
    changed: list[str]  # watched paths created or changed since launch (relative)
    cleared: list[str]  # files whose setuid/setgid bits or capabilities were removed
    failed: list[str]  # files that kept them (with the reason)
    incomplete: str  # why the walk stopped early, or ""


def sweep(
    root: str,
    since_ns: int,
    watched: Callable[[str], bool] = lambda rel: False,
) -> SweepResult:
    changed: list[str] = []
    cleared: list[str] = []
    failed: list[str] = []
    try:
        root_fd = safefs.open_dir(root)
    except OSError as exc:
        return SweepResult([], [], [], f"{root}: {exc.strerror}")
    incomplete = ""
    try:
        for entry in safefs.walk(root_fd, MAX_ENTRIES):
            if entry.st.st_ctime_ns < since_ns:
                continue
            if watched(entry.rel) and not stat.S_ISDIR(entry.st.st_mode):
                changed.append(entry.rel)
            if stat.S_ISREG(entry.st.st_mode):
                _clear_privileges(entry, cleared, failed)
    except (OSError, safefs.TooLarge) as exc:
        incomplete = str(exc)
    finally:
        os.close(root_fd)
    return SweepResult(changed, cleared, failed, incomplete)


def _clear_privileges(entry: safefs.Entry, cleared: list[str], failed: list[str]) -> None:
    """Remove setuid/setgid bits and the capability xattr, on this very inode only."""
    try:
        with safefs.opened_path(entry.dir_fd, entry.name) as (fd, st):
            if not stat.S_ISREG(st.st_mode) or st.st_ino != entry.st.st_ino:
                return
            path = safefs.proc_path(fd)  # the inode behind fd: no name is looked up again
            touched = False
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
                touched = True
            if _has_capabilities(path):
                os.removexattr(path, CAPABILITY_XATTR)
                touched = True
            if touched:
                cleared.append(entry.rel)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            failed.append(f"{entry.rel} ({exc.strerror})")


def _has_capabilities(path: str) -> bool:
    try:
        os.getxattr(path, CAPABILITY_XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise
    return True
