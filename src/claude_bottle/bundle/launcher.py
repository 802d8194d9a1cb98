"""Start a bundle as a host process and wait until it serves (shared by host-process backends)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

from claude_bottle.errors import LaunchError

READY_TIMEOUT = 15.0


def start_bundle(
    settings_file: Path, log_file: Path, *, die_with_parent: bool
) -> subprocess.Popen[bytes]:
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
    try:
        ready, _, _ = select.select([read_fd], [], [], READY_TIMEOUT)
        answer = os.read(read_fd, 64) if ready else b""
    finally:
        os.close(read_fd)
    if answer.startswith(b"ready"):
        return process
    process.kill()
    process.wait()
    tail = log_file.read_text(errors="replace").strip().splitlines()[-5:]
    raise LaunchError(
        "the bundle (egress proxy) did not start" + (": " + " | ".join(tail) if tail else ""),
        f"see {log_file}",
    )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
