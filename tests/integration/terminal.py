"""The CLI on the slave side of a pty the test controls, like a person's terminal."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time

from tests.integration.conftest import BottleEnv

# CSI (colours, cursor moves), OSC (window title), charset selection, other ESC x, then C0.
_ESCAPES = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()*+][0-~]|\x1b[ -~]"
    rb"|[\x00-\x1f\x7f]"
)


def squeezed(data: bytes | str) -> str:
    """Text with escape sequences, control bytes and all whitespace removed.

    A full-screen UI (Claude Code's is Ink) places words with cursor moves rather than
    spaces and may wrap or redraw a line, so this is what a test can reliably search.
    """
    raw = data.encode() if isinstance(data, str) else data
    return "".join(_ESCAPES.sub(b"", raw).decode("utf-8", "replace").split())


class Terminal:
    """The CLI on the slave side of a pty we control, like a person's terminal."""

    def __init__(self, be: BottleEnv, *args: str, rows: int = 40, cols: int = 100) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # child: become the CLI
            os.chdir(be.workspace)
            os.execve(sys.executable, [sys.executable, "-m", "claude_bottle", *args], be.env)
        self.pid, self.fd = pid, fd
        self.resize(rows, cols)
        self.output = b""

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def _read(self, timeout: float) -> bool:
        """Append what arrives within `timeout`; False once the terminal has closed."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:
            chunk = b""
        self.output += chunk
        return bool(chunk)

    def read_until(self, needle: bytes, timeout: float = 15) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out waiting for {needle!r}; got {self.output!r}"
            assert self._read(remaining), f"terminal closed before {needle!r}; got {self.output!r}"
        return self.output

    def read_until_text(self, text: str, since: int = 0, timeout: float = 15) -> None:
        """Wait until `text` shows in the output after byte `since`, ignoring escapes and
        whitespace (see `squeezed`)."""
        wanted = squeezed(text)
        deadline = time.monotonic() + timeout
        while wanted not in squeezed(self.output[since:]):
            remaining = deadline - time.monotonic()
            screen = squeezed(self.output[since:])[-2000:]
            assert remaining > 0, f"timed out waiting for {text!r}; screen shows {screen!r}"
            assert self._read(remaining), f"terminal closed before {text!r}; shows {screen!r}"

    def settle(self, seconds: float) -> None:
        """Keep reading (so the CLI never blocks on a full pty) for `seconds`."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0 and self._read(remaining):
            pass

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float = 15) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                with contextlib.suppress(OSError):
                    self.output += os.read(self.fd, 4096)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"CLI did not exit; output {self.output!r}")
