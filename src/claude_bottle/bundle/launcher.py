"""Start a bundle as a host process and wait until it serves (shared by host-process backends)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

from claude_bottle.errors import LaunchError

READY_TIMEOUT = 15.0


class PendingBundle:
    """A bundle process that has been started but may not serve yet."""

    def __init__(self, process: subprocess.Popen[bytes], ready_fd: int, log_file: Path) -> None:
        self.process = process
        self._ready_fd = ready_fd
        self._log_file = log_file

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> subprocess.Popen[bytes]:
        try:
            ready, _, _ = select.select([self._ready_fd], [], [], timeout)
            answer = os.read(self._ready_fd, 64) if ready else b""
        finally:
            os.close(self._ready_fd)
        if answer.startswith(b"ready"):
            return self.process
        stop_process(self.process)
        tail = self._log_file.read_text(errors="replace").strip().splitlines()[-5:]
        raise LaunchError(
            "the bundle (egress proxy) did not start" + (": " + " | ".join(tail) if tail else ""),
            f"see {self._log_file}",
        )


def spawn_bundle(settings_file: Path, log_file: Path, *, die_with_parent: bool) -> PendingBundle:
    """Start the bundle process; call `.wait_ready()` before the bottle's command runs."""
    read_fd, write_fd = os.pipe()
    argv = [
        sys.executable,
        "-m",
        "claude_bottle.bundle.server",
        str(settings_file),
        "--ready-fd",
        str(write_fd),
    ]
    if die_with_parent:
        argv += ["--parent-pid", str(os.getpid())]
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=(write_fd,),
            start_new_session=True,
        )
    os.close(write_fd)
    return PendingBundle(process, read_fd, log_file)


def start_bundle(
    settings_file: Path, log_file: Path, *, die_with_parent: bool
) -> subprocess.Popen[bytes]:
    return spawn_bundle(settings_file, log_file, die_with_parent=die_with_parent).wait_ready()


def stop_process(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if process.poll() is not None:
        return
    exited = _exit_notifier(process.pid)
    try:
        process.terminate()
        if exited is not None:
            select.select([exited], [], [], timeout)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    finally:
        if exited is not None:
            os.close(exited)


def _exit_notifier(pid: int) -> int | None:
    """A pidfd that turns readable when `pid` exits (Linux 5.3+), else None.

    Popen.wait(timeout) polls with sleeps growing to 50 ms: a bundle that exits in
    5 ms would cost up to 50 more on every teardown.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError:
        return None
    return fd
