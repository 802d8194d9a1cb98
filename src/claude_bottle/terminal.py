"""Attach a bottle command to the user's stdio without ever handing it the user's terminal.

With a terminal on stdin the command gets the slave side of a fresh pty
(`run_in_pty`); without one it gets three pipes (`run_with_pipes`), even when
stdout or stderr is a terminal (`echo task | claude-bottle run`). Either way it
cannot inject keystrokes into the user's shell (TIOCSTI) or change the
terminal's settings: we copy bytes between the two, forward window-size changes,
and restore the terminal on the way out.
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
import time
import tty
from collections.abc import Callable, Iterator
from typing import Any

DRAIN_SECONDS = 2.0
"""Longest the CLI copies output after a piped command has exited."""


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
    if not os.isatty(stdout):  # output goes to a file or pipe: keep its bytes as written
        attributes = termios.tcgetattr(slave)
        attributes[1] &= ~termios.OPOST
        termios.tcsetattr(slave, termios.TCSANOW, attributes)
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


def run_with_pipes(
    start: Callable[[tuple[int, int, int]], Any],
    wait_fd: Callable[[Any], int],
    finish: Callable[[Any], int],
) -> int:
    """Give `start((stdin, stdout, stderr))` three pipes; copy our stdin into the first and
    the others out to our stdout and stderr until `wait_fd(handle)` is readable; `finish`."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        handle = start((in_r, out_w, err_w))
    except BaseException:
        for fd in (in_w, out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    try:
        _copy_pipes(
            sys.stdin.fileno(),
            in_w,
            {out_r: sys.stdout.fileno(), err_r: sys.stderr.fileno()},
            wait_fd(handle),
        )
    finally:
        for fd in (in_w, out_r, err_r):
            with contextlib.suppress(OSError):
                os.close(fd)
    return finish(handle)


class _Pipes:
    """The CLI's side of a piped session: what is still open, what waits to go in."""

    def __init__(self, stdin: int, to_command: int, outputs: dict[int, int]) -> None:
        self.stdin: int | None = stdin
        self.to_command: int | None = to_command
        self.outputs = dict(outputs)  # pipe from the command -> our own fd
        self.pending = b""  # read from our stdin, not yet taken by the command
        os.set_blocking(to_command, False)

    def close_input(self) -> None:
        if self.to_command is not None:
            os.close(self.to_command)
            self.to_command = None
        self.stdin = None

    def feed(self) -> None:
        """Our stdin was readable: take a chunk (at EOF, end the command's stdin)."""
        assert self.stdin is not None
        try:
            data = os.read(self.stdin, 65536)
        except OSError:
            data = b""
        if data:
            self.pending = data
        else:
            self.close_input()

    def deliver(self) -> None:
        """The command's stdin has room: give it what is pending."""
        assert self.to_command is not None
        try:
            written = os.write(self.to_command, self.pending)
        except BlockingIOError:
            return
        except OSError:  # EPIPE: the command closed its stdin; it takes no more
            self.close_input()
            return
        self.pending = self.pending[written:]

    def copy_out(self, source: int) -> None:
        """A pipe from the command is readable: pass a chunk on, or drop it at EOF."""
        try:
            data = os.read(source, 65536)
        except OSError:
            data = b""
        if data:
            try:
                _write_all(self.outputs[source], data)
                return
            except OSError:  # our own stdout is gone (`| head`): the command learns so
                pass
        del self.outputs[source]
        os.close(source)

    def wanted(self) -> tuple[list[int], list[int]]:
        readable = list(self.outputs)
        writable = []
        if self.pending and self.to_command is not None:
            writable.append(self.to_command)
        elif self.stdin is not None:
            readable.append(self.stdin)
        return readable, writable


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_pipes(stdin: int, to_command: int, outputs: dict[int, int], done_fd: int) -> None:
    pipes = _Pipes(stdin, to_command, outputs)
    while pipes.outputs:
        readable, writable = pipes.wanted()
        try:
            ready, room, _ = select.select([*readable, done_fd], writable, [])
        except InterruptedError:
            continue
        if room:
            pipes.deliver()
        for fd in ready:
            if fd == pipes.stdin:
                pipes.feed()
            elif fd in pipes.outputs:
                pipes.copy_out(fd)
        if done_fd in ready:
            break
    # The command has exited; what it wrote last is still in the pipes. Something it left
    # running may hold them open, so this waits only while output keeps coming, and not
    # for longer than DRAIN_SECONDS in all.
    deadline = time.monotonic() + DRAIN_SECONDS
    while pipes.outputs and (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select(list(pipes.outputs), [], [], min(remaining, 0.05))
        if not ready:
            return
        for fd in ready:
            pipes.copy_out(fd)
