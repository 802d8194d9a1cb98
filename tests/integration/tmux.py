"""A full-screen CLI in a real tmux session: keys sent with `send-keys`, the screen read
with `capture-pane`, as a person at an 80x24 terminal would see it."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
import uuid
from types import TracebackType

from tests.integration.conftest import BottleEnv


class TmuxScreen:
    def __init__(self, be: BottleEnv, *args: str, cols: int = 80, rows: int = 24) -> None:
        self.session = f"cbt-{uuid.uuid4().hex[:8]}"
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in be.env.items())
        command = f"cd {shlex.quote(str(be.workspace))} && env -i {env} TERM=xterm-256color "
        command += " ".join(shlex.quote(a) for a in (sys.executable, "-m", "claude_bottle", *args))
        # The pane stays after the command ends, so a crash is still on screen to report.
        self._tmux("new-session", "-d", "-s", self.session, "-x", str(cols), "-y", str(rows))
        self._tmux("set-option", "-t", self.session, "remain-on-exit", "on")
        self._tmux("respawn-pane", "-k", "-t", self.session, command)

    def _tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", *args], check=True, capture_output=True, text=True, timeout=10
        ).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", self.session)

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", self.session, *keys)

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            shown = self.screen()
            if text in shown:
                return shown
            assert time.monotonic() < deadline, f"{text!r} never showed; screen:\n{shown}"
            time.sleep(0.1)

    def wait_gone(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text in (shown := self.screen()):
            assert time.monotonic() < deadline, f"{text!r} still shows; screen:\n{shown}"
            time.sleep(0.1)

    def wait_closed(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while (
            self._tmux("display-message", "-p", "-t", self.session, "#{pane_dead}").strip() != "1"
        ):
            assert time.monotonic() < deadline, f"still running; screen:\n{self.screen()}"
            time.sleep(0.1)

    def __enter__(self) -> TmuxScreen:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.session], capture_output=True)
