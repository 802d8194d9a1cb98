"""Attach a bottle command to the user's terminal through a pty we own.

The command never holds the user's real terminal: it gets the slave side of
a fresh pty, so it cannot inject keystrokes into the user's shell (TIOCSTI)
or change the terminal's settings after it exits. We copy bytes between the
two, forward window-size changes, and restore the terminal on the way out.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import struct
import sys
import termios
import tty
from collections.abc import Callable, Iterator
from typing import Any


def _copy_winsize(src_fd: int, dst_fd: int) -> None:
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(src_fd, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        fcntl.ioctl(dst_fd, termios.TIOCSWINSZ, size)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


def run_in_pty(
    start: Callable[[int], Any], wait_fd: Callable[[Any], int], finish: Callable[[Any], int]
) -> int:
    """Give `start(slave_fd)` a pty; copy I/O until `wait_fd(handle)` is readable; `finish`."""
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    master, slave = pty.openpty()
    _copy_winsize(stdin, slave)
    handle = start(slave)
    os.close(slave)
    previous = signal.signal(signal.SIGWINCH, lambda *_: _copy_winsize(stdin, master))
    try:
        with raw_terminal(stdin):
            _pump(stdin, stdout, master, wait_fd(handle))
    finally:
        signal.signal(signal.SIGWINCH, previous)
    status = finish(handle)
    os.close(master)
    return status


def _pump(stdin: int, stdout: int, master: int, done_fd: int) -> None:
    watched = [stdin, master, done_fd]
    while True:
        try:
            readable, _, _ = select.select(watched, [], [])
        except InterruptedError:
            continue
        if master in readable:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every slave fd is closed
                data = b""
            if not data:
                return
            os.write(stdout, data)
        if stdin in readable:
            data = os.read(stdin, 65536)
            if data:
                os.write(master, data)
            else:
                watched.remove(stdin)
        if done_fd in readable and master not in readable:
            _drain(master, stdout)
            return


def _drain(master: int, stdout: int) -> None:
    while True:
        readable, _, _ = select.select([master], [], [], 0.05)
        if not readable:
            return
        try:
            data = os.read(master, 65536)
        except OSError:
            return
        if not data:
            return
        os.write(stdout, data)
