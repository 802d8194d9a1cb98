"""Fork the bottle's bundle before the rest of `claude-bottle run` loads (Linux).

Whatever the CLI imports before the fork, the bundle's start waits for as well, so
this module loads nothing but `os` and `sys` (tests/unit/test_launcher.py checks it).
The child imports the bundle server and serves; the parent goes on loading the CLI,
and `launcher` adopts what `take()` returns.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # `typing` itself is one of the imports this module avoids
if TYPE_CHECKING:
    from typing import NoReturn


class Forked:
    """A bundle forked by `fork_bundle`, waiting for its settings on `handoff_fd`."""

    def __init__(
        self, pid: int, handoff_fd: int, ready_fd: int, log_fd: int, die_with_parent: bool
    ) -> None:
        self.pid = pid
        self.handoff_fd = handoff_fd
        self.ready_fd = ready_fd
        self.log_fd = log_fd  # what it says before it learns its log file
        self.die_with_parent = die_with_parent


_forked: Forked | None = None


def fork_bundle(*, die_with_parent: bool) -> bool:
    """Fork a bundle for this process's next bottle; False where forking is not safe
    (not Linux, or other threads running) or failed: it is then started by exec."""
    global _forked
    threading = sys.modules.get("threading")
    if not sys.platform.startswith("linux") or (threading and threading.active_count() > 1):
        return False
    opened: list[int] = []
    try:
        opened += os.pipe()
        opened += os.pipe()
        opened.append(os.memfd_create("claude-bottle-bundle-early", os.MFD_CLOEXEC))
        parent = os.getpid()
        pid = os.fork()
    except OSError:  # out of descriptors or processes, or no memfd (a seccomp filter)
        for fd in opened:
            os.close(fd)
        return False
    handoff_r, handoff_w, ready_r, ready_w, log_fd = opened
    if pid == 0:
        _serve_in_child(handoff_r, ready_w, log_fd, parent if die_with_parent else None)
    os.close(handoff_r)
    os.close(ready_w)
    _forked = Forked(pid, handoff_w, ready_r, log_fd, die_with_parent)
    return True


def take() -> Forked | None:
    """The bundle `fork_bundle` started, once."""
    global _forked
    forked, _forked = _forked, None
    return forked


def _serve_in_child(handoff_fd: int, ready_fd: int, log_fd: int, parent: int | None) -> NoReturn:
    try:
        from claude_bottle.forked import exit_after
    except BaseException:
        os._exit(1)  # never back into the parent's code

    def serve() -> None:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        _close_fds_except({0, 1, 2, handoff_fd, ready_fd})
        # The parent's streams may not be its fds 1 and 2 (pytest's capture is not).
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        from claude_bottle.bundle import server

        server.serve(handoff_fd, ready_fd=ready_fd, parent_pid=parent)

    exit_after(serve, returned=1)  # the bundle leaves with os._exit: a return is a failure


def _close_fds_except(keep: set[int]) -> None:
    """Close every descriptor but `keep`: the child must not hold the CLI's pipe ends
    (an unused prestart exits when its handoff pipe closes) nor anything inherited."""
    low = 0
    for fd in sorted(keep):
        if fd > low:  # os.closerange(n, n) would close everything from n up
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))
